#!/bin/sh
# The whole-model part of `make bench`: training samples per second on the
# tiny config, the decoder alone (the encoder frozen: each page encoded
# once, its output kept) against the whole model ("train": "all": encoder
# forward with its tape and backward on every sample), 1 rank, 1 compute
# thread, no teacher (cross-entropy on the gold answers), batch 8.  Then
# the reader's config (jobs/configs/reader.json, random weights) the same
# way, batch 24 on pages of 12 questions, the whole model with the items in
# any order and grouped by page ("order": "pages", the reader's recipe),
# and the time `make reader` took (models/reader/README.md).  Medians
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

[ -f "$OUT/corpus12/train_v1.0_withQT.json" ] ||
    "$DOCMINT" synth "$OUT/corpus12" --docs 20 --seed 2 --questions-per-page 12 --quiet
[ -f "$OUT/reader/config.json" ] ||
    "$DOCMINT" init "$OUT/reader" --config "$ROOT/jobs/configs/reader.json" --seed 1 >/dev/null

# run NAME MODEL CORPUS TRAIN ORDER BATCH STEPS
run() {
    rm -rf "$OUT/out-$1"
    cat >"$OUT/$1.json" <<JOB
{"stage": "distill", "model": "$2", "output": "$OUT/out-$1", "corpus": {"path": "$OUT/$3/train_v1.0_withQT.json"},
 "threads": 1, "quiet": true,
 "distill": {"train": "$4", "order": "$5", "steps": $7, "batch_size": $6, "lr": 1e-4, "checkpoint_every": 0, "plot": false}}
JOB
    "$DOCMINT" run "$OUT/$1.json"
    /usr/bin/python3 - "$OUT/out-$1/train.jsonl" "$1" "$6" >>"$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
step = statistics.median(r["step_s"] for r in rows)
b = int(sys.argv[3])
print(json.dumps({"run": sys.argv[2], "batch": b, "steps": len(rows), "step_s": step,
                  "samples_per_s": b / step,
                  "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows)}))
PY
}
run decoder "$TINY" corpus decoder items 8 "$STEPS"
run all "$TINY" corpus all items 8 "$STEPS"
RSTEPS=${BENCH_WHOLE_READER_STEPS:-3}
run reader-decoder "$OUT/reader" corpus12 decoder items 24 "$RSTEPS"
run reader-all-items "$OUT/reader" corpus12 all items 24 "$RSTEPS"
run reader-all-pages "$OUT/reader" corpus12 all pages 24 "$RSTEPS"
echo
echo "==== training the tiny config: decoder only vs whole model (1 rank, 1 thread, batch 8) ===="
/usr/bin/python3 - "$RESULTS" <<'PY'
import json, sys
rows = {r["run"]: r for r in (json.loads(l) for l in open(sys.argv[1]))}
def show(k, label):
    r = rows[k]
    print("%-34s %8.2f samples/s  (%.3f s per step, %.0f tokens/s)" % (label, r["samples_per_s"],
          r["step_s"], r["tokens_per_s"]))
show("decoder", "tiny, decoder only")
show("all", "tiny, whole model")
print("whole model / decoder only: %.2fx the time per sample" % (rows["decoder"]["samples_per_s"] /
      rows["all"]["samples_per_s"]))
print()
print("==== the reader's config (random weights), 1 rank, 1 thread, batch 24, 12 questions a page ====")
show("reader-decoder", "reader, decoder only")
show("reader-all-items", "reader, whole model, items any order")
show("reader-all-pages", "reader, whole model, grouped by page")
print("grouped by page / any order: %.2fx the samples per second" % (
      rows["reader-all-pages"]["samples_per_s"] / rows["reader-all-items"]["samples_per_s"]))
print("(load average now: %s.  JSON: %s)" % (open("/proc/loadavg").read().split()[0], sys.argv[1]))
PY
card=$ROOT/models/reader/README.md
if [ -f "$card" ]; then
    echo "make reader, as its card records it (models/reader/README.md, log in reader.log):"
    sed -n '/^Time on the 2-core machine/,/^$/p' "$card"
fi
