#!/bin/bash
# Where the p99 during upgrades comes from: wrk's p99 over a 3 s run with one event in its
# middle, alternated over ROUNDS rounds (default 7). EVENTS (default "none spawn upgrade")
# picks among:
#   none     nothing
#   spawn    4 worker processes spawned beside the pool and stopped (the CPU of starting
#            workers, no hand-over)
#   reload   the master reloads its own code alone (`ctl reload`)
#   inc      a fifth worker started (`ctl inc`; `ctl dec` after the run, outside it)
#   usr2one  one worker stopped with SIGUSR2 and replaced: a hand-over without the master
#   upgrade  a real upgrade of the 4 workers (the master reloads itself first)
# WORKERS (default 4) sets the pool's size. With DEAL=1 each line also shows how wrk's 32
# connections are spread over the worker processes in the middle of the run (`ss`), largest
# last.
# Needs wrk, and a release build:
#   cargo build --release -p einhorn-master --bin einhorn-master
#   cargo build --release --example axum-hello
# Example: EVENTS="none reload usr2one upgrade" ROUNDS=5 benches/p99-floor.sh
set -u
# Exported variables reach the workers: TOKIO_WORKER_THREADS=1 gives each a one-thread runtime.
R="$(cd "$(dirname "$0")/.." && pwd)/target/release"
D=$(mktemp -d)
$R/einhorn-master -q -b 127.0.0.1:0 -n ${WORKERS:-4} -m manual -d $D/s --addr-file $D/a -- $R/examples/axum-hello >$D/log 2>&1 &
M=$!
trap 'kill -INT $M 2>/dev/null; wait $M 2>/dev/null; rm -rf $D' EXIT
for i in $(seq 100); do [ -s $D/a ] && break; sleep 0.1; done
sleep 2
ADDR=$(awk '{print $2}' $D/a)
PORT=${ADDR##*:}
p99() { wrk -t1 -c32 -d3s --latency http://$ADDR/ 2>/dev/null | awk '/ 99%/{print $2}'; }
deal() {
  ss -tnpH state established "( sport = :$PORT )" | grep -o 'pid=[0-9]*' | sort | uniq -c |
    awk '{print $1}' | sort -n | paste -sd/
}
ctl() { $R/einhorn-master ctl -d $D/s "$@" >/dev/null 2>&1; }
event() {
  sleep 1.5
  [ "${DEAL:-0}" = 1 ] && deal > $D/deal
  case $1 in
    none) ;;
    spawn) for k in 1 2 3 4; do $R/examples/axum-hello --bind 127.0.0.1:0 >/dev/null 2>&1 & echo $! >> $D/pids; done
           sleep 0.3; kill -TERM $(cat $D/pids) 2>/dev/null; rm -f $D/pids ;;
    reload) ctl reload ;;
    inc) ctl inc ;;
    usr2one) kill -USR2 $(pgrep -P $M | head -1) ;;
    upgrade) ctl upgrade ;;
    *) echo "unknown event $1" >&2 ;;
  esac
}
for round in $(seq ${ROUNDS:-7}); do
  for e in ${EVENTS:-none spawn upgrade}; do
    event $e & E=$!
    v=$(p99); wait $E
    echo "$round $e $v ${DEAL:+$(cat $D/deal 2>/dev/null)}"
    if [ $e = inc ]; then ctl dec; sleep 1.5; fi
  done
done
