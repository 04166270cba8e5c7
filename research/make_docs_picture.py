"""Regenerates docs/sim_pick.png: rgb | depth | mask of Sim-Pick-v0 at several steps of a pick.

Run from the repository root: ``python research/make_docs_picture.py``.
"""

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np

import wmgym  # noqa: F401
from wmgym.tasks.pick import ScriptedPick
from wmgym.viz import upscale

if __name__ == "__main__":
    env = gym.make("Sim-Pick-v0", render_mode="rgb_array", terminate_on_success=False)
    policy = ScriptedPick()
    policy.reset(0)
    obs, _ = env.reset(seed=0)
    rows = [env.render()]
    for t in range(1, 41):
        obs, *_ = env.step(policy(obs))
        if t in (10, 20, 30, 40):
            rows.append(env.render())
    imageio.imwrite("docs/sim_pick.png", upscale(np.concatenate(rows, 0), 3))
    print("wrote docs/sim_pick.png (rows: steps 0, 10, 20, 30, 40; columns: rgb | depth | mask)")
