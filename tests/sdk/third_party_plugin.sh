#!/usr/bin/env bash
# The SDK as a third-party plugin author sees it:
#   1. `cmake --install` the (already built) tree into a temporary prefix;
#   2. configure and build examples/third_party_sampler with CMAKE_PREFIX_PATH=<prefix> only (no
#      nnkit_DIR, no package registry, and the nnkit source tree is never on its include path);
#   3. the installed CLI finds the installed plugins with no environment, and decode/typical
#      through --plugin-path;
#   4. `nnkit validate` accepts {type: typical, mass: 0.9} and refuses mass: 2 naming decode[0].mass
#      and the YAML position; a short generation runs the sampler.
# Usage: third_party_plugin.sh CMAKE BUILD_DIR SOURCE_DIR CXX_COMPILER [GENERATOR]
set -euo pipefail

# shellcheck source=sdk_script_setup.sh
source "$(dirname "$0")/sdk_script_setup.sh" "$@"

step "install $build_dir into $prefix"
"$cmake_bin" --install "$build_dir" --prefix "$prefix" >"$work/install.log" ||
  { cat "$work/install.log"; fail "cmake --install failed"; }
for f in bin/nnkit lib/libnnkit_core.so include/nnkit/plugin.h lib/cmake/nnkit/nnkitConfig.cmake \
         lib/cmake/nnkit/nnkitConfigVersion.cmake lib/cmake/nnkit/nnkitTargets.cmake \
         lib/cmake/nnkit/NnkitPlugin.cmake lib/nnkit/plugins/libnnkit_decode_greedy.so; do
  [[ -e $prefix/$f ]] || fail "the install has no $f"
done
nnkit=$prefix/bin/nnkit

step "the installed CLI finds the installed plugins with no environment"
"$nnkit" plugins --json >"$work/installed.json" || fail "nnkit plugins failed"
grep -q "\"path\": \"$prefix/lib/nnkit/plugins/libnnkit_decode_greedy.so\"" "$work/installed.json" ||
  { cat "$work/installed.json"; fail "decode/greedy was not found in $prefix/lib/nnkit/plugins"; }

step "configure and build examples/third_party_sampler against $prefix only"
gen_args=()
[[ -n $generator ]] && gen_args=(-G "$generator")
"$cmake_bin" -S "$source_dir/examples/third_party_sampler" -B "$example_build" "${gen_args[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; fail "configuring the example failed"; }
grep -q "CMake Warning" "$work/configure.log" && { cat "$work/configure.log"; fail "configure warned"; }
grep -q "$source_dir/core" "$example_build/compile_commands.json" &&
  fail "the example compiles against the source tree, not the installed SDK"
"$cmake_bin" --build "$example_build" -j 2 >"$work/build.log" 2>&1 ||
  { cat "$work/build.log"; fail "building the example failed"; }
plugin=$example_build/libnnkit_decode_typical.so
[[ -f $plugin ]] || fail "no $plugin"
"$example_build/typical_check" || fail "typical_check failed"

step "nnkit plugins --plugin-path lists decode/typical"
"$nnkit" plugins --plugin-path "$example_build" --json >"$work/plugins.json" ||
  fail "nnkit plugins --plugin-path failed"
grep -q "\"path\": \"$plugin\"" "$work/plugins.json" ||
  { cat "$work/plugins.json"; fail "decode/typical is not listed"; }
grep -A1 '"kind": "decode"' "$work/plugins.json" | grep -q '"name": "typical"' ||
  { cat "$work/plugins.json"; fail "decode/typical is not listed as kind decode, name typical"; }
"$nnkit" plugins --plugin-path "$example_build" --describe decode/typical >"$work/describe.txt"
grep -q "mass (number, default 0.9" "$work/describe.txt" ||
  { cat "$work/describe.txt"; fail "--describe does not show the mass option"; }

step "nnkit validate with decode: [{type: typical, mass: 0.9}]"
config=$work/typical.yaml
cp "$source_dir/tests/sdk/typical.yaml" "$config"
"$nnkit" validate "$config" --plugin-path "$example_build" >"$work/validate.txt" 2>&1 ||
  { cat "$work/validate.txt"; fail "nnkit validate refused the typical config"; }
grep -q "type: typical" "$work/validate.txt" || { cat "$work/validate.txt"; fail "no typical"; }

step "without --plugin-path, decode/typical is unknown"
if "$nnkit" validate "$config" >"$work/unknown.txt" 2>&1; then
  fail "validate accepted decode/typical without its plugin"
fi
grep -q "unknown decode plugin 'typical'" "$work/unknown.txt" ||
  { cat "$work/unknown.txt"; fail "unexpected error without the plugin"; }

step "mass: 2 is refused, naming decode[0].mass and its position"
sed 's/mass: 0.9/mass: 2/' "$config" >"$work/bad.yaml"
grep -q "mass: 2" "$work/bad.yaml" || fail "could not write the bad config"
line=$(grep -n "mass: 2" "$work/bad.yaml" | cut -d: -f1)
if "$nnkit" validate "$work/bad.yaml" --plugin-path "$example_build" >"$work/bad.txt" 2>&1; then
  fail "validate accepted mass: 2"
fi
grep -q "decode\[0\]\.mass" "$work/bad.txt" || { cat "$work/bad.txt"; fail "no decode[0].mass"; }
grep -q "bad.yaml:$line:" "$work/bad.txt" || { cat "$work/bad.txt"; fail "no bad.yaml:$line:col"; }

step "mass: 0 passes the declared range but the plugin's own check refuses it (Options::fail)"
sed 's/mass: 0.9/mass: 0/' "$config" >"$work/zero.yaml"
if "$nnkit" validate "$work/zero.yaml" --plugin-path "$example_build" >"$work/zero.txt" 2>&1; then
  fail "validate accepted mass: 0"
fi
grep -q "\[decode/typical\] decode\[0\]\.mass must be in (0, 1\]" "$work/zero.txt" ||
  { cat "$work/zero.txt"; fail "mass: 0 not refused by the plugin"; }

step "generate with the typical sampler (random init)"
"$nnkit" generate "$config" --random-init --prompt "abc" --max-new-tokens 8 --json \
  --plugin-path "$example_build" >"$work/generate.json" 2>&1 ||
  { cat "$work/generate.json"; fail "generation with decode/typical failed"; }

echo "PASS: the installed SDK builds and loads a third-party decode/typical"
