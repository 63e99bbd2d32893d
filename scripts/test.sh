#!/usr/bin/env bash
# Runs Strata's whole test suite, the same way locally and in CI:
#
#   1. scripts/setup.sh            (emulators and tools into .work/, idempotent)
#   2. cargo fmt --check, cargo clippy -D warnings    (fail fast)
#   3. cargo build of the workspace's binaries (end-to-end tests run them)
#   4. scripts/emulators.sh start  (Azurite, moto and fake-gcs-server on loopback, this run only)
#   5. every test: cargo nextest (or cargo test when nextest is absent), then
#      the doc tests, with the emulators' environment and
#      STRATA_REQUIRE_EMULATORS=1, so no object-store backend is skipped;
#      then scripts/fuzz.sh: every fuzz target (built at the lowest
#      priority while the tests run) for STRATA_FUZZ_SECONDS
#      (default 10) each, a target that ran clean counted as passed, one
#      that crashed as failed
#   6. under CI (or with STRATA_TEST_PACKAGE=1): scripts/test-package.sh, which
#      builds the Debian package and installs, upgrades and removes it here
#   7. the emulators are stopped, whatever happened, and a summary printed;
#      tests marked #[ignore] and tests that recorded a skip at run time
#      (tests/src/skip.rs) are counted as skipped, never as passed
#
# Usage: scripts/test.sh [--skip-lint] [-- <extra arguments for the test runner>]
#   --skip-lint   skip step 2 (for quick local runs; CI never skips it)
#
# Environment: STRATA_TEST_TIMEOUT (seconds, default 2400) bounds step 5;
# STRATA_FUZZ_SECONDS (default 10) is each fuzz target's time.
# The tests see this script's environment: STRATA_TEST_SQLSERVER (a connection
# string) runs the SQL Server tests against that server instead of the
# emulator, STRATA_TEST_HANA the tests marked #[ignore] against SAP HANA
# (docker/README.md).
# Exit status: 0 when everything passed, otherwise the first failing step's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

lint=1
runner_args=()
while (($#)); do
    case "$1" in
    --skip-lint) lint=0 ;;
    --)
        shift
        runner_args=("$@")
        break
        ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *)
        echo "test.sh: unknown argument $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if [[ -n "${CI:-}" ]]; then
    # A CI checkout is built once from scratch: incremental state is wasted work.
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi
TEST_TIMEOUT="${STRATA_TEST_TIMEOUT:-2400}"
started=$(date +%s)
RUN_DIR="$ROOT/.work/run-$$"
mkdir -p "$RUN_DIR"

declare -A results=()
order=()
step_started=$started
# Records a step's result with its time, from the last `step` call.
record() {
    local took=""
    [[ "$2" == skipped* ]] || took=" ($(($(date +%s) - step_started)) s)"
    results[$1]="$2$took"
    order+=("$1")
}

summary() {
    local name
    echo
    echo "==> summary"
    for name in "${order[@]}"; do
        printf '  %-10s %s\n' "$name" "${results[$name]}"
    done
    printf '  %-10s %ss\n' "time" "$(($(date +%s) - started))"
}

cleanup() {
    local status=$?
    # A fuzz build still running beside the tests (its own session).
    [[ -z "${fuzz_build_pid:-}" ]] || kill -- -"$fuzz_build_pid" 2>/dev/null || true
    STRATA_EMULATOR_DIR="$RUN_DIR/emulators" "$ROOT/scripts/emulators.sh" stop >/dev/null 2>&1 || true
    rm -rf "$RUN_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
    step_started=$(date +%s)
    echo "==> $*"
}

fail() {
    record "$1" "FAILED"
    summary
    echo "test.sh: $2" >&2
    exit 1
}

step "setup"
./scripts/setup.sh || fail setup "scripts/setup.sh failed"
record setup ok

if ((lint)); then
    step "cargo fmt --check"
    color=never
    [[ -t 1 ]] && color=auto
    cargo fmt --all -- --check --color "$color" || fail format "code is not formatted: run rustfmt --edition 2024 on the files listed above"
    record format ok
    step "cargo clippy"
    cargo clippy --workspace --all-targets --quiet -- -D warnings || fail clippy "clippy found problems (above)"
    record clippy ok
else
    record lint skipped
fi

step "cargo build"
cargo build --workspace --bins --quiet || fail build "the workspace does not build"
record build ok

step "emulators"
export STRATA_EMULATOR_DIR="$RUN_DIR/emulators"
./scripts/emulators.sh start || fail emulators "the object-store emulators did not start"
# shellcheck disable=SC1091
source "$STRATA_EMULATOR_DIR/emulators.env"
export STRATA_REQUIRE_EMULATORS=1
record emulators "Azurite at $AZURITE_BLOB_STORAGE_URL, moto at $AWS_ENDPOINT, fake-gcs-server behind the XML front"

passed=0
failed=0
skipped=0
test_status=0
# Tests that find something missing at run time (an emulator, root) list
# themselves here; the runner counted them as passed, the summary does not.
export STRATA_SKIP_LOG="$RUN_DIR/skipped.log"
: >"$STRATA_SKIP_LOG"

# Adds the counts of nextest's closing line ("N tests run: A passed, B failed, C skipped").
count_nextest() {
    local line n
    line="$(grep -E '^ *Summary .* tests? run:' "$1" | tail -n 1 || true)"
    [[ -n "$line" ]] || return 1
    n="$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)"
    passed=$((passed + n))
    n="$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)"
    failed=$((failed + n))
    for n in $(grep -oE '[0-9]+ (timed out|exec failed)' <<<"$line" | grep -oE '^[0-9]+' || true); do
        failed=$((failed + n))
    done
    n="$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+' || echo 0)"
    skipped=$((skipped + n))
}

# Adds the counts of every libtest "test result:" line.
count_libtest() {
    local line n
    while IFS= read -r line; do
        n="$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+')"
        passed=$((passed + n))
        n="$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+')"
        failed=$((failed + n))
        n="$(grep -oE '[0-9]+ ignored' <<<"$line" | grep -oE '[0-9]+')"
        skipped=$((skipped + n))
    done < <(grep -E '^test result: ' "$1" || true)
}

# Runs "$@" under the watchdog, its output shown and kept in $1.
run_logged() {
    local log="$1"
    shift
    set +e
    timeout --kill-after=30 "$TEST_TIMEOUT" "$@" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    set -e
    if ((status == 124)); then
        echo "test.sh: the tests did not finish within ${TEST_TIMEOUT}s and were stopped" >&2
    fi
    return "$status"
}

# #[ignore] marks the tests that need a real engine (docker/README.md); they
# run when the variable naming one is set, and count as skipped otherwise.
real_engines=()
[[ -n "${STRATA_TEST_HANA:-}" ]] && real_engines+=("SAP HANA")
if ((${#real_engines[@]})); then
    echo "real engines named: ${real_engines[*]}; running the tests marked #[ignore] too"
fi
# The SQL Server tests are not #[ignore]: they run on the emulator, or on the
# server STRATA_TEST_SQLSERVER names (its password is not printed).
if [[ -n "${STRATA_TEST_SQLSERVER:-}" ]]; then
    echo "STRATA_TEST_SQLSERVER is set: the SQL Server tests run against that server, not the emulator"
fi

# The fuzz targets build (a few CPU-minutes, no sharing with the workspace's
# build: other flags) at the lowest priority while the tests run, in the
# time they spend waiting on clusters, emulators and retries; the fuzz step
# then finds them built.
fuzz_build_log="$RUN_DIR/fuzz-build.log"
setsid nice -n 19 ./scripts/fuzz.sh --build-only >"$fuzz_build_log" 2>&1 &
fuzz_build_pid=$!

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run"
    ignored_args=()
    ((${#real_engines[@]})) && ignored_args=(--run-ignored all)
    run_logged "$RUN_DIR/tests.log" cargo nextest run --workspace --all-targets --no-fail-fast \
        "${ignored_args[@]}" "${runner_args[@]}" || test_status=$?
    count_nextest "$RUN_DIR/tests.log" || true
else
    step "cargo test"
    ignored_args=()
    ((${#real_engines[@]})) && ignored_args=(-- --include-ignored)
    run_logged "$RUN_DIR/tests.log" cargo test --workspace --all-targets --no-fail-fast \
        "${runner_args[@]}" "${ignored_args[@]}" || test_status=$?
    count_libtest "$RUN_DIR/tests.log"
fi
if ((test_status == 0)); then
    record tests "ok"
else
    record tests "FAILED (exit status $test_status)"
fi

step "doc tests"
doc_status=0
run_logged "$RUN_DIR/doctests.log" cargo test --workspace --doc --no-fail-fast || doc_status=$?
count_libtest "$RUN_DIR/doctests.log"
if ((doc_status == 0)); then
    record doctests "ok"
else
    record doctests "FAILED (exit status $doc_status)"
    ((test_status != 0)) || test_status=$doc_status
fi
step "fuzz"
fuzz_status=0
# The build started before the tests; its failure shows again below.
wait "$fuzz_build_pid" || true
sed 's/^/(built beside the tests) /' "$fuzz_build_log"
run_logged "$RUN_DIR/fuzz.log" ./scripts/fuzz.sh --seconds "${STRATA_FUZZ_SECONDS:-10}" || fuzz_status=$?
# "fuzz: N targets, N clean, N crashed; ..."
line="$(grep -E '^fuzz: [0-9]+ targets' "$RUN_DIR/fuzz.log" | tail -n 1 || true)"
n="$(grep -oE '[0-9]+ clean' <<<"$line" | grep -oE '^[0-9]+' || echo 0)"
passed=$((passed + n))
n="$(grep -oE '[0-9]+ crashed' <<<"$line" | grep -oE '^[0-9]+' || echo 0)"
failed=$((failed + n))
if ((fuzz_status == 0)); then
    record fuzz "ok"
else
    if ((fuzz_status == 1)); then
        record fuzz "FAILED (a target crashed: its input is under fuzz/artifacts/, the command to reproduce it above)"
    else
        record fuzz "FAILED (exit status $fuzz_status: the targets did not build or run, see above)"
    fi
    ((test_status != 0)) || test_status=$fuzz_status
fi
# The Debian package is installed on this machine for real: under CI (a
# fresh machine) always, elsewhere only when asked.
if [[ -n "${CI:-}" || -n "${STRATA_TEST_PACKAGE:-}" ]]; then
    step "Debian package"
    package_status=0
    run_logged "$RUN_DIR/package.log" ./scripts/test-package.sh || package_status=$?
    line="$(grep -E '^package: ' "$RUN_DIR/package.log" | tail -n 1 || true)"
    n="$(grep -oE '[0-9]+ checks passed' <<<"$line" | grep -oE '^[0-9]+' || echo 0)"
    passed=$((passed + n))
    n="$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '^[0-9]+' || echo 0)"
    failed=$((failed + n))
    if ((package_status == 0)); then
        record package "ok"
    else
        record package "FAILED (exit status $package_status)"
        ((test_status != 0)) || test_status=$package_status
    fi
else
    record package "skipped: installs a package on this machine; set STRATA_TEST_PACKAGE=1 (CI always runs it)"
    skipped=$((skipped + 1))
fi
runtime_skips=$(wc -l <"$STRATA_SKIP_LOG")
if ((runtime_skips > 0)); then
    passed=$((passed - runtime_skips))
    skipped=$((skipped + runtime_skips))
    echo
    echo "==> skipped at run time (counted as skipped, not passed)"
    sed 's/^/  /; s/\t/: /' "$STRATA_SKIP_LOG"
fi
summary
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$test_status"
