"""SAC in the real task: its warm-up imagined, its replay augmented with imagined branches (MBPO).

    python examples/mbpo_sac.py                                  # the shipped WM-Pick-v0
    python examples/mbpo_sac.py --real-warmup --steps 8000       # demonstrations in robosuite
    python examples/mbpo_sac.py --steps 60 --warmup 20 --checkpoint path/to/checkpoint

The agent is the task's measured SAC recipe (``wmgym.rl.sac_recipe``) with 10 updates per real
step and a fixed entropy coefficient: its warm-up is a scripted expert, cloned into the actor
and kept in every batch, with standardised state features. Here the world model imagines those
demonstrations, so every real step is the agent's own. ``wmgym mbpo`` runs the full comparison
against plain SAC (several seeds, real steps to 50% and 80% success, plot).
"""

from dataclasses import dataclass

import tyro

from wmgym.imagined_warmup import imagine_warmup
from wmgym.mbpo import MBPO, make_real_env
from wmgym.rl import sac_recipe
from wmgym.sac import make_sac
from wmgym.spec import load_spec


@dataclass
class Args:
    task: str = "pick"
    """Task name."""
    steps: int = 4_000
    """Real steps."""
    warmup: int = 0
    """Warm-up steps: demonstrations, cloned for as many gradient steps (0: the recipe's)."""
    real_warmup: bool = False
    """Spend the warm-up demonstrations in robosuite, not in imagination."""
    checkpoint: str | None = None
    """World-model checkpoint (default: the task's shipped one)."""
    device: str = "auto"
    """Device of the world model."""


if __name__ == "__main__":
    args = tyro.cli(Args)
    spec = load_spec(args.task)
    recipe = sac_recipe(spec)
    warmup = args.warmup or recipe["learning_starts"]
    if args.real_warmup and warmup >= args.steps:
        raise SystemExit(f"a real warm-up of {warmup} steps leaves nothing of --steps {args.steps}")

    # the real env (state only for the agent); every 2nd observation is kept with its camera
    # images, as a start for imagined branches
    env, bank = make_real_env(spec.sim_id, seed=0, stride=2)
    # a fixed entropy coefficient: tuned, it runs away against the cloning
    recipe.update(bc_steps=warmup, learning_starts=warmup, ent_coef=0.05)
    agent = make_sac(env, **recipe, gradient_steps=10, seed=0)
    if not args.real_warmup:  # the expert acts in WM-<Task>-v0; learning starts at once
        demos = imagine_warmup(agent, checkpoint=args.checkpoint, device=args.device,
                               progress=True)
        print(f"{demos['steps']} imagined demonstration steps, {demos['episodes']} episodes")
    mbpo = MBPO(bank, every=250, rollouts=256, horizon=3, real_ratio=0.5,
                checkpoint=args.checkpoint, device=args.device)
    agent.learn(args.steps, callback=mbpo, progress_bar=True)
    print(f"{args.steps} real steps, {mbpo.imagined_steps} imagined transitions, "
          f"{mbpo.cut_short} branches cut short where the model was unsure")
