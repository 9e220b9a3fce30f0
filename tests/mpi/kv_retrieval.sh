#!/bin/sh
# The analyze stage's key-value retrieval on a small mixed synthetic corpus
# with corrupted twins (docmint synth --corrupt): an in-process run stores
# the greedy answers of every paired question, the coordinator's values
# (from the corrupt corpus) and classes (recomputed here with the DocVQA
# normalisation); report.json's counts add up to the paired questions, by
# set and in all, and its shares sum to 1; report.md and the figure are
# written; `mpirun -n 2` gives the same answers; a store is not resumed
# with another corrupt corpus.  Bad input is one line
# naming the file: a twin page that does not exist, entries without their
# v_* fields, kv_retrieval without corrupt_corpus.
. tests/mpi/lib.sh
echo "mpi: analyze kv_retrieval in-process and with 2 ranks, report, bad input"
make_model "$T/model"
"$DOCMINT" synth "$T/corpus" --docs 10 --seed 11 --corrupt --width 480 --height 640 --quiet
C="$T/corpus/train_v1.0_withQT.json"
K="$T/corpus/corrupt_v1.0_withQT.json"
KV='"stage": "analyze", "analyses": ["kv_retrieval", "skip"], "corrupt_corpus": "'"$K"'", "kv_max_tokens": 8'
write_job "$T/job.json" "$T/model" "$C" "$T/one" "$KV"

check_kv() {
    "$DOCMINT" store dump "$1" >"$T/kv.rec" 2>"$T/kv.err" &&
        python3 - "$C" "$K" "$T/kv.rec" "$1/report.json" <<'PY'
import json, math, sys
corpus = json.load(open(sys.argv[1]))["data"]
twins = {e["questionId"]: e for e in json.load(open(sys.argv[2]))["data"]}
recs = [json.loads(l) for l in open(sys.argv[3])]
rep = json.load(open(sys.argv[4]))["kv_retrieval"]
norm = lambda s: " ".join(s.strip().lower().split())
def cls(a, e):
    c, n, p = norm(e["v_clean"]), norm(e["v_new"]), norm(e["v_pos"])
    if c == n or c == p or n == p:
        return "tied"
    a = norm(a)
    return "positional" if a == p else "semantic" if a == n else "memorised" if a == c else "failure"
paired = [q["questionId"] for q in corpus if q["questionId"] in twins]
problems = []
count = {}
for r in recs:
    kv, e = r["kv_retrieval"], twins.get(r["questionId"])
    if r["answer_index"] != 0 or e is None:
        if kv is not None:
            problems.append("kv fields on question %d" % r["questionId"])
        continue
    if kv is None:
        problems.append("no kv fields on question %d" % r["questionId"])
        continue
    for k in ("v_clean", "v_new", "v_pos"):
        if kv[k] != e[k]:
            problems.append("%s of %d" % (k, r["questionId"]))
    if kv["set"] != e["kv_set"]:
        problems.append("set of %d" % r["questionId"])
    for w, ans in (("class", "answer_patched"), ("control_class", "answer_control")):
        if kv[w] != cls(kv[ans], e):
            problems.append("%s of %d: %s, recomputed %s" % (w, r["questionId"], kv[w], cls(kv[ans], e)))
    s = count.setdefault(kv["set"], {"patched": {}, "control": {}, "clean_ok": 0})
    s["clean_ok"] += kv["class"] != "tied" and norm(kv["answer_clean"]) == norm(e["v_clean"])
    s["patched"][kv["class"]] = s["patched"].get(kv["class"], 0) + 1
    s["control"][kv["control_class"]] = s["control"].get(kv["control_class"], 0) + 1
if rep["items"] != len(paired):
    problems.append("report items %d, paired questions %d" % (rep["items"], len(paired)))
classes = ["positional", "semantic", "memorised", "failure"]
for name, g in list(rep["by_set"].items()) + [("all", rep)]:
    if g["counted"] + g["tied"] != g["items"]:
        problems.append("%s: counted + tied != items" % name)
    for run in ("patched", "control"):
        n = sum(g[run][c]["count"] for c in classes)
        if n != g["counted"]:
            problems.append("%s %s: counts sum to %d, counted %d" % (name, run, n, g["counted"]))
        if g["counted"] and abs(sum(g[run][c]["share"] for c in classes) - 1) > 1e-9:
            problems.append("%s %s: shares do not sum to 1" % (name, run))
        if name != "all":
            for c in classes:
                if g[run][c]["count"] != count[name][run].get(c, 0):
                    problems.append("%s %s %s: report %d, records %d" % (name, run, c, g[run][c]["count"], count[name][run].get(c, 0)))
    if name != "all" and g["clean_correct"] != count[name]["clean_ok"]:
        problems.append("%s: clean_correct %d, records %d" % (name, g["clean_correct"], count[name]["clean_ok"]))
    if name != "all" and g["tied"] != count[name]["patched"].get("tied", 0):
        problems.append("%s: tied" % name)
sets = sorted(rep["by_set"])
print("; ".join(problems) if problems else "%d paired questions of %d, sets %s, %d counted" % (len(paired), len(corpus), ",".join(sets), rep["counted"]))
sys.exit(1 if problems or len(sets) < 2 else 0)
PY
}

if "$DOCMINT" run "$T/job.json" >"$T/one.log" 2>&1 && msg=$(check_kv "$T/one"); then
    ok "in-process kv_retrieval: $msg"
else
    bad "in-process kv_retrieval: $(tail -3 "$T/one.log") ${msg:-}"
fi
if [ -s "$T/one/figures/kv_retrieval.png" ] && grep -q "## Key-value retrieval" "$T/one/report.md" &&
    python3 -c 'import sys; sys.exit(open(sys.argv[1], "rb").read(8) != b"\x89PNG\r\n\x1a\n")' \
        "$T/one/figures/kv_retrieval.png"; then
    ok "report.md section and figures/kv_retrieval.png written"
else
    bad "report.md or the figure missing"
fi

# two ranks: the same greedy answers and classes
write_job "$T/mpi-job.json" "$T/model" "$C" "$T/mpi" "$KV"
if $MPIRUN -n 2 "$DOCMINT" run "$T/mpi-job.json" >"$T/mpi.log" 2>&1 &&
    "$DOCMINT" store dump "$T/one" >"$T/one.rec" 2>/dev/null &&
    "$DOCMINT" store dump "$T/mpi" >"$T/mpi.rec" 2>/dev/null &&
    python3 - "$T/one.rec" "$T/mpi.rec" <<'PY'; then
import json, sys
a = [(r["questionId"], r["answer_index"], r["kv_retrieval"]) for r in map(json.loads, open(sys.argv[1]))]
b = [(r["questionId"], r["answer_index"], r["kv_retrieval"]) for r in map(json.loads, open(sys.argv[2]))]
sys.exit(0 if a == b and a else 1)
PY
    ok "mpirun -n 2 gives the same answers and classes"
else
    bad "mpirun -n 2: $(tail -3 "$T/mpi.log")"
fi

# the store is resumed by the same job (nothing recomputed), not by one
# with another twins' file
cp "$K" "$T/corpus/other.json"
write_job "$T/other-job.json" "$T/model" "$C" "$T/one" \
    '"stage": "analyze", "analyses": ["kv_retrieval", "skip"], "corrupt_corpus": "'"$T/corpus/other.json"'", "kv_max_tokens": 8'
if "$DOCMINT" run "$T/job.json" >"$T/again.log" 2>&1 && grep -q " 0 computed" "$T/again.log" &&
    ! "$DOCMINT" run "$T/other-job.json" >/dev/null 2>"$T/other.err" &&
    [ "$(wc -l <"$T/other.err")" -eq 1 ] && grep -q "made with corrupt_corpus" "$T/other.err"; then
    ok "resumed by the same job, refused with another corrupt_corpus"
else
    bad "resume: $(tail -1 "$T/again.log") $(head -2 "$T/other.err" 2>/dev/null)"
fi

# bad input: one line naming the file, from validate and from run
one_line() { # NAME JOBFILE PATTERN...
    name=$1 job=$2
    shift 2
    "$DOCMINT" validate "$job" --corpus >/dev/null 2>"$T/v.err"
    vs=$?
    "$DOCMINT" run "$job" >/dev/null 2>"$T/r.err"
    rs=$?
    for f in "$T/v.err" "$T/r.err"; do
        [ "$(wc -l <"$f")" -eq 1 ] || { bad "$name: $(head -3 "$f")"; return; }
        for p in "$@"; do
            grep -qF -- "$p" "$f" || { bad "$name: '$p' not in: $(cat "$f")"; return; }
        done
    done
    if [ $vs -ne 0 ] && [ $rs -ne 0 ]; then
        ok "$name refused: $(cut -c1-150 "$T/r.err")"
    else
        bad "$name accepted (validate $vs, run $rs)"
    fi
}
python3 - "$K" "$T/corpus/nopage.json" "$T/corpus/nov.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["data"][1]["image"] = "documents/missing_corrupt.png"
json.dump(d, open(sys.argv[2], "w"))
d = json.load(open(sys.argv[1]))
for e in d["data"]:
    for k in ("v_clean", "v_new", "v_pos"):
        e.pop(k)
json.dump(d, open(sys.argv[3], "w"))
PY
write_job "$T/nopage.json" "$T/model" "$C" "$T/bad1" \
    '"stage": "analyze", "analyses": ["kv_retrieval"], "corrupt_corpus": "'"$T/corpus/nopage.json"'"'
one_line "a twin page that does not exist" "$T/nopage.json" "$T/corpus/nopage.json" \
    "missing_corrupt.png does not exist"
write_job "$T/nov.json" "$T/model" "$C" "$T/bad2" \
    '"stage": "analyze", "analyses": ["kv_retrieval"], "corrupt_corpus": "'"$T/corpus/nov.json"'"'
one_line "questions without v_* fields" "$T/nov.json" "$T/corpus/nov.json" 'no "v_clean" string'
write_job "$T/nocc.json" "$T/model" "$C" "$T/bad3" '"stage": "analyze", "analyses": ["kv_retrieval"]'
one_line "kv_retrieval without corrupt_corpus" "$T/nocc.json" "corrupt_corpus: required"
finish
