"""Pick (robosuite Lift): the scripted expert with knobs of incompetence and the data mixes.

The spec is ``envs/pick.toml``; this module holds what needs code: :class:`ScriptedPick`, which
acts on the privileged ``state`` (end effector, fingers, cube), the named mixes of its variants
that ``wmgym collect --policy <mix>`` draws episodes from, and the policies a sweep ranks.

>>> policy = ScriptedPick(noise=0.1)
>>> policy.reset(seed=0)
>>> policy({"state": np.zeros(8, np.float32)}).shape
(4,)
"""

from __future__ import annotations

import numpy as np

#: Where the expert reads the end effector and the cube in ``state`` (``envs/pick.toml``).
EEF_POS, CUBE_POS = slice(0, 3), slice(5, 8)

HOVER = 0.06  # height above the cube to line up at, metres
GRASP_DEPTH = 0.0  # eef height relative to the cube centre when closing
LIFT = 0.15  # lift height above the grasp point, metres
CLOSE_STEPS = 6  # steps to hold still while the fingers close
GAIN = 12.0  # action units per metre of position error (action 1 = 5 cm target delta)
WAIT_HEIGHT = 0.03  # hesitate=: highest hold above the grasp point, metres
WAIT_STEPS = 25  # hesitate=, hover=: longest hold with the gripper open at the cube, steps
HOVER_HEIGHTS = (0.015, 0.045)  # hover=: where the descent is told to stop (the arm coasts ~1 cm)
FEINT_STEPS = 10  # hesitate=: steps of lifting the open gripper before starting over


class ScriptedPick:
    """Approach, descend, close, lift — driven by ``state`` with tunable incompetence.

    Args:
        noise: Std of Gaussian noise added to every action (action units).
        error: Std of a per-episode xy offset of the believed cube position (metres).
        drop_prob: Probability per episode of opening the gripper mid-lift (makes drops).
        give_up_prob: Probability per episode of switching to random actions at a random step.
        explore: Probability per step of an excursion: one action held for 2-``hold`` steps, after
            which the script (driven by the state) carries on. Half the excursions are uniform
            random actions; the rest are primitives: full-speed moves along a random subset of
            the axes (none: standing still) with the gripper open or closed. They break the tie
            between an action and the phase of the pick that scripted data otherwise has
            (standing still with the gripper open, say, happens only right above the cube).
        gain: Multiplies the script's gain (action per metre of position error). Below 1 the
            pick is slower and its actions smaller: the script's unsaturated actions are
            proportional to the distance to its target, so at one gain a small action means
            "almost there"; several gains break that tie.
        pause: Probability per step of pausing: zero motion for 2-8 steps, the gripper kept as
            it was, anywhere in the pick.
        hold: Longest excursion, in steps. Long ones take the arm far from any pick path (an
            agent early in training holds saturated actions like this).
        lead: Probability per episode of starting with an excursion, from the reset frame.
        hesitate: Probability per episode of hesitating at the grasp: after the descent the arm
            holds 0-3 cm above the grasp point with the gripper open for 3-25 steps; then it
            either closes as usual or (half the time) feints: lifts with the gripper open and
            starts the pick over, without hesitating again. Without such data a model reads
            "the fingers close" off "the open gripper is at the cube", whatever the action says.
        hover: Probability per episode of stopping the descent 1.5-4.5 cm above the grasp point
            (the arm coasts about 1 cm further) and holding it still there, gripper open, for
            3-25 steps (zero motion, as an agent at rest commands); then the descent goes on, or
            (half the time) the gripper closes right there and robosuite decides the grasp.
            Without such data a model finishes the descent for an arm told to stay.
        press: How far below the grasp point the descent aims (metres; it still closes at the
            grasp point). Its actions then stay large down to the cube instead of shrinking
            with the distance, so the moment to close follows from where the arm is rather than
            from how fast it moves: a label a policy without memory can imitate.

    """

    observation_keys = ("state",)

    def __init__(
        self, noise: float = 0.0, error: float = 0.0, drop_prob: float = 0.0,
        give_up_prob: float = 0.0, explore: float = 0.0, gain: float = 1.0, pause: float = 0.0,
        hold: int = 8, lead: float = 0.0, hesitate: float = 0.0, hover: float = 0.0,
        press: float = 0.0,
    ):
        if hold < 2:
            raise ValueError(f"hold must be at least 2 steps, got {hold}")
        self.noise, self.error, self.gain, self.pause = noise, error, gain, pause
        self.hold, self.lead, self.hesitate, self.hover = int(hold), lead, hesitate, hover
        self.press = press
        self.drop_prob, self.give_up_prob, self.explore = drop_prob, give_up_prob, explore
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.offset = np.r_[self.rng.normal(0.0, self.error, 2), 0.0] if self.error else np.zeros(3)
        self.phase, self.t_phase, self.t = "approach", 0, 0
        self.drop_at = int(self.rng.integers(3, 15)) if self.rng.random() < self.drop_prob else None
        self.give_up_at = (
            int(self.rng.integers(5, 60)) if self.rng.random() < self.give_up_prob else None
        )
        self.lift_from: np.ndarray | None = None
        self.excursion, self.excursion_left = np.zeros(4), 0
        self.last_grip = -1.0
        if self.lead and self.rng.random() < self.lead:  # no draw at lead=0: old seeds replay
            self._start_excursion()
        self.wait: tuple[float, int, bool] | None = None  # height, steps, feint
        if self.hesitate and self.rng.random() < self.hesitate:  # no draw at 0, as for lead
            self.wait = (float(self.rng.uniform(0.0, WAIT_HEIGHT)),
                         int(self.rng.integers(3, WAIT_STEPS + 1)), bool(self.rng.random() < 0.5))
        self.stop: tuple[float, int, bool] | None = None  # height, steps, close there
        if self.hover and self.rng.random() < self.hover:  # no draw at 0, as for lead
            self.stop = (float(self.rng.uniform(*HOVER_HEIGHTS)),
                         int(self.rng.integers(3, WAIT_STEPS + 1)), bool(self.rng.random() < 0.5))

    def _start_excursion(self) -> None:
        self.excursion = self._excursion()
        self.excursion_left = int(self.rng.integers(2, self.hold + 1))

    def _goto(self, eef: np.ndarray, target: np.ndarray, grip: float) -> np.ndarray:
        return np.r_[np.clip(self.gain * GAIN * (target - eef), -1.0, 1.0), grip]

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], np.float64)
        eef, cube = state[EEF_POS], state[CUBE_POS] + self.offset
        self.t += 1
        self.t_phase += 1
        if self.explore and not self.excursion_left and self.rng.random() < self.explore:
            self._start_excursion()
        if self.pause and not self.excursion_left and self.rng.random() < self.pause:
            self.excursion = np.r_[0.0, 0.0, 0.0, self.last_grip]
            self.excursion_left = int(self.rng.integers(2, 9))
        if self.give_up_at is not None and self.t >= self.give_up_at:
            action = self.rng.uniform(-1.0, 1.0, 4)
        elif self.excursion_left:
            self.excursion_left -= 1
            action = self.excursion
        else:
            action = self._scripted(eef, cube)
        self.last_grip = float(action[3])
        if self.noise:
            action = action + self.rng.normal(0.0, self.noise, 4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _excursion(self) -> np.ndarray:
        if self.rng.random() < 0.5:
            return self.rng.uniform(-1.0, 1.0, 4)
        axes = self.rng.random(3) < 0.5
        move = np.where(axes, self.rng.choice([-1.0, 1.0], 3), 0.0)
        return np.r_[move, self.rng.choice([-1.0, 1.0])]

    def _next(self, phase: str) -> None:
        self.phase, self.t_phase = phase, 0

    def _scripted(self, eef: np.ndarray, cube: np.ndarray) -> np.ndarray:
        hover = cube + [0.0, 0.0, HOVER]
        if self.phase == "approach":
            if np.linalg.norm((hover - eef)[:2]) < 0.01 and abs(hover[2] - eef[2]) < 0.02:
                self._next("descend")
            return self._goto(eef, hover, -1.0)
        if self.phase == "descend":
            grasp = cube + [0.0, 0.0, GRASP_DEPTH]
            aim = grasp - [0.0, 0.0, self.press]  # press=: aim below, descend at speed
            if self.stop is not None and eef[2] - grasp[2] < self.stop[0]:
                self._next("hover")
            elif eef[2] - grasp[2] < 0.008 or self.t_phase > 30:
                self._next("close" if self.wait is None else "wait")
            return self._goto(eef, aim, -1.0)
        if self.phase == "hover":  # hover=: the arm held still above the cube, gripper open
            _, steps, close_there = self.stop  # type: ignore[misc]
            if self.t_phase >= steps:
                self.stop = None
                self._next("close" if close_there else "descend")
            return np.r_[0.0, 0.0, 0.0, -1.0]
        if self.phase == "wait":  # hesitate=: open gripper held at the cube
            height, steps, feint = self.wait  # type: ignore[misc]
            if self.t_phase >= steps:
                self._next("feint" if feint else "close")
                self.lift_from = eef.copy()
            return self._goto(eef, cube + [0.0, 0.0, GRASP_DEPTH + height], -1.0)
        if self.phase == "feint":  # lift the open gripper, then start over
            if self.t_phase >= FEINT_STEPS:
                self.wait = None
                self._next("approach")
            return self._goto(eef, self.lift_from + [0.0, 0.0, LIFT], -1.0)
        if self.phase == "close":
            if self.t_phase >= CLOSE_STEPS:
                self._next("lift")
                self.lift_from = eef.copy()
            return np.r_[0.0, 0.0, 0.0, 1.0]
        # lift (and hold)
        target = self.lift_from + [0.0, 0.0, LIFT]
        grip = -1.0 if self.drop_at is not None and self.t_phase >= self.drop_at else 1.0
        return self._goto(eef, target, grip)


#: The default mix: clean, noisy and mis-aimed picks, deliberate drops, picks that give up half
#: way, and random exploration — so the data covers approach, grasp, lift, misses and drops.
MIX: dict[str, float] = {
    "pick": 0.2,
    "pick:noise=0.3": 0.15,
    "pick:error=0.02": 0.15,
    "pick:error=0.04,noise=0.2": 0.1,
    "pick:drop_prob=1": 0.1,
    "pick:give_up_prob=1": 0.1,
    "random:repeat=4": 0.1,
    "random": 0.1,
}

#: Coverage of actions the scripted data never ties to other phases of the pick: excursions
#: (random actions and axis moves, standing still included) held 2-8 steps inside picks, and
#: long-held random actions. Collected as a second dataset beside ``MIX``'s.
EXPLORE_MIX: dict[str, float] = {
    "pick:explore=0.1": 0.3,
    "pick:explore=0.2,noise=0.1": 0.3,
    "pick:explore=0.15,error=0.02": 0.2,
    "random:repeat=10": 0.2,
}

#: Picks whose action size does not tell how far the target is: slower gains (the script's
#: unsaturated action is proportional to the distance to its target) and pauses (standing still
#: anywhere). A third dataset: with ``MIX``'s alone, a model reads "almost there" off a small
#: action (measured by ``research/probes.py``).
SLOW_MIX: dict[str, float] = {
    "pick:gain=0.35,pause=0.05": 0.3,
    "pick:gain=0.6,pause=0.1,explore=0.05": 0.3,
    "pick:pause=0.15,explore=0.1": 0.2,
    "pick:gain=0.35,noise=0.1": 0.2,
}

#: Long excursions (up to 25 steps), most episodes starting with one from the reset frame: the
#: arm held at full speed towards the workspace edges, high above the table, far from the cube.
#: A fourth dataset: the action probes' largest errors were such moves from the start.
REACH_MIX: dict[str, float] = {
    "pick:explore=0.06,hold=25,lead=0.8": 0.4,
    "pick:explore=0.1,hold=20,lead=0.5,noise=0.1": 0.3,
    "pick:explore=0.05,hold=25,lead=1,gain=0.6": 0.15,
    "random:repeat=20": 0.15,
}

#: Hesitant grasps: the open gripper held at the cube (0-3 cm above the grasp point, 3-25 steps),
#: then a grasp or a feint (an empty lift, then the pick over). A fifth dataset: trained without
#: it, a model closes the fingers itself once the open gripper reaches the cube (an agent that
#: only hovers there lifts in imagination), since in the scripted data the fingers always did.
HESITATE_MIX: dict[str, float] = {
    "pick:hesitate=1": 0.35,
    "pick:hesitate=1,noise=0.1": 0.25,
    "pick:hesitate=1,error=0.02": 0.2,
    "pick:hesitate=0.5,pause=0.1": 0.2,
}

#: Descents stopped 1-3 cm above the grasp point, the arm held still with the gripper open for
#: 3-25 steps, then the descent goes on or the gripper closes there. A sixth dataset: with
#: ``HESITATE_MIX``'s alone, a model still lowered an arm told to stay onto the cube (where an
#: agent at rest above it got a grasp in imagination and none in robosuite).
HOVER_MIX: dict[str, float] = {
    "pick:hover=1": 0.4,
    "pick:hover=1,noise=0.05": 0.2,
    "pick:hover=1,hesitate=1": 0.2,
    "pick:hover=1,error=0.02": 0.2,
}

#: Misses: grasps aimed 4-6 cm off the cube (closing beside it, held open over it, or stopped
#: above the wrong spot) and step-by-step random actions. A seventh dataset: after the hesitate
#: and hover fine-tunes a model lifted the cube in imagination for mis-aimed picks and random
#: actions that lift nothing in robosuite (``wmgym sweep``: success gap 0.144).
MISS_MIX: dict[str, float] = {
    "pick:error=0.04": 0.25,
    "pick:error=0.06,noise=0.1": 0.2,
    "pick:hover=1,error=0.04": 0.2,
    "pick:hesitate=1,error=0.04": 0.15,
    "random": 0.2,
}

#: Near misses: grasps aimed 1.5-3.5 cm off (per-axis std) and very noisy picks, the regime
#: where robosuite's grasp holds about half the time. An eighth dataset: with the other seven a
#: model was optimistic there by about 0.1 in success (``wmgym sweep``, 40 seeds:
#: ``pick:error=0.02`` 0.62 imagined against 0.45 real), lifting cubes the fingers had missed.
NEARMISS_MIX: dict[str, float] = {
    "pick:error=0.025": 0.25,
    "pick:error=0.035,noise=0.1": 0.2,
    "pick:error=0.015,noise=0.25": 0.2,
    "pick:noise=0.5": 0.2,
    "pick:hover=1,error=0.025": 0.15,
}

#: The arm's own motion, for the state model (``wmgym train state-model``): smooth random play
#: at speeds from 0.03 to 1 (slow drifts, held actions, stops, pushes against the table and the
#: cube), and slow, paused, hovering and hesitating picks that bring slow motion next to the
#: cube and carry it. Learned agents converge on the cube with small, shrinking actions that no
#: other mix has at the cube; the transformer moved the arm up to twice as far as robosuite
#: under them.
PLAY_MIX: dict[str, float] = {
    "play": 0.35,
    "play:high=0.2": 0.2,
    "pick:gain=0.35,pause=0.05": 0.1,
    "pick:gain=0.2,noise=0.05": 0.1,
    "pick:hover=1,noise=0.05": 0.1,
    "pick:hesitate=1": 0.05,
    "pick:noise=0.3": 0.05,
    "pick": 0.05,
}

MIXES: dict[str, dict[str, float]] = {
    "mix": MIX, "play": PLAY_MIX, "explore": EXPLORE_MIX, "slow": SLOW_MIX, "reach": REACH_MIX,
    "hesitate": HESITATE_MIX, "hover": HOVER_MIX, "miss": MISS_MIX, "nearmiss": NEARMISS_MIX,
}

#: The task's scripted experts, by the name policies are made with (``pick:noise=0.3``).
EXPERTS = {"pick": ScriptedPick}

#: Policies of clearly different competence (real success from 0 to 1): ``wmgym sweep``'s default.
SWEEP_POLICIES = (
    "pick",
    "pick:error=0.01",
    "pick:error=0.02",
    "pick:error=0.03",
    "pick:error=0.05",
    "pick:noise=0.3,error=0.02",
    "pick:noise=0.6",
    "pick:give_up_prob=1",
    "random",
)

#: The expert that labels a camera-based actor's steps (``wmgym imitate``): its descent stays
#: fast down to the cube, so where to close shows in the frames rather than in the speed.
IMITATION_EXPERT = "pick:press=0.03"

#: The policies whose imagined rollouts the fast decoder and the fast transformer are distilled
#: on (``wmgym train decoder`` / ``train fast-dynamics``).
DISTILL_POLICIES = (
    "pick", "pick:error=0.02", "pick:error=0.04,noise=0.2", "pick:noise=0.3",
    "pick:explore=0.1", "pick:hesitate=1", "pick:hover=1", "pick:gain=0.35,pause=0.05",
    "pick:drop_prob=1", "pick:give_up_prob=1", "random", "random:repeat=4",
)

#: The measured SAC recipe for agents trained on ``state`` (``wmgym.rl.sac_recipe("pick")``):
#: a scripted warm-up kept in every batch, behaviour cloning first, a slow actor.
SAC_RECIPE = {
    "warmup_policy": "pick:noise=0.1", "learning_starts": 5000, "bc_steps": 5000,
    "bc_ratio": 1.0, "bc_filter": False, "actor_lr_scale": 0.1, "demo_ratio": 0.5,
    "standardize_state": True, "critic_layer_norm": True, "ent_coef": "auto_0.05",
}

#: The learned-agent family ``wmgym agents build --task pick`` trains and freezes
#: (:mod:`wmgym.agent_family`): state-based agents of graded competence that made none of the
#: world model's data. Behaviour cloning of more or fewer, cleaner or noisier, well or badly
#: aimed demonstrations (cloned from clean picks alone, an agent stops above the cube with the
#: gripper open: the script's moment to close is not in the state); SAC with the recipe frozen
#: at several points, in Sim-Pick-v0 and in WM-Pick-v0 (the recipe's actor is cloned when
#: learning starts, then held while the critics take as many steps: snapshots in that span
#: would be one agent twice); PPO cloned from demonstrations, then
#: fine-tuned, and PPO from scratch. Each run's episodes are seeded from its ``seed`` (under
#: 1000 of them), the held episodes that score every agent when frozen from ``eval_seed``: far
#: from ``wmgym collect``'s seeds (0 .. ~16,200) and the sweeps'. About half an hour on 2 cores.
FAMILY = {
    "seed": 900_000,
    "eval_seed": 990_000,
    "eval_episodes": 20,
    "runs": (
        {"name": "bc-clean-40", "algo": "bc", "seed": 900_000, "demos": "pick", "episodes": 40,
         "bc_steps": 3000},
        {"name": "bc-noise01-40", "algo": "bc", "seed": 913_000, "demos": "pick:noise=0.1",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noise01-10", "algo": "bc", "seed": 914_000, "demos": "pick:noise=0.1",
         "episodes": 10, "bc_steps": 1000},
        {"name": "bc-noisy-40", "algo": "bc", "seed": 903_000, "demos": "pick:noise=0.3",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noisy-8", "algo": "bc", "seed": 904_000, "demos": "pick:noise=0.6",
         "episodes": 8, "bc_steps": 1000},
        {"name": "bc-aim3-30", "algo": "bc", "seed": 905_000, "demos": "pick:error=0.03",
         "episodes": 30, "bc_steps": 2000},
        {"name": "bc-aim2noisy-40", "algo": "bc", "seed": 915_000,
         "demos": "pick:error=0.02,noise=0.3", "episodes": 40, "bc_steps": 3000},
        {"name": "sac", "algo": "sac", "seed": 916_000,
         "recipe": {"learning_starts": 5000, "bc_steps": 5000},
         "save_at": (5001, 11000, 12500, 15000)},  # the actor holds still to 10,000
        {"name": "sac-nobc", "algo": "sac", "seed": 909_000, "recipe": {
            "learning_starts": 2000, "bc_steps": 0, "bc_ratio": 0.0, "warmup_policy": "random"},
         "save_at": (5000,)},
        {"name": "ppo-bc", "algo": "ppo", "seed": 910_000, "demos": "pick:noise=0.1",
         "episodes": 20, "bc_steps": 2000,
         "ppo": {"n_steps": 1024, "batch_size": 128, "learning_rate": 1e-4},
         "save_at": (0, 2048, 6144)},
        {"name": "ppo", "algo": "ppo", "seed": 911_000, "ppo": {"n_steps": 1024, "batch_size": 128},
         "save_at": (8192,)},
        {"name": "wm-sac", "algo": "sac", "seed": 917_000, "env": "wm", "num_envs": 16,
         "recipe": {"learning_starts": 5000, "bc_steps": 5000}, "save_at": (5008, 12000, 16000)},
    ),
}
