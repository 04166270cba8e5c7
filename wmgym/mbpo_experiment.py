"""``wmgym mbpo``: real steps to reach 50% and 80% success, MBPO-augmented SAC vs plain SAC.

Both agents are the same SAC (hyper-parameters, update-to-data ratio, seeds) on the same real
env (``Sim-<Task>-v0``, state only, episodes not ended on success); the MBPO one also learns from
imagined branches (:mod:`wmgym.mbpo`). Every ``--eval-every`` real steps both are evaluated in
the real twin on fixed seeds. Written: the result JSON (``--result``) and the learning-curve plot
(``--plot``).

With ``--imagined-warmup`` the model also stands in for the warm-up: the MBPO agent's
``learning_starts`` demonstrations are imagined (:mod:`wmgym.imagined_warmup`) and every real step
is its own, while plain SAC still spends its warm-up in the real twin. The method
``sac_imagined`` is the ablation: the imagined warm-up without branches.
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
from wmgym.results import checkpoint_id, machine, matching_result, write_result
from wmgym.rl import CurveCallback, RealEvaluator, RLArgs, steps_to
from wmgym.spec import TaskSpec, load_spec
from wmgym.viz import save_figure

Method = Literal["mbpo", "sac", "sac_imagined"]

LABELS = {"mbpo": "SAC + MBPO (WM-Pick-v0 branches)", "sac": "SAC",
          "sac_imagined": "SAC, imagined warm-up, no branches"}

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
    """Which agents to train (``sac_imagined``: SAC with the imagined warm-up, no branches)."""
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
    """TensorBoard logs go here."""
    result: Path | None = Path("benchmarks/mbpo.json")
    """Result JSON; None to skip."""
    plot: Path | None = Path("docs/mbpo.png")
    """Learning-curve plot; None to skip."""


def run_one(args: MBPOArgs, spec: TaskSpec, method: Method, seed: int,
            evaluate: RealEvaluator) -> dict[str, Any]:
    """Trains one agent for ``args.steps`` real steps; returns its curve and crossings."""
    torch.manual_seed(seed)
    callbacks: list[Any] = []
    mbpo = None
    if method == "mbpo":
        env, bank = make_real_env(spec.sim_id, seed=seed, stride=args.stride)
        mbpo = MBPO(bank, replace(args.mbpo, seed=seed), checkpoint=args.checkpoint,
                    device=args.device, task=args.task)
        callbacks.append(mbpo)
    else:
        env = make_sb3_env(spec.sim_id, num_envs=1, seed=seed, keys=["state"], images=False,
                           terminate_on_success=False)
    curve = CurveCallback(evaluate, args.eval_every, args.curve_episodes, args.steps,
                          args.progress, desc=f"{method} seed {seed}")
    agent = args.make_sac(env, seed=seed, device="cpu", verbose=0,
                          gradient_steps=args.updates_per_step,
                          tensorboard_log=str(args.out / "tb"))
    imagined = method == "sac_imagined" or (method == "mbpo" and args.imagined_warmup)
    warmup = None
    if imagined:
        warmup = imagine_warmup(agent, checkpoint=args.checkpoint, device=args.device,
                                task=args.task, seed=seed, progress=args.progress)
    start = time.perf_counter()
    agent.learn(args.steps, callback=CallbackList([curve, *callbacks]),
                tb_log_name=f"{method}_seed{seed}")
    wall = time.perf_counter() - start - curve.eval_seconds
    env.close()
    record: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "real_steps": int(agent.num_timesteps),
        "train_seconds": wall,
        "curve": curve.curve,
        "warmup": "imagined" if imagined else "real",
        **{f"steps_to_{int(t * 100)}": steps_to(curve.curve, t) for t in THRESHOLDS},
    }
    if warmup is not None:
        record["imagined_warmup"] = warmup
    if mbpo is not None or imagined:
        record["checkpoint"] = checkpoint_id(args.checkpoint or spec.checkpoint)
    if mbpo is not None:
        record["imagined_steps"] = mbpo.imagined_steps
        record["branches_cut_short"] = mbpo.cut_short
    return record


def summarize(runs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Median real steps to each threshold per method, and SAC's over the others'.

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
    for method in ("mbpo", "sac_imagined"):
        if {method, "sac"} <= out.keys():
            suffix = "" if method == "mbpo" else f"_{method}"
            for t in THRESHOLDS:
                key = f"steps_to_{int(t * 100)}"
                m, s = out[method][key], out["sac"][key]
                out[f"speedup_{int(t * 100)}{suffix}"] = (
                    s / m if m and s else (f"> {steps / m:.2f}" if m and s is None else None)
                )
    return out


def plot_mbpo(result: dict[str, Any], path: str | Path) -> Path:
    """Real success and return vs real steps: each run faint, the mean over seeds bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"mbpo": "tab:blue", "sac": "tab:orange", "sac_imagined": "tab:green"}
    for ax, key in zip(axes, ("real_success", "real_return")):
        for method in colors:
            runs = [r for r in result["runs"] if r["method"] == method]
            if not runs:
                continue
            for r in runs:
                ax.plot([p["step"] for p in r["curve"]], [p[key] for p in r["curve"]],
                        color=colors[method], alpha=0.3)
            n = min(len(r["curve"]) for r in runs)
            steps = [p["step"] for p in runs[0]["curve"][:n]]
            mean = np.mean([[p[key] for p in r["curve"][:n]] for r in runs], axis=0)
            label = LABELS[method]
            if method == "mbpo" and runs[0].get("warmup") == "imagined":
                label += ", imagined warm-up"
            ax.plot(steps, mean, "o-", color=colors[method], ms=3,
                    label=f"{label}, {len(runs)} seed(s)")
        ax.set(xlabel="real environment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for t in THRESHOLDS:
        axes[0].axhline(t, color="grey", lw=0.8, ls=":")
    axes[0].set(ylabel="success rate in Sim", ylim=(-0.05, 1.05), title="success (real)")
    axes[1].set(ylabel="episode return in Sim", title="return (real)")
    fig.suptitle("MBPO replay augmentation vs plain SAC")
    fig.tight_layout()
    return save_figure(fig, path)


def _previous_runs(args: MBPOArgs) -> list[dict[str, Any]]:
    """Runs in ``--result`` from an earlier call with the same budget and SAC settings.

    MBPO runs count only with the same kind of warm-up (real or imagined).
    """
    keys = ("task", "steps", "updates_per_step", "eval_every", "curve_episodes",
            *RLArgs.AGENT_SETTINGS)
    runs = matching_result(args.result, {f"config.{k}": getattr(args, k) for k in keys}).get(
        "runs", [])
    mbpo_warmup = "imagined" if args.imagined_warmup else "real"
    return [r for r in runs if r["method"] != "mbpo" or r.get("warmup", "real") == mbpo_warmup]


def mbpo_main(args: MBPOArgs) -> dict[str, Any]:
    """Runs ``wmgym mbpo``; returns (and writes) the result."""
    import wmgym  # noqa: F401  (registers the envs)

    spec = load_spec(args.task)
    evaluate = RealEvaluator(spec)
    try:
        runs = [run_one(args, spec, method, seed, evaluate)
                for seed in args.seeds for method in args.methods]
    finally:
        evaluate.close()
    done = {(r["method"], r["seed"]) for r in runs}
    runs = [r for r in _previous_runs(args) if (r["method"], r["seed"]) not in done] + runs
    result = {
        "task": spec.name,
        "steps": args.steps,
        "config": json.loads(json.dumps(asdict(args), default=str)),
        "machine": machine(),
        "runs": runs,
        "summary": summarize(runs, args.steps),
    }
    if args.result is not None:
        write_result(args.result, result)
    if args.plot is not None:
        plot_mbpo(result, args.plot)
    for r in runs:
        print(f"{r['method']:5s} seed {r['seed']}: steps to 50% {r['steps_to_50']}, "
              f"to 80% {r['steps_to_80']}, train {r['train_seconds']:.0f} s")
    print(result["summary"])
    return result
