#!/usr/bin/env bash
# bench/relay.sh [SESSIONS [MESSAGES [SIZE]]]   (defaults 20 2000 4096)
#
# Postern vs Postfix for mail that leaves the MTA again: same load, same
# run, same machine, printed as ratios. Variants (BENCH_VARIANTS, default
# "relay lmtp"):
#   relay  smtp-source -> MTA -> SMTP to Postfix's smtp-sink on
#          127.0.0.10:25 (BENCH_SINK): user@dest.test from a trusted
#          client; both MTAs send to the next hop [127.0.0.10]:25 (no MX
#          lookup, no TLS), at most 20 connections to it at once (Postern's
#          destination_concurrency, Postfix's
#          default_destination_concurrency_limit).
#   lmtp   smtp-source -> MTA -> LMTP into the dovecot peer at
#          127.0.0.1:24: bench@lmtp.test, which Dovecot stores in
#          $PEERS_RUN/dovecot/mail/lmtp.test/bench/Maildir.
# Both MTAs make the message durable in their queue before 250 (Postern
# spools every recipient that is not a local mailbox: direct delivery is
# for local mailboxes only) and deliver it after the 250. Each prints
# accepted msg/s (smtp-source's time) and relayed msg/s (relay: until the
# sink has counted every message) or delivered msg/s (lmtp: until
# Dovecot's Maildir holds every message), both timed from the start of
# smtp-source; busy_us_per_msg: the whole machine's CPU time (/proc/stat,
# both cores, smtp-source and the peers included) per message;
# msgs_per_conn (relay): messages per connection the sink saw; for Postern
# also its own CPU time and context switches per message.
#
# Postfix is a separate instance, postfix -c $PEERS_RUN/postfix-bench/etc,
# on 127.0.0.1:2535: the baseline's main.cf and master.cf
# (../shared/peers/postfix-baseline) with relayhost = [127.0.0.10]:25,
# default_transport = smtp, bench@lmtp.test for the baseline's LMTP
# transport, and its own listener instead of the baseline's three. This
# script starts it, smtp-sink and (if they are not running) the dns and
# dovecot peers, and stops what it started at the end, also on failure.
#
# BENCH_REPEAT rounds (default 3) each run Postfix and Postern on every
# variant once, interleaved; the summary uses the medians.
# BENCH_BEFORE=BIN adds an older Postern binary to every round ("before-"
# lines, run next to Postern, so that the VM's phases hit both alike) and
# prints after-vs-before ratios of the medians.
# BENCH_SETTLE, BENCH_PERF=DIR, BENCH_PERF_FREQ, BENCH_POSTFIX=0, BENCH_PORT
# (Postern's port, default 2625) and POSTERN_BIN are as in bench/run.sh.
#
# Needs root, the peers kit installed, and target/release/postern built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=$ROOT/../shared/peers
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"
# shellcheck source=../../shared/peers/lib.sh
. "$PEERS/lib.sh"
S=${1:-20} M=${2:-2000} L=${3:-4096}
BIN=${POSTERN_BIN:-$ROOT/target/release/postern}
VARIANTS=${BENCH_VARIANTS:-relay lmtp}
BEFORE=${BENCH_BEFORE:-}
[ -z "$BEFORE" ] || [ -x "$BEFORE" ] || { echo "bench: BENCH_BEFORE=$BEFORE is not an executable" >&2; exit 1; }
REPEAT=${BENCH_REPEAT:-3}
[ "$REPEAT" -ge 1 ] || { echo "bench: BENCH_REPEAT must be at least 1" >&2; exit 1; }
PORT=${BENCH_PORT:-2625}
PF_PORT=2535
SINK=${BENCH_SINK:-127.0.0.10:25}
SINK_HOST=${SINK%:*} SINK_PORT=${SINK##*:}
LMTP_RCPT=bench@lmtp.test
LMTP_MD=$PEERS_RUN/dovecot/mail/lmtp.test/bench/Maildir
PFB=$PEERS_RUN/postfix-bench
PF_CONF=$PFB/etc
LIMIT=300

[ -x "$BIN" ] || { echo "bench: $BIN missing: cargo build --release -p postern" >&2; exit 1; }
for c in smtp-source smtp-sink postfix postconf; do
  command -v $c >/dev/null || { echo "bench: $c missing: $PEERS/install.sh" >&2; exit 1; }
done
for v in $VARIANTS; do
  case $v in relay | lmtp) ;; *) echo "bench: unknown variant $v (relay, lmtp)" >&2; exit 1 ;; esac
done
require_settle

# The recipient each variant sends to.
rcpt_of() { # VARIANT
  case $1 in relay) echo user@dest.test ;; lmtp) echo "$LMTP_RCPT" ;; esac
}

# The key of the second figure.
out_key() { # VARIANT
  case $1 in relay) echo relayed ;; lmtp) echo delivered ;; esac
}

# Messages that reached the variant's next hop so far: the sink's counter
# (smtp-sink -c rewrites "sess=.. quit=.. mesg=N" after \r as it goes; a
# record read half-written only counts low, and the caller asks again),
# or the files in Dovecot's Maildir.
arrived() { # VARIANT
  case $1 in
    relay)
      tail -c 200 "$WORKROOT/sink.out" 2>/dev/null | tr '\r' '\n' |
        sed -n 's/.* mesg=\([0-9][0-9]*\)$/\1/p' | tail -n 1 | grep . || echo 0
      ;;
    lmtp) find "$LMTP_MD/new" "$LMTP_MD/cur" -mindepth 1 -maxdepth 1 -type f 2>/dev/null | wc -l ;;
  esac
}

# SMTP sessions the sink has seen so far (relay only): with MESSAGES, how
# many messages each connection carried.
sink_sessions() {
  tail -c 200 "$WORKROOT/sink.out" 2>/dev/null | tr '\r' '\n' |
    sed -n 's/^sess=\([0-9][0-9]*\) .* mesg=[0-9][0-9]*$/\1/p' | tail -n 1 | grep . || echo 0
}

# Waits (LIMIT s at most) until the next hop has COUNT messages; prints
# how many it has.
wait_arrived() { # VARIANT COUNT
  local n end=$((SECONDS + LIMIT))
  n=$(arrived "$1")
  while [ "$n" -lt "$2" ] && [ $SECONDS -lt $end ]; do
    sleep 0.05
    n=$(arrived "$1")
  done
  echo "$n"
}

# The LMTP mailbox is emptied before settling, as run.sh does with the
# baseline's Maildir; the sink keeps no files.
clear_next_hop() { # VARIANT
  [ "$1" = lmtp ] || return 0
  for sub in new cur tmp; do
    [ -d "$LMTP_MD/$sub" ] && find "$LMTP_MD/$sub" -mindepth 1 -maxdepth 1 -type f -delete
  done
  return 0
}

# Busy jiffies of the whole machine (every field of /proc/stat's cpu line
# but idle and iowait).
busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# One timed run against 127.0.0.1:PORT after a warm-up of 10 messages
# (after settling, each MTA's processes, executables and config come back
# into the cache, and the first connection to the next hop is made, before
# the clock starts). Prints the result line under NAME.
timed_run() { # NAME VARIANT PORT [PID]
  local name=$1 v=$2 port=$3 pid=${4:-} rcpt base n t0 t1 t2 b0 b1 rc=0 perf= cpu=0 rss=0 csw=0
  rcpt=$(rcpt_of "$v")
  base=$(arrived "$v")
  smtp-source -s 2 -m 10 -l "$L" -f sender@example.test -t "$rcpt" -M client.test "127.0.0.1:$port"
  n=$(wait_arrived "$v" $((base + 10)))
  [ "$n" -ge $((base + 10)) ] || echo "bench: $name: only $((n - base)) of 10 warm-up messages arrived" >&2
  base=$n
  sync
  sleep 1
  if [ -n "$pid" ] && [ -n "${BENCH_PERF:-}" ]; then
    mkdir -p "$BENCH_PERF"
    perf record -q -F "${BENCH_PERF_FREQ:-4000}" -g -p "$pid" -o "$BENCH_PERF/$name.$(date +%s).data" 2>/dev/null &
    perf=$!
  fi
  local sess0=0 sess1=0 load
  load=$(cut -d' ' -f1 /proc/loadavg)
  [ "$v" != relay ] || sess0=$(sink_sessions)
  b0=$(busy_jiffies)
  t0=$(now)
  timeout $LIMIT smtp-source -s "$S" -m "$M" -l "$L" -f sender@example.test -t "$rcpt" \
    -M client.test "127.0.0.1:$port" || rc=$?
  t1=$(now)
  n=$(wait_arrived "$v" $((base + M)))
  t2=$(now)
  b1=$(busy_jiffies)
  [ "$v" != relay ] || sess1=$(sink_sessions)
  [ -z "$perf" ] || { kill -INT "$perf"; wait "$perf" || true; }
  if [ -n "$pid" ]; then
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    # context switches of all the daemon's threads (wake-ups cost VM exits)
    csw=$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}')
  fi
  awk -v name="$name" -v key="$(out_key "$v")" -v s="$S" -v m="$M" -v l="$L" -v t0="$t0" -v t1="$t1" \
    -v t2="$t2" -v n=$((n - base)) -v rc="$rc" -v busy=$((b1 - b0)) -v hz="$(getconf CLK_TCK)" \
    -v cpu="$cpu" -v rss="$rss" -v csw="$csw" -v load="$load" -v pid="$pid" -v sess=$((sess1 - sess0)) 'BEGIN {
    acc = (rc == 0) ? m : 0
    printf "%s s=%d m=%d size=%d accepted_msg_s=%.0f %s_msg_s=%.0f accept_s=%.2f %s_s=%.2f %s=%d/%d smtp_source_rc=%d busy_us_per_msg=%.0f",
      name, s, m, l, acc / (t1 - t0), key, n / (t2 - t0), t1 - t0, key, t2 - t0, key, n, m, rc, busy / hz * 1e6 / m
    if (sess > 0) printf " msgs_per_conn=%.1f", n / sess
    if (pid != "") printf " cpu_us_per_msg=%.0f ctxsw_per_msg=%.1f peak_rss_kb=%d", cpu * 1e6 / m, csw / m, rss
    printf " load1_before=%s\n", load }'
  [ "$rc" -eq 0 ] && [ "$n" -ge $((base + M)) ]
}

# Starts the Postfix instance for these variants (see the top).
postfix_start() {
  local dir=$PEERS/postfix-baseline
  ! port_busy_tcp "$PF_PORT" || die "tcp port $PF_PORT is already in use"
  id postfix >/dev/null 2>&1 || die "postfix user missing: run $PEERS/install.sh"
  rm -rf "$PFB"
  mkdir -p "$PF_CONF" "$PFB/spool" "$PFB/data"
  chmod 755 "$PFB" "$PF_CONF" "$PFB/spool"
  chown postfix:postfix "$PFB/data"
  chmod 700 "$PFB/data"
  render "$dir/main.cf" "$PF_CONF/main.cf"
  # the baseline's services, without its three test listeners
  sed '/^# ---- test listeners/,$d' "$dir/master.cf" >"$PF_CONF/master.cf"
  echo "127.0.0.1:$PF_PORT inet n - n - 250 smtpd" >>"$PF_CONF/master.cf"
  echo "$LMTP_RCPT OK" >"$PF_CONF/vmailbox"
  touch "$PFB/postfix.log"
  postconf -c "$PF_CONF" -e \
    "queue_directory = $PFB/spool" \
    "data_directory = $PFB/data" \
    "syslog_name = postfix-bench" \
    "maillog_file = $PFB/postfix.log" \
    "maillog_file_prefixes = $PFB" \
    "default_transport = smtp" \
    "relay_transport = relay" \
    "relayhost = [$SINK_HOST]:$SINK_PORT" \
    "smtp_tls_security_level = none" \
    "smtpd_tls_security_level = none" \
    "virtual_mailbox_maps = texthash:$PF_CONF/vmailbox"
  postfix -c "$PF_CONF" start </dev/null >"$PFB/start.out" 2>&1 || {
    cat "$PFB/start.out" "$PFB/postfix.log" >&2
    die "the Postfix bench instance failed to start"
  }
  wait_tcp "$PF_PORT" 20 || { cat "$PFB/postfix.log" >&2; die "the Postfix bench instance does not listen on 127.0.0.1:$PF_PORT"; }
}

postfix_stop() {
  local p
  [ -f "$PF_CONF/main.cf" ] || return 0
  p=$(pid_from "$PFB/spool/pid/master.pid" 2>/dev/null) || p=
  postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
  for _ in $(seq 100); do
    [ -n "$p" ] && pid_alive "$p" || break
    sleep 0.1
  done
  if [ -n "$p" ] && pid_alive "$p" && pid_comm_ok "$p" master; then
    kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
  fi
  rm -rf "$PFB"
}

# Waits (30 s at most) until the instance's queue is empty, so that a run
# does not start with the previous one's leftovers.
postfix_idle() {
  local q end=$((SECONDS + 30))
  while :; do
    q=$(find "$PFB/spool/incoming" "$PFB/spool/active" "$PFB/spool/deferred" -type f 2>/dev/null | wc -l)
    [ "$q" -gt 0 ] && [ $SECONDS -lt $end ] || break
    sleep 0.2
  done
  [ "$q" -eq 0 ] || echo "bench: the Postfix bench queue still holds $q messages" >&2
}

run_postfix() { # VARIANT
  postfix_idle
  clear_next_hop "$1"
  settle
  timed_run "postfix-$1" "$1" "$PF_PORT" || {
    tail -n 20 "$PFB/postfix.log" >&2
    return 1
  }
}

run_postern() { # VARIANT [BIN NAME]
  local v=$1 bin=${2:-$BIN} name=${3:-postern} work pid rc=0
  # The previous run's spool goes first, then settling (see run.sh).
  if [ -f "$WORKROOT/prev" ]; then rm -rf "$(cat "$WORKROOT/prev")"; fi
  clear_next_hop "$v"
  settle
  work=$(mktemp -d "$WORKROOT/run.XXXXXX")
  echo "$work" >"$WORKROOT/prev"
  postern_base_config "$work/postern.toml" "$PORT"
  # BENCH_QUEUE='sync = "filesystem"' adds settings to Postern's [queue].
  [ -z "${BENCH_QUEUE:-}" ] || printf '\n[queue]\n%s\n' "$BENCH_QUEUE" >>"$work/postern.toml"
  case $v in
    relay) printf '\n[smtp_client]\nrelayhost = "[%s]:%s"\ntls = "none"\n' "$SINK_HOST" "$SINK_PORT" >>"$work/postern.toml" ;;
    lmtp) printf '\n[transport]\n"lmtp.test" = "lmtp:127.0.0.1:24"\n' >>"$work/postern.toml" ;;
  esac
  (cd "$work" && exec "$bin" run --config postern.toml >"$work/postern.log" 2>&1) &
  pid=$!
  echo "$pid" >"$WORKROOT/daemon.pid"
  wait_tcp "$PORT" 10 || { tail -n 20 "$work/postern.log" >&2; return 1; }
  timed_run "$name-$v" "$v" "$PORT" "$pid" || rc=$?
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$WORKROOT/daemon.pid"
  [ "$rc" -eq 0 ] || { tail -n 20 "$work/postern.log" >&2; return 1; }
}

WORKROOT=$(mktemp -d "${BENCH_DIR:-/tmp}/postern-bench.XXXXXX")
STARTED_DOVECOT=
SINK_PID=
cleanup() {
  if [ -f "$WORKROOT/daemon.pid" ]; then
    kill -TERM "$(cat "$WORKROOT/daemon.pid")" 2>/dev/null || true
  fi
  [ -z "$SINK_PID" ] || kill -TERM "$SINK_PID" 2>/dev/null || true
  postfix_stop
  clear_next_hop lmtp
  [ -z "$STARTED_DOVECOT" ] || "$PEERS/stop.sh" dovecot >/dev/null 2>&1 || true
  rm -rf "$WORKROOT"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

echo "bench: $S sessions, $M messages of $L bytes; $(nproc) cpus; disk: $(disk_probe) single-thread fsync/s; variants: $VARIANTS"
"$PEERS/start.sh" dns >/dev/null
case " $VARIANTS " in
  *" lmtp "*)
    peer_running dovecot || STARTED_DOVECOT=1
    "$PEERS/start.sh" dovecot >/dev/null
    ;;
esac
case " $VARIANTS " in
  *" relay "*)
    if ss -Hltn "src $SINK_HOST and sport = :$SINK_PORT" | grep -q .; then
      die "$SINK is already in use (a test's SMTP server?)"
    fi
    smtp-sink -c -u postfix "$SINK" 1024 >"$WORKROOT/sink.out" 2>&1 &
    SINK_PID=$!
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/$SINK_HOST/$SINK_PORT") 2>/dev/null && break
      sleep 0.1
    done
    ;;
esac
[ "${BENCH_POSTFIX:-1}" != 1 ] || postfix_start

run_before() { # VARIANT
  run_postern "$1" "$BEFORE" before
}

declare -A pa pd va vd ba bd
for r in $(seq "$REPEAT"); do
  for v in $VARIANTS; do
    # Postfix first in odd rounds, Postern first in even ones, so that
    # neither always follows the other's clean-up.
    if [ $((r % 2)) = 1 ]; then order="postfix before postern"; else order="postern before postfix"; fi
    for mta in $order; do
      [ "$mta" != postfix ] || [ "${BENCH_POSTFIX:-1}" = 1 ] || continue
      [ "$mta" != before ] || [ -n "$BEFORE" ] || continue
      line=$("run_$mta" "$v") || { echo "$line"; echo "bench: $mta $v failed" >&2; exit 1; }
      echo "$line"
      k=$(out_key "$v")
      case $mta in
        postfix)
          pa[$v]+="$(field "$line" accepted_msg_s) "
          pd[$v]+="$(field "$line" "${k}_msg_s") "
          ;;
        before)
          ba[$v]+="$(field "$line" accepted_msg_s) "
          bd[$v]+="$(field "$line" "${k}_msg_s") "
          ;;
        *)
          va[$v]+="$(field "$line" accepted_msg_s) "
          vd[$v]+="$(field "$line" "${k}_msg_s") "
          ;;
      esac
    done
  done
done

echo "== medians of $REPEAT runs"
for v in $VARIANTS; do
  k=$(out_key "$v")
  a=$(printf '%s\n' ${va[$v]} | median) d=$(printf '%s\n' ${vd[$v]} | median)
  echo "postern-$v accepted_msg_s=$a ${k}_msg_s=$d"
  if [ -n "$BEFORE" ]; then
    ea=$(printf '%s\n' ${ba[$v]} | median) ed=$(printf '%s\n' ${bd[$v]} | median)
    echo "before-$v accepted_msg_s=$ea ${k}_msg_s=$ed"
    awk -v v="$v" -v k="$k" -v a="$a" -v d="$d" -v ea="$ea" -v ed="$ed" 'BEGIN {
      if (ea > 0 && ed > 0) printf "after vs before, %s: accepted %+.1f%% %s %+.1f%%\n", v, (a / ea - 1) * 100, k, (d / ed - 1) * 100 }'
  fi
  [ "${BENCH_POSTFIX:-1}" = 1 ] || continue
  fa=$(printf '%s\n' ${pa[$v]} | median) fd=$(printf '%s\n' ${pd[$v]} | median)
  echo "postfix-$v accepted_msg_s=$fa ${k}_msg_s=$fd"
  awk -v v="$v" -v k="$k" -v a="$a" -v d="$d" -v fa="$fa" -v fd="$fd" 'BEGIN {
    if (fa > 0 && fd > 0) printf "ratio postern-%s/postfix: accepted %.1fx %s %.1fx\n", v, a / fa, k, d / fd }'
  [ -n "$BEFORE" ] || continue
  awk -v v="$v" -v k="$k" -v a="$ea" -v d="$ed" -v fa="$fa" -v fd="$fd" 'BEGIN {
    if (fa > 0 && fd > 0) printf "ratio before-%s/postfix: accepted %.1fx %s %.1fx\n", v, a / fa, k, d / fd }'
done
