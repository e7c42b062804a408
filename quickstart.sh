#!/usr/bin/env bash
# Builds Postern (and its standard plugins) and runs it in the foreground on
# examples/quickstart.toml: SMTP on 127.0.0.1:2525, spool and Maildirs under ./var/.
# Stop with Ctrl-C (SIGTERM/SIGINT drain sessions and stop cleanly).
set -euo pipefail
cd "$(dirname "$0")"
plugins/build.sh >/dev/null
cargo build --release --locked -p postern
exec target/release/postern run --config examples/quickstart.toml
