#!/usr/bin/env bash
# The example plugins of examples/plugins as an outside author meets them:
#   1. `cmake --install` the (already built) tree into a temporary prefix; the prefix has the
#      CMake package, the pkg-config file and nnkit/testing.h + nnkit/moe_dispatch.h;
#   2. configure and build examples/plugins against that prefix only (no source tree on the
#      include path);
#   3. `nnkit check-plugin` passes on each library (optim/lion, moe/relu2, norm/gemma_rmsnorm);
#   4. the installed `nnkit train` trains tests/sdk/examples.yaml (all three plugins at once) for
#      30 steps: the loss falls and the run records each plugin's library and SHA-256;
#   5. `nnkit generate --checkpoint RUN` from another directory finds the plugins again, and
#      `nnkit train --resume` warns when a recorded library's SHA-256 changed.
# Usage: examples_plugins.sh CMAKE BUILD_DIR SOURCE_DIR CXX_COMPILER [GENERATOR]
set -euo pipefail

# shellcheck source=sdk_script_setup.sh
source "$(dirname "$0")/sdk_script_setup.sh" "$@"

step "install $build_dir into $prefix"
"$cmake_bin" --install "$build_dir" --prefix "$prefix" >"$work/install.log" ||
  { cat "$work/install.log"; fail "cmake --install failed"; }
for f in include/nnkit/testing.h include/nnkit/moe_dispatch.h lib/pkgconfig/nnkit.pc; do
  [[ -e $prefix/$f ]] || fail "the install has no $f"
done
nnkit=$prefix/bin/nnkit

step "pkg-config describes the installed SDK"
if command -v pkg-config >/dev/null; then
  PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs nnkit >"$work/pc.txt" ||
    fail "pkg-config nnkit failed"
  grep -q -- "-lnnkit_core" "$work/pc.txt" || { cat "$work/pc.txt"; fail "no -lnnkit_core"; }
  # The .pc file is relocatable (prefix from its own folder): compare the folders it names.
  include_dir=$(tr ' ' '\n' <"$work/pc.txt" | sed -n 's/^-I//p' | head -1)
  [[ $(realpath "$include_dir") == "$(realpath "$prefix/include")" ]] ||
    { cat "$work/pc.txt"; fail "-I is not $prefix/include"; }
  plugindir=$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --variable=plugindir nnkit)
  [[ $(realpath "$plugindir") == "$(realpath "$prefix/lib/nnkit/plugins")" ]] ||
    fail "plugindir is '$plugindir'"
  [[ $(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --variable=plugin_abi nnkit) =~ ^[0-9]+$ ]] ||
    fail "no plugin_abi variable"
fi

step "configure and build examples/plugins against $prefix only"
gen_args=()
[[ -n $generator ]] && gen_args=(-G "$generator")
"$cmake_bin" -S "$source_dir/examples/plugins" -B "$example_build" "${gen_args[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; fail "configuring the examples failed"; }
grep -q "$source_dir/core" "$example_build/compile_commands.json" &&
  fail "the examples compile against the source tree, not the installed SDK"
"$cmake_bin" --build "$example_build" -j 2 >"$work/build.log" 2>&1 ||
  { cat "$work/build.log"; fail "building the examples failed"; }

step "nnkit check-plugin passes on each example"
check() {
  local lib=$1
  shift
  "$nnkit" check-plugin "$example_build/$lib" "$@" >"$work/check.txt" 2>&1 ||
    { cat "$work/check.txt"; fail "check-plugin failed on $lib"; }
  grep -q "^PASS: " "$work/check.txt" || { cat "$work/check.txt"; fail "no PASS line for $lib"; }
}
check libnnkit_optim_lion.so
check libnnkit_moe_relu2.so --options '{n_experts: 4, ffn_dim: 16}'
check libnnkit_norm_gemma_rmsnorm.so
grep -q "gradient weight" "$work/check.txt" || { cat "$work/check.txt"; fail "no gradient row"; }

step "train tests/sdk/examples.yaml with all three examples"
config=$work/examples.yaml
cp "$source_dir/tests/sdk/examples.yaml" "$config"
run=$work/run
(cd "$work" && "$nnkit" train "$config" --out "$run" --data "$source_dir/data/demo.tokens" \
  --plugin-path "$example_build" --no-progress --json >"$work/train.json" 2>"$work/train.log") ||
  { cat "$work/train.log" "$work/train.json"; fail "training with the examples failed"; }
python3 - "$run/metrics.jsonl" <<'PY' || fail "the loss did not fall"
import json, sys
losses = [json.loads(l)["loss"] for l in open(sys.argv[1]) if '"loss"' in l and '"step"' in l]
assert len(losses) >= 2, losses
print("losses", losses)
assert losses[-1] < losses[0], losses
PY

step "the run records the plugins it used"
[[ -f $run/plugins.json ]] || fail "no $run/plugins.json"
for id in optim/lion moe/relu2 norm/gemma_rmsnorm; do
  grep -q "\"id\": \"$id\"" "$run/plugins.json" || { cat "$run/plugins.json"; fail "no $id"; }
done
grep -q "\"path\": \"$example_build/libnnkit_moe_relu2.so\"" "$run/plugins.json" ||
  { cat "$run/plugins.json"; fail "no absolute path for moe/relu2"; }
grep -q "\"sha256\": \"[0-9a-f]\{64\}\"" "$run/plugins.json" || fail "no SHA-256"

step "generate --checkpoint from another directory, with no --plugin-path"
mkdir -p "$work/elsewhere"
(cd "$work/elsewhere" && "$nnkit" generate --checkpoint "$run" --prompt "ab" --max-new-tokens 4 \
  --json >"$work/generate.json" 2>"$work/generate.log") ||
  { cat "$work/generate.log"; fail "generate --checkpoint did not find the example plugins"; }

step "a library that changed since the run started is a warning on --resume"
# Bytes appended to an ELF file change its hash, not its code.
printf 'rebuilt' >>"$example_build/libnnkit_optim_lion.so"
(cd "$work/elsewhere" && "$nnkit" train --resume "$run" train.steps=32 --no-progress \
  >"$work/resume.log" 2>&1) || { cat "$work/resume.log"; fail "resume failed"; }
grep -q "optim/lion: $example_build/libnnkit_optim_lion.so changed since the run started" \
  "$work/resume.log" || { cat "$work/resume.log"; fail "no warning about the changed library"; }

echo "PASS: the example plugins build against the installed SDK, pass check-plugin and train"
