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

echo "cli: ask for scripts: several images, every page, JSON lines"
# Two images (a PNG and the 3-page TIFF), every page, two questions, one of
# them starting with '-': 4 pages x 2 questions in page order.  Each page's
# answers must equal what a call about that page alone gives (the model and
# its workspace are reused from page to page; nothing may carry over).
# One thread: these checks are about answers, and a shared machine runs
# one thread fastest.
IMGS="jobs/demo/page.png tests/data/images/multi.tif"
Q1="What is the date?" Q2="-5 or more?"
if "$DOCMINT" ask --threads 1 "$T/model" $IMGS --json --page all -- "$Q1" "$Q2" >"$T/all.jsonl" &&
    "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png --json -- "$Q1" "$Q2" >"$T/p0.jsonl" &&
    for p in 0 1 2; do
        "$DOCMINT" ask --threads 1 "$T/model" tests/data/images/multi.tif --page $p --json -- "$Q1" "$Q2" \
            >"$T/m$p.jsonl" || exit 1
    done &&
    python3 - "$T" "$Q1" "$Q2" >"$T/askcmp" <<'PY'
import json, sys
t, q1, q2 = sys.argv[1:4]
rows = [json.loads(l) for l in open(t + "/all.jsonl")]
alone = [json.loads(l) for f in ("p0", "m0", "m1", "m2") for l in open(f"{t}/{f}.jsonl")]
want = [(i, p, q) for i, ps in (("jobs/demo/page.png", [0]), ("tests/data/images/multi.tif", [0, 1, 2]))
        for p in ps for q in (q1, q2)]
assert [(r["image"], r["page"], r["question"]) for r in rows] == want, rows
keys = ["image", "page", "question", "answer", "mean_logprob", "tokens", "timing_ms"]
for r, a in zip(rows, alone):
    assert list(r) == keys, list(r)
    assert all(r["timing_ms"][k] >= 0 for k in ("load", "preprocess", "encoder", "decoder"))
    assert (r["image"], r["page"], r["question"]) == (a["image"], a["page"], a["question"])
    assert r["answer"] == a["answer"] and r["tokens"] == a["tokens"], (r, a)
    assert abs(r["mean_logprob"] - a["mean_logprob"]) < 1e-6, (r, a)
# the pages differ, so the comparison above is not between equal rows
assert len({round(r["mean_logprob"], 6) for r in rows[::2]}) > 1
print(f"{len(rows)} answers")
PY
then ok "ask --json --page all over two images: $(cat "$T/askcmp"), each as asked alone"
else bad "ask several images: $(tail -3 "$T/askcmp" 2>/dev/null)"; fi
# --page all on a two-page PDF written here (a red and a blue rectangle)
python3 - "$T/two.pdf" <<'PY'
import sys
pages = [b"1 0 0 rg 10 10 60 50 re f", b"0 0 1 rg 70 20 60 40 re f"]
objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>"]
for i, content in enumerate(pages):
    objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 144 72] /Contents %d 0 R >>" % (4 + 2 * i))
    objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
out, offs = bytearray(b"%PDF-1.4\n"), []
for k, o in enumerate(objs, 1):
    offs.append(len(out))
    out += b"%d 0 obj\n%s\nendobj\n" % (k, o)
xref = len(out)
out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
out += b"".join(b"%010d 00000 n \n" % off for off in offs)
out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
open(sys.argv[1], "wb").write(out)
PY
if ! vipsheader "$T/two.pdf" >/dev/null 2>&1; then
    ok "ask --page all on a PDF: SKIPPED (this libvips has no pdfload)"
elif "$DOCMINT" ask --threads 1 "$T/model" "$T/two.pdf" --page all --json "$Q1" >"$T/pdf.jsonl" &&
    "$DOCMINT" ask --threads 1 "$T/model" "$T/two.pdf" --page 1 --json "$Q1" >"$T/pdf1.jsonl" &&
    python3 - "$T/pdf.jsonl" "$T/pdf1.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
one = json.loads(open(sys.argv[2]).readline())
assert [r["page"] for r in rows] == [0, 1]
assert rows[1]["tokens"] == one["tokens"] and abs(rows[1]["mean_logprob"] - one["mean_logprob"]) < 1e-6
assert rows[0]["mean_logprob"] != rows[1]["mean_logprob"]
PY
then ok "ask --page all on a two-page PDF: pages 0 and 1, page 1 as asked alone"
else bad "ask --page all on a PDF"; fi
if "$DOCMINT" ask --threads 1 "$T/model" $IMGS --page 1 -- "$Q1" >"$T/plain" 2>"$T/plainerr"; then
    bad "ask: page 1 of a one-page PNG was not refused"
elif grep -q "jobs/demo/page.png: page 1 out of range" "$T/plainerr"; then
    ok "ask --page 1 refuses a one-page image before loading the model"
else
    bad "ask --page 1: $(cat "$T/plainerr")"
fi
if "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png jobs/demo/page.png -- "$Q1" "$Q2" >"$T/plain" &&
    [ "$(sed -n 1p "$T/plain")" = "== jobs/demo/page.png, page 0 ==" ] &&
    [ "$(wc -l <"$T/plain")" -eq 6 ]; then
    ok "ask, several pages, plain: a header line before each page's answers"
else
    bad "ask plain output: $(head -3 "$T/plain")"
fi
cp jobs/demo/page.png "$T/scan"
expect_error "ask: a second image without -- is refused" "put -- before the questions" \
    "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png page.jpg "$Q1"
expect_error "ask: an existing image file without extension is refused as a question" "'$T/scan' looks like an image" \
    "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png "$T/scan" "$Q1"
expect_error "ask: -- with no question" "at least one question after it" \
    "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png --
expect_error "ask: --page neither a number nor all" "--page some" \
    "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png --page some "$Q1"
# A page the preprocessor cannot take (1x30000 becomes 0 pixels wide) among
# good ones: its questions get error objects naming the file, the other
# page is answered, the exit status is 1.
vips black "$T/thin.png" 1 30000
"$DOCMINT" ask --threads 1 "$T/model" "$T/thin.png" jobs/demo/page.png --json -- "$Q1" >"$T/mixed.jsonl" 2>"$T/mixed.err"
status=$?
if [ $status -eq 1 ] && python3 - "$T/mixed.jsonl" "$T/thin.png" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 2
assert rows[0]["image"] == sys.argv[2] and "answer" not in rows[0]
assert rows[0]["error"].startswith(sys.argv[2] + ": preprocess: a 1x30000 image becomes 0x")
assert rows[1]["image"] == "jobs/demo/page.png" and "answer" in rows[1] and "error" not in rows[1]
PY
then ok "ask: a failed page gives error objects naming the file, the next page is answered, exit 1"
else bad "ask with a failing page (status $status): $(cat "$T/mixed.err")"; fi
expect_error "preprocess: a 1x30000 image names the file" "$T/thin.png: preprocess: a 1x30000 image becomes 0x" \
    "$DOCMINT" preprocess "$T/model" "$T/thin.png" -o "$T/thin.st"

echo "cli: version, image size limit, shipped job files"
if [ "$("$DOCMINT" --version)" = "docmint $(cat VERSION)" ] &&
    "$DOCMINT" --help | head -1 | grep -qF "docmint $(cat VERSION)"; then
    ok "docmint --version and --help: $(cat VERSION), from the file VERSION"
else
    bad "docmint --version: $("$DOCMINT" --version 2>&1)"
fi
# A PNG header of 15360x20480 pixels (the pixel data is never reached):
# above the default limit of 50,000,000 pixels.
python3 - "$T/huge2.png" <<'PY'
import struct, sys, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
ihdr = struct.pack(">IIBBBBB", 15360, 20480, 8, 0, 0, 0, 0)
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                              chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
PY
expect_error "image above the pixel limit: size, limit and how to raise it" \
    "$T/huge2.png: page 0 is 15360x20480 = 314572800 pixels, more than the limit of 50000000; to allow it, set max_page_pixels (job corpus key), --max-pixels or the environment variable DOCMINT_MAX_PIXELS to 314572800 or more" \
    "$DOCMINT" ask --threads 1 "$T/model" "$T/huge2.png" "$Q1"
DOCMINT_MAX_PIXELS=400000000 "$DOCMINT" ask --threads 1 "$T/model" "$T/huge2.png" "$Q1" >/dev/null 2>"$T/raised"
if [ $? -eq 1 ] && ! grep -q "limit" "$T/raised" && grep -q "$T/huge2.png: cannot decode" "$T/raised"; then
    ok "DOCMINT_MAX_PIXELS raises the limit (the page then fails only on its missing pixels)"
else
    bad "DOCMINT_MAX_PIXELS=400000000: $(cat "$T/raised")"
fi
expect_error "DOCMINT_MAX_PIXELS lowers the limit" \
    "jobs/demo/page.png: page 0 is 960x1280 = 1228800 pixels, more than the limit of 1000;" \
    env DOCMINT_MAX_PIXELS=1000 "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png "$Q1"
expect_error "DOCMINT_MAX_PIXELS not a number" "DOCMINT_MAX_PIXELS=lots: expected a number of pixels" \
    env DOCMINT_MAX_PIXELS=lots "$DOCMINT" ask --threads 1 "$T/model" jobs/demo/page.png "$Q1"
# The shipped compare spec: valid, its paths resolved against jobs/
if "$DOCMINT" compare jobs/demo-compare.json --check >"$T/cspec" 2>&1 &&
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["teacher"].endswith("/jobs/../build/demo/model") and d["split"]["seed"] == 1 else 1)' "$T/cspec"; then
    ok "jobs/demo-compare.json passes compare --check"
else
    bad "jobs/demo-compare.json: $(head -c 300 "$T/cspec")"
fi
# The Slurm script's job file: valid as a job file, and validate names the
# placeholder model path (it checks that the model exists); with the
# placeholders pointed at a model and a DocVQA val layout
# (val/val_v1.0_withQT.json, val/documents/) it passes with --corpus.
sjob=$(sed -n 's/^#   sbatch deploy\/slurm-infer.sbatch \(.*\)$/\1/p' deploy/slurm-infer.sbatch)
if [ "$sjob" = jobs/docvqa-val-infer.json ] && "$DOCMINT" validate --schema >/dev/null &&
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$sjob"; then
    ok "deploy/slurm-infer.sbatch's $sjob exists"
else
    bad "the Slurm script's job file '$sjob' is missing or not JSON"
fi
expect_error "$sjob as shipped: validate names the placeholder model folder" \
    "model /path/to/donut-base-finetuned-docvqa: No such file or directory" \
    "$DOCMINT" validate "$sjob"
mkdir -p "$T/docvqa/val/documents"
for f in aaa_1 bbb_2 ccc_1; do cp jobs/demo/page.png "$T/docvqa/val/documents/$f.png"; done
cp $DATA/corpus/docvqa_small.json "$T/docvqa/val/val_v1.0_withQT.json"
sed -e "s#/path/to/docvqa#$T/docvqa#" -e "s#/path/to/donut-base-finetuned-docvqa#$T/model#" \
    -e "s#/path/to/scratch#$T#" "$sjob" >"$T/val-job.json"
if "$DOCMINT" validate "$T/val-job.json" --corpus >"$T/valout" 2>&1; then
    ok "$sjob with its placeholders filled in validates against a DocVQA val layout"
else
    bad "$sjob filled in: $(cat "$T/valout")"
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
per = {q["questionId"]: (q["anls"], q.get("answer")) for q in r["per_question"]}
ok = ok and sorted(per) == [10, 20, 30] and per[20] == (0.0, None)
ok = ok and abs(per[10][0] - 0.8) < 1e-9 and per[30] == (1.0, "12 march 1998")
sys.exit(0 if ok else 1)
PY
    then ok "eval: ANLS 0.6, per-type and per-question figures as computed by hand"; else bad "eval: $(cat "$T/eval")"; fi
else
    bad "store import"
fi

# ANLS lower-cases as Python's str.lower (the official script): sharp s
# stays, so 'traße' against 'straße' is 1 edit over len('STRASSE') = 7;
# 'ΟΔΟΣ' lowers to 'οδος' (final sigma) and matches exactly.  Mean of
# 6/7 and 1 = 13/14.
cat >"$T/annot_case.json" <<'JSON'
{"dataset_name": "t", "dataset_split": "val", "data": [
 {"questionId": 1, "question": "q?", "image": "a.png", "answers": ["straße"], "question_types": ["form"]},
 {"questionId": 2, "question": "q?", "image": "a.png", "answers": ["οδος"], "question_types": ["form"]}]}
JSON
printf '%s\n' '[{"questionId": 1, "answer": "traße"}, {"questionId": 2, "answer": "ΟΔΟΣ"}]' >"$T/sub_case.json"
if "$DOCMINT" eval --predictions "$T/sub_case.json" --annotations "$T/annot_case.json" --report "$T/rep_case.json" >/dev/null &&
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(abs(r['anls'] - 13/14) > 1e-9)" "$T/rep_case.json"; then
    ok "eval: 'traße' vs 'straße' 6/7 and 'ΟΔΟΣ' vs 'οδος' 1, as Python's str.lower gives"
else
    bad "eval with sharp s and final sigma: $(cat "$T/rep_case.json" 2>/dev/null | head -c 300)"
fi

echo "cli: an archive job, its results table and its questionIds"
# A folder: a.png, broken.pdf (not a PDF: its rows carry the error),
# sub/multi.tif (3 pages); two questions, one needing CSV quoting.
A="$T/arch"
mkdir -p "$A/docs/sub"
cp jobs/demo/page.png "$A/docs/a.png"
cp $DATA/images/multi.tif "$A/docs/sub/multi.tif"
printf 'not a pdf' >"$A/docs/broken.pdf"
printf '%s\n' 'What is the date?' 'Who signed, "and" when?' >"$A/q.txt"
printf '{"stage": "infer", "model": "%s", "output": "%s", "threads": 1, "max_length": 24,
 "endpoint": "tcp://127.0.0.1:0",
 "corpus": {"format": "archive", "path": "%s", "questions": "%s"}}\n' \
    "$T/model" "$A/out" "$A/docs" "$A/q.txt" >"$A/job.json"
"$DOCMINT" run "$A/job.json" >"$A/run1" 2>&1
st1=$?
"$DOCMINT" run "$A/job.json" >"$A/run2" 2>&1
st2=$?
# exit 3 both times: broken.pdf's rows are error records
if [ $st1 -eq 3 ] && [ $st2 -eq 3 ]; then
    # the first run opens the three documents, the rerun only broken.pdf
    # (an unreadable document is not kept in the scan)
    if grep -q "3 documents, 5 pages (3 counted, 0 from the earlier scan)" "$A/run1" &&
        grep -q "3 documents, 5 pages (1 counted, 2 from the earlier scan)" "$A/run2" &&
        grep -q "0 computed" "$A/run2" && "$DOCMINT" store stat "$A/out" >"$A/stat" &&
        grep -q "^meta archive_scan: 2 documents" "$A/stat" && grep -q "^meta question_ids: 53-bit" "$A/stat"; then
        ok "archive rerun: the scan kept in the store, nothing recomputed"
    else
        bad "archive scan: $(cat "$A/run1" "$A/run2" | head -c 600)"
    fi
else
    bad "archive job: status $st1, $st2: $(tail -3 "$A/run1" "$A/run2" 2>/dev/null)"
fi
# mean log-probabilities of the same pages by `ask` (no store on the way)
: >"$A/ask"
for pg in "a.png 0" "sub/multi.tif 0" "sub/multi.tif 1" "sub/multi.tif 2"; do
    set -- $pg
    "$DOCMINT" ask "$T/model" "$A/docs/$1" --page "$2" --threads 1 --max-length 24 --verbose "What is the date?" \
        'Who signed, "and" when?' 2>&1 >/dev/null | sed -n "s|^q\([0-9]\): .*mean log-prob \(.*\)|$1 $2 \1 \2|p" >>"$A/ask"
done
"$DOCMINT" store dump "$A/out" >"$A/dump"
"$DOCMINT" store dump "$A/out" --errors >"$A/dump_err"
if "$DOCMINT" export "$A/out" -o "$A/r.jsonl" 2>"$A/exp_err" &&
    "$DOCMINT" export "$A/out" -o "$A/r.csv" 2>>"$A/exp_err" &&
    "$DOCMINT" export "$A/out" --format json -o "$A/r.out" 2>>"$A/exp_err" &&
    vipsheader -f n-pages "$A/docs/sub/multi.tif" >"$A/npages" &&
    python3 - "$A" >"$A/check" 2>&1 <<'PY'
import csv, io, json, sys
a = sys.argv[1]
questions = ["What is the date?", 'Who signed, "and" when?']
npages = int(open(a + "/npages").read())
# documents by relative path, pages from 0, questions in file order
want = [(d, p, q) for d, n in (("a.png", 1), ("broken.pdf", 1), ("sub/multi.tif", npages))
        for p in range(n) for q in questions]
rows = [json.loads(l) for l in open(a + "/r.jsonl", encoding="utf-8")]
assert [(r["document"], r["page"], r["question"]) for r in rows] == want, rows
for r in rows:
    assert r["page_id"] == r["document"] + ("#p%d" % r["page"] if r["page"] else ""), r
# ids: distinct, and exact when read as doubles (jq, JavaScript)
ids = [r["questionId"] for r in rows]
assert len(set(ids)) == len(ids)
as_doubles = [json.loads(l, parse_int=float)["questionId"] for l in open(a + "/r.jsonl")]
assert all(isinstance(i, int) and 0 < i <= 2**53 - 1 and float(i) == d for i, d in zip(ids, as_doubles)), ids
# answers and confidence as the store holds them and as `ask` computes them
dump = {r["questionId"]: r for r in map(json.loads, open(a + "/dump"))}
errs = {r["questionId"]: r for r in map(json.loads, open(a + "/dump_err"))}
ask = {}
for l in open(a + "/ask"):
    d, p, k, lp = l.split()
    ask[(d, int(p), questions[int(k) - 1])] = float(lp)
assert len(ask) == 8, ask
for r in rows:
    if r["document"] == "broken.pdf":
        assert r["answer"] is None and r["mean_logprob"] is None and "broken.pdf" in r["error"], r
        assert errs[r["questionId"]]["reason"] == r["error"], r
        continue
    s = dump[r["questionId"]]
    assert r["error"] is None and r["answer"] == s["answer"] and r["mean_logprob"] == s["mean_logprob"], r
    assert s["page_id"] == r["page_id"] and s["question"] == r["question"], (r, s)
    assert abs(r["mean_logprob"] - ask[(r["document"], r["page"], r["question"])]) <= 1.5e-4, r
assert len(dump) + len(errs) == len(rows)
# CSV (RFC 4180: CRLF, quoted fields) and JSON hold the same rows
raw = open(a + "/r.csv", "rb").read()
assert raw.count(b"\r\n") == len(rows) + 1 and raw.count(b"\n") == len(rows) + 1
assert b'"Who signed, ""and"" when?"' in raw
table = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
keys = ["questionId", "document", "page", "page_id", "question", "answer", "mean_logprob", "error"]
assert table[0] == keys, table[0]
def cell(v):
    return "" if v is None else str(v)
for t, r in zip(table[1:], rows):
    assert t[:6] == [cell(r[k]) for k in keys[:6]] and t[7] == cell(r["error"]), (t, r)
    assert (t[6] == "" and r["mean_logprob"] is None) or float(t[6]) == r["mean_logprob"], (t, r)
assert json.load(open(a + "/r.out", encoding="utf-8")) == rows
print(ids[0])
PY
then
    qid=$(tail -1 "$A/check")
    if "$DOCMINT" store get "$A/out" "$qid" | python3 -c 'import json,sys; r = json.load(sys.stdin); sys.exit(r["questionId"] != int(sys.argv[1]) or r["page_id"] != "a.png")' "$qid"; then
        ok "export jsonl/csv/json: 10 rows in corpus order, ids exact as doubles, store get $qid"
    else
        bad "store get $qid"
    fi
else
    bad "archive export: $(tail -5 "$A/check" 2>/dev/null) $(head -c 300 "$A/exp_err")"
fi
# The stored records carry document and page as fields of their own
# (read from Python with the generated schema, as any other reader would).
PY=""
for p in ${PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import lmdb, google.protobuf' 2>/dev/null; then
        PY=$p
        break
    fi
done
if [ -n "$PY" ] && make -s python-schemas PY_GEN="$T/py" >/dev/null 2>&1 &&
    DOCMINT_PYGEN="$T/py" "$PY" - "$A" >"$A/pyrec" 2>&1 <<'PY'
import json, sys
sys.path.insert(0, "schemas/python")
import dmstore
a = sys.argv[1]
rows = {r["questionId"]: r for r in map(json.loads, open(a + "/r.jsonl"))}
n = 0
with dmstore.open_store(a + "/out") as st:
    for m in list(st.records()) + list(st.errors()):
        r = rows[m.question_id]
        assert (m.document, m.page) == (r["document"], r["page"]), (m, r)
        n += 1
assert n == len(rows), n
PY
then
    ok "records hold document and page ($(grep -c . "$A/r.jsonl") answer and error records)"
else
    bad "records' document and page: ${PY:-no python3 with lmdb and protobuf} $(tail -3 "$A/pyrec" 2>/dev/null)"
fi
# A JSON-lines corpus naming pages out of order: rows come by document
# (first named first), then page, then question; the largest allowed id
# goes through the store, the export and store get unchanged.
J="$T/jl"
mkdir -p "$J"
cp jobs/demo/page.png "$J/a.png"
cp $DATA/images/multi.tif "$J/m.tif"
cat >"$J/c.jsonl" <<'JSONL'
{"id": 5, "question": "What is the date?", "image": "m.tif", "page": 2}
{"id": 9007199254740991, "question": "What is the date?", "image": "a.png"}
{"id": 3, "question": "Who signed?", "image": "m.tif", "page": 0}
{"id": 4, "question": "What is the date?", "image": "m.tif", "page": 0}
{"id": 7, "question": "Who signed?", "image": "a.png"}
JSONL
printf '{"stage": "infer", "model": "%s", "output": "%s", "threads": 1, "max_length": 24,
 "endpoint": "tcp://127.0.0.1:0", "corpus": {"format": "jsonl", "path": "%s"}}\n' \
    "$T/model" "$J/out" "$J/c.jsonl" >"$J/job.json"
if "$DOCMINT" run "$J/job.json" --quiet >"$J/run" 2>&1 &&
    "$DOCMINT" export "$J/out" -o "$J/r.jsonl" 2>/dev/null &&
    python3 - "$J/r.jsonl" <<'PY'
import json, sys
rows = [json.loads(l, parse_int=float) for l in open(sys.argv[1])]
got = [(r["document"], r["page"], r["questionId"]) for r in rows]
want = [("m.tif", 0, 3), ("m.tif", 0, 4), ("m.tif", 2, 5), ("a.png", 0, 9007199254740991), ("a.png", 0, 7)]
sys.exit(0 if got == want and all(r["error"] is None for r in rows) else 1)
PY
then
    if "$DOCMINT" store get "$J/out" 9007199254740991 | grep -q '^{"questionId":9007199254740991,'; then
        ok "export of a JSON-lines corpus: document, page, question order; id 2^53-1 intact"
    else
        bad "store get 9007199254740991"
    fi
else
    bad "JSON-lines export: $(head -c 300 "$J/run") $(head -c 300 "$J/r.jsonl" 2>/dev/null)"
fi
# A store made before 53-bit ids (records, no meta question_ids) is
# refused by a rerun of an archive job, with one line naming the store.
sed "s|$A/out|$A/old|" "$A/job.json" >"$A/job_old.json"
if echo '{"questionId": 4372367986747441736, "answer": "x"}' | "$DOCMINT" store import "$A/old" 2>/dev/null &&
    ! "$DOCMINT" run "$A/job_old.json" --quiet >"$A/old_out" 2>&1 &&
    [ "$(wc -l <"$A/old_out")" -eq 1 ] && grep -q "$A/old: the store was made before archive questionIds became 53-bit" "$A/old_out"; then
    ok "a store with 63-bit archive ids is refused by a rerun"
else
    bad "old store rerun: $(cat "$A/old_out")"
fi
expect_error "export: a store without a job" "no job in the store's meta" \
    "$DOCMINT" export "$A/old" -o "$A/x.csv"
expect_error "export: unknown format" "--format xml" "$DOCMINT" export "$A/out" --format xml -o "$A/x"
expect_error "export: format not told by the name" "cannot tell the format" "$DOCMINT" export "$A/out" -o "$A/x.txt"
# a document added after the run: its questions have no record yet
cp jobs/demo/page.png "$A/docs/c.png"
expect_error "export: questions not in the store refused" "2 of 12 questions have no record" \
    "$DOCMINT" export "$A/out" -o "$A/x.csv"
if "$DOCMINT" export "$A/out" -o "$A/x.csv" --partial 2>/dev/null &&
    [ "$(grep -c 'not in the store' "$A/x.csv")" -eq 2 ] && [ "$(wc -l <"$A/x.csv")" -eq 13 ]; then
    ok "export --partial: every row, the missing ones say so"
else
    bad "export --partial: $(head -c 300 "$A/x.csv")"
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
# a student that lowercases its questions: with the Donut tokenizer
# (tokenizer-a) beside its prompt.json, its prompt for a question in
# capitals is the teacher's for the same question in lowercase
mkdir -p "$T/tok-lc"
cp $DATA/tokenizer-a/*.json $DATA/tokenizer-a/*.model "$T/tok-lc/"
if "$DOCMINT" prune $DATA/tiny-a --plan $DATA/tiny-a/plan1.json -o "$T/student-lc" --lowercase-questions >/dev/null &&
    cp "$T/student-lc/prompt.json" "$T/tok-lc/" &&
    printf '%s\n' '{"text": "WHAT IS THE DATE ON ÉCOLE FORM X?"}' >"$T/qu.jsonl" &&
    printf '%s\n' '{"text": "what is the date on école form x?"}' >"$T/ql.jsonl" &&
    "$DOCMINT" tokenize "$T/tok-lc" --prompt <"$T/qu.jsonl" >"$T/lc_upper" &&
    "$DOCMINT" tokenize $DATA/tokenizer-a --prompt <"$T/ql.jsonl" >"$T/t_lower" &&
    "$DOCMINT" tokenize $DATA/tokenizer-a --prompt <"$T/qu.jsonl" >"$T/t_upper" &&
    cmp -s "$T/lc_upper" "$T/t_lower" && ! cmp -s "$T/t_upper" "$T/t_lower" &&
    grep -q '"pieces":\["<s_docvqa>","<s_question>",' "$T/lc_upper" && grep -q '"</s_question>","<s_answer>"\]' "$T/lc_upper" &&
    [ "$(cat "$T/student-lc/prompt.json")" = '{"lowercase_questions": true}' ] && [ ! -e "$T/student1/prompt.json" ]; then
    ok "prune --lowercase-questions: prompt.json; the prompt for a question in capitals is the teacher's for it in lowercase"
else
    bad "lowercase student: $(cat "$T/lc_upper" "$T/t_lower" 2>&1 | head -c 400)"
fi
printf '%s\n' '{"lowercase_questions": "yes"}' >"$T/tok-lc/prompt.json"
expect_error "tokenize --prompt: a prompt.json whose flag is not a boolean" "tok-lc/prompt.json: lowercase_questions must be true or false" \
    "$DOCMINT" tokenize "$T/tok-lc" --prompt
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
# --table1 on the full-size config alone: the paper's figures within 0.1%
# (encoder 0.6%), the feed-forward row exactly 2 x 1024 x 4096 multiply-adds
# at each of 42 + 43 + ... + 75 = 1,989 positions
if "$DOCMINT" params jobs/configs/donut-base.json --table1 --json >"$T/t1.json" &&
    python3 - "$T/t1.json" >"$T/t1" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["flops"]
out = []
for r, tol in zip(f["table1"], (0.006, 0.001, 0.001, 0.001, 0.001)):
    rel = r["docmint_paper_convention"] / r["paper"] - 1
    assert abs(rel) < tol, (r, rel)
    out.append("%s %+.2f%%" % (r["module"].split(",")[0], 100 * rel))
m = {x["name"]: x["macs"] for x in f["paper"]["modules"]}
assert f["paper"]["positions"] == sum(range(42, 76)) == 1989
assert m["M2"] == 2 * 1024 * 4096 * 1989, m["M2"]
print(", ".join(out))
PY
then ok "params --table1: $(cat "$T/t1")"
else bad "params --table1: $(cat "$T/t1" 2>/dev/null) $(head -c 300 "$T/t1.json")"; fi
# a student's FLOPs: S1 keeps heads 1,2 of 4 (half the teacher's), M1 is gone
if "$DOCMINT" params $DATA/tiny-a --flops --prompt 7 --new 5 --json >"$T/ft.json" &&
    "$DOCMINT" params "$T/student1" --flops --prompt 7 --new 5 --json >"$T/fs.json" &&
    python3 - "$T/ft.json" "$T/fs.json" >"$T/fcmp" <<'PY'
import json, sys
t, s = (json.load(open(a))["flops"] for a in sys.argv[1:3])
for conv in ("paper", "docmint"):
    tm = {x["name"]: x["macs"] for x in t[conv]["modules"]}
    sm = {x["name"]: x["macs"] for x in s[conv]["modules"]}
    assert 2 * sm["S1"] == tm["S1"], (conv, sm["S1"], tm["S1"])
    assert sm["M1"] == 0 and tm["M1"] > 0
    assert sm["encoder"] == tm["encoder"] and sm["unembedding"] == tm["unembedding"]
print("ok")
PY
then ok "params --flops of a student: kept heads and removed sub-layers"
else bad "params --flops of a student: $(cat "$T/fcmp" 2>/dev/null)"; fi
# a masked student: half of each decoder weight row; params counts the rest
if "$DOCMINT" prune $DATA/tiny-a --unstructured magnitude --sparsity 0.5 -o "$T/masked" >/dev/null &&
    "$DOCMINT" params "$T/masked" --flops --prompt 7 --new 5 >"$T/mp.txt" &&
    grep -q "^M0 *66176 *33408 " "$T/mp.txt" && grep -q "dense FLOPs above are what it computes" "$T/mp.txt"; then
    ok "params of a masked student: M0 keeps 66176 - (256 x 128 + 128 x 256) / 2 = 33408 non-zero weights; FLOPs stay dense"
else
    bad "params of a masked student: $(head -c 400 "$T/mp.txt")"
fi
# --budget 0.07: 7% of the teacher's layers (the paper's base) kept; rows
# drop whole weights, so a little more (at most 0.5 points on tiny-a)
if "$DOCMINT" prune $DATA/tiny-a --unstructured magnitude --budget 0.07 -o "$T/b7" >/dev/null &&
    "$DOCMINT" params "$T/b7" --json >"$T/b7.json" &&
    share=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["nonzero_layers"]/d["teacher_layers"]; print("%.4f" % s) if 0.07 <= s < 0.075 else sys.exit(1)' "$T/b7.json"); then
    ok "prune --budget 0.07: $share of the teacher's layers non-zero"
else
    bad "prune --budget 0.07: $(head -c 300 "$T/b7.json")"
fi
expect_error "prune: budget below what biases and LayerNorms hold" "below the smallest possible, 0.0109" \
    "$DOCMINT" prune $DATA/tiny-a --unstructured magnitude --budget 0.001 -o "$T/b0"
expect_error "prune: sparsity out of range" "--sparsity 1.5: needs a number at least 0 and less than 1" \
    "$DOCMINT" prune $DATA/tiny-a --unstructured magnitude --sparsity 1.5 -o "$T/m2"
expect_error "prune: wanda without calibration" "wanda needs --calibration STORE and --corpus" \
    "$DOCMINT" prune $DATA/tiny-a --unstructured wanda --sparsity 0.5 -o "$T/m3"
expect_error "prune: unknown unstructured method" "the methods are magnitude and wanda" \
    "$DOCMINT" prune $DATA/tiny-a --unstructured random --sparsity 0.5 -o "$T/m4"
expect_error "prune: masking a masked student" "already a masked student" \
    "$DOCMINT" prune "$T/masked" --unstructured magnitude --sparsity 0.5 -o "$T/m5"
expect_error "params --table1 on another config" "--table1 is for the full-size Donut" \
    "$DOCMINT" params $DATA/tiny-a --table1
expect_error "params --new 0" "--new needs a positive whole number" \
    "$DOCMINT" params $DATA/tiny-a --flops --new 0
expect_error "params: more positions than the decoder has" "need 69 positions; the decoder has 64" \
    "$DOCMINT" params $DATA/tiny-a --flops --prompt 60 --new 10
if [ ! -e "$T/s_rm" ] && [ -z "$(ls -A "$T" | grep '\.tmp-')" ]; then
    ok "a failed prune leaves no folder behind"
else
    bad "a failed prune left files: $(ls -a "$T")"
fi

echo "cli: synth"
# A mixed corpus with corrupted twins on 1 and 2 threads: the same files;
# every split file and the twins' file read as a corpus by `validate`, with
# the pages and questions the files hold; a font folder without fonts is
# one clear line.
syn_ok=1
for t in 1 2; do
    "$DOCMINT" synth "$T/syn$t" --docs 24 --seed 4 --width 480 --height 640 --corrupt \
        --threads $t >"$T/synout$t" 2>&1 || syn_ok=0
done
if [ $syn_ok -eq 1 ] && diff -r "$T/syn1" "$T/syn2" >/dev/null &&
    grep -q "24 documents (train 20, val 2, test 2), 24 pages of 480x640, 72 questions" "$T/synout1"; then
    ok "synth: $(head -1 "$T/synout1" | sed 's/^[^:]*: //'); the same files on 1 and 2 threads"
else
    bad "synth on 1 and 2 threads: $(cat "$T/synout1" "$T/synout2" | head -5)"
fi
for f in train_v1.0_withQT.json val_v1.0_withQT.json test_v1.0.json corrupt_v1.0_withQT.json; do
    want=$(python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))['data']
print('%d pages, %d questions' % (len({e['image'] for e in d}), len(d)))" "$T/syn1/$f")
    printf '{"stage": "infer", "model": "%s", "output": "%s", "corpus": {"format": "docvqa", "path": "%s"}}\n' \
        "$T/model" "$T/synans" "$T/syn1/$f" >"$T/synjob.json"
    if "$DOCMINT" validate "$T/synjob.json" --corpus >"$T/synval" 2>&1 && grep -q ": $want\$" "$T/synval"; then
        ok "synth: $f reads as a corpus ($want)"
    else
        bad "synth: $f as a corpus: expected $want: $(cat "$T/synval")"
    fi
done
expect_error "synth without fonts names them and their packages" \
    "font missing: DejaVu Sans ($T/nofonts/dejavu/DejaVuSans.ttf, Debian package fonts-dejavu-core)" \
    "$DOCMINT" synth "$T/synx" --docs 1 --font-dir "$T/nofonts"
expect_error "synth --augment with a bad item" "unknown item \"tilt\"" \
    "$DOCMINT" synth "$T/synx" --augment tilt=2

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

echo "cli: run: exit status, retry, reruns, and what validate refuses (docs/running.md)"
# A synthetic corpus of one page and three questions; a copy whose page is
# corrupt gives three error records.
R="$T/run"
mkdir -p "$R"
"$DOCMINT" synth "$R/c" --docs 3 --seed 3 --quiet
cp -r "$R/c" "$R/bad"
img=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"][0]["image"])' "$R/c/train_v1.0_withQT.json")
printf 'not an image' >"$R/bad/$img"
# job NAME MEMBERS...: a job file in $R using the model of the ask tests
job() {
    n=$1
    shift
    printf '{"model": "%s", "endpoint": "tcp://127.0.0.1:0", "quiet": true, %s}\n' "$T/model" "$*" >"$R/$n.json"
}
# status CMD...: the exit status, output to $T/out and $T/err
status() {
    "$@" >"$T/out" 2>"$T/err"
    echo $?
}
# errors/answers STORE: counts from store dump (not from the meta counts)
dumped() { "$DOCMINT" store dump "$1" ${2:-} 2>/dev/null | grep -c questionId; }
job bad '"output": "out/deep/er", "corpus": {"path": "bad/train_v1.0_withQT.json"}'
st=$(status "$DOCMINT" run "$R/bad.json")
if [ "$st" -eq 3 ] && [ "$(dumped "$R/out/deep/er" --errors)" -eq 3 ] && [ "$(dumped "$R/out/deep/er")" -eq 0 ]; then
    ok "run: items ended in errors: exit 3, 3 error records written (output parents created)"
else
    bad "run with a corrupt page: status $st, $(cat "$T/err")"
fi
st=$(status "$DOCMINT" run "$R/bad.json")
[ "$st" -eq 3 ] && ok "run: a rerun over the same errors exits 3 again (they count as done)" ||
    bad "rerun with errors: status $st"
cp "$R/c/$img" "$R/bad/$img"
st=$(status "$DOCMINT" run "$R/bad.json" --retry-errors)
if [ "$st" -eq 0 ] && [ "$(dumped "$R/out/deep/er" --errors)" -eq 0 ] && [ "$(dumped "$R/out/deep/er")" -eq 3 ]; then
    ok "run --retry-errors: the page fixed, the 3 questions answered, no error left, exit 0"
else
    bad "--retry-errors: status $st, $(cat "$T/err")"
fi
# the retried answers are those of a run that never failed
job good '"output": "out/good", "corpus": {"path": "c/train_v1.0_withQT.json"}'
if [ "$(status "$DOCMINT" run "$R/good.json")" -eq 0 ] &&
    "$DOCMINT" store dump "$R/out/good" | python3 -c 'import json,sys; [print(json.loads(l)["questionId"], json.loads(l)["answer"]) for l in sys.stdin]' >"$R/a1" &&
    "$DOCMINT" store dump "$R/out/deep/er" | python3 -c 'import json,sys; [print(json.loads(l)["questionId"], json.loads(l)["answer"]) for l in sys.stdin]' >"$R/a2" &&
    cmp -s "$R/a1" "$R/a2"; then
    ok "retried answers equal those of a clean run"
else
    bad "retried answers differ: $(diff "$R/a1" "$R/a2" | head -3)"
fi
# Reruns with other settings into the same store: refused, naming both values.
job bf16 '"output": "out/good", "corpus": {"path": "c/train_v1.0_withQT.json"}, "precision": "bf16"'
job maxlen '"output": "out/good", "corpus": {"path": "c/train_v1.0_withQT.json"}, "max_length": 20'
job other '"output": "out/good", "corpus": {"path": "c/val_v1.0_withQT.json"}'
expect_error "rerun with bf16 into an fp32 store: refused" "made with precision fp32, this job has bf16" \
    "$DOCMINT" run "$R/bf16.json"
expect_error "rerun with another max_length: refused" "this job has 20" "$DOCMINT" run "$R/maxlen.json"
expect_error "rerun with another corpus: refused, naming both" "made from corpus $R/c/train_v1.0_withQT.json, this job reads corpus $R/c/val_v1.0_withQT.json" \
    "$DOCMINT" run "$R/other.json"
st=$(status "$DOCMINT" run "$R/bf16.json" --force-new)
old=$(ls -d "$R/out/good.old-"* 2>/dev/null | head -1)
if [ "$st" -eq 0 ] && [ -n "$old" ] && [ "$(dumped "$old")" -eq 3 ] && [ "$(dumped "$R/out/good")" -eq 3 ] &&
    grep -qF "moved to $old" "$T/err" &&
    [ "$("$DOCMINT" store stat "$R/out/good" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["meta"]["precision"])')" = bf16 ]; then
    ok "--force-new: the old store moved aside ($(basename "$old")), a fresh bf16 store made"
else
    bad "--force-new: status $st, $(cat "$T/err")"
fi
# Archives: another questions file is another corpus; one more question extends it.
mkdir -p "$R/arch" && cp "$R/c/$img" "$R/arch/p1.png"
printf 'What is the date?\n' >"$R/q1.txt"
printf 'Who is the vendor?\n' >"$R/q2.txt"
printf 'What is the date?\nWho is the vendor?\n' >"$R/q12.txt"
job a1 '"output": "out/arch", "corpus": {"path": "arch", "format": "archive", "questions": "q1.txt"}'
job a2 '"output": "out/arch", "corpus": {"path": "arch", "format": "archive", "questions": "q2.txt"}'
job a12 '"output": "out/arch", "corpus": {"path": "arch", "format": "archive", "questions": "q12.txt"}'
if [ "$(status "$DOCMINT" run "$R/a1.json")" -eq 0 ]; then
    expect_error "archive rerun with another questions file: refused" "with questions $R/q1.txt, this job reads corpus $R/arch with questions $R/q2.txt" \
        "$DOCMINT" run "$R/a2.json"
    st=$(status "$DOCMINT" run "$R/a12.json")
    [ "$st" -eq 0 ] && [ "$(dumped "$R/out/arch")" -eq 2 ] &&
        ok "archive rerun with one more question resumes (2 answers)" || bad "archive q1 -> q12: status $st $(cat "$T/err")"
else
    bad "archive run: $(cat "$T/err")"
fi
# What validate (and run, before any work) refuse.
job cl '"stage": "cache-logits", "output": "out/cl", "corpus": {"path": "c/test_v1.0.json"}'
expect_error "validate --corpus: cache-logits without gold answers" "3 of 3 questions have no gold answer" \
    "$DOCMINT" validate "$R/cl.json" --corpus
expect_error "run: cache-logits without gold answers, refused before any work" "no gold answer" \
    "$DOCMINT" run "$R/cl.json"
[ ! -e "$R/out/cl" ] && ok "the refused cache-logits job made no store" || bad "refused job left $R/out/cl"
job clarch '"stage": "cache-logits", "output": "out/cl", "corpus": {"path": "arch", "format": "archive", "questions": "q1.txt"}'
expect_error "validate: cache-logits on an archive" "an archive has none" "$DOCMINT" validate "$R/clarch.json"
job an '"stage": "analyze", "output": "out/an", "corpus": {"path": "c/test_v1.0.json"}'
expect_error "validate --corpus: analyze without gold answers" "no gold answer" \
    "$DOCMINT" validate "$R/an.json" --corpus
printf '{"model": "%s/nomodel", "output": "out/x", "corpus": {"path": "c/train_v1.0_withQT.json"}}\n' "$R" >"$R/nomodel.json"
expect_error "validate: a model folder that does not exist" "model $R/nomodel: No such file or directory" \
    "$DOCMINT" validate "$R/nomodel.json"
job img '"output": "out/x", "corpus": {"path": "arch/p1.png", "format": "archive", "questions": "q1.txt"}'
expect_error "validate: corpus.path is an image" "arch/p1.png: is a PNG image, not a folder or a list file of documents" \
    "$DOCMINT" validate "$R/img.json"
expect_error "run: corpus.path is an image, the same message" "is a PNG image" "$DOCMINT" run "$R/img.json"
job par '"output": "q1.txt/x", "corpus": {"path": "c/train_v1.0_withQT.json"}'
expect_error "validate: an output under a file" "$R/q1.txt is not a folder" "$DOCMINT" validate "$R/par.json"
job deep '"output": "new/a/b/store", "corpus": {"path": "c/train_v1.0_withQT.json"}'
if "$DOCMINT" validate "$R/deep.json" >/dev/null 2>&1 && [ ! -e "$R/new" ]; then
    ok "validate: an output whose parents are missing is valid (run creates them) and nothing is made"
else
    bad "validate of an output with missing parents"
fi
expect_error "run: unknown flag" "--retry" "$DOCMINT" run "$R/good.json" --retry

# OpenMP waits passively unless the user chose (libgomp prints the values it
# read with OMP_DISPLAY_ENV=verbose; the last block is the one in force).
spin() { env "$@" OMP_DISPLAY_ENV=verbose "$DOCMINT" run --help 2>&1 >/dev/null | sed -n "s/.*GOMP_SPINCOUNT = '\([0-9]*\)'.*/\1/p" | tail -1; }
if [ "$(spin -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT)" = 0 ] && [ "$(spin -u OMP_WAIT_POLICY GOMP_SPINCOUNT=4321)" = 4321 ] &&
    [ "$(spin -u GOMP_SPINCOUNT OMP_WAIT_POLICY=active)" = 30000000000 ]; then
    ok "run: OpenMP threads wait passively by default (spin count 0); the user's GOMP_SPINCOUNT or OMP_WAIT_POLICY is kept"
else
    bad "OpenMP wait policy: default $(spin -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT), user 4321 -> $(spin -u OMP_WAIT_POLICY GOMP_SPINCOUNT=4321)"
fi

for c in ask forward analyze-item tokenize detokenize init preprocess bench prune params export worker-key run validate synth compare; do
    if "$DOCMINT" $c --help >"$T/help" 2>&1 && [ -s "$T/help" ]; then ok "$c --help"; else bad "$c --help"; fi
done

echo "cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
