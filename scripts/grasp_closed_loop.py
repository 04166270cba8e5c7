"""Session-22 probe: where a policy's first grasp is decided, in robosuite and in imagination.

    python scripts/grasp_closed_loop.py CHECKPOINT POLICY [DYNAMICS] [SEEDS]

``DYNAMICS``: ``full`` (default) or ``fast``; ``SEEDS``: ``sweep`` (default: 1000-1019 and
2000-2019, the sweeps' episodes) or a JSON file of seeds.

Runs POLICY closed loop for 99 steps from each seed's real first frame, once in ``Sim-Pick-v0``
and once in ``WM-Pick-v0`` (state only, episodes not ended by success), as ``wmgym sweep`` does.
For each episode's first grasp (three closing commands in a row) it records the state where the
grasp's bit is drawn and whether the cube rose above the success height before the gripper
opened. Prints one JSON line per twin: success rate, first grasps, how many held, the gripper's
horizontal offset from the cube at the draw (cm), the mean p(hold) the env's grasp head gives
that state; for imagination also the drawn bits and how often the imagined cube rose after each
(``hold_if_bit_hold``, ``hold_if_bit_slip``: does the imagined grasp follow its bit?).
"""

import json
import sys

import gymnasium as gym
import numpy as np
import torch

import wmgym  # noqa: F401
from wmgym.model.grasp_latent import HOLD, SLIP
from wmgym.policies import make_policy
from wmgym.spec import CUBE_POS, EEF_POS, load_spec
from wmgym.sweep import _sim_env, reset_observations
from wmgym.train.grasp_calibration import first_grasp

STEPS = 99


def first_grasps(actions: np.ndarray, states: np.ndarray, lift_z: float
                 ) -> list[tuple[int, bool] | None]:
    """Per episode: ``(step where its first grasp's bit is drawn, held)``, None without one."""
    return [first_grasp(a, s[:, CUBE_POS][:, 2], lift_z) for a, s in zip(actions, states)]


def summary(actions: np.ndarray, states: np.ndarray, success: np.ndarray, head, lift_z: float
            ) -> tuple[dict, list[tuple[int, bool] | None]]:
    """A twin's numbers over its episodes, and its :func:`first_grasps`.

    ``head``: the transformer whose grasp head is asked about the states at the draws.
    """
    grasps = first_grasps(actions, states, lift_z)
    rows = [(i, t, held) for i, g in enumerate(grasps) if g is not None for t, held in [g]]
    at = np.stack([states[i, t] for i, t, _ in rows])
    with torch.no_grad():
        p = torch.sigmoid(head.grasp_head(head.grasp_features(
            head.normalize_state(torch.as_tensor(at).float())))).numpy()
    offset = (at[:, EEF_POS] - at[:, CUBE_POS])[:, :2] * 100
    return {"success": round(float(success.mean()), 3), "first_grasps": len(rows),
            "held": round(float(np.mean([h for *_, h in rows])), 3),
            "xy_offset_cm": round(float(np.linalg.norm(offset, axis=1).mean()), 2),
            "mean_p_hold": round(float(p.mean()), 3)}, grasps


def real_twin(spec, policy: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    env = _sim_env(spec.sim_id, False, max_episode_steps=STEPS, terminate_on_success=False)
    actions, states, success = [], [], []
    for seed in seeds:
        pi = make_policy(policy)
        pi.reset(seed=seed)
        obs, _ = env.reset(seed=seed)
        a_ep, s_ep, ok = [], [obs["state"]], False
        for _ in range(STEPS):
            a = pi(obs)
            obs, _, _, _, info = env.step(a)
            a_ep.append(a)
            s_ep.append(obs["state"])
            ok |= bool(info["success"])
        actions.append(a_ep)
        states.append(s_ep)
        success.append(ok)
    env.close()
    return np.array(actions), np.array(states), np.array(success)


def imagined_twin(spec, checkpoint: str, dynamics: str, policy: str, seeds: list[int]):
    envs = gym.make_vec(spec.wm_id, num_envs=len(seeds), vectorization_mode="vector_entry_point",
                        max_episode_steps=STEPS, checkpoint=checkpoint, images=False,
                        dynamics=dynamics, terminate_on_success=False)
    contexts = reset_observations(spec, seeds)
    pis = [make_policy(policy) for _ in seeds]
    for pi, seed in zip(pis, seeds):
        pi.reset(seed=seed)
    obs, _ = envs.reset(seed=seeds, options={"context": {
        k: np.stack([c[k] for c in contexts]) for k in contexts[0]}})
    core = envs.unwrapped.core
    actions, states, success = [], [obs["state"].copy()], np.zeros(len(seeds), bool)
    bits = np.zeros(len(seeds), np.int64)  # each rollout's first drawn bit
    for _ in range(STEPS):
        a = np.stack([pi({k: v[i] for k, v in obs.items()}) for i, pi in enumerate(pis)])
        obs, _, _, _, info = envs.step(a)
        actions.append(a)
        states.append(obs["state"].copy())
        success |= info["success"]
        latent = core.state.cache.grasp.cpu().numpy()
        bits = np.where(bits == 0, latent, bits)
    envs.close()
    return np.stack(actions, 1), np.stack(states, 1), success, bits, core.model.dynamics


def main(checkpoint: str, policy: str, dynamics: str = "full", seeds: str = "sweep") -> None:
    spec = load_spec("pick")
    ids = (list(range(1000, 1020)) + list(range(2000, 2020)) if seeds == "sweep"
           else json.load(open(seeds)))
    lift = float(spec.success_cube_z)
    a, s, ok, bits, dyn = imagined_twin(spec, checkpoint, dynamics, policy, ids)
    imagined, grasps = summary(a, s, ok, dyn, lift)
    for bit, name in ((HOLD, "hold"), (SLIP, "slip")):
        held = [g[1] for g, b in zip(grasps, bits) if g is not None and b == bit]
        imagined[f"bits_{name}"] = len(held)
        imagined[f"hold_if_bit_{name}"] = round(float(np.mean(held)), 3) if held else None
    real, _ = summary(*real_twin(spec, policy, ids), dyn, lift)
    common = {"checkpoint": checkpoint, "policy": policy, "seeds": seeds, "steps": STEPS}
    print(json.dumps({**common, "twin": "real", **real}))
    print(json.dumps({**common, "twin": "imagined", "dynamics": dynamics, **imagined}))


if __name__ == "__main__":
    main(*sys.argv[1:])
