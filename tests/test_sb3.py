"""The SB3 adapter: SB3's VecEnv contract over the native vector env; PPO and SAC run on it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from wmgym.env import SB3VecEnv, WorldModelVectorEnv, make_sb3_env

# exact reproducibility is promised on CPU (CUDA kernels may add in any order)
DEVICE = "cpu"
#: What a reset reports: no success, no doubt.
BLANK_INFO = {"success": False, "success_prob": 0.0, "uncertainty": 0.0, "event_doubt": 0.0}


def test_make_sb3_env_wraps_the_native_vector_env(ckpt):
    env = make_sb3_env("WM-Pick-v0", num_envs=2, seed=0, checkpoint=ckpt, device=DEVICE)
    assert isinstance(env, VecMonitor) and isinstance(env.venv, SB3VecEnv)
    assert isinstance(env.unwrapped.venv, WorldModelVectorEnv)
    assert env.num_envs == 2
    assert (
        env.observation_space
        == gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).observation_space
    )
    obs = env.reset()
    assert set(obs) == {"rgb", "depth", "mask", "proprio", "state"}
    assert obs["rgb"].shape == (2, 64, 64, 3) and obs["proprio"].shape == (2, 5)
    assert env.venv.reset_infos == [BLANK_INFO] * 2


def test_step_follows_the_vec_env_contract(ckpt):
    env = make_sb3_env(
        "WM-Pick-v0",
        num_envs=2,
        seed=0,
        monitor=False,
        checkpoint=ckpt,
        device=DEVICE,
        max_episode_steps=3,
        terminate_on_success=False,
    )
    env.reset()
    for t in range(1, 4):
        obs, rewards, dones, infos = env.step(np.zeros((2, 4), np.float32))
        assert rewards.dtype == np.float32 and rewards.shape == (2,)
        assert dones.dtype == bool and dones.tolist() == [t == 3] * 2
        assert len(infos) == 2 and all(isinstance(i["success"], bool) for i in infos)
        assert all(i["TimeLimit.truncated"] == (t == 3) for i in infos)
    for i, info in enumerate(infos):
        final = info["terminal_observation"]
        assert env.observation_space.contains(final)
        assert not np.array_equal(final["rgb"], obs["rgb"][i])  # obs starts the next episode
        assert info["is_success"] is False
    assert env.reset_infos == [BLANK_INFO] * 2


def test_seed_and_attributes(ckpt):
    env = make_sb3_env("WM-Pick-v0", num_envs=2, seed=None, monitor=False, checkpoint=ckpt,
                       device=DEVICE)
    assert env.seed(5) == [5, 6]
    a = env.reset()
    env.seed(5)
    b = env.reset()
    np.testing.assert_array_equal(a["rgb"], b["rgb"])
    single, _ = gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).reset(seed=6)
    np.testing.assert_array_equal(a["state"][1], single["state"])
    assert env.get_attr("num_envs") == [2, 2] and env.get_attr("render_mode", [1]) == [None]
    env.set_attr("terminate_on_success", False)
    assert env.venv.terminate_on_success is False
    assert env.env_method("render") == [None, None]
    assert env.env_is_wrapped(gym.Wrapper) == [False, False]


def test_state_only_keys(ckpt):
    env = make_sb3_env(
        "WM-Pick-v0",
        num_envs=2,
        seed=0,
        keys=["state"],
        checkpoint=ckpt,
        device=DEVICE,
        max_episode_steps=2,
        terminate_on_success=False,
    )
    assert env.observation_space == spaces.Dict(
        {"state": gym.make("WM-Pick-v0", checkpoint=ckpt, device=DEVICE).observation_space["state"]}
    )
    assert set(env.reset()) == {"state"}
    env.step(np.zeros((2, 4), np.float32))
    obs, _, dones, infos = env.step(np.zeros((2, 4), np.float32))
    assert set(obs) == {"state"} and dones.all()
    assert set(infos[0]["terminal_observation"]) == {"state"}
    with pytest.raises(ValueError, match="subset"):
        make_sb3_env("WM-Pick-v0", num_envs=2, keys=["lidar"], checkpoint=ckpt, device=DEVICE)


def test_rejects_next_step_autoreset():
    venv = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv(venv)


@pytest.mark.parametrize("keys", [None, ["state"]], ids=["images", "state"])
def test_ppo_runs(ckpt, keys):
    env = make_sb3_env(
        "WM-Pick-v0",
        num_envs=2, seed=0, keys=keys, checkpoint=ckpt, device=DEVICE, max_episode_steps=10
    )
    model = PPO(
        "MultiInputPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu"
    )
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (2, 4)
    assert isinstance(model.get_env(), VecEnv)


@pytest.mark.parametrize("keys", [None, ["state"]], ids=["images", "state"])
def test_sac_runs(ckpt, keys):
    env = make_sb3_env(
        "WM-Pick-v0",
        num_envs=2, seed=0, keys=keys, checkpoint=ckpt, device=DEVICE, max_episode_steps=10
    )
    model = SAC(
        "MultiInputPolicy",
        env,
        buffer_size=200,
        learning_starts=16,
        batch_size=16,
        train_freq=1,
        gradient_steps=1,
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    assert model.replay_buffer.size() > 0
