#!/usr/bin/env bash
# The recipe of the shipped checkpoints/WM-Pick-v0: data -> tokenizer -> dynamics -> eval -> card.
# Runs on 2 CPU cores (times in checkpoints/WM-Pick-v0/card.md); a GPU only makes it faster.
# Multi-process: prefix the train commands with `torchrun --nproc_per_node N -m` instead of `-m`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export MUJOCO_GL=egl
# On a 2-core machine shared with other work, torch's default 2 OpenMP threads stall each other
# (measured 3x slower steps); one thread per process is slower alone but robust.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

$PY -m wmgym.cli collect --episodes 400 --workers 2 --seed 0 --out data/pick --overwrite
# off-script actions (excursions, axis moves, standing still), slow picks and pauses: they break
# the tie between an action and the state of the pick; see the card's "Off-data actions"
$PY -m wmgym.cli collect --policy explore --episodes 200 --workers 2 --seed 5000 \
    --out data/pick_explore --overwrite
$PY -m wmgym.cli collect --policy slow --episodes 150 --workers 2 --seed 8000 \
    --out data/pick_slow --overwrite
# the open gripper held at the cube, descents stopped above it, and mis-aimed grasps: without
# them the model grasps for an agent at rest there (README, "the model grasps for them")
$PY -m wmgym.cli collect --policy hesitate --episodes 150 --workers 2 --seed 12000 \
    --out data/pick_hesitate --overwrite
$PY -m wmgym.cli collect --policy hover --episodes 150 --workers 2 --seed 13000 \
    --out data/pick_hover --overwrite
$PY -m wmgym.cli collect --policy miss --episodes 150 --workers 2 --seed 14000 \
    --out data/pick_miss --overwrite
# grasps aimed 0-3 cm off the cube: the offsets where robosuite's grasp holds or slips
$PY -m wmgym.cli collect --policy nearmiss --episodes 200 --workers 2 --seed 16000 \
    --out data/pick_nearmiss --overwrite
$PY -m wmgym.cli train tokenizer --data data/pick --steps 1000 --out runs/tokenizer
$PY -m wmgym.cli train dynamics --data data/pick --tokenizer runs/tokenizer/final \
    --steps "${DYN_STEPS:-2000}" --out runs/dynamics --checkpoint runs/wm_base
# fine-tune on the first three, telling the model when a clip does not follow its context
$PY -m wmgym.cli train dynamics --init runs/wm_base --data data/pick \
    --extra-data data/pick_explore data/pick_slow --gap-embedding --steps "${FT_STEPS:-1200}" \
    --lr 3e-4 --warmup 100 --out runs/dynamics_ft --checkpoint runs/wm_ft
# then with the hesitant grasps, then the hovers too
$PY -m wmgym.cli train dynamics --init runs/wm_ft --data data/pick \
    --extra-data data/pick_explore data/pick_slow data/pick_hesitate --gap-embedding \
    --steps 1000 --lr 3e-4 --warmup 100 --out runs/dynamics_hes --checkpoint runs/wm_hes
$PY -m wmgym.cli train dynamics --init runs/wm_hes --data data/pick \
    --extra-data data/pick_explore data/pick_slow data/pick_hesitate data/pick_hover \
    --gap-embedding --steps 600 --lr 3e-4 --warmup 60 --out runs/dynamics_hov \
    --checkpoint runs/wm_hov
# then the state input on every slot, on all seven (data/pick counted twice), then again with
# the misses counted twice too
ALL="data/pick_explore data/pick_slow data/pick_hesitate data/pick_hover data/pick_miss"
$PY -m wmgym.cli train dynamics --init runs/wm_hov --data data/pick --extra-data data/pick \
    $ALL --gap-embedding --state-input --steps 800 --lr 3e-4 --warmup 60 \
    --out runs/dynamics_sin --checkpoint runs/wm_sin
$PY -m wmgym.cli train dynamics --init runs/wm_sin --data data/pick --extra-data data/pick \
    $ALL data/pick_miss --gap-embedding --state-input --steps 600 --lr 3e-4 --warmup 60 \
    --out runs/dynamics_sin2 --checkpoint runs/wm_sin2
# then the grasp latent (a hold/slip bit drawn once per grasp by a small head on the state,
# fitted first and frozen), with the near misses counted twice and a quarter, then half, of
# the clips cut just before a grasp
ALL="$ALL data/pick_miss data/pick_nearmiss data/pick_nearmiss"
$PY -m wmgym.cli train dynamics --init runs/wm_sin2 --data data/pick --extra-data data/pick \
    $ALL --gap-embedding --state-input --event --event-share 0.25 --steps 800 \
    --lr 3e-4 --warmup 60 --out runs/dynamics_gl --checkpoint runs/wm_gl
$PY -m wmgym.cli train dynamics --init runs/wm_gl --data data/pick --extra-data data/pick \
    $ALL --gap-embedding --state-input --event --event-share 0.5 --steps 800 \
    --lr 3e-4 --warmup 60 --out runs/dynamics_gl2 --checkpoint checkpoints/WM-Pick-v0
# a frame decoder about 3x cheaper, distilled from the model's own imagined frames; the envs
# use it (fast=False or True); fast="full" gives the tokenizer's own
# (the shipped one: --init-from an earlier fast decoder, 1,000 steps at 5e-4)
$PY -m wmgym.cli train decoder --checkpoint checkpoints/WM-Pick-v0 --out runs/fast_decoder
# the transformer with one key/value head per layer (the fast=True preset), distilled on its
# teacher's rollouts, then on windows half of which come from rollouts it imagined itself; its
# grasp head refitted on its own states where grasps begin (the data's episodes replayed closed
# loop, labelled by the real outcomes); then once more on its own rollouts, now drawing grasps
# with that head (the shipped one: --init-from an earlier fast transformer for the first 1,200 steps)
$PY -m wmgym.cli train fast-dynamics --checkpoint checkpoints/WM-Pick-v0 --steps 1200 \
    --out runs/fast_dynamics
$PY -m wmgym.cli train fast-dynamics --checkpoint checkpoints/WM-Pick-v0 --resume \
    --on-policy 512 --steps 2400 --lr 2e-4 --out runs/fast_dynamics
$PY research/grasp_calibration.py --checkpoint checkpoints/WM-Pick-v0 \
    --out runs/grasp_calibration
$PY -m wmgym.cli train fast-dynamics --checkpoint checkpoints/WM-Pick-v0 --resume \
    --on-policy 512 --steps 2400 --lr 2e-4 --out runs/fast_dynamics
$PY -m wmgym.cli eval --checkpoint checkpoints/WM-Pick-v0 --data data/pick --split heldout \
    --out runs/eval
$PY -m wmgym.cli eval --checkpoint checkpoints/WM-Pick-v0 --data data/pick --split heldout \
    --fast full --out runs/eval_full
# the reference the quality regression test (tests/test_quality.py) holds later checkpoints to
$PY -m wmgym.cli eval --checkpoint checkpoints/WM-Pick-v0 --data tests/data/heldout_pick \
    --split all --device cpu --out runs/eval_regression
cp runs/eval_regression/metrics.json checkpoints/WM-Pick-v0/regression.json
# probes of actions the data never showed, for the card
$PY research/probes.py --checkpoint checkpoints/WM-Pick-v0 --out runs/probes.json
# the fast transformer against robosuite: two seed sets, pooled
$PY -m wmgym.cli sweep --task pick --episodes 20 --seed 1000 --fast fast --out runs/sweep_fast_1000
$PY -m wmgym.cli sweep --task pick --episodes 20 --seed 2000 --fast fast --out runs/sweep_fast_2000
$PY -m wmgym.cli sweep --pool runs/sweep_fast_1000/sweep.json runs/sweep_fast_2000/sweep.json \
    --out runs/sweep_fast_pooled
$PY -m wmgym.cli card --checkpoint checkpoints/WM-Pick-v0 --eval runs/eval/metrics.json \
    --data data/pick data/pick_explore data/pick_slow data/pick_hesitate data/pick_hover \
    data/pick_miss data/pick_nearmiss --recipe research/recipe_wm_pick.sh \
    --full-eval runs/eval_full/metrics.json --fast-sweep runs/sweep_fast_pooled/sweep.json \
    --probes runs/probes.json --out checkpoints/WM-Pick-v0/card.md
