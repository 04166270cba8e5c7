"""Sim-Stack-v0: the spec, the scripted expert and the success rule (Gymnasium's battery:
test_sim.py)."""

import gymnasium as gym
import numpy as np
import pytest

from wmgym.policies import make_policy, parse_policy_name
from wmgym.spec import load_spec
from wmgym.tasks.stack import (
    CUBE_A_POS,
    DISTILL_POLICIES,
    MIXES,
    SWEEP_POLICIES,
    ScriptedStack,
)


def _episode(env, policy, seed, steps=None):
    """Runs one episode; returns the observations, the actions and the last step's results."""
    policy.reset(seed)
    obs, _ = env.reset(seed=seed)
    states, actions = [obs["state"]], []
    for _ in range(steps or env.spec.max_episode_steps):
        actions.append(policy(obs))
        obs, reward, terminated, truncated, info = env.step(actions[-1])
        states.append(obs["state"])
        if terminated or truncated:
            break
    return np.stack(states), np.stack(actions), (reward, terminated, truncated, info)


def test_spec_has_the_stack_layout():
    spec = load_spec("stack")
    assert (spec.sim_id, spec.wm_id, spec.env) == ("Sim-Stack-v0", "WM-Stack-v0", "Stack")
    assert (spec.state_dim, spec.action_dim, spec.module) == (11, 4, "stack")
    assert spec.proprio_index == [0, 1, 2, 3, 4]
    assert spec.positions == {"eef": (0, 1, 2), "cubea": (5, 6, 7), "cubeb": (8, 9, 10)}
    assert list(CUBE_A_POS) == spec.index("cubea_x", "cubea_y", "cubea_z")
    assert spec.event.target == (5, 6, 7) and spec.event.outcome == 7
    assert spec.state_model.fields == spec.state_fields
    assert spec.checkpoint.name == "WM-Stack-v0"


@pytest.fixture(scope="module")
def state_env():
    env = gym.make("Sim-Stack-v0", images=False)
    yield env
    env.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_expert_stacks(state_env, seed):
    states, actions, (reward, terminated, truncated, info) = _episode(
        state_env, ScriptedStack(), seed)
    assert info["success"] and terminated and not truncated
    assert reward == pytest.approx(1.0)
    assert len(actions) < 0.8 * state_env.spec.max_episode_steps
    assert actions[-1][3] == -1.0  # the gripper let go of cube A


def test_knobs_at_zero_draw_nothing(state_env):
    noisy = ScriptedStack(noise=0.2)
    states, actions, _ = _episode(state_env, noisy, seed=3, steps=60)
    same = ScriptedStack(noise=0.2, error=0.0, place_error=0.0, drop_prob=0.0, give_up_prob=0.0,
                         pause=0.0)
    same.reset(3)
    replayed = np.stack([same({"state": s}) for s in states[:len(actions)]])
    np.testing.assert_array_equal(replayed, actions)
    other = ScriptedStack(noise=0.2, error=0.02)  # a knob that draws changes the noise
    other.reset(3)
    assert not np.array_equal(other({"state": states[0]}), actions[0])


def test_state_rule_agrees_with_robosuite():
    """robosuite's success implies the spec's rule on ``state``; the settled stack meets both."""
    spec = load_spec("stack")
    env = gym.make("Sim-Stack-v0", images=False, terminate_on_success=False)
    table = env.unwrapped._rs.table_offset[2]
    assert spec.event.above == pytest.approx(table + 0.04)  # robosuite's "lifted"
    policy = ScriptedStack()
    policy.reset(0)
    obs, _ = env.reset(seed=0)
    verdicts, after = [], 0
    for _ in range(spec.max_episode_steps):
        obs, _, _, _, info = env.step(policy(obs))
        verdicts.append((info["success"], bool(spec.state_success(obs["state"]))))
        after += bool(verdicts[-1][0] or after)  # steps since the first success
        if after == 20:
            break
    env.close()
    assert all(rule for success, rule in verdicts if success)
    assert not verdicts[0][1]
    assert verdicts[-1] == (True, True)
    resting = table + 0.05 + 0.02  # on cube B's top, cube A's centre
    assert obs["state"][CUBE_A_POS][2] == pytest.approx(resting, abs=0.002)


@pytest.mark.parametrize("name", sorted(
    {*SWEEP_POLICIES, *DISTILL_POLICIES, *(n for mix in MIXES.values() for n in mix)}))
def test_every_named_policy_is_made(name):
    kind, kwargs = parse_policy_name(name)
    policy = ScriptedStack(**kwargs) if kind == "stack" else make_policy(name, task="stack")
    policy.reset(0)
    assert policy({"state": np.zeros(11, np.float32)}).shape == (4,)


def test_mixes_are_distributions():
    assert {"mix", "play"} <= set(MIXES)
    for mix in MIXES.values():
        assert sum(mix.values()) == pytest.approx(1.0)
