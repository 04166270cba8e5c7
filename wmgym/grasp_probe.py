"""Does the model grasp only when told to? Grasp probes, against Sim.

The scripted pick runs closed loop, on each twin's own ``state``, from the same real starts in
``Sim-<Task>-v0`` and in the world model, in three variants (:data:`VARIANTS`):

* ``pick`` — as it is: the control, the model must still lift when the gripper closes;
* ``open`` — its gripper command held open: it descends to the grasp point, stands there and
  lifts with open fingers;
* ``hover`` — gripper open, and the arm held still (zero motion) from the moment it comes
  within ``HOVER_HEIGHT`` above the cube's centre.

In robosuite neither ``open`` nor ``hover`` lifts the cube, and a still arm stays where it is.
A model whose data always finished the descent and closed the fingers once the open gripper
reached the cube imagines that anyway. An agent in imagination farms it: it comes to rest above
the cube with the gripper open and lets the model grasp for it (measured in the README).

The numbers (:meth:`GraspProbeResult.summary`), imagined and real (``_real``):

* ``<variant>_success`` — episodes with a lift;
* ``<variant>_fingers_closed`` — episodes in which the fingers closed (the opening shrank by more
  than ``CLOSING`` from its widest so far; they start half open at a reset);
* ``hover_drop_m`` — how far below where it was stopped the still arm is, on average over the
  held steps (a mean: the imagined state reads the gripper's height with centimetre noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from wmgym.action_probe import imagine_from, probe_sim, real_start
from wmgym.policies import ScriptedPick
from wmgym.spec import CUBE_POS, EEF_POS, GRIP, TaskSpec, load_spec

#: How far the finger opening (left minus right joint, metres) must shrink from its widest for
#: the fingers to count as closing: open they are about 8 cm apart, closed on the cube 4 cm.
CLOSING = 0.02
VARIANTS = ("pick", "open", "hover")
HOVER_HEIGHT = 0.03  # hover: the arm is stopped this far above the cube's centre, metres


@dataclass
class GraspProbeResult:
    """Per-episode outcomes, ``(variants, episodes)``, in both twins."""

    real_success: np.ndarray
    imagined_success: np.ndarray
    real_closing: np.ndarray  # largest shrink of the finger opening from its widest, metres
    imagined_closing: np.ndarray
    real_drop: np.ndarray  # hover: mean gripper height below where it was stopped, metres
    imagined_drop: np.ndarray

    def summary(self) -> dict:
        """Lifts and finger closing of every variant, the hover drop; imagined and real."""
        out: dict = {}
        for twin, success, closing in (("", self.imagined_success, self.imagined_closing),
                                       ("_real", self.real_success, self.real_closing)):
            for v, variant in enumerate(VARIANTS):
                out[f"{variant}_success{twin}"] = round(float(success[v].mean()), 4)
                out[f"{variant}_fingers_closed{twin}"] = round(float((closing[v] > CLOSING).mean()),
                                                               4)
        hover = VARIANTS.index("hover")
        out["hover_drop_m"] = round(float(self.imagined_drop[hover].mean()), 4)
        out["hover_drop_m_real"] = round(float(self.real_drop[hover].mean()), 4)
        out["episodes"] = int(self.real_success.shape[1])
        return out


class _ProbePolicy:
    """The scripted pick in one of :data:`VARIANTS`."""

    def __init__(self, variant: str, seed: int):
        self.variant, self.pick, self.stopped_at = variant, ScriptedPick(), None
        self.pick.reset(seed)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        action = self.pick({"state": state})
        if self.variant == "pick":
            return action
        if self.variant == "hover" and self.stopped_at is None and self.pick.phase == "descend" \
                and state[EEF_POS][2] - state[CUBE_POS][2] < HOVER_HEIGHT:
            self.stopped_at = float(state[EEF_POS][2])
        if self.stopped_at is not None:
            return np.array([0.0, 0.0, 0.0, -1.0], np.float32)
        return np.r_[action[:3], -1.0].astype(np.float32)

    def drop(self, state: np.ndarray) -> float:
        """How far below its stopping height the gripper is (NaN before it stopped)."""
        return np.nan if self.stopped_at is None else self.stopped_at - float(state[EEF_POS][2])


class _Tracker:
    """Per-episode lift, finger closing and hover drop along rollouts of all variants."""

    def __init__(self, episodes: int):
        shape = (len(VARIANTS), episodes)
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
        width = np.ptp(states[..., GRIP], axis=-1).reshape(self.widest[rows].shape)
        self.widest[rows] = np.maximum(self.widest[rows], width)
        self.closing[rows] = np.maximum(self.closing[rows], self.widest[rows] - width)
        self.success[rows] |= success.reshape(width.shape)
        drop = drop.reshape(width.shape)
        self.drop_sum[rows] += np.nan_to_num(drop)
        self.drop_steps[rows] += ~np.isnan(drop)


def probe_grasps(
    spec: TaskSpec | str = "pick",
    episodes: int = 8,
    horizon: int = 60,
    seed: int = 0,
    checkpoint: str | None = None,
    device: str = "auto",
    temperature: float = 1.0,
    progress: bool = True,
    decoding: str = "auto",
) -> GraspProbeResult:
    """Runs the scripted pick in each of :data:`VARIANTS`, in Sim and in the world model.

    Args:
        spec: Task spec or name.
        episodes: Real starts per variant (Sim reset seeds ``seed .. seed + episodes - 1``).
        horizon: Steps per episode (the scripted pick lifts within about 45).
        seed: First reset seed; also seeds the model's sampling.
        checkpoint: World-model checkpoint; defaults to the spec's.
        device: World-model device.
        temperature: Token sampling temperature.
        progress: Show a progress bar.
        decoding: The world model's decoding mode (see ``Imagination``).

    Returns:
        The per-episode outcomes.
    """
    spec = load_spec(spec) if isinstance(spec, str) else spec
    sim = probe_sim(spec, horizon)
    contexts, real = [], _Tracker(episodes)
    bar = tqdm(total=len(VARIANTS) * episodes, desc="Sim grasp probes", disable=not progress)
    for v, variant in enumerate(VARIANTS):
        for e in range(episodes):
            policy = _ProbePolicy(variant, seed + e)
            obs, _ = sim.reset(seed=seed + e)
            if v == 0:
                contexts.append(real_start(sim, obs))
            for _ in range(horizon):
                obs, _, _, _, info = sim.step(policy(obs["state"]))
                real.update(obs["state"], np.array(bool(info["success"])),
                            np.array(policy.drop(obs["state"])), (v, e))
            bar.update()
    bar.close()
    sim.close()

    core, obs = imagine_from(spec, contexts * len(VARIANTS), checkpoint, device, temperature,
                             decoding, seed)
    states = obs["state"]
    policies = [_ProbePolicy(variant, seed + e) for variant in VARIANTS for e in range(episodes)]
    imagined = _Tracker(episodes)
    for _ in tqdm(range(horizon), desc="imagined grasp probes", disable=not progress):
        out = core.step(np.stack([p(s) for p, s in zip(policies, states)]))
        states = out.obs["state"]
        imagined.update(states, out.success,
                        np.array([p.drop(s) for p, s in zip(policies, states)]))
    core.close()
    return GraspProbeResult(real.success, imagined.success, real.closing, imagined.closing,
                            real.drop, imagined.drop)
