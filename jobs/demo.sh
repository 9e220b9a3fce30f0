#!/bin/sh
# The demo, end to end on this machine with no download:
#   1. a synthetic DocVQA-style corpus (form pages rendered with libvips);
#   2. a model: the real Donut folder when models/donut-docvqa holds one,
#      else a tiny Donut (`docmint init`, random weights) taught the
#      corpus's gold answers by docmint's own distill stage with the
#      cross-entropy term alone (jobs/demo-teach*.json, 150 steps on 2
#      ranks): it answers the questions it was trained on, which makes the
#      rest of the demo show something, but it is no DocVQA model;
#   3. `mpirun -n 3 docmint run jobs/demo-infer.json`: rank 0 coordinates,
#      two workers answer every question, answers land in an LMDB store;
#   4. an evaluation-server submission and its ANLS, and the same with the
#      weights in bfloat16 (jobs/demo-infer-bf16.json);
#   5. distillation: the model's logits on the gold answers cached
#      (jobs/demo-cache.json), a student pruned from it (jobs/demo-plan.json:
#      S1 and M1 removed), 20 distill steps on 2 ranks
#      (jobs/demo-distill.json; loss curve build/demo/distill/losses.png),
#      and the student's answers evaluated like the model's.
# A rerun resumes: questions already in a store are not computed again,
# and distill continues from its newest checkpoint.
set -eu
DOCMINT=${1:-build/docmint}
OUT=build/demo
REAL=models/donut-docvqa
mkdir -p "$OUT"

if [ ! -f "$OUT/corpus/train_v1.0_withQT.json" ]; then
    "$DOCMINT" synth "$OUT/corpus" --docs 6 --seed 1 --kind form
fi

if [ -f "$REAL/config.json" ]; then
    echo "demo: using the real checkpoint in $REAL"
    rm -rf "$OUT/model"
    ln -s "$(cd "$REAL" && pwd)" "$OUT/model"
fi

# Root is allowed (fresh machines and containers run as root); loopback and
# shared memory only, since every rank is on this machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo

if [ ! -e "$OUT/model/config.json" ]; then
    echo "demo: no checkpoint in $REAL: teaching a tiny random-weight Donut the corpus's gold answers"
    [ -f "$OUT/random/config.json" ] ||
        "$DOCMINT" init "$OUT/random" --config jobs/configs/tiny.json --seed 7
    mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-teach-cache.json
    mpirun -n 2 --oversubscribe "$DOCMINT" run jobs/demo-teach.json
    rm -rf "$OUT/model"
    ln -s teach/student "$OUT/model"
fi
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-infer.json

"$DOCMINT" store stat "$OUT/answers"
"$DOCMINT" export "$OUT/answers" --annotations "$OUT/corpus/train_v1.0_withQT.json" \
    -o "$OUT/submission.json"
"$DOCMINT" eval --predictions "$OUT/submission.json" \
    --annotations "$OUT/corpus/train_v1.0_withQT.json" --report "$OUT/report.json"
# every question with its document, page, answer and confidence, as CSV
"$DOCMINT" export "$OUT/answers" -o "$OUT/answers.csv"
echo "demo: answers in $OUT/answers (table: $OUT/answers.csv), submission $OUT/submission.json, report $OUT/report.json"

# The same questions with the weights in bfloat16 (job key "precision"):
# half the bytes per decoding step; the ANLS shows what it costs.
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-infer-bf16.json
"$DOCMINT" export "$OUT/answers-bf16" --annotations "$OUT/corpus/train_v1.0_withQT.json" \
    -o "$OUT/submission-bf16.json"
"$DOCMINT" eval --predictions "$OUT/submission-bf16.json" \
    --annotations "$OUT/corpus/train_v1.0_withQT.json" --report "$OUT/report-bf16.json"
echo "demo: bf16 answers in $OUT/answers-bf16, report $OUT/report-bf16.json"

mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-cache.json
if [ ! -f "$OUT/student/pruning.json" ]; then
    rm -rf "$OUT/student"
    "$DOCMINT" prune "$OUT/model" --plan jobs/demo-plan.json -o "$OUT/student"
fi
mpirun -n 2 --oversubscribe "$DOCMINT" run jobs/demo-distill.json
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/demo-student.json
"$DOCMINT" export "$OUT/student-answers" --annotations "$OUT/corpus/train_v1.0_withQT.json" \
    -o "$OUT/student-submission.json"
"$DOCMINT" eval --predictions "$OUT/student-submission.json" \
    --annotations "$OUT/corpus/train_v1.0_withQT.json" --report "$OUT/student-report.json"
echo "demo: distilled student in $OUT/distill/student (log $OUT/distill/train.jsonl, plot $OUT/distill/losses.png), its report $OUT/student-report.json"
