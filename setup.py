"""Build hook: a wheel carries the task specs and the shipped checkpoints as package data.

The repository keeps them at its top level (``envs/``, ``checkpoints/``); the wheel puts a copy
under ``wmgym/_data/``, where :mod:`wmgym.paths` finds them when no source checkout is around.
Everything else is configured in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("envs", "checkpoints")


class BuildWithData(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout
            return
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "wmgym" / "_data"
        for name in DATA:
            if (target / name).exists():
                shutil.rmtree(target / name)
            shutil.copytree(root / name, target / name,
                            ignore=shutil.ignore_patterns("*.tmp*", "__pycache__"))


setup(cmdclass={"build_py": BuildWithData})
