#!/bin/sh
# A throwaway PostgreSQL 15 cluster for the tests (see tests/CMakeLists.txt).
#
#   tools/testpg.sh start DIR          initdb DIR/data, start it on a free
#                                      127.0.0.1 port, write DIR/url and
#                                      DIR/pid, print the URL (idempotent)
#   tools/testpg.sh stop DIR           stop that cluster and remove DIR
#   tools/testpg.sh createdb DIR NAME  (re)create database NAME, print its URL
#
# The cluster listens on 127.0.0.1 only (trust authentication, superuser
# "postgres") and on a Unix socket in DIR, never in /var/run/postgresql.
# fsync stays on. The server log is DIR/postgres.log. As root, the server
# runs as the "postgres" system user (initdb refuses root); if that user
# cannot reach DIR (a parent directory closed to others) or DIR is too long
# for a socket path, the data and socket live in a mktemp directory under
# /tmp instead, named in DIR/rundir (DIR/data is then a symlink to it).
# The script only ever signals the postmaster recorded in DIR/pid, and only
# after checking that it is a postgres running on DIR's data directory.
set -eu

me=testpg
die() { echo "$me: $*" >&2; exit 1; }
warn() { echo "$me: $*" >&2; }
usage() {
    echo "usage: $0 start DIR | stop DIR | createdb DIR NAME" >&2
    exit 2
}

# A hermetic environment: no PG* variable may redirect a client or server.
unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE \
    PGSERVICEFILE PGPASSFILE PGSSLMODE PGTARGETSESSIONATTRS PGCONNECT_TIMEOUT \
    2>/dev/null || true

script_dir=$(cd "$(dirname "$0")" && pwd -P)
is_root=false
[ "$(id -u)" = 0 ] && is_root=true

# --- binaries ---------------------------------------------------------------
find_bindir() {
    for d in /usr/lib/postgresql/15/bin "$(pg_config --bindir 2>/dev/null || true)"; do
        if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return 0
        fi
    done
    i=$(command -v initdb 2>/dev/null || true)
    if [ -n "$i" ]; then
        d=$(dirname "$i")
        if [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return 0
        fi
    fi
    return 1
}

bindir=""
need_server() {
    [ -n "$bindir" ] && return 0
    if ! bindir=$(find_bindir); then
        [ -f "$script_dir/install-deps.sh" ] || die "PostgreSQL 15 not found and no $script_dir/install-deps.sh"
        sh "$script_dir/install-deps.sh" postgresql-15 postgresql-client-15 >&2 ||
            die "installing postgresql-15 failed"
        bindir=$(find_bindir) || die "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found"
    fi
}

client() { # client NAME: path of psql or pg_isready
    if [ -n "$bindir" ] && [ -x "$bindir/$1" ]; then
        echo "$bindir/$1"
    elif [ -x "/usr/lib/postgresql/15/bin/$1" ]; then
        echo "/usr/lib/postgresql/15/bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        return 1
    fi
}

# --- running things as the cluster's owner ----------------------------------
# as_user USER CMD...: as root, run CMD as USER (from /, so a closed current
# directory does not bother it); otherwise run CMD directly. The lock (fd 9)
# is closed for CMD: a postmaster must not inherit and hold it.
as_user() {
    u=$1
    shift
    if $is_root; then
        if command -v runuser >/dev/null 2>&1; then
            (cd / && runuser -u "$u" -- "$@" 9>&-)
        else
            # shellcheck disable=SC2016 # expanded by the inner shell
            (cd / && su -s /bin/sh "$u" -c '"$0" "$@"' -- "$@" 9>&-)
        fi
    else
        "$@" 9>&-
    fi
}

# the user that owns the data directory (and so must run pg_ctl on it)
owner_of() {
    if $is_root; then
        stat -c %U "$1" 2>/dev/null || echo postgres
    else
        id -un
    fi
}

# --- paths ------------------------------------------------------------------
set_dir() { # set_dir DIR [create]: sets $dir to DIR's absolute path
    [ -n "$1" ] || usage
    case $1 in
        /*) dir=$1 ;;
        *) dir=$(pwd -P)/$1 ;;
    esac
    if [ "${2:-}" = create ]; then
        mkdir -p "$dir"
    fi
    if [ -d "$dir" ]; then
        dir=$(cd "$dir" && pwd -P)
        case $dir in
            / | /tmp | /usr | /etc | /var | /home | /root | /work) die "refusing to use $dir" ;;
        esac
    fi
}

# the real data directory (DIR/data or the /tmp one it links to), or empty;
# a DIR/data symlink counts only if it leads to the run directory we made
data_dir() {
    [ -d "$dir/data" ] || return 0
    if [ -L "$dir/data" ]; then
        [ -f "$dir/rundir" ] || return 0
        r=$(head -n 1 "$dir/rundir")
        case $r in /tmp/testpg.?*) ;; *) return 0 ;; esac
        [ "$(readlink "$dir/data")" = "$r/data" ] || return 0
    fi
    (cd "$dir/data" 2>/dev/null && pwd -P) || true
}

# --- checking a postmaster --------------------------------------------------
# is_our_postmaster PID DATADIR: PID is alive, is a postgres binary, and runs
# on DATADIR (a postmaster's working directory is its data directory).
is_our_postmaster() {
    p=$1
    d=$2
    case $p in '' | *[!0-9]*) return 1 ;; esac
    [ -n "$d" ] || return 1
    kill -0 "$p" 2>/dev/null || return 1
    if [ -d "/proc/$p" ]; then
        exe=$(readlink "/proc/$p/exe" 2>/dev/null || true)
        case $exe in
            */postgres | */postgres" (deleted)" | */postmaster) ;;
            *) return 1 ;;
        esac
        cwd=$(readlink "/proc/$p/cwd" 2>/dev/null || true)
        [ "$cwd" = "$d" ] && return 0
        # cwd unreadable: fall back to the command line (-D DATADIR)
        [ -z "$cwd" ] || return 1
    fi
    args=$(ps -p "$p" -o args= 2>/dev/null || true)
    case $args in
        *postgres*" -D $d" | *postgres*" -D $d "*) return 0 ;;
    esac
    return 1
}

# the PID in DIR/pid when it is our running postmaster, else nothing
recorded_pid() {
    [ -f "$dir/pid" ] || return 1
    p=$(head -n 1 "$dir/pid" 2>/dev/null | tr -dc 0-9)
    d=$(data_dir)
    if is_our_postmaster "$p" "$d"; then
        echo "$p"
        return 0
    fi
    return 1
}

# pid and port of the postmaster running on data directory $1, from its
# postmaster.pid (line 1: pid, line 4: port), when that postmaster is alive
postmaster_pid_port() {
    f=$1/postmaster.pid
    [ -r "$f" ] || return 1
    p=$(sed -n 1p "$f" | tr -dc 0-9)
    port=$(sed -n 4p "$f" | tr -dc 0-9)
    is_our_postmaster "$p" "$1" || return 1
    [ -n "$port" ] || return 1
    echo "$p $port"
}

write_file() { # write_file PATH CONTENT: atomically
    printf '%s\n' "$2" >"$1.tmp.$$"
    chmod 0644 "$1.tmp.$$"
    mv -f "$1.tmp.$$" "$1"
}

free_port() {
    if command -v python3 >/dev/null 2>&1 &&
        python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null; then
        return 0
    fi
    # no python3: a random port in 20000..59999 (a clash makes start retry)
    n=$(od -An -N2 -tu2 /dev/urandom | tr -dc 0-9)
    echo $((20000 + n % 40000))
}

lock_dir() {
    if command -v flock >/dev/null 2>&1; then
        exec 9>>"$dir/.lock"
        flock -w 120 9 || die "another $me is busy with $dir"
    fi
}

sq() { printf '%s' "$1" | sed "s/'/''/g"; } # for a single-quoted SQL/conf string

pg_ready() { # pg_ready PORT
    isready=$(client pg_isready || true)
    if [ -n "$isready" ]; then
        "$isready" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -t 2 >/dev/null 2>&1
    else
        psql=$(client psql) || return 1
        "$psql" -X -q -At -d "postgres://postgres@127.0.0.1:$1/postgres?connect_timeout=2" \
            -c 'select 1' >/dev/null 2>&1
    fi
}

# --- start --------------------------------------------------------------------
cmd_start() {
    set_dir "$1" create
    [ -d "$dir" ] || die "cannot create $dir"
    if [ -n "$(ls -A "$dir" 2>/dev/null)" ] && [ ! -f "$dir/.testpg" ]; then
        die "$dir is not empty and was not made by $me; refusing to use it"
    fi
    : >"$dir/.testpg"
    lock_dir

    # already running?
    if p=$(recorded_pid) && [ -s "$dir/url" ]; then
        cat "$dir/url"
        return 0
    fi
    d=$(data_dir)
    if [ -n "$d" ] && pp=$(postmaster_pid_port "$d"); then
        # running, but DIR/url or DIR/pid went missing: record it again
        p=${pp% *}
        port=${pp#* }
        write_file "$dir/url" "postgres://postgres@127.0.0.1:$port/postgres"
        write_file "$dir/pid" "$p"
        cat "$dir/url"
        return 0
    fi

    need_server
    # a leftover from a crash or a killed run: it is throwaway, start afresh
    if [ -e "$dir/data" ] || [ -L "$dir/data" ] || [ -f "$dir/rundir" ]; then
        warn "removing a stopped leftover cluster in $dir"
        remove_rundir
        rm -rf "$dir/data" "$dir/url" "$dir/pid" "$dir/postgres.log"
    fi

    user=$(id -un)
    if $is_root; then
        user=postgres
        id -u postgres >/dev/null 2>&1 || die "no 'postgres' system user (is postgresql-15 installed?)"
        chown postgres: "$dir"
        chmod 0755 "$dir"
    fi

    # where the server's files go: DIR itself if its user can reach and
    # write it and the socket path fits (108 bytes); else a /tmp directory
    run=$dir
    if ! as_user "$user" test -d "$dir" -a -w "$dir" -a -x "$dir" 2>/dev/null ||
        [ "${#dir}" -gt 80 ]; then
        run=$(mktemp -d /tmp/testpg.XXXXXXXX)
        chmod 0755 "$run"
        $is_root && chown postgres: "$run"
        write_file "$dir/rundir" "$run"
    fi

    if [ "$run" = "$dir" ]; then
        pgdata=$dir/data
        log=$dir/postgres.log
    else
        pgdata=$run/data
        log=$run/postgres.log
        ln -s "$pgdata" "$dir/data"
        ln -s "$log" "$dir/postgres.log"
    fi

    if ! as_user "$user" "$bindir/initdb" -D "$pgdata" -U postgres --auth=trust \
        -E UTF8 --locale=C >"$run/initdb.log" 2>&1; then
        cat "$run/initdb.log" >&2
        die "initdb failed"
    fi
    pgdata=$(cd "$pgdata" && pwd -P)
    cat >>"$pgdata/postgresql.conf" <<EOF

# --- tools/testpg.sh: a throwaway test cluster ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$(sq "$run")'
max_connections = 200
shared_buffers = 128MB
fsync = on
synchronous_commit = on
full_page_writes = on
logging_collector = off
EOF

    tries=0
    while :; do
        tries=$((tries + 1))
        port=$(free_port)
        seen=0
        [ -f "$log" ] && seen=$(wc -l <"$log")
        if as_user "$user" "$bindir/pg_ctl" start -D "$pgdata" -l "$log" -w -t 30 \
            -o "-p $port" >"$log.start" 2>&1; then
            break
        fi
        # pg_ctl gave up: make sure no half-started server stays behind
        as_user "$user" "$bindir/pg_ctl" stop -D "$pgdata" -m immediate -w -t 30 >/dev/null 2>&1 || true
        if [ "$tries" -lt 5 ] && tail -n +$((seen + 1)) "$log" 2>/dev/null | grep -q -i \
            -e 'could not bind' -e 'address already in use' -e 'could not create any TCP/IP sockets'; then
            warn "port $port was taken; trying another"
            continue
        fi
        cat "$log.start" >&2
        tail -n 30 "$log" >&2 2>/dev/null || true
        die "the server did not start (log: $log)"
    done
    rm -f "$log.start"

    # pg_ctl -w waited for "ready"; check a real TCP connection (<= ~30 s)
    i=0
    until pg_ready "$port"; do
        i=$((i + 1))
        if [ "$i" -ge 60 ]; then
            tail -n 30 "$log" >&2 2>/dev/null || true
            as_user "$user" "$bindir/pg_ctl" stop -D "$pgdata" -m immediate -w -t 30 >/dev/null 2>&1 || true
            die "the server does not accept connections on 127.0.0.1:$port"
        fi
        sleep 0.5
    done

    pp=$(postmaster_pid_port "$pgdata") || die "started, but no postmaster PID in $pgdata/postmaster.pid"
    write_file "$dir/pid" "${pp% *}"
    write_file "$dir/url" "postgres://postgres@127.0.0.1:$port/postgres"
    cat "$dir/url"
}

# --- stop ---------------------------------------------------------------------
remove_rundir() {
    [ -f "$dir/rundir" ] || return 0
    r=$(head -n 1 "$dir/rundir")
    case $r in
        /tmp/testpg.?*) rm -rf "$r" ;;
        *) warn "not removing unexpected run directory '$r'" ;;
    esac
    rm -f "$dir/rundir"
}

cmd_stop() {
    set_dir "$1"
    [ -d "$dir" ] || return 0
    if [ ! -f "$dir/.testpg" ]; then
        if rmdir "$dir" 2>/dev/null; then
            return 0
        fi
        die "$dir was not made by $me; leaving it alone"
    fi
    lock_dir

    d=$(data_dir)
    if [ -n "$d" ] && [ -f "$d/postmaster.pid" ]; then
        need_server
        u=$(owner_of "$d")
        # pg_ctl acts only on the postmaster named in this data directory
        if ! as_user "$u" "$bindir/pg_ctl" stop -D "$d" -m fast -w -t 60 >/dev/null 2>&1; then
            as_user "$u" "$bindir/pg_ctl" status -D "$d" >/dev/null 2>&1 &&
                warn "pg_ctl stop failed; signalling the recorded postmaster"
        fi
    fi
    # fallback: the PID from DIR/pid, and only if it is our postmaster
    if p=$(recorded_pid); then
        for sig in INT QUIT KILL; do
            kill -s "$sig" "$p" 2>/dev/null || true
            i=0
            while is_our_postmaster "$p" "$d" && [ "$i" -lt 40 ]; do
                sleep 0.25
                i=$((i + 1))
            done
            is_our_postmaster "$p" "$d" || break
        done
        if is_our_postmaster "$p" "$d"; then
            die "postmaster $p for $d does not stop; leaving $dir in place"
        fi
    fi
    if [ -n "$d" ] && pp=$(postmaster_pid_port "$d"); then
        die "postmaster ${pp% *} for $d is still running; leaving $dir in place"
    fi
    remove_rundir
    rm -rf "$dir"
}

# --- createdb -----------------------------------------------------------------
urlencode() {
    printf '%s' "$1" | od -An -v -tx1 | tr ' ' '\n' | sed '/^$/d' |
        while read -r h; do
            case $h in
                3[0-9] | 4[1-9a-f] | 5[0-9a] | 6[1-9a-f] | 7[0-9a] | 2d | 2e | 5f | 7e)
                    # shellcheck disable=SC2059 # an octal escape, made here
                    printf "\\$(printf '%03o' "0x$h")" ;;
                *) printf '%%%s' "$h" ;;
            esac
        done
}

cmd_createdb() {
    set_dir "$1"
    name=$2
    [ -n "$name" ] || usage
    case $name in *'
'*) die "bad database name" ;; esac
    [ "$(printf '%s' "$name" | wc -c)" -le 63 ] || die "database name longer than 63 bytes"
    if [ ! -s "$dir/url" ] || ! recorded_pid >/dev/null; then
        die "no running cluster in $dir (run: $0 start $1)"
    fi
    base=$(head -n 1 "$dir/url")
    psql=$(client psql) || { need_server; psql=$(client psql) || die "psql not found"; }
    ident=\"$(printf '%s' "$name" | sed 's/"/""/g')\"
    "$psql" -X -q -v ON_ERROR_STOP=1 -d "$base" -c 'SET client_min_messages = warning' \
        -c "DROP DATABASE IF EXISTS $ident WITH (FORCE)" \
        -c "CREATE DATABASE $ident" >/dev/null || die "could not create database $name"
    echo "${base%/*}/$(urlencode "$name")"
}

[ $# -ge 1 ] || usage
case $1 in
    start) [ $# -eq 2 ] || usage; cmd_start "$2" ;;
    stop) [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
    createdb) [ $# -eq 3 ] || usage; cmd_createdb "$2" "$3" ;;
    *) usage ;;
esac
