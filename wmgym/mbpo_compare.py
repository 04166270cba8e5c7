"""``wmgym mbpo``: real steps to reach 50% and 80% success, MBPO-augmented SAC vs plain SAC.

Both agents are the same SAC (hyper-parameters, update-to-data ratio, seeds) on the same real
env (``Sim-<Task>-v0``, state only, episodes not ended on success); the MBPO one also learns from
imagined branches (:mod:`wmgym.mbpo`). Every ``--eval-every`` real steps both are evaluated in
the real twin on fixed seeds.

With ``--imagined-warmup`` the model also stands in for the warm-up: the MBPO agent's
``learning_starts`` demonstrations are imagined (:mod:`wmgym.imagined_warmup`) and every real step
is its own, while plain SAC still spends its warm-up in the real twin.

:func:`run_mbpo` returns the result; ``wmgym mbpo`` also writes it (``<out>/mbpo.json``, or
``--result``) with a learning-curve plot (``<out>/mbpo.png``, or ``--plot``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.callbacks import CallbackList

from wmgym.env.sb3 import make_sb3_env
from wmgym.imagined_warmup import imagine_warmup
from wmgym.mbpo import MBPO, MBPOConfig, make_real_env
from wmgym.results import checkpoint_id, machine, matching_result, resolve_task, write_result
from wmgym.rl import CurveCallback, RealEvaluator, RLArgs, steps_to
from wmgym.spec import TaskSpec
from wmgym.viz import save_figure

Method = Literal["mbpo", "warmup", "sac"]
"""``mbpo``: SAC with imagined branches; ``warmup``: SAC with its warm-up demonstrations
imagined and no branches (what the branches add over the imagined warm-up); ``sac``: plain."""

#: Success levels whose first crossing is reported.
THRESHOLDS = (0.5, 0.8)


@dataclass
class MBPOArgs(RLArgs):
    """MBPO-augmented SAC vs plain SAC in Sim-<Task>-v0: real steps to 50% / 80% success."""

    steps: int = 15_000
    """Real environment steps per run."""
    seeds: tuple[int, ...] = (0,)
    """One run of each method per seed."""
    methods: tuple[Method, ...] = ("mbpo", "sac")
    """Which agents to train."""
    imagined_warmup: bool = False
    """MBPO's warm-up demonstrations are imagined in WM-<Task>-v0 (same policy, same count), so
    all its real steps are its own; plain SAC's stay real."""
    updates_per_step: int = 2
    """SAC gradient steps per real step (both methods)."""
    eval_every: int = 1_000
    """Evaluate in the real twin every this many real steps."""
    mbpo: MBPOConfig = field(default_factory=MBPOConfig)
    """MBPO's branching and mixing (``--mbpo.horizon 3`` …); its seed is each run's."""
    stride: int = 2
    """MBPO: keep every ``stride``-th real observation (with images) as a branch start."""
    out: Path = Path("runs/mbpo")
    """TensorBoard logs, the result JSON and the plot go here."""
    result: Path | None = None
    """Result JSON (default ``<out>/mbpo.json``); runs of an earlier call with the same settings
    already in it are kept."""
    plot: Path | None = None
    """Learning-curve plot (default ``<out>/mbpo.png``)."""


def train_agent(args: MBPOArgs, *, spec: TaskSpec, checkpoint: Path, seed: int, branches: bool,
                imagined: bool, evaluate: RealEvaluator, label: str) -> dict[str, Any]:
    """Trains one SAC agent for ``args.steps`` real steps; returns its curve and crossings.

    Args:
        args: The options.
        spec: The task.
        checkpoint: The world model (for branches and the imagined warm-up).
        seed: Seed of the agent, its env and the model's sampling.
        branches: Augment its replay with imagined branches (:class:`~wmgym.mbpo.MBPO`).
        imagined: Imagine its warm-up demonstrations
            (:func:`~wmgym.imagined_warmup.imagine_warmup`).
        evaluate: The real-twin evaluator of the learning curve.
        label: The run's name in progress bars and TensorBoard.
    """
    torch.manual_seed(seed)
    callbacks: list[Any] = []
    mbpo = None
    if branches:
        env, bank = make_real_env(spec.sim_id, seed=seed, stride=args.stride)
        mbpo = MBPO(bank, replace(args.mbpo, seed=seed), checkpoint=str(checkpoint),
                    device=args.device)
        callbacks.append(mbpo)
    else:
        env = make_sb3_env(spec.sim_id, num_envs=1, seed=seed, keys=["state"], images=False,
                           terminate_on_success=False)
    curve = CurveCallback(evaluate, every=args.eval_every, episodes=args.curve_episodes,
                          total=args.steps, progress=args.progress, desc=f"{label} seed {seed}")
    agent = args.make_sac(env, task=spec, seed=seed, device="cpu", verbose=0,
                          gradient_steps=args.updates_per_step,
                          tensorboard_log=str(args.out / "tb"))
    warmup = None
    if imagined:
        warmup = imagine_warmup(agent, checkpoint=str(checkpoint), device=args.device,
                                fast=args.mbpo.fast, seed=seed, progress=args.progress)
    start = time.perf_counter()
    agent.learn(args.steps, callback=CallbackList([curve, *callbacks]),
                tb_log_name=f"{label}_seed{seed}")
    wall = time.perf_counter() - start - curve.eval_seconds
    env.close()
    record: dict[str, Any] = {
        "method": label,
        "seed": seed,
        "real_steps": int(agent.num_timesteps),
        "train_seconds": wall,
        "curve": curve.curve,
        "warmup": "imagined" if imagined else "real",
        **{f"steps_to_{int(t * 100)}": steps_to(curve.curve, t) for t in THRESHOLDS},
    }
    if warmup is not None:
        record["imagined_warmup"] = warmup
    if branches or imagined:
        record["checkpoint"] = checkpoint_id(checkpoint)
    if mbpo is not None:
        record["imagined_steps"] = mbpo.imagined_steps
        record["branches_cut_short"] = mbpo.cut_short
    return record


def summarize(runs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Median real steps to each threshold per method, and the other methods' over MBPO's.

    A run that never got there counts as more than the budget.
    """
    out: dict[str, Any] = {}
    for method in sorted({r["method"] for r in runs}):
        mine = [r for r in runs if r["method"] == method]
        out[method] = {}
        for t in THRESHOLDS:
            key = f"steps_to_{int(t * 100)}"
            values = [r[key] if r[key] is not None else np.inf for r in mine]
            median = float(np.median(values))
            out[method][key] = median if np.isfinite(median) else None
            out[method][f"{key}_reached"] = f"{sum(np.isfinite(values))}/{len(values)}"
    # speedup: plain SAC's steps over MBPO's; branch_gain: the imagined warm-up alone's over MBPO's
    for name, base in (("speedup", "sac"), ("branch_gain", "warmup")):
        if {"mbpo", base} <= out.keys():
            for t in THRESHOLDS:
                key = f"steps_to_{int(t * 100)}"
                m, s = out["mbpo"][key], out[base][key]
                out[f"{name}_{int(t * 100)}"] = (
                    s / m if m and s else (f"> {steps / m:.2f}" if m and s is None else None))
    return out


def plot_mbpo(result: dict[str, Any], path: str | Path) -> Path:
    """Real success and return vs real steps: each run faint, the mean over seeds bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    methods = list(dict.fromkeys(r["method"] for r in result["runs"]))
    for ax, key in zip(axes, ("real_success", "real_return")):
        for i, method in enumerate(methods):
            runs = [r for r in result["runs"] if r["method"] == method]
            color = f"C{i}"
            for r in runs:
                ax.plot([p["step"] for p in r["curve"]], [p[key] for p in r["curve"]],
                        color=color, alpha=0.3)
            n = min(len(r["curve"]) for r in runs)
            steps = [p["step"] for p in runs[0]["curve"][:n]]
            mean = np.mean([[p[key] for p in r["curve"][:n]] for r in runs], axis=0)
            label = {"mbpo": f"SAC + MBPO ({result['wm_env']} branches)",
                     "warmup": "SAC"}.get(method, method)
            if runs[0].get("warmup") == "imagined":
                label += ", imagined warm-up"
            ax.plot(steps, mean, "o-", color=color, ms=3, label=f"{label}, {len(runs)} seed(s)")
        ax.set(xlabel="real environment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for t in THRESHOLDS:
        axes[0].axhline(t, color="grey", lw=0.8, ls=":")
    axes[0].set(ylabel=f"success rate in {result['sim_env']}", ylim=(-0.05, 1.05),
                title="success (real)")
    axes[1].set(ylabel=f"episode return in {result['sim_env']}", title="return (real)")
    fig.suptitle("MBPO replay augmentation vs plain SAC")
    fig.tight_layout()
    return save_figure(fig, path)


#: The options runs must share to be compared (and kept in one result).
_SETTINGS = ("task", "steps", "updates_per_step", "eval_every", "curve_episodes",
             *RLArgs.AGENT_SETTINGS)


def run_mbpo(args: MBPOArgs) -> dict[str, Any]:
    """Trains every method of ``args.methods`` on every seed; returns curves and crossings.

    Returns:
        The result: the task and envs, the options (``config``), the machine, one record per
        run (``method``, ``seed``, the learning curve, ``steps_to_50`` and ``steps_to_80``)
        and a ``summary`` (:func:`summarize`).
    """
    import wmgym  # noqa: F401  (registers the envs)

    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    evaluate = RealEvaluator(spec)
    try:
        runs = [train_agent(args, spec=spec, checkpoint=checkpoint, seed=seed,
                            branches=method == "mbpo",
                            imagined=method == "warmup" or (method == "mbpo"
                                                            and args.imagined_warmup),
                            evaluate=evaluate, label=method)
                for seed in args.seeds for method in args.methods]
    finally:
        evaluate.close()
    return {
        "task": spec.name,
        "sim_env": spec.sim_id,
        "wm_env": spec.wm_id,
        "steps": args.steps,
        "config": json.loads(json.dumps(asdict(args), default=str)),
        "machine": machine(),
        "runs": runs,
        "summary": summarize(runs, args.steps),
    }


def mbpo_main(args: MBPOArgs) -> dict[str, Any]:
    """``wmgym mbpo``: runs :func:`run_mbpo`, writes the result (earlier runs kept) and the plot.

    Runs already in the result file from an earlier call with the same settings are kept
    (MBPO runs only with the same kind of warm-up), so seeds can run in separate processes.
    """
    path = args.result or args.out / "mbpo.json"
    result = run_mbpo(args)
    expect = {f"config.{k}": result["config"][k] for k in _SETTINGS}
    warmup = "imagined" if args.imagined_warmup else "real"
    earlier = [r for r in matching_result(path, expect).get("runs", [])
               if r["method"] != "mbpo" or r.get("warmup", "real") == warmup]
    done = {(r["method"], r["seed"]) for r in result["runs"]}
    result["runs"] = [r for r in earlier if (r["method"], r["seed"]) not in done] + result["runs"]
    result["summary"] = summarize(result["runs"], args.steps)
    write_result(path, result)
    plot_mbpo(result, args.plot or args.out / "mbpo.png")
    for r in result["runs"]:
        print(f"{r['method']:5s} seed {r['seed']}: steps to 50% {r['steps_to_50']}, "
              f"to 80% {r['steps_to_80']}, train {r['train_seconds']:.0f} s")
    print(result["summary"])
    print(f"wrote {path}")
    return result
