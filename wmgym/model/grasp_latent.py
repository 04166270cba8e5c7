"""The grasp latent: whether a grasp holds, decided once when it begins.

A grasp that is a centimetre or two off holds or slips; which one is written in the gripper's
offset from the cube the moment the fingers close (a 7-nearest-neighbour vote on that offset
calls 81-87% of near-miss grasps right), yet the transformer, given the state on every slot,
called them little better than a coin and lifted the cube in about half the grasps robosuite
let slip (``scripts/grasp_outcomes.py``; docs/experiments.md, sessions 19-20).

With ``DynamicsConfig.grasp_latent`` the decision is made explicit. When the gripper has been
commanded closed ``CLOSING_RUN`` steps in a row, :class:`GraspHead` reads the offset and the
finger opening off the latest state and gives the probability that the grasp holds; a bit is
drawn from it once (per rollout, from that rollout's generator) and a learned vector for
*hold* or *slip* is added to every slot until the gripper is commanded open again. In training
the bit is the grasp's real outcome (:func:`grasp_labels`), so the frames learn to follow it and
the head alone carries the decision; the head is fitted apart, on every grasp in the data
(:mod:`wmgym.train.grasp_head`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

#: Closing commands in a row that make a grasp: noisy policies flick the gripper without one.
CLOSING_RUN = 3
#: Latent values: no grasp under way, a grasp that holds, one that slips.
NONE, HOLD, SLIP = 0, 1, 2
#: Steps a grasp must be watched without a lift before it counts as slipped, when the episode
#: ends during it (one cut off sooner is left unlabelled: :data:`NONE`).
MIN_WATCHED = 10
#: The head's inputs: the gripper's offset from the cube (x, y, z, horizontal distance, in
#: units of ``OFFSET_SCALE``) and the two finger joints (normalised).
N_FEATURES = 6


def closing(actions: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Which gripper commands close it (``actions[..., 3] > 0``)."""
    return actions[..., 3] > 0


def draw_steps(latent: Tensor) -> Tensor:
    """Where grasps begin in a latent ``(..., T)``: bool, True where a grasp's bit is drawn.

    The latent turns from :data:`NONE` to hold or slip there (grasps are apart by at least one
    opening command, where it is :data:`NONE`).
    """
    on = latent != NONE
    return on & ~torch.cat([torch.zeros_like(on[..., :1]), on[..., :-1]], -1)


def grasp_labels(actions: np.ndarray, cube_z: np.ndarray, lift_z: float,
                 run: int = CLOSING_RUN) -> tuple[np.ndarray, np.ndarray]:
    """An episode's grasp latent and the steps where each grasp's bit is drawn.

    Args:
        actions: ``(T, action_dim)``; ``actions[t]`` leads from frame ``t`` to ``t + 1``.
        cube_z: ``(T + 1,)`` the cube's height in each frame.
        lift_z: Height above which the cube counts as lifted (the task's success rule).
        run: Closing commands in a row that make a grasp.

    Returns:
        ``latent (T,)`` int64: :data:`HOLD` or :data:`SLIP` from a grasp's ``run``-th closing
        command to its last one, :data:`NONE` elsewhere; ``starts (T,)`` bool: the step where
        each labelled grasp's bit is drawn. A grasp holds when the cube rises above ``lift_z``
        before the gripper is commanded open (or the episode ends).
    """
    shut = np.asarray(closing(np.asarray(actions)))
    n = len(shut)
    latent, starts = np.zeros(n, np.int64), np.zeros(n, bool)
    t = 0
    while t < n:
        if not shut[t]:
            t += 1
            continue
        end = t
        while end + 1 < n and shut[end + 1]:
            end += 1
        first = t + run - 1
        if end >= first:
            lifted = bool(np.max(cube_z[t + 1:end + 2]) > lift_z)
            if lifted or end < n - 1 or end - first >= MIN_WATCHED:
                latent[first:end + 1] = HOLD if lifted else SLIP
                starts[first] = True
        t = end + 1
    return latent, starts


def advance(run_length: Tensor, latent: Tensor, actions: Tensor, p_hold: Tensor, u: Tensor
            ) -> tuple[Tensor, Tensor]:
    """One step of every rollout's grasp latent, in imagination.

    Args:
        run_length: ``(B,)`` closing commands in a row before this step.
        latent: ``(B,)`` the latent before this step.
        actions: ``(B, action_dim)`` this step's actions.
        p_hold: ``(B,)`` the head's probability that a grasp beginning now holds.
        u: ``(B,)`` uniform draws: a beginning grasp holds where ``u < p_hold``.

    Returns:
        ``(run_length, latent)`` after this step.
    """
    shut = closing(actions)
    run_length = torch.where(shut, run_length + 1, torch.zeros_like(run_length))
    drawn = torch.where(u < p_hold, HOLD, SLIP)
    kept = torch.where(shut, latent, torch.full_like(latent, NONE))
    return run_length, torch.where(run_length == CLOSING_RUN, drawn, kept)


class GraspHead(nn.Module):
    """The probability that a grasp beginning now holds, from :data:`N_FEATURES` features.

    Args:
        hidden: Width of its hidden layer.
    """

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(...)`` of features ``(..., N_FEATURES)``."""
        return self.mlp(features).squeeze(-1)
