"""Training data in memory: episodes as model frames, and the samplers of both stages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from wmgym.data.dataset import Episode, read_dataset
from wmgym.model.frames import obs_to_frames


@dataclass
class EpisodeTensors:
    """One episode as tensors: ``T + 1`` frames and the ``T`` transitions between them."""

    frames: Tensor  # (T + 1, 5, H, W) float16
    actions: Tensor  # (T, action_dim)
    rewards: Tensor  # (T,)
    success: Tensor  # (T,) float
    state: Tensor  # (T + 1, state_dim)
    event: Tensor | None = None  # (T,) long: the event latent (event_latent.event_labels)
    event_start: int | None = None  # the first event's first triggering command, if any

    def __len__(self) -> int:
        return len(self.actions)


def episode_frames(ep: Episode, depth_range) -> Tensor:
    """An episode's observations as float frames ``(T + 1, 5, H, W)``."""
    o = ep.observations
    return obs_to_frames(
        torch.from_numpy(o["rgb"]), torch.from_numpy(o["depth"]), torch.from_numpy(o["mask"]),
        depth_range,
    )


def load_episodes(path: str, split: str, depth_range) -> list[EpisodeTensors]:
    """Reads a dataset split into memory as compact tensors."""
    out = []
    for ep in read_dataset(path, split):
        out.append(
            EpisodeTensors(
                frames=episode_frames(ep, depth_range).half(),
                actions=torch.from_numpy(ep.actions).float(),
                rewards=torch.from_numpy(ep.rewards).float(),
                success=torch.from_numpy(ep.success).float(),
                state=torch.from_numpy(ep.observations["state"]).float(),
            )
        )
    if not out:
        raise ValueError(f"{path}: split {split!r} holds no episodes")
    return out


def sample_frame_pairs(
    episodes: list[EpisodeTensors], batch: int, rng: np.random.Generator, n_future: int = 1,
) -> tuple[Tensor, Tensor]:
    """(context, future) frame pairs from the same episodes, for the tokenizer.

    The context is the episode's first frame half of the time (as when imagining from a reset)
    and a random frame otherwise; the futures lie anywhere after it, as in long rollouts.

    Returns:
        ``ctx (B, 5, H, W)`` and ``fut (B, n_future, 5, H, W)`` float32.
    """
    ctx, fut = [], []
    for _ in range(batch):
        ep = episodes[rng.integers(len(episodes))]
        n = len(ep)
        c = 0 if rng.random() < 0.5 else int(rng.integers(0, n))
        t = rng.integers(c + 1, n + 1, size=n_future)
        ctx.append(ep.frames[c])
        fut.append(ep.frames[torch.from_numpy(t)])
    return torch.stack(ctx).float(), torch.stack(fut).float()


@dataclass
class TokenizedEpisode:
    """An episode's tokens for each of a few context choices."""

    ctx_index: list[int]  # context frame indices
    ctx_tokens: Tensor  # (C, Nc) long
    frame_tokens: list[Tensor]  # per context c: (T - c, n) tokens of frames c+1..T
    source: EpisodeTensors


@torch.no_grad()
def tokenize_episodes(
    tokenizer, episodes: list[EpisodeTensors], ctx_stride: int, device, batch: int = 256,
    progress: bool = True,
) -> list[TokenizedEpisode]:
    """Tokenizes every episode once per context choice (frame 0 and every ``ctx_stride``-th)."""
    from tqdm import tqdm

    tokenizer.eval()
    out = []
    for ep in tqdm(episodes, desc="tokenize", unit="ep", disable=not progress):
        n = len(ep)
        ctx_index = list(range(0, n, ctx_stride))
        frames = ep.frames.to(device).float()
        code = tokenizer.encode_context(frames[ctx_index])
        per_ctx = []
        for j, c in enumerate(ctx_index):
            feats = [f[j:j + 1] for f in code.feats]
            toks = [tokenizer.encode_future(frames[s:min(n + 1, s + batch)][None], feats)[0]
                    for s in range(c + 1, n + 1, batch)]
            per_ctx.append(torch.cat(toks).to(torch.int16).cpu())
        out.append(TokenizedEpisode(ctx_index, code.tokens.cpu(), per_ctx, ep))
    return out


def _uniform_clip(te: TokenizedEpisode, length: int, rng: np.random.Generator
                  ) -> tuple[int, int]:
    """A clip of the uniform kind: ``(context choice, first offset)``.

    Half the clips take frame 0's context, half any; half start right after their context, the
    rest anywhere after it.
    """
    j = 0 if rng.random() < 0.5 else int(rng.integers(len(te.ctx_index)))
    avail = len(te.source) - te.ctx_index[j]  # frames c+1..n
    first = 1 if (rng.random() < 0.5 or avail <= length) else int(
        rng.integers(1, avail - length + 2))
    return j, first


def _event_clip(te: TokenizedEpisode, length: int, rng: np.random.Generator) -> tuple[int, int]:
    """A clip starting 1 to ``length // 2`` frames before the episode's first event.

    Returns ``(context choice, first offset)``: the latest context before the clip, and the
    clip's first frame counted from it.
    """
    n, close = len(te.source), te.source.event_start
    start = max(1, close + 1 - int(rng.integers(1, length // 2 + 1)))  # absolute first frame
    j = max(i for i, c in enumerate(te.ctx_index) if c < start)
    c = te.ctx_index[j]
    return j, max(1, min(start - c, n - c - length + 1))


def sample_clips(
    episodes: list[TokenizedEpisode], batch: int, length: int, rng: np.random.Generator,
    event_share: float = 0.0,
) -> dict[str, Tensor]:
    """Dynamics training clips: a context and ``length`` later frames with their actions.

    Half the clips start right after their context (the start of an imagined episode); the rest
    start later, as the sliding window sees them in long rollouts; ``gap`` flags those (the model
    is told, as it is when its window slides). Episodes too short to fill ``length`` frames are
    padded and ``valid`` marks the real frames. ``prev_state`` is the state before each frame
    (for the state input). An ``event_share`` of the clips (drawn first, so 0 draws as without)
    come from episodes with an event (:attr:`EpisodeTensors.event_start`) and start a few
    frames before it. Episodes with their event latent (:attr:`EpisodeTensors.event`) give
    ``event`` (the latent on each frame's slot).
    """
    keys = ("ctx", "tokens", "actions", "reward", "success", "state", "valid", "gap",
            "prev_state")
    if all(te.source.event is not None for te in episodes):
        keys += ("event",)
    cols: dict[str, list[Tensor]] = {k: [] for k in keys}
    with_event = ([te for te in episodes if te.source.event_start is not None]
                  if event_share else [])
    for _ in range(batch):
        if with_event and rng.random() < event_share:
            te = with_event[rng.integers(len(with_event))]
            j, first = _event_clip(te, length, rng)
        else:
            te = episodes[rng.integers(len(episodes))]
            j, first = _uniform_clip(te, length, rng)
        ep, n = te.source, len(te.source)
        c = te.ctx_index[j]
        avail = n - c  # frames c+1..n
        idx = torch.arange(first, min(first + length, avail + 1))  # offsets from c
        k = len(idx)
        pad = length - k
        frames_t = c + idx  # absolute frame indices
        cols["ctx"].append(te.ctx_tokens[j])
        cols["tokens"].append(_pad(te.frame_tokens[j][idx - 1].long(), pad))
        cols["actions"].append(_pad(ep.actions[frames_t - 1], pad))
        cols["reward"].append(_pad(ep.rewards[frames_t - 1], pad))
        cols["success"].append(_pad(ep.success[frames_t - 1], pad))
        cols["state"].append(_pad(ep.state[frames_t], pad))
        cols["valid"].append(_pad(torch.ones(k), pad))
        cols["gap"].append(torch.tensor(float(first > 1)))
        cols["prev_state"].append(_pad(ep.state[frames_t - 1], pad))
        if "event" in cols:
            cols["event"].append(_pad(ep.event[frames_t - 1], pad))
    return {k: torch.stack(v) for k, v in cols.items()}


def _pad(x: Tensor, pad: int) -> Tensor:
    if pad == 0:
        return x
    return torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
