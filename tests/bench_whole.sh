#!/bin/sh
# The whole-model part of `make bench`: training samples per second on the
# tiny config, the decoder alone (the encoder frozen: each page encoded
# once, its output kept) against the whole model ("train": "all": encoder
# forward with its tape and backward on every sample), 1 rank, 1 compute
# thread, no teacher (cross-entropy on the gold answers), batch 8.  Medians
# over the steps after the first.
#
# usage: sh tests/bench_whole.sh DOCMINT TINY_MODEL_DIR
# Environment: BENCH_WHOLE_STEPS (default 12).  JSON lines in
# build/bench-whole.jsonl.  About half a minute on 2 cores.
set -eu
DOCMINT=$1
TINY=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/bench-whole
RESULTS=$ROOT/build/bench-whole.jsonl
STEPS=${BENCH_WHOLE_STEPS:-12}
mkdir -p "$OUT"
: >"$RESULTS"
[ -f "$OUT/corpus/train_v1.0_withQT.json" ] || "$DOCMINT" synth "$OUT/corpus" --docs 8 --seed 2 --quiet

for what in decoder all; do
    rm -rf "$OUT/out-$what"
    cat >"$OUT/$what.json" <<JOB
{"stage": "distill", "model": "$TINY", "output": "$OUT/out-$what", "corpus": {"path": "$OUT/corpus/train_v1.0_withQT.json"},
 "threads": 1, "quiet": true,
 "distill": {"train": "$what", "steps": $STEPS, "batch_size": 8, "lr": 1e-4, "checkpoint_every": 0, "plot": false}}
JOB
    "$DOCMINT" run "$OUT/$what.json"
    /usr/bin/python3 - "$OUT/out-$what/train.jsonl" "$what" >>"$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
step = statistics.median(r["step_s"] for r in rows)
print(json.dumps({"train": sys.argv[2], "batch": 8, "steps": len(rows), "step_s": step,
                  "samples_per_s": 8 / step,
                  "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows)}))
PY
done
echo
echo "==== training the tiny config: decoder only vs whole model (1 rank, 1 thread, batch 8) ===="
/usr/bin/python3 - "$RESULTS" <<'PY'
import json, sys
rows = {r["train"]: r for r in (json.loads(l) for l in open(sys.argv[1]))}
for k in ("decoder", "all"):
    r = rows[k]
    print("train %-8s %8.2f samples/s  (%.3f s per step, %.0f tokens/s)" % (k, r["samples_per_s"],
          r["step_s"], r["tokens_per_s"]))
print("whole model / decoder only: %.2fx the time per sample" % (rows["decoder"]["samples_per_s"] /
      rows["all"]["samples_per_s"]))
print("(load average now: %s.  JSON: %s)" % (open("/proc/loadavg").read().split()[0], sys.argv[1]))
PY
