#!/bin/bash
# Where the engine's extra instructions per request go: bench-server (plain and ours) under
# valgrind's callgrind for a fixed number of keep-alive requests (8 connections), then each
# function's self cost, ours minus plain, per request. The totals line gives the per-request
# cost of each from the difference of two runs (FEW and MANY requests), as the bench's engine
# section counts it.
# Needs valgrind (callgrind_annotate) and python3, and a release build:
#   cargo build --release --example bench-server
# Usage: benches/callgrind-diff.sh [hyper|axum|warp|actix] [TOP]   (defaults: hyper 20)
set -eu
FW=${1:-hyper}
TOP=${2:-20}
FEW=2000
MANY=12000
. "$(dirname "$0")/valgrind-server.sh"
cat > $D/load.py <<'PY'
import socket, sys, threading
host, port, conns, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
done = []
def run():
    s = socket.create_connection((host, port)); buf = b""; n = 0
    while n < per:
        s.sendall(req)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                cl = 0
                for line in buf[:i].decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        cl = int(line.split(":")[1])
                if len(buf) >= i + 4 + cl:
                    buf = buf[i + 4 + cl:]; n += 1; break
            data = s.recv(65536)
            if not data:
                sys.exit("connection closed")
            buf += data
    s.close(); done.append(n)
ts = [threading.Thread(target=run) for _ in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
if sum(done) != conns * per:
    sys.exit(f"only {sum(done)} of {conns * per} responses")
PY
run() { # MODE REQUESTS
  valgrind_server callgrind $D/cg.$1.$2 $1
  python3 $D/load.py ${ADDR%:*} ${ADDR##*:} 8 $(($2 / 8)) || { kill $PID; exit 1; }
  kill -TERM $PID; wait $PID || true
}
for mode in plain ours; do for n in $FEW $MANY; do run $mode $n; done; done
for mode in plain ours; do
  callgrind_annotate --threshold=100 $D/cg.$mode.$MANY > $D/self.$mode 2>/dev/null
done
python3 - $D $FW $FEW $MANY $TOP <<'PY'
import re, sys
d, fw, few, many, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def total(mode, n):
    for line in open(f"{d}/cg.{mode}.{n}"):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
def costs(mode):
    out = {}
    for line in open(f"{d}/self.{mode}"):
        m = re.match(r"\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*)", line)
        if m and ":" in m.group(2):
            name = re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out
per = {m: (total(m, many) - total(m, few)) / (many - few) for m in ("plain", "ours")}
print(f"{fw}: plain {per['plain']:.0f} / ours {per['ours']:.0f} instructions per request "
      f"({per['ours'] / per['plain']:.3f})")
a, b = costs("plain"), costs("ours")
diff = sorted(((b.get(k, 0) - a.get(k, 0)) / many, k) for k in set(a) | set(b))
print(f"largest self-cost differences per request, ours minus plain ({many} requests):")
for v, k in [x for x in reversed(diff) if x[1] != "PROGRAM TOTALS"][:top]:
    print(f"{v:+8.1f}  {k[:120]}")
PY
