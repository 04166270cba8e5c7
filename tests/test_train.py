"""Training stages end to end on a tiny real dataset: single process, resume, torchrun DDP."""

import os
import subprocess
import sys

import pytest
import torch

from wmgym.data.collect import CollectArgs, collect
from wmgym.model.checkpoint import read_config
from wmgym.model.fast_decoder import has_fast_decoder
from wmgym.model.fast_dynamics import has_fast_dynamics
from wmgym.model.world_model import WorldModel
from wmgym.train.distill import TrainDecoderArgs, train_decoder
from wmgym.train.dynamics import TrainDynamicsArgs, train_dynamics
from wmgym.train.fast_dynamics import TrainFastDynamicsArgs, train_fast_dynamics
from wmgym.train.tokenizer import TrainTokenizerArgs, train_tokenizer

TINY_DYN = dict(d_model=32, n_layer=1, n_head=2, max_frames=4, batch=2, bank_size=2)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "data"
    collect(CollectArgs(task="pick", out=str(out), episodes=3, workers=2, max_steps=10,
                        heldout=0.34))
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
    # the task comes from the dataset; the dims from the task's spec
    ckpt = train_dynamics(TrainDynamicsArgs(
        data=str(tiny_data), extra_data=(str(tiny_data),), tokenizer=str(tiny_tokenizer),
        out=str(tmp_path / "dyn"), checkpoint=str(tmp_path / "wm"), steps=3, ctx_stride=5,
        device="cpu", gap_embedding=True, state_input=True, event_share=0.5, **TINY_DYN))
    config = read_config(ckpt)
    train = config["train"]
    assert config["task"] == "Pick" and train["data"] == [str(tiny_data)] * 2
    assert (config["dynamics"]["action_dim"], config["dynamics"]["state_dim"]) == (4, 8)
    assert config["dynamics"]["event"] is None and train["event_head"] is None
    assert str(tiny_data) in train["tokens_from_cache"]  # the second copy reads the first's
    wm = WorldModel.load(ckpt)
    assert wm.dynamics.gap_emb is not None and wm.dynamics.state_proj is not None
    # a fine-tune from it keeps what it had and trains on
    tuned = train_dynamics(TrainDynamicsArgs(
        data=str(tiny_data), tokenizer=str(tiny_tokenizer), init=str(ckpt),
        out=str(tmp_path / "ft"), checkpoint=str(tmp_path / "wm_ft"), steps=2, ctx_stride=5,
        device="cpu", gap_embedding=True, state_input=True, **TINY_DYN))
    assert not torch.equal(WorldModel.load(tuned).dynamics.slot, wm.dynamics.slot)
    # the saved file equals the in-memory weights after a save -> load round trip
    wm.save(tmp_path / "copy", start_obs=None)
    copy = WorldModel.load(tmp_path / "copy")
    for (k, a), (_, b) in zip(wm.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k
    # the recipe's last steps: a fast decoder and a fast transformer, from the model alone
    train_decoder(TrainDecoderArgs(checkpoint=str(ckpt), rollouts=3, horizon=2, heldout=1,
                                   steps=2, batch=2, base_channels=2, device="cpu",
                                   policies=("pick", "random"), out=str(tmp_path / "fd")))
    train_fast_dynamics(TrainFastDynamicsArgs(
        checkpoint=str(ckpt), rollouts=4, horizon=3, heldout=1, steps=2, batch=2,
        eval_windows=2, policies=("pick", "random"), out=str(tmp_path / "fdyn"),
        device="cpu"))
    assert has_fast_decoder(ckpt) and has_fast_dynamics(ckpt)
    assert WorldModel.load(ckpt, dynamics="fast").dynamics.cfg.kv_heads == 1


def test_options_that_do_not_fit_fail_early(tiny_data, tiny_tokenizer, tmp_path):
    args = dict(data=str(tiny_data), tokenizer=str(tiny_tokenizer), out=str(tmp_path / "d"),
                checkpoint=str(tmp_path / "wm"), steps=1, device="cpu", **TINY_DYN)
    with pytest.raises(ValueError, match="--event needs --state-input"):
        train_dynamics(TrainDynamicsArgs(event=True, **args))
    with pytest.raises(ValueError, match="share of clips"):
        train_dynamics(TrainDynamicsArgs(event_share=1.5, **args))


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


@pytest.mark.slow
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
