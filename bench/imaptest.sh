#!/bin/sh
# Build Dovecot's imaptest (release-2.3) outside the repo and run its scripted
# compliance suite against a throw-away gateway (temporary state dir, one user).
#
#   bench/imaptest.sh build  SRC BUILD   # SRC: a clone of dovecot/imaptest; BUILD: e.g. /work/imaptest-build
#   bench/imaptest.sh run    BUILD [TEST] # whole suite, or one test file/dir under BUILD/src/tests
#   bench/imaptest.sh dovecot BUILD [TEST] # the same against a private Dovecot (root; the peer)
#
# IMAPTEST_ARGS replaces test=TEST, e.g. stress mode with its state checks:
#   IMAPTEST_ARGS="mbox=BUILD/src-imaptest/src/tests/default.mbox clients=10 secs=20" \
#       bench/imaptest.sh run BUILD
# IMAPTEST_AUTH adds lines to the gateway's [auth] section, e.g. "cache_ttl = 0".
#
# Needs (Debian): dovecot-dev autoconf automake libtool pkg-config make gcc libssl-dev zlib1g-dev.
# See /work/shared/PEERS.md; Dovecot 2.3 passes the whole suite with 0 failures.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)

case "${1:-}" in
build)
    src=$2; build=$3
    mkdir -p "$build"
    rm -rf "$build/src-imaptest"
    git clone -q -b release-2.3 "$src" "$build/src-imaptest"
    cd "$build/src-imaptest"
    # Debian's dovecot-dev 2.3.19 gives imap_parser_create() a 4th parameter.
    sed -i 's/imap_parser_create(\([^;]*\), (size_t)-1);/imap_parser_create(\1, (size_t)-1, \&(const struct imap_parser_params){ .list_count_limit = 0 });/' \
        src/commands.c src/imap-client.c src/test-parser.c
    ./autogen.sh
    ./configure --with-dovecot=/usr/lib/dovecot
    make LDFLAGS='-Wl,-rpath,/usr/lib/dovecot'
    ;;
run)
    build=$2; tests=${3:-$build/src-imaptest/src/tests}
    work=$(mktemp -d)
    trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null; rm -rf "$work"' EXIT INT TERM
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    user=""; [ "$(id -u)" = 0 ] && user='user = "root"'
    cat > "$work/mailgateway.toml" <<TOML
[server]
hostname = "mx.example.test"
domains = ["example.test"]
state_dir = "$work/var"
$user

[listen]
smtp = ""
submission = ""
pop3 = ""
imap = "tcp:$port:interface=127.0.0.1"

[auth]
# imaptest logs in with LOGIN in plaintext over loopback.
plaintext_from_loopback = true
${IMAPTEST_AUTH:-}
TOML
    echo imaptest-password | "$here/.venv/bin/mailgateway" --config "$work/mailgateway.toml" \
        user add imaptest@example.test --password-stdin
    "$here/.venv/bin/twistd" -n --pidfile= --logfile="$work/twistd.log" mailgateway \
        --config "$work/mailgateway.toml" & echo $! > "$work/pid"
    i=0
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do
        i=$((i+1)); [ $i -gt 200 ] && { cat "$work/twistd.log"; exit 1; }; sleep 0.1
    done
    "$build/src-imaptest/src/imaptest" host=127.0.0.1 port=$port user=imaptest@example.test \
        pass=imaptest-password ${IMAPTEST_ARGS:-test="$tests"} || true
    # twistd rotates its log at 1 MB (a stress run writes several): read every piece.
    cat $(ls -r "$work"/twistd.log.* 2>/dev/null) "$work/twistd.log" > "$work/all.log"
    grep -n -A40 "Traceback\|Unhandled" "$work/all.log" | sed -n '1,200p' || true
    ;;
dovecot)
    # The peer (/work/shared/PEERS.md): dovecot-imapd, passwd-file, Maildir, loopback.
    build=$2; tests=${3:-$build/src-imaptest/src/tests}
    work=$(mktemp -d); chmod 755 "$work"
    trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null; rm -rf "$work"' EXIT INT TERM
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$work/mail"; chown nobody:nogroup "$work/mail"
    echo "imaptest:{PLAIN}imaptest-password:$(id -u nobody):$(id -g nobody)::$work/mail/imaptest::" \
        > "$work/passwd"
    cat > "$work/dovecot.conf" <<CONF
base_dir = $work/base
state_dir = $work/state
instance_name = imaptest-dovecot-$port
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
log_path = $work/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:$work/mail/%n/Maildir
first_valid_uid = 1
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n $work/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%n $work/passwd
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
}
CONF
    /usr/sbin/dovecot -F -c "$work/dovecot.conf" & echo $! > "$work/pid"
    i=0
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do
        i=$((i+1)); [ $i -gt 200 ] && { cat "$work/dovecot.log"; exit 1; }; sleep 0.1
    done
    "$build/src-imaptest/src/imaptest" host=127.0.0.1 port=$port user=imaptest \
        pass=imaptest-password ${IMAPTEST_ARGS:-test="$tests"} || true
    ;;
*)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
