"""Task specs: one TOML file per task, the single source of truth for both twins.

A spec fixes everything the real twin (``Sim-<Task>-v0``) and the learned twin
(``WM-<Task>-v0``) must agree on: the robosuite environment and controller, the camera, the
image size and depth range, the layout of the ``state`` and ``proprio`` vectors, the success
rule, the episode length and the world-model checkpoint. The observation and action spaces are
derived from it here, in one place. Nothing else in wmgym's core knows a task.

Spec files live in ``envs/`` under each data root (:mod:`wmgym.paths`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from gymnasium import spaces

from wmgym.paths import data_roots

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Camera observation keys, in the order the model's frames stack them.
IMAGE_KEYS = ("rgb", "depth", "mask")
#: Bound of the ``state`` and ``proprio`` boxes: far outside any workspace, so Gymnasium's
#: checks stay quiet (metres, radians).
STATE_BOUND = 5.0


@dataclass(frozen=True)
class CameraSpec:
    pos: tuple[float, float, float]
    """Camera position in the world frame, metres."""
    target: tuple[float, float, float]
    """Point the camera looks at, world frame, metres."""
    fovy: float
    """Vertical field of view in degrees."""


@dataclass(frozen=True)
class EventConfig:
    """An event whose outcome is drawn once when it begins (e.g. a grasp that holds or slips).

    All positions are indices into the action or ``state`` vector. A spec declares it by field
    names (``[world_model.event]``); the dynamics transformer stores it as a plain dict
    (:meth:`as_config`, ``DynamicsConfig.event``) and reads it back with :meth:`from_dict`.
    """

    trigger: int
    """Action dimension whose positive command (``> 0``) keeps the event going."""
    run: int
    """Positive commands in a row that start the event (its outcome is drawn then)."""
    anchor: tuple[int, ...]
    """State fields of the point whose offset to ``target`` decides the outcome."""
    target: tuple[int, ...]
    """State fields of the object the event acts on (as many as ``anchor``)."""
    extra: tuple[int, ...]
    """Further state fields the outcome head reads (e.g. the finger joints)."""
    scale: float
    """Unit of the offset ``anchor - target`` the head reads."""
    outcome: int
    """State field that tells, in the data, whether the event succeeded ..."""
    above: float
    """... by rising above this value before the trigger is released."""

    @classmethod
    def from_dict(cls, config: dict) -> EventConfig:
        """Parses :meth:`as_config`'s dict (``DynamicsConfig.event``).

        Raises:
            ValueError: Missing or unknown keys (naming the expected ones), or anchor and
                target of different lengths.
        """
        keys = set(cls.__dataclass_fields__)
        if set(config) != keys:
            raise ValueError(f"event config has keys {sorted(config)}, expected {sorted(keys)}")
        cfg = cls(**{k: tuple(v) if isinstance(v, list | tuple) else v
                     for k, v in config.items()})
        if len(cfg.anchor) != len(cfg.target) or not cfg.anchor:
            raise ValueError(f"event anchor {cfg.anchor} and target {cfg.target} must be "
                             "non-empty and of one length")
        return cfg

    def as_config(self) -> dict:
        """The plain dict the dynamics transformer's config stores."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def n_features(self) -> int:
        """Inputs of the outcome head: the offset, its leading axes' norm and the extra fields."""
        return len(self.anchor) + 1 + len(self.extra)


@dataclass(frozen=True)
class StateModelSpec:
    """The fields the world model's state model predicts (:mod:`wmgym.model.state_model`).

    Read from ``[world_model.state_model]``: ``fields`` (state field names it predicts) and
    ``offsets`` (pairs of field names whose difference it reads, e.g. the gripper's offset
    from an object it may touch).
    """

    fields: tuple[str, ...]
    offsets: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """A task as read from ``envs/<task>.toml``.

    >>> spec = load_spec("pick")
    >>> spec.sim_id, spec.wm_id, spec.state_dim, spec.action_dim
    ('Sim-Pick-v0', 'WM-Pick-v0', 8, 4)
    """

    name: str
    """Task name, e.g. ``Pick``; the env ids are ``Sim-<name>-v0`` and ``WM-<name>-v0``."""
    description: str
    """One line saying what success means."""
    module: str | None
    """Module under :mod:`wmgym.tasks` with the task's scripted experts, or None."""
    env: str
    """robosuite environment class name."""
    robot: str
    """robosuite robot name."""
    controller: str
    """robosuite part controller for the arm."""
    control_freq: int
    """Policy steps per simulated second."""
    reward_shaping: bool
    """Use the shaped reward (else sparse)."""
    sim_options: dict[str, object]
    """Further keyword arguments of the robosuite environment (``[sim] options``)."""
    action_names: tuple[str, ...]
    """One name per action dimension (the controller's inputs, then the gripper's)."""
    state_observables: tuple[str, ...]
    """robosuite observables concatenated, in order, into ``state``."""
    state_fields: tuple[str, ...]
    """One name per ``state`` entry."""
    proprio_fields: tuple[str, ...]
    """The ``state`` entries a real robot knows about itself: the ``proprio`` observation."""
    positions: dict[str, tuple[int, ...]]
    """Named xyz positions inside ``state`` (indices), for error reports."""
    success_field: str | None
    """The imagined state's success rule: this field ..."""
    success_above: float | None
    """... above this value. The learned twin's success needs it as well as its success head."""
    camera: CameraSpec
    """The one camera both twins observe through."""
    resolution: int
    """Image height and width in pixels."""
    depth_range: tuple[float, float]
    """Near and far clip of the depth image, metres."""
    max_episode_steps: int
    """Steps after which an episode is truncated."""
    terminate_on_success: bool
    """End the episode as soon as ``info['success']`` is true."""
    checkpoint: Path
    """Directory of the world-model checkpoint (absolute)."""
    event: EventConfig | None
    """The world model's drawn-once event, or None."""
    path: Path
    """The TOML file this spec was read from."""
    state_model: StateModelSpec | None = None
    """The fields the world model's state model predicts, or None."""
    recipe: dict = field(default_factory=dict)
    """``[recipe]``: the datasets and budgets of ``wmgym recipe`` (:mod:`wmgym.recipe` reads
    and checks it)."""
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({f: i for i, f in enumerate(self.state_fields)})

    @property
    def sim_id(self) -> str:
        return f"Sim-{self.name}-v0"

    @property
    def wm_id(self) -> str:
        return f"WM-{self.name}-v0"

    @property
    def state_dim(self) -> int:
        return len(self.state_fields)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def index(self, *names: str) -> list[int]:
        """Positions of the named ``state`` fields.

        Raises:
            KeyError: A name the spec does not have, with the known ones.
        """
        missing = [n for n in names if n not in self._index]
        if missing:
            raise KeyError(f"{self.path}: no state fields {missing}; known: "
                           f"{list(self.state_fields)}")
        return [self._index[n] for n in names]

    @property
    def proprio_index(self) -> list[int]:
        """Positions of the ``proprio`` fields inside ``state``."""
        return self.index(*self.proprio_fields)

    def observation_space(self, images: bool = True) -> spaces.Dict:
        """The observation space of both twins; ``images=False`` keeps ``proprio`` and ``state``.

        ``state`` is privileged (it includes object poses); ``proprio`` is the part of it a real
        robot knows (end effector and fingers).
        """
        r = self.resolution
        obs: dict[str, spaces.Space] = {}
        if images:
            obs["rgb"] = spaces.Box(0, 255, (r, r, 3), np.uint8)
            obs["depth"] = spaces.Box(0.0, self.depth_range[1], (r, r, 1), np.float32)
            obs["mask"] = spaces.Box(0, 1, (r, r, 1), np.uint8)
        obs["proprio"] = spaces.Box(-STATE_BOUND, STATE_BOUND, (len(self.proprio_fields),),
                                    np.float32)
        obs["state"] = spaces.Box(-STATE_BOUND, STATE_BOUND, (self.state_dim,), np.float32)
        return spaces.Dict(obs)

    def proprio(self, state: np.ndarray) -> np.ndarray:
        """``proprio`` of states ``(..., state_dim)``: ``(..., len(proprio_fields))`` float32."""
        return np.ascontiguousarray(np.asarray(state, np.float32)[..., self.proprio_index])

    def action_space(self) -> spaces.Box:
        """``action_names`` in [-1, 1]."""
        return spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)

    def state_success(self, state: np.ndarray) -> np.ndarray:
        """The success rule on states ``(..., state_dim)``: bool ``(...)``; all True if none."""
        state = np.asarray(state)
        if self.success_field is None:
            return np.ones(state.shape[:-1], bool)
        return state[..., self._index[self.success_field]] > self.success_above

    def success(self, prob: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The learned twin's verdict: the success head fires and the state meets the rule.

        Args:
            prob: ``(...)`` success-head probabilities.
            state: ``(..., state_dim)`` imagined states of the same steps.

        Returns:
            ``(...)`` bool, the shape of ``prob``.
        """
        return (np.asarray(prob) > 0.5) & self.state_success(state)


def _require(table: dict, key: str, path: Path, section: str):
    if key not in table:
        raise ValueError(f"{path}: missing required key [{section}] {key!r}")
    return table[key]


def _event(raw: dict, path: Path, fields: list[str], actions: list[str]) -> EventConfig | None:
    if not raw:
        return None

    def idx(names: list[str]) -> tuple[int, ...]:
        unknown = [n for n in names if n not in fields]
        if unknown:
            raise ValueError(f"{path}: [world_model.event] names unknown state fields {unknown}")
        return tuple(fields.index(n) for n in names)

    trigger = _require(raw, "trigger", path, "world_model.event")
    if trigger not in actions:
        raise ValueError(f"{path}: [world_model.event] trigger {trigger!r} is not an action "
                         f"name {actions}")
    anchor, target = idx(raw.get("anchor", [])), idx(raw.get("target", []))
    if len(anchor) != len(target):
        raise ValueError(f"{path}: [world_model.event] anchor and target differ in length")
    return EventConfig(
        trigger=actions.index(trigger), run=int(raw.get("run", 3)), anchor=anchor,
        target=target, extra=idx(raw.get("extra", [])), scale=float(raw.get("scale", 1.0)),
        outcome=idx([_require(raw, "outcome", path, "world_model.event")])[0],
        above=float(_require(raw, "above", path, "world_model.event")),
    )


def _state_model(raw: dict, path: Path, fields: list[str]) -> StateModelSpec | None:
    if not raw:
        return None
    names = list(_require(raw, "fields", path, "world_model.state_model"))
    offsets = [tuple(pair) for pair in raw.get("offsets", [])]
    if any(len(pair) != 2 for pair in offsets):
        raise ValueError(f"{path}: [world_model.state_model] offsets must be pairs of field names")
    unknown = [n for n in [*names, *(n for pair in offsets for n in pair)] if n not in fields]
    if unknown:
        raise ValueError(f"{path}: [world_model.state_model] names unknown state fields {unknown}")
    return StateModelSpec(fields=tuple(names), offsets=tuple(offsets))


def read_spec(path: str | Path) -> TaskSpec:
    """Reads one spec file, failing with the file name and the missing or bad key."""
    path = Path(path)
    with path.open("rb") as f:
        raw = tomllib.load(f)
    task, sim, cam = raw.get("task", {}), raw.get("sim", {}), raw.get("camera", {})
    obs, ep, wm = raw.get("observation", {}), raw.get("episode", {}), raw.get("world_model", {})
    state, act, success = raw.get("state", {}), raw.get("action", {}), raw.get("success", {})
    name = _require(task, "name", path, "task")
    near, far = (float(x) for x in _require(obs, "depth_range", path, "observation"))
    if not 0 <= near < far:
        raise ValueError(f"{path}: depth_range must satisfy 0 <= near < far, got {near}, {far}")
    fields = list(_require(state, "fields", path, "state"))
    if len(set(fields)) != len(fields):
        raise ValueError(f"{path}: [state] fields repeat a name: {fields}")
    actions = list(_require(act, "names", path, "action"))
    proprio = list(state.get("proprio", []))
    positions = {k: tuple(v) for k, v in state.get("positions", {}).items()}
    for names in [proprio, *positions.values(), [success.get("field", fields[0])]]:
        unknown = [n for n in names if n not in fields]
        if unknown:
            raise ValueError(f"{path}: unknown state fields {unknown}; [state] fields: {fields}")
    ckpt = Path(wm.get("checkpoint", f"WM-{name}-v0"))
    return TaskSpec(
        name=name,
        description=task.get("description", ""),
        module=task.get("module"),
        env=_require(sim, "env", path, "sim"),
        robot=_require(sim, "robot", path, "sim"),
        controller=_require(sim, "controller", path, "sim"),
        control_freq=int(_require(sim, "control_freq", path, "sim")),
        reward_shaping=bool(sim.get("reward_shaping", True)),
        sim_options=dict(sim.get("options", {})),
        action_names=tuple(actions),
        state_observables=tuple(_require(state, "observables", path, "state")),
        state_fields=tuple(fields),
        proprio_fields=tuple(proprio),
        positions={k: tuple(fields.index(n) for n in v) for k, v in positions.items()},
        success_field=success.get("field"),
        success_above=None if "field" not in success else float(
            _require(success, "above", path, "success")),
        camera=CameraSpec(
            pos=tuple(float(x) for x in _require(cam, "pos", path, "camera")),
            target=tuple(float(x) for x in _require(cam, "target", path, "camera")),
            fovy=float(_require(cam, "fovy", path, "camera")),
        ),
        resolution=int(_require(obs, "resolution", path, "observation")),
        depth_range=(near, far),
        max_episode_steps=int(_require(ep, "max_episode_steps", path, "episode")),
        terminate_on_success=bool(ep.get("terminate_on_success", True)),
        checkpoint=ckpt if ckpt.is_absolute() else path.parent.parent / "checkpoints" / ckpt,
        event=_event(wm.get("event", {}), path, fields, actions),
        path=path,
        state_model=_state_model(wm.get("state_model", {}), path, fields),
        recipe=dict(raw.get("recipe", {})),
    )


def spec_paths() -> dict[str, Path]:
    """Every spec file by lower-case task name; ``$WMGYM_HOME`` wins on equal names."""
    found: dict[str, Path] = {}
    for root in reversed(data_roots()):
        found.update({p.stem.lower(): p for p in sorted((root / "envs").glob("*.toml"))})
    return dict(sorted(found.items()))


def load_spec(name: str | TaskSpec) -> TaskSpec:
    """The spec of a task name (case-insensitive, e.g. ``"pick"``), a TOML path, or a spec.

    Raises:
        FileNotFoundError: No such task, with the known ones.
    """
    if isinstance(name, TaskSpec):
        return name
    if str(name).endswith(".toml"):
        return read_spec(name)
    paths = spec_paths()
    if name.lower() not in paths:
        raise FileNotFoundError(f"no task spec {name!r}; known tasks: {sorted(paths)} "
                                f"(spec folders: {[str(r / 'envs') for r in data_roots()]})")
    return read_spec(paths[name.lower()])


def all_specs() -> list[TaskSpec]:
    """Every task spec, sorted by task name."""
    return [read_spec(p) for p in spec_paths().values()]
