"""The distilled fast transformer: grouped-query attention, `wmgym train fast-dynamics` on a
tiny checkpoint, and the envs with it."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.utils.env_checker import check_env
from safetensors.torch import load_file

from wmgym.env import clear_cache
from wmgym.env.testing import check_companion_errors, make_tiny_checkpoint
from wmgym.model.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_start_obs, read_config
from wmgym.model.fast_dynamics import (
    SUBDIR,
    has_fast_dynamics,
    init_student,
    init_student_from,
    load_fast_dynamics,
)
from wmgym.model.kv_cache import cached_attention
from wmgym.model.transformer import DynamicsConfig, DynamicsTransformer
from wmgym.model.world_model import WorldModel
from wmgym.spec import load_spec
from wmgym.train.fast_dynamics import (
    Pool,
    TrainFastDynamicsArgs,
    distill_loss,
    event_begins,
    train_fast_dynamics,
)
from wmgym.train.imagined import ImaginedRollouts, imagine_many, load_rollouts

DEVICE = "cpu"


def distil(checkpoint, out, steps: int) -> dict:
    """Distils the tiny checkpoint's transformer; returns the student's config."""
    train_fast_dynamics(TrainFastDynamicsArgs(
        checkpoint=str(checkpoint), rollouts=8, horizon=6, heldout=2, steps=steps, batch=4,
        policies=("pick", "random"), lr=3e-4, warmup=5, eval_windows=8, out=str(out),
        device=DEVICE, log_every=10,
    ))
    return read_config(checkpoint / SUBDIR)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """A tiny checkpoint with a fast transformer distilled for 60 steps."""
    root = tmp_path_factory.mktemp("fast_dynamics")
    ckpt = make_tiny_checkpoint(root / "WM-Pick-v0", task="pick")
    distil(ckpt, root / "run", steps=60)
    return ckpt


def test_grouped_query_attention_matches_pytorch():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 2, 8, generator=g)
    k, v = torch.randn(2, 3, 2, 10, 8, generator=g)  # 2 key/value heads for 4 query heads
    seen = torch.rand(3, 1, 2, 10, generator=g) > 0.4
    seen[..., 0] = True
    bias = torch.zeros(seen.shape).masked_fill_(~seen, float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=seen, enable_gqa=True)
    assert torch.allclose(cached_attention(q, k, v, bias), ref, atol=1e-6)
    ref = F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True)
    assert torch.allclose(cached_attention(q, k[:, :1], v[:, :1], None), ref, atol=1e-6)


def test_student_starts_as_the_teacher_with_heads_averaged(fast):
    teacher = WorldModel.load(fast).dynamics
    same = init_student(teacher, kv_heads=teacher.cfg.n_head)  # nothing to average
    student = init_student(teacher, kv_heads=1)
    assert student.cfg.kv_heads == 1 and student.cfg.dropout == 0.0
    assert student.blocks[0].attn.qkv.weight.shape[0] == (teacher.cfg.n_head + 2) * \
        teacher.cfg.head_dim
    b, t = 2, teacher.cfg.max_frames
    gen = torch.Generator().manual_seed(1)
    batch = {"ctx_tokens": torch.randint(0, teacher.cfg.ctx_vocab_size,
                                         (b, teacher.cfg.n_ctx_tokens), generator=gen),
             "frame_tokens": torch.randint(0, teacher.cfg.vocab_size,
                                           (b, t, teacher.cfg.n_frame_tokens), generator=gen),
             "actions": torch.rand(b, t, 4, generator=gen) * 2 - 1,
             "gap": torch.tensor([0.0, 1.0]),
             "prev_state": torch.rand(b, t, teacher.cfg.state_dim, generator=gen)}
    zero, m = distill_loss(same.eval(), teacher, batch)
    assert zero.item() < 1e-4 and m["token_agree"] == 1.0
    loss, _ = distill_loss(student.eval(), teacher, batch)
    assert loss.item() > 1e-3  # one key/value head is another model until trained


def test_fast_cache_matches_its_training_pass(fast):
    model = load_fast_dynamics(fast)
    cfg = model.cfg
    gen = torch.Generator().manual_seed(2)
    ctx = torch.randint(0, cfg.ctx_vocab_size, (2, cfg.n_ctx_tokens), generator=gen)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.max_frames, cfg.n_frame_tokens),
                           generator=gen)
    actions = torch.rand(2, cfg.max_frames, 4, generator=gen) * 2 - 1
    states = torch.rand(2, cfg.max_frames, cfg.state_dim, generator=gen)
    with torch.no_grad():
        full = model(ctx, tokens, actions, prev_state=states)
    cache = model.new_cache(2)
    assert cache.k.shape[2] == 1  # one key/value head: a quarter of the teacher's cache
    model.prefill(cache, ctx)
    model.set_state(cache, states[:, 0])
    for t in range(cfg.max_frames):
        if t:
            model.set_state(cache, states[:, t])
        logits, frame = model.teacher_force_frame(cache, actions[:, t], tokens[:, t])
        assert torch.allclose(logits, full.logits[:, t], atol=1e-4)
        assert torch.allclose(frame.state, full.state[:, t], atol=1e-4)


def test_distillation_learns_the_teacher(fast):
    # measured on this tiny checkpoint: token KL 0.0068 -> 0.0005, state error 0.010 -> 0.0005
    config = read_config(fast / SUBDIR)
    report = config["distill"]
    init, trained = report["heldout_vs_teacher_at_init"], report["heldout_vs_teacher"]
    assert trained["token_kl"] < 0.5 * init["token_kl"], (init, trained)
    assert trained["state_mse"] < 0.5 * init["state_mse"], (init, trained)
    assert trained["token_agree"] > init["token_agree"], (init, trained)
    assert config["teacher_sha256"] == read_config(fast)["sha256"]
    assert config["dynamics"]["n_kv_head"] == 1
    stored = load_file(str(fast / SUBDIR / WEIGHTS))  # parameters in float16, buffers not
    assert stored["blocks.0.attn.qkv.weight"].dtype == torch.float16
    assert stored["state_mean"].dtype == torch.float32
    assert (fast.parent / "run" / "rollouts.safetensors").exists()  # kept for a rerun


def test_envs_with_the_fast_transformer(fast):
    full = gym.make("WM-Pick-v0", checkpoint=fast, device=DEVICE)  # default: the full one
    quick = gym.make("WM-Pick-v0", checkpoint=fast, device=DEVICE, fast=True)
    assert full.unwrapped.core.dynamics == "full" and quick.unwrapped.core.dynamics == "fast"
    assert quick.unwrapped.core.model.tokenizer is full.unwrapped.core.model.tokenizer
    check_env(quick.unwrapped, skip_render_check=True)
    o1, _ = full.reset(seed=4)
    o2, _ = quick.reset(seed=4)
    np.testing.assert_array_equal(o1["rgb"], o2["rgb"])  # the real start frame
    a = np.random.default_rng(0).uniform(-1, 1, 4).astype(np.float32)
    s1, s2 = full.step(a)[0], quick.step(a)[0]
    assert quick.observation_space.contains(s2)
    # another transformer: near the teacher's first state, not equal to it
    assert 0 < np.abs(s1["state"] - s2["state"]).max() < 0.05
    envs = gym.make_vec("WM-Pick-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        checkpoint=fast, device=DEVICE, fast=True, images=False)
    obs, _ = envs.reset(seed=0)
    for _ in range(20):  # past the window: the cache drops frames
        obs, reward, *_ = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs) and np.isfinite(reward).all()


def test_fast_option_errors(fast, tmp_path):
    plain = make_tiny_checkpoint(tmp_path / "plain", task="pick")
    assert not has_fast_dynamics(plain)
    with pytest.raises(CheckpointError, match="wmgym train fast-dynamics"):
        WorldModel.load(plain, dynamics="fast")
    with pytest.raises(CheckpointError, match="wmgym train fast-dynamics"):
        gym.make("WM-Pick-v0", checkpoint=plain, fast=True)
    with pytest.raises(ValueError, match="n_kv_head"):
        DynamicsTransformer(DynamicsConfig(action_dim=4, state_dim=8, n_head=4, n_kv_head=3))


def test_stale_or_damaged_fast_transformer_names_the_files(fast, tmp_path):
    stale = check_companion_errors(load_fast_dynamics, fast, SUBDIR, tmp_path)
    clear_cache()
    with pytest.raises(CheckpointError, match="distilled from weights"):
        WorldModel.load(stale, dynamics="fast")
    copy = tmp_path / "copy"
    shutil.copytree(fast, copy)
    model, bank = WorldModel.load(copy), load_start_obs(copy)
    with torch.no_grad():
        model.dynamics.slot.add_(1.0)  # "retrained"
    model.save(copy, {"task": "Pick"}, bank)
    assert not has_fast_dynamics(copy)


def test_resume_continues_the_shipped_student(fast, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(fast, copy)
    first = read_config(copy / SUBDIR)["distill"]
    run = tmp_path / "run"
    shutil.copytree(fast.parent / "run", run)
    config = json.loads((copy / SUBDIR / CONFIG).read_text())  # a record of another fit
    (copy / SUBDIR / CONFIG).write_text(json.dumps({**config, "head_refit": {"events": 3}}))

    def resume(seed: int) -> None:
        train_fast_dynamics(TrainFastDynamicsArgs(
            checkpoint=str(copy), rollouts=8, horizon=6, heldout=2, steps=3, batch=4,
            policies=("pick", "random"), eval_windows=8, out=str(run), device=DEVICE,
            resume=True, seed=seed,
        ))

    before = load_fast_dynamics(copy)
    resume(seed=1)  # other rollouts than the kept ones: imagined anew
    after = load_fast_dynamics(copy)
    assert not torch.equal(after.slot, before.slot)
    assert "imagining anew" in capsys.readouterr().out
    resume(seed=1)  # the same teacher, policies and seed: reused
    assert "reusing 8 of the 8" in capsys.readouterr().out
    again = read_config(copy / SUBDIR)["distill"]
    assert again["resumed_from"]["resumed_from"] == first
    assert read_config(copy / SUBDIR)["head_refit"] == {"events": 3}  # kept: no loss reached it
    # it starts where the first run ended, not from the teacher's averaged heads
    start = again["heldout_vs_teacher_at_init"]["token_kl"]
    assert start < first["heldout_vs_teacher_at_init"]["token_kl"]


def test_init_from_starts_from_another_checkpoints_student(fast, tmp_path):
    bare = tmp_path / "bare"  # as after a fine-tune of the teacher: no fast transformer
    shutil.copytree(fast, bare)
    shutil.rmtree(bare / SUBDIR)
    args = TrainFastDynamicsArgs(
        checkpoint=str(bare), rollouts=8, horizon=6, heldout=2, steps=2, batch=4,
        policies=("pick", "random"), eval_windows=8, out=str(tmp_path / "run"), device=DEVICE,
        init_from=str(fast), resume=True)
    with pytest.raises(ValueError, match="give one"):
        train_fast_dynamics(args)
    args.resume = False
    train_fast_dynamics(args)
    report = read_config(bare / SUBDIR)["distill"]
    first = read_config(fast / SUBDIR)["distill"]
    assert report["initialised_from"] == {**first, "parameters_from_teacher": []}
    # it starts where the other student ended, not from the teacher's averaged heads
    assert report["heldout_vs_teacher_at_init"]["token_kl"] < (
        first["heldout_vs_teacher_at_init"]["token_kl"])
    assert load_fast_dynamics(bare) is not None  # bound to this checkpoint's weights


def test_init_from_takes_what_the_other_student_lacks_from_the_teacher(fast, tmp_path):
    # a fine-tune that added the event latent: the other student has no event head or vector
    latent = make_tiny_checkpoint(tmp_path / "latent", event=True, task="pick")
    teacher, previous = WorldModel.load(latent).dynamics, load_fast_dynamics(fast)
    student, fresh = init_student_from(teacher, previous)
    assert student.cfg.event and student.cfg.kv_heads == previous.cfg.kv_heads
    own, theirs, got = previous.state_dict(), teacher.state_dict(), student.state_dict()
    assert sorted(fresh) == sorted(n for n, _ in student.named_parameters() if n not in own)
    assert {"event_emb", "event_head.mlp.0.weight"} <= set(fresh)
    for name, value in got.items():
        assert torch.equal(value, theirs[name] if name in fresh or name not in own
                           else own[name]), name
    assert torch.equal(got["state_std"], theirs["state_std"])  # buffers: the teacher's
    train_fast_dynamics(TrainFastDynamicsArgs(
        checkpoint=str(latent), rollouts=8, horizon=6, heldout=2, steps=2, batch=4,
        policies=("pick", "random"), eval_windows=8, out=str(tmp_path / "run"),
        device=DEVICE, init_from=str(fast)))
    report = read_config(latent / SUBDIR)["distill"]["initialised_from"]
    assert sorted(report["parameters_from_teacher"]) == sorted(fresh)
    assert load_fast_dynamics(latent).cfg.event == load_spec("pick").event.as_config()


def test_event_windows_start_a_few_frames_before_an_event_begins():
    r, t, length = 6, 40, 8
    event = torch.zeros(r, t, dtype=torch.long)
    event[1, 20:26] = 2  # one event in rollout 1, one in rollout 3, none in the others
    event[3, 30:] = 1
    data = ImaginedRollouts(torch.zeros(r, 5, 4, 4), torch.zeros(r, 3, dtype=torch.long),
                            torch.arange(t).repeat(r, 1)[..., None], torch.zeros(r, t, 4),
                            torch.zeros(r, t + 1, 8), event)
    rows, steps = event_begins(data, 4)
    assert rows.tolist() == [1, 3] and steps.tolist() == [20, 30]
    assert len(event_begins(data, 2)[0]) == 1  # training rows only
    gen = torch.Generator().manual_seed(0)
    batch = Pool(data, 4, event_share=0.75).draw(400, length, 0.25, gen)
    first = batch["frame_tokens"][:, 0, 0]  # the window's first step (tokens hold the step)
    at_event = (batch["event"][:, 1: length // 2 + 1] != 0).any(1) & (batch["event"][:, 0] == 0)
    assert 0.65 < at_event.float().mean() < 0.85, at_event.float().mean()
    assert set(first[at_event].tolist()) <= set(range(16, 20)) | set(range(26, 30))
    uniform = Pool(data, 4).draw(400, length, 0.25, gen)
    assert (uniform["event"][:, 1: length // 2 + 1] != 0).any(1).float().mean() < 0.2
    with pytest.raises(ValueError, match="hold no event"):
        Pool(data, 1, event_share=0.5)


def test_on_policy_windows_come_from_the_students_own_rollouts(fast, tmp_path, capsys):
    copy, run = tmp_path / "copy", tmp_path / "run"
    shutil.copytree(fast, copy)
    shutil.copytree(fast.parent / "run", run)
    args = TrainFastDynamicsArgs(
        checkpoint=str(copy), rollouts=8, horizon=6, heldout=2, steps=4, batch=4,
        policies=("pick", "random"), eval_windows=8, out=str(run), device=DEVICE,
        on_policy=6, on_policy_share=0.5)
    with pytest.raises(ValueError, match="on_policy needs resume"):
        train_fast_dynamics(args)
    student_sha = read_config(copy / SUBDIR)["sha256"]
    args.resume = True
    train_fast_dynamics(args)
    assert "reusing 8 of the 8" in capsys.readouterr().out  # the teacher's: kept
    own, meta = load_rollouts(run / "student_rollouts.safetensors")
    assert len(own) == 6 and meta["student_sha256"] == student_sha
    # imagined by the fast transformer: the teacher acting alike imagines other frames
    teacher = imagine_many(copy, task=load_spec("pick"), rollouts=6, horizon=6,
                           policies=args.policies, seed=args.seed + 7919, device=DEVICE)
    np.testing.assert_array_equal(own.actions[:, 0], teacher.actions[:, 0])  # same starts
    assert (own.tokens != teacher.tokens).any()
    report = read_config(copy / SUBDIR)["distill"]
    start = report["heldout_own_rollouts_vs_teacher_at_start"]
    assert report["heldout_own_rollouts_vs_teacher"]["token_kl"] < start["token_kl"]
    assert report["args"]["on_policy"] == 6
