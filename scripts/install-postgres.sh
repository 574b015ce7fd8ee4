#!/usr/bin/env bash
# Makes sure Debian's PostgreSQL server binaries are installed, for the
# tests that run the event log on PostgreSQL (crates/event-log/tests,
# docs/scale-out.md). The tests start throwaway servers themselves
# (`event_log::postgres::testing::TestServer`: initdb into a temporary
# directory, a free port, run as the `postgres` user when root); this script
# only installs the package, and the harness runs it when it finds no
# /usr/lib/postgresql/*/bin/initdb.
#
# Idempotent: when the binaries are there it only says which version.
# Otherwise it installs Debian's `postgresql` package with apt-get (as root,
# or through sudo), and fails, saying why, when it cannot. The package may
# create and start a default cluster on port 5432; the tests do not use it.
set -euo pipefail

say() { echo "install-postgres: $*"; }
fail() {
    echo "install-postgres: $*" >&2
    echo "install-postgres: the PostgreSQL tests need Debian's postgresql package" \
        "(initdb, pg_ctl, pg_isready and psql under /usr/lib/postgresql/<version>/bin)" >&2
    exit 1
}

found() {
    local initdb
    for initdb in /usr/lib/postgresql/*/bin/initdb; do
        [ -x "$initdb" ] && { echo "$initdb"; return 0; }
    done
    return 1
}

if initdb="$(found)"; then
    say "$("$initdb" --version 2>/dev/null || echo "$initdb"): nothing to install"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || fail "no apt-get on this machine"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    fail "not root and no sudo: cannot install packages"
fi

say "installing Debian's postgresql with apt-get"
export DEBIAN_FRONTEND=noninteractive
LOG=/tmp/baton-install-postgres.log
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends postgresql >"$LOG" 2>&1; then
    say "apt-get install failed; refreshing the package lists and trying again"
    "${SUDO[@]}" apt-get update >>"$LOG" 2>&1 || fail "apt-get update failed (see $LOG)"
    "${SUDO[@]}" apt-get install -y --no-install-recommends postgresql >>"$LOG" 2>&1 \
        || fail "apt-get install postgresql failed (see $LOG)"
fi
initdb="$(found)" || fail "postgresql installed, but there is no /usr/lib/postgresql/*/bin/initdb"
id postgres >/dev/null 2>&1 || fail "postgresql installed, but there is no postgres user to run the server as"
say "$("$initdb" --version 2>/dev/null || echo installed)"
