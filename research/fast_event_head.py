"""Give the fast transformer its teacher's event (grasp) head back.

    python research/fast_event_head.py --checkpoint checkpoints/WM-Pick-v0

``research/grasp_calibration.py`` refitted the fast transformer's event head on the states the
fast transformer reached in imagination, which were a centimetre off the real ones: the refit
head learned that offset. With a state model (``wmgym train state-model``) the imagined state
is the real one to a fraction of a millimetre, and that correction turns into a bias (the fast
preset then drops grasps that hold in robosuite). The full transformer's head was fitted on the
real states of every event in the data; this copies it into the fast transformer, leaving the
rest as distilled, and records the copy in its ``config.json`` (``event_head_from_teacher``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import tyro

from wmgym.model.checkpoint import sha256_file
from wmgym.model.fast_dynamics import (
    FAST_DYNAMICS,
    fast_dynamics_records,
    load_fast_dynamics,
    save_fast_dynamics,
)
from wmgym.model.world_model import WorldModel


@dataclass
class FastEventHeadArgs:
    """Options of ``research/fast_event_head.py``."""

    checkpoint: str = "checkpoints/WM-Pick-v0"
    """Checkpoint whose fast transformer gets the full transformer's event head."""


def copy_event_head(args: FastEventHeadArgs) -> dict:
    """Copies the teacher's event head into the fast transformer; returns the record."""
    teacher = WorldModel.load(args.checkpoint).dynamics
    student = load_fast_dynamics(args.checkpoint)
    if teacher.event_head is None or student.event_head is None:
        raise ValueError(f"{args.checkpoint}: both transformers need an event head")
    before = sha256_file(FAST_DYNAMICS.directory(args.checkpoint) / "model.safetensors")
    with torch.no_grad():
        student.event_head.load_state_dict(teacher.event_head.state_dict())
    record = {"replaced_sha256": before, "why": "the state model makes imagined states real"}
    records = fast_dynamics_records(args.checkpoint)
    save_fast_dynamics(args.checkpoint, student, {**records, "event_head_from_teacher": record})
    print(f"{args.checkpoint}: the fast transformer now has the full transformer's event head")
    return record


if __name__ == "__main__":
    copy_event_head(tyro.cli(FastEventHeadArgs))
