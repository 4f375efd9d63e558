# Sourced first by the CLI's end-to-end scripts (tests/cli_*.sh SWITCHYARD ...): sets
# $switchyard to the binary's absolute path and moves into $work, a fresh folder removed on exit,
# with the environment mpirun needs in a container (root) and one BLAS thread per rank. Resolve
# any other relative argument before sourcing it: it changes the directory.
switchyard=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
