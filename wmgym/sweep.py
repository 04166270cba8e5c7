"""``wmgym sweep``: does the learned twin rank policies as the real one does?

Every policy runs the same episodes in both twins: episode ``e`` resets ``Sim-<Task>-v0`` with
seed ``seed + e``, and ``WM-<Task>-v0`` starts from that very real observation
(``options["context"]``, camera images included) with the same seed; the policy is reset with
it too. A policy in Sim sees real observations, in WM imagined ones. All imagined episodes
(every policy, every seed) run as one native vector env, one sub-env per episode: each sub-env
has its own policy instance and counts until its first ``terminated | truncated`` only. When
every policy declares that it reads no camera observation (``observation_keys``), neither twin
makes camera observations after that first frame (``SweepArgs.images``): the same episodes,
faster.

Reported per policy: success rate and mean return in both twins, and two signals of the imagined
episodes that may say where imagination and reality part: the mean ``info["uncertainty"]``
(token entropy) and the episode's chance of an event outcome that differs from reality,
``1 - prod(1 - info["event_doubt"])`` over its steps. Each signal's AUROC for the episodes whose
imagined outcome differs from the real one is reported beside them. Over policies:
Pearson and Spearman correlation of the success rates, SIMPLER's MMRV (mean maximum rank
violation) and the mean absolute success gap. ``wmgym sweep`` writes them as ``sweep.json`` and
``sweep.png`` (real vs imagined success).

The real twin's episodes run in :mod:`wmgym.sweep_real`; :mod:`wmgym.sweep_report` draws the
scatter and writes the table. Policies are given as names, SB3 zip files, Python paths or
objects: see :mod:`wmgym.policy_sources`. Without any, the task's own list of graded competence
(:func:`wmgym.tasks.sweep_policies`) is ranked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from wmgym.metrics import agreement, auroc
from wmgym.policies import Policy, reads_images
from wmgym.policy_sources import PolicySource, named_policies, policy_factory
from wmgym.results import checkpoint_id, machine, resolve_task, write_result
from wmgym.spec import TaskSpec
from wmgym.sweep_real import Episodes, reset_observations, reuse_real, run_real, start_episode
from wmgym.sweep_report import format_table, plot_sweep

Preset = Literal["default", "fast", "full"]


@dataclass
class SweepArgs:
    """Options of ``wmgym sweep``."""

    task: str = ""
    """Task name, e.g. ``pick`` (empty: the task ``--checkpoint`` was trained for)."""
    policies: tuple[str, ...] = ()
    """Policies: ``<expert>[:k=v,...]``, ``random[:repeat=n]``, ``sac:path.zip``, a frozen agent
    ``agent:DIR``, a whole family ``family:DIR`` (``wmgym agents build``), ``module:attr``;
    empty: the task's default list of graded competence."""
    episodes: int = 20
    """Episodes per policy and twin (seeds ``seed .. seed + episodes - 1``, shared)."""
    seed: int = 0
    """First episode seed (env reset, policy reset, imagination sampling)."""
    max_steps: int = 0
    """Truncate episodes after this many steps (0 = the task spec's ``max_episode_steps``)."""
    checkpoint: str = ""
    """World-model checkpoint directory (default: the task spec's)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``: where the world model runs."""
    fast: Preset = "default"
    """Speed preset of ``WM-<Task>-v0``: ``default``, ``fast`` (the distilled transformer) or
    ``full`` (also the tokenizer's own frame decoder)."""
    temperature: float = 1.0
    """Token sampling temperature of the world model (0 = greedy)."""
    images: Literal["auto", "always"] = "auto"
    """Camera observations: ``auto`` leaves them out of both twins when every policy declares
    (``observation_keys``) that it reads none. The episodes are the same, faster: Sim renders
    only each episode's first frame (the world model's context) and the world model decodes no
    frames. ``always``: render and decode every step."""
    max_batch: int = 256
    """Most imagined episodes stepped together; more run as several vector envs in turn."""
    workers: int = 1
    """Processes running the Sim episodes (spawned; 1 = this process; >1 pickles the policies)."""
    real_from: str = ""
    """A ``sweep.json`` whose real-twin episodes to reuse for the policies it holds (same task,
    seeds and ``max_steps``; matched by policy name, so a name must mean the same policy):
    only the imagined side, and policies it lacks, run. For re-scoring a new checkpoint."""
    pool: tuple[str, ...] = ()
    """Run nothing: pool the episodes of these ``sweep.json`` files (the same policies,
    checkpoint and settings, other seeds) and score the pooled episodes. Twenty episodes a
    policy leave a success rate near 0.5 with a standard error of 0.11; pooled sweeps narrow
    it."""
    out: str = "runs/sweep"
    """Output directory for sweep.json and sweep.png."""
    progress: bool = True
    """Show progress bars."""


# ----------------------------------------------------------------------------- the learned twin


def _final(infos: dict[str, Any], key: str, done: np.ndarray) -> np.ndarray:
    """``infos[key]`` of every sub-env's step, the finished ones' from ``final_info``."""
    value = np.asarray(infos[key]).copy()
    if done.any():
        value[done] = np.asarray(infos["final_info"][key])[done]
    return value


def run_imagined(
    spec: TaskSpec,
    factories: Sequence[Callable[[], Policy]],
    *,
    seeds: Sequence[int],
    contexts: Sequence[dict[str, np.ndarray]],
    max_steps: int,
    progress: bool = True,
    observe: Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray], None] | None = None,
    **env_kwargs: Any,
) -> Episodes:
    """Runs one imagined episode per sub-env of one ``WM-<Task>-v0`` vector env.

    Sub-env ``i`` starts from the real observation ``contexts[i]`` with seed ``seeds[i]`` and is
    driven by its own policy ``factories[i]()``; it counts until its first ``terminated |
    truncated`` and idles (zero actions, ignored) after that, so no autoreset leaks into the
    results.

    Args:
        spec: The task.
        factories: One policy factory per sub-env.
        seeds: One seed per sub-env (env and policy).
        contexts: One real start observation per sub-env.
        max_steps: Truncate episodes after this many steps.
        progress: Show a progress bar (steps).
        observe: Called before every vector step with the observations, the actions about to
            be taken and which sub-envs are still counting (``(N,)`` bool).
        **env_kwargs: For ``gym.make_vec`` (``checkpoint``, ``device``, ``fast``, ``images``,
            ``temperature``).

    Returns:
        The episodes' outcomes, in sub-env order, with their mean uncertainty.
    """
    import gymnasium as gym

    import wmgym  # noqa: F401  (registers the envs)

    n = len(factories)
    envs = gym.make_vec(spec.wm_id, num_envs=n, vectorization_mode="vector_entry_point",
                        max_episode_steps=max_steps, **env_kwargs)
    policies = [make() for make in factories]
    for policy, seed in zip(policies, seeds):
        start_episode(policy, int(seed))
    stacked = {k: np.stack([c[k] for c in contexts]) for k in contexts[0]}
    obs, _ = envs.reset(seed=[int(s) for s in seeds], options={"context": stacked})
    active = np.ones(n, dtype=bool)
    out = Episodes(np.zeros(n, bool), np.zeros(n), np.zeros(n, np.int64), np.zeros(n),
                   np.zeros(n))
    agree = np.ones(n)  # chance that every event so far ends as in reality
    actions = np.zeros(envs.action_space.shape, dtype=np.float32)
    bar = tqdm(total=max_steps, desc=f"{spec.wm_id} steps ({n} envs)", disable=not progress)
    while active.any():
        actions[:] = 0.0
        for i in np.flatnonzero(active):
            actions[i] = policies[i]({k: v[i] for k, v in obs.items()})
        if observe is not None:
            observe(obs, actions, active)
        obs, reward, terminated, truncated, infos = envs.step(actions)
        done = terminated | truncated
        out.success[active] |= _final(infos, "success", done).astype(bool)[active]
        out.uncertainty[active] += _final(infos, "uncertainty", done).astype(float)[active]
        agree[active] *= 1.0 - _final(infos, "event_doubt", done).astype(float)[active]
        out.ret[active] += reward[active]
        out.length[active] += 1
        active &= ~done
        bar.update()
    bar.close()
    envs.close()
    out.uncertainty[:] /= np.maximum(out.length, 1)
    out.doubt[:] = 1.0 - agree
    return out


# ----------------------------------------------------------------------------- the sweep


def _summary(episodes: Episodes, rows: np.ndarray) -> dict[str, Any]:
    out = {
        "success": round(float(episodes.success[rows].mean()), 4),
        "return": round(float(episodes.ret[rows].mean()), 4),
        "length": round(float(episodes.length[rows].mean()), 2),
        "per_episode": {
            "success": episodes.success[rows].tolist(),
            "return": [round(float(x), 4) for x in episodes.ret[rows]],
            "length": [int(x) for x in episodes.length[rows]],
        },
    }
    for key, values in (("uncertainty", episodes.uncertainty), ("doubt", episodes.doubt)):
        if values is not None:
            out[key] = round(float(values[rows].mean()), 4)
            out["per_episode"][key] = [round(float(x), 4) for x in values[rows]]
    return out


def _compare(
    names: Sequence[str], real: Episodes, imagined: Episodes, episodes: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-policy summaries (rows of ``episodes`` in policy order) and the agreement metrics."""
    rows = np.arange(len(names) * episodes).reshape(len(names), episodes)
    per_policy = []
    for name, r in zip(names, rows):
        p = {"name": name, "real": _summary(real, r), "imagined": _summary(imagined, r)}
        p["success_gap"] = round(p["imagined"]["success"] - p["real"]["success"], 4)
        per_policy.append(p)
    metrics: dict[str, Any] = {}
    for key in ("success", "return"):
        r_, s_ = ([p[twin][key] for p in per_policy] for twin in ("real", "imagined"))
        metrics[key] = agreement(r_, s_) if len(per_policy) >= 2 else None
    if imagined.uncertainty is not None:  # does it flag the episodes whose outcome differs?
        parted = real.success[rows.ravel()] != imagined.success[rows.ravel()]
        metrics["uncertainty_auroc"] = auroc(imagined.uncertainty[rows.ravel()], parted)
        if imagined.doubt is not None:
            metrics["doubt_auroc"] = auroc(imagined.doubt[rows.ravel()], parted)
        metrics["parted_episodes"] = int(parted.sum())
    return per_policy, metrics


def _imagine_all(
    spec: TaskSpec,
    jobs: Sequence[tuple[Callable[[], Policy], int]],
    first_obs: Sequence[dict[str, np.ndarray]],
    *,
    max_steps: int,
    args: SweepArgs,
    checkpoint: Path,
    images: bool,
) -> Episodes:
    """Every job as one imagined episode, ``max_batch`` sub-envs per vector env at most."""
    env_kwargs: dict[str, Any] = {"checkpoint": checkpoint, "device": args.device,
                                  "fast": args.fast, "temperature": args.temperature,
                                  "images": images}
    size = max(args.max_batch, 1)
    chunks = []
    for lo in range(0, len(jobs), size):
        part = jobs[lo : lo + size]
        chunks.append(run_imagined(
            spec, [make for make, _ in part], seeds=[s for _, s in part],
            contexts=first_obs[lo : lo + size], max_steps=max_steps, progress=args.progress,
            **env_kwargs))
    return Episodes(*(np.concatenate(parts) for parts in zip(*chunks)))


def _real_side(
    spec: TaskSpec,
    names: list[str],
    factories: list[Callable[[], Policy]],
    *,
    seeds: list[int],
    max_steps: int,
    args: SweepArgs,
    images: bool,
) -> tuple[Episodes, list[dict[str, np.ndarray]]]:
    """Real episodes of every policy and the first observation of every job, policy-major.

    Policies that ``args.real_from`` holds are reused from it, the others run in Sim.
    """
    reused = (reuse_real(args.real_from, names, task=spec.name, seeds=seeds,
                         max_steps=max_steps) if args.real_from else {})
    todo = [i for i, name in enumerate(names) if name not in reused]
    jobs = [(factories[i], s) for i in todo for s in seeds]
    if jobs:
        ran, first = run_real(spec, jobs, max_steps=max_steps, workers=args.workers,
                              progress=args.progress, images=images)
    else:
        ran, first = None, reset_observations(spec, seeds)
    parts, at = [], 0
    for name in names:
        if name in reused:
            parts.append(reused[name])
        else:
            assert ran is not None
            parts.append(Episodes(*(x[at:at + len(seeds)] for x in ran[:3])))
            at += len(seeds)
    per_seed = first[:len(seeds)]  # a reset's observation depends on its seed alone
    return (Episodes(*(np.concatenate(x) for x in zip(*(p[:3] for p in parts)))),
            [obs for _ in names for obs in per_seed])


def run_sweep(
    policies: Mapping[str, PolicySource] | Iterable[PolicySource] | None, args: SweepArgs
) -> dict[str, Any]:
    """Evaluates policies in both twins on shared seeds and compares the two rankings.

    >>> result = run_sweep(None, SweepArgs(task="pick", episodes=20))  # doctest: +SKIP
    >>> result["metrics"]["success"]["spearman"]  # doctest: +SKIP

    Args:
        policies: Policies to evaluate, by display name (a dict) or as a list (named by their
            spec string or ``__name__``); see the module doc for what a policy can be. None:
            ``args.policies``, or the task's default list when that is empty.
        args: Task, episodes, seeds, checkpoint and the other options.

    Returns:
        The result: per policy ``real`` and ``imagined`` success rate, mean return and length
        (and the imagined mean uncertainty); ``metrics`` over policies (``success`` and
        ``return``: Pearson, Spearman, MMRV, mean absolute gap; None with fewer than two
        policies); seconds spent per twin; the settings and machine.

    Raises:
        ValueError: No task, no policies, an unknown policy, or ``episodes < 1``.
        CheckpointError: The checkpoint is missing or unfit (checked before any episode runs).
    """
    from wmgym.env.loading import load_checkpoint
    from wmgym.tasks import sweep_policies

    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    if args.episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {args.episodes}")
    if policies is None:
        policies = args.policies or sweep_policies(spec)
    named = named_policies(policies)
    factories = [policy_factory(src, task=spec) for src in named.values()]
    load_checkpoint(checkpoint, spec, args.device)  # fail fast
    max_steps = args.max_steps or spec.max_episode_steps
    seeds = [args.seed + e for e in range(args.episodes)]
    jobs = [(make, s) for make in factories for s in seeds]  # policy-major order
    images = args.images == "always" or any(reads_images(make()) for make in factories)
    start = time.perf_counter()
    real, first_obs = _real_side(spec, list(named), factories, seeds=seeds, max_steps=max_steps,
                                 args=args, images=images)
    sim_seconds = time.perf_counter() - start
    imagined = _imagine_all(spec, jobs, first_obs, max_steps=max_steps, args=args,
                            checkpoint=checkpoint, images=images)
    wm_seconds = time.perf_counter() - start - sim_seconds
    per_policy, metrics = _compare(list(named), real, imagined, args.episodes)
    return {
        "task": spec.name,
        "sim_env": spec.sim_id,
        "wm_env": spec.wm_id,
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": checkpoint_id(checkpoint)["sha256"],
        "fast": args.fast,
        "episodes": args.episodes,
        "seeds": seeds,
        "max_steps": max_steps,
        "temperature": args.temperature,
        "images": images,
        "policies": per_policy,
        "metrics": metrics,
        "seconds": {"sim": round(sim_seconds, 1), "wm": round(wm_seconds, 1)},
        "real_from": args.real_from or None,
        "machine": machine(),
    }


#: Settings pooled sweeps must share: the same policies scored the same way.
POOLED_ALIKE = ("task", "checkpoint_sha256", "fast", "max_steps", "temperature", "images")


def pool_sweeps(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One sweep result from the episodes of several, on other seeds, scored together.

    Args:
        paths: ``sweep.json`` files of the same policies (names, in order), checkpoint
            (sha256) and settings (:data:`POOLED_ALIKE`), no seed in two of them.

    Returns:
        A result like :func:`run_sweep`'s: per-policy rates and metrics over every episode,
        ``seeds`` all of them, ``pooled_from`` the files and ``seconds`` their sums.

    Raises:
        ValueError: Fewer than two files, or files that differ in policies, settings or share
            seeds; the message names the file and the field.
    """
    if len(paths) < 2:
        raise ValueError(f"pooling needs at least two sweep.json files, got {len(paths)}")
    results = [json.loads(Path(p).read_text()) for p in paths]
    first, names = results[0], [p["name"] for p in results[0]["policies"]]
    seen: set[int] = set()
    for path, r in zip(paths, results):
        for key in POOLED_ALIKE:
            if r.get(key) != first.get(key):
                raise ValueError(f"{path}: {key} is {r.get(key)!r}, {paths[0]} has "
                                 f"{first.get(key)!r}: only sweeps run alike pool")
        if [p["name"] for p in r["policies"]] != names:
            raise ValueError(f"{path}: policies {[p['name'] for p in r['policies']]} differ "
                             f"from {paths[0]}'s {names}")
        if seen & set(r["seeds"]):
            raise ValueError(f"{path}: seeds {sorted(seen & set(r['seeds']))} are in another "
                             "file: pooled episodes must be other episodes")
        seen |= set(r["seeds"])

    def twin(key: str) -> Episodes:
        per = [r["policies"][i][key]["per_episode"] for i in range(len(names)) for r in results]
        fields = ["success", "return", "length"]
        for signal in ("uncertainty", "doubt"):  # in order: Episodes' fields
            if all(signal in e for e in per):
                fields.append(signal)
            else:
                break
        return Episodes(*(np.concatenate([np.asarray(e[f]) for e in per]) for f in fields))

    episodes = sum(r["episodes"] for r in results)
    per_policy, metrics = _compare(names, twin("real"), twin("imagined"), episodes)
    seconds = {k: round(sum(r["seconds"][k] for r in results), 1) for k in ("sim", "wm")}
    return {**{k: first[k] for k in ("sim_env", "wm_env", "checkpoint")},
            **{k: first.get(k) for k in POOLED_ALIKE}, "episodes": episodes,
            "seeds": [s for r in results for s in r["seeds"]], "policies": per_policy,
            "metrics": metrics, "seconds": seconds, "pooled_from": [str(p) for p in paths],
            "machine": machine()}


def sweep_main(
    args: SweepArgs, policies: Mapping[str, PolicySource] | Iterable[PolicySource] | None = None
) -> dict[str, Any]:
    """``wmgym sweep``: run (or pool) the sweep, print the table, write the JSON and the plot.

    Args:
        args: The options.
        policies: Policies to use instead of ``args.policies`` (objects allowed, see above).

    Returns:
        The result written to ``<out>/sweep.json``.
    """
    result = pool_sweeps(args.pool) if args.pool else run_sweep(policies, args)
    out = Path(args.out)
    result["plot"] = str(plot_sweep(result, out / "sweep.png"))
    write_result(out / "sweep.json", result)
    print(format_table(result))
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return result
