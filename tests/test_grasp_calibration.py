"""`wmgym train grasp-calibration`: the fast transformer's grasp head refitted on the states it
is given in imagination, labelled by how the real episodes' grasps ended."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmgym.data.dataset import Episode, write_dataset
from wmgym.env import clear_cache
from wmgym.env.testing import make_tiny_checkpoint, synthetic_start_obs
from wmgym.model.checkpoint import read_config
from wmgym.model.fast_dynamics import SUBDIR, load_fast_dynamics
from wmgym.model.grasp_latent import CLOSING_RUN
from wmgym.spec import CUBE_POS, load_spec
from wmgym.train.fast_dynamics import TrainFastDynamicsArgs, train_fast_dynamics
from wmgym.train.grasp_calibration import (
    GraspCalibrationArgs,
    _FirstDraw,
    calibrate_grasp_head,
    first_grasp,
)

SPEC = load_spec("pick")
T = 10


def grasp_episode(i: int, held: bool) -> Episode:
    """A recorded episode whose one grasp (steps 2-7 closing) lifts the cube or not."""
    obs = synthetic_start_obs(SPEC, T + 1, seed=i)
    obs["state"][:, CUBE_POS.start + 2] = SPEC.success_cube_z - 0.02
    if held:
        obs["state"][5:, CUBE_POS.start + 2] = SPEC.success_cube_z + 0.05
    actions = np.zeros((T, 4), np.float32)
    actions[:, 3] = -1.0
    actions[2:8, 3] = 1.0
    return Episode(obs, actions, np.zeros(T, np.float32), np.zeros(T, bool), np.zeros(T, bool),
                   np.zeros(T, bool), seed=100 + i, policy="random:repeat=4")


def test_first_grasp_reads_the_real_outcome():
    held, slipped = grasp_episode(0, True), grasp_episode(1, False)
    lift = float(SPEC.success_cube_z)
    for episode, outcome in ((held, True), (slipped, False)):
        cube_z = episode.observations["state"][:, CUBE_POS][:, 2]
        # closing from step 2: the bit is drawn at the third closing command
        assert first_grasp(episode.actions, cube_z, lift) == (2 + CLOSING_RUN - 1, outcome)
    never = np.zeros((T, 4), np.float32)
    assert first_grasp(never, np.zeros(T + 1), lift) is None


def test_first_draw_takes_the_state_before_the_third_closing_command():
    draws = _FirstDraw(2)
    grip = [[1, 1], [1, -1], [1, 1], [1, 1], [-1, 1], [1, 1], [1, 1], [1, 1]]
    for t, g in enumerate(grip):
        obs = {"state": np.full((2, 8), float(t), np.float32)}
        actions = np.zeros((2, 4), np.float32)
        actions[:, 3] = g
        draws(obs, actions, np.array([True, t < 3]))
    # env 0: closes at steps 0, 1, 2 (first grasp; the later one is ignored); env 1 closes at
    # steps 2-5 but stops counting after step 2, so it never draws
    assert draws.state[0][0] == CLOSING_RUN - 1 and draws.state[1] is None


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("grasp_calibration")
    ckpt = make_tiny_checkpoint(root / "WM-Pick-v0", grasp_latent=True)
    train_fast_dynamics(TrainFastDynamicsArgs(
        checkpoint=str(ckpt), rollouts=6, horizon=6, heldout=2, steps=2, batch=2,
        policies=("random:repeat=4",), eval_windows=4, out=str(root / "run"), device="cpu"))
    before = load_fast_dynamics(ckpt)
    data = write_dataset(root / "data", [grasp_episode(i, i % 2 == 0) for i in range(16)], SPEC)
    report = calibrate_grasp_head(GraspCalibrationArgs(
        checkpoint=str(ckpt), data=(str(data),), split="all", samples=3, max_steps=8, batch=64,
        steps=100, device="cpu", out=str(root / "cal")))
    return ckpt, before, report


def test_calibration_fits_the_head_alone(calibrated):
    ckpt, before, report = calibrated
    after = load_fast_dynamics(ckpt)
    changed = {name for name, p in after.named_parameters()
               if not torch.equal(p, dict(before.named_parameters())[name])}
    assert changed and all(name.startswith("grasp_head.") for name in changed)
    assert report["episodes"] == 16 and 10 <= report["draws"] <= 48
    # fitted on these pairs, the head explains them better than the head fitted on real states
    assert report["after"]["log_loss"] < report["before"]["log_loss"]
    assert 0 <= report["fit"]["heldout_accuracy"] <= 1


def test_calibrated_student_keeps_its_distillation_and_runs(calibrated):
    ckpt, _, report = calibrated
    config = read_config(ckpt / SUBDIR)
    assert "distill" in config and config["grasp_calibration"]["draws"] == report["draws"]
    assert config["teacher_sha256"] == read_config(ckpt)["sha256"]
    clear_cache()
    env = gym.make("WM-Pick-v0", checkpoint=str(ckpt), dynamics="fast", images=False)
    obs, _ = env.reset(seed=0)
    for _ in range(4):
        obs, *_ = env.step(env.action_space.sample())
    assert np.isfinite(obs["state"]).all()
    env.close()


def test_calibration_refuses_a_student_without_the_latent(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "WM-Pick-v0")
    train_fast_dynamics(TrainFastDynamicsArgs(
        checkpoint=str(ckpt), rollouts=4, horizon=4, heldout=1, steps=1, batch=2,
        policies=("random",), eval_windows=2, out=str(tmp_path / "run"), device="cpu"))
    with pytest.raises(ValueError, match="no grasp latent"):
        calibrate_grasp_head(GraspCalibrationArgs(checkpoint=str(ckpt), device="cpu"))


def test_resumed_distillation_keeps_the_calibrated_head(calibrated, tmp_path):
    ckpt, _, report = calibrated
    head = {k: v.clone() for k, v in load_fast_dynamics(ckpt).grasp_head.state_dict().items()}
    train_fast_dynamics(TrainFastDynamicsArgs(
        checkpoint=str(ckpt), rollouts=6, horizon=6, heldout=2, steps=2, batch=2, resume=True,
        policies=("random:repeat=4",), eval_windows=4, out=str(tmp_path), device="cpu"))
    after = load_fast_dynamics(ckpt).grasp_head.state_dict()
    assert all(torch.equal(head[k], after[k]) for k in head)
    config = read_config(ckpt / SUBDIR)
    assert config["grasp_calibration"]["after"] == report["after"]
    assert "resumed_from" in config["distill"]


def test_card_says_how_the_head_was_refitted(calibrated):
    from wmgym.card import CardArgs, fast_dynamics_section

    _, _, report = calibrated
    text = fast_dynamics_section(CardArgs(checkpoint=str(calibrated[0])))
    assert f"refitted on its own states at {report['draws']} grasp starts" in text
    p = report["before"]["mean_p_hold"], report["after"]["mean_p_hold"]
    assert f"Mean p(hold) {p[0]:.2f} → {p[1]:.2f}" in text


def test_init_from_takes_the_grasp_head_from_the_teacher(calibrated, tmp_path):
    # the other student's head was refitted for its own weights: a new student gets its
    # teacher's head, and everything distilled from the other student
    from wmgym.model.fast_dynamics import init_student_from
    from wmgym.model.world_model import WorldModel

    ckpt, _, _ = calibrated
    teacher = WorldModel.load(make_tiny_checkpoint(tmp_path / "wm", grasp_latent=True)).dynamics
    previous = load_fast_dynamics(ckpt)
    student, fresh = init_student_from(teacher, previous)
    theirs, own = teacher.state_dict(), previous.state_dict()
    for name, value in student.state_dict().items():
        expected = theirs if name.startswith("grasp_head.") else own
        if name in dict(student.named_parameters()):
            assert torch.equal(value, expected[name]), name
    assert sorted(fresh) == sorted(n for n in own if n.startswith("grasp_head."))
