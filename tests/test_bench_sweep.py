"""``wmgym bench speed`` and ``wmgym sweep``: metrics on hand-made inputs, tiny end-to-end runs.

Speed numbers are never asserted (only that they exist and are positive).
"""

import cProfile
import json
import math
import os
import pstats
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import tyro

from wmgym import metrics, policy_sources
from wmgym import sweep as sw
from wmgym.bench import BenchSpeedArgs, bench_speed_main, format_speed_table, time_env
from wmgym.cli import COMMANDS
from wmgym.env.testing import make_tiny_checkpoint, synthetic_start_obs
from wmgym.policies import PlayPolicy, RandomPolicy, make_policy, reads_images
from wmgym.profiling import top_functions
from wmgym.spec import load_spec
from wmgym.tasks.pick import ScriptedPick

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint whose episodes end about one step in four (ragged episode ends)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("wm") / "tiny", success_bias=0.0,
                                task="pick")


# ----------------------------------------------------------------------------- metrics


def test_pearson_and_spearman_on_hand_made_lists():
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.spearman([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone
    assert metrics.pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1.0
    assert math.isnan(metrics.pearson([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))  # constant: undefined
    np.testing.assert_allclose(metrics.ranks([0.2, 0.0, 0.2, 1.0]), [2.5, 1.0, 2.5, 4.0])


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 12) / 4, rng.integers(0, 5, 12) / 4  # many ties, like rates
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


def test_mmrv_perfect_ranking_is_zero():
    real = [0.0, 0.3, 0.6, 1.0]
    assert metrics.mmrv(real, real) == 0.0
    assert metrics.mmrv(real, [0.1, 0.2, 0.5, 0.6]) == 0.0  # biased but same order: no violation
    assert metrics.mmrv([0.2, 0.8], [0.0, 0.1]) == 0.0  # a perfectly ranked pair


def test_mmrv_rank_violation():
    # imagination swaps policies 0 and 1 (real margin 0.3) and ranks 2 correctly
    real, imagined = [0.2, 0.5, 1.0], [0.6, 0.4, 0.9]
    # violations: policy 0: |0.2 - 0.5| = 0.3; policy 1: 0.3; policy 2: none -> 0.6 / 3
    assert metrics.mmrv(real, imagined) == pytest.approx(0.2)
    # a full reversal: each policy's worst violation is its largest real margin
    assert metrics.mmrv([0.0, 0.5, 1.0], [1.0, 0.5, 0.0]) == pytest.approx((1.0 + 0.5 + 1.0) / 3)


def test_mmrv_ties_strict_vs_sign():
    # imagination ties two policies that differ by 0.4 in reality
    real, imagined = [0.1, 0.5], [0.3, 0.3]
    assert metrics.mmrv(real, imagined) == pytest.approx(0.2)  # SIMPLER's code: counted once
    assert metrics.mmrv(real, imagined, strict=False) == pytest.approx(0.4)  # signs: for both


def test_agreement_and_bad_inputs():
    m = metrics.agreement([0.0, 0.5, 1.0], [0.1, 0.4, 0.9])
    assert m["pearson"] > 0.98 and m["spearman"] == 1.0 and m["mmrv"] == 0.0
    assert m["mean_abs_gap"] == pytest.approx(0.1)
    assert metrics.agreement([0.5, 0.5], [0.1, 0.9])["pearson"] is None  # NaN -> JSON null
    with pytest.raises(ValueError, match="equally long"):
        metrics.mmrv([0.1, 0.2], [0.1])


# ----------------------------------------------------------------------------- policies


def test_policy_factory_kinds():
    state = {"state": np.zeros(8, np.float32)}
    for source in ("pick:error=0.02", "random:repeat=2", "wmgym.tasks.pick:ScriptedPick"):
        make = policy_sources.policy_factory(source, task="pick")
        a, b = make(), make()
        assert a is not b and a(state).shape == (4,)
    assert isinstance(policy_sources.policy_factory(ScriptedPick)(), ScriptedPick)  # a class
    instance = RandomPolicy(4, repeat=3)
    copy = policy_sources.policy_factory(instance)()  # an instance: one copy per episode
    assert isinstance(copy, RandomPolicy) and copy is not instance and copy.repeat == 3

    def fixed(obs):
        return np.ones(4, np.float32)

    assert policy_sources.policy_factory(fixed)()(state).tolist() == [1.0] * 4  # a plain function
    for bad in ("nope", "sac:", "no_such_module_xyz:thing", "pick:bogus=1", 3):
        with pytest.raises(ValueError):
            policy_sources.policy_factory(bad, task="pick")
    with pytest.raises(ValueError, match="task"):  # random play needs the task's action size
        policy_sources.policy_factory("random")


def test_play_reaches_hold_one_axis_with_the_trigger_pinned():
    """``play:pin=1,sparse=1``: the gripper (Pick's trigger, action 3) stays open; held actions
    move one arm axis; plain ``play`` replays as before (no extra draws)."""
    reach = make_policy("play:pin=1,sparse=1,hold=0.3", task="pick")
    reach.reset(seed=3)
    actions = np.array([reach({}) for _ in range(300)])
    assert (actions[:, 3] == -1.0).all()
    held = actions[1:][(actions[1:] == actions[:-1]).all(1)]  # repeated: a hold
    moving = held[np.abs(held[:, :3]).sum(1) > 0]
    assert len(moving) > 20 and ((moving[:, :3] != 0).sum(1) == 1).all()
    plain, again = make_policy("play", task="pick"), PlayPolicy(4)
    plain.reset(seed=5)
    again.reset(seed=5)
    np.testing.assert_array_equal([plain({}) for _ in range(50)], [again({}) for _ in range(50)])
    with pytest.raises(ValueError, match="sparse"):
        make_policy("play:sparse=2", task="pick")


@pytest.mark.parametrize("keys", [None, ["state"]])
def test_sb3_zip_policy(tmp_path, keys):
    from stable_baselines3 import PPO

    spec = load_spec("pick")

    class StateEnv(gym.Env):
        observation_space = spec.observation_space(images=False)
        if keys is None:
            observation_space = observation_space["state"]
        action_space = spec.action_space()

        def reset(self, *, seed=None, options=None):
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    policy = "MultiInputPolicy" if keys else "MlpPolicy"
    PPO(policy, StateEnv(), n_steps=8, batch_size=8, device="cpu").save(tmp_path / "m.zip")
    make = policy_sources.policy_factory(f"ppo:{tmp_path / 'm.zip'}")
    obs = {k: s.sample() for k, s in spec.observation_space().spaces.items()}
    action = make()(obs)  # the full observation dict: the adapter picks what the model knows
    assert action.shape == (4,) and action.dtype == np.float32
    assert np.array_equal(action, make()(obs))  # deterministic
    with pytest.raises(FileNotFoundError):
        policy_sources.policy_factory(f"sac:{tmp_path / 'missing.zip'}")()


def test_reads_images():
    assert not reads_images(ScriptedPick()) and not reads_images(RandomPolicy(4))
    assert reads_images(lambda obs: obs["state"][:4])  # undeclared: may read anything

    class Model:
        observation_space = load_spec("pick").observation_space(images=False)

    assert not reads_images(policy_sources.SB3Policy(Model()))
    Model.observation_space = load_spec("pick").observation_space()
    assert reads_images(policy_sources.SB3Policy(Model()))


# ----------------------------------------------------------------------------- episodes


class CountingPolicy(RandomPolicy):
    """Records how often each instance was called and the first observation it saw."""

    instances: list["CountingPolicy"] = []

    def __init__(self):
        super().__init__(4)
        self.calls, self.first = 0, None
        CountingPolicy.instances.append(self)

    def __call__(self, obs):
        self.calls += 1
        if self.first is None:
            self.first = {k: np.array(v) for k, v in obs.items()}
        return super().__call__(obs)


def test_run_imagined_one_episode_per_env(tiny):
    spec = load_spec("pick")
    starts = synthetic_start_obs(spec, 6, seed=1)
    contexts = [{k: v[i] for k, v in starts.items()} for i in range(6)]
    kwargs = {"seeds": [3, 1, 4, 1, 5, 9], "contexts": contexts, "max_steps": 12,
              "progress": False, "checkpoint": tiny, "device": "cpu"}
    CountingPolicy.instances = []
    out = sw.run_imagined(spec, [CountingPolicy] * 6, **kwargs)
    policies = CountingPolicy.instances
    assert len(policies) == 6 and len({id(p) for p in policies}) == 6
    assert [p.calls for p in policies] == out.length.tolist()  # stopped at its first done
    assert out.length.max() <= 12 and len(set(out.length.tolist())) > 1  # ragged ends
    assert out.success[out.length < 12].all()  # ended early = terminated on success
    assert (out.uncertainty > 0).all()  # mean token entropy of the imagined frames
    for p, c in zip(policies, contexts):  # every env started from its own real observation
        for k in c:
            np.testing.assert_array_equal(p.first[k], c[k])
    again = sw.run_imagined(spec, [CountingPolicy] * 6, **kwargs)
    for a, b in zip(out, again):  # seeded: the same episodes again
        np.testing.assert_array_equal(a, b)


def test_time_env_counts_sub_env_steps(tiny):
    envs = gym.make_vec("WM-Pick-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        checkpoint=tiny, device="cpu")
    assert time_env(envs, 3, warmup=1) > 0
    envs.close()


def test_top_functions_shares():
    def inner():
        return sum(i * i for i in range(20_000))

    def outer():
        return [inner() for _ in range(5)]

    profiler = cProfile.Profile()
    profiler.runcall(outer)
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # every function's own time
    top = top_functions(stats, total, n=3)
    assert top["cumulative"] == []  # no wmgym code ran
    assert len(top["self"]) == 3 and top["self"][0]["share"] >= top["self"][1]["share"]
    assert all(0 <= f["share"] <= 1 and f["calls"] >= 1 for f in top["self"])


# ----------------------------------------------------------------------------- commands


def test_commands_registered():
    assert COMMANDS[("bench", "speed")] == ("wmgym.bench", "BenchSpeedArgs", "bench_speed_main")
    assert COMMANDS[("sweep",)] == ("wmgym.sweep", "SweepArgs", "sweep_main")
    assert COMMANDS[("mbpo",)] == ("wmgym.mbpo_compare", "MBPOArgs", "mbpo_main")
    args = tyro.cli(sw.SweepArgs, args=["--task", "pick", "--policies", "pick", "random",
                                        "--episodes", "3", "--fast", "fast"])
    assert args.policies == ("pick", "random") and args.episodes == 3 and args.fast == "fast"
    assert sw.SweepArgs().out.startswith("runs/")  # never into a committed folder
    with pytest.raises(ValueError, match="name a task"):  # no task, no checkpoint
        sw.run_sweep(None, sw.SweepArgs())


@pytest.mark.slow
def test_bench_speed_writes_json(tmp_path):
    out = tmp_path / "speed.json"
    tiny = make_tiny_checkpoint(tmp_path / "tiny", success_bias=0.0, task="pick")
    args = BenchSpeedArgs(
        checkpoint=str(tiny),
        presets=("default", "fast", "full"),  # the tiny checkpoint has no fast transformer
        batch_sizes=(1, 4),
        steps=3,
        warmup=1,
        sim_steps=3,
        sim_workers=1,
        window_batch=2,
        window_steps=10,
        window_span=3,
        state_only_batches=(2,),
        paired_rounds=2,
        paired_batches=(1, 2),
        profile_batch=4,
        profile_steps=2,
        device="cpu",
        out=str(out),
    )
    bench_speed_main(args)
    result = json.loads(out.read_text())
    assert result["wm_env"] == "WM-Pick-v0"  # the checkpoint's own task
    assert {"machine", "wm", "sim", "window", "speedup", "profile"} <= set(result)
    assert result["presets"] == ["default", "full"]  # "fast" skipped: nothing to run it with
    assert [(row["preset"], row["batch"]) for row in result["wm"]] == [
        ("default", 1), ("default", 4), ("full", 1), ("full", 4)]
    assert {row["decoder"] for row in result["wm"]} == {"full"}  # no distilled decoder either
    assert set(result["speedup_by_preset"]) == {"default", "full"}
    for row in result["wm"]:
        assert row["steps_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["rss_added_mb"] >= 0
    assert result["sim"]["single_process"]["steps_per_s"] > 0
    parallel = result["sim"]["async_workers"]  # spawned AsyncVectorEnv workers (EGL)
    assert parallel["workers"] == 1 and parallel["steps_per_s"] > 0
    w = result["window"]
    assert w["early_ms_per_step"] > 0 and w["late_ms_per_step"] > 0
    assert w["early_steps"] == [1, 3] and w["full_steps"] == [5, 7] and w["late_steps"] == [8, 10]
    assert result["speedup"]["best_batch"] in (1, 4)
    assert result["speedup"]["vs_single_process"] > 0
    functions = result["profile"]["functions"]
    assert functions["cumulative"] and functions["self"] and result["profile"]["top_ops"]
    assert any("wmgym/env/vector_env.py:step" == f["function"] for f in functions["cumulative"])
    so = result["state_only"]
    assert so["sim"]["steps_per_s"] > 0 and [r["batch"] for r in so["wm"]] == [2]
    assert so["wm"][0]["steps_per_s"] > 0 and so["vs_single_process"] > 0
    paired = result["paired"]  # JSON keys: the batch sizes as strings
    for r in paired["rounds"]:
        assert list(r["wm_steps_per_s"]) == ["default", "full"]
        for c in ("default", "full"):
            by_batch = r["wm_steps_per_s"][c]
            assert sorted(by_batch) == ["1", "2"]
            best = by_batch[str(r["ratio"][c]["batch"])]
            assert best == max(by_batch.values())
            assert r["ratio"][c]["ratio"] == pytest.approx(best / r["sim_steps_per_s"], abs=0.01)
    for q in paired["by_preset"].values():
        assert q["min_ratio"] <= q["median_ratio"] <= q["max_ratio"]
    assert paired["median_ratio"] == paired["by_preset"][paired["best_preset"]]["median_ratio"]
    table = format_speed_table(result)
    assert "Median of the rounds' ratios by preset: default" in table
    assert "| WM-Pick-v0 (cpu) | full | 4 |" in table


@pytest.mark.slow
def test_sweep_writes_json_and_plot(tiny, tmp_path):
    args = sw.SweepArgs(
        task="pick",
        policies=("pick", "pick:error=0.05", "random"),
        episodes=2,
        max_steps=8,
        checkpoint=str(tiny),
        device="cpu",
        out=str(tmp_path),
        progress=False,
        workers=2,  # spawned Sim workers, one robosuite env each
    )
    result = sw.sweep_main(args)
    assert (tmp_path / "sweep.png").stat().st_size > 0
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["name"] for p in saved["policies"]] == list(args.policies)
    assert saved["seeds"] == [0, 1] and saved["max_steps"] == 8 and saved["fast"] == "default"
    real = [p["real"]["success"] for p in saved["policies"]]
    imagined = [p["imagined"]["success"] for p in saved["policies"]]
    for p in saved["policies"]:
        for twin in ("real", "imagined"):
            s = p[twin]
            assert 0 <= s["success"] <= 1 and 1 <= s["length"] <= 8
            assert s["success"] == pytest.approx(np.mean(s["per_episode"]["success"]), abs=1e-4)
        gap = p["imagined"]["success"] - p["real"]["success"]
        assert p["success_gap"] == pytest.approx(gap, abs=1e-4)
        assert p["imagined"]["uncertainty"] > 0 and "uncertainty" not in p["real"]
    m = saved["metrics"]["success"]
    assert m["mmrv"] == pytest.approx(metrics.mmrv(real, imagined), abs=1e-4)
    gap = np.mean(np.abs(np.subtract(real, imagined)))
    assert m["mean_abs_gap"] == pytest.approx(gap, abs=1e-4)  # rounded to 4 digits
    assert saved["metrics"] == json.loads(json.dumps(result["metrics"]))

    # re-scoring: the real episodes come from the saved sweep; only the imagined side runs, from
    # the same reset observations, so the result is the same
    again = sw.run_sweep(None, replace(args, real_from=str(tmp_path / "sweep.json")))
    for a, b in zip(again["policies"], saved["policies"]):
        assert a["imagined"] == b["imagined"] and a["success_gap"] == b["success_gap"]
        assert a["real"]["per_episode"] == b["real"]["per_episode"]
        assert a["real"]["return"] == pytest.approx(b["real"]["return"], abs=1e-3)
    mixed = sw.run_sweep(("random", "pick:noise=0.6"),
                         replace(args, real_from=str(tmp_path / "sweep.json"), workers=1))
    reused = saved["policies"][2]["real"]["per_episode"]
    assert mixed["policies"][0]["real"]["per_episode"] == reused
    assert mixed["policies"][1]["real"]["length"] >= 1
    with pytest.raises(ValueError, match="cannot reuse its real episodes"):
        sw.run_sweep(("random",), replace(args, real_from=str(tmp_path / "sweep.json"), seed=5))

    # pooling: the episodes of seeds 0-1 and 2-3, scored together
    later = replace(args, seed=2, workers=1, out=str(tmp_path / "later"))
    sw.sweep_main(later)
    files = [str(tmp_path / "sweep.json"), str(tmp_path / "later" / "sweep.json")]
    pooled = sw.sweep_main(replace(args, pool=tuple(files), out=str(tmp_path / "pooled")))
    assert pooled["episodes"] == 4 and pooled["seeds"] == [0, 1, 2, 3]
    assert (tmp_path / "pooled" / "sweep.png").stat().st_size > 0
    parts = [json.loads(Path(f).read_text())["policies"] for f in files]
    for i, p in enumerate(pooled["policies"]):
        for twin in ("real", "imagined"):
            both = [e for part in parts for e in part[i][twin]["per_episode"]["success"]]
            assert p[twin]["per_episode"]["success"] == both
            assert p[twin]["success"] == pytest.approx(np.mean(both), abs=1e-4)
    rates = [[p[t]["success"] for p in pooled["policies"]] for t in ("real", "imagined")]
    assert pooled["metrics"]["success"] == metrics.agreement(*rates)
    with pytest.raises(ValueError, match="seeds .* are in another file"):
        sw.pool_sweeps([files[0], files[0]])
    other = json.loads(Path(files[1]).read_text()) | {"fast": "fast"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other.json: fast is 'fast'"):
        sw.pool_sweeps([files[0], str(tmp_path / "other.json")])


@pytest.mark.slow
def test_sweep_state_only_runs_the_same_episodes(tiny, tmp_path):
    args = sw.SweepArgs(policies=("pick:error=0.03", "random"), episodes=2, max_steps=6,
                        checkpoint=str(tiny), device="cpu", progress=False, seed=3)
    fast = sw.run_sweep(None, args)  # state-only policies: no camera in either twin
    slow = sw.run_sweep(None, replace(args, images="always"))
    assert fast["images"] is False and slow["images"] is True
    assert fast["task"] == "Pick"  # the checkpoint's own task
    assert fast["policies"] == slow["policies"]  # the same episodes, outcome for outcome

    def stay(obs):  # declares nothing: it may read images, so both twins render them
        return np.zeros(4, np.float32)

    mixed = sw.run_sweep({"stay": stay, "random": "random"}, replace(args, episodes=1))
    assert mixed["images"] is True


@pytest.mark.slow
def test_example_runs(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    cmd = [sys.executable, str(REPO / "examples" / "policy_sweep.py"), "--episodes", "1",
           "--max-steps", "4", "--checkpoint", str(tiny), "--device", "cpu", "--out",
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "camera observations rendered: False" in proc.stdout  # declared state-only policies
    assert "MMRV" in proc.stdout
    assert (tmp_path / "sweep.json").exists() and (tmp_path / "sweep.png").exists()
