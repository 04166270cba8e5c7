"""``wmgym recipe`` end to end on a second task's spec with tiny budgets, then resumed.

``tests/data/specs/pickpose.toml`` carries a ``[recipe]`` of a few episodes and a few steps per
stage, so every stage (collect, tokenizer, dynamics, fast parts, eval, sweep, card) runs for
real in about a minute, and the spec's ``WM-PickPose-v0`` then loads the shipped checkpoint.
"""

import json
import time
from pathlib import Path

import gymnasium as gym
import pytest

from wmgym.recipe import RecipeArgs, recipe_plan, run_recipe
from wmgym.spec import load_spec, read_spec

SPEC = Path(__file__).parent / "data" / "specs" / "pickpose.toml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped(home, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    record = run_recipe(RecipeArgs(spec="pickpose", out=str(out), workers=1, device="cpu",
                                   ship=True))
    return out, record


def test_every_stage_runs_and_ships(home, shipped):
    out, record = shipped
    plan = [s.name for s in recipe_plan(load_spec("pickpose"), out)]
    assert plan == ["collect:play", "collect:play_state", "tokenizer", "dynamics", "decoder",
                    "fast_dynamics", "eval", "sweep", "card"]  # no state model in this spec
    assert list(record["stages"]) == plan
    assert json.loads((out / "recipe.json").read_text())["stages"].keys() == set(plan)
    card = (home / "checkpoints" / "WM-PickPose-v0" / "card.md").read_text()
    assert "`wmgym recipe` stages (min)" in card and "## Scripted sweep" in card
    from wmgym.registration import register_all

    register_all()
    env = gym.make("WM-PickPose-v0", device="cpu")
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (12,)
    env.close()


def test_a_second_run_resumes_and_reruns_what_changed(home, shipped, capsys):
    out, record = shipped
    again = run_recipe(RecipeArgs(spec="pickpose", out=str(out), workers=1, device="cpu",
                                  until="dynamics"))
    assert again["stages"] == record["stages"]  # nothing ran: every option unchanged
    assert "tokenizer: done" in capsys.readouterr().out
    rerun = run_recipe(RecipeArgs(spec="pickpose", out=str(out), workers=1, device="cpu",
                                  from_stage="eval", until="eval"))
    assert rerun["stages"]["dynamics"] == record["stages"]["dynamics"]
    assert set(rerun["stages"]) == set(record["stages"]) - {"sweep", "card"}
    # a dynamics run cut off part way goes on from its own checkpoint
    saved = json.loads((out / "recipe.json").read_text())
    saved["stages"]["dynamics"] = {"options": saved["stages"]["dynamics"]["options"],
                                   "started": True, "elapsed": 1000.0}
    (out / "recipe.json").write_text(json.dumps(saved))
    capsys.readouterr()
    resumed = run_recipe(RecipeArgs(spec="pickpose", out=str(out), workers=1, device="cpu",
                                    until="dynamics"))
    assert "dynamics resumed" in capsys.readouterr().out
    assert "seconds" in resumed["stages"]["dynamics"] and "eval" not in resumed["stages"]
    assert resumed["stages"]["dynamics"]["seconds"] >= 1000.0  # the time before the cut counts


def test_a_stage_cut_off_records_how_long_it_ran(home, shipped, monkeypatch):
    out, _ = shipped
    from wmgym import recipe

    def cut_off(stage, *, resume=False):
        if stage.name == "eval":
            time.sleep(0.2)
            raise KeyboardInterrupt
        return real_run(stage, resume=resume)

    real_run = recipe.Stage.run
    monkeypatch.setattr(recipe.Stage, "run", cut_off)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(RecipeArgs(spec="pickpose", out=str(out), workers=1, device="cpu",
                              from_stage="eval", until="eval"))
    entry = json.loads((out / "recipe.json").read_text())["stages"]["eval"]
    assert "seconds" not in entry and entry["elapsed"] >= 0.2


def test_bad_recipe_tables_name_the_problem(tmp_path):
    text = SPEC.read_text().replace("[recipe.sweep]", "[recipe.sweep]\nbogus = 1")
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ValueError, match=r"\[recipe.sweep\]: unknown options \['bogus'\]"):
        recipe_plan(read_spec(tmp_path / "bad.toml"), tmp_path)
    text = SPEC.read_text().replace("[recipe.eval]", "[recipe.eval]\ndata = 'x'")
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ValueError, match="set by the recipe itself"):
        recipe_plan(read_spec(tmp_path / "bad.toml"), tmp_path)


def _spec_with_agents(tmp_path: Path, extra: str = "", agents: str = "") -> Path:
    """Door's spec, whose recipe then also builds a sibling family and collects its rollouts."""
    text = (Path(__file__).parents[1] / "envs" / "door.toml").read_text()
    assert "[recipe.agents]" not in text
    text += ('\n[[recipe.data]]\nname = "agents"\npolicy = "agents"\nepisodes = 100\n'
             f'seed = 850000\nimages = false\n{extra}\n[recipe.agents]\n{agents}\n')
    (tmp_path / "door.toml").write_text(text)
    return tmp_path / "door.toml"


def test_agents_stage_feeds_the_state_model_their_rollouts(tmp_path):
    out = tmp_path / "out"
    plan = recipe_plan(read_spec(_spec_with_agents(tmp_path, agents='only = ["ppo"]')), out)
    names = [s.name for s in plan]
    assert names[names.index("dynamics"):names.index("state_model") + 1] == [
        "dynamics", "agents", "collect:agents", "state_model"]
    stages = {s.name: s for s in plan}
    agents = stages["agents"]
    assert agents.args.seed_offset == -100_000 and agents.args.only == ["ppo"]
    assert agents.args.out == str(out / "agents") and agents.args.rebuild  # a new build starts over
    assert agents.resumed == {"rebuild": False}  # a cut-off one keeps the agents it froze
    rollouts = stages["collect:agents"].args
    assert rollouts.policy == f"family:{out / 'agents'}" and not rollouts.images
    assert str(out / "data" / "agents") in stages["state_model"].args.data
    assert str(out / "data" / "agents") not in stages["dynamics"].args.extra_data


def test_agents_rollouts_need_a_sibling_family_and_no_images(tmp_path):
    with pytest.raises(ValueError, match="sibling"):
        recipe_plan(read_spec(_spec_with_agents(tmp_path, agents="seed_offset = 0")),
                    tmp_path)
    spec = _spec_with_agents(tmp_path)
    text = spec.read_text()
    spec.write_text(text.replace("seed = 850000\nimages = false", "seed = 850000"))
    with pytest.raises(ValueError, match="images = false"):
        recipe_plan(read_spec(spec), tmp_path)
    spec.write_text(text.replace("[recipe.agents]", ""))
    with pytest.raises(ValueError, match=r"no \[recipe.agents\]"):
        recipe_plan(read_spec(spec), tmp_path)
