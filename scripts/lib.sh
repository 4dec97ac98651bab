# shellcheck shell=bash
# What the service scripts in this folder share; they source it (it is not a command). Messages name the script.

SCRIPT_NAME=$(basename "$0" .sh)

say() { echo "$SCRIPT_NAME: $*"; }

die() {
    echo "$SCRIPT_NAME: error: $*" >&2
    exit 1
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; } # answers PORT: something listens on 127.0.0.1:PORT

wait_for() { # wait_for SECONDS COMMAND...: retry COMMAND until it succeeds or SECONDS have passed
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

stop_process() { # stop_process PID [group]: SIGTERM (to its whole process group with `group`), SIGKILL after 30 s
    local pid=$1 target=$1
    [[ ${2:-} == group ]] && target=-$1
    kill -TERM -- "$target" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null || { [[ $target == -* ]] && pgrep -g "$pid" >/dev/null; }; do
        if ((SECONDS >= deadline)); then
            say "pid $pid ignored SIGTERM for 30 s; killing it"
            kill -KILL -- "$target" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
    done
}

apt_install() { # apt_install PACKAGE...: Debian's packages, with the package lists refreshed unless they are recent
    say "installing $*"
    # One apt-get at a time: it fails at once on a lock another holds, and the test suite may start two services
    # side by side. --close: a daemon a package starts must not inherit, and so keep holding, the lock.
    flock --close --timeout 1800 /var/lock/burrscope-apt.lock \
        bash -c "$(declare -f apt_install_now); apt_install_now \"\$@\"" apt_install "$@"
}

apt_install_now() { # apt_install's work, under its lock
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 -print -quit 2>/dev/null) ]]; then
        apt-get update -qq
    fi
    # Debian's policy-rc.d in containers stops the packages' own services from starting; these scripts start theirs.
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

run_exclusively() { # run_exclusively LOCKFILE ARGS...: rerun this script with ARGS holding LOCKFILE's lock
    [[ ${BURRSCOPE_LOCK_HELD:-} == "$1" ]] && return 0
    # --close: the daemons the script starts must not inherit, and so keep holding, the lock.
    BURRSCOPE_LOCK_HELD=$1 exec flock --close --timeout 900 "$1" bash "$0" "${@:2}"
}
