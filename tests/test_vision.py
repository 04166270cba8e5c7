"""Camera-based actors (:mod:`wmgym.vision`) and imitation in a twin (:mod:`wmgym.imitation`).

A frozen vision actor acts exactly as the trained one; its folder refuses a missing tensor;
DrQ's shift moves whole images; one tiny imitation run in WM-Pick-v0 gathers labelled imagined
steps (DART, then DAgger) and trains the actor, without a robosuite step.
"""

import json

import numpy as np
import pytest
import torch

from wmgym.agents import AgentError, load_agent, write_agent
from wmgym.policies import reads_images
from wmgym.spec import load_spec
from wmgym.vision import VISION_KEYS, VisionActor, image_batch, random_shift

SPEC = load_spec("pick")


def observations(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = SPEC.resolution
    return {"rgb": rng.integers(0, 256, (n, r, r, 3), dtype=np.uint8),
            "depth": rng.uniform(0.5, 2.0, (n, r, r, 1)).astype(np.float32),
            "mask": rng.integers(0, 2, (n, r, r, 1), dtype=np.uint8),
            "proprio": rng.normal(0.0, 0.1, (n, 5)).astype(np.float32),
            "state": np.full((n, 8), np.nan, np.float32)}  # never read


def actor(binary: tuple[int, ...] = ()) -> VisionActor:
    torch.manual_seed(0)
    a = VisionActor(resolution=SPEC.resolution, proprio_dim=5, action_dim=4,
                    depth_range=SPEC.depth_range, binary=binary)
    a.fit_proprio(observations(32)["proprio"])
    return a.eval()


@pytest.mark.parametrize("binary", [(), (3,)])
def test_frozen_vision_actor_acts_as_trained(tmp_path, binary):
    a, obs = actor(binary), observations(6)
    tensors, arch = a.export()
    directory = write_agent(tmp_path / "v", tensors, arch, task="pick")
    frozen = load_agent(directory)
    assert frozen.observation_keys == VISION_KEYS and reads_images(frozen)
    np.testing.assert_allclose(frozen(obs), a.act(obs), atol=1e-5)
    one = {k: v[0] for k, v in obs.items()}  # no batch axis
    np.testing.assert_allclose(frozen(one), a.act(obs)[0], atol=1e-5)
    grid = {k: v.reshape(2, 3, *v.shape[1:]) for k, v in obs.items()}  # two batch axes
    assert frozen(grid).shape == (2, 3, 4)
    assert np.isfinite(frozen(obs)).all()  # state (NaN here) is never read
    for d in binary:  # on/off commands are ±1
        assert set(np.unique(frozen(obs)[:, d])) <= {-1.0, 1.0}


def test_a_vision_agent_missing_a_conv_tensor_is_refused(tmp_path):
    tensors, arch = actor().export()
    del tensors["features.conv2.bias"]
    directory = write_agent(tmp_path / "v", tensors, arch, task="pick")
    with pytest.raises(AgentError, match="features.conv2.bias"):
        load_agent(directory)


def test_images_scale_to_unit_range_and_shift_whole():
    obs = observations(3)
    x = image_batch(obs, SPEC.depth_range)
    assert x.shape == (3, 5, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    gen = torch.Generator().manual_seed(0)
    shifted = random_shift(x, pad=4, generator=gen)
    assert shifted.shape == x.shape
    # a shift by (dx, dy) keeps the interior: some offset maps the crop's centre onto x's
    centre = shifted[0, :, 8:56, 8:56]
    found = any(torch.equal(centre, x[0, :, 8 + dy:56 + dy, 8 + dx:56 + dx])
                for dy in range(-4, 5) for dx in range(-4, 5))
    assert found


@pytest.mark.slow
def test_imitation_in_imagination_gathers_and_trains(tmp_path):
    from wmgym.imitation import ImitateArgs, imitate_main

    report = imitate_main(ImitateArgs(
        task="pick", expert="pick:press=0.03", steps=48, num_envs=4, rounds=2, train_steps=3,
        batch=8, eval_episodes=0, device="cpu", out=str(tmp_path), progress=False))
    assert report["dataset_steps"] == 48 and report["expert"] == "pick:press=0.03"
    assert report["binary_dims"] == [3]  # the expert only opens or closes the gripper
    assert [r["kind"] for r in report["rounds"]] == ["dart", "dagger"]
    meta = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert meta["architecture"]["features"]["kind"] == "vision"
    agent = load_agent(tmp_path / "agent")
    assert agent(observations(2)).shape == (2, 4)


@pytest.mark.slow
def test_transfer_imitates_in_imagination_and_scores_with_cameras(tmp_path):
    from wmgym.transfer import TransferArgs, run_transfer

    result = run_transfer(TransferArgs(
        task="pick", algo="imitate", twins=("wm",), steps=48, wm_envs=4, eval_episodes=2,
        imitation_train_steps=2, device="cpu", out=tmp_path, progress=False))
    wm = result["twins"]["wm"]
    assert wm["steps"] == 48 and [r["kind"] for r in wm["rounds"]] == ["dart", "dagger", "dagger"]
    assert 0.0 <= wm["real_success"] <= 1.0 and 0.0 <= wm["imagined_success"] <= 1.0
    assert (tmp_path / "wm" / "agent" / "agent.json").exists()


@pytest.mark.slow
def test_example_trains_in_imagination_and_runs_in_robosuite(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "train_vision_in_imagination.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    cmd = [sys.executable, str(script), "--steps", "32", "--num-envs", "4", "--rounds", "2",
           "--train-steps", "2", "--episodes", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "real success" in proc.stdout and (tmp_path / "agent" / "agent.json").exists()


def test_shipped_agent_is_found_or_named_missing(tmp_path, monkeypatch):
    from wmgym.agents import AgentError, shipped_agent

    assert shipped_agent("pick-vision").observation_keys == VISION_KEYS
    monkeypatch.setenv("WMGYM_HOME", str(tmp_path))
    with pytest.raises(AgentError, match="no shipped agent 'nope'"):
        shipped_agent("nope")
