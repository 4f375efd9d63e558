#!/usr/bin/env bash
# Checkpoint save speed against the disk, in one go (issue 12): configure and build, the write-path
# tests (tests/test_checkpoint_async: Fletcher-32 equal to HDF5's filter, an async save's file
# equal to a sync save's, a write error and a full tmpfs failing cleanly; tests/test_checkpoint),
# then bench_checkpoint in sync and async mode (async after real training steps, while its snapshot
# memory is prepared in the background) next to `dd ... conv=fsync` of the same size in the
# same folder: the example config, and on a GPU machine the 1.81B MoE of configs/bench/moe.yaml
# (21.7 GB a checkpoint; one on disk at a time). Logs in OUTDIR; a summary table is printed last.
#   Usage: bash bench/checkpoint_save/run.sh [OUTDIR]     (default: $OUT, else ckpt-logs)
#   SY_CKPT_BUILD_DIR (default build-ckptio-gpu), SY_CKPT_DIR (where the checkpoints go; default
#   ./ckpt-bench, on the disk under test: not /tmp if that is a tmpfs), SY_CKPT_CUDA (ON when
#   nvidia-smi works, else OFF), SY_CKPT_BIG (the big model's config; default configs/bench/moe.yaml
#   on CUDA, else the 99.4M example variant of BENCHMARKS.md).
set -uo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/../../launch/lib.sh"
sy_init "${1:-${OUT:-ckpt-logs}}"
out=$sy_out
build=${SY_CKPT_BUILD_DIR:-build-ckptio-gpu}
dir=${SY_CKPT_DIR:-$PWD/ckpt-bench}
cuda=${SY_CKPT_CUDA:-$(nvidia-smi > /dev/null 2>&1 && echo ON || echo OFF)}
backend=(); [ "$cuda" = ON ] && backend=(--set run.backend=cuda)

sy_dry || { date -u; uname -a; nvidia-smi 2>&1 | head -15; df -h "$(dirname "$dir")"; free -g;
  cat /proc/sys/vm/dirty_background_ratio /proc/sys/vm/dirty_ratio; } > "$out/machine.log" 2>&1
sy_configure "$build" -DSY_CUDA="$cuda" &&
  sy_build "$build" test_checkpoint_async test_checkpoint bench_checkpoint
if [ "$sy_failed" -eq 0 ]; then
  sy_step test_checkpoint_async "$build/tests/test_checkpoint_async"
  sy_step test_checkpoint "$build/tests/test_checkpoint"
  sy_step bench_example "$build/bench/bench_checkpoint" configs/example.yaml "${backend[@]}" \
    --repeats 3 --dir "$dir"
  # --steps: the training steps between the start of the async snapshot's background preparation
  # and the first async save (200 of the 1.81B model: ~16 s on the H200).
  if [ "$cuda" = ON ]; then
    read -ra big <<< "${SY_CKPT_BIG:-configs/bench/moe.yaml --steps 200}"
  else
    read -ra big <<< "${SY_CKPT_BIG:-configs/example.yaml --set model.d_model=768 \
      --set model.n_layers=12 --set model.n_heads=12 --set moe.expert_hidden=320 --steps 2}"
  fi
  sy_step bench_big "$build/bench/bench_checkpoint" "${big[@]}" "${backend[@]}" --repeats 2 \
    --load 0 --dir "$dir"
fi
sy_do rm -rf "$dir"
echo
for f in bench_example bench_big; do
  [ -f "$out/$f.log" ] && { echo "-- $f"; grep -E '^[a-z].*parameters|^  checkpoint [0-9]|^  mode |^  (sync|async|dd) ' "$out/$f.log"; }
done
echo
sy_table
exit "$sy_failed"
