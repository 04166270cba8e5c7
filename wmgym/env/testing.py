"""A tiny random-weight world-model checkpoint for tests and examples (seconds to build on CPU).

The weights are random but not inert: actions, the success head and the state head are given
enough weight that actions change the imagined frames, episodes end now and then, and the
predicted state moves, so the Gymnasium layer is exercised for real.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wmgym.model.checkpoint import CONFIG, WEIGHTS, CheckpointError
from wmgym.model.tokenizer import MMTokenizer, TokenizerConfig
from wmgym.model.transformer import DynamicsConfig
from wmgym.model.world_model import WorldModel
from wmgym.spec import TaskSpec, load_spec


def synthetic_start_obs(spec: TaskSpec, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` valid start observations: smooth rgb/depth, a blob mask, a plausible state.

    Args:
        spec: The task whose observation space they must lie in.
        n: Number of observations.
        seed: Seed of their content.

    Returns:
        ``{key: array (n, *space.shape)}`` for every key of the spec's observation space.
    """
    g = torch.Generator().manual_seed(seed)
    r = spec.resolution
    low = torch.rand(n, 5, 4, 4, generator=g)
    x = F.interpolate(low, size=(r, r), mode="bilinear", align_corners=False).movedim(1, -1)
    near, far = spec.depth_range
    rng = np.random.default_rng(seed)
    state = rng.normal(0.0, 0.02, (n, spec.state_dim))
    if spec.success_field is not None:  # a start is not a success
        state[:, spec.index(spec.success_field)[0]] = spec.success_above - 0.03
    return {
        "rgb": (x[..., :3] * 255).round().to(torch.uint8).numpy(),
        "depth": (near + x[..., 3:4] * (far - near)).numpy().astype(np.float32),
        "mask": (x[..., 4:5] > 0.6).to(torch.uint8).numpy(),
        "state": state.astype(np.float32),
    }


def make_tiny_checkpoint(
    path: str | Path,
    *,
    task: str | TaskSpec,
    seed: int = 0,
    bank_size: int = 4,
    success_bias: float = -1.0,
    max_frames: int = 4,
    event: bool = False,
) -> Path:
    """Writes a tiny random-weight ``WorldModel`` checkpoint with a bank of start observations.

    >>> import tempfile
    >>> d = make_tiny_checkpoint(tempfile.mkdtemp() + "/wm", task="pick")
    >>> sorted(p.name for p in d.iterdir())
    ['config.json', 'model.safetensors', 'start_obs.safetensors']

    Args:
        path: Checkpoint directory to create.
        seed: Seed of the weights and of the start observations.
        task: Task (name, spec path or spec); the model is built for its spaces.
        bank_size: Number of start observations in the bank.
        success_bias: Bias of the success logit: ``-1.0`` ends about one step in 25, ``0.0``
            about one in four.
        max_frames: Attention window in frames (small, so long rollouts slide it).
        event: Give the dynamics the state input and the spec's event latent (its head says
            one half whatever the state).

    Returns:
        The checkpoint directory.
    """
    task = load_spec(task)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        model = _tiny_model(task, max_frames, success_bias, event)
    bank = synthetic_start_obs(task, bank_size, seed)
    states = torch.as_tensor(bank["state"])
    mean = states.mean(0)
    if task.success_field is not None:
        # Centre the imagined success field 0.1 above its threshold: about 80% of the success
        # head's firings then pass the state rule, so tests see both verdicts.
        mean[task.index(task.success_field)[0]] = task.success_above + 0.1
    model.dynamics.set_state_normalization(mean, torch.full((states.shape[1],), 0.05))
    return model.save(path, extra={"task": task.name}, start_obs=bank)


def _tiny_model(task: TaskSpec, max_frames: int, success_bias: float,
                event: bool = False) -> WorldModel:
    tok_cfg = TokenizerConfig(
        resolution=task.resolution,
        base_channels=4,
        channel_mult=(1, 1, 1, 1, 1),
        attn_head_dim=4,
        fsq_levels=(5, 5, 5),
    )
    tok = MMTokenizer(tok_cfg)
    dyn_cfg = DynamicsConfig(
        action_dim=task.action_dim,
        state_dim=task.state_dim,
        ctx_vocab_size=tok.ctx_vocab_size,
        vocab_size=tok.future_vocab_size,
        n_ctx_tokens=tok.n_ctx_tokens,
        n_frame_tokens=tok.n_future_tokens,
        max_frames=max_frames,
        d_model=32,
        n_layer=1,
        n_head=2,
        mlp_hidden=64,
        state_input=event,
        event=task.event.as_config() if event else None,
    )
    model = WorldModel(tok_cfg, dyn_cfg, task.depth_range)
    dyn = model.dynamics
    with torch.no_grad():
        # zero-initialised maps would hide bugs: decoded frames must depend on the context
        # features, and tokens on the actions; sharper token distributions vary more
        for name, p in model.tokenizer.named_parameters():
            if "xattn.proj" in name:
                torch.nn.init.normal_(p, std=0.2)
        torch.nn.init.normal_(dyn.action_proj.weight, std=1.0)
        torch.nn.init.normal_(dyn.action_proj.bias, std=0.5)
        dyn.lm_head.weight.mul_(20.0)
        torch.nn.init.normal_(dyn.aux_head.weight, std=0.3)
        dyn.aux_head.bias.zero_()
        dyn.aux_head.bias[0] = 0.3  # reward symexp(0.3 + noise), clamped to [0, 1] by the model
        dyn.aux_head.bias[1] = success_bias
        if event:  # the latent must change the frames; an event succeeds one time in two
            torch.nn.init.normal_(dyn.event_emb, std=1.0)
            torch.nn.init.normal_(dyn.state_proj.weight, std=0.5)
            dyn.event_head.mlp[-1].weight.zero_()
            dyn.event_head.mlp[-1].bias.zero_()
    return model


def step_in_lockstep(env_a, env_b, steps: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """Steps two single envs with the same seeded random actions until one episode ends.

    Checks that both imagine the same state, reward, termination and info at every step (two
    variants of one model that must agree on everything but the pixels), and returns the
    observation pairs for the caller to compare the rest.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(steps):
        a = rng.uniform(-1, 1, env_a.action_space.shape).astype(np.float32)
        s1, r1, t1, _, i1 = env_a.step(a)
        s2, r2, t2, _, i2 = env_b.step(a)
        np.testing.assert_array_equal(s1["state"], s2["state"])
        assert (r1, t1, i1) == (r2, t2, i2)
        pairs.append((s1, s2))
        if t1:
            break
    return pairs


def _load_error(load: Callable[[Path], object], path: Path) -> str:
    try:
        load(path)
    except CheckpointError as e:
        return str(e)
    raise AssertionError(f"{path} loaded, but it should have failed")


def check_companion_errors(load: Callable[[Path], object], checkpoint: Path, subdir: str,
                           tmp: Path) -> Path:
    """A stale and a damaged copy of ``checkpoint``'s part in ``subdir`` fail to ``load``.

    The stale one (its parent "retrained": another ``teacher_sha256``) must name its config
    and the parent's weights, the damaged one (weights overwritten) its weights file. Returns
    the stale copy, for the caller's env-level checks.
    """
    stale = tmp / "stale"
    shutil.copytree(checkpoint, stale)
    path = stale / subdir / CONFIG
    config = json.loads(path.read_text())
    config["teacher_sha256"] = "0" * 64
    path.write_text(json.dumps(config))
    msg = _load_error(load, stale)
    assert "distilled from weights" in msg and str(path) in msg, msg
    assert str(stale / WEIGHTS) in msg, msg
    broken = tmp / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / subdir / WEIGHTS).write_bytes(b"not safetensors")
    msg = _load_error(load, broken)
    assert "sha256" in msg and str(broken / subdir / WEIGHTS) in msg, msg
    return stale


def seeded_rollout(env: Any, *, seed: int, actions: np.ndarray) -> list[Any]:
    """``env.reset(seed=seed)``, then one step per action, resetting after an episode ends.

    Returns:
        The first observation, then ``(obs, reward, terminated, truncated, info)`` per step and
        the observation of every reset in between: two runs compare with :func:`assert_same`.
    """
    obs, _ = env.reset(seed=seed)
    out: list[Any] = [obs]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            out.append(env.reset()[0])
    return out


def assert_same(a: Any, b: Any) -> None:
    """Asserts that two nested structures of dicts, tuples, lists and arrays are equal exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), (len(a), len(b))
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        np.testing.assert_array_equal(a, b)


def check_env_warnings(env: Any, *, skip_render_check: bool = False) -> list[str]:
    """Runs Gymnasium's ``check_env`` on ``env.unwrapped``; returns the warnings it raised."""
    import warnings

    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=skip_render_check)
    return [str(w.message) for w in caught if "gymnasium" in w.filename.lower()]
