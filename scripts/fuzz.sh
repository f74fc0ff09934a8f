#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzz build (fuzz/CMakeLists.txt) for a bounded time each, on
# a scratch copy of its seeds (fuzz/seeds/<target>/, fuzz/corpus/ for safetensors) under the
# sanitizers it was built with. A crash, sanitizer report, escaped exception, timeout or memory
# blow-up stops the script with exit 1 and the input's path; copy that input to
# tests/fuzz/crashes/<target>/ (a name saying what it broke) once fixed, so the replay test keeps
# it fixed in every build.
# Usage: scripts/fuzz.sh [BUILD_DIR (default build-fuzz)] [SECONDS per target (default 30)]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-fuzz}
seconds=${2:-30}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shopt -s nullglob
targets=("$build"/bin/nnkit_fuzz_*)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no targets in $build/bin; build them with: cmake -S . -B $build -G Ninja" \
       "-DCMAKE_CXX_COMPILER=clang++ -DNNKIT_FUZZ=ON -DNNKIT_SANITIZE=ON -DNNKIT_WITH_CUDA=OFF" \
       "-DNNKIT_BUILD_TESTS=OFF && cmake --build $build --target nnkit_fuzz_all" >&2
  exit 1
fi
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
status=0
for target in "${targets[@]}"; do
  name=${target##*/nnkit_fuzz_}
  seeds=fuzz/seeds/$name
  [ "$name" = safetensors ] && seeds=fuzz/corpus
  corpus=$work/$name
  mkdir -p "$corpus" "$work/crash-$name"
  cp "$seeds"/* "$corpus"/ 2>/dev/null || true
  extra=()
  [ "$name" = safetensors ] && extra+=(-dict=fuzz/safetensors.dict)
  start=$(date +%s)
  if "$target" "$corpus" "${extra[@]}" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
       -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/crash-$name/" \
       > "$work/$name.log" 2>&1; then
    echo "fuzz: $name: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$name.log" |
      grep -o '[0-9]*$') runs in $(( $(date +%s) - start )) s, no findings"
  else
    status=1
    echo "fuzz: $name FAILED; last lines of its log:" >&2
    tail -40 "$work/$name.log" >&2
    for input in "$work/crash-$name"/*; do
      kept=/tmp/nnkit-fuzz-$name-$(basename "$input")
      cp "$input" "$kept"
      echo "fuzz: $name: input kept at $kept (reproduce: $target $kept)" >&2
    done
  fi
done
exit $status
