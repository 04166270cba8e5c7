"""Sim-Pick-v0: Gymnasium's battery, the exact spaces, images that are right."""


import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmgym.env.testing import check_env_warnings
from wmgym.policies import RandomPolicy
from wmgym.spec import load_spec
from wmgym.tasks.pick import CUBE_POS, EEF_POS, ScriptedPick


def test_spaces_are_exactly_the_spec(sim_env):
    spec = load_spec("pick")
    obs_space = sim_env.observation_space
    assert obs_space["rgb"] == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert obs_space["depth"] == gym.spaces.Box(0.0, spec.depth_range[1], (64, 64, 1), np.float32)
    assert obs_space["mask"] == gym.spaces.Box(0, 1, (64, 64, 1), np.uint8)
    assert obs_space["state"].shape == (8,) and obs_space["state"].dtype == np.float32
    assert obs_space["proprio"] == gym.spaces.Box(-5.0, 5.0, (5,), np.float32)
    assert sim_env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert sim_env.spec.max_episode_steps == spec.max_episode_steps


@pytest.mark.parametrize("env_id", ["Sim-Pick-v0", "Sim-Stack-v0", "Sim-Door-v0"])
def test_check_env_without_warnings(env_id):
    env = gym.make(env_id, render_mode="rgb_array")  # check_env closes it
    messages = check_env_warnings(env)
    assert not messages, messages


def test_state_only_mode_check_env():
    env = gym.make("Sim-Pick-v0", images=False)
    assert list(env.observation_space.spaces) == ["proprio", "state"]
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=1)
    assert set(obs) == {"proprio", "state"}
    np.testing.assert_array_equal(obs["proprio"], obs["state"][:5])  # eef and fingers
    env.close()


def test_seeded_reset_is_reproducible(sim_env):
    a, _ = sim_env.reset(seed=123)
    b, _ = sim_env.reset(seed=123)
    c, _ = sim_env.reset(seed=124)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(a["state"][5:7], c["state"][5:7]), "different seeds place the cube alike"


def test_fresh_instances_reproduce_each_other(sim_env):
    other = gym.make("Sim-Pick-v0")
    a, _ = sim_env.reset(seed=11)
    b, _ = other.reset(seed=11)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    other.close()


def test_seeded_rollout_is_reproducible(sim_env):
    def rollout():
        obs, _ = sim_env.reset(seed=7)
        rng = np.random.default_rng(0)
        states = [obs["state"]]
        for _ in range(10):
            obs, *_ = sim_env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            states.append(obs["state"])
        return np.stack(states), obs["rgb"]

    (s1, im1), (s2, im2) = rollout(), rollout()
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(im1, im2)


@pytest.mark.parametrize(
    "action, message",
    [
        (np.zeros(3), "shape"),
        (np.zeros((1, 4)), "shape"),
        (np.array([0.0, np.nan, 0.0, 0.0]), "NaN"),
        (np.array([0.0, 0.0, np.inf, 0.0]), "inf"),
        ("left", "numeric"),
    ],
)
def test_bad_actions_raise_value_error(sim_env, action, message):
    sim_env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        sim_env.step(action)


def test_out_of_bounds_equals_clipped(sim_env):
    big = np.array([3.0, -2.0, 5.0, 9.0], np.float32)

    def after(action):
        sim_env.reset(seed=3)
        obs = None
        for _ in range(3):
            obs, reward, *_ = sim_env.step(action)
        return obs, reward

    (o1, r1), (o2, r2) = after(big), after(np.clip(big, -1, 1))
    assert r1 == r2
    for k in o1:
        np.testing.assert_array_equal(o1[k], o2[k])


def test_mask_covers_the_gripper_and_not_the_cube(sim_env):
    obs, _ = sim_env.reset(seed=0)
    env = sim_env.unwrapped
    mask = obs["mask"][..., 0]
    assert 0.02 < mask.mean() < 0.6, "mask empty or everything"
    # the fingertips: between the two finger tip bodies
    tips = [env.sim.data.body_xpos[env.sim.model.body_name2id(n)]
            for n in ("gripper0_right_finger_joint1_tip", "gripper0_right_finger_joint2_tip")]
    for tip in tips:
        r, c = env.project(tip)
        assert mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any(), "no robot pixel at a fingertip"
    r, c = env.project(obs["state"][5:8])
    assert mask[r, c] == 0, "cube centre is marked as robot"
    # the cube is red and at least 3x3 pixels
    rgb = obs["rgb"].astype(int)
    red = (rgb[..., 0] > 60) & (rgb[..., 0] > 2 * rgb[..., 1]) & (rgb[..., 0] > 2 * rgb[..., 2])
    assert red.sum() >= 9 and red[r - 1:r + 2, c - 1:c + 2].sum() >= 5


def test_depth_is_metric_and_plausible(sim_env):
    obs, _ = sim_env.reset(seed=0)
    depth = obs["depth"][..., 0]
    env = sim_env.unwrapped
    near, far = env.task.depth_range
    assert depth.min() >= near and depth.max() <= far
    r, c = env.project(obs["state"][5:8])
    cam = np.array(env.task.camera.pos)
    dist = np.linalg.norm(obs["state"][5:8] - cam)
    # depth is along the optical axis: a little less than the Euclidean distance
    assert 0.8 * dist < depth[r, c] < 1.02 * dist


def test_render_is_rgb_depth_mask_side_by_side(sim_env):
    sim_env.reset(seed=0)
    frame = sim_env.render()
    assert frame.shape == (64, 192, 3) and frame.dtype == np.uint8


def test_scripted_pick_succeeds_and_random_does_not():
    env = gym.make("Sim-Pick-v0", images=False)
    wins = []
    for seed in range(4):
        policy = ScriptedPick()
        policy.reset(seed)
        obs, _ = env.reset(seed=seed)
        for _ in range(env.spec.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            if terminated or truncated:
                break
        wins.append(info["success"] and terminated and reward == pytest.approx(1.0))
    assert all(wins)
    policy = RandomPolicy(4)
    policy.reset(0)
    obs, _ = env.reset(seed=0)
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        assert 0.0 <= reward <= 1.0
    env.close()


def test_success_is_the_spec_rule_on_state():
    """robosuite's success is the spec's rule on ``state``: the learned twin applies it too."""
    spec = load_spec("pick")
    env = gym.make("Sim-Pick-v0", images=False, terminate_on_success=False)
    arena_top = env.unwrapped._rs.model.mujoco_arena.table_offset[2]
    assert spec.success_above == pytest.approx(arena_top + 0.04)
    policy = ScriptedPick()
    policy.reset(0)
    obs, _ = env.reset(seed=0)
    seen = set()
    for _ in range(60):
        obs, _, _, _, info = env.step(policy(obs))
        rule = bool(spec.state_success(obs["state"]))
        assert info["success"] == rule
        seen.add(rule)
    assert seen == {False, True}  # the pick crosses the height within the episode
    env.close()


def test_exploring_pick_makes_held_random_excursions():
    env = gym.make("Sim-Pick-v0", images=False)
    policy = ScriptedPick(explore=0.1)
    policy.reset(3)
    obs, _ = env.reset(seed=3)
    actions = []
    for _ in range(env.spec.max_episode_steps):
        actions.append(policy(obs))
        obs, _, terminated, truncated, _ = env.step(actions[-1])
        if terminated or truncated:
            break
    env.close()
    # excursions: runs of one action off the script's grid of 0 / +-1 gripper commands
    runs, i = [], 0
    while i < len(actions):
        j = i
        while j + 1 < len(actions) and np.array_equal(actions[j + 1], actions[i]):
            j += 1
        if abs(abs(actions[i][3]) - 1.0) > 1e-6:  # the script only ever opens or closes fully
            runs.append(j - i + 1)
        i = j + 1
    assert runs and all(2 <= r <= 8 for r in runs)


def test_slow_and_pausing_picks():
    # gripper 1 cm from its hover point above the cube: the script's action is unsaturated
    obs = {"state": np.array([0.01, 0.0, 0.96, 0.0, 0.0, 0.02, 0.01, 0.9], np.float32)}
    full, slow = ScriptedPick(), ScriptedPick(gain=0.5)
    full.reset(0)
    slow.reset(0)
    a, b = full(obs), slow(obs)
    np.testing.assert_allclose(b[:3], 0.5 * a[:3], atol=1e-6)
    assert 0.0 < np.abs(a[:3]).max() < 1.0 and a[3] == b[3] == -1.0
    pausing = ScriptedPick(pause=0.3)
    pausing.reset(1)
    still = [not np.abs(pausing(obs)[:3]).any() for _ in range(60)]
    runs = [len(r) for r in "".join("x" if s else "." for s in still).split(".") if r]
    assert runs and all(r >= 2 for r in runs[:-1])  # the last run may be cut by the loop's end


@pytest.mark.parametrize("seed, feint", [(0, False), (1, True)])
def test_hesitant_pick_holds_the_open_gripper_at_the_cube(seed, feint):
    env = gym.make("Sim-Pick-v0", images=False, terminate_on_success=False)
    policy = ScriptedPick(hesitate=1.0)
    policy.reset(seed)
    height, steps, feints = policy.wait
    assert feints == feint and 0.0 <= height <= 0.03 and 3 <= steps <= 25
    obs, _ = env.reset(seed=seed)
    phases, success_at, cube_z = [], None, None
    for t in range(env.spec.max_episode_steps):
        action = policy(obs)
        phases.append(policy.phase)
        if policy.phase in ("wait", "feint"):
            cube_z = obs["state"][CUBE_POS][2] if cube_z is None else cube_z
            assert action[3] == -1.0  # the gripper stays open at the cube...
            assert abs(obs["state"][CUBE_POS][2] - cube_z) < 0.005  # ...and the cube stays put
        obs, _, _, _, info = env.step(action)
        if info["success"] and success_at is None:
            success_at = t
    env.close()
    runs = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    expected = ["approach", "descend", "wait"]
    expected += ["feint", "approach", "descend", "close", "lift"] if feint else ["close", "lift"]
    assert runs == expected and phases.count("wait") == steps
    assert success_at is not None  # the pick still lifts, after the feint if there was one


def test_hovering_pick_stops_above_the_cube_and_holds_still():
    env = gym.make("Sim-Pick-v0", images=False, terminate_on_success=False)
    policy = ScriptedPick(hover=1.0)
    policy.reset(1)
    height, steps, close_there = policy.stop
    assert 0.015 <= height <= 0.045 and close_there  # seed 1 closes where it stopped
    obs, _ = env.reset(seed=1)
    heights = []
    for _ in range(60):
        holding = policy.phase == "hover"  # the step that decides to stop still descends
        action = policy(obs)
        if holding:
            heights.append(obs["state"][EEF_POS][2] - obs["state"][CUBE_POS][2])
            np.testing.assert_array_equal(action, [0.0, 0.0, 0.0, -1.0])
        obs, *_ = env.step(action)
    env.close()
    assert len(heights) == steps
    assert 0.005 < heights[-1] < height  # it stopped short of the grasp point, after coasting
    assert heights[0] - heights[-1] < 0.015
    assert policy.phase == "lift"  # it closed there and lifted (robosuite decides if the cube came)
