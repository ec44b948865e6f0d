#!/usr/bin/env bash
# The GPU rows of README's Performance section in one run (about 3 minutes on an H200, 19 at most):
#   RANDMASK_DATA=<data folder> bash bench/gpu_check.sh [output folder, default runs/gpu_check]
# 1. bench_core: the quick preset's training steps and test pass on CUDA, and masked vs unmasked steps;
# 2. bench_attacks: FGSM and PGD, ours (fast, fast without CUDA graphs, exact) against torchattacks, the transfer
#    evaluation, and PGD again on 512 images a batch;
# 3. one epoch of the paper preset (width 64, fp32, batch 128) of 0.7-Shallow, timed by `train` itself, then the
#    same epoch as one Ray task on a local cluster (`train --ray`: what `zoo train --ray` runs for each model);
# 4. Tables 3, 4 and 6 of the report computed here, compared row by row with the committed ones.
# TRAIN_N=<n> trains that epoch on the first n training images only (for a machine that holds a subset).
# Everything printed also lands in <output folder>/gpu_check.log; each step has its own time limit, so a
# slow or failing one cannot take the others down with it.
set -uo pipefail
out=${1:-runs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
train_n=()
[ -n "${TRAIN_N:-}" ] && train_n=(--train-n "$TRAIN_N")

step() {  # step <seconds> <title> <command...>
    local limit=$1 title=$2
    shift 2
    echo "=== $title ($(date -u +%H:%M:%S))"
    timeout "$limit" "$@"
    local rc=$?
    [ $rc -ne 0 ] && echo "=== $title: exit status $rc"
    return 0
}

{
    step 30 "machine" bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
        $python -c 'import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \
        torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA device\")'"
    step 150 "bench_core" "$python" bench/bench_core.py --device cuda --steps 100 --chunk 20 --eval-n 10000
    step 200 "bench_attacks" "$python" bench/bench_attacks.py --rounds 3
    step 90 "bench_attacks, PGD on 512 images a batch" "$python" bench/bench_attacks.py --rounds 3 --n 512 \
        --batch 512 --only pgd
    rm -rf "$out/paper-epoch"
    step 180 "paper preset, one epoch" "$python" -m randmask train "0.7-Shallow" --preset paper --epochs 1 \
        "${train_n[@]}" --out "$out/paper-epoch" --no-bar
    step 10 "paper preset epoch log" bash -c "grep '\"event\": \"epoch\"' '$out/paper-epoch/progress.jsonl'"
    rm -rf "$out/paper-epoch-ray"
    step 240 "paper preset, one epoch as a task on a local Ray cluster (train --ray)" "$python" -m randmask train \
        "0.7-Shallow" --preset paper --epochs 1 "${train_n[@]}" --out "$out/paper-epoch-ray" --no-bar --ray
    step 10 "its epoch log" bash -c "grep '\"event\": \"epoch\"' '$out/paper-epoch-ray/progress.jsonl'"
    rm -rf "$out/report" "$out/crafted"
    step 240 "report tables on this device (Tables 3, 4, 6; cold)" "$python" -c "from pathlib import Path; \
from randmask.results.reproduce import reproduce; reproduce('quick', out=Path('$out/report'), cache=Path('$out/crafted'), \
only=['table3_shuffle', 'table4_whitebox', 'table6_mnist'])"
    step 30 "against the committed tables" "$python" bench/compare_results.py results "$out/report/results"
} 2>&1 | tee "$out/gpu_check.log"
