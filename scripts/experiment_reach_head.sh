#!/usr/bin/env bash
# Session-4 experiment (measured, NOT shipped; README "Tried and not shipped"): the shipped recipe's
# base fine-tuned on a fourth dataset of long held moves, then given the parallel head.
# Needs the recipe's data and runs/wm_base. Numbers: README and benchmarks/speed_parallel_head.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export MUJOCO_GL=egl OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

$PY -m wmgym.cli collect --policy reach --episodes 200 --workers 2 --seed 11000 \
    --out data/pick_reach --overwrite
DATA4=(--data data/pick --extra-data data/pick_explore data/pick_slow data/pick_reach)
$PY -m wmgym.cli train dynamics --init runs/wm_base "${DATA4[@]}" --gap-embedding --steps 1200 \
    --lr 3e-4 --warmup 100 --out runs/dynamics_reach --checkpoint runs/wm_reach
# tokens come from DATA/token_cache/ this time
$PY -m wmgym.cli train dynamics --init runs/wm_reach "${DATA4[@]}" --gap-embedding \
    --parallel-head --steps 1000 --lr 3e-4 --warmup 100 --out runs/dynamics_head \
    --checkpoint runs/wm_head
$PY -m wmgym.cli eval --checkpoint runs/wm_reach --data data/pick --split heldout \
    --out out/eval_reach
for mode in parallel autoregressive; do
    $PY -m wmgym.cli eval --checkpoint runs/wm_head --data data/pick --split heldout \
        --decoding "$mode" --out "out/eval_head_$mode"
done
for run in reach head; do  # the real side: the shipped sweep's robosuite episodes, same seeds
    $PY -m wmgym.cli sweep --episodes 20 --seed 1000 --real-from benchmarks/sweep.json \
        --checkpoint "runs/wm_$run" --out "out/sweep_$run" --no-progress
done
$PY -m wmgym.cli bench speed --checkpoint runs/wm_head --out benchmarks/speed_parallel_head.json
# the parallel head alone on the shipped weights (autoregressive path untouched), 3 datasets
$PY -m wmgym.cli train dynamics --init checkpoints/WM-Pick-v0 --data data/pick \
    --extra-data data/pick_explore data/pick_slow --gap-embedding --parallel-head --head-only \
    --steps 600 --lr 1e-3 --warmup 50 --out runs/dynamics_headonly --checkpoint runs/wm_headonly
$PY -m wmgym.cli eval --checkpoint runs/wm_headonly --data data/pick --split heldout \
    --decoding parallel --out out/eval_headonly
