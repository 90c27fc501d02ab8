#!/bin/bash
# The GPU figures of docs/training.md: WRN-16-4 with profiles/gpu.yaml's recipe on data/processed's 48,000
# training images (time to 92-94% and the test accuracy after each epoch; the profile's own wrn-16-8 on 57,000 is
# bench/gpu_wide.sh) and the fast net's time to 94% (profiles/gpu-fast.yaml and batch/lr variants), on one CUDA
# GPU. Needs data/processed (`dvc repro preprocess`); writes nothing but its logs, to $OUT (default bench/out-gpu).
#   bench/gpu_check.sh                       # about 6 minutes on an H200
#   WRN_EPOCHS=140 bench/gpu_check.sh        # the longer WRN run (about 3.5 minutes of it)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out-gpu}; WRN_EPOCHS=${WRN_EPOCHS:-60}; SEEDS=${SEEDS:-3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
bench() { python3 bench/bench.py --device cuda "$@" 2>&1 | grep --line-buffered -v Warning; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
                                'cuDNN', torch.backends.cudnn.version())" | tee -a "$OUT/env.txt"
bench --profile profiles/gpu.yaml --nets wrn --accuracy --epochs "$WRN_EPOCHS" | tee "$OUT/wrn-${WRN_EPOCHS}ep.txt"
fast() { bench --profile profiles/gpu-fast.yaml --nets fast_whiten --accuracy --seeds "$SEEDS" "$@"; }
fast | tee "$OUT/fast_whiten-b1024-24ep.txt"
fast --set train.batch_size=512 --set train.lr=0.3 --epochs 20 | tee "$OUT/fast_whiten-b512-20ep.txt"
fast --set train.batch_size=512 --set train.lr=0.3 --epochs 16 | tee "$OUT/fast_whiten-b512-16ep.txt"
fast --set train.batch_size=256 --set train.lr=0.2 --epochs 16 | tee "$OUT/fast_whiten-b256-16ep.txt"
fast --set train.batch_size=256 --set train.lr=0.2 --epochs 12 | tee "$OUT/fast_whiten-b256-12ep.txt"
