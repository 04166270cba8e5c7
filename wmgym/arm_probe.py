"""The arm probe: does the learned twin move the end effector as the real controller does?

The arm under its controller is nearly deterministic, so imagination should follow it to
millimetres. From the same real starts (``Sim-<Task>-v0`` reset with a seed; ``WM-<Task>-v0``
started from that observation with ``options={"context": obs}``) both twins run:

1. **Constant actions** — every arm axis of the action (the spec's action dimensions other than
   its event's trigger, e.g. Pick's ``dx``, ``dy``, ``dz``), every magnitude in
   :data:`MAGNITUDES`, both signs, held for ``horizon`` steps. Per axis, magnitude and sign: the
   imagined/real end-effector travel along the commanded axis and the end-effector error at the
   last step.
2. **Random smooth actions** — Ornstein-Uhlenbeck sequences on every arm axis, one amplitude
   per episode drawn log-uniformly over the same magnitudes, open loop for ``random_horizon``
   steps: the end-effector error at :data:`HORIZONS` and the gain of the imagined per-step motion
   on the real one.

The trigger of the spec's event (Pick's gripper) is held at -1 (open, no event) throughout. The
end effector is ``spec.positions["eef"]`` of ``state``, and the ``k``-th arm axis of the action
moves its ``k``-th coordinate (position control of the end effector). :data:`TARGETS` are the
faithfulness the arm should reach; each number comes with a pass flag.

>>> result = arm_probe("pick", starts=8)  # doctest: +SKIP
>>> print(format_arm_table(result))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from wmgym.spec import TaskSpec, load_spec

#: Constant-action magnitudes ``|a|`` the probe holds on each arm axis.
MAGNITUDES = (0.05, 0.1, 0.2, 0.5, 1.0)
#: Steps each constant action is held, and steps of each random smooth sequence.
HOLD_STEPS, RANDOM_STEPS = 20, 50
#: Open-loop horizons (steps) of the random-action errors.
HORIZONS = (1, 5, 20, 50)
#: First Sim seed of the real starts: outside the recipe's data collection seeds (0 to ~16,200).
SEED = 700_000
#: What a faithful arm reaches: travel ratio bounds, the end-effector error after the constant
#: actions, and the open-loop error under random smooth actions per horizon (metres).
TARGETS: dict[str, Any] = {
    "travel_ratio": (0.95, 1.05),
    "constant_err_m": 0.005,
    "random_err_m": {"h20": 0.01, "h50": 0.02},
}


# ----------------------------------------------------------------------------- metrics


def axis_travel_ratio(real: np.ndarray, imagined: np.ndarray, axis: int) -> float:
    """Imagined/real end-effector travel along one coordinate, pooled over rollouts.

    Args:
        real: Real end-effector positions ``(rollouts, T + 1, 3)``, the start first.
        imagined: Imagined ones, the same shape.
        axis: The coordinate (0, 1, 2).

    Returns:
        ``sum(imagined travel) / sum(real travel)`` from the start to the last step (signed, so a
        model that moves the wrong way gets a negative ratio); NaN without real travel.
    """
    real_travel = float((real[:, -1, axis] - real[:, 0, axis]).sum())
    imagined_travel = float((imagined[:, -1, axis] - imagined[:, 0, axis]).sum())
    return imagined_travel / real_travel if real_travel != 0 else float("nan")


def position_errors(real: np.ndarray, imagined: np.ndarray) -> np.ndarray:
    """Euclidean distance between imagined and real positions ``(rollouts, T + 1, 3)``.

    Returns:
        ``(rollouts, T + 1)`` metres.
    """
    return np.linalg.norm(imagined - real, axis=-1)


def motion_gain(real: np.ndarray, imagined: np.ndarray) -> float:
    """Least-squares gain of the imagined per-step motion on the real one, pooled over rollouts.

    ``sum <d_imagined, d_real> / sum |d_real|^2`` over every step's displacement: 1 when the
    imagined end effector moves as far as the real one in the same direction, 2 when twice as
    far. Zero-mean jitter of the imagined positions does not bias it (a path length would grow).

    Args:
        real: Real positions ``(rollouts, T + 1, 3)``.
        imagined: Imagined positions, the same shape.

    Returns:
        The gain; NaN when the real positions never move.
    """
    d_real, d_imagined = np.diff(real, axis=1), np.diff(imagined, axis=1)
    denominator = float((d_real * d_real).sum())
    return float((d_imagined * d_real).sum()) / denominator if denominator else float("nan")


def smooth_actions(rng: np.random.Generator, episodes: int, steps: int, dims: int, *,
                   theta: float = 0.1, std: float = 0.6,
                   amplitudes: tuple[float, float] = (MAGNITUDES[0], MAGNITUDES[-1])
                   ) -> np.ndarray:
    """Random smooth actions: Ornstein-Uhlenbeck sequences scaled per episode, in [-1, 1].

    Each dimension reverts to 0 at rate ``theta`` per step with stationary standard deviation
    ``std``; each episode's sequence is multiplied by one amplitude drawn log-uniformly from
    ``amplitudes``, so slow and fast motions are both covered, then clipped to [-1, 1].

    Returns:
        ``(episodes, steps, dims)`` float32.
    """
    sigma = std * np.sqrt(theta * (2.0 - theta))  # keeps the stationary std at ``std``
    x = np.empty((episodes, steps, dims))
    x[:, 0] = rng.normal(0.0, std, (episodes, dims))
    for t in range(1, steps):
        x[:, t] = (1.0 - theta) * x[:, t - 1] + sigma * rng.normal(size=(episodes, dims))
    low, high = np.log(amplitudes[0]), np.log(amplitudes[1])
    scale = np.exp(rng.uniform(low, high, (episodes, 1, 1)))
    return np.clip(x * scale, -1.0, 1.0).astype(np.float32)


def _ratio_ok(ratio: float) -> bool:
    low, high = TARGETS["travel_ratio"]
    return bool(low <= ratio <= high)


# ----------------------------------------------------------------------------- rollouts


def arm_axes(spec: TaskSpec) -> list[int]:
    """The action dimensions that move the arm: all but the spec's event trigger.

    Raises:
        ValueError: More arm axes than the end effector has coordinates, or no ``eef``.
    """
    if "eef" not in spec.positions:
        raise ValueError(f"{spec.path}: the arm probe needs [state] positions.eef")
    trigger = spec.event.trigger if spec.event is not None else None
    axes = [i for i in range(spec.action_dim) if i != trigger]
    if len(axes) > len(spec.positions["eef"]):
        raise ValueError(f"{spec.path}: {len(axes)} arm action dimensions "
                         f"{[spec.action_names[i] for i in axes]} for an end effector of "
                         f"{len(spec.positions['eef'])} coordinates")
    return axes


def _rest_action(spec: TaskSpec) -> np.ndarray:
    """Zero on the arm, -1 on the event's trigger (no grasp)."""
    action = np.zeros(spec.action_dim, np.float32)
    if spec.event is not None:
        action[spec.event.trigger] = -1.0
    return action


def real_rollouts(spec: TaskSpec, batches: Sequence[np.ndarray], *, seeds: Sequence[int]
                  ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Runs every action sequence from every seeded start in ``Sim-<Task>-v0`` (one env).

    Args:
        spec: The task.
        batches: Arrays ``(len(seeds), patterns, T, action_dim)`` of action sequences per start
            (``patterns`` and ``T`` may differ between arrays).
        seeds: Reset seeds of the starts.

    Returns:
        ``(states, contexts)``: real states ``(starts, patterns, T + 1, state_dim)`` per array of
        ``batches``, and each start's first observation with its images
        (``{key: (starts, ...)}``), the context the learned twin starts from.
    """
    steps = max(b.shape[2] for b in batches)
    sim = gym.make(spec.sim_id, images=False, render_mode="rgb_array",
                   terminate_on_success=False, max_episode_steps=steps + 1)
    states = [np.zeros((*b.shape[:2], b.shape[2] + 1, spec.state_dim), np.float32)
              for b in batches]
    contexts: list[dict[str, np.ndarray]] = []
    try:
        for s, seed in enumerate(seeds):
            for actions, out in zip(batches, states):
                for p in range(actions.shape[1]):
                    obs, _ = sim.reset(seed=int(seed))
                    if len(contexts) == s:
                        contexts.append({**sim.unwrapped.render_images(), "state": obs["state"]})
                    out[s, p, 0] = obs["state"]
                    for t in range(actions.shape[2]):
                        obs, *_ = sim.step(actions[s, p, t])
                        out[s, p, t + 1] = obs["state"]
    finally:
        sim.close()
    return states, {k: np.stack([c[k] for c in contexts]) for k in contexts[0]}


def imagined_rollouts(spec: TaskSpec, contexts: dict[str, np.ndarray], actions: np.ndarray, *,
                      seed: int, checkpoint: Any = None, fast: bool | str = False,
                      device: str = "cpu", temperature: float = 1.0) -> np.ndarray:
    """The same rollouts in ``WM-<Task>-v0``'s vector env, all patterns of all starts at once.

    Sub-env ``(s, p)`` starts from ``contexts``' observation ``s`` and is seeded
    ``seed + s * patterns + p`` (state only, no termination on success).

    Returns:
        Imagined states ``(starts, patterns, T + 1, state_dim)``, the real start first.
    """
    n_starts, n_patterns, steps = actions.shape[:3]
    n = n_starts * n_patterns
    envs = gym.make_vec(spec.wm_id, num_envs=n, vectorization_mode="vector_entry_point",
                        checkpoint=checkpoint, device=device, images=False, fast=fast,
                        temperature=temperature, terminate_on_success=False,
                        max_episode_steps=steps + 1)
    flat = actions.reshape(n, steps, spec.action_dim)
    states = np.zeros((n, steps + 1, spec.state_dim), np.float32)
    try:
        context = {k: np.repeat(v, n_patterns, axis=0) for k, v in contexts.items()}
        obs, _ = envs.reset(seed=seed, options={"context": context})
        states[:, 0] = obs["state"]
        for t in range(steps):
            obs, *_ = envs.step(flat[:, t])
            states[:, t + 1] = obs["state"]
    finally:
        envs.close()
    return states.reshape(n_starts, n_patterns, steps + 1, spec.state_dim)


# ----------------------------------------------------------------------------- the probe


def constant_patterns(spec: TaskSpec, magnitudes: Sequence[float] = MAGNITUDES
                      ) -> list[tuple[int, float, int]]:
    """``(action dimension, magnitude, sign)`` of every constant action the probe holds."""
    return [(axis, float(m), sign) for axis in arm_axes(spec) for m in magnitudes
            for sign in (1, -1)]


def _constant_rows(spec: TaskSpec, patterns: list[tuple[int, float, int]], real: np.ndarray,
                   imagined: np.ndarray) -> list[dict[str, Any]]:
    eef = list(spec.positions["eef"])
    axes = arm_axes(spec)
    rows = []
    for p, (dim, magnitude, sign) in enumerate(patterns):
        r, i = real[:, p][..., eef], imagined[:, p][..., eef]
        coord = axes.index(dim)
        ratio = axis_travel_ratio(r, i, coord)
        err = position_errors(r, i)[:, -1]
        rows.append({
            "axis": spec.action_names[dim], "magnitude": magnitude, "sign": sign,
            "real_travel_m": round(float((r[:, -1, coord] - r[:, 0, coord]).mean()), 5),
            "imagined_travel_m": round(float((i[:, -1, coord] - i[:, 0, coord]).mean()), 5),
            "travel_ratio": round(ratio, 4),
            "eef_err_m": round(float(err.mean()), 5),
            "eef_err_max_m": round(float(err.max()), 5),
            "ratio_ok": _ratio_ok(ratio),
            "err_ok": bool(err.mean() <= TARGETS["constant_err_m"]),
        })
    return rows


def _random_summary(spec: TaskSpec, real: np.ndarray, imagined: np.ndarray) -> dict[str, Any]:
    eef = list(spec.positions["eef"])
    r, i = real[..., eef], imagined[..., eef]
    err = position_errors(r, i)
    steps = err.shape[1] - 1
    errors = {f"h{h}": round(float(err[:, h].mean()), 5) for h in HORIZONS if h <= steps}
    gain = motion_gain(r, i)
    passed = {h: bool(errors[h] <= limit) for h, limit in TARGETS["random_err_m"].items()
              if h in errors}
    return {
        "episodes": int(r.shape[0]), "steps": steps,
        "eef_err_m": errors,
        "eef_err_max_m": {h: round(float(err[:, int(h[1:])].max()), 5) for h in errors},
        "real_path_m": round(float(np.linalg.norm(np.diff(r, axis=1), axis=-1).sum(1).mean()), 4),
        "travel_ratio": round(gain, 4),
        "ratio_ok": _ratio_ok(gain),
        "err_ok": passed,
    }


def arm_probe(
    task: str | TaskSpec,
    *,
    checkpoint: Any = None,
    fast: bool | str = False,
    starts: int = 8,
    seed: int = SEED,
    device: str = "cpu",
    horizon: int = HOLD_STEPS,
    random_horizon: int = RANDOM_STEPS,
    magnitudes: Sequence[float] = MAGNITUDES,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Measures how faithfully ``WM-<Task>-v0`` moves the end effector (see the module doc).

    Args:
        task: Task name or spec.
        checkpoint: World-model checkpoint directory (None: the spec's).
        fast: Speed preset of the learned twin, as ``WM-<Task>-v0`` takes it.
        starts: Real starts (Sim seeds ``seed .. seed + starts - 1``); each runs every constant
            action and one random smooth sequence.
        seed: First Sim seed; also seeds the random actions and the model's samplers.
        device: Torch device of the learned twin.
        horizon: Steps each constant action is held.
        random_horizon: Steps of each random smooth sequence.
        magnitudes: Constant-action magnitudes ``|a|``.
        temperature: Token sampling temperature of the learned twin.

    Returns:
        JSON-able: ``constant`` (one row per axis, magnitude and sign: mean real and imagined
        travel along the axis, ``travel_ratio``, the mean and largest end-effector error at the
        last step, pass flags), ``constant_summary``, ``random`` (errors per horizon, the motion
        gain as ``travel_ratio``, pass flags), ``targets`` and ``passed`` (every target met).

    Raises:
        ValueError: ``starts`` < 1, or a spec without an end effector (:func:`arm_axes`).
    """
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    spec = load_spec(task)
    began = time.perf_counter()
    seeds = [seed + s for s in range(starts)]
    rest = _rest_action(spec)
    patterns = constant_patterns(spec, magnitudes)
    constant = np.tile(rest, (starts, len(patterns), horizon, 1))
    for p, (dim, magnitude, sign) in enumerate(patterns):
        constant[:, p, :, dim] = sign * magnitude
    random = np.tile(rest, (starts, 1, random_horizon, 1))
    axes = arm_axes(spec)
    random[:, 0][..., axes] = smooth_actions(np.random.default_rng(seed), starts, random_horizon,
                                             len(axes))
    (real_c, real_r), contexts = real_rollouts(spec, [constant, random], seeds=seeds)
    wm = {"checkpoint": checkpoint, "fast": fast, "device": device, "temperature": temperature}
    imagined_c = imagined_rollouts(spec, contexts, constant, seed=seed, **wm)
    imagined_r = imagined_rollouts(spec, contexts, random, seed=seed + starts * len(patterns),
                                   **wm)
    rows = _constant_rows(spec, patterns, real_c, imagined_c)
    ratios = [row["travel_ratio"] for row in rows]
    errors = [row["eef_err_m"] for row in rows]
    rand = _random_summary(spec, real_r[:, 0], imagined_r[:, 0])
    summary = {
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "eef_err_mean_m": round(float(np.mean(errors)), 5),
        "eef_err_max_m": max(row["eef_err_max_m"] for row in rows),
        "ratio_pass_rate": round(float(np.mean([row["ratio_ok"] for row in rows])), 4),
        "err_pass_rate": round(float(np.mean([row["err_ok"] for row in rows])), 4),
    }
    summary["passed"] = summary["ratio_pass_rate"] == 1.0 and summary["err_pass_rate"] == 1.0
    return {
        "task": spec.name, "checkpoint": str(checkpoint or spec.checkpoint),
        "fast": fast, "starts": starts, "seeds": [seeds[0], seeds[-1]], "horizon": horizon,
        "targets": {**TARGETS, "travel_ratio": list(TARGETS["travel_ratio"])},  # as JSON has it
        "constant": rows,
        "constant_summary": summary,
        "random": rand,
        "passed": bool(summary["passed"] and rand["ratio_ok"] and all(rand["err_ok"].values())),
        "seconds": round(time.perf_counter() - began, 1),
    }


def format_arm_table(result: dict[str, Any]) -> str:
    """The probe's numbers as Markdown: one row per axis and magnitude, then the random actions.

    Travel ratios and errors of the positive and negative action are shown as ``+ / -``; a
    ``✗`` marks a number that misses its target.
    """
    low, high = result["targets"]["travel_ratio"]
    limit = result["targets"]["constant_err_m"]

    def mark(ok: bool) -> str:
        return "" if ok else " ✗"

    by_key: dict[tuple[str, float], dict[int, dict]] = {}
    for row in result["constant"]:
        by_key.setdefault((row["axis"], row["magnitude"]), {})[row["sign"]] = row
    lines = [
        f"Arm probe ({result['starts']} real start{'s' * (result['starts'] != 1)}, each action "
        f"held {result['horizon']} steps; "
        f"targets: travel ratio {low}–{high}, error ≤ {1000 * limit:.0f} mm; + / − action):",
        "",
        "| axis | \\|a\\| | real travel (cm) | travel ratio | end-effector error (mm) |",
        "|---|---|---|---|---|",
    ]
    for (axis, magnitude), pair in by_key.items():
        pos, neg = pair[1], pair[-1]
        lines.append(
            f"| {axis} | {magnitude:g} | {100 * pos['real_travel_m']:+.1f} / "
            f"{100 * neg['real_travel_m']:+.1f} | {pos['travel_ratio']:.2f}{mark(pos['ratio_ok'])}"
            f" / {neg['travel_ratio']:.2f}{mark(neg['ratio_ok'])} | "
            f"{1000 * pos['eef_err_m']:.1f}{mark(pos['err_ok'])} / "
            f"{1000 * neg['eef_err_m']:.1f}{mark(neg['err_ok'])} |")
    r = result["random"]
    targets = result["targets"]["random_err_m"]
    errors = ", ".join(
        f"{h} {1000 * v:.1f} mm" + (f" (≤ {1000 * targets[h]:.0f}{mark(r['err_ok'][h])})"
                                    if h in targets else "")
        for h, v in r["eef_err_m"].items())
    lines += ["", f"Random smooth actions ({r['episodes']} episodes × {r['steps']} steps, open "
              f"loop, real path {100 * r['real_path_m']:.0f} cm): end-effector error {errors}; "
              f"motion gain imagined/real {r['travel_ratio']:.2f}{mark(r['ratio_ok'])}. "
              f"All targets met: {'yes' if result['passed'] else 'no'}."]
    return "\n".join(lines)
