#!/usr/bin/env bash
# Builds the standard plugins (and, with --tests, the test fixture plugins)
# as WebAssembly components into target/wasm32-wasip2/plugin/*.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
pkgs=(-p postern-plugin-access -p postern-plugin-helo -p postern-plugin-sender -p postern-plugin-recipient -p postern-plugin-client -p postern-plugin-dnsbl -p postern-plugin-greylist -p postern-plugin-spf -p postern-plugin-weight)
if [ "${1:-}" = --tests ]; then
  for d in tests/plugins/*/; do
    [ -f "$d/Cargo.toml" ] && pkgs+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$d/Cargo.toml" | head -n1)")
  done
fi
cargo build --locked --profile plugin --target wasm32-wasip2 "${pkgs[@]}"
ls -1 target/wasm32-wasip2/plugin/*.wasm
