#!/usr/bin/env bash
# bench/run.sh [SESSIONS [MESSAGES [SIZE]]]   (defaults 20 2000 4096)
#
# Postern vs the Postfix baseline of ../shared/peers/postfix-baseline, same
# load, same run, same machine: smtp-source -> each MTA -> local Maildir.
# Prints accepted msg/s and delivered-to-Maildir msg/s for both and the
# ratios. Both MTAs make every message durable before 250. Postfix fsyncs
# each Maildir file before it counts as delivered; Postern's default
# (journal) keeps the message durable in its journal until one syncfs has
# made a whole segment's Maildir copies durable, so Postern also prints
# synced msg/s: until every copy is synced and the journal is empty
# (including the journal_seal_idle wait of 100 ms at the end of the run).
#
# Variants (BENCH_VARIANTS, space separated; default "core direct
# quickstart six six-warm"):
#   core        Postern with no plugins (journaled local delivery: the
#               message is durable in the journal before 250; Maildir
#               copies are synced in bulk before the journal lets go)
#   direct      no plugins, queue.journal = false: each Maildir copy is
#               fsynced before 250
#   syncfs      no plugins, queue.sync = "filesystem" (one syncfs per batch
#               instead of an fdatasync per file; same durability)
#   syncfs-spool  the same, spooling before 250 and delivering after it
#               (queue.direct_delivery = false), as Postfix does
#   quickstart  the quickstart's chain (access on RCPT)
#   quickstart-warm  the same with reuse_instances = true
#   six         six plugin entries on every stage (30 calls per message),
#               a fresh instance per transaction (the default)
#   six-warm    the same with reuse_instances = true (warm instances)
# Plugins must be built first (plugins/build.sh).
#
# BENCH_CLEAN=0 keeps every Postern run's files until the end instead of
# deleting the previous run's before each run (as the baseline's bench.sh
# empties its Maildir before each run).
# BENCH_SETTLE (default 1): the harness's deletions (the baseline's Maildir,
# Postern's previous run) happen first, then `sync` and drop_caches, then
# the run. This VM's ext4 has no journal: for 30-180 s after a deletion,
# every new inode in that block group is found only after skipping each
# recently freed one (recently_deleted(), one buffer-cache lookup each),
# unless its inode-table block has left the cache. Without settling, an
# MTA's figure depends on how many files the harness deleted just before
# its run (single runs varied by +-30%); with it both MTAs start clean,
# and pay only for the deletions they make themselves while they run.
# BENCH_DIR=/dev/shm BENCH_POSTFIX=0 puts Postern's spool and Maildirs on
# tmpfs, where fsync costs nothing: the CPU-bound view of plugin overhead,
# without the disk's noise (not a comparison with Postfix).
# BENCH_WASM='key = value' adds settings to the [wasm] table.
# BENCH_POSTFIX=0 skips the Postfix baseline (for profiling runs).
# BENCH_PERF=DIR records a perf profile (perf record -g) of the daemon
# while smtp-source runs, one file per run in DIR; BENCH_PERF_FREQ sets the
# sampling rate (default 4000 Hz: a 1 s run then has too few samples to
# compare two variants' profiles symbol by symbol).
#
# BENCH_REPEAT rounds (default 3) each run the baseline and every variant
# once, interleaved; the summary uses the medians, because a 2-core VM is
# noisy and its disk has slow and fast phases.
#
# BENCH_BEFORE=BIN adds, for every variant, a twin "before-VARIANT" run
# by an older binary in the same interleaved rounds (before/after figures
# that the VM's phases hit alike), and prints after-vs-before ratios; its
# plugins come from the checkout BENCH_BEFORE_ROOT (default: this one),
# built there with its own plugins/build.sh.
#
# BENCH_EDITS=0 skips the first figures: what the header work at the end
# of DATA costs for a message at max_message_size, in ms per edit path, each
# on its worst case (host/benches/header_edits.rs, run through cargo bench).
#
# Needs root, the peers kit installed, and target/release/postern built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
PEERS=$ROOT/../shared/peers
S=${1:-20} M=${2:-2000} L=${3:-4096}
BIN=${POSTERN_BIN:-$ROOT/target/release/postern}
VARIANTS=${BENCH_VARIANTS:-core direct quickstart six six-warm}
BEFORE=${BENCH_BEFORE:-}
BEFORE_ROOT=${BENCH_BEFORE_ROOT:-$ROOT}
if [ -n "$BEFORE" ]; then
  [ -x "$BEFORE" ] || { echo "bench: BENCH_BEFORE=$BEFORE is not an executable" >&2; exit 1; }
  twins=
  for v in $VARIANTS; do twins+="before-$v $v "; done
  VARIANTS=$twins
fi
REPEAT=${BENCH_REPEAT:-3}
[ "$REPEAT" -ge 1 ] || { echo "bench: BENCH_REPEAT must be at least 1" >&2; exit 1; }
PORT=${BENCH_PORT:-2625}
LIMIT=300

[ -x "$BIN" ] || { echo "bench: $BIN missing: cargo build --release -p postern" >&2; exit 1; }
command -v smtp-source >/dev/null || { echo "bench: smtp-source missing: $PEERS/install.sh" >&2; exit 1; }

# The baseline's Maildir is emptied here, before settle, rather than by
# its bench.sh right before its run. After settling, a few messages warm
# Postfix up again (its smtpd, cleanup and local processes, their
# executables and its config, back in the cache), as Postern's daemon
# reads its own while it starts, before its timed run; bench.sh then
# deletes only these few.
prepare_baseline() {
  [ "${BENCH_SETTLE:-1}" = 1 ] || return 0
  local md n=0
  md=$BASELINE_HOME/Maildir
  for sub in new cur tmp; do
    [ -d "$md/$sub" ] && find "$md/$sub" -mindepth 1 -maxdepth 1 -type f -delete
  done
  settle
  smtp-source -s 2 -m 10 -l "$L" -f sender@example.test -t testuser@testdomain.test \
    -M client.test 127.0.0.1:2525
  local end=$((SECONDS + 30))
  while [ "$n" -lt 10 ] && [ $SECONDS -lt $end ]; do
    sleep 0.05
    n=$(find "$md/new" -mindepth 1 -maxdepth 1 -type f 2>/dev/null | wc -l)
  done
}

# A binary from before a key existed (BENCH_BEFORE, or POSTERN_BIN at an older
# build, for a before/after run) refuses the key; its line is dropped, so
# the older binary runs with its own default for it.
older_binary_config() { # WORKDIR BIN
  local key
  for _ in 1 2 3 4 5 6 7 8; do
    key=$(cd "$1" && "$2" check --config postern.toml 2>&1 | sed -n 's/.*unknown field `\([a-z_]*\)`.*/\1/p' | head -n1)
    [ -n "$key" ] || return 0
    sed -i "/^$key = /d" "$1/postern.toml"
  done
}

# Runs one Postern variant; prints its result line.
run_postern() { # VARIANT
  local variant=$1 work pid t0 t1 t2 n rc=0 load
  local bin=$BIN plugins=$ROOT cache=$ROOT/target/bench-plugin-cache
  case $variant in
    before-*) bin=$BEFORE plugins=$BEFORE_ROOT cache=$ROOT/target/bench-plugin-cache-before ;;
  esac
  # Like the baseline's bench.sh, which empties its Maildir before each
  # run, the previous run's files go first (BENCH_CLEAN=0 keeps them until
  # the end). On ext4 without a journal, inodes freed in the last 60-120 s
  # are skipped, one by one, when new ones are allocated (recently_deleted),
  # which costs the MTA that creates files fastest the most.
  if [ "${BENCH_CLEAN:-1}" = 1 ] && [ -f "$WORKROOT/prev" ]; then
    rm -rf "$(cat "$WORKROOT/prev")"
  fi
  settle
  work=$(mktemp -d "$WORKROOT/run.XXXXXX")
  echo "$work" >"$WORKROOT/prev"
  postern_base_config "$work/postern.toml" "$PORT"
  case ${variant#before-} in
    direct) printf '[queue]\njournal = false\n' >>"$work/postern.toml" ;;
    syncfs) printf '[queue]\nsync = "filesystem"\n' >>"$work/postern.toml" ;;
    syncfs-spool) printf '[queue]\nsync = "filesystem"\ndirect_delivery = false\n' >>"$work/postern.toml" ;;
    quickstart | quickstart-warm)
      sed "s|@ROOT@|$plugins|g" "$ROOT/bench/quickstart-chain.toml" >>"$work/postern.toml"
      ;;
    six | six-warm)
      sed "s|@ROOT@|$plugins|g" "$ROOT/bench/six-per-stage-chain.toml" >>"$work/postern.toml"
      ;;
    core) ;;
    *)
      echo "bench: unknown variant $variant" >&2
      return 1
      ;;
  esac
  case $variant in
    *-warm) sed -i 's|^name = "access"$|name = "access"\nreuse_instances = true|' "$work/postern.toml" ;;
  esac
  printf '[wasm]\ncache_dir = "%s"\ncache_key = "%s.key"\n%s\n' "$cache" "$cache" "${BENCH_WASM:-}" >>"$work/postern.toml"
  older_binary_config "$work" "$bin"
  (cd "$work" && exec "$bin" run --config postern.toml >"$work/postern.log" 2>&1) &
  pid=$!
  echo "$pid" >"$WORKROOT/daemon.pid"
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
  done
  local new=$work/var/mail/testuser/Maildir/new
  sync
  sleep 1
  load=$(cut -d' ' -f1 /proc/loadavg)
  local perf=
  if [ -n "${BENCH_PERF:-}" ]; then
    mkdir -p "$BENCH_PERF"
    perf record -q -F "${BENCH_PERF_FREQ:-4000}" -g -p "$pid" -o "$BENCH_PERF/$variant.$(basename "$work").data" 2>/dev/null &
    perf=$!
  fi
  t0=$(now)
  timeout $LIMIT smtp-source -s "$S" -m "$M" -l "$L" -f sender@example.test \
    -t testuser@testdomain.test -M client.test "127.0.0.1:$PORT" || rc=$?
  t1=$(now)
  [ -z "$perf" ] || { kill -INT "$perf"; wait "$perf" || true; }
  n=0
  local end=$((SECONDS + LIMIT))
  while [ $SECONDS -lt $end ]; do
    n=$(find "$new" -mindepth 1 -maxdepth 1 -type f 2>/dev/null | wc -l)
    [ "$n" -ge "$M" ] && break
    sleep 0.05
  done
  t2=$(now)
  # Synced: every Maildir copy fsynced, the journal holds no record (a
  # journal segment is sealed after 50 ms without appends, then its
  # mailboxes are synced and it is removed).
  local journal=$work/var/spool/journal
  while [ $SECONDS -lt $end ] && [ -n "$(find "$journal" -type f -size +0 2>/dev/null | head -1)" ]; do
    sleep 0.01
  done
  t3=$(now)
  local rss cpu csw
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  # context switches of all the daemon's threads (wake-ups cost VM exits)
  csw=$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}')
  # user+system CPU seconds of the daemon (fields 14 and 15 of stat)
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$pid/stat" 2>/dev/null || echo 0)
  # minor page faults of the daemon (field 10 of stat)
  local flt
  flt=$(awk '{print $10}' "/proc/$pid/stat" 2>/dev/null || echo 0)
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  awk -v v="$variant" -v s="$S" -v m="$M" -v l="$L" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" \
    -v n="$n" -v rc="$rc" -v load="$load" -v rss="$rss" -v cpu="$cpu" -v csw="$csw" -v flt="$flt" 'BEGIN {
    acc = (rc == 0) ? m : 0
    printf "postern-%s s=%d m=%d size=%d accepted_msg_s=%.0f delivered_msg_s=%.0f synced_msg_s=%.0f accept_s=%.2f deliver_s=%.2f synced_s=%.2f delivered=%d/%d smtp_source_rc=%d peak_rss_kb=%d cpu_us_per_msg=%.0f ctxsw_per_msg=%.1f minflt_per_msg=%.1f load1_before=%s\n",
      v, s, m, l, acc / (t1 - t0), n / (t2 - t0), n / (t3 - t0), t1 - t0, t2 - t0, t3 - t0, n, m, rc, rss, cpu * 1e6 / m, csw / m, flt / m, load }'
  if [ "$n" -lt "$M" ]; then
    tail -n 20 "$work/postern.log" >&2
  fi
}

require_settle
echo "bench: $S sessions, $M messages of $L bytes; $(nproc) cpus; disk: $(disk_probe) single-thread fsync/s"
if [ "${BENCH_EDITS:-1}" = 1 ]; then
  (cargo bench --locked -p postern --bench header_edits 2>/dev/null || echo "bench: header_edits failed" >&2) |
    grep '^header-edits' || true
fi
WORKROOT=$(mktemp -d "${BENCH_DIR:-/tmp}/postern-bench.XXXXXX")
cleanup() {
  if [ -f "$WORKROOT/daemon.pid" ]; then
    kill -TERM "$(cat "$WORKROOT/daemon.pid")" 2>/dev/null || true
  fi
  "$PEERS/postfix-baseline/teardown.sh" >/dev/null 2>&1 || true
  rm -rf "$WORKROOT"
}
trap cleanup EXIT
"$PEERS/start.sh" dns >/dev/null
# The baseline's setup creates its local user testuser on a fresh machine:
# look the user up only after it ran.
BASELINE_HOME=
if [ "${BENCH_POSTFIX:-1}" = 1 ]; then
  "$PEERS/postfix-baseline/setup.sh" >/dev/null
  BASELINE_HOME=$(getent passwd testuser | cut -d: -f6) || true
  [ -n "$BASELINE_HOME" ] || { echo "bench: the baseline's setup did not create user testuser" >&2; exit 1; }
fi

declare -A acc del syn cpu va vd vs vc
pf_a=() pf_d=()
# Rounds interleave everything (postfix, core, six, ..., postfix, core,
# ...), so that the disk's slow and fast phases hit every MTA and variant
# alike; each summary is the median over the rounds.
for r in $(seq "$REPEAT"); do
  if [ "${BENCH_POSTFIX:-1}" = 1 ]; then
    prepare_baseline
    pf=$("$PEERS/postfix-baseline/bench.sh" "$S" "$M" "$L" | tail -n 1)
    echo "$pf"
    pf_a+=("$(field "$pf" accepted_msg_s)")
    pf_d+=("$(field "$pf" delivered_msg_s)")
  fi
  # The order rotates each round, so that no variant always runs right
  # after the same neighbour's clean-up.
  read -r -a order <<<"$VARIANTS"
  shift_by=$(((r - 1) % ${#order[@]}))
  order=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
  for v in "${order[@]}"; do
    line=$(run_postern "$v") || { echo "bench: variant $v failed" >&2; exit 1; }
    [ -n "$line" ] || { echo "bench: variant $v printed no result" >&2; exit 1; }
    echo "$line"
    va[$v]+="$(field "$line" accepted_msg_s) "
    vd[$v]+="$(field "$line" delivered_msg_s) "
    vs[$v]+="$(field "$line" synced_msg_s) "
    vc[$v]+="$(field "$line" cpu_us_per_msg) "
  done
done
if [ ${#pf_a[@]} -gt 0 ]; then
  pf_acc=$(printf '%s\n' "${pf_a[@]}" | median)
  pf_del=$(printf '%s\n' "${pf_d[@]}" | median)
fi
for v in $VARIANTS; do
  acc[$v]=$(printf '%s\n' ${va[$v]} | median)
  del[$v]=$(printf '%s\n' ${vd[$v]} | median)
  syn[$v]=$(printf '%s\n' ${vs[$v]} | median)
  cpu[$v]=$(printf '%s\n' ${vc[$v]} | median)
done

echo "== medians of $REPEAT runs"
[ -z "${pf_acc:-}" ] || echo "postfix-baseline accepted_msg_s=$pf_acc delivered_msg_s=$pf_del"
for v in $VARIANTS; do
  echo "postern-$v accepted_msg_s=${acc[$v]} delivered_msg_s=${del[$v]} synced_msg_s=${syn[$v]} cpu_us_per_msg=${cpu[$v]}"
done
for v in $VARIANTS; do
  [ -n "${pf_acc:-}" ] || break
  awk -v v="$v" -v a="${acc[$v]}" -v d="${del[$v]}" -v s="${syn[$v]}" -v pa="$pf_acc" -v pd="$pf_del" 'BEGIN {
    if (pa > 0 && pd > 0) printf "ratio postern-%s/postfix: accepted %.1fx delivered %.1fx synced %.1fx\n", v, a / pa, d / pd, s / pd }'
done
for v in $VARIANTS; do
  case $v in before-*) ;; *) continue ;; esac
  w=${v#before-}
  awk -v v="$w" -v a="${acc[$v]}" -v b="${acc[$w]}" -v c="${del[$v]}" -v d="${del[$w]}" \
    -v e="${syn[$v]}" -v f="${syn[$w]}" -v x="${cpu[$v]}" -v y="${cpu[$w]}" 'BEGIN {
    if (a > 0 && c > 0 && e > 0 && x > 0) printf "after vs before, %s: accepted %+.1f%% delivered %+.1f%% synced %+.1f%% cpu per message %+.1f%%\n",
      v, (b - a) / a * 100, (d - c) / c * 100, (f - e) / e * 100, (y - x) / x * 100 }'
done
for v in $VARIANTS; do
  case $v in core | direct | syncfs | syncfs-spool | before-*) continue ;; esac
  [ -n "${acc[core]:-}" ] || break
  awk -v v="$v" -v a="${acc[core]}" -v b="${acc[$v]}" -v c="${del[core]}" -v d="${del[$v]}" \
    -v x="${cpu[core]}" -v y="${cpu[$v]}" 'BEGIN {
    if (a > 0 && c > 0 && x > 0) printf "plugin overhead of %s vs core: accepted %.1f%% delivered %.1f%% cpu per message +%.0f%%\n",
      v, (a - b) / a * 100, (c - d) / c * 100, (y - x) / x * 100 }'
done
