#!/bin/sh
# Threads on a busy node, part of `make bench` (tests/bench.sh runs it;
# `sh tests/bench_busy.sh [build/docmint]` runs it alone).
#
# `docmint run` (infer, one process, the tiny random model, a synthetic
# corpus) timed with the default threads (the CPUs this process may use)
# under three OpenMP waiting rules:
#   docmint    docmint's default: OMP_WAIT_POLICY=passive (docs/running.md)
#   spin       libgomp's own default, forced back: GOMP_SPINCOUNT=300000
#              (a waiting thread spins about a millisecond before it sleeps)
#   threads=1  one compute thread (nothing to wait for)
# each on the node as it is ("as found": the load average is printed, a
# shared machine is rarely quiet) and with one busy loop per CPU started
# here ("busy": other processes holding every core).  Every row of one
# invocation is measured in the same run, back to back, best of
# BENCH_BUSY_REPEAT (default 2; the spin rows once, they are slow).
# BENCH_BUSY_DOCS synthetic documents (default 20).  About 4 minutes on a
# loaded 2-core machine, most of it the spinning run among busy loops.
set -eu
DOCMINT=${1:-build/docmint}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REP=${BENCH_BUSY_REPEAT:-2}
DOCS=${BENCH_BUSY_DOCS:-20}
case "$DOCMINT" in /*) ;; *) DOCMINT="$PWD/$DOCMINT" ;; esac
[ -x "$DOCMINT" ] || { echo "bench_busy.sh: $DOCMINT: no such program (run make first)" >&2; exit 1; }
W=$(mktemp -d "${TMPDIR:-/tmp}/docmint-bench-busy.XXXXXX")
LOOPS=""
stop_loops() {
    for p in $LOOPS; do kill "$p" 2>/dev/null || true; done
    for p in $LOOPS; do wait "$p" 2>/dev/null || true; done
    LOOPS=""
}
trap 'stop_loops; rm -rf "$W"' EXIT
trap 'exit 143' INT TERM

"$DOCMINT" init "$W/model" --config "$ROOT/jobs/configs/tiny.json" --seed 1 >/dev/null
"$DOCMINT" synth "$W/c" --docs "$DOCS" --seed 5 --quiet
nq=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$W/c/train_v1.0_withQT.json")
ncpu=$(nproc)

# one REPEAT THREADS ENV...: best wall seconds of REPEAT runs into a fresh store
one() {
    rep=$1
    th=$2
    shift 2
    best=""
    i=0
    while [ $i -lt "$rep" ]; do
        rm -rf "$W/out"
        printf '{"model": "model", "output": "out", "corpus": {"path": "c/train_v1.0_withQT.json"}, "endpoint": "tcp://127.0.0.1:0", "threads": %s, "quiet": true}\n' "$th" >"$W/job.json"
        t0=$(date +%s.%N)
        env "$@" "$DOCMINT" run "$W/job.json" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
        t1=$(date +%s.%N)
        s=$(echo "$t1 - $t0" | bc)
        if [ -z "$best" ] || [ "$(echo "$s < $best" | bc)" -eq 1 ]; then best=$s; fi
        i=$((i + 1))
    done
    printf '%.2f' "$best"
}

rows() { # case
    d=$(one "$REP" 0 -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT)
    sp=$(one 1 0 -u OMP_WAIT_POLICY GOMP_SPINCOUNT=300000) # slow: once
    t1=$(one "$REP" 1 -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT)
    printf '%-30s %8s %8s %10s   load %s\n' "$1" "$d" "$sp" "$t1" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "$nq questions on $(python3 -c 'import json,sys; print(len({q["image"] for q in json.load(open(sys.argv[1]))["data"]}))' "$W/c/train_v1.0_withQT.json") pages, tiny model, $ncpu CPUs, wall seconds (best of $REP, spin once)"
printf '%-30s %8s %8s %10s\n' "node" "docmint" "spin" "threads=1"
rows "as found"
i=0
while [ $i -lt "$ncpu" ]; do
    sh -c 'while :; do :; done' &
    LOOPS="$LOOPS $!"
    i=$((i + 1))
done
rows "busy ($ncpu busy loops)"
stop_loops
echo "(docmint: its default, OMP_WAIT_POLICY=passive; spin: GOMP_SPINCOUNT=300000, libgomp's"
echo " default; threads=1: \"threads\": 1 with docmint's default.  A user's own OMP_WAIT_POLICY or"
echo " GOMP_SPINCOUNT is kept.)"
