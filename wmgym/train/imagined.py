"""Rollouts a checkpoint imagines for itself: the data its distilled parts are trained on.

The fast decoder and the fast dynamics learn to reproduce what a checkpoint's own decoder and
transformer do on the inputs an env gives them. Those inputs are the checkpoint's own imagined
rollouts from its bank of real starts, acted by scripted and random policies; no dataset is
needed. :func:`imagine` records everything either student needs.
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

from wmgym.env.core import Imagination
from wmgym.model.checkpoint import atomic_write
from wmgym.model.frames import obs_to_frames
from wmgym.policies import make_policy
from wmgym.spec import IMAGE_KEYS

#: Policies that act the distillation rollouts, one per rollout in turn (``make_policy`` names).
POLICIES = (
    "pick", "pick:error=0.02", "pick:error=0.04,noise=0.2", "pick:noise=0.3",
    "pick:explore=0.1", "pick:hesitate=1", "pick:hover=1", "pick:gain=0.35,pause=0.05",
    "pick:drop_prob=1", "pick:give_up_prob=1", "random", "random:repeat=4",
)


#: The fields of :class:`ImaginedRollouts`, in order (also the tensors of a rollouts file).
FIELDS = ("frames", "ctx_tokens", "tokens", "actions", "states", "grasp")


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
    grasp: Tensor
    """``(R, T)`` long: the grasp latent on each frame's slot (all 0 for a model without one,
    :mod:`wmgym.model.grasp_latent`)."""

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def first(self, n: int, steps: int) -> ImaginedRollouts:
        """The first ``n`` rollouts, cut to their first ``steps`` steps."""
        return ImaginedRollouts(self.frames[:n], self.ctx_tokens[:n], self.tokens[:n, :steps],
                                self.actions[:n, :steps], self.states[:n, : steps + 1],
                                self.grasp[:n, :steps])

    @staticmethod
    def cat(parts: list[ImaginedRollouts]) -> ImaginedRollouts:
        """The rollouts of ``parts``, in order."""
        return ImaginedRollouts(*(torch.cat([getattr(p, f) for p in parts]) for f in FIELDS))


@torch.no_grad()
def imagine(core: Imagination, policies: tuple[str, ...], horizon: int,
            seed: int) -> ImaginedRollouts:
    """Runs ``core``'s rollouts for ``horizon`` steps, acted by ``policies`` in turn.

    Rollout ``i`` starts from a start drawn with ``seed`` and is acted by
    ``policies[i % len(policies)]``, seeded ``seed * 100_003 + i``.
    """
    rng = np.random.default_rng(seed)
    starts = [core.draw_start(rng) for _ in range(core.num_envs)]
    core.reset(starts)
    dyn = core.model.dynamics
    actors = [make_policy(policies[i % len(policies)]) for i in range(core.num_envs)]
    for i, actor in enumerate(actors):
        actor.reset(seed=seed * 100_003 + i)
    low, high = core.action_space.low, core.action_space.high
    start_state = torch.as_tensor(np.stack([s.obs["state"] for s in starts]), dtype=torch.float32)
    tokens, actions, states, grasp = [], [], [start_state], []
    for _ in tqdm(range(horizon), desc="imagine"):
        obs = core.obs
        act = np.stack([a({k: v[i] for k, v in obs.items()}) for i, a in enumerate(actors)])
        act = np.clip(act, low, high).astype(np.float32)
        core.step(act)
        tokens.append(torch.as_tensor(core.tokens))
        actions.append(torch.as_tensor(act))
        cache = core.state.cache
        grasp.append(cache.grasp.cpu())
        states.append((cache.state * dyn.state_std + dyn.state_mean).cpu()
                      if dyn.state_proj is not None else torch.as_tensor(core.obs["state"]))
    rgb, depth, mask = (torch.as_tensor(np.stack([s.context[k] for s in starts]))
                        for k in IMAGE_KEYS)
    return ImaginedRollouts(obs_to_frames(rgb, depth, mask, core.task.depth_range),
                            core.state.ctx.tokens.cpu(), torch.stack(tokens, 1),
                            torch.stack(actions, 1), torch.stack(states, 1),
                            torch.stack(grasp, 1))


def save_rollouts(rollouts: ImaginedRollouts, path: str | Path,
                  meta: dict[str, str] | None = None) -> Path:
    """Writes ``rollouts`` to a safetensors file atomically (tokens and grasp latent as int16).

    ``meta`` (strings: how and from what they were imagined) is kept in the file's metadata.
    """
    tensors = {f: getattr(rollouts, f) for f in FIELDS}
    for f in ("ctx_tokens", "tokens", "grasp"):
        tensors[f] = tensors[f].to(torch.int16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()},
                                             str(tmp), metadata=meta or {}))
    return path


def load_rollouts(path: str | Path) -> tuple[ImaginedRollouts, dict[str, str]]:
    """Reads a file of :func:`save_rollouts`: the rollouts and their metadata."""
    t = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    t["ctx_tokens"], t["tokens"] = t["ctx_tokens"].long(), t["tokens"].long()
    if "grasp" not in t:  # written before the grasp latent: a model without one
        t["grasp"] = torch.zeros(t["tokens"].shape[:2], dtype=torch.long)
    t["grasp"] = t["grasp"].long()
    return ImaginedRollouts(*(t[f] for f in FIELDS)), meta


def imagine_many(task: str, checkpoint: str | Path, rollouts: int, horizon: int,
                 policies: tuple[str, ...], seed: int, device: torch.device,
                 batch: int = 256, dynamics: str = "full") -> ImaginedRollouts:
    """``rollouts`` rollouts of ``horizon`` steps, imagined ``batch`` at a time (images off).

    Batch ``k`` is :func:`imagine` with seed ``seed + k``; ``dynamics`` picks the checkpoint's
    transformer (``full`` or its distilled ``fast`` one).
    """
    parts = []
    for k, lo in enumerate(range(0, rollouts, batch)):
        core = Imagination(task, min(batch, rollouts - lo), checkpoint, device, images=False,
                           dynamics=dynamics)
        parts.append(imagine(core, policies, horizon, seed + k))
        core.close()
    return ImaginedRollouts.cat(parts)
