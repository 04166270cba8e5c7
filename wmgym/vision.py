"""Camera-based agents: a small CNN actor over ``rgb``, ``depth``, ``mask`` and ``proprio``.

The actor never reads ``state`` (which holds object poses a camera-only robot would not know).
It is trained by imitation inside either twin (:func:`imitate`): the task's scripted expert,
which reads the privileged ``state``, labels every step with its action. Round 0 is DART (the
expert acts with Gaussian noise added, its clean action is the label), so the data covers the
states just off the expert's path; each later round is DAgger (the actor acts, the expert
labels what it would have done there). In ``WM-<Task>-v0`` the expert reads the imagined state
and the actor sees imagined frames: no robosuite step is taken.

:meth:`VisionActor.export` gives the tensors and architecture of a frozen agent
(:mod:`wmgym.agents`, features kind ``"vision"``): ``wmgym sweep --policies agent:DIR`` then
renders and decodes frames for it in both twins.

>>> actor = VisionActor(resolution=64, proprio_dim=5, action_dim=4, depth_range=(0.3, 2.5))
>>> obs = {"rgb": np.zeros((2, 64, 64, 3), np.uint8), "depth": np.ones((2, 64, 64, 1), np.float32),
...        "mask": np.zeros((2, 64, 64, 1), np.uint8), "proprio": np.zeros((2, 5), np.float32)}
>>> actor.act(obs).shape
(2, 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: What a camera-based actor reads: the camera's frames and the robot's own proprioception.
VISION_KEYS = ("rgb", "depth", "mask", "proprio")


def image_batch(obs: Mapping[str, Any], depth_range: Sequence[float]) -> torch.Tensor:
    """``(N, 5, H, W)`` float images in [0, 1] from observations with one leading batch axis.

    Channels: rgb / 255, depth scaled from the spec's range to [0, 1], the robot mask.
    """
    near, far = float(depth_range[0]), float(depth_range[1])
    rgb = torch.as_tensor(np.asarray(obs["rgb"])).float() / 255.0
    depth = (torch.as_tensor(np.asarray(obs["depth"], np.float32)) - near) / (far - near)
    mask = torch.as_tensor(np.asarray(obs["mask"])).float()
    return torch.cat([rgb, depth, mask], dim=-1).permute(0, 3, 1, 2).contiguous()


def vision_features(tensors: Mapping[str, torch.Tensor], features: Mapping[str, Any],
                    obs: Mapping[str, Any]) -> torch.Tensor:
    """The conv encoder of a frozen vision actor on a batch of observations.

    Args:
        tensors: The actor's tensors (``features.conv<i>.*``, ``features.proj.*``,
            ``features.proprio_mean`` and ``features.proprio_std``).
        features: Its ``architecture["features"]`` (``convs``, ``depth_range``).
        obs: Observations with any leading batch axes.

    Returns:
        ``(..., features)``: the image embedding and the standardized proprio, concatenated.
    """
    proprio = torch.as_tensor(np.asarray(obs["proprio"], np.float32))
    lead = proprio.shape[:-1]
    flat = {k: np.asarray(obs[k]).reshape(-1, *np.shape(obs[k])[len(lead):])
            for k in ("rgb", "depth", "mask")}
    x = image_batch(flat, features["depth_range"])
    for i in range(features["convs"]):
        x = F.relu(F.conv2d(x, tensors[f"features.conv{i}.weight"],
                            tensors[f"features.conv{i}.bias"], stride=2, padding=1))
    x = F.relu(F.linear(x.flatten(1), tensors["features.proj.weight"],
                        tensors["features.proj.bias"]))
    p = (proprio.reshape(-1, proprio.shape[-1]) - tensors["features.proprio_mean"]) \
        / tensors["features.proprio_std"]
    return torch.cat([x, p], dim=-1).reshape(*lead, -1)


class VisionActor(nn.Module):
    """A CNN over the camera's frames, with proprio, to ``tanh`` actions in [-1, 1].

    Four stride-2 3×3 convolutions (``channels``), a linear projection to ``hidden``, then an
    MLP over the projection and the standardized ``proprio``.

    Args:
        resolution: Image height and width (a multiple of 16).
        proprio_dim: Length of ``proprio``.
        action_dim: Length of the action.
        depth_range: The spec's depth range, metres (scales depth to [0, 1]).
        channels: Output channels of the four convolutions.
        hidden: Width of the projection and of the MLP's layers.
        binary: Action dimensions that act as on/off commands (a gripper the expert only ever
            opens or closes fully): :meth:`act` gives their sign, ±1.
    """

    def __init__(self, *, resolution: int, proprio_dim: int, action_dim: int,
                 depth_range: Sequence[float], channels: Sequence[int] = (32, 64, 64, 128),
                 hidden: int = 256, binary: Sequence[int] = ()) -> None:
        super().__init__()
        if resolution % 16:
            raise ValueError(f"resolution must be a multiple of 16, got {resolution}")
        self.depth_range = (float(depth_range[0]), float(depth_range[1]))
        self.config = {"resolution": resolution, "proprio_dim": proprio_dim,
                       "action_dim": action_dim, "depth_range": list(self.depth_range),
                       "channels": list(channels), "hidden": hidden}
        self.binary = [int(d) for d in binary]
        convs, c_in = [], 5
        for c in channels:
            convs.append(nn.Conv2d(c_in, c, 3, stride=2, padding=1))
            c_in = c
        self.convs = nn.ModuleList(convs)
        side = resolution // 2 ** len(channels)
        self.proj = nn.Linear(c_in * side * side, hidden)
        self.head = nn.Sequential(nn.Linear(hidden + proprio_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, action_dim))
        self.register_buffer("proprio_mean", torch.zeros(proprio_dim))
        self.register_buffer("proprio_std", torch.ones(proprio_dim))

    def fit_proprio(self, proprio: np.ndarray) -> None:
        """Sets the proprio standardization from data ``(N, proprio_dim)``."""
        p = torch.as_tensor(np.asarray(proprio, np.float32))
        self.proprio_mean.copy_(p.mean(0))
        self.proprio_std.copy_(p.std(0).clamp_min(1e-3))

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Actions ``(N, action_dim)`` from :func:`image_batch` images and raw proprio."""
        x = images
        for conv in self.convs:
            x = F.relu(conv(x))
        x = F.relu(self.proj(x.flatten(1)))
        p = (proprio - self.proprio_mean) / self.proprio_std
        return torch.tanh(self.head(torch.cat([x, p], dim=-1)))

    @torch.no_grad()
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Actions for a batch of observations (one leading axis), float32 ``(N, action_dim)``."""
        device = self.proj.weight.device
        images = image_batch(obs, self.depth_range).to(device)
        proprio = torch.as_tensor(np.asarray(obs["proprio"], np.float32), device=device)
        return binarize(self(images, proprio).cpu(), self.binary).numpy().astype(np.float32)

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors and architecture of the frozen agent (:func:`wmgym.agents.write_agent`)."""
        tensors = {f"features.conv{i}.{p}": getattr(conv, p).detach().cpu().clone()
                   for i, conv in enumerate(self.convs) for p in ("weight", "bias")}
        tensors.update({f"features.proj.{p}": getattr(self.proj, p).detach().cpu().clone()
                        for p in ("weight", "bias")})
        tensors["features.proprio_mean"] = self.proprio_mean.detach().cpu().clone()
        tensors["features.proprio_std"] = self.proprio_std.detach().cpu().clone()
        layers: list[dict[str, Any]] = []
        for i, module in enumerate(self.head):
            if isinstance(module, nn.Linear):
                layers.append({"type": "linear", "name": f"actor.{i}"})
                tensors[f"actor.{i}.weight"] = module.weight.detach().cpu().clone()
                tensors[f"actor.{i}.bias"] = module.bias.detach().cpu().clone()
            else:
                layers.append({"type": "relu"})
        action_dim = self.config["action_dim"]
        architecture = {
            "features": {"kind": "vision", "keys": list(VISION_KEYS),
                         "depth_range": list(self.depth_range), "convs": len(self.convs),
                         "config": self.config},
            "layers": layers, "output": "tanh", "binary": list(self.binary),
            "action_low": [-1.0] * action_dim, "action_high": [1.0] * action_dim,
        }
        return tensors, architecture


def binarize(actions: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``actions`` with the on/off dimensions ``dims`` set to ±1 by their sign (0 gives -1)."""
    if not dims:
        return actions
    out = actions.clone()
    out[..., list(dims)] = torch.where(actions[..., list(dims)] > 0, 1.0, -1.0)
    return out


def random_shift(images: torch.Tensor, pad: int = 4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's augmentation: pad by replicating edges, then crop back at a random offset each."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(images.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(images.device)  # (n, w)
    index = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]] \
        .permute(0, 3, 1, 2).contiguous()
