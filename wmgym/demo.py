"""``wmgym demo`` (``make demo``): the learned twin next to the real one, same start, same actions.

Resets ``Sim-<Task>-v0``, starts ``WM-<Task>-v0`` from that very observation, drives both with
the actions a policy (by default the task's scripted expert) takes in the real env, and writes a
GIF with the real frames on top and the imagined ones below (rgb | depth | mask), printing the
agreement step by step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wmgym.spec import TaskSpec


@dataclass
class DemoArgs:
    """Options of ``wmgym demo``."""

    task: str = ""
    """Task name, e.g. ``pick`` (empty: the task ``--checkpoint`` was trained for)."""
    checkpoint: str = ""
    """World-model checkpoint (default: the task spec's shipped one)."""
    policy: str = ""
    """The policy whose real actions drive both twins (empty: the first of the task's sweep
    policies, its competent scripted expert)."""
    seed: int = 0
    """Episode seed (start state and sampling)."""
    steps: int = 60
    """Steps to run both twins for."""
    fast: Literal["default", "fast", "full"] = "default"
    """Speed preset of ``WM-<Task>-v0``."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    out: str = "runs/demo/demo.gif"
    """Where to write the GIF."""


def agreement(real: dict, imagined: dict, spec: TaskSpec) -> dict[str, float]:
    """Per-step agreement of two observations: images, depth and the spec's named positions.

    Returns:
        ``psnr`` (rgb, dB), ``mask_iou``, ``depth_mae_m`` and ``<name>_err_m`` for each of the
        spec's named positions (metres).
    """
    mse = np.mean((real["rgb"].astype(np.float64) - imagined["rgb"]) ** 2)
    inter = np.logical_and(real["mask"], imagined["mask"]).sum()
    union = np.logical_or(real["mask"], imagined["mask"]).sum()
    out = {
        "psnr": float(10 * np.log10(255.0**2 / max(mse, 1e-10))),
        "mask_iou": float(inter / union) if union else 1.0,
        "depth_mae_m": float(np.abs(real["depth"] - imagined["depth"]).mean()),
    }
    for name, idx in spec.positions.items():
        idx = list(idx)
        out[f"{name}_err_m"] = float(np.linalg.norm(real["state"][idx] - imagined["state"][idx]))
    return out


def demo_main(args: DemoArgs) -> dict[str, float]:
    """Runs both twins side by side, writes the GIF; returns the mean agreement."""
    import gymnasium as gym

    import wmgym  # noqa: F401  (registers the envs)
    from wmgym.policies import make_policy
    from wmgym.results import resolve_task
    from wmgym.tasks import sweep_policies
    from wmgym.viz import write_gif

    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    name = args.policy or sweep_policies(spec)[0]
    sim = gym.make(spec.sim_id, render_mode="rgb_array", terminate_on_success=False)
    wm = gym.make(spec.wm_id, render_mode="rgb_array", terminate_on_success=False,
                  checkpoint=checkpoint, device=args.device, fast=args.fast)
    policy = make_policy(name, task=spec)
    policy.reset(seed=args.seed)
    real, _ = sim.reset(seed=args.seed)
    wm.reset(seed=args.seed, options={"context": real})
    frames = [np.concatenate([sim.render(), wm.render()], 0)]
    errors = [f"{n}_err_m" for n in spec.positions]
    print(f"{spec.sim_id} (top) vs {spec.wm_id} (bottom), seed {args.seed}, {name!r} actions")
    print(f"{'step':>4} {'psnr':>6} {'maskIoU':>7} {'depth_m':>7} "
          + " ".join(f"{e:>10}" for e in errors)
          + f" {'r_real':>6} {'r_wm':>6} {'succ real/wm':>12}")
    rows, wm_seconds = [], 0.0
    for t in range(1, args.steps + 1):
        action = policy(real)
        real, r_real, _, _, info_real = sim.step(action)
        start = time.perf_counter()
        imagined, r_wm, _, _, info_wm = wm.step(action)
        wm_seconds += time.perf_counter() - start
        frames.append(np.concatenate([sim.render(), wm.render()], 0))
        a = agreement(real, imagined, spec)
        rows.append({**a, "reward_err": abs(r_real - r_wm),
                     "success_agree": info_real["success"] == info_wm["success"]})
        if t % 5 == 0 or t == 1:
            print(f"{t:>4} {a['psnr']:>6.1f} {a['mask_iou']:>7.2f} {a['depth_mae_m']:>7.3f} "
                  + " ".join(f"{a[e]:>10.3f}" for e in errors)
                  + f" {r_real:>6.2f} {r_wm:>6.2f} "
                  f"{str(info_real['success']):>6}/{str(info_wm['success']):<5}")
    path = write_gif(args.out, frames, fps=max(spec.control_freq // 2, 1))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"mean over {args.steps} steps: rgb PSNR {mean['psnr']:.1f} dB, mask IoU "
          f"{mean['mask_iou']:.2f}, depth MAE {mean['depth_mae_m']:.3f} m, "
          + ", ".join(f"{e[:-2].replace('_', ' ')} {mean[e]:.3f} m" for e in errors)
          + f", reward error {mean['reward_err']:.3f}, success agreement "
          f"{mean['success_agree']:.0%}")
    print(f"imagined steps/s (one env, {wm.unwrapped.core.device}): "
          f"{args.steps / wm_seconds:.1f}; GIF (real top, imagined bottom) -> {path}")
    sim.close()
    wm.close()
    return mean
