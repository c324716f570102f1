#!/bin/bash
# Whitening (N = 0, 15, 30, 300 km/s) and VAE-vs-AE ablation of the telluric model: the same
# cheap budget (40 epochs, one observation per train star) for every variant.
# Run from the repository root; the models go to benchmarks/work/ (not committed).
set -e
mkdir -p benchmarks/work
for n in 0 15 30 300; do
  OMP_NUM_THREADS=1 python benchmarks/train_tellurics.py --epochs 40 --copies 1 --lr 2e-3 --seed 0 --threads 1 \
      --whitening $n --output benchmarks/work/karaoke-N$n.asdf --json benchmarks/results/train_tellurics_N$n.json
done
OMP_NUM_THREADS=1 python benchmarks/train_tellurics.py --epochs 40 --copies 1 --lr 2e-3 --seed 0 --threads 1 \
    --whitening 30 --autoencoder --output benchmarks/work/karaoke-AE30.asdf --json benchmarks/results/train_tellurics_AE30.json
