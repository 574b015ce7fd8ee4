#!/usr/bin/env bash
# The reliability suite, long form. CI runs the short form as part of
# `cargo test --workspace` (20 SIGKILLs of the server under webhook load,
# 20 of the event-log writer, one dispatcher abort). This script repeats them
# at length; it only needs cargo. Usage: tests/reliability.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-200}"

echo "== server killed with SIGKILL under webhook load, $cycles times"
BATON_RELIABILITY_CYCLES="$cycles" cargo test -p system-tests --test system reliability -- --nocapture

echo "== storage faults, Meta faults (5xx, 613, timeouts), backend down then back"
for round in $(seq 1 10); do
  cargo test -p system-tests --test system -- faults sends:: dispatch:: >/dev/null
  cargo test -p dispatch --test delivery >/dev/null
  echo "round $round ok"
done

echo "== event-log writer killed with SIGKILL (20 cycles per run), 10 runs"
for round in $(seq 1 10); do
  cargo test -p event-log --test crash >/dev/null
  echo "round $round ok"
done
echo "reliability suite: all passed"
