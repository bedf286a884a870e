#!/bin/bash
# Heap bytes per idle keep-alive connection, counted by valgrind's dhat rather than read off
# RSS (which moves by 1 to 2% between runs with the allocator's per-thread arenas): the
# bytes live at the heap's peak with FEW and with MANY idle connections (each served one
# request), plain and ours, and the difference per connection.
# Needs valgrind and python3, and a release build:
#   cargo build --release --example bench-server
# Usage: benches/heap-per-conn.sh [hyper|axum|warp|actix]   (default hyper)
set -eu
FW=${1:-hyper}
FEW=200
MANY=2000
. "$(dirname "$0")/valgrind-server.sh"
cat > $D/idle.py <<'PY'
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
    buf = b""
    while not buf.endswith(b"bench-server\n"):
        d = s.recv(4096)
        if not d:
            sys.exit("closed before the response")
        buf += d
    held.append(s)
time.sleep(2)
PY
peak() { # MODE CONNECTIONS -> bytes live at the heap's peak
  valgrind_server dhat $D/dhat.$1.$2 $1
  python3 $D/idle.py ${ADDR%:*} ${ADDR##*:} $2 || { kill $PID; exit 1; }
  kill -TERM $PID; wait $PID || true
  grep "At t-gmax:" $D/dhat.$1.$2.err | awk '{gsub(",", "", $4); print $4}'
}
for mode in plain ours; do
  few=$(peak $mode $FEW); many=$(peak $mode $MANY)
  echo "$mode $(( (many - few) / (MANY - FEW) ))"
done | awk -v fw=$FW '{b[$1]=$2} END {printf "%s: heap bytes per idle connection, plain %d / ours %d (%+d, %.3f)\n", fw, b["plain"], b["ours"], b["ours"]-b["plain"], b["ours"]/b["plain"]}'
