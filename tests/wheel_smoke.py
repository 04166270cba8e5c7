"""Smoke test of an installed wheel, run outside the repository (``make wheel-smoke``).

Checks that ``import wmgym`` registers every bundled task, that both twins of Pick (and
WM-Door-v0) make, reset and step from the installed package data alone, and that
``WMGYM_HOME`` adds a user's task.
Prints ``N passed, N failed`` and exits non-zero on a failure.
"""

import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def _not_from_a_checkout():
    import wmgym
    import wmgym.paths

    assert "site-packages" in wmgym.__file__, wmgym.__file__
    assert wmgym.paths.bundled_root() == wmgym.paths.BUNDLED_DATA


def _registers_bundled_tasks():
    import gymnasium as gym

    import wmgym  # noqa: F401

    for task in ("Pick", "Stack", "Door"):
        assert f"Sim-{task}-v0" in gym.registry and f"WM-{task}-v0" in gym.registry
    from wmgym.policies import make_policy  # the task modules come with the wheel

    assert make_policy("door:noise=0.1", task="door").observation_keys == ("state",)


def _learned_twin_steps():
    import gymnasium as gym

    env = gym.make("WM-Pick-v0", device="cpu")
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert sorted(obs) == ["depth", "mask", "proprio", "rgb", "state"], sorted(obs)
    assert obs["rgb"].shape == (64, 64, 3) and "success" in info
    env.close()
    fast = gym.make("WM-Pick-v0", fast=True, images=False, device="cpu")
    fast.reset(seed=0)
    fast.step(fast.action_space.sample())
    door = gym.make("WM-Door-v0", fast=True, device="cpu")  # the second shipped checkpoint
    obs, _ = door.reset(seed=0)
    obs, *_ = door.step(door.action_space.sample())
    assert obs["rgb"].shape == (64, 64, 3) and obs["state"].shape == (12,)
    door.close()


def _real_twin_steps():
    import gymnasium as gym

    env = gym.make("Sim-Pick-v0", images=False)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(env.action_space.sample())
    assert obs["state"].shape == (8,) and obs["proprio"].shape == (5,)
    env.close()


def _wmgym_home_adds_a_task():
    import wmgym.paths
    from wmgym.spec import load_spec

    home = Path(tempfile.mkdtemp())
    (home / "envs").mkdir()
    pick = wmgym.paths.BUNDLED_DATA / "envs" / "pick.toml"
    text = pick.read_text().replace('name = "Pick"', 'name = "MyPick"')
    (home / "envs" / "mypick.toml").write_text(text)
    os.environ["WMGYM_HOME"] = str(home)
    try:
        spec = load_spec("mypick")
        assert spec.wm_id == "WM-MyPick-v0"
        assert spec.checkpoint == home / "checkpoints" / "WM-Pick-v0"
    finally:
        del os.environ["WMGYM_HOME"]
        shutil.rmtree(home)


def _cli_runs():
    from wmgym.cli import main

    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0


if __name__ == "__main__":
    checks = [_not_from_a_checkout, _registers_bundled_tasks, _learned_twin_steps,
              _real_twin_steps, _wmgym_home_adds_a_task, _cli_runs]
    passed = failed = 0
    for check in checks:
        try:
            check()
            passed += 1
            print(f"ok   {check.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}")
            traceback.print_exc()
    print(f"wheel smoke: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
