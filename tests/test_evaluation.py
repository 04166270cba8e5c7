"""``wmgym eval``, ``wmgym card`` and ``wmgym demo`` on a tiny checkpoint and recorded episodes."""

import json
from pathlib import Path

import numpy as np
import pytest

from wmgym.card import CardArgs, card_main, probe_lines, render_card
from wmgym.demo import DemoArgs, demo_main
from wmgym.evaluation import EvalArgs, eval_main, evaluate, format_table

DATA = Path(__file__).parent / "data" / "heldout_pick"  # 4 real Sim-Pick-v0 episodes


@pytest.fixture(scope="module")
def metrics(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    result = eval_main(EvalArgs(data=str(DATA), checkpoint=str(ckpt), split="all", horizon=4,
                                device="cpu", out=str(out)))
    return result, out


def test_eval_writes_metrics_plot_and_gif(metrics):
    result, out = metrics
    assert json.loads((out / "metrics.json").read_text()) == result
    assert (out / "horizon.png").stat().st_size > 0 and (out / "rollout.gif").stat().st_size > 0
    assert result["task"] == "Pick" and result["episodes"] == 4 and result["steps"] == 4
    assert result["fast"] == "default" and result["decoder"] == "full"  # no distilled one here
    ol = result["open_loop"]
    assert set(ol["rgb_psnr"]) == {"h1", "mean"} and ol["rgb_psnr"]["mean"] > 0
    assert {"eef_err_m", "cube_err_m"} <= set(ol)  # the spec's named positions
    assert 0.0 <= ol["success_acc"]["mean"] <= 1.0
    assert 0.0 <= ol["success_acc_head"]["mean"] <= 1.0
    assert "| cube_err_m | – |" in format_table(result)


def test_eval_is_seeded(ckpt, metrics):
    args = EvalArgs(data=str(DATA), checkpoint=str(ckpt), split="all", horizon=4, device="cpu")
    again = evaluate(args)
    assert again["open_loop"] == metrics[0]["open_loop"]  # the same rollouts, bit for bit
    other = evaluate(EvalArgs(**{**args.__dict__, "seed": 1}))
    assert other["open_loop"] != again["open_loop"]


def test_card_renders_the_evaluation(ckpt, metrics, tmp_path):
    _, out = metrics
    probes = {"action_probe": {"starts": 2, "per_pattern_eef_err_m": {"hold": 0.01},
                               "eef_err_m": {"h1": 0.01}, "false_success": 0.0,
                               "move_ratio": 1.0}}
    (tmp_path / "probes.json").write_text(json.dumps(probes))
    (tmp_path / "notes.md").write_text("## Measured elsewhere\nnotes\n")
    args = CardArgs(checkpoint=str(ckpt), eval=str(out / "metrics.json"),
                    data=(str(DATA), str(DATA)), notes=str(tmp_path / "notes.md"),
                    probes=str(tmp_path / "probes.json"), out=str(tmp_path / "card.md"))
    card = render_card(args)
    assert card.startswith("# WM-Pick-v0 — model card") and "`Sim-Pick-v0`" in card
    assert card.count(f"`{DATA}`: 4 episodes") == 2 and "| open loop h1 |" in card
    assert "Action probes (2 real starts x 1 constant actions)" in card
    assert card.endswith("## Measured elsewhere\nnotes\n") and "Fast decoder" not in card
    assert card_main(args).read_text() == card
    assert probe_lines({}) == ""


def test_a_regenerated_card_keeps_its_hand_written_notes_once(ckpt, metrics, tmp_path):
    import shutil

    from wmgym.card import HAND_WRITTEN

    _, out = metrics
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    notes = f"{HAND_WRITTEN}\n\n## Against the real twin\nmeasured by hand\n"
    (copy / "card.md").write_text("# an older generated part\n\n" + notes)
    args = CardArgs(checkpoint=str(copy), eval=str(out / "metrics.json"),
                    out=str(copy / "card.md"))
    card = card_main(args).read_text()
    assert card.endswith(notes) and card.count(HAND_WRITTEN) == 1
    assert "older generated part" not in card
    assert card_main(args).read_text() == card  # regenerating changes nothing


def test_demo_runs_both_twins(ckpt, tmp_path):
    mean = demo_main(DemoArgs(task="pick", checkpoint=str(ckpt), steps=3, device="cpu",
                              out=str(tmp_path / "demo.gif")))
    assert (tmp_path / "demo.gif").stat().st_size > 0
    assert {"psnr", "mask_iou", "eef_err_m", "cube_err_m", "success_agree"} <= set(mean)
    assert np.isfinite(mean["psnr"])
