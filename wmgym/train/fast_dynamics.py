"""``wmgym train fast-dynamics``: distil a checkpoint's transformer into a fast one.

The student (:mod:`wmgym.model.fast_dynamics`) is the teacher with one key/value head per
layer, started from the teacher's weights with the heads averaged. It learns to do what the
teacher does on the inputs imagination gives it, so it needs no dataset, only the checkpoint:

1. imagine ``rollouts`` episodes of ``horizon`` steps with the teacher (no frames decoded), each
   acted by one of ``policies``, keeping the context tokens, every frame's tokens, the actions
   and the state each slot was given (:mod:`wmgym.train.imagined`);
2. cut windows of ``max_frames`` frames from them (the first window of a rollout with
   probability ``first_window``, else one after the window has slid: the gap flag set), and
   fit the student's token distributions to the teacher's on the same window (KL divergence)
   and its heads to the teacher's heads (reward and state: squared error; success: KL
   divergence of the two probabilities);
3. report both against the teacher on held-out rollouts, before and after.

Trained on the teacher's rollouts alone, the student never sees the frames its own small
errors lead to, and in imagination those errors compound (exposure bias). ``--on-policy N``
(with ``--resume``) lets the fast transformer being resumed imagine ``N`` rollouts itself with
the same policies; a share of every batch's windows then comes from them, with the teacher's
distributions on those windows as targets (on-policy distillation, as in GKD: Agarwal et al.,
2024).

The result is written into ``<checkpoint>/fast_dynamics``, bound to the checkpoint's weights;
whether it imagines as well as the teacher is for a sweep with the fast preset to say.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from wmgym.model.checkpoint import read_config
from wmgym.model.event_latent import draw_steps
from wmgym.model.fast_dynamics import (
    FAST_DYNAMICS,
    fast_dynamics_records,
    init_student,
    init_student_from,
    load_fast_dynamics,
    save_fast_dynamics,
)
from wmgym.model.transformer import DynamicsTransformer
from wmgym.model.world_model import WorldModel, resolve_device
from wmgym.results import machine
from wmgym.train import common
from wmgym.train.imagined import (
    FIELDS,
    ImaginedRollouts,
    distill_policies,
    imagine_many,
    load_rollouts,
    save_rollouts,
)


@dataclass
class TrainFastDynamicsArgs:
    """Options of ``wmgym train fast-dynamics``."""

    checkpoint: str
    """World-model checkpoint whose transformer is distilled; the student is written to
    ``<checkpoint>/fast_dynamics``."""
    task: str = ""
    """Task name or spec file; empty: the task the checkpoint was made for."""
    rollouts: int = 1024
    """Imagined rollouts to distil on (made once, kept in ``<out>/rollouts.safetensors``)."""
    horizon: int = 100
    """Steps per rollout."""
    policies: tuple[str, ...] = ()
    """Policies acting the rollouts (``make_policy`` names), in turn; empty: the task's
    distillation policies (its module's ``DISTILL_POLICIES``)."""
    heldout: int = 64
    """Rollouts kept out of training to measure the student against the teacher."""
    kv_heads: int = 1
    """Key/value heads of the student (must divide the teacher's ``n_head``)."""
    steps: int = 1200
    """Optimizer steps."""
    batch: int = 8
    """Windows per optimizer step."""
    lr: float = 3e-4
    """Peak learning rate (AdamW), cosine-decayed to 10%."""
    warmup: int = 50
    """Warm-up steps."""
    first_window: float = 0.25
    """Share of windows that start right after the context (the rest start later)."""
    eval_windows: int = 256
    """Held-out windows the report averages over."""
    resume: bool = False
    """Continue training the checkpoint's fast transformer instead of starting from the
    teacher's weights (its previous report is kept under ``resumed_from``)."""
    init_from: str = ""
    """Start from this other world-model checkpoint's fast transformer instead of the teacher's
    averaged key/value heads: after a fine-tune of the teacher, the student distilled from the
    weights before it is most of the way there (its report is kept under
    ``initialised_from``). Parameters it lacks, such as an event latent the fine-tune added,
    come from the teacher."""
    on_policy: int = 0
    """With ``resume``: rollouts the fast transformer being resumed imagines itself (acted by
    ``policies``, kept in ``<out>/student_rollouts.safetensors``); 0: none."""
    on_policy_share: float = 0.5
    """Share of each batch's windows cut from the student's own rollouts (with
    ``on_policy``)."""
    event_share: float = 0.0
    """Share of each batch's windows that start 1 to ``window / 2`` frames before an event
    begins (the event latent turns on), for a teacher with the latent: uniform windows hold an
    event's few decisive frames rarely. Held-out windows stay uniform."""
    seed: int = 0
    """Seed of the rollouts, the windows and the batches."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    out: str = "runs/fast_dynamics"
    """Run directory: TensorBoard scalars and the imagined rollouts."""
    log_every: int = 25
    """Steps between TensorBoard scalars."""


def windows(data: ImaginedRollouts, rows: Tensor, starts: Tensor, length: int
            ) -> dict[str, Tensor]:
    """Windows of ``length`` frames of rollouts ``rows`` from steps ``starts``, as inputs.

    Returns ``ctx_tokens, frame_tokens, actions, gap, prev_state, event`` for
    :meth:`~wmgym.model.transformer.DynamicsTransformer.forward`.
    """
    steps = starts[:, None] + torch.arange(length)
    r = rows[:, None]
    return {"ctx_tokens": data.ctx_tokens[rows], "frame_tokens": data.tokens[r, steps],
            "actions": data.actions[r, steps], "gap": (starts > 0).float(),
            "prev_state": data.states[r, steps], "event": data.event[r, steps]}


def draw_starts(n: int, horizon: int, length: int, first_window: float,
                gen: torch.Generator) -> Tensor:
    """Window starts: 0 with probability ``first_window``, else uniform in ``[1, T - length]``.

    All 0 when the rollouts are no longer than a window.
    """
    later = torch.randint(1, max(2, horizon - length + 1), (n,), generator=gen)
    first = torch.rand(n, generator=gen) < first_window
    if horizon - length < 1:
        return torch.zeros_like(later)
    return torch.where(first, torch.zeros_like(later), later)


def _bernoulli_kl(p_logit: Tensor, q_logit: Tensor) -> Tensor:
    """Mean KL(p || q) of Bernoulli variables given by their logits."""
    p = torch.sigmoid(p_logit)
    return (F.binary_cross_entropy_with_logits(q_logit, p)
            - F.binary_cross_entropy_with_logits(p_logit, p))


def distill_loss(student: DynamicsTransformer, teacher: DynamicsTransformer,
                 batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    """The student's distance to the teacher on one batch of windows, and metrics.

    Token KL(teacher || student) per token + reward (symlog) and normalised state squared
    errors + the success head's KL (Bernoulli, from the logits): zero when they agree.
    """
    with torch.no_grad():
        t_logits, t_aux = teacher.raw_outputs(**batch)
        t_logp = t_logits.float().log_softmax(-1)
    s_logits, s_aux = student.raw_outputs(**batch)
    s_logp = s_logits.float().log_softmax(-1)
    terms = {
        "token_kl": (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean(),
        "reward_mse": (s_aux[..., 0] - t_aux[..., 0]).pow(2).mean(),
        "success_kl": _bernoulli_kl(t_aux[..., 1], s_aux[..., 1]),
        "state_mse": (s_aux[..., 2:] - t_aux[..., 2:]).pow(2).mean(),
    }
    loss = sum(terms.values())
    with torch.no_grad():
        m = {k: v.item() for k, v in terms.items()}
        m["token_agree"] = (s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean().item()
        m["success_agree"] = ((s_aux[..., 1] > 0) == (t_aux[..., 1] > 0)).float().mean().item()
    return loss, m


@torch.no_grad()
def compare(student: DynamicsTransformer, teacher: DynamicsTransformer, data: ImaginedRollouts,
            rows: Tensor, starts: Tensor, length: int, device: torch.device,
            chunk: int = 16) -> dict[str, float]:
    """:func:`distill_loss`'s metrics averaged over fixed held-out windows."""
    student.eval()
    sums: dict[str, float] = {}
    for lo in range(0, len(rows), chunk):
        batch = windows(data, rows[lo: lo + chunk], starts[lo: lo + chunk], length)
        _, m = distill_loss(student, teacher, {k: v.to(device) for k, v in batch.items()})
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v * len(batch["gap"])
    return {k: v / len(rows) for k, v in sums.items()}


def _rollouts(path: Path, made_by: dict[str, str], args: TrainFastDynamicsArgs, n: int,
              device: torch.device, dynamics: str, seed: int) -> tuple[ImaginedRollouts, float]:
    """``path``'s first ``n`` rollouts if ``made_by`` made them, else imagined now, kept there."""
    made_by = {**made_by, "fields": ",".join(FIELDS)}
    if path.exists():
        meta = {}
        try:
            data, meta = load_rollouts(path)
        except (KeyError, OSError, ValueError):
            pass
        t = args.horizon
        alike = bool(meta) and all(meta.get(k) == v for k, v in made_by.items())
        if alike and len(data) >= n and data.tokens.shape[1] >= t:
            print(f"reusing {n} of the {len(data)} imagined rollouts in {path}")
            return data.first(n, t), float(meta["imagine_seconds"])
        print(f"{path} was imagined otherwise or holds too few rollouts: imagining anew")
    start = time.perf_counter()
    task = common.checkpoint_task(args.task, args.checkpoint)
    data = imagine_many(args.checkpoint, task=task, rollouts=n, horizon=args.horizon,
                        policies=_policies(args), seed=seed, device=device, dynamics=dynamics)
    seconds = time.perf_counter() - start
    save_rollouts(data, path, {**made_by, "imagine_seconds": f"{seconds:.1f}"})
    return data, seconds


def rollouts_for(args: TrainFastDynamicsArgs, device: torch.device
                 ) -> tuple[ImaginedRollouts, float]:
    """``<out>/rollouts.safetensors`` if it was imagined alike, else imagined now and kept there.

    Alike: by the same weights (sha256), policies and seed, with enough rollouts and steps.
    Returns the rollouts and the seconds it took to imagine them.
    """
    made_by = {"teacher_sha256": read_config(args.checkpoint)["sha256"],
               "policies": json.dumps(list(_policies(args))), "seed": str(args.seed)}
    return _rollouts(Path(args.out) / "rollouts.safetensors", made_by, args, args.rollouts,
                     device, "full", args.seed)


def own_rollouts_for(args: TrainFastDynamicsArgs, device: torch.device
                     ) -> tuple[ImaginedRollouts, float]:
    """The checkpoint's fast transformer's own ``on_policy`` rollouts, as :func:`rollouts_for`.

    Imagined with other starts and policy seeds than the teacher's (seed ``seed + 7919``), and
    kept in ``<out>/student_rollouts.safetensors`` for the same student weights (sha256).
    """
    seed = args.seed + 7919
    made_by = {"teacher_sha256": read_config(args.checkpoint)["sha256"],
               "student_sha256": FAST_DYNAMICS.sha256(args.checkpoint),
               "policies": json.dumps(list(_policies(args))), "seed": str(seed)}
    return _rollouts(Path(args.out) / "student_rollouts.safetensors", made_by, args,
                     args.on_policy, device, "fast", seed)


def _policies(args: TrainFastDynamicsArgs) -> tuple[str, ...]:
    return args.policies or distill_policies(common.checkpoint_task(args.task, args.checkpoint))


def event_begins(data: ImaginedRollouts, n_rows: int) -> tuple[Tensor, Tensor]:
    """``(rows, steps)`` of every event that begins in the first ``n_rows`` rollouts.

    An event begins at a step whose slot carries the event latent while the step before's did
    not (:func:`~wmgym.model.event_latent.draw_steps`).
    """
    rows, steps = draw_steps(data.event[:n_rows]).nonzero(as_tuple=True)
    return rows, steps


@dataclass
class Pool:
    """Rollouts to cut windows from: the first ``n_train`` to train on, the rest held out."""

    data: ImaginedRollouts
    n_train: int
    event_share: float = 0.0

    def __post_init__(self) -> None:
        self.begins = event_begins(self.data, self.n_train) if self.event_share else None
        if self.begins is not None and not len(self.begins[0]):
            raise ValueError("event_share: the training rollouts hold no event (the teacher "
                             "has no event latent, or its rollouts never start one)")

    def draw(self, n: int, length: int, first_window: float, gen: torch.Generator
             ) -> dict[str, Tensor]:
        """``n`` training windows (:func:`windows`), an ``event_share`` of them at events."""
        rows = torch.randint(0, self.n_train, (n,), generator=gen)
        horizon = self.data.tokens.shape[1]
        starts = draw_starts(n, horizon, length, first_window, gen)
        if self.begins is not None:
            at = torch.rand(n, generator=gen) < self.event_share
            pick = torch.randint(0, len(self.begins[0]), (n,), generator=gen)
            before = torch.randint(1, length // 2 + 1, (n,), generator=gen)
            rows = torch.where(at, self.begins[0][pick], rows)
            event_starts = (self.begins[1][pick] - before).clamp(0, max(0, horizon - length))
            starts = torch.where(at, event_starts, starts)
        return windows(self.data, rows, starts, length)

    def heldout(self, n: int, length: int, first_window: float, gen: torch.Generator
                ) -> tuple[Tensor, Tensor]:
        """Rows and starts of ``n`` fixed held-out windows."""
        rows = torch.randint(self.n_train, len(self.data), (n,), generator=gen)
        horizon = self.data.tokens.shape[1]
        return rows, draw_starts(n, horizon, length, first_window, gen)


def train_fast_dynamics(args: TrainFastDynamicsArgs) -> Path:
    """Distils the checkpoint's transformer; returns the fast transformer's directory."""
    if not 0 < args.heldout < args.rollouts:
        raise ValueError(f"heldout must be in (0, rollouts={args.rollouts}), got {args.heldout}")
    if args.on_policy and not args.resume:
        raise ValueError("on_policy needs resume: the rollouts are imagined by the fast "
                         "transformer being resumed")
    if args.init_from and args.resume:
        raise ValueError("init_from and resume both name the student to start from; give one")
    if args.on_policy and not 0 < args.on_policy_share < 1:
        raise ValueError(f"on_policy_share must be in (0, 1), got {args.on_policy_share}")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    data, imagine_seconds = rollouts_for(args, device)
    if not 0 <= args.event_share < 1:
        raise ValueError(f"event_share must be in [0, 1), got {args.event_share}")
    pools = {"teacher": Pool(data, args.rollouts - args.heldout, args.event_share)}
    if args.on_policy:
        own, own_seconds = own_rollouts_for(args, device)
        imagine_seconds += own_seconds
        held = max(1, round(args.on_policy * args.heldout / args.rollouts))
        if held >= args.on_policy:
            raise ValueError(f"on_policy={args.on_policy} leaves no rollouts to train on")
        pools["student"] = Pool(own, args.on_policy - held, args.event_share)
    teacher = WorldModel.load(args.checkpoint, device).dynamics.requires_grad_(False)
    length = min(teacher.cfg.max_frames, args.horizon)
    previous, records = None, {}
    if args.resume:
        previous = read_config(FAST_DYNAMICS.directory(args.checkpoint))["distill"]
        # records of the student's other fits stay true: no distillation loss reaches them
        records = fast_dynamics_records(args.checkpoint, also=("distill",))
        student = load_fast_dynamics(args.checkpoint, device).requires_grad_(True)
    elif args.init_from:
        previous = read_config(FAST_DYNAMICS.directory(args.init_from))["distill"]
        student, fresh = init_student_from(teacher, load_fast_dynamics(args.init_from, device))
        student.requires_grad_(True)
        previous = {**previous, "parameters_from_teacher": fresh}
        if fresh:
            print(f"from the teacher (not in {args.init_from}'s fast transformer): {fresh}")
    else:
        student = init_student(teacher, args.kv_heads)
    gen = torch.Generator().manual_seed(args.seed)
    held_out = {name: pool.heldout(args.eval_windows, length, args.first_window, gen)
                for name, pool in pools.items()}

    def report() -> dict[str, dict[str, float]]:
        return {name: compare(student, teacher, pools[name].data, *held_out[name], length,
                              device) for name in pools}

    before = report()
    started = "resume" if args.resume or args.init_from else "init"
    print(f"student at {started} vs teacher, held out: {before}")
    n_own = round(args.batch * args.on_policy_share) if args.on_policy else 0
    per_pool = {"teacher": args.batch - n_own, "student": n_own}
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0,
                            betas=(0.9, 0.95))
    log = common.Logger(Path(args.out) / "tb", True)
    bar = tqdm(range(args.steps), desc="distil")
    train_start = time.perf_counter()
    for step in bar:
        parts = [pool.draw(per_pool[name], length, args.first_window, gen)
                 for name, pool in pools.items() if per_pool[name]]
        batch = {k: torch.cat([part[k] for part in parts]).to(device) for k in parts[0]}
        student.train()
        loss, m = distill_loss(student, teacher, batch)
        common.optimizer_step(student, opt, loss,
                              common.lr_at(step, args.steps, args.lr, args.warmup))
        if step % args.log_every == 0 or step == args.steps - 1:
            m["loss"], m["lr"] = loss.item(), opt.param_groups[0]["lr"]
            log.scalars(step, m)
            bar.set_postfix(kl=f"{m['token_kl']:.3f}", agree=f"{m['token_agree']:.3f}")
    train_seconds = time.perf_counter() - train_start
    after = report()
    for name, metrics in after.items():
        log.scalars(args.steps, metrics, prefix=f"heldout_{name}")
    log.close()
    print(f"student vs teacher, held out: {after}")
    own_report = {"heldout_own_rollouts_vs_teacher_at_start": before["student"],
                  "heldout_own_rollouts_vs_teacher": after["student"]} if args.on_policy else {}
    out = save_fast_dynamics(args.checkpoint, student.eval(), {"distill": {
        "args": asdict(args), "heldout_vs_teacher_at_init": before["teacher"],
        "heldout_vs_teacher": after["teacher"], **own_report,
        "imagine_seconds": round(imagine_seconds, 1),
        "train_seconds": round(train_seconds, 1), "machine": machine(),
        **({"initialised_from" if args.init_from else "resumed_from": previous}
           if previous else {}),
    }, **records})
    print(f"fast transformer -> {out} ({time.perf_counter() - start:.0f} s)")
    return out


def train_fast_dynamics_main(args: TrainFastDynamicsArgs) -> None:
    train_fast_dynamics(args)
