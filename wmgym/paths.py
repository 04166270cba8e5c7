"""Where task specs and checkpoints live: the data roots.

A data root is a folder holding ``envs/<task>.toml`` and ``checkpoints/WM-<Task>-v0/``. wmgym
reads, first to last:

1. ``$WMGYM_HOME``, when set: the user's own tasks and checkpoints (they win on equal names);
2. the bundled root: the repository's top level in a source checkout, or the copy a built
   wheel carries inside the package (``wmgym/_data``).

Nothing is fetched at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: The folder holding ``envs/`` and ``checkpoints/`` beside the package (a source checkout).
REPO_ROOT = PACKAGE_DIR.parent
#: The same two folders as a built wheel installs them.
BUNDLED_DATA = PACKAGE_DIR / "_data"


def bundled_root() -> Path:
    """The data root shipped with wmgym: the source checkout's, else the wheel's copy."""
    if (REPO_ROOT / "envs").is_dir() and (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT
    return BUNDLED_DATA


def data_roots() -> list[Path]:
    """Every data root, highest priority first (``$WMGYM_HOME``, then the bundled one)."""
    roots = []
    home = os.environ.get("WMGYM_HOME")
    if home:
        roots.append(Path(home).expanduser().resolve())
    roots.append(bundled_root())
    return roots
