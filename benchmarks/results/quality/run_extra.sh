#!/bin/sh
# After run_quality.sh: constant tau on cifar-b (seeds 1, 2), then the test split, once, for the chosen default
# (byol-wrap) and random init. (Adam 1e-3 was planned here too; the load left no time for 3 seeds of it.)
export OMP_NUM_THREADS=1
python -m benchmarks.quality --cifar ../shared/data/cifar10_small.npz --batch-size 128 --width 16 \
  --eval-every 50 --threads 1 --steps 200 --out benchmarks/results/quality/runs.jsonl \
  --encoders benchmarks/results/quality/encoders --seeds 1 2 --splits cifar-b --contestants byol-wrap:schedule=constant
echo "=== test split, chosen default only (+ random init), $(date -u)"
python -m benchmarks.quality --test --cifar ../shared/data/cifar10_small.npz --splits cifar-a cifar-b \
  --contestants random byol-wrap --steps 200 --seeds 0 1 2 --encoders benchmarks/results/quality/encoders \
  --out benchmarks/results/quality/test.jsonl
echo "=== done $(date -u)"
