"""Result files of benchmarks and experiments: what they ran on, written atomically."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def checkpoint_id(directory: str | Path) -> dict[str, str]:
    """Which world model a result came from: its resolved path and weights' sha256."""
    from wmgym.model.checkpoint import read_config

    return {"path": str(Path(directory).resolve()), "sha256": read_config(directory)["sha256"]}


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


def write_result(path: str | Path, result: dict) -> None:
    """Writes a benchmark result as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
