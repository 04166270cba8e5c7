import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import pytest  # noqa: E402

import wmgym  # noqa: E402, F401


@pytest.fixture(scope="session")
def sim_env():
    """One Sim-Pick-v0 with cameras, shared by the tests (a robosuite env takes seconds)."""
    env = gym.make("Sim-Pick-v0", render_mode="rgb_array")
    yield env
    env.close()
