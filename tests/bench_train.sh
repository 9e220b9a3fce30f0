#!/bin/sh
# The training part of `make bench`: distill tokens per second with 1 and
# 2 ranks (one compute thread each, so 2 ranks use both cores), and the
# all-reduce's share of the step, on the tiny config and on a full-size
# student (donut-base config, random weights, pruned to half of its 12
# decoder sub-layers).  Each run first caches the teacher's logits and the
# page features (cache-logits, keep_features), so the steps measured are
# training only; the figures are medians over the steps after the first.
#
# usage: sh tests/bench_train.sh DOCMINT FULL_MODEL_DIR TINY_MODEL_DIR
# Environment: BENCH_TRAIN_STEPS_TINY (default 30), BENCH_TRAIN_STEPS_FULL
# (default 6).  JSON lines in build/bench-train.jsonl.  The first run takes
# about 4 more minutes on 2 cores (the full-size encoder in cache-logits);
# later runs reuse build/bench-train/*/ (logits, features, students).
set -eu
DOCMINT=$1
FULL=$2
TINY=$3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/bench-train
RESULTS=$ROOT/build/bench-train.jsonl
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_hwloc_base_binding_policy=none
mkdir -p "$OUT"
: >"$RESULTS"

# setup NAME MODEL DOCS PLAN: corpus, logits + features, pruned student
# (kept for the next run: the student is written last).
setup() {
    d=$OUT/$1
    if [ -f "$d/student/pruning.json" ]; then
        echo "bench_train: reusing $d"
        return 0
    fi
    rm -rf "$d"
    mkdir -p "$d"
    "$DOCMINT" synth "$d/corpus" --docs "$3" --seed 2 --quiet
    cat >"$d/cache.json" <<JOB
{"stage": "cache-logits", "model": "$2", "output": "$d/logits", "corpus": {"path": "$d/corpus/train_v1.0_withQT.json"},
 "top_k": 64, "temperatures": [2.0], "keep_features": true, "first_answer_only": true, "endpoint": "tcp://127.0.0.1:0"}
JOB
    echo "bench_train: $1: cache-logits over $3 documents"
    "$DOCMINT" run "$d/cache.json" --quiet
    echo "$4" >"$d/plan.json"
    "$DOCMINT" prune "$2" --plan "$d/plan.json" -o "$d/student" >/dev/null
}

# measure NAME RANKS STEPS BATCH
measure() {
    d=$OUT/$1
    rm -rf "$d/out-$2"
    cat >"$d/distill-$2.json" <<JOB
{"stage": "distill", "model": "$d/student", "output": "$d/out-$2", "corpus": {"path": "$d/corpus/train_v1.0_withQT.json"},
 "threads": 1, "quiet": true,
 "distill": {"logits": "$d/logits", "steps": $3, "batch_size": $4, "alpha": 1.0, "temperature": 2.0,
             "lr": 1e-4, "checkpoint_every": 0, "plot": false}}
JOB
    mpirun -n "$2" --oversubscribe "$DOCMINT" run "$d/distill-$2.json"
    /usr/bin/python3 - "$d/out-$2/train.jsonl" "$1" "$2" "$4" "$(cat "$d/student/pruning.json" | tr -d '\n ')" >>"$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
med = lambda k: statistics.median(r[k] for r in rows)
print(json.dumps({"model": sys.argv[2], "ranks": int(sys.argv[3]), "batch": int(sys.argv[4]),
                  "steps": len(rows), "tokens_per_s": med("tokens_per_s"), "step_s": med("step_s"),
                  "allreduce_s": med("allreduce_s"), "sync_wait_s": med("sync_wait_s"),
                  "allreduce_share": med("allreduce_s") / med("step_s")}))
PY
}

setup tiny "$TINY" 8 '{"keep": {"S1": false, "C1": false, "M1": false}}'
measure tiny 1 "${BENCH_TRAIN_STEPS_TINY:-30}" 8
measure tiny 2 "${BENCH_TRAIN_STEPS_TINY:-30}" 8
setup full "$FULL" 1 '{"keep": {"S1": false, "S3": false, "C1": false, "C3": false, "M1": false, "M3": false}}'
measure full 1 "${BENCH_TRAIN_STEPS_FULL:-6}" 2
measure full 2 "${BENCH_TRAIN_STEPS_FULL:-6}" 2

echo
echo "==== distill: training tokens per second (medians over the steps after the first) ===="
/usr/bin/python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("%-6s %5s %5s %10s %9s %12s %8s %11s %9s" % ("model", "ranks", "batch", "tokens/s", "step s",
      "allreduce s", "share", "sync wait s", "speedup"))
one = {r["model"]: r["tokens_per_s"] for r in rows if r["ranks"] == 1}
for r in rows:
    print("%-6s %5d %5d %10.1f %9.3f %12.5f %7.1f%% %11.4f %9.2f" % (r["model"], r["ranks"], r["batch"],
          r["tokens_per_s"], r["step_s"], r["allreduce_s"], 100 * r["allreduce_share"],
          r["sync_wait_s"], r["tokens_per_s"] / one[r["model"]]))
print("(1 compute thread per rank; share: the all-reduce's transfer time over the step; sync wait:")
print(" time waiting for the slowest rank before it; speedup: tokens/s over 1 rank's, ideal = ranks")
print(" while ranks <= free cores; load average now: %s)" % open("/proc/loadavg").read().split()[0])
print("(tokens: whole training sequences, prompt included.  JSON: %s)" % sys.argv[1])
PY
