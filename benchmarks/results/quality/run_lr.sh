#!/bin/sh
# Last, time permitting: Adam 1e-3 (one rate, cosine tau) on cifar-a and digits, a run started only before 16:40 UTC
# (measuring ends by 16:45), and only if the whole set of 3 seeds can start by 16:31.
export OMP_NUM_THREADS=1
[ "$(date -u +%H%M)" -lt 1631 ] || exit 0
for run in "cifar-a 0" "cifar-a 1" "cifar-a 2" "digits 0" "digits 1" "digits 2"; do
  set -- $run
  [ "$(date -u +%H%M)" -lt 1640 ] && python -m benchmarks.quality --cifar ../shared/data/cifar10_small.npz \
    --batch-size 128 --width 16 --eval-every 50 --threads 1 --steps 200 \
    --out benchmarks/results/quality/runs.jsonl --encoders benchmarks/results/quality/encoders \
    --seeds $2 --splits $1 --contestants byol-wrap:lr=1e-3
done
echo "=== lr runs done $(date -u)"
