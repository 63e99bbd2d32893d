#!/usr/bin/env bash
# Strata's main job, end to end, on this machine with nothing set up by hand:
#
#   1. a throwaway PostgreSQL cluster (initdb, free port, private socket dir)
#      archiving its WAL into a local Strata vault (archive_command = strata pg wal-push);
#   2. `strata pg check`, then a full backup (`strata backup pg`);
#   3. pgbench load, plus one marker row per second with its commit time, and
#      a differential backup in the middle of it (`--kind diff`: the pages
#      changed since the full);
#   4. a point-in-time restore to a moment between two markers, into a second
#      data directory on another port, started by Strata (`strata restore pg
#      --start`): the full, the differential, then WAL;
#   5. a check that the restored cluster holds exactly the markers committed
#      before the target, and the timeline it runs on.
#
# Usage: scripts/demo.sh            (KEEP=1 keeps the clusters' directory)
# Environment: STRATA_PROFILE=debug builds faster than the default release;
#              PG_BIN overrides the PostgreSQL programs' directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${STRATA_PROFILE:-release}"
SCALE="${DEMO_SCALE:-10}"
MARKERS="${DEMO_MARKERS:-10}"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo.sh: $*" >&2; exit 1; }

say "Installing what the demo needs (scripts/setup.sh)"
"$ROOT/scripts/setup.sh"

PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
[[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL 15+ programs not found (install postgresql-15, or set PG_BIN)"

say "Building strata ($PROFILE)"
if [[ "$PROFILE" == release ]]; then
    (cd "$ROOT" && cargo build --quiet --release -p strata)
    STRATA="$ROOT/target/release/strata"
else
    (cd "$ROOT" && cargo build --quiet -p strata)
    STRATA="$ROOT/target/debug/strata"
fi

# PostgreSQL refuses to run as root: run its programs (and so the archive and
# restore commands) as the postgres OS user, in a directory it owns.
if [[ "$(id -u)" == 0 ]]; then
    PGUSER_OS=postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    PGUSER_OS="$(id -un)"
    as_pg() { "$@"; }
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d /tmp/strata-demo.XXXXXX)"
chmod 755 "$WORK"
SRC="$WORK/source"; DST="$WORK/restored"; SOCK="$WORK/sock"; VAULT="$WORK/vault"; CONF="$WORK/strata.toml"
PORT="$(free_port)"; PORT2="$(free_port)"
mkdir -p "$SOCK"
[[ "$(id -u)" == 0 ]] && chown -R postgres:postgres "$WORK"

cleanup() {
    as_pg "$PG_BIN/pg_ctl" -D "$DST" -m immediate stop >/dev/null 2>&1 || true
    as_pg "$PG_BIN/pg_ctl" -D "$SRC" -m immediate stop >/dev/null 2>&1 || true
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

psql_src() { as_pg "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres -c "$1"; }
psql_dst() { as_pg "$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT2" -U postgres -d postgres -c "$1"; }

say "A throwaway cluster on port $PORT, archiving into the vault $VAULT"
as_pg "$PG_BIN/initdb" -D "$SRC" -k -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >>"$SRC/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
wal_level = replica
archive_mode = on
archive_timeout = 60
archive_command = '$STRATA --config $CONF pg wal-push %p --cluster demo'
EOF
cat >"$CONF" <<EOF
[vault]
url = "file://$VAULT"

[catalog]
path = "$WORK/catalog.db"

[postgres.demo]
connection = "host=$SOCK port=$PORT user=postgres dbname=postgres"
data_directory = "$SRC"
bin_dir = "$PG_BIN"
os_user = "$PGUSER_OS"
EOF
"$STRATA" --config "$CONF" vault init >/dev/null
[[ "$(id -u)" == 0 ]] && chown -R postgres:postgres "$WORK"
as_pg "$PG_BIN/pg_ctl" -D "$SRC" -l "$WORK/source.log" -w start >/dev/null

say "strata pg check demo"
"$STRATA" --config "$CONF" pg check demo

say "Data: pgbench -i -s $SCALE, and a table of markers"
as_pg "$PG_BIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -n1
psql_src "CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL)"

say "strata backup pg demo --kind full"
"$STRATA" --config "$CONF" backup pg demo --kind full

HALF=$(((MARKERS + 1) / 2))
say "pgbench load, a marker row every second, and a differential backup after marker $((HALF - 1))"
as_pg "$PG_BIN/pgbench" -h "$SOCK" -p "$PORT" -U postgres -c 2 -j 1 -T $((MARKERS + 3)) postgres >"$WORK/pgbench.log" 2>&1 &
LOAD=$!
for i in $(seq 1 "$MARKERS"); do
    sleep 1
    at="$(psql_src "INSERT INTO markers VALUES ($i, clock_timestamp()) RETURNING at AT TIME ZONE 'UTC'")"
    echo "  marker $i committed at $at UTC"
    if ((i == HALF - 1)); then
        echo "  strata backup pg demo --kind diff"
        "$STRATA" --config "$CONF" backup pg demo --kind diff | sed 's/^/    /'
    fi
done
wait "$LOAD" || die "pgbench failed: $(tail -n5 "$WORK/pgbench.log")"
grep -E "^tps" "$WORK/pgbench.log" | head -n1 | sed 's/^/  pgbench: /'

TARGET="$(psql_src "SELECT to_char((at + interval '500 milliseconds') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM markers WHERE id = $HALF")"
EXPECTED="$(psql_src "SELECT string_agg(id::text, ',' ORDER BY id) FROM markers WHERE at < '$TARGET'")"
SEG="$(psql_src "SELECT pg_walfile_name(pg_switch_wal())")"
for _ in $(seq 1 300); do
    last="$(psql_src "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")"
    [[ "$last" > "$SEG" || "$last" == "$SEG" ]] && break
    sleep 0.2
done

say "strata list pg demo"
"$STRATA" --config "$CONF" list pg demo

say "Point-in-time restore to $TARGET (half a second after marker $HALF) into $DST, port $PORT2"
"$STRATA" --config "$CONF" restore pg demo --to-time "$TARGET" --target-dir "$DST" --port "$PORT2" --start | tee "$WORK/restore.log"
grep -q "applied on" "$WORK/restore.log" || die "the restore did not use the differential (full + diff + WAL)"

say "Checking the restored cluster"
GOT="$(psql_dst "SELECT string_agg(id::text, ',' ORDER BY id) FROM markers")"
TLI="$(psql_dst "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)::text")"
ACCOUNTS="$(psql_dst "SELECT count(*) FROM pgbench_accounts")"
echo "  markers committed before the target: $EXPECTED"
echo "  markers in the restored cluster:     $GOT"
echo "  pgbench_accounts rows:               $ACCOUNTS"
echo "  timeline of the restored cluster:    $((16#$TLI)) (the source runs on 1)"
echo "  source still has all markers:        $(psql_src "SELECT count(*) FROM markers")"
[[ "$GOT" == "$EXPECTED" ]] || die "the restored markers ($GOT) differ from those committed before the target ($EXPECTED)"
[[ "$ACCOUNTS" == "$((SCALE * 100000))" ]] || die "pgbench_accounts has $ACCOUNTS rows, expected $((SCALE * 100000))"
say "OK: the restored cluster holds exactly the rows committed before $TARGET"
