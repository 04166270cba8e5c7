"""Door (robosuite Door, no latch): the scripted expert with knobs of incompetence and mixes.

The spec is ``envs/door.toml``; this module holds what needs code: :class:`ScriptedDoor`, which
acts on the privileged ``state`` (end effector, fingers, handle, door body, hinge angle), the
named mixes of its variants that ``wmgym collect --policy <mix>`` draws episodes from, and the
policies a sweep ranks.

The door turns about a vertical hinge, so its handle moves on a circle: the expert finds the
hinge from the handle and door-body positions (their offsets inside the door are fixed by
robosuite's ``door.xml``) and pulls the grasped handle along that circle.

>>> policy = ScriptedDoor(noise=0.1)
>>> policy.reset(seed=0)
>>> policy({"state": np.zeros(12, np.float32)}).shape
(4,)
"""

from __future__ import annotations

import numpy as np

from wmgym.tasks import play_mix

#: Where the expert reads the end effector, the handle, the door body and the hinge angle in
#: ``state`` (``envs/door.toml``).
EEF_POS, HANDLE_POS, DOOR_POS, HINGE = slice(0, 3), slice(5, 8), slice(8, 11), 11

#: The handle site and the hinge axis in the door body's frame (x, y; metres), from robosuite's
#: ``objects/door.xml``: the latch body sits at (-0.175, 0) and the handle site 0.125 along the
#: bar and 0.10 out from the panel; the hinge is 0.255 along the panel's other way.
HANDLE_IN_DOOR = np.array([-0.05, -0.10])
HINGE_IN_DOOR = np.array([0.255, 0.0])

HOVER = 0.08  # height above the handle to line up at, metres
HOOK = 0.015  # eef offset (world +y, towards the robot) from the handle when hooking, metres
GRASP_DEPTH = -0.01  # eef height relative to the handle site when closing
CLOSE_STEPS = 6  # steps to hold still while the fingers close
GAIN = 12.0  # action units per metre of position error (action 1 = 5 cm target delta)
PULL_STEP = 0.12  # turn of the door the pull aims ahead of the hand each step, radians
OPEN = 0.36  # hinge angle at which the pull ends and the hand lets go, radians
SLACK = 0.02  # the pull aims this far past OPEN and slows down on the way (radians)
RELEASE_STEPS = 6  # steps the hand holds still while the fingers open
RETREAT = 0.08  # how far the hand then rises off the handle, metres
RETREAT_SPEED = 0.1  # action of the rise: slow, so the hand sliding up the panel leaves it be
PAUSE_STEPS = (2, 9)  # pause=: length of a pause, steps (upper bound exclusive)


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def hinge_xy(handle: np.ndarray, door: np.ndarray) -> np.ndarray:
    """The hinge axis (world x, y) from the handle and door-body positions.

    The handle's offset from the door body is ``HANDLE_IN_DOOR`` turned by the door's yaw; the
    hinge is ``HINGE_IN_DOOR`` turned by the same yaw.
    """
    seen = np.asarray(handle[:2] - door[:2], float)
    yaw = np.arctan2(seen[1], seen[0]) - np.arctan2(HANDLE_IN_DOOR[1], HANDLE_IN_DOOR[0])
    return door[:2] + _rot(yaw) @ HINGE_IN_DOOR


class ScriptedDoor:
    """Approach, hook the handle, close, pull along the door's arc, let go.

    Driven by ``state``. The hand keeps its orientation (OSC_POSITION): its fingers open across
    the handle bar, but the hand is too wide to straddle the bar, which stands 7.4 cm off the
    panel. So the hand is lined up ``HOOK`` in front of the handle and lowered against the
    panel, which slips the far finger into the gap behind the bar; closing the gripper pulls the
    bar against the fingers. The pull target is the hand's position turned about the hinge by up
    to ``PULL_STEP``, so the hand follows the circle the handle moves on; it slows down at
    ``OPEN``, opens the gripper, holds still, and rises slowly off the handle (a fast rise drags
    the door shut again).

    Args:
        noise: Std of Gaussian noise added to every action (action units).
        error: Std of a per-episode xyz offset of the believed handle position (metres).
        drop_prob: Probability per episode of letting go early: 1-9 steps into the pull the
            gripper opens and the hand rises off the handle, as at the end of a pull, with the
            door at most about 0.15 rad open (it swings back part of the way).
        pull_error: Per-episode angle (radians, sign drawn at random) by which the pull turns
            away from the door's arc: pulls off the circle strain the grasp.
        give_up_prob: Probability per episode of switching to random actions at a random step.
        gain: Multiplies the script's gain (action per metre of position error): below 1 the
            motion is slower and its actions smaller.
        pause: Probability per step of pausing: zero motion for 2-8 steps, the gripper kept as
            it was, anywhere in the task.

    """

    observation_keys = ("state",)

    def __init__(
        self, noise: float = 0.0, error: float = 0.0, drop_prob: float = 0.0,
        pull_error: float = 0.0, give_up_prob: float = 0.0, gain: float = 1.0,
        pause: float = 0.0,
    ):
        self.noise, self.error, self.drop_prob = noise, error, drop_prob
        self.pull_error, self.give_up_prob = pull_error, give_up_prob
        self.gain, self.pause = gain, pause
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.offset = self.rng.normal(0.0, self.error, 3) if self.error else np.zeros(3)
        self.phase, self.t_phase, self.t = "approach", 0, 0
        self.drop_at = (  # no draw at drop_prob=0: the clean expert's seeds replay
            int(self.rng.integers(1, 10)) if self.drop_prob and self.rng.random() < self.drop_prob
            else None)
        self.give_up_at = (
            int(self.rng.integers(5, 60))
            if self.give_up_prob and self.rng.random() < self.give_up_prob else None)
        self.turn = (self.pull_error * self.rng.choice([-1.0, 1.0])) if self.pull_error else 0.0
        self.paused, self.last_grip = 0, -1.0
        self.release_from: np.ndarray | None = None

    def _goto(self, eef: np.ndarray, target: np.ndarray, grip: float) -> np.ndarray:
        return np.r_[np.clip(self.gain * GAIN * (target - eef), -1.0, 1.0), grip]

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"], np.float64)
        self.t += 1
        self.t_phase += 1
        if self.pause and not self.paused and self.rng.random() < self.pause:
            self.paused = int(self.rng.integers(*PAUSE_STEPS))
        if self.give_up_at is not None and self.t >= self.give_up_at:
            action = self.rng.uniform(-1.0, 1.0, 4)
        elif self.paused:
            self.paused -= 1
            action = np.r_[0.0, 0.0, 0.0, self.last_grip]
        else:
            action = self._scripted(state)
        self.last_grip = float(action[3])
        if self.noise:
            action = action + self.rng.normal(0.0, self.noise, 4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _next(self, phase: str) -> None:
        self.phase, self.t_phase = phase, 0

    def _scripted(self, state: np.ndarray) -> np.ndarray:
        eef, handle = state[EEF_POS], state[HANDLE_POS] + self.offset
        if self.phase == "approach":
            hover = handle + [0.0, HOOK, HOVER]
            if np.linalg.norm((hover - eef)[:2]) < 0.01 and abs(hover[2] - eef[2]) < 0.02:
                self._next("descend")
            return self._goto(eef, hover, -1.0)
        if self.phase == "descend":
            grasp = handle + [0.0, HOOK, GRASP_DEPTH]
            if abs(grasp[2] - eef[2]) < 0.008 or self.t_phase > 30:
                self._next("close")
            return self._goto(eef, grasp, -1.0)
        if self.phase == "close":
            if self.t_phase >= CLOSE_STEPS:
                self._next("pull")
            return np.r_[0.0, 0.0, 0.0, 1.0]
        if self.phase == "pull":
            dropped = self.drop_at is not None and self.t_phase >= self.drop_at
            if state[HINGE] > OPEN or dropped:
                self._next("release")
                self.release_from = eef.copy()
            hinge = hinge_xy(state[HANDLE_POS], state[DOOR_POS])
            target = eef.copy()
            turn = np.clip(OPEN + SLACK - state[HINGE], 0.0, PULL_STEP)  # slows down at OPEN
            target[:2] = hinge + _rot(turn) @ (eef[:2] - hinge)
            if self.turn:  # pull_error=: the pull turned off the arc, about the hand
                target[:2] = eef[:2] + _rot(self.turn) @ (target[:2] - eef[:2])
            return self._goto(eef, target, 1.0)
        # release: open the gripper and hold still, then rise slowly
        if self.t_phase <= RELEASE_STEPS:
            return np.r_[0.0, 0.0, 0.0, -1.0]
        return np.r_[0.0, 0.0, RETREAT_SPEED if eef[2] < self.release_from[2] + RETREAT else 0.0,
                     -1.0]


#: The default mix: clean, noisy and mis-aimed pulls, grasps let go mid-pull, pulls off the
#: arc, pulls that give up half way, and random exploration.
MIX: dict[str, float] = {
    "door": 0.2,
    "door:noise=0.3": 0.15,
    "door:error=0.02": 0.15,
    "door:error=0.01,noise=0.2": 0.1,
    "door:drop_prob=1": 0.1,
    "door:pull_error=1.2": 0.05,
    "door:give_up_prob=1": 0.1,
    "random:repeat=4": 0.1,
    "random": 0.05,
}

#: The arm's own motion, for the state model (``wmgym train state-model``): smooth random play
#: at speeds from 0.03 to 1, and slow and paused pulls that bring slow motion to the handle and
#: the door.
PLAY_MIX: dict[str, float] = play_mix("door")

MIXES: dict[str, dict[str, float]] = {"mix": MIX, "play": PLAY_MIX}

#: The task's scripted experts, by the name policies are made with (``door:noise=0.3``).
EXPERTS = {"door": ScriptedDoor}

#: Policies of clearly different competence: ``wmgym sweep``'s default. Real success over seeds
#: 0-19, in this order: 1.0, 0.65, 0.55, 0.35, 0.25, 0.2, 0.05, 0, 0. The hook leaves the
#: finger a few millimetres behind the bar, so aim errors of 5 mm already cost half the pulls.
SWEEP_POLICIES = (
    "door",
    "door:noise=0.5",
    "door:error=0.005",
    "door:error=0.01",
    "door:pull_error=1.2",
    "door:error=0.02",
    "door:give_up_prob=1",
    "door:drop_prob=1",
    "random",
)

#: The policies whose imagined rollouts the fast decoder and the fast transformer are distilled
#: on (``wmgym train decoder`` / ``train fast-dynamics``).
DISTILL_POLICIES = (
    "door", "door:error=0.02", "door:noise=0.3", "door:drop_prob=1", "door:pull_error=1.2",
    "door:gain=0.35,pause=0.05", "door:give_up_prob=1", "random", "random:repeat=4",
)

#: The learned-agent family ``wmgym agents build --task door`` trains and freezes
#: (:mod:`wmgym.agent_family`): state-based agents that made none of the world model's data.
#: Behaviour cloning of more or fewer, cleaner or noisier, well or badly aimed pulls, and PPO
#: cloned from noisy pulls, then fine-tuned, and PPO from scratch. Clones of clean pulls never
#: open the door: they stop short of the handle, a state the clean expert never visits; noisy
#: demonstrations show the way back (as in DART). Training seeds from 900,000 (under 1000 a
#: run), held episodes from 990,000: far from ``wmgym collect``'s seeds and the sweeps'.
FAMILY = {
    "seed": 900_000,
    "eval_seed": 990_000,
    "eval_episodes": 20,
    "runs": (
        {"name": "bc-clean-40", "algo": "bc", "seed": 900_000, "demos": "door", "episodes": 40,
         "bc_steps": 3000},
        {"name": "bc-noise03-40", "algo": "bc", "seed": 903_000, "demos": "door:noise=0.3",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noise03-10", "algo": "bc", "seed": 912_000, "demos": "door:noise=0.3",
         "episodes": 10, "bc_steps": 1000},
        {"name": "bc-noise03-80", "algo": "bc", "seed": 913_000, "demos": "door:noise=0.3",
         "episodes": 80, "bc_steps": 5000},
        {"name": "bc-noise01-40", "algo": "bc", "seed": 914_000, "demos": "door:noise=0.1",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noise05-40", "algo": "bc", "seed": 915_000, "demos": "door:noise=0.5",
         "episodes": 40, "bc_steps": 3000},
        {"name": "bc-noisy-8", "algo": "bc", "seed": 904_000, "demos": "door:noise=0.6",
         "episodes": 8, "bc_steps": 1000},
        {"name": "bc-aim1noisy-40", "algo": "bc", "seed": 906_000,
         "demos": "door:error=0.01,noise=0.3", "episodes": 40, "bc_steps": 3000},
        {"name": "bc-pullerr-30", "algo": "bc", "seed": 907_000,
         "demos": "door:pull_error=1.2,noise=0.3", "episodes": 30, "bc_steps": 2000},
        {"name": "bc-giveup-30", "algo": "bc", "seed": 908_000,
         "demos": "door:give_up_prob=1,noise=0.3", "episodes": 30, "bc_steps": 2000},
        {"name": "ppo-bc", "algo": "ppo", "seed": 910_000, "demos": "door:noise=0.3",
         "episodes": 20, "bc_steps": 2000,
         "ppo": {"n_steps": 1024, "batch_size": 128, "learning_rate": 1e-4},
         "save_at": (0, 2048, 6144)},
        {"name": "ppo", "algo": "ppo", "seed": 911_000, "ppo": {"n_steps": 1024, "batch_size": 128},
         "save_at": (4096,)},
    ),
}
