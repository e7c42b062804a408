#!/usr/bin/env bash
# The whole test suite, on a fresh machine of this kind (run as root):
#   1. installs what the tests need (the peers kit's Debian packages, the
#      wasm32-wasip2 target, pytest),
#   2. builds Postern once in release mode (the tests reuse that build),
#   3. runs the unit tests, starts the real peers (DNS, Dovecot, policyd-weight) and runs the
#      end-to-end tests against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=$ROOT/../shared/peers

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
"$PEERS/install.sh"
# saslauthd for the saslauthd backend test (not part of the peers kit).
if ! command -v saslauthd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends sasl2-bin >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -q --no-install-recommends sasl2-bin >/dev/null; }
fi
# redis-server for the kv capability's Redis backend (each test starts its own).
if ! command -v redis-server >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
fi
rustup target add wasm32-wasip2 >/dev/null
python3 -c 'import pytest' 2>/dev/null || python3 -m pip install --quiet pytest
command -v componentize-py >/dev/null || python3 -m pip install --quiet componentize-py==0.25.1

step "building postern (release) and the plugins (wasm32-wasip2)"
cargo build --release --locked -p postern
plugins/build.sh --tests
examples/plugins/python-subject-score/build.sh

step "unit tests"
cargo test --release --locked --workspace --lib

step "starting peers"
"$PEERS/start.sh" dns dovecot policyd-weight
trap '"$PEERS/stop.sh" dns dovecot policyd-weight >/dev/null 2>&1 || true' EXIT

step "end-to-end tests"
POSTERN_BIN=$ROOT/target/release/postern python3 -m pytest -q -p no:cacheprovider "$@" tests/
