"""``wmgym demo`` (``make demo``): the learned twin next to the real one, same start, same actions.

Resets ``Sim-<Task>-v0``, starts ``WM-<Task>-v0`` from that very observation, drives both with
the actions the scripted pick takes in the real env, and writes a GIF with the real frames on
top and the imagined ones below (rgb | depth | mask), printing the agreement step by step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from wmgym.spec import CUBE_POS


@dataclass
class DemoArgs:
    """Options of ``wmgym demo``."""

    out: str = "out/demo.gif"
    """Where to write the GIF."""
    seed: int = 0
    """Episode seed (cube placement and sampling)."""
    steps: int = 60
    """Steps to run both twins for."""
    task: str = "pick"
    """Task spec name."""
    checkpoint: str = ""
    """World-model checkpoint (default: the spec's shipped one)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""


def agreement(real: dict, imagined: dict) -> dict[str, float]:
    """Per-step agreement of two observations: rgb PSNR, mask IoU, depth error, state error."""
    mse = np.mean((real["rgb"].astype(np.float64) - imagined["rgb"]) ** 2)
    inter = np.logical_and(real["mask"], imagined["mask"]).sum()
    union = np.logical_or(real["mask"], imagined["mask"]).sum()
    return {
        "psnr": float(10 * np.log10(255.0**2 / max(mse, 1e-10))),
        "mask_iou": float(inter / union) if union else 1.0,
        "depth_mae_m": float(np.abs(real["depth"] - imagined["depth"]).mean()),
        "cube_err_m": float(np.linalg.norm(real["state"][CUBE_POS] - imagined["state"][CUBE_POS])),
    }


def demo_main(args: DemoArgs) -> None:
    """Runs both twins side by side and writes the GIF."""
    import gymnasium as gym

    import wmgym  # noqa: F401
    from wmgym.policies import ScriptedPick
    from wmgym.spec import load_spec
    from wmgym.viz import write_gif

    spec = load_spec(args.task)
    sim = gym.make(spec.sim_id, render_mode="rgb_array", terminate_on_success=False)
    wm = gym.make(spec.wm_id, render_mode="rgb_array", terminate_on_success=False,
                  device=args.device, **({"checkpoint": args.checkpoint} if args.checkpoint
                                         else {}))
    policy = ScriptedPick()
    policy.reset(args.seed)
    real, _ = sim.reset(seed=args.seed)
    wm.reset(seed=args.seed, options={"context": real})
    frames = [np.concatenate([sim.render(), wm.render()], 0)]
    print(f"{spec.sim_id} (top) vs {spec.wm_id} (bottom), seed {args.seed}, scripted pick actions")
    print(f"{'step':>4} {'psnr':>6} {'maskIoU':>7} {'depth_m':>7} {'cube_m':>6} "
          f"{'r_real':>6} {'r_wm':>6} {'succ real/wm':>12}")
    rows, wm_seconds = [], 0.0
    for t in range(1, args.steps + 1):
        action = policy(real)
        real, r_real, _, _, info_real = sim.step(action)
        start = time.perf_counter()
        imagined, r_wm, _, _, info_wm = wm.step(action)
        wm_seconds += time.perf_counter() - start
        frames.append(np.concatenate([sim.render(), wm.render()], 0))
        a = agreement(real, imagined)
        rows.append({**a, "reward_err": abs(r_real - r_wm),
                     "success_agree": info_real["success"] == info_wm["success"]})
        if t % 5 == 0 or t == 1:
            print(f"{t:>4} {a['psnr']:>6.1f} {a['mask_iou']:>7.2f} {a['depth_mae_m']:>7.3f} "
                  f"{a['cube_err_m']:>6.3f} {r_real:>6.2f} {r_wm:>6.2f} "
                  f"{str(info_real['success']):>6}/{str(info_wm['success']):<5}")
    path = write_gif(args.out, frames, fps=spec.control_freq // 2)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"mean over {args.steps} steps: rgb PSNR {mean['psnr']:.1f} dB, mask IoU "
          f"{mean['mask_iou']:.2f}, depth MAE {mean['depth_mae_m']:.3f} m, cube error "
          f"{mean['cube_err_m']:.3f} m, reward error {mean['reward_err']:.3f}, success agreement "
          f"{mean['success_agree']:.0%}")
    print(f"imagined steps/s (one env, {wm.unwrapped.core.device}): "
          f"{args.steps / wm_seconds:.1f}; GIF (real top, imagined bottom) -> {path}")
    sim.close()
    wm.close()
