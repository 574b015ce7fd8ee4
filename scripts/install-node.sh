#!/usr/bin/env bash
# Makes sure Node.js and npm are on PATH, for the SDK compatibility test
# (tests/system/sdk.rs, issue 14), which installs the published Messenger SDK
# `messaging-api-messenger` from the npm registry and runs it against Baton.
#
# When `node` and `npm` are already there (Node.js 12 or later), it only
# prints their versions. Otherwise it installs the distribution's `nodejs`
# and `npm` packages with apt-get (as root, or through sudo). It fails, saying
# why, when it cannot: no apt-get, no root and no sudo, or a Node.js too old.
# .ci/run calls it before `cargo test --workspace`.
#
# To skip the SDK compatibility test knowingly instead (say, on a machine
# without network access), set BATON_SKIP_SDK_COMPAT=1: the test then says it
# was skipped.
set -euo pipefail

MIN_NODE_MAJOR=12

say() { echo "install-node: $*"; }
fail() {
    echo "install-node: $*" >&2
    echo "install-node: the SDK compatibility test (tests/system/sdk.rs) needs Node.js >= ${MIN_NODE_MAJOR} and npm;" \
        "install them, or set BATON_SKIP_SDK_COMPAT=1 to skip that test knowingly" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

node_major() {
    node -e 'process.stdout.write(String(process.versions.node.split(".")[0]))' 2>/dev/null || echo 0
}

if have node && have npm && [ "$(node_major)" -ge "$MIN_NODE_MAJOR" ]; then
    say "node $(node --version), npm $(npm --version): nothing to install"
    exit 0
fi

if have node; then
    say "found node $(node --version)$(have npm && echo ", npm $(npm --version)" || echo ", no npm")"
else
    say "node is not installed"
fi

have apt-get || fail "cannot install Node.js: apt-get is not available on this machine"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif have sudo && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    fail "cannot install Node.js with apt-get: not root, and sudo is unavailable or asks for a password"
fi

packages=()
have node || packages+=(nodejs)
have npm || packages+=(npm)
if have node && [ "$(node_major)" -lt "$MIN_NODE_MAJOR" ]; then
    packages+=(nodejs)
fi

say "installing ${packages[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
${SUDO[@]+"${SUDO[@]}"} apt-get update -q
${SUDO[@]+"${SUDO[@]}"} apt-get install -y -q --no-install-recommends "${packages[@]}"

have node || fail "apt-get installed ${packages[*]}, but node is still not on PATH"
have npm || fail "apt-get installed ${packages[*]}, but npm is still not on PATH"
major="$(node_major)"
[ "$major" -ge "$MIN_NODE_MAJOR" ] ||
    fail "the distribution's Node.js is $(node --version), older than ${MIN_NODE_MAJOR}"
say "node $(node --version), npm $(npm --version): ready"
