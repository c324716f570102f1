#!/bin/bash
# Ablations of the telluric model, one thread per run, two runs at a time, one observation per
# train star, lr 2e-3:
#   paper-N{0,15,30,300}-s{0,1}     the paper's training (no telluric layer), whitening N km/s
#   layer-N{0,15,30}-s{0,1}         with the telluric layer (the shipped recipe), whitening N km/s
#   {paper,layer}-AE30-s0           deterministic autoencoder instead of the VAE, N = 30 km/s
# all of these 40 epochs, and
#   {paper,layer}120-N{0,30}-s{0,1} the same at 120 epochs (40 leaves some seeds undertrained).
# Two seeds show how much of a difference is training noise. Run from the repository root;
# the models go to benchmarks/work/ablation/ (not committed), the training summaries to
# benchmarks/results/ablation/.
set -e
mkdir -p benchmarks/work/ablation benchmarks/results/ablation
jobs=()
for seed in 0 1; do
  for n in 0 15 30 300; do jobs+=("paper $n $seed 40"); done
  for n in 0 15 30; do jobs+=("layer $n $seed 40"); done
done
jobs+=("paper AE30 0 40" "layer AE30 0 40")
for seed in 0 1; do
  for n in 0 30; do jobs+=("paper $n $seed 120" "layer $n $seed 120"); done
done
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c 'set -e
  variant=$0; n=$1; seed=$2; epochs=$3; flags=""
  [ "$variant" = paper ] && flags="--no-telluric-layer"
  [ "$epochs" = 40 ] || variant=$variant$epochs
  label=$variant-N$n-s$seed
  if [ "$n" = AE30 ]; then n=30; flags="$flags --autoencoder"; label=$variant-AE30-s$seed; fi
  [ -f benchmarks/work/ablation/$label.asdf ] && { echo "$label exists"; exit 0; }
  OMP_NUM_THREADS=1 python benchmarks/training/train_tellurics.py --epochs $epochs --copies 1 --lr 2e-3 \
      --seed $seed --threads 1 --whitening $n $flags \
      --output benchmarks/work/ablation/$label.asdf \
      --json benchmarks/results/ablation/$label.json > /dev/null
  echo "$label done"'
