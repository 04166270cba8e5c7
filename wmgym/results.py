"""Result files of the uses (sweep, bench, transfer, MBPO): what they ran on, written atomically."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wmgym.spec import TaskSpec

#: CPU flags that decide which kernels PyTorch runs (bfloat16 matmuls and attention differ a lot).
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpu_info() -> tuple[str | None, list[str]]:
    """The CPU's model name and which of :data:`CPU_FEATURES` it has (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, []
    first = text.split("\n\n", 1)[0]  # the first processor's block
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name"), [f for f in CPU_FEATURES if f in flags]


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    model, features = _cpu_info()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": model,
        "cpu_features": features,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def checkpoint_id(directory: str | Path) -> dict[str, str]:
    """Which world model a result came from: its path and weights' sha256.

    With a state model, its weights' sha256 too (``state_model_sha256``).
    """
    from wmgym.model.checkpoint import read_config
    from wmgym.model.state_model import STATE_MODEL_DIR, has_state_model

    out = {"path": str(Path(directory).resolve()), "sha256": read_config(directory)["sha256"]}
    if has_state_model(directory):
        out["state_model_sha256"] = read_config(Path(directory) / STATE_MODEL_DIR)["sha256"]
    return out


def resolve_task(task: str = "", checkpoint: str | Path | None = None
                 ) -> tuple[TaskSpec, Path]:
    """The task and checkpoint a command runs on.

    Args:
        task: A task name or spec path; empty: the task the checkpoint was trained for (its
            ``config.json`` names it).
        checkpoint: A checkpoint directory; empty or None: the task's shipped one.

    Returns:
        ``(spec, checkpoint directory)``.

    Raises:
        ValueError: Neither a task nor a checkpoint.
    """
    from wmgym.model.checkpoint import read_config
    from wmgym.spec import load_spec

    if not task:
        if not checkpoint:
            raise ValueError("name a task (--task, e.g. pick) or a checkpoint (--checkpoint)")
        task = str(read_config(checkpoint).get("task") or "")
        if not task:
            raise ValueError(f"{checkpoint}: its config.json names no task: pass --task")
    spec = load_spec(task)
    return spec, Path(checkpoint) if checkpoint else spec.checkpoint


def matching_result(path: str | Path | None, expect: Mapping[str, Any]) -> dict:
    """The earlier result at ``path`` if it was run with the same settings, else ``{}``.

    Args:
        path: A result JSON (``None`` or a missing file: no earlier result).
        expect: Values the earlier result must hold; a dotted key (``config.steps``) reaches
            into nested dicts.
    """
    if path is None or not Path(path).exists():
        return {}
    old = json.loads(Path(path).read_text())

    def get(key: str) -> Any:
        node: Any = old
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return old if all(get(k) == v for k, v in expect.items()) else {}


def write_result(path: str | Path, result: dict) -> Path:
    """Writes a result as JSON atomically (a temporary sibling, then a rename); returns its path."""
    from wmgym.model.checkpoint import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
