"""Policies for both twins: the protocol, random play, and scripted experts by name.

A policy is any callable ``policy(obs) -> action``; ones with memory also have
``reset(seed)``, called at the start of each episode. A policy may declare the observation keys
it reads as ``observation_keys``: one that reads ``state`` only lets evaluations skip camera
observations (see :func:`reads_images`); one without it is taken to read every key.

Scripted experts live with their task (:mod:`wmgym.tasks`); :func:`make_policy` finds them by
name, with their knobs of incompetence: ``make_policy("pick:noise=0.3,error=0.02")``.

>>> policy = make_policy("random:repeat=4", task="pick")
>>> policy.reset(seed=0)
>>> policy({}).shape
(4,)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from wmgym.spec import IMAGE_KEYS, TaskSpec, load_spec


class Policy(Protocol):
    """``policy(obs) -> action``; ``reset(seed)`` starts an episode.

    Optional: ``observation_keys``, the keys of ``obs`` the policy reads.
    """

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...

    def reset(self, seed: int | None = None) -> None: ...


def reads_images(policy: object) -> bool:
    """Whether ``policy`` may read camera observations.

    True unless it declares ``observation_keys`` without any of rgb, depth or mask.

    >>> reads_images(RandomPolicy(4)), reads_images(lambda obs: obs["rgb"].mean())
    (False, True)
    """
    keys = getattr(policy, "observation_keys", None)
    return keys is None or any(k in IMAGE_KEYS for k in keys)


class RandomPolicy:
    """Uniform random actions in [-1, 1], each held for ``repeat`` steps (smoother play).

    Args:
        action_dim: Size of the action.
        repeat: Steps each action is held.
    """

    observation_keys = ()  # reads nothing

    def __init__(self, action_dim: int, repeat: int = 1):
        self.action_dim, self.repeat = int(action_dim), int(repeat)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.t, self.action = 0, np.zeros(self.action_dim, np.float32)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.t % self.repeat == 0:
            self.action = self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        self.t += 1
        return self.action


class PlayPolicy:
    """Smooth random play at one magnitude per episode: what an untrained or cautious agent does.

    Each episode draws a speed ``m`` (log-uniform in ``[low, high]``); every action axis then
    follows a smoothed random walk of that magnitude (an AR(1) process, ``a <- smooth * a +
    noise``, rescaled to ``m``), and now and then (``hold``) one action is held constant for
    5-20 steps, or the arm stands still. Scripted picks move at a few speeds and random play at
    full speed; play covers the slow, drifting and held motions of learned agents, which an
    arm model must get to the millimetre.

    Two options shape play like an agent's approach: ``sparse`` makes a held action move one
    axis only (the others at 0, the trigger kept), as a controller correcting one coordinate at a
    time does; ``pin`` holds the event's trigger axis at -1 (no event, e.g. the gripper open) for
    a whole episode, as agents do while they reach, with probability ``pin`` per episode.

    Args:
        action_dim: Size of the action.
        low: Slowest speed drawn (action units).
        high: Fastest speed drawn.
        smooth: AR(1) coefficient of the random walk (0: white noise).
        hold: Probability per step of starting a held action or a stop.
        sparse: Probability that a held action moves one axis only.
        pin: Probability per episode that the trigger axis stays at -1.
        trigger: The trigger axis (the task's event trigger); needed when ``sparse`` or ``pin``
            is set on a task that has one.
    """

    observation_keys = ()  # reads nothing

    def __init__(self, action_dim: int, low: float = 0.03, high: float = 1.0,
                 smooth: float = 0.9, hold: float = 0.04, *, sparse: float = 0.0,
                 pin: float = 0.0, trigger: int | None = None):
        if not 0 < low <= high <= 1:
            raise ValueError(f"play needs 0 < low <= high <= 1, got low={low}, high={high}")
        if not 0 <= smooth < 1:
            raise ValueError(f"play needs 0 <= smooth < 1, got {smooth}")
        for name, p in (("hold", hold), ("sparse", sparse), ("pin", pin)):
            if not 0 <= p <= 1:
                raise ValueError(f"play needs 0 <= {name} <= 1, got {p}")
        if trigger is not None and not 0 <= trigger < action_dim:
            raise ValueError(f"play: trigger {trigger} is not an axis of a {action_dim}-d action")
        self.action_dim, self.low, self.high = int(action_dim), low, high
        self.smooth, self.hold, self.sparse, self.pin = smooth, hold, sparse, pin
        self.trigger = trigger
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.speed = float(np.exp(self.rng.uniform(np.log(self.low), np.log(self.high))))
        self.walk = self.rng.standard_normal(self.action_dim)
        self.held, self.left = np.zeros(self.action_dim), 0
        self.pinned = (self.pin > 0 and self.trigger is not None  # no draw: plain play replays
                       and self.rng.random() < self.pin)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        noise = self.rng.standard_normal(self.action_dim) * np.sqrt(1 - self.smooth ** 2)
        self.walk = self.smooth * self.walk + noise  # unit variance on every axis
        if self.left == 0 and self.rng.random() < self.hold:
            self.left = int(self.rng.integers(5, 21))
            stop = self.rng.random() < 0.3
            self.held = np.zeros(self.action_dim) if stop else self.walk * self.speed
            if not stop and self.sparse > 0 and self.rng.random() < self.sparse:
                axes = [i for i in range(self.action_dim) if i != self.trigger]
                kept = [self.rng.choice(axes), *([] if self.trigger is None else [self.trigger])]
                self.held = np.where(np.isin(np.arange(self.action_dim), kept), self.held, 0.0)
        if self.left > 0:
            self.left -= 1
            action = self.held.copy()
        else:
            action = self.walk * self.speed
        if self.pinned:
            action[self.trigger] = -1.0
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def parse_policy_name(name: str) -> tuple[str, dict[str, float]]:
    """``"pick:noise=0.3,error=0.02"`` -> ``("pick", {"noise": 0.3, "error": 0.02})``."""
    kind, _, args = name.partition(":")
    try:
        kwargs = {k.strip(): float(v) for k, v in (a.split("=") for a in args.split(",") if a)}
    except ValueError as e:
        raise ValueError(f"policy {name!r}: options must read k=v,k=v ({e})") from e
    return kind, kwargs


def make_policy(name: str, *, task: str | TaskSpec | None = None) -> Policy:
    """A policy by name: a task's scripted expert with knobs, or random play.

    Args:
        name: ``<expert>[:k=v,...]`` (e.g. ``pick:noise=0.3``: the expert of the task that
            defines it, see :mod:`wmgym.tasks`), ``random[:repeat=n]`` or
            ``play[:low=..,high=..,smooth=..,hold=..]`` (:class:`PlayPolicy`).
        task: The task, needed for ``random`` and ``play`` (their action size); for an expert
            it must be the expert's own task when given.

    Raises:
        ValueError: An unknown name, bad options, or ``random`` without a task.
    """
    from wmgym.tasks import experts

    kind, kwargs = parse_policy_name(name)
    if kind in ("random", "play"):
        if task is None:
            raise ValueError(f"policy {name!r} needs task= ({kind} takes its action size)")
        spec = load_spec(task)
        if kind == "random":
            return RandomPolicy(spec.action_dim, repeat=int(kwargs.get("repeat", 1)))
        trigger = spec.event.trigger if spec.event else None
        try:
            return PlayPolicy(spec.action_dim, **kwargs, trigger=trigger)
        except TypeError as e:
            raise ValueError(f"policy {name!r}: {e}") from e
    known = experts()
    if kind not in known:
        raise ValueError(f"unknown policy {name!r}; known: random[:repeat=n], play[:k=v,...] and "
                         f"{sorted(known)} with [:k=v,...] options")
    cls, spec = known[kind]
    if task is not None and load_spec(task).name != spec.name:
        raise ValueError(f"policy {name!r} is an expert of task {spec.name!r}, not "
                         f"{load_spec(task).name!r}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"policy {name!r}: {e}") from e
