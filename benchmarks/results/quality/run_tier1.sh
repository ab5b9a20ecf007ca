#!/bin/sh
# Tier 1 of the quality study (predictor lr scale, cosine tau schedule): 3 splits x 3 seeds, seed by seed,
# one 200-step run per contestant (step-100 values read from the curves). Resumable: rerun to finish.
export OMP_NUM_THREADS=1
for seed in 0 1 2; do
  python -m benchmarks.quality --cifar ../shared/data/cifar10_small.npz --splits cifar-a cifar-b digits \
    --batch-size 128 --width 16 --eval-every 50 --threads 1 \
    --out benchmarks/results/quality/runs.jsonl --encoders benchmarks/results/quality/encoders \
    --seeds $seed --steps 200 --contestants random byol-wrap byol-wrap:pred=10 byol-wrap:schedule=constant
done
