"""Do the fingers close only when told to? The open-grasp probe, against Sim.

The scripted pick runs closed loop, on each twin's own ``state``, from the same real starts in
``Sim-<Task>-v0`` and in the world model: once as it is (the control: the model must still
lift when the gripper closes), and once with its gripper command held open. The open pick
approaches, descends to the grasp point, stands there and lifts with open fingers; in robosuite
it never lifts the cube. A model whose data always closed the fingers once the open gripper
reached the cube imagines them closing anyway, and a lift. An agent in imagination farms that:
it hovers at the cube with the gripper open and waits for the model to grasp for it.

Two numbers (:meth:`GraspProbeResult.summary`):

* ``open_success`` — imagined successes of the open pick (robosuite's are 0);
* ``open_fingers_closed`` — open picks in which the imagined fingers closed on their own (the
  opening shrank by more than ``CLOSING`` from its widest so far; the fingers start half open
  at a reset and open during the approach).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from wmgym.env.core import Imagination
from wmgym.policies import ScriptedPick
from wmgym.registration import make_env
from wmgym.spec import GRIP, TaskSpec, load_spec

#: How far the finger opening (left minus right joint, metres) must shrink from its widest for
#: the fingers to count as closing: open they are about 8 cm apart, closed on the cube 4 cm.
CLOSING = 0.02
VARIANTS = ("pick", "open")


@dataclass
class GraspProbeResult:
    """Per-episode outcomes, ``(variants, episodes)``, in both twins."""

    real_success: np.ndarray
    imagined_success: np.ndarray
    real_closing: np.ndarray  # largest shrink of the finger opening from its widest, metres
    imagined_closing: np.ndarray

    def summary(self) -> dict:
        """Success and finger closing of both variants in both twins."""
        pick, open_ = VARIANTS.index("pick"), VARIANTS.index("open")

        def rate(x: np.ndarray) -> float:
            return round(float(x.mean()), 4)

        return {
            "open_success": rate(self.imagined_success[open_]),
            "open_fingers_closed": rate(self.imagined_closing[open_] > CLOSING),
            "open_success_real": rate(self.real_success[open_]),
            "open_fingers_closed_real": rate(self.real_closing[open_] > CLOSING),
            "pick_success": rate(self.imagined_success[pick]),
            "pick_success_real": rate(self.real_success[pick]),
            "episodes": int(self.real_success.shape[1]),
        }


def _act(policies: list[ScriptedPick], states: np.ndarray, variant: str) -> np.ndarray:
    actions = np.stack([p({"state": s}) for p, s in zip(policies, states)])
    if variant == "open":
        actions[:, 3] = -1.0
    return actions


def _policies(n: int, seed: int) -> list[ScriptedPick]:
    policies = [ScriptedPick() for _ in range(n)]
    for i, p in enumerate(policies):
        p.reset(seed + i)
    return policies


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
    """Runs the scripted pick and its open-gripper variant in Sim and in the world model.

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
    shape = (len(VARIANTS), episodes)
    real_success, imagined_success = np.zeros(shape, bool), np.zeros(shape, bool)
    real_closing, imagined_closing = np.zeros(shape), np.zeros(shape)
    sim = make_env(spec.sim_id, images=False, render_mode="rgb_array",
                   terminate_on_success=False, max_episode_steps=horizon + 1)
    contexts = []
    bar = tqdm(total=len(VARIANTS) * episodes, desc="Sim grasp probes", disable=not progress)
    for v, variant in enumerate(VARIANTS):
        for e, policy in enumerate(_policies(episodes, seed)):
            obs, _ = sim.reset(seed=seed + e)
            if v == 0:
                contexts.append({**sim.unwrapped.render_images(), "state": obs["state"]})
            widest = np.ptp(obs["state"][GRIP])
            for _ in range(horizon):
                obs, _, _, _, info = sim.step(_act([policy], obs["state"][None], variant)[0])
                real_success[v, e] |= bool(info["success"])
                width = np.ptp(obs["state"][GRIP])
                widest = max(widest, width)
                real_closing[v, e] = max(real_closing[v, e], widest - width)
            bar.update()
    bar.close()
    sim.close()

    core = Imagination(spec, len(VARIANTS) * episodes, checkpoint, device, temperature,
                       images=False, decoding=decoding)
    rng = np.random.default_rng(seed)
    states = core.reset([core.draw_start(rng, contexts[e]) for _ in VARIANTS
                         for e in range(episodes)])["state"]
    policies = [p for _ in VARIANTS for p in _policies(episodes, seed)]
    widest = np.ptp(states[:, GRIP], axis=1).reshape(shape)
    for _ in tqdm(range(horizon), desc="imagined grasp probes", disable=not progress):
        actions = np.concatenate([
            _act(policies[v * episodes:(v + 1) * episodes],
                 states[v * episodes:(v + 1) * episodes], variant)
            for v, variant in enumerate(VARIANTS)])
        out = core.step(actions)
        states = out.obs["state"]
        imagined_success |= (out.success_prob > 0.5).reshape(shape)
        width = np.ptp(states[:, GRIP], axis=1).reshape(shape)
        widest = np.maximum(widest, width)
        imagined_closing = np.maximum(imagined_closing, widest - width)
    core.close()
    return GraspProbeResult(real_success, imagined_success, real_closing, imagined_closing)
