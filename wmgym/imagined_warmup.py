"""An agent's warm-up demonstrations, imagined in the learned twin instead of spent in the real one.

:class:`~wmgym.sac.WarmupSAC` spends its first ``learning_starts`` real steps on a scripted
policy's demonstrations. With a world model those steps can be imagined: :func:`imagine_warmup`
runs copies of the same warm-up policy in ``WM-<Task>-v0`` (each episode starting from a real
observation in the checkpoint's bank) and writes their transitions into the agent's replay
buffer as its demonstrations, with the same count and the same cloning, demonstration share and
state standardisation as real ones would get. The agent then learns from its first real step.

>>> from wmgym.env.sb3 import make_sb3_env
>>> from wmgym.rl import sac_recipe
>>> from wmgym.sac import make_sac
>>> env = make_sb3_env("Sim-Pick-v0", num_envs=1, keys=["state"], images=False)
>>> agent = make_sac(env, **sac_recipe("pick"))  # doctest: +SKIP
>>> imagine_warmup(agent)  # its learning_starts steps, imagined  # doctest: +SKIP
>>> agent.learn(5_000)  # every real step is the agent's own  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from wmgym.env.sb3 import make_sb3_env
from wmgym.policies import make_policy
from wmgym.rl import task_of
from wmgym.sac import WarmupSAC, act_each

#: Warm-up policy copies in the imagination get seeds from here on (the real warm-up's start at
#: ``WarmupSAC.warmup_seed``), so the two never share a noise sequence.
IMAGINED_SEED_OFFSET = 500_000


def imagine_warmup(agent: WarmupSAC, *, steps: int | None = None, num_envs: int = 16,
                   checkpoint: str | None = None, device: str = "auto",
                   fast: bool | str = False, seed: int = 0, progress: bool = False
                   ) -> dict[str, Any]:
    """Fills ``agent``'s replay buffer with ``steps`` imagined demonstrations; no real step.

    The agent's own warm-up policy (``agent.warmup_policy``) acts in ``num_envs`` imagined
    episodes at a time of the agent's task (the one of its real env; state observations,
    episodes not ended on success, as in the real training env). Their transitions become the
    agent's demonstrations (:meth:`~wmgym.sac.WarmupSAC.add_demonstrations`) and
    ``agent.learning_starts`` is set to 0: the warm-up is done, so the agent acts and learns
    from its first real step.

    Args:
        agent: A :class:`~wmgym.sac.WarmupSAC` (``make_sac(..., warmup_policy=...)``) that has
            not learned yet, with state-only observations.
        steps: Imagined transitions to add; default the agent's ``learning_starts``.
        num_envs: Imagined episodes run side by side.
        checkpoint: World-model checkpoint; default the task spec's.
        device: World-model device (``auto``: CUDA when present).
        fast: Speed preset of the world model (see ``WM-<Task>-v0``).
        seed: Seed of the imagined episodes' start observations and sampling.
        progress: Show a progress bar.

    Returns:
        ``steps``, ``episodes`` finished, and the ``success_rate`` and ``mean_return`` of those
        episodes in imagination.

    Raises:
        ValueError: An agent without a warm-up policy, one that has already stepped, or
            ``steps < 1``.
    """
    if not isinstance(agent, WarmupSAC):
        raise ValueError("imagine_warmup needs an agent with a warm-up policy "
                         "(make_sac(..., warmup_policy=...)): there is nothing to imagine")
    if agent.num_timesteps or agent.replay_buffer.size():
        raise ValueError("imagine_warmup must run before the agent's first step: its replay "
                         f"buffer already holds {agent.replay_buffer.size()} transitions")
    steps = agent.learning_starts if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    spec = task_of(agent.get_env())
    env = make_sb3_env(spec.wm_id, num_envs=num_envs, seed=seed, keys=["state"], monitor=False,
                       checkpoint=checkpoint or None, device=device, fast=fast, images=False,
                       terminate_on_success=False)
    policies = [make_policy(agent.warmup_policy, task=spec) for _ in range(num_envs)]
    next_seed = agent.warmup_seed + IMAGINED_SEED_OFFSET
    for policy in policies:
        policy.reset(seed=next_seed)
        next_seed += 1
    returns, successes = np.zeros(num_envs), np.zeros(num_envs, bool)
    finished: list[tuple[float, bool]] = []
    obs = env.reset()
    added = 0
    bar = tqdm(total=steps, desc="imagined warm-up", disable=not progress)
    try:
        while added < steps:
            actions = act_each(policies, obs).astype(np.float32)
            new_obs, rewards, dones, infos = env.step(actions)
            n = min(num_envs, steps - added)
            agent.add_demonstrations(obs, actions, new_obs, rewards, dones, infos, n)
            added += n
            bar.update(n)
            returns += rewards
            successes |= np.array([bool(i.get("success", False)) for i in infos])
            for i in np.flatnonzero(dones):
                finished.append((float(returns[i]), bool(successes[i])))
                returns[i], successes[i] = 0.0, False
                policies[i].reset(seed=next_seed)
                next_seed += 1
            obs = new_obs
    finally:
        bar.close()
        env.close()
    agent.learning_starts = 0
    done = np.array(finished, dtype=float).reshape(-1, 2)
    return {"steps": added, "episodes": len(finished),
            "success_rate": float(done[:, 1].mean()) if len(done) else None,
            "mean_return": float(done[:, 0].mean()) if len(done) else None}
