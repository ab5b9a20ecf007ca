#!/bin/sh
# After run_quality.sh: constant tau on cifar-b (seeds 1, 2), then Adam 1e-3 on cifar-a while the clock allows
# (each run is started only before 16:35 UTC, so that measuring ends by 16:45), then the test split, once,
# for the chosen default (byol-wrap) and random init; then Adam 1e-3 on digits if runs can still start by 16:37.
export OMP_NUM_THREADS=1
Q="python benchmarks/quality.py --cifar ../shared/data/cifar10_small.npz --batch-size 128 --width 16
   --eval-every 50 --threads 1 --steps 200 --out benchmarks/results/quality/runs.jsonl
   --encoders benchmarks/results/quality/encoders"
$Q --seeds 1 2 --splits cifar-b --contestants byol-wrap:schedule=constant
for seed in 0 1 2; do
  [ "$(date -u +%H%M)" -lt 1635 ] && $Q --seeds $seed --splits cifar-a --contestants byol-wrap:lr=1e-3
done
echo "=== test split, chosen default only (+ random init), $(date -u)"
python benchmarks/quality.py --test --cifar ../shared/data/cifar10_small.npz --splits cifar-a cifar-b \
  --contestants random byol-wrap --steps 200 --seeds 0 1 2 --encoders benchmarks/results/quality/encoders \
  --out benchmarks/results/quality/test.jsonl
for seed in 0 1 2; do
  [ "$(date -u +%H%M)" -lt 1637 ] && $Q --seeds $seed --splits digits --contestants byol-wrap:lr=1e-3
done
echo "=== done $(date -u)"
