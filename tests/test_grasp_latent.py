"""The grasp latent: its labels, its steps in imagination, its head's fit, cache = training."""

import numpy as np
import pytest
import torch
from test_model import dynamics_batch, randomize_actions, tiny_dynamics_config

from wmgym.model.grasp_latent import (
    CLOSING_RUN,
    HOLD,
    MIN_WATCHED,
    NONE,
    SLIP,
    advance,
    grasp_labels,
)
from wmgym.model.transformer import DynamicsTransformer
from wmgym.spec import CUBE_POS, EEF_POS, STATE_FIELDS
from wmgym.train.data import EpisodeTensors, TokenizedEpisode, sample_clips
from wmgym.train.grasp_head import fit_grasp_head, label_grasps

LIFT = 0.84


def gripper(commands: str) -> np.ndarray:
    """Actions whose gripper follows ``commands``: ``c`` closes, ``o`` opens."""
    a = np.zeros((len(commands), 4), np.float32)
    a[:, 3] = [1.0 if c == "c" else -1.0 for c in commands]
    return a


def test_grasp_labels_mark_each_grasp_from_its_third_closing_command():
    #          flick  held grasp   slipped grasp  cut off at the end
    commands = "occoo" "ccccc" "oo" "cccccc" "o" "cccc"
    z = np.full(len(commands) + 1, 0.82)
    z[9:11] = 0.9  # lifted during the held grasp (frames after its actions 5..9)
    latent, starts = grasp_labels(gripper(commands), z, LIFT)
    expected = np.zeros(len(commands), np.int64)
    expected[5 + CLOSING_RUN - 1:10] = HOLD
    expected[12 + CLOSING_RUN - 1:18] = SLIP
    assert latent.tolist() == expected.tolist()  # the flick and the cut-off grasp: none
    assert np.flatnonzero(starts).tolist() == [7, 14]
    # a grasp that runs to the end unlifted counts as slipped once watched long enough
    long = "oo" + "c" * (CLOSING_RUN + MIN_WATCHED)
    latent, starts = grasp_labels(gripper(long), np.full(len(long) + 1, 0.82), LIFT)
    assert set(latent[2 + CLOSING_RUN - 1:]) == {SLIP} and starts.sum() == 1
    # one that lifts before the episode ends holds, however short
    latent, _ = grasp_labels(gripper("occc"), np.array([0.82, 0.82, 0.83, 0.85, 0.86]), LIFT)
    assert latent.tolist() == [NONE, NONE, NONE, HOLD]


def test_advance_draws_once_per_grasp_and_forgets_it_when_the_gripper_opens():
    run, latent = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    p_hold = torch.tensor([0.9, 0.9])
    seen = []
    for t, c in enumerate("cccccoccc"):
        u = torch.tensor([0.5, 0.95]) if t == 2 else torch.tensor([0.95, 0.5])
        a = torch.tensor(gripper(c)).expand(2, 4)
        run, latent = advance(run, latent, a, p_hold, u)
        seen.append(latent.tolist())
    assert seen[:2] == [[NONE, NONE]] * 2
    assert seen[2:5] == [[HOLD, SLIP]] * 3  # drawn on the third command, kept while closed
    assert seen[5:8] == [[NONE, NONE]] * 3  # opened: gone; the next grasp is a new draw
    assert seen[8] == [SLIP, HOLD]


def grasp_model(seed: int = 0) -> DynamicsTransformer:
    torch.manual_seed(seed)
    cfg = tiny_dynamics_config(state_input=True, grasp_latent=True, max_frames=8)
    model = DynamicsTransformer(cfg).eval()
    randomize_actions(model)
    torch.nn.init.normal_(model.state_proj.weight, std=0.5)
    torch.nn.init.normal_(model.grasp_emb, std=1.0)
    return model


def test_grasp_latent_needs_the_state():
    with pytest.raises(ValueError, match="needs state_input"):
        DynamicsTransformer(tiny_dynamics_config(grasp_latent=True))


def test_grasp_latent_in_the_cache_matches_the_training_pass():
    # imagination advances the latent from the actions and draws it from the head on the latest
    # state; the teacher-forced pass given the same latent must give the same logits
    model = grasp_model()
    cfg, t = model.cfg, model.cfg.max_frames
    batch = dynamics_batch(cfg, 3, t, seed=5)
    ctx, frames, actions = batch["ctx_tokens"], batch["frame_tokens"], batch["actions"]
    actions[:, :, 3] = torch.tensor(gripper("occcccoc"))[:, 3]
    start = torch.randn(3, cfg.state_dim)
    with torch.no_grad():  # every grasp holds (teacher forcing takes the likelier outcome)
        model.grasp_head.mlp[-1].weight.zero_()
        model.grasp_head.mlp[-1].bias.fill_(5.0)
    cache = model.new_cache(3)
    model.prefill(cache, ctx)
    model.set_state(cache, start)
    logits, states, latents = [], [], []
    for i in range(t):
        lg, frame = model.teacher_force_frame(cache, actions[:, i], frames[:, i])
        logits.append(lg)
        states.append(frame.state)
        latents.append(cache.grasp.clone())
    latent = torch.stack(latents, 1)
    assert latent[0].tolist() == [NONE, NONE, NONE, HOLD, HOLD, HOLD, NONE, NONE]
    prev = torch.cat([start[:, None], torch.stack(states, 1)[:, :-1]], 1)
    with torch.no_grad():
        full = model(ctx, frames, actions, prev_state=prev, grasp=latent)
        without = model(ctx, frames, actions, prev_state=prev)
    assert torch.allclose(torch.stack(logits, 1), full.logits, atol=1e-4)
    assert not torch.allclose(full.logits[:, 3], without.logits[:, 3], atol=1e-3)
    assert torch.allclose(full.logits[:, :3], without.logits[:, :3], atol=1e-5)


@pytest.mark.parametrize(("bias", "outcome"), [(8.0, HOLD), (-8.0, SLIP)])
def test_sampled_grasps_follow_the_head(bias, outcome):
    model = grasp_model(1)
    with torch.no_grad():
        model.grasp_head.mlp[-1].weight.zero_()
        model.grasp_head.mlp[-1].bias.fill_(bias)
    cfg = model.cfg
    ctx = dynamics_batch(cfg, 4, 1, seed=2)["ctx_tokens"]
    a = torch.tensor(gripper("c")).expand(4, 4)
    cache = model.new_cache(4)
    model.prefill(cache, ctx)
    model.set_state(cache, torch.randn(4, cfg.state_dim))
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    for _ in range(CLOSING_RUN):
        assert cache.grasp.tolist() == [NONE] * 4
        model.generate_frame(cache, a, generators=gens)
    assert cache.grasp.tolist() == [outcome] * 4
    model.prefill(cache, ctx[:1], index=torch.tensor([2]))  # a restart forgets the grasp
    assert cache.grasp.tolist() == [outcome, outcome, NONE, outcome]


def test_the_draw_is_per_rollout_reproducible():
    model = grasp_model(2)  # the head at its initialisation: p near one half
    cfg = model.cfg
    ctx = dynamics_batch(cfg, 6, 1, seed=3)["ctx_tokens"]
    a = torch.tensor(gripper("c")).expand(6, 4)

    def rollout(seeds):
        cache = model.new_cache(len(seeds))
        model.prefill(cache, ctx[: len(seeds)])
        model.set_state(cache, torch.zeros(len(seeds), cfg.state_dim))
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for _ in range(CLOSING_RUN):
            model.generate_frame(cache, a[: len(seeds)], generators=gens)
        return cache.grasp.tolist()

    draws = rollout(range(6))
    assert set(draws) == {HOLD, SLIP}  # both outcomes among six rollouts
    assert rollout([3]) == [draws[3]] and rollout(range(6)) == draws


def synthetic_grasps(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States where grasps begin; they hold when the gripper is within 1.5 cm of the cube."""
    g = np.random.default_rng(seed)
    state = np.zeros((n, len(STATE_FIELDS)), np.float32)
    state[:, CUBE_POS] = [0.0, 0.0, 0.82]
    off = g.uniform(-0.04, 0.04, (n, 2))
    state[:, EEF_POS] = np.c_[off, np.full(n, 0.83)]
    state[:, 3], state[:, 4] = 0.03, -0.03
    return torch.from_numpy(state), torch.from_numpy(np.linalg.norm(off, axis=1) < 0.015).float()


def test_the_head_learns_the_offset_that_decides_a_grasp():
    model = grasp_model()
    states, held = synthetic_grasps(400, 0)
    model.set_state_normalization(states.mean(0), states.std(0).clamp_min(1e-3))
    fit = fit_grasp_head(model, states, held, noise=0.05, steps=300)
    assert fit["grasps"] == 400 and 0.1 < fit["held"] < 0.5
    assert fit["heldout_accuracy"] > 0.9 and fit["train_accuracy"] > 0.9
    fresh, truth = synthetic_grasps(200, 1)
    with torch.no_grad():
        p = torch.sigmoid(model.grasp_head(model.grasp_features(model.normalize_state(fresh))))
    assert float(((p > 0.5).float() == truth).float().mean()) > 0.9
    with pytest.raises(ValueError, match="hold and grasps that slip"):
        fit_grasp_head(model, states, torch.ones(400), noise=0.05)


def test_labelled_episodes_give_clips_their_latent():
    commands = "oo" + "c" * 8
    z = np.linspace(0.82, 0.9, len(commands) + 1).astype(np.float32)
    state = torch.zeros(len(commands) + 1, len(STATE_FIELDS))
    state[:, 7] = torch.from_numpy(z)
    ep = EpisodeTensors(torch.zeros(len(commands) + 1, 5, 2, 2), torch.from_numpy(
        gripper(commands)), torch.zeros(len(commands)), torch.zeros(len(commands)), state)
    states, held = label_grasps([ep], LIFT)
    assert held.tolist() == [1.0] and torch.equal(states[0], state[2 + CLOSING_RUN - 1])
    te = TokenizedEpisode([0], torch.zeros(1, 6, dtype=torch.long),
                          [torch.zeros(len(commands), 4, dtype=torch.int16)], ep)
    clips = sample_clips([te], 4, len(commands), np.random.default_rng(0))
    starts = clips["actions"][:, 0, 3] < 0  # clips starting right after the context
    assert starts.any()
    assert clips["grasp"][starts][0].tolist() == ep.grasp.tolist()


def test_env_with_the_grasp_latent(tmp_path):
    # a checkpoint with the latent passes Gymnasium's checks, reproduces seeded rollouts, draws
    # a grasp's outcome on its third closing command and forgets it at a reset
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env
    from test_wm_env import assert_same, rollout

    from wmgym.env.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "wm", grasp_latent=True, success_bias=-30.0)
    env = gym.make("WM-Pick-v0", checkpoint=ckpt, device="cpu")
    check_env(env.unwrapped, skip_render_check=True)
    assert_same(rollout(env, seed=3, steps=30), rollout(env, seed=3, steps=30))
    envs = gym.make_vec("WM-Pick-v0", num_envs=8, vectorization_mode="vector_entry_point",
                        checkpoint=ckpt, device="cpu")
    envs.reset(seed=0)
    close = np.tile(gripper("c"), (8, 1))
    cache = lambda: envs.unwrapped.core.state.cache  # noqa: E731
    for _ in range(CLOSING_RUN - 1):
        envs.step(close)
        assert (cache().grasp == NONE).all()
    envs.step(close)
    drawn = set(cache().grasp.tolist())
    assert drawn == {HOLD, SLIP}  # eight draws at one half: both outcomes
    envs.reset(seed=0)
    assert (cache().grasp == NONE).all()


def test_imagined_rollouts_keep_the_latent(tmp_path):
    # the fast transformer is distilled on the teacher's rollouts: they must keep each slot's
    # latent, through a save and a load
    from wmgym.env.testing import make_tiny_checkpoint
    from wmgym.train.imagined import imagine_many, load_rollouts, save_rollouts

    ckpt = make_tiny_checkpoint(tmp_path / "wm", grasp_latent=True)
    data = imagine_many("pick", ckpt, 6, 8, ("random:repeat=4",), 0, torch.device("cpu"))
    assert data.grasp.shape == (6, 8) and data.grasp.dtype == torch.long
    assert set(data.grasp.unique().tolist()) >= {NONE} and data.grasp.max() > NONE
    back, _ = load_rollouts(save_rollouts(data, tmp_path / "r.safetensors"))
    assert torch.equal(back.grasp, data.grasp) and torch.equal(back.first(2, 3).grasp,
                                                                data.grasp[:2, :3])


def test_a_filter_that_drives_the_grasp_alone():
    # filter_drives="grasp": the state seen and the slots' state input stay the plain head's
    # (logits and states as without the filter), the grasp head reads the filter's chain
    with pytest.raises(ValueError, match="needs a state filter and the grasp latent"):
        DynamicsTransformer(tiny_dynamics_config(state_input=True, filter_drives="grasp"))
    plain = grasp_model(3)
    cfg = tiny_dynamics_config(state_input=True, grasp_latent=True, max_frames=8,
                               state_filter=True, filter_drives="grasp")
    model = DynamicsTransformer(cfg).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(model.state_filter.mlp[-1].weight, std=0.5)
    batch = dynamics_batch(cfg, 2, cfg.max_frames, seed=6)
    ctx, frames, actions = batch["ctx_tokens"], batch["frame_tokens"], batch["actions"]
    actions[:, :, 3] = 1.0
    start = torch.randn(2, cfg.state_dim)
    read = []
    features = model.grasp_features
    model.grasp_features = lambda s: read.append(s.clone()) or features(s)

    def run(m):
        cache = m.new_cache(2)
        m.prefill(cache, ctx)
        m.set_state(cache, start)
        out, chain = [], []
        for t in range(4):
            out.append(m.teacher_force_frame(cache, actions[:, t], frames[:, t]))
            chain.append(cache.filter_state.clone())
        return chain, torch.stack([o[0] for o in out]), torch.stack([o[1].state for o in out])

    chain, logits, states = run(model)
    _, ref_logits, ref_states = run(plain)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert torch.allclose(states, ref_states, atol=1e-5)
    for t in range(1, 4):  # frame t's draw reads the filter's state after frame t - 1
        assert torch.equal(read[t], chain[t - 1])
        assert not torch.allclose(read[t], model.normalize_state(states[t - 1]), atol=1e-3)


def test_card_reports_the_heads_fit():
    from wmgym.card import grasp_head_line

    fit = {"grasps": 2481, "held": 0.2753, "heldout_accuracy": 0.9234}
    line = grasp_head_line({"grasp_head": fit})
    assert "2481 grasps (27.5% held)" in line and "accuracy 0.923" in line
    assert grasp_head_line({}) == ""  # a model without the latent
