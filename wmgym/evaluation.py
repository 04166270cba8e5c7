"""``wmgym eval``: how faithful is imagination, step by step, on held-out real episodes.

Three measurements on the same recorded episodes, batched, through the learned twin's own
imagination core (:class:`~wmgym.env.core.Imagination`, the ``fast`` preset as the env takes it):

1. **Tokenizer reconstruction** — every frame through the tokenizer (context = the episode's
   first frame): the upper bound imagination cannot beat.
2. **Open-loop rollouts** — start from the first real observation and imagine the whole episode
   under the episode's real actions; compare every imagined frame, reward, success and state
   (each of the spec's named positions) with the real ones, per horizon.
3. **Action sensitivity** — the same rollouts under another episode's actions. A model that
   listens to actions is measurably closer to the truth with the real ones.
4. **Arm probe** (``--arm-starts``, :mod:`wmgym.arm_probe`) — from fresh real starts in
   ``Sim-<Task>-v0``, constant and random smooth arm actions in both twins: how far the imagined
   end effector travels against the real one, and how far apart they end, against targets.

:func:`evaluate` returns the metrics; ``wmgym eval`` also writes ``metrics.json``,
``horizon.png`` (metric vs horizon) and ``rollout.gif`` (real | imagined; rgb, depth, mask).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from wmgym.arm_probe import HOLD_STEPS, RANDOM_STEPS, SEED, arm_probe, format_arm_table
from wmgym.model.frames import DEPTH, MASK, RGB, obs_to_frames, psnr, ssim
from wmgym.results import resolve_task, write_result
from wmgym.viz import save_figure

HORIZONS = (1, 5, 10, 15, 25, 50, 100)


@dataclass
class EvalArgs:
    """Options of ``wmgym eval``."""

    data: str
    """Dataset directory (``wmgym collect``)."""
    checkpoint: str = ""
    """World-model checkpoint directory (default: the task spec's)."""
    task: str = ""
    """Task name, e.g. ``pick`` (empty: the task ``--checkpoint`` was trained for)."""
    split: str = "heldout"
    """Which episodes: ``heldout``, ``train`` or ``all``."""
    episodes: int = 0
    """Evaluate at most this many episodes (0 = all of the split)."""
    horizon: int = 0
    """Imagine at most this many steps per episode (0 = the whole episode)."""
    fast: Literal["default", "fast", "full"] = "default"
    """Speed preset, as ``WM-<Task>-v0`` takes it: ``default``, ``fast`` (the distilled
    transformer) or ``full`` (also the tokenizer's own frame decoder)."""
    temperature: float = 1.0
    """Token sampling temperature (0 = greedy)."""
    seed: int = 0
    """Seed of the samplers."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    arm_starts: int = 2
    """Real starts of the arm probe (0 = skip it): each holds every constant arm action for 20
    steps and runs one random smooth sequence of 50 (both capped by ``--horizon``)."""
    arm_seed: int = SEED
    """First Sim seed of the arm probe's starts (also seeds its actions and samplers); the
    default lies outside the recipe's data collection seeds."""
    out: str = "runs/eval"
    """Output directory for metrics.json, horizon.png and rollout.gif."""


@dataclass
class Evaluation:
    """What :func:`measure` measured: the metrics and the per-step curves behind them."""

    result: dict[str, Any]
    """The JSON-able metrics (:func:`evaluate`'s result)."""
    open_loop: dict[str, Tensor]
    """Frame metrics of the open-loop rollouts with the real actions, ``(episodes, steps)``."""
    tokenizer: dict[str, Tensor]
    """Frame metrics of the tokenizer's reconstruction, ``(episodes, steps)``."""
    real_frames: Tensor
    """The first episode's real frames ``(steps + 1, 5, H, W)``."""
    imagined_frames: Tensor
    """Its imagined frames ``(steps, 5, H, W)``."""
    depth_range: tuple[float, float]
    """The task's depth range (metres), to draw the frames."""


def frame_metrics(pred: Tensor, true: Tensor, depth_range) -> dict[str, Tensor]:
    """Per-image metrics of ``(N, 5, H, W)`` frames: rgb PSNR/SSIM, depth AbsRel/RMSE, mask IoU.

    Depth errors are in metres over the whole image; mask IoU treats an empty pair as 1.
    """
    near, far = depth_range
    d_pred = near + pred[:, DEPTH].clamp(0, 1) * (far - near)
    d_true = near + true[:, DEPTH].clamp(0, 1) * (far - near)
    m_pred, m_true = pred[:, MASK] > 0.5, true[:, MASK] > 0.5
    inter = (m_pred & m_true).flatten(1).sum(1).float()
    union = (m_pred | m_true).flatten(1).sum(1).float()
    return {
        "rgb_psnr": psnr(pred[:, RGB].clamp(0, 1), true[:, RGB]).clamp_max(60.0),
        "rgb_ssim": ssim(pred[:, RGB].clamp(0, 1), true[:, RGB]),
        "depth_absrel": ((d_pred - d_true).abs() / d_true).flatten(1).mean(1),
        "depth_rmse": (d_pred - d_true).pow(2).flatten(1).mean(1).sqrt(),
        "mask_iou": torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)),
    }


@torch.no_grad()
def tokenizer_upper_bound(core: Any, frames: Tensor) -> dict[str, Tensor]:
    """Reconstructs every frame 1..T through the tokenizer with frame 0 as context.

    The future frames are drawn by the decoder ``core``'s preset uses.
    """
    wm = core.model
    b, t1 = frames.shape[:2]
    code = wm.tokenizer.encode_context(frames[:, 0].to(wm.device))
    recon = wm.tokenizer.decode_future(
        wm.tokenizer.encode_future(frames[:, 1:].to(wm.device), code.feats), code.feats,
        core.frame_decoder())
    m = frame_metrics(recon.flatten(0, 1).float().cpu(), frames[:, 1:].flatten(0, 1),
                      core.task.depth_range)
    ctx = wm.tokenizer.decode_context(code.tokens)
    m_ctx = frame_metrics(ctx.float().cpu(), frames[:, 0], core.task.depth_range)
    return {**{k: v.view(b, t1 - 1) for k, v in m.items()},
            **{f"ctx_{k}": v for k, v in m_ctx.items()}}


def open_loop(core: Any, contexts: list[dict[str, np.ndarray]], frames: Tensor,
              actions: np.ndarray, *, seed: int) -> dict[str, Any]:
    """Imagines ``T`` steps from each real start under ``actions`` ``(B, T, action_dim)``.

    Rollout ``i`` samples with a generator seeded from ``(seed, i)``, the same for any actions.

    Returns:
        ``metrics`` (frame metrics ``(B, T)`` against ``frames[:, 1:]``), ``reward``,
        ``success`` (the env's verdict), ``success_prob``, ``state`` (``(B, T, ...)`` numpy)
        and ``frames`` (the first rollout's imagined frames, ``(T, 5, H, W)``).
    """
    depth_range = core.task.depth_range
    starts = [core.draw_start(np.random.default_rng([seed, i]), c)
              for i, c in enumerate(contexts)]
    core.reset(starts)
    out: dict[str, list] = {k: [] for k in ("metrics", "reward", "success", "success_prob",
                                            "state", "frames")}
    for k in range(actions.shape[1]):
        step = core.step(np.ascontiguousarray(actions[:, k], np.float32))
        pred = obs_to_frames(step.obs["rgb"], step.obs["depth"], step.obs["mask"], depth_range)
        out["metrics"].append(frame_metrics(pred, frames[:, k + 1], depth_range))
        out["frames"].append(pred[0])
        for key in ("reward", "success", "success_prob"):
            out[key].append(getattr(step, key))
        out["state"].append(step.obs["state"])
    core.close()
    return {
        "metrics": {key: torch.stack([m[key] for m in out["metrics"]], 1)
                    for key in out["metrics"][0]},
        **{key: np.stack(out[key], 1) for key in ("reward", "success", "success_prob", "state")},
        "frames": torch.stack(out["frames"]),
    }


def _per_horizon(values: np.ndarray, length: int) -> dict[str, float]:
    """Mean over episodes at each horizon in HORIZONS (1-based steps), and over all steps."""
    row = {f"h{h}": float(values[:, h - 1].mean()) for h in HORIZONS if h <= length}
    row["mean"] = float(values.mean())
    return row


def measure(args: EvalArgs) -> Evaluation:
    """Runs the three measurements (see the module doc).

    Raises:
        ValueError: Fewer than two episodes in the split, or no task.
    """
    from wmgym.data.dataset import read_dataset
    from wmgym.env.core import Imagination

    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    torch.manual_seed(args.seed)
    episodes = read_dataset(args.data, args.split)
    if args.episodes:
        episodes = episodes[: args.episodes]
    if len(episodes) < 2:
        raise ValueError(f"{args.data}: need at least 2 {args.split} episodes, got {len(episodes)}")
    length = min(len(e) for e in episodes)
    length = min(length, args.horizon) if args.horizon else length
    obs = {k: np.stack([e.observations[k][: length + 1] for e in episodes])
           for k in ("rgb", "depth", "mask", "state")}
    frames = obs_to_frames(obs["rgb"], obs["depth"], obs["mask"], spec.depth_range)
    actions = np.stack([e.actions[:length] for e in episodes])
    rewards = np.stack([e.rewards[:length] for e in episodes])
    success = np.stack([e.success[:length] for e in episodes])
    state = obs["state"][:, 1:]
    contexts = [{k: v[i, 0] for k, v in obs.items()} for i in range(len(episodes))]

    core = Imagination(spec, num_envs=len(episodes), checkpoint=checkpoint, device=args.device,
                       fast=args.fast, temperature=args.temperature)
    start = time.perf_counter()
    upper = tokenizer_upper_bound(core, frames)
    real = open_loop(core, contexts, frames, actions, seed=args.seed)
    perm = np.roll(np.arange(len(episodes)), 1)  # every episode gets another one's actions
    other = open_loop(core, contexts, frames, actions[perm], seed=args.seed)
    seconds = time.perf_counter() - start

    ol = {k: _per_horizon(v.numpy(), length) for k, v in real["metrics"].items()}
    ol["reward_mae"] = _per_horizon(np.abs(real["reward"] - rewards), length)
    ol["success_acc"] = _per_horizon((real["success"] == success).astype(float), length)
    ol["success_acc_head"] = _per_horizon(((real["success_prob"] > 0.5) == success)
                                          .astype(float), length)
    for name, idx in spec.positions.items():
        err = np.linalg.norm(real["state"][..., list(idx)] - state[..., list(idx)], axis=-1)
        ol[f"{name}_err_m"] = _per_horizon(err, length)
    result: dict[str, Any] = {
        "task": spec.name, "checkpoint": str(checkpoint), "data": args.data,
        "split": args.split, "episodes": len(episodes), "steps": length, "args": asdict(args),
        "fast": args.fast, "dynamics": core.dynamics, "decoder": core.decoder,
        "seconds": round(seconds, 1),
        "tokenizer": {k: float(v.mean()) for k, v in upper.items()},
        "open_loop": ol,
        "action_sensitivity": {
            k: {"real_actions": float(real["metrics"][k].mean()),
                "other_actions": float(other["metrics"][k].mean())}
            for k in ("rgb_psnr", "mask_iou", "depth_absrel")},
    }
    if args.arm_starts:
        cap = args.horizon or max(HOLD_STEPS, RANDOM_STEPS)
        result["arm_probe"] = arm_probe(
            spec, checkpoint=checkpoint, fast=args.fast, starts=args.arm_starts,
            seed=args.arm_seed, device=args.device, temperature=args.temperature,
            horizon=min(HOLD_STEPS, cap), random_horizon=min(RANDOM_STEPS, cap))
    return Evaluation(result, real["metrics"], upper, frames[0], real["frames"],
                      spec.depth_range)


def evaluate(args: EvalArgs) -> dict[str, Any]:
    """The metrics of :func:`measure` (what ``metrics.json`` holds)."""
    return measure(args).result


def plot_horizon(e: Evaluation, path: str | Path) -> Path:
    """Metric vs horizon, with the tokenizer's reconstruction as the dashed upper bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("rgb_psnr", "rgb_ssim", "depth_absrel", "mask_iou")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(axes, keys):
        steps = np.arange(1, e.open_loop[key].shape[1] + 1)
        ax.plot(steps, e.open_loop[key].mean(0).numpy(), label="imagined (real actions)")
        ax.plot(steps, e.tokenizer[key].mean(0).numpy(), "--", label="tokenizer recon")
        ax.set_title(key)
        ax.set_xlabel("horizon (steps)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{e.result['episodes']} {e.result['split']} episodes, open loop from one "
                 "frame")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_rollout_gif(real: Tensor, imagined: Tensor, depth_range, path: str | Path) -> Path:
    """One episode: real (top) | imagined (bottom) rows of rgb, depth, mask."""
    from wmgym.model.frames import frames_to_obs
    from wmgym.viz import tile_frame, write_gif

    def tiles(x: Tensor) -> list[np.ndarray]:
        rgb, depth, mask = (t.numpy() for t in frames_to_obs(x, depth_range))
        return [tile_frame(rgb[i], depth[i], mask[i], depth_range) for i in range(len(x))]

    top, bottom = tiles(real[1:]), tiles(imagined)
    return write_gif(path, [np.concatenate([a, b], 0) for a, b in zip(top, bottom)], fps=10)


def format_table(result: dict[str, Any]) -> str:
    """The headline numbers as a Markdown table."""
    ol, tok = result["open_loop"], result["tokenizer"]
    hs = [h for h in ("h1", "h5", "h15", "h50", "mean") if h in ol["rgb_psnr"]]
    lines = ["| metric | tokenizer | " + " | ".join(f"open loop {h}" for h in hs) + " |",
             "|---|---|" + "---|" * len(hs)]
    keys = ["rgb_psnr", "rgb_ssim", "depth_absrel", "depth_rmse", "mask_iou", "reward_mae",
            "success_acc", "success_acc_head", *(k for k in ol if k.endswith("_err_m"))]
    for key in keys:
        t = f"{tok[key]:.3f}" if key in tok else "–"
        lines.append(f"| {key} | {t} | " + " | ".join(f"{ol[key][h]:.3f}" for h in hs) + " |")
    sens = result["action_sensitivity"]
    lines.append("")
    lines.append("Action sensitivity (mean over all steps): " + ", ".join(
        f"{k} {v['real_actions']:.3f} (real actions) vs {v['other_actions']:.3f} (other)"
        for k, v in sens.items()))
    return "\n".join(lines)


def eval_main(args: EvalArgs) -> dict[str, Any]:
    """``wmgym eval``: prints the table, writes metrics.json, horizon.png and rollout.gif."""
    e = measure(args)
    out = Path(args.out)
    write_result(out / "metrics.json", json.loads(json.dumps(e.result, default=str)))
    plot_horizon(e, out / "horizon.png")
    write_rollout_gif(e.real_frames, e.imagined_frames, e.depth_range, out / "rollout.gif")
    print(format_table(e.result))
    if "arm_probe" in e.result:
        print("\n" + format_arm_table(e.result["arm_probe"]))
    print(f"wrote {out}/metrics.json, horizon.png, rollout.gif ({e.result['seconds']} s)")
    return e.result
