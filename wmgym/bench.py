"""``wmgym bench …``: speed measurements written to JSON (never asserted in tests).

* ``wmgym bench sim`` — ``Sim-<Task>-v0`` steps/s with and without cameras.
* ``wmgym bench speed`` — imagined steps/s of the native vector env ``WM-<Task>-v0`` at several
  batch sizes against ``Sim-<Task>-v0`` with the same camera observations (one process, and one
  worker process per core), peak memory, the per-step cost early and late in a long episode
  (the sliding window must keep it steady) and a profile of where an imagined step's time goes.
  The speed-up is also measured in paired rounds (both twins back to back, the median of the
  rounds' ratios), which a shared host's drifting load moves less. Also both twins state-only
  (``images=False``), as state-based RL runs them, and the memory floor of an imagined step.
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
from typing import Any

import numpy as np

from wmgym.memory import gpu_peak_mb, gpu_reset_peak, peak_rss_mb, reset_peak_rss, round_mb
from wmgym.model.checkpoint import read_config
from wmgym.profiling import cumulative, time_breakdown, top_ops
from wmgym.registration import make_env
from wmgym.results import machine, write_result


@dataclass
class BenchSimArgs:
    """Options of ``wmgym bench sim``."""

    steps: int = 300
    """Steps to time per mode (after a short warm-up)."""
    task: str = "pick"
    """Task spec name."""
    out: str = "benchmarks/sim.json"
    """JSON file to write the results to."""


@dataclass
class BenchSpeedArgs:
    """Options of ``wmgym bench speed``."""

    checkpoint: str = ""
    """World-model checkpoint directory (default: the task spec's)."""
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
    decodings: tuple[str, ...] = ("autoregressive", "parallel")
    """Decoding modes to time at every batch size (``parallel`` only if the checkpoint has the
    head). The steady-cost check and the profile use the checkpoint's default (``auto``)."""
    state_only_batches: tuple[int, ...] = (64, 256)
    """Batch sizes of ``WM-<Task>-v0`` with ``images=False`` (no frames decoded), timed against
    ``Sim-<Task>-v0`` state-only in one process (empty: skip)."""
    paired_rounds: int = 3
    """Rounds of the paired measurement: each times ``Sim-<Task>-v0`` (cameras, one process)
    and then ``WM-<Task>-v0`` at every ``paired_batches`` size, with the envs kept between
    rounds; the speed-up is the median of the rounds' own ratios (0 = skip)."""
    paired_batches: tuple[int, ...] = (256, 512)
    """Batch sizes of the paired rounds (on session 23's 2-core host 512 was the best in
    every round; on session 21's, 256 beat 64 in every round)."""
    kv_cache: str = "auto"
    """Precision of the world model's cached keys and values in every timed run but the
    paired rounds' (``auto``, ``float32``, ``bfloat16``)."""
    paired_kv_caches: tuple[str, ...] = ("float32", "bfloat16")
    """KV-cache precisions the paired rounds time, each at every ``paired_batches`` size."""
    decoder: str = "auto"
    """Frame decoder of every timed run but the paired rounds' (``auto``: the distilled
    ``fast`` one when the checkpoint has it, ``full``, ``fast``)."""
    paired_decoders: tuple[str, ...] = ("full", "fast")
    """Frame decoders the paired rounds time with every KV-cache precision (``fast`` only
    when the checkpoint has one)."""
    dynamics: str = "auto"
    """Transformer of every timed run but the paired rounds' (``auto``: the full one,
    ``full``, ``fast``: the checkpoint's distilled one)."""
    paired_dynamics: tuple[str, ...] = ("full", "fast")
    """Transformers the paired rounds time with every precision and decoder (``fast`` only
    when the checkpoint has one)."""
    profile_batch: int = 64
    """Batch size of the profiled run (0 = no profile)."""
    profile_steps: int = 20
    """Vector steps of the profiled run."""
    seed: int = 0
    """Seed of the envs and of the random actions."""
    task: str = "pick"
    """Task spec name."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    out: str = "benchmarks/speed.json"
    """JSON file to write the results to."""


def time_env(env, steps: int, seed: int = 0, warmup: int = 10) -> float:
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


# ----------------------------------------------------------------------------- the twins


def _make_wm(args: BenchSpeedArgs, num_envs: int, **kwargs: Any):
    """``WM-<Task>-v0`` as its native vector env (one model call per step for all envs)."""
    import gymnasium as gym

    import wmgym  # noqa: F401
    from wmgym.spec import load_spec

    spec = load_spec(args.task)
    kwargs.setdefault("kv_cache", args.kv_cache)
    kwargs.setdefault("decoder", args.decoder)
    kwargs.setdefault("dynamics", args.dynamics)
    return gym.make_vec(
        spec.wm_id,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        device=args.device,
        **({"checkpoint": args.checkpoint} if args.checkpoint else {}),
        **kwargs,
    )


def bench_wm_batch(args: BenchSpeedArgs, batch: int, decoding: str = "auto",
                   images: bool = True) -> dict:
    """Imagined steps/s and peak memory of one ``WM-<Task>-v0`` vector env of ``batch`` envs.

    Episodes end at the time limit only (as random actions end them in Sim), so the cost of
    autoresets does not depend on what the model's success head makes of random actions.

    ``peak_rss_mb`` is the process's peak during the run (torch, robosuite and the loaded
    weights included); ``rss_added_mb`` what the env added to the RSS it started from.
    """
    reset_peak_rss()
    before = peak_rss_mb()  # just reset: the current RSS
    gpu_reset_peak()
    envs = _make_wm(args, batch, terminate_on_success=False, decoding=decoding, images=images)
    sps = time_env(envs, args.steps, seed=args.seed, warmup=args.warmup)
    peak = peak_rss_mb()
    row = {
        "decoding": envs.unwrapped.core.decoding,
        "decoder": envs.unwrapped.core.decoder if images else None,
        "dynamics": envs.unwrapped.core.dynamics,
        "batch": batch,
        "steps_per_s": round(sps, 1),
        "ms_per_vector_step": round(1000 * batch / sps, 3),
        "peak_rss_mb": round_mb(peak),
        "rss_added_mb": round_mb(peak - before),
        "peak_gpu_mb": round_mb(gpu_peak_mb()),
    }
    envs.close()
    return row


def bench_window(args: BenchSpeedArgs) -> dict:
    """Per-step cost at the start vs the end of one long episode, at a fixed batch size.

    The episode never ends early (no termination, no time limit before ``window_steps``). The
    first steps run with a cache that is still filling; once ``max_frames`` frames are in it,
    the window slides every step. Steady means the last steps cost what the first steps with
    a full window cost (``late_over_full``), not more and more as the episode goes on.
    """
    envs = _make_wm(
        args,
        args.window_batch,
        max_episode_steps=args.window_steps,
        terminate_on_success=False,
    )
    window = envs.unwrapped.core.model.dynamics.cfg.max_frames
    rng = np.random.default_rng(args.seed)
    shape = envs.action_space.shape
    envs.reset(seed=args.seed)
    for _ in range(args.warmup):  # warm up, then start the timed episode afresh
        envs.step(rng.uniform(-1, 1, shape).astype(np.float32))
    envs.reset(seed=args.seed)
    seconds = np.empty(args.window_steps)
    for t in range(args.window_steps):
        action = rng.uniform(-1, 1, shape).astype(np.float32)
        start = time.perf_counter()
        envs.step(action)
        seconds[t] = time.perf_counter() - start
    envs.close()
    n, span = args.window_steps, min(args.window_span, args.window_steps // 2)
    spans = {"early": (0, span), "full": (window, window + span), "late": (n - span, n)}
    result: dict[str, Any] = {"batch": args.window_batch, "episode_steps": n, "window": window}
    for name, (lo, hi) in spans.items():
        if hi <= n:
            result[f"{name}_steps"] = [lo + 1, hi]  # 1-based, inclusive
            result[f"{name}_ms_per_step"] = round(float(np.median(seconds[lo:hi])) * 1000, 3)
    for ref in ("early", "full"):
        if f"{ref}_ms_per_step" in result:
            ratio = result["late_ms_per_step"] / result[f"{ref}_ms_per_step"]
            result[f"late_over_{ref}"] = round(ratio, 3)
    return result


def bench_sim_single(args: BenchSpeedArgs, sim_id: str, images: bool = True) -> dict:
    """``Sim-<Task>-v0`` (with camera observations unless ``images=False``) in this process."""
    reset_peak_rss()
    env = make_env(sim_id, images=images, terminate_on_success=False)
    sps = time_env(env, args.sim_steps, seed=args.seed, warmup=args.warmup)
    env.close()
    return {"workers": 1, "steps_per_s": round(sps, 1), "peak_rss_mb": round_mb(peak_rss_mb())}


def bench_sim_parallel(args: BenchSpeedArgs, sim_id: str) -> dict | None:
    """``Sim-<Task>-v0`` with cameras in one worker process per core (``AsyncVectorEnv``).

    Workers are spawned, not forked: a forked child inherits the parent's EGL/MuJoCo state and
    hangs on its first render.
    """
    import gymnasium as gym

    workers = (os.cpu_count() or 1) if args.sim_workers < 0 else args.sim_workers
    if workers == 0:
        return None
    reset_peak_rss()
    start = time.perf_counter()
    fn = functools.partial(make_env, sim_id, images=True, terminate_on_success=False)
    envs = gym.vector.AsyncVectorEnv([fn] * workers, context="spawn")
    startup = time.perf_counter() - start
    sps = time_env(envs, args.sim_steps, seed=args.seed, warmup=args.warmup)
    worker_mb = [peak_rss_mb(p.pid) for p in envs.processes]
    envs.close()
    return {
        "workers": workers,
        "steps_per_s": round(sps, 1),
        "startup_s": round(startup, 1),
        "peak_rss_mb": round_mb(peak_rss_mb() + sum(worker_mb)),
        "peak_rss_mb_per_worker": round_mb(max(worker_mb)),
    }


def bench_paired(args: BenchSpeedArgs, sim_id: str) -> dict | None:
    """The speed-up measured in rounds that time both twins back to back.

    A shared host's load drifts over the minutes a benchmark takes, so a ratio of two
    timings taken minutes apart moves with it. Each round here times the real twin and then
    every configuration (KV-cache precision / frame decoder / transformer) and batch size of
    the learned one,
    with the envs made once; the ratio is taken within each round and the rounds' median is
    reported with their spread, per configuration.
    """
    if args.paired_rounds <= 0:
        return None
    sim = make_env(sim_id, images=True, terminate_on_success=False)
    configs = _paired_configs(args)
    wms = {(c, b): _make_wm(args, b, terminate_on_success=False, kv_cache=kv, decoder=dec,
                            dynamics=dyn)
           for c, (kv, dec, dyn) in configs.items() for b in args.paired_batches}
    rounds = []
    for r in range(args.paired_rounds):
        seed = args.seed + r
        row: dict[str, Any] = {"sim_steps_per_s": round(
            time_env(sim, args.sim_steps, seed=seed, warmup=args.warmup), 1)}
        row["wm_steps_per_s"] = {c: {} for c in configs}
        for (c, b), env in wms.items():
            row["wm_steps_per_s"][c][b] = round(time_env(env, args.steps, seed=seed,
                                                         warmup=args.warmup), 1)
        row["ratio"] = {}
        for c, by_batch in row["wm_steps_per_s"].items():
            best = max(by_batch, key=by_batch.get)
            row["ratio"][c] = {"batch": best,
                               "ratio": round(by_batch[best] / row["sim_steps_per_s"], 2)}
        rounds.append(row)
    sim.close()
    for env in wms.values():
        env.close()
    by_config = {}
    for c in configs:
        ratios = [row["ratio"][c]["ratio"] for row in rounds]
        by_config[c] = {"median_ratio": round(float(np.median(ratios)), 2),
                        "min_ratio": min(ratios), "max_ratio": max(ratios)}
    best = max(by_config, key=lambda c: by_config[c]["median_ratio"])
    return {"rounds": rounds, "by_config": by_config, "best_config": best, **by_config[best]}


def _checkpoint(args: BenchSpeedArgs) -> str | Path:
    """The checkpoint the bench times: ``--checkpoint``, else the task spec's."""
    from wmgym.spec import load_spec

    return args.checkpoint or load_spec(args.task).checkpoint


def _paired_configs(args: BenchSpeedArgs) -> dict[str, tuple[str, str, str]]:
    """``"<kv cache>/<decoder>[/fast-dynamics]"`` -> (kv cache, decoder, dynamics)."""
    from wmgym.model.fast_decoder import has_fast_decoder
    from wmgym.model.fast_dynamics import has_fast_dynamics

    checkpoint = _checkpoint(args)
    kvs = tuple(dict.fromkeys(args.paired_kv_caches)) or (args.kv_cache,)
    decs = [d for d in dict.fromkeys(args.paired_decoders)
            if d != "fast" or has_fast_decoder(checkpoint)]
    dyns = [d for d in dict.fromkeys(args.paired_dynamics)
            if d != "fast" or has_fast_dynamics(checkpoint)]
    return {f"{kv}/{d}" + ("/fast-dynamics" if y == "fast" else ""): (kv, d, y)
            for y in dyns or ["full"] for d in decs or ["full"] for kv in kvs}


def bench_state_only(args: BenchSpeedArgs, sim_id: str) -> dict:
    """Both twins without camera observations: what state-based RL gets from each."""
    sim = bench_sim_single(args, sim_id, images=False)
    wm = [bench_wm_batch(args, b, images=False) for b in args.state_only_batches]
    best = max(wm, key=lambda row: row["steps_per_s"])
    return {"sim": sim, "wm": wm, "best_batch": best["batch"],
            "vs_single_process": round(best["steps_per_s"] / sim["steps_per_s"], 2)}


# ----------------------------------------------------------------------------- profile

def profile_wm(args: BenchSpeedArgs) -> dict:
    """Profiles ``profile_steps`` steps of a ``profile_batch`` vector env (cProfile, torch).

    Returns:
        ``breakdown`` (fractions of the step time per part, from cProfile), ``cumulative_s``
        (the profiled functions' cumulative seconds), and ``top_ops`` (torch ops by self CPU
        time, from ``torch.profiler``; CUDA time is not split out).
    """
    import torch.profiler

    envs = _make_wm(args, args.profile_batch, terminate_on_success=False)
    rng = np.random.default_rng(args.seed)
    shape = envs.action_space.shape
    envs.reset(seed=args.seed)

    def run() -> None:
        for _ in range(args.profile_steps):
            envs.step(rng.uniform(-1, 1, shape).astype(np.float32))

    run()  # warm-up: allocations and first calls stay out of the profile
    profiler = cProfile.Profile()
    profiler.runcall(run)
    cum = cumulative(pstats.Stats(profiler))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    envs.close()
    return {
        "batch": args.profile_batch,
        "steps": args.profile_steps,
        "breakdown": time_breakdown(cum),
        "cumulative_s": {k: round(v, 4) for k, v in cum.items()},
        "top_ops": top_ops(prof),
    }


# ----------------------------------------------------------------------------- bench speed


def memory_floors(args: BenchSpeedArgs, sim_steps_per_s: float
                  ) -> tuple[list[dict], list[dict]] | None:
    """The cache reads of an imagined step and the speed they cap, and attention kernels (CPU).

    Returns per decoding mode and cache precision :func:`~wmgym.roofline.memory_floor`, and
    :func:`~wmgym.roofline.attention_kernels` at the largest batch size; None on CUDA, where
    this CPU bandwidth probe says nothing.
    """
    from wmgym.model.fast_dynamics import FAST_DYNAMICS, has_fast_dynamics
    from wmgym.model.transformer import DynamicsConfig
    from wmgym.model.world_model import resolve_device
    from wmgym.roofline import attention_kernels, memory_floor, read_bandwidth_gb_s

    if resolve_device(args.device).type != "cpu":
        return None
    checkpoint = _checkpoint(args)
    cfg, bandwidth = DynamicsConfig(**read_config(checkpoint)["dynamics"]), read_bandwidth_gb_s()
    cfgs = {"full": cfg}
    if has_fast_dynamics(checkpoint):
        cfgs["fast"] = DynamicsConfig(**read_config(FAST_DYNAMICS.directory(checkpoint))[
            "dynamics"])
    kvs = tuple(dict.fromkeys(args.paired_kv_caches or ("float32",)))
    floors = [{**memory_floor(c, mode, sim_steps_per_s, bandwidth, kv), "dynamics": name}
              for name, c in cfgs.items() for mode in _decodings(args) for kv in kvs]
    kernels = attention_kernels(cfg, max(_batch_sizes(args)), kvs, bandwidth)
    return floors, kernels


def _batch_sizes(args: BenchSpeedArgs) -> list[int]:
    from wmgym.model.world_model import resolve_device

    sizes = list(args.batch_sizes)
    if resolve_device(args.device).type == "cuda":
        sizes += [b for b in args.gpu_batch_sizes if b not in sizes]
    return sizes


def _decodings(args: BenchSpeedArgs) -> list[str]:
    """The requested decoding modes the checkpoint supports."""
    has_head = bool(read_config(_checkpoint(args))["dynamics"].get(
        "parallel_head"))
    return [m for m in args.decodings if m != "parallel" or has_head]


def speedups(wm: list[dict], sim: dict[str, dict | None]) -> dict:
    """WM steps/s at its best batch size (and decoding) over each Sim configuration's steps/s."""
    best = max(wm, key=lambda row: row["steps_per_s"])
    out: dict[str, Any] = {"best_batch": best["batch"], "wm_steps_per_s": best["steps_per_s"],
                           "decoding": best.get("decoding")}
    for name, row in sim.items():
        ratio = None if row is None else best["steps_per_s"] / row["steps_per_s"]
        out[f"vs_{name}"] = None if ratio is None else round(ratio, 2)
    return out


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
        f"Steady cost (batch {w['batch']}, one {w['episode_steps']}-step episode, window of "
        f"{w['window']} frames): {spans} ({ratios})."
    )


def format_speed_table(result: dict) -> str:
    """The speed benchmark as a small Markdown table plus the headline ratios."""
    lines = [
        "| env | batch / workers | steps/s | peak RSS (MiB) | RSS added (MiB) |",
        "|---|---|---|---|---|",
    ]
    wm_id, device = result["wm_env"], result["device"]
    for row in result["wm"]:
        gpu = f", GPU {row['peak_gpu_mb']} MiB" if row.get("peak_gpu_mb") is not None else ""
        mode = row.get("decoding", "autoregressive")
        mode += f", {row['decoder']} decoder" if row.get("decoder") else ""
        mode += ", fast transformer" if row.get("dynamics") == "fast" else ""
        lines.append(
            f"| {wm_id} ({device}, {mode}) | {row['batch']} | "
            f"{row['steps_per_s']:.1f} | {row['peak_rss_mb']}{gpu} | {row['rss_added_mb']} |"
        )
    for name, row in result["sim"].items():
        if row is not None:
            lines.append(
                f"| {result['sim_env']} images, {name} | {row['workers']} | "
                f"{row['steps_per_s']:.1f} | {row['peak_rss_mb']} | – |"
            )
    s = result["speedup"]
    lines += [
        "",
        _window_line(result["window"]),
        f"Speed-up WM/Sim at batch {s['best_batch']} ({s.get('decoding')} decoding): "
        + ", ".join(f"x{v} {k[3:]}" for k, v in s.items() if k.startswith("vs_") and v),
    ]
    if result.get("paired"):
        p = result["paired"]
        per_round = "; ".join(
            f"Sim {r['sim_steps_per_s']:.1f}, WM "
            + ", ".join(f"{c} {b}: {v:.1f}" for c, by_batch in r["wm_steps_per_s"].items()
                        for b, v in by_batch.items())
            for r in p["rounds"])
        per_config = ", ".join(
            f"{c} x{q['median_ratio']} (x{q['min_ratio']}-x{q['max_ratio']})"
            for c, q in p["by_config"].items())
        lines.append(
            f"Paired rounds (both twins back to back, steps/s): {per_round}. "
            f"Median of the rounds' ratios by KV cache/decoder: {per_config}."
        )
    if result.get("state_only"):
        so = result["state_only"]
        rows = ", ".join(f"batch {r['batch']} {r['steps_per_s']:.1f}" for r in so["wm"])
        lines.append(
            f"State only (no frames decoded, no camera): {wm_id} {rows} steps/s; "
            f"{result['sim_env']} {so['sim']['steps_per_s']:.1f} steps/s; "
            f"x{so['vs_single_process']} at batch {so['best_batch']}."
        )
    for floor in result.get("memory_floor") or []:
        lines.append(
            f"Memory floor ({floor['decoding']}, {floor['kv_cache']} cache, "
            f"{floor.get('dynamics', 'full')} transformer): "
            f"{floor['kv_mb_per_step']} MB of cached keys "
            f"and values read per imagined step, at {floor['read_gb_s']} GB/s "
            f"{floor['floor_ms_per_step']} ms: at most {floor['max_steps_per_s']} steps/s, "
            f"x{floor['max_vs_sim']} Sim."
        )
    for row in result.get("attention_kernels") or []:
        lines.append(
            f"Attention of one layer's pass ({row['kv_cache']} cache, batch {row['batch']}, "
            f"{row['positions']} positions): ring {row['ring_ms']} ms (keys position-major "
            f"{row['ring_row_major_ms']} ms), PyTorch's fused kernel "
            f"over a strided slice {row['fused_strided_ms']} ms, memory floor "
            f"{row['floor_ms']} ms."
        )
    if result.get("profile"):
        parts = sorted(result["profile"]["breakdown"].items(), key=lambda kv: -kv[1])
        lines.append(
            f"Profile (batch {result['profile']['batch']}, share of step time): "
            + ", ".join(f"{k} {v:.0%}" for k, v in parts)
        )
    return "\n".join(lines)


def bench_speed_main(args: BenchSpeedArgs) -> dict:
    """``wmgym bench speed``: WM vector env vs Sim steps/s, memory, steady cost and a profile."""
    from wmgym.model.world_model import resolve_device
    from wmgym.spec import load_spec

    spec = load_spec(args.task)
    result: dict[str, Any] = {
        "benchmark": "speed",
        "wm_env": spec.wm_id,
        "sim_env": spec.sim_id,
        "checkpoint": str(Path(_checkpoint(args)).resolve()),
        "device": str(resolve_device(args.device)),
        "machine": machine(),
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()},
        "actions": "uniform random in [-1, 1], seeded; warm-up steps excluded",
        "episodes": "end at max_episode_steps only (terminate_on_success=False in both twins)",
    }
    result["sim"] = {
        "single_process": bench_sim_single(args, spec.sim_id),
        "async_workers": bench_sim_parallel(args, spec.sim_id),
    }
    result["wm"] = [bench_wm_batch(args, b, mode) for mode in _decodings(args)
                    for b in _batch_sizes(args)]
    result["window"] = bench_window(args)
    result["speedup"] = speedups(result["wm"], result["sim"])
    result["speedup_by_decoding"] = {
        mode: speedups([r for r in result["wm"] if r["decoding"] == mode], result["sim"])
        for mode in dict.fromkeys(r["decoding"] for r in result["wm"])}
    result["paired"] = bench_paired(args, spec.sim_id)
    result["state_only"] = bench_state_only(args, spec.sim_id) if args.state_only_batches else None
    result["profile"] = profile_wm(args) if args.profile_batch > 0 else None
    floors = memory_floors(args, result["sim"]["single_process"]["steps_per_s"])
    result["memory_floor"], result["attention_kernels"] = floors or (None, None)
    write_result(args.out, result)
    print(format_speed_table(result))
    print(f"wrote {args.out}")
    return result
