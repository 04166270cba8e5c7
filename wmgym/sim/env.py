"""Sim-<Task>-v0: the real twin, a Gymnasium env over robosuite."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering on CPU; osmesa does not work

import gymnasium as gym
import mujoco
import numpy as np

from wmgym.sim import camera
from wmgym.spec import TaskSpec, load_spec
from wmgym.validation import check_action, check_render_mode

CAMERA = "sideview"  # an existing robosuite camera, moved to the spec's pose


def _controller_config(spec: TaskSpec) -> dict:
    from robosuite.controllers import load_part_controller_config
    from robosuite.controllers.composite.composite_controller_factory import (
        refactor_composite_controller_config,
    )

    part = load_part_controller_config(default_controller=spec.controller)
    return refactor_composite_controller_config(part, spec.robot, ["right"])


class SimEnv(gym.Env):
    """The real twin of a task: robosuite with the spec's camera, spaces and reward.

    Observations are ``rgb`` (upright, uint8), ``depth`` (metres, clipped to the spec's range),
    ``mask`` (1 on robot arm and gripper pixels), ``state`` (the spec's robosuite observables
    concatenated: a privileged readout that includes object poses) and ``proprio`` (the part of
    ``state`` a real robot knows: end effector and fingers). ``images=False`` turns the cameras
    off for fast state-based RL and keeps ``proprio`` and ``state``. ``info["success"]`` is
    robosuite's own success check.

    >>> import gymnasium as gym, wmgym
    >>> env = gym.make("Sim-Pick-v0")
    >>> obs, info = env.reset(seed=0)
    >>> sorted(obs)
    ['depth', 'mask', 'proprio', 'rgb', 'state']

    Args:
        task: Task spec or task name.
        images: Render rgb/depth/mask observations (else ``proprio`` and ``state`` only).
        render_mode: ``"rgb_array"`` or None.
        terminate_on_success: Override the spec's setting.

    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: TaskSpec | str,
        *,
        images: bool = True,
        render_mode: str | None = None,
        terminate_on_success: bool | None = None,
    ):
        import robosuite

        self.task = load_spec(task)
        check_render_mode(render_mode)
        self.render_mode = render_mode
        self.images = images
        self.terminate_on_success = (
            self.task.terminate_on_success if terminate_on_success is None else terminate_on_success
        )
        self.metadata = {**self.metadata, "render_fps": self.task.control_freq}
        self.observation_space = self.task.observation_space(images=images)
        self.action_space = self.task.action_space()
        self._rs = robosuite.make(
            self.task.env,
            robots=self.task.robot,
            controller_configs=_controller_config(self.task),
            has_renderer=False,
            has_offscreen_renderer=images or render_mode is not None,
            use_camera_obs=False,  # we render the task camera ourselves (see render_images)
            control_freq=self.task.control_freq,
            horizon=10**9,  # episode length is the TimeLimit's job
            ignore_done=True,
            reward_shaping=self.task.reward_shaping,
            reward_scale=1.0,
            hard_reset=False,
            seed=0,  # some tasks draw object sizes at construction: fix them for every instance
            **self.task.sim_options,
        )
        missing = [k for k in self.task.state_observables if k not in self._rs.observation_spec()]
        if missing:
            raise ValueError(f"{self.task.path}: [state] observables {missing} are not among "
                             f"robosuite {self.task.env}'s {sorted(self._rs.observation_spec())}")
        model = self._rs.sim.model._model
        self._cam_id = model.camera(CAMERA).id
        camera.place_camera(model, self._cam_id, self.task.camera)
        self._robot_geoms = camera.robot_geom_ids(model, "robot0_base")
        if images or render_mode is not None:
            self._rs.sim.render(camera_name=CAMERA, width=8, height=8)  # creates the GL context
            # Reflections of the glossy table cost ~40% of render time on CPU and add little.
            scene = self._rs.sim._render_context_offscreen.scn
            scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._last_frame: dict[str, np.ndarray] | None = None

    # ----------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = np.random.default_rng(int(self.np_random.integers(2**63)))
        self._rs.rng = rng  # robot initial-joint noise
        self._rs.placement_initializer.rng = rng  # cube placement
        raw = self._rs.reset()
        return self._observe(raw), {"success": False}

    def step(self, action):
        action = check_action(action, self.action_space)
        raw, reward, _, _ = self._rs.step(action.astype(np.float64))
        success = bool(self._rs._check_success())
        obs = self._observe(raw)
        terminated = success and self.terminate_on_success
        return obs, float(reward), terminated, False, {"success": success}

    def render(self) -> np.ndarray | None:
        """Rgb | depth | mask side by side, uint8 (H, 3W, 3)."""
        if self.render_mode != "rgb_array":
            return None
        from wmgym.viz import tile_frame

        frame = self._last_frame if self.images else self.render_images()
        return tile_frame(frame["rgb"], frame["depth"], frame["mask"], self.task.depth_range)

    def close(self):
        if self._rs is not None:
            self._rs.close()
            self._rs = None

    # ----------------------------------------------------------------------------- internals
    @property
    def sim(self):
        """The robosuite MjSim (for tests and tools; not part of the twin contract)."""
        return self._rs.sim

    def _state(self, raw: dict) -> np.ndarray:
        state = np.concatenate([np.atleast_1d(raw[k]) for k in self.task.state_observables])
        if state.shape != (self.task.state_dim,):
            raise ValueError(f"{self.task.path}: [state] observables give {state.shape[0]} "
                             f"values, but [state] fields name {self.task.state_dim}")
        return state.astype(np.float32)

    def render_images(self) -> dict[str, np.ndarray]:
        """The camera's rgb, metric depth and robot mask of the current state.

        Needs a renderer: ``images=True`` or ``render_mode="rgb_array"``.
        """
        if self._rs.sim._render_context_offscreen is None:
            raise RuntimeError("render_images needs images=True or render_mode='rgb_array'")
        r = self.task.resolution
        sim = self._rs.sim
        # robosuite renders into whichever GL context is current: with several envs in one
        # process that is the last one created, so make ours current first.
        sim._render_context_offscreen.gl_ctx.make_current()
        rgb, depth = sim.render(camera_name=CAMERA, width=r, height=r, depth=True)
        seg = sim.render(camera_name=CAMERA, width=r, height=r, segmentation=True)
        depth = camera.metric_depth(sim.model, depth)
        near, far = self.task.depth_range
        is_geom = seg[..., 0] == mujoco.mjtObj.mjOBJ_GEOM
        is_robot = is_geom & np.isin(seg[..., 1], self._robot_geoms)
        return {  # MuJoCo reads pixels bottom-up: flip to upright
            "rgb": np.ascontiguousarray(rgb[::-1]),
            "depth": np.clip(depth[::-1], near, far).astype(np.float32)[..., None],
            "mask": is_robot[::-1].astype(np.uint8)[..., None],
        }

    def _observe(self, raw: dict) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.images:
            self._last_frame = self.render_images()
            obs.update(self._last_frame)
        obs["state"] = self._state(raw)
        obs["proprio"] = self.task.proprio(obs["state"])
        return obs

    def project(self, point) -> tuple[int, int]:
        """Pixel (row, col) of a world point in the task camera's upright image."""
        return camera.project(
            self._rs.sim.model._model, self._rs.sim.data._data, self._cam_id, point,
            self.task.resolution,
        )
