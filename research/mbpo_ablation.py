"""MBPO ablation: SAC with its warm-up imagined and no branches, beside ``wmgym mbpo``'s runs.

    python research/mbpo_ablation.py --task pick --seeds 0 1 2 ...   # wmgym mbpo's options

Does an MBPO agent gain from its imagined branches, or from its imagined warm-up alone? This
trains the ``sac_imagined`` agent: the same SAC as ``wmgym mbpo``'s, its ``learning_starts``
demonstrations imagined in ``WM-<Task>-v0``, and no branches. It writes a result like ``wmgym
mbpo``'s (``<out>/mbpo_ablation.json``) whose runs can be put beside that command's.
"""

from __future__ import annotations

from dataclasses import replace

import tyro

from wmgym.mbpo_compare import MBPOArgs, plot_mbpo, run_mbpo, summarize, train_agent
from wmgym.results import resolve_task, write_result
from wmgym.rl import RealEvaluator


def run_ablation(args: MBPOArgs) -> dict:
    """``wmgym mbpo``'s result with one ``sac_imagined`` run per seed (and its methods' runs)."""
    spec, checkpoint = resolve_task(args.task, args.checkpoint)
    result = run_mbpo(args) if args.methods else None
    evaluate = RealEvaluator(spec)
    try:
        runs = [train_agent(args, spec=spec, checkpoint=checkpoint, seed=seed, branches=False,
                            imagined=True, evaluate=evaluate, label="sac_imagined")
                for seed in args.seeds]
    finally:
        evaluate.close()
    result = result or run_mbpo(replace(args, seeds=()))
    result["runs"] += runs
    result["summary"] = summarize(result["runs"], args.steps)
    return result


if __name__ == "__main__":
    args = tyro.cli(MBPOArgs)
    out = run_ablation(args)
    write_result(args.out / "mbpo_ablation.json", out)
    plot_mbpo(out, args.out / "mbpo_ablation.png")
    print(out["summary"])
