"""``wmgym train tokenizer``: fit the MMTokenizer on (context, future) frame pairs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wmgym.model import checkpoint as ckpt
from wmgym.model.tokenizer import MMTokenizer, TokenizerConfig
from wmgym.train import common
from wmgym.train.data import load_episodes, sample_frame_pairs


@dataclass
class TrainTokenizerArgs(common.TrainArgs):
    """Options of ``wmgym train tokenizer``."""

    out: str = "runs/tokenizer"
    """Run directory: TensorBoard logs, resumable state, and ``final/`` (the trained tokenizer)."""
    steps: int = 1000
    """Optimizer steps (all processes together take one step each)."""
    batch: int = 32
    """Context frames per process per step."""
    n_future: int = 2
    """Future frames decoded per context frame."""
    lr: float = 1e-3
    """Peak learning rate (AdamW), cosine-decayed."""
    warmup: int = 100
    """Warm-up steps."""
    base_channels: int = 16
    """Channels at full resolution (model width)."""


def recon_grid(tok: MMTokenizer, ctx: torch.Tensor, fut: torch.Tensor) -> torch.Tensor:
    """(3, H, W) image: rows of context | its reconstruction | future | its reconstruction."""
    with torch.no_grad():
        code = tok.encode_context(ctx)
        rc = tok.decode_context(code.tokens)
        rf = tok.decode_future(tok.encode_future(fut, code.feats), code.feats)
    rows = [torch.cat([ctx[i, :3], rc[i, :3], fut[i, :3], rf[i, :3]], dim=-1)
            for i in range(len(ctx))]
    return torch.cat(rows, dim=-2).cpu()


def train_tokenizer(args: TrainTokenizerArgs) -> Path:
    """Trains the tokenizer; returns the directory of the final weights."""
    d = common.setup_distributed(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + d.rank)
    spec = common.dataset_task(args.task, args.data)
    out = Path(args.out)
    episodes = load_episodes(args.data, "train", spec.depth_range)
    cfg = TokenizerConfig(resolution=spec.resolution, base_channels=args.base_channels)
    model = MMTokenizer(cfg).to(d.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    step = 0
    if args.resume and (out / "state.json").exists():
        step = common.load_train_state(out, model, opt)["step"]
    trainer = common.wrap_ddp(common.LossForward(model), d)
    log = common.Logger(out / "tb", d.main)
    n_params = sum(p.numel() for p in model.parameters())
    if d.main:
        print(f"tokenizer: {n_params / 1e6:.2f}M params, {len(episodes)} train episodes")
    start = time.perf_counter()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="tokenizer",
               disable=not d.main)
    for step in bar:
        ctx, fut = sample_frame_pairs(episodes, args.batch, rng, args.n_future)
        model.train()
        loss, m = trainer(ctx.to(d.device), fut.to(d.device))
        common.optimizer_step(model, opt, loss,
                              common.lr_at(step, args.steps, args.lr, args.warmup))
        if d.main and (step % args.log_every == 0 or step == args.steps - 1):
            m["lr"] = opt.param_groups[0]["lr"]
            m["frames_per_s"] = (step + 1 - bar.initial) * args.batch * (1 + args.n_future) \
                * d.world / (time.perf_counter() - start)
            log.scalars(step, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}", psnr_fut=f"{m['psnr_fut']:.1f}")
        if d.main and step % (args.log_every * 10) == 0:
            model.eval()
            log.image(step, "recon/ctx|rec|fut|rec", recon_grid(model, ctx[:4].to(d.device),
                                                                fut[:4, 0].to(d.device)))
        if d.main and (step + 1) % args.ckpt_every == 0:
            common.save_train_state(out, model, opt, step + 1, {"args": asdict(args)})
    final = out / "final"
    if d.main:
        common.save_train_state(out, model, opt, args.steps, {"args": asdict(args)})
        ckpt.save_checkpoint(final, model.state_dict(), {
            "tokenizer": asdict(cfg), "depth_range": list(spec.depth_range),
            "train_seconds": round(time.perf_counter() - start, 1), "args": asdict(args),
        })
        print(f"tokenizer -> {final} ({time.perf_counter() - start:.0f} s)")
    log.close()
    common.cleanup_distributed()
    return final


def train_tokenizer_main(args: TrainTokenizerArgs) -> None:
    train_tokenizer(args)
