"""Process-wide cache of world-model checkpoints: weights load once per (path, device).

Every ``WM-<Task>-v0`` instance in a process (single envs, vector envs, evaluation copies) shares
one :class:`~wmgym.model.world_model.WorldModel` per checkpoint directory and device, in eval mode
and never trained in place. A checkpoint is verified when it is first loaded (hash, keys, shapes,
finiteness: see :mod:`wmgym.model.checkpoint`) and checked against the task spec on every use, so
a checkpoint built for another resolution, depth range or task fails with the file's name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wmgym.model import checkpoint as ckpt
from wmgym.model.fast_decoder import (
    FAST_DECODER,
    has_fast_decoder,
    load_fast_decoder,
    resolve_decoder,
)
from wmgym.model.fast_dynamics import (
    FAST_DYNAMICS,
    has_fast_dynamics,
    load_fast_dynamics,
    resolve_dynamics,
)
from wmgym.model.tokenizer import Decoder
from wmgym.model.world_model import WorldModel, resolve_device
from wmgym.spec import TaskSpec


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint: the shared model and its bank of real start observations."""

    path: Path
    """The checkpoint directory (resolved)."""
    model: WorldModel
    """The model, in eval mode on its device; shared, so never modify it."""
    config: dict
    """The checkpoint's ``config.json``."""
    start_obs: dict[str, np.ndarray]
    """Real start observations: ``{key: array (N, ...)}``."""

    # the distilled companions in use, by their sha256
    _decoders: dict[str | None, Decoder] = field(default_factory=dict, repr=False, compare=False)
    _models: dict[str | None, WorldModel] = field(default_factory=dict, repr=False,
                                                  compare=False)

    @property
    def num_start_obs(self) -> int:
        return len(next(iter(self.start_obs.values())))

    def resolve_decoder(self, decoder: str) -> str:
        """``full`` or ``fast``: what ``decoder`` (``auto``, ``full``, ``fast``) means here."""
        return resolve_decoder(decoder, has_fast_decoder(self.path))

    def frame_decoder(self, decoder: str) -> Decoder | None:
        """The frame decoder ``decoder`` names; None stands for the tokenizer's own.

        ``fast`` is the checkpoint's distilled decoder, loaded and verified on first use.

        Raises:
            CheckpointError: ``fast`` and the checkpoint has none, or a corrupt or stale one.
        """
        if self.resolve_decoder(decoder) == "full":
            return None
        key = FAST_DECODER.sha256(self.path)  # a redistilled one on disk replaces it
        with _LOCK:
            if key not in self._decoders:
                self._decoders[key] = load_fast_decoder(self.path, self.model.device)
            return self._decoders[key]

    def resolve_dynamics(self, dynamics: str) -> str:
        """``full`` or ``fast``: what ``dynamics`` (``auto``, ``full``, ``fast``) means here."""
        return resolve_dynamics(dynamics, has_fast_dynamics(self.path))

    def world_model(self, dynamics: str) -> WorldModel:
        """The model to imagine with: ``model``, or with ``fast`` its fast transformer.

        The fast one shares ``model``'s tokenizer; it is loaded and verified on first use.

        Raises:
            CheckpointError: ``fast`` and the checkpoint has none, or a corrupt or stale one.
        """
        if self.resolve_dynamics(dynamics) == "full":
            return self.model
        key = FAST_DYNAMICS.sha256(self.path)  # a redistilled one on disk replaces it
        with _LOCK:
            if key not in self._models:
                student = load_fast_dynamics(self.path, self.model.device)
                self._models[key] = self.model.with_dynamics(student)
            return self._models[key]


_CACHE: dict[tuple[str, str], LoadedCheckpoint] = {}
_LOCK = threading.Lock()


def load_checkpoint(
    path: str | Path, spec: TaskSpec, device: str | torch.device = "auto"
) -> LoadedCheckpoint:
    """Loads (once per process) and checks a world-model checkpoint for ``spec``.

    A checkpoint rewritten on disk (its ``config.json`` records a new weights hash) is loaded
    again; otherwise the cached model is returned.

    Args:
        path: Checkpoint directory.
        spec: The task the checkpoint must fit.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ….

    Returns:
        The shared :class:`LoadedCheckpoint`.

    Raises:
        CheckpointError: A file is missing, corrupt, altered, or does not fit the task; the
            message names the file and what was expected.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise ckpt.CheckpointError(
            f"{path}: no world-model checkpoint here (expected a directory with "
            f"{ckpt.CONFIG} and {ckpt.WEIGHTS}); train one with `wmgym train dynamics` or pass "
            "checkpoint=<dir>"
        )
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but this torch ({torch.__version__}) sees no "
                         "CUDA device: pass device='cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is None:  # "cuda" and "cuda:0" share one copy
        dev = torch.device("cuda", torch.cuda.current_device())
    config = ckpt.read_config(path)
    key = (str(path), str(dev))
    with _LOCK:
        cached = _CACHE.get(key)
        if (
            cached is None
            or cached.config.get("sha256") != config["sha256"]
            or (cached.config.get("start_obs_sha256") != config.get("start_obs_sha256"))
        ):
            _check_config(path, config, spec)
            model = WorldModel.load(path, dev)
            model.requires_grad_(False)
            bank = ckpt.load_start_obs(path, config)
            cached = LoadedCheckpoint(path, model, config, bank)
            _CACHE[key] = cached
    _check_config(path, cached.config, spec)
    _check_start_obs(path, cached.start_obs, spec)
    return cached


def clear_cache() -> None:
    """Forgets every loaded checkpoint (their memory is freed once no env holds them)."""
    with _LOCK:
        _CACHE.clear()


def _check_config(path: Path, config: dict, spec: TaskSpec) -> None:
    """The model config must produce the spec's observations from its actions."""
    where = path / ckpt.CONFIG
    try:
        resolution = int(config["tokenizer"]["resolution"])
        depth_range = tuple(float(x) for x in config["depth_range"])
        dyn = config["dynamics"]
        action_dim, state_dim = int(dyn["action_dim"]), int(dyn["state_dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{where}: incomplete model config ({e!r})") from e
    expected = {
        "task": (config.get("task", spec.name), spec.name),
        "tokenizer.resolution": (resolution, spec.resolution),
        "depth_range": (depth_range, tuple(spec.depth_range)),
        "dynamics.action_dim": (action_dim, spec.action_dim),
        "dynamics.state_dim": (state_dim, spec.state_dim),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise ckpt.CheckpointError(
                f"{where}: {name} is {got!r}, but task {spec.name!r} ({spec.path}) expects "
                f"{want!r}: this checkpoint was made for another task"
            )


def _check_start_obs(path: Path, bank: dict[str, np.ndarray], spec: TaskSpec) -> None:
    """The start bank must hold at least one observation of the spec's space, per key."""
    where = path / ckpt.START_OBS
    space = spec.observation_space()
    space = {k: v for k, v in space.items() if k != "proprio"}  # read off the state
    missing = sorted(set(space) - set(bank))
    if missing:
        raise ckpt.CheckpointError(f"{where}: missing keys {missing} (expected {list(space)})")
    n = {len(bank[k]) for k in space}
    if len(n) != 1 or 0 in n:
        raise ckpt.CheckpointError(f"{where}: keys hold {n} observations, expected one N >= 1")
    for k, sub in space.items():
        arr = bank[k]
        if arr.shape[1:] != sub.shape or arr.dtype != sub.dtype:
            raise ckpt.CheckpointError(
                f"{where}: {k!r} is {arr.dtype}{list(arr.shape)}, expected "
                f"{sub.dtype}[N, {', '.join(map(str, sub.shape))}]"
            )
        if not (np.all(arr >= sub.low) and np.all(arr <= sub.high)):
            raise ckpt.CheckpointError(
                f"{where}: {k!r} has values outside [{sub.low.min()}, {sub.high.max()}]"
            )
