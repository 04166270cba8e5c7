"""The arm probe: its metrics on trajectories with known answers, and a short run of both twins."""

import json
from pathlib import Path

import numpy as np
import pytest

from wmgym.arm_probe import (
    MAGNITUDES,
    arm_axes,
    arm_probe,
    axis_travel_ratio,
    constant_patterns,
    format_arm_table,
    motion_gain,
    position_errors,
    smooth_actions,
)
from wmgym.card import CardArgs, render_card
from wmgym.evaluation import EvalArgs, evaluate
from wmgym.spec import load_spec

DATA = Path(__file__).parent / "data" / "heldout_pick"  # 4 real Sim-Pick-v0 episodes


def _line(steps: int = 20, step: float = 0.01, rollouts: int = 3) -> np.ndarray:
    """End effectors moving ``step`` metres per step along x, from different starts."""
    starts = np.random.default_rng(0).uniform(-0.1, 0.1, (rollouts, 1, 3))
    t = np.arange(steps + 1)[None, :, None]
    return starts + t * np.array([step, 0.0, 0.0])


def test_travel_ratio_of_known_trajectories():
    real = _line()
    doubled = real[:, :1] + 2 * (real - real[:, :1])
    assert axis_travel_ratio(real, doubled, 0) == pytest.approx(2.0)
    assert axis_travel_ratio(real, real + 0.03, 0) == pytest.approx(1.0)  # an offset is no travel
    backwards = real[:, :1] - (real - real[:, :1])
    assert axis_travel_ratio(real, backwards, 0) == pytest.approx(-1.0)
    assert np.isnan(axis_travel_ratio(real, doubled, 1))  # no real travel along y


def test_position_errors_and_motion_gain():
    real = _line()
    offset = real + np.array([0.003, 0.004, 0.0])
    np.testing.assert_allclose(position_errors(real, offset), 0.005)
    doubled = real[:, :1] + 2 * (real - real[:, :1])
    assert motion_gain(real, doubled) == pytest.approx(2.0)
    assert motion_gain(real, offset) == pytest.approx(1.0)
    # sideways motion as large as the real one adds nothing along it
    side = real + np.arange(21)[None, :, None] * np.array([0.0, 0.01, 0.0])
    assert motion_gain(real, side) == pytest.approx(1.0)
    assert np.isnan(motion_gain(np.zeros((2, 5, 3)), real[:2, :5]))


def test_smooth_actions_cover_magnitudes_and_are_smooth():
    a = smooth_actions(np.random.default_rng(0), 64, 50, 3)
    assert a.shape == (64, 50, 3) and a.dtype == np.float32
    assert a.min() >= -1.0 and a.max() <= 1.0
    peak = np.abs(a).max(axis=(1, 2))
    assert peak.min() < 0.1 and peak.max() > 0.9  # slow and fast episodes
    lag1 = np.corrcoef(a[:, 1:].ravel(), a[:, :-1].ravel())[0, 1]
    assert lag1 > 0.8  # neighbouring actions are close: smooth, not white noise
    np.testing.assert_array_equal(a, smooth_actions(np.random.default_rng(0), 64, 50, 3))


def test_patterns_come_from_the_spec():
    spec = load_spec("pick")
    assert arm_axes(spec) == [0, 1, 2]  # dx, dy, dz: every action but the event's trigger
    patterns = constant_patterns(spec)
    assert len(patterns) == 3 * len(MAGNITUDES) * 2
    assert (spec.event.trigger, 1.0, 1) not in patterns


@pytest.fixture(scope="module")
def probe(ckpt):
    return arm_probe("pick", checkpoint=ckpt, starts=2, horizon=3, random_horizon=5,
                     magnitudes=(0.1, 1.0))


def test_probe_reports_every_axis_and_magnitude(probe):
    rows = probe["constant"]
    assert {(r["axis"], r["magnitude"], r["sign"]) for r in rows} == {
        (axis, m, s) for axis in ("dx", "dy", "dz") for m in (0.1, 1.0) for s in (1, -1)}
    for r in rows:
        assert np.isfinite(r["travel_ratio"]) and r["eef_err_m"] >= 0
        assert r["real_travel_m"] * r["sign"] > 0  # the real arm moves the way it is told
    assert set(probe["random"]["eef_err_m"]) == {"h1", "h5"}
    assert np.isfinite(probe["random"]["travel_ratio"])
    assert isinstance(probe["passed"], bool) and probe["starts"] == 2
    json.dumps(probe, allow_nan=False)  # JSON-able, every number finite
    table = format_arm_table(probe)
    assert "| dz | 1 |" in table and "Random smooth actions (2 episodes × 5 steps" in table


def test_probe_is_seeded(ckpt, probe):
    again = arm_probe("pick", checkpoint=ckpt, starts=2, horizon=3, random_horizon=5,
                      magnitudes=(0.1, 1.0))
    assert again["constant"] == probe["constant"] and again["random"] == probe["random"]


def test_eval_runs_the_probe_and_the_card_shows_it(ckpt, tmp_path):
    result = evaluate(EvalArgs(data=str(DATA), checkpoint=str(ckpt), split="all", horizon=3,
                               device="cpu", arm_starts=1))
    arm = result["arm_probe"]
    assert arm["starts"] == 1 and arm["seeds"] == [700_000, 700_000]
    assert arm["horizon"] == 3 and arm["random"]["steps"] == 3  # capped by --horizon
    assert len(arm["constant"]) == 3 * len(MAGNITUDES) * 2
    (tmp_path / "metrics.json").write_text(json.dumps(result, default=str))
    card = render_card(CardArgs(checkpoint=str(ckpt), eval=str(tmp_path / "metrics.json")))
    assert "Arm probe (1 real start, each action held 3 steps" in card
    assert "| dy | 0.05 |" in card
