#!/bin/sh
# Command-line tests: run the docmint binary as a user would and check its
# output against the reference data (tests/data) or the documented
# behaviour.  Prints one line per check and a summary; exits non-zero on
# any failure.
set -u
: "${DOCMINT:=build/docmint}"
case "$DOCMINT" in /*) ;; *) DOCMINT="$PWD/$DOCMINT" ;; esac
DATA=tests/data
T=$(mktemp -d /tmp/docmint-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0
fail=0

ok() { pass=$((pass + 1)); echo "  ok    $1"; }
bad() { fail=$((fail + 1)); echo "  FAIL  $1"; }

# expect_error NAME NEEDLE CMD...: non-zero exit, one line on stderr
# containing NEEDLE, no sanitizer report.
expect_error() {
    name=$1 needle=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err"
    status=$?
    lines=$(wc -l <"$T/err")
    if [ $status -ne 0 ] && [ $status -lt 128 ] && [ "$lines" -eq 1 ] && grep -qF -- "$needle" "$T/err"; then
        ok "$name"
    else
        bad "$name (status $status, $lines lines: $(head -c 300 "$T/err"))"
    fi
}

echo "cli: forward against the reference tensors"
for k in 0 1 2; do
    python3 tests/tools/st.py extract $DATA/tiny-a/expected.safetensors "$T/in$k.st" "case$k." \
        pixel_values decoder_input_ids
    if "$DOCMINT" forward $DATA/tiny-a --in "$T/in$k.st" --out "$T/out$k.st" --generate 64 &&
        python3 tests/tools/st.py compare "$T/out$k.st" $DATA/tiny-a/expected.safetensors "case$k." >"$T/cmp"; then
        ok "forward case$k: $(tail -1 "$T/cmp")"
    else
        bad "forward case$k: $(cat "$T/cmp" 2>/dev/null | tail -5)"
    fi
done

echo "cli: tokenize / detokenize against the tokenizer reference"
python3 - "$DATA/tokenizer-a/cases.jsonl" "$T" <<'PY'
import json, sys
cases = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2] + "/tok_in", "w") as f:
    for c in cases:
        f.write(json.dumps({"text": c["text"]}) + "\n")
with open(sys.argv[2] + "/detok_in", "w") as f:
    for c in cases:
        f.write(json.dumps({"ids": c["ids"]}) + "\n")
PY
if "$DOCMINT" tokenize $DATA/tokenizer-a <"$T/tok_in" >"$T/tok_out" &&
    "$DOCMINT" detokenize $DATA/tokenizer-a --skip-special <"$T/detok_in" >"$T/detok_out" &&
    python3 - "$DATA/tokenizer-a/cases.jsonl" "$T" <<'PY'
import json, sys
cases = [json.loads(l) for l in open(sys.argv[1])]
toks = [json.loads(l) for l in open(sys.argv[2] + "/tok_out")]
dets = [json.loads(l) for l in open(sys.argv[2] + "/detok_out")]
bad = [i for i, (c, t) in enumerate(zip(cases, toks)) if t["ids"] != c["ids"] or t["pieces"] != c["pieces"]]
badd = [i for i, (c, d) in enumerate(zip(cases, dets)) if d["text"] != c["decoded"]]
assert len(toks) == len(cases) and len(dets) == len(cases), "line counts differ"
print(f"{len(cases)} cases, {len(bad)} encode and {len(badd)} decode mismatches")
sys.exit(1 if bad or badd else 0)
PY
then ok "tokenize + detokenize: every case matches"; else bad "tokenize/detokenize"; fi

echo "cli: init and ask"
if "$DOCMINT" init "$T/model" --config jobs/configs/tiny.json --seed 3 >/dev/null &&
    "$DOCMINT" ask "$T/model" jobs/demo/page.png "What is the date?" "Who is the vendor?" >"$T/ans" &&
    [ "$(wc -l <"$T/ans")" -eq 2 ]; then
    ok "ask answers two questions with two lines"
else
    bad "init + ask"
fi
# the same page as JPEG and inside a TIFF gives the same answers
if vips copy jobs/demo/page.png "$T/page.tif" 2>/dev/null &&
    "$DOCMINT" ask "$T/model" "$T/page.tif" "What is the date?" "Who is the vendor?" >"$T/ans2" &&
    cmp -s "$T/ans" "$T/ans2"; then
    ok "TIFF page answers as the PNG"
else
    bad "TIFF page answers differ"
fi

echo "cli: stores"
if DOCMINT="$DOCMINT" sh tests/store_py.sh >"$T/store_py" 2>&1; then
    ok "store: C dump and Python reader agree ($(grep -c ok "$T/store_py") checks)"
else
    bad "store: $(tail -5 "$T/store_py")"
fi

echo "cli: bad input"
printf 'not an image' >"$T/corrupt.png"
: >"$T/empty.png"
long=$(python3 -c "print('word ' * 400)")
expect_error "missing model folder" "/nonexistent" "$DOCMINT" ask /nonexistent jobs/demo/page.png "q?"
expect_error "missing image" "$T/none.png" "$DOCMINT" ask "$T/model" "$T/none.png" "q?"
expect_error "corrupt image" "$T/corrupt.png" "$DOCMINT" ask "$T/model" "$T/corrupt.png" "q?"
expect_error "empty image" "$T/empty.png" "$DOCMINT" ask "$T/model" "$T/empty.png" "q?"
expect_error "empty question" "empty question" "$DOCMINT" ask "$T/model" jobs/demo/page.png "  "
expect_error "question too long" "too long" "$DOCMINT" ask "$T/model" jobs/demo/page.png "$long"
expect_error "page out of range" "page" "$DOCMINT" ask "$T/model" jobs/demo/page.png --page 3 "q?"
mkdir -p "$T/badcfg" && cp "$T/model/"* "$T/badcfg/" &&
    sed -i 's/"mbart"/"t5"/' "$T/badcfg/config.json"
expect_error "unknown model_type" "model_type" "$DOCMINT" ask "$T/badcfg" jobs/demo/page.png "q?"
mkdir -p "$T/trunc" && cp "$T/model/"* "$T/trunc/" &&
    truncate -s 100000 "$T/trunc/model.safetensors"
expect_error "truncated weights" "truncated" "$DOCMINT" ask "$T/trunc" jobs/demo/page.png "q?"
expect_error "forward without inputs" "pixel_values" "$DOCMINT" forward $DATA/tiny-a --in $DATA/tiny-a/preprocess.safetensors --out "$T/x.st"
expect_error "unknown command" "unknown command" "$DOCMINT" frobnicate
expect_error "unknown option" "--bogus" "$DOCMINT" ask "$T/model" jobs/demo/page.png --bogus "q?"

for c in ask forward tokenize detokenize init preprocess bench; do
    if "$DOCMINT" $c --help >"$T/help" 2>&1 && [ -s "$T/help" ]; then ok "$c --help"; else bad "$c --help"; fi
done

echo "cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
