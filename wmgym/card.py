"""``wmgym card``: the model card of a checkpoint, from what its recipe recorded and measured."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from wmgym.arm_probe import format_arm_table
from wmgym.data.dataset import read_metadata
from wmgym.evaluation import format_table
from wmgym.model.checkpoint import atomic_write, read_config
from wmgym.model.fast_decoder import SUBDIR, has_fast_decoder
from wmgym.model.fast_dynamics import FAST_DYNAMICS
from wmgym.results import machine, resolve_task
from wmgym.spec import TaskSpec


@dataclass
class CardArgs:
    """Options of ``wmgym card``."""

    checkpoint: str
    """Checkpoint directory the card describes."""
    eval: str = "runs/eval/metrics.json"
    """``wmgym eval``'s metrics.json for this checkpoint."""
    data: tuple[str, ...] = ()
    """The datasets it was trained on."""
    recipe: str = ""
    """The script that produced it (empty: not named)."""
    notes: str = ""
    """A Markdown file appended to the card: measured findings beyond ``wmgym eval``'s."""
    full_eval: str = ""
    """``wmgym eval --fast full``'s metrics.json, shown beside ``eval`` when that one ran with
    the fast decoder (empty: none)."""
    fast_sweep: str = ""
    """``wmgym sweep --fast fast``'s sweep.json, shown in the fast transformer's section
    (empty: none)."""
    probes: str = ""
    """A JSON of probe summaries (``action_probe``, ``grasp_probe``) measured outside wmgym, shown
    after the evaluation (empty: none)."""
    out: str = "runs/card/card.md"
    """Where to write the card (e.g. ``<checkpoint>/card.md``)."""


def render_card(args: CardArgs) -> str:
    """The card's Markdown."""
    spec, _ = resolve_task("", args.checkpoint)
    config = read_config(args.checkpoint)
    metrics = json.loads(Path(args.eval).read_text())
    train = config.get("train", {})
    n_params = sum(math.prod(s) for s in config["shapes"].values())
    chain = [train]  # fine-tuned (``train dynamics --init``): the runs it started from
    while chain[-1].get("base"):
        chain.append(chain[-1]["base"])
    chain.reverse()
    seconds = {"tokenizer": chain[0].get("tokenizer_seconds")}
    names = [""] if len(chain) == 1 else ["base ", "fine-tune "] if len(chain) == 2 else [
        "base ", *(f"fine-tune {i} " for i in range(1, len(chain)))]
    for name, stage in zip(names, chain):
        seconds[f"{name}load + tokenize"] = stage.get("tokenize_seconds")
        seconds[f"{name}dynamics"] = stage.get("dynamics_seconds")
    minutes = {k: (v or 0) / 60 for k, v in seconds.items()}
    mach = train.get("machine") or machine()
    tok, dyn = config["tokenizer"], config["dynamics"]
    times = ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items())
    if train.get("tokens_from_cache"):
        times += f" (tokens of {', '.join(train['tokens_from_cache'])} read from the token cache)"
    where = f"{mach['cores']} CPU cores ({mach['cpu']}), torch {mach['torch']}"
    if mach.get("cuda"):
        where = f"{mach['cuda']}, torch {mach['torch']}"
    eval_what = (f"{metrics['episodes']} {metrics['split']} episodes, {metrics['steps']} steps "
                 f"open loop from one real frame, temperature {metrics['args']['temperature']}")
    notes = "\n" + Path(args.notes).read_text() if args.notes else ""
    fast = fast_decoder_section(args, metrics) + fast_dynamics_section(args)
    probes = probe_lines(json.loads(Path(args.probes).read_text())) if args.probes else ""
    if "arm_probe" in metrics:  # measured by ``wmgym eval --arm-starts``
        probes = f"\n{format_arm_table(metrics['arm_probe'])}\n{probes}"
    recipe = f"`{args.recipe}` (" if args.recipe else "("
    r = spec.resolution
    levels = "x".join(map(str, tok["fsq_levels"]))
    return f"""# {spec.wm_id} — model card

Learned twin of `{spec.sim_id}` (robosuite {spec.env}, {spec.robot}, {spec.controller},
{r}×{r} rgb + depth + mask). {n_params / 1e6:.2f}M parameters: tokenizer FSQ {levels},
{tok['base_channels']} base channels; dynamics transformer d={dyn['d_model']},
{dyn['n_layer']} layers, window {dyn['max_frames']} frames. float32 safetensors,
sha256 `{config['sha256'][:16]}…`, wmgym {config['wmgym_version']}.

## Data
{"".join(data_section(path, spec) for path in args.data)}
## Recipe
{recipe}collect → train tokenizer → train dynamics → fine-tune on every dataset → eval →
card).
Training time: {times}; on {where}.{grasp_head_line(train)}

## Evaluation (`wmgym eval`: {eval_what})
{format_table(metrics)}
{probes}
{fast}## Limits
- Trained on scripted/random policies only: states far from that data (e.g. an RL agent's
  unusual motions) are imagined less faithfully.
- `state` and reward come from heads on the transformer, not from physics; check policies trained
  in imagination on `{spec.sim_id}`.
{notes}"""


def probe_lines(probes: dict) -> str:
    """Probe summaries measured outside wmgym (action and grasp probes), as card lines."""
    lines = []
    if "action_probe" in probes:
        p = probes["action_probe"]
        lines.append(
            f"Action probes ({p['starts']} real starts x {len(p['per_pattern_eef_err_m'])} "
            f"constant actions): gripper error " + ", ".join(
                f"{h} {v:.3f} m" for h, v in p["eef_err_m"].items())
            + f"; false successes {p['false_success']:.2f}; imagined/real gripper travel "
            f"{p['move_ratio']:.2f}")
    if "grasp_probe" in probes:
        g = probes["grasp_probe"]
        lines.append(
            f"Grasp probes ({g['episodes']} real starts, scripted pick closed loop): with the "
            f"gripper held open, imagined lifts {g['open_success']:.2f} (real "
            f"{g['open_success_real']:.2f}), fingers closing on their own "
            f"{g['open_fingers_closed']:.2f} (real {g['open_fingers_closed_real']:.2f}); "
            f"the plain pick lifts {g['pick_success']:.2f} (real {g['pick_success_real']:.2f}); "
            f"an arm stopped above the cube sinks {100 * g['hover_drop_m']:.1f} cm (real "
            f"{100 * g['hover_drop_m_real']:.1f})")
    return "".join(f"\n{line}\n" for line in lines)


def grasp_head_line(train: dict) -> str:
    """The grasp latent's head as its fit reported it (empty for a model without one)."""
    head = train.get("grasp_head")
    if not head:
        return ""
    return (f"\nGrasp head (the drawn-once event of `[world_model.event]`): fitted on "
            f"{head['grasps']} grasps "
            f"({head['held']:.1%} held), held-out accuracy {head['heldout_accuracy']:.3f}, "
            f"then frozen.")


def fast_decoder_section(args: CardArgs, metrics: dict) -> str:
    """The distilled frame decoder: its size, training, and its frames against the full one's."""
    if not has_fast_decoder(args.checkpoint):
        return ""
    config = read_config(Path(args.checkpoint) / SUBDIR)
    d = config["distill"]
    a, vs = d["args"], d["heldout_vs_teacher"]
    n_params = sum(math.prod(s) for s in config["shapes"].values())
    start = d.get("heldout_vs_teacher_at_start")
    started = "" if not a.get("init_from") else (
        f" Started from `{a['init_from']}`'s fast decoder, which drew these rollouts' frames "
        f"at {start['psnr']:.1f} dB before.")
    text = f"""## Fast decoder (`{SUBDIR}/`, `wmgym train decoder`)
{n_params / 1e3:.0f}k parameters ({config['tokenizer']['base_channels']} base channels, sub-pixel
×{config['tokenizer']['decoder_subpixel']}), distilled from the full decoder's frames of
{a['rollouts']} imagined rollouts × {a['horizon']} steps ({d['imagine_seconds'] / 60:.1f} min to
imagine and decode them, {d['train_seconds'] / 60:.1f} min for {a['steps']} steps). On
{a['heldout']} held-out rollouts it draws the full decoder's frames at rgb PSNR
{vs['psnr']:.1f} dB, depth L1 {vs['depth_l1']:.4f}, mask IoU {vs['mask_iou']:.3f}. The envs use it
with every speed preset but `fast="full"`; reward, success and state do not depend on
it.{started}
"""
    if args.full_eval and metrics.get("decoder") == "fast":
        full = json.loads(Path(args.full_eval).read_text())
        rows = []
        for key in ("rgb_psnr", "rgb_ssim", "depth_absrel", "mask_iou"):
            ol_f, ol_s = full["open_loop"][key], metrics["open_loop"][key]
            rows.append(
                f"| {key} | {full['tokenizer'][key]:.3f} / {metrics['tokenizer'][key]:.3f} | "
                + " | ".join(f"{ol_f[h]:.3f} / {ol_s[h]:.3f}"
                             for h in ("h1", "h15", "mean") if h in ol_f) + " |")
        text += f"""
Against the real frames of {metrics['episodes']} episodes of `{metrics['data']}` (split
`{metrics['split']}`, {metrics['steps']} steps open loop, same seeds), full / fast decoder:

| metric | tokenizer | open loop h1 | open loop h15 | open loop mean |
|---|---|---|---|---|
{chr(10).join(rows)}
"""
    return text + "\n"


def fast_dynamics_section(args: CardArgs) -> str:
    """The distilled transformer: its shape, training, closeness to the teacher, its sweep."""
    if not FAST_DYNAMICS.exists(args.checkpoint):
        return ""
    config = read_config(FAST_DYNAMICS.directory(args.checkpoint))
    runs = [config["distill"]]
    while "resumed_from" in runs[-1]:
        runs.append(runs[-1]["resumed_from"])
    first, last = runs[-1], runs[0]
    a, dyn = first["args"], config["dynamics"]

    def run_steps(r: dict) -> str:
        n, share = r["args"].get("on_policy", 0), r["args"].get("on_policy_share", 0.0)
        own = f" ({share:.0%} of them from {n} rollouts it imagined itself)" if n else ""
        grasp = r["args"].get("grasp_share", 0.0)
        own += f" ({grasp:.0%} of the windows just before a grasp)" if grasp else ""
        return f"{r['args']['steps']}{own}"

    steps = " + ".join(run_steps(r) for r in reversed(runs))
    minutes = sum(r["train_seconds"] for r in runs) / 60

    def closeness(m: dict) -> str:
        return (f"token KL {m['token_kl']:.3f} nats, argmax agreement {m['token_agree']:.3f}, "
                f"state error {m['state_mse']:.4f} (normalised², mean), success agreement "
                f"{m['success_agree']:.3f}")

    n_params = sum(math.prod(s) for s in config["shapes"].values())
    ratio = dyn["n_head"] // dyn["n_kv_head"]
    seconds = first.get("imagine_seconds")
    imagined = "time not recorded" if seconds is None else f"{seconds / 60:.1f} min to imagine"
    own = last.get("heldout_own_rollouts_vs_teacher")
    own_section = "" if own is None else (
        "On held-out rollouts it imagined itself (where its own errors have led it), against "
        f"the transformer on the same frames: {closeness(own)}.\n")
    if a.get("init_from"):
        fresh = first.get("initialised_from", {}).get("parameters_from_teacher", [])
        started = (f"Started from `{a['init_from']}`'s fast transformer"
                   + (f" (the parameters it lacks, {', '.join(fresh)}, from the transformer)"
                      if fresh else "") + ", then distilled on")
    else:
        started = ("Started from the transformer's weights with the key/value heads averaged, "
                   "then distilled on")
    text = f"""## Fast transformer (`{FAST_DYNAMICS.subdir}/`, `wmgym train fast-dynamics`)
{n_params / 1e6:.2f}M parameters: the transformer with {dyn['n_head']} query heads sharing
{dyn['n_kv_head']} key/value head per layer, so every pass reads {ratio}× fewer cached bytes.
{started}
{a['rollouts']} rollouts × {a['horizon']} steps the transformer imagined itself
({imagined}) for {steps} steps of {a['batch']} windows
({minutes:.1f} min). On {a['heldout']} held-out rollouts, against the transformer: at the start
{closeness(first['heldout_vs_teacher_at_init'])}; after {closeness(last['heldout_vs_teacher'])}.
{own_section}{grasp_calibration_line(config)}Parameters stored in float16. Used only when asked for
(`fast=True`).
"""
    if args.fast_sweep:
        sweep = json.loads(Path(args.fast_sweep).read_text())
        m = sweep["metrics"]["success"]
        pooled = (f"; {len(sweep['pooled_from'])} sweeps' episodes pooled"
                  if sweep.get("pooled_from") else "")
        text += f"""
`wmgym sweep` with it ({len(sweep['policies'])} policies × {sweep['episodes']} seeds, real
episodes shared{pooled}): success Pearson {m['pearson']:.2f}, Spearman {m['spearman']:.2f}, MMRV
{m['mmrv']:.3f}, mean |gap| {m['mean_abs_gap']:.3f}.
"""
    return text + "\n"


def grasp_calibration_line(config: dict) -> str:
    """How the fast transformer's grasp head was refitted (``wmgym train grasp-calibration``)."""
    c = config.get("grasp_calibration")
    if c is None:
        return ""
    a, before, after = c["args"], c["before"], c["after"]
    return (f"Its grasp head was refitted on its own states at {c['draws']} grasp starts: "
            f"{c['episodes']} real episodes of {', '.join(f'`{d}`' for d in a['data'])} "
            f"(split {a['split']}) replayed closed loop {a['samples']} times each, labelled by "
            f"how each real grasp ended ({before['real_held']:.2f} held). Mean p(hold) "
            f"{before['mean_p_hold']:.2f} → {after['mean_p_hold']:.2f}, accuracy "
            f"{before['accuracy']:.3f} → {after['accuracy']:.3f} (held-out episodes: "
            f"{c['fit']['heldout_accuracy']:.3f}).\n")


def data_section(path: str, spec: TaskSpec) -> str:
    """One dataset's size, split, collection time and per-policy table."""
    meta = read_metadata(path)
    summary = meta.get("summary", {})
    steps_each = summary.get("steps", 0) // max(1, meta["total_episodes"])
    collected = f"{summary.get('seconds', 0):.0f} s with {summary.get('workers', '?')} workers"
    per_policy = "\n".join(
        f"| `{name}` | {row['episodes']} | {row['success_rate']:.2f} |"
        for name, row in summary.get("per_policy", {}).items())
    return f"""`{path}`: {meta['total_episodes']} episodes, {meta['total_steps']} steps of
`{spec.sim_id}` (terminate-on-success off, {steps_each} steps each), {len(meta['heldout'])} held out
(seed {meta['split_seed']}). Collected in {collected}.

| policy | episodes | success |
|---|---|---|
{per_policy}

"""


def card_main(args: CardArgs) -> Path:
    """``wmgym card``: renders the card and writes it to ``args.out``."""
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_card(args)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    print(f"wrote {path}")
    return path
