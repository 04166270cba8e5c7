"""RL on the twins: ``wmgym transfer``, MBPO replay augmentation, the examples (tiny budgets)."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC

from wmgym.env.sb3 import make_sb3_env
from wmgym.imagined_warmup import IMAGINED_SEED_OFFSET, imagine_warmup
from wmgym.mbpo import (
    MBPO,
    ContextBank,
    MBPOConfig,
    MixedReplayBuffer,
    ModelBuffer,
    make_real_env,
)
from wmgym.mbpo_compare import MBPOArgs, mbpo_main, summarize
from wmgym.policies import make_policy
from wmgym.rl import RLArgs, sac_recipe, steps_to, task_of
from wmgym.sac import (
    DemoReplayBuffer,
    LayerNormCritic,
    StandardizedState,
    WarmupSAC,
    make_sac,
    position_offsets,
)
from wmgym.spec import IMAGE_KEYS, load_spec
from wmgym.transfer import TransferArgs, plot_transfer, transfer_main

REPO = Path(__file__).resolve().parent.parent


def test_wm_step_reports_token_entropy_as_uncertainty(ckpt):
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device="cpu", images=False)
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.action_space.sample())
    vocab = 8 * 5 * 5 * 5  # the tiny checkpoint's FSQ levels
    assert 0.0 < info["uncertainty"] <= np.log(vocab) + 1e-6


def test_context_bank_is_a_ring_sampled_uniformly():
    bank = ContextBank(capacity=3, seed=0)
    with pytest.raises(ValueError, match="empty"):
        bank.sample(1)
    for i in range(5):
        bank.add({"state": np.full(8, i, np.float32)})
    assert len(bank) == 3
    drawn = bank.sample(200)["state"][:, 0]
    assert set(drawn.tolist()) == {2.0, 3.0, 4.0}  # the two oldest were overwritten


@pytest.mark.slow
def test_real_env_keeps_contexts_with_the_images_a_camera_env_sees():
    env, bank = make_real_env("Sim-Pick-v0", seed=5, stride=2)
    obs = env.reset()
    assert list(obs) == ["state"] and len(bank) == 1
    camera = gym.make("Sim-Pick-v0")  # images=True: the reference rendering
    ref, _ = camera.reset(seed=5)
    kept = bank.sample(1)
    for k in (*IMAGE_KEYS, "state"):
        np.testing.assert_array_equal(kept[k][0], ref[k])
    for _ in range(4):
        env.step(np.zeros((1, 4), np.float32))
    assert len(bank) == 3  # observations 0, 2, 4
    assert task_of(env).name == "Pick"  # an SB3 VecEnv over the real twin knows its task
    env.close()
    camera.close()


def _samples(n, value):
    from stable_baselines3.common.type_aliases import DictReplayBufferSamples

    t = torch.full((n, 1), float(value))
    return DictReplayBufferSamples({"state": t.repeat(1, 8)}, t.repeat(1, 4),
                                   {"state": t.repeat(1, 8)}, t * 0, t, None)


class _RealBuffer:
    def sample(self, n, env=None):
        return _samples(n, 1.0)

    def size(self):
        return 7


def test_mixed_buffer_draws_the_set_ratio_and_delegates_the_rest():
    from gymnasium import spaces

    space = spaces.Dict({"state": spaces.Box(-5, 5, (8,), np.float32)})
    model = ModelBuffer(10, space, 4)
    mixed = MixedReplayBuffer(_RealBuffer(), model, real_ratio=0.25)
    assert (mixed.sample(8).rewards == 1.0).all()  # empty model buffer: all real
    model.add({"state": np.zeros((3, 8))}, np.zeros((3, 4)), np.full(3, 5.0),
              {"state": np.ones((3, 8))}, np.zeros(3, bool))
    batch = mixed.sample(8)
    assert batch.rewards[:, 0].tolist() == [1.0] * 2 + [5.0] * 6
    assert batch.observations["state"].shape == (8, 8)
    assert (batch.next_observations["state"][2:] == 1).all()
    assert mixed.size() == 7  # everything else is the real buffer's
    copy = pickle.loads(pickle.dumps(mixed))  # SB3's save_replay_buffer pickles it
    assert copy.real_ratio == 0.25 and copy.model.size == 3


@pytest.mark.slow
@pytest.mark.parametrize("max_uncertainty, full", [(None, True), (0.0, False)])
def test_mbpo_branches_fill_the_model_buffer(ckpt, max_uncertainty, full):
    env, bank = make_real_env("Sim-Pick-v0", seed=0)
    agent = SAC("MultiInputPolicy", env, learning_starts=20, seed=0, device="cpu")
    mbpo = MBPO(bank, every=25, rollouts=4, horizon=3, max_uncertainty=max_uncertainty,
                checkpoint=str(ckpt), device="cpu")
    agent.learn(50, callback=mbpo)
    assert isinstance(agent.replay_buffer, MixedReplayBuffer)
    assert mbpo.task.name == "Pick"  # the real env's task
    if full:  # two branchings of 4 rollouts x 3 steps
        assert mbpo.buffer.size == mbpo.imagined_steps == 2 * 4 * 3 and mbpo.cut_short == 0
        assert np.isfinite(mbpo.buffer.rewards[:24]).all()
    else:  # every frame is above zero entropy: every branch stops at its first step
        assert mbpo.buffer.size == 0 and mbpo.cut_short == 2 * 4
    env.close()


def _real_state_env(seed: int, **kwargs):
    """One state-only robosuite env as an SB3 VecEnv, episodes running on after a lift."""
    return make_sb3_env("Sim-Pick-v0", num_envs=1, seed=seed, keys=["state"], images=False,
                        terminate_on_success=False, **kwargs)


def test_warmup_policy_acts_until_learning_starts(tmp_path):
    """The replay buffer's warm-up actions are the scripted policy's, reseeded per episode."""
    name = "pick:noise=0.3"
    env = _real_state_env(seed=3, max_episode_steps=12)
    agent = make_sac(env, warmup_policy=name, learning_starts=30, seed=7, device="cpu")
    assert isinstance(agent, WarmupSAC)
    agent.learn(34)
    buf = agent.replay_buffer
    states, actions = buf.observations["state"][:30, 0], buf.actions[:30, 0]
    dones = buf.dones[:30, 0].astype(bool)
    replay = make_policy(name)
    replay.reset(seed=agent.warmup_seed)
    expected = []
    for t, state in enumerate(states):
        expected.append(replay({"state": state}))
        if dones[t]:  # 12-step episodes: the policy was reseeded at each end
            replay.reset(seed=agent.warmup_seed + 1 + int(dones[:t].sum()))
    np.testing.assert_allclose(actions, np.stack(expected), atol=1e-6)
    assert dones.sum() == 2
    assert not np.allclose(buf.actions[30:34, 0], 0.0)  # then SAC acts (and learns)
    agent.save(tmp_path / "sac.zip")
    assert SAC.load(tmp_path / "sac.zip").observation_space.spaces.keys() == {"state"}
    env.close()


def test_imagined_warmup_replaces_the_real_one(ckpt):
    """Demonstrations from the warm-up policy in imagination; all real steps are the agent's."""
    name = "pick:noise=0.3"
    env = _real_state_env(seed=3)
    agent = make_sac(env, warmup_policy=name, learning_starts=500, bc_steps=3, demo_ratio=0.5,
                     standardize_state=True, seed=7, device="cpu")
    stats = imagine_warmup(agent, steps=203, num_envs=2, checkpoint=str(ckpt), device="cpu",
                           seed=1)
    buf = agent.replay_buffer
    assert stats["steps"] == 203 and stats["episodes"] == 2 and buf.pos == 203
    assert agent.learning_starts == 0 and agent._demo_rows == buf.demo_rows == 203
    states, actions = buf.observations["state"][:203, 0], buf.actions[:203, 0]
    dones = buf.dones[:203, 0].astype(bool)
    assert np.flatnonzero(dones).tolist() == [198, 199]  # both 100-step episodes ran out
    assert buf.timeouts[[198, 199], 0].all()  # a time limit, not a terminal state
    # within an episode the next observation is the same env's next one (rows alternate envs);
    # at its end it is the episode's own last one, not the next episode's first
    np.testing.assert_allclose(buf.next_observations["state"][:196, 0], states[2:198])
    assert not np.allclose(buf.next_observations["state"][198, 0], states[200])
    base = agent.warmup_seed + IMAGINED_SEED_OFFSET
    for e in range(2):  # each env's actions are its policy copy's, reseeded when it ended
        policy = make_policy(name)
        policy.reset(seed=base + e)
        expected = []
        for t in range(e, 203, 2):
            expected.append(policy({"state": states[t]}))
            if dones[t]:
                policy.reset(seed=base + 2 + e)
        np.testing.assert_allclose(actions[e::2], np.stack(expected), atol=1e-6)
    agent.learn(5)
    assert agent.num_timesteps == 5 and buf.pos == 208 and agent._demo_rows == 203
    assert agent.bc_loss is not None  # the first update cloned the imagined demonstrations
    assert agent.actor.features_extractor.fitted
    with pytest.raises(ValueError, match="before the agent's first step"):
        imagine_warmup(agent, checkpoint=str(ckpt), device="cpu")
    with pytest.raises(ValueError, match="warm-up policy"):
        imagine_warmup(make_sac(env, seed=0, device="cpu"), checkpoint=str(ckpt))
    env.close()


def test_demo_buffer_keeps_the_demonstrations_share_of_every_batch():
    """After warm-up, each batch is ``demo_ratio`` demonstration rows, the rest the agent's own."""
    env = _real_state_env(seed=1, max_episode_steps=20)
    agent = make_sac(env, warmup_policy="pick:noise=0.3", demo_ratio=0.25, learning_starts=30,
                     seed=0, device="cpu", batch_size=64)
    buf = agent.replay_buffer
    assert isinstance(buf, DemoReplayBuffer) and buf.demo_rows == 0
    agent.learn(90)
    assert buf.demo_rows == 30 and buf.pos == 90
    buf.rewards[:30] = 1.0  # tag the rows: demonstrations 1, the agent's own 0
    buf.rewards[30:90] = 0.0
    shares = [float(buf.sample(64).rewards.mean()) for _ in range(20)]
    assert shares == [0.25] * 20  # exactly 16 of 64 rows, every batch, with 60 own rows beside
    buf.demo_ratio = 0.0  # uniform: the demonstrations' share is their share of the buffer
    assert 0.2 < np.mean([float(buf.sample(64).rewards.mean()) for _ in range(50)]) < 0.45
    env.close()
    with pytest.raises(ValueError, match="demo_ratio"):
        make_sac(env, demo_ratio=0.5)
    with pytest.raises(ValueError, match="demo_ratio"):
        make_sac(env, warmup_policy="pick", demo_ratio=1.0)


def test_standardized_state_is_fitted_on_the_warmup_and_saved_with_the_agent(tmp_path):
    env = _real_state_env(seed=2, max_episode_steps=25)
    agent = make_sac(env, warmup_policy="pick:noise=0.3", standardize_state=True,
                     critic_layer_norm=True, bc_steps=3, learning_starts=50, seed=0, device="cpu",
                     batch_size=16)
    extractors = [agent.actor.features_extractor, agent.critic.features_extractor,
                  agent.critic_target.features_extractor]
    assert all(isinstance(m, StandardizedState) and not m.fitted for m in extractors)
    assert isinstance(agent.critic, LayerNormCritic)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in agent.critic.qf0) == 2
    agent.learn(50)
    assert not extractors[0].fitted  # nothing learnt yet
    agent.learn(10, reset_num_timesteps=False)
    states = torch.as_tensor(agent.replay_buffer.observations["state"][:51, 0])
    for m in extractors:  # fitted once, on the warm-up rows, before the first cloning step
        assert m.fitted
        torch.testing.assert_close(m.mean, states.mean(0))
        torch.testing.assert_close(m.std, states.std(0).clamp_min(1e-3))
    features = extractors[0]({"state": states})
    assert features.shape == (51, 11)
    torch.testing.assert_close(features[:, :8].mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    assert position_offsets("pick") == (((0, 1, 2), (5, 6, 7)),)  # the cube from the gripper
    relative = states[:, 5:8] - states[:, :3]  # cube - gripper
    torch.testing.assert_close(features[:, 8:] * extractors[0].relative_std, relative)
    agent.save(tmp_path / "sac.zip")
    loaded = SAC.load(tmp_path / "sac.zip", device="cpu")
    torch.testing.assert_close(loaded.actor.features_extractor.mean, extractors[0].mean)
    obs = {"state": states[:5].numpy()}
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0],
                               agent.predict(obs, deterministic=True)[0], atol=1e-6)
    env.close()
    with pytest.raises(ValueError, match="state-only"):
        StandardizedState(gym.spaces.Dict({"state": env.observation_space["state"],
                                           "rgb": gym.spaces.Box(0, 255, (4, 4, 3))}))


def test_warmup_cloning_fits_the_demos_then_holds_the_actor_while_critics_learn():
    env = _real_state_env(seed=0)
    agent = make_sac(env, warmup_policy="pick", bc_steps=600, learning_starts=40, seed=0,
                     device="cpu", batch_size=32)
    untrained = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    agent.learn(41)  # the first update: 600 cloning steps, then 1 of 600 critic-only steps
    buf = agent.replay_buffer
    obs = {"state": torch.as_tensor(buf.observations["state"][:40, 0])}
    demo = torch.as_tensor(buf.actions[:40, 0])

    def error(actor_state) -> float:
        agent.actor.load_state_dict(actor_state)
        with torch.no_grad():
            return float((agent.actor(obs, deterministic=True) - demo).abs().mean())

    cloned = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    assert 0.6 * error(untrained) > error(cloned) and agent.bc_loss is not None  # cloned last
    critic = [p.clone() for p in agent.critic.parameters()]
    agent.learn(20, reset_num_timesteps=False)  # still critic-only
    for k, v in agent.actor.state_dict().items():
        torch.testing.assert_close(v, cloned[k], rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))
    env.close()
    with pytest.raises(ValueError, match="warmup_policy"):
        make_sac(env, bc_steps=10)
    with pytest.raises(ValueError, match="learning_starts"):
        make_sac(env, warmup_policy="pick", bc_ratio=1.0, learning_starts=0)


@pytest.mark.parametrize("prefer_demo", [True, False])
def test_q_filter_clones_only_where_the_critics_prefer_the_demonstration(prefer_demo):
    env = _real_state_env(seed=0)
    agent = make_sac(env, warmup_policy="pick", bc_ratio=1.0, learning_starts=30, seed=0,
                     device="cpu", batch_size=16)
    agent.learn(33)  # 3 SAC steps, each followed by one filtered cloning step
    assert agent._demo_rows == 30 and agent.bc_loss is not None
    assert agent.bc_optimizer.state_dict()["state"][0]["step"] == 3
    calls = []

    def critic(obs, actions):  # called for the demonstrated actions, then for the actor's own
        calls.append(actions)
        q = torch.full((len(actions), 1), float(prefer_demo == (len(calls) % 2 == 1)))
        return q, q

    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    agent.critic = critic
    loss = agent._clone(2, 16, q_filter=True)
    changed = any(not torch.equal(v, before[k]) for k, v in agent.actor.state_dict().items())
    assert changed == prefer_demo and (loss != 0.0) == prefer_demo and len(calls) == 4
    env.close()


def test_unfiltered_cloning_and_a_slower_actor():
    """``bc_filter=False`` clones beside every SAC step; ``actor_lr_scale`` slows the actor only."""
    env = _real_state_env(seed=0)
    agent = make_sac(env, warmup_policy="pick", bc_ratio=2.0, bc_filter=False,
                     actor_lr_scale=0.1, learning_starts=30, seed=0, device="cpu", batch_size=16)
    assert agent.bc_filter is False
    agent.learn(33)  # 3 SAC steps, each followed by two unfiltered cloning steps
    assert agent.bc_optimizer.state_dict()["state"][0]["step"] == 6
    lr = agent.lr_schedule(agent._current_progress_remaining)
    assert agent.critic.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert agent.actor.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr)
    env.close()
    with pytest.raises(ValueError, match="actor_lr_scale"):
        make_sac(env, actor_lr_scale=0.0)


def test_sac_recipe_sets_every_agent_option():
    """A task's recipe names every option the RL commands compare runs by, and only those."""
    recipe = sac_recipe("pick")
    flag = {"bc_steps": "warmup_bc_steps", "bc_ratio": "warmup_bc_ratio",
            "bc_filter": "warmup_bc_filter"}
    assert {flag.get(k, k) for k in recipe} == set(RLArgs.AGENT_SETTINGS)
    assert recipe["warmup_policy"].startswith("pick")
    recipe["learning_starts"] = 1  # a copy: the task's own stays as it is
    assert sac_recipe("pick")["learning_starts"] != 1
    with pytest.raises(ValueError, match="cannot tell the task"):
        task_of(gym.make("CartPole-v1"))


@pytest.mark.slow
def test_transfer_trains_in_both_twins_and_evaluates_in_sim(ckpt, tmp_path):
    args = TransferArgs(
        task="pick",
        steps=64, learning_starts=32, wm_envs=2, eval_every=32, curve_episodes=1,
        eval_episodes=2, checkpoint=str(ckpt), device="cpu", out=tmp_path / "runs",
        result=tmp_path / "transfer.json", plot=tmp_path / "transfer.png", progress=False,
        # the recipe's options (sac_recipe("pick")), on a tiny budget
        warmup_policy="pick:noise=0.1", warmup_bc_steps=8, warmup_bc_ratio=1.0,
        warmup_bc_filter=False, actor_lr_scale=0.1, demo_ratio=0.5, standardize_state=True,
        critic_layer_norm=True,
    )
    result = transfer_main(args)
    saved = json.loads((tmp_path / "transfer.json").read_text())
    assert saved["twins"].keys() == {"wm", "sim"} and (tmp_path / "transfer.png").exists()
    for rec in saved["twins"].values():
        assert rec["steps"] >= 64 and [p["step"] for p in rec["curve"]] == [32, 64]
        assert 0.0 <= rec["real_success"] <= 1.0 and rec["train_seconds"] > 0
        assert SAC.load(rec["model"]).observation_space.spaces.keys() == {"state"}
    assert 0.0 <= saved["twins"]["wm"]["imagined_success"] <= 1.0
    assert set(result["summary"]) >= {"ratio", "exploitation_gap"}
    assert load_spec(saved["task"]).name == "Pick" and saved["fast"] == "default"
    # a second run of one twin keeps the other's record
    transfer_main(TransferArgs(**{**args.__dict__, "twins": ("sim",),
                                  "plot": tmp_path / "again.png"}))
    again = json.loads((tmp_path / "transfer.json").read_text())
    assert again["twins"]["wm"] == saved["twins"]["wm"]
    assert again["standardize_state"] is True and again["warmup_bc_filter"] is False
    assert plot_transfer([saved, again], tmp_path / "seeds.png").exists()  # several seeds


@pytest.mark.slow
def test_mbpo_reports_crossings(ckpt, tmp_path):
    args = MBPOArgs(
        steps=60, learning_starts=20, eval_every=30, curve_episodes=1, checkpoint=str(ckpt),
        mbpo=MBPOConfig(every=20, rollouts=4, horizon=2, max_uncertainty=None), device="cpu",
        out=tmp_path / "runs",
        result=tmp_path / "mbpo.json", plot=tmp_path / "mbpo.png", progress=False,
    )
    result = mbpo_main(args)
    assert [r["method"] for r in result["runs"]] == ["mbpo", "sac"]
    assert result["runs"][0]["imagined_steps"] > 0 and (tmp_path / "mbpo.png").exists()
    assert json.loads((tmp_path / "mbpo.json").read_text())["summary"] == result["summary"]
    # another seed later: the first run's records stay
    again = mbpo_main(MBPOArgs(**{**args.__dict__, "seeds": (1,), "methods": ("sac",)}))
    assert [(r["method"], r["seed"]) for r in again["runs"]] == [
        ("mbpo", 0), ("sac", 0), ("sac", 1)]


@pytest.mark.slow
def test_mbpo_with_the_imagined_warmup(ckpt, tmp_path):
    """MBPO imagines its warm-up, as does ``warmup`` (no branches); plain SAC spends it in the
    real twin."""
    args = MBPOArgs(
        steps=30, learning_starts=20, warmup_policy="pick:noise=0.1", eval_every=30,
        curve_episodes=1, checkpoint=str(ckpt), imagined_warmup=True,
        methods=("mbpo", "warmup", "sac"),
        mbpo=MBPOConfig(every=10, rollouts=4, horizon=2, max_uncertainty=None), device="cpu",
        out=tmp_path / "runs", progress=False,
    )
    result = mbpo_main(args)
    runs = {r["method"]: r for r in result["runs"]}
    assert {m: r["warmup"] for m, r in runs.items()} == {
        "mbpo": "imagined", "warmup": "imagined", "sac": "real"}
    assert runs["mbpo"]["imagined_warmup"]["steps"] == 20 and runs["mbpo"]["real_steps"] == 30
    assert runs["warmup"]["imagined_warmup"]["steps"] == 20
    assert runs["mbpo"]["imagined_steps"] > 0 and "imagined_steps" not in runs["sac"]
    assert "imagined_steps" not in runs["warmup"]
    assert {"speedup_50", "branch_gain_50"} <= result["summary"].keys()
    assert (tmp_path / "runs" / "mbpo.png").exists()  # the defaults: under --out
    # a later call with a real warm-up does not mix its MBPO runs with these
    again = mbpo_main(MBPOArgs(**{**args.__dict__, "imagined_warmup": False, "seeds": (1,),
                                  "methods": ("sac",)}))
    assert [(r["method"], r["seed"]) for r in again["runs"]] == [
        ("warmup", 0), ("sac", 0), ("sac", 1)]


def test_steps_to_and_summary():
    curve = [{"step": s, "real_success": v} for s, v in [(1, 0.1), (2, 0.6), (3, 0.9)]]
    assert steps_to(curve, 0.5) == 2 and steps_to(curve, 0.8) == 3 and steps_to(curve, 0.95) is None
    runs = [{"method": "mbpo", "steps_to_50": 2, "steps_to_80": 3},
            {"method": "sac", "steps_to_50": 6, "steps_to_80": None},
            {"method": "warmup", "steps_to_50": 2, "steps_to_80": 6}]
    s = summarize(runs, steps=10)
    assert s["speedup_50"] == 3.0 and s["speedup_80"] == "> 3.33"
    assert s["branch_gain_50"] == 1.0 and s["branch_gain_80"] == 2.0
    assert s["sac"]["steps_to_80_reached"] == "0/1"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_in_imagination.py", "mbpo_sac.py"])
def test_examples_run(ckpt, tmp_path, script):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    cmd = [sys.executable, str(REPO / "examples" / script), "--steps", "60",
           "--checkpoint", str(ckpt)]
    cmd += ["--episodes", "1"] if script == "train_in_imagination.py" else ["--warmup", "20"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("real success" if script.startswith("train") else "imagined transitions") in proc.stdout
