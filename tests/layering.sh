#!/usr/bin/env bash
# The dependency direction of docs/architecture.md, checked on the sources: trainer may include
# parallel, optim, data and model; parallel, optim and data only model (and themselves); model
# only itself. One line per include that runs the other way; exit 1 if there is any.
#   Usage: bash tests/layering.sh [REPO_ROOT]
set -uo pipefail
cd "${1:-$(dirname "$0")/..}"
allowed() {  # allowed FOLDER: the project folders its sources may include from
  case $1 in
    model) echo "model" ;;
    optim | parallel | data) echo "$1 model" ;;
    trainer) echo "trainer parallel optim data model" ;;
  esac
}
status=0
for layer in model optim parallel data trainer; do
  ok=$(allowed "$layer")
  while IFS=: read -r file line text; do
    target=$(sed -E 's/.*#include "([a-z_]+)\/.*/\1/' <<< "$text")
    case " $ok " in *" $target "*) continue ;; esac
    case $target in model | optim | parallel | data | trainer) ;; *) continue ;; esac
    echo "$file:$line: $layer/ includes $target/ (${text#*#include })"
    status=1
  done < <(grep -rn --include='*.h' --include='*.cpp' --include='*.cu' --include='*.cuh' \
             -E '^#include "[a-z_]+/' "$layer")
done
[ "$status" -eq 0 ] && echo "layering: every include runs trainer -> parallel, optim, data -> model"
exit "$status"
