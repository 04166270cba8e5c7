"""Training stages end to end on a tiny real dataset: single process, resume, torchrun DDP."""

import os
import subprocess
import sys

import pytest
import torch

from wmgym.card import CardArgs, render_card
from wmgym.data.collect import CollectArgs, collect
from wmgym.evaluation import EvalArgs, evaluate, format_table
from wmgym.model.checkpoint import read_config
from wmgym.model.world_model import WorldModel
from wmgym.train.data import load_episodes
from wmgym.train.distill import TrainDecoderArgs, train_decoder
from wmgym.train.dynamics import TrainDynamicsArgs, train_dynamics
from wmgym.train.state_filter import (
    TrainStateFilterArgs,
    filter_loss,
    imagine,
    train_state_filter,
    with_filter,
)
from wmgym.train.tokenizer import TrainTokenizerArgs, train_tokenizer

TINY_DYN = dict(d_model=32, n_layer=1, n_head=2, max_frames=4, batch=2, bank_size=2)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "data"
    collect(CollectArgs(out=str(out), episodes=3, workers=2, max_steps=10, heldout=0.34))
    return out


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("tok")
    return train_tokenizer(TrainTokenizerArgs(
        data=str(tiny_data), out=str(run), steps=4, batch=2, base_channels=4, ckpt_every=2,
        log_every=1, device="cpu"))


def test_tokenizer_resume_continues_from_the_saved_step(tiny_data, tiny_tokenizer, tmp_path):
    run = tiny_tokenizer.parent
    assert (run / "state.json").exists() and list((run / "tb").iterdir())
    args = TrainTokenizerArgs(data=str(tiny_data), out=str(run), steps=6, batch=2,
                              base_channels=4, resume=True, device="cpu")
    final = train_tokenizer(args)
    import json
    assert json.loads((run / "state.json").read_text())["step"] == 6
    assert read_config(final)["tokenizer"]["base_channels"] == 4


def test_dynamics_exports_a_loadable_world_model(tiny_data, tiny_tokenizer, tmp_path):
    ckpt = train_dynamics(TrainDynamicsArgs(
        data=str(tiny_data), extra_data=(str(tiny_data),), tokenizer=str(tiny_tokenizer),
        out=str(tmp_path / "dyn"), checkpoint=str(tmp_path / "wm"), steps=3, ctx_stride=5,
        device="cpu", **TINY_DYN))
    train = read_config(ckpt)["train"]
    assert train["data"] == [str(tiny_data)] * 2
    assert str(tiny_data) in train["tokens_from_cache"]  # the second copy reads the first's
    wm = WorldModel.load(ckpt)
    # the parallel head trained alone leaves every other weight as it was
    head = train_dynamics(TrainDynamicsArgs(
        data=str(tiny_data), tokenizer=str(tiny_tokenizer), init=str(ckpt),
        out=str(tmp_path / "head"), checkpoint=str(tmp_path / "wm_head"), steps=2,
        ctx_stride=5, device="cpu", parallel_head=True, head_only=True, head_layers=1,
        **TINY_DYN))
    with_head = WorldModel.load(head)
    assert with_head.resolve_decoding() == "parallel"
    new = with_head.state_dict()
    for k, v in wm.state_dict().items():
        assert torch.equal(new[k], v), k
    assert any(k.startswith("dynamics.head.") for k in new)
    again = WorldModel.load(ckpt)
    for (k, a), (_, b) in zip(wm.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    # the saved file equals the in-memory weights after a save -> load round trip
    wm.save(tmp_path / "copy", start_obs=None)
    copy = WorldModel.load(tmp_path / "copy")
    for (k, a), (_, b) in zip(wm.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k
    result = evaluate(EvalArgs(checkpoint=str(ckpt), data=str(tiny_data), split="all",
                               horizon=5, out=str(tmp_path / "eval"), device="cpu",
                               probe_starts=1))
    assert result["steps"] == 5 and (tmp_path / "eval" / "rollout.gif").exists()
    assert 0.0 <= result["action_probe"]["false_success"] <= 1.0
    grasp = result["grasp_probe"]
    assert grasp["episodes"] == 1 and grasp["pick_success_real"] == 1.0  # the script lifts
    for variant in ("open", "hover"):  # robosuite: open fingers never lift, nor close
        assert grasp[f"{variant}_success_real"] == grasp[f"{variant}_fingers_closed_real"] == 0.0
    assert 0.0 <= grasp["hover_drop_m_real"] < 0.015  # a still arm coasts, then stays
    assert 0.0 <= grasp["open_success"] <= 1.0 and "Grasp probes (1 real" in format_table(result)
    assert 0.0 <= result["open_loop"]["success_acc"]["mean"] <= 1.0
    assert 0.0 <= result["open_loop"]["success_acc_head"]["mean"] <= 1.0
    (tmp_path / "notes.md").write_text("## Measured elsewhere\nprobes\n")
    card = render_card(CardArgs(checkpoint=str(ckpt), eval=str(tmp_path / "eval/metrics.json"),
                                data=(str(tiny_data), str(tiny_data)),
                                notes=str(tmp_path / "notes.md")))
    assert card.count(f"`{tiny_data}`: 3 episodes") == 2 and "| open loop h1 |" in card
    assert card.endswith("## Measured elsewhere\nprobes\n") and "Fast decoder" not in card
    assert "Grasp head" not in card
    # the recipe's last steps: a fast decoder, the evaluation with it and with the full one
    train_decoder(TrainDecoderArgs(checkpoint=str(ckpt), rollouts=3, horizon=2, heldout=1,
                                   steps=2, batch=2, base_channels=2, device="cpu",
                                   out=str(tmp_path / "fd")))
    for decoder in ("auto", "full"):
        result = evaluate(EvalArgs(checkpoint=str(ckpt), data=str(tiny_data), split="all",
                                   horizon=3, out=str(tmp_path / f"eval_{decoder}"),
                                   device="cpu", probe_starts=0, decoder=decoder))
        assert result["decoder"] == {"auto": "fast", "full": "full"}[decoder]
    card = render_card(CardArgs(checkpoint=str(ckpt), data=(str(tiny_data),),
                                eval=str(tmp_path / "eval_auto/metrics.json"),
                                full_eval=str(tmp_path / "eval_full/metrics.json")))
    assert "## Fast decoder (`fast_decoder/`" in card and "full / fast decoder" in card
    assert "| rgb_psnr |" in card.split("## Fast decoder")[1]


def test_token_cache_matches_fresh_tokens_and_rebuilds_when_stale(tiny_data, tiny_tokenizer,
                                                                   tmp_path):
    import shutil
    import warnings

    from wmgym.spec import load_spec
    from wmgym.train.data import load_episodes, tokenize_episodes
    from wmgym.train.dynamics import load_tokenizer
    from wmgym.train.token_cache import cache_file, cached_tokenize, tokenizer_fingerprint

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("token_cache"))
    tok = load_tokenizer(tiny_tokenizer, "cpu")
    eps = load_episodes(str(data), "train", load_spec("pick").depth_range)
    fresh = tokenize_episodes(tok, eps, 4, "cpu", progress=False)
    first, hit1 = cached_tokenize(tok, data, "train", eps, 4, "cpu", progress=False)
    again, hit2 = cached_tokenize(tok, data, "train", eps, 4, "cpu", progress=False)
    assert (hit1, hit2) == (False, True)
    for a, b in zip(fresh, again):
        assert a.ctx_index == b.ctx_index and torch.equal(a.ctx_tokens, b.ctx_tokens)
        assert all(torch.equal(x, y) for x, y in zip(a.frame_tokens, b.frame_tokens))
    path = cache_file(data, "train", tokenizer_fingerprint(tok), 4)
    with pytest.warns(UserWarning, match="token cache not used"):  # other episodes: rebuilt
        _, hit = cached_tokenize(tok, data, "train", eps[:1], 4, "cpu", progress=False)
    assert not hit
    path.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="token cache not used"):
        _, hit = cached_tokenize(tok, data, "train", eps, 4, "cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached_tokenize(tok, data, "train", eps, 4, "cpu", progress=False)[1]


def test_torchrun_two_process_gloo(tiny_data, tiny_tokenizer, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "wmgym.cli", "train", "dynamics",
           "--data", str(tiny_data), "--tokenizer", str(tiny_tokenizer),
           "--out", str(tmp_path / "ddp"), "--checkpoint", str(tmp_path / "wm_ddp"),
           "--steps", "3", "--ctx-stride", "5", "--device", "cpu"]
    for k, v in TINY_DYN.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    WorldModel.load(tmp_path / "wm_ddp")


def test_state_filter_fits_imagined_rollouts_and_changes_nothing_else(tiny_data, tiny_tokenizer,
                                                                       tmp_path):
    base = train_dynamics(TrainDynamicsArgs(
        data=str(tiny_data), tokenizer=str(tiny_tokenizer), out=str(tmp_path / "dyn"),
        checkpoint=str(tmp_path / "wm"), steps=2, ctx_stride=5, device="cpu", **TINY_DYN))
    args = TrainStateFilterArgs(init=str(base), checkpoint=str(tmp_path / "wm_filter"),
                                data=str(tiny_data), split="all", starts=(0, 4), steps=80,
                                batch=3, lr=1e-2, warmup=5, filter_hidden=16, device="cpu",
                                out=str(tmp_path / "run"), log_every=10)
    out = train_state_filter(args)
    wm, fitted = WorldModel.load(base), WorldModel.load(out)
    assert fitted.dynamics.state_filter is not None and wm.dynamics.state_filter is None
    new = fitted.state_dict()
    for k, v in wm.state_dict().items():  # frames, reward and success are untouched
        assert torch.equal(new[k], v), k
    report = read_config(out)["train"]["state_filter"]["checked_on_unseen_episodes"]
    assert set(report) == {"from_step_0", "from_step_4"}
    # on the same imagined rollouts the fitted filter beats the untrained one (which holds
    # the start state still), and the rollouts replay exactly from their seeds
    eps = load_episodes(str(tiny_data), "all", wm.depth_range)
    held_still = with_filter(wm, 16)
    rollouts = imagine(held_still, eps, 0, args)
    again = imagine(fitted, eps, 0, args)
    assert torch.equal(rollouts.hidden, again.hidden)
    with torch.no_grad():
        before = filter_loss(held_still.dynamics, rollouts)[0]
        after = filter_loss(fitted.dynamics, rollouts)[0]
    assert after < 0.7 * before, (before, after)
