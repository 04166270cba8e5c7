"""A second task through the same code: a spec with other dimensions, from collect to the env.

``tests/data/specs/pickpose.toml`` is robosuite Lift under the OSC_POSE controller: a 7-D
action, a 12-D state (the cube's orientation too), 32 x 32 images and no task module. It lives
in a user's data root (``WMGYM_HOME``), so it also proves that a user's own task registers.
Nothing in the core knows Pick's layout, so both twins, collection, training and the Gymnasium
layer run on it unchanged.
"""


import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmgym.spec import load_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(home, tmp_path_factory):
    """Collect random play in robosuite, train a tiny tokenizer and dynamics on it.

    Random play never lifts the cube, so the event latent (its head needs events that succeed
    and fail) is left out here; ``test_event_latent.py`` runs it on another layout.
    """
    from wmgym.data.collect import CollectArgs, collect
    from wmgym.train.dynamics import TrainDynamicsArgs, train_dynamics
    from wmgym.train.tokenizer import TrainTokenizerArgs, train_tokenizer

    runs = tmp_path_factory.mktemp("runs")
    data = runs / "data"
    summary = collect(CollectArgs(task="pickpose", out=str(data), episodes=3, workers=1,
                                  max_steps=8, policy="random:repeat=2", heldout=0.34))
    assert summary["episodes"] == 3 and summary["steps"] == 24
    tokenizer = train_tokenizer(TrainTokenizerArgs(
        data=str(data), out=str(runs / "tok"), steps=2, batch=2, base_channels=4,
        device="cpu"))
    return train_dynamics(TrainDynamicsArgs(
        data=str(data), tokenizer=str(tokenizer), out=str(runs / "dyn"),
        checkpoint=str(home / "checkpoints" / "WM-PickPose-v0"), steps=2, ctx_stride=4,
        d_model=32, n_layer=1, n_head=2, max_frames=4, batch=2, bank_size=2,
        gap_embedding=True, state_input=True, device="cpu"))


def test_the_spec_sets_the_spaces(home):
    spec = load_spec("pickpose")
    assert (spec.state_dim, spec.action_dim, spec.resolution) == (12, 7, 32)
    assert spec.event.trigger == 6 and spec.event.target == (5, 6, 7)
    assert spec.path.parent.parent == home


def test_the_real_twin_runs_the_spec(home):
    from wmgym.sim import SimEnv

    env = SimEnv("pickpose", images=True)
    check_env(env)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (12,) and obs["proprio"].shape == (5,)
    assert obs["rgb"].shape == (32, 32, 3) and env.action_space.shape == (7,)
    env.close()


def test_the_learned_twin_runs_the_trained_checkpoint(home, checkpoint):
    from wmgym.registration import register_all

    assert checkpoint == home / "checkpoints" / "WM-PickPose-v0"
    assert "WM-PickPose-v0" in register_all()
    env = gym.make("WM-PickPose-v0", device="cpu")
    assert env.observation_space == load_spec("pickpose").observation_space()
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    for _ in range(6):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and 0.0 <= reward <= 1.0
        np.testing.assert_array_equal(obs["proprio"], obs["state"][:5])
    envs = gym.make_vec("WM-PickPose-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        device="cpu", fast=False)
    obs, _ = envs.reset(seed=0)
    obs, *_ = envs.step(np.zeros((3, 7), np.float32))
    assert obs["state"].shape == (3, 12) and obs["rgb"].shape == (3, 32, 32, 3)
    envs.close()
