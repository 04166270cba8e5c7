"""``wmgym transfer``: train an SB3 agent in imagination, check it in robosuite.

The same agent (algorithm, hyper-parameters, seed, step budget) is trained twice: purely inside
``WM-<Task>-v0`` and directly in ``Sim-<Task>-v0``. Every ``--eval-every`` steps each agent is
evaluated in the real twin (``Sim-<Task>-v0``, state only, the spec's episode rules, fixed seeds)
for a learning curve; at the end over ``--eval-episodes`` seeded real episodes. The imagination
trained agent is also evaluated in imagination on the same number of episodes: a large
imagined-minus-real success gap means it learned to exploit the model's errors.

Training episodes do not end on success (``terminate_on_success=False``, robosuite's usual
setting): with a shaped reward, ending the episode at success can pay less than staying just
short of it (for Pick: hovering with the cube grasped), so the agent learns to succeed and hold
instead. Evaluation episodes follow the spec (for Pick they end at the lift) and count an episode
as a success if ``info["success"]`` was ever true.

State-only observations are the CPU default (``images=False``: the world model skips decoding
frames); ``--images`` trains on camera observations, for a GPU.

:func:`run_transfer` returns the result; ``wmgym transfer`` also writes ``<out>/<twin>/model.zip``,
TensorBoard logs in ``<out>/tb``, the result JSON (``<out>/transfer.json``, or ``--result``)
and the learning-curve plot (``<out>/transfer.png``, or ``--plot``).
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
from wmgym.results import checkpoint_id, machine, matching_result, resolve_task, write_result
from wmgym.rl import EVAL_SEED_OFFSET, CurveCallback, RealEvaluator, RLArgs
from wmgym.spec import TaskSpec
from wmgym.viz import save_figure

Twin = Literal["wm", "sim"]


@dataclass
class TransferArgs(RLArgs):
    """Train an SB3 agent in WM-<Task>-v0 and in Sim-<Task>-v0; evaluate both in Sim."""

    algo: Literal["sac", "ppo", "imitate"] = "sac"
    """SB3 algorithm, or ``imitate``: a camera-based actor (rgb, depth, mask, proprio) trained
    by DART then DAgger with the task's scripted expert labelling (:mod:`wmgym.imitation`;
    ``--steps`` is its step budget, scored on paired seeds in both twins with cameras)."""
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
    """Train on camera observations (rgb, depth, mask, proprio, state) instead of state only."""
    fast: Literal["default", "fast", "full"] = "default"
    """Speed preset of ``WM-<Task>-v0`` (see its ``fast``)."""
    imitation_train_steps: int = 1500
    """With ``--algo imitate``: the actor's gradient steps after each of its three rounds."""
    agent_device: str = "cpu"
    """Device of the SB3 agent (small MLPs are fastest on CPU)."""
    out: Path = Path("runs/transfer")
    """Models, TensorBoard logs, the result JSON and the plot go here."""
    result: Path | None = None
    """Result JSON (default ``<out>/transfer.json``); the twins of an earlier run with the same
    settings already in it are kept."""
    plot: Path | None = None
    """Learning-curve plot (default ``<out>/transfer.png``)."""


# ----------------------------------------------------------------------------- evaluation


def imagined_eval(model: BaseAlgorithm, args: TransferArgs, *, spec: TaskSpec,
                  checkpoint: Path, episodes: int) -> dict[str, float]:
    """Success rate and mean return of ``model`` in ``WM-<Task>-v0`` under the spec's rules.

    All episodes run as one batched vector env; each counts until its first end.
    """
    env = make_sb3_env(
        spec.wm_id, num_envs=episodes, seed=args.seed + EVAL_SEED_OFFSET, monitor=False,
        keys=None if args.images else ["state"],
        **_wm_kwargs(args, checkpoint, terminate_on_success=None),
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


def _wm_kwargs(args: TransferArgs, checkpoint: Path, *,
               terminate_on_success: bool | None = False) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "device": args.device, "images": args.images,
            "fast": args.fast, "terminate_on_success": terminate_on_success}


def make_train_env(args: TransferArgs, *, spec: TaskSpec, checkpoint: Path, twin: Twin
                   ) -> VecEnv:
    """The SB3 training env of one twin (episodes do not end on success)."""
    keys = None if args.images else ["state"]
    if twin == "wm":
        return make_sb3_env(spec.wm_id, num_envs=args.wm_envs, seed=args.seed, keys=keys,
                            **_wm_kwargs(args, checkpoint))
    return make_sb3_env(spec.sim_id, num_envs=args.sim_envs, seed=args.seed, keys=keys,
                        images=args.images, terminate_on_success=False)


def make_agent(args: TransferArgs, env: VecEnv, *, spec: TaskSpec,
               tensorboard_log: str | None = None) -> BaseAlgorithm:
    """The SB3 agent, identical (but for the env) for both twins."""
    from stable_baselines3 import PPO

    common = {"seed": args.seed, "device": args.agent_device, "verbose": 0,
              "tensorboard_log": tensorboard_log}
    if args.algo == "sac":
        return args.make_sac(
            env, task=spec, train_freq=1,
            gradient_steps=max(1, round(args.updates_per_step * env.num_envs)), **common,
        )
    if args.warmup_policy is not None:
        raise ValueError("--warmup-policy needs an off-policy agent (--algo sac)")
    return PPO("MultiInputPolicy", env, n_steps=max(64, 2048 // env.num_envs), **common)


def imitate_twin(args: TransferArgs, twin: Twin, *, spec: TaskSpec, checkpoint: Path
                 ) -> dict[str, Any]:
    """Trains a camera-based actor by imitation in ``twin``; scores it in both twins.

    The scoring is :func:`wmgym.sweep.run_sweep` on ``--eval-episodes`` paired seeds: the real
    and the imagined episode of one seed start from the same real frame.
    """
    from wmgym.imitation import ImitateArgs, freeze_and_score, imitate

    start = time.perf_counter()
    actor, report = imitate(ImitateArgs(
        task=str(spec.path), checkpoint=str(checkpoint), twin=twin, steps=args.steps,
        num_envs=args.wm_envs if twin == "wm" else args.sim_envs, fast=args.fast,
        seed=args.seed, device=args.device, train_steps=args.imitation_train_steps,
        eval_episodes=0, progress=args.progress))
    wall = time.perf_counter() - start
    agent_dir, row = freeze_and_score(
        actor, report, args.out / twin / "agent", spec=spec, checkpoint=checkpoint,
        name=f"vision-{twin}-{args.seed}", episodes=args.eval_episodes,
        seed=args.seed + EVAL_SEED_OFFSET, device=args.device, fast=args.fast,
        progress=args.progress)
    record: dict[str, Any] = {
        "env": spec.wm_id if twin == "wm" else spec.sim_id,
        "steps": report["dataset_steps"], "train_seconds": wall,
        "real_success": row["real"]["success"], "real_return": row["real"]["return"],
        "curve": [], "rounds": report["rounds"], "model": str(agent_dir),
    }
    if twin == "wm":
        record["checkpoint"] = checkpoint_id(checkpoint)
        record["imagined_success"] = row["imagined"]["success"]
        record["imagined_return"] = row["imagined"]["return"]
    return record


def train_twin(args: TransferArgs, twin: Twin, *, spec: TaskSpec, checkpoint: Path,
               evaluate: RealEvaluator) -> dict[str, Any]:
    """Trains one agent in ``twin`` and evaluates it in the real twin; returns its record."""
    if args.algo == "imitate":
        return imitate_twin(args, twin, spec=spec, checkpoint=checkpoint)
    env = make_train_env(args, spec=spec, checkpoint=checkpoint, twin=twin)
    agent = make_agent(args, env, spec=spec, tensorboard_log=str(args.out / "tb"))
    callback = CurveCallback(evaluate, every=args.eval_every, episodes=args.curve_episodes,
                             total=args.steps, progress=args.progress, desc=f"train in {twin}")
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
        record["checkpoint"] = checkpoint_id(checkpoint)
        imagined = imagined_eval(agent, args, spec=spec, checkpoint=checkpoint,
                                 episodes=args.eval_episodes)
        record["imagined_success"] = imagined["success"]
        record["imagined_return"] = imagined["return"]
    return record


def summarize(twins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Imagination-trained vs directly trained real success, and the exploitation gap."""
    if "wm" not in twins or "sim" not in twins:
        return {}
    wm, sim = twins["wm"]["real_success"], twins["sim"]["real_success"]
    return {
        "wm_real_success": wm,
        "sim_real_success": sim,
        "ratio": wm / sim if sim > 0 else None,
        "exploitation_gap": twins["wm"].get("imagined_success", wm) - wm,
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
_SETTINGS = ("algo", "steps", "seed", "images", "fast", *RLArgs.AGENT_SETTINGS,
             "updates_per_step")


def run_transfer(args: TransferArgs) -> dict[str, Any]:
    """Trains the agent in each of ``args.twins`` and evaluates it in the real twin.

    Args:
        args: The options (the agents' models and TensorBoard logs go under ``args.out``).

    Returns:
        The result: the settings, per twin its record (steps, training seconds, final real
        success and return, learning curve, model path; for ``wm`` also the imagined success
        and the checkpoint) and a ``summary`` of the two twins.
    """
    import wmgym  # noqa: F401  (registers the envs)

    torch.manual_seed(args.seed)
    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    evaluate = RealEvaluator(spec)
    twins: dict[str, dict[str, Any]] = {}
    try:
        for twin in args.twins:
            twins[twin] = train_twin(args, twin, spec=spec, checkpoint=checkpoint,
                                     evaluate=evaluate)
    finally:
        evaluate.close()
    result = {
        "task": spec.name,
        **{k: getattr(args, k) for k in _SETTINGS},
        "eval_episodes": args.eval_episodes,
        "machine": machine(),
        "twins": {k: twins[k] for k in ("wm", "sim") if k in twins},
    }
    result["summary"] = summarize(result["twins"])
    return result


def transfer_main(args: TransferArgs) -> dict[str, Any]:
    """``wmgym transfer``: runs :func:`run_transfer`, writes the result and the plot."""
    path = args.result or args.out / "transfer.json"
    spec, _ = resolve_task(args.task, args.checkpoint)
    expect = {"task": spec.name, **{k: getattr(args, k) for k in _SETTINGS}}
    result = run_transfer(args)
    # an earlier run's other twin, read now: another run may have written it meanwhile
    previous = matching_result(path, expect).get("twins", {})
    twins = {**previous, **result["twins"]}
    result["twins"] = {k: twins[k] for k in ("wm", "sim") if k in twins}
    result["summary"] = summarize(result["twins"])
    write_result(path, result)
    plot_transfer(result, args.plot or args.out / "transfer.png")
    print(format_table(result))
    if result["summary"]:
        print(json.dumps(result["summary"]))
    print(f"wrote {path}")
    return result
