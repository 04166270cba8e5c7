"""``wmgym eval``: how faithful is imagination, step by step, on held-out real episodes.

Three measurements on the same episodes, batched:

1. **Tokenizer reconstruction** — every frame through the tokenizer (context = the episode's
   first frame): the upper bound imagination cannot beat.
2. **Open-loop rollouts** — start from the first real frame and imagine the whole episode under
   the episode's real actions; compare every imagined frame, reward, success and state with the
   real ones, per horizon.
3. **Action sensitivity** — the same rollouts under another episode's actions. A model that
   listens to actions is measurably closer to the truth with the real ones.
4. **Action probes** — constant actions the data never showed (hold, up, sideways, …) from
   real starts, in ``Sim-<Task>-v0`` and imagined (:mod:`wmgym.action_probe`): the gripper
   error and the false successes an agent training in imagination would meet.
5. **Grasp probes** — the scripted pick closed loop in both twins, as it is, with its gripper
   held open, and stopped above the cube (:mod:`wmgym.grasp_probe`): does the model lift only
   when the fingers were told to close, and leave a still arm where it is?

Writes ``metrics.json``, ``horizon.png`` (metric vs horizon) and ``rollout.gif``
(real | imagined; rgb, depth, mask).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wmgym.model.checkpoint import read_config
from wmgym.model.fast_decoder import open_decoder
from wmgym.model.frames import DEPTH, MASK, RGB, psnr, ssim
from wmgym.model.tokenizer import Decoder
from wmgym.model.world_model import WorldModel, resolve_device, resolve_kv_cache
from wmgym.spec import CUBE_POS, EEF_POS, load_spec
from wmgym.viz import save_figure

HORIZONS = (1, 5, 10, 15, 25, 50, 100)


@dataclass
class EvalArgs:
    """Options of ``wmgym eval``."""

    checkpoint: str = "checkpoints/WM-Pick-v0"
    """World-model checkpoint directory."""
    data: str = "data/pick"
    """Dataset directory (``wmgym collect``)."""
    split: str = "heldout"
    """Which episodes: ``heldout``, ``train`` or ``all``."""
    episodes: int = 0
    """Evaluate at most this many episodes (0 = all of the split)."""
    horizon: int = 0
    """Imagine at most this many steps per episode (0 = the whole episode)."""
    temperature: float = 1.0
    """Token sampling temperature (0 = greedy)."""
    top_k: int = 0
    """Sample among the top-k tokens only (0 = all)."""
    decoding: str = "auto"
    """``auto`` (the parallel head when the checkpoint has one), ``parallel`` or
    ``autoregressive``."""
    kv_cache: str = "auto"
    """Precision of the cached keys and values (``auto``: as ``WM-<Task>-v0`` picks it,
    ``float32``, ``bfloat16``); the probes run the env's default."""
    seed: int = 0
    """Seed of the samplers and of the action shuffle."""
    out: str = "out/eval"
    """Output directory for metrics.json, horizon.png and rollout.gif."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    probe_starts: int = 8
    """Real starts of the action and grasp probes (runs robosuite; 0 = skip them)."""
    decoder: str = "auto"
    """Frame decoder: ``full``, ``fast`` (the checkpoint's distilled one) or ``auto`` (as
    ``WM-<Task>-v0`` picks it: fast when the checkpoint has one)."""


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


def _stack_episodes(episodes, depth_range, horizon: int):
    from wmgym.train.data import episode_frames

    length = min(len(e) for e in episodes)
    if horizon:
        length = min(length, horizon)
    frames = torch.stack([episode_frames(e, depth_range)[: length + 1] for e in episodes])
    actions = torch.stack([torch.from_numpy(e.actions[:length]) for e in episodes]).float()
    rewards = np.stack([e.rewards[:length] for e in episodes])
    success = np.stack([e.success[:length] for e in episodes])
    state = np.stack([e.observations["state"][: length + 1] for e in episodes])
    return frames, actions, rewards, success, state, length


@torch.no_grad()
def tokenizer_upper_bound(wm: WorldModel, frames: Tensor,
                          decoder: Decoder | None = None) -> dict[str, Tensor]:
    """Reconstruct every frame 1..T through the tokenizer with frame 0 as context.

    ``decoder``: decode the future frames with it instead of the tokenizer's own.
    """
    b, t1 = frames.shape[:2]
    code = wm.tokenizer.encode_context(frames[:, 0].to(wm.device))
    recon = wm.tokenizer.decode_future(
        wm.tokenizer.encode_future(frames[:, 1:].to(wm.device), code.feats), code.feats, decoder
    )
    m = frame_metrics(recon.flatten(0, 1).cpu(), frames[:, 1:].flatten(0, 1), wm.depth_range)
    ctx = wm.tokenizer.decode_context(code.tokens)
    m_ctx = frame_metrics(ctx.cpu(), frames[:, 0], wm.depth_range)
    return {**{k: v.view(b, t1 - 1) for k, v in m.items()},
            **{f"ctx_{k}": v for k, v in m_ctx.items()}}


@torch.no_grad()
def open_loop(wm: WorldModel, frames: Tensor, actions: Tensor, seed: int, temperature: float,
              top_k: int | None, keep_frames: bool = False, decoding: str = "auto",
              start_state: np.ndarray | None = None, kv_cache: str = "auto",
              decoder: Decoder | None = None):
    """Imagine ``T`` steps from frame 0 under ``actions`` (B, T, 4); per-step outputs.

    ``start_state (B, state_dim)``, frame 0's real state, starts a state filter's chain;
    ``decoder`` decodes the frames instead of the tokenizer's own.
    """
    b, t = actions.shape[:2]
    gens = [torch.Generator(device=wm.device).manual_seed(seed * 100_003 + i) for i in range(b)]
    states = None if start_state is None else torch.as_tensor(start_state, dtype=torch.float32)
    state = wm.reset(frames[:, 0], generators=gens, states=states,
                     kv_dtype=resolve_kv_cache(kv_cache))
    out = {"reward": [], "success": [], "state": [], "metrics": [], "frames": []}
    for k in range(t):
        step, state = wm.step(state, actions[:, k], temperature=temperature, top_k=top_k,
                              decoding=decoding, decoder=decoder)
        pred = step.frames.float().cpu()
        out["metrics"].append(frame_metrics(pred, frames[:, k + 1], wm.depth_range))
        out["reward"].append(step.reward.cpu())
        out["success"].append(step.success.cpu())
        out["state"].append(step.state.cpu())
        if keep_frames:
            out["frames"].append(pred)
    metrics = {key: torch.stack([m[key] for m in out["metrics"]], 1) for key in out["metrics"][0]}
    return metrics, torch.stack(out["reward"], 1).numpy(), torch.stack(out["success"], 1).numpy(), \
        torch.stack(out["state"], 1).numpy(), out["frames"]


def _per_horizon(values: np.ndarray, length: int) -> dict[str, float]:
    """Mean over episodes at each horizon in HORIZONS (1-based steps), and over all steps."""
    row = {f"h{h}": float(values[:, h - 1].mean()) for h in HORIZONS if h <= length}
    row["mean"] = float(values.mean())
    return row


def evaluate(args: EvalArgs) -> dict:
    """Runs the three measurements; writes and returns the metrics."""
    from wmgym.data.dataset import read_dataset

    torch.manual_seed(args.seed)
    wm = WorldModel.load(args.checkpoint, resolve_device(args.device))
    episodes = read_dataset(args.data, args.split)
    if args.episodes:
        episodes = episodes[: args.episodes]
    if len(episodes) < 2:
        raise ValueError(f"{args.data}: need at least 2 {args.split} episodes, got {len(episodes)}")
    frames, actions, rewards, success, states, length = _stack_episodes(
        episodes, wm.depth_range, args.horizon
    )
    state = states[:, 1:]
    top_k = args.top_k or None
    decoder_name, decoder = open_decoder(args.checkpoint, args.decoder, wm.device)
    start = time.perf_counter()
    upper = tokenizer_upper_bound(wm, frames, decoder)
    real, r_pred, s_pred, st_pred, imagined = open_loop(
        wm, frames, actions, args.seed, args.temperature, top_k, keep_frames=True,
        decoding=args.decoding, start_state=states[:, 0], kv_cache=args.kv_cache,
        decoder=decoder,
    )
    perm = np.roll(np.arange(len(episodes)), 1)  # every episode gets another one's actions
    other, *_ = open_loop(wm, frames, actions[perm], args.seed, args.temperature, top_k,
                          decoding=args.decoding, start_state=states[:, 0], kv_cache=args.kv_cache,
                          decoder=decoder)
    seconds = time.perf_counter() - start

    result: dict = {
        "checkpoint": args.checkpoint, "data": args.data, "split": args.split,
        "episodes": len(episodes), "steps": length, "args": asdict(args),
        "decoding": wm.resolve_decoding(args.decoding),
        "kv_cache": str(resolve_kv_cache(args.kv_cache)).removeprefix("torch."),
        "decoder": decoder_name,
        "seconds": round(seconds, 1),
        "tokenizer": {k: float(v.mean()) for k, v in upper.items()},
        "open_loop": {k: _per_horizon(v.numpy(), length) for k, v in real.items()},
    }
    ol = result["open_loop"]
    ol["reward_mae"] = _per_horizon(np.abs(r_pred - rewards), length)
    spec = load_spec(str(read_config(args.checkpoint).get("task", "pick")).lower())
    ol["success_acc"] = _per_horizon((spec.success(s_pred, st_pred) == success).astype(float),
                                     length)  # as WM-<Task>-v0 decides: head and state
    ol["success_acc_head"] = _per_horizon(((s_pred > 0.5) == success).astype(float), length)
    for key, pos in (("eef_err_m", EEF_POS), ("cube_err_m", CUBE_POS)):
        ol[key] = _per_horizon(np.linalg.norm(st_pred[..., pos] - state[..., pos], axis=-1), length)
    result["action_sensitivity"] = {
        k: {"real_actions": float(real[k].mean()), "other_actions": float(other[k].mean())}
        for k in ("rgb_psnr", "mask_iou", "depth_absrel")
    }
    if args.probe_starts:
        from wmgym.action_probe import probe_actions
        from wmgym.grasp_probe import probe_grasps
        task = spec.name.lower()
        result["action_probe"] = probe_actions(
            task, args.probe_starts, seed=args.seed,
            checkpoint=args.checkpoint, device=args.device, temperature=args.temperature,
            decoding=args.decoding,
        ).summary()
        result["grasp_probe"] = probe_grasps(
            task, args.probe_starts, seed=args.seed, checkpoint=args.checkpoint,
            device=args.device, temperature=args.temperature, decoding=args.decoding,
        ).summary()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    plot_horizon(result, real, upper, out / "horizon.png")
    write_rollout_gif(frames[0], torch.stack([f[0] for f in imagined]), wm.depth_range,
                      out / "rollout.gif")
    return result


def plot_horizon(result: dict, real: dict[str, Tensor], upper: dict[str, Tensor], path) -> None:
    """Metric vs horizon, with the tokenizer's reconstruction as the dashed upper bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("rgb_psnr", "rgb_ssim", "depth_absrel", "mask_iou")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(axes, keys):
        steps = np.arange(1, real[key].shape[1] + 1)
        ax.plot(steps, real[key].mean(0).numpy(), label="imagined (real actions)")
        ax.plot(steps, upper[key].mean(0).numpy(), "--", label="tokenizer recon")
        ax.set_title(key)
        ax.set_xlabel("horizon (steps)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['episodes']} {result['split']} episodes, open loop from one frame")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def write_rollout_gif(real: Tensor, imagined: Tensor, depth_range, path) -> None:
    """One episode: real (top) | imagined (bottom) rows of rgb, depth, mask."""
    from wmgym.model.frames import frames_to_obs
    from wmgym.viz import tile_frame, write_gif

    def tiles(x: Tensor) -> list[np.ndarray]:
        rgb, depth, mask = (t.numpy() for t in frames_to_obs(x, depth_range))
        return [tile_frame(rgb[i], depth[i], mask[i], depth_range) for i in range(len(x))]

    top, bottom = tiles(real[1:]), tiles(imagined)
    write_gif(path, [np.concatenate([a, b], 0) for a, b in zip(top, bottom)], fps=10)


def format_table(result: dict) -> str:
    """The headline numbers as a Markdown table."""
    ol, tok = result["open_loop"], result["tokenizer"]
    hs = [h for h in ("h1", "h5", "h15", "h50", "mean") if h in ol["rgb_psnr"]]
    lines = ["| metric | tokenizer | " + " | ".join(f"open loop {h}" for h in hs) + " |",
             "|---|---|" + "---|" * len(hs)]
    for key in ("rgb_psnr", "rgb_ssim", "depth_absrel", "depth_rmse", "mask_iou", "reward_mae",
                "success_acc", "success_acc_head", "eef_err_m", "cube_err_m"):
        t = f"{tok[key]:.3f}" if key in tok else "–"
        lines.append(f"| {key} | {t} | " + " | ".join(f"{ol[key][h]:.3f}" for h in hs) + " |")
    sens = result["action_sensitivity"]
    lines.append("")
    lines.append("Action sensitivity (mean over all steps): " + ", ".join(
        f"{k} {v['real_actions']:.3f} (real actions) vs {v['other_actions']:.3f} (other)"
        for k, v in sens.items()))
    if "action_probe" in result:
        p = result["action_probe"]
        lines.append(
            f"Action probes ({p['starts']} real starts x {len(p['per_pattern_eef_err_m'])} "
            f"constant actions): gripper error " + ", ".join(
                f"{h} {v:.3f} m" for h, v in p["eef_err_m"].items())
            + f"; false successes {p['false_success']:.2f}; imagined/real gripper travel "
            f"{p['move_ratio']:.2f}")
    if "grasp_probe" in result:
        g = result["grasp_probe"]
        lines.append(
            f"Grasp probes ({g['episodes']} real starts, scripted pick closed loop): with the "
            f"gripper held open, imagined lifts {g['open_success']:.2f} (real "
            f"{g['open_success_real']:.2f}), fingers closing on their own "
            f"{g['open_fingers_closed']:.2f} (real {g['open_fingers_closed_real']:.2f}); "
            f"the plain pick lifts {g['pick_success']:.2f} (real {g['pick_success_real']:.2f}); "
            f"an arm stopped above the cube sinks {100 * g['hover_drop_m']:.1f} cm (real "
            f"{100 * g['hover_drop_m_real']:.1f})")
    return "\n".join(lines)


def eval_main(args: EvalArgs) -> None:
    """``wmgym eval``: print the table, write metrics.json, horizon.png, rollout.gif."""
    result = evaluate(args)
    print(format_table(result))
    print(f"wrote {args.out}/metrics.json, horizon.png, rollout.gif ({result['seconds']} s)")
