#!/usr/bin/env bash
# Runs Strata's reliability campaigns at the scale of a real campaign (the
# test suite runs them at CI scale as the chaos_* tests):
#
#   1. scripts/setup.sh                       (emulators and tools, idempotent)
#   2. cargo build of the workspace's binaries (strata, hdbbackint, strata-chaos)
#   3. scripts/emulators.sh start             (Azurite and moto on loopback, this run only)
#   4. strata-chaos <campaign> --scale large  (kill, outage, damage, disk, or all)
#   5. the emulators are stopped, whatever happened
#
# Usage: scripts/chaos.sh [all|kill|outage|damage|disk] [strata-chaos options]
#   e.g. scripts/chaos.sh kill --runs 300 --seed 42
#        scripts/chaos.sh all --scale ci
# Options after the campaign go to strata-chaos (--scale, --runs, --seed,
# --only, --work-dir, --verbose); docs/reliability.md explains them.
# Exit status: strata-chaos's (0: nothing lost and every promise kept,
# 1: findings, printed above the summary; 2: wrong arguments).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

case "${1:-all}" in
-h | --help)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
    ;;
esac
campaign="${1:-all}"
(($#)) && shift
scale=(--scale large)
for arg in "$@"; do
    [[ "$arg" == --scale ]] && scale=()
done

RUN_DIR="$ROOT/.work/chaos-$$"
mkdir -p "$RUN_DIR"
cleanup() {
    local status=$?
    STRATA_EMULATOR_DIR="$RUN_DIR/emulators" "$ROOT/scripts/emulators.sh" stop >/dev/null 2>&1 || true
    rm -rf "$RUN_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "==> setup"
./scripts/setup.sh
echo "==> cargo build"
cargo build --workspace --bins --quiet
echo "==> emulators"
export STRATA_EMULATOR_DIR="$RUN_DIR/emulators"
# A large campaign runs for hours at most: the emulators' watchdog outlives it.
export STRATA_EMULATOR_TTL="${STRATA_EMULATOR_TTL:-14400}"
./scripts/emulators.sh start
# shellcheck disable=SC1091
source "$STRATA_EMULATOR_DIR/emulators.env"
export STRATA_REQUIRE_EMULATORS=1
echo "==> strata-chaos $campaign ${scale[*]} $*"
./target/debug/strata-chaos "$campaign" "${scale[@]}" "$@"
