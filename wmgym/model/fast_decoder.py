"""A distilled frame decoder: a smaller ``D_p`` that decodes a checkpoint's own tokens.

Most of an imagined step's CPU time that is not the transformer is the future-frame decoder
(``MMTokenizer.fut_decoder``). A fast decoder is a :class:`~wmgym.model.tokenizer.Decoder` with
fewer channels that stops at half resolution and ends in a sub-pixel convolution; it reads the
same frame tokens and context features as the full one (``src=`` the tokenizer's config) and is
trained to reproduce its frames (:mod:`wmgym.train.distill`). The transformer, the heads and so
reward, success and state are untouched: only the pixels an agent sees change.

It lives beside the weights it was distilled from, as a checkpoint directory of its own::

    checkpoints/WM-Pick-v0/fast_decoder/{model.safetensors, config.json}

and its ``config.json`` records the sha256 of the parent's weights: a parent retrained since
fails to load with both file names rather than decoding another model's tokens.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from wmgym.model import checkpoint as ckpt
from wmgym.model.tokenizer import Decoder, TokenizerConfig, config_from_dict

#: Sub-directory of a world-model checkpoint that holds its fast decoder.
SUBDIR = "fast_decoder"

#: What the envs' ``decoder=`` option accepts.
DECODERS = ("auto", "full", "fast")


def build_fast_decoder(
    teacher: TokenizerConfig, base_channels: int = 8,
    channel_mult: tuple[int, ...] = (1, 2, 4, 6, 6), subpixel: int = 2,
) -> tuple[TokenizerConfig, Decoder]:
    """A new (untrained) fast decoder for the tokens of a tokenizer with config ``teacher``.

    Args:
        teacher: Config of the tokenizer whose tokens and context features it decodes.
        base_channels: Channels at full resolution (the teacher's: 16).
        channel_mult: Channel multiplier at 64, 32, 16, 8, 4 px.
        subpixel: The decoder stops at ``resolution / subpixel``; a sub-pixel convolution
            makes the full resolution.

    Returns:
        ``(its config, the decoder)``.
    """
    cfg = replace(teacher, base_channels=base_channels, channel_mult=tuple(channel_mult),
                  decoder_subpixel=subpixel)
    return cfg, _decoder(cfg, teacher)


def _decoder(cfg: TokenizerConfig, teacher: TokenizerConfig) -> Decoder:
    """A decoder of config ``cfg`` for the future tokens of a tokenizer of config ``teacher``."""
    grid = teacher.resolution // teacher.ctx_downsample
    return Decoder(cfg, teacher.future_downsample, grid, src=teacher)


def save_fast_decoder(checkpoint: str | Path, decoder: Decoder, cfg: TokenizerConfig,
                      extra: dict | None = None) -> Path:
    """Writes ``decoder`` into ``checkpoint/fast_decoder``, bound to the checkpoint's weights."""
    parent = ckpt.read_config(checkpoint)
    return ckpt.save_checkpoint(Path(checkpoint) / SUBDIR, decoder.state_dict(), {
        "tokenizer": asdict(cfg), "teacher_sha256": parent["sha256"], **(extra or {}),
    })


def has_fast_decoder(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` ships a fast decoder."""
    return (Path(checkpoint) / SUBDIR / ckpt.CONFIG).exists()


def remove_stale_fast_decoder(checkpoint: str | Path) -> bool:
    """Deletes ``checkpoint``'s fast decoder if it was distilled from other weights.

    Returns:
        Whether one was removed.
    """
    directory = Path(checkpoint) / SUBDIR
    if not has_fast_decoder(checkpoint):
        return False
    try:
        teacher = ckpt.read_config(directory).get("teacher_sha256")
    except ckpt.CheckpointError:  # unreadable: of no use to any model
        teacher = None
    if teacher == ckpt.read_config(checkpoint)["sha256"]:
        return False
    shutil.rmtree(directory)
    print(f"removed {directory}: it was distilled from the weights just replaced")
    return True


def load_fast_decoder(checkpoint: str | Path, device: str | torch.device = "cpu") -> Decoder:
    """Loads and verifies ``checkpoint``'s fast decoder (eval mode, no gradients).

    Raises:
        CheckpointError: It is missing, corrupt, or was distilled from other weights than
            ``checkpoint``'s; the message names the files.
    """
    checkpoint = Path(checkpoint)
    directory = checkpoint / SUBDIR
    if not has_fast_decoder(checkpoint):
        raise ckpt.CheckpointError(
            f"{directory}: no fast decoder in this checkpoint; distill one with "
            f"`wmgym train decoder --checkpoint {checkpoint}` or use decoder='full'"
        )
    parent, config = ckpt.read_config(checkpoint), ckpt.read_config(directory)
    teacher_sha = config.get("teacher_sha256", "")
    if teacher_sha != parent["sha256"]:
        raise ckpt.CheckpointError(
            f"{directory / ckpt.CONFIG}: distilled from weights with sha256 {teacher_sha[:16]}…, "
            f"but {checkpoint / ckpt.WEIGHTS} has {parent['sha256'][:16]}… (the world model was "
            "replaced since); distill it again with `wmgym train decoder`"
        )
    try:
        decoder = _decoder(*(config_from_dict(c["tokenizer"]) for c in (config, parent)))
    except (KeyError, TypeError) as e:
        raise ckpt.CheckpointError(
            f"{directory / ckpt.CONFIG}: decoder config does not fit this version of wmgym ({e})"
        ) from e
    tensors = ckpt.load_weights(directory, config)
    ckpt.load_state_dict_strict(decoder, tensors, directory / ckpt.WEIGHTS)
    return decoder.to(device).eval().requires_grad_(False)


def open_decoder(checkpoint: str | Path, decoder: str,
                 device: str | torch.device = "cpu") -> tuple[str, Decoder | None]:
    """``(full|fast, the fast decoder or None)`` for the ``decoder`` option of ``checkpoint``."""
    name = resolve_decoder(decoder, has_fast_decoder(checkpoint))
    return name, load_fast_decoder(checkpoint, device) if name == "fast" else None


def resolve_decoder(decoder: str, available: bool) -> str:
    """The decoder ``decoder`` names: ``full``, ``fast``, or ``auto`` (fast when available).

    Raises:
        ValueError: An unknown name.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "fast" if available else "full"
    return decoder
