"""Refit the fast transformer's event (grasp) head on the states it reaches in imagination.

    python research/grasp_calibration.py --checkpoint checkpoints/WM-Pick-v0 \
        --out runs/grasp_calibration

The event head (:mod:`wmgym.model.event_latent`) is fitted on real states, but in imagination
it reads the model's own state where an event (a grasp) begins, and a closed loop bends that
state: a policy that aims 2 cm beside the cube ends its approach 2.4 cm off in robosuite and
about 1.9 cm off in imagination (seeds 1000-1039 of ``pick:error=0.02``), so the head, right
about the real offset, lifts the cube too often.

This refits the head on the states it is actually given. Every real episode of the data is run
again in imagination, closed loop: from its first real frame, by its own policy reset with its
own seed (so with the same aim), ``samples`` times. Where the imagined run begins its first
event (``run`` triggering commands in a row, ``DynamicsConfig.event``), the imagined state is
paired with how the *real* episode's first event ended
(:func:`~wmgym.model.event_latent.event_labels`); the head is fitted on those pairs
(:func:`~wmgym.train.event_head.fit_event_head`, a fifth of the episodes held out first).
Nothing else of the transformer changes. The result is written into
``<checkpoint>/fast_dynamics`` with its report (``grasp_calibration`` in its ``config.json``)
beside the distillation's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from wmgym.data.dataset import Episode, read_dataset
from wmgym.model.event_latent import SUCCESS, EventConfig, event_labels, triggered
from wmgym.model.fast_dynamics import (
    fast_dynamics_records,
    load_fast_dynamics,
    save_fast_dynamics,
)
from wmgym.model.transformer import DynamicsTransformer
from wmgym.policies import make_policy
from wmgym.results import machine
from wmgym.spec import TaskSpec, load_spec
from wmgym.sweep import run_imagined
from wmgym.train.event_head import fit_event_head


@dataclass
class GraspCalibrationArgs:
    """Options of ``research/grasp_calibration.py``."""

    checkpoint: str = "checkpoints/WM-Pick-v0"
    """World-model checkpoint whose fast transformer's event head is refitted."""
    task: str = "pick"
    """Task spec of the checkpoint."""
    data: tuple[str, ...] = ("data/pick_nearmiss", "data/pick_miss", "data/pick")
    """Datasets whose episodes are run again (their policy and seed are recorded)."""
    split: str = "train"
    """Split of each dataset."""
    episodes: int = 0
    """At most this many episodes of each dataset (0: all)."""
    samples: int = 4
    """Imagined runs of each episode (other sampling seeds)."""
    max_steps: int = 100
    """Steps imagined per run."""
    batch: int = 512
    """Imagined runs at once (one vector env)."""
    steps: int = 1500
    """Full-batch Adam steps of the head's fit."""
    seed: int = 0
    """Seeds the sampling and the held-out split."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    out: str = "runs/grasp_calibration"
    """Where the imagined event starts are kept (``draws.npz``: states, outcomes, episodes)."""


class _Replay:
    """A recorded episode's policy, reset with the episode's seed whatever seed it is given."""

    def __init__(self, name: str, seed: int, spec: TaskSpec) -> None:
        self.policy, self.seed = make_policy(name, task=spec), seed

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed=self.seed)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.policy(obs)


def first_event(episode: Episode, cfg: EventConfig) -> tuple[int, bool] | None:
    """An episode's first labelled event: ``(step where its bit is drawn, succeeded)``, or None."""
    outcome = episode.observations["state"][:, cfg.outcome]
    latent, starts = event_labels(episode.actions, outcome, cfg)
    at = np.flatnonzero(starts)
    return (int(at[0]), bool(latent[at[0]] == SUCCESS)) if len(at) else None


class _FirstDraw:
    """Records each sub-env's state where its first event begins (``observe`` of the loop)."""

    def __init__(self, n: int, cfg: EventConfig) -> None:
        self.cfg = cfg
        self.run = np.zeros(n, np.int64)
        self.state: list[np.ndarray | None] = [None] * n

    def __call__(self, obs: dict[str, np.ndarray], actions: np.ndarray,
                 active: np.ndarray) -> None:
        on = np.asarray(triggered(actions, self.cfg.trigger)) & active
        self.run = np.where(on, self.run + 1, 0)
        for i in np.flatnonzero(self.run == self.cfg.run):
            if self.state[i] is None:
                self.state[i] = obs["state"][i].copy()


def imagined_draws(spec: TaskSpec, cfg: EventConfig, checkpoint: str,
                   episodes: Sequence[Episode], samples: int, max_steps: int, batch: int,
                   seed: int, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imagined states where the replayed episodes' first events begin, with real outcomes.

    Returns:
        ``states (G, state_dim)`` imagined, ``held (G,)`` float: 1 where the real episode's
        first event succeeded, ``groups (G,)``: the episode each came from. Runs with no
        imagined event and episodes with no real one give none.
    """
    events = [first_event(e, cfg) for e in episodes]
    runs = [(i, k) for k in range(samples) for i, ev in enumerate(events) if ev is not None]
    states, held, groups = [], [], []
    for lo in range(0, len(runs), batch):
        chunk = runs[lo:lo + batch]
        eps = [episodes[i] for i, _ in chunk]
        factories = [lambda e=e: _Replay(e.policy, int(e.seed), spec) for e in eps]
        seeds = [seed * 1_000_003 + k * 100_003 + int(e.seed) for e, (_, k) in zip(eps, chunk)]
        contexts = [{key: v[0] for key, v in e.observations.items()} for e in eps]
        draws = _FirstDraw(len(chunk), cfg)
        run_imagined(spec, factories, seeds=seeds, contexts=contexts, max_steps=max_steps,
                     progress=True, observe=draws, checkpoint=checkpoint, device=device,
                     images=False, fast=True, terminate_on_success=False)
        for (i, _), state in zip(chunk, draws.state):
            if state is not None:
                states.append(state)
                held.append(float(events[i][1]))
                groups.append(i)
    if not states:
        raise ValueError(f"no imagined event began in {len(runs)} runs of {len(episodes)} "
                         f"episodes ({sum(ev is not None for ev in events)} with a real one)")
    return np.stack(states), np.array(held, np.float32), np.array(groups)


@torch.no_grad()
def head_scores(model: DynamicsTransformer, states: torch.Tensor, held: torch.Tensor,
                names: Sequence[str]) -> dict:
    """The head's accuracy (0.5 threshold), log loss and mean probability on raw states.

    Also the mean probability and real outcome per policy (``names``: one per state), under
    ``policies``.
    """
    logits = model.event_logit(model.normalize_state(states)).float()
    p, names = torch.sigmoid(logits), np.asarray(names)
    per_policy = {}
    for name in sorted(set(names)):
        at = torch.from_numpy(names == name)
        per_policy[name] = {"draws": int(at.sum()), "real_held": round(float(held[at].mean()), 3),
                            "mean_p_hold": round(float(p[at].mean()), 3)}
    return {"accuracy": round(float(((logits > 0).float() == held).float().mean()), 4),
            "log_loss": round(float(F.binary_cross_entropy_with_logits(logits, held)), 4),
            "mean_p_hold": round(float(p.mean()), 4), "real_held": round(float(held.mean()), 4),
            "policies": per_policy}


def calibrate_grasp_head(args: GraspCalibrationArgs) -> dict:
    """Refits the fast transformer's event head on its own states; returns the report."""
    spec = load_spec(args.task)
    student = load_fast_dynamics(args.checkpoint)
    if student.event_head is None:
        raise ValueError(f"{args.checkpoint}'s fast transformer has no event latent "
                         "(DynamicsConfig.event): nothing to calibrate")
    cfg = EventConfig.from_dict(student.cfg.event)
    if spec.event is not None and EventConfig.from_dict(spec.event.as_config()) != cfg:
        print(f"note: the checkpoint's event {cfg.as_config()} differs from task {spec.name}'s "
              f"{spec.event.as_config()}; the checkpoint's is used")
    start = time.perf_counter()
    episodes = []
    for path in args.data:
        for n, episode in enumerate(read_dataset(path, args.split)):
            if args.episodes and n >= args.episodes:
                break
            episodes.append(episode)
    states, held, groups = imagined_draws(spec, cfg, args.checkpoint, episodes, args.samples,
                                          args.max_steps, args.batch, args.seed, args.device)
    imagine_seconds = time.perf_counter() - start
    names = [episodes[i].policy for i in groups]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "draws.npz", states=states, held=held, episode=groups, policy=names)
    x, y = torch.from_numpy(states).float(), torch.from_numpy(held)
    before = head_scores(student, x, y, names)
    student.event_head.requires_grad_(True)
    fit = fit_event_head(student, x, y, noise=0.0, steps=args.steps, copies=1, seed=args.seed,
                         groups=torch.from_numpy(groups))
    report = {"args": asdict(args), "episodes": len(episodes), "draws": len(held),
              "before": before, "after": head_scores(student, x, y, names), "fit": fit,
              "imagine_seconds": round(imagine_seconds, 1), "machine": machine()}
    save_fast_dynamics(args.checkpoint, student.requires_grad_(False),
                       {**fast_dynamics_records(args.checkpoint), "grasp_calibration": report})
    print(f"event head on {len(held)} imagined event starts of {len(episodes)} episodes "
          f"(real held {before['real_held']}): accuracy {before['accuracy']} -> "
          f"{report['after']['accuracy']}, mean p(hold) {before['mean_p_hold']} -> "
          f"{report['after']['mean_p_hold']}; held-out accuracy {fit['heldout_accuracy']}")
    return report


if __name__ == "__main__":
    calibrate_grasp_head(tyro.cli(GraspCalibrationArgs))
