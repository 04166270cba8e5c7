"""WM-Pick-v0 as a single Gymnasium env: Gymnasium's battery, the twin's contract, checkpoints."""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import FilterObservation, RenderCollection

from wmgym.env import load_checkpoint
from wmgym.env.testing import assert_same, check_env_warnings, seeded_rollout, step_in_lockstep
from wmgym.model.checkpoint import CONFIG, START_OBS, WEIGHTS, CheckpointError
from wmgym.spec import load_spec
from wmgym.viz import tile_frame

# exact reproducibility is promised on CPU (CUDA kernels may add in any order)
DEVICE = "cpu"



def rollout(env, seed: int, steps: int, action_seed: int = 0, scale: float = 1.0):
    """Seeded episode(s) with random actions; resets after termination or truncation."""
    actions = np.random.default_rng(action_seed).uniform(-1, 1, (steps, 4)).astype(np.float32)
    return seeded_rollout(env, seed=seed, actions=actions * scale)


# ----------------------------------------------------------------------------- registration


def test_registered_with_both_entry_points():
    spec = gym.spec("WM-Pick-v0")
    assert spec.entry_point == "wmgym.env.world_model_env:WorldModelEnv"
    assert spec.vector_entry_point == "wmgym.env.vector_env:WorldModelVectorEnv"
    assert spec.max_episode_steps == load_spec("pick").max_episode_steps
    assert spec.kwargs == {"task": "Pick"}


def test_spaces_are_exactly_the_twins(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    task = load_spec("pick")
    assert env.observation_space == task.observation_space()
    assert env.action_space == task.action_space()
    auto = gym.make("WM-Pick-v0", checkpoint=ckpt).unwrapped.core.device
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_keyword_arguments_only_and_few(ckpt):
    import inspect

    from wmgym.env import WorldModelEnv

    params = inspect.signature(WorldModelEnv).parameters
    assert len(params) <= 10
    assert all(p.kind == p.KEYWORD_ONLY for name, p in params.items() if name != "task")
    with pytest.raises(TypeError):
        WorldModelEnv("pick", ckpt)  # the checkpoint is keyword-only


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_value_error(ckpt):
    with pytest.raises(ValueError, match="no CUDA device"):
        gym.make("WM-Pick-v0", checkpoint=ckpt, device="cuda")


def test_proprio_is_the_robots_own_part_of_state(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    obs, _ = env.reset(seed=0)
    spec = load_spec("pick")
    for _ in range(3):
        np.testing.assert_array_equal(obs["proprio"], obs["state"][spec.proprio_index])
        obs, *_ = env.step(env.action_space.sample())


def test_speed_presets(ckpt):
    from wmgym.env.core import resolve_preset

    assert resolve_preset(False) == resolve_preset("default") == ("full", "auto")
    assert resolve_preset(True) == resolve_preset("fast") == ("fast", "auto")
    assert resolve_preset("full") == ("full", "full")
    with pytest.raises(ValueError, match="fast must be"):
        gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE, fast="warp")


def test_check_env_without_warnings(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE, render_mode="rgb_array")
    messages = check_env_warnings(env)
    assert not messages, messages


# ----------------------------------------------------------------------------- determinism


def test_seeded_rollout_reproduces_exactly(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    a = rollout(env, seed=42, steps=50)
    b = rollout(gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE), seed=42, steps=50)
    c = rollout(env, seed=42, steps=50)  # re-seeding the same instance restarts its RNGs
    assert_same(a, b)
    assert_same(a, c)
    d = rollout(env, seed=43, steps=50)
    assert not np.array_equal(a[10][0]["rgb"], d[10][0]["rgb"])


def test_reset_draws_a_real_start_observation(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    bank = load_checkpoint(ckpt, load_spec("pick")).start_obs
    seen = set()
    for seed in range(12):
        obs, info = env.reset(seed=seed)
        assert info == {"success": False, "success_prob": 0.0, "uncertainty": 0.0,
                        "event_doubt": 0.0}
        match = [
            i
            for i in range(len(bank["state"]))
            if all(np.array_equal(obs[k], bank[k][i]) for k in bank)
        ]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 1, "np_random should choose among the bank's observations"


def test_reset_from_context(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    bank = load_checkpoint(ckpt, load_spec("pick")).start_obs
    real = [{k: v[i] for k, v in bank.items()} for i in range(3)]
    real = [{**r, "proprio": r["state"][:5]} for r in real]  # as Sim-Pick-v0 returns them
    obs, _ = env.reset(seed=0, options={"context": real[2]})
    assert_same(obs, real[2])
    first = [env.step(np.zeros(4, np.float32))[0] for _ in range(5)]
    obs, _ = env.reset(seed=0, options={"context": real[2]})
    assert_same([env.step(np.zeros(4, np.float32))[0] for _ in range(5)], first)
    # recent observations with the actions between them: imagination continues from the last
    actions = np.array([[0.1, 0.0, -0.2, 1.0], [0.0, 0.3, 0.0, -1.0]], np.float32)
    obs, _ = env.reset(seed=0, options={"context": real, "context_actions": actions})
    assert_same(obs, real[-1])
    stacked = {k: np.stack([o[k] for o in real]) for k in real[0]}
    obs2, _ = env.reset(seed=0, options={"context": stacked, "context_actions": actions})
    assert_same(obs2, real[-1])
    step = env.step(np.zeros(4, np.float32))[0]
    assert env.observation_space.contains(step)
    with pytest.raises(ValueError, match="context_actions"):
        env.reset(options={"context": real})
    with pytest.raises(ValueError, match="shape"):
        env.reset(options={"context": {**real[0], "rgb": real[0]["rgb"][:32]}})
    with pytest.raises(ValueError, match="lacks keys"):
        env.reset(options={"context": {"state": real[0]["state"]}})
    with pytest.raises(ValueError, match="NaN"):
        env.reset(options={"context": {**real[0], "state": np.full(8, np.nan, np.float32)}})


# ----------------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    "action, problem",
    [
        (np.zeros(3, np.float32), "shape"),
        (np.zeros((1, 4), np.float32), "shape"),
        (np.array([0.0, np.nan, 0.0, 0.0]), "NaN"),
        (np.array([0.0, 0.0, np.inf, 0.0]), "inf"),
        ("left", "numeric"),
    ],
)
def test_bad_actions_raise(ckpt, action, problem):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=problem):
        env.step(action)


def test_out_of_bounds_actions_equal_clipped(ckpt):
    big = rollout(
        gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).unwrapped, 5, 20, scale=3.0
    )
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).unwrapped
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=5)
    clipped = [obs]
    for _ in range(20):
        out = env.step(np.clip(rng.uniform(-1, 1, 4).astype(np.float32) * 3.0, -1, 1))
        clipped.append(out)
        if out[2] or out[3]:
            clipped.append(env.reset()[0])
    assert_same(big, clipped)
    # and the actions matter: the tiny model is not blind to them
    other = rollout(
        gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).unwrapped, 5, 20, scale=0.1
    )
    assert not np.array_equal(big[5][0]["rgb"], other[5][0]["rgb"])


# ----------------------------------------------------------------------------- steps


def test_step_contract(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    env.reset(seed=0)
    ended = 0
    for _ in range(60):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float) and 0.0 <= reward <= 1.0
        assert isinstance(info["success"], bool)
        assert 0.0 <= info["success_prob"] <= 1.0
        lifted = load_spec("pick").state_success(obs["state"])
        assert info["success"] == (info["success_prob"] > 0.5 and lifted)
        assert terminated == info["success"]  # the spec terminates on success
        if terminated or truncated:
            ended += 1
            env.reset()
    assert ended, "the tiny model should end some episodes"


def test_success_needs_the_head_and_the_state(tmp_path):
    from wmgym.env.testing import make_tiny_checkpoint

    # the head fires often
    often = make_tiny_checkpoint(tmp_path / "wm", success_bias=0.0, task="pick")
    envs = gym.make_vec("WM-Pick-v0", num_envs=16, vectorization_mode="vector_entry_point",
                        checkpoint=often, device=DEVICE, terminate_on_success=False)
    envs.reset(seed=0)
    spec, kept, vetoed = load_spec("pick"), 0, 0
    for _ in range(30):
        obs, _, _, _, info = envs.step(envs.action_space.sample())
        head = info["success_prob"] > 0.5
        lifted = spec.state_success(obs["state"])
        np.testing.assert_array_equal(info["success"], head & lifted)
        kept, vetoed = kept + (head & lifted).sum(), vetoed + (head & ~lifted).sum()
    assert kept and vetoed  # both cases occur, so the assertion above tells the rules apart
    envs.close()


def test_spec_success_rule():
    """The rule both the env and ``wmgym eval`` apply: head above 0.5, cube above the height."""
    spec = load_spec("pick")
    state = np.zeros((4, 8), np.float32)
    state[:, spec.index("cube_z")[0]] = [0.9, 0.9, 0.82, 0.82]  # above, above, below, below
    prob = np.array([0.7, 0.3, 0.7, 0.3])
    np.testing.assert_array_equal(spec.success(prob, state), [True, False, False, False])
    no_rule = dataclasses.replace(spec, success_field=None, success_above=None)
    np.testing.assert_array_equal(no_rule.success(prob, state), [True, False, True, False])


def test_terminate_on_success_override_and_time_limit(ckpt):
    env = gym.make(
        "WM-Pick-v0",
        checkpoint=ckpt,
        device=DEVICE,
        terminate_on_success=False,
        max_episode_steps=7,
    )
    env.reset(seed=0)
    for t in range(1, 8):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == 7)


@pytest.mark.slow
def test_long_rollout_stays_in_space_with_flat_memory(ckpt):
    """1000 steps (the window of 4 frames slides ~250 times); RSS must not grow."""
    env = gym.make(
        "WM-Pick-v0",
        checkpoint=ckpt,
        device=DEVICE,
        terminate_on_success=False,
        max_episode_steps=None,
    ).unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)

    def run(n: int) -> None:
        for _ in range(n):
            obs, reward, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            assert env.observation_space.contains(obs), obs["state"]
            assert all(np.isfinite(v).all() for v in obs.values()) and np.isfinite(reward)

    run(200)
    gc.collect()
    before = rss_kib()
    run(800)
    gc.collect()
    grown = rss_kib() - before
    assert env.core.state.steps.item() == 1000
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 800 steps"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status")


# ----------------------------------------------------------------------------- rendering, wrappers


def test_render_shows_the_current_observation(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 192, 3) and frame.dtype == np.uint8
    depth_range = load_spec("pick").depth_range
    np.testing.assert_array_equal(
        frame, tile_frame(obs["rgb"], obs["depth"], obs["mask"], depth_range)
    )
    obs, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(
        env.render(), tile_frame(obs["rgb"], obs["depth"], obs["mask"], depth_range)
    )
    no_render = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE)
    no_render.reset(seed=0)
    assert no_render.render() is None


def test_filter_observation_state_only(ckpt):
    env = FilterObservation(gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE), ["state"])
    obs, _ = env.reset(seed=0)
    assert list(env.observation_space.spaces) == ["state"] and set(obs) == {"state"}
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)


def test_render_collection_to_gif(ckpt, tmp_path):
    from wmgym.viz import write_gif

    env = RenderCollection(
        gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE, render_mode="rgb_array")
    )
    env.reset(seed=0)
    for _ in range(5):
        env.step(env.action_space.sample())
    frames = env.render()
    assert len(frames) == 6 and all(f.shape == (64, 192, 3) for f in frames)
    assert write_gif(tmp_path / "wm.gif", frames).stat().st_size > 0


def test_record_video(ckpt, tmp_path):
    pytest.importorskip("moviepy", reason="RecordVideo needs moviepy (gymnasium[other])")
    from gymnasium.wrappers import RecordVideo

    env = gym.make(
        "WM-Pick-v0", checkpoint=ckpt, device=DEVICE, render_mode="rgb_array", max_episode_steps=5
    )
    folder = tmp_path / "videos"
    env = RecordVideo(env, str(folder), episode_trigger=lambda e: True, disable_logger=True)
    env.reset(seed=0)
    for _ in range(5):
        env.step(env.action_space.sample())
    env.close()
    assert list(folder.glob("*.mp4"))


# ----------------------------------------------------------------------------- checkpoints


def test_weights_load_once_and_are_shared(ckpt):
    a = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).unwrapped
    b = gym.make("WM-Pick-v0", checkpoint=str(ckpt), device=DEVICE).unwrapped
    v = gym.make_vec("WM-Pick-v0", num_envs=2, checkpoint=ckpt, device=DEVICE).unwrapped
    assert a.core.model is b.core.model is v.core.model


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_config(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(json.dumps(config))


DAMAGES = {
    "missing": (lambda d: shutil.rmtree(d), "no world-model checkpoint"),
    "no config": (lambda d: (d / CONFIG).unlink(), f"{CONFIG}: not found"),
    "corrupt config": (lambda d: (d / CONFIG).write_text("{not json"), f"{CONFIG}: not valid JSON"),
    "truncated weights": (
        lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:1000]),
        f"{WEIGHTS}: sha256",
    ),
    "altered weights": (lambda d: _flip_byte(d / WEIGHTS, -10), f"{WEIGHTS}: sha256"),
    "altered start bank": (lambda d: _flip_byte(d / START_OBS, -10), f"{START_OBS}: sha256"),
    "other depth range": (
        lambda d: _edit_config(d / CONFIG, depth_range=[0.1, 3.0]),
        f"{CONFIG}: depth_range is \\(0.1, 3.0\\), but task 'Pick'",
    ),
    "other resolution": (
        lambda d: _edit_config(d / CONFIG, **{"tokenizer.resolution": 32}),
        f"{CONFIG}: tokenizer.resolution is 32, but task 'Pick' .* expects 64",
    ),
    "other task": (lambda d: _edit_config(d / CONFIG, task="Stack"), f"{CONFIG}: task is 'Stack'"),
    "other model": (
        lambda d: _edit_config(d / CONFIG, **{"dynamics.d_model": 64}),
        f"{WEIGHTS}: weights do not fit the model",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_names_the_file(ckpt, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    hurt, message = DAMAGES[damage]
    hurt(broken)
    with pytest.raises(CheckpointError, match=message) as err:
        gym.make("WM-Pick-v0", checkpoint=broken)
    assert str(broken) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_state_only_mode_imagines_the_same_states_faster_path(ckpt):
    full = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE, render_mode="rgb_array")
    lean = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE, render_mode="rgb_array",
                    images=False)
    assert list(lean.observation_space.spaces) == ["proprio", "state"]
    check_env(lean.unwrapped, skip_render_check=True)
    o1, _ = full.reset(seed=5)
    o2, _ = lean.reset(seed=5)
    assert set(o2) == {"proprio", "state"}
    np.testing.assert_array_equal(o1["state"], o2["state"])
    np.testing.assert_array_equal(full.render(), lean.render())  # the start image
    step_in_lockstep(full, lean, steps=12)
    np.testing.assert_array_equal(full.render(), lean.render())  # decoded on demand
