#!/bin/sh
# Synthetic pages per second (`docmint synth`, part of `make bench`): a
# mixed corpus of the default 960x1280 pages on 1 and 2 threads, the same
# at 480x640, and 960x1280 with the default augmentation.  Each figure is
# the best of BENCH_SYNTH_REPEAT (default 2) runs of BENCH_SYNTH_DOCS
# (default 256) documents; `docmint synth` prints its own rate.
# sh tests/bench_synth.sh DOCMINT
set -eu
DOCMINT=${1:-build/docmint}
DOCS=${BENCH_SYNTH_DOCS:-256}
REP=${BENCH_SYNTH_REPEAT:-2}
T=$(mktemp -d "${TMPDIR:-/tmp}/docmint-bench-synth.XXXXXX")
trap 'rm -rf "$T"' EXIT INT TERM

echo
echo "==== synthetic pages: docmint synth --docs $DOCS (mixed kinds), best of $REP ===="
measure() { # label args...
    label=$1
    shift
    best=0
    i=0
    while [ $i -lt "$REP" ]; do
        rm -rf "$T/c"
        rate=$("$DOCMINT" synth "$T/c" --docs "$DOCS" --seed $((i + 1)) "$@" |
            sed -n 's/.* \([0-9.]*\) pages\/s on .*/\1/p')
        best=$(awk -v a="$best" -v b="${rate:-0}" 'BEGIN { print (b > a ? b : a) }')
        i=$((i + 1))
    done
    printf '  %-40s %8.1f pages/s\n' "$label" "$best"
}
measure "960x1280, 1 thread" --threads 1
measure "960x1280, 2 threads" --threads 2
measure "480x640, 1 thread" --threads 1 --width 480 --height 640
measure "480x640, 2 threads" --threads 2 --width 480 --height 640
measure "960x1280, --augment default, 2 threads" --threads 2 --augment default
echo "  ($(nproc) CPUs; $(du -sh "$T/c" | cut -f1) for the last corpus)"
