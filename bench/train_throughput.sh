#!/usr/bin/env bash
# CPU training throughput of the example config, Switchyard against the PyTorch baseline, in one
# run on the same machine. Usage: bash bench/train_throughput.sh [STEPS]   (default 60)
# Needs a build (launch/setup.sh), corpora/brown.h5, and Debian's python3-torch + python3-h5py.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--set train.steps="$steps" --set eval.tokens=0 --set run.log_every=10)

rate() { grep -o "([0-9]* tokens/s)" "$1" | tr -d '(' | cut -d' ' -f1; }

./build/switchyard train configs/example.yaml "${common[@]}" --set run.dir="$out/one" >"$out/one.log"
bash launch/mpirun.sh 2 ./build/switchyard train configs/example.yaml "${common[@]}" \
  --set run.dir="$out/two" --set parallel.expert_parallel=2 --set train.micro_batch_size=8 >"$out/two.log"
/usr/bin/python3 bench/pytorch_baseline.py corpora/brown.h5 "$steps" 2 >"$out/torch.log"
torch_rate=$(grep -o "[0-9]* tokens/s" "$out/torch.log" | cut -d' ' -f1)

echo "example config (3.45M params, 8 experts top-2, 16 x 128 tokens per step), $steps steps, $(nproc) cores, $(date -u +%F)"
printf "%-52s %10s\n" "run" "tokens/s"
printf "%-52s %10s\n" "switchyard, 1 process, OpenBLAS 2 threads" "$(rate "$out/one.log")"
printf "%-52s %10s\n" "switchyard, mpirun -np 2, expert_parallel 2, B=8" "$(rate "$out/two.log")"
printf "%-52s %10s\n" "pytorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), 2 threads (steps 6+)" "$torch_rate"
