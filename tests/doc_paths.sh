#!/usr/bin/env bash
# Every repository path that README.md, BENCHMARKS.md and docs/*.md name exists in the
# repository, so that the docs stand alone in a clone. Usage: doc_paths.sh [REPO_ROOT]
#
# A word is taken for a path when it holds a "/", does not start with one (HDF5 paths such as
# /model/embedding are not files), holds no placeholder (<run.dir>, $OUT), and either starts
# with a top-level entry of the repository, or with ./ or ../, or ends in a file extension.
# It exists when it names a file or folder from the repository root or from the doc's own folder
# (Markdown links to images are relative to the doc); globs (data/sampler.*) and one brace list
# (configs/bench/{moe,dense,fine}.yaml) are expanded. Paths made at run time are allowed below.
set -uo pipefail
root=$(realpath "${1:-$(dirname "$0")/..}")
cd "$root" || exit 1
shopt -s nullglob

# Made at run time, or outside the repository by design: run directories, build folders, the
# prepared corpora, the dependency cache, log folders that commands are told to write; and the
# user's own input files in examples (data/my-*: README's prepare-data --format megatron).
runtime_prefixes=(runs/ build/ build- corpora/ .deps/ gpu-logs/ gpu-step/ ffn/ gg/ out/ logs/
                  data/my-)

top_level=" $(ls -A | tr '\n' ' ') "
failures=0
checked=0

is_runtime() {
  local word=$1 prefix
  for prefix in "${runtime_prefixes[@]}"; do
    [[ $word == "$prefix"* ]] && return 0
  done
  return 1
}

# exists WORD DOC_DIR: the path (after glob and brace expansion) is there.
exists() {
  local word=$1 doc_dir=$2 base candidate
  local -a variants=("$word")
  if [[ $word =~ ^([^{]*)\{([^}]*)\}(.*)$ ]]; then
    local head=${BASH_REMATCH[1]} list=${BASH_REMATCH[2]} tail=${BASH_REMATCH[3]} item
    variants=()
    IFS=',' read -ra items <<<"$list"
    for item in "${items[@]}"; do variants+=("$head$item$tail"); done
  fi
  for candidate in "${variants[@]}"; do
    local found=0
    for base in "$root" "$doc_dir"; do
      local -a matches=("$base"/$candidate)
      if [[ $candidate == *'*'* ]]; then
        [ ${#matches[@]} -gt 0 ] && found=1
      elif [ -e "$base/$candidate" ]; then
        found=1
      fi
    done
    [ $found -eq 1 ] || return 1
  done
  return 0
}

# The Markdown and code punctuation around paths, as a bash pattern (one character of the set).
punctuation='[]`()["'"'"'=;|]'
for doc in README.md BENCHMARKS.md docs/*.md; do
  doc_dir=$(dirname "$root/$doc")
  line_number=0
  while IFS= read -r line; do
    line_number=$((line_number + 1))
    # Words: split at white space and at that punctuation (in bash: a process per line made
    # this test take a minute on a loaded 2-core machine).
    # shellcheck disable=SC2086  # split and glob-expanded on purpose: data/sampler.* names files
    for word in ${line//$punctuation/ }; do
      word=${word%,}           # a list, but not configs/bench/{moe,dense}.yaml
      word=${word%%:*}         # path:line, key: value
      word=${word%.}           # the end of a sentence
      word=${word#\*\*}
      word=${word%\*\*}
      [[ $word == */* ]] || continue
      [[ $word == /* || $word == *'<'* || $word == *'>'* || $word == *'$'* ]] && continue
      [[ $word =~ ^[A-Za-z0-9_.*{}-][A-Za-z0-9_./*{},+-]*$ ]] || continue
      first=${word%%/*}
      [[ $first =~ ^[A-Z_]+$ ]] && continue  # a placeholder: RUN_DIR/metrics.jsonl
      if [[ $top_level != *" $first "* && $word != ./* && $word != ../* &&
            ! $word =~ \.(md|h|hpp|cpp|cu|cuh|sh|py|yaml|txt|json|jsonl|png|sbatch|suite|cmake)$ ]]; then
        continue  # word/TAG, 1/2/cd, a/b: not a path
      fi
      word=${word#./}
      is_runtime "$word" && continue
      checked=$((checked + 1))
      if [[ $word == ../* ]] || ! exists "$word" "$doc_dir"; then
        echo "$doc:$line_number: names $word, which is not in the repository"
        failures=$((failures + 1))
      fi
    done
  done <"$doc"
done

echo "$checked paths checked, $failures missing"
[ "$failures" -eq 0 ]
