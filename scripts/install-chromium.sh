#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed, for the console's browser test
# (tests/system/console.rs, issue 16), which drives it headless with
# playwright-core (scripts/console-test, installed by exact version from the
# npm registry).
#
# When /usr/bin/chromium (or BATON_CHROMIUM) is there, it only prints its
# version. Otherwise it installs Debian's `chromium` package with apt-get (as
# root, or through sudo), and fails, saying why, when it cannot.
# .ci/run calls it before `cargo test --workspace`.
#
# To skip the browser test knowingly instead, set BATON_SKIP_CONSOLE_BROWSER=1:
# the test then says it was skipped.
set -euo pipefail

say() { echo "install-chromium: $*"; }
fail() {
    echo "install-chromium: $*" >&2
    echo "install-chromium: the console's browser test (tests/system/console.rs) needs Chromium;" \
        "install Debian's chromium package, or set BATON_SKIP_CONSOLE_BROWSER=1 to skip that test knowingly" >&2
    exit 1
}

CHROMIUM="${BATON_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    say "$("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"): nothing to install"
    exit 0
fi
if [ "${BATON_SKIP_CONSOLE_BROWSER:-}" = "1" ]; then
    say "BATON_SKIP_CONSOLE_BROWSER=1: not installing Chromium"
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

say "installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/tmp/baton-install-chromium.log 2>&1; then
    say "apt-get install failed; refreshing the package lists and trying again"
    "${SUDO[@]}" apt-get update >>/tmp/baton-install-chromium.log 2>&1 || fail "apt-get update failed (see /tmp/baton-install-chromium.log)"
    "${SUDO[@]}" apt-get install -y --no-install-recommends chromium fonts-dejavu-core >>/tmp/baton-install-chromium.log 2>&1 \
        || fail "apt-get install chromium failed (see /tmp/baton-install-chromium.log)"
fi
[ -x "$CHROMIUM" ] || fail "chromium installed, but $CHROMIUM is not there"
say "$("$CHROMIUM" --version 2>/dev/null || echo installed)"
