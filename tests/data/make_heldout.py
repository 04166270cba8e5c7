"""Regenerates tests/data/heldout_pick: held-out episodes (first 30 steps) for the quality test.

Run from the repository root: ``python tests/data/make_heldout.py`` (it reads ``data/pick``,
made by ``wmgym collect``).
"""

from dataclasses import replace

from wmgym.data.dataset import read_dataset, read_metadata, write_dataset
from wmgym.spec import load_spec

STEPS, COUNT = 30, 4

if __name__ == "__main__":
    held = read_dataset("data/pick", "heldout")
    meta = read_metadata("data/pick")
    chosen, seen = [], set()
    for ep in held:  # one episode per policy family first, for variety
        family = ep.policy.split(":")[0] + str("drop" in ep.policy or "error" in ep.policy)
        if family not in seen:
            seen.add(family)
            chosen.append(ep)
    chosen = (chosen + [e for e in held if all(e is not c for c in chosen)])[:COUNT]
    short = [
        replace(ep, observations={k: v[: STEPS + 1] for k, v in ep.observations.items()},
                actions=ep.actions[:STEPS], rewards=ep.rewards[:STEPS],
                terminations=ep.terminations[:STEPS], truncations=ep.truncations[:STEPS],
                success=ep.success[:STEPS])
        for ep in chosen
    ]
    write_dataset("tests/data/heldout_pick", short, load_spec("pick"), heldout_fraction=0.0,
                  extra={"source": "data/pick held-out split", "source_heldout": meta["heldout"]},
                  overwrite=True)
    print("policies:", [e.policy for e in short], "seeds:", [e.seed for e in short])
