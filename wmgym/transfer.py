"""``wmgym transfer``: train an SB3 agent in imagination, check it in robosuite.

The same agent (algorithm, hyper-parameters, seed, step budget) is trained twice: purely inside
``WM-<Task>-v0`` and directly in ``Sim-<Task>-v0``. Every ``--eval-every`` steps each agent is
evaluated in the real twin (``Sim-<Task>-v0``, state only, the spec's episode rules, fixed seeds)
for a learning curve; at the end over ``--eval-episodes`` seeded real episodes. The imagination
trained agent is also evaluated in imagination on the same number of episodes: a large
imagined-minus-real success gap means it learned to exploit the model's errors.

Training episodes do not end on success (``terminate_on_success=False``, robosuite's usual
setting): with Lift's shaped reward, ending the episode at the lift would pay less than hovering
with the cube grasped, and the agent learns to lift and hold instead. Evaluation episodes follow
the spec (they end at the lift) and count an episode as a success if the cube was lifted.

State-only observations are the CPU default (``images=False``: the world model skips decoding
frames); ``--images`` trains on camera observations, for a GPU.

Written: ``<out>/<twin>/model.zip``, TensorBoard logs in ``<out>/tb``, the result JSON
(``--result``) and the learning-curve plot (``--plot``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from wmgym.env.sb3 import make_sb3_env
from wmgym.results import checkpoint_id, machine, matching_result, write_result
from wmgym.rl import EVAL_SEED_OFFSET, CurveCallback, RealEvaluator, RLArgs
from wmgym.spec import TaskSpec, load_spec
from wmgym.viz import save_figure

Twin = Literal["wm", "sim"]


@dataclass
class TransferArgs(RLArgs):
    """Train an SB3 agent in WM-<Task>-v0 and in Sim-<Task>-v0; evaluate both in Sim."""

    algo: Literal["sac", "ppo"] = "sac"
    """SB3 algorithm."""
    steps: int = 40_000
    """Environment steps of training, per twin."""
    twins: tuple[Twin, ...] = ("wm", "sim")
    """Which twins to train in (results of earlier runs of the others in ``--result`` are kept)."""
    seed: int = 0
    """Seed of the agent and of the training envs."""
    wm_envs: int = 16
    """Sub-envs of the batched world-model env."""
    sim_envs: int = 1
    """Sub-envs of the real env (robosuite steps one at a time)."""
    updates_per_step: float = 1.0
    """SAC gradient steps per environment step (same for both twins)."""
    eval_every: int = 5_000
    """Evaluate in the real twin every this many training steps (0 = only at the end)."""
    eval_episodes: int = 50
    """Real (and, for the WM agent, imagined) episodes of the final evaluation."""
    images: bool = False
    """Train on camera observations (rgb, depth, mask, state) instead of state only."""
    kv_cache: str = "auto"
    """Precision of the world model's cached keys and values (``auto``, ``float32``,
    ``bfloat16``; see ``WM-<Task>-v0``). The README's transfer runs used float32."""
    agent_device: str = "cpu"
    """Device of the SB3 agent (small MLPs are fastest on CPU)."""
    out: Path = Path("runs/transfer")
    """Models and TensorBoard logs go here."""
    result: Path | None = Path("benchmarks/transfer.json")
    """Result JSON (merged with the twins already in it); None to skip."""
    plot: Path | None = Path("docs/transfer.png")
    """Learning-curve plot; None to skip."""


# ----------------------------------------------------------------------------- evaluation


def imagined_eval(
    model: BaseAlgorithm, args: TransferArgs, spec: TaskSpec, episodes: int
) -> dict[str, float]:
    """Success rate and mean return of ``model`` in ``WM-<Task>-v0`` under the spec's rules.

    All episodes run as one batched vector env; each counts until its first end.
    """
    env = make_sb3_env(
        spec.wm_id, num_envs=episodes, seed=args.seed + EVAL_SEED_OFFSET, monitor=False,
        keys=None if args.images else ["state"], **_wm_kwargs(args, terminate_on_success=None),
    )
    obs = env.reset()
    live = np.ones(episodes, bool)
    success, returns = np.zeros(episodes, bool), np.zeros(episodes)
    while live.any():
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, done, infos = env.step(action)
        returns += reward * live
        success |= live & np.array([bool(i["success"]) for i in infos])
        live &= ~done
    env.close()
    return {"success": float(success.mean()), "return": float(returns.mean())}


# ----------------------------------------------------------------------------- training


def _wm_kwargs(args: TransferArgs, terminate_on_success: bool | None = False) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"images": args.images, "device": args.device,
                              "terminate_on_success": terminate_on_success,
                              "kv_cache": args.kv_cache}
    if args.checkpoint:
        kwargs["checkpoint"] = args.checkpoint
    return kwargs


def make_train_env(args: TransferArgs, spec: TaskSpec, twin: Twin) -> VecEnv:
    """The SB3 training env of one twin (episodes do not end on success)."""
    keys = None if args.images else ["state"]
    if twin == "wm":
        return make_sb3_env(spec.wm_id, num_envs=args.wm_envs, seed=args.seed, keys=keys,
                            **_wm_kwargs(args))
    return make_sb3_env(spec.sim_id, num_envs=args.sim_envs, seed=args.seed, keys=keys,
                        images=args.images, terminate_on_success=False)


def make_agent(args: TransferArgs, env: VecEnv, tensorboard_log: str | None = None
               ) -> BaseAlgorithm:
    """The SB3 agent, identical (but for the env) for both twins."""
    from stable_baselines3 import PPO

    common = {"seed": args.seed, "device": args.agent_device, "verbose": 0,
              "tensorboard_log": tensorboard_log}
    if args.algo == "sac":
        return args.make_sac(
            env, train_freq=1, gradient_steps=max(1, round(args.updates_per_step * env.num_envs)),
            **common,
        )
    if args.warmup_policy is not None:
        raise ValueError("--warmup-policy needs an off-policy agent (--algo sac)")
    return PPO("MultiInputPolicy", env, n_steps=max(64, 2048 // env.num_envs), **common)


def train_twin(args: TransferArgs, spec: TaskSpec, twin: Twin, evaluate: RealEvaluator
               ) -> dict[str, Any]:
    """Trains one agent in ``twin`` and evaluates it in the real twin; returns its record."""
    env = make_train_env(args, spec, twin)
    agent = make_agent(args, env, str(args.out / "tb"))
    callback = CurveCallback(evaluate, args.eval_every, args.curve_episodes, args.steps,
                             args.progress, desc=f"train in {twin}")
    start = time.perf_counter()
    agent.learn(args.steps, callback=callback, tb_log_name=f"{args.algo}_{twin}")
    wall = time.perf_counter() - start - callback.eval_seconds
    env.close()
    path = args.out / twin / "model.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    agent.save(path)
    final = evaluate(agent, args.eval_episodes)
    record: dict[str, Any] = {
        "env": spec.wm_id if twin == "wm" else spec.sim_id,
        "steps": int(agent.num_timesteps),
        "train_seconds": wall,
        "real_success": final["success"],
        "real_return": final["return"],
        "curve": callback.curve,
        "model": str(path),
    }
    if twin == "wm":
        record["checkpoint"] = checkpoint_id(args.checkpoint or spec.checkpoint)
        record["kv_cache"] = args.kv_cache
        imagined = imagined_eval(agent, args, spec, args.eval_episodes)
        record["imagined_success"] = imagined["success"]
        record["imagined_return"] = imagined["return"]
    return record


def summarize(twins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Imagination-trained vs directly trained real success (the issue's two targets)."""
    if "wm" not in twins or "sim" not in twins:
        return {}
    wm, sim = twins["wm"]["real_success"], twins["sim"]["real_success"]
    return {
        "wm_real_success": wm,
        "sim_real_success": sim,
        "ratio": wm / sim if sim > 0 else None,
        "exploitation_gap": twins["wm"].get("imagined_success", wm) - wm,
        "target_ratio_met": bool(sim > 0 and wm / sim >= 0.8),
        "target_absolute_met": bool(wm >= 0.7),
    }


def plot_transfer(results: dict[str, Any] | Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Learning curves of one result or several (seeds), both twins' agents.

    Real success of both agents, the WM agent's imagined success, and each agent's final
    evaluation (a star). With several results each seed is drawn faint, the mean bold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, dict) else list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"wm": "tab:blue", "sim": "tab:orange"}
    alpha = 1.0 if len(results) == 1 else 0.3
    for twin, color in colors.items():
        recs = [r["twins"][twin] for r in results if twin in r["twins"]]
        if not recs:
            continue
        label = "trained in WM" if twin == "wm" else "trained in Sim"
        series = [("real_success", "real_return", "-", f"{label}: real")]
        if twin == "wm":
            series.append(("train_success", "train_return", "--", f"{label}: imagined"))
        for success, ret, style, name in series:
            for ax, key in zip(axes, (success, ret)):
                curves = [[p[key] for p in rec["curve"]] for rec in recs]
                steps = [p["step"] for p in recs[0]["curve"]]
                for curve in curves:
                    ax.plot(steps, curve, style, color=color, alpha=alpha,
                            label=name if len(results) == 1 else None)
                if len(results) > 1 and len({len(c) for c in curves}) == 1:
                    ax.plot(steps, np.mean(curves, axis=0), style, color=color, lw=2.2,
                            label=f"{name}, mean of {len(curves)} seeds")
        final = [rec["real_success"] for rec in recs]
        axes[0].plot([recs[0]["steps"]] * len(final), final, "*", color=color, ms=11,
                     label=f"{label}: final, {results[0]['eval_episodes']} real episodes")
    axes[0].set(xlabel="training steps", ylabel="success rate", ylim=(-0.05, 1.05),
                title="success in Sim (real)")
    axes[1].set(xlabel="training steps", ylabel="episode return", title="return")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    seeds = ", ".join(str(r["seed"]) for r in results)
    fig.suptitle(f"{results[0]['algo'].upper()}: train in imagination vs in the real simulator "
                 f"(seed {seeds})")
    fig.tight_layout()
    return save_figure(fig, path)


def format_table(result: dict[str, Any]) -> str:
    """A markdown table of the final evaluation."""
    lines = [
        "| trained in | steps | train wall (s) | real success | real return | imagined success |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["twins"].values():
        imagined = f"{r['imagined_success']:.2f}" if "imagined_success" in r else "–"
        lines.append(f"| {r['env']} | {r['steps']} | {r['train_seconds']:.0f} | "
                     f"{r['real_success']:.2f} | {r['real_return']:.1f} | {imagined} |")
    return "\n".join(lines)


#: Settings two runs must share for their twins to be compared (and kept in one result).
_SETTINGS = ("algo", "steps", "seed", "images", *RLArgs.AGENT_SETTINGS, "updates_per_step")


def _previous_twins(args: TransferArgs, spec: TaskSpec) -> dict[str, dict[str, Any]]:
    """Twins of an earlier run with the same algorithm, budget and seed in ``--result``."""
    expect = {"task": spec.name, **{k: getattr(args, k) for k in _SETTINGS}}
    return matching_result(args.result, expect).get("twins", {})


def transfer_main(args: TransferArgs) -> dict[str, Any]:
    """Runs ``wmgym transfer``; returns (and writes) the result."""
    import wmgym  # noqa: F401  (registers the envs)

    torch.manual_seed(args.seed)
    spec = load_spec(args.task)
    evaluate = RealEvaluator(spec)
    twins: dict[str, dict[str, Any]] = {}
    try:
        for twin in args.twins:
            twins[twin] = train_twin(args, spec, twin, evaluate)
    finally:
        evaluate.close()
    twins = {**_previous_twins(args, spec), **twins}  # read now: another run may have written since
    result = {
        "task": spec.name,
        **{k: getattr(args, k) for k in _SETTINGS},
        "eval_episodes": args.eval_episodes,
        "machine": machine(),
        "twins": {k: twins[k] for k in ("wm", "sim") if k in twins},
    }
    result["summary"] = summarize(result["twins"])
    if args.result is not None:
        write_result(args.result, result)
    if args.plot is not None:
        plot_transfer(result, args.plot)
    print(format_table(result))
    if result["summary"]:
        print(json.dumps(result["summary"]))
    return result
