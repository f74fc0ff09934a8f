#!/usr/bin/env bash
# scripts/setup.sh run by a non-root user on a machine without sudo must say so (and how to go
# on) before anything else, instead of failing with "sudo: command not found". A PATH holding
# only a fake `id` (uid 1000) and the few tools the script needs up to that point stands in for
# such a machine. Usage: setup_without_sudo_test.sh REPO_DIR
set -u
repo=$1
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
printf '#!/bin/sh\necho 1000\n' > "$shim/id"
chmod +x "$shim/id"
ln -s "$(command -v dirname)" "$shim/dirname"
# NNKIT_SKIP_APT from the caller (a CI emulation that skips apt) would skip the very check.
out=$(env -u NNKIT_SKIP_APT PATH="$shim" "$(command -v bash)" "$repo/scripts/setup.sh" 2>&1)
code=$?
if [ "$code" -ne 1 ]; then echo "FAIL: exit code $code, expected 1; output: $out"; exit 1; fi
for part in "sudo is not installed" "NNKIT_SKIP_APT=1" "libyaml-cpp-dev"; do
  case "$out" in *"$part"*) ;; *) echo "FAIL: missing '$part' in: $out"; exit 1 ;; esac
done
echo "ok: $out"
