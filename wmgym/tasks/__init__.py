"""Task modules: what a task needs in code beyond its spec (``envs/<task>.toml``).

A spec names its module with ``[task] module = "<name>"``; ``wmgym.tasks.<name>`` may define:

* ``EXPERTS``: scripted experts by policy name (``{"pick": ScriptedPick}``); each takes its knobs
  of incompetence as keyword arguments, so ``"pick:noise=0.3,error=0.02"`` names a variant;
* ``MIXES``: named mixes ``{mix: {policy name: weight}}`` that ``wmgym collect`` draws from;
* ``SWEEP_POLICIES``: the policies of graded competence ``wmgym sweep`` ranks by default;
* ``DISTILL_POLICIES``: the policies whose imagined rollouts the fast parts are distilled on;
* ``SAC_RECIPE``: the task's measured :func:`wmgym.sac.make_sac` keywords
  (:func:`wmgym.rl.sac_recipe`);
* ``IMITATION_EXPERT``: the expert that labels a camera-based actor's steps
  (:mod:`wmgym.imitation`; default: the first of ``EXPERTS``).

A task without a module has no scripted experts: it collects random play only.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from wmgym.spec import TaskSpec, all_specs, load_spec


def task_module(task: str | TaskSpec) -> ModuleType | None:
    """The module of a task's spec (``wmgym.tasks.<module>``), or None when it names none."""
    spec = load_spec(task)
    if spec.module is None:
        return None
    return importlib.import_module(f"wmgym.tasks.{spec.module}")


def experts() -> dict[str, tuple[type, TaskSpec]]:
    """Every task's scripted experts: ``{policy name: (class, spec)}``."""
    found: dict[str, tuple[type, TaskSpec]] = {}
    for spec in all_specs():
        module = task_module(spec)
        for name, cls in getattr(module, "EXPERTS", {}).items():
            found.setdefault(name, (cls, spec))
    return found


def declared(task: str | TaskSpec, name: str) -> object:
    """What the task's module declares as ``name`` (e.g. ``SAC_RECIPE``, ``FAMILY``).

    Raises:
        KeyError: The task's module declares no ``name`` (or the task has no module).
    """
    spec = load_spec(task)
    value = getattr(task_module(spec), name, None)
    if value is None:
        raise KeyError(f"task {spec.name!r} declares no {name} in its task module "
                       f"(wmgym.tasks.{spec.module or '<none>'})")
    return value


def mixes(task: str | TaskSpec) -> dict[str, dict[str, float]]:
    """The task's named data mixes (``{}`` without a module)."""
    return dict(getattr(task_module(task), "MIXES", {}))


def sweep_policies(task: str | TaskSpec) -> tuple[str, ...]:
    """The policies a sweep of the task ranks by default (random play without a module)."""
    return tuple(getattr(task_module(task), "SWEEP_POLICIES", ("random", "random:repeat=4")))


def play_mix(expert: str) -> dict[str, float]:
    """A task's ``play`` mix for its state model: the arm's own motion near the objects.

    Smooth random play at speeds from 0.03 to 1 (``play``, and slow play), and the expert slow,
    paused and noisy, which brings slow motion next to the objects and carries them.

    >>> sorted(play_mix("door"))[:2]
    ['door', 'door:gain=0.2,noise=0.05']
    """
    return {
        "play": 0.35,
        "play:high=0.2": 0.2,
        f"{expert}:gain=0.35,pause=0.05": 0.1,
        f"{expert}:gain=0.2,noise=0.05": 0.1,
        f"{expert}:pause=0.15": 0.1,
        f"{expert}:noise=0.3": 0.1,
        expert: 0.05,
    }
