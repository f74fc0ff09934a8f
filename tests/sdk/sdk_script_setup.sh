# Sourced by the tests/sdk scripts (third_party_plugin.sh, examples_plugins.sh) after `set -euo
# pipefail`, with the script's own arguments: CMAKE BUILD_DIR SOURCE_DIR CXX_COMPILER
# [GENERATOR]. Sets cmake_bin, build_dir, source_dir, cxx, generator; a scratch folder $work
# (removed on exit) with $prefix (the install) and $example_build in it; fail and step.
cmake_bin=$1
build_dir=$2
source_dir=$3
cxx=$4
generator=${5:-}

work=$(mktemp -d "${TMPDIR:-/tmp}/nnkit-sdk-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
example_build=$work/example-build
unset NNKIT_PLUGIN_PATH  # the installed CLI must find its own plugins unaided

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { echo "--- $*"; }
