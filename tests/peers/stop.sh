#!/usr/bin/env bash
# Stop the peers started by start.sh, by the PIDs in DIR/peers.pids.
#   stop.sh [DIR]     DIR defaults to ${TMPDIR:-/tmp}/test-peers
# A PID is only signalled if its command line still mentions DIR (guards against
# PID reuse). SIGTERM first; after 10 s SIGKILL to that PID's process group.
set -uo pipefail

DIR=${1:-${TMPDIR:-/tmp}/test-peers}
[ -d "$DIR" ] || { echo "peers: no such dir $DIR" >&2; exit 0; }
DIR=$(cd "$DIR" && pwd)
PIDS=$DIR/peers.pids
[ -s "$PIDS" ] || { echo "peers: nothing to stop ($PIDS empty or missing)"; exit 0; }

# alive = exists and not a zombie (orphans may wait a while for init to reap them)
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -qF -- "$DIR"; }

live=()
while read -r name pid; do
  [ -n "${pid:-}" ] || continue
  if alive "$pid" && ours "$pid"; then kill -TERM "$pid" 2>/dev/null && live+=("$name:$pid")
  else echo "peers: $name ($pid) not running"; fi
done < "$PIDS"

for entry in "${live[@]}"; do
  name=${entry%%:*} pid=${entry##*:}
  for _ in $(seq 200); do alive "$pid" || break; sleep 0.05; done
  if alive "$pid"; then
    echo "peers: $name ($pid) ignored SIGTERM, killing its process group" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  else
    echo "peers: stopped $name ($pid)"
  fi
done
rm -f "$PIDS"
