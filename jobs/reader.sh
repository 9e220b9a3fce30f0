#!/bin/sh
# The reader: a small Donut trained from random weights by docmint itself,
# the whole model (encoder included), on synthetic pages (`make reader`;
# models/reader/README.md is its card).  Seeded and resumable: a rerun
# skips what is complete and training goes on from its newest checkpoint.
#   1. a corpus: `docmint synth` with its default pages (every kind, 960x1280),
#      8000 documents of one page, 12 questions each, split by document and
#      by value (train 6400, val 800, test 800 pages);
#   2. the model: jobs/configs/reader.json with random weights (seed 1);
#   3. training: jobs/reader-train.json, cross-entropy on the gold answers,
#      1200 steps of 24 questions (2 pages) on 2 ranks, the val split's first 240
#      questions answered every 250 steps (build/reader/train/val_anls.png);
#   4. the test split answered (jobs/reader-test.json) and scored by
#      question type (build/reader/test-report.json);
#   5. the weights, curves and scores copied to models/reader.
set -eu
DOCMINT=${1:-build/docmint}
OUT=build/reader
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
t0=$(date +%s)
log="$OUT/reader.log"
echo "reader: $(date -u +%Y-%m-%dT%H:%M:%SZ) $DOCMINT ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))" >>"$log"

if [ ! -f "$OUT/corpus/test_v1.0_withQT.json" ]; then
    rm -rf "$OUT/corpus"
    "$DOCMINT" synth "$OUT/corpus" --docs 8000 --seed 2026 --questions-per-page 12 2>&1 | tee -a "$log"
fi
[ -f "$OUT/init/config.json" ] ||
    "$DOCMINT" init "$OUT/init" --config jobs/configs/reader.json --seed 1 2>&1 | tee -a "$log"
mpirun -n 2 --oversubscribe "$DOCMINT" run jobs/reader-train.json 2>&1 | tee -a "$log"

# The test split: pages and values the reader never saw in training.
mpirun -n 3 --oversubscribe "$DOCMINT" run jobs/reader-test.json 2>&1 | tee -a "$log"
"$DOCMINT" export "$OUT/test-answers" --annotations "$OUT/corpus/test_v1.0_withQT.json" \
    -o "$OUT/test-submission.json"
"$DOCMINT" eval --predictions "$OUT/test-submission.json" \
    --annotations "$OUT/corpus/test_v1.0_withQT.json" --report "$OUT/test-report.json" | tee -a "$log"
python3 jobs/reader_scores.py "$OUT/test-report.json" "$OUT/corpus/test_v1.0_withQT.json" \
    "$OUT/corpus/synth_lines.jsonl" "$OUT/test-scores.json" | tee -a "$log"

# Ship: the student folder (weights, config, tokenizer, image processor),
# its curves and scores.
M=models/reader
mkdir -p "$M"
for f in "$OUT"/train/student/*; do
    case "${f##*/}" in optimizer.safetensors | state.json) ;; *) cp "$f" "$M/" ;; esac
done
cp "$OUT/train/val_anls.png" "$OUT/train/losses.png" "$OUT/train/val.jsonl" "$OUT/test-scores.json" "$M/"
echo "reader: $(($(date +%s) - t0)) s this run" | tee -a "$log"
cp "$log" "$M/reader.log"
echo "reader: $M ready"
