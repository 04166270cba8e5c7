"""``wmgym train dynamics``: fit the transformer on tokenized clips; export the world model."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wmgym.model import checkpoint as ckpt
from wmgym.model.event_latent import first_run
from wmgym.model.tokenizer import MMTokenizer, config_from_dict
from wmgym.model.transformer import DynamicsConfig, DynamicsTransformer
from wmgym.model.world_model import WorldModel
from wmgym.results import machine
from wmgym.train import common
from wmgym.train.data import load_episodes, sample_clips, tokenize_episodes
from wmgym.train.event_head import event_examples, fit_event_head, label_events
from wmgym.train.token_cache import cached_tokenize, tokenizer_fingerprint


@dataclass
class TrainDynamicsArgs(common.TrainArgs):
    """Options of ``wmgym train dynamics``."""

    extra_data: tuple[str, ...] = ()
    """More datasets to train on beside ``data`` (their train splits), e.g. ``wmgym collect
    --policy explore``'s. The start-observation bank comes from ``data`` alone."""
    tokenizer: str = "runs/tokenizer/final"
    """Trained tokenizer (``wmgym train tokenizer``'s ``final/``)."""
    out: str = "runs/dynamics"
    """Run directory: TensorBoard logs and resumable state."""
    checkpoint: str = "runs/world_model"
    """Where to export the finished world model (weights, config, start-observation bank)."""
    steps: int = 2000
    """Optimizer steps."""
    batch: int = 16
    """Clips per process per step."""
    max_frames: int = 16
    """Future frames per clip = the attention window of imagination."""
    d_model: int = 256
    """Transformer width."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    dropout: float = 0.05
    """Dropout in attention and residual branches."""
    lr: float = 6e-4
    """Peak learning rate (AdamW), cosine-decayed."""
    warmup: int = 200
    """Warm-up steps."""
    ctx_stride: int = 20
    """Besides frame 0, every ``ctx_stride``-th frame also serves as a clip's context."""
    bank_size: int = 96
    """Real initial observations shipped with the checkpoint for ``reset()`` without context."""
    gap_embedding: bool = False
    """Tell the model when a clip's first frame does not follow its context directly."""
    state_input: bool = False
    """Give every slot the previous frame's state (real in training, the model's own reading
    in imagination after the context's real one), so frames follow the exact state."""
    event: bool = False
    """With ``state_input``: the task spec's event latent (``[world_model.event]``): a head
    fitted on the data's events reads off the state whether an event beginning succeeds; one
    bit drawn from it rides on the event's slots (the real outcome in training). See
    :mod:`wmgym.model.event_latent`."""
    state_noise: float = 0.1
    """Std of the noise on the training state input, in normalised units."""
    state_dropout: float = 0.1
    """Share of training clips given no state input."""
    token_cache: bool = True
    """Keep each dataset's tokens in ``DATA/token_cache/`` (keyed by the tokenizer's weights)
    and reuse them when training again with the same tokenizer."""
    event_share: float = 0.0
    """Share of clips cut around the task's event (from 1 to ``max_frames / 2`` frames before
    its first triggering command). An event is decided within a handful of an episode's
    frames, which uniform clips hold rarely."""
    init: str = ""
    """Fine-tune: start from this world-model checkpoint (its tokenizer and dynamics weights;
    parameters it lacks, such as a new gap embedding, keep their initialisation). Empty: from
    scratch."""


def load_tokenizer(directory: str | Path, device) -> MMTokenizer:
    """A trained tokenizer from ``wmgym train tokenizer``'s ``final/`` directory."""
    config = ckpt.read_config(directory)
    try:
        cfg = config_from_dict(config["tokenizer"])
    except (KeyError, ValueError) as e:
        raise ckpt.CheckpointError(f"{Path(directory) / ckpt.CONFIG}: {e}") from e
    tok = MMTokenizer(cfg)
    ckpt.load_state_dict_strict(tok, ckpt.load_weights(directory, config),
                                Path(directory) / ckpt.WEIGHTS)
    return tok.to(device).eval()


def start_bank(data: str, size: int, seed: int) -> dict[str, np.ndarray]:
    """Initial observations of up to ``size`` training episodes."""
    from wmgym.data.dataset import read_dataset

    eps = read_dataset(data, "train")
    pick = np.random.default_rng(seed).permutation(len(eps))[:size]
    return {k: np.stack([eps[i].observations[k][0] for i in sorted(pick)])
            for k in eps[0].observations}


#: Parameters a fine-tune may add to its ``--init`` checkpoint (they keep their initialisation).
NEW_PARAMETERS = ("gap_emb", "state_proj.", "event_emb", "event_head.")


def init_from(model: DynamicsTransformer, source: DynamicsTransformer, path: str) -> None:
    """Copies ``source``'s weights into ``model``.

    Only parameters new in ``model`` (the gap embedding, the state input, the event latent)
    may be absent.

    Raises:
        ValueError: The architectures differ beyond added parameters (names the checkpoint).
    """
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or not all(k.startswith(NEW_PARAMETERS) for k in missing):
        raise ValueError(f"{path}: cannot fine-tune from it: missing {missing}, "
                         f"unexpected {unexpected} (expected the same dynamics config)")


def train_dynamics(args: TrainDynamicsArgs) -> Path:
    """Trains the dynamics transformer and exports the world-model checkpoint."""
    if not 0.0 <= args.event_share <= 1.0:
        raise ValueError(f"--event-share is a share of clips in [0, 1], got {args.event_share}")
    if args.event and not args.state_input:
        raise ValueError("--event needs --state-input: its head reads the state")
    spec = common.dataset_task(args.task, args.data)
    if (args.event or args.event_share) and spec.event is None:
        raise ValueError(f"--event and --event-share need the task's event ([world_model.event] "
                         f"in {spec.path})")
    d = common.setup_distributed(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + d.rank)
    out = Path(args.out)
    init = WorldModel.load(args.init, d.device) if args.init else None
    tok = init.tokenizer.eval() if init else load_tokenizer(args.tokenizer, d.device)
    start = time.perf_counter()
    episodes, tokenized, cached, distinct, loaded = [], [], [], [], set()
    fingerprint = tokenizer_fingerprint(tok) if args.token_cache else None
    for path in (args.data, *args.extra_data):
        eps = load_episodes(path, "train", spec.depth_range)
        if args.token_cache:
            toks, hit = cached_tokenize(tok, path, "train", eps, args.ctx_stride, d.device,
                                        progress=d.main, fingerprint=fingerprint)
        else:
            toks, hit = tokenize_episodes(tok, eps, args.ctx_stride, d.device, d.main), False
        distinct += [] if path in loaded else eps  # a dataset given twice counts once
        loaded.add(path)
        episodes += eps
        tokenized += toks
        cached += [path] if hit else []
    tokenize_s = time.perf_counter() - start
    cfg = DynamicsConfig(
        action_dim=spec.action_dim, state_dim=spec.state_dim,
        ctx_vocab_size=tok.ctx_vocab_size, vocab_size=tok.future_vocab_size,
        n_ctx_tokens=tok.n_ctx_tokens, n_frame_tokens=tok.n_future_tokens,
        max_frames=args.max_frames, d_model=args.d_model, n_layer=args.n_layer,
        n_head=args.n_head, dropout=args.dropout, gap_embedding=args.gap_embedding,
        state_input=args.state_input, event=spec.event.as_config() if args.event else None,
        state_noise=args.state_noise, state_dropout=args.state_dropout,
    )
    model = DynamicsTransformer(cfg).to(d.device)
    states = torch.cat([ep.state for ep in episodes])
    model.set_state_normalization(states.mean(0), states.std(0).clamp_min(1e-3))
    if init is not None:
        init_from(model, init.dynamics, args.init)
    if spec.event is not None and args.event_share:
        event = spec.event
        for ep in episodes:
            ep.event_start = first_run(ep.actions.numpy(), event.trigger, event.run)
    event_head = None
    if model.event_head is not None:  # label every episode's events; fit the head once
        label_events(episodes, model.event_head.cfg)
        event_head = fit_event_head(model, *event_examples(distinct), noise=cfg.state_noise,
                                    seed=args.seed)
        model.event_head.requires_grad_(False)
        if d.main:
            print(f"event head: {event_head}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    step = 0
    if args.resume and (out / "state.json").exists():
        step = common.load_train_state(out, model, opt)["step"]
    trainer = common.wrap_ddp(common.LossForward(model), d)
    log = common.Logger(out / "tb", d.main)
    if d.main:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"dynamics: {n_params / 1e6:.2f}M params, {len(episodes)} train episodes, "
              f"loaded and tokenized in {tokenize_s:.0f} s"
              + (f" (tokens of {', '.join(cached)} from the cache)" if cached else ""))
    t0 = time.perf_counter()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="dynamics",
               disable=not d.main)
    for step in bar:
        b = {k: v.to(d.device) for k, v in sample_clips(tokenized, args.batch, args.max_frames,
                                                         rng, args.event_share).items()}
        model.train()
        loss, m = trainer(b["ctx"], b["tokens"], b["actions"], b["reward"], b["success"],
                          b["state"], valid=b["valid"], gap=b["gap"],
                          prev_state=b["prev_state"], event=b.get("event"))
        common.optimizer_step(model, opt, loss,
                              common.lr_at(step, args.steps, args.lr, args.warmup))
        if d.main and (step % args.log_every == 0 or step == args.steps - 1):
            m["lr"] = opt.param_groups[0]["lr"]
            m["clips_per_s"] = (step + 1 - bar.initial) * args.batch * d.world / (
                time.perf_counter() - t0)
            log.scalars(step, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['token_acc']:.2f}")
        if d.main and (step + 1) % args.ckpt_every == 0:
            common.save_train_state(out, model, opt, step + 1, {"args": asdict(args)})
    ckpt_dir = Path(args.checkpoint)
    if d.main:
        common.save_train_state(out, model, opt, args.steps, {"args": asdict(args)})
        wm = WorldModel(tok.cfg, cfg, spec.depth_range)
        wm.tokenizer.load_state_dict(tok.state_dict())
        wm.dynamics.load_state_dict(model.state_dict())
        train_info = {
            "data": [args.data, *args.extra_data],
            "tokenize_seconds": round(tokenize_s, 1),
            "tokens_from_cache": cached,
            "dynamics_seconds": round(time.perf_counter() - t0, 1),
            "dynamics_args": asdict(args),
            "event_head": event_head,
            "machine": machine(),
        }
        if args.init:  # fine-tuned: keep the base run's record
            base = ckpt.read_config(args.init).get("train", {})
            train_info |= {"tokenizer_seconds": base.get("tokenizer_seconds"),
                           "tokenizer_args": base.get("tokenizer_args"), "base": base}
        else:
            tok_meta = ckpt.read_config(args.tokenizer)
            train_info |= {"tokenizer_seconds": tok_meta.get("train_seconds"),
                           "tokenizer_args": tok_meta.get("args")}
        wm.save(ckpt_dir, extra={
            "task": spec.name,
            "train": train_info,
        }, start_obs=start_bank(args.data, args.bank_size, args.seed))
        print(f"world model -> {ckpt_dir} ({time.perf_counter() - start:.0f} s)")
    log.close()
    common.cleanup_distributed()
    return ckpt_dir


def train_dynamics_main(args: TrainDynamicsArgs) -> None:
    train_dynamics(args)
