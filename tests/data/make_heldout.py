"""Writes a task's regression episodes for ``tests/test_quality.py``.

A few held-out episodes of a dataset, cut short, one per policy family first:

    python tests/data/make_heldout.py --task pick --data data/pick --out tests/data/heldout_pick
    python tests/data/make_heldout.py --task door --data runs/recipe/door/data/mix \
        --out tests/data/heldout_door --steps 40
    python tests/data/make_heldout.py --task stack --data runs/recipe/stack/data/mix \
        --out tests/data/heldout_stack --steps 40
"""

import argparse
from dataclasses import replace

from wmgym.data.dataset import read_dataset, read_metadata, write_dataset
from wmgym.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", required=True, help="a dataset with a held-out split")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30, help="steps kept of each episode")
    parser.add_argument("--count", type=int, default=4, help="episodes kept")
    args = parser.parse_args()

    held = read_dataset(args.data, "heldout")
    chosen, seen = [], set()
    for ep in held:  # one episode per policy family first, for variety
        family = ep.policy.split(":")[0] + str("drop" in ep.policy or "error" in ep.policy)
        if family not in seen:
            seen.add(family)
            chosen.append(ep)
    chosen = (chosen + [e for e in held if all(e is not c for c in chosen)])[: args.count]
    n = args.steps
    short = [
        replace(ep, observations={k: v[: n + 1] for k, v in ep.observations.items()},
                actions=ep.actions[:n], rewards=ep.rewards[:n], terminations=ep.terminations[:n],
                truncations=ep.truncations[:n], success=ep.success[:n])
        for ep in chosen
    ]
    write_dataset(args.out, short, load_spec(args.task), heldout_fraction=0.0,
                  extra={"source": f"{args.data} held-out split",
                         "source_heldout": read_metadata(args.data)["heldout"]},
                  overwrite=True)
    print("policies:", [e.policy for e in short], "seeds:", [e.seed for e in short])


if __name__ == "__main__":
    main()
