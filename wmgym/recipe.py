"""``wmgym recipe envs/<task>.toml``: a task's world model from its spec, in one command.

The stages run in order: ``collect`` (every dataset of ``[[recipe.data]]``), ``tokenizer``,
``dynamics``, ``agents`` (when the spec has ``[recipe.agents]``: a sibling of the task's
learned-agent family, whose real rollouts the datasets with ``policy = "agents"`` collect next,
for the state model), ``state_model``, ``decoder`` and ``fast_dynamics`` (the fast parts),
``eval``, ``sweep`` and ``card``. Each is the library function behind its own ``wmgym``
command, with the options the spec's ``[recipe.<stage>]`` table gives (the keys are the
command's options: ``[recipe.dynamics] steps = 3000`` is ``wmgym train dynamics --steps
3000``); the recipe fills in the paths. Everything is written under ``--out``
(``runs/recipe/<task>``); ``--ship`` copies the checkpoint and its card to where the spec's
``WM-<Task>-v0`` loads it from.

The run is resumable stage by stage: ``<out>/recipe.json`` records each stage with its options
(and its time once finished), and a later run skips a finished stage whose options are
unchanged, so long as every stage before it was skipped too. A stage that was cut off starts
again, or, where it keeps what it has done (the tokenizer's and the transformer's checkpoints,
the agents already frozen), goes on from there; the time it ran before the cut counts.
``--from-stage STAGE`` runs again from there.

>>> plan = recipe_plan(load_spec("pick"), Path("runs/recipe/pick"))  # doctest: +SKIP
>>> [stage.name for stage in plan][:2]  # doctest: +SKIP
['collect:mix', 'collect:play']
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from wmgym.results import machine, write_result
from wmgym.spec import TaskSpec, load_spec

#: The stages, in the order they run; ``collect`` stands for one stage per dataset.
STAGES = ("collect", "tokenizer", "dynamics", "agents", "state_model", "decoder",
          "fast_dynamics", "eval", "sweep", "card")
#: What the recipe chooses where a spec's ``[recipe.<stage>]`` is silent.
DEFAULTS: dict[str, dict[str, Any]] = {
    "dynamics": {"gap_embedding": True, "state_input": True},
    "eval": {"split": "heldout"},
    "agents": {"seed_offset": -100_000},
}
#: A ``[[recipe.data]]`` policy: the real rollouts of the agents the ``agents`` stage froze.
AGENTS_POLICY = "agents"
#: Keys of a ``[[recipe.data]]`` entry: its name, then ``wmgym collect``'s options.
DATA_KEYS = {"name", "policy", "episodes", "seed", "images", "max_steps", "heldout"}
RECORD = "recipe.json"


@dataclass
class RecipeArgs:
    """Options of ``wmgym recipe``."""

    spec: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SPEC")]
    """Task name or spec file (``envs/<task>.toml``); its ``[recipe]`` sets datasets and budgets."""
    out: str = ""
    """Where every stage writes (default: ``runs/recipe/<task>``)."""
    from_stage: str = ""
    """Run again from this stage (``collect``, ``collect:<dataset>``, ``tokenizer``, ...) even
    where its options are unchanged (empty: resume after the last finished stage)."""
    until: str = ""
    """Stop after this stage (empty: run them all)."""
    ship: bool = False
    """After the card, copy the checkpoint (with its card) to the spec's checkpoint directory,
    replacing what is there."""
    workers: int = 2
    """Collection worker processes."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` for training and imagination."""


@dataclass
class Stage:
    """One step of the recipe: a name, the function that runs it and its options."""

    name: str
    function: Callable[[Any], Any]
    args: Any
    """The function's options (a command's dataclass)."""
    resumed: dict[str, Any] | None = None
    """The options that make a cut-off run go on from what it has done (``{"resume": True}``
    for trainers); None: it starts over."""

    @property
    def resumable(self) -> bool:
        return self.resumed is not None

    @property
    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.args)

    def run(self, *, resume: bool = False) -> Any:
        resumed = resume and self.resumed is not None
        return self.function(dataclasses.replace(self.args, **self.resumed) if resumed
                             else self.args)


def _options(cls: type, table: dict[str, Any], fixed: dict[str, Any], where: str) -> Any:
    """``cls(**fixed, **table)``, failing on keys ``cls`` lacks or the recipe sets itself."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown options {unknown}; {cls.__name__} has "
                         f"{sorted(fields - set(fixed))}")
    taken = sorted(set(table) & set(fixed))
    if taken:
        raise ValueError(f"{where}: {taken} are set by the recipe itself")
    return cls(**{**table, **fixed})


def _datasets(spec: TaskSpec) -> list[dict[str, Any]]:
    data = spec.recipe.get("data", [])
    if not data:
        raise ValueError(f"{spec.path}: [recipe] names no datasets ([[recipe.data]] entries)")
    for entry in data:
        unknown = sorted(set(entry) - DATA_KEYS)
        if unknown or "name" not in entry:
            raise ValueError(f"{spec.path}: [[recipe.data]] entry {entry} needs a name and may "
                             f"only have {sorted(DATA_KEYS)}")
        if entry.get("policy") == AGENTS_POLICY:
            if entry.get("images", True) or spec.state_model is None:
                raise ValueError(
                    f"{spec.path}: [[recipe.data]] {entry['name']}: the agents' rollouts are "
                    "collected after the transformer trained, for the state model: they need "
                    "images = false and a [world_model.state_model]")
            if "agents" not in spec.recipe:
                raise ValueError(f"{spec.path}: [[recipe.data]] {entry['name']} collects the "
                                 "agents' rollouts, but the spec has no [recipe.agents]")
    if not any(entry.get("images", True) for entry in data):
        raise ValueError(f"{spec.path}: [[recipe.data]] has no dataset with images to train "
                         "the tokenizer and the transformer on")
    return data


def recipe_plan(spec: TaskSpec, out: Path, args: RecipeArgs | None = None) -> list[Stage]:
    """The stages of ``spec``'s recipe, writing under ``out``.

    Raises:
        ValueError: The spec's ``[recipe]`` lacks datasets, has a stage this recipe does not
            run, or gives a stage options its command does not have (naming them).
    """
    from wmgym.agent_family import BuildAgentsArgs, build_agents_main
    from wmgym.card import CardArgs, card_main
    from wmgym.data.collect import CollectArgs, collect
    from wmgym.evaluation import EvalArgs, eval_main
    from wmgym.sweep import SweepArgs, sweep_main
    from wmgym.train.distill import TrainDecoderArgs, train_decoder
    from wmgym.train.dynamics import TrainDynamicsArgs, train_dynamics
    from wmgym.train.fast_dynamics import TrainFastDynamicsArgs, train_fast_dynamics
    from wmgym.train.state_model import TrainStateModelArgs, train_state_model_main
    from wmgym.train.tokenizer import TrainTokenizerArgs, train_tokenizer

    args = args or RecipeArgs(spec=str(spec.path))
    unknown = sorted(set(spec.recipe) - {"data", *STAGES})
    if unknown:
        raise ValueError(f"{spec.path}: [recipe] has unknown tables {unknown}; stages: "
                         f"{list(STAGES)}")
    task, ckpt, device = str(spec.path), str(out / "checkpoint"), args.device

    def table(stage: str) -> dict[str, Any]:
        return {**DEFAULTS.get(stage, {}), **spec.recipe.get(stage, {})}

    def where(stage: str) -> str:
        return f"{spec.path} [recipe.{stage}]"

    def collect_stage(entry: dict[str, Any]) -> Stage:
        name = entry["name"]
        options = {k: v for k, v in entry.items() if k != "name"}
        if options.get("policy") == AGENTS_POLICY:
            options["policy"] = f"family:{out / 'agents'}"
        c = _options(CollectArgs, options, {"task": task, "out": str(out / "data" / name),
                                            "workers": args.workers, "overwrite": True},
                     f"{spec.path} [[recipe.data]] {name}")
        return Stage(f"collect:{name}", collect, c)

    data = _datasets(spec)
    later = [e for e in data if e.get("policy") == AGENTS_POLICY]
    stages = [collect_stage(e) for e in data if e not in later]
    images = [str(out / "data" / e["name"]) for e in data if e.get("images", True)]
    everything = [str(out / "data" / e["name"]) for e in data]

    tok = _options(TrainTokenizerArgs, table("tokenizer"),
                   {"data": images[0], "task": task, "out": str(out / "tokenizer"),
                    "device": device}, where("tokenizer"))
    dyn_table = table("dynamics")
    if spec.event is not None:
        dyn_table.setdefault("event", True)
    dyn = _options(TrainDynamicsArgs, dyn_table,
                   {"data": images[0], "extra_data": tuple(images[1:]), "task": task,
                    "tokenizer": str(out / "tokenizer" / "final"), "device": device,
                    "out": str(out / "dynamics"), "checkpoint": ckpt}, where("dynamics"))
    stages += [Stage("tokenizer", train_tokenizer, tok, resumed={"resume": True}),
               Stage("dynamics", train_dynamics, dyn, resumed={"resume": True})]
    if "agents" in spec.recipe:  # a cut-off build keeps the agents it froze, a new one starts over
        agents = _options(BuildAgentsArgs, table("agents"),
                          {"task": task, "out": str(out / "agents"), "checkpoint": ckpt,
                           "device": device, "rebuild": True}, where("agents"))
        if agents.seed_offset == 0:
            raise ValueError(f"{where('agents')}: seed_offset 0 is the benchmark family's seeds; "
                             "agents whose rollouts train the model must be a sibling on others")
        stages.append(Stage("agents", build_agents_main, agents, resumed={"rebuild": False}))
        stages += [collect_stage(e) for e in later]
    if spec.state_model is not None:
        sm = _options(TrainStateModelArgs, table("state_model"),
                      {"checkpoint": ckpt, "data": tuple(everything), "task": task,
                       "out": str(out / "state_model")}, where("state_model"))
        stages.append(Stage("state_model", train_state_model_main, sm))
    dec = _options(TrainDecoderArgs, table("decoder"),
                   {"checkpoint": ckpt, "task": task, "device": device,
                    "out": str(out / "fast_decoder")}, where("decoder"))
    fdyn = _options(TrainFastDynamicsArgs, table("fast_dynamics"),
                    {"checkpoint": ckpt, "task": task, "device": device,
                     "out": str(out / "fast_dynamics")}, where("fast_dynamics"))
    ev = _options(EvalArgs, table("eval"),
                  {"data": images[0], "checkpoint": ckpt, "task": task, "device": device,
                   "out": str(out / "eval")}, where("eval"))
    sw = _options(SweepArgs, table("sweep"),
                  {"task": task, "checkpoint": ckpt, "device": device, "out": str(out / "sweep")},
                  where("sweep"))
    card = _options(CardArgs, table("card"),
                    {"checkpoint": ckpt, "eval": str(out / "eval" / "metrics.json"),
                     "data": tuple(everything), "recipe": f"wmgym recipe {spec.path.name}",
                     "sweep": str(out / "sweep" / "sweep.json"), "stages": str(out / RECORD),
                     "out": str(out / "checkpoint" / "card.md")}, where("card"))
    stages += [
        Stage("decoder", train_decoder, dec),
        Stage("fast_dynamics", train_fast_dynamics, fdyn),
        Stage("eval", eval_main, ev),
        Stage("sweep", sweep_main, sw),
        Stage("card", card_main, card),
    ]
    return stages


def _matches(stage: str, name: str) -> bool:
    return stage == name or stage.split(":")[0] == name


def _read_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def run_recipe(args: RecipeArgs) -> dict[str, Any]:
    """Runs (or resumes) the recipe; returns the record written to ``<out>/recipe.json``.

    Raises:
        ValueError: ``--from`` or ``--until`` names no stage of this recipe.
    """
    from wmgym.registration import register_spec

    spec = load_spec(args.spec)
    register_spec(spec)  # the sweep makes both twins by their ids
    out = Path(args.out or f"runs/recipe/{spec.name.lower()}")
    plan = recipe_plan(spec, out, args)
    names = [s.name for s in plan]
    for option, value in (("--from-stage", args.from_stage), ("--until", args.until)):
        if value and not any(_matches(n, value) for n in names):
            raise ValueError(f"{option} {value!r} is no stage of this recipe: {names}")
    path = out / RECORD
    record = _read_record(path)
    record.update(spec=str(spec.path), task=spec.name, machine=machine())
    done: dict[str, Any] = record["stages"]
    last = max((i for i, n in enumerate(names, 1) if _matches(n, args.until)), default=0)
    last = last or len(plan)
    rerun = False
    for i, stage in enumerate(plan, 1):
        options = json.loads(json.dumps(stage.options, default=str))
        prior = done.get(stage.name, {})
        same = prior.get("options") == options
        forced = bool(args.from_stage) and _matches(stage.name, args.from_stage)
        rerun = rerun or not same or "seconds" not in prior or forced
        if not rerun:
            print(f"[{i}/{len(plan)}] {stage.name}: done ({prior['seconds']:.0f} s), "
                  "options unchanged")
        else:
            # an interrupted stage with the same options goes on from its last checkpoint
            resume = same and "seconds" not in prior and not forced and stage.resumable
            print(f"[{i}/{len(plan)}] {stage.name} {'resumed ' if resume else ''}...", flush=True)
            for later in names[i - 1:]:  # whatever follows is built on this stage anew
                done.pop(later, None)
            # a resumed stage's time includes the time it ran before it was cut off
            before = float(prior.get("elapsed", 0.0)) if resume else 0.0
            done[stage.name] = {"options": options, "started": True, "elapsed": before}
            write_result(path, record)
            start = time.perf_counter()
            try:
                stage.run(resume=resume)
            except BaseException:  # cut off (Ctrl-C, SIGTERM) or failed: keep the time it ran
                done[stage.name]["elapsed"] = round(before + time.perf_counter() - start, 1)
                write_result(path, record)
                raise
            done[stage.name] = {"options": options,
                                "seconds": round(before + time.perf_counter() - start, 1)}
            record["seconds"] = round(sum(s.get("seconds", 0.0) for s in done.values()), 1)
            write_result(path, record)
        if i == last:
            break
    unfinished = [n for n in names if "seconds" not in done.get(n, {})]
    if args.ship and not unfinished:
        ship(out / "checkpoint", spec.checkpoint)
    elif args.ship:
        raise RuntimeError(f"--ship needs every stage finished; {unfinished} are not")
    return record


def ship(checkpoint: Path, target: Path) -> Path:
    """Copies a finished checkpoint over ``target`` (the spec's), replacing it whole."""
    staging = target.with_name(target.name + ".incoming")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(f"shipped {checkpoint} to {target}")
    return target


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def recipe_main(args: RecipeArgs) -> dict[str, Any]:
    """``wmgym recipe``: run the stages, print their times.

    SIGTERM ends it as Ctrl-C does, so a stage cut off either way records how long it ran.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    record = run_recipe(args)
    total = record.get("seconds", 0.0) / 60
    print(f"recipe of {record['task']}: {total:.1f} min of stages; record in "
          f"{Path(args.out or 'runs/recipe/' + record['task'].lower()) / RECORD}")
    return record
