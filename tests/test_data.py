"""Collection and the dataset format: parallel, atomic, read back exactly."""

import numpy as np
import pytest
import torch

from wmgym.data.collect import CollectArgs, choose_policy, collect
from wmgym.data.dataset import heldout_ids, read_dataset, read_metadata, stored_space, write_dataset
from wmgym.policies import make_policy
from wmgym.spec import load_spec
from wmgym.tasks.pick import MIXES


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pick"
    summary = collect(CollectArgs(task="pick", out=str(out), episodes=4, workers=2, max_steps=12,
                                  seed=5))
    return out, summary


def test_collect_summary_and_metadata(small_dataset):
    out, summary = small_dataset
    assert summary["episodes"] == 4 and summary["steps"] == 4 * 12
    assert sum(r["episodes"] for r in summary["per_policy"].values()) == 4
    meta = read_metadata(out)
    assert meta["total_episodes"] == 4 and meta["task"] == "Pick"
    assert meta["heldout"] == heldout_ids(4, 0.1, 5)
    assert not list(out.parent.glob(".pick.tmp-*")), "temporary directory left behind"


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_every_mix_policy_is_valid_and_drawn(mix):
    weights = MIXES[mix]
    assert abs(sum(weights.values()) - 1.0) < 1e-9, f"{mix}: weights sum to {sum(weights.values())}"
    for name in weights:
        make_policy(name, task="pick")  # raises on an unknown policy or knob
    drawn = {choose_policy(mix, s, MIXES) for s in range(400)}
    assert drawn == set(weights), f"{mix}: never drew {set(weights) - drawn}"


def test_episodes_are_in_the_spaces_and_ordered(small_dataset):
    out, _ = small_dataset
    spec = load_spec("pick")
    episodes = read_dataset(out)
    assert [e.seed for e in episodes] == [5, 6, 7, 8]
    assert [e.policy for e in episodes] == [choose_policy("mix", s, MIXES) for s in (5, 6, 7, 8)]
    space = stored_space(spec)
    for ep in episodes:
        assert len(ep.actions) == 12 and ep.truncations[-1] and not ep.truncations[:-1].any()
        for t in range(len(ep) + 1):
            assert space.contains({k: v[t] for k, v in ep.observations.items()})
    train, held = read_dataset(out, "train"), read_dataset(out, "heldout")
    assert len(train) + len(held) == 4 and len(held) >= 1


def test_write_read_round_trip_is_exact(small_dataset, tmp_path):
    out, _ = small_dataset
    episodes = read_dataset(out)
    copy = write_dataset(tmp_path / "copy", episodes, load_spec("pick"), split_seed=5)
    again = read_dataset(copy)
    for a, b in zip(episodes, again):
        for k in a.observations:
            np.testing.assert_array_equal(a.observations[k], b.observations[k])
            assert a.observations[k].dtype == b.observations[k].dtype
        for f in ("actions", "rewards", "terminations", "truncations", "success"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert (a.seed, a.policy) == (b.seed, b.policy)


def test_existing_dataset_is_not_overwritten(small_dataset):
    out, _ = small_dataset
    before = (out / "episodes.hdf5").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_dataset(out, [], load_spec("pick"))
    assert (out / "episodes.hdf5").read_bytes() == before


def test_failed_write_leaves_nothing(tmp_path):
    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "x", [Broken()], load_spec("pick"))
    assert list(tmp_path.iterdir()) == []


def _tokenized(closing_at: int | None, steps: int = 60, stride: int = 20):
    """A synthetic tokenized episode whose gripper closes from ``closing_at`` on (tokens = frame
    index, so a clip's frames can be read off its tokens)."""
    from wmgym.model.event_latent import first_run
    from wmgym.train.data import EpisodeTensors, TokenizedEpisode

    actions = torch.full((steps, 4), -1.0)
    if closing_at is not None:
        actions[closing_at - 5, 3] = 1.0  # one flick is no grasp
        actions[closing_at:, 3] = 1.0
    source = EpisodeTensors(torch.zeros(steps + 1, 5, 2, 2), actions, torch.zeros(steps),
                            torch.zeros(steps), torch.zeros(steps + 1, 8))
    source.event_start = first_run(actions.numpy(), trigger=3, run=3)
    ctx = list(range(0, steps, stride))
    frames = [torch.arange(c + 1, steps + 1)[:, None].repeat(1, 2) for c in ctx]
    return TokenizedEpisode(ctx, torch.zeros(len(ctx), 4, dtype=torch.long), frames, source)


def test_grasp_clips_start_just_before_the_grasp():
    from wmgym.train.data import sample_clips

    grasp, plain = _tokenized(closing_at=37), _tokenized(closing_at=None)
    assert grasp.source.event_start == 37 and plain.source.event_start is None
    length = 8
    clips = sample_clips([grasp, plain], 64, length, np.random.default_rng(0), event_share=1.0)
    first = clips["tokens"][:, 0, 0].numpy()  # absolute index of each clip's first frame
    assert np.all((first >= 37 + 1 - length // 2) & (first <= 37))  # 1-4 frames before it
    assert np.all(clips["actions"][:, :, 3].max(1).values.numpy() == 1.0)  # the grasp is in it
    # the context is the latest one before the clip; the gap flag says whether it follows it
    assert np.all(clips["gap"].numpy() == (first != 21))
    # a share of 0 draws exactly as the sampler always did
    a = sample_clips([grasp, plain], 16, length, np.random.default_rng(1))
    b = sample_clips([grasp, plain], 16, length, np.random.default_rng(1), event_share=0.0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    mixed = sample_clips([grasp, plain], 400, length, np.random.default_rng(2), event_share=0.5)
    near = (mixed["actions"][:, :, 3].max(1).values == 1.0).float().mean().item()
    assert 0.5 < near < 0.9  # the grasp clips, plus uniform ones that happen to hold it
