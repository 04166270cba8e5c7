"""Checkpoint directories: safetensors weights, JSON config with sha256, verified on load.

A checkpoint directory holds ``model.safetensors`` (all weights; never pickle), ``config.json``
(model configs, task, package version, sha256 and shapes of the weights), optionally
``start_obs.safetensors`` (the bank of real initial observations the env resets from) and
``card.md``. Every write is atomic; every load checks hash, keys, shapes and finiteness and
fails with the file's name and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
START_OBS = "start_obs.safetensors"
FORMAT_VERSION = 1


#: Module and parameter names of older weights files and their current names. The event
#: latent's vector and head (:mod:`wmgym.model.event_latent`) were stored as ``grasp_emb`` and
#: ``grasp_head`` (the shipped WM-Pick-v0 files keep those bytes); :func:`load_weights` is the
#: one place that maps them.
RENAMED = {"grasp_emb": "event_emb", "grasp_head": "event_head"}


def check_fields(cls: type, config: dict, what: str) -> None:
    """A config dict must name exactly the fields of the dataclass ``cls``.

    Raises:
        ValueError: Missing or unknown keys, naming them and the expected ones.
    """
    expected = set(cls.__dataclass_fields__)
    missing, unknown = sorted(expected - set(config)), sorted(set(config) - expected)
    if missing or unknown:
        raise ValueError(f"{what}: missing keys {missing}, unknown keys {unknown}; "
                         f"expected {sorted(expected)}")


def current_name(name: str) -> str:
    """The name a weights file's tensor ``name`` has now (parts renamed by :data:`RENAMED`)."""
    return ".".join(RENAMED.get(part, part) for part in name.split("."))


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match what was expected."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Calls ``write(tmp)`` on a temporary sibling of ``path``, then renames it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict,
    start_obs: dict[str, np.ndarray] | None = None,
) -> Path:
    """Writes weights and config (with the weights' sha256 and shapes) atomically.

    Args:
        directory: Checkpoint directory (created if missing).
        state_dict: Tensors to save; made contiguous and moved to CPU.
        config: JSON-serialisable model/task config; ``sha256``, ``shapes``, ``format`` and
            ``wmgym_version`` are added.
        start_obs: Optional bank of start observations (key -> array with a leading N axis).

    Returns:
        The directory.
    """
    from wmgym import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(directory / WEIGHTS, lambda p: save_file(tensors, str(p)))
    if start_obs is not None:
        arrays = {k: np.ascontiguousarray(v) for k, v in start_obs.items()}
        atomic_write(directory / START_OBS, lambda p: save_numpy(arrays, str(p)))
    meta = {
        **config,
        "format": FORMAT_VERSION,
        "wmgym_version": __version__,
        "sha256": sha256_file(directory / WEIGHTS),
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
    }
    if start_obs is not None:
        meta["start_obs_sha256"] = sha256_file(directory / START_OBS)
    atomic_write(directory / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=1)))
    return directory


def read_config(directory: str | Path) -> dict:
    """The checkpoint's ``config.json``, or a CheckpointError naming what is wrong."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{path}: not found (expected a wmgym checkpoint directory)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    for key in ("sha256", "shapes", "format"):
        if key not in config:
            raise CheckpointError(f"{path}: missing key {key!r}")
    if config["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {config['format']}, expected {FORMAT_VERSION}"
        )
    return config


def _verified(path: Path, expected_sha: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    actual = sha256_file(path)
    if actual != expected_sha:
        raise CheckpointError(
            f"{path}: sha256 {actual[:16]}… does not match config.json's {expected_sha[:16]}… "
            "(the file is truncated, altered or from another checkpoint)"
        )


def load_weights(directory: str | Path, config: dict | None = None) -> dict[str, torch.Tensor]:
    """Loads and verifies the weights: sha256, the recorded keys and shapes, finiteness.

    The tensors come back under their current names (:data:`RENAMED`).
    """
    directory = Path(directory)
    config = read_config(directory) if config is None else config
    path = directory / WEIGHTS
    _verified(path, config["sha256"])
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    expected = {k: tuple(v) for k, v in config["shapes"].items()}
    actual = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != actual:
        missing = sorted(set(expected) - set(actual))[:5]
        extra = sorted(set(actual) - set(expected))[:5]
        wrong = [k for k in expected.keys() & actual.keys() if expected[k] != actual[k]][:5]
        raise CheckpointError(
            f"{path}: tensors do not match config.json (missing {missing}, unexpected {extra}, "
            f"wrong shape {[(k, actual[k], expected[k]) for k in wrong]})"
        )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {bad[:5]}")
    return {current_name(k): v for k, v in tensors.items()}


def load_start_obs(directory: str | Path, config: dict | None = None) -> dict[str, np.ndarray]:
    """Loads and verifies the bank of start observations."""
    directory = Path(directory)
    config = read_config(directory) if config is None else config
    path = directory / START_OBS
    if "start_obs_sha256" not in config:
        raise CheckpointError(f"{directory / CONFIG}: no start observation bank recorded")
    _verified(path, config["start_obs_sha256"])
    try:
        return load_numpy(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def load_state_dict_strict(module: torch.nn.Module, tensors: dict, source: str | Path) -> None:
    """``module.load_state_dict(strict=True)`` with an error naming the file and the mismatch."""
    own = module.state_dict()
    missing = sorted(own.keys() - tensors.keys())
    extra = sorted(tensors.keys() - own.keys())
    wrong = [(k, tuple(tensors[k].shape), tuple(own[k].shape))
             for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape]
    if missing or extra or wrong:
        raise CheckpointError(
            f"{source}: weights do not fit the model built from config.json: missing "
            f"{missing[:5]}, unexpected {extra[:5]}, shape (file, model) {wrong[:5]}"
        )
    module.load_state_dict(tensors, strict=True)
