#!/usr/bin/env bash
# The PostgreSQL and Redis that `make test` and `make bench` use: start them when they are installed
# but not running, wait until they answer, and say in one line what to install when one is missing.
#
# It checks the servers of DATABASE_URL and CELERY_BROKER_URL / CELERY_RESULT_BACKEND, with the test
# settings' defaults (PostgreSQL and Redis on 127.0.0.1). It starts only a server on this machine:
# PostgreSQL's cluster of that port (Debian's pg_ctlcluster), Redis on that port without persistence.
# Silent when both already answer, a line for each it starts; exit status 1 with one line when one
# cannot be had.
set -euo pipefail

DATABASE=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/entity_vectors}
BROKER=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/11}
BACKEND=${CELERY_RESULT_BACKEND:-$BROKER}
WAIT_SECONDS=30

say() { echo "services: $*" >&2; }
fail() { say "$*"; exit 1; }

# host_port URL DEFAULT_PORT -> "host port" (an IPv6 host without its brackets).
host_port() {
    local rest=${1#*://}
    rest=${rest%%[/?#]*}
    rest=${rest##*@}
    local host port=$2
    if [[ $rest =~ ^\[([^]]*)\](:([0-9]+))?$ ]]; then
        host=${BASH_REMATCH[1]}
        port=${BASH_REMATCH[3]:-$port}
    elif [[ $rest =~ ^([^:]*)(:([0-9]+))?$ ]]; then
        host=${BASH_REMATCH[1]}
        port=${BASH_REMATCH[3]:-$port}
    else
        return 1
    fi
    echo "${host:-127.0.0.1} $port"
}

is_local() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]; }

# Whether something accepts TCP connections on host:port.
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

postgres_answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -h "$1" -p "$2" -q 2>/dev/null
    else
        listening "$1" "$2"
    fi
}

# Redis answers PING with one line of its protocol: +PONG, or an error such as -NOAUTH behind a
# password (not whatever else may accept a connection on that port).
redis_answers() {
    local reply
    reply=$( (exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && read -r -t 2 line <&3 && echo "$line") 2>/dev/null) \
        || return 1
    [[ $reply == [+-]* ]]
}

wait_for() {  # wait_for CHECK HOST PORT
    local _
    for _ in $(seq 1 "$WAIT_SECONDS"); do
        "$1" "$2" "$3" && return 0
        sleep 1
    done
    "$1" "$2" "$3"
}

ensure_postgres() {
    [[ $DATABASE == postgres://* || $DATABASE == postgresql://* ]] || return 0
    local address host port
    address=$(host_port "$DATABASE" 5432) || fail "DATABASE_URL is not understood"
    read -r host port <<<"$address"
    postgres_answers "$host" "$port" && return 0
    is_local "$host" \
        || fail "PostgreSQL at $host:$port (DATABASE_URL) does not answer; start it, or unset DATABASE_URL to use a local one"
    command -v pg_ctlcluster >/dev/null 2>&1 && command -v pg_lsclusters >/dev/null 2>&1 \
        || fail "PostgreSQL is not installed: install it (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql, then brew services start postgresql)"
    # The cluster of that port (Debian: /etc/postgresql/<version>/main listens on 5432).
    local version cluster status
    read -r version cluster status < <(pg_lsclusters --no-header 2>/dev/null | awk -v port="$port" '$3 == port {print $1, $2, $4; exit}') || true
    [[ -n ${version:-} ]] \
        || fail "no PostgreSQL cluster listens on port $port (pg_lsclusters); create one (pg_createcluster --start <version> main) or set DATABASE_URL"
    if [[ $status != online ]]; then
        local output
        output=$(pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start 2>&1) \
            || fail "PostgreSQL $version/$cluster did not start: $(tail -n 1 <<<"$output")"
        say "started PostgreSQL $version/$cluster on port $port"
    fi
    wait_for postgres_answers "$host" "$port" \
        || fail "PostgreSQL $version/$cluster does not answer on $host:$port after ${WAIT_SECONDS}s; see /var/log/postgresql/postgresql-$version-$cluster.log"
}

ensure_redis() {  # ensure_redis URL SETTING
    [[ $1 == redis://* ]] || return 0
    local address host port
    address=$(host_port "$1" 6379) || fail "$2 is not understood"
    read -r host port <<<"$address"
    redis_answers "$host" "$port" && return 0
    is_local "$host" \
        || fail "Redis at $host:$port ($2) does not answer; start it, or unset $2 to use a local one"
    command -v redis-server >/dev/null 2>&1 \
        || fail "Redis is not installed: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
    local output
    output=$(redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no 2>&1) \
        || fail "Redis did not start on port $port: $(tail -n 1 <<<"$output")"
    wait_for redis_answers 127.0.0.1 "$port" \
        || fail "Redis does not answer on 127.0.0.1:$port after ${WAIT_SECONDS}s"
    say "started Redis on 127.0.0.1:$port (no persistence)"
}

ensure_postgres
ensure_redis "$BROKER" CELERY_BROKER_URL
[[ $BACKEND == "$BROKER" ]] || ensure_redis "$BACKEND" CELERY_RESULT_BACKEND
