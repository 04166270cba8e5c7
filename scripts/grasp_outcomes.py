"""Session-19 probe: does the model decide a grasp as robosuite did, from the real frame before it?

    python scripts/grasp_outcomes.py CHECKPOINT DATA [SPLIT] [SAMPLES]

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
"""

import json
import sys
from collections import defaultdict

import numpy as np
import torch

from wmgym.data.dataset import read_dataset
from wmgym.evaluation import open_loop
from wmgym.model.checkpoint import read_config
from wmgym.model.world_model import WorldModel
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


def main(checkpoint: str, data: str, split: str = "all", samples: int = 4) -> dict:
    torch.manual_seed(0)
    wm = WorldModel.load(checkpoint)
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
    for lo in range(0, len(picked), CHUNK):
        chunk = picked[lo:lo + CHUNK]
        frames = torch.stack([episode_frames(e, wm.depth_range)[t0:t0 + HORIZON + 1]
                              for e, t0 in chunk])
        actions = torch.stack([torch.from_numpy(e.actions[t0:t0 + HORIZON]) for e, t0 in chunk])
        for s in range(samples):
            _, _, head, state, _ = open_loop(wm, frames, actions.float(), 1000 + s, 1.0, None,
                                             start_state=start_states[lo:lo + CHUNK])
            imagined[s, lo:lo + len(chunk)] = spec.success(head, state).any(1)

    def rates(idx: np.ndarray) -> dict:
        r, im = real[idx], imagined[:, idx]
        return {
            "episodes": int(idx.sum()), "real": round(float(r.mean()), 3),
            "imagined": round(float(im.mean()), 3),
            "false_lift": round(float(im[:, ~r].mean()), 3) if (~r).any() else None,
            "missed_lift": round(float(1 - im[:, r].mean()), 3) if r.any() else None,
            "agreement": round(float((im == r).mean()), 3),
        }

    by_policy: dict[str, list[int]] = defaultdict(list)
    for i, (e, _) in enumerate(picked):
        by_policy[e.policy].append(i)
    out = {"checkpoint": checkpoint, "data": data, "split": split, "samples": samples,
           "lead": LEAD, "horizon": HORIZON,
           "state_knn_agreement": round(knn_agreement(offsets, real), 3),
           **rates(np.ones(len(picked), bool)),
           "policies": {p: rates(np.isin(np.arange(len(picked)), i))
                        for p, i in sorted(by_policy.items())}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(sys.argv[3:4]), *(int(a) for a in sys.argv[4:5]))
