"""Task specs: one TOML file per task, the single source of truth for both twins.

A spec fixes everything that the real twin (``Sim-<Task>-v0``) and the learned twin
(``WM-<Task>-v0``) must agree on: robosuite environment, controller, camera, resolution, depth
range, control frequency, episode length and the world-model checkpoint. The observation and
action spaces are derived from it here, in one place.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gymnasium import spaces

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = Path(os.environ.get("WMGYM_ENVS", REPO_ROOT / "envs"))

#: Layout of the privileged ``state`` vector shared by both twins.
STATE_FIELDS = ("eef_x", "eef_y", "eef_z", "grip_l", "grip_r", "cube_x", "cube_y", "cube_z")
#: Where the gripper's and the cube's xyz positions and the two finger joints sit in ``state``.
EEF_POS = slice(STATE_FIELDS.index("eef_x"), STATE_FIELDS.index("eef_z") + 1)
CUBE_POS = slice(STATE_FIELDS.index("cube_x"), STATE_FIELDS.index("cube_z") + 1)
GRIP = slice(STATE_FIELDS.index("grip_l"), STATE_FIELDS.index("grip_r") + 1)
IMAGE_KEYS = ("rgb", "depth", "mask")
STATE_BOUND = 5.0  # metres


@dataclass(frozen=True)
class CameraSpec:
    pos: tuple[float, float, float]
    """Camera position in the world frame, metres."""
    target: tuple[float, float, float]
    """Point the camera looks at, world frame, metres."""
    fovy: float
    """Vertical field of view in degrees."""


@dataclass(frozen=True)
class TaskSpec:
    """A task as read from ``envs/<task>.toml``.

    >>> spec = load_spec("pick")
    >>> spec.sim_id, spec.wm_id
    ('Sim-Pick-v0', 'WM-Pick-v0')
    """

    name: str
    """Task name, e.g. ``Pick``; the env ids are ``Sim-<name>-v0`` and ``WM-<name>-v0``."""
    description: str
    """One line saying what success means."""
    env: str
    """robosuite environment class name."""
    robot: str
    """robosuite robot name."""
    controller: str
    """robosuite part controller for the arm."""
    control_freq: int
    """Policy steps per simulated second."""
    reward_shaping: bool
    """Use the shaped reward (else sparse)."""
    camera: CameraSpec
    """The one camera both twins observe through."""
    resolution: int
    """Image height and width in pixels."""
    depth_range: tuple[float, float]
    """Near and far clip of the depth image, metres."""
    max_episode_steps: int
    """Steps after which an episode is truncated."""
    terminate_on_success: bool
    """End the episode as soon as ``info['success']`` is true."""
    success_cube_z: float | None
    """The task's success rule on ``state``: the cube's centre above this world height, metres
    (robosuite Lift: the table top, 0.8 m, plus 4 cm). The learned twin's success needs its
    imagined state to meet it as well as its success head to fire. None: the head alone."""
    checkpoint: Path
    """Directory of the world-model checkpoint (absolute)."""
    path: Path
    """The TOML file this spec was read from."""

    @property
    def sim_id(self) -> str:
        return f"Sim-{self.name}-v0"

    @property
    def wm_id(self) -> str:
        return f"WM-{self.name}-v0"

    def observation_space(self, images: bool = True) -> spaces.Dict:
        """The observation space of both twins; ``images=False`` keeps only ``state``."""
        r = self.resolution
        obs: dict[str, spaces.Space] = {}
        if images:
            obs["rgb"] = spaces.Box(0, 255, (r, r, 3), np.uint8)
            obs["depth"] = spaces.Box(0.0, self.depth_range[1], (r, r, 1), np.float32)
            obs["mask"] = spaces.Box(0, 1, (r, r, 1), np.uint8)
        # Finite bounds, far outside the workspace, so Gymnasium's checks stay quiet.
        obs["state"] = spaces.Box(-STATE_BOUND, STATE_BOUND, (len(STATE_FIELDS),), np.float32)
        return spaces.Dict(obs)

    def success(self, prob: np.ndarray, state: np.ndarray, needs_state: bool = True
                ) -> np.ndarray:
        """The task's verdict on imagined steps: the success head, checked against ``state``.

        Args:
            prob: ``(...)`` success-head probabilities (one per env, or per episode and step).
            state: ``(..., len(STATE_FIELDS))`` imagined states of the same steps.
            needs_state: Also require the cube above ``success_cube_z`` (when the spec sets
                it), as the real twin's success does; False: the head alone.

        Returns:
            ``(...)`` bool, the shape of ``prob``.
        """
        success = np.asarray(prob) > 0.5
        if needs_state and self.success_cube_z is not None:
            success = success & (np.asarray(state)[..., CUBE_POS][..., 2] > self.success_cube_z)
        return success

    def action_space(self) -> spaces.Box:
        """``[dx, dy, dz, gripper]`` in [-1, 1]; gripper -1 opens, +1 closes."""
        return spaces.Box(-1.0, 1.0, (4,), np.float32)


def _require(table: dict, key: str, path: Path):
    if key not in table:
        raise ValueError(f"{path}: missing required key {key!r}")
    return table[key]


def read_spec(path: str | Path) -> TaskSpec:
    """Reads one spec file, failing with the file name and the missing or bad key."""
    path = Path(path)
    with path.open("rb") as f:
        raw = tomllib.load(f)
    task, sim, cam = raw.get("task", {}), raw.get("sim", {}), raw.get("camera", {})
    obs, ep, wm = raw.get("observation", {}), raw.get("episode", {}), raw.get("world_model", {})
    ckpt = Path(wm.get("checkpoint", f"checkpoints/WM-{task.get('name', path.stem)}-v0"))
    near, far = (float(x) for x in _require(obs, "depth_range", path))
    if not 0 <= near < far:
        raise ValueError(f"{path}: depth_range must satisfy 0 <= near < far, got {near}, {far}")
    return TaskSpec(
        name=_require(task, "name", path),
        description=task.get("description", ""),
        env=_require(sim, "env", path),
        robot=_require(sim, "robot", path),
        controller=_require(sim, "controller", path),
        control_freq=int(_require(sim, "control_freq", path)),
        reward_shaping=bool(sim.get("reward_shaping", True)),
        camera=CameraSpec(
            pos=tuple(float(x) for x in _require(cam, "pos", path)),
            target=tuple(float(x) for x in _require(cam, "target", path)),
            fovy=float(_require(cam, "fovy", path)),
        ),
        resolution=int(_require(obs, "resolution", path)),
        depth_range=(near, far),
        max_episode_steps=int(_require(ep, "max_episode_steps", path)),
        terminate_on_success=bool(ep.get("terminate_on_success", True)),
        success_cube_z=None if "success_cube_z" not in task else float(task["success_cube_z"]),
        checkpoint=ckpt if ckpt.is_absolute() else (REPO_ROOT / ckpt),
        path=path,
    )


def load_spec(name: str) -> TaskSpec:
    """Loads ``envs/<name>.toml`` (case-insensitive task name, e.g. ``"pick"``)."""
    path = SPEC_DIR / f"{name.lower()}.toml"
    if not path.exists():
        known = sorted(p.stem for p in SPEC_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no task spec {path}; known tasks: {known}")
    return read_spec(path)


def all_specs() -> list[TaskSpec]:
    """Every spec under the spec directory, sorted by file name."""
    return [read_spec(p) for p in sorted(SPEC_DIR.glob("*.toml"))]
