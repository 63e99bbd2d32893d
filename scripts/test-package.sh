#!/usr/bin/env bash
# Builds Strata's Debian package from the workspace's binaries and tests it
# on this machine, as root: it really installs, upgrades, removes and purges
# the package `strata`, and creates the `strata` user. Run by scripts/test.sh
# under CI (or with STRATA_TEST_PACKAGE=1).
#
#   1. install: the user and groups, the directories and their modes, the
#      systemd unit (`systemd-analyze verify`), `strata config check` as
#      `strata`;
#   2. the service as `strata` (no systemd here: started by hand, as the
#      unit would) takes a full of a PostgreSQL cluster it reads through the
#      postgres group, and `postgres` archives WAL through the socket's group;
#   3. upgrade to a new revision keeps the edited configuration;
#   4. removal keeps the configuration, the index and the vault; purge
#      removes the configuration and still keeps the vault.
#
# The package under test holds the debug binaries the test suite built (the
# packaging, not the compiler's output, is what is tested here); a release
# package is `cargo deb -p strata`, the same metadata.
#
# Prints one line per check and "package: N checks passed, M failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $(id -u) == 0 ]] || { echo "test-package.sh: run as root (it installs a package)" >&2; exit 2; }
PGB=${PG_BIN:-/usr/lib/postgresql/15/bin}
WORK=/tmp/strata-package-test
OUT="$ROOT/.work/package"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

passed=0
failed=0
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then
        echo "ok - $what"
        passed=$((passed + 1))
    else
        echo "not ok - $what"
        failed=$((failed + 1))
    fi
}
mode_of() { stat -c '%a %U:%G' "$1"; }
has_mode() { [[ "$(mode_of "$1")" == "$2" ]] || { echo "$1 is $(mode_of "$1"), not $2" >&2; return 1; }; }
in_group() { id -nG "$1" | tr ' ' '\n' | grep -qx "$2"; }

service_pid=
cleanup() {
    [[ -n "$service_pid" ]] && kill "$service_pid" 2>/dev/null || true
    runuser -u postgres -- "$PGB/pg_ctl" -D "$WORK/pgdata" stop -m immediate >/dev/null 2>&1 || true
}
trap cleanup EXIT

build() {
    cargo deb -p strata --no-build --profile dev --fast --no-strip --deb-revision "$1" \
        -o "$OUT/" 2>/dev/null | tail -n 1
}

# A previous run's package and data go first.
dpkg -P strata >/dev/null 2>&1 || true
rm -rf "$WORK" "$OUT" /var/lib/strata/vault /var/lib/strata/catalog.db*
mkdir -p "$WORK" "$OUT"
chown postgres "$WORK"
chmod 755 "$WORK"

echo "==> building the package"
deb1=$(build 1)
deb2=$(build 2)
[[ -f "$deb1" && -f "$deb2" ]] || { echo "test-package.sh: cargo deb did not build the packages" >&2; exit 1; }

echo "==> install"
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb1" >/dev/null
check "the strata user exists with no login shell" bash -c 'getent passwd strata | grep -q ":/usr/sbin/nologin$"'
check "strata is in the postgres group (reads data directories)" in_group strata postgres
check "postgres is in the strata group (the socket, the index, a local vault)" in_group postgres strata
check "/etc/strata is 0750 root:strata" has_mode /etc/strata "750 root:strata"
check "/etc/strata/strata.toml is 0640 root:strata" has_mode /etc/strata/strata.toml "640 root:strata"
check "/etc/strata/keys is 0750 strata:strata" has_mode /etc/strata/keys "750 strata:strata"
check "/var/lib/strata is 2770 strata:strata" has_mode /var/lib/strata "2770 strata:strata"
check "both binaries are installed" test -x /usr/bin/strata -a -x /usr/bin/hdbbackint
check "the unit is installed" test -f /lib/systemd/system/strata.service
check "systemd-analyze verify accepts the unit" systemd-analyze verify /lib/systemd/system/strata.service
check "the shipped configuration passes config check as strata" \
    runuser -u strata -- strata --config /etc/strata/strata.toml config check

echo "==> the service as strata, PostgreSQL archiving through the group"
runuser -u postgres -- "$PGB/initdb" -g -k -D "$WORK/pgdata" -U postgres -A trust >/dev/null
cat >/etc/strata/strata.toml <<EOF
[vault]
url = "file:///var/lib/strata/vault"
[catalog]
path = "/var/lib/strata/catalog.db"
[service]
socket = "/run/strata/strata.sock"
socket_group = "strata"
[postgres.main]
connection = "host=$WORK port=$PORT user=postgres dbname=postgres"
data_directory = "$WORK/pgdata"
bin_dir = "$PGB"
[policy.weekly]
full = "0 2 * * SUN"
[[protect]]
engine = "postgres"
instance = "main"
policy = "weekly"
EOF
cp /etc/strata/strata.toml "$WORK/edited.toml"
cat >>"$WORK/pgdata/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$WORK'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = 'strata --config /etc/strata/strata.toml pg wal-push %p --cluster main'
EOF
check "the vault is created as strata" runuser -u strata -- strata --config /etc/strata/strata.toml vault init
runuser -u postgres -- "$PGB/pg_ctl" -D "$WORK/pgdata" -l "$WORK/pg.log" -w start >/dev/null
# What systemd's RuntimeDirectory= does.
install -d -o strata -g strata -m 0770 /run/strata
runuser -u strata -- strata --config /etc/strata/strata.toml -v serve >"$WORK/serve.log" 2>&1 &
service_pid=$!
for _ in $(seq 600); do [[ -S /run/strata/strata.sock ]] && break; sleep 0.1; done
check "the socket is 0660 strata:strata" has_mode /run/strata/strata.sock "660 strata:strata"
full_done() { grep -q "job succeeded.*kind=.*full" "$WORK/serve.log"; }
for _ in $(seq 600); do full_done && break; sleep 0.1; done
check "the service (as strata) took the initial full, reading the data directory through its group" full_done
runuser -u postgres -- "$PGB/psql" -h "$WORK" -p "$PORT" -qAtc \
    "create table t as select g from generate_series(1, 100000) g" postgres >/dev/null
# The segment the switch completes.
segment=$(runuser -u postgres -- "$PGB/psql" -h "$WORK" -p "$PORT" -qAtc \
    "select pg_walfile_name(pg_switch_wal())" postgres)
archived() { grep -q "archived through the control socket.*$segment" "$WORK/serve.log"; }
for _ in $(seq 600); do archived && break; sleep 0.1; done
check "postgres archived $segment through the service's socket" archived
kill -TERM "$service_pid"
wait "$service_pid" || true
service_pid=
runuser -u postgres -- "$PGB/pg_ctl" -D "$WORK/pgdata" -w stop >/dev/null

echo "==> upgrade"
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb2" >/dev/null
check "the new revision is installed" bash -c 'dpkg-query -W -f="\${Version}" strata | grep -q -- "-2$"'
check "the edited configuration is kept" cmp /etc/strata/strata.toml "$WORK/edited.toml"
check "its mode is still 0640 root:strata" has_mode /etc/strata/strata.toml "640 root:strata"

echo "==> removal"
dpkg -r strata >/dev/null
check "the binaries are gone" test ! -e /usr/bin/strata
check "the configuration is kept" cmp /etc/strata/strata.toml "$WORK/edited.toml"
check "the index is kept" test -f /var/lib/strata/catalog.db
check "the vault is kept" test -f /var/lib/strata/vault/strata-vault.json
dpkg -P strata >/dev/null
check "purge removes the configuration" test ! -e /etc/strata/strata.toml
check "purge keeps the vault" test -f /var/lib/strata/vault/strata-vault.json

echo "package: $passed checks passed, $failed failed"
if ((failed > 0)); then
    echo "--- serve.log ---"
    tail -n 30 "$WORK/serve.log" 2>/dev/null || true
    exit 1
fi
