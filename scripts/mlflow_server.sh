#!/usr/bin/env bash
# An MLflow tracking server on PostgreSQL, on this machine, for several folds (or people) logging at once.
#
#   scripts/mlflow_server.sh start [PORT]   # PostgreSQL cluster `burrscope` + `mlflow server` on 127.0.0.1:PORT
#   scripts/mlflow_server.sh status [PORT]  # exit 0 only when the server answers on PORT
#   scripts/mlflow_server.sh stop [PORT]    # stop that server, and PostgreSQL once no server of this script is left
#
# PORT defaults to 5000. Then point the pipeline at it:  export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
#
# Run as root on Debian (postgresql is installed with apt-get when missing). The runs go to the database `mlflow`
# of a PostgreSQL cluster of its own (Debian's pg_createcluster: `<version> burrscope`, port
# $BURRSCOPE_PG_PORT, default 5433), never the machine's `main` cluster; the password lives in a pgpass file, not
# on a command line. Artifacts are served by the server itself (`mlflow-artifacts:` URIs, stored under
# $BURRSCOPE_MLFLOW_STATE/artifacts, default /var/lib/burrscope-mlflow), so clients need no access to the disk.
# Listens on 127.0.0.1 only and has no authentication: docs/scale-out.md says what a shared server needs.
# `start` and `stop` are idempotent.
set -euo pipefail

PORT=${2:-5000}
STATE=${BURRSCOPE_MLFLOW_STATE:-/var/lib/burrscope-mlflow}
PG_PORT=${BURRSCOPE_PG_PORT:-5433}
PG_CLUSTER=burrscope
DB=mlflow
DB_USER=mlflow
WORKERS=${BURRSCOPE_MLFLOW_WORKERS:-2}
# uvicorn kills a worker that leaves its health ping unanswered for 5 s, with the requests it serves. On a 2-core
# machine busy training folds, a worker starting up or serving its first request can be that slow, and a fold
# saw its connection aborted. A worker that is really hung still goes, after a minute.
WORKER_HEALTHCHECK_S=${BURRSCOPE_MLFLOW_WORKER_HEALTHCHECK_S:-60}
MLFLOW=${MLFLOW:-mlflow}

PIDFILE=$STATE/mlflow-$PORT.pid
LOGFILE=$STATE/mlflow-$PORT.log
PGPASS=$STATE/pgpass

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$PORT'"

# One start or stop at a time, whatever the port: two at once (two people, or the test suite's side-by-side files)
# would race to create the PostgreSQL cluster, or stop it under a server that is just starting.
if [[ ${1:-} == start || ${1:-} == stop ]] && [[ $(id -u) -eq 0 ]]; then
    install -d -m 0755 "$STATE"
    run_exclusively "$STATE/start-stop.lock" "$@"
fi

pg_version() { # the newest PostgreSQL installed
    local version
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n 1)
    [[ -n $version ]] || return 1
    echo "$version"
}

install_packages() {
    if pg_version >/dev/null && command -v pg_createcluster >/dev/null; then
        return 0
    fi
    apt_install postgresql
}

pg_running() { [[ $(pg_lsclusters --no-header 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c {print $4}') == online ]]; }

start_postgres() {
    local version
    version=$(pg_version) || die "no PostgreSQL under /usr/lib/postgresql"
    if ! pg_lsclusters --no-header | awk -v c="$PG_CLUSTER" '$2 == c {found=1} END {exit !found}'; then
        pg_createcluster --port="$PG_PORT" "$version" "$PG_CLUSTER" >/dev/null
        say "created PostgreSQL cluster $version/$PG_CLUSTER on port $PG_PORT"
    fi
    if ! pg_running; then
        pg_ctlcluster "$version" "$PG_CLUSTER" start
    fi
    local port
    port=$(pg_lsclusters --no-header | awk -v c="$PG_CLUSTER" '$2 == c {print $3}')
    [[ $port == "$PG_PORT" ]] || die "cluster $version/$PG_CLUSTER listens on port $port, not $PG_PORT"
    if [[ ! -s $PGPASS ]]; then
        (umask 077 && echo "127.0.0.1:$PG_PORT:$DB:$DB_USER:$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')" >"$PGPASS")
    fi
    local password
    password=$(cut -d: -f5 "$PGPASS")
    runuser -u postgres -- psql --quiet --port="$PG_PORT" --set ON_ERROR_STOP=1 --dbname=postgres >/dev/null <<SQL
SELECT 'CREATE ROLE $DB_USER LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER')\\gexec
ALTER ROLE $DB_USER WITH LOGIN PASSWORD '$password';
SELECT 'CREATE DATABASE $DB OWNER $DB_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')\\gexec
SQL
}

stop_postgres() {
    local version
    version=$(pg_version) || return 0
    if pg_running; then
        pg_ctlcluster "$version" "$PG_CLUSTER" stop
        say "PostgreSQL $version/$PG_CLUSTER: stopped"
    fi
}

is_our_server() { # is_our_server PID PORT: that process is `mlflow server ... --port PORT` (not a reused pid)
    local command
    command=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ $command == *" server "* && $command == *" --port $2 "* ]]
}

server_pid() { # the pid of this script's server on PORT, if it runs
    [[ -s $PIDFILE ]] || return 0
    local pid
    pid=$(tr -dc '0-9' <"$PIDFILE")
    if [[ -n $pid ]] && is_our_server "$pid" "$PORT"; then echo "$pid"; fi
}

healthy() { curl --silent --fail --max-time 5 "http://127.0.0.1:$PORT/health" >/dev/null; }

start() {
    [[ $(id -u) -eq 0 ]] || die "run as root: it creates and starts a PostgreSQL cluster"
    command -v "$MLFLOW" >/dev/null || die "'$MLFLOW' not found: activate the project's venv (. .venv/bin/activate)"
    install_packages
    install -d -m 0755 "$STATE" "$STATE/artifacts"
    start_postgres
    if [[ -n $(server_pid) ]]; then
        wait_healthy
        say "already running on http://127.0.0.1:$PORT (pid $(server_pid))"
        return 0
    fi
    ! healthy || die "something else already answers on 127.0.0.1:$PORT; choose another PORT"
    # Its own session, so that `stop` can end the server and its workers together. Without MLflow's job runner:
    # its eight processes serve GenAI features (online scoring, trace archival) that Burrscope never uses, and
    # load the machine the folds train on. A user's own MLFLOW_SERVER_ENABLE_JOB_EXECUTION wins.
    PGPASSFILE=$PGPASS MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
        setsid "$MLFLOW" server \
        --backend-store-uri "postgresql://$DB_USER@127.0.0.1:$PG_PORT/$DB" \
        --artifacts-destination "$STATE/artifacts" --serve-artifacts \
        --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" \
        --uvicorn-opts "--timeout-worker-healthcheck $WORKER_HEALTHCHECK_S" </dev/null >>"$LOGFILE" 2>&1 &
    echo $! >"$PIDFILE"
    wait_healthy
    say "running on http://127.0.0.1:$PORT (pid $(server_pid)): export MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
}

wait_healthy() {
    local deadline=$((SECONDS + 120))
    until healthy; do
        if [[ -z $(server_pid) ]]; then
            tail -n 20 "$LOGFILE" >&2 || true
            die "mlflow server exited; the end of $LOGFILE is above"
        fi
        ((SECONDS < deadline)) || die "mlflow server did not answer within 120 s; see $LOGFILE"
        sleep 1
    done
}

stop() {
    [[ $(id -u) -eq 0 ]] || die "run as root"
    local pid
    pid=$(server_pid)
    if [[ -z $pid ]]; then
        say "no server of this script on port $PORT"
    else
        stop_process "$pid" group
        say "server on port $PORT: stopped (pid $pid)"
    fi
    rm -f "$PIDFILE"
    local other port pid
    for other in "$STATE"/mlflow-*.pid; do
        [[ -e $other ]] || continue
        port=${other##*/mlflow-}
        port=${port%.pid}
        pid=$(tr -dc '0-9' <"$other")
        if [[ -n $pid ]] && is_our_server "$pid" "$port"; then
            say "PostgreSQL keeps running: the server on port $port still uses it"
            return 0
        fi
    done
    stop_postgres
}

status() {
    local pid
    pid=$(server_pid)
    if [[ -n $pid ]] && healthy; then
        echo "mlflow server: running on http://127.0.0.1:$PORT (pid $pid)"
    else
        echo "mlflow server: not running on port $PORT"
        return 3
    fi
    if pg_running; then
        echo "PostgreSQL $(pg_version)/$PG_CLUSTER: online on port $PG_PORT"
    fi
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status [PORT]" >&2
    exit 2
    ;;
esac
