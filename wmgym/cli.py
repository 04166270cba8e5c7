"""The ``wmgym`` command: ``wmgym <command> [<sub>] [--options]``; ``wmgym --help`` lists them.

Each command's options are a typed dataclass with a docstring per field (``--help`` shows them).
"""

from __future__ import annotations

import importlib
import sys

import tyro

#: command words -> (module, options dataclass, function), imported only when used.
COMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("collect",): ("wmgym.data.collect", "CollectArgs", "collect_main"),
    ("bench", "sim"): ("wmgym.bench", "BenchSimArgs", "bench_sim_main"),
    ("bench", "speed"): ("wmgym.bench", "BenchSpeedArgs", "bench_speed_main"),
    ("sweep",): ("wmgym.sweep", "SweepArgs", "sweep_main"),
    ("train", "tokenizer"): ("wmgym.train.tokenizer", "TrainTokenizerArgs", "train_tokenizer_main"),
    ("train", "dynamics"): ("wmgym.train.dynamics", "TrainDynamicsArgs", "train_dynamics_main"),
    ("train", "state-model"): ("wmgym.train.state_model", "TrainStateModelArgs",
                               "train_state_model_main"),
    ("train", "decoder"): ("wmgym.train.distill", "TrainDecoderArgs", "train_decoder_main"),
    ("train", "fast-dynamics"): ("wmgym.train.fast_dynamics", "TrainFastDynamicsArgs",
                                 "train_fast_dynamics_main"),
    ("eval",): ("wmgym.evaluation", "EvalArgs", "eval_main"),
    ("transfer",): ("wmgym.transfer", "TransferArgs", "transfer_main"),
    ("mbpo",): ("wmgym.mbpo_compare", "MBPOArgs", "mbpo_main"),
    ("imitate",): ("wmgym.imitation", "ImitateArgs", "imitate_main"),
    ("agents", "build"): ("wmgym.agent_family", "BuildAgentsArgs", "build_agents_main"),
    ("card",): ("wmgym.card", "CardArgs", "card_main"),
    ("recipe",): ("wmgym.recipe", "RecipeArgs", "recipe_main"),
    ("demo",): ("wmgym.demo", "DemoArgs", "demo_main"),
}


def _usage() -> str:
    lines = ["usage: wmgym <command> [--options]   (wmgym <command> --help for options)", ""]
    for words, (module, cls, _) in COMMANDS.items():
        lines.append(f"  wmgym {' '.join(words):<20} {module}.{cls}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``wmgym`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            module, cls, fn = COMMANDS[words]
            mod = importlib.import_module(module)
            args = tyro.cli(getattr(mod, cls), args=argv[n:], prog=f"wmgym {' '.join(words)}")
            getattr(mod, fn)(args)
            return
    print(_usage())
    sys.exit(0 if not argv or argv[0] in ("-h", "--help") else 2)


if __name__ == "__main__":
    main()
