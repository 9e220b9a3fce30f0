#!/bin/sh
# The demo: build a random-weight Donut of the tiny config (no download),
# then ask it questions about the embedded invoice page.  With random
# weights the answers are meaningless tokens; the point is the whole path:
# checkpoint, tokenizer, libvips image loading, Donut preprocessing, Swin
# encoder once per page, the page's questions decoded together.
set -eu
DOCMINT=${1:-build/docmint}
OUT=build/demo
mkdir -p "$OUT"
"$DOCMINT" init "$OUT/model" --config jobs/configs/tiny.json --seed 7
set -- "What is the invoice number?" "What is the amount due?" "Who is the contact?"
"$DOCMINT" ask "$OUT/model" jobs/demo/page.png "$@" --verbose >"$OUT/answers.txt"
for q in "$@"; do
    IFS= read -r a || a=""
    printf 'Q: %s\nA: "%s"\n' "$q" "$a"
done <"$OUT/answers.txt"
