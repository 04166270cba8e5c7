"""Parts distilled from a checkpoint that live beside its weights, bound to them.

A fast decoder or a fast transformer is trained to reproduce what one checkpoint's own part
does; it is of no use to other weights. It lives in a sub-directory of that checkpoint, as a
checkpoint directory of its own whose ``config.json`` records the sha256 of the parent's
weights (``teacher_sha256``)::

    <checkpoint>/<subdir>/{model.safetensors, config.json}

A parent retrained since makes it fail to load with both file names, and
:meth:`~wmgym.model.world_model.WorldModel.save` deletes the stale ones it replaces.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from wmgym.model import checkpoint as ckpt


@dataclass(frozen=True)
class Companion:
    """One kind of bound part: where it lives and how users make one.

    Args:
        subdir: Sub-directory of the parent checkpoint.
        what: Its name in messages (``"fast decoder"``).
        command: The command that distils one (``"wmgym train decoder"``).
        fallback: The env option that does without it (``"fast='full'"``).
    """

    subdir: str
    what: str
    command: str
    fallback: str

    def directory(self, checkpoint: str | Path) -> Path:
        return Path(checkpoint) / self.subdir

    def exists(self, checkpoint: str | Path) -> bool:
        """Whether ``checkpoint`` has one."""
        return (self.directory(checkpoint) / ckpt.CONFIG).exists()

    def save(self, checkpoint: str | Path, state_dict: dict[str, torch.Tensor],
             config: dict) -> Path:
        """Writes it into ``checkpoint/<subdir>``, bound to the checkpoint's weights."""
        parent = ckpt.read_config(checkpoint)
        return ckpt.save_checkpoint(self.directory(checkpoint), state_dict,
                                    {**config, "teacher_sha256": parent["sha256"]})

    def sha256(self, checkpoint: str | Path) -> str | None:
        """The sha256 of ``checkpoint``'s one (its weights), None when it has none."""
        if not self.exists(checkpoint):
            return None
        return ckpt.read_config(self.directory(checkpoint))["sha256"]

    def remove_if_stale(self, checkpoint: str | Path) -> bool:
        """Deletes ``checkpoint``'s one if it was distilled from other weights; whether it did."""
        if not self.exists(checkpoint):
            return False
        directory = self.directory(checkpoint)
        try:
            teacher = ckpt.read_config(directory).get("teacher_sha256")
        except ckpt.CheckpointError:  # unreadable: of no use to any model
            teacher = None
        if teacher == ckpt.read_config(checkpoint)["sha256"]:
            return False
        shutil.rmtree(directory)
        print(f"removed {directory}: it was distilled from the weights just replaced")
        return True

    def read(self, checkpoint: str | Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
        """``(its config, the parent's config, its verified tensors)``.

        Raises:
            CheckpointError: It is missing, corrupt, or was distilled from other weights than
                ``checkpoint``'s; the message names the files.
        """
        checkpoint = Path(checkpoint)
        directory = self.directory(checkpoint)
        if not self.exists(checkpoint):
            raise ckpt.CheckpointError(
                f"{directory}: no {self.what} in this checkpoint; distill one with "
                f"`{self.command} --checkpoint {checkpoint}` or use {self.fallback}"
            )
        parent, config = ckpt.read_config(checkpoint), ckpt.read_config(directory)
        teacher_sha = config.get("teacher_sha256", "")
        if teacher_sha != parent["sha256"]:
            raise ckpt.CheckpointError(
                f"{directory / ckpt.CONFIG}: distilled from weights with sha256 "
                f"{teacher_sha[:16]}…, but {checkpoint / ckpt.WEIGHTS} has "
                f"{parent['sha256'][:16]}… (the world model was replaced since); distill it "
                f"again with `{self.command}`"
            )
        return config, parent, ckpt.load_weights(directory, config)

    def build_error(self, checkpoint: str | Path, e: Exception) -> ckpt.CheckpointError:
        """The error for a config that does not build a model in this version of wmgym."""
        return ckpt.CheckpointError(
            f"{self.directory(checkpoint) / ckpt.CONFIG}: {self.what} config does not fit this "
            f"version of wmgym ({e})"
        )


def resolve_choice(option: str, value: str, available: bool) -> str:
    """``full``, ``fast``, or for ``auto`` fast when ``available``.

    Raises:
        ValueError: An unknown name; the message names the ``option``.
    """
    choices = ("auto", "full", "fast")
    if value not in choices:
        raise ValueError(f"{option} must be one of {choices}, got {value!r}")
    if value == "auto":
        return "fast" if available else "full"
    return value
