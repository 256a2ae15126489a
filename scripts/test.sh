#!/usr/bin/env bash
# The whole test suite: installs the tools the tests use, checks formatting, lints, builds the
# workspace once, checks the layering rules, then runs every test (unit, fuzz-corpus replay,
# end-to-end with real mkfs/fsck/partclone, loop devices and FUSE mounts).
#
# Run as root: loop devices, mounts and FUSE need it. In CI (CI=true) a test that cannot run is
# a failure; elsewhere it prints why it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# Incremental state is of no use to a one-off build and costs gigabytes of disk.
export CARGO_INCREMENTAL=0

step() { printf '\n== %s\n' "$*"; }

step "installing test tools"
bash deploy/install-test-deps

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo build"
cargo build --workspace --all-targets --quiet

step "layering: the sans-IO and sync crates never depend on tokio"
for crate in imaging proto pxe; do
  if cargo tree -p "$crate" -e normal --prefix none | grep -q '^tokio '; then
    echo "error: $crate depends on tokio" >&2
    exit 1
  fi
done

step "tests"
# The binaries the end-to-end tests run were built above: no test process builds them again.
export DROVER_PREBUILT_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug"
# Tests that cannot run here (outside CI only: in CI a skip is a failure) say why in this file.
export DROVER_SKIP_LOG="${CARGO_TARGET_DIR:-$PWD/target}/test-skips.txt"
rm -f "$DROVER_SKIP_LOG"
rc=0
if cargo nextest --version >/dev/null 2>&1; then
  # .config/nextest.toml runs the heavy end-to-end tests one at a time.
  cargo nextest run --workspace --no-fail-fast --failure-output final --status-level fail || rc=$?
else
  cargo test --workspace --no-fail-fast || rc=$?
fi

step "summary"
if [[ -s "$DROVER_SKIP_LOG" ]]; then
  echo "SKIPPED $(sort -u "$DROVER_SKIP_LOG" | wc -l) test(s) that cannot run here:"
  sort -u "$DROVER_SKIP_LOG" | sed 's/^/  SKIPPED /'
else
  echo "no test skipped"
fi
exit "$rc"
