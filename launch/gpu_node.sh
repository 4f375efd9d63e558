#!/usr/bin/env bash
# One rank per GPU of this machine, each bound to the CPUs and memory of its GPU's NUMA node:
#   bash launch/gpu_node.sh COMMAND [ARGS...]
#   e.g. bash launch/gpu_node.sh build/switchyard train configs/bench/moe.yaml \
#          --set run.backend=cuda --set parallel.expert_parallel=8
# Switchyard gives node-local rank r the r-th visible GPU itself (parallel.communicator: auto
# picks NCCL when every rank has its own GPU); this script starts the ranks and binds each one's
# CPUs and memory to that GPU's NUMA node (numactl, where installed and the node is known), so
# that host staging and the data loader stay near the GPU.
# Environment (optional):
#   SY_GPUS=N            ranks (default: every GPU that CUDA_VISIBLE_DEVICES or nvidia-smi lists)
#   SY_GPU_NODE_PIDS=DIR each rank writes its pid to DIR/rank_R.pid (bench/scaling/run.sh kills
#                        one to check that the job ends)
#   NCCL_NVLS_ENABLE     default 0: NVLink SHARP (multicast) off, as on the machines this was
#                        measured on; set 1 to let NCCL use it where the fabric supports it
set -euo pipefail

# The GPU (an index or UUID for nvidia-smi -i) that node-local rank $1 gets.
gpu_of_local_rank() {
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    local -a visible
    IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
    echo "${visible[$(($1 % ${#visible[@]}))]}"
  else
    echo $(($1 % $(nvidia-smi -L | wc -l)))
  fi
}

# The NUMA node of GPU $1 from its PCI address, or nothing when unknown.
numa_node_of_gpu() {
  local bus node
  bus=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader -i "$1" 2> /dev/null) || return 0
  bus=${bus,,}
  bus=${bus#0000}  # nvidia-smi's 8-digit PCI domain; sysfs uses 4
  node=$(cat "/sys/bus/pci/devices/$bus/numa_node" 2> /dev/null) || return 0
  [ "$node" -ge 0 ] 2> /dev/null && echo "$node"
  return 0
}

if [ "${SY_GPU_NODE_RANK:-0}" = 1 ]; then  # inside mpirun: one rank
  local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-0}}
  if [ -n "${SY_GPU_NODE_PIDS:-}" ]; then
    echo $$ > "$SY_GPU_NODE_PIDS/rank_${OMPI_COMM_WORLD_RANK:-$local_rank}.pid"
  fi
  node=$(numa_node_of_gpu "$(gpu_of_local_rank "$local_rank")")
  if [ -n "$node" ] && command -v numactl > /dev/null; then
    exec numactl --cpunodebind="$node" --membind="$node" "$@"
  fi
  exec "$@"
fi

[ $# -gt 0 ] || { echo "usage: bash launch/gpu_node.sh COMMAND [ARGS...]" >&2; exit 2; }
command -v nvidia-smi > /dev/null ||
  { echo "gpu_node.sh: nvidia-smi not found: no GPU driver here" >&2; exit 1; }
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  gpus=${SY_GPUS:-${#visible[@]}}
else
  gpus=${SY_GPUS:-$(nvidia-smi -L | wc -l)}
fi
[ "$gpus" -ge 1 ] 2> /dev/null || { echo "gpu_node.sh: no GPU listed (SY_GPUS=$gpus)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # containers run as root
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
exec mpirun -np "$gpus" --bind-to none -x SY_GPU_NODE_RANK=1 -x NCCL_NVLS_ENABLE \
  -x OPENBLAS_NUM_THREADS=1 ${SY_GPU_NODE_PIDS:+-x SY_GPU_NODE_PIDS} bash "$0" "$@"
