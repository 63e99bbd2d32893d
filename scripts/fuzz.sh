#!/usr/bin/env bash
# Fuzzes Strata's parsers and decoders with libFuzzer (cargo fuzz, fuzz/):
# builds the targets, then runs each for a fixed time, several at once.
#
#   manifest        manifests (Manifest::from_json, check)
#   vault_meta      the vault metadata (VaultMeta::from_json)
#   backint_input   Backint input files (InputFile::parse, parse_line)
#   backint_params  Backint parameter files (Params::parse)
#   config          the agent's configuration (Config::parse) and the
#                   schedules the service computes from it
#   pg_history      PostgreSQL timeline history files
#   wal_name        WAL file names and LSNs
#   bundle          PostgreSQL file bundles (bundle::check, bundle::extract)
#   part            the part decoder of plaintext backups (reader::decode_part)
#   part_sealed     the part decoder of encrypted backups (fixed test key)
#   archive         archive objects (WAL, history files, Backint markers)
#   mssql_history   SQL Server backup history exports
#
# Usage: scripts/fuzz.sh [--seconds N] [--jobs N] [--optimized] [--build-only] [target...]
#   --seconds N    fuzzing time per target (default 10, the CI budget;
#                  STRATA_FUZZ_SECONDS sets it too)
#   --jobs N       targets fuzzed at once (default: the number of cores)
#   --optimized    for long runs by hand: dependencies optimised as well and
#                  one codegen unit per crate (a build of its own in
#                  target/fuzz-opt/, about twice as long, several times the
#                  runs per second); the default build is CI's, the fastest
#   --build-only   build the targets and stop
#   target...      the targets to run (default: all)
#
# Each target starts from its seed corpus (fuzz/corpus/<target>/, committed,
# never written) and from what earlier runs found (target/fuzz/corpus/<target>/,
# kept between runs), with the dictionary of its format (fuzz/dict/). Inputs are at most 64 KiB; one input may take at most
# 10 s and 1 GiB of memory, and the targets' allocations may not exceed 256 MiB
# at once (fuzz/src/lib.rs): a parser that allocates without bound on a
# small input is a finding.
#
# Prints one line per target and an overall line:
#   fuzz manifest: ok, 10 s, 22930 runs (2293/s), cov 2559, ft 7472, corpus 412 (96 KiB)
#   fuzz: 12 targets, 12 clean, 0 crashed; 1834412 runs in 62 s
# Exit status: 0 when no target crashed, 1 when one did (its input is saved
# under fuzz/artifacts/<target>/ and the command that reproduces it is
# printed), 2 on a usage or build error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGETS=(manifest vault_meta backint_input backint_params config pg_history wal_name
    bundle part part_sealed archive mssql_history)

seconds="${STRATA_FUZZ_SECONDS:-10}"
jobs="$(nproc 2>/dev/null || echo 2)"
build_only=0
optimized=0
selected=()
while (($#)); do
    case "$1" in
    --seconds | --jobs)
        (($# > 1)) || {
            echo "fuzz.sh: $1 needs a number (see --help)" >&2
            exit 2
        }
        if [[ "$1" == --seconds ]]; then seconds="$2"; else jobs="$2"; fi
        shift
        ;;
    --build-only) build_only=1 ;;
    --optimized) optimized=1 ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    -*)
        echo "fuzz.sh: unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *) selected+=("$1") ;;
    esac
    shift
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || {
    echo "fuzz.sh: --seconds takes a whole number of seconds above 0" >&2
    exit 2
}
[[ "$jobs" =~ ^[0-9]+$ && "$jobs" -gt 0 ]] || {
    echo "fuzz.sh: --jobs takes a whole number above 0" >&2
    exit 2
}
((${#selected[@]})) || selected=("${TARGETS[@]}")
for target in "${selected[@]}"; do
    [[ " ${TARGETS[*]} " == *" $target "* ]] || {
        echo "fuzz.sh: there is no target $target (targets: ${TARGETS[*]})" >&2
        exit 2
    }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo fuzz is not installed: run scripts/setup.sh (or cargo install cargo-fuzz --locked)" >&2
    exit 2
fi

# Inside the ignored target/, kept between runs: the build, the corpora the
# runs grow, and their logs.
WORK="$ROOT/target/fuzz"
BUILD="$WORK"
# fuzz/Cargo.toml leaves dependencies unoptimised, for CI's build time; the
# optimised build overrides that in a cargo configuration of its own
# (cargo reads it from the directory it runs in).
build_from="$ROOT"
build_args=(--codegen-units 16)
if ((optimized)); then
    BUILD="$ROOT/target/fuzz-opt"
    build_from="$BUILD"
    build_args=()
    mkdir -p "$BUILD/.cargo"
    printf '[profile.release.package."*"]\nopt-level = 2\n' >"$BUILD/.cargo/config.toml"
fi
TRIPLE="$(rustc -vV | awk '/^host:/ {print $2}')"
BIN="$BUILD/$TRIPLE/release"

echo "==> building the fuzz targets (${BUILD#"$ROOT"/})"
mkdir -p "$WORK/logs" "$WORK/corpus"
build_started=$(date +%s)
# No sanitizer: the stable toolchain has none, and the product denies
# unsafe code; libFuzzer's coverage instrumentation works on stable. 16
# codegen units (cargo fuzz would use 1) unless optimised: the build is
# most of CI's budget.
if ! (cd "$build_from" && cargo fuzz build --fuzz-dir "$ROOT/fuzz" --target-dir "$BUILD" \
    --sanitizer none "${build_args[@]}") >"$WORK/logs/build-${BUILD##*/}.log" 2>&1; then
    tail -n 40 "$WORK/logs/build-${BUILD##*/}.log" >&2
    echo "fuzz.sh: the fuzz targets do not build (log: $WORK/logs/build-${BUILD##*/}.log)" >&2
    exit 2
fi
echo "built in $(($(date +%s) - build_started)) s"
((build_only)) && exit 0

started=$(date +%s)

# The dictionary of a target's format (fuzz/dict/), if it has one.
dict_of() {
    case "$1" in
    manifest | vault_meta | archive | mssql_history) echo "$ROOT/fuzz/dict/json.dict" ;;
    config) echo "$ROOT/fuzz/dict/toml.dict" ;;
    backint_input | backint_params | pg_history | wal_name) echo "$ROOT/fuzz/dict/text.dict" ;;
    esac
}

# Fuzzes one target; its log is $WORK/logs/<target>.log.
fuzz_one() {
    local target="$1" corpus="$WORK/corpus/$1" artifacts="$ROOT/fuzz/artifacts/$1/"
    local dict=()
    [[ -n "$(dict_of "$target")" ]] && dict=(-dict="$(dict_of "$target")")
    mkdir -p "$corpus" "$artifacts"
    "$BIN/$target" "$corpus" "$ROOT/fuzz/corpus/$target" "${dict[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
        -max_len=65536 -artifact_prefix="$artifacts" -print_final_stats=1 \
        >"$WORK/logs/$target.log" 2>&1
}

# A final statistic libFuzzer printed ("stat::NAME:   N"), empty if none.
stat_of() {
    grep -aoE "^stat::$1: *[0-9]+" "$2" | grep -oE '[0-9]+$' | tail -n 1 || true
}

# One line for a finished target, from its log and exit status.
report() {
    local target="$1" status="$2" log="$WORK/logs/$1.log"
    local runs speed cov ft corpus_files corpus_size
    runs="$(stat_of number_of_executed_units "$log")"
    speed="$(stat_of average_exec_per_sec "$log")"
    # The last status line: "#N DONE cov: C ft: F corp: N/Sb ..." (or the last pulse).
    local last
    last="$(grep -aE '^#[0-9]+' "$log" | tail -n 1 || true)"
    cov="$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo '?')"
    ft="$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo '?')"
    corpus_files="$(find "$WORK/corpus/$target" -type f | wc -l)"
    corpus_size="$(find "$WORK/corpus/$target" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", (s + 1023) / 1024 }')"
    if ((status == 0)); then
        printf 'fuzz %s: ok, %s s, %s runs (%s/s), cov %s, ft %s, corpus %s (%s KiB)\n' \
            "$target" "$seconds" "${runs:-?}" "${speed:-?}" "$cov" "$ft" "$corpus_files" "$corpus_size"
        return 0
    fi
    local input kind
    input="$(grep -aoE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)"
    kind="$(grep -aoE '^==[0-9]+== ERROR: libFuzzer: [a-z -]+' "$log" | tail -n 1 | sed 's/.*libFuzzer: //' || true)"
    [[ -n "$kind" ]] || kind="exit status $status"
    printf 'fuzz %s: CRASHED (%s) after %s runs; the input is %s\n' \
        "$target" "$kind" "${runs:-?}" "${input:-not saved (see the log)}"
    echo "  what failed (the end of $log):"
    # The panic message and the first frames of its backtrace, or the
    # sanitizer's report for an out-of-memory or a timeout.
    if grep -aq 'panicked at' "$log"; then
        grep -a -A 14 'panicked at' "$log" | head -n 15 | sed 's/^/    /'
    else
        grep -avE '^(#[0-9]+|INFO:|MS:|base unit:|0x|stat::|$)' "$log" | tail -n 15 | sed 's/^/    /'
    fi
    if [[ -n "$input" ]]; then
        echo "  reproduce: $BIN/$target $input"
        ((optimized)) ||
            echo "         or: cargo fuzz run --fuzz-dir fuzz --target-dir target/fuzz -s none --codegen-units 16 $target $input"
    fi
    return 1
}

declare -A pids=()
clean=0
crashed=0
total_runs=0
finish_one() {
    local target="$1" status=0
    wait "${pids[$target]}" || status=$?
    unset "pids[$target]"
    if report "$target" "$status"; then
        clean=$((clean + 1))
    else
        crashed=$((crashed + 1))
    fi
    local runs
    runs="$(stat_of number_of_executed_units "$WORK/logs/$target.log")"
    total_runs=$((total_runs + ${runs:-0}))
}

echo "==> fuzzing ${#selected[@]} target(s), $seconds s each, $jobs at once"
queue=("${selected[@]}")
running=()
while ((${#queue[@]} || ${#running[@]})); do
    while ((${#queue[@]} && ${#running[@]} < jobs)); do
        fuzz_one "${queue[0]}" &
        pids[${queue[0]}]=$!
        running+=("${queue[0]}")
        queue=("${queue[@]:1}")
    done
    # Wait for the first one started: they all run for the same time.
    finish_one "${running[0]}"
    running=("${running[@]:1}")
done

echo "fuzz: ${#selected[@]} targets, $clean clean, $crashed crashed; $total_runs runs in $(($(date +%s) - started)) s"
((crashed == 0))
