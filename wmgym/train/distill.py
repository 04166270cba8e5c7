"""``wmgym train decoder``: distil a world model's frame decoder into a fast one.

The student (:func:`~wmgym.model.fast_decoder.build_fast_decoder`) learns to draw what the
checkpoint's own decoder draws from the tokens the checkpoint itself imagines: the frames an
env decodes are exactly those. So the distillation set needs no dataset, only the checkpoint:

1. imagine ``rollouts`` episodes of ``horizon`` steps (no frames decoded), each acted by one of
   ``policies`` (scripted experts of graded competence and random ones) from the checkpoint's
   bank of real starts, keeping every step's frame tokens;
2. decode every imagined frame with the full decoder (the targets, float16);
3. fit the student to them with the tokenizer's own reconstruction loss (rgb L1 + SSIM, depth
   L1, mask BCE against the teacher's mask probability), holding out some rollouts to report
   how close it gets.

The result is written into ``<checkpoint>/fast_decoder``, bound to the checkpoint's weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from wmgym.model.checkpoint import load_start_obs, read_config
from wmgym.model.fast_decoder import (
    FAST_DECODER,
    build_fast_decoder,
    load_fast_decoder,
    save_fast_decoder,
)
from wmgym.model.frames import DEPTH, MASK, RGB, mask_iou, psnr
from wmgym.model.tokenizer import Decoder, MMTokenizer, config_from_dict, reconstruction_loss
from wmgym.model.world_model import WorldModel, resolve_device
from wmgym.results import machine
from wmgym.train import common
from wmgym.train.imagined import distill_policies, imagine


@dataclass
class TrainDecoderArgs:
    """Options of ``wmgym train decoder``."""

    checkpoint: str
    """World-model checkpoint whose frame decoder is distilled; the fast decoder is written
    to ``<checkpoint>/fast_decoder``."""
    task: str = ""
    """Task name or spec file; empty: the task the checkpoint was made for."""
    rollouts: int = 256
    """Imagined rollouts in the distillation set."""
    horizon: int = 100
    """Steps per rollout."""
    policies: tuple[str, ...] = ()
    """Policies acting the rollouts (``make_policy`` names), in turn; empty: the task's
    distillation policies (its module's ``DISTILL_POLICIES``)."""
    heldout: int = 32
    """Rollouts kept out of training to measure the student against the teacher."""
    steps: int = 3000
    """Optimizer steps."""
    batch: int = 64
    """Frames per optimizer step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW), cosine-decayed."""
    warmup: int = 100
    """Warm-up steps."""
    base_channels: int = 8
    """Student channels at full resolution (the teacher's: 16)."""
    channel_mult: tuple[int, ...] = (1, 2, 4, 6, 6)
    """Student channel multiplier at 64, 32, 16, 8, 4 px."""
    subpixel: int = 2
    """The student stops at resolution / subpixel; a sub-pixel convolution upsamples."""
    init_from: str = ""
    """Start from this other world-model checkpoint's fast decoder (its shape: the channel
    options are ignored). After a fine-tune that kept the tokenizer, the decoder of the weights
    before it is most of the way there; its held-out score at the start is kept in the report
    (``heldout_vs_teacher_at_start``)."""
    seed: int = 0
    """Seed of the starts, the policies, the samplers, the initialisation and the batches."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    out: str = "runs/fast_decoder"
    """Run directory: TensorBoard scalars and images."""
    log_every: int = 50
    """Steps between TensorBoard scalars."""


@dataclass
class DistillSet:
    """Imagined frames to distil on: per rollout its context, per step its tokens and frame."""

    feats: list[Tensor]  # the context frames' encoder features, (R, C, h, w) each
    tokens: Tensor  # (R, T, n) long
    frames: Tensor  # (R, T, 5, H, W) float16: the teacher's decoded frames

    def sample(self, rows: Tensor, steps: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """``(tokens (B, n), context features, teacher frames (B, 5, H, W) float32)``."""
        return (self.tokens[rows, steps], [f[rows] for f in self.feats],
                self.frames[rows, steps].float())


@torch.no_grad()
def teacher_frames(tok: MMTokenizer, feats: list[Tensor], tokens: Tensor,
                   chunk: int = 32) -> Tensor:
    """Every ``tokens (R, T, n)`` frame decoded by ``tok``'s own decoder, float16 on the CPU."""
    r, t = tokens.shape[:2]
    flat = tokens.flatten(0, 1)
    rows = torch.arange(r).repeat_interleave(t)
    out = torch.empty(r * t, tok.cfg.in_channels, tok.cfg.resolution, tok.cfg.resolution,
                      dtype=torch.float16)
    for lo in tqdm(range(0, r * t, chunk), desc="teacher frames"):
        sel = rows[lo: lo + chunk]
        out[lo: lo + chunk] = tok.decode_future(flat[lo: lo + chunk],
                                                [f[sel] for f in feats]).half().cpu()
    return out.view(r, t, *out.shape[1:])


def build_distill_set(args: TrainDecoderArgs, model: WorldModel) -> DistillSet:
    """Imagines the rollouts and decodes their frames with the teacher (steps 1 and 2)."""
    task = common.checkpoint_task(args.task, args.checkpoint)
    rollouts = imagine(model, task, load_start_obs(args.checkpoint), n=args.rollouts,
                       policies=args.policies or distill_policies(task), horizon=args.horizon,
                       seed=args.seed)
    device = model.device
    frames, tokens = rollouts.frames.to(device), rollouts.tokens
    tok = model.tokenizer
    with torch.no_grad():
        feats = [f.cpu() for f in tok.encode_context(frames).feats]
    targets = teacher_frames(tok, [f.to(device) for f in feats], tokens.to(device))
    return DistillSet(feats, tokens, targets)


@torch.no_grad()
def compare(student: Decoder, tok: MMTokenizer, data: DistillSet, rows: Tensor,
            device: torch.device, chunk: int = 256) -> dict[str, float]:
    """Student against teacher on every frame of ``rows``: rgb PSNR, depth L1, mask IoU."""
    student.eval()
    sums = {"psnr": 0.0, "depth_l1": 0.0, "mask_iou": 0.0}
    t = data.tokens.shape[1]
    pairs = torch.cartesian_prod(rows, torch.arange(t))
    for lo in range(0, len(pairs), chunk):
        r, s = pairs[lo: lo + chunk].T
        tokens, feats, target = data.sample(r, s)
        pred = tok.decode_future(tokens.to(device), [f.to(device) for f in feats], student)
        target = target.to(device)
        sums["psnr"] += psnr(pred[:, RGB], target[:, RGB]).sum().item()
        depth_err = (pred[:, DEPTH] - target[:, DEPTH]).abs().flatten(1).mean(1)
        sums["depth_l1"] += depth_err.sum().item()
        sums["mask_iou"] += mask_iou(pred[:, MASK], target[:, MASK]).sum().item()
    return {k: v / len(pairs) for k, v in sums.items()}


def train_decoder(args: TrainDecoderArgs) -> Path:
    """Distils the checkpoint's frame decoder; returns the fast decoder's directory."""
    if not 0 < args.heldout < args.rollouts:
        raise ValueError(f"heldout must be in (0, rollouts={args.rollouts}), got {args.heldout}")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = WorldModel.load(args.checkpoint, device).requires_grad_(False)
    data = build_distill_set(args, model)
    imagine_seconds = time.perf_counter() - start
    tok = model.tokenizer
    if args.init_from:
        if read_config(args.init_from)["tokenizer"] != read_config(args.checkpoint)["tokenizer"]:
            raise ValueError(f"init_from: {args.init_from}'s tokenizer is not "
                             f"{args.checkpoint}'s; its fast decoder decodes other tokens")
        cfg = config_from_dict(read_config(FAST_DECODER.directory(args.init_from))["tokenizer"])
        student = load_fast_decoder(args.init_from, device).requires_grad_(True)
    else:
        cfg, student = build_fast_decoder(tok.cfg, args.base_channels, args.channel_mult,
                                          args.subpixel)
    student.to(device)
    n_train = args.rollouts - args.heldout
    heldout = torch.arange(n_train, args.rollouts)
    at_start = compare(student, tok, data, heldout, device) if args.init_from else None
    if at_start:
        print(f"{args.init_from}'s fast decoder on the held-out rollouts: {at_start}")
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    log = common.Logger(Path(args.out) / "tb", True)
    print(f"fast decoder: {sum(p.numel() for p in student.parameters()) / 1e6:.3f}M params, "
          f"{n_train} x {args.horizon} frames to learn from")
    bar = tqdm(range(args.steps), desc="distil")
    train_start = time.perf_counter()
    for step in bar:
        rows = torch.randint(0, n_train, (args.batch,), generator=gen)
        steps = torch.randint(0, args.horizon, (args.batch,), generator=gen)
        tokens, feats, target = data.sample(rows, steps)
        student.train()
        logits = tok.future_logits(tokens.to(device), [f.to(device) for f in feats], student)
        m: dict[str, float] = {}
        loss = reconstruction_loss(cfg, logits, target.to(device), "student", m)
        common.optimizer_step(student, opt, loss,
                              common.lr_at(step, args.steps, args.lr, args.warmup))
        if step % args.log_every == 0 or step == args.steps - 1:
            m["loss"], m["lr"] = loss.item(), opt.param_groups[0]["lr"]
            log.scalars(step, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}", psnr=f"{m['psnr_student']:.1f}")
    train_seconds = time.perf_counter() - train_start
    result = compare(student, tok, data, heldout, device)
    log.scalars(args.steps, result, prefix="heldout")
    log.close()
    print(f"held-out rollouts, student vs teacher: rgb PSNR {result['psnr']:.2f} dB, depth L1 "
          f"{result['depth_l1']:.4f}, mask IoU {result['mask_iou']:.3f}")
    out = save_fast_decoder(args.checkpoint, student, cfg, {"distill": {
        "args": asdict(args), "heldout_vs_teacher": result,
        **({"heldout_vs_teacher_at_start": at_start} if at_start else {}),
        "imagine_seconds": round(imagine_seconds, 1), "train_seconds": round(train_seconds, 1),
        "machine": machine(),
    }})
    print(f"fast decoder -> {out} ({time.perf_counter() - start:.0f} s)")
    return out


def train_decoder_main(args: TrainDecoderArgs) -> None:
    train_decoder(args)
