"""Gymnasium's battery on every shipped learned twin, with its own weights.

``test_wm_env.py`` and ``test_wm_vector.py`` run the whole contract on a tiny random Pick
checkpoint; here each shipped ``WM-<Task>-v0`` (Pick, Door, Stack when trained) passes the part
of it that a task's own layout and weights could break: ``check_env``, seeded determinism,
clipping, bad actions and the vector env against the single env.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmgym.env.testing import assert_same, check_env_warnings, seeded_rollout
from wmgym.registration import register_all
from wmgym.spec import load_spec

TASKS = ("pick", "door", "stack")
STEPS = 8

pytestmark = pytest.mark.slow


def _shipped(task: str):
    return pytest.param(task, marks=pytest.mark.skipif(
        not (load_spec(task).checkpoint / "config.json").exists(),
        reason=f"no shipped {task} checkpoint"))


@pytest.fixture(scope="module", params=[_shipped(t) for t in TASKS])
def env_id(request) -> str:
    register_all()
    torch.set_num_threads(1)
    return load_spec(request.param).wm_id


def make(env_id: str, **kw) -> gym.Env:
    return gym.make(env_id, device="cpu", fast=True, **kw)


def actions(steps: int, shape: tuple[int, ...] = (4,), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (steps, *shape)).astype(np.float32)


def test_check_env_without_warnings(env_id):
    env = make(env_id, render_mode="rgb_array")
    messages = check_env_warnings(env)
    assert not messages, messages


def test_spaces_are_the_real_twins(env_id):
    wm = make(env_id)
    sim = gym.make(env_id.replace("WM-", "Sim-"))
    try:
        assert wm.observation_space == sim.observation_space
        assert wm.action_space == sim.action_space
        assert wm.spec.max_episode_steps == sim.spec.max_episode_steps
    finally:
        sim.close()
        wm.close()


def test_seeded_rollout_reproduces_exactly(env_id):
    acts = actions(STEPS)
    assert_same(seeded_rollout(make(env_id), seed=3, actions=acts),
                seeded_rollout(make(env_id), seed=3, actions=acts))


def test_out_of_bounds_actions_equal_clipped(env_id):
    acts = actions(STEPS, seed=1) * 3.0
    assert_same(seeded_rollout(make(env_id), seed=5, actions=acts),
                seeded_rollout(make(env_id), seed=5, actions=np.clip(acts, -1, 1)))


@pytest.mark.parametrize(("action", "problem"), [
    (np.array([np.nan, 0, 0, 0], np.float32), "NaN"),
    (np.array([0, np.inf, 0, 0], np.float32), "inf"),
    (np.zeros(3, np.float32), "shape"),
])
def test_bad_actions_raise_and_lose_nothing(env_id, action, problem):
    env = make(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=problem):
        env.step(action)
    obs, *_ = env.step(np.zeros(4, np.float32))  # the episode goes on
    assert env.observation_space.contains(obs)


def test_sub_env_i_is_the_single_env_seeded_s_plus_i(env_id):
    n, seed, acts = 2, 11, actions(STEPS, (2, 4), seed=2)
    envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point",
                        device="cpu", fast=True)
    obs, _ = envs.reset(seed=seed)
    vec = [(obs, None)]
    for a in acts:
        obs, reward, *_ = envs.step(a)
        vec.append((obs, reward))
    for i in range(n):
        single = make(env_id)
        obs, _ = single.reset(seed=seed + i)
        steps = [(obs, None)] + [single.step(a[i])[:2] for a in acts]
        for (o, r), (vo, vr) in zip(steps, vec):
            np.testing.assert_allclose(o["rgb"].astype(int), vo["rgb"][i].astype(int), atol=1)
            np.testing.assert_allclose(o["state"], vo["state"][i], atol=1e-4)
            if r is not None:
                assert r == pytest.approx(vr[i], abs=1e-5)
