"""Tokenized datasets cached beside the data, so a retrain with the same tokenizer skips tokenizing.

A cache file ``DATA/token_cache/<split>-<tokenizer fingerprint>-stride<k>.safetensors`` holds the
tokens of every episode of a split, flat, with the episode lengths and the dataset file's size and
modification time in its metadata. Anything that does not match (another tokenizer, a rewritten
dataset, a damaged file) is tokenized again and the file replaced; the cache never decides what a
model trains on.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wmgym.data.dataset import EPISODES_FILE
from wmgym.model.checkpoint import atomic_write
from wmgym.train.data import EpisodeTensors, TokenizedEpisode, tokenize_episodes

CACHE_DIR = "token_cache"


def tokenizer_fingerprint(tokenizer: torch.nn.Module) -> str:
    """sha256 over the tokenizer's parameter names, shapes and values."""
    h = hashlib.sha256()
    for name, t in sorted(tokenizer.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_file(data: str | Path, split: str, fingerprint: str, ctx_stride: int) -> Path:
    """Where the tokens of ``data``'s ``split`` under one tokenizer and stride are cached."""
    return Path(data) / CACHE_DIR / f"{split}-{fingerprint[:16]}-stride{ctx_stride}.safetensors"


def _dataset_stamp(data: str | Path) -> str:
    st = (Path(data) / EPISODES_FILE).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _pack(tokenized: list[TokenizedEpisode]) -> dict[str, torch.Tensor]:
    return {
        "ctx_tokens": torch.cat([te.ctx_tokens.to(torch.int16) for te in tokenized]),
        "frame_tokens": torch.cat([f for te in tokenized for f in te.frame_tokens]),
    }


def _unpack(tensors: dict[str, torch.Tensor], episodes: list[EpisodeTensors],
            ctx_stride: int) -> list[TokenizedEpisode]:
    out, ci, fi = [], 0, 0
    ctx, frames = tensors["ctx_tokens"], tensors["frame_tokens"]
    for ep in episodes:
        n = len(ep)
        ctx_index = list(range(0, n, ctx_stride))
        per_ctx = []
        for c in ctx_index:
            per_ctx.append(frames[fi : fi + n - c])
            fi += n - c
        out.append(TokenizedEpisode(ctx_index, ctx[ci : ci + len(ctx_index)].long(), per_ctx, ep))
        ci += len(ctx_index)
    if ci != len(ctx) or fi != len(frames):
        raise ValueError(f"holds {len(ctx)} contexts and {len(frames)} frames, the episodes "
                         f"need {ci} and {fi}")
    return out


def cached_tokenize(
    tokenizer: torch.nn.Module, data: str | Path, split: str, episodes: list[EpisodeTensors],
    ctx_stride: int, device, progress: bool = True, fingerprint: str | None = None,
) -> tuple[list[TokenizedEpisode], bool]:
    """:func:`tokenize_episodes` of ``data``'s ``split``, read from its cache file when valid.

    ``fingerprint`` (:func:`tokenizer_fingerprint`) saves hashing the weights again when
    several datasets go through the same tokenizer.

    Returns:
        ``(tokenized episodes, whether they came from the cache)``.
    """
    path = cache_file(data, split, fingerprint or tokenizer_fingerprint(tokenizer), ctx_stride)
    meta = {"lengths": json.dumps([len(ep) for ep in episodes]), "dataset": _dataset_stamp(data)}
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                stored = f.metadata() or {}
            if stored != meta:
                raise ValueError("made from other episodes (lengths or dataset file differ)")
            return _unpack(load_file(str(path)), episodes, ctx_stride), True
        except Exception as e:  # a stale or damaged cache is rebuilt, never trusted
            warnings.warn(f"{path}: token cache not used ({e}); tokenizing again", stacklevel=2)
    tokenized = tokenize_episodes(tokenizer, episodes, ctx_stride, device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(_pack(tokenized), str(p), metadata=meta))
    return tokenized, False
