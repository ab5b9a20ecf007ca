#!/bin/sh
# Tier 1 of the quality study: predictor lr scale and the cosine tau schedule, 3 splits x 3 seeds.
OMP_NUM_THREADS=1 exec python benchmarks/quality.py --cifar ../shared/data/cifar10_small.npz \
  --splits cifar-a cifar-b digits \
  --contestants random byol-wrap byol-wrap:pred=10 byol-wrap:schedule=constant \
  --steps 100 300 --seeds 0 1 2 --batch-size 128 --width 16 --eval-every 50 --threads 1 \
  --out benchmarks/results/quality/runs.jsonl --encoders benchmarks/results/quality/encoders
