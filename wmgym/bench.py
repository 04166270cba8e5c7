"""``wmgym bench …``: speed of the twins, measured and written to JSON (never asserted in tests).

* ``wmgym bench sim`` — ``Sim-<Task>-v0`` steps/s with and without cameras.
* ``wmgym bench speed`` — imagined steps/s of the native vector env ``WM-<Task>-v0`` at several
  batch sizes and speed presets against ``Sim-<Task>-v0`` with the same camera observations (one
  process, and one worker process per core), peak memory, the per-step cost early and late in a
  long episode (the sliding window must keep it steady) and a profile of where an imagined
  step's time goes. The speed-up is also measured in paired rounds (both twins back to back,
  the median of the rounds' ratios), which a shared host's drifting load moves less. Also both
  twins state-only (``images=False``), as state-based RL runs them.
"""

from __future__ import annotations

import cProfile
import functools
import json
import os
import pstats
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wmgym.memory import gpu_peak_mb, gpu_reset_peak, peak_rss_mb, reset_peak_rss, round_mb
from wmgym.profiling import top_functions, top_ops
from wmgym.registration import make_env
from wmgym.results import machine, resolve_task, write_result
from wmgym.spec import TaskSpec

Preset = Literal["default", "fast", "full"]


@dataclass
class BenchSimArgs:
    """Options of ``wmgym bench sim``."""

    task: str
    """Task name, e.g. ``pick``."""
    steps: int = 300
    """Steps to time per mode (after a short warm-up)."""
    out: str = "runs/bench/sim.json"
    """JSON file to write the results to."""


@dataclass
class BenchSpeedArgs:
    """Options of ``wmgym bench speed``."""

    task: str = ""
    """Task name, e.g. ``pick`` (empty: the task ``--checkpoint`` was trained for)."""
    checkpoint: str = ""
    """World-model checkpoint directory (default: the task spec's)."""
    presets: tuple[Preset, ...] = ("default", "fast")
    """Speed presets of ``WM-<Task>-v0`` to time at every batch size (``fast`` only when the
    checkpoint has a fast transformer). The steady-cost check and the profile use the first."""
    batch_sizes: tuple[int, ...] = (1, 16, 64, 256, 512)
    """Numbers of imagined envs stepped together (one ``WM-<Task>-v0`` vector env each)."""
    gpu_batch_sizes: tuple[int, ...] = (1024, 4096)
    """Batch sizes added when the model runs on CUDA."""
    steps: int = 50
    """Timed vector steps per batch size, after ``warmup`` untimed ones."""
    warmup: int = 5
    """Untimed steps before every timed run (first calls, allocations)."""
    sim_steps: int = 100
    """Timed steps of ``Sim-<Task>-v0`` (one process; per worker for the parallel run)."""
    sim_workers: int = -1
    """Worker processes of the parallel Sim run (AsyncVectorEnv): -1 = one per core, 0 = skip."""
    window_batch: int = 16
    """Batch size of the steady-cost check: one episode of ``window_steps`` steps."""
    window_steps: int = 200
    """Length of that episode (no early termination)."""
    window_span: int = 20
    """Steps timed at each end of that episode: steps 1..span vs the last span steps."""
    state_only_batches: tuple[int, ...] = (64, 256)
    """Batch sizes of ``WM-<Task>-v0`` with ``images=False`` (no frames decoded), timed against
    ``Sim-<Task>-v0`` state-only in one process (empty: skip)."""
    paired_rounds: int = 3
    """Rounds of the paired measurement: each times ``Sim-<Task>-v0`` (cameras, one process)
    and then ``WM-<Task>-v0`` with every preset at every ``paired_batches`` size, with the envs
    kept between rounds; the speed-up is the median of the rounds' own ratios (0 = skip)."""
    paired_batches: tuple[int, ...] = (256, 512)
    """Batch sizes of the paired rounds."""
    profile_batch: int = 64
    """Batch size of the profiled run (0 = no profile)."""
    profile_steps: int = 20
    """Vector steps of the profiled run."""
    seed: int = 0
    """Seed of the envs and of the random actions."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    out: str = "runs/bench/speed.json"
    """JSON file to write the results to."""


def time_env(env: Any, steps: int, *, seed: int = 0, warmup: int = 10) -> float:
    """Steps per second of ``env`` under random actions (resets included when episodes end).

    ``env`` may be a Gymnasium vector env: then every sub-env step counts (``num_envs`` per call)
    and finished sub-envs reset themselves (autoreset).
    """
    import gymnasium as gym

    vector = isinstance(env, gym.vector.VectorEnv)
    shape = env.action_space.shape
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        env.step(rng.uniform(-1, 1, shape).astype(np.float32))
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, shape).astype(np.float32))
        if not vector and (terminated or truncated):
            env.reset()
    return steps * (env.num_envs if vector else 1) / (time.perf_counter() - start)


def bench_sim(spec: TaskSpec, *, steps: int) -> dict:
    """``Sim-<Task>-v0`` steps/s with camera observations and in state-only mode."""
    result = {"benchmark": "sim", "env": spec.sim_id, "machine": machine(), "steps": steps}
    for mode, images in (("images", True), ("state_only", False)):
        env = make_env(spec.sim_id, images=images)
        result[f"steps_per_s_{mode}"] = round(time_env(env, steps), 1)
        env.close()
    return result


def bench_sim_main(args: BenchSimArgs) -> dict:
    """``wmgym bench sim``: times the real twin, prints and writes the result."""
    spec, _ = resolve_task(args.task)
    result = bench_sim(spec, steps=args.steps)
    write_result(args.out, result)
    print(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- the twins


@dataclass(frozen=True)
class _Setup:
    """What every timed run shares: the task, the checkpoint and the options."""

    spec: TaskSpec
    checkpoint: Path
    args: BenchSpeedArgs


def _make_wm(s: _Setup, num_envs: int, *, fast: str, **kwargs: Any) -> Any:
    """``WM-<Task>-v0`` as its native vector env (one model call per step for all envs)."""
    import gymnasium as gym

    import wmgym  # noqa: F401  (registers the envs)

    return gym.make_vec(s.spec.wm_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        checkpoint=s.checkpoint, device=s.args.device, fast=fast, **kwargs)


def available_presets(s: _Setup) -> list[str]:
    """The requested presets the checkpoint has the parts for (``fast`` needs its transformer)."""
    from wmgym.env.core import Imagination
    from wmgym.model.checkpoint import CheckpointError

    found = []
    for preset in dict.fromkeys(s.args.presets):
        try:
            Imagination(s.spec, checkpoint=s.checkpoint, device=s.args.device, fast=preset)
        except CheckpointError as e:
            print(f"skipping preset {preset!r}: {e}")
            continue
        found.append(preset)
    if not found:
        raise ValueError(f"{s.checkpoint}: none of the presets {s.args.presets} can run")
    return found


def bench_wm_batch(s: _Setup, batch: int, *, fast: str, images: bool = True) -> dict:
    """Imagined steps/s and peak memory of one ``WM-<Task>-v0`` vector env of ``batch`` envs.

    Episodes end at the time limit only (as random actions end them in Sim), so the cost of
    autoresets does not depend on what the model's success head makes of random actions.

    ``peak_rss_mb`` is the process's peak during the run (torch, robosuite and the loaded
    weights included); ``rss_added_mb`` what the env added to the RSS it started from.
    """
    reset_peak_rss()
    before = peak_rss_mb()  # just reset: the current RSS
    gpu_reset_peak()
    envs = _make_wm(s, batch, fast=fast, terminate_on_success=False, images=images)
    sps = time_env(envs, s.args.steps, seed=s.args.seed, warmup=s.args.warmup)
    peak = peak_rss_mb()
    core = envs.unwrapped.core
    row = {
        "preset": fast,
        "dynamics": core.dynamics,
        "decoder": core.decoder if images else None,
        "batch": batch,
        "steps_per_s": round(sps, 1),
        "ms_per_vector_step": round(1000 * batch / sps, 3),
        "peak_rss_mb": round_mb(peak),
        "rss_added_mb": round_mb(peak - before),
        "peak_gpu_mb": round_mb(gpu_peak_mb()),
    }
    envs.close()
    return row


def bench_window(s: _Setup, *, fast: str) -> dict:
    """Per-step cost at the start vs the end of one long episode, at a fixed batch size.

    The episode never ends early (no termination, no time limit before ``window_steps``). The
    first steps run with a cache that is still filling; once ``max_frames`` frames are in it,
    the window slides every step. Steady means the last steps cost what the first steps with
    a full window cost (``late_over_full``), not more and more as the episode goes on.
    """
    a = s.args
    envs = _make_wm(s, a.window_batch, fast=fast, max_episode_steps=a.window_steps,
                    terminate_on_success=False)
    window = envs.unwrapped.core.model.dynamics.cfg.max_frames
    rng = np.random.default_rng(a.seed)
    shape = envs.action_space.shape
    envs.reset(seed=a.seed)
    for _ in range(a.warmup):  # warm up, then start the timed episode afresh
        envs.step(rng.uniform(-1, 1, shape).astype(np.float32))
    envs.reset(seed=a.seed)
    seconds = np.empty(a.window_steps)
    for t in range(a.window_steps):
        action = rng.uniform(-1, 1, shape).astype(np.float32)
        start = time.perf_counter()
        envs.step(action)
        seconds[t] = time.perf_counter() - start
    envs.close()
    n, span = a.window_steps, min(a.window_span, a.window_steps // 2)
    spans = {"early": (0, span), "full": (window, window + span), "late": (n - span, n)}
    result: dict[str, Any] = {"preset": fast, "batch": a.window_batch, "episode_steps": n,
                              "window": window}
    for name, (lo, hi) in spans.items():
        if hi <= n:
            result[f"{name}_steps"] = [lo + 1, hi]  # 1-based, inclusive
            result[f"{name}_ms_per_step"] = round(float(np.median(seconds[lo:hi])) * 1000, 3)
    for ref in ("early", "full"):
        if f"{ref}_ms_per_step" in result:
            ratio = result["late_ms_per_step"] / result[f"{ref}_ms_per_step"]
            result[f"late_over_{ref}"] = round(ratio, 3)
    return result


def bench_sim_single(s: _Setup, *, images: bool = True) -> dict:
    """``Sim-<Task>-v0`` (with camera observations unless ``images=False``) in this process."""
    reset_peak_rss()
    env = make_env(s.spec.sim_id, images=images, terminate_on_success=False)
    sps = time_env(env, s.args.sim_steps, seed=s.args.seed, warmup=s.args.warmup)
    env.close()
    return {"workers": 1, "steps_per_s": round(sps, 1), "peak_rss_mb": round_mb(peak_rss_mb())}


def bench_sim_parallel(s: _Setup) -> dict | None:
    """``Sim-<Task>-v0`` with cameras in one worker process per core (``AsyncVectorEnv``).

    Workers are spawned, not forked: a forked child inherits the parent's EGL/MuJoCo state and
    hangs on its first render.
    """
    import gymnasium as gym

    a = s.args
    workers = (os.cpu_count() or 1) if a.sim_workers < 0 else a.sim_workers
    if workers == 0:
        return None
    reset_peak_rss()
    start = time.perf_counter()
    fn = functools.partial(make_env, s.spec.sim_id, images=True, terminate_on_success=False)
    envs = gym.vector.AsyncVectorEnv([fn] * workers, context="spawn")
    startup = time.perf_counter() - start
    sps = time_env(envs, a.sim_steps, seed=a.seed, warmup=a.warmup)
    worker_mb = [peak_rss_mb(p.pid) for p in envs.processes]
    envs.close()
    return {
        "workers": workers,
        "steps_per_s": round(sps, 1),
        "startup_s": round(startup, 1),
        "peak_rss_mb": round_mb(peak_rss_mb() + sum(worker_mb)),
        "peak_rss_mb_per_worker": round_mb(max(worker_mb)),
    }


def bench_paired(s: _Setup, presets: list[str]) -> dict | None:
    """The speed-up measured in rounds that time both twins back to back.

    A shared host's load drifts over the minutes a benchmark takes, so a ratio of two timings
    taken minutes apart moves with it. Each round here times the real twin and then every
    preset and batch size of the learned one, with the envs made once; the ratio is taken
    within each round and the rounds' median is reported with their spread, per preset.
    """
    a = s.args
    if a.paired_rounds <= 0:
        return None
    sim = make_env(s.spec.sim_id, images=True, terminate_on_success=False)
    wms = {(p, b): _make_wm(s, b, fast=p, terminate_on_success=False)
           for p in presets for b in a.paired_batches}
    rounds = []
    for r in range(a.paired_rounds):
        seed = a.seed + r
        row: dict[str, Any] = {"sim_steps_per_s": round(
            time_env(sim, a.sim_steps, seed=seed, warmup=a.warmup), 1)}
        row["wm_steps_per_s"] = {p: {} for p in presets}
        for (p, b), env in wms.items():
            row["wm_steps_per_s"][p][b] = round(time_env(env, a.steps, seed=seed,
                                                         warmup=a.warmup), 1)
        row["ratio"] = {}
        for p, by_batch in row["wm_steps_per_s"].items():
            best = max(by_batch, key=by_batch.get)
            row["ratio"][p] = {"batch": best,
                               "ratio": round(by_batch[best] / row["sim_steps_per_s"], 2)}
        rounds.append(row)
    sim.close()
    for env in wms.values():
        env.close()
    by_preset = {}
    for p in presets:
        ratios = [row["ratio"][p]["ratio"] for row in rounds]
        by_preset[p] = {"median_ratio": round(float(np.median(ratios)), 2),
                        "min_ratio": min(ratios), "max_ratio": max(ratios)}
    best = max(by_preset, key=lambda p: by_preset[p]["median_ratio"])
    return {"rounds": rounds, "by_preset": by_preset, "best_preset": best, **by_preset[best]}


def bench_state_only(s: _Setup, *, fast: str) -> dict:
    """Both twins without camera observations: what state-based RL gets from each."""
    sim = bench_sim_single(s, images=False)
    wm = [bench_wm_batch(s, b, fast=fast, images=False) for b in s.args.state_only_batches]
    best = max(wm, key=lambda row: row["steps_per_s"])
    return {"sim": sim, "wm": wm, "best_batch": best["batch"],
            "vs_single_process": round(best["steps_per_s"] / sim["steps_per_s"], 2)}


def profile_wm(s: _Setup, *, fast: str) -> dict:
    """Profiles ``profile_steps`` steps of a ``profile_batch`` vector env (cProfile, torch).

    Returns:
        ``functions`` (:func:`~wmgym.profiling.top_functions`: shares of the profiled steps'
        time) and ``top_ops`` (torch ops by self CPU time, from ``torch.profiler``; CUDA time
        is not split out).
    """
    import torch.profiler

    a = s.args
    envs = _make_wm(s, a.profile_batch, fast=fast, terminate_on_success=False)
    rng = np.random.default_rng(a.seed)
    shape = envs.action_space.shape
    envs.reset(seed=a.seed)

    def run() -> None:
        for _ in range(a.profile_steps):
            envs.step(rng.uniform(-1, 1, shape).astype(np.float32))

    run()  # warm-up: allocations and first calls stay out of the profile
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(run)
    seconds = time.perf_counter() - start
    functions = top_functions(pstats.Stats(profiler), seconds)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    envs.close()
    return {"preset": fast, "batch": a.profile_batch, "steps": a.profile_steps,
            "seconds": round(seconds, 3), "functions": functions, "top_ops": top_ops(prof)}


# ----------------------------------------------------------------------------- bench speed


def _batch_sizes(args: BenchSpeedArgs) -> list[int]:
    from wmgym.model.world_model import resolve_device

    sizes = list(args.batch_sizes)
    if resolve_device(args.device).type == "cuda":
        sizes += [b for b in args.gpu_batch_sizes if b not in sizes]
    return sizes


def speedups(wm: list[dict], sim: dict[str, dict | None]) -> dict:
    """WM steps/s at its best batch size over each Sim configuration's steps/s."""
    best = max(wm, key=lambda row: row["steps_per_s"])
    out: dict[str, Any] = {"best_batch": best["batch"], "wm_steps_per_s": best["steps_per_s"],
                           "preset": best["preset"]}
    for name, row in sim.items():
        out[f"vs_{name}"] = None if row is None else round(
            best["steps_per_s"] / row["steps_per_s"], 2)
    return out


def bench_speed(args: BenchSpeedArgs) -> dict:
    """Runs every measurement of ``wmgym bench speed``; returns the result (see the module doc).

    Raises:
        ValueError: No task, or no preset the checkpoint can run.
    """
    from wmgym.model.world_model import resolve_device

    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    s = _Setup(spec, checkpoint, args)
    presets = available_presets(s)
    result: dict[str, Any] = {
        "benchmark": "speed",
        "wm_env": spec.wm_id,
        "sim_env": spec.sim_id,
        "checkpoint": str(checkpoint.resolve()),
        "device": str(resolve_device(args.device)),
        "presets": presets,
        "machine": machine(),
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()},
        "actions": "uniform random in [-1, 1], seeded; warm-up steps excluded",
        "episodes": "end at max_episode_steps only (terminate_on_success=False in both twins)",
    }
    result["sim"] = {"single_process": bench_sim_single(s),
                     "async_workers": bench_sim_parallel(s)}
    result["wm"] = [bench_wm_batch(s, b, fast=p) for p in presets for b in _batch_sizes(args)]
    result["window"] = bench_window(s, fast=presets[0])
    result["speedup"] = speedups(result["wm"], result["sim"])
    result["speedup_by_preset"] = {
        p: speedups([r for r in result["wm"] if r["preset"] == p], result["sim"])
        for p in presets}
    result["paired"] = bench_paired(s, presets)
    result["state_only"] = (bench_state_only(s, fast=presets[0]) if args.state_only_batches
                            else None)
    result["profile"] = profile_wm(s, fast=presets[0]) if args.profile_batch > 0 else None
    return result


def _window_line(w: dict) -> str:
    spans = ", ".join(
        f"steps {w[f'{k}_steps'][0]}-{w[f'{k}_steps'][1]} {w[f'{k}_ms_per_step']:.2f} ms"
        for k in ("early", "full", "late")
        if f"{k}_steps" in w
    )
    ratios = ", ".join(
        f"late/{k} x{w[f'late_over_{k}']:.2f}" for k in ("early", "full") if f"late_over_{k}" in w
    )
    return (
        f"Steady cost ({w['preset']}, batch {w['batch']}, one {w['episode_steps']}-step episode, "
        f"window of {w['window']} frames): {spans} ({ratios})."
    )


def format_speed_table(result: dict) -> str:
    """The speed benchmark as a small Markdown table plus the headline ratios."""
    lines = [
        "| env | preset | batch / workers | steps/s | peak RSS (MiB) | RSS added (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    wm_id, device = result["wm_env"], result["device"]
    for row in result["wm"]:
        gpu = f", GPU {row['peak_gpu_mb']} MiB" if row.get("peak_gpu_mb") is not None else ""
        lines.append(
            f"| {wm_id} ({device}) | {row['preset']} | {row['batch']} | "
            f"{row['steps_per_s']:.1f} | {row['peak_rss_mb']}{gpu} | {row['rss_added_mb']} |"
        )
    for name, row in result["sim"].items():
        if row is not None:
            lines.append(
                f"| {result['sim_env']} images, {name} | – | {row['workers']} | "
                f"{row['steps_per_s']:.1f} | {row['peak_rss_mb']} | – |"
            )
    s = result["speedup"]
    lines += [
        "",
        _window_line(result["window"]),
        f"Speed-up WM/Sim at batch {s['best_batch']} ({s['preset']}): "
        + ", ".join(f"x{v} {k[3:]}" for k, v in s.items() if k.startswith("vs_") and v),
    ]
    if result.get("paired"):
        p = result["paired"]
        per_round = "; ".join(
            f"Sim {r['sim_steps_per_s']:.1f}, WM "
            + ", ".join(f"{c} {b}: {v:.1f}" for c, by_batch in r["wm_steps_per_s"].items()
                        for b, v in by_batch.items())
            for r in p["rounds"])
        per_preset = ", ".join(
            f"{c} x{q['median_ratio']} (x{q['min_ratio']}-x{q['max_ratio']})"
            for c, q in p["by_preset"].items())
        lines.append(
            f"Paired rounds (both twins back to back, steps/s): {per_round}. "
            f"Median of the rounds' ratios by preset: {per_preset}."
        )
    if result.get("state_only"):
        so = result["state_only"]
        rows = ", ".join(f"batch {r['batch']} {r['steps_per_s']:.1f}" for r in so["wm"])
        lines.append(
            f"State only (no frames decoded, no camera): {wm_id} {rows} steps/s; "
            f"{result['sim_env']} {so['sim']['steps_per_s']:.1f} steps/s; "
            f"x{so['vs_single_process']} at batch {so['best_batch']}."
        )
    if result.get("profile"):
        prof = result["profile"]
        parts = ", ".join(f"{f['function']} {f['share']:.0%}"
                          for f in prof["functions"]["self"][:6])
        lines.append(f"Profile ({prof['preset']}, batch {prof['batch']}, share of step time in "
                     f"a function's own code): {parts}")
    return "\n".join(lines)


def bench_speed_main(args: BenchSpeedArgs) -> dict:
    """``wmgym bench speed``: runs :func:`bench_speed`, prints the table, writes the JSON."""
    result = bench_speed(args)
    write_result(args.out, result)
    print(format_speed_table(result))
    print(f"wrote {args.out}")
    return result
