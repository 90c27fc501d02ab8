#!/bin/bash
# One wide ResNet member on one CUDA GPU, aiming at profiles/gpu.yaml's goal of >= 96% test accuracy: the recipe
# of profiles/gpu.yaml with a wider net (NET, default wrn-16-8) trained on more images (a validation share of VAL,
# default 0.05: 57,000 training images instead of 48,000; the published >96% results train on all 60,000).
# The schedule is sized to the GPU: the bench's training throughput first, then as many epochs as fit BUDGET_S
# seconds of training (at most MAX_EPOCHS). Needs data/processed (`dvc repro preprocess`); writes its logs to $OUT.
#   bench/gpu_wide.sh                         # about 9 minutes on an H200
#   NET=wrn-28-10 BUDGET_S=1800 bench/gpu_wide.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out-gpu}; NET=${NET:-wrn-16-8}; VAL=${VAL:-0.05}
BUDGET_S=${BUDGET_S:-380}; MAX_EPOCHS=${MAX_EPOCHS:-150}; DATA=${DATA:-/tmp/processed-val$VAL}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
                                'cuDNN', torch.backends.cudnn.version())" | tee -a "$OUT/env.txt"
# The same images, mean and std as data/processed; only the validation masks are drawn again, by the preprocess
# stage's own function and seed, with the smaller share.
rm -rf "$DATA" && mkdir -p "$DATA" && cp -r data/processed/test data/processed/train "$DATA"/ || exit
python3 - "$DATA/train" "$VAL" <<'PY' || exit
import sys
from pathlib import Path
import numpy as np
from fmnist.data.splits import make_splits
from fmnist.params import load_params
folder, share = Path(sys.argv[1]), float(sys.argv[2])
cfg = load_params().preprocess
is_val = make_splits(np.load(folder / "labels.npy"), cfg.n_splits, share, cfg.seed)
np.save(folder / "is_val.npy", is_val)
print(f"validation share {share}: {int(is_val[0].sum())} validation images per split")
PY
# EXTRA: more bench options, word-split (a CPU dry run: EXTRA="--device cpu --set train.device=cpu").
args=(--device cuda --profile profiles/gpu.yaml --set "preprocess.val_fraction=$VAL" --data "$DATA"
      --nets "$NET" --batch-size 512 ${EXTRA:-})
bench() { python3 bench/bench.py "${args[@]}" "$@" 2>&1 | grep --line-buffered -v Warning; }
bench | tee "$OUT/$NET-throughput.txt"
# Uncompiled steps; the compiled training is faster, and each epoch adds augmentation and validation: 1.25x.
per_epoch=$(awk -v net="$NET" '$1 == net {print $7}' "$OUT/$NET-throughput.txt")
epochs=$(python3 -c "print(max(1, min($MAX_EPOCHS, int($BUDGET_S / (1.25 * $per_epoch)))))") || exit
echo "$NET: $per_epoch s an epoch uncompiled; $epochs epochs in a budget of $BUDGET_S s" | tee -a "$OUT/env.txt"
bench --accuracy --epochs "$epochs" | tee "$OUT/$NET-${epochs}ep.txt"
echo "wall seconds: $((SECONDS - started))" | tee -a "$OUT/env.txt"
