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

echo "cli: analyze-item against the interpretability reference"
# answer start, corrupting page and transcription heads as mi.json states them
for k in 0 1 2; do
    set -- $(python3 -c "
import json, sys
d = json.load(open('$DATA/tiny-a/mi.json'))
c = d['cases'][$k]
(l, heads), = d['transcribe_subset_heads'].items()
print(c['answer_start'], c['corrupt_pixels_from'][4:], l + ':' + ','.join(map(str, heads)))")
    if "$DOCMINT" analyze-item $DATA/tiny-a --in "$T/in$k.st" --corrupt "$T/in$2.st" --answer-start "$1" \
        --subset "$3" --transcribe-logits --out "$T/mi$k.st" &&
        python3 tests/tools/st.py compare "$T/mi$k.st" $DATA/tiny-a/mi.safetensors "case$k." >"$T/cmp"; then
        ok "analyze-item case$k: $(tail -1 "$T/cmp")"
    else
        bad "analyze-item case$k: $(cat "$T/cmp" 2>/dev/null | tail -5)"
    fi
done
# the general interventions reproduce the fixed ones of the reference:
# a skip set of one sub-layer, the query patched at the scored positions,
# the replacement, a head patched at every position
MI=$DATA/tiny-a/mi.safetensors
if "$DOCMINT" analyze-item $DATA/tiny-a --in "$T/in0.st" --corrupt "$T/in1.st" --answer-start 3 \
    --skip-set c0=C0 --skip-set all=S0,C0,M0,S1,C1,M1 --patch C1.query --replace 'M1.out:=-C1.out' --out "$T/gen0.st" &&
    python3 tests/tools/st.py match "$T/gen0.st" nll.skip_set.c0 $MI case0.nll.skip 1 >"$T/cmp" &&
    python3 tests/tools/st.py match "$T/gen0.st" nll.patch.C1.query.clean_into_corrupt $MI case0.nll.patch_query >>"$T/cmp" &&
    python3 tests/tools/st.py match "$T/gen0.st" nll.replace.M1.out:=-C1.out $MI case0.nll.m_last_cancels_c_last >>"$T/cmp" &&
    "$DOCMINT" analyze-item $DATA/tiny-a --in "$T/in0.st" --corrupt "$T/in1.st" --answer-start 3 \
        --patch C0.H3 --patch S1.H2 --patch-scope all --out "$T/gen1.st" &&
    python3 tests/tools/st.py match "$T/gen1.st" nll.patch.C0.H3.clean_into_corrupt $MI case0.nll.patch_head 7 >>"$T/cmp" &&
    python3 tests/tools/st.py match "$T/gen1.st" nll.patch.S1.H2.clean_into_corrupt $MI case0.nll.patch_head 10 >>"$T/cmp"; then
    ok "analyze-item skip sets, patched sites, replacements: $(wc -l <"$T/cmp") values as the reference's"
else
    bad "analyze-item skip sets, patched sites, replacements: $(cat "$T/cmp" 2>/dev/null | tail -3)"
fi
# every sub-layer skipped leaves the embedding alone: its lens is the NLL
python3 - "$T/gen0.st" $MI >"$T/cmp" <<'EOF2'
import sys
sys.path.insert(0, "tests/tools")
import st
got, ref = st.load(sys.argv[1]), st.load(sys.argv[2])
lp = ref["case0.lens.target_logprob"][2][:3]
want = -sum(lp) / 3
g = got["nll.skip_set.all"][2][0]
print(f"{g:.6g} vs {want:.6g}")
sys.exit(0 if abs(g - want) <= 1e-4 else 1)
EOF2
if [ $? -eq 0 ]; then ok "analyze-item skip set of every sub-layer = embedding lens: $(cat "$T/cmp")"; else bad "analyze-item skip all: $(cat "$T/cmp")"; fi
# the figures: every one drawn, and the skip heat map red where the
# reference's NLL rises most, blue where it falls most (cells of 92 x 40
# pixels from (110, 78), as coordinator/analyze_plot.c lays them out)
if "$DOCMINT" analyze-item $DATA/tiny-a --in "$T/in0.st" --corrupt "$T/in1.st" --answer-start 3 \
    --png "$T/fig" --out "$T/fig.st" >/dev/null &&
    python3 - "$T/fig" $MI >"$T/cmp" 2>&1 <<'EOF2'
import sys
sys.path.insert(0, "tests/tools")
import png, st
d = sys.argv[1]
for f in ["skip", "reproject", "sa_entropy", "ca_variance", "head_ablation", "lens", "patch_head", "atp_head", "transcribe"]:
    png.load(f"{d}/{f}.png")
ref = st.load(sys.argv[2])
clean = ref["case0.nll.clean"][2][0]
rise = [v - clean for v in ref["case0.nll.skip"][2]]
w, h, bpp, rows = png.load(f"{d}/skip.png")
def cell(i):
    x, y = 110 + (i % 3) * 92 + 8, 78 + (i // 3) * 40 + 8
    return rows[y][x * bpp:x * bpp + 3]
hi, lo = cell(rise.index(max(rise))), cell(rise.index(min(rise)))
print(f"9 figures; largest rise {list(hi)}, largest fall {list(lo)}")
sys.exit(0 if hi[0] > hi[2] + 40 and lo[2] > lo[0] + 40 else 1)
EOF2
then
    ok "analyze-item figures: $(cat "$T/cmp")"
else
    bad "analyze-item figures: $(tail -3 "$T/cmp")"
fi
expect_error "analyze-item: bad replacement" "earlier" "$DOCMINT" analyze-item $DATA/tiny-a \
    --in "$T/in0.st" --answer-start 3 --replace 'C1.out:=-M1.out' --out "$T/x.st"
expect_error "analyze-item: unknown head" "C1 has no head 7" "$DOCMINT" analyze-item $DATA/tiny-a \
    --in "$T/in0.st" --answer-start 3 --subset C1:1,7 --out "$T/x.st"
expect_error "analyze-item: layer outside the model" "layer 5 outside" "$DOCMINT" analyze-item $DATA/tiny-a \
    --in "$T/in0.st" --answer-start 3 --subset C5:1 --out "$T/x.st"
expect_error "analyze-item: no scored position" "--answer-start 6" "$DOCMINT" analyze-item $DATA/tiny-a \
    --in "$T/in0.st" --answer-start 6 --out "$T/x.st"

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

echo "cli: export and eval"
# A store holding answers for two of three questions; the annotation file
# asks all three (the second answer needs JSON escaping).
cat >"$T/annot.json" <<'JSON'
{"dataset_name": "t", "dataset_split": "val", "data": [
 {"questionId": 30, "question": "q?", "image": "a.png", "answers": ["12 March 1998"], "question_types": ["form"]},
 {"questionId": 10, "question": "q?", "image": "a.png", "answers": ["say \"hi\"", "hi"], "question_types": ["form", "free_text"]},
 {"questionId": 20, "question": "q?", "image": "b.png", "answers": ["Straße"], "question_types": ["free_text"]}]}
JSON
printf '%s\n' '{"questionId": 30, "answer": "12 march 1998"}' \
    '{"questionId": 10, "answer": "say \"hi\" \u00e9"}' >"$T/ans.jsonl"
if "$DOCMINT" store import "$T/st" <"$T/ans.jsonl" >/dev/null 2>&1; then
    expect_error "export refuses an incomplete submission" "20" \
        "$DOCMINT" export "$T/st" --annotations "$T/annot.json" -o "$T/sub.json"
    if "$DOCMINT" export "$T/st" --annotations "$T/annot.json" -o "$T/sub.json" --partial 2>/dev/null &&
        python3 - "$T/sub.json" <<'PY'
import json, sys
sub = json.load(open(sys.argv[1], encoding="utf-8"))
want = [{"questionId": 30, "answer": "12 march 1998"}, {"questionId": 10, "answer": 'say "hi" \u00e9'}]
sys.exit(0 if sub == want else 1)
PY
    then ok "export --partial: annotation order, escaping, UTF-8"; else bad "export --partial"; fi
    # ANLS by hand: q30 1.0 (case), q10 vs 'say "hi"': distance 2 over 10 -> 0.8,
    # q20 missing -> 0; mean 1.8/3 = 0.6; form (q30, q10) 0.9, free_text (q10, q20) 0.4
    if "$DOCMINT" eval --predictions "$T/sub.json" --annotations "$T/annot.json" --report "$T/rep.json" >"$T/eval" &&
        python3 - "$T/rep.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = abs(r["anls"] - 0.6) < 1e-9 and r["missing"] == 1 and r["questions"] == 3
ok = ok and abs(r["by_question_type"]["form"]["anls"] - 0.9) < 1e-9
ok = ok and abs(r["by_question_type"]["free_text"]["anls"] - 0.4) < 1e-9
sys.exit(0 if ok else 1)
PY
    then ok "eval: ANLS 0.6 and per-type figures as computed by hand"; else bad "eval: $(cat "$T/eval")"; fi
else
    bad "store import"
fi

echo "cli: prune and params"
# plan1 as the reference file (object spelling), plan2 written as lists
printf '%s\n' '{"keep": ["M0", "S1", "C1"], "heads": ["C1.H1", "C1.H3"]}' >"$T/plan2_list.json"
if "$DOCMINT" prune $DATA/tiny-a --plan $DATA/tiny-a/plan1.json -o "$T/student1" >/dev/null &&
    "$DOCMINT" prune $DATA/tiny-a --plan "$T/plan2_list.json" -o "$T/student2/" >/dev/null; then
    ok "prune plan1 (object spelling) and plan2 (list spelling)"
else
    bad "prune"
fi
for pl in 1 2; do
    for k in 0 1 2; do
        python3 tests/tools/st.py extract $DATA/tiny-a/expected.safetensors "$T/pin$k.st" "case$k." \
            pixel_values decoder_input_ids
        python3 tests/tools/st.py extract $DATA/tiny-a/train.safetensors "$T/pref$k.st" "plan$pl.case$k." \
            decoder.logits generate.ids
        if "$DOCMINT" forward "$T/student$pl" --in "$T/pin$k.st" --out "$T/pout$k.st" --generate 64 &&
            python3 tests/tools/st.py compare "$T/pout$k.st" "$T/pref$k.st" "" >"$T/cmp"; then
            ok "student plan$pl case$k: logits and generated ids: $(tail -1 "$T/cmp")"
        else
            bad "student plan$pl case$k: $(tail -5 "$T/cmp" 2>/dev/null)"
        fi
    done
done
# params --json against counts summed here from the safetensors header
for dir in $DATA/tiny-a "$T/student1" "$T/student2"; do
    if "$DOCMINT" params "$dir" --json >"$T/params.json" &&
        python3 - "$dir/model.safetensors" "$T/params.json" >"$T/pcmp" <<'PY'
import json, re, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
got = json.load(open(sys.argv[2]))
want = {}
for name, ent in header.items():
    if name == "__metadata__" or ent["dtype"] != "F32":
        continue
    size = 1
    for s in ent["shape"]:
        size *= s
    m = re.match(r"decoder\.model\.decoder\.layers\.(\d+)\.(self_attn|encoder_attn|fc|final)", name)
    if name.startswith("encoder."):
        key = "encoder"
    elif "embed_tokens" in name:
        key = "tokens"
    elif "embed_positions" in name:
        key = "positions"
    elif "lm_head" in name:
        continue  # tied in tiny-a
    elif m:
        key = {"self_attn": "S", "encoder_attn": "C"}.get(m.group(2), "M") + m.group(1)
    else:
        key = "norms"
    want[key] = want.get(key, 0) + size
rows = {r["name"]: r["params"] for r in got["modules"]}
bad = [k for k in set(rows) | set(want) if rows.get(k, 0) != want.get(k, 0)]
dec = sum(v for k, v in want.items() if k != "encoder")
ok = not bad and got["decoder"] == dec and got["total"] == dec + want["encoder"]
print(f"decoder {dec}, share {got['decoder_share']:.4f}, mismatches {bad}")
sys.exit(0 if ok else 1)
PY
    then ok "params $(basename "$dir"): every module as the header counts ($(cat "$T/pcmp"))"
    else bad "params $dir: $(cat "$T/pcmp")"; fi
done
if "$DOCMINT" params "$T/student1" >"$T/params.txt" && grep -q "^S1 .*heads 1,2 of 4" "$T/params.txt" &&
    grep -q "^M1 .*removed" "$T/params.txt" && grep -q "tied" "$T/params.txt"; then
    ok "params table: kept heads, removed sub-layers, tied head"
else
    bad "params table: $(cat "$T/params.txt")"
fi
printf '%s\n' '{"keep": ["S0", "C0", "M0"], "heads": ["C1.H0"]}' >"$T/plan_rm.json"
printf '%s\n' '{"keep": {"S1": true}, "heads": {"C1": [0, 7]}}' >"$T/plan_idx.json"
printf '%s\n' '{"keep": {"S0": true}}' >"$T/plan_back.json"
mkdir -p "$T/full" && : >"$T/full/x"
expect_error "prune: heads of a removed sub-layer" "$T/plan_rm.json: heads[0]: heads listed for C1, which the plan removes" \
    "$DOCMINT" prune $DATA/tiny-a --plan "$T/plan_rm.json" -o "$T/s_rm"
expect_error "prune: head index out of range" "heads.C1[1]: head 7 of C1 is out of range" \
    "$DOCMINT" prune $DATA/tiny-a --plan "$T/plan_idx.json" -o "$T/s_idx"
expect_error "prune: a student cannot get back a sub-layer" "S0 was removed by an earlier pruning" \
    "$DOCMINT" prune "$T/student1" --plan "$T/plan_back.json" -o "$T/s_back"
expect_error "prune: missing model" "/nonexistent" \
    "$DOCMINT" prune /nonexistent --plan $DATA/tiny-a/plan1.json -o "$T/s_none"
expect_error "prune: non-empty output folder" "$T/full: exists and is not empty" \
    "$DOCMINT" prune $DATA/tiny-a --plan $DATA/tiny-a/plan1.json -o "$T/full"
if "$DOCMINT" prune $DATA/tiny-a --plan $DATA/tiny-a/plan1.json -o "$T/nested/a/s1" >/dev/null 2>&1 &&
    "$DOCMINT" params "$T/nested/a/s1" >/dev/null 2>&1; then
    ok "prune creates the output's missing parent folders"
else
    bad "prune into a folder whose parents do not exist"
fi
rm -rf "$T/nested"
expect_error "params: missing model" "/nonexistent" "$DOCMINT" params /nonexistent
if [ ! -e "$T/s_rm" ] && [ -z "$(ls -A "$T" | grep '\.tmp-')" ]; then
    ok "a failed prune leaves no folder behind"
else
    bad "a failed prune left files: $(ls -a "$T")"
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

for c in ask forward analyze-item tokenize detokenize init preprocess bench prune params; do
    if "$DOCMINT" $c --help >"$T/help" 2>&1 && [ -s "$T/help" ]; then ok "$c --help"; else bad "$c --help"; fi
done

echo "cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
