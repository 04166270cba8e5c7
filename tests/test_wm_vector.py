"""WM-Pick-v0 as a native vector env: one model call, and each sub-env is the single env."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode

from wmgym.env import WorldModelVectorEnv, load_checkpoint
from wmgym.env.testing import make_tiny_checkpoint
from wmgym.spec import load_spec

MAX_STEPS = 15


# exact reproducibility is promised on CPU (CUDA kernels may add in any order)
DEVICE = "cpu"



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    # success_bias=-0.5: about one step in eight succeeds, so episodes end at staggered times
    return make_tiny_checkpoint(tmp_path_factory.mktemp("wm") / "WM-Pick-v0", success_bias=-0.5,
                                task="pick")


@pytest.fixture(scope="module")
def bank(ckpt) -> dict[str, np.ndarray]:
    return load_checkpoint(ckpt, load_spec("pick")).start_obs


def make_vec(ckpt, num_envs: int, **kw) -> gym.vector.VectorEnv:
    kw.setdefault("max_episode_steps", MAX_STEPS)
    return gym.make_vec(
        "WM-Pick-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        checkpoint=ckpt,
        device=DEVICE,
        **kw,
    )


def actions(steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (steps, num_envs, 4)).astype(np.float32)


def single_trajectory(ckpt, seed: int, acts: np.ndarray, **kw) -> list[tuple]:
    """Steps of ``gym.make`` with autoreset done by hand: (obs, r, term, trunc, final, tokens)."""
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE, max_episode_steps=MAX_STEPS,
                   **kw)
    env.reset(seed=seed)
    out = []
    for a in acts:
        obs, reward, terminated, truncated, _ = env.step(a)
        tokens = env.unwrapped.core.tokens[0].copy()
        final = None
        if terminated or truncated:
            final, obs = obs, env.reset()[0]
        out.append((obs, reward, terminated, truncated, final, tokens))
    return out


def vector_trajectory(envs, seed: int, acts: np.ndarray) -> list[tuple]:
    envs.reset(seed=seed)
    out = []
    for a in acts:
        obs, reward, terminated, truncated, infos = envs.step(a)
        final = infos.get("final_obs", np.full(envs.num_envs, None))
        out.append((obs, reward, terminated, truncated, final, envs.unwrapped.core.tokens.copy()))
    return out


def assert_obs_close(a: dict, b: dict, scale: float = 1.0) -> None:
    """Equal up to float32 rounding: batched kernels add in another order than batch-1 ones.

    ``scale`` widens the tolerances (a bfloat16 KV cache rounds keys rotated at other
    positions differently).
    """
    assert a.keys() == b.keys()
    np.testing.assert_allclose(a["rgb"].astype(int), b["rgb"].astype(int), atol=scale, rtol=0)
    np.testing.assert_allclose(a["depth"], b["depth"], atol=1e-4 * scale, rtol=0)
    if scale == 1.0:
        np.testing.assert_array_equal(a["mask"], b["mask"])
    else:
        assert (a["mask"] != b["mask"]).mean() < 1e-3
    np.testing.assert_allclose(a["state"], b["state"], atol=1e-5 * scale, rtol=0)


# ----------------------------------------------------------------------------- construction


def test_make_vec_builds_the_native_batched_env(ckpt):
    envs = gym.make_vec(
        "WM-Pick-v0", num_envs=3, checkpoint=ckpt, device=DEVICE
    )  # vector_entry_point by default
    assert isinstance(envs, WorldModelVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert envs.max_episode_steps == load_spec("pick").max_episode_steps
    single = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    assert envs.single_observation_space == single.observation_space
    assert envs.single_action_space == single.action_space
    assert envs.observation_space["rgb"].shape == (3, 64, 64, 3)
    assert envs.action_space.shape == (3, 4)
    obs, infos = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert infos["success"].tolist() == [False] * 3 and infos["_success"].all()
    with pytest.raises(ResetNeeded):
        make_vec(ckpt, 2).step(np.zeros((2, 4), np.float32))


def test_one_model_call_per_step(ckpt, monkeypatch):
    from wmgym.model.world_model import WorldModel

    envs = make_vec(ckpt, 4)
    envs.reset(seed=0)
    calls, step = [], WorldModel.step

    def spy(self, state, a, **kw):
        calls.append(tuple(a.shape))
        return step(self, state, a, **kw)

    monkeypatch.setattr(WorldModel, "step", spy)
    envs.step(np.zeros((4, 4), np.float32))
    assert calls == [(4, 4)]


# ----------------------------------------------------------------------------- equivalence


def test_vec_of_one_equals_the_single_env_exactly(ckpt):
    acts = actions(60, 1)
    single = single_trajectory(ckpt, 7, acts[:, 0])
    vec = vector_trajectory(make_vec(ckpt, 1), 7, acts)
    assert sum(s[2] or s[3] for s in single) >= 3, "the episodes should end a few times"
    for (obs, r, term, trunc, final, tok), (vobs, vr, vterm, vtrunc, vfinal, vtok) in zip(
        single, vec
    ):
        assert (term, trunc) == (vterm[0], vtrunc[0]) and r == vr[0]
        for k in obs:
            np.testing.assert_array_equal(obs[k], vobs[k][0])
            if final is not None:
                np.testing.assert_array_equal(final[k], vfinal[0][k])
        assert (final is None) == (vfinal[0] is None)
        np.testing.assert_array_equal(tok, vtok[0])


def test_sub_env_i_equals_the_single_env_seeded_s_plus_i(ckpt, scale=1.0):
    """Same sampled tokens and flags, step by step, through staggered autoresets.

    A sub-env's keys sit at other cache positions than the single env's; float32 rounds them
    alike (observations equal to float32 rounding).
    """
    n, seed, acts = 3, 10, actions(60, 3, seed=1)
    vec = vector_trajectory(make_vec(ckpt, n), seed, acts)
    for i in range(n):
        single = single_trajectory(ckpt, seed + i, acts[:, i])
        for t, (
            (obs, r, term, trunc, final, tok),
            (vobs, vr, vterm, vtrunc, vfinal, vtok),
        ) in enumerate(zip(single, vec)):
            np.testing.assert_array_equal(tok, vtok[i], err_msg=f"env {i} step {t}")
            assert (term, trunc) == (vterm[i], vtrunc[i]), f"env {i} step {t}"
            assert r == pytest.approx(vr[i], abs=1e-5 * scale)
            assert_obs_close(obs, {k: v[i] for k, v in vobs.items()}, scale)
            assert (final is None) == (vfinal[i] is None)
            if final is not None:
                assert_obs_close(final, vfinal[i], scale)
    ends = [[t for t, s in enumerate(vec) if s[2][i] or s[3][i]] for i in range(n)]
    assert len({tuple(e) for e in ends}) == n, f"episodes should end at different steps: {ends}"


# ----------------------------------------------------------------------------- actions


def test_batched_actions_are_validated(ckpt):
    envs = make_vec(ckpt, 3)
    envs.reset(seed=0)
    for bad, problem in [
        (np.zeros((2, 4)), "shape"),
        (np.zeros((3, 3)), "shape"),
        (np.zeros(4), "shape"),
        (np.full((3, 4), np.nan), "NaN"),
        (np.full((3, 4), -np.inf), "inf"),
    ]:
        with pytest.raises(ValueError, match=problem):
            envs.step(bad)


def test_batched_out_of_bounds_actions_equal_clipped(ckpt):
    acts = actions(20, 3) * 3
    big = vector_trajectory(make_vec(ckpt, 3), 0, acts)
    clipped = vector_trajectory(make_vec(ckpt, 3), 0, np.clip(acts, -1, 1))
    for a, b in zip(big, clipped):
        for k in a[0]:
            np.testing.assert_array_equal(a[0][k], b[0][k])
        np.testing.assert_array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- autoreset, resets


def test_same_step_autoreset_reports_final_obs_and_info(ckpt, bank):
    envs = make_vec(ckpt, 3, max_episode_steps=4, terminate_on_success=False)
    envs.reset(seed=0)
    for _ in range(3):
        _, _, _, truncated, infos = envs.step(envs.action_space.sample())
        assert not truncated.any() and "final_obs" not in infos
    obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
    assert truncated.all() and not terminated.any()
    assert infos["_final_obs"].all() and infos["_final_info"].all()
    for i in range(3):
        final = infos["final_obs"][i]
        assert envs.single_observation_space.contains(final)
        # the returned observation already starts the next episode: a real start observation
        assert any(np.array_equal(obs["state"][i], s) for s in bank["state"])
        assert not np.array_equal(final["rgb"], obs["rgb"][i])
    keys = ("success", "success_prob", "uncertainty", "event_doubt")
    assert set(infos["final_info"]) == {*keys, *(f"_{k}" for k in keys)}
    assert not infos["success"].any() and (infos["success_prob"] == 0).all()  # reset infos
    assert (infos["uncertainty"][infos["_final_info"]] == 0).all()
    assert (infos["event_doubt"][infos["_final_info"]] == 0).all()
    # and the next step runs in the new episodes
    _, _, _, truncated, infos = envs.step(envs.action_space.sample())
    assert not truncated.any() and "final_obs" not in infos


def test_terminations_reset_only_the_finished_sub_envs(ckpt):
    envs = make_vec(ckpt, 4, max_episode_steps=None)
    envs.reset(seed=3)
    seen = False
    for _ in range(40):
        before = envs.unwrapped.core.state.steps.clone()
        _, _, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert not truncated.any()
        steps = envs.unwrapped.core.state.steps
        if terminated.any() and not terminated.all():
            seen = True
            np.testing.assert_array_equal(infos["_final_obs"], terminated)
            assert all((infos["final_obs"][i] is None) != terminated[i] for i in range(4))
            assert infos["final_info"]["success"][terminated].all()
            assert (steps[torch.as_tensor(terminated)] == 0).all()
            assert (
                steps[torch.as_tensor(~terminated)] == before[torch.as_tensor(~terminated)] + 1
            ).all()
    assert seen


def test_partial_reset_with_reset_mask(ckpt):
    acts = actions(12, 3)
    ref = make_vec(ckpt, 3, max_episode_steps=None, terminate_on_success=False)
    envs = make_vec(ckpt, 3, max_episode_steps=None, terminate_on_success=False)
    ref.reset(seed=0)
    envs.reset(seed=0)
    for t in range(4):
        ref.step(acts[t])
        envs.step(acts[t])
    mask = np.array([False, True, False])
    obs, infos = envs.reset(seed=[None, 99, None], options={"reset_mask": mask})
    assert infos["_success"].tolist() == mask.tolist()
    fresh, _ = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).reset(seed=99)
    for k in fresh:
        np.testing.assert_array_equal(obs[k][1], fresh[k])
    steps = envs.unwrapped.core.state.steps.tolist()
    assert steps == [4, 0, 4]
    for t in range(4, 12):  # sub-envs 0 and 2 carry on as if nothing happened
        a = ref.step(acts[t])
        b = envs.step(acts[t])
        np.testing.assert_array_equal(
            ref.unwrapped.core.tokens[[0, 2]], envs.unwrapped.core.tokens[[0, 2]]
        )
        for i in (0, 2):
            assert_obs_close({k: v[i] for k, v in a[0].items()}, {k: v[i] for k, v in b[0].items()})
    for bad, error in [
        (mask.tolist(), TypeError),
        (np.array([True, False]), ValueError),
        (np.zeros(3, bool), ValueError),
        (np.ones(3, int), TypeError),
    ]:
        with pytest.raises(error):
            envs.reset(options={"reset_mask": bad})


def test_batched_context(ckpt, bank):
    envs = make_vec(ckpt, 3)
    order = [2, 0, 1]
    context = {k: v[order] for k, v in bank.items()}
    obs, _ = envs.reset(seed=0, options={"context": context})
    for k in context:
        np.testing.assert_array_equal(obs[k], context[k])
    np.testing.assert_array_equal(obs["proprio"], context["state"][:, :5])
    # reset some sub-envs from their own contexts (one per reset sub-env, or all N)
    mask = np.array([True, False, True])
    one_each = {k: v[[3, 3]] for k, v in bank.items()}
    obs, _ = envs.reset(options={"context": one_each, "reset_mask": mask})
    np.testing.assert_array_equal(obs["rgb"][[0, 2]], bank["rgb"][[3, 3]])
    np.testing.assert_array_equal(obs["rgb"][1], bank["rgb"][0])
    # recent observations (N, T, ...) with the actions between them (N, T - 1, 4)
    history = {k: np.stack([v[[0, 1, 2]], v[[1, 2, 3]], v[[2, 3, 0]]]) for k, v in bank.items()}
    acts = np.zeros((3, 2, 4), np.float32)
    obs, _ = envs.reset(seed=0, options={"context": history, "context_actions": acts})
    for k in history:
        np.testing.assert_array_equal(obs[k], history[k][:, -1])
    obs, *_ = envs.step(np.zeros((3, 4), np.float32))
    assert envs.observation_space.contains(obs)
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"context": history, "context_actions": acts, "reset_mask": mask})
    with pytest.raises(ValueError, match="holds 4 observations"):
        envs.reset(options={"context": dict(bank)})


def test_render_returns_a_frame_per_sub_env(ckpt):
    envs = make_vec(ckpt, 2, render_mode="rgb_array")
    obs, _ = envs.reset(seed=0)
    frames = envs.render()
    assert len(frames) == 2 and all(f.shape == (64, 192, 3) for f in frames)
    np.testing.assert_array_equal(frames[1][:, :64], obs["rgb"][1])
    assert make_vec(ckpt, 2).render() is None


def test_cpu_decoding_in_chunks_matches_one_pass(ckpt):
    """``WorldModel.decode`` splits big CPU batches; the frames are those of one pass."""
    from wmgym.model.frames import obs_to_frames
    from wmgym.model.world_model import WorldModel, cpu_decode_chunk

    wm = WorldModel.load(ckpt, "cpu")
    start = load_checkpoint(ckpt, load_spec("pick"), "cpu").start_obs
    n = 2 * cpu_decode_chunk(wm.tokenizer.fut_decoder) + 3  # two full chunks and a short one
    rows = np.arange(n) % len(start["rgb"])
    frames = obs_to_frames(start["rgb"][rows], start["depth"][rows], start["mask"][rows],
                           wm.depth_range)
    state = wm.reset(frames, generators=[torch.Generator().manual_seed(i) for i in range(n)])
    out, state = wm.step(state, torch.zeros(n, 4))
    whole = wm.tokenizer.decode_future(out.tokens, state.ctx.feats)
    assert out.frames.shape == whole.shape == (n, 5, *frames.shape[-2:])
    torch.testing.assert_close(out.frames, whole, rtol=0, atol=1e-5)
