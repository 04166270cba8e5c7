"""A distilled dynamics transformer: the checkpoint's own, with one key/value head per layer.

Most of an imagined step's CPU time is the transformer's ``n + 1`` sequential single-token
passes per frame, and most of a pass is attention reading every layer's cached keys and
values. The fast transformer has the teacher's shape except that its ``n_head`` query heads
share ``n_kv_head`` key/value heads (grouped-query attention; 1: multi-query): each pass reads
``n_head / n_kv_head`` times fewer cached bytes. It starts from the teacher's weights with each
group's key and value projections averaged (as in the GQA paper's uptraining) and is then
trained to reproduce the teacher's token distributions and heads on the teacher's own imagined
rollouts (:mod:`wmgym.train.fast_dynamics`). The tokenizer, and so the frames' look, is shared.

It lives beside the weights it was distilled from, bound to them
(:mod:`wmgym.model.companion`): ``<checkpoint>/fast_dynamics/``. Its parameters are stored in
float16 (half the bytes) and run in float32.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from wmgym.model import checkpoint as ckpt
from wmgym.model.companion import Companion, resolve_choice
from wmgym.model.transformer import (
    DynamicsConfig,
    DynamicsTransformer,
    dynamics_config_from_dict,
)

#: Sub-directory of a world-model checkpoint that holds its fast transformer.
SUBDIR = "fast_dynamics"

#: Parameters fitted apart rather than distilled (no distillation loss reaches them): the
#: event head, fitted on the teacher's data (:mod:`wmgym.model.event_latent`).
FITTED = ("event_head.",)
FAST_DYNAMICS = Companion(SUBDIR, "fast transformer", "wmgym train fast-dynamics",
                          "fast=False")


def student_config(teacher: DynamicsConfig, kv_heads: int = 1) -> DynamicsConfig:
    """The teacher's config with ``kv_heads`` key/value heads and no training noise.

    Dropout and the state input's noise and dropout are off: the student learns the teacher's
    function of exactly the inputs imagination gives it.
    """
    return replace(teacher, n_kv_head=kv_heads, dropout=0.0, state_noise=0.0,
                   state_dropout=0.0)


@torch.no_grad()
def init_student(teacher: DynamicsTransformer, kv_heads: int = 1) -> DynamicsTransformer:
    """A student initialised from ``teacher``: each group's key/value heads averaged."""
    cfg = student_config(teacher.cfg, kv_heads)
    student = DynamicsTransformer(cfg).to(teacher.slot.device)
    state = dict(teacher.state_dict())
    h, g, hd, d = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.d_model
    for i in range(cfg.n_layer):
        key = f"blocks.{i}.attn.qkv.weight"
        q, k, v = state[key].view(3, h, hd, d)
        pool = [x.view(g, h // g, hd, d).mean(1) for x in (k, v)]
        state[key] = torch.cat([q, *pool]).reshape(-1, d)
    student.load_state_dict(state)
    return student


@torch.no_grad()
def init_student_from(teacher: DynamicsTransformer, previous: DynamicsTransformer
                      ) -> tuple[DynamicsTransformer, list[str]]:
    """A student for ``teacher`` started from ``previous``, a fast transformer of other weights.

    After a fine-tune of the teacher, the student distilled from the weights before it is most
    of the way there. The student gets the teacher's config (``previous``'s key/value heads)
    and ``previous``'s parameters; the parts ``previous`` lacks (say, an event latent the
    fine-tune added), every buffer (the state normalisation) and the event head come from the
    teacher. The event head is fitted, never distilled (:data:`FITTED`): ``previous``'s was
    fitted for other weights.

    Returns:
        The student and the names of the parameters taken from the teacher.

    Raises:
        ValueError: A parameter of neither's shape (the two models differ in size).
    """
    cfg = student_config(teacher.cfg, previous.cfg.kv_heads)
    student = DynamicsTransformer(cfg).to(teacher.slot.device)
    params = {name for name, _ in student.named_parameters()}
    own, theirs = previous.state_dict(), teacher.state_dict()
    state, from_teacher = student.state_dict(), []
    for name, value in state.items():
        distilled = not name.startswith(FITTED)
        if distilled and name in params and name in own and own[name].shape == value.shape:
            state[name] = own[name]
        elif name in theirs and theirs[name].shape == value.shape:
            state[name] = theirs[name]
            if name in params:
                from_teacher.append(name)
        else:
            raise ValueError(f"{name}: shape {tuple(value.shape)} in neither the previous fast "
                             "transformer nor the teacher")
    student.load_state_dict(state)
    return student, from_teacher


def save_fast_dynamics(checkpoint: str | Path, student: DynamicsTransformer,
                       extra: dict | None = None) -> Path:
    """Writes ``student`` into ``checkpoint/fast_dynamics``, bound to the checkpoint's weights.

    Parameters are stored in float16, buffers (the state normalisation) as they are.
    """
    params = {name for name, _ in student.named_parameters()}
    tensors = {k: v.half() if k in params and v.is_floating_point() else v
               for k, v in student.state_dict().items()}
    return FAST_DYNAMICS.save(checkpoint, tensors,
                              {"dynamics": asdict(student.cfg), **(extra or {})})


#: Keys of a fast transformer's ``config.json`` that :func:`save_fast_dynamics` writes anew.
WRITTEN = ("dynamics", "teacher_sha256", "format", "wmgym_version", "sha256", "shapes")


def fast_dynamics_records(checkpoint: str | Path, *, also: tuple[str, ...] = ()) -> dict:
    """The records in ``checkpoint``'s fast transformer config (its fits, refits, copies).

    Everything :func:`save_fast_dynamics` would not write anew, less the keys ``also``; pass
    them back as ``extra`` so that saving the student again keeps them.
    """
    config = ckpt.read_config(FAST_DYNAMICS.directory(checkpoint))
    return {k: v for k, v in config.items() if k not in WRITTEN + also}


def has_fast_dynamics(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` ships a fast transformer."""
    return FAST_DYNAMICS.exists(checkpoint)


def load_fast_dynamics(checkpoint: str | Path,
                       device: str | torch.device = "cpu") -> DynamicsTransformer:
    """Loads and verifies ``checkpoint``'s fast transformer (float32, eval, no gradients).

    Raises:
        CheckpointError: It is missing, corrupt, or was distilled from other weights than
            ``checkpoint``'s; the message names the files.
    """
    config, _, tensors = FAST_DYNAMICS.read(checkpoint)
    try:
        model = DynamicsTransformer(dynamics_config_from_dict(config["dynamics"]))
    except (KeyError, TypeError, ValueError) as e:
        raise FAST_DYNAMICS.build_error(checkpoint, e) from e
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    ckpt.load_state_dict_strict(model, tensors,
                                FAST_DYNAMICS.directory(checkpoint) / ckpt.WEIGHTS)
    return model.to(device).eval().requires_grad_(False)


def resolve_dynamics(dynamics: str, available: bool) -> str:
    """The transformer ``dynamics`` names: ``full``, ``fast``, or ``auto``.

    ``auto`` is the full transformer.

    Raises:
        ValueError: An unknown name.
    """
    return "full" if dynamics == "auto" else resolve_choice("dynamics", dynamics, available)
