r"""``wmgym train state-model``: fit a checkpoint's state model on real transitions.

    wmgym train state-model --checkpoint checkpoints/WM-Pick-v0 \\
        --data data/pick_play data/pick_mix_state data/pick_grasp_state

Every step of every episode is one example: the state, the last ``history`` displacements of
the model's fields (zeros before the episode's first step: robosuite resets at rest), the
action, the step's event latent as the data labels it (:func:`~wmgym.model.event_latent.
event_labels`: a grasp under way that holds or slips) and the next displacement. The fit is MLP
regression on them (AdamW, one-cycle schedule). What it reports is measured on the datasets'
held-out episodes, which it never sees: the one-step error and the open-loop error of every
named position (``[state] positions``) after 1, 5, 20 and 50 steps of the state model alone
(its own state from the start on, the episode's actions and event latent), in millimetres.

The fields come from the spec's ``[world_model.state_model]`` (``fields``, ``offsets``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from wmgym.data.dataset import Episode, read_dataset
from wmgym.model.event_latent import event_labels
from wmgym.model.state_model import StateModel, StateModelConfig, save_state_model
from wmgym.results import machine
from wmgym.spec import TaskSpec
from wmgym.train.common import dataset_task

#: Horizons of the open-loop errors reported.
HORIZONS = (1, 5, 20, 50)


@dataclass
class TrainStateModelArgs:
    """Options of ``wmgym train state-model``."""

    checkpoint: str
    """Checkpoint directory the model is written into (``<checkpoint>/state_model``)."""
    data: tuple[str, ...]
    """Datasets of real episodes (state-only ones, ``wmgym collect --no-images``, suffice)."""
    task: str = ""
    """Task spec: the fields (``[world_model.state_model]``) and the event; empty: the task the
    first dataset was collected for."""
    steps: int = 8000
    """AdamW steps."""
    batch: int = 2048
    lr: float = 2e-3
    history: int = 2
    """Past displacements read."""
    hidden: int = 256
    layers: int = 3
    seed: int = 0
    out: str = "runs/state_model"
    """Where the report (``metrics.json``) is written."""


@dataclass
class Transitions:
    """Every step of some episodes, as float32 tensors (``event`` long)."""

    state: torch.Tensor
    past: torch.Tensor
    action: torch.Tensor
    event: torch.Tensor
    move: torch.Tensor

    def __len__(self) -> int:
        return len(self.state)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(state, past, action, event)`` of rows ``index``, and their ``move``."""
        return (self.state[index], self.past[index], self.action[index], self.event[index],
                self.move[index])


def episode_events(episode: Episode, spec: TaskSpec) -> np.ndarray:
    """``(T,)`` the event latent of every step as the data labels it (zeros without one)."""
    if spec.event is None:
        return np.zeros(len(episode.actions), np.int64)
    outcome = episode.observations["state"][:, spec.event.outcome]
    return event_labels(episode.actions, outcome, spec.event)[0]


def _pasts(moves: np.ndarray, history: int) -> np.ndarray:
    """``(T, history, F)``: before step ``t`` the displacements ``t - history .. t - 1``."""
    padded = np.concatenate([np.zeros((history, moves.shape[1])), moves])
    return np.stack([padded[t:t + history] for t in range(len(moves))])


def transitions(episodes: list[Episode], cfg: StateModelConfig, spec: TaskSpec) -> Transitions:
    """Every step of ``episodes`` as one example."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("state", "past", "action", "event",
                                                           "move")}
    for ep in episodes:
        s = ep.observations["state"].astype(np.float64)
        d = np.diff(s[:, cfg.fields], axis=0)  # d[t] = s[t+1] - s[t]
        parts["state"].append(s[:-1])
        parts["past"].append(_pasts(d, cfg.history))
        parts["action"].append(ep.actions)
        parts["event"].append(episode_events(ep, spec))
        parts["move"].append(d)
    tensors = {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}
    return Transitions(**{k: v.long() if k == "event" else v.float()
                          for k, v in tensors.items()})


def state_model_config(spec: TaskSpec, args: TrainStateModelArgs) -> StateModelConfig:
    """The model's config from the spec's ``[world_model.state_model]``."""
    if spec.state_model is None:
        raise ValueError(f"task {spec.name!r} declares no [world_model.state_model] in "
                         f"{spec.path}")
    return StateModelConfig(
        state_dim=spec.state_dim, action_dim=spec.action_dim,
        fields=spec.index(*spec.state_model.fields), names=list(spec.state_model.fields),
        offsets=[spec.index(a, b) for a, b in spec.state_model.offsets],
        event=spec.event is not None, history=args.history, hidden=args.hidden,
        layers=args.layers)


@torch.no_grad()
def open_loop_errors(model: StateModel, episodes: list[Episode], spec: TaskSpec,
                     horizons: tuple[int, ...] = HORIZONS) -> dict[str, dict[str, float]]:
    """Mean error (mm) of each named position after the state model runs alone ``h`` steps.

    Rollouts start at every 10th step of every episode (with its real past); the model's
    fields are its own from then on, the other fields, the actions and the event latent the
    episode's.
    """
    cfg, h = model.cfg, max(horizons)
    errors: dict[str, dict[int, list[float]]] = {p: {k: [] for k in horizons}
                                                 for p in spec.positions}
    for ep in episodes:
        s = torch.from_numpy(ep.observations["state"]).float()
        a = torch.from_numpy(ep.actions).float()
        ev = torch.from_numpy(episode_events(ep, spec))
        pasts = torch.from_numpy(_pasts(np.diff(ep.observations["state"][:, cfg.fields], axis=0),
                                        cfg.history)).float()
        starts = torch.arange(0, len(a), 10)
        cur, past = s[starts].clone(), pasts[starts]
        for k in range(1, h + 1):
            t = starts + k - 1
            ok = t < len(a)
            if not ok.any():
                break
            t = t.clamp(max=len(a) - 1)
            fields, past = model.step(cur, past, a[t], ev[t])
            cur = s[t + 1].clone()
            cur[:, cfg.fields] = fields
            if k in horizons:
                for name, idx in spec.positions.items():
                    err = (cur[:, list(idx)] - s[t + 1][:, list(idx)]).norm(dim=-1)[ok]
                    errors[name][k] += (err * 1000).tolist()
    return {name: {f"h{k}_mm": round(float(np.mean(v)), 2) for k, v in per.items() if v}
            for name, per in errors.items()}


def fit_state_model(args: TrainStateModelArgs) -> tuple[StateModel, dict]:
    """Fits the state model; returns it and its report."""
    spec = dataset_task(args.task, args.data[0])
    cfg = state_model_config(spec, args)
    train = [e for path in args.data for e in read_dataset(path, "train")]
    heldout = [e for path in args.data for e in read_dataset(path, "heldout")]
    data, test = transitions(train, cfg, spec), transitions(heldout, cfg, spec)
    torch.manual_seed(args.seed)
    model = StateModel(cfg)
    model.set_normalization(data.state.mean(0), data.state.std(0))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps,
                                                pct_start=0.05)
    # every field's error in units of its own typical move: the fingers move a tenth of what
    # the arm does, and a learned agent reads a tenth of a millimetre of them
    unit = data.move.abs().mean(0).clamp_min(1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="state model", unit="step", mininterval=2.0)
    for step in bar:
        *inputs, move = data.rows(torch.randint(len(data), (args.batch,), generator=gen))
        pred, rest_logit = model.outputs(*inputs)
        rest = (move.abs() < cfg.rest).float()
        loss = ((pred - move) / unit).pow(2).mean() \
            + F.binary_cross_entropy_with_logits(rest_logit, rest)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    model.eval()
    with torch.no_grad():
        *inputs, move = test.rows(torch.arange(len(test)))
        err = (model(*inputs) - move).abs().mean(0) * 1000
        still = move.abs().mean(0) * 1000
        rest_logit = model.outputs(*inputs)[1]
        rest_acc = ((rest_logit > 0) == (move.abs() < cfg.rest)).float().mean(0)
    report = {
        "args": asdict(args), "fields": cfg.names,
        "train_transitions": len(data), "heldout_transitions": len(test),
        "heldout_episodes": len(heldout),
        "one_step_mm": {n: round(float(e), 3) for n, e in zip(cfg.names, err)},
        "standing_still_mm": {n: round(float(e), 3) for n, e in zip(cfg.names, still)},
        "rest_accuracy": {n: round(float(a), 4) for n, a in zip(cfg.names, rest_acc)},
        "open_loop": open_loop_errors(model, heldout, spec),
        "seconds": round(time.perf_counter() - start, 1), "machine": machine(),
    }
    return model, report


def train_state_model_main(args: TrainStateModelArgs) -> dict:
    """``wmgym train state-model``: fit, save into the checkpoint, write and print the report."""
    model, report = fit_state_model(args)
    save_state_model(args.checkpoint, model, {"report": report})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    print(f"state model on {report['train_transitions']} transitions; held-out one-step error "
          f"(mm) {report['one_step_mm']} (standing still: {report['standing_still_mm']}); "
          f"open loop {report['open_loop']}")
    print(f"wrote {Path(args.checkpoint) / 'state_model'} and {out / 'metrics.json'}")
    return report


if __name__ == "__main__":
    train_state_model_main(tyro.cli(TrainStateModelArgs))
