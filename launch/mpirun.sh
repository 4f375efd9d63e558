#!/usr/bin/env bash
# mpirun with the settings Switchyard wants on one machine: one BLAS thread per rank (ranks
# already fill the cores, and a fixed thread count keeps summation order, hence bitwise resume,
# stable), oversubscription allowed, and running as root allowed (containers).
# Usage: bash launch/mpirun.sh RANKS COMMAND [ARGS...]
set -euo pipefail
ranks=$1
shift
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -np "$ranks" --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS=1 "$@"
