#!/usr/bin/env bash
# Builds Postern (and its standard plugins) and runs it in the foreground on
# examples/quickstart.toml: SMTP on 127.0.0.1:2525, spool and Maildirs under ./var/.
# Stop with Ctrl-C (SIGTERM/SIGINT drain sessions and stop cleanly).
#
# Run as root (the usual case), it creates the system account `postern` if
# missing (no shell, no home) and Postern serves as that account once its
# ports are bound: it never serves as root unless told to (`run_as_root`).
# Run as anyone else, Postern runs as you (the config's `user` is left out).
# `./quickstart.sh --account` only creates the account (the tests use it).
set -euo pipefail
cd "$(dirname "$0")"
account=postern
make_account() {
  if ! id "$account" >/dev/null 2>&1; then
    useradd --system --user-group --shell /usr/sbin/nologin --no-create-home \
      --home-dir /nonexistent --comment "Postern mail transfer agent" "$account"
    echo "quickstart: created the system account $account" >&2
  fi
}
if [ "${1:-}" = --account ]; then
  make_account
  exit 0
fi
plugins/build.sh >/dev/null
cargo build --release --locked -p postern
config=examples/quickstart.toml
if [ "$(id -u)" = 0 ]; then
  make_account
  # Postern gives var/spool and the plugin cache to the account itself, and
  # var/mail when it makes it; mailboxes left by a quickstart that ran as
  # root become the account's here.
  if [ -d var/mail ] && [ "$(stat -c %U var/mail)" != "$account" ]; then
    chown -R "$account:" var/mail
  fi
  # The demo password file: the account's group reads it, no one else
  # (Postern warns about a password file everyone can read).
  chgrp "$account" examples/quickstart.passwd
  chmod 640 examples/quickstart.passwd
  # The account works below this directory (its working directory) and
  # reads the plugin and the password file from here.
  for f in . target/wasm32-wasip2/plugin/postern_plugin_access.wasm examples/quickstart.passwd; do
    if ! runuser -u "$account" -- test -r "$f"; then
      echo "quickstart: the account $account cannot read $PWD/$f; make the checkout readable by others (chmod o+rX) or clone it elsewhere" >&2
      exit 1
    fi
  done
else
  if [ -O examples/quickstart.passwd ]; then chmod 600 examples/quickstart.passwd; fi
  mkdir -p var
  grep -v "^user = \"$account\"" examples/quickstart.toml >var/quickstart.toml
  config=var/quickstart.toml
fi
exec target/release/postern run --config "$config"
