"""Session-19 probe: does the model decide a grasp as robosuite did, from the real frame before it?

    python scripts/grasp_outcomes.py CHECKPOINT DATA [SPLIT] [SAMPLES] [DYNAMICS]

``DYNAMICS``: ``full`` (default) or ``fast``, the checkpoint's distilled transformer.

For every episode of DATA (split SPLIT, default ``all``) whose gripper closes early enough, the
world model starts from the real frame and state ``LEAD`` steps before the first closing command
(three closing commands in a row: noisy policies flick the gripper), imagines ``HORIZON`` steps
under the episode's own actions, ``SAMPLES`` times (temperature 1, other sampling seeds), and
decides success as ``WM-Pick-v0`` does (the success head and the imagined cube above the task's
height). Robosuite's outcome is the episode's ``success`` over the same steps. This isolates the
grasp decision from the errors an imagined approach piles up before it: the start is real.

Prints one JSON line: episodes, the real and imagined success rates, false lifts (imagined
success where robosuite's grasp failed, per failed grasp), missed lifts, agreement, and the same
per policy; and ``state_knn_agreement``, how often a 7-nearest-neighbour vote on the real
gripper-to-cube offset at the start frame (leave-one-out over the episodes) calls the outcome:
what the state the model is given already tells.

For a checkpoint with the grasp latent (``--grasp-latent``) it also splits the decision in two,
under ``latent``: how often the bit drawn at the grasp matches robosuite's outcome
(``drawn_agreement``; ``head_on_real_state``: the head's call on the real state of that step,
what a perfect imagined state would give), and how faithfully the imagined episode follows the
bit (``success_if_hold``, ``success_if_slip``).
"""

import json
import sys
from collections import defaultdict

import numpy as np
import torch

from wmgym.data.dataset import read_dataset
from wmgym.model.checkpoint import read_config
from wmgym.model.fast_dynamics import load_fast_dynamics
from wmgym.model.grasp_latent import CLOSING_RUN, HOLD, SLIP
from wmgym.model.world_model import WorldModel, resolve_kv_cache
from wmgym.spec import CUBE_POS, EEF_POS, load_spec
from wmgym.train.data import episode_frames, first_closing

LEAD, HORIZON, CHUNK = 2, 30, 64


def knn_agreement(offsets: np.ndarray, outcome: np.ndarray, k: int = 7) -> float:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour majority vote (standardised)."""
    x = (offsets - offsets.mean(0)) / offsets.std(0)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    votes = outcome[np.argsort(d, 1)[:, :k]].mean(1) > 0.5
    return float((votes == outcome).mean())


@torch.no_grad()
def imagine(wm: WorldModel, frames: torch.Tensor, actions: torch.Tensor, start: np.ndarray,
            seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imagined steps from frame 0 under ``actions`` (as ``evaluation.open_loop``, no frames).

    Returns the success head ``(B, T)``, the imagined states ``(B, T, state_dim)`` and each
    rollout's grasp latent after every step ``(B, T)`` (zeros without one).
    """
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(len(frames))]
    state = wm.reset(frames[:, 0], generators=gens, states=torch.as_tensor(start).float(),
                     kv_dtype=resolve_kv_cache("auto"))
    heads, states, latent = [], [], []
    for k in range(actions.shape[1]):
        step, state = wm.step(state, actions[:, k], decode=False)
        heads.append(step.success.numpy())
        states.append(step.state.numpy())
        latent.append(state.cache.grasp.numpy().copy())
    return np.stack(heads, 1), np.stack(states, 1), np.stack(latent, 1)


def first_draw(latent: np.ndarray) -> np.ndarray:
    """Each rollout's first drawn latent ``(B,)`` (0 where none was drawn)."""
    drawn = latent > 0
    return np.where(drawn.any(1), latent[np.arange(len(latent)), drawn.argmax(1)], 0)


def main(checkpoint: str, data: str, split: str = "all", samples: int = 4,
         dynamics: str = "full") -> dict:
    torch.manual_seed(0)
    wm = WorldModel.load(checkpoint)
    if dynamics == "fast":
        wm.dynamics = load_fast_dynamics(checkpoint)
    elif dynamics != "full":
        raise ValueError(f"dynamics must be 'full' or 'fast', got {dynamics!r}")
    spec = load_spec(str(read_config(checkpoint).get("task", "pick")).lower())
    picked = []
    for episode in read_dataset(data, split):
        close = first_closing(episode.actions)
        if close is None or close < LEAD or close - LEAD + HORIZON > len(episode):
            continue
        picked.append((episode, close - LEAD))
    real = np.array([e.success[t0:t0 + HORIZON].any() for e, t0 in picked])
    start_states = np.stack([e.observations["state"][t0] for e, t0 in picked])
    offsets = start_states[:, EEF_POS] - start_states[:, CUBE_POS]
    imagined = np.zeros((samples, len(picked)), bool)
    drawn = np.zeros((samples, len(picked)), np.int64)
    for lo in range(0, len(picked), CHUNK):
        chunk = picked[lo:lo + CHUNK]
        frames = torch.stack([episode_frames(e, wm.depth_range)[t0:t0 + 1] for e, t0 in chunk])
        actions = torch.stack([torch.from_numpy(e.actions[t0:t0 + HORIZON]) for e, t0 in chunk])
        for s in range(samples):
            head, state, latent = imagine(wm, frames, actions.float(),
                                          start_states[lo:lo + CHUNK], 1000 + s)
            imagined[s, lo:lo + len(chunk)] = spec.success(head, state).any(1)
            drawn[s, lo:lo + len(chunk)] = first_draw(latent)

    def rates(idx: np.ndarray) -> dict:
        r, im = real[idx], imagined[:, idx]
        return {
            "episodes": int(idx.sum()), "real": round(float(r.mean()), 3),
            "imagined": round(float(im.mean()), 3),
            "false_lift": round(float(im[:, ~r].mean()), 3) if (~r).any() else None,
            "missed_lift": round(float(1 - im[:, r].mean()), 3) if r.any() else None,
            "agreement": round(float((im == r).mean()), 3),
        }

    def latent_split() -> dict:
        dyn = wm.dynamics
        # the state the bit is drawn from: before the CLOSING_RUN-th closing command
        at = np.stack([e.observations["state"][t0 + LEAD + CLOSING_RUN - 1] for e, t0 in picked])
        with torch.no_grad():
            logit = dyn.grasp_head(dyn.grasp_features(dyn.normalize_state(torch.as_tensor(at))))
        hold, slip = drawn == HOLD, drawn == SLIP
        return {"drawn": round(float((drawn > 0).mean()), 3),
                "drawn_hold": round(float(hold.mean()), 3),
                "drawn_agreement": round(float((hold == real)[drawn > 0].mean()), 3),
                "head_on_real_state": round(float(((logit > 0).numpy() == real).mean()), 3),
                "success_if_hold": round(float(imagined[hold].mean()), 3),
                "success_if_slip": round(float(imagined[slip].mean()), 3)}

    by_policy: dict[str, list[int]] = defaultdict(list)
    for i, (e, _) in enumerate(picked):
        by_policy[e.policy].append(i)
    out = {"checkpoint": checkpoint, "data": data, "split": split, "samples": samples,
           "lead": LEAD, "horizon": HORIZON,
           "state_knn_agreement": round(knn_agreement(offsets, real), 3),
           **rates(np.ones(len(picked), bool)),
           "policies": {p: rates(np.isin(np.arange(len(picked)), i))
                        for p, i in sorted(by_policy.items())}}
    if wm.dynamics.grasp_head is not None:
        out["latent"] = latent_split()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(sys.argv[3:4]), *(int(a) for a in sys.argv[4:5]),
         *(sys.argv[5:6]))
