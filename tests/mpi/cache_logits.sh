#!/bin/sh
# The cache-logits stage: `mpirun -n 3 docmint run cache-job.json` stores
# every (question, gold answer) of a synthetic corpus exactly once; a run
# over part of the corpus is resumed by the full job (only the rest is
# computed) and a rerun of a complete job computes nothing; the cached
# values equal a live recomputation of the teacher (docmint cache-check at
# full: every log-probability within float16 rounding); a store made by
# another teacher (another seed) is refused by the job and by cache-check
# with a message naming the teacher; `store stat` reports bytes per
# cached position.  With keep_features: the encoder output of every page
# is stored once (a partial run resumed, a rerun adds nothing), equals the
# live encoder (docmint preprocess + forward of the same image) within
# float16 rounding when read back from Python, and a job with another
# keep_features is refused.
. tests/mpi/lib.sh
echo "mpi: cache-logits with 3 ranks, resume, cache-check against the live teacher"
make_model "$T/model"
make_corpus "$T/corpus" 6
C="$T/corpus/train_v1.0_withQT.json"
# The first half of the questions, same images: the partial run.
python3 - "$C" "$T/corpus/half.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["data"] = d["data"][: len(d["data"]) // 2]
json.dump(d, open(sys.argv[2], "w"))
PY
CACHE='"stage": "cache-logits", "top_k": "full", "temperatures": [2.0], "commit_every": 3'
write_job "$T/half-job.json" "$T/model" "$T/corpus/half.json" "$T/logits" "$CACHE"
write_job "$T/cache-job.json" "$T/model" "$C" "$T/logits" "$CACHE"

# check_pairs STORE CORPUS: every (questionId, answer index) once, no errors.
check_pairs() {
    "$DOCMINT" store dump "$1" >"$T/pairs.rec" 2>"$T/pairs.err" &&
        "$DOCMINT" store dump "$1" --errors >"$T/pairs.errs" 2>>"$T/pairs.err" &&
        python3 - "$2" "$T/pairs.rec" "$T/pairs.errs" <<'PY'
import json, sys
want = [(q["questionId"], i) for q in json.load(open(sys.argv[1]))["data"] for i in range(len(q["answers"]))]
got = [(r["questionId"], r["answer_index"]) for r in map(json.loads, open(sys.argv[2]))]
errs = [l for l in open(sys.argv[3]) if l.strip()]
problems = []
if len(got) != len(set(got)): problems.append("a pair stored twice")
if set(got) != set(want): problems.append("%d missing, %d extra" % (len(set(want) - set(got)), len(set(got) - set(want))))
if errs: problems.append("%d error records: %s" % (len(errs), errs[0][:200]))
print("; ".join(problems) if problems else "%d (question, answer) pairs" % len(got))
sys.exit(1 if problems else 0)
PY
}
half=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$T/corpus/half.json")
total=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$C")

if $MPIRUN -n 3 "$DOCMINT" run "$T/half-job.json" >"$T/half.log" 2>&1 &&
    msg=$(check_pairs "$T/logits" "$T/corpus/half.json"); then
    ok "mpirun -n 3 cache-logits over half the corpus: $msg"
else
    bad "partial run: $(tail -3 "$T/half.log") $msg"
fi
if $MPIRUN -n 3 "$DOCMINT" run "$T/cache-job.json" >"$T/run.log" 2>&1 &&
    [ "$(meta "$T/logits" held_at_start)" = "$half" ] &&
    grep -q "done: $total/$total questions, $((total - half)) computed" "$T/run.log"; then
    ok "the full job resumes: $(grep 'done:' "$T/run.log")"
else
    bad "resume: held $(meta "$T/logits" held_at_start): $(tail -3 "$T/run.log")"
fi
if msg=$(check_pairs "$T/logits" "$C"); then ok "every (question, answer) exactly once: $msg"; else bad "store: $msg"; fi

# store get in a logit store: every answer record of one question (the one
# with the most gold answers), against the corpus.
qid=$(python3 -c 'import json,sys; print(max(json.load(open(sys.argv[1]))["data"], key=lambda q: len(q["answers"]))["questionId"])' "$C")
if "$DOCMINT" store get "$T/logits" "$qid" >"$T/get.out" 2>"$T/get.err" &&
    msg=$(python3 - "$C" "$qid" "$T/get.out" <<'PY'
import json, sys
q = next(q for q in json.load(open(sys.argv[1]))["data"] if q["questionId"] == int(sys.argv[2]))
got = [json.loads(l) for l in open(sys.argv[3])]
ok = [(r["questionId"], r["answer_index"], r["answer"]) for r in got] == \
     [(q["questionId"], i, a) for i, a in enumerate(q["answers"])]
print("%d answer records of questionId %s" % (len(got), sys.argv[2]))
sys.exit(0 if ok else 1)
PY
); then
    ok "store get of a logit store: $msg"
else
    bad "store get of a logit store: $(cat "$T/get.err") $(head -c 300 "$T/get.out")"
fi
fp=$(meta "$T/logits" model_fingerprint)
[ "$(meta "$T/logits" kind)" = logits ] && [ -n "$fp" ] &&
    [ "$(meta "$T/logits" teacher_fingerprint)" = "$fp" ] &&
    [ -n "$(meta "$T/logits" tokenizer_fingerprint)" ] &&
    [ "$(meta "$T/logits" top_k)" = full ] && [ "$(meta "$T/logits" temperatures)" = "[1, 2]" ] &&
    [ "$(meta "$T/logits" corpus)" = "$C" ] &&
    ok "meta: kind, teacher and tokenizer fingerprints, top_k, temperatures, corpus" ||
    bad "meta: $("$DOCMINT" store stat "$T/logits" 2>&1 | head -30)"
if $MPIRUN -n 3 "$DOCMINT" run "$T/cache-job.json" --quiet >"$T/rerun.log" 2>&1 &&
    [ "$(meta "$T/logits" computed_this_run)" = 0 ]; then
    ok "rerun of the complete job computes nothing"
else
    bad "rerun: computed $(meta "$T/logits" computed_this_run): $(tail -3 "$T/rerun.log")"
fi

# Faithful: cache-check recomputes the teacher live.
if "$DOCMINT" cache-check "$T/model" "$T/logits" --limit 1000 >"$T/check.out" 2>"$T/check.err" &&
    grep -q " 0 beyond float16 rounding" "$T/check.out"; then
    ok "cache-check at full: $(grep 'max |log p' "$T/check.out")"
else
    bad "cache-check: $(cat "$T/check.err") $(tail -3 "$T/check.out")"
fi
# ... against a student with other weights (same tokenizer files).
"$DOCMINT" init "$T/other" --config jobs/configs/tiny.json --seed 8 >/dev/null
mkdir -p "$T/student"
cp "$T/other/"* "$T/student/"
for f in tokenizer.json tokenizer_config.json added_tokens.json special_tokens_map.json; do
    [ -f "$T/model/$f" ] && cp "$T/model/$f" "$T/student/$f"
done
if "$DOCMINT" cache-check "$T/model" "$T/logits" --student "$T/student" >"$T/checks.out" 2>"$T/checks.err" &&
    python3 - "$T/checks.out" <<'PY'
import sys
rows = {l.split()[0]: l.split() for l in open(sys.argv[1]) if l[:1].isdigit() or l.startswith("full")}
full = rows["full"]
sys.exit(0 if len(rows) == 5 and float(full[3]) <= 1e-3 * max(float(full[2]), 1e-6) + 1e-6 else 1)
PY
then
    ok "cache-check with another student: kd at full equals the live kd ($(grep '^full' "$T/checks.out"))"
else
    bad "cache-check --student: $(cat "$T/checks.err") $(cat "$T/checks.out")"
fi

# Another teacher: the job and cache-check refuse the store, naming the teacher.
write_job "$T/other-job.json" "$T/other" "$C" "$T/logits" "$CACHE"
if ! "$DOCMINT" run "$T/other-job.json" >"$T/other.out" 2>"$T/other.err" &&
    grep -q "teacher mismatch" "$T/other.err" && grep -q "$fp" "$T/other.err"; then
    ok "a store of another teacher is refused: $(head -1 "$T/other.err")"
else
    bad "other teacher accepted: $(cat "$T/other.err")"
fi
if ! "$DOCMINT" cache-check "$T/other" "$T/logits" >/dev/null 2>"$T/ocheck.err" &&
    grep -q "teacher mismatch" "$T/ocheck.err"; then
    ok "cache-check refuses another teacher"
else
    bad "cache-check with another teacher: $(cat "$T/ocheck.err")"
fi
# Other settings: refused too (a store holds one k).
write_job "$T/k8-job.json" "$T/model" "$C" "$T/logits" '"stage": "cache-logits", "top_k": 8, "temperatures": [2.0]'
if ! "$DOCMINT" run "$T/k8-job.json" >/dev/null 2>"$T/k8.err" && grep -q "top_k full" "$T/k8.err"; then
    ok "a store made with another top_k is refused"
else
    bad "top_k mismatch: $(cat "$T/k8.err")"
fi

# Size: bytes per cached position.
if "$DOCMINT" store stat "$T/logits" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["positions"] > 0 and d["bytes_per_position"] > 2 * 1024 else 1)'; then
    ok "store stat: $("$DOCMINT" store stat "$T/logits" | grep '^bytes_per_position')"
else
    bad "store stat: $("$DOCMINT" store stat "$T/logits" 2>&1 | tail -4)"
fi
# The feature store: keep_features over every other question, then all of
# them: the second run revisits the pages of the first (their other
# questions) without asking for their features again.
python3 - "$C" "$T/corpus/odd.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["data"] = d["data"][::2]
json.dump(d, open(sys.argv[2], "w"))
PY
FEAT='"stage": "cache-logits", "top_k": 8, "keep_features": true, "commit_every": 3, "threads": 1'
write_job "$T/fhalf-job.json" "$T/model" "$T/corpus/odd.json" "$T/feat" "$FEAT"
write_job "$T/feat-job.json" "$T/model" "$C" "$T/feat" "$FEAT"
pages_of() {
    python3 -c 'import json,sys; print(len({q["image"] for q in json.load(open(sys.argv[1]))["data"]}))' "$1"
}
features() {
    "$DOCMINT" store stat "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["features"])'
}
if $MPIRUN -n 3 "$DOCMINT" run "$T/fhalf-job.json" >"$T/fhalf.log" 2>&1 &&
    [ "$(features "$T/feat")" = "$(pages_of "$T/corpus/odd.json")" ]; then
    ok "keep_features over every other question: $(features "$T/feat") pages of features"
else
    bad "keep_features, partial run: $(features "$T/feat") features: $(tail -3 "$T/fhalf.log")"
fi
msg=""
if $MPIRUN -n 3 "$DOCMINT" run "$T/feat-job.json" >"$T/feat.log" 2>&1 &&
    [ "$(features "$T/feat")" = "$(pages_of "$C")" ] && msg=$(check_pairs "$T/feat" "$C") &&
    [ "$(meta "$T/feat" features_this_run)" = $(($(pages_of "$C") - $(pages_of "$T/corpus/odd.json"))) ] &&
    $MPIRUN -n 3 "$DOCMINT" run "$T/feat-job.json" --quiet >"$T/frerun.log" 2>&1 &&
    [ "$(meta "$T/feat" computed_this_run)" = 0 ] && [ "$(features "$T/feat")" = "$(pages_of "$C")" ]; then
    ok "resumed: one feature record per page ($(features "$T/feat")), the revisited pages' not sent again, $msg; a rerun adds nothing"
else
    bad "keep_features, resume: $(features "$T/feat") features for $(pages_of "$C") pages, $(meta "$T/feat" features_this_run) sent by the last run: $(tail -3 "$T/feat.log") $msg"
fi
# Every page against the live encoder, read from Python.
if make -s python-schemas PY_GEN="$T/py" >"$T/pymake.log" 2>&1 &&
    DOCMINT_PYGEN="$T/py" /usr/bin/python3 - "$T/feat" "$T" "$DOCMINT" "$T/model" >"$T/fcheck.out" 2>&1 <<'PY'
import json, os, struct, subprocess, sys
import numpy as np
sys.path.insert(0, "schemas/python")
import dmstore
store, tmp, docmint, model = sys.argv[1:5]

def st_read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": "<f4", "I64": "<i8", "I32": "<i4"}[v["dtype"]]
        out[k] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt).reshape(v["shape"])
    return out

def st_write(path, tensors):
    head, blob = {}, b""
    for k, (dt, a) in tensors.items():
        b = a.tobytes()
        head[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [len(blob), len(blob) + len(b)]}
        blob += b
    h = json.dumps(head).encode()
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + blob)

# One thread, as the job's workers ("threads": 1): the same
# float32 sums, so only the float16 rounding stays.
one = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
n = over = 0
worst = 0.0
with dmstore.open_store(store) as st:
    for rec in st.features():
        got = st.get_features(rec.page_id)
        px = tmp + "/px.safetensors"
        subprocess.run([docmint, "preprocess", model, rec.image_path, "-o", px], check=True,
                       stdout=subprocess.DEVNULL)
        st_write(tmp + "/in.safetensors", {"pixel_values": ("F32", st_read(px)["pixel_values"]),
                                           "decoder_input_ids": ("I64", np.array([[0]], "<i8"))})
        subprocess.run([docmint, "forward", model, "--in", tmp + "/in.safetensors", "--out",
                        tmp + "/out.safetensors"], check=True, stdout=subprocess.DEVNULL, env=one)
        live = st_read(tmp + "/out.safetensors")["encoder.last_hidden_state"][0].astype(np.float64)
        if got.shape != live.shape:
            sys.exit("page %s: features %s, live encoder %s" % (rec.page_id, got.shape, live.shape))
        err = np.abs(got - live)
        over += int((err > np.abs(live) * 2.0 ** -11 + 2.0 ** -25).sum())
        worst = max(worst, float(err.max()))
        n += 1
print("%d pages, max |f16 - live| %.2e, %d values beyond float16 rounding" % (n, worst, over))
sys.exit(0 if n > 0 and over == 0 else 1)
PY
then
    ok "features read from Python equal the live encoder: $(cat "$T/fcheck.out")"
else
    bad "features vs the live encoder: $(tail -3 "$T/fcheck.out") $(tail -2 "$T/pymake.log")"
fi
if "$DOCMINT" cache-check "$T/model" "$T/feat" --limit 1000 >"$T/fcc.out" 2>"$T/fcc.err" &&
    grep -q "^features: $(pages_of "$C") pages, .* 0 beyond float16 rounding" "$T/fcc.out"; then
    ok "cache-check checks the features too: $(grep '^features:' "$T/fcc.out")"
else
    bad "cache-check of the features: $(cat "$T/fcc.err") $(tail -2 "$T/fcc.out")"
fi
write_job "$T/nofeat-job.json" "$T/model" "$C" "$T/feat" '"stage": "cache-logits", "top_k": 8'
if ! "$DOCMINT" run "$T/nofeat-job.json" >/dev/null 2>"$T/nofeat.err" &&
    grep -q "keep_features true" "$T/nofeat.err"; then
    ok "a feature store resumed without keep_features is refused"
else
    bad "keep_features mismatch: $(cat "$T/nofeat.err")"
fi
finish
