"""Sim-Door-v0: the spec, the scripted expert and the success rule (Gymnasium's battery:
test_sim.py)."""

import gymnasium as gym
import numpy as np
import pytest

from wmgym.policies import make_policy
from wmgym.spec import load_spec
from wmgym.tasks.door import DOOR_POS, HANDLE_POS, HINGE, ScriptedDoor, hinge_xy


@pytest.fixture(scope="module")
def door_env():
    """One state-only Sim-Door-v0 that runs past success (a robosuite env takes seconds)."""
    env = gym.make("Sim-Door-v0", images=False, terminate_on_success=False)
    yield env
    env.close()


def test_spec_has_the_dims_and_options():
    spec = load_spec("door")
    assert (spec.sim_id, spec.env, spec.controller) == ("Sim-Door-v0", "Door", "OSC_POSITION")
    assert (spec.state_dim, spec.action_dim, len(spec.proprio_fields)) == (12, 4, 5)
    assert spec.sim_options == {"use_latch": False}
    assert spec.index("hinge") == [HINGE] and spec.positions["handle"] == (5, 6, 7)
    assert spec.positions["door"] == tuple(range(DOOR_POS.start, DOOR_POS.stop))
    assert spec.event.target == spec.positions["handle"] and spec.event.outcome == HINGE
    assert 0.0 < spec.event.above < spec.success_above


def test_seeded_reset_places_the_door(door_env):
    a, _ = door_env.reset(seed=5)
    b, _ = door_env.reset(seed=5)
    c, _ = door_env.reset(seed=6)
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.allclose(a["state"][HANDLE_POS], c["state"][HANDLE_POS])
    assert a["state"][HINGE] == 0.0


def test_the_hinge_is_found_from_handle_and_door(door_env):
    obs, _ = door_env.reset(seed=3)
    rs = door_env.unwrapped._rs
    joint = rs.sim.model.joint_name2id(rs.door.hinge_joint)
    anchor = rs.sim.data.xanchor[joint][:2]
    state = obs["state"]
    np.testing.assert_allclose(hinge_xy(state[HANDLE_POS], state[DOOR_POS]), anchor, atol=1e-3)


def test_robosuite_success_is_the_spec_rule():
    """Door._check_success is ``hinge > 0.3``: the learned twin applies the same rule."""
    env = gym.make("Sim-Door-v0", images=False)
    env.reset(seed=0)
    rs = env.unwrapped._rs
    spec = load_spec("door")
    for angle in (0.29, 0.31):
        rs.sim.data.qpos[rs.hinge_qpos_addr] = angle
        state = np.zeros(spec.state_dim)
        state[HINGE] = angle
        assert bool(rs._check_success()) == bool(spec.state_success(state))
    env.close()


@pytest.mark.parametrize("seed", [0, 7])
def test_clean_expert_opens_the_door_and_the_rule_agrees(door_env, seed):
    spec = load_spec("door")
    policy = ScriptedDoor()
    policy.reset(seed)
    obs, _ = door_env.reset(seed=seed)
    first = None
    for t in range(spec.max_episode_steps):
        obs, reward, _, _, info = door_env.step(policy(obs))
        assert info["success"] == bool(spec.state_success(obs["state"]))
        if info["success"] and first is None:
            first = t
            assert reward == pytest.approx(1.0)
    assert first is not None and first < 0.8 * spec.max_episode_steps
    assert policy.phase == "release" and obs["state"][3] > 0.03  # let go, fingers open...
    assert info["success"]  # ...and the door stays open


def test_knobs_at_zero_draw_nothing():
    obs = {"state": np.zeros(12, np.float32)}
    clean = ScriptedDoor(noise=0.0, error=0.0, drop_prob=0.0, pull_error=0.0,
                         give_up_prob=0.0, pause=0.0)
    clean.reset(4)
    untouched = np.random.default_rng(4).bit_generator.state
    for _ in range(5):
        clean(obs)
    assert clean.rng.bit_generator.state == untouched
    noisy, same = ScriptedDoor(noise=0.2), ScriptedDoor(noise=0.2, drop_prob=0.0, pause=0.0)
    noisy.reset(4)
    same.reset(4)
    for _ in range(5):
        np.testing.assert_array_equal(noisy(obs), same(obs))


def test_policies_are_made_by_name():
    policy = make_policy("door:error=0.01,pull_error=0.5", task="door")
    assert isinstance(policy, ScriptedDoor) and policy.error == 0.01
    policy.reset(0)
    assert abs(policy.turn) == 0.5 and np.abs(policy.offset).max() > 0.0
