"""Policies from wherever users keep them: names, SB3 zip files, Python paths, objects.

* names of :func:`wmgym.policies.make_policy`: a task's scripted experts with their knobs
  (``pick``, ``pick:error=0.02``) and ``random[:repeat=n]``;
* stable-baselines3 zip files: ``sac:path.zip``, ``ppo:path.zip`` (``td3``, ``a2c``, ``ddpg``),
  run with ``predict(obs, deterministic=True)`` on the keys they were trained on (see
  :class:`SB3Policy`);
* frozen agents (:mod:`wmgym.agents`, e.g. built by ``wmgym agents build``): ``agent:DIR``, a
  folder holding ``agent.json`` and ``actor.safetensors``, and ``family:DIR``, every agent of
  a family directory (expanded by :func:`named_policies`);
* Python paths ``module:attr`` to a policy class or a zero-argument factory;
* in the Python API also objects: a class or factory, a policy instance (copied per episode),
  a plain ``policy(obs) -> action`` function, or a loaded SB3 model.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from wmgym.policies import Policy, make_policy
from wmgym.spec import TaskSpec

#: stable-baselines3 algorithms a policy spec may name (``<algo>:<path.zip>``).
SB3_ALGOS = ("sac", "ppo", "td3", "a2c", "ddpg")

PolicySource = str | Callable[..., Any]
"""A policy spec string, a policy (function or instance), a policy factory or an SB3 model."""


class SB3Policy:
    """A stable-baselines3 model as a policy: ``model.predict(obs, deterministic=True)``.

    A model trained on a ``Dict`` observation space gets the keys it knows (e.g. only
    ``state`` after ``SB3VecEnv(..., keys=["state"])``); one trained on a ``Box`` gets the
    privileged ``state`` vector.

    Args:
        model: A loaded SB3 model (anything with ``predict`` and ``observation_space``).
        deterministic: Take the mode of the action distribution.

    Raises:
        ValueError: The model observes neither a ``Dict`` nor a flat ``Box``.
    """

    def __init__(self, model: Any, *, deterministic: bool = True) -> None:
        self.model, self.deterministic = model, deterministic
        space = model.observation_space
        self.keys = list(space.spaces) if isinstance(space, spaces.Dict) else None
        self.observation_keys = tuple(self.keys) if self.keys is not None else ("state",)
        if self.keys is None and len(getattr(space, "shape", ()) or ()) != 1:
            raise ValueError(f"SB3 model observes {space}: expected a Dict of env observation "
                             "keys or the flat state Box")

    def reset(self, seed: int | None = None) -> None:
        """Stateless: nothing to reset."""

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        x = {k: obs[k] for k in self.keys} if self.keys is not None else obs["state"]
        action, _ = self.model.predict(x, deterministic=self.deterministic)
        return np.asarray(action, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def load_sb3_model(algo: str, path: str) -> Any:
    """Loads an SB3 zip once per process (on CPU: small MLPs act fastest there)."""
    import stable_baselines3

    if algo not in SB3_ALGOS:
        raise ValueError(f"unknown SB3 algorithm {algo!r}; expected one of {SB3_ALGOS}")
    if not Path(path).exists():
        raise FileNotFoundError(f"{algo}:{path}: no such SB3 model file")
    return getattr(stable_baselines3, algo.upper()).load(path, device="cpu")


def _sb3_policy(algo: str, path: str) -> SB3Policy:
    return SB3Policy(load_sb3_model(algo, path))


@functools.lru_cache(maxsize=64)
def load_frozen_agent(path: str) -> Policy:
    """Loads a frozen agent once per process (it is stateless, so one instance serves all).

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        wmgym.agents.AgentError: It holds no frozen agent, or a damaged one.
    """
    from wmgym.agents import load_agent

    if not Path(path).is_dir():
        raise FileNotFoundError(f"agent:{path}: no such frozen-agent folder")
    return load_agent(path)


def _required_args(fn: Callable[..., Any]) -> int | None:
    """Number of required positional parameters of ``fn`` (None when it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is p.empty for p in params)


def policy_factory(source: PolicySource, *, task: str | TaskSpec | None = None
                   ) -> Callable[[], Policy]:
    """A zero-argument callable that makes a fresh policy for one episode.

    >>> make = policy_factory("pick:error=0.02")
    >>> a, b = make(), make()  # one instance per parallel episode
    >>> a is b
    False

    Args:
        source: A spec string (see the module doc), a policy class or factory, a policy
            instance or function, or a loaded SB3 model.
        task: The task the policy acts in (``random`` takes its action size from it).

    Returns:
        The factory; it is picklable when ``source`` is (spec strings always are).

    Raises:
        ValueError: ``source`` names no known kind of policy.
    """
    if isinstance(source, str):
        kind, sep, rest = source.partition(":")
        if kind.lower() in SB3_ALGOS and rest:
            return functools.partial(_sb3_policy, kind.lower(), rest)
        if kind == "agent" and rest:
            load_frozen_agent(rest)  # a missing or damaged agent fails here, before any episode
            return functools.partial(load_frozen_agent, rest)
        if sep and rest and "=" not in rest:  # module:attr (expert options read k=v)
            try:
                obj = getattr(importlib.import_module(kind), rest)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"policy {source!r}: cannot import {rest!r} from {kind!r}") from e
            return policy_factory(obj)
        make = functools.partial(make_policy, source, task=task)
        try:
            make()  # unknown names and bad options fail here, before any episode
        except ValueError as e:
            raise ValueError(f"{e}; or '<{'|'.join(SB3_ALGOS)}>:path.zip', 'agent:DIR' or "
                             "'module:attr'") from e
        return make
    if hasattr(source, "predict") and hasattr(source, "observation_space"):
        return functools.partial(SB3Policy, source)  # one shared model, stateless adapters
    if not callable(source):
        raise ValueError(f"a policy must be callable, got {type(source).__name__}")
    if inspect.isclass(source) or _required_args(source) == 0:
        return source  # a class or factory: calling it makes a policy
    return functools.partial(copy.deepcopy, source)  # an instance or function: one copy each


def policy_name(source: PolicySource) -> str:
    """A policy's display name: its spec string, else its ``__name__`` or type name."""
    if isinstance(source, str):
        return source
    return getattr(source, "__name__", type(source).__name__)


def family_agents(directory: str | Path) -> list[str]:
    """``agent:<folder>`` of every frozen agent in a family directory, in the family's order.

    The order is ``family.json``'s (``wmgym agents build``) where there is one, else by name.

    Raises:
        FileNotFoundError: No such directory, or no frozen agent in it.
    """
    import json

    root = Path(directory)
    index = root / "family.json"
    if index.is_file():
        names = [a["path"] for a in json.loads(index.read_text())["agents"]]
    elif root.is_dir():
        names = sorted(p.name for p in root.iterdir() if (p / "agent.json").is_file())
    else:
        names = []
    if not names:
        raise FileNotFoundError(f"family:{directory}: no frozen agents there")
    return [f"agent:{root / name}" for name in names]


def expand_families(sources: Iterable[PolicySource]) -> list[PolicySource]:
    """The sources with each ``family:DIR`` replaced by its agents' ``agent:`` sources."""
    out: list[PolicySource] = []
    for source in sources:
        if isinstance(source, str) and source.startswith("family:"):
            out += family_agents(source.partition(":")[2])
        else:
            out.append(source)
    return out


def named_policies(policies: Mapping[str, PolicySource] | Iterable[PolicySource]) -> dict[str, Any]:
    """Policies by display name: a mapping as given, a list named by :func:`policy_name`.

    Raises:
        ValueError: No policies, or two with one name.
    """
    named = dict(policies) if isinstance(policies, Mapping) else {}
    if not named:
        for source in expand_families(policies):
            key = policy_name(source)
            if key in named:
                raise ValueError(f"two policies are named {key!r}: pass a dict of names instead")
            named[key] = source
    if not named:
        raise ValueError("no policies to sweep")
    return named
