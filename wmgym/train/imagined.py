"""Rollouts a checkpoint imagines for itself: the data its distilled parts are trained on.

The fast decoder and the fast dynamics learn to reproduce what a checkpoint's own decoder and
transformer do on the inputs an env gives them. Those inputs are the checkpoint's own imagined
rollouts from its bank of real starts, acted by scripted and random policies; no dataset is
needed. :func:`imagine` runs them through the model layer (:class:`~wmgym.model.world_model.
WorldModel`) and records everything either student needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from wmgym.model.checkpoint import atomic_write, load_start_obs
from wmgym.model.frames import obs_to_frames
from wmgym.model.world_model import WorldModel
from wmgym.policies import make_policy, reads_images
from wmgym.spec import TaskSpec

#: The fields of :class:`ImaginedRollouts`, in order (also the tensors of a rollouts file).
FIELDS = ("frames", "ctx_tokens", "tokens", "actions", "states", "event")


def distill_policies(task: TaskSpec) -> tuple[str, ...]:
    """The policies acting distillation rollouts by default (random play without any).

    A task module (:mod:`wmgym.tasks`) names them as ``DISTILL_POLICIES``.
    """
    from wmgym.tasks import task_module

    return tuple(getattr(task_module(task), "DISTILL_POLICIES", ("random", "random:repeat=4")))


@dataclass
class ImaginedRollouts:
    """``R`` imagined rollouts of ``T`` steps, on the CPU."""

    frames: Tensor
    """``(R, 5, H, W)`` the real context frames they started from."""
    ctx_tokens: Tensor
    """``(R, Nc)`` long: the context's tokens."""
    tokens: Tensor
    """``(R, T, n)`` long: every imagined frame's tokens."""
    actions: Tensor
    """``(R, T, action_dim)``: the action that led to each frame."""
    states: Tensor
    """``(R, T + 1, state_dim)`` real units: the state input of each frame's slot (index 0:
    the start's real state; ``t + 1``: the state the model read from frame ``t``, unclipped)."""
    event: Tensor
    """``(R, T)`` long: the event latent on each frame's slot (all 0 for a model without one,
    :mod:`wmgym.model.event_latent`)."""

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def first(self, n: int, steps: int) -> ImaginedRollouts:
        """The first ``n`` rollouts, cut to their first ``steps`` steps."""
        return ImaginedRollouts(self.frames[:n], self.ctx_tokens[:n], self.tokens[:n, :steps],
                                self.actions[:n, :steps], self.states[:n, : steps + 1],
                                self.event[:n, :steps])

    @staticmethod
    def cat(parts: list[ImaginedRollouts]) -> ImaginedRollouts:
        """The rollouts of ``parts``, in order."""
        return ImaginedRollouts(*(torch.cat([getattr(p, f) for p in parts]) for f in FIELDS))


def _observation(state: np.ndarray, task: TaskSpec) -> dict[str, np.ndarray]:
    """The state-only observation of imagined states ``(state_dim,)``, clipped to the space."""
    space = task.observation_space(images=False)["state"]
    state = np.clip(state, space.low, space.high).astype(np.float32)
    obs = {"state": state}
    if task.proprio_fields:
        obs["proprio"] = task.proprio(state)
    return obs


@torch.no_grad()
def imagine(model: WorldModel, task: TaskSpec, bank: dict[str, np.ndarray], *, n: int,
            policies: tuple[str, ...], horizon: int, seed: int) -> ImaginedRollouts:
    """Imagines ``n`` rollouts of ``horizon`` steps (no frames decoded), acted by ``policies``.

    Rollout ``i`` starts from the bank observation drawn ``i``-th by ``seed`` (its generator's
    seed drawn right after) and is acted by ``policies[i % len(policies)]``, reset with seed
    ``seed * 100_003 + i``. Policies read ``state`` (and ``proprio``), not images.

    Args:
        model: The world model to imagine with.
        task: Its task (spaces, policies' action size).
        bank: Real start observations ``{key: (N, ...)}`` (the checkpoint's bank).
        n: Rollouts.
        policies: :func:`~wmgym.policies.make_policy` names.
        horizon: Steps per rollout.
        seed: Seeds the starts, the rollouts' generators and the policies.

    Raises:
        ValueError: A policy that reads camera observations.
    """
    rng = np.random.default_rng(seed)
    picks, seeds = [], []
    for _ in range(n):
        picks.append(int(rng.integers(len(bank["state"]))))
        seeds.append(int(rng.integers(2**63)))
    actors = [make_policy(policies[i % len(policies)], task=task) for i in range(n)]
    for i, actor in enumerate(actors):
        if reads_images(actor):
            raise ValueError(f"policy {policies[i % len(policies)]!r} reads images; imagined "
                             "distillation rollouts give policies the state only")
        actor.reset(seed=seed * 100_003 + i)
    device = model.device
    frames = obs_to_frames(*(torch.as_tensor(bank[k][picks]) for k in ("rgb", "depth", "mask")),
                           task.depth_range)
    start_state = torch.as_tensor(bank["state"][picks], dtype=torch.float32)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    rollout = model.reset(frames.to(device), generators=gens, states=start_state)
    dyn = model.dynamics
    space = task.action_space()
    obs = [_observation(s, task) for s in start_state.numpy()]
    tokens, actions, states, event = [], [], [start_state], []
    for _ in tqdm(range(horizon), desc="imagine"):
        act = np.stack([a(o) for a, o in zip(actors, obs)])
        act = np.clip(act, space.low, space.high).astype(np.float32)
        out, rollout = model.step(rollout, torch.as_tensor(act), decode=False)
        cache = rollout.cache
        tokens.append(out.tokens.cpu())
        actions.append(torch.as_tensor(act))
        event.append(cache.event.cpu())
        states.append((cache.state * dyn.state_std + dyn.state_mean).cpu()
                      if dyn.state_proj is not None else out.state.float().cpu())
        obs = [_observation(s, task) for s in out.state.float().cpu().numpy()]
    return ImaginedRollouts(frames, rollout.ctx.tokens.cpu(), torch.stack(tokens, 1),
                            torch.stack(actions, 1), torch.stack(states, 1),
                            torch.stack(event, 1))


def save_rollouts(rollouts: ImaginedRollouts, path: str | Path,
                  meta: dict[str, str] | None = None) -> Path:
    """Writes ``rollouts`` to a safetensors file atomically (tokens and event latent as int16).

    ``meta`` (strings: how and from what they were imagined) is kept in the file's metadata.
    """
    tensors = {f: getattr(rollouts, f) for f in FIELDS}
    for f in ("ctx_tokens", "tokens", "event"):
        tensors[f] = tensors[f].to(torch.int16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()},
                                             str(tmp), metadata=meta or {}))
    return path


def load_rollouts(path: str | Path) -> tuple[ImaginedRollouts, dict[str, str]]:
    """Reads a file of :func:`save_rollouts`: the rollouts and their metadata.

    Raises:
        KeyError: The file lacks one of :data:`FIELDS`.
    """
    t = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    missing = [f for f in FIELDS if f not in t]
    if missing:
        raise KeyError(f"{path}: no tensors {missing}")
    for f in ("ctx_tokens", "tokens", "event"):
        t[f] = t[f].long()
    return ImaginedRollouts(*(t[f] for f in FIELDS)), meta


def imagine_many(checkpoint: str | Path, *, task: TaskSpec, rollouts: int, horizon: int,
                 policies: tuple[str, ...], seed: int, device: torch.device | str,
                 batch: int = 256, dynamics: str = "full") -> ImaginedRollouts:
    """``rollouts`` rollouts of ``horizon`` steps from ``checkpoint``'s bank, ``batch`` at a time.

    Batch ``k`` is :func:`imagine` with seed ``seed + k``; ``dynamics`` picks the checkpoint's
    transformer (``full`` or its distilled ``fast`` one).
    """
    model = WorldModel.load(checkpoint, device, dynamics=dynamics).requires_grad_(False)
    bank = load_start_obs(checkpoint)
    parts = [imagine(model, task, bank, n=min(batch, rollouts - lo), policies=policies,
                     horizon=horizon, seed=seed + k)
             for k, lo in enumerate(range(0, rollouts, batch))]
    return ImaginedRollouts.cat(parts)
