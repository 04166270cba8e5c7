"""``wmgym bench …``: speed measurements written to JSON (never asserted in tests)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchSimArgs:
    """Options of ``wmgym bench sim``."""

    steps: int = 300
    """Steps to time per mode (after a short warm-up)."""
    task: str = "pick"
    """Task spec name."""
    out: str = "benchmarks/sim.json"
    """JSON file to write the results to."""


def machine() -> dict:
    """What the numbers were measured on."""
    import os

    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def time_env(env, steps: int, seed: int = 0, warmup: int = 10) -> float:
    """Steps per second of ``env`` under random actions (resets included when episodes end)."""
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def write_result(path: str | Path, result: dict) -> None:
    """Writes a benchmark result as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def bench_sim_main(args: BenchSimArgs) -> dict:
    """Sim-<Task>-v0 steps/s with camera observations and in state-only mode."""
    import gymnasium as gym

    import wmgym  # noqa: F401
    from wmgym.spec import load_spec

    spec = load_spec(args.task)
    result = {"benchmark": "sim", "env": spec.sim_id, "machine": machine(), "steps": args.steps}
    for mode, images in (("images", True), ("state_only", False)):
        env = gym.make(spec.sim_id, images=images)
        result[f"steps_per_s_{mode}"] = round(time_env(env, args.steps), 1)
        env.close()
    write_result(args.out, result)
    print(json.dumps(result, indent=1))
    return result
