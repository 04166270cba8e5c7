import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import wmgym  # noqa: E402, F401


@pytest.fixture(scope="session")
def sim_env():
    """One Sim-Pick-v0 with cameras, shared by the tests (a robosuite env takes seconds)."""
    env = gym.make("Sim-Pick-v0", render_mode="rgb_array")
    yield env
    env.close()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models and a busy 2-core machine: OpenMP threads only add overhead and stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random-weight tiny WM-Pick-v0 checkpoint (test files may override it)."""
    from wmgym.env.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("wm") / "WM-Pick-v0", task="pick")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """``WMGYM_HOME``: a user's data root holding the second task's spec.

    The spec is ``tests/data/specs/pickpose.toml``; it registers as a user's own task would.
    """
    import shutil
    from pathlib import Path

    root = tmp_path_factory.mktemp("home")
    (root / "envs").mkdir()
    shutil.copy(Path(__file__).parent / "data" / "specs" / "pickpose.toml",
                root / "envs" / "pickpose.toml")
    patch = pytest.MonkeyPatch()
    patch.setenv("WMGYM_HOME", str(root))
    yield root
    patch.undo()
