"""``wmgym agents build``: train and freeze a family of learned agents of graded competence.

A family is a standing benchmark of policies the world model never saw in its data: learned
agents that act as users' agents do. The task module declares it (``FAMILY`` in
:mod:`wmgym.tasks.pick`: which agents, their budgets and seeds); :func:`build_family` trains each
in the real twin (or in the learned one), freezes it (:func:`wmgym.agents.save_agent`) and
records its real success on held episodes. Run kinds:

* ``bc``: behaviour cloning of a scripted expert's demonstrations (``demos``, ``episodes``)
  into an SB3 SAC actor (standardised state, maximum likelihood through the tanh squashing,
  ``bc_steps`` Adam steps; :mod:`wmgym.cloning`);
* ``sac``: :func:`wmgym.sac.make_sac` with the task's recipe (:func:`wmgym.rl.sac_recipe`)
  and the run's overrides, in ``Sim-<Task>-v0`` or (``env = "wm"``) ``WM-<Task>-v0``, frozen
  after each of ``save_at`` environment steps;
* ``ppo``: SB3 PPO, optionally cloned from demonstrations first, frozen after each of
  ``save_at`` environment steps (0: the cloned actor before any PPO update).

Every run's environment seeds start at its own ``seed`` (default: the family's ``seed`` plus
``1000 ×`` its index) and take fewer than 1000; the held episodes start at ``eval_seed``: both
far from the world model's data (``wmgym collect`` seeds) and from the sweep's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm.auto import tqdm

from wmgym.agents import (
    export_actor,
    load_agent,
    read_agent_meta,
    update_agent_meta,
    write_agent,
)
from wmgym.cloning import SpacesEnv, behaviour_clone, collect_demos, fit_features, real_success
from wmgym.results import machine, write_result
from wmgym.spec import TaskSpec, load_spec

FAMILY_FILE = "family.json"


@dataclass
class BuildAgentsArgs:
    """Options of ``wmgym agents build``."""

    task: str
    """Task name; its module's ``FAMILY`` says which agents to build."""
    out: str = "runs/agents"
    """Directory for the agents (one folder each) and ``family.json``."""
    only: tuple[str, ...] = ()
    """Build only these runs of the family (by run name); empty: all."""
    rebuild: bool = False
    """Train runs again whose agents are already frozen in ``--out`` (else they are kept)."""
    checkpoint: str = ""
    """World-model checkpoint for runs trained in imagination (default: the task's)."""
    device: str = "auto"
    """Device of the world model for runs trained in imagination."""
    seed_offset: int = 0
    """Shift every seed of the family (training and held episodes) by this much: a sibling
    family of the same recipes on other seeds, whose real rollouts may be training data (the
    benchmark family's never are)."""
    threads: int = 1
    """Torch threads (small MLPs train fastest on one; more threads stall on a busy machine)."""
    progress: bool = True
    """Show progress bars."""


# ----------------------------------------------------------------------------- pieces


class _Bar(BaseCallback):
    """A tqdm bar over an SB3 model's environment steps."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__()
        self.bar = bar

    def _on_step(self) -> bool:
        self.bar.n = self.num_timesteps
        self.bar.refresh()
        return True


def _learn_to(model: Any, steps: int, bar: tqdm) -> None:
    """Trains ``model`` on until it has taken ``steps`` environment steps in all."""
    if steps > model.num_timesteps:
        model.learn(steps - model.num_timesteps, reset_num_timesteps=model.num_timesteps == 0,
                    callback=_Bar(bar))


# ----------------------------------------------------------------------------- runs


class FamilyBuilder:
    """Trains a family's runs and freezes their agents; one real env is shared by all runs.

    Args:
        spec: The task.
        family: The task's ``FAMILY`` (``seed``, ``eval_seed``, ``eval_episodes``, ``runs``).
        out: Directory of the agents.
        checkpoint: World model for runs in imagination (None: the task's).
        device: Its device.
        progress: Show progress bars.
    """

    def __init__(self, spec: TaskSpec, family: Mapping[str, Any], out: Path, *,
                 checkpoint: str | Path | None = None, device: str = "auto",
                 progress: bool = True) -> None:
        from wmgym.registration import make_env

        self.spec, self.family, self.out, self.progress = spec, family, out, progress
        self.checkpoint, self.device = checkpoint, device
        self.env = make_env(spec.sim_id, images=False)
        n = int(family.get("eval_episodes", 20))
        self.eval_seeds = [int(family["eval_seed"]) + e for e in range(n)]

    def close(self) -> None:
        """Closes the shared real env."""
        self.env.close()

    def freeze(self, name: str, model: Any, training: dict[str, Any]) -> dict[str, Any]:
        """Freezes ``model``'s actor as agent ``name`` and measures its real success."""
        tensors, arch = export_actor(model)
        directory = self.out / name
        write_agent(directory, tensors, arch, task=self.spec.name, name=name, training=training)
        agent = load_agent(directory)  # what is scored is what was written
        real = real_success(agent, self.spec, seeds=self.eval_seeds, env=self.env,
                            progress=self.progress)
        return update_agent_meta(directory, real_success=real)

    def run(self, index: int, run: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Trains one run of the family; returns the ``agent.json`` of each agent it froze."""
        seed = run_seed(self.family, index)
        kind = run["algo"]
        if kind == "bc":
            return self._bc(run, seed)
        if kind == "sac":
            return self._sac(run, seed)
        if kind == "ppo":
            return self._ppo(run, seed)
        raise ValueError(f"family run {run.get('name')!r}: unknown algo {kind!r} "
                         "(bc, sac or ppo)")

    def _demos(self, run: Mapping[str, Any], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        demos = collect_demos(self.spec, run["demos"], episodes=int(run["episodes"]), seed=seed,
                              env=self.env, progress=self.progress)
        info = {"policy": run["demos"], "episodes": int(run["episodes"]),
                "steps": demos["steps"], "success": demos["success"],
                "seeds": [seed, seed + int(run["episodes"]) - 1], "env": self.spec.sim_id}
        return demos, info

    def _bc(self, run: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
        from wmgym.sac import make_sac

        start = time.perf_counter()
        demos, info = self._demos(run, seed)
        env = DummyVecEnv([lambda: SpacesEnv(self.spec)])
        model = make_sac(env, task=self.spec, standardize_state=True, buffer_size=1, seed=seed,
                         device="cpu", policy_kwargs=dict(run.get("policy_kwargs", {})))
        fit_features(model.policy, demos["states"])
        loss = behaviour_clone(model, demos["states"], demos["actions"],
                               steps=int(run["bc_steps"]), seed=seed)
        training = {"algorithm": "behaviour cloning (SB3 SAC actor, maximum likelihood)",
                    "demonstrations": info, "bc_steps": int(run["bc_steps"]),
                    "bc_loss": round(loss, 4), "features": "standardized state", "seed": seed,
                    "seconds": round(time.perf_counter() - start, 1)}
        return [self.freeze(run["name"], model, training)]

    def _sac(self, run: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
        from wmgym.env.sb3 import make_sb3_env
        from wmgym.rl import sac_recipe
        from wmgym.sac import make_sac

        in_wm = run.get("env", "sim") == "wm"
        num_envs = int(run.get("num_envs", 16 if in_wm else 1))
        env_kwargs: dict[str, Any] = {"images": False, "terminate_on_success": False}
        if in_wm:
            env_kwargs.update(device=self.device, checkpoint=self.checkpoint or
                              self.spec.checkpoint)
        env_id = self.spec.wm_id if in_wm else self.spec.sim_id
        env = make_sb3_env(env_id, num_envs=num_envs, seed=seed, keys=["state"], **env_kwargs)
        options = {**sac_recipe(self.spec), **dict(run.get("recipe", {}))}
        model = make_sac(env, task=self.spec, seed=seed, device="cpu", train_freq=1,
                         gradient_steps=int(run.get("gradient_steps", num_envs)),
                         buffer_size=int(run.get("buffer_size", 100_000)), **options)
        frozen = self._snapshots(run, model, seed, {
            "algorithm": "SAC (wmgym.sac.make_sac, the task's recipe)", "env": env_id,
            "num_envs": num_envs, "recipe": options, "seed": seed,
            "gradient_steps": int(run.get("gradient_steps", num_envs))})
        env.close()
        return frozen

    def _ppo(self, run: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
        from stable_baselines3 import PPO

        from wmgym.env.sb3 import make_sb3_env
        from wmgym.sac import StandardizedState, position_offsets

        start = time.perf_counter()
        training: dict[str, Any] = {"algorithm": "PPO (SB3)", "env": self.spec.sim_id,
                                    "seed": seed}
        kwargs = dict(run.get("ppo", {}))
        policy_kwargs = dict(kwargs.pop("policy_kwargs", {}))
        demos = None
        if run.get("demos"):
            demos, training["demonstrations"] = self._demos(run, seed)
            policy_kwargs.update(features_extractor_class=StandardizedState,
                                 features_extractor_kwargs={
                                     "offsets": position_offsets(self.spec)})
            training["features"] = "standardized state"
        env = make_sb3_env(self.spec.sim_id, num_envs=1, seed=seed + 500, keys=["state"],
                           images=False, terminate_on_success=False)
        model = PPO("MultiInputPolicy", env, seed=seed, device="cpu", verbose=0,
                    policy_kwargs=policy_kwargs, **kwargs)
        if demos is not None:
            fit_features(model.policy, demos["states"])
            training["bc_steps"] = int(run["bc_steps"])
            training["bc_loss"] = round(behaviour_clone(
                model, demos["states"], demos["actions"], steps=int(run["bc_steps"]),
                seed=seed), 4)
        training["ppo"] = {k: v for k, v in kwargs.items()}
        training["setup_seconds"] = round(time.perf_counter() - start, 1)
        frozen = self._snapshots(run, model, seed, training)
        env.close()
        return frozen

    def _snapshots(self, run: Mapping[str, Any], model: Any, seed: int,
                   training: dict[str, Any]) -> list[dict[str, Any]]:
        """Trains ``model`` up to each of ``run["save_at"]`` steps and freezes it there."""
        frozen = []
        start = time.perf_counter()
        save_at = sorted(int(s) for s in run["save_at"])
        with tqdm(total=save_at[-1], desc=f"train {run['name']}", unit="step",
                  disable=not self.progress, leave=False) as bar:
            for steps in save_at:
                _learn_to(model, steps, bar)
                name = f"{run['name']}@{steps}"
                frozen.append(self.freeze(name, model, {
                    **training, "steps": int(model.num_timesteps),
                    "seconds": round(time.perf_counter() - start, 1)}))
        return frozen


def _scored(directory: Path) -> bool:
    """Whether ``directory`` holds a frozen agent whose real success was measured."""
    return (directory / "agent.json").is_file() and \
        read_agent_meta(directory).get("real_success") is not None


def run_seed(family: Mapping[str, Any], index: int) -> int:
    """The first environment seed of the family's run ``index``.

    The run's own ``seed`` if it names one (so it trains alike wherever it stands in the list),
    else the family's ``seed + 1000 * index``.
    """
    run = family["runs"][index]
    return int(run.get("seed", int(family["seed"]) + 1000 * index))


def run_names(run: Mapping[str, Any]) -> list[str]:
    """The names of the agents a family run freezes."""
    if "save_at" in run:
        return [f"{run['name']}@{int(s)}" for s in sorted(run["save_at"])]
    return [run["name"]]


def shifted_family(family: Mapping[str, Any], offset: int) -> dict[str, Any]:
    """``family`` with every seed moved by ``offset`` (a sibling on other seeds)."""
    runs = [{**run, **({"seed": int(run["seed"]) + offset} if "seed" in run else {})}
            for run in family["runs"]]
    return {**family, "seed": int(family["seed"]) + offset,
            "eval_seed": int(family["eval_seed"]) + offset, "runs": tuple(runs)}


def task_family(task: str | TaskSpec) -> dict[str, Any]:
    """The task module's ``FAMILY``.

    Raises:
        KeyError: The task declares none.
    """
    from wmgym.tasks import declared

    return dict(declared(task, "FAMILY"))


def build_family(task: str | TaskSpec, out: str | Path, *,
                 family: Mapping[str, Any] | None = None, only: Sequence[str] = (),
                 rebuild: bool = False, checkpoint: str | Path | None = None,
                 device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Trains and freezes a task's family of agents into ``out``; returns the family's index.

    Args:
        task: The task.
        out: Directory: one folder per agent (:mod:`wmgym.agents`).
        family: The family to build (default: the task module's ``FAMILY``).
        only: Build only these runs (by name); empty: all.
        rebuild: Train again runs whose agents are all frozen in ``out`` already.
        checkpoint: World model for runs trained in imagination (default: the task's).
        device: Its device.
        progress: Show progress bars.

    Returns:
        The index: per agent its folder, training and real success when frozen; the seeds
        used; the build's seconds and machine.

    Raises:
        ValueError: ``only`` names a run the family lacks.
    """
    spec = load_spec(task)
    family = dict(family if family is not None else task_family(spec))
    runs = list(family["runs"])
    unknown = set(only) - {r["name"] for r in runs}
    if unknown:
        raise ValueError(f"no family runs named {sorted(unknown)}; the family has "
                         f"{[r['name'] for r in runs]}")
    out = Path(out)
    start = time.perf_counter()
    builder = FamilyBuilder(spec, family, out, checkpoint=checkpoint, device=device,
                            progress=progress)
    built: dict[str, dict[str, Any]] = {}
    try:
        for index, run in enumerate(tqdm(runs, desc="agent family", disable=not progress)):
            names = run_names(run)
            if only and run["name"] not in only:
                continue
            done = all(_scored(out / n) for n in names)
            if done and not rebuild:
                metas = [read_agent_meta(out / n) for n in names]
            else:
                metas = builder.run(index, run)
            for meta in metas:
                built[meta["name"]] = meta
                tqdm.write(f"{meta['name']}: real success {meta['real_success']['success']:.2f}")
    finally:
        builder.close()
    seeds = [run_seed(family, i) for i in range(len(runs))]
    agents = []
    for run in runs:
        for name in run_names(run):
            meta = built.get(name) or (read_agent_meta(out / name) if _scored(out / name)
                                       else None)
            if meta is not None:
                agents.append({"name": name, "path": name, "algo": run["algo"],
                               "real_success": meta["real_success"], "sha256": meta["sha256"],
                               "training": meta["training"]})
    twins: dict[str, list[str]] = {}
    for a in agents:
        twins.setdefault(a["sha256"], []).append(a["name"])
    for names in twins.values():
        if len(names) > 1:
            tqdm.write(f"warning: agents {names} have the same weights (one agent counted "
                       f"{len(names)} times in a sweep): freeze them at other points")
    return {
        "task": spec.name,
        "seed": int(family["seed"]),
        "training_seeds": [min(seeds), max(seeds) + 999],
        "eval_seeds": [builder.eval_seeds[0], builder.eval_seeds[-1]],
        "agents": agents,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine(),
    }


def format_family(index: Mapping[str, Any]) -> str:
    """The family as a Markdown table: agent, how trained, real success."""
    lines = ["| agent | algorithm | training | real success |", "|---|---|---|---|"]
    for a in index["agents"]:
        t = a["training"]
        demo = t.get("demonstrations")
        how = []
        if demo:
            how.append(f"{demo['episodes']} episodes of {demo['policy']}")
        if "bc_steps" in t:
            how.append(f"{t['bc_steps']} cloning steps")
        if "steps" in t:
            how.append(f"{t['steps']} steps in {t['env']}")
        lines.append(f"| {a['name']} | {a['algo']} | {', '.join(how)} | "
                     f"{a['real_success']['success']:.2f} |")
    return "\n".join(lines)


def build_agents_main(args: BuildAgentsArgs) -> dict[str, Any]:
    """``wmgym agents build``: build the family, print its table, write ``family.json``."""
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    family = shifted_family(task_family(args.task), args.seed_offset)
    index = build_family(args.task, out, family=family, only=args.only, rebuild=args.rebuild,
                         checkpoint=args.checkpoint or None, device=args.device,
                         progress=args.progress)
    write_result(out / FAMILY_FILE, index)
    print(format_family(index))
    print(f"wrote {len(index['agents'])} agents and {out / FAMILY_FILE} "
          f"({index['seconds']:.0f} s)")
    return index
