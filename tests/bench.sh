#!/bin/sh
# The benchmark (`make bench`; sh tests/bench.sh DOCMINT [GEMM_BENCH ENC_BENCH
# DEC_BENCH]):
# encoder seconds per page and decoder
# milliseconds per token of a full-size random-weight Donut (donut-base
# config) and of the tiny config, next to the sgemm rate, memory bandwidth
# and FMA peak of this machine measured in the same runs; the decoder in fp32
# and in bf16 (the same weights converted) with the step's memory bound; a
# page end to end through `docmint ask` in both precisions with the peak RSS
# (/usr/bin/time -v); fp32 against bf16 answers on a synthetic corpus; a
# batch run with OpenMP spinning and passive, on the node as found and with a
# busy loop on every CPU (tests/bench_busy.sh); synthetic pages per second
# (tests/bench_synth.sh).
#
# The checkpoints are written once (build/bench-model-full, ~800 MB, and
# build/bench-model-tiny) and reused.  When OPENBLAS_CORETYPE is set in the
# environment every model is also measured with it unset (OpenBLAS then picks
# its kernels from the CPU), and both are reported.  Every run's JSON line is
# kept in build/bench-results.jsonl.
#
# Environment: BENCH_REPEAT_FULL (default 2) and BENCH_REPEAT_TINY (default 3)
# timed runs per measurement; BENCH_ARGS extra `docmint bench` flags (e.g.
# "--threads 1").  About 8 minutes on 2 cores (with the training part).
set -eu
DOCMINT=${1:-build/docmint}
GEMM_BENCH=${2:-}
ENC_BENCH=${3:-}
DEC_BENCH=${4:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build
FULL=$OUT/bench-model-full
TINY=$OUT/bench-model-tiny
RESULTS=$OUT/bench-results.jsonl
REP_FULL=${BENCH_REPEAT_FULL:-2}
REP_TINY=${BENCH_REPEAT_TINY:-3}
ARGS=${BENCH_ARGS:-}
mkdir -p "$OUT"

if [ ! -x "$DOCMINT" ]; then
    echo "bench.sh: $DOCMINT: no such program (run make first)" >&2
    exit 1
fi
# Run a private copy, so a rebuild during the minutes of the benchmark
# neither breaks nor changes the program measured.
BIN=$(mktemp "${TMPDIR:-/tmp}/docmint-bench.XXXXXX")
trap 'rm -f "$BIN"' EXIT INT TERM
cp "$DOCMINT" "$BIN"
chmod 755 "$BIN"
DOCMINT=$BIN

# A checkpoint is complete when init finished: it writes the weights, then
# the tokenizer, then preprocessor_config.json.
make_model() { # dir config
    if [ -f "$1/model.safetensors" ] && [ -f "$1/tokenizer.json" ] &&
        [ -f "$1/preprocessor_config.json" ]; then
        echo "bench.sh: reusing $1"
        return 0
    fi
    echo "bench.sh: writing $1 from $2"
    rm -rf "$1"
    "$DOCMINT" init "$1" --config "$ROOT/$2" --seed 1
}

make_model "$FULL" jobs/configs/donut-base.json
make_model "$TINY" jobs/configs/tiny.json

: >"$RESULTS"
LOG=$OUT/bench-run.txt

run() { # label repeat dir [env -u VAR]
    label=$1
    rep=$2
    dir=$3
    shift 3
    echo
    echo "==== $label ===="
    # shellcheck disable=SC2086
    if ! "$@" "$DOCMINT" bench "$dir" --repeat "$rep" $ARGS >"$LOG"; then
        echo "bench.sh: docmint bench $dir failed ($label)" >&2
        exit 1
    fi
    sed '$d' "$LOG"
    tail -n 1 "$LOG" | sed "s/^{/{\"label\":\"$label\",/" >>"$RESULTS"
}

if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
    CT=$OPENBLAS_CORETYPE
    run "tiny, OPENBLAS_CORETYPE unset" "$REP_TINY" "$TINY" env -u OPENBLAS_CORETYPE
    run "tiny, OPENBLAS_CORETYPE=$CT" "$REP_TINY" "$TINY" env
    run "full, OPENBLAS_CORETYPE unset" "$REP_FULL" "$FULL" env -u OPENBLAS_CORETYPE
    run "full, OPENBLAS_CORETYPE=$CT" "$REP_FULL" "$FULL" env
else
    run "tiny" "$REP_TINY" "$TINY" env
    run "full" "$REP_FULL" "$FULL" env
fi

# Summary: one row per run, from the JSON lines.
echo
echo "==== summary (best-of timings; bounds measured in the same run) ===="
awk '
function num(sec, k,   s, t) {
    t = sec == "" ? $0 : substr($0, index($0, "\"" sec "\":"))
    if (match(t, "\"" k "\":-?[0-9.eE+-]+")) { s = substr(t, RSTART, RLENGTH); sub(/^[^:]*:/, "", s); return s + 0 }
    return -1
}
function str(k,   s) {
    if (match($0, "\"" k "\":\"[^\"]*\"")) { s = substr($0, RSTART, RLENGTH); sub(/^[^:]*:"/, "", s); sub(/"$/, "", s); return s }
    return "-"
}
BEGIN {
    printf "%-32s %-10s %6s %5s %6s %7s %6s %6s %6s %7s %7s %6s %7s %7s %5s\n", "run", "BLAS core",
        "sgemm", "GB/s", "FMA512", "enc s", "GF/s", "/sgemm", "/FMA", "ms/tok1", "ms/tokN", "N",
        "bf16/1", "bf16/N", "RSS"
}
{
    printf "%-32s %-10s %6.1f %5.1f %6.1f %7.3f %6.1f %6.2f %6.2f %7.3f %7.3f %6d %7.3f %7.3f %5.0f\n",
        str("label"), str("corename"), num("bounds", "sgemm_gflops"), num("bounds", "read_gbps"),
        num("bounds", "fma_avx512_gflops"), num("encoder", "seconds"), num("encoder", "gflops"),
        num("encoder", "frac_sgemm"), num("encoder", "frac_fma_peak"), num("decoder", "token_ms_b1"),
        num("decoder", "token_ms_bn"), num("decoder", "questions"), num("decoder_bf16", "token_ms_b1"),
        num("decoder_bf16", "token_ms_bn"), num("", "peak_rss_mib")
}' "$RESULTS"
echo "(sgemm GFLOP/s best shape; GB/s memory read; enc s per page; ms/tok1 and ms/tokN: decoder ms"
echo " per token at batch 1 and batch N in fp32, bf16/1 and bf16/N the same in bf16; RSS: peak MiB"
echo " of the model runs.  JSON: $RESULTS)"

# A page end to end with the full-size model, as `docmint ask` runs it: load,
# preprocessing, one encoder pass, 4 questions decoded together (up to 42
# tokens each, prompt included), in fp32 and in bf16, with the peak RSS.
echo
echo "==== a page end to end: docmint ask, 4 questions (full-size random weights) ===="
for p in fp32 bf16; do
    /usr/bin/time -v "$DOCMINT" ask "$FULL" "$ROOT/jobs/demo/page.png" "What is the invoice number?" \
        "What is the date?" "Who is the sender?" "What is the total?" --precision "$p" \
        --max-length 42 --verbose >/dev/null 2>"$LOG" || {
        echo "bench.sh: docmint ask --precision $p failed" >&2
        cat "$LOG" >&2
        exit 1
    }
    printf "%s: %s  wall %s  peak RSS %s KiB\n" "$p" "$(grep '^load ' "$LOG")" \
        "$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$LOG")" \
        "$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$LOG")"
done

# fp32 against bf16 answers on a synthetic corpus (tests/precision.sh).
echo
echo "==== fp32 vs bf16 on a synthetic corpus ===="
sh "$ROOT/tests/precision.sh" "$DOCMINT"

# GEMM libraries on the encoder's shapes (tests/bench/gemm_bench.c), and the
# encoder alone in float32 and bf16 against its bounds (tests/bench/enc_bench.c).
if [ -n "$GEMM_BENCH" ]; then
    echo
    echo "==== GEMM libraries on the encoder's shapes ===="
    "$GEMM_BENCH"
    if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
        echo "(again with OPENBLAS_CORETYPE unset)"
        env -u OPENBLAS_CORETYPE "$GEMM_BENCH" --dims 128,512
    fi
fi
if [ -n "$ENC_BENCH" ]; then
    echo
    echo "==== encoder alone, float32 and bf16 ===="
    "$ENC_BENCH" "$FULL" --reps "$REP_FULL"
fi

# The decoder's parts one at a time (tests/bench/dec_bench.c): the step at
# batch 1 and 4, the cache's page block on the packed decoder, the LM head
# alone at 1 and 4 rows, each with its CPU time.
if [ -n "$DEC_BENCH" ]; then
    echo
    echo "==== decoder parts (full size, fp32) ===="
    for what in step1 step4 cache lm1 lm4; do
        "$DEC_BENCH" "$FULL" "$what" --reps 5
    done
fi

# The batch system: the coordinator's own overhead with no-op workers
# (docmint bench-dispatch) and infer throughput with 1 and 2 worker ranks
# (tests/bench_batch.sh; about 30 s more).
sh "$ROOT/tests/bench_batch.sh" "$DOCMINT"

# Threads on a busy node: OpenMP's waiting rule with and without other
# processes on every core (tests/bench_busy.sh; about 2 minutes).
echo
echo "==== threads on a busy node: OpenMP waiting, as found and with busy loops ===="
sh "$ROOT/tests/bench_busy.sh" "$DOCMINT"
# Synthetic pages per second on 1 and 2 threads (tests/bench_synth.sh;
# about 1 minute).
sh "$ROOT/tests/bench_synth.sh" "$DOCMINT"

# Training: distill tokens per second with 1 and 2 ranks on the tiny
# config and on a full-size pruned student, with the all-reduce's share of
# the step (tests/bench_train.sh; about 1 minute, 5 the first time).
sh "$ROOT/tests/bench_train.sh" "$DOCMINT" "$FULL" "$TINY"

# The analyses of one question (docmint analyze-item --stats, on the demo
# page with a 24-token training sequence, the page itself with noise as the
# corrupted one): teacher-forced runs, the block forwards that carried
# them, backward passes, seconds, and the cost in units of one plain
# teacher-forced pass of the same sequence.  The cost is printed next to
# what the runs would cost one pass each (one unit per run, two per
# backward pass: the bound batching has to beat), and the questions
# analysed per second (the decoder's side: the encoder runs twice per
# page, shared by its questions) for a page's first question and for its
# later ones, which reuse the page's transcription (the stage keeps it).
# The full-size model runs every analysis (about half a minute on 2 cores).
echo
echo "==== analyze: one question, every analysis (tiny and full size) ===="
AN=$(mktemp -d "${TMPDIR:-/tmp}/docmint-bench-an.XXXXXX")
for m in tiny full; do
    dir=$TINY
    [ "$m" = full ] && dir=$FULL
    "$DOCMINT" preprocess "$dir" "$ROOT/jobs/demo/page.png" -o "$AN/px.st" >/dev/null
    python3 - "$ROOT/tests/tools" "$AN/px.st" "$AN/in.st" "$AN/cor.st" <<'PY'
import random, sys
from array import array
sys.path.insert(0, sys.argv[1])
import st
px = st.load(sys.argv[2])["pixel_values"]
ids = array("q", [5 + (i * 37) % 200 for i in range(24)])
st.save(sys.argv[3], {"pixel_values": px, "decoder_input_ids": ("I64", [1, 24], ids)})
rng = random.Random(0)
noisy = array("f", (v + rng.gauss(0, 0.5) for v in px[2]))
st.save(sys.argv[4], {"pixel_values": (px[0], px[1], noisy)})
PY
    printf '%s: ' "$m"
    "$DOCMINT" analyze-item "$dir" --in "$AN/in.st" --corrupt "$AN/cor.st" --answer-start 12 \
        --stats --out "$AN/out.st" | tee -a "$RESULTS" | tee "$AN/stats.json"
    printf '%s, later question: ' "$m"
    "$DOCMINT" analyze-item "$dir" --in "$AN/in.st" --corrupt "$AN/cor.st" --answer-start 12 \
        --analyses skip,reproject,lens,heads,ablation,patching,attribution \
        --stats --out "$AN/out.st" | tee -a "$RESULTS" | tee "$AN/later.json"
    python3 - "$m" "$AN/stats.json" "$AN/later.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))
l = json.load(open(sys.argv[3]))
bound = s["passes"] + 2 * s["backward"]
unit = s["teacher_forced_pass_seconds"]
print("%s, full analysis: cost %.1f teacher-forced passes, %.2f x the %d of one pass per run "
      "(%d runs in %d blocks + %d backward at 2; one pass %.1f ms); %.4g questions/s for a "
      "page's first question, %.4g for its later ones (one pass each: %.4g)"
      % (sys.argv[1], s["cost_in_passes"], s["cost_in_passes"] / bound, bound, s["passes"],
         s["blocks"], s["backward"], 1e3 * unit, 1 / s["seconds"], 1 / l["seconds"],
         1 / (bound * unit) if unit > 0 else 0))
PY
done
rm -rf "$AN"

# Whole-model training: samples per second, decoder only against the
# whole model with the Swin backward, on the tiny config and the reader's,
# the reader's items in any order and grouped by page, and the time of
# `make reader` (tests/bench_whole.sh; about two minutes).
sh "$ROOT/tests/bench_whole.sh" "$DOCMINT" "$TINY"
