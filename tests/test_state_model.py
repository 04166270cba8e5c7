"""The state model: its files, its fit on real transitions, its place in imagination, and the
shipped one's accuracy on held-out real episodes."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmgym.data.collect import CollectArgs, collect
from wmgym.data.dataset import read_dataset
from wmgym.model import checkpoint as ckpt
from wmgym.model.event_latent import SUCCESS
from wmgym.model.state_model import (
    StateModel,
    StateModelConfig,
    has_state_model,
    load_state_model,
    save_state_model,
)
from wmgym.model.world_model import WorldModel
from wmgym.spec import load_spec
from wmgym.train.state_model import (
    TrainStateModelArgs,
    episode_events,
    fit_state_model,
    open_loop_errors,
    state_model_config,
    transitions,
)

HELDOUT = "tests/data/heldout_pick"
SPEC = load_spec("pick")
ARGS = TrainStateModelArgs(checkpoint="", data=())


def constant_model(move: list[float]) -> StateModel:
    """A state model that moves every field by ``move`` (real units) every step."""
    cfg = state_model_config(SPEC, ARGS)
    model = StateModel(cfg)
    last = model.mlp[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():  # displacements, then rest logits (moving: negative)
        last.bias.copy_(torch.cat([torch.tensor(move) / cfg.scale, -torch.ones(len(move))]))
    return model.eval()


def test_spec_declares_the_state_model():
    cfg = state_model_config(SPEC, ARGS)
    assert cfg.names == list(SPEC.state_fields) and cfg.fields == list(range(8))
    assert cfg.offsets == [[0, 5], [1, 6], [2, 7]] and cfg.event


def test_transitions_pad_the_past_with_rest_and_label_events():
    episodes = read_dataset(HELDOUT)
    cfg = StateModelConfig(state_dim=8, action_dim=4, fields=[0, 1, 2], history=2, event=True)
    data = transitions(episodes[:1], cfg, SPEC)
    s = episodes[0].observations["state"]
    assert len(data) == len(episodes[0].actions)
    assert torch.all(data.past[0] == 0)  # robosuite resets at rest
    np.testing.assert_allclose(data.past[2, 1].numpy(), s[2, :3] - s[1, :3], atol=1e-6)
    np.testing.assert_allclose(data.move[5].numpy(), s[6, :3] - s[5, :3], atol=1e-6)
    episode = episodes[0]
    episode.observations["state"][20:, 7] = 0.9  # the cube rises while the gripper is closed
    episode.actions[:, 3] = -1.0
    episode.actions[15:25, 3] = 1.0
    labels = episode_events(episode, SPEC)
    assert labels.tolist() == [0] * 17 + [SUCCESS] * 8 + [0] * 5  # from the 3rd command on


def test_save_load_roundtrip_and_corruption(tmp_path):
    model = constant_model([0.01, 0.0, -0.002, 0, 0, 0, 0, 0])
    save_state_model(tmp_path, model, {"report": {}})
    assert has_state_model(tmp_path)
    loaded = load_state_model(tmp_path)
    x = torch.randn(3, 8), torch.zeros(3, 2, 8), torch.zeros(3, 4), torch.tensor([0, 1, 2])
    torch.testing.assert_close(loaded(*x), model(*x))
    weights = tmp_path / "state_model" / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        load_state_model(tmp_path)


def test_fit_learns_the_arm_from_real_episodes(tmp_path):
    """Fitted on a little real play, the model beats standing still on other real episodes."""
    data = tmp_path / "play"
    collect(CollectArgs(task="pick", out=str(data), episodes=24, policy="play:low=0.3",
                        workers=1, seed=77, max_steps=50, images=False, heldout=0.125))
    model, report = fit_state_model(TrainStateModelArgs(
        checkpoint=str(tmp_path), data=(str(data),), steps=3000, batch=256, hidden=256, history=2,
        layers=2, out=str(tmp_path)))
    assert report["train_transitions"] + report["heldout_transitions"] == 24 * 50
    assert report["heldout_transitions"] == 150  # three whole episodes it never saw
    assert not has_state_model(tmp_path)  # fit_state_model only fits
    for field in ("eef_x", "eef_y", "eef_z"):
        assert report["one_step_mm"][field] < 0.5 * report["standing_still_mm"][field], report
    picks = read_dataset(HELDOUT)  # scripted picks and random actions
    errors = open_loop_errors(model, picks, SPEC)
    assert set(errors) == {"eef", "cube"} and set(errors["eef"]) == {"h1_mm", "h5_mm", "h20_mm"}


def test_imagination_steps_the_state_with_the_state_model(ckpt):
    """With a state model the state follows it, step after step."""
    move = [0.004, -0.002, 0.001, 0.0, 0.0, 0.0, 0.0, 0.0005]
    env = gym.make("WM-Pick-v0", checkpoint=str(ckpt), images=False, device="cpu")
    obs, _ = env.reset(seed=0)
    start = obs["state"].copy()
    env.unwrapped.core.model.with_state_model(constant_model(move))
    obs, _ = env.reset(seed=0)  # the model starts from the state the rollout starts from
    for k in range(1, 4):
        obs, *_ = env.step(np.zeros(4, np.float32))
        np.testing.assert_allclose(obs["state"], start + k * np.array(move), atol=1e-4)
    assert WorldModel.load(ckpt).state_model is None  # a checkpoint without one
    env.close()


def test_shipped_state_model_is_accurate_on_heldout_real_episodes():
    """The shipped state model on real episodes it never saw (tests/data/heldout_pick)."""
    checkpoint = SPEC.checkpoint
    if not has_state_model(checkpoint):
        pytest.skip("the shipped checkpoint has no state model")
    model = load_state_model(checkpoint)
    picks = read_dataset(HELDOUT)
    test = transitions(picks, model.cfg, SPEC)
    *inputs, move = test.rows(torch.arange(len(test)))
    with torch.no_grad():
        eef = float((model(*inputs) - move)[:, :3].norm(dim=-1).mean()) * 1000
    errors = open_loop_errors(model, picks, SPEC)
    report = json.loads((checkpoint / "state_model" / ckpt.CONFIG).read_text())["report"]
    assert eef < 1.0, eef  # mm per step
    assert errors["eef"]["h20_mm"] < 10.0 and errors["cube"]["h20_mm"] < 10.0, errors
    assert report["open_loop"]["eef"]["h20_mm"] < 10.0
