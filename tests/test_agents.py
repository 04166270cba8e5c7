"""Frozen agents (:mod:`wmgym.agents`) and the family builder (:mod:`wmgym.agent_family`).

Exported actors act as ``model.predict(obs, deterministic=True)``; agent folders round-trip and
refuse damaged files; a tiny family builds; ``agent:`` and ``family:`` sources run in a sweep.
"""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from wmgym import agent_family as af
from wmgym import cloning, policy_sources
from wmgym import sweep as sw
from wmgym.agents import (
    AgentError,
    FrozenAgent,
    export_actor,
    load_agent,
    read_agent_meta,
    save_agent,
    update_agent_meta,
)
from wmgym.env.testing import make_tiny_checkpoint
from wmgym.sac import StandardizedState, make_sac, position_offsets
from wmgym.spec import load_spec

SPEC = load_spec("pick")


class StateEnv(gym.Env):
    """Random state-only observations in Pick's spaces: enough to build and train SB3 models."""

    observation_space = gym.spaces.Dict({"state": SPEC.observation_space(images=False)["state"]})
    action_space = SPEC.action_space()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        return self._obs(), float(self.np_random.random()), False, False, {}

    def _obs(self):
        # near a real state: end effector and cube around the table, a little spread
        base = np.array([-0.1, 0.0, 1.0, 0.02, -0.02, 0.0, 0.0, 0.82], np.float32)
        return {"state": base + self.np_random.normal(0, 0.05, 8).astype(np.float32)}


def _venv():
    return DummyVecEnv([StateEnv])


def _states(n=64, seed=0):
    env = StateEnv()
    env.reset(seed=seed)
    return np.stack([env._obs()["state"] for _ in range(n)])


def _tiny_sac(**kwargs):
    model = make_sac(_venv(), task="pick", standardize_state=True, critic_layer_norm=True,
                     learning_starts=20, buffer_size=200, batch_size=16, seed=0, device="cpu",
                     policy_kwargs={"net_arch": [16, 16]}, **kwargs)
    return model.learn(40)


def _assert_acts_as_predict(model, agent, n=16):
    states = _states(n, seed=1) * np.float32(1.5)  # off the training data too
    for state in states:
        expected, _ = model.predict({"state": state}, deterministic=True)
        np.testing.assert_allclose(agent({"state": state}), expected, rtol=0, atol=1e-6)
    batch, _ = model.predict({"state": states}, deterministic=True)
    np.testing.assert_allclose(agent({"state": states}), batch, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- export


def test_sac_export_equals_predict():
    model = _tiny_sac()
    assert isinstance(model.actor.features_extractor, StandardizedState)
    tensors, arch = export_actor(model)
    assert arch["features"]["kind"] == "standardized" and arch["output"] == "tanh"
    assert not any(k.startswith(("critic", "qf")) for k in tensors)  # the actor alone
    assert {layer["type"] for layer in arch["layers"]} == {"linear", "relu"}
    _assert_acts_as_predict(model, FrozenAgent(tensors, {"architecture": arch}))


def test_sac_export_plain_features_and_warmup_recipe():
    model = make_sac(_venv(), learning_starts=20, buffer_size=100, batch_size=8, seed=1,
                     device="cpu", policy_kwargs={"net_arch": [8]}).learn(30)
    tensors, arch = export_actor(model)
    assert arch["features"] == {"kind": "concat", "keys": ["state"]}
    _assert_acts_as_predict(model, FrozenAgent(tensors, {"architecture": arch}))


@pytest.mark.parametrize("standardized", [False, True])
def test_ppo_export_equals_predict(standardized):
    policy_kwargs = {"net_arch": [16, 16]}
    if standardized:
        policy_kwargs.update(features_extractor_class=StandardizedState,
                             features_extractor_kwargs={"offsets": position_offsets("pick")})
    model = PPO("MultiInputPolicy", _venv(), n_steps=32, batch_size=16, seed=0, device="cpu",
                policy_kwargs=policy_kwargs)
    if standardized:
        cloning.fit_features(model.policy, _states())
    model.learn(32)
    tensors, arch = export_actor(model)
    assert arch["output"] == "clip" and not any("value" in k for k in tensors)
    _assert_acts_as_predict(model, FrozenAgent(tensors, {"architecture": arch}))


def test_unfitted_standardized_state_refuses_export():
    model = make_sac(_venv(), task="pick", standardize_state=True, buffer_size=10, device="cpu")
    with pytest.raises(ValueError, match="never fitted"):
        export_actor(model)


def test_behaviour_clone_moves_the_actor_to_the_demonstrations():
    states = _states(256)
    actions = np.tile(np.array([0.5, -0.5, 0.2, 0.9], np.float32), (256, 1))
    for model in (make_sac(_venv(), task="pick", standardize_state=True, buffer_size=1,
                           device="cpu", seed=0),
                  PPO("MultiInputPolicy", _venv(), n_steps=32, batch_size=32, device="cpu",
                      seed=0)):
        cloning.fit_features(model.policy, states)
        cloning.behaviour_clone(model, states, actions, steps=300, seed=0)
        got, _ = model.predict({"state": states[:8]}, deterministic=True)
        np.testing.assert_allclose(got, actions[:8], atol=0.1)


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    model = _tiny_sac()
    real = {"success": 0.5, "episodes": 2, "seeds": [990_000, 990_001]}
    folder = save_agent(tmp_path / "a", model, task="Pick", training={"algorithm": "SAC"},
                        real_success=real)
    assert sorted(p.name for p in folder.iterdir()) == ["actor.safetensors", "agent.json"]
    meta = read_agent_meta(folder)
    assert meta["observation_keys"] == ["state"] and meta["task"] == "Pick"
    assert meta["real_success"] == real and len(meta["sha256"]) == 64
    assert meta["name"] == "a" and meta["parameters"] < 5_000  # small: no critics, no buffer
    agent = load_agent(folder)
    assert agent.observation_keys == ("state",)
    _assert_acts_as_predict(model, agent)
    agent.reset(seed=3)  # stateless
    obs = {"state": _states(1)[0], "proprio": np.zeros(5, np.float32)}  # extra keys ignored
    assert agent(obs).shape == (4,) and agent(obs).dtype == np.float32


def test_damaged_files_fail_naming_the_file(tmp_path):
    folder = save_agent(tmp_path / "a", _tiny_sac(), task="Pick")
    weights = folder / "actor.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AgentError, match=r"actor\.safetensors.*sha256"):
        load_agent(folder)
    weights.unlink()
    with pytest.raises(AgentError, match=r"actor\.safetensors: no such file"):
        load_agent(folder)
    (folder / "agent.json").write_text("{not json")
    with pytest.raises(AgentError, match=r"agent\.json: damaged"):
        load_agent(folder)
    with pytest.raises(AgentError, match=r"agent\.json: no such file"):
        load_agent(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    folder = save_agent(tmp_path / "a", _tiny_sac(), task="Pick")
    meta = json.loads((folder / "agent.json").read_text())
    meta["architecture"]["layers"].append({"type": "linear", "name": "actor.9", "in": 4,
                                           "out": 4})
    (folder / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(AgentError, match="actor.9.weight"):
        load_agent(folder)


def test_agent_and_family_sources(tmp_path):
    for name in ("b", "a"):
        save_agent(tmp_path / "fam" / name, _tiny_sac(), task="Pick")
    make = policy_sources.policy_factory(f"agent:{tmp_path / 'fam' / 'a'}")
    assert make()(StateEnv().reset(seed=0)[0]).shape == (4,)
    named = policy_sources.named_policies(["pick", f"family:{tmp_path / 'fam'}"])
    assert list(named) == ["pick", f"agent:{tmp_path / 'fam' / 'a'}",
                           f"agent:{tmp_path / 'fam' / 'b'}"]
    with pytest.raises(FileNotFoundError):
        policy_sources.policy_factory(f"agent:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError):
        policy_sources.named_policies([f"family:{tmp_path / 'missing'}"])
    with pytest.raises(AgentError):
        policy_sources.policy_factory(f"agent:{tmp_path}")  # a folder, but no agent


# ----------------------------------------------------------------------------- family and sweep

TINY_FAMILY = {
    "seed": 900_000,
    "eval_seed": 990_000,
    "eval_episodes": 2,
    "runs": (
        {"name": "bc", "algo": "bc", "demos": "pick", "episodes": 1, "bc_steps": 20,
         "policy_kwargs": {"net_arch": [16]}},
        {"name": "sac", "algo": "sac", "recipe": {"learning_starts": 30, "bc_steps": 10},
         "buffer_size": 500, "save_at": (31, 40)},
        {"name": "ppo", "algo": "ppo", "demos": "pick:noise=0.1", "episodes": 1, "bc_steps": 10,
         "ppo": {"n_steps": 32, "batch_size": 16, "n_epochs": 1}, "save_at": (0, 32)},
        {"name": "wm", "algo": "sac", "env": "wm", "num_envs": 2, "gradient_steps": 1,
         "recipe": {"learning_starts": 8, "bc_steps": 4}, "buffer_size": 200, "save_at": (10,)},
    ),
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("wm") / "tiny", task="pick")


@pytest.mark.slow
def test_tiny_family_builds_and_sweeps(tmp_path, tiny_ckpt):
    index = af.build_family("pick", tmp_path / "fam", family=TINY_FAMILY, checkpoint=tiny_ckpt,
                            device="cpu", progress=False)
    names = [a["name"] for a in index["agents"]]
    assert names == ["bc", "sac@31", "sac@40", "ppo@0", "ppo@32", "wm@10"]
    assert index["eval_seeds"] == [990_000, 990_001]
    for a in index["agents"]:
        meta = read_agent_meta(tmp_path / "fam" / a["path"])
        assert meta["real_success"]["episodes"] == 2 and 0 <= a["real_success"]["success"] <= 1
        assert meta["training"]["seed"] >= 900_000
        assert load_agent(tmp_path / "fam" / a["path"])({"state": _states(1)[0]}).shape == (4,)
    assert index["agents"][2]["training"]["steps"] == 40
    wm = read_agent_meta(tmp_path / "fam" / "wm@10")["training"]
    assert wm["env"] == "WM-Pick-v0" and wm["steps"] >= 10
    bc = read_agent_meta(tmp_path / "fam" / "bc")["training"]
    assert bc["demonstrations"]["seeds"] == [900_000, 900_000]
    # built agents are kept; a second build trains nothing
    again = af.build_family("pick", tmp_path / "fam", family=TINY_FAMILY, checkpoint=tiny_ckpt,
                            device="cpu", progress=False, only=("bc",))
    assert [a["sha256"] for a in again["agents"]] == [a["sha256"] for a in index["agents"]]
    # an agent frozen but never scored (an interrupted build) is trained again, alike
    update_agent_meta(tmp_path / "fam" / "bc", real_success=None)
    redone = af.build_family("pick", tmp_path / "fam", family=TINY_FAMILY, progress=False,
                             only=("bc",))
    assert redone["agents"][0]["real_success"] is not None
    assert redone["agents"][0]["sha256"] == index["agents"][0]["sha256"]  # deterministic
    with pytest.raises(ValueError, match="no family runs"):
        af.build_family("pick", tmp_path / "fam", family=TINY_FAMILY, only=("nope",))

    (tmp_path / "fam" / "family.json").write_text(json.dumps(index))
    args = sw.SweepArgs(task="pick", checkpoint=str(tiny_ckpt), device="cpu", episodes=2,
                        max_steps=5, seed=500_000, progress=False)
    result = sw.run_sweep([f"family:{tmp_path / 'fam'}", "random"], args)
    assert [p["name"] for p in result["policies"]][:2] == [
        f"agent:{tmp_path / 'fam' / 'bc'}", f"agent:{tmp_path / 'fam' / 'sac@31'}"]
    assert len(result["policies"]) == 7 and not result["images"]  # state only: no cameras
    assert all("uncertainty" in p["imagined"] for p in result["policies"])
    assert result["metrics"]["success"] is not None


def test_pick_family_is_well_formed():
    family = af.task_family("pick")
    assert family["seed"] >= 900_000 and family["eval_seed"] >= 900_000
    names = [n for run in family["runs"] for n in af.run_names(run)]
    assert len(names) >= 10 and len(set(names)) == len(names)
    assert {run["algo"] for run in family["runs"]} == {"bc", "sac", "ppo"}
    assert any(run.get("env") == "wm" for run in family["runs"])
    assert 1000 * len(family["runs"]) < family["eval_seed"] - family["seed"]


@pytest.mark.parametrize("task", ["pick", "door", "stack"])
def test_every_family_keeps_its_runs_seeds_apart(task):
    family = af.task_family(task)
    seeds = sorted(af.run_seed(family, i) for i in range(len(family["runs"])))
    assert all(b - a >= 1000 for a, b in zip(seeds, seeds[1:]))  # each run takes < 1000 seeds
    assert all(int(run.get("episodes", 0)) < 1000 for run in family["runs"])
    assert seeds[-1] + 1000 <= family["eval_seed"]  # the held episodes are no run's
    names = [n for run in family["runs"] for n in af.run_names(run)]
    assert len(names) >= 10 and len(set(names)) == len(names)


def test_sibling_family_moves_every_seed_away_from_the_benchmark():
    family = af.task_family("pick")
    sibling = af.shifted_family(family, -100_000)
    assert sibling["seed"] == family["seed"] - 100_000
    assert sibling["eval_seed"] == family["eval_seed"] - 100_000
    ours = {af.run_seed(family, i) for i in range(len(family["runs"]))}
    theirs = {af.run_seed(sibling, i) for i in range(len(sibling["runs"]))}
    assert max(theirs) + 1000 < min(ours) and [r["name"] for r in sibling["runs"]] == [
        r["name"] for r in family["runs"]]


def test_collect_takes_a_family_in_turn(tmp_path):
    """Real rollouts of frozen agents as a dataset: episode i is agent i mod n."""
    from wmgym.data.collect import CollectArgs, collect
    from wmgym.data.dataset import read_dataset

    for name in ("b", "a"):
        save_agent(tmp_path / "fam" / name, _tiny_sac(), task="Pick")
    out = tmp_path / "data"
    collect(CollectArgs(task="pick", out=str(out), episodes=3, policy=f"family:{tmp_path / 'fam'}",
                        workers=1, seed=800_000, max_steps=4, images=False, heldout=0.0))
    episodes = read_dataset(out)
    assert [e.policy for e in episodes] == [f"agent:{tmp_path / 'fam' / n}" for n in "aba"]
    assert all(len(e) == 4 and set(e.observations) == {"state"} for e in episodes)


def test_build_args_default_out_is_under_runs():
    from wmgym.spec import read_spec

    assert af.BuildAgentsArgs(task="pick").out.startswith("runs/")
    # the second test task has no task module, hence no family
    no_family = read_spec(Path(__file__).parent / "data" / "specs" / "pickpose.toml")
    with pytest.raises(KeyError, match="FAMILY"):
        af.task_family(no_family)
