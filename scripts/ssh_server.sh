#!/usr/bin/env bash
# A throwaway SSH server on 127.0.0.1, to try a DVC remote over SSH (dvc-ssh) on one machine before a real one.
#
#   scripts/ssh_server.sh start DIR [PORT]   # install openssh-server (apt) if missing; keys, config and sshd in DIR
#   scripts/ssh_server.sh status DIR         # exit 0 only when that sshd answers on its port
#   scripts/ssh_server.sh stop DIR           # stop it; DIR keeps its keys, config and log
#
# PORT defaults to 2222. Run as root on Debian. Everything lives in DIR: a host key, a client key
# (DIR/client_ed25519, the only key that may log in, as the user who ran `start`), the sshd config, its pid file and
# log. sshd listens on 127.0.0.1 only, takes no passwords and serves sftp, which is what DVC's SSH remote speaks.
# `start` prints the two commands that point a DVC remote at it. `start` and `stop` are idempotent.
set -euo pipefail

DIR=${2:-}
PORT=${3:-2222}

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

[[ -n $DIR ]] || die "usage: $0 start|status|stop DIR [PORT]"
[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$PORT'"
DIR=$(realpath -m "$DIR")
PIDFILE=$DIR/sshd.pid

install_packages() {
    [[ -x /usr/sbin/sshd ]] && command -v ssh-keygen >/dev/null && return 0
    apt_install openssh-server
}

pid() { # the running sshd's pid, if its pid file names a live sshd
    [[ -s $PIDFILE ]] || return 0
    local found
    found=$(tr -dc '0-9' <"$PIDFILE")
    if [[ -n $found && $(cat "/proc/$found/comm" 2>/dev/null) == sshd ]]; then echo "$found"; fi
}

port_of() { sed -n 's/^Port //p' "$DIR/sshd_config" 2>/dev/null; }

start() {
    [[ $(id -u) -eq 0 ]] || die "run as root: sshd needs it"
    install_packages
    if [[ -n $(pid) ]]; then
        say "already running on 127.0.0.1:$(port_of) (pid $(pid))"
        return 0
    fi
    answers "$PORT" && die "127.0.0.1:$PORT is taken by another program; choose another PORT"
    install -d -m 0700 "$DIR"
    for key in host_ed25519 client_ed25519; do
        [[ -s $DIR/$key ]] || ssh-keygen -q -t ed25519 -N "" -C "burrscope ssh_server.sh" -f "$DIR/$key"
    done
    install -m 0600 "$DIR/client_ed25519.pub" "$DIR/authorized_keys"
    local user
    user=$(id -un)
    # StrictModes off: DIR is not the user's home, so sshd's home-ownership checks do not apply.
    cat >"$DIR/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_ed25519
PidFile $PIDFILE
AuthorizedKeysFile $DIR/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
AllowUsers $user
EOF
    install -d -m 0755 /run/sshd # its privilege-separation folder, which a container may lack
    /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"
    local deadline=$((SECONDS + 30))
    until answers "$PORT"; do
        ((SECONDS < deadline)) || die "sshd did not answer on 127.0.0.1:$PORT within 30 s; see $DIR/sshd.log"
        sleep 0.2
    done
    say "running on 127.0.0.1:$PORT (pid $(pid)); point a DVC remote at it with:"
    say "  dvc remote add -d shared ssh://$user@127.0.0.1:$PORT/srv/burrscope-dvc"
    say "  dvc remote modify --local shared keyfile $DIR/client_ed25519"
}

stop() {
    local found
    found=$(pid)
    if [[ -z $found ]]; then
        say "not running"
        return 0
    fi
    stop_process "$found"
    say "stopped (pid $found)"
}

status() {
    [[ -n $(pid) ]] && answers "$(port_of)" && echo "sshd: running on 127.0.0.1:$(port_of) (pid $(pid))" && return 0
    echo "sshd: stopped"
    return 3
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|status|stop DIR [PORT]" ;;
esac
