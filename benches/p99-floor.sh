#!/bin/bash
# Where the p99 during upgrades comes from: wrk's p99 over a 3 s run with one event in its
# middle: none, 4 worker processes spawned beside the pool and stopped (the CPU of starting
# workers, no hand-over), or a real upgrade of the 4 workers. 7 rounds, alternated.
# Needs wrk, and a release build:
#   cargo build --release -p einhorn-master --bin einhorn-master
#   cargo build --release --example axum-hello
set -u
R="$(cd "$(dirname "$0")/.." && pwd)/target/release"
D=$(mktemp -d)
$R/einhorn-master -q -b 127.0.0.1:0 -n 4 -m manual -d $D/s --addr-file $D/a -- $R/examples/axum-hello >$D/log 2>&1 &
M=$!
for i in $(seq 100); do [ -s $D/a ] && break; sleep 0.1; done
sleep 2
ADDR=$(awk '{print $2}' $D/a)
p99() { wrk -t1 -c32 -d3s --latency http://$ADDR/ 2>/dev/null | awk '/ 99%/{print $2}'; }
event() {
  sleep 1.5
  case $1 in
    none) ;;
    spawn) for k in 1 2 3 4; do $R/examples/axum-hello --bind 127.0.0.1:0 >/dev/null 2>&1 & echo $! >> $D/pids; done
           sleep 0.3; kill -TERM $(cat $D/pids) 2>/dev/null; rm -f $D/pids ;;
    upgrade) $R/einhorn-master ctl -d $D/s upgrade >/dev/null 2>&1 ;;
  esac
}
for round in $(seq 7); do
  for e in none spawn upgrade; do
    event $e & E=$!
    v=$(p99); wait $E
    echo "$round $e $v"
  done
done
kill -INT $M; wait $M
rm -rf $D
