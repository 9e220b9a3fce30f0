#!/bin/sh
# The analyze stage: an in-process run stores one AnalysisRecord per
# (question, gold answer) of a synthetic corpus and ends with report.json,
# whose means, standard errors and counts equal a recomputation from the
# dumped records, figures and report.md; a record equals `docmint
# analyze-item` (checked against the reference file by tests/cli.sh) on
# the same page and sequence; `mpirun -n 3` gives the same store as the
# in-process run; a run over part of the corpus is resumed by the full
# job, and so is a run killed with SIGKILL; a site the model lacks is refused with one line naming the key, by
# run and by validate, and so is a corpus without gold answers.
. tests/mpi/lib.sh
echo "mpi: analyze in-process and with 3 ranks, report, resume"
make_model "$T/model"
make_corpus "$T/corpus" 2
C="$T/corpus/train_v1.0_withQT.json"
FULL='"stage": "analyze", "skip_sets": {"late": ["S1", "M1"]}, "patch_sites": ["C1.query"], "replacements": ["M1.out:=-C1.out"], "lens_question": 2'
write_job "$T/full-job.json" "$T/model" "$C" "$T/full" "$FULL"

# every (questionId, answer index) once, no errors
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

if "$DOCMINT" run "$T/full-job.json" >"$T/full.log" 2>&1 && msg=$(check_pairs "$T/full" "$C"); then
    ok "in-process analyze: $msg"
else
    bad "in-process analyze: $(tail -3 "$T/full.log") ${msg:-}"
fi

# report.json against the records: every mean, standard error and count
"$DOCMINT" store dump "$T/full" >"$T/full.rec" 2>/dev/null
if python3 - "$T/full.rec" "$T/full/report.json" "$C" <<'PY'; then
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
rep = json.load(open(sys.argv[2]))
def stats(vals):
    v = [x for x in vals if x is not None]
    n = len(v)
    m = sum(v) / n
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1) / n) if n > 1 else None
    return m, se, n
bad = []
checked = 0
assert rep["records"] == len(recs), "record count"
for field in ["nll_clean", "nll_corrupt", "nll_patch_query", "nll_m_last_cancels_c_last"]:
    m, se, n = stats([r[field] for r in recs])
    f = rep["fields"][field]
    checked += 1
    if abs(f["mean"] - m) > 1e-9 * max(1, abs(m)) or f["count"] != n or abs(f["stderr"] - se) > 1e-9:
        bad.append(field)
for field in ["nll_skip", "nll_reproject", "sa_entropy", "ca_variance", "nll_head_ablation", "atp_head"]:
    f = rep["fields"][field]
    for i in range(len(recs[0][field])):
        m, se, n = stats([r[field][i] for r in recs])
        checked += 1
        if abs(f["mean"][i] - m) > 1e-9 * max(1, abs(m)) or f["count"][i] != n:
            bad.append(f"{field}[{i}]")
m, se, n = stats([r["named"]["skip_set.late"] for r in recs])
checked += 1
if abs(rep["fields"]["named.skip_set.late"]["mean"] - m) > 1e-9 * max(1, abs(m)):
    bad.append("named.skip_set.late")
# the patching effect against the attribution estimate
xs = [a for r in recs for a in r["atp_head"]]
ys = [p - r["nll_corrupt"] for r in recs for p in r["nll_patch_head"]]
mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
r = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
checked += 1
if abs(rep["attribution_vs_patching"]["pearson"] - r) > 1e-6:
    bad.append("pearson")
# by question type, from the corpus's question_types
types = {q["questionId"]: q.get("question_types", []) for q in json.load(open(sys.argv[3]))["data"]}
names = sorted({t for ts in types.values() for t in ts})
if sorted(rep["by_question_type"]) != names:
    bad.append("question types")
for t in names:
    m, se, n = stats([r["nll_clean"] for r in recs if t in types[r["questionId"]]])
    g = rep["by_question_type"][t]
    checked += 1
    if abs(g["fields"]["nll_clean"]["mean"] - m) > 1e-9 * max(1, abs(m)) or g["records"] != n:
        bad.append("type " + t)
print(f"{checked} aggregates of {len(recs)} records, {len(names)} question types", ", ".join(bad[:5]))
sys.exit(1 if bad else 0)
PY
    ok "report.json equals the aggregates recomputed from the records (overall and by question type)"
else
    bad "report.json against the records"
fi
if [ -s "$T/full/report.md" ] && grep -q "figures/skip.png" "$T/full/report.md" &&
    grep -q "Logit lens of question 2" "$T/full/report.md" &&
    for f in skip reproject sa_entropy ca_variance head_ablation patch_head atp_head lens; do
        python3 tests/tools/png.py size "$T/full/figures/$f.png" >/dev/null || exit 1
    done; then
    ok "report.md, the 7 figures of the means and question 2's logit-lens grid"
else
    bad "report.md or figures missing"
fi

# the first record against analyze-item on the same page and sequence
python3 - "$T/full.rec" "$T/corpus" "$T/seq.st" >"$T/seq.txt" <<'PY'
import json, sys
from array import array
sys.path.insert(0, "tests/tools")
import st
r = json.loads(open(sys.argv[1]).readline())
st.save(sys.argv[3], {"decoder_input_ids": ("I64", [1, len(r["token_ids"])], array("q", r["token_ids"]))})
print(sys.argv[2] + "/" + r["page_id"], r["answer_start"])
PY
read -r IMG A <"$T/seq.txt"
if "$DOCMINT" preprocess "$T/model" "$IMG" -o "$T/px.st" >/dev/null 2>&1 &&
    python3 - "$T/px.st" "$T/seq.st" "$T/item-in.st" <<'PY' &&
import sys
sys.path.insert(0, "tests/tools")
import st
a, b = st.load(sys.argv[1]), st.load(sys.argv[2])
st.save(sys.argv[3], {"pixel_values": a["pixel_values"], "decoder_input_ids": b["decoder_input_ids"]})
PY
    "$DOCMINT" analyze-item "$T/model" --in "$T/item-in.st" --answer-start "$A" --out "$T/item.st" &&
    python3 - "$T/full.rec" "$T/item.st" <<'PY'
import json, sys
sys.path.insert(0, "tests/tools")
import st
r = json.loads(open(sys.argv[1]).readline())
g = st.load(sys.argv[2])
pairs = {"nll_clean": "nll.clean", "nll_skip": "nll.skip", "nll_reproject": "nll.reproject",
         "lens_target_logprob": "lens.target_logprob", "sa_entropy": "heads.sa_entropy",
         "ca_variance": "heads.ca_variance", "nll_head_ablation": "nll.head_ablation",
         "transcribe_entropy": "transcribe.all.entropy", "lens_top1": "lens.top1"}
worst = 0.0
for f, n in pairs.items():
    a = r[f] if isinstance(r[f], list) else [r[f]]
    b = list(g[n][2])
    assert len(a) == len(b), f
    worst = max(worst, max(abs(x - y) for x, y in zip(a, b)))
print(f"{len(pairs)} fields, worst difference {worst:.2e}")
sys.exit(0 if worst <= 1e-4 else 1)
PY
then
    ok "a stored record equals analyze-item on its page and sequence"
else
    bad "a stored record against analyze-item"
fi

# corruption by another page: with two pages each corrupts the other, so
# the first record's corrupted and patched NLLs are analyze-item's with the
# other page as --corrupt
write_job "$T/page-job.json" "$T/model" "$C" "$T/page" '"stage": "analyze", "analyses": ["patching"], "corruption": "page"'
OTHER=$(python3 -c '
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
pages = sorted({r["page_id"] for r in recs})
print(sys.argv[2] + "/" + [p for p in pages if p != recs[0]["page_id"]][0])' "$T/full.rec" "$T/corpus")
if "$DOCMINT" run "$T/page-job.json" >"$T/page.log" 2>&1 &&
    "$DOCMINT" store dump "$T/page" >"$T/page.rec" &&
    "$DOCMINT" preprocess "$T/model" "$OTHER" -o "$T/other.st" >/dev/null 2>&1 &&
    "$DOCMINT" analyze-item "$T/model" --in "$T/item-in.st" --corrupt "$T/other.st" --answer-start "$A" \
        --out "$T/item2.st" &&
    python3 - "$T/page.rec" "$T/item2.st" <<'PY'
import json, sys
sys.path.insert(0, "tests/tools")
import st
r = json.loads(open(sys.argv[1]).readline())
g = st.load(sys.argv[2])
d = max(abs(r["nll_corrupt"] - g["nll.corrupt"][2][0]), abs(r["nll_patch_query"] - g["nll.patch_query"][2][0]),
        max(abs(x - y) for x, y in zip(r["nll_patch_head"], g["nll.patch_head"][2])))
print(f"worst difference {d:.2e}")
sys.exit(0 if d <= 1e-4 else 1)
PY
then
    ok "corruption by another page: the record equals analyze-item with that page as --corrupt"
else
    bad "corruption by another page: $(tail -2 "$T/page.log")"
fi

# three ranks against one process, cheaper analyses
CHEAP='"stage": "analyze", "analyses": ["skip", "heads", "attribution"], "commit_every": 1'
write_job "$T/one-job.json" "$T/model" "$C" "$T/one" "$CHEAP"
write_job "$T/mpi-job.json" "$T/model" "$C" "$T/mpi" "$CHEAP"
if "$DOCMINT" run "$T/one-job.json" >"$T/one.log" 2>&1 &&
    $MPIRUN -n 3 "$DOCMINT" run "$T/mpi-job.json" >"$T/mpi.log" 2>&1 &&
    "$DOCMINT" store dump "$T/one" >"$T/one.rec" && "$DOCMINT" store dump "$T/mpi" >"$T/mpi.rec" &&
    python3 - "$T/one.rec" "$T/mpi.rec" <<'PY'
import json, math, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert [(r["questionId"], r["answer_index"]) for r in a] == [(r["questionId"], r["answer_index"]) for r in b]
worst = 0.0
for x, y in zip(a, b):
    for k in x:
        u = x[k] if isinstance(x[k], list) else [x[k]]
        v = y[k] if isinstance(y[k], list) else [y[k]]
        if k in ("question", "answer", "page_id", "named"):
            assert x[k] == y[k], k
            continue
        for p, q in zip(u, v):
            if p is None or q is None:
                assert p is None and q is None, k
            else:
                worst = max(worst, abs(p - q))
print(f"{len(a)} records, worst difference {worst:.2e}")
sys.exit(0 if worst <= 1e-4 else 1)
PY
then
    ok "mpirun -n 3 gives the in-process store"
else
    bad "mpirun -n 3 against in-process: $(tail -3 "$T/mpi.log")"
fi

# resume: half the questions, then the full job computes only the rest
python3 - "$C" "$T/corpus/half.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["data"] = d["data"][: len(d["data"]) // 2]
json.dump(d, open(sys.argv[2], "w"))
PY
write_job "$T/half-job.json" "$T/model" "$T/corpus/half.json" "$T/res" "$CHEAP"
write_job "$T/res-job.json" "$T/model" "$C" "$T/res" "$CHEAP"
half=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$T/corpus/half.json")
total=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$C")
if "$DOCMINT" run "$T/half-job.json" >"$T/half.log" 2>&1 &&
    "$DOCMINT" run "$T/res-job.json" >"$T/res.log" 2>&1 &&
    grep -q "done: $total/$total questions, $((total - half)) computed" "$T/res.log" &&
    msg=$(check_pairs "$T/res" "$C"); then
    ok "the full job resumes the half one: $(grep 'done:' "$T/res.log" | tail -1 | cut -c1-80)"
else
    bad "resume: $(tail -2 "$T/res.log") ${msg:-}"
fi

# kill -9 in the middle (every shard stalls 3 s, so the kill lands after
# the first page's records), then the same command: every pair once
write_job "$T/kill-job.json" "$T/model" "$C" "$T/kill" "$CHEAP"
DOCMINT_TEST_STALL_SECONDS=3 "$DOCMINT" run "$T/kill-job.json" --quiet >"$T/kill1.log" 2>&1 &
kp=$!
PIDS="$PIDS $kp"
if wait_stored "$T/kill" 1 120; then
    kill -9 "$kp"
    wait "$kp" 2>/dev/null
    n1=$(stored "$T/kill")
    if "$DOCMINT" run "$T/kill-job.json" >"$T/kill2.log" 2>&1 && msg=$(check_pairs "$T/kill" "$C") &&
        [ "$(meta "$T/kill" held_at_start)" -gt 0 ]; then
        ok "kill -9 with $n1 records stored, rerun resumes: $msg, $(meta "$T/kill" held_at_start) questions held"
    else
        bad "rerun after kill -9: $(tail -2 "$T/kill2.log") ${msg:-}"
    fi
else
    bad "no analysis record within 120 s: $(tail -3 "$T/kill1.log")"
    kill -9 "$kp" 2>/dev/null
fi

# the store of one setting is not resumed with another
write_job "$T/other-job.json" "$T/model" "$C" "$T/res" '"stage": "analyze", "analyses": ["skip"]'
if "$DOCMINT" run "$T/other-job.json" >/dev/null 2>"$T/other.err"; then
    bad "a store of other analyze settings was resumed"
elif [ "$(wc -l <"$T/other.err")" -eq 1 ] && grep -q 'the store was made with analyze {"analyses":\["skip","heads","attribution"\]' "$T/other.err"; then
    ok "a store of other analyze settings refused, naming both"
else
    bad "other settings: $(head -2 "$T/other.err")"
fi

# nor with another model (seed 8): the message names both
"$DOCMINT" init "$T/model8" --config jobs/configs/tiny.json --seed 8 >/dev/null
write_job "$T/m8-job.json" "$T/model8" "$C" "$T/res" "$CHEAP"
if "$DOCMINT" run "$T/m8-job.json" >/dev/null 2>"$T/m8.err"; then
    bad "an analysis store resumed with another model"
elif [ "$(wc -l <"$T/m8.err")" -eq 1 ] && grep -q "$(meta "$T/res" model_fingerprint)" "$T/m8.err" &&
    grep -q "model8 is " "$T/m8.err"; then
    ok "an analysis store refused to another model, naming both"
else
    bad "another model: $(head -2 "$T/m8.err")"
fi

# a site the model lacks: one line naming the key
write_job "$T/bad-job.json" "$T/model" "$C" "$T/bad" '"stage": "analyze", "patch_sites": ["C7.H3"]'
"$DOCMINT" run "$T/bad-job.json" >"$T/bad.out" 2>"$T/bad.err"
st=$?
if [ $st -ne 0 ] && [ "$(wc -l <"$T/bad.err")" -eq 1 ] && grep -q "patch_sites" "$T/bad.err" &&
    grep -q "C7.H3" "$T/bad.err"; then
    ok "unknown site refused: $(cat "$T/bad.err" | cut -c1-120)"
else
    bad "unknown site (status $st): $(head -3 "$T/bad.err")"
fi
if "$DOCMINT" validate "$T/bad-job.json" >/dev/null 2>"$T/vbad.err"; then
    bad "validate accepted a site the model lacks"
elif [ "$(wc -l <"$T/vbad.err")" -eq 1 ] && grep -q "patch_sites: site C7.H3" "$T/vbad.err"; then
    ok "validate refuses the unknown site too"
else
    bad "validate on an unknown site: $(head -2 "$T/vbad.err")"
fi
# a corpus without gold answers (the test split): refused at validate time
write_job "$T/noans-job.json" "$T/model" "$T/corpus/test_v1.0.json" "$T/noans" '"stage": "analyze"'
if "$DOCMINT" validate "$T/noans-job.json" --corpus >/dev/null 2>"$T/noans.err"; then
    bad "validate accepted a corpus without answers"
elif [ "$(wc -l <"$T/noans.err")" -eq 1 ] && grep -q "no gold answers" "$T/noans.err"; then
    ok "a corpus without gold answers refused by validate: $(cut -c1-90 "$T/noans.err")"
else
    bad "corpus without answers: $(head -2 "$T/noans.err")"
fi
finish
