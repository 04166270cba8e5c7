"""Fit the event latent's head on every event in the training data.

The head (:class:`wmgym.model.event_latent.EventHead`) sees the state where an event's bit is
drawn: the frame before its ``run``-th triggering command. In imagination that state is the
model's own reading, so the head is fitted on the real states noised as the transformer's state
input is in training. It is fitted once, full batch, before the transformer's steps, and then
left as it is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wmgym.model.event_latent import SUCCESS, EventConfig, draw_steps, event_labels
from wmgym.model.transformer import DynamicsTransformer
from wmgym.train.data import EpisodeTensors

#: Share of the events held out to measure the head before it is fitted on all of them.
HELDOUT = 0.2


def label_events(episodes: list[EpisodeTensors], cfg: EventConfig) -> tuple[Tensor, Tensor]:
    """Sets every episode's event latent; returns :func:`event_examples` of them."""
    for ep in episodes:
        latent, _ = event_labels(ep.actions.numpy(), ep.state[:, cfg.outcome].numpy(), cfg)
        ep.event = torch.from_numpy(latent)
    return event_examples(episodes)


def event_examples(episodes: list[EpisodeTensors]) -> tuple[Tensor, Tensor]:
    """Where labelled episodes' events begin and how they end.

    An event's bit is drawn where its latent turns on (:func:`~wmgym.model.event_latent.
    draw_steps`).

    Returns:
        ``(states (G, state_dim), succeeded (G,) float)``: the raw state each event's bit is
        drawn from and 1 where the event succeeded.
    """
    states, succeeded = [], []
    for ep in episodes:
        idx = draw_steps(ep.event).nonzero().squeeze(1)
        states.append(ep.state[idx])
        succeeded.append((ep.event[idx] == SUCCESS).float())
    return torch.cat(states), torch.cat(succeeded)


def _fit(model: DynamicsTransformer, states: Tensor, succeeded: Tensor, noise: float,
         steps: int, copies: int, seed: int) -> float:
    """Fits ``model.event_head`` on noised copies of the states; returns the final loss."""
    g = torch.Generator().manual_seed(seed)
    x = model.normalize_state(states.to(model.state_mean.device)).float().repeat(copies, 1)
    x = x + noise * torch.randn(x.shape, generator=g).to(x.device)
    head = model.event_head
    feats = head.features(x, model.state_mean, model.state_std)
    y = succeeded.to(x.device).repeat(copies)
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
def _accuracy(model: DynamicsTransformer, states: Tensor, succeeded: Tensor) -> float:
    logits = model.event_logit(model.normalize_state(states))
    return float(((logits > 0).float() == succeeded).float().mean())


def fit_event_head(model: DynamicsTransformer, states: Tensor, succeeded: Tensor, *,
                   noise: float, steps: int = 1500, copies: int = 16, seed: int = 0,
                   groups: Tensor | None = None) -> dict[str, float]:
    """Fits the head, measured first on a held-out share of the events, then on them all.

    Args:
        model: A transformer with an event, its state normalisation set.
        states: ``(G, state_dim)`` raw states where events begin (:func:`label_events`).
        succeeded: ``(G,)`` 1 where the event succeeded.
        noise: Std of the noise on the normalised states (the transformer's ``state_noise``).
        steps: Full-batch Adam steps.
        copies: Noised copies of each event.
        seed: Seeds the split and the noise.
        groups: ``(G,)`` ints: events of one group (say, samples of one episode) are held out
            together. None: each event is its own group.

    Returns:
        ``events``, ``succeeded`` (share), ``heldout_accuracy`` (fitted without them; 0.5
        threshold), ``train_accuracy`` and ``loss`` of the final fit.

    Raises:
        ValueError: The model has no event, or too few events of either outcome to fit.
    """
    if model.event_head is None:
        raise ValueError("the model has no event latent (DynamicsConfig.event)")
    n_ok = int(succeeded.sum())
    if min(n_ok, len(succeeded) - n_ok) < 5:
        raise ValueError(f"the event head needs events that succeed and events that fail in "
                         f"the data: {n_ok} of {len(succeeded)} succeeded")
    states, succeeded = states.to(model.state_mean.device), succeeded.to(model.state_mean.device)
    ids = torch.arange(len(succeeded)) if groups is None else groups.cpu()
    names = ids.unique()
    names = names[torch.from_numpy(np.random.default_rng(seed).permutation(len(names)))]
    is_test = torch.isin(ids, names[:int(len(names) * HELDOUT)]).to(succeeded.device)
    test, train = is_test.nonzero().squeeze(1), (~is_test).nonzero().squeeze(1)
    _fit(model, states[train], succeeded[train], noise, steps, copies, seed)
    heldout = _accuracy(model, states[test], succeeded[test])
    loss = _fit(model, states, succeeded, noise, steps, copies, seed)
    return {"events": len(succeeded), "succeeded": round(n_ok / len(succeeded), 4),
            "heldout_accuracy": round(heldout, 4),
            "train_accuracy": round(_accuracy(model, states, succeeded), 4),
            "loss": round(loss, 4)}
