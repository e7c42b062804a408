# shellcheck shell=bash
# Helpers shared by bench/run.sh (local delivery) and bench/relay.sh (relay
# and LMTP): sourced, never executed.

now() { date +%s.%N; }

# Single-thread fsync rate where Postern's files go (BENCH_DIR, else /tmp).
disk_probe() {
  PROBE_DIR=${BENCH_DIR:-/tmp} python3 - <<'EOF'
import os, tempfile, time
d = tempfile.mkdtemp(dir=os.environ["PROBE_DIR"])
t0 = time.time(); n = 200
for i in range(n):
    fd = os.open(f"{d}/{i}", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * 4096); os.fsync(fd); os.close(fd)
dt = time.time() - t0
for i in range(n): os.unlink(f"{d}/{i}")
os.rmdir(d)
print(f"{n / dt:.0f}")
EOF
}

# Before every run (baseline and Postern) the harness's own clean-up is
# flushed and the kernel's caches dropped (BENCH_SETTLE=0 skips this).
settle() {
  [ "${BENCH_SETTLE:-1}" = 1 ] || return 0
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# Settling writes to drop_caches, which needs root: say so before any run.
require_settle() {
  if [ "${BENCH_SETTLE:-1}" = 1 ] && ! [ -w /proc/sys/vm/drop_caches ]; then
    echo "bench: cannot write /proc/sys/vm/drop_caches (root needed; BENCH_SETTLE=0 skips settling)" >&2
    exit 1
  fi
}

# The value of KEY=... in a result line.
field() { # LINE KEY
  sed -n "s/.* $2=\([0-9.]*\).*/\1/p" <<<"$1"
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# Writes the part of postern.toml every bench run shares: one plain
# listener on 127.0.0.1:PORT, 127.0.0.1 trusted (it may relay), the peers'
# DNS, and the local domains and user of the baseline.
postern_base_config() { # FILE PORT
  cat >"$1" <<EOF
[server]
hostname = "mx.test"
spool_dir = "var/spool"
trusted_networks = ["127.0.0.1/32"]
run_as_root = true

[[listener]]
name = "bench"
address = "127.0.0.1:$2"

[dns]
nameservers = ["127.0.0.1:5353"]
timeout = "1s"

[smtp]
max_connections_per_ip = 100

[local]
domains = ["testdomain.test", "mx.test"]
users = ["testuser"]
maildir = "var/mail/{user}/Maildir"

[aliases]
postmaster = "testuser"
abuse = "testuser"
EOF
}
