"""The distilled frame decoder: `wmgym train decoder` on a tiny checkpoint, the envs with it."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from wmgym.env import clear_cache
from wmgym.env.testing import check_companion_errors, make_tiny_checkpoint, step_in_lockstep
from wmgym.model.checkpoint import CheckpointError, load_start_obs, read_config
from wmgym.model.fast_decoder import SUBDIR, has_fast_decoder, load_fast_decoder
from wmgym.train.distill import TrainDecoderArgs, train_decoder

DEVICE = "cpu"


def distil(checkpoint, out, steps: int) -> dict:
    """Distils the tiny checkpoint's decoder; returns the fast decoder's config."""
    train_decoder(TrainDecoderArgs(
        checkpoint=str(checkpoint), rollouts=6, horizon=4, heldout=2, steps=steps, batch=8,
        base_channels=2, channel_mult=(1, 2, 2, 2, 2), policies=("pick", "random"),
        lr=1e-2, warmup=5, out=str(out), device=DEVICE, log_every=10,
    ))
    return read_config(checkpoint / SUBDIR)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """A tiny checkpoint with a fast decoder distilled for 60 steps."""
    root = tmp_path_factory.mktemp("fast")
    ckpt = make_tiny_checkpoint(root / "WM-Pick-v0", task="pick")
    distil(ckpt, root / "run", steps=60)
    return ckpt


def test_distillation_learns_the_teacher(fast, tmp_path):
    # the same recipe with 1 step instead of 60: the trained student is measurably closer
    # to the teacher on the held-out rollouts
    short = make_tiny_checkpoint(tmp_path / "WM-Pick-v0", task="pick")
    barely = distil(short, tmp_path / "run", steps=1)["distill"]["heldout_vs_teacher"]
    config = read_config(fast / SUBDIR)
    trained = config["distill"]["heldout_vs_teacher"]
    assert trained["psnr"] > barely["psnr"] + 2.0, (trained, barely)
    assert config["teacher_sha256"] == read_config(fast)["sha256"]
    assert config["tokenizer"]["decoder_subpixel"] == 2


def test_envs_with_the_fast_decoder(fast):
    # same tokens, so the same state, reward and success; other pixels, in the same spaces
    full = gym.make("WM-Pick-v0", checkpoint=fast, device=DEVICE, fast="full")
    quick = gym.make("WM-Pick-v0", checkpoint=fast, device=DEVICE)  # default: fast if present
    assert quick.unwrapped.core.decoder == "fast" and full.unwrapped.core.decoder == "full"
    check_env(quick.unwrapped, skip_render_check=True)
    o1, _ = full.reset(seed=4)
    o2, _ = quick.reset(seed=4)
    np.testing.assert_array_equal(o1["rgb"], o2["rgb"])  # the real start frame
    pairs = step_in_lockstep(full, quick, steps=6)
    assert all(quick.observation_space.contains(o) for _, o in pairs)
    differ = sum(not np.array_equal(a["rgb"], b["rgb"]) for a, b in pairs)
    assert differ
    envs = gym.make_vec("WM-Pick-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        checkpoint=fast, device=DEVICE, render_mode="rgb_array")
    obs, _ = envs.reset(seed=0)
    for _ in range(3):
        obs, *_ = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs)
    assert envs.render()[0].shape == (64, 3 * 64, 3)


def test_a_checkpoint_without_a_fast_decoder(tmp_path):
    plain = make_tiny_checkpoint(tmp_path / "plain", task="pick")
    assert not has_fast_decoder(plain)
    assert gym.make("WM-Pick-v0", checkpoint=plain).unwrapped.core.decoder == "full"
    with pytest.raises(CheckpointError, match="wmgym train decoder"):
        load_fast_decoder(plain)


def test_stale_or_damaged_fast_decoder_names_the_files(fast, tmp_path):
    stale = check_companion_errors(load_fast_decoder, fast, SUBDIR, tmp_path)
    clear_cache()
    with pytest.raises(CheckpointError, match="distilled from weights"):
        gym.make("WM-Pick-v0", checkpoint=stale)  # the default picks it and fails loudly
    assert gym.make("WM-Pick-v0", checkpoint=stale, fast="full").reset(seed=0)


def test_saving_new_weights_removes_the_stale_fast_decoder(fast, tmp_path):
    from wmgym.model.world_model import WorldModel

    copy = tmp_path / "copy"
    shutil.copytree(fast, copy)
    model, bank = WorldModel.load(copy), load_start_obs(copy)
    model.save(copy, {"task": "Pick"}, bank)  # the same weights: the decoder still fits
    assert has_fast_decoder(copy)
    with torch.no_grad():
        model.dynamics.slot.add_(1.0)  # "retrained"
    model.save(copy, {"task": "Pick"}, bank)
    assert not has_fast_decoder(copy)
    assert gym.make("WM-Pick-v0", checkpoint=copy).unwrapped.core.decoder == "full"


def distil_from(checkpoint, out, other) -> dict:
    """One step of distillation into ``checkpoint`` from ``other``'s fast decoder."""
    train_decoder(TrainDecoderArgs(
        checkpoint=str(checkpoint), rollouts=6, horizon=4, heldout=2, steps=1, batch=8,
        policies=("pick", "random"), lr=1e-4, warmup=1, out=str(out), device=DEVICE,
        init_from=str(other),
    ))
    return read_config(checkpoint / SUBDIR)


def test_init_from_starts_from_another_checkpoints_decoder(fast, tmp_path):
    from wmgym.model.world_model import WorldModel

    copy = tmp_path / "copy"  # a fine-tune that kept the tokenizer: the decoder goes stale
    shutil.copytree(fast, copy)
    model, bank = WorldModel.load(copy), load_start_obs(copy)
    with torch.no_grad():
        model.dynamics.slot.add_(1.0)
    model.save(copy, {"task": "Pick"}, bank)
    assert not has_fast_decoder(copy)
    report = distil_from(copy, tmp_path / "run", fast)["distill"]
    first = read_config(fast / SUBDIR)["distill"]["heldout_vs_teacher"]
    scratch = distil(make_tiny_checkpoint(tmp_path / "scratch", task="pick"), tmp_path / "run2",
                     steps=1)["distill"]["heldout_vs_teacher"]
    # it starts near where the other decoder ended, far above one from scratch
    assert report["heldout_vs_teacher_at_start"]["psnr"] > scratch["psnr"] + 2.0
    assert abs(report["heldout_vs_teacher_at_start"]["psnr"] - first["psnr"]) < 3.0
    assert load_fast_decoder(copy) is not None  # bound to the new weights


def test_state_only_envs_load_the_decoder_when_rendering(fast, tmp_path):
    stale = check_companion_errors(load_fast_decoder, fast, SUBDIR, tmp_path)
    clear_cache()
    env = gym.make("WM-Pick-v0", checkpoint=stale, images=False, render_mode="rgb_array")
    env.reset(seed=0)
    env.step(env.action_space.sample())  # no frames to decode: the decoder is not needed
    with pytest.raises(CheckpointError, match="distilled from weights"):
        env.render()


def test_init_from_needs_the_same_tokenizer(fast, tmp_path):
    other = tmp_path / "other"  # a checkpoint whose tokenizer is another one
    shutil.copytree(fast, other)
    config = read_config(other)
    config["tokenizer"]["fsq_levels"] = [8, 8, 8]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tokenizer is not"):
        distil_from(fast, tmp_path / "run", other)
