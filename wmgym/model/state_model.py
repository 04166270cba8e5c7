"""The state model: the state's next step, to the millimetre.

A robot arm under its controller is nearly deterministic, and an object at rest stays where it
is until something touches it. The transformer reads the state off tokens of 64x64 frames, where
a millimetre is a fraction of a pixel: under the small, shrinking actions of a learned agent
closing on the cube it moved the arm up to twice as far as robosuite, let the resting cube drift
by millimetres, and the agent, shown a gripper at the cube, closed it.

:class:`StateModel` is a small MLP fitted on real transitions (``wmgym train state-model``),
kept beside the checkpoint's weights in ``<checkpoint>/state_model``. It predicts the next
displacement of the spec's ``[world_model.state_model] fields`` from the state, the offsets
between named fields (the gripper's offset from the cube), the last ``history`` displacements
(momentum), the action and, when the model has one, the event latent (:mod:`wmgym.model.
event_latent`: whether a grasp under way holds or slips, drawn once when it begins). When
present, :class:`~wmgym.model.world_model.WorldModel` overwrites the transformer's prediction of
those fields with it at every imagined step, before the next slot and the event head read the
state; the frames follow through the state input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from wmgym.model import checkpoint as ckpt

__all__ = ["STATE_MODEL_DIR", "StateModel", "StateModelConfig", "has_state_model",
           "load_state_model", "save_state_model"]

#: Sub-directory of a checkpoint that holds its state model.
STATE_MODEL_DIR = "state_model"
#: Values of the event latent the model reads (none, holds, slips; see ``event_latent``).
EVENT_VALUES = 3


@dataclass
class StateModelConfig:
    """What the state model reads and predicts (indices into the state and the action)."""

    state_dim: int
    action_dim: int
    fields: list[int]
    """State indices it predicts."""
    names: list[str] = field(default_factory=list)
    """Their names, for messages and reports."""
    offsets: list[list[int]] = field(default_factory=list)
    """Pairs ``[a, b]`` of state indices whose difference ``state[a] - state[b]`` it also reads
    (the gripper's offset from an object it may touch)."""
    event: bool = False
    """It reads the event latent (one-hot: none, holds, slips)."""
    history: int = 2
    """Past displacements of ``fields`` it reads (momentum)."""
    hidden: int = 256
    layers: int = 3
    scale: float = 0.01
    """Displacements and offsets are read and predicted in units of ``scale`` (metres)."""
    rest: float = 1e-6
    """A field moving less than this in a step is at rest: an object nothing touches, an arm
    held still. The model says so apart (a logit per field) and then moves it by exactly 0:
    a regression alone leaves a drift of a tenth of a millimetre a step, and agents that
    standardize their inputs read a resting cube a millimetre off as a moved one."""

    @property
    def n_inputs(self) -> int:
        return (self.state_dim + len(self.offsets) + self.history * len(self.fields)
                + self.action_dim + EVENT_VALUES * self.event)


class StateModel(nn.Module):
    """``model(state, past, action, event)``: the next displacement of ``cfg.fields``.

    Args:
        cfg: The config.
    """

    def __init__(self, cfg: StateModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [cfg.n_inputs] + [cfg.hidden] * cfg.layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(dims[-1], 2 * len(cfg.fields)))
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        pairs = torch.tensor(cfg.offsets, dtype=torch.long).reshape(-1, 2)
        self.register_buffer("pairs", pairs, persistent=False)
        self.register_buffer("index", torch.tensor(cfg.fields, dtype=torch.long),
                             persistent=False)

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """The state's mean and std (real units), from the training data.

        A std under ``cfg.scale`` is raised to it: a field that hardly moves in the data (an
        object never touched) must not blow up when it does move.
        """
        self.state_mean.copy_(mean)
        self.state_std.copy_(std.clamp_min(self.cfg.scale))

    def forward(self, state: Tensor, past: Tensor, action: Tensor,
                event: Tensor | None = None) -> Tensor:
        """The next displacement of the fields, real units: exactly 0 for fields at rest.

        Arguments as :meth:`outputs`.
        """
        move, rest_logit = self.outputs(state, past, action, event)
        return torch.where(rest_logit > 0, torch.zeros_like(move), move)

    def outputs(self, state: Tensor, past: Tensor, action: Tensor,
                event: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(displacement (B, F) in real units, logit that each field is at rest (B, F))``.

        Args:
            state: ``(B, state_dim)`` the current state, real units.
            past: ``(B, history, len(fields))`` the last displacements, oldest first (zeros
                before an episode's start: robosuite resets at rest).
            action: ``(B, action_dim)`` the action, clipped to its bounds.
            event: ``(B,)`` long, the event latent of this step (with ``cfg.event``; None reads
                as no event under way).
        """
        s = (state - self.state_mean) / self.state_std
        off = state[:, self.pairs[:, 0]] - state[:, self.pairs[:, 1]]
        parts = [s, off / self.cfg.scale, past.flatten(1) / self.cfg.scale, action]
        if self.cfg.event:
            if event is None:
                event = torch.zeros(state.shape[0], dtype=torch.long, device=state.device)
            parts.append(nn.functional.one_hot(event.long(), EVENT_VALUES).to(state.dtype))
        move, rest_logit = self.mlp(torch.cat(parts, -1)).chunk(2, dim=-1)
        return move * self.cfg.scale, rest_logit

    def step(self, state: Tensor, past: Tensor, action: Tensor, event: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
        """``(next fields (B, F), next past (B, history, F))`` from one step."""
        move = self(state, past, action, event)
        return state[:, self.index] + move, torch.cat([past[:, 1:], move.unsqueeze(1)], 1)


def has_state_model(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` has a state model."""
    return (Path(checkpoint) / STATE_MODEL_DIR / ckpt.CONFIG).exists()


def save_state_model(checkpoint: str | Path, model: StateModel, extra: dict | None = None
                     ) -> Path:
    """Writes ``model`` into ``<checkpoint>/state_model`` (safetensors, config and sha256)."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    return ckpt.save_checkpoint(Path(checkpoint) / STATE_MODEL_DIR, state,
                                {"state_model": asdict(model.cfg), **(extra or {})})


def load_state_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> StateModel:
    """The state model of ``checkpoint``, verified.

    Raises:
        CheckpointError: It is missing, corrupt or does not fit; the message names the file.
    """
    directory = Path(checkpoint) / STATE_MODEL_DIR
    config = ckpt.read_config(directory)
    try:
        ckpt.check_fields(StateModelConfig, config.get("state_model", {}),
                          f"{directory / ckpt.CONFIG} state_model")
    except ValueError as e:
        raise ckpt.CheckpointError(str(e)) from e
    model = StateModel(StateModelConfig(**config["state_model"]))
    ckpt.load_state_dict_strict(model, ckpt.load_weights(directory, config),
                                directory / ckpt.WEIGHTS)
    return model.to(device).eval()
