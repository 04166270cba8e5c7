"""``wmgym imitate``: a camera-based actor trained by imitation inside one twin.

The task's scripted expert reads ``state`` and labels every step; the actor
(:class:`~wmgym.vision.VisionActor`) sees only the camera's frames and ``proprio``. Round 0 is
DART: the expert acts with Gaussian noise (``--noise``) and its clean action is the label.
Rounds 1.. are DAgger: the actor acts (the expert's own action is taken instead with probability
``--beta`` halved each round) and the expert labels where the actor went. After each round the
actor trains on everything gathered so far, with DrQ's random shifts.

In ``WM-<Task>-v0`` (``--twin wm``) every step is imagined, frames included: no robosuite step is
taken. ``--twin sim`` runs the same recipe in ``Sim-<Task>-v0`` with the same step budget, the
baseline the imagined one is measured against. Either way the actor is frozen as an agent
(``<out>/agent``, :mod:`wmgym.agents`) and scored by :func:`wmgym.sweep.run_sweep` on paired
seeds in both twins.

>>> actor, report = imitate(ImitateArgs(task="pick", steps=20_000))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wmgym.model.world_model import resolve_device
from wmgym.results import resolve_task
from wmgym.spec import TaskSpec
from wmgym.vision import VISION_KEYS, VisionActor, image_batch, random_shift


@dataclass
class ImitateArgs:
    """Options of ``wmgym imitate``."""

    task: str = ""
    """Task name or spec (empty: the task ``--checkpoint`` was trained for)."""
    checkpoint: str = ""
    """World-model checkpoint (default: the task's)."""
    twin: Literal["wm", "sim"] = "wm"
    """Where the actor gathers its steps: imagination or robosuite."""
    expert: str = ""
    """The labelling expert, a policy name with knobs (default: the task module's
    ``IMITATION_EXPERT``, else its first expert, clean)."""
    steps: int = 20_000
    """Environment steps in all rounds together."""
    rounds: int = 3
    """Round 0 is DART, the others DAgger; the steps are split evenly."""
    noise: float = 0.2
    """Std of the noise on the expert's actions in round 0 (action units)."""
    beta: float = 0.5
    """Chance per step that the expert's action is taken in DAgger round 1 (halved each round)."""
    num_envs: int = 16
    """Sub-envs gathering steps (the world model batches them; Sim steps them one by one)."""
    fast: Literal["default", "fast", "full"] = "fast"
    """Speed preset of ``WM-<Task>-v0``."""
    train_steps: int = 1500
    """Gradient steps after each round."""
    batch: int = 64
    lr: float = 3e-4
    seed: int = 0
    device: str = "auto"
    """Device of the world model and the actor."""
    eval_episodes: int = 50
    """Paired episodes in each twin that score the frozen actor (0: none)."""
    eval_seed: int = 300_000
    """First seed of the scoring episodes (outside collection, sweep and agent seeds)."""
    out: str = "runs/imitate"
    """The frozen agent (``agent/``) and the report (``imitate.json``) go here."""
    progress: bool = True


@dataclass
class Steps:
    """The gathered steps: frames, proprio and the expert's labels."""

    rgb: list[np.ndarray] = field(default_factory=list)
    depth: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    proprio: list[np.ndarray] = field(default_factory=list)
    label: list[np.ndarray] = field(default_factory=list)

    def add(self, obs: dict[str, np.ndarray], label: np.ndarray) -> None:
        self.rgb.append(np.asarray(obs["rgb"], np.uint8))
        self.depth.append(np.asarray(obs["depth"], np.float16))
        self.mask.append(np.asarray(obs["mask"], np.uint8))
        self.proprio.append(np.asarray(obs["proprio"], np.float32))
        self.label.append(np.asarray(label, np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(getattr(self, k)) for k in (*VISION_KEYS, "label")}


def default_expert(spec: TaskSpec) -> str:
    """The task module's ``IMITATION_EXPERT``, else its first scripted expert.

    Raises:
        ValueError: The task has no scripted expert to label with.
    """
    from wmgym.tasks import task_module

    module = task_module(spec)
    if getattr(module, "IMITATION_EXPERT", None):
        return module.IMITATION_EXPERT
    experts = getattr(module, "EXPERTS", {})
    if not experts:
        raise ValueError(f"task {spec.name!r} has no scripted expert (EXPERTS) to imitate")
    return next(iter(experts))


def on_off_dims(labels: np.ndarray) -> list[int]:
    """Action dimensions the expert only ever sets to -1 or +1 (e.g. a gripper command)."""
    return [d for d in range(labels.shape[-1]) if np.all(np.abs(labels[:, d]) == 1.0)]


def _make_env(args: ImitateArgs, spec: TaskSpec, checkpoint: Path, device: str) -> Any:
    from wmgym.env.sb3 import make_sb3_env

    if args.twin == "wm":
        return make_sb3_env(spec.wm_id, num_envs=args.num_envs, seed=args.seed, monitor=False,
                            checkpoint=checkpoint, device=device, images=True, fast=args.fast)
    return make_sb3_env(spec.sim_id, num_envs=args.num_envs, seed=args.seed, monitor=False,
                        images=True)


def train_actor(actor: VisionActor, data: dict[str, np.ndarray], *, steps: int, batch: int,
                lr: float, seed: int, progress: bool = True) -> float:
    """Behaviour cloning on ``data`` (mean squared action error, random shifts).

    Returns:
        The mean loss of the last 100 steps.
    """
    device = actor.proj.weight.device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(actor.parameters(), lr=lr)
    n, losses = len(data["label"]), []
    for _ in tqdm(range(steps), desc="train actor", disable=not progress, leave=False):
        idx = torch.randint(0, n, (batch,), generator=gen).numpy()
        images = random_shift(image_batch({k: data[k][idx] for k in ("rgb", "depth", "mask")},
                                          actor.depth_range), generator=gen).to(device)
        proprio = torch.as_tensor(data["proprio"][idx], device=device)
        loss = F.mse_loss(actor(images, proprio), torch.as_tensor(data["label"][idx],
                                                                  device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses[-100:]))


def imitate(args: ImitateArgs) -> tuple[VisionActor, dict[str, Any]]:
    """Gathers labelled steps round by round in ``args.twin`` and trains the actor on them.

    Returns:
        The trained actor and a report: per round its steps, the episodes that ended and how
        many succeeded (under the policy that acted), the loss and the time.
    """
    import wmgym  # noqa: F401  (registers the envs)
    from wmgym.policies import make_policy

    if args.rounds < 1 or args.steps < args.rounds * args.num_envs:
        raise ValueError(f"need at least one round and num_envs steps per round, got "
                         f"{args.rounds} rounds of {args.steps} steps for {args.num_envs} envs")
    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    device = str(resolve_device(args.device))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    expert_name = args.expert or default_expert(spec)
    n = args.num_envs
    experts = [make_policy(expert_name, task=spec) for _ in range(n)]
    episode = 0
    for e in experts:
        e.reset(seed=args.seed + episode)
        episode += 1
    actor = VisionActor(resolution=spec.resolution, proprio_dim=len(spec.proprio_fields),
                        action_dim=spec.action_dim, depth_range=spec.depth_range).to(device)
    env = _make_env(args, spec, checkpoint, device)
    data = Steps()
    rounds: list[dict[str, Any]] = []
    per_round = args.steps // args.rounds // n
    obs = env.reset()
    try:
        for r in range(args.rounds):
            start, ended, succeeded = time.perf_counter(), 0, 0
            beta = args.beta / 2 ** (r - 1) if r else 1.0
            for _ in tqdm(range(per_round), desc=f"round {r} ({args.twin})",
                          disable=not args.progress, leave=False):
                label = np.stack([experts[i]({"state": obs["state"][i]}) for i in range(n)])
                if r == 0:
                    action = label + rng.normal(0.0, args.noise, label.shape)
                else:
                    own = actor.act(obs)
                    action = np.where(rng.random((n, 1)) < beta, label, own)
                data.add(obs, label)
                obs, _, done, infos = env.step(np.clip(action, -1.0, 1.0).astype(np.float32))
                for i in np.flatnonzero(done):
                    ended += 1
                    succeeded += bool(infos[i].get("success", False))
                    experts[i].reset(seed=args.seed + episode)
                    episode += 1
            gathered = time.perf_counter() - start
            arrays = data.arrays()
            if r == 0:
                actor.fit_proprio(arrays["proprio"])
                actor.binary = on_off_dims(arrays["label"])
            loss = train_actor(actor, arrays, steps=args.train_steps, batch=args.batch,
                               lr=args.lr, seed=args.seed + r, progress=args.progress)
            rounds.append({"round": r, "kind": "dart" if r == 0 else "dagger",
                           "beta": beta, "steps": per_round * n, "episodes_ended": ended,
                           "episodes_succeeded": succeeded, "loss": round(loss, 5),
                           "gather_seconds": round(gathered, 1),
                           "train_seconds": round(time.perf_counter() - start - gathered, 1)})
            print(f"round {r}: {per_round * n} steps, {succeeded}/{ended} episodes succeeded, "
                  f"loss {loss:.4f}")
    finally:
        env.close()
    report = {"task": spec.name, "twin": args.twin, "expert": expert_name,
              "binary_dims": actor.binary,
              "dataset_steps": len(arrays["label"]), "rounds": rounds,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()}}
    return actor.cpu().eval(), report


def freeze_and_score(actor: VisionActor, report: dict[str, Any], directory: str | Path, *,
                     spec: TaskSpec, checkpoint: Path, name: str, episodes: int, seed: int,
                     device: str, fast: str, progress: bool = True
                     ) -> tuple[Path, dict[str, Any] | None]:
    """Freezes the actor as an agent in ``directory`` and scores it in both twins.

    The scoring is :func:`wmgym.sweep.run_sweep` on ``episodes`` paired seeds from ``seed``
    (the real and the imagined episode of one seed start from the same real frame); its real
    and imagined success go into the agent's ``agent.json``.

    Returns:
        The agent's folder and the sweep's row for it (None when ``episodes`` is 0).
    """
    from wmgym.agents import load_agent, update_agent_meta, write_agent
    from wmgym.sweep import SweepArgs, run_sweep

    tensors, architecture = actor.export()
    agent_dir = write_agent(directory, tensors, architecture, task=spec.name, name=name,
                            training=report)
    if not episodes:
        return agent_dir, None
    sweep = run_sweep({"agent": load_agent(agent_dir)}, SweepArgs(
        task=str(spec.path), checkpoint=str(checkpoint), episodes=episodes, seed=seed,
        device=device, fast=fast, progress=progress, out=str(Path(directory).parent / "sweep")))
    row = sweep["policies"][0]
    update_agent_meta(agent_dir, real_success={
        "success": row["real"]["success"], "imagined_success": row["imagined"]["success"],
        "episodes": episodes, "seeds": [seed, seed + episodes - 1]})
    return agent_dir, row


def imitate_main(args: ImitateArgs) -> dict[str, Any]:
    """``wmgym imitate``: train, freeze the actor, score it in both twins, write the report."""
    from wmgym.results import checkpoint_id, machine, write_result

    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    actor, report = imitate(args)
    out = Path(args.out)
    agent_dir, row = freeze_and_score(
        actor, report, out / "agent", spec=spec, checkpoint=checkpoint,
        name=f"vision-{args.twin}", episodes=args.eval_episodes, seed=args.eval_seed,
        device=args.device, fast=args.fast, progress=args.progress)
    if row is not None:
        report["real_success"] = row["real"]["success"]
        report["imagined_success"] = row["imagined"]["success"]
        print(f"real success {report['real_success']:.2f}, imagined "
              f"{report['imagined_success']:.2f} ({args.eval_episodes} paired episodes)")
    report.update(checkpoint=checkpoint_id(checkpoint), machine=machine(),
                  agent=str(agent_dir))
    write_result(out / "imitate.json", report)
    print(f"wrote {agent_dir} and {out / 'imitate.json'}")
    return report
