"""Frozen agents: a learned policy's deterministic actor, stored small and loaded as a policy.

A frozen agent is a folder of two files:

* ``actor.safetensors``: the actor's tensors only (no critics, no replay buffer, no optimizer,
  never pickle);
* ``agent.json``: the architecture (observation features: state vectors, or a conv encoder
  over the camera's frames for :mod:`wmgym.vision`'s actors; layers, output), the observation
  keys it reads, the task, how it was trained, the weights' sha256 and the real success measured
  when it was frozen.

:func:`export_actor` reads the actor of a stable-baselines3 SAC (including
:func:`wmgym.sac.make_sac`'s, with :class:`~wmgym.sac.StandardizedState` features) or PPO model,
:func:`save_agent` writes the folder atomically and :func:`load_agent` gives a
:class:`FrozenAgent`: a :class:`~wmgym.policies.Policy` whose actions equal the model's
``predict(obs, deterministic=True)``. ``wmgym sweep --policies agent:DIR`` runs one
(:mod:`wmgym.policy_sources`).

>>> agent = load_agent("runs/agents/sac@15000")  # doctest: +SKIP
>>> agent.observation_keys, agent({"state": state}).shape  # doctest: +SKIP
(('state',), (4,))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wmgym.model.checkpoint import atomic_write, sha256_file

WEIGHTS = "actor.safetensors"
META = "agent.json"
FORMAT_VERSION = 1

#: Activation modules an exported layer stack may hold, by the name stored in ``agent.json``.
ACTIVATIONS: dict[type, str] = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh",
                                torch.nn.ELU: "elu", torch.nn.LeakyReLU: "leaky_relu",
                                torch.nn.SiLU: "silu", torch.nn.GELU: "gelu"}
_APPLY = {"relu": torch.relu, "tanh": torch.tanh, "elu": torch.nn.functional.elu,
          "leaky_relu": torch.nn.functional.leaky_relu, "silu": torch.nn.functional.silu,
          "gelu": torch.nn.functional.gelu}


class AgentError(ValueError):
    """A frozen agent's file is missing, damaged, or does not hold what was expected."""


# ----------------------------------------------------------------------------- export


def _features(extractor: torch.nn.Module, space: spaces.Space, tensors: dict[str, torch.Tensor]
              ) -> dict[str, Any]:
    """The architecture of an SB3 features extractor over flat observations (tensors added)."""
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

    from wmgym.sac import StandardizedState

    if isinstance(extractor, StandardizedState):
        if not bool(extractor.fitted):
            raise ValueError("the agent's StandardizedState features were never fitted: train "
                             "the agent (or call fit) before freezing it")
        for name in ("mean", "std", "relative_std"):
            tensors[f"features.{name}"] = getattr(extractor, name).detach().clone()
        return {"kind": "standardized", "keys": ["state"], "offsets": extractor.offsets}
    if isinstance(extractor, CombinedExtractor):
        keys = list(extractor.extractors)
        for key in keys:
            sub = space[key]
            if not isinstance(extractor.extractors[key], torch.nn.Flatten) or \
                    len(sub.shape) != 1 or sub.dtype == np.uint8:
                raise ValueError(f"observation {key!r} {sub} is not a flat vector: only "
                                 "state-like observations are exported")
        return {"kind": "concat", "keys": keys}
    if isinstance(extractor, FlattenExtractor) and isinstance(space, spaces.Box) \
            and len(space.shape) == 1:
        return {"kind": "concat", "keys": ["state"]}  # a Box-observing model sees the state
    raise ValueError(f"cannot export a {type(extractor).__name__} features extractor over "
                     f"{space}: expected StandardizedState, or flat vectors")


def _layers(modules: list[torch.nn.Module], prefix: str, tensors: dict[str, torch.Tensor]
            ) -> list[dict[str, Any]]:
    """A stack of Linear / LayerNorm / activation modules as ``agent.json`` layers."""
    out: list[dict[str, Any]] = []
    for module in modules:
        if isinstance(module, torch.nn.Sequential):
            out += _layers(list(module), prefix, tensors)
            continue
        name = f"{prefix}.{len(out)}"
        if isinstance(module, torch.nn.Linear):
            tensors[f"{name}.weight"] = module.weight.detach().clone()
            tensors[f"{name}.bias"] = module.bias.detach().clone()
            out.append({"type": "linear", "name": name, "in": module.in_features,
                        "out": module.out_features})
        elif isinstance(module, torch.nn.LayerNorm):
            tensors[f"{name}.weight"] = module.weight.detach().clone()
            tensors[f"{name}.bias"] = module.bias.detach().clone()
            out.append({"type": "layer_norm", "name": name, "eps": module.eps})
        elif type(module) in ACTIVATIONS:
            out.append({"type": ACTIVATIONS[type(module)]})
        elif not isinstance(module, torch.nn.Identity):
            raise ValueError(f"cannot export a {type(module).__name__} layer")
    return out


def export_actor(model: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The deterministic actor of an SB3 SAC or PPO model: ``(tensors, architecture)``.

    SAC (and TD3-like squashed actors): ``tanh(mu(latent_pi(features)))``, rescaled to the
    action space. PPO (and A2C): the Gaussian's mean ``action_net(policy_net(features))``,
    clipped to the action space. Both are what ``model.predict(obs, deterministic=True)``
    returns.

    Args:
        model: A stable-baselines3 ``SAC`` or ``PPO``/``A2C`` model.

    Returns:
        The actor's tensors (CPU copies) and its architecture, for :func:`save_agent`.

    Raises:
        ValueError: Another algorithm, generalized state-dependent exploration, image
            observations or layers this format does not hold.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.sac.policies import SACPolicy

    policy = model.policy
    if getattr(model, "use_sde", False):
        raise ValueError("agents trained with gSDE (use_sde=True) cannot be exported")
    tensors: dict[str, torch.Tensor] = {}
    space = policy.observation_space
    if isinstance(policy, SACPolicy):
        actor = policy.actor
        features = _features(actor.features_extractor, space, tensors)
        layers = _layers([actor.latent_pi, actor.mu], "actor", tensors)
        output = "tanh"
    elif isinstance(policy, ActorCriticPolicy):
        if policy.squash_output:
            raise ValueError("a squashed actor-critic policy cannot be exported")
        extractor = policy.pi_features_extractor
        features = _features(extractor, space, tensors)
        layers = _layers([policy.mlp_extractor.policy_net, policy.action_net], "actor", tensors)
        output = "clip"
    else:
        raise ValueError(f"cannot export a {type(policy).__name__}: SAC or PPO policies only")
    action_space = policy.action_space
    arch = {"features": features, "layers": layers, "output": output,
            "action_low": action_space.low.tolist(), "action_high": action_space.high.tolist()}
    return tensors, arch


# ----------------------------------------------------------------------------- the frozen agent


class FrozenAgent:
    """A frozen deterministic actor as a policy: ``agent(obs) -> action``.

    Stateless (``reset`` does nothing); it reads only ``observation_keys``. Observations may
    carry leading batch axes: ``agent({"state": (N, 8)})`` gives ``(N, 4)`` actions.

    Args:
        tensors: The actor's tensors (as saved by :func:`save_agent`).
        meta: The ``agent.json`` content (at least ``architecture``).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.meta = dict(meta)
        arch = self.meta["architecture"]
        self.features, self.layers = arch["features"], arch["layers"]
        self.output = arch["output"]
        self.tensors = {k: v.float() for k, v in tensors.items()}
        self.low = torch.tensor(arch["action_low"], dtype=torch.float32)
        self.high = torch.tensor(arch["action_high"], dtype=torch.float32)
        self.observation_keys = tuple(self.meta.get("observation_keys", self.features["keys"]))
        self.name = str(self.meta.get("name", "agent"))
        self.offsets = [(list(a), list(b)) for a, b in self.features.get("offsets", [])]

    def reset(self, seed: int | None = None) -> None:
        """Stateless: nothing to reset."""

    def _features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        if self.features["kind"] == "vision":
            from wmgym.vision import vision_features

            return vision_features(self.tensors, self.features, obs)
        parts = [torch.as_tensor(np.asarray(obs[k], np.float32)) for k in self.features["keys"]]
        x = torch.cat(parts, dim=-1)
        if self.features["kind"] == "standardized":
            t = self.tensors
            rel = [x[..., b] - x[..., a] for a, b in self.offsets]
            relative = torch.cat(rel, dim=-1) if rel else x[..., :0]
            x = torch.cat([(x - t["features.mean"]) / t["features.std"],
                           relative / t["features.relative_std"]], dim=-1)
        return x

    @torch.no_grad()
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Actions for observations with any leading batch axes, ``(..., action_dim)``."""
        x = self._features(obs)
        t = self.tensors
        for layer in self.layers:
            kind = layer["type"]
            if kind == "linear":
                x = torch.nn.functional.linear(x, t[f"{layer['name']}.weight"],
                                               t[f"{layer['name']}.bias"])
            elif kind == "layer_norm":
                w = t[f"{layer['name']}.weight"]
                x = torch.nn.functional.layer_norm(x, w.shape, w, t[f"{layer['name']}.bias"],
                                                   layer["eps"])
            else:
                x = _APPLY[kind](x)
        if self.output == "tanh":  # SB3's unscale_action of a squashed action
            x = self.low + 0.5 * (torch.tanh(x) + 1.0) * (self.high - self.low)
        else:
            x = torch.clamp(x, self.low, self.high)
        if self.meta["architecture"].get("binary"):  # on/off commands (wmgym.vision)
            from wmgym.vision import binarize

            x = binarize(x, self.meta["architecture"]["binary"])
        return x.numpy().astype(np.float32)

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        return self.act(obs)

    def __repr__(self) -> str:
        return f"FrozenAgent({self.name!r}, keys={list(self.observation_keys)})"


# ----------------------------------------------------------------------------- files


def save_agent(directory: str | Path, model: Any, *, task: str, name: str = "",
               training: Mapping[str, Any] | None = None,
               real_success: Mapping[str, Any] | None = None) -> Path:
    """Freezes an SB3 model's actor into ``directory`` (``actor.safetensors`` + ``agent.json``).

    Args:
        directory: The agent's folder (created if missing).
        model: A stable-baselines3 SAC or PPO model (see :func:`export_actor`).
        task: The task name it acts in.
        name: The agent's name (default: the folder's).
        training: How it was trained (algorithm, steps, data, seeds): stored as given.
        real_success: Its real success when frozen (``{"success", "episodes", "seeds"}``).

    Returns:
        The folder.
    """
    tensors, arch = export_actor(model)
    return write_agent(directory, tensors, arch, task=task, name=name, training=training,
                       real_success=real_success)


def write_agent(directory: str | Path, tensors: Mapping[str, torch.Tensor],
                architecture: Mapping[str, Any], *, task: str, name: str = "",
                training: Mapping[str, Any] | None = None,
                real_success: Mapping[str, Any] | None = None) -> Path:
    """Writes exported tensors and architecture as a frozen agent (atomically, weights first)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(weights, lambda tmp: save_file(contiguous, str(tmp)))
    meta = {
        "format": FORMAT_VERSION,
        "name": name or directory.name,
        "task": task,
        "observation_keys": list(architecture["features"]["keys"]),
        "architecture": dict(architecture),
        "training": dict(training or {}),
        "real_success": dict(real_success) if real_success is not None else None,
        "sha256": sha256_file(weights),
        "parameters": int(sum(v.numel() for v in contiguous.values())),
    }
    text = json.dumps(meta, indent=1)
    atomic_write(directory / META, lambda tmp: tmp.write_text(text))
    return directory


def read_agent_meta(directory: str | Path) -> dict[str, Any]:
    """A frozen agent's ``agent.json``.

    Raises:
        AgentError: It is missing or not valid JSON (the message names the file).
    """
    path = Path(directory) / META
    if not path.exists():
        raise AgentError(f"{path}: no such file: {directory} is not a frozen agent")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AgentError(f"{path}: damaged ({e})") from e


def update_agent_meta(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Sets top-level fields of a frozen agent's ``agent.json`` (e.g. ``real_success``)."""
    meta = {**read_agent_meta(directory), **fields}
    text = json.dumps(meta, indent=1)
    atomic_write(Path(directory) / META, lambda tmp: tmp.write_text(text))
    return meta


def load_agent(directory: str | Path) -> FrozenAgent:
    """Loads a frozen agent, its weights checked against the sha256 in ``agent.json``.

    Raises:
        AgentError: A file is missing, damaged (hash, format) or lacks a tensor its
            architecture names; the message names the file.
    """
    directory = Path(directory)
    meta = read_agent_meta(directory)
    if meta.get("format") != FORMAT_VERSION:
        raise AgentError(f"{directory / META}: format {meta.get('format')!r}, this wmgym reads "
                         f"{FORMAT_VERSION}")
    weights = directory / WEIGHTS
    if not weights.exists():
        raise AgentError(f"{weights}: no such file")
    digest = sha256_file(weights)
    if digest != meta.get("sha256"):
        raise AgentError(f"{weights}: sha256 {digest[:12]}… does not match {META}'s "
                         f"{str(meta.get('sha256'))[:12]}…: the file is damaged or was replaced")
    try:
        tensors = load_file(str(weights))
    except SafetensorError as e:
        raise AgentError(f"{weights}: not a safetensors file ({e})") from e
    agent = FrozenAgent(tensors, meta)
    names = [f"{layer['name']}.{p}" for layer in agent.layers if "name" in layer
             for p in ("weight", "bias")]
    if agent.features["kind"] == "standardized":
        names += [f"features.{n}" for n in ("mean", "std", "relative_std")]
    if agent.features["kind"] == "vision":
        names += [f"features.conv{i}.{p}" for i in range(agent.features["convs"])
                  for p in ("weight", "bias")]
        names += ["features.proj.weight", "features.proj.bias", "features.proprio_mean",
                  "features.proprio_std"]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise AgentError(f"{weights}: lacks tensors {missing} that {META} names")
    return agent


def shipped_agent(name: str) -> FrozenAgent:
    """A frozen agent shipped in a data root's ``checkpoints/agents/<name>``.

    ``$WMGYM_HOME`` is looked in first, then wmgym's own data, e.g.
    ``shipped_agent("pick-vision")``.

    Raises:
        AgentError: No data root holds it (naming the folders looked in).
    """
    from wmgym.paths import data_roots

    folders = [root / "checkpoints" / "agents" / name for root in data_roots()]
    for folder in folders:
        if is_agent(folder):
            return load_agent(folder)
    raise AgentError(f"no shipped agent {name!r}; looked in {[str(f) for f in folders]}")


def is_agent(directory: str | Path) -> bool:
    """Whether ``directory`` holds a frozen agent (an ``agent.json``)."""
    return (Path(directory) / META).is_file()
