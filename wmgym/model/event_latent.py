"""The event latent: an event whose outcome is drawn once, when it begins.

Some outcomes are decided in an instant the frames show late, if at all: a grasp a centimetre
off holds or slips, and which one is written in the gripper's offset from the object the moment
the fingers close. With ``DynamicsConfig.event`` the dynamics transformer makes that decision
explicit. The config names, as indices into the action and ``state`` vectors:

* ``trigger``: the action dimension whose positive command keeps the event going; ``run``
  positive commands in a row start it;
* ``anchor`` and ``target``: two points whose offset ``(state[anchor] - state[target]) / scale``
  the outcome head reads, with the norm of its leading axes (the horizontal distance when the
  last axis is height) and the normalised ``state[extra]``;
* ``outcome`` and ``above``: in the data, the event succeeded when ``state[outcome]`` rose above
  ``above`` before the trigger was released.

When an event begins, :class:`EventHead` gives the probability that it succeeds; one bit is
drawn from it (per rollout, from that rollout's generator) and a learned vector for *success*
or *failure* is added to every slot until the trigger is released. In training the bit is the
event's real outcome (:func:`event_labels`), so the frames learn to follow it and the head
alone carries the decision; the head is fitted apart, on every event in the data
(:mod:`wmgym.train.event_head`).

The config is a plain dict (:meth:`wmgym.spec.EventConfig.as_config`): this module knows no task.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from wmgym.spec import EventConfig

__all__ = ["EventConfig", "EventHead", "advance", "draw_steps", "event_labels", "first_run",
           "triggered"]

#: Latent values: no event under way, an event that succeeds, one that fails.
NONE, SUCCESS, FAILURE = 0, 1, 2
#: Steps an event must be watched without success before it counts as failed, when the episode
#: ends during it (one cut off sooner is left unlabelled: :data:`NONE`).
MIN_WATCHED = 10


def triggered(actions: np.ndarray | Tensor, trigger: int) -> np.ndarray | Tensor:
    """Which actions ``(..., action_dim)`` command the event on (``actions[..., trigger] > 0``)."""
    return actions[..., trigger] > 0


def first_run(actions: np.ndarray, trigger: int, run: int) -> int | None:
    """The first step of ``run`` triggering commands in a row, or None.

    A run, not one command: noisy policies flick the trigger without starting an event.
    """
    on = triggered(np.asarray(actions), trigger)
    for t in range(len(on) - run + 1):
        if on[t:t + run].all():
            return t
    return None


def draw_steps(latent: Tensor) -> Tensor:
    """Where events begin in a latent ``(..., T)``: bool, True where an event's bit is drawn.

    The latent turns from :data:`NONE` to success or failure there (events are apart by at
    least one released trigger, where it is :data:`NONE`).
    """
    on = latent != NONE
    return on & ~torch.cat([torch.zeros_like(on[..., :1]), on[..., :-1]], -1)


def event_labels(actions: np.ndarray, outcome: np.ndarray, cfg: EventConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """An episode's event latent and the steps where each event's bit is drawn.

    Args:
        actions: ``(T, action_dim)``; ``actions[t]`` leads from frame ``t`` to ``t + 1``.
        outcome: ``(T + 1,)`` ``state[outcome]`` in each frame.
        cfg: The event.

    Returns:
        ``latent (T,)`` int64: :data:`SUCCESS` or :data:`FAILURE` from an event's ``run``-th
        triggering command to its last one, :data:`NONE` elsewhere; ``starts (T,)`` bool: the
        step where each labelled event's bit is drawn. An event succeeds when ``outcome``
        rises above ``cfg.above`` before the trigger is released (or the episode ends).
    """
    on = np.asarray(triggered(np.asarray(actions), cfg.trigger))
    n = len(on)
    latent, starts = np.zeros(n, np.int64), np.zeros(n, bool)
    t = 0
    while t < n:
        if not on[t]:
            t += 1
            continue
        end = t
        while end + 1 < n and on[end + 1]:
            end += 1
        first = t + cfg.run - 1
        if end >= first:
            success = bool(np.max(outcome[t + 1:end + 2]) > cfg.above)
            if success or end < n - 1 or end - first >= MIN_WATCHED:
                latent[first:end + 1] = SUCCESS if success else FAILURE
                starts[first] = True
        t = end + 1
    return latent, starts


def begins(run_length: Tensor, cfg: EventConfig) -> Tensor:
    """Where an event begins and its outcome is drawn, from the run lengths after this step.

    An event begins at the ``cfg.run``-th triggering command in a row.
    """
    return run_length == cfg.run


def advance(run_length: Tensor, latent: Tensor, actions: Tensor, p_success: Tensor, u: Tensor,
            cfg: EventConfig) -> tuple[Tensor, Tensor]:
    """One step of every rollout's event latent, in imagination.

    Args:
        run_length: ``(B,)`` triggering commands in a row before this step.
        latent: ``(B,)`` the latent before this step.
        actions: ``(B, action_dim)`` this step's actions.
        p_success: ``(B,)`` the head's probability that an event beginning now succeeds.
        u: ``(B,)`` uniform draws: a beginning event succeeds where ``u < p_success``.
        cfg: The event.

    Returns:
        ``(run_length, latent)`` after this step.
    """
    on = triggered(actions, cfg.trigger)
    run_length = torch.where(on, run_length + 1, torch.zeros_like(run_length))
    drawn = torch.where(u < p_success, SUCCESS, FAILURE)
    kept = torch.where(on, latent, torch.full_like(latent, NONE))
    return run_length, torch.where(begins(run_length, cfg), drawn, kept)


class EventHead(nn.Module):
    """The logit that an event beginning now succeeds, from the state.

    Args:
        cfg: The event.
        hidden: Width of its hidden layer.
    """

    def __init__(self, cfg: EventConfig, hidden: int = 64) -> None:
        super().__init__()
        self.cfg = cfg
        self.mlp = nn.Sequential(nn.Linear(cfg.n_features, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        for name in ("anchor", "target", "extra"):
            self.register_buffer(name, torch.tensor(getattr(cfg, name), dtype=torch.long),
                                 persistent=False)

    def features(self, state: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """The head's inputs ``(..., n_features)`` from a normalised state ``(..., state_dim)``.

        ``mean`` and ``std`` undo the normalisation for the offset, which is read in real
        units (``/ scale``); the extra fields stay normalised.
        """
        raw = state.float() * std + mean
        d = (raw[..., self.anchor] - raw[..., self.target]) / self.cfg.scale
        return torch.cat([d, d[..., :-1].norm(dim=-1, keepdim=True),
                          state[..., self.extra].float()], -1)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(...)`` of features ``(..., n_features)``."""
        return self.mlp(features).squeeze(-1)
