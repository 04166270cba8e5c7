"""The event latent: its labels, its steps in imagination, its head's fit, cache = training,
and the same mechanism on a second, made-up state and action layout."""

import numpy as np
import pytest
import torch
from test_model import dynamics_batch, randomize_actions, tiny_dynamics_config

from wmgym.model.event_latent import (
    FAILURE,
    MIN_WATCHED,
    NONE,
    SUCCESS,
    EventConfig,
    advance,
    event_labels,
    first_run,
)
from wmgym.model.kv_cache import KVCache
from wmgym.model.transformer import DynamicsTransformer
from wmgym.train.data import EpisodeTensors, TokenizedEpisode, sample_clips
from wmgym.train.event_head import fit_event_head, label_events

#: Pick's event: gripper (action 3) closed 3 steps; eef (0-2) to cube (5-7); fingers (3, 4);
#: the cube's height (7) above 0.84 m.
PICK = {"trigger": 3, "run": 3, "anchor": [0, 1, 2], "target": [5, 6, 7], "extra": [3, 4],
        "scale": 0.02, "outcome": 7, "above": 0.84}
CFG = EventConfig.from_dict(PICK)
RUN = CFG.run


def gripper(commands: str, dim: int = 4, trigger: int = 3) -> np.ndarray:
    """Actions whose trigger follows ``commands``: ``c`` on, ``o`` off."""
    a = np.zeros((len(commands), dim), np.float32)
    a[:, trigger] = [1.0 if c == "c" else -1.0 for c in commands]
    return a


def test_event_config_is_checked():
    assert CFG.n_features == 6 and CFG.anchor == (0, 1, 2) and CFG.as_config() == PICK
    with pytest.raises(ValueError, match="expected"):
        EventConfig.from_dict({**PICK, "lift": 1.0})
    with pytest.raises(ValueError, match="one length"):
        EventConfig.from_dict({**PICK, "target": [5, 6]})


def test_labels_mark_each_event_from_its_runth_command():
    #          flick  success      failure        cut off at the end
    commands = "occoo" "ccccc" "oo" "cccccc" "o" "cccc"
    z = np.full(len(commands) + 1, 0.82)
    z[9:11] = 0.9  # the outcome rises during the first event (frames after its actions 5..9)
    latent, starts = event_labels(gripper(commands), z, CFG)
    expected = np.zeros(len(commands), np.int64)
    expected[5 + RUN - 1:10] = SUCCESS
    expected[12 + RUN - 1:18] = FAILURE
    assert latent.tolist() == expected.tolist()  # the flick and the cut-off event: none
    assert np.flatnonzero(starts).tolist() == [7, 14]
    # an event that runs to the end without success fails once watched long enough
    long = "oo" + "c" * (RUN + MIN_WATCHED)
    latent, starts = event_labels(gripper(long), np.full(len(long) + 1, 0.82), CFG)
    assert set(latent[2 + RUN - 1:]) == {FAILURE} and starts.sum() == 1
    # one that succeeds before the episode ends succeeds, however short
    latent, _ = event_labels(gripper("occc"), np.array([0.82, 0.82, 0.83, 0.85, 0.86]), CFG)
    assert latent.tolist() == [NONE, NONE, NONE, SUCCESS]
    assert first_run(gripper("cocccc"), 3, RUN) == 2 and first_run(gripper("cco"), 3, RUN) is None


def test_advance_draws_once_per_event_and_forgets_it_when_released():
    run, latent = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    p = torch.tensor([0.9, 0.9])
    seen = []
    for t, c in enumerate("cccccoccc"):
        u = torch.tensor([0.5, 0.95]) if t == 2 else torch.tensor([0.95, 0.5])
        a = torch.tensor(gripper(c)).expand(2, 4)
        run, latent = advance(run, latent, a, p, u, CFG)
        seen.append(latent.tolist())
    assert seen[:2] == [[NONE, NONE]] * 2
    assert seen[2:5] == [[SUCCESS, FAILURE]] * 3  # drawn on the third command, kept while on
    assert seen[5:8] == [[NONE, NONE]] * 3  # released: gone; the next event is a new draw
    assert seen[8] == [FAILURE, SUCCESS]


def event_model(seed: int = 0, event: dict = PICK, **kw) -> DynamicsTransformer:
    torch.manual_seed(seed)
    cfg = tiny_dynamics_config(state_input=True, event=event, max_frames=8, **kw)
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    torch.nn.init.normal_(model.state_proj.weight, std=0.5)
    torch.nn.init.normal_(model.event_emb, std=1.0)
    return model


def test_the_event_needs_the_state():
    with pytest.raises(ValueError, match="needs state_input"):
        DynamicsTransformer(tiny_dynamics_config(event=PICK))


def cache_matches_training(model: DynamicsTransformer, trigger: int) -> None:
    """Imagination advances the latent from the actions and draws it from the head on the
    latest state; the teacher-forced pass given the same latent gives the same logits."""
    cfg, t = model.cfg, model.cfg.max_frames
    batch = dynamics_batch(cfg, 3, t, seed=5)
    ctx, frames, actions = batch["ctx_tokens"], batch["frame_tokens"], batch["actions"]
    actions[..., trigger] = torch.tensor(gripper("occcccoc", cfg.action_dim, trigger))[:, trigger]
    start = torch.randn(3, cfg.state_dim)
    with torch.no_grad():  # every event succeeds (teacher forcing takes the likelier outcome)
        model.event_head.mlp[-1].weight.zero_()
        model.event_head.mlp[-1].bias.fill_(5.0)
    cache = model.new_cache(3)
    model.prefill(cache, ctx)
    model.set_state(cache, start)
    logits, states, latents = [], [], []
    for i in range(t):
        lg, frame = model.teacher_force_frame(cache, actions[:, i], frames[:, i])
        logits.append(lg)
        states.append(frame.state)
        latents.append(cache.event.clone())
    latent = torch.stack(latents, 1)
    first = model.event_head.cfg.run  # on from step 1: drawn on the run-th command
    assert latent[0].tolist() == [NONE] * first + [SUCCESS] * (6 - first) + [NONE, NONE]
    prev = torch.cat([start[:, None], torch.stack(states, 1)[:, :-1]], 1)
    with torch.no_grad():
        full = model(ctx, frames, actions, prev_state=prev, event=latent)
        without = model(ctx, frames, actions, prev_state=prev)
    assert torch.allclose(torch.stack(logits, 1), full.logits, atol=1e-4)
    assert not torch.allclose(full.logits[:, first], without.logits[:, first], atol=1e-3)
    assert torch.allclose(full.logits[:, :first], without.logits[:, :first], atol=1e-5)


def test_the_latent_in_the_cache_matches_the_training_pass():
    cache_matches_training(event_model(), trigger=3)


def biased_rollouts(bias: float, n: int) -> tuple[DynamicsTransformer, KVCache, torch.Tensor]:
    """A model whose event head says ``sigmoid(bias)`` everywhere, ``n`` rollouts started."""
    model = event_model(1)
    with torch.no_grad():
        model.event_head.mlp[-1].weight.zero_()
        model.event_head.mlp[-1].bias.fill_(bias)
    ctx = dynamics_batch(model.cfg, n, 1, seed=2)["ctx_tokens"]
    cache = model.new_cache(n)
    model.prefill(cache, ctx)
    model.set_state(cache, torch.randn(n, model.cfg.state_dim))
    return model, cache, ctx


@pytest.mark.parametrize(("bias", "outcome"), [(8.0, SUCCESS), (-8.0, FAILURE)])
def test_sampled_events_follow_the_head(bias, outcome):
    model, cache, ctx = biased_rollouts(bias, 4)
    a = torch.tensor(gripper("c")).expand(4, 4)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    for _ in range(RUN):
        assert cache.event.tolist() == [NONE] * 4
        model.generate_frame(cache, a, generators=gens)
    assert cache.event.tolist() == [outcome] * 4
    model.prefill(cache, ctx[:1], index=torch.tensor([2]))  # a restart forgets the event
    assert cache.event.tolist() == [outcome, outcome, NONE, outcome]


@pytest.mark.parametrize("bias", [0.0, 1.5, -3.0])
def test_the_doubt_is_the_chance_of_the_other_outcome_where_an_event_begins(bias):
    model, cache, _ = biased_rollouts(bias, 2)
    p = torch.sigmoid(torch.tensor(bias)).item()
    doubts = []
    for code in "occcc":  # rollout 0 closes from step 1; rollout 1 stays open
        a = torch.from_numpy(gripper(code + "o"))
        model.generate_frame(cache, a)
        doubts.append(cache.event_doubt.tolist())
    begins = RUN  # step 0 is open: the RUN-th close in a row is step RUN
    for step, (closing, still) in enumerate(doubts):
        assert still == 0.0
        assert closing == pytest.approx(2 * p * (1 - p) if step == begins else 0.0, abs=1e-6)


def test_the_draw_is_per_rollout_reproducible():
    model = event_model(2)  # the head at its initialisation: p near one half
    cfg = model.cfg
    ctx = dynamics_batch(cfg, 6, 1, seed=3)["ctx_tokens"]
    a = torch.tensor(gripper("c")).expand(6, 4)

    def rollout(seeds):
        cache = model.new_cache(len(seeds))
        model.prefill(cache, ctx[: len(seeds)])
        model.set_state(cache, torch.zeros(len(seeds), cfg.state_dim))
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for _ in range(RUN):
            model.generate_frame(cache, a[: len(seeds)], generators=gens)
        return cache.event.tolist()

    draws = rollout(range(6))
    assert set(draws) == {SUCCESS, FAILURE}  # both outcomes among six rollouts
    assert rollout([3]) == [draws[3]] and rollout(range(6)) == draws


def synthetic_events(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States where events begin; they succeed when the anchor is within 1.5 cm of the target."""
    g = np.random.default_rng(seed)
    state = np.zeros((n, 8), np.float32)
    state[:, CFG.target] = [0.0, 0.0, 0.82]
    off = g.uniform(-0.04, 0.04, (n, 2))
    state[:, CFG.anchor] = np.c_[off, np.full(n, 0.83)]
    state[:, CFG.extra] = [0.03, -0.03]
    return torch.from_numpy(state), torch.from_numpy(np.linalg.norm(off, axis=1) < 0.015).float()


def test_the_head_learns_the_offset_that_decides_an_event():
    model = event_model()
    states, ok = synthetic_events(400, 0)
    model.set_state_normalization(states.mean(0), states.std(0).clamp_min(1e-3))
    fit = fit_event_head(model, states, ok, noise=0.05, steps=300)
    assert fit["events"] == 400 and 0.1 < fit["succeeded"] < 0.5
    assert fit["heldout_accuracy"] > 0.9 and fit["train_accuracy"] > 0.9
    fresh, truth = synthetic_events(200, 1)
    with torch.no_grad():
        p = torch.sigmoid(model.event_logit(model.normalize_state(fresh)))
    assert float(((p > 0.5).float() == truth).float().mean()) > 0.9
    with pytest.raises(ValueError, match="succeed and events that fail"):
        fit_event_head(model, states, torch.ones(400), noise=0.05)


def test_labelled_episodes_give_clips_their_latent():
    commands = "oo" + "c" * 8
    z = np.linspace(0.82, 0.9, len(commands) + 1).astype(np.float32)
    state = torch.zeros(len(commands) + 1, 8)
    state[:, CFG.outcome] = torch.from_numpy(z)
    ep = EpisodeTensors(torch.zeros(len(commands) + 1, 5, 2, 2), torch.from_numpy(
        gripper(commands)), torch.zeros(len(commands)), torch.zeros(len(commands)), state)
    states, ok = label_events([ep], CFG)
    assert ok.tolist() == [1.0] and torch.equal(states[0], state[2 + RUN - 1])
    te = TokenizedEpisode([0], torch.zeros(1, 6, dtype=torch.long),
                          [torch.zeros(len(commands), 4, dtype=torch.int16)], ep)
    clips = sample_clips([te], 4, len(commands), np.random.default_rng(0))
    starts = clips["actions"][:, 0, 3] < 0  # clips starting right after the context
    assert starts.any()
    assert clips["event"][starts][0].tolist() == ep.event.tolist()


# --------------------------------------------------------------- a second, made-up layout

#: A 10-D state (anchor at 7-8, target at 1-2, two extra fields at 4 and 9), a 7-D action
#: whose last dimension triggers; success when field 0 rises above 0.5.
OTHER = {"trigger": 6, "run": 2, "anchor": [7, 8], "target": [1, 2], "extra": [4, 9],
         "scale": 0.1, "outcome": 0, "above": 0.5}


def test_the_mechanism_on_another_state_and_action_layout():
    model = event_model(4, OTHER, action_dim=7, state_dim=10)
    head = model.event_head
    assert head.cfg.n_features == 2 + 1 + 2 and model.action_proj.in_features == 7
    # the features: (anchor - target) / scale, the norm of its leading axes, normalised extras
    model.set_state_normalization(torch.full((10,), 0.5), torch.full((10,), 2.0))
    raw = torch.arange(10.0)[None] / 10
    feats = head.features(model.normalize_state(raw), model.state_mean, model.state_std)
    offset = (raw[0, [7, 8]] - raw[0, [1, 2]]) / 0.1
    expected = torch.cat([offset, offset[:1].abs(), (raw[0, [4, 9]] - 0.5) / 2.0])
    assert torch.allclose(feats[0], expected, atol=1e-5)
    cache_matches_training(model, trigger=6)
    # only the trigger dimension starts an event; `run` commands in a row draw it
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.fill_(8.0)
    ctx = dynamics_batch(model.cfg, 2, 1, seed=2)["ctx_tokens"]
    cache = model.new_cache(2)
    model.prefill(cache, ctx)
    model.set_state(cache, torch.randn(2, 10))
    other_dims = torch.ones(2, 7)
    other_dims[:, 6] = -1.0
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for _ in range(3):
        model.generate_frame(cache, other_dims, generators=gens)
    assert cache.event.tolist() == [NONE, NONE]
    on = -torch.ones(2, 7)
    on[:, 6] = 1.0
    model.generate_frame(cache, on, generators=gens)
    assert cache.event.tolist() == [NONE, NONE]
    model.generate_frame(cache, on, generators=gens)
    assert cache.event.tolist() == [SUCCESS, SUCCESS]
    # labels read the outcome field of this layout
    latent, starts = event_labels(gripper("occco", 7, 6), np.array([0, 0, 0, 0.6, 0.6, 0]),
                                  EventConfig.from_dict(OTHER))
    assert latent.tolist() == [NONE, NONE, SUCCESS, SUCCESS, NONE] and starts.sum() == 1


# --------------------------------------------------------------- through a checkpoint


def test_imagined_rollouts_keep_the_latent(tmp_path):
    # the fast transformer is distilled on the teacher's rollouts: they must keep each slot's
    # latent, through a save and a load
    from wmgym.env.testing import make_tiny_checkpoint
    from wmgym.spec import load_spec
    from wmgym.train.imagined import imagine_many, load_rollouts, save_rollouts

    ckpt = make_tiny_checkpoint(tmp_path / "wm", event=True, task="pick")
    data = imagine_many(ckpt, task=load_spec("pick"), rollouts=6, horizon=8,
                        policies=("random:repeat=4",), seed=0, device="cpu")
    assert data.event.shape == (6, 8) and data.event.dtype == torch.long
    assert set(data.event.unique().tolist()) >= {NONE} and data.event.max() > NONE
    back, _ = load_rollouts(save_rollouts(data, tmp_path / "r.safetensors"))
    assert torch.equal(back.event, data.event) and torch.equal(back.first(2, 3).event,
                                                                data.event[:2, :3])


def test_env_with_the_event_latent(tmp_path):
    # a checkpoint with the latent passes Gymnasium's checks, draws an event's outcome on its
    # `run`-th triggering command and forgets it at a reset
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from wmgym.env.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "wm", event=True, success_bias=-30.0, task="pick")
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device="cpu")
    check_env(env.unwrapped, skip_render_check=True)
    envs = gym.make_vec("WM-Pick-v0", num_envs=8, vectorization_mode="vector_entry_point",
                        checkpoint=ckpt, device="cpu")
    envs.reset(seed=0)
    close = np.tile(gripper("c"), (8, 1))
    cache = lambda: envs.unwrapped.core.state.cache  # noqa: E731
    for _ in range(RUN - 1):
        envs.step(close)
        assert (cache().event == NONE).all()
    envs.step(close)
    assert set(cache().event.tolist()) == {SUCCESS, FAILURE}  # eight draws at one half
    envs.reset(seed=0)
    assert (cache().event == NONE).all()
