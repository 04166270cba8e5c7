"""``wmgym demo`` (``make demo``): the real twin under the scripted pick, as a GIF."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DemoArgs:
    """Options of ``wmgym demo``."""

    out: str = "out/demo.gif"
    """Where to write the GIF."""
    seed: int = 0
    """Episode seed (cube placement)."""
    task: str = "pick"
    """Task spec name."""


def demo_main(args: DemoArgs) -> None:
    """Runs the scripted pick in Sim-<Task>-v0 and writes what the camera sees."""
    import gymnasium as gym

    import wmgym  # noqa: F401
    from wmgym.policies import ScriptedPick
    from wmgym.spec import load_spec
    from wmgym.viz import write_gif

    spec = load_spec(args.task)
    env = gym.make(spec.sim_id, render_mode="rgb_array")
    policy = ScriptedPick()
    policy.reset(args.seed)
    obs, _ = env.reset(seed=args.seed)
    frames, total, done, info = [env.render()], 0.0, False, {"success": False}
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        frames.append(env.render())
        total += reward
        done = terminated or truncated
    path = write_gif(args.out, frames, fps=spec.control_freq // 2)
    print(
        f"{spec.sim_id}: scripted pick, seed {args.seed}: success={info['success']} "
        f"after {len(frames) - 1} steps, return {total:.2f}; rgb | depth | mask -> {path}"
    )
    env.close()
