"""What both training stages share: torchrun/DDP setup, resumable state, logging, schedule.

Training runs unchanged as ``python -m wmgym.cli train …`` or under
``torchrun --nproc_per_node N -m wmgym.cli train …`` (DDP; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from wmgym.model.checkpoint import read_config
from wmgym.spec import TaskSpec, load_spec


@dataclass
class TrainArgs:
    """Options every training stage has."""

    data: str
    """Dataset directory (``wmgym collect``)."""
    seed: int = 0
    """Seed of initialisation and sampling (each process adds its rank)."""
    log_every: int = 50
    """Steps between TensorBoard scalars."""
    ckpt_every: int = 500
    """Steps between resumable checkpoints."""
    resume: bool = False
    """Continue from the run directory's last checkpoint."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    task: str = ""
    """Task name or spec file; empty: the task the dataset was collected for."""


def dataset_task(task: str, data: str | Path) -> TaskSpec:
    """The spec of ``task``, or when empty of the task dataset ``data`` records."""
    from wmgym.data.dataset import read_metadata

    return load_spec(task or read_metadata(data)["task"])


def checkpoint_task(task: str, checkpoint: str | Path) -> TaskSpec:
    """The spec of ``task``, or when empty of the task checkpoint ``checkpoint`` was made for.

    Raises:
        ValueError: Neither names a task.
    """
    if not task:
        task = read_config(checkpoint).get("task", "")
        if not task:
            raise ValueError(f"{checkpoint}: the checkpoint records no task; pass --task")
    return load_spec(task)


@dataclass
class Dist:
    """This process's place in a (possibly single-process) training run."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Joins the torchrun process group when launched by torchrun, else a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu" if device == "auto" else device)
        if world > 1:  # share the cores between processes
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(rank, world, dev)


class LossForward(nn.Module):
    """``forward(*a, **kw) = model.loss(*a, **kw)``, so DDP all-reduces the loss's gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *batch, **kwargs):
        return self.model.loss(*batch, **kwargs)


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    """DDP-wraps ``model`` in a multi-process run; returns it unchanged otherwise."""
    if d.world == 1:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   lr: float, max_norm: float = 1.0) -> None:
    """Sets the learning rate, back-propagates, clips the gradient norm and steps."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()


# ------------------------------------------------------------------------- resumable state
def save_train_state(
    path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, extra: dict
) -> None:
    """Model + optimizer + step as safetensors and JSON (no pickle), written atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict] = {}
    for pid, st in opt_state["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"opt.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = float(v)
    meta = {"step": step, "param_groups": opt_state["param_groups"], "opt_scalars": scalars,
            **extra}
    tmp_w, tmp_m = path / ".state.safetensors.tmp", path / ".state.json.tmp"
    save_file(tensors, str(tmp_w))
    tmp_m.write_text(json.dumps(meta))
    os.replace(tmp_w, path / "state.safetensors")
    os.replace(tmp_m, path / "state.json")


def load_train_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restores what ``save_train_state`` wrote; returns its metadata (with ``step``)."""
    path = Path(path)
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict(
        {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True
    )
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, st in meta["opt_scalars"].items():
        for name, v in st.items():
            state.setdefault(int(pid), {})[name] = torch.tensor(v)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


class Logger:
    """TensorBoard scalars/images on the main process; quiet elsewhere."""

    def __init__(self, logdir: str | Path | None, main: bool):
        self.writer = None
        if main and logdir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(logdir))

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, step: int, tag: str, img: torch.Tensor) -> None:
        """``img``: (3, H, W) float in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, img.clamp(0, 1), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
