"""``wmgym train state-filter``: fit the state filter on the model's own imagined rollouts.

The state an agent sees in ``WM-Pick-v0`` comes from a head on the imagined frames. Trained on
real (teacher-forced) frames, a head learns to trust the frame; in imagination the frames
drift, and the state drifts with them (centimetres within a few steps). This trainer runs the
frozen world model open loop on the training episodes' real actions, keeps what the filter
reads at every imagined step (the frame's hidden state and the plain head's reading), and fits
the :class:`~wmgym.model.transformer.StateFilter` to the real states, unrolled from each
rollout's real start state. It learns how far to trust an imagined frame against the previous
state, the motion under way and the action. Only the filter is trained; the imagined frames,
reward and success stay exactly as in the input checkpoint.

The shipped checkpoint has no filter: with it the state follows the real one closely, but the
frames that decide reward and success no longer follow the state, and scripted policies that
aim centimetres off the cube lift in imagination (README, "Tried and not shipped").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wmgym.model import checkpoint as ckpt
from wmgym.model.transformer import DynamicsTransformer
from wmgym.model.world_model import WorldModel, resolve_device
from wmgym.results import machine
from wmgym.spec import CUBE_POS, EEF_POS
from wmgym.train import common
from wmgym.train.data import EpisodeTensors, load_episodes


@dataclass
class TrainStateFilterArgs:
    """Options of ``wmgym train state-filter``."""

    init: str = "checkpoints/WM-Pick-v0"
    """World-model checkpoint to add the filter to (a filter it has is trained further)."""
    checkpoint: str = "runs/wm_filter"
    """Where to export the world model with the trained filter."""
    data: str = "data/pick"
    """Dataset directory (``wmgym collect``) whose episodes are rolled out."""
    extra_data: tuple[str, ...] = field(default_factory=tuple)
    """More datasets to roll out."""
    split: str = "train"
    """Which episodes of each dataset: ``train``, ``heldout`` or ``all``."""
    starts: tuple[int, ...] = (0, 50)
    """Episode steps imagination starts from (a real frame and its state), each run to the
    episode's end. A start after 0 begins mid-motion, as a context reset in MBPO does."""
    rollout_batch: int = 64
    """Rollouts imagined at once."""
    temperature: float = 1.0
    """Token sampling temperature of the rollouts (the env's default)."""
    steps: int = 3000
    """Optimizer steps."""
    batch: int = 64
    """Rollouts per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW), cosine-decayed."""
    warmup: int = 100
    """Warm-up steps."""
    filter_hidden: int = 256
    """Hidden width of a new filter's MLP."""
    drives: str = "state"
    """What the exported filter drives: ``state`` (the state seen and the slots' state input)
    or ``grasp`` (the grasp latent's head alone; needs ``--grasp-latent``'s checkpoint): the
    frames then read the same state as without a filter."""
    seed: int = 0
    """Seed of the rollouts' samplers, the initialisation and the batches."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    out: str = "runs/state_filter"
    """Run directory: TensorBoard scalars."""
    log_every: int = 50
    """Steps between TensorBoard scalars."""


@dataclass
class Rollouts:
    """What the filter reads along imagined rollouts, and the real states it should output."""

    hidden: Tensor  # (N, T, d) final hidden state of each imagined frame's last token
    absolute: Tensor  # (N, T, s) the plain state head's reading, normalised
    actions: Tensor  # (N, T, a)
    start: Tensor  # (N, s) real state of the start frame, real units
    target: Tensor  # (N, T, s) real state of each step, real units


def with_filter(wm: WorldModel, hidden: int, drives: str = "state") -> WorldModel:
    """``wm`` itself if it has a state filter, else a copy with a new (identity) filter.

    Either way the filter drives ``drives`` (``DynamicsConfig.filter_drives``) from now on, in
    the rollouts it is fitted on too.
    """
    if wm.dynamics.state_filter is not None:
        wm.dynamics.cfg = replace(wm.dynamics.cfg, filter_drives=drives)  # validated there
        return wm
    cfg = replace(wm.dynamics.cfg, state_filter=True, filter_hidden=hidden, filter_drives=drives)
    dynamics = DynamicsTransformer(cfg).to(wm.device)
    missing, unexpected = dynamics.load_state_dict(wm.dynamics.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("state_filter.") for k in missing)
    wm.dynamics = dynamics.eval()
    return wm


@torch.no_grad()
def imagine(wm: WorldModel, episodes: list[EpisodeTensors], start: int, args: TrainStateFilterArgs,
            rng_offset: int = 0) -> Rollouts:
    """Roll ``wm`` open loop from step ``start`` of every episode under its real actions."""
    eps = [e for e in episodes if len(e.actions) > start]
    if not eps:
        raise ValueError(f"no episode is longer than the start step {start} (--starts)")
    horizon = min(len(e.actions) for e in eps) - start
    parts: dict[str, list[Tensor]] = {k: [] for k in Rollouts.__dataclass_fields__}
    bar = tqdm(range(0, len(eps), args.rollout_batch), desc=f"imagine from step {start}")
    for lo in bar:
        chunk = eps[lo: lo + args.rollout_batch]
        frames = torch.stack([e.frames[start] for e in chunk]).float()
        actions = torch.stack([e.actions[start: start + horizon] for e in chunk])
        states = torch.stack([e.state[start: start + horizon + 1] for e in chunk])
        gens = [torch.Generator(device=wm.device).manual_seed(args.seed * 1_000_003 + rng_offset
                                                              + lo + i)
                for i in range(len(chunk))]
        state = wm.reset(frames, generators=gens, states=states[:, 0])
        hid, absolute = [], []
        for k in range(horizon):
            wm.step(state, actions[:, k], temperature=args.temperature, decode=False)
            hid.append(state.cache.last_hidden.float().cpu())
            absolute.append(state.cache.last_absolute.float().cpu())
        parts["hidden"].append(torch.stack(hid, 1))
        parts["absolute"].append(torch.stack(absolute, 1))
        parts["actions"].append(actions)
        parts["start"].append(states[:, 0])
        parts["target"].append(states[:, 1:])
    return Rollouts(**{k: torch.cat(v) for k, v in parts.items()})


def filter_loss(dynamics: DynamicsTransformer, r: Rollouts, idx: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Normalised state MSE of the filter unrolled along rollouts ``idx`` (all if None).

    Returns:
        ``(mse, err)``: the loss and the per-step position errors in metres ``(n, T, 2)`` of
        the end effector (fields 0-2) and the cube (fields 5-7).
    """
    pick = slice(None) if idx is None else idx
    d = dynamics.state_mean.device
    hidden, absolute, actions = (x[pick].to(d) for x in (r.hidden, r.absolute, r.actions))
    start, target = r.start[pick].to(d), r.target[pick].to(d)
    pred = dynamics.state_filter.unroll(hidden, dynamics.normalize_state(start), absolute,
                                        actions)
    mse = (pred - dynamics.normalize_state(target)).pow(2).mean()
    return mse, position_errors(pred * dynamics.state_std + dynamics.state_mean, target).detach()


def position_errors(state: Tensor, target: Tensor) -> Tensor:
    """End-effector and cube position errors ``(..., 2)`` in metres of states (real units)."""
    return torch.stack([(state[..., EEF_POS] - target[..., EEF_POS]).norm(dim=-1),
                        (state[..., CUBE_POS] - target[..., CUBE_POS]).norm(dim=-1)], -1)


def _horizon_errors(err: Tensor) -> dict[str, float]:
    """Mean end-effector / cube errors (m) at a few horizons of ``err (n, T, 2)``."""
    out = {}
    for h in (1, 5, 10, 25, 50):
        if h <= err.shape[1]:
            out[f"eef_h{h}"] = round(float(err[:, h - 1, 0].mean()), 4)
            out[f"cube_h{h}"] = round(float(err[:, h - 1, 1].mean()), 4)
    out["eef_mean"] = round(float(err[..., 0].mean()), 4)
    out["cube_mean"] = round(float(err[..., 1].mean()), 4)
    return out


def _plain_errors(dynamics: DynamicsTransformer, r: Rollouts) -> dict[str, float]:
    """The same errors for the plain state head (no filter)."""
    real = r.absolute * dynamics.state_std.cpu() + dynamics.state_mean.cpu()
    return _horizon_errors(position_errors(real, r.target))


def train_state_filter(args: TrainStateFilterArgs) -> Path:
    """Imagines rollouts, fits the filter on them, exports the checkpoint; returns its path."""
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    wm = with_filter(WorldModel.load(args.init, device), args.filter_hidden, args.drives)
    t0 = time.perf_counter()
    episodes = [e for path in (args.data, *args.extra_data)
                for e in load_episodes(path, args.split, wm.depth_range)]
    if len(episodes) < 2:
        raise ValueError(f"{args.data}: need at least 2 {args.split} episodes, got "
                         f"{len(episodes)}")
    rng = np.random.default_rng(args.seed)
    held = set(rng.permutation(len(episodes))[: max(1, len(episodes) // 10)].tolist())
    groups = {s: imagine(wm, episodes, s, args, rng_offset=1000 * s) for s in args.starts}
    imagine_s = time.perf_counter() - t0
    # a tenth of the episodes checks the fit; the filter never trains on them
    fit = {s: [i for i in range(len(r.start)) if i not in held] for s, r in groups.items()}
    dyn = wm.dynamics
    for name, p in dyn.named_parameters():
        p.requires_grad_(name.startswith("state_filter."))
    params = list(dyn.state_filter.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    log = common.Logger(Path(args.out) / "tb", True)
    t1 = time.perf_counter()
    bar = tqdm(range(args.steps), desc="state filter")
    for step in bar:
        s = args.starts[step % len(args.starts)]
        idx = torch.as_tensor(rng.choice(fit[s], size=min(args.batch, len(fit[s])),
                                         replace=False))
        dyn.state_filter.train()
        loss, err = filter_loss(dyn, groups[s], idx)
        common.optimizer_step(dyn.state_filter, opt, loss,
                              common.lr_at(step, args.steps, args.lr, args.warmup))
        if step % args.log_every == 0 or step == args.steps - 1:
            log.scalars(step, {"filter_mse": loss.item(), "eef_err_m": float(err[..., 0].mean()),
                               "cube_err_m": float(err[..., 1].mean())})
            bar.set_postfix(mse=f"{loss.item():.4f}", eef=f"{float(err[..., 0].mean()):.4f}")
    dyn.eval()
    report = {}
    with torch.no_grad():
        for s, r in groups.items():
            check = torch.as_tensor(sorted(i for i in range(len(r.start)) if i in held))
            sub = Rollouts(*(getattr(r, k)[check] for k in Rollouts.__dataclass_fields__))
            report[f"from_step_{s}"] = {"filter": _horizon_errors(filter_loss(dyn, sub)[1]),
                                        "plain_head": _plain_errors(dyn, sub),
                                        "rollouts": len(check)}
    log.close()
    base = ckpt.read_config(args.init)
    train = dict(base.get("train", {}))
    train["state_filter"] = {
        "args": asdict(args), "imagine_seconds": round(imagine_s, 1),
        "fit_seconds": round(time.perf_counter() - t1, 1), "rollouts": sum(
            len(r.start) for r in groups.values()), "checked_on_unseen_episodes": report,
        "machine": machine(),
    }
    out = wm.save(args.checkpoint, extra={"task": base.get("task"), "train": train},
                  start_obs=ckpt.load_start_obs(args.init))
    for s, rep in report.items():
        print(f"{s}: filter {rep['filter']}\n{' ' * len(s)}  plain  {rep['plain_head']}")
    print(f"world model with state filter -> {out} ({time.perf_counter() - t0:.0f} s)")
    return out


def train_state_filter_main(args: TrainStateFilterArgs) -> None:
    train_state_filter(args)
