#!/bin/sh
# The demo, end to end on this machine with no download:
#   1. pages the model has never seen: `docmint synth` with its defaults and
#      a seed of its own; the test split (pages and answer values outside
#      the reader's training) is what is scored;
#   2. the model: the real Donut folder when models/donut-docvqa holds one,
#      else the reader shipped in models/reader (a small Donut that docmint
#      trained from random weights on synthetic pages: `make reader`; it is
#      no DocVQA model);
#   3. `mpirun -n 3 docmint run jobs/demo-infer.json`: rank 0 coordinates,
#      two workers answer every test question, answers land in an LMDB
#      store; an evaluation-server submission and its ANLS, then the same in
#      bfloat16 (jobs/demo-infer-bf16.json);
#   4. the model's logits cached on the train split (jobs/demo-cache.json);
#   5. the analyze stage on the val split (jobs/demo-analyze.json: skipping,
#      reprojection, heads, ablation; build/demo/analysis/report.md and its
#      figures);
#   6. a plan from that evidence (`docmint plan --budget 0.5`), the student
#      pruned by it, distilled from the cached logits (jobs/demo-distill.json)
#      and scored on the same test pages, next to the model.
# A rerun resumes: questions already in a store are not computed again,
# and distill continues from its newest checkpoint.
set -eu
DOCMINT=${1:-build/docmint}
OUT=build/demo
REAL=models/donut-docvqa
READER=models/reader
mkdir -p "$OUT"

# Root is allowed (fresh machines and containers run as root); loopback and
# shared memory only, since every rank is on this machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo

if [ ! -f "$OUT/corpus/test_v1.0_withQT.json" ]; then
    rm -rf "$OUT/corpus"
    "$DOCMINT" synth "$OUT/corpus" --docs 60 --seed 7 --questions-per-page 6
fi
TEST=$OUT/corpus/test_v1.0_withQT.json

if [ -f "$REAL/config.json" ]; then
    echo "demo: using the real checkpoint in $REAL"
    src=$REAL
elif [ -f "$READER/model.safetensors" ]; then
    echo "demo: using the reader in $READER (a small Donut trained by docmint on synthetic pages; see $READER/README.md)"
    src=$READER
else
    echo "demo: no model: $READER/model.safetensors is missing (make reader trains it again)" >&2
    exit 1
fi
rm -rf "$OUT/model"
ln -s "$(cd "$src" && pwd)" "$OUT/model"

score() { # name store: export a submission, print and keep its ANLS
    "$DOCMINT" export "$OUT/$2" --annotations "$TEST" -o "$OUT/$1-submission.json"
    "$DOCMINT" eval --predictions "$OUT/$1-submission.json" --annotations "$TEST" \
        --report "$OUT/$1-report.json" | tee "$OUT/$1-anls.txt"
}

mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-infer.json
"$DOCMINT" store stat "$OUT/answers"
score model answers
# every question with its document, page, answer and confidence, as CSV
"$DOCMINT" export "$OUT/answers" -o "$OUT/answers.csv"
echo "demo: answers in $OUT/answers (table: $OUT/answers.csv), report $OUT/model-report.json"

# The same questions with the weights in bfloat16 (job key "precision"):
# half the bytes per decoding step; the ANLS shows what it costs.
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-infer-bf16.json
score bf16 answers-bf16

# The model's logits on the train split, once, for distillation.
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-cache.json

# What each part of the decoder does, measured on the val split.
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-analyze.json
echo "demo: analysis in $OUT/analysis/report.md"

# A plan from that evidence at half the decoder layers' parameters, the
# student pruned by it and distilled from the cached logits.
if [ ! -f "$OUT/student/pruning.json" ]; then
    rm -rf "$OUT/plan" "$OUT/student"
    "$DOCMINT" plan "$OUT/analysis" --budget 0.5 -o "$OUT/plan"
    "$DOCMINT" prune "$OUT/model" --plan "$OUT/plan/plan.json" -o "$OUT/student"
fi
mpirun -n 2 --oversubscribe "$DOCMINT" run jobs/demo-distill.json
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-student.json
score student student-answers
"$DOCMINT" params "$OUT/student" | tail -4

echo "demo: on $(sed -n 's/.* over \([0-9]*\) questions.*/\1/p' "$OUT/model-anls.txt") test questions of pages never seen in training:"
printf '  %-28s %s\n' "model (float32)" "$(head -1 "$OUT/model-anls.txt")" \
    "model (bfloat16)" "$(head -1 "$OUT/bf16-anls.txt")" \
    "student (mint plan, 50%)" "$(head -1 "$OUT/student-anls.txt")"
echo "demo: the plan and its reasons in $OUT/plan/plan.md; the student in $OUT/distill/student (losses $OUT/distill/losses.png)"
