#!/bin/sh
# Tier 1 of the quality study (predictor lr scale, cosine tau schedule), 3 splits x 3 seeds, seed by seed.
# byol-wrap (cosine) gets its own 100- and 200-step runs; constant tau and pred=10 run 200 steps
# (their step-100 values are read from the curve; pred=10's against byol-wrap's 200-step curve).
Q="python benchmarks/quality.py --cifar ../shared/data/cifar10_small.npz --splits cifar-a cifar-b digits
   --batch-size 128 --width 16 --eval-every 50 --threads 1
   --out benchmarks/results/quality/runs.jsonl --encoders benchmarks/results/quality/encoders"
export OMP_NUM_THREADS=1
for seed in 0 1 2; do
  $Q --seeds $seed --steps 100 200 --contestants random byol-wrap byol-wrap:schedule=constant
  $Q --seeds $seed --steps 200 --contestants byol-wrap:pred=10
done
