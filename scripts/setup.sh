#!/usr/bin/env bash
# Installs nnkit's build dependencies from Debian packages, builds Release into build/ and
# prepares the demo corpus (English text from the `fortunes` package) as data/demo.tokens.
# Safe to re-run. Needs root (or sudo) for apt-get; set NNKIT_SKIP_APT=1 to skip installing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config
  libboost-dev            # Boost.DLL (header-only)
  libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev
  libopenblas-openmp-dev  # the OpenMP build of OpenBLAS: one threading runtime with our loops
  libgtest-dev libgmock-dev
  libsentencepiece-dev    # tokenizer/sentencepiece (optional: skipped when missing)
  fortunes fortunes-min   # the demo corpus: real English text
  clang libclang-rt-14-dev  # the fuzz targets (libFuzzer) that CI runs (fuzz/README.md)
  openmpi-bin libopenmpi-dev  # comm/mpi: data/expert-parallel CPU training (optional: skipped when missing)
)
if [ "${NNKIT_SKIP_APT:-0}" != "1" ]; then
  sudo=""
  if [ "$(id -u)" != "0" ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "setup: installing the packages needs root, and sudo is not installed. Run this script" \
           "as root, install sudo, or install these packages yourself and re-run with" \
           "NNKIT_SKIP_APT=1: ${packages[*]}" >&2
      exit 1
    fi
    echo "setup: not root: installing the packages with sudo (it may ask for your password)" >&2
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"

# Demo corpus: every plain-text fortune file (not the .dat indexes, not the ASCII-art ones).
mkdir -p data
corpus=()
for f in /usr/share/games/fortunes/*; do
  name=$(basename "$f")
  case "$name" in *.dat|*.u8|art|ascii-art) continue ;; esac
  [ -f "$f" ] && corpus+=("$f")
done
if [ ${#corpus[@]} -eq 0 ]; then
  echo "setup: no fortune files found in /usr/share/games/fortunes (is the fortunes package installed?)" >&2
  exit 1
fi
build/bin/nnkit data prepare "${corpus[@]}" -o data/demo.tokens --log-level warn
echo "setup: done. Run the tests with: ctest --test-dir build --output-on-failure"
