"""Does imagination follow actions the data never showed? Counterfactual probes against Sim.

Recorded episodes test a world model under the actions its training data was made with. An
agent learning inside the model tries others: holding still, moving straight up, sideways. Here
each probe pattern (a constant action) runs from the same real start in ``Sim-<Task>-v0`` and in
the world model, and the imagined end-effector and cube are compared with the real ones after
each step. Two summary numbers matter most for RL in imagination:

* ``eef_err_m`` — how far the imagined gripper is from where the action really took it;
* ``false_success`` — the fraction of probe rollouts that the model calls a success while the
  real one never is (none of the patterns lifts the cube): the reward an agent could farm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from wmgym.env.core import Imagination
from wmgym.registration import make_env
from wmgym.spec import CUBE_POS, EEF_POS, TaskSpec, load_spec

#: Constant actions ``[dx, dy, dz, gripper]`` the probes apply.
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


def probe_sim(spec: TaskSpec, horizon: int):
    """The real twin for probes: state only, renders its frames, episodes of ``horizon`` steps."""
    return make_env(spec.sim_id, images=False, render_mode="rgb_array",
                    terminate_on_success=False, max_episode_steps=horizon + 1)


def real_start(sim, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The world model's context for a probe: the real twin's frames and state just after reset."""
    return {**sim.unwrapped.render_images(), "state": obs["state"]}


def imagine_from(
    spec: TaskSpec, starts: list[dict[str, np.ndarray]], checkpoint: str | None, device: str,
    temperature: float, decoding: str, seed: int,
) -> tuple[Imagination, dict[str, np.ndarray]]:
    """A state-only world model with one rollout per entry of ``starts``, reset from them."""
    core = Imagination(spec, len(starts), checkpoint, device, temperature, images=False,
                       decoding=decoding)
    rng = np.random.default_rng(seed)
    return core, core.reset([core.draw_start(rng, start) for start in starts])


@dataclass
class ProbeResult:
    """Per-step errors of the probe rollouts, ``(starts, patterns, horizon)``."""

    eef_err: np.ndarray
    cube_err: np.ndarray
    real_move: np.ndarray  # distance the real gripper moved from the start
    imagined_move: np.ndarray
    imagined_success: np.ndarray  # (starts, patterns) any step with info["success"]
    real_success: np.ndarray

    def summary(self) -> dict:
        """Mean errors at a few horizons, per pattern at the last one, false successes."""
        horizon = self.eef_err.shape[-1]
        hs = [h for h in PROBE_HORIZONS if h <= horizon]
        out = {
            "eef_err_m": {f"h{h}": round(float(self.eef_err[..., h - 1].mean()), 4) for h in hs},
            "cube_err_m": {f"h{h}": round(float(self.cube_err[..., h - 1].mean()), 4) for h in hs},
            "move_ratio": round(float(self.imagined_move[..., -1].mean()
                                      / max(self.real_move[..., -1].mean(), 1e-9)), 3),
            "false_success": round(float((self.imagined_success & ~self.real_success).mean()), 4),
            "per_pattern_eef_err_m": {
                name: round(float(self.eef_err[:, j, -1].mean()), 4)
                for j, name in enumerate(PATTERNS)
            },
            "starts": int(self.eef_err.shape[0]),
            "horizon": horizon,
        }
        return out


def probe_actions(
    spec: TaskSpec | str = "pick",
    starts: int = 8,
    horizon: int = 20,
    seed: int = 0,
    checkpoint: str | None = None,
    device: str = "auto",
    temperature: float = 1.0,
    progress: bool = True,
    decoding: str = "auto",
) -> ProbeResult:
    """Runs every pattern from ``starts`` real starts in Sim and in the world model.

    Args:
        spec: Task spec or name.
        starts: Real start observations (Sim reset seeds ``seed .. seed + starts - 1``).
        horizon: Steps per probe.
        seed: First reset seed; also seeds the model's sampling.
        checkpoint: World-model checkpoint; defaults to the spec's.
        device: World-model device.
        temperature: Token sampling temperature.
        progress: Show a progress bar.
        decoding: The world model's decoding mode (see ``Imagination``).

    Returns:
        The per-step errors.
    """
    spec = load_spec(spec) if isinstance(spec, str) else spec
    actions = np.asarray(list(PATTERNS.values()), np.float32)
    n_pat = len(actions)
    sim = probe_sim(spec, horizon)
    real_state = np.zeros((starts, n_pat, horizon + 1, 8), np.float32)
    real_success = np.zeros((starts, n_pat), bool)
    contexts = []
    bar = tqdm(total=starts * n_pat, desc="Sim probes", disable=not progress)
    for s in range(starts):
        for j, action in enumerate(actions):
            obs, _ = sim.reset(seed=seed + s)
            if j == 0:
                contexts.append(real_start(sim, obs))
            real_state[s, j, 0] = obs["state"]
            for t in range(horizon):
                obs, _, _, _, info = sim.step(action)
                real_state[s, j, t + 1] = obs["state"]
                real_success[s, j] |= bool(info["success"])
            bar.update()
    bar.close()
    sim.close()

    core, _ = imagine_from(spec, [c for c in contexts for _ in range(n_pat)], checkpoint, device,
                           temperature, decoding, seed)
    batch_actions = np.tile(actions, (starts, 1))
    imagined = np.zeros_like(real_state)
    imagined[:, :, 0] = real_state[:, :, 0]
    imagined_success = np.zeros((starts, n_pat), bool)
    for t in tqdm(range(horizon), desc="imagined probes", disable=not progress):
        out = core.step(batch_actions)
        imagined[:, :, t + 1] = out.obs["state"].reshape(starts, n_pat, -1)
        imagined_success |= out.success.reshape(starts, n_pat)
    core.close()

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(a - b, axis=-1)

    return ProbeResult(
        eef_err=dist(imagined[..., 1:, EEF_POS], real_state[..., 1:, EEF_POS]),
        cube_err=dist(imagined[..., 1:, CUBE_POS], real_state[..., 1:, CUBE_POS]),
        real_move=dist(real_state[..., 1:, EEF_POS], real_state[..., :1, EEF_POS]),
        imagined_move=dist(imagined[..., 1:, EEF_POS], imagined[..., :1, EEF_POS]),
        imagined_success=imagined_success,
        real_success=real_success,
    )
