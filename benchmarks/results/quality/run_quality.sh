#!/bin/sh
# The quality study as run (resumable: rerunning skips finished rows). Seed by seed, 200-step runs:
# byol-wrap defaults and predictor at 10x on three splits, constant tau on cifar-a and digits.
export OMP_NUM_THREADS=1
Q="python -m benchmarks.quality --cifar ../shared/data/cifar10_small.npz --batch-size 128 --width 16
   --eval-every 50 --threads 1 --steps 200 --out benchmarks/results/quality/runs.jsonl
   --encoders benchmarks/results/quality/encoders"
for seed in 0 1 2; do
  $Q --seeds $seed --splits cifar-a digits cifar-b --contestants random byol-wrap byol-wrap:pred=10
  $Q --seeds $seed --splits cifar-a digits --contestants byol-wrap:schedule=constant
done
