#!/bin/sh
# fp32 against bf16 on a synthetic corpus: the infer stage twice over the
# same pages (job key "precision"), each submission's ANLS (`docmint eval`),
# and how many answers the two precisions give identically.
#
#   sh tests/precision.sh [DOCMINT] [MODEL_DIR] [DOCS | CORPUS_DIR]
# MODEL_DIR defaults to a random-weight tiny Donut written once into
# build/precision/model (its answers are meaningless, so its ANLS is near 0:
# the agreement is the figure that matters there); pass a real checkpoint
# folder to measure what bf16 costs in answer quality.  A corpus folder
# (one `docmint synth` wrote) instead of a document count is used as it is:
# with `make demo`'s taught model and corpus,
#   sh tests/precision.sh build/docmint build/demo/model build/demo/corpus
set -eu
DOCMINT=${1:-build/docmint}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/precision
MODEL=${2:-$OUT/model}
DOCS=${3:-8}
mkdir -p "$OUT"
CORPUS=$OUT/corpus
if [ -d "$DOCS" ]; then
    CORPUS=$(cd "$DOCS" && pwd)
elif [ ! -f "$CORPUS/train_v1.0_withQT.json" ]; then
    "$DOCMINT" synth "$CORPUS" --docs "$DOCS" --seed 3
fi
if [ ! -f "$MODEL/config.json" ]; then
    "$DOCMINT" init "$MODEL" --config "$ROOT/jobs/configs/tiny.json" --seed 7
fi
MODEL=$(cd "$MODEL" && pwd) # the job files below resolve paths from build/precision
ANN=$CORPUS/train_v1.0_withQT.json
for p in fp32 bf16; do
    rm -rf "$OUT/answers-$p"
    # Written by json.dump: any path, quotes and backslashes included.
    /usr/bin/python3 - "$MODEL" "$OUT/answers-$p" "$ANN" "$p" "$OUT/job-$p.json" <<'PY'
import json, sys
model, output, ann, precision, path = sys.argv[1:]
job = {"stage": "infer", "model": model, "output": output,
       "corpus": {"format": "docvqa", "path": ann}, "precision": precision, "quiet": True}
with open(path, "w") as f:
    json.dump(job, f)
PY
    "$DOCMINT" run "$OUT/job-$p.json" --quiet
    "$DOCMINT" export "$OUT/answers-$p" --annotations "$ANN" -o "$OUT/submission-$p.json"
    echo "== $p"
    "$DOCMINT" eval --predictions "$OUT/submission-$p.json" --annotations "$ANN" \
        --report "$OUT/report-$p.json" >"$OUT/eval-$p.txt"
    head -n 3 "$OUT/eval-$p.txt"
done
"$DOCMINT" store dump "$OUT/answers-fp32" >"$OUT/dump-fp32.jsonl"
"$DOCMINT" store dump "$OUT/answers-bf16" >"$OUT/dump-bf16.jsonl"
/usr/bin/python3 - "$OUT/dump-fp32.jsonl" "$OUT/dump-bf16.jsonl" <<'PY'
import json, sys
def load(p):
    return {r["questionId"]: r for r in map(json.loads, open(p)) if "token_ids" in r}
a, b = load(sys.argv[1]), load(sys.argv[2])
qs = sorted(set(a) & set(b))
same_ans = sum(a[q]["answer"] == b[q]["answer"] for q in qs)
same_ids = sum(a[q]["token_ids"] == b[q]["token_ids"] for q in qs)
pos = sum(len(a[q]["token_ids"]) for q in qs)
agree = 0
for q in qs:
    x, y = a[q]["token_ids"], b[q]["token_ids"]
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    agree += n
dlp = max((abs(a[q]["mean_logprob"] - b[q]["mean_logprob"]) for q in qs), default=0)
print(f"questions {len(qs)}: answers identical {same_ans}, generated ids identical {same_ids}")
print(f"generated tokens before the first difference: {agree} of {pos} (fp32)")
print(f"largest difference of a mean token log-probability: {dlp:.4g}")
PY
