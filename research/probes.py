"""Pick probes: does imagination follow actions the data never showed, and grasp only when told?

    python research/probes.py --checkpoint checkpoints/WM-Pick-v0 --starts 8 --out runs/probes.json

Recorded episodes test a world model under the actions its training data was made with. An
agent learning inside the model tries others. Two probes run from the same real starts in
``Sim-Pick-v0`` and in ``WM-Pick-v0``'s imagination core (state only):

* **Action probes** (:func:`probe_actions`): constant actions (hold, up, sideways, …); the
  imagined end effector and cube are compared with the real ones after each step.
  ``eef_err_m`` says how far the imagined gripper is from where the action really took it;
  ``false_success`` the fraction of probe rollouts the model calls a success while the real one
  never is (none of the patterns lifts the cube): the reward an agent could farm. The end
  effector alone, under every arm axis and magnitude and under random smooth actions, against
  targets, is ``wmgym eval --arm-starts`` (:mod:`wmgym.arm_probe`).
* **Grasp probes** (:func:`probe_grasps`): the scripted pick closed loop, as it is (``pick``),
  with its gripper held open (``open``), and stopped with the gripper open within
  ``HOVER_HEIGHT`` above the cube (``hover``). In robosuite neither ``open`` nor ``hover`` lifts
  the cube and a still arm stays where it is; a model whose data always closed the fingers once
  the open gripper reached the cube imagines a grasp anyway.

The JSON written holds ``action_probe`` and ``grasp_probe`` summaries; ``wmgym card --probes``
shows them on the model card.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from tqdm.auto import tqdm

from wmgym.env.core import Imagination
from wmgym.registration import make_env
from wmgym.spec import TaskSpec, load_spec
from wmgym.tasks.pick import ScriptedPick

#: Constant actions ``[dx, dy, dz, gripper]`` the action probes apply.
PATTERNS: dict[str, tuple[float, float, float, float]] = {
    "hold": (0.0, 0.0, 0.0, -1.0),
    "up": (0.0, 0.0, 1.0, -1.0),
    "down": (0.0, 0.0, -1.0, -1.0),
    "forward": (1.0, 0.0, 0.0, -1.0),
    "back": (-1.0, 0.0, 0.0, -1.0),
    "left": (0.0, -1.0, 0.0, -1.0),
    "right": (0.0, 1.0, 0.0, -1.0),
    "close": (0.0, 0.0, 0.0, 1.0),
}
PROBE_HORIZONS = (1, 5, 10, 20)
#: How far the finger opening (metres) must shrink from its widest for the fingers to count as
#: closing: open they are about 8 cm apart, closed on the cube 4 cm.
CLOSING = 0.02
VARIANTS = ("pick", "open", "hover")
HOVER_HEIGHT = 0.03  # hover: the arm is stopped this far above the cube's centre, metres


def _sim(spec: TaskSpec, horizon: int):
    """The real twin for probes: state only, renders its frames, episodes of ``horizon`` steps."""
    return make_env(spec.sim_id, images=False, render_mode="rgb_array",
                    terminate_on_success=False, max_episode_steps=horizon + 1)


def _real_start(sim, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The world model's context: the real twin's frames and state just after reset."""
    return {**sim.unwrapped.render_images(), "state": obs["state"]}


def _imagine_from(spec: TaskSpec, starts: list[dict[str, np.ndarray]], *, checkpoint: str | None,
                  device: str, fast: str, seed: int) -> tuple[Imagination, dict[str, np.ndarray]]:
    """A state-only imagination core with one rollout per entry of ``starts``, reset from them."""
    core = Imagination(spec, num_envs=len(starts), checkpoint=checkpoint, device=device,
                       images=False, fast=fast)
    rng = np.random.default_rng(seed)
    return core, core.reset([core.draw_start(rng, start) for start in starts])


# ----------------------------------------------------------------------------- action probes


def probe_actions(spec: TaskSpec, *, starts: int = 8, horizon: int = 20, seed: int = 0,
                  checkpoint: str | None = None, device: str = "auto", fast: str = "default",
                  progress: bool = True) -> dict:
    """Runs every pattern from ``starts`` real starts in Sim and imagined; returns the summary."""
    eef, cube = list(spec.positions["eef"]), list(spec.positions["cube"])
    actions = np.asarray(list(PATTERNS.values()), np.float32)
    n_pat = len(actions)
    sim = _sim(spec, horizon)
    real = np.zeros((starts, n_pat, horizon + 1, spec.state_dim), np.float32)
    real_success = np.zeros((starts, n_pat), bool)
    contexts = []
    bar = tqdm(total=starts * n_pat, desc="Sim probes", disable=not progress)
    for s in range(starts):
        for j, action in enumerate(actions):
            obs, _ = sim.reset(seed=seed + s)
            if j == 0:
                contexts.append(_real_start(sim, obs))
            real[s, j, 0] = obs["state"]
            for t in range(horizon):
                obs, _, _, _, info = sim.step(action)
                real[s, j, t + 1] = obs["state"]
                real_success[s, j] |= bool(info["success"])
            bar.update()
    bar.close()
    sim.close()

    core, _ = _imagine_from(spec, [c for c in contexts for _ in range(n_pat)],
                            checkpoint=checkpoint, device=device, fast=fast, seed=seed)
    imagined = np.zeros_like(real)
    imagined[:, :, 0] = real[:, :, 0]
    imagined_success = np.zeros((starts, n_pat), bool)
    for t in tqdm(range(horizon), desc="imagined probes", disable=not progress):
        out = core.step(np.tile(actions, (starts, 1)))
        imagined[:, :, t + 1] = out.obs["state"].reshape(starts, n_pat, -1)
        imagined_success |= out.success.reshape(starts, n_pat)
    core.close()

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(a - b, axis=-1)

    eef_err = dist(imagined[..., 1:, eef], real[..., 1:, eef])
    cube_err = dist(imagined[..., 1:, cube], real[..., 1:, cube])
    real_move = dist(real[..., 1:, eef], real[..., :1, eef])
    imagined_move = dist(imagined[..., 1:, eef], imagined[..., :1, eef])
    hs = [h for h in PROBE_HORIZONS if h <= horizon]
    return {
        "eef_err_m": {f"h{h}": round(float(eef_err[..., h - 1].mean()), 4) for h in hs},
        "cube_err_m": {f"h{h}": round(float(cube_err[..., h - 1].mean()), 4) for h in hs},
        "move_ratio": round(float(imagined_move[..., -1].mean()
                                  / max(real_move[..., -1].mean(), 1e-9)), 3),
        "false_success": round(float((imagined_success & ~real_success).mean()), 4),
        "per_pattern_eef_err_m": {name: round(float(eef_err[:, j, -1].mean()), 4)
                                  for j, name in enumerate(PATTERNS)},
        "starts": starts,
        "horizon": horizon,
    }


# ----------------------------------------------------------------------------- grasp probes


class _ProbePolicy:
    """The scripted pick in one of :data:`VARIANTS`."""

    def __init__(self, variant: str, seed: int, spec: TaskSpec):
        self.variant, self.pick, self.stopped_at = variant, ScriptedPick(), None
        self.pick.reset(seed)
        self.z_eef, self.z_cube = spec.positions["eef"][2], spec.positions["cube"][2]

    def __call__(self, state: np.ndarray) -> np.ndarray:
        action = self.pick({"state": state})
        if self.variant == "pick":
            return action
        if self.variant == "hover" and self.stopped_at is None and self.pick.phase == "descend" \
                and state[self.z_eef] - state[self.z_cube] < HOVER_HEIGHT:
            self.stopped_at = float(state[self.z_eef])
        if self.stopped_at is not None:
            return np.array([0.0, 0.0, 0.0, -1.0], np.float32)
        return np.r_[action[:3], -1.0].astype(np.float32)

    def drop(self, state: np.ndarray) -> float:
        """How far below its stopping height the gripper is (NaN before it stopped)."""
        return np.nan if self.stopped_at is None else self.stopped_at - float(state[self.z_eef])


class _Tracker:
    """Per-episode lift, finger closing and hover drop along rollouts of all variants."""

    def __init__(self, episodes: int, fingers: list[int]):
        shape = (len(VARIANTS), episodes)
        self.fingers = fingers
        self.success = np.zeros(shape, bool)
        self.closing, self.widest = np.zeros(shape), np.zeros(shape)
        self.drop_sum, self.drop_steps = np.zeros(shape), np.zeros(shape)

    @property
    def drop(self) -> np.ndarray:
        """Mean drop over the held steps (0 where the arm never stopped)."""
        return self.drop_sum / np.maximum(self.drop_steps, 1)

    def update(self, states: np.ndarray, success: np.ndarray, drop: np.ndarray,
               rows: tuple | slice = slice(None)) -> None:
        """Folds in one step of the episodes ``rows`` (an index into ``(variants, episodes)``)."""
        width = np.ptp(states[..., self.fingers], axis=-1).reshape(self.widest[rows].shape)
        self.widest[rows] = np.maximum(self.widest[rows], width)
        self.closing[rows] = np.maximum(self.closing[rows], self.widest[rows] - width)
        self.success[rows] |= success.reshape(width.shape)
        drop = drop.reshape(width.shape)
        self.drop_sum[rows] += np.nan_to_num(drop)
        self.drop_steps[rows] += ~np.isnan(drop)


def probe_grasps(spec: TaskSpec, *, episodes: int = 8, horizon: int = 60, seed: int = 0,
                 checkpoint: str | None = None, device: str = "auto", fast: str = "default",
                 progress: bool = True) -> dict:
    """Runs the scripted pick in each of :data:`VARIANTS`, in Sim and imagined; the summary."""
    fingers = spec.index("grip_l", "grip_r")
    sim = _sim(spec, horizon)
    contexts, real = [], _Tracker(episodes, fingers)
    bar = tqdm(total=len(VARIANTS) * episodes, desc="Sim grasp probes", disable=not progress)
    for v, variant in enumerate(VARIANTS):
        for e in range(episodes):
            policy = _ProbePolicy(variant, seed + e, spec)
            obs, _ = sim.reset(seed=seed + e)
            if v == 0:
                contexts.append(_real_start(sim, obs))
            for _ in range(horizon):
                obs, _, _, _, info = sim.step(policy(obs["state"]))
                real.update(obs["state"], np.array(bool(info["success"])),
                            np.array(policy.drop(obs["state"])), (v, e))
            bar.update()
    bar.close()
    sim.close()

    core, obs = _imagine_from(spec, contexts * len(VARIANTS), checkpoint=checkpoint,
                              device=device, fast=fast, seed=seed)
    states = obs["state"]
    policies = [_ProbePolicy(variant, seed + e, spec) for variant in VARIANTS
                for e in range(episodes)]
    imagined = _Tracker(episodes, fingers)
    for _ in tqdm(range(horizon), desc="imagined grasp probes", disable=not progress):
        out = core.step(np.stack([p(s) for p, s in zip(policies, states)]))
        states = out.obs["state"]
        imagined.update(states, out.success,
                        np.array([p.drop(s) for p, s in zip(policies, states)]))
    core.close()
    summary: dict = {}
    for twin, t in (("", imagined), ("_real", real)):
        for v, variant in enumerate(VARIANTS):
            summary[f"{variant}_success{twin}"] = round(float(t.success[v].mean()), 4)
            summary[f"{variant}_fingers_closed{twin}"] = round(
                float((t.closing[v] > CLOSING).mean()), 4)
    hover = VARIANTS.index("hover")
    summary["hover_drop_m"] = round(float(imagined.drop[hover].mean()), 4)
    summary["hover_drop_m_real"] = round(float(real.drop[hover].mean()), 4)
    summary["episodes"] = episodes
    return summary


if __name__ == "__main__":
    from wmgym.results import write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the task's shipped one")
    parser.add_argument("--starts", type=int, default=8, help="real starts per probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fast", default="default", help="speed preset of the world model")
    parser.add_argument("--out", default="runs/probes.json")
    cli = parser.parse_args()
    pick = load_spec("pick")
    kwargs = {"seed": cli.seed, "checkpoint": cli.checkpoint, "device": cli.device,
              "fast": cli.fast}
    result = {"action_probe": probe_actions(pick, starts=cli.starts, **kwargs),
              "grasp_probe": probe_grasps(pick, episodes=cli.starts, **kwargs)}
    write_result(cli.out, result)
    print(json.dumps(result, indent=1))
