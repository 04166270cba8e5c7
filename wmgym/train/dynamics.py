"""``wmgym train dynamics``: fit the transformer on tokenized clips; export the world model."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wmgym.model import checkpoint as ckpt
from wmgym.model.tokenizer import MMTokenizer, TokenizerConfig
from wmgym.model.transformer import DynamicsConfig, DynamicsTransformer
from wmgym.model.world_model import WorldModel
from wmgym.results import machine
from wmgym.spec import load_spec
from wmgym.train import common
from wmgym.train.data import load_episodes, sample_clips, tokenize_episodes
from wmgym.train.grasp_head import fit_grasp_head, grasp_examples, label_grasps
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
    checkpoint: str = "checkpoints/WM-Pick-v0"
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
    """Tell the model when a clip's first frame does not follow its context directly (the
    shipped checkpoint's fine-tunes use it; see its card)."""
    state_input: bool = False
    """Give every slot the previous frame's state (real in training, the model's own reading
    in imagination after the context's real one), so frames follow the exact gripper and cube
    positions."""
    offset_input: bool = False
    """With ``state_input``: also the gripper's offset from the cube on every slot (x, y, z and
    the horizontal distance), through a map of its own."""
    grasp_latent: bool = False
    """With ``state_input``: decide each grasp's outcome explicitly. A head fitted on the data's
    grasps reads off the state whether a grasp holds; a hold/slip bit drawn from it once rides
    on the grasp's slots (the real outcome in training). See :mod:`wmgym.model.grasp_latent`."""
    state_noise: float = DynamicsConfig.state_noise
    """Std of the noise on the training state input, in normalised units."""
    state_dropout: float = DynamicsConfig.state_dropout
    """Share of training clips given no state input."""
    parallel_head: bool = False
    """Add the parallel head (a frame's tokens at once, 2 passes per frame at inference instead
    of n + 1), trained beside the autoregressive one."""
    head_layers: int = 2
    """Blocks of the parallel head."""
    head_only: bool = False
    """Train the parallel head alone (with ``--init``): every other weight stays as in the init
    checkpoint, so its autoregressive path is unchanged."""
    token_cache: bool = True
    """Keep each dataset's tokens in ``DATA/token_cache/`` (keyed by the tokenizer's weights)
    and reuse them when training again with the same tokenizer."""
    grasp_share: float = 0.0
    """Share of clips cut around a grasp (from 1-8 frames before the first of three closing
    commands in a row). A grasp holds or slips within a handful of an episode's hundred frames;
    trained on uniform clips, the shipped model decided near-miss grasps from the real frame
    before them little better than a coin (``scripts/grasp_outcomes.py``, its card)."""
    init: str = ""
    """Fine-tune: start from this world-model checkpoint (its tokenizer and dynamics weights;
    parameters it lacks, such as a new gap embedding, keep their initialisation). Empty: from
    scratch."""


def load_tokenizer(directory: str | Path, device) -> MMTokenizer:
    """A trained tokenizer from ``wmgym train tokenizer``'s ``final/`` directory."""
    config = ckpt.read_config(directory)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config["tokenizer"].items()}
    tok = MMTokenizer(TokenizerConfig(**cfg))
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
NEW_PARAMETERS = ("gap_emb", "head.", "state_proj.", "offset_proj.", "grasp_emb",
                  "grasp_head.")


def init_from(model: DynamicsTransformer, source: DynamicsTransformer, path: str) -> None:
    """Copies ``source``'s weights into ``model``.

    Only parameters new in ``model`` (the gap embedding, the parallel head, the state input)
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
    if not 0.0 <= args.grasp_share <= 1.0:
        raise ValueError(f"--grasp-share is a share of clips in [0, 1], got {args.grasp_share}")
    if args.offset_input and not args.state_input:
        raise ValueError("--offset-input needs --state-input: the offset is read off the state")
    if args.grasp_latent and not args.state_input:
        raise ValueError("--grasp-latent needs --state-input: its head reads the state")
    d = common.setup_distributed(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + d.rank)
    spec = load_spec(args.task)
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
        ctx_vocab_size=tok.ctx_vocab_size, vocab_size=tok.future_vocab_size,
        n_ctx_tokens=tok.n_ctx_tokens, n_frame_tokens=tok.n_future_tokens,
        max_frames=args.max_frames, d_model=args.d_model, n_layer=args.n_layer,
        n_head=args.n_head, dropout=args.dropout, gap_embedding=args.gap_embedding,
        parallel_head=args.parallel_head, head_layers=args.head_layers,
        state_input=args.state_input, offset_input=args.offset_input,
        grasp_latent=args.grasp_latent,
        state_noise=args.state_noise,
        state_dropout=args.state_dropout,
    )
    model = DynamicsTransformer(cfg).to(d.device)
    states = torch.cat([ep.state for ep in episodes])
    model.set_state_normalization(states.mean(0), states.std(0).clamp_min(1e-3))
    if init is not None:
        init_from(model, init.dynamics, args.init)
    grasp_head = None
    if model.grasp_head is not None:  # label every episode's grasps; fit the head once
        if spec.success_cube_z is None:
            raise ValueError(f"--grasp-latent needs the task's lift height (success_cube_z in "
                             f"the {spec.name} spec): it tells a grasp that held")
        label_grasps(episodes, spec.success_cube_z)
        grasp_head = fit_grasp_head(model, *grasp_examples(distinct),
                                    noise=cfg.state_noise, seed=args.seed)
        model.grasp_head.requires_grad_(False)
        if d.main:
            print(f"grasp head: {grasp_head}")
    if args.head_only:
        if model.head is None or init is None:
            raise ValueError("--head-only needs --parallel-head and --init")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head."))
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
                                                         rng, args.grasp_share).items()}
        model.train()
        loss, m = trainer(b["ctx"], b["tokens"], b["actions"], b["reward"], b["success"],
                          b["state"], b["valid"], b["gap"], b["prev_state"], b.get("grasp"))
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
            "grasp_head": grasp_head,
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
