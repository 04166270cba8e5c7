"""Tests of the world model: frames, tokenizer, quantizer, the dynamics transformer, configs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from wmgym.model.checkpoint import CONFIG, CheckpointError, current_name
from wmgym.model.frames import frames_to_obs, mask_iou, obs_to_frames, psnr, ssim
from wmgym.model.tokenizer import FSQ, MMTokenizer, TokenizerConfig
from wmgym.model.transformer import (
    DynamicsConfig,
    DynamicsTransformer,
    apply_rope,
    rope_at,
    symexp,
    symlog,
)
from wmgym.model.world_model import WorldModel


def tiny_tokenizer_config(**kw) -> TokenizerConfig:
    base = dict(resolution=32, base_channels=8, channel_mult=(1, 2, 4, 4), ctx_downsample=4,
                future_downsample=8, xattn_resolutions=(8, 4), attn_head_dim=16,
                fsq_levels=(5, 5, 5))
    base.update(kw)
    return TokenizerConfig(**base)


def tiny_dynamics_config(**kw) -> DynamicsConfig:
    base = dict(action_dim=4, state_dim=8, ctx_vocab_size=30, vocab_size=20, n_ctx_tokens=6,
                n_frame_tokens=4, max_frames=3, d_model=32, n_layer=2, n_head=2, mlp_hidden=64)
    base.update(kw)
    return DynamicsConfig(**base)


def smooth_frames(b: int, res: int, seed: int) -> torch.Tensor:
    """Structured random frames: smooth rgb/depth and a blob mask."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 4, 4, 4, generator=g)
    x = F.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    mask = (x[:, :1] > 0.55).float()
    return torch.cat([x, mask], dim=1)


def randomize_actions(model: DynamicsTransformer) -> None:
    # action_proj starts at zero: give it weight so actions matter; and sharpen attention
    # (at init it is near uniform, which would hide wrong keys or positions)
    torch.nn.init.normal_(model.action_proj.weight, std=0.5)
    torch.nn.init.normal_(model.action_proj.bias, std=0.5)
    if model.gap_emb is not None:
        torch.nn.init.normal_(model.gap_emb, std=0.5)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(10.0)


# ----------------------------------------------------------------------------- frames


def test_frames_round_trip_and_metrics():
    g = torch.Generator().manual_seed(0)
    near, far = 0.3, 2.5
    rgb = torch.randint(0, 256, (2, 3, 8, 8, 3), generator=g, dtype=torch.uint8)
    depth = near + (far - near) * torch.rand(2, 3, 8, 8, 1, generator=g)
    mask = torch.randint(0, 2, (2, 3, 8, 8, 1), generator=g, dtype=torch.uint8)
    frames = obs_to_frames(rgb, depth, mask, (near, far))
    assert frames.shape == (2, 3, 5, 8, 8) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1
    rgb2, depth2, mask2 = frames_to_obs(frames, (near, far))
    assert rgb2.dtype == mask2.dtype == torch.uint8 and depth2.dtype == torch.float32
    assert torch.equal(rgb2, rgb) and torch.equal(mask2, mask) and rgb2.is_contiguous()
    from_numpy = obs_to_frames(rgb.numpy(), depth.numpy(), mask.numpy(), (near, far))
    assert torch.equal(from_numpy, frames)
    assert torch.allclose(depth2, depth, atol=1e-5)
    # out-of-range depth is clipped; a slightly noisy decoder output still rounds to the same rgb
    far_away = obs_to_frames(rgb, depth + 10.0, mask, (near, far))
    assert torch.all(far_away[..., 3, :, :] == 1.0)
    noisy = frames + (torch.rand(frames.shape, generator=g) - 0.5) / 255 * 0.9
    assert torch.equal(frames_to_obs(noisy, (near, far))[0], rgb)

    img = torch.rand(4, 3, 32, 32, generator=g)
    assert torch.isinf(psnr(img, img)).all()
    assert torch.allclose(ssim(img, img), torch.ones(4), atol=1e-5)
    other = (img + 0.1 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    assert (psnr(img, other) < 30).all() and (ssim(img, other) < 0.99).all()
    assert psnr(rgb2, rgb).shape == (2, 3)  # uint8 images, any leading dims
    assert torch.allclose(mask_iou(mask2.float(), mask.float()), torch.ones(2, 3))


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.slow
def test_tokenizer_overfits_small_batch():
    torch.manual_seed(0)
    cfg = tiny_tokenizer_config()
    tok = MMTokenizer(cfg)
    ctx, fut = smooth_frames(4, 32, seed=1), smooth_frames(4, 32, seed=2)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(200):  # measured: loss falls 8.5-10x (4 seeds), PSNR reaches 22-28 dB
        loss, metrics = tok.loss(ctx, fut)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert math.isfinite(loss.item())
    assert loss.item() < first / 5, (first, loss.item())
    assert metrics["psnr_ctx"] > 20 and metrics["psnr_fut"] > 20
    assert 0 < metrics["usage_fut"] <= 1 and metrics["perplexity_fut"] >= 1

    tok.eval()
    with torch.no_grad():
        code = tok.encode_context(ctx)
        assert code.tokens.shape == (4, tok.n_ctx_tokens) == (4, 64)
        assert [f.shape[-1] for f in code.feats] == [8]
        assert tok.decode_context(code.tokens).shape == (4, 5, 32, 32)
        # T future frames per context == one at a time (context features shared, not copied)
        futs = torch.stack([fut, ctx.flip(0)], dim=1)  # (B, T=2, 5, H, W)
        tokens = tok.encode_future(futs, code.feats)
        assert tokens.shape == (4, 2, 16)
        assert torch.equal(tokens[:, 1], tok.encode_future(ctx.flip(0), code.feats))
        decoded = tok.decode_future(tokens, code.feats)
        assert decoded.shape == (4, 2, 5, 32, 32)
        single = tok.decode_future(tokens[:, 1], code.feats)
        assert torch.allclose(decoded[:, 1], single, atol=1e-5)
        assert decoded.min() >= 0 and decoded.max() <= 1


def test_fsq_codes_in_range_and_decode_consistent():
    torch.manual_seed(0)
    q = FSQ(16, (8, 5, 5, 5))
    assert q.codebook_size == 1000
    x = 3 * torch.randn(2, 16, 4, 4)
    out, codes = q(x)
    assert codes.shape == (2, 16) and codes.min() >= 0 and codes.max() < 1000
    assert torch.allclose(q.decode(codes, 4), out, atol=1e-6)
    # the mixed-radix index is a bijection between level tuples and [0, 1000)
    digits = (torch.arange(1000).unsqueeze(-1) // q.basis) % q.levels
    assert torch.equal((digits * q.basis).sum(-1), torch.arange(1000))
    assert len({tuple(d.tolist()) for d in digits}) == 1000
    # large inputs saturate at the extreme levels but stay in range
    _, codes = q(1e4 * torch.randn(4, 16, 8, 8))
    assert codes.min() >= 0 and codes.max() < 1000


# ----------------------------------------------------------------------------- dynamics


def dynamics_batch(cfg: DynamicsConfig, b: int, t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return dict(
        ctx_tokens=torch.randint(0, cfg.ctx_vocab_size, (b, cfg.n_ctx_tokens), generator=g),
        frame_tokens=torch.randint(0, cfg.vocab_size, (b, t, cfg.n_frame_tokens), generator=g),
        actions=torch.rand(b, t, cfg.action_dim, generator=g) * 2 - 1,
        reward=torch.rand(b, t, generator=g) * 3,
        success=torch.rand(b, t, generator=g) > 0.5,
        state=torch.randn(b, t, cfg.state_dim, generator=g) * 2 + 1,
    )


def test_symlog_symexp_inverse():
    x = torch.tensor([-100.0, -1.5, 0.0, 0.3, 42.0])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)


def test_dynamics_overfits_small_batch():
    torch.manual_seed(0)
    cfg = tiny_dynamics_config()
    model = DynamicsTransformer(cfg)
    batch = dynamics_batch(cfg, 4, cfg.max_frames, seed=0)
    model.set_state_normalization(torch.ones(cfg.state_dim), 2 * torch.ones(cfg.state_dim))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, m = model.loss(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 20, (first, loss.item())  # measured: 300-360x (3 seeds)
    assert m["token_acc"] > 0.95 and m["success_acc"] == 1.0
    out = model(batch["ctx_tokens"], batch["frame_tokens"], batch["actions"])
    assert out.logits.shape == (4, cfg.max_frames, cfg.n_frame_tokens, cfg.vocab_size)
    assert torch.allclose(out.reward, batch["reward"], atol=0.3)  # real units, not symlog
    assert torch.allclose(out.state, batch["state"], atol=0.5)  # de-normalised


def test_cached_attention_matches_pytorch_attention_with_the_same_mask():
    """The ring's two-matmul attention is PyTorch's attention under the bias's mask."""
    from wmgym.model.kv_cache import cached_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 4, 8, generator=g)
    k, v = torch.randn(2, 3, 2, 10, 8, generator=g)
    seen = torch.rand(3, 1, 4, 10, generator=g) > 0.4
    seen[..., 0] = True  # every query sees something
    bias = torch.zeros(seen.shape).masked_fill_(~seen, float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=seen)
    assert torch.allclose(cached_attention(q, k, v, bias), ref, atol=1e-6)
    assert torch.allclose(cached_attention(q, k, v, None),
                          F.scaled_dot_product_attention(q, k, v), atol=1e-6)


@pytest.mark.parametrize("kv_heads", [None, 1])
def test_kv_cache_matches_full_forward(kv_heads):
    # None: a key/value head per query head; 1: both query heads share one (multi-query)
    torch.manual_seed(0)
    cfg = tiny_dynamics_config(n_kv_head=kv_heads)
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    batch = dynamics_batch(cfg, 3, cfg.max_frames, seed=1)
    with torch.no_grad():
        full = model(batch["ctx_tokens"], batch["frame_tokens"], batch["actions"])
    cache = model.new_cache(3)
    model.prefill(cache, batch["ctx_tokens"])
    for t in range(cfg.max_frames):
        logits, frame = model.teacher_force_frame(cache, batch["actions"][:, t],
                                                  batch["frame_tokens"][:, t])
        assert torch.allclose(logits, full.logits[:, t], atol=1e-4)
        assert torch.allclose(frame.reward, full.reward[:, t], atol=1e-4)
        assert torch.allclose(frame.success_logit, full.success_logit[:, t], atol=1e-4)
        assert torch.allclose(frame.state, full.state[:, t], atol=1e-4)
        assert torch.equal(frame.tokens, batch["frame_tokens"][:, t])
    assert (cache.lengths == cfg.max_seq_len).all()
    # keys live channel-major (the score matmul reads a contiguous matrix), values row-major
    assert cache.k.transpose(-1, -2).is_contiguous() and cache.v.is_contiguous()
    # actions matter: a different last action changes the prediction
    model.prefill(cache, batch["ctx_tokens"])
    logits2, _ = model.teacher_force_frame(cache, -batch["actions"][:, 0],
                                           batch["frame_tokens"][:, 0])
    assert not torch.allclose(logits2, full.logits[:, 0], atol=1e-3)


def rollout(model, cache, n_frames, actions, gens=None, last=None):
    """Generates ``n_frames`` frames (the last one teacher-forced if ``last`` is given)."""
    tokens, logits = [], None
    for t in range(n_frames):
        if last is not None and t == n_frames - 1:
            logits, frame = model.teacher_force_frame(cache, actions[:, t], last)
        else:
            frame = model.generate_frame(cache, actions[:, t], generators=gens)
        tokens.append(frame.tokens)
        assert torch.isfinite(frame.reward).all() and torch.isfinite(frame.state).all()
        assert (cache.lengths <= cache.max_len).all()
    return torch.stack(tokens, 1), logits, frame


@pytest.mark.parametrize(("gap", "kv_heads"), [(False, None), (True, None), (True, 1)])
def test_sliding_window_exact_for_one_layer(gap, kv_heads):
    # with one layer the cached keys/values depend only on (token, position), so after any
    # number of window shifts the cache must equal a fresh forward over ctx + the last window;
    # with a gap embedding, frames imagined after the window slid carry it, as training clips
    # that do not start right after their context do
    torch.manual_seed(0)
    cfg = tiny_dynamics_config(n_layer=1, gap_embedding=gap, n_kv_head=kv_heads)
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    b, k, w = 2, 3 * cfg.max_frames + 1, cfg.max_frames
    batch = dynamics_batch(cfg, b, k, seed=2)
    cache = model.new_cache(b)
    model.prefill(cache, batch["ctx_tokens"])
    last = batch["frame_tokens"][:, -1]
    tokens, logits, frame = rollout(model, cache, k, batch["actions"], last=last)
    assert tokens.min() >= 0 and tokens.max() < cfg.vocab_size
    assert (cache.lengths == cfg.max_seq_len).all() and (cache.n_frames == w).all()
    with torch.no_grad():
        full = model(batch["ctx_tokens"], tokens[:, -w:], batch["actions"][:, -w:],
                     gap=torch.ones(b))
        no_gap = model(batch["ctx_tokens"], tokens[:, -w:], batch["actions"][:, -w:])
    assert torch.allclose(logits, full.logits[:, -1], atol=1e-4)
    assert torch.allclose(frame.state, full.state[:, -1], atol=1e-4)
    assert torch.allclose(full.logits, no_gap.logits) != gap  # the flag reaches the model


def test_gap_flag_is_set_only_after_the_window_slides():
    torch.manual_seed(0)
    cfg = tiny_dynamics_config(n_layer=1, gap_embedding=True)
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    batch = dynamics_batch(cfg, 2, cfg.max_frames, seed=4)
    cache = model.new_cache(2)
    model.prefill(cache, batch["ctx_tokens"])
    with torch.no_grad():  # inside the first window: no gap, as in clips right after a context
        full = model(batch["ctx_tokens"], batch["frame_tokens"], batch["actions"],
                     gap=torch.zeros(2))
    for t in range(cfg.max_frames):
        logits, _ = model.teacher_force_frame(cache, batch["actions"][:, t],
                                              batch["frame_tokens"][:, t])
        assert torch.allclose(logits, full.logits[:, t], atol=1e-4)


def test_sliding_window_cache_contents():
    torch.manual_seed(0)
    cfg = tiny_dynamics_config(n_layer=2)
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    b, k, w = 3, 3 * cfg.max_frames, cfg.max_frames
    batch = dynamics_batch(cfg, b, k, seed=3)
    cache = model.new_cache(b)
    model.prefill(cache, batch["ctx_tokens"])
    gens = [torch.Generator().manual_seed(i) for i in range(b)]
    tokens, _, _ = rollout(model, cache, k, batch["actions"], gens)
    assert tokens.min() >= 0 and tokens.max() < cfg.vocab_size
    assert (cache.lengths == cfg.max_seq_len).all() and (cache.n_frames == w).all()
    # layer-0 keys/values of the window equal those of a fresh pass over ctx + last window
    with torch.no_grad():
        slots = model.slot + model.action_proj(batch["actions"][:, -w:])
        frames = model.tok_emb(tokens[:, -w:]) + model.frame_pos
        seq = torch.cat([slots.unsqueeze(2), frames], 2).flatten(1, 2)
        x = torch.cat([model.ctx_emb(batch["ctx_tokens"]), seq], 1)
        attn = model.blocks[0].attn
        qkv = attn.qkv(model.blocks[0].attn_norm(x)).view(b, x.shape[1], 3, cfg.n_head, -1)
        _, k0, v0 = qkv.permute(2, 0, 3, 1, 4)
    # the rows' content sits at contiguous logical positions, rotated there (relative ones are
    # all attention sees), at slots position % capacity: the context moved over the dropped
    # frames, the frames stayed put, and the window wrapped around the ring
    n = cfg.max_seq_len
    assert cache.uniform and cache.end - cache.start_min == n == cache.capacity
    assert cache.start_min % n != 0  # the ring wrapped: the window does not start at slot 0
    pos = torch.arange(n) + cache.start_min
    cos, sin = rope_at(pos, model.rope_inv_freq)
    slots = pos % cache.capacity
    assert torch.allclose(cache.k[0, :, :, slots], apply_rope(k0, cos, sin), atol=1e-5)
    assert torch.allclose(cache.v[0, :, :, slots], v0, atol=1e-5)


def test_per_sample_generators_are_batch_independent():
    torch.manual_seed(0)
    cfg = tiny_dynamics_config()
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    b, k = 4, 2 * cfg.max_frames
    batch = dynamics_batch(cfg, b, k, seed=4)

    def run(idx, seeds):
        cache = model.new_cache(len(idx))
        model.prefill(cache, batch["ctx_tokens"][idx])
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = [model.generate_frame(cache, batch["actions"][idx, t], generators=gens)
               for t in range(k)]
        return torch.stack([o.tokens for o in out], 1)

    batched = run([0, 1, 2, 3], [7, 8, 9, 10])
    alone = run([0], [7])
    assert torch.equal(batched[0], alone[0])
    assert not torch.equal(batched[0], run([0], [11])[0])  # the seed matters
    # temperature 0 is greedy and ignores the generators
    cache = model.new_cache(2)
    model.prefill(cache, batch["ctx_tokens"][:2])
    frame = model.generate_frame(cache, batch["actions"][:2, 0], temperature=0.0)
    cache2 = model.new_cache(2)
    model.prefill(cache2, batch["ctx_tokens"][:2])
    logits, _ = model.teacher_force_frame(cache2, batch["actions"][:2, 0], frame.tokens)
    assert torch.equal(logits.argmax(-1), frame.tokens)


def test_dynamics_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_dynamics_config()
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    model.set_state_normalization(torch.arange(8.0), torch.full((8,), 3.0))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    try:
        from safetensors.torch import load_file, save_file

        save_file(state, str(tmp_path / "dyn.safetensors"))
        loaded = load_file(str(tmp_path / "dyn.safetensors"))
    except ImportError:  # pragma: no cover
        loaded = {k: v.clone() for k, v in state.items()}
    model2 = DynamicsTransformer(cfg).eval()
    model2.load_state_dict(loaded)
    batch = dynamics_batch(cfg, 2, cfg.max_frames, seed=5)
    with torch.no_grad():
        a = model(batch["ctx_tokens"], batch["frame_tokens"], batch["actions"])
        b = model2(batch["ctx_tokens"], batch["frame_tokens"], batch["actions"])
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_dynamics_loss_valid_mask_ignores_padding():
    # causal: the outputs of frames < T do not depend on frame T, so masking the last frame
    # must give exactly the loss of the shorter sequence, whatever the padding holds
    torch.manual_seed(0)
    cfg = tiny_dynamics_config()
    model = DynamicsTransformer(cfg)
    batch = dynamics_batch(cfg, 2, cfg.max_frames, seed=6)
    short = {k: v[:, :-1] if k != "ctx_tokens" else v for k, v in batch.items()}
    valid = torch.ones(2, cfg.max_frames, dtype=torch.bool)
    valid[:, -1] = False
    batch["frame_tokens"][:, -1] = 0
    batch["reward"][:, -1] = 1e6
    full, _ = model.loss(**batch, valid=valid)
    ref, _ = model.loss(**short)
    assert torch.allclose(full, ref, atol=1e-5)


def test_bfloat16_kv_cache_follows_the_float32_one():
    # keys and values stored in bfloat16 (weights float32): the same rollout, teacher-forced
    # through window slides, compactions and a restart, gives nearly the float32 cache's logits
    torch.manual_seed(0)
    cfg = tiny_dynamics_config()
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    k = 4 * cfg.max_frames
    batch = dynamics_batch(cfg, 3, k, seed=9)
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        cache = model.new_cache(3, kv_dtype=dtype)
        assert cache.k.dtype == cache.v.dtype == dtype and cache.ctx_k.dtype == torch.float32
        model.prefill(cache, batch["ctx_tokens"])
        out = []
        for t in range(k):
            if t == cfg.max_frames + 1:
                model.prefill(cache, batch["ctx_tokens"][2:], index=torch.tensor([2]))
            out.append(model.teacher_force_frame(cache, batch["actions"][:, t],
                                                 batch["frame_tokens"][:, t])[0])
        logits[dtype] = torch.stack(out, 1)
    ref, low = logits[torch.float32], logits[torch.bfloat16]
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95



def test_restarting_some_rows_matches_fresh_rollouts():
    # rows restart independently: afterwards the cache holds rows of different lengths that
    # shift their windows at different frames; each must match its own fresh rollout
    torch.manual_seed(0)
    cfg = tiny_dynamics_config()
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    k_before, k_after = 5, 2 * cfg.max_frames + 2
    batch = dynamics_batch(cfg, 3, k_before + k_after, seed=7)
    new = dynamics_batch(cfg, 1, k_after, seed=8)
    ctx, frames, actions = batch["ctx_tokens"], batch["frame_tokens"], batch["actions"]
    frames_after = frames[:, k_before:].clone()
    frames_after[1] = new["frame_tokens"][0]

    cache = model.new_cache(3)
    model.prefill(cache, ctx)
    for t in range(k_before):
        model.teacher_force_frame(cache, actions[:, t], frames[:, t])
    model.prefill(cache, new["ctx_tokens"], index=torch.tensor([1]))
    assert cache.lengths.tolist() == [cfg.max_seq_len, cfg.n_ctx_tokens, cfg.max_seq_len]
    logits = torch.stack([model.teacher_force_frame(cache, actions[:, k_before + t],
                                                    frames_after[:, t])[0]
                          for t in range(k_after)], 1)

    alone = model.new_cache(1)
    model.prefill(alone, new["ctx_tokens"])
    ref1 = torch.stack([model.teacher_force_frame(alone, actions[1:2, k_before + t],
                                                  frames_after[1:2, t])[0]
                        for t in range(k_after)], 1)
    assert torch.allclose(logits[1:2], ref1, atol=1e-4)

    rows = [0, 2]
    others = model.new_cache(2)
    model.prefill(others, ctx[rows])
    ref02 = [model.teacher_force_frame(others, actions[rows, t], frames[rows, t])[0]
             for t in range(k_before + k_after)]
    assert torch.allclose(logits[rows], torch.stack(ref02[k_before:], 1), atol=1e-4)


def test_state_input_in_the_cache_matches_the_training_pass():
    # imagination feeds each slot the previous frame's state: the real one given with
    # set_state, then the model's own readings. The teacher-forced pass, given those states as
    # prev_state, must give the same logits and heads; a row without a state gets no input.
    torch.manual_seed(0)
    cfg = tiny_dynamics_config(state_input=True)
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    model.set_state_normalization(torch.ones(cfg.state_dim), 2 * torch.ones(cfg.state_dim))
    batch = dynamics_batch(cfg, 3, cfg.max_frames, seed=3)
    ctx, frames, actions = batch["ctx_tokens"], batch["frame_tokens"], batch["actions"]
    start = torch.randn(3, cfg.state_dim) * 2 + 1

    def run(first=None):
        cache = model.new_cache(3)
        model.prefill(cache, ctx)
        if first is not None:
            model.set_state(cache, first)
        out = [model.teacher_force_frame(cache, actions[:, t], frames[:, t])
               for t in range(cfg.max_frames)]
        return torch.stack([o[0] for o in out], 1), torch.stack([o[1].state for o in out], 1)

    untrained, _ = run(start)  # the projection starts at zero: the state changes nothing
    with torch.no_grad():
        plain = model(ctx, frames, actions, prev_state=torch.zeros(3, cfg.max_frames,
                                                                   cfg.state_dim))
    assert torch.allclose(untrained, plain.logits, atol=1e-5)
    torch.nn.init.normal_(model.state_proj.weight, std=0.5)
    logits, states = run(start)
    prev = torch.cat([start[:, None], states[:, :-1]], 1)
    with torch.no_grad():
        full = model(ctx, frames, actions, prev_state=prev)
    assert torch.allclose(logits, full.logits, atol=1e-4)
    assert torch.allclose(states, full.state, atol=1e-4)
    assert not torch.allclose(logits, untrained, atol=1e-3)  # the state matters now
    moved, _ = run(start + 1.0)
    assert not torch.allclose(moved[:, 0], logits[:, 0], atol=1e-3)
    # no real state: the first slot goes without, later ones read the model's own states
    free, _ = run(None)
    assert torch.allclose(free[:, 0], untrained[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="prev_state"):
        model(ctx, frames, actions)


def test_state_input_training_noise_and_dropout():
    torch.manual_seed(0)
    cfg = tiny_dynamics_config(state_input=True, state_noise=0.5, state_dropout=0.5)
    model = DynamicsTransformer(cfg)
    torch.nn.init.normal_(model.state_proj.weight, std=0.5)
    batch = dynamics_batch(cfg, 64, cfg.max_frames, seed=4)
    prev = batch["state"]
    s, known = model.train()._state_input(prev, 64)
    assert 16 < int(known.sum()) < 48  # about half the clips get the state
    noise = s - model.normalize_state(prev)
    assert 0.4 < float(noise.std()) < 0.6
    s, known = model.eval()._state_input(prev, 64)
    assert known.all() and torch.equal(s, model.normalize_state(prev))
    loss, _ = model.train().loss(batch["ctx_tokens"], batch["frame_tokens"], batch["actions"],
                                 batch["reward"], batch["success"], batch["state"],
                                 prev_state=prev)
    loss.backward()
    assert model.state_proj.weight.grad.abs().sum() > 0


def test_cpu_decode_chunk_follows_the_decoders_largest_map():
    from wmgym.model.fast_decoder import build_fast_decoder
    from wmgym.model.tokenizer import Decoder
    from wmgym.model.world_model import cpu_decode_chunk

    cfg = TokenizerConfig()  # the shipped tokenizer's shape: 16 channels at 64 x 64
    full = Decoder(cfg, cfg.future_downsample, cfg.resolution // cfg.ctx_downsample)
    _, fast = build_fast_decoder(cfg)  # stops at 32 x 32 with 16 channels
    assert (full.map_size, fast.map_size) == (16 * 64 * 64, 16 * 32 * 32)
    assert (cpu_decode_chunk(full), cpu_decode_chunk(fast)) == (32, 128)


# ----------------------------------------------------------------------------- checkpoints

EVENT = {"trigger": 3, "run": 3, "anchor": [0, 1, 2], "target": [5, 6, 7], "extra": [3, 4],
         "scale": 0.02, "outcome": 7, "above": 0.84}


def tiny_world_model(**dyn) -> WorldModel:
    tok = tiny_tokenizer_config()
    cfg = tiny_dynamics_config(ctx_vocab_size=125, vocab_size=125, n_ctx_tokens=64,
                               n_frame_tokens=16, **dyn)
    return WorldModel(tok, cfg, (0.3, 2.5))


def test_config_keys_are_checked_with_the_file_named(tmp_path):
    torch.manual_seed(0)
    path = tiny_world_model().save(tmp_path / "wm")
    config = json.loads((path / CONFIG).read_text())
    for section, key, word in (("dynamics", "parallel_head", "unknown"),
                               ("dynamics", "state_input", "missing"),
                               ("tokenizer", "vq_dim", "unknown"),
                               ("tokenizer", "fsq_levels", "missing")):
        bad = tmp_path / f"{section}_{key}"
        shutil.copytree(path, bad)
        changed = json.loads(json.dumps(config))
        if word == "unknown":
            changed[section][key] = 1
        else:
            del changed[section][key]
        (bad / CONFIG).write_text(json.dumps(changed))
        with pytest.raises(CheckpointError) as e:
            WorldModel.load(bad)
        assert str(bad / CONFIG) in str(e.value) and f"{word} keys" in str(e.value)
        assert repr(key) in str(e.value)
    with pytest.raises(ValueError, match="dynamics must be"):
        WorldModel.load(path, dynamics="small")


def test_weights_with_the_older_event_names_load_under_the_new_ones(tmp_path):
    from wmgym.model.checkpoint import save_checkpoint

    assert current_name("dynamics.grasp_head.mlp.0.weight") == "dynamics.event_head.mlp.0.weight"
    assert current_name("grasp_emb") == "event_emb" and current_name("slot") == "slot"
    torch.manual_seed(0)
    model = tiny_world_model(state_input=True, event=EVENT)
    torch.nn.init.normal_(model.dynamics.event_emb, std=1.0)
    old = {k.replace("event_emb", "grasp_emb").replace("event_head", "grasp_head"): v
           for k, v in model.state_dict().items()}
    assert "dynamics.grasp_head.mlp.0.weight" in old and "dynamics.grasp_emb" in old
    path = save_checkpoint(tmp_path / "old", old, model.config())
    loaded = WorldModel.load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_the_shipped_checkpoint_loads_with_the_tasks_event():
    from wmgym.spec import load_spec

    spec = load_spec("pick")
    for dynamics in ("full", "fast"):
        model = WorldModel.load(spec.checkpoint, dynamics=dynamics)
        dyn = model.dynamics
        assert dyn.cfg.event == spec.event.as_config()
        assert (dyn.cfg.action_dim, dyn.cfg.state_dim) == (spec.action_dim, spec.state_dim)
        assert dyn.event_head is not None and dyn.event_emb.shape == (2, dyn.cfg.d_model)
        assert dyn.cfg.kv_heads == (1 if dynamics == "fast" else dyn.cfg.n_head)
