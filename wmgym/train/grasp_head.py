"""Fit the grasp latent's head on every grasp in the training data (``--grasp-latent``).

The head (:class:`wmgym.model.grasp_latent.GraspHead`) sees the state where a grasp's bit is
drawn: the frame before its :data:`~wmgym.model.grasp_latent.CLOSING_RUN`-th closing command.
In imagination that state is the model's own reading, so the head is fitted on the real states
noised as the transformer's state input is in training. It is fitted once, full batch, before
the transformer's steps, and then left as it is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wmgym.model.grasp_latent import HOLD, draw_steps, grasp_labels
from wmgym.model.transformer import DynamicsTransformer
from wmgym.spec import CUBE_POS
from wmgym.train.data import EpisodeTensors

#: Share of the grasps held out to measure the head before it is fitted on all of them.
HELDOUT = 0.2


def label_grasps(episodes: list[EpisodeTensors], lift_z: float) -> tuple[Tensor, Tensor]:
    """Sets every episode's grasp latent; returns :func:`grasp_examples` of them."""
    for ep in episodes:
        latent, _ = grasp_labels(ep.actions.numpy(), ep.state[:, CUBE_POS][:, 2].numpy(), lift_z)
        ep.grasp = torch.from_numpy(latent)
    return grasp_examples(episodes)


def grasp_examples(episodes: list[EpisodeTensors]) -> tuple[Tensor, Tensor]:
    """Where labelled episodes' grasps begin and how they end.

    A grasp's bit is drawn where its latent turns on (:func:`~wmgym.model.grasp_latent.draw_steps`).

    Returns:
        ``(states (G, state_dim), held (G,) float)``: the raw state each grasp's bit is drawn
        from and 1 where the grasp held.
    """
    states, held = [], []
    for ep in episodes:
        idx = draw_steps(ep.grasp).nonzero().squeeze(1)
        states.append(ep.state[idx])
        held.append((ep.grasp[idx] == HOLD).float())
    return torch.cat(states), torch.cat(held)


def _fit(model: DynamicsTransformer, states: Tensor, held: Tensor, noise: float, steps: int,
         copies: int, seed: int) -> float:
    """Fits ``model.grasp_head`` on noised copies of the states; returns the final loss."""
    g = torch.Generator().manual_seed(seed)
    x = model.normalize_state(states.to(model.state_mean.device)).float().repeat(copies, 1)
    x = x + noise * torch.randn(x.shape, generator=g).to(x.device)
    feats, y = model.grasp_features(x), held.to(x.device).repeat(copies)
    head = model.grasp_head
    for p in head.parameters():  # a fresh start: the same fit whatever came before
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1, generator=g)
        else:
            torch.nn.init.zeros_(p)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(head(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def _accuracy(model: DynamicsTransformer, states: Tensor, held: Tensor) -> float:
    logits = model.grasp_head(model.grasp_features(model.normalize_state(states)))
    return float(((logits > 0).float() == held).float().mean())


def fit_grasp_head(model: DynamicsTransformer, states: Tensor, held: Tensor, noise: float,
                   steps: int = 1500, copies: int = 16, seed: int = 0,
                   groups: Tensor | None = None) -> dict[str, float]:
    """Fits the head, measured first on a held-out share of the grasps, then on them all.

    Args:
        model: A transformer with ``grasp_latent``, its state normalisation set.
        states: ``(G, state_dim)`` raw states where grasps begin (:func:`label_grasps`).
        held: ``(G,)`` 1 where the grasp held.
        noise: Std of the noise on the normalised states (the transformer's ``state_noise``).
        steps: Full-batch Adam steps.
        copies: Noised copies of each grasp.
        seed: Seeds the split and the noise.
        groups: ``(G,)`` ints: grasps of one group (say, samples of one episode) are held out
            together. None: each grasp is its own group.

    Returns:
        ``grasps``, ``held`` (share), ``heldout_accuracy`` (fitted without them; 0.5 threshold),
        ``train_accuracy`` and ``loss`` of the final fit.

    Raises:
        ValueError: Too few grasps of either outcome to fit.
    """
    if model.grasp_head is None:
        raise ValueError("the model has no grasp latent (DynamicsConfig.grasp_latent)")
    n_held = int(held.sum())
    if min(n_held, len(held) - n_held) < 5:
        raise ValueError(f"--grasp-latent needs grasps that hold and grasps that slip in the data: "
                         f"{n_held} of {len(held)} held (add e.g. wmgym collect --policy nearmiss)")
    states, held = states.to(model.state_mean.device), held.to(model.state_mean.device)
    ids = torch.arange(len(held)) if groups is None else groups.cpu()
    names = ids.unique()
    names = names[torch.from_numpy(np.random.default_rng(seed).permutation(len(names)))]
    is_test = torch.isin(ids, names[:int(len(names) * HELDOUT)]).to(held.device)
    test, train = is_test.nonzero().squeeze(1), (~is_test).nonzero().squeeze(1)
    _fit(model, states[train], held[train], noise, steps, copies, seed)
    heldout = _accuracy(model, states[test], held[test])
    loss = _fit(model, states, held, noise, steps, copies, seed)
    return {"grasps": len(held), "held": round(n_held / len(held), 4),
            "heldout_accuracy": round(heldout, 4),
            "train_accuracy": round(_accuracy(model, states, held), 4), "loss": round(loss, 4)}
