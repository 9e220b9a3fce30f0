#!/bin/sh
# The batch system's part of `make bench` (tests/bench.sh runs it last;
# `sh tests/bench_batch.sh [build/docmint]` runs it alone):
#   (1) the coordinator's own overhead: `docmint bench-dispatch` - the real
#       coordinator with 2 no-op workers that answer every shard at once -
#       questions dispatched and stored per second (target >= 20,000/s) and
#       the store's write rate;
#   (2) infer throughput of `mpirun -n 2` (1 worker) and `mpirun -n 3`
#       (2 workers) `docmint run` on a synthetic corpus with the tiny random
#       model, a fresh output store each run, and the ratio of the two.
#
# q/s is the coordinator's own figure (its "done:" line: questions computed
# over the time it served them); "wall" is the whole mpirun, startup and
# model loading included.  Best of BENCH_INFER_REPEAT runs (default 2).
#
# Environment: BENCH_DISPATCH_ARGS extra `docmint bench-dispatch` flags;
# BENCH_INFER_DOCS synthetic documents (default 32); BENCH_INFER_REPEAT.
# JSON lines: build/bench-batch.jsonl.  About 30 s on 2 cores.
set -eu
DOCMINT=${1:-build/docmint}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build
DOCS=${BENCH_INFER_DOCS:-32}
REP=${BENCH_INFER_REPEAT:-2}
RESULTS=$OUT/bench-batch.jsonl
case "$DOCMINT" in /*) ;; *) DOCMINT="$PWD/$DOCMINT" ;; esac
if [ ! -x "$DOCMINT" ]; then
    echo "bench_batch.sh: $DOCMINT: no such program (run make first)" >&2
    exit 1
fi
command -v mpirun >/dev/null || { echo "bench_batch.sh: mpirun not found" >&2; exit 1; }
mkdir -p "$OUT"
W=$(mktemp -d "${TMPDIR:-/tmp}/docmint-bench-batch.XXXXXX")
trap 'rm -rf "$W"' EXIT INT TERM
: >"$RESULTS"

# Open MPI on one machine, as root too, over loopback and shared memory
# (as tests/mpi/lib.sh).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
MPIRUN="timeout -s KILL 300 mpirun --oversubscribe"

# The tiny random model (tests/bench.sh's, reused when complete).
MODEL=$OUT/bench-model-tiny
if [ ! -f "$MODEL/model.safetensors" ] || [ ! -f "$MODEL/tokenizer.json" ] ||
    [ ! -f "$MODEL/preprocessor_config.json" ]; then
    rm -rf "$MODEL"
    "$DOCMINT" init "$MODEL" --config "$ROOT/jobs/configs/tiny.json" --seed 1 >/dev/null
fi

echo
echo "==== coordinator overhead: docmint bench-dispatch (no-op workers) ===="
# shellcheck disable=SC2086
if ! "$DOCMINT" bench-dispatch --model "$MODEL" ${BENCH_DISPATCH_ARGS:-} >"$W/dispatch.txt"; then
    echo "bench_batch.sh: docmint bench-dispatch failed" >&2
    exit 1
fi
sed '$d' "$W/dispatch.txt"
tail -n 1 "$W/dispatch.txt" >>"$RESULTS"
qps=$(tail -n 1 "$W/dispatch.txt" | sed 's/.*"questions_per_s":\([0-9.]*\).*/\1/')
if awk -v q="$qps" 'BEGIN { exit !(q >= 20000) }'; then
    echo "  target >= 20000 questions/s: met ($qps)"
else
    echo "  target >= 20000 questions/s: NOT met ($qps)"
fi

echo
echo "==== infer throughput: synthetic corpus ($DOCS documents), tiny model ===="
"$DOCMINT" synth "$W/corpus" --docs "$DOCS" --seed 1 --quiet
C=$W/corpus/train_v1.0_withQT.json
total=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$C")

# infer RANKS: best q/s of REP runs, fresh store each; prints "QPS WALL".
infer() {
    best=0
    bwall=0
    i=0
    while [ "$i" -lt "$REP" ]; do
        i=$((i + 1))
        rm -rf "$W/out"
        cat >"$W/job.json" <<JOB
{"model": "$MODEL", "output": "$W/out", "corpus": {"path": "$C"}, "endpoint": "tcp://127.0.0.1:0"}
JOB
        t0=$(date +%s.%N)
        if ! $MPIRUN -n "$1" "$DOCMINT" run "$W/job.json" >"$W/run.log" 2>&1; then
            echo "bench_batch.sh: mpirun -n $1 docmint run failed: $(tail -n 3 "$W/run.log")" >&2
            return 1
        fi
        t1=$(date +%s.%N)
        n=$("$DOCMINT" store stat "$W/out" --json |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["records"] + d["errors"])')
        if [ "$n" != "$total" ]; then
            echo "bench_batch.sh: mpirun -n $1: the store holds $n of $total questions" >&2
            return 1
        fi
        q=$(sed -n 's/.*done: .* (\([0-9.]*\) q\/s).*/\1/p' "$W/run.log" | tail -n 1)
        [ -n "$q" ] || { echo "bench_batch.sh: no summary line in mpirun -n $1's output" >&2; return 1; }
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
        echo "  mpirun -n $1 run $i: $q q/s, wall $wall s" >&2
        if awk -v q="$q" -v b="$best" 'BEGIN { exit !(q > b) }'; then
            best=$q
            bwall=$wall
        fi
    done
    echo "$best $bwall"
}

r1=$(infer 2)
r2=$(infer 3)
q1=${r1% *}
w1=${r1#* }
q2=${r2% *}
w2=${r2#* }
ratio=$(awk -v a="$q1" -v b="$q2" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')
printf '  %-28s %8s %8s\n' "($total questions, best of $REP)" "q/s" "wall s"
printf '  %-28s %8s %8s\n' "1 worker  (mpirun -n 2)" "$q1" "$w1"
printf '  %-28s %8s %8s\n' "2 workers (mpirun -n 3)" "$q2" "$w2"
echo "  scaling 2 workers / 1 worker: ${ratio}x ($(nproc) cores; threads per worker: cores / workers)"
printf '{"bench":"infer","questions":%s,"docs":%s,"qps_1_worker":%s,"wall_1_worker":%s,"qps_2_workers":%s,"wall_2_workers":%s,"ratio":%s}\n' \
    "$total" "$DOCS" "$q1" "$w1" "$q2" "$w2" "$ratio" >>"$RESULTS"
echo "(JSON: $RESULTS)"
