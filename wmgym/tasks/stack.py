"""Stack (robosuite Stack): the scripted expert with knobs of incompetence and the data mixes.

The spec is ``envs/stack.toml``; this module holds what needs code: :class:`ScriptedStack`, which
acts on the privileged ``state`` (end effector, fingers, red cube A, green cube B), the named
mixes of its variants that ``wmgym collect --policy <mix>`` draws episodes from, and the
policies a sweep ranks.

robosuite counts a stack when cube A is lifted (its centre 4 cm above the table), touches cube
B and is not grasped: the expert has to let go of it, so it opens the gripper once cube A rests
on cube B and then pulls the arm up.

>>> policy = ScriptedStack(noise=0.1)
>>> policy.reset(seed=0)
>>> policy({"state": np.zeros(11, np.float32)}).shape
(4,)
"""

from __future__ import annotations

import numpy as np

from wmgym.spec import load_spec
from wmgym.tasks import play_mix

_SPEC = load_spec("stack")
#: Where the expert reads the end effector and the cubes in ``state`` (``envs/stack.toml``).
EEF_POS = _SPEC.index("eef_x", "eef_y", "eef_z")
CUBE_A_POS = _SPEC.index("cubea_x", "cubea_y", "cubea_z")
CUBE_B_POS = _SPEC.index("cubeb_x", "cubeb_y", "cubeb_z")

HALF_A, HALF_B = 0.02, 0.025  # half sizes of cube A (red) and cube B (green), metres
HOVER = 0.07  # height above cube A to line up at, metres
CARRY = 0.04  # clearance of cube A's bottom over cube B's top while carrying, metres
SETTLE = 0.004  # height of cube A's bottom over cube B's top where the clean expert lets go
CLOSE_STEPS = 6  # steps to hold still while the fingers close
OPEN_STEPS = 4  # steps to hold still while the fingers open
RETREAT = 0.1  # how far the open gripper rises after letting go, metres
GAIN = 12.0  # action units per metre of position error (action 1 = 5 cm target delta)
SLIP = 0.02  # cube A farther than this from where the grasp holds it has not come along, metres


class ScriptedStack:
    """Approach, grasp, lift, carry over cube B, lower, let go, retreat — driven by ``state``.

    Cube A is carried by its own position: the carry and the descent aim cube A (not the
    gripper) at the point above cube B, so a grasp off the cube's centre is corrected for. When
    the grasp has not brought cube A along (a miss, a drop), the carry goes on as if it had:
    the empty gripper moves where cube A would have been. The fingers close along y and the
    arm cannot turn them: where cube B stands right beside cube A along y, an open finger lands
    on it and the grasp misses (2 of 60 seeds).

    Args:
        noise: Std of Gaussian noise added to every action (action units).
        error: Std of a per-episode xy offset of the believed position of cube A (metres): the
            grasp is aimed off the cube.
        place_error: Std of a per-episode xy offset of the believed position of cube B (metres):
            cube A is set down off cube B's centre; off by more than cube B's half size it tips.
        release_height: Height of cube A's bottom above cube B's top at which the gripper opens
            (metres): above a few centimetres cube A falls onto cube B, bounces and may tumble
            off. robosuite counts a stack on cube A's first touch of cube B once it is let go
            of, so on its own a high release still mostly succeeds; with ``place_error`` the
            falling cube misses more often.
        drop_prob: Probability per episode of opening the gripper 3-19 steps into the lift and
            carry; the arm then holds still while the fingers open and rises, as after a stack.
        give_up_prob: Probability per episode of switching to random actions at a random step.
        gain: Multiplies the script's gain (action per metre of position error): below 1 the
            stack is slower and its actions smaller.
        pause: Probability per step of pausing: zero motion for 2-8 steps, the gripper kept as it
            was, anywhere in the stack.

    """

    observation_keys = ("state",)

    def __init__(
        self, noise: float = 0.0, error: float = 0.0, place_error: float = 0.0,
        release_height: float = SETTLE, drop_prob: float = 0.0, give_up_prob: float = 0.0,
        gain: float = 1.0, pause: float = 0.0,
    ):
        self.noise, self.error, self.place_error = noise, error, place_error
        self.release_height, self.drop_prob, self.give_up_prob = (
            release_height, drop_prob, give_up_prob)
        self.gain, self.pause = gain, pause
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Starts an episode; knobs at 0 draw nothing, so they replay the clean expert's seeds."""
        self.rng = np.random.default_rng(seed)
        self.aim = np.zeros(3)
        if self.error:
            self.aim[:2] = self.rng.normal(0.0, self.error, 2)
        self.place = np.zeros(3)
        if self.place_error:
            self.place[:2] = self.rng.normal(0.0, self.place_error, 2)
        self.drop_at = None  # steps into the lift-and-carry at which the gripper opens
        if self.drop_prob and self.rng.random() < self.drop_prob:
            self.drop_at = int(self.rng.integers(3, 20))
        self.give_up_at = None
        if self.give_up_prob and self.rng.random() < self.give_up_prob:
            self.give_up_at = int(self.rng.integers(5, 80))
        self.phase, self.t_phase, self.t, self.t_carry = "approach", 0, 0, 0
        self.paused, self.last_grip = 0, -1.0
        self.release_from: np.ndarray | None = None
        self.hold = np.zeros(3)  # the gripper's offset from cube A when the fingers closed

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], np.float64)
        eef, cube_a, cube_b = state[EEF_POS], state[CUBE_A_POS], state[CUBE_B_POS]
        self.t += 1
        self.t_phase += 1
        if self.pause and not self.paused and self.rng.random() < self.pause:
            self.paused = int(self.rng.integers(2, 9))
        if self.give_up_at is not None and self.t >= self.give_up_at:
            action = self.rng.uniform(-1.0, 1.0, 4)
        elif self.paused:
            self.paused -= 1
            action = np.r_[0.0, 0.0, 0.0, self.last_grip]
        else:
            action = self._scripted(eef, cube_a, cube_b)
        self.last_grip = float(action[3])
        if self.noise:
            action = action + self.rng.normal(0.0, self.noise, 4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _move(self, delta: np.ndarray, grip: float) -> np.ndarray:
        return np.r_[np.clip(self.gain * GAIN * delta, -1.0, 1.0), grip]

    def _next(self, phase: str) -> None:
        self.phase, self.t_phase = phase, 0

    def _scripted(self, eef: np.ndarray, cube_a: np.ndarray, cube_b: np.ndarray) -> np.ndarray:
        target_a = cube_a + self.aim
        above_b = cube_b + self.place + [0.0, 0.0, HALF_B + HALF_A]  # cube A resting on B
        if self.phase == "approach":
            hover = target_a + [0.0, 0.0, HOVER]
            if np.linalg.norm((hover - eef)[:2]) < 0.01 and abs(hover[2] - eef[2]) < 0.02:
                self._next("descend")
            return self._move(hover - eef, -1.0)
        if self.phase == "descend":
            if eef[2] - target_a[2] < 0.008 or self.t_phase > 30:
                self._next("close")
            return self._move(target_a - eef, -1.0)
        if self.phase == "close":
            if self.t_phase >= CLOSE_STEPS:
                self._next("lift")
                self.hold = eef - cube_a
            return np.r_[0.0, 0.0, 0.0, 1.0]
        if self.phase in ("lift", "carry", "lower"):
            self.t_carry += 1
            if self.drop_at is not None and self.t_carry >= self.drop_at:  # drop_prob=: let go
                self._next("release")
                self.release_from = eef.copy()
                return np.r_[0.0, 0.0, 0.0, -1.0]
            held = eef - self.hold
            if np.linalg.norm(cube_a - held) > SLIP:  # not in the gripper: carry where it would be
                cube_a = held
            carry = above_b + [0.0, 0.0, max(CARRY, self.release_height + 0.01)]
            if self.phase == "lift":  # straight up until cube A clears cube B
                if cube_a[2] > carry[2] - 0.01 or self.t_phase > 30:
                    self._next("carry")
                return self._move(np.r_[0.0, 0.0, carry[2] - cube_a[2]], 1.0)
            if self.phase == "carry":  # cube A over cube B at the carry height
                if np.linalg.norm((carry - cube_a)[:2]) < 0.006 or self.t_phase > 40:
                    self._next("lower")
                return self._move(carry - cube_a, 1.0)
            release = above_b + [0.0, 0.0, self.release_height]
            if cube_a[2] - release[2] < 0.003 or self.t_phase > 30:
                self._next("release")
                self.release_from = eef.copy()
            return self._move(release - cube_a, 1.0)
        if self.phase == "release":
            if self.t_phase >= OPEN_STEPS:
                self._next("retreat")
            return np.r_[0.0, 0.0, 0.0, -1.0]
        # retreat (and hold): the open gripper rises off cube A
        return self._move(self.release_from + [0.0, 0.0, RETREAT] - eef, -1.0)


#: The default mix: clean, noisy, mis-aimed and mis-placed stacks, cube A let go of too high,
#: dropped on the way or carried by a stack that gives up half way, and random exploration — so
#: the data covers the grasp, the carry, the set-down, misses, drops and tumbles.
MIX: dict[str, float] = {
    "stack": 0.2,
    "stack:noise=0.3": 0.1,
    "stack:error=0.02": 0.1,
    "stack:place_error=0.03": 0.1,
    "stack:release_height=0.08": 0.1,
    "stack:release_height=0.12,place_error=0.02": 0.05,
    "stack:drop_prob=1": 0.1,
    "stack:give_up_prob=1": 0.1,
    "random:repeat=4": 0.1,
    "random": 0.05,
}

#: The arm's own motion, for the state model (``wmgym train state-model``): smooth random play
#: at speeds from 0.03 to 1, and slow and paused stacks that bring slow motion next to the cubes
#: and carry cube A.
PLAY_MIX: dict[str, float] = play_mix("stack")

MIXES: dict[str, dict[str, float]] = {"mix": MIX, "play": PLAY_MIX}

#: The task's scripted experts, by the name policies are made with (``stack:noise=0.3``).
EXPERTS = {"stack": ScriptedStack}

#: Policies of clearly different competence: ``wmgym sweep``'s default. Real success in
#: Sim-Stack-v0 over seeds 0-19, in order: 1.0, 0.9, 0.8, 0.75, 0.55, 0.45, 0.35, 0.25, 0.15, 0, 0.
SWEEP_POLICIES = (
    "stack",
    "stack:place_error=0.02",
    "stack:noise=0.6",
    "stack:error=0.01",
    "stack:place_error=0.04",
    "stack:noise=0.3,error=0.02",
    "stack:error=0.02",
    "stack:give_up_prob=1",
    "stack:error=0.03",
    "stack:drop_prob=1",
    "random",
)

#: The policies whose imagined rollouts the fast decoder and the fast transformer are distilled
#: on (``wmgym train decoder`` / ``train fast-dynamics``).
DISTILL_POLICIES = (
    "stack", "stack:error=0.02", "stack:place_error=0.03", "stack:noise=0.3",
    "stack:release_height=0.08", "stack:gain=0.35,pause=0.05", "stack:drop_prob=1",
    "stack:give_up_prob=1", "random", "random:repeat=4",
)

#: The learned-agent family ``wmgym agents build --task stack`` trains and freezes
#: (:mod:`wmgym.agent_family`): state-based agents that made none of the world model's data.
#: Behaviour cloning of more or fewer, cleaner or noisier, mis-aimed and mis-placed stacks and
#: stacks that give up, and PPO cloned from noisy stacks, then fine-tuned, and PPO from scratch.
#: Training seeds from 900,000 (under 1000 a run), held episodes from 990,000: far from
#: ``wmgym collect``'s seeds and the sweeps'.
FAMILY = {
    "seed": 900_000,
    "eval_seed": 990_000,
    "eval_episodes": 20,
    "runs": (
        {"name": "bc-clean-40", "algo": "bc", "seed": 900_000, "demos": "stack", "episodes": 40,
         "bc_steps": 3000},
        {"name": "bc-noise03-40", "algo": "bc", "seed": 903_000, "demos": "stack:noise=0.3",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noise03-10", "algo": "bc", "seed": 912_000, "demos": "stack:noise=0.3",
         "episodes": 10, "bc_steps": 1000},
        {"name": "bc-noise03-80", "algo": "bc", "seed": 913_000, "demos": "stack:noise=0.3",
         "episodes": 80, "bc_steps": 5000},
        {"name": "bc-noise03-200", "algo": "bc", "seed": 916_000, "demos": "stack:noise=0.3",
         "episodes": 200, "bc_steps": 10000},
        {"name": "bc-noise01-40", "algo": "bc", "seed": 914_000, "demos": "stack:noise=0.1",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noise05-40", "algo": "bc", "seed": 915_000, "demos": "stack:noise=0.5",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noisy-8", "algo": "bc", "seed": 904_000, "demos": "stack:noise=0.6",
         "episodes": 8, "bc_steps": 1000},
        {"name": "bc-aim2noisy-40", "algo": "bc", "seed": 906_000,
         "demos": "stack:error=0.02,noise=0.3", "episodes": 40, "bc_steps": 3000},
        {"name": "bc-placeerr-30", "algo": "bc", "seed": 907_000,
         "demos": "stack:place_error=0.03,noise=0.3", "episodes": 30, "bc_steps": 2000},
        {"name": "bc-giveup-30", "algo": "bc", "seed": 908_000,
         "demos": "stack:give_up_prob=1,noise=0.3", "episodes": 30, "bc_steps": 2000},
        {"name": "ppo-bc", "algo": "ppo", "seed": 910_000, "demos": "stack:noise=0.3",
         "episodes": 20, "bc_steps": 2000,
         "ppo": {"n_steps": 1024, "batch_size": 128, "learning_rate": 1e-4},
         "save_at": (0, 2048, 6144)},
        {"name": "ppo", "algo": "ppo", "seed": 911_000, "ppo": {"n_steps": 1024, "batch_size": 128},
         "save_at": (4096,)},
    ),
}
