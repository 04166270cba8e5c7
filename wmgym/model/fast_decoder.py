"""A distilled frame decoder: a smaller ``D_p`` that decodes a checkpoint's own tokens.

Most of an imagined step's CPU time that is not the transformer is the future-frame decoder
(``MMTokenizer.fut_decoder``). A fast decoder is a :class:`~wmgym.model.tokenizer.Decoder` with
fewer channels that stops at half resolution and ends in a sub-pixel convolution; it reads the
same frame tokens and context features as the full one (``src=`` the tokenizer's config) and is
trained to reproduce its frames (:mod:`wmgym.train.distill`). The transformer, the heads and so
reward, success and state are untouched: only the pixels an agent sees change.

It lives beside the weights it was distilled from, bound to them
(:mod:`wmgym.model.companion`): ``<checkpoint>/fast_decoder/``.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from wmgym.model import checkpoint as ckpt
from wmgym.model.companion import Companion, resolve_choice
from wmgym.model.tokenizer import Decoder, TokenizerConfig, config_from_dict

#: Sub-directory of a world-model checkpoint that holds its fast decoder.
SUBDIR = "fast_decoder"

FAST_DECODER = Companion(SUBDIR, "fast decoder", "wmgym train decoder", "fast='full'")


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
    return FAST_DECODER.save(checkpoint, decoder.state_dict(),
                             {"tokenizer": asdict(cfg), **(extra or {})})


def has_fast_decoder(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` ships a fast decoder."""
    return FAST_DECODER.exists(checkpoint)


def load_fast_decoder(checkpoint: str | Path, device: str | torch.device = "cpu") -> Decoder:
    """Loads and verifies ``checkpoint``'s fast decoder (eval mode, no gradients).

    Raises:
        CheckpointError: It is missing, corrupt, or was distilled from other weights than
            ``checkpoint``'s; the message names the files.
    """
    config, parent, tensors = FAST_DECODER.read(checkpoint)
    try:
        decoder = _decoder(*(config_from_dict(c["tokenizer"]) for c in (config, parent)))
    except (KeyError, TypeError, ValueError) as e:
        raise FAST_DECODER.build_error(checkpoint, e) from e
    ckpt.load_state_dict_strict(decoder, tensors, FAST_DECODER.directory(checkpoint) / ckpt.WEIGHTS)
    return decoder.to(device).eval().requires_grad_(False)


def resolve_decoder(decoder: str, available: bool) -> str:
    """The decoder ``decoder`` names: ``full``, ``fast``, or ``auto`` (fast when available).

    Raises:
        ValueError: An unknown name.
    """
    return resolve_choice("decoder", decoder, available)
