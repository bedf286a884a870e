# Sourced by the scripts that count bench-server under valgrind (callgrind-diff.sh,
# heap-per-conn.sh): where the release build is, a scratch directory removed on exit, and
# the function that starts the server under a valgrind tool.
R="$(cd "$(dirname "$0")/.." && pwd)/target/release/examples"
D=$(mktemp -d)
trap 'rm -rf $D' EXIT

# valgrind_server TOOL OUT MODE: bench-server --framework $FW --mode MODE under
# `valgrind --tool=TOOL`, its output file OUT and its stderr OUT.err. Returns once the server
# listens (its log line, at most 120 s), with PID and ADDR (host:port) set.
valgrind_server() {
  local tool=$1 out=$2 mode=$3
  valgrind --tool=$tool --$tool-out-file=$out $R/bench-server --framework $FW --mode $mode 2>$out.err &
  PID=$!
  for _ in $(seq 600); do grep -q "listening addr=" $out.err 2>/dev/null && break; sleep 0.2; done
  ADDR=$(grep -o "listening addr=[0-9.:]*" $out.err | head -1 | cut -d= -f2)
  [ -n "$ADDR" ] || { kill $PID; echo "bench-server did not start: $out.err" >&2; exit 1; }
}
