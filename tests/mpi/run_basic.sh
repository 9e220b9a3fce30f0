#!/bin/sh
# (0) `mpirun -n 3 docmint run job.json` completes with every question
# answered exactly once, and each answer is what `docmint ask` gives for the
# same page and questions (same model: same text, same tokens, same
# log-probability).  The same job without mpirun (in-process worker) gives
# the same records; a rerun of a complete job computes nothing; --quiet
# prints nothing; a bad job is one line of error.
. tests/mpi/lib.sh
echo "mpi: run with 3 ranks, compare with ask, singleton, rerun"
make_model "$T/model"
make_corpus "$T/corpus" 8
C="$T/corpus/train_v1.0_withQT.json"
total=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$C")
write_job "$T/job.json" "$T/model" "$C" "$T/out" '"commit_every": 4'

if $MPIRUN -n 3 "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1; then
    ok "mpirun -n 3 docmint run completes"
else
    bad "mpirun -n 3 docmint run failed: $(tail -5 "$T/run.log")"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
if grep -q "docmint run: done: $total/$total questions, $total computed" "$T/run.log"; then
    ok "summary line: $(grep 'done:' "$T/run.log")"
else
    bad "no summary line: $(tail -3 "$T/run.log")"
fi
[ "$(meta "$T/out" kind)" = answers ] && [ "$(meta "$T/out" schema_version)" = 1 ] &&
    [ -n "$(meta "$T/out" job)" ] && [ -n "$(meta "$T/out" started_at)" ] &&
    [ "$(meta "$T/out" count_records)" = "$total" ] &&
    ok "meta: kind, schema_version, job, started_at, counts" ||
    bad "meta incomplete: $("$DOCMINT" store stat "$T/out" 2>&1 | head -20)"

# The same questions with `docmint ask`, page by page, in corpus order.
python3 - "$C" >"$T/pages.txt" <<'PY'
import json, sys
pages = {}
for q in json.load(open(sys.argv[1]))["data"]:
    pages.setdefault(q["image"], []).append(q)
for img, qs in pages.items():
    print(json.dumps({"image": img, "ids": [q["questionId"] for q in qs], "questions": [q["question"] for q in qs]}))
PY
: >"$T/ask.jsonl"
askfail=0
while IFS= read -r line; do
    img=$(printf '%s' "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"])')
    printf '%s' "$line" | python3 -c 'import json,sys; print("\0".join(json.load(sys.stdin)["questions"]), end="")' >"$T/qs"
    # questions as arguments, NUL-separated
    if ! xargs -0 "$DOCMINT" ask "$T/model" "$T/corpus/$img" --verbose <"$T/qs" >"$T/ask.out" 2>"$T/ask.err"; then
        askfail=1
        bad "ask $img: $(head -2 "$T/ask.err")"
        break
    fi
    python3 - "$line" "$T/ask.out" "$T/ask.err" >>"$T/ask.jsonl" <<'PY'
import json, re, sys
page = json.loads(sys.argv[1])
answers = open(sys.argv[2]).read().split("\n")[:len(page["ids"])]
stats = re.findall(r"q(\d+): (\d+) tokens, mean log-prob (-?[0-9.]+)", open(sys.argv[3]).read())
for qid, a, (_, n, lp) in zip(page["ids"], answers, stats):
    print(json.dumps({"questionId": qid, "answer": a, "ntok": int(n), "lp": float(lp)}))
PY
done <"$T/pages.txt"
if [ $askfail -eq 0 ]; then
    "$DOCMINT" store dump "$T/out" >"$T/run.jsonl"
    if msg=$(python3 - "$T/ask.jsonl" "$T/run.jsonl" <<'PY'
import json, sys
ask = {r["questionId"]: r for r in map(json.loads, open(sys.argv[1]))}
run = {r["questionId"]: r for r in map(json.loads, open(sys.argv[2]))}
bad = []
for qid, a in ask.items():
    r = run.get(qid)
    if r is None or r["answer"] != a["answer"] or len(r["token_ids"]) != a["ntok"] \
            or abs(r["mean_logprob"] - a["lp"]) > 1.5e-4:
        bad.append(qid)
if len(ask) != len(run):
    bad.append("count %d vs %d" % (len(ask), len(run)))
print("%d answers compared, %d differ %s" % (len(ask), len(bad), bad[:5]))
sys.exit(1 if bad else 0)
PY
    ); then ok "answers equal docmint ask: $msg"; else bad "answers differ from docmint ask: $msg"; fi
fi

# Without mpirun: the in-process worker, same records (timings aside).
write_job "$T/job1.json" "$T/model" "$C" "$T/out1"
if "$DOCMINT" run "$T/job1.json" --quiet >"$T/single.log" 2>&1 && [ ! -s "$T/single.log" ]; then
    ok "docmint run without mpirun (in-process worker), --quiet prints nothing"
else
    bad "singleton run: $(tail -3 "$T/single.log")"
fi
"$DOCMINT" store dump "$T/out1" >"$T/single.jsonl" 2>/dev/null
if python3 - "$T/run.jsonl" "$T/single.jsonl" <<'PY'
import json, sys
def load(p):
    out = {}
    for r in map(json.loads, open(p)):
        r.pop("seconds", None)
        out[r["questionId"]] = r
    return out
sys.exit(0 if load(sys.argv[1]) == load(sys.argv[2]) else 1)
PY
then ok "singleton records equal the mpirun records"; else bad "singleton records differ"; fi

# A rerun of a complete job: nothing computed, nothing dispatched.
if "$DOCMINT" run "$T/job1.json" >"$T/rerun.log" 2>&1 &&
    [ "$(meta "$T/out1" computed_this_run)" = 0 ] && [ "$(meta "$T/out1" held_at_start)" = "$total" ] &&
    grep -q "0 computed" "$T/rerun.log"; then
    ok "rerun of a complete job computes nothing: $(grep 'done:' "$T/rerun.log")"
else
    bad "rerun: computed $(meta "$T/out1" computed_this_run), held $(meta "$T/out1" held_at_start): $(tail -2 "$T/rerun.log")"
fi
# ... also under mpirun (the worker ranks learn there is nothing to do).
if $MPIRUN -n 3 "$DOCMINT" run "$T/job.json" --quiet >"$T/rerun3.log" 2>&1 && [ "$(meta "$T/out" computed_this_run)" = 0 ]; then
    ok "rerun under mpirun -n 3 computes nothing"
else
    bad "rerun under mpirun: $(tail -3 "$T/rerun3.log")"
fi

# A bad job: one line naming the problem, non-zero exit, with and without mpirun.
write_job "$T/bad.json" "$T/nomodel" "$C" "$T/outbad"
"$DOCMINT" run "$T/bad.json" >"$T/bad.out" 2>"$T/bad.err"
st=$?
if [ $st -eq 1 ] && [ "$(wc -l <"$T/bad.err")" -eq 1 ] && grep -q nomodel "$T/bad.err"; then
    ok "missing model: one line, exit 1: $(cat "$T/bad.err")"
else
    bad "missing model: exit $st: $(head -3 "$T/bad.err")"
fi
$MPIRUN -n 3 "$DOCMINT" run "$T/bad.json" >"$T/bad3.out" 2>&1
st=$?
if [ $st -ne 0 ] && [ "$(grep -c nomodel "$T/bad3.out")" -eq 1 ]; then
    ok "missing model under mpirun -n 3: exit $st, the error once"
else
    bad "missing model under mpirun: exit $st: $(head -5 "$T/bad3.out")"
fi
"$DOCMINT" run >/dev/null 2>&1
[ $? -eq 2 ] && ok "no job file: usage error" || bad "no job file: wrong status"
"$DOCMINT" run --help | grep -q "mpirun" && ok "run --help" || bad "run --help"
"$DOCMINT" worker --help | grep -q -- "--keys" && ok "worker --help" || bad "worker --help"
finish
