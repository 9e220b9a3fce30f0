#!/bin/sh
# docmint compare end to end on the tiny model: a synthetic corpus split by
# page, the analysis and the logit cache made once, mint (with and without
# lowercased questions), magnitude and an unknown method at half the
# layers' parameters, each student distilled for 3 steps and scored.
# compare.json is checked against computations made here: the parts
# against the corpus, each row's ANLS by `docmint eval` and by the DocVQA
# formula written out below, its parameters and FLOPs by `docmint params`;
# the lowercasing student gives the same prompt and the same answer for a
# question in capitals as in lowercase; the failing method is a row with
# its error while the others complete; a rerun runs no step again; a spec
# with an unknown key is refused in one line.
. tests/mpi/lib.sh
echo "mpi: compare (split, analyze, cache, plan/mask, distill, infer, eval) and the lowercase flag"
PY=/usr/bin/python3
make_model "$T/random"
make_corpus "$T/corpus" 12
# A teacher that answers: the random model taught every gold answer of the
# corpus (cross-entropy alone, as jobs/demo.sh does), so that the scores
# compared below are not all 0.  It has seen the evaluation pages: the
# numbers say nothing about the methods, only that compare reports them.
C="$T/corpus/train_v1.0_withQT.json"
write_job "$T/teach-cache.json" "$T/random" "$C" "$T/teach-logits" '"stage": "cache-logits", "top_k": 8, "first_answer_only": true, "keep_features": true, "threads": 1'
cat >"$T/teach.json" <<JOB
{"stage": "distill", "model": "$T/random", "output": "$T/teach", "corpus": {"path": "$C"}, "threads": 1,
 "distill": {"logits": "$T/teach-logits", "alpha": 0, "steps": 150, "batch_size": 8, "lr": 0.003,
             "warmup_steps": 10, "weight_decay": 0, "checkpoint_every": 150}}
JOB
if "$DOCMINT" run "$T/teach-cache.json" --quiet >"$T/teach.log" 2>&1 && "$DOCMINT" run "$T/teach.json" --quiet >>"$T/teach.log" 2>&1; then
    ln -s "$T/teach/student" "$T/teacher"
else
    bad "teaching the tiny teacher: $(tail -2 "$T/teach.log")"
    finish
fi
cat >"$T/spec.json" <<'SPEC'
{"teacher": "teacher", "corpus": "corpus/train_v1.0_withQT.json",
 "split": {"seed": 5},
 "budgets": [0.5], "methods": ["mint", "magnitude", "nosuch"], "lowercase_questions": "both",
 "analysis": {"analyses": ["skip", "reproject", "ablation", "heads"]},
 "distill": {"steps": 3, "batch_size": 2, "lr": 0.001, "temperature": 2.0, "alpha": 0.5,
             "checkpoint_every": 3},
 "top_k": 8, "max_length": 64, "threads": 1, "timing": {"repeat": 2}}
SPEC
O="$T/out"
"$DOCMINT" compare "$T/spec.json" -o "$O" >"$T/cmp.log" 2>&1
rc=$?
if [ $rc -eq 3 ] && [ -s "$O/compare.json" ] && [ -s "$O/compare.md" ]; then
    ok "compare ran: exit 3 (a method failed), compare.json and compare.md written"
else
    bad "compare: exit $rc: $(tail -3 "$T/cmp.log")"
    finish
fi

# the parts: disjoint pages, every question of the corpus in one part, the
# page counts the shares give (10 pages: 2, 2, 6)
if msg=$($PY - "$T/corpus/train_v1.0_withQT.json" "$O/split" <<'PY'
import json, sys
corpus = json.load(open(sys.argv[1]))["data"]
parts = [json.load(open(f"{sys.argv[2]}/{p}.json"))["data"] for p in ("analysis", "selection", "evaluation")]
pages = [{q["image"] for q in p} for p in parts]
assert not (pages[0] & pages[1]) and not (pages[0] & pages[2]) and not (pages[1] & pages[2]), "a page in two parts"
ids = sorted(q["questionId"] for p in parts for q in p)
assert ids == sorted(q["questionId"] for q in corpus), "questions lost or repeated"
for p, pg in zip(parts, pages):  # every question of a page in its page's part
    assert len(p) == sum(1 for q in corpus if q["image"] in pg)
n = [len(p) for p in pages]
assert n == [2, 2, 6], n
print("pages %s, questions %s" % (n, [len(p) for p in parts]))
PY
); then ok "split by page: $msg"; else bad "split: $msg"; fi

# every row against independent computations
if msg=$($PY - "$O/compare.json" "$O/split/evaluation.json" "$DOCMINT" <<'PY'
import json, subprocess, sys
doc = json.load(open(sys.argv[1]))
ann = json.load(open(sys.argv[2]))["data"]
exe = sys.argv[3]
rows = {r["id"]: r for r in doc["rows"]}
assert [r["id"] for r in doc["rows"]] == ["teacher", "mint-0.5", "mint-0.5-lc", "magnitude-0.5", "nosuch-0.5", "nosuch-0.5-lc"], list(rows)
for rid in ("nosuch-0.5", "nosuch-0.5-lc"):
    bad = rows[rid]
    assert bad["status"] == "failed" and "plan" in bad["error"] and bad["anls"] is None, bad

def lev(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]

def anls(preds):
    p = {x["questionId"]: x["answer"] for x in preds}
    total = 0.0
    for q in ann:
        pred = p.get(q["questionId"], "")
        # the official script: 1 - the smallest normalized distance, set
        # to 0 when below the 0.5 threshold (so a distance of exactly 0.5
        # scores 0.5)
        nls = []
        for g in q["answers"]:
            a, b = " ".join(g.strip().lower().split()), " ".join(pred.strip().lower().split())
            d = max(len(g.upper()), len(pred.upper()))
            nls.append(lev(a, b) / d if d else 0.0)
        score = 1 - min(nls)
        total += score if score >= 0.5 else 0.0
    return total / len(ann)

def params(model):
    return json.loads(subprocess.run([exe, "params", model, "--flops", "--json"], capture_output=True, check=True).stdout)

tp = params(rows["teacher"]["model"])
out = []
for rid in ("teacher", "mint-0.5", "mint-0.5-lc", "magnitude-0.5"):
    r = rows[rid]
    assert r["status"] == "complete", r
    d = r["folder"]
    mine = anls(json.load(open(d + "/predictions.json")))
    rep = d + "/re-eval.json"
    subprocess.run([exe, "eval", "--predictions", d + "/predictions.json", "--annotations", sys.argv[2],
                    "--report", rep], capture_output=True, check=True)
    theirs = json.load(open(rep))["anls"]
    assert abs(r["anls"] - mine) < 1e-9 and abs(r["anls"] - theirs) < 1e-9, (rid, r["anls"], mine, theirs)
    assert r["questions"] == len(ann), (r["questions"], len(ann))
    p = params(r["model"])
    kept = p["nonzero_layers"] if p["masked"] else p["layers"]
    assert r["params"]["layers"] == kept and abs(r["params"]["layers_share"] - kept / p["teacher_layers"]) < 1e-12, rid
    for conv in ("docmint", "paper"):
        want = p["flops"][conv]["layers"] / tp["flops"][conv]["layers"]
        assert abs(r["flops"][conv]["layers_share"] - want) < 1e-12, (rid, conv)
    assert r["decode_ms_per_token"] > 0 and r["timed_tokens"] > 0, rid
    if rid != "teacher":
        assert r["model"].endswith("/distill/student"), r["model"]
        assert r["params"]["layers_share"] <= 0.5 + 1e-9 or p["masked"], (rid, r["params"])
    out.append("%s ANLS %.4f layers %.3f flops %.3f" % (rid, r["anls"], r["params"]["layers_share"], r["flops"]["docmint"]["layers_share"]))
# the scores are not all 0, so the formula above was put to work
assert rows["teacher"]["anls"] > 0.5 and sum(1 for r in rows.values() if r["anls"]) >= 3, [r["anls"] for r in rows.values()]
# the masked student keeps the dense FLOPs, the structured one fewer
assert rows["magnitude-0.5"]["flops"]["docmint"]["layers_share"] == 1.0
assert rows["mint-0.5"]["flops"]["docmint"]["layers_share"] < 1.0
print("; ".join(out))
PY
); then ok "rows against docmint eval, the ANLS formula and docmint params: $msg"; else bad "rows: $msg"; fi

# the lowercasing student: the flag in its folders, the distill stage
# restating the teacher's sequences, the same prompt and answer either case
LC="$O/students/mint-0.5-lc"
NLC="$O/students/mint-0.5"
printf '{"text":"WHAT IS THE TOTAL?"}\n{"text":"what is the total?"}\n' >"$T/q.jsonl"
"$DOCMINT" tokenize "$LC/distill/student" --prompt <"$T/q.jsonl" >"$T/lc.tok" 2>&1
"$DOCMINT" tokenize "$NLC/distill/student" --prompt <"$T/q.jsonl" >"$T/nlc.tok" 2>&1
if grep -q '"lowercase_questions": true' "$LC/pruned/prompt.json" "$LC/distill/student/prompt.json" &&
    [ ! -e "$NLC/distill/student/prompt.json" ] &&
    grep -q "lowercases its questions" "$LC/steps/distill.log" &&
    [ "$(sed -n 1p "$T/lc.tok")" = "$(sed -n 2p "$T/lc.tok")" ] &&
    [ "$(sed -n 2p "$T/nlc.tok")" = "$(sed -n 2p "$T/lc.tok")" ] &&
    [ "$(sed -n 1p "$T/nlc.tok")" != "$(sed -n 1p "$T/lc.tok")" ]; then
    ok "lowercase flag: prompt.json in the pruned and distilled folders; \"WHAT IS THE TOTAL?\" tokenized as \"what is the total?\""
else
    bad "lowercase flag: $(cat "$T/lc.tok" "$T/nlc.tok" | cut -c1-200)"
fi
IMG=$(ls "$T/corpus/documents/"*.png | head -1)
a1=$("$DOCMINT" ask "$LC/distill/student" "$IMG" "WHAT IS THE TOTAL?" --json --max-length 40 --threads 1 2>&1 | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d["answer"], d["tokens"], d["mean_logprob"])')
a2=$("$DOCMINT" ask "$LC/distill/student" "$IMG" "what is the total?" --json --max-length 40 --threads 1 2>&1 | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d["answer"], d["tokens"], d["mean_logprob"])')
if [ -n "$a1" ] && [ "$a1" = "$a2" ]; then
    ok "ask on the lowercasing student: the same answer, tokens and log-probability in either case ($a1)"
else
    bad "ask with the flag: '$a1' vs '$a2'"
fi

if $PY tests/tools/png.py size "$O/pareto.png" | grep -q '^960 640$'; then
    ok "pareto.png: a 960 x 640 PNG"
else
    bad "pareto.png: $($PY tests/tools/png.py size "$O/pareto.png" 2>&1)"
fi

# a rerun resumes, with the binary copied elsewhere too (a rebuilt or
# installed docmint): no step runs again, the same result
before=$(ls -l --time-style=+%s.%N "$O"/*/steps/*.done "$O"/students/*/steps/*.done | md5sum)
cp "$O/compare.json" "$T/first.json"
cp "$DOCMINT" "$T/docmint-copy"
"$T/docmint-copy" compare "$T/spec.json" -o "$O" >"$T/cmp2.log" 2>&1
rc=$?
after=$(ls -l --time-style=+%s.%N "$O"/*/steps/*.done "$O"/students/*/steps/*.done | md5sum)
if [ $rc -eq 3 ] && [ "$before" = "$after" ] && cmp -s "$T/first.json" "$O/compare.json" &&
    [ "$(grep -c 'done before' "$T/cmp2.log")" -ge 20 ]; then
    ok "rerun by a copy of the binary: every complete step skipped ($(grep -c 'done before' "$T/cmp2.log") steps), the same compare.json"
else
    bad "rerun: exit $rc, $(grep -c 'done before' "$T/cmp2.log") skipped; $(tail -2 "$T/cmp2.log")"
fi

# a spec with an unknown key, shares that do not add up, a batch larger
# than the selection part
sed 's/"top_k": 8/"top_k": 8, "topk": 3/' "$T/spec.json" >"$T/bad1.json"
sed 's/"seed": 5/"seed": 5, "evaluation": 0.5/' "$T/spec.json" >"$T/bad2.json"
sed 's/"batch_size": 2/"batch_size": 100/' "$T/spec.json" >"$T/bad3.json"
for b in "bad1:topk" "bad2:must be 1, got 0.9" "bad3:distill.batch_size: 100 is more than the"; do
    f=${b%%:*}
    if "$DOCMINT" compare "$T/$f.json" -o "$T/$f" >/dev/null 2>"$T/$f.err"; then
        bad "$f: accepted"
    elif [ "$(wc -l <"$T/$f.err")" -eq 1 ] && grep -qF "${b#*:}" "$T/$f.err" && grep -qF "$T/$f.json" "$T/$f.err"; then
        ok "refused in one line: $(cat "$T/$f.err")"
    else
        bad "$f: $(cat "$T/$f.err")"
    fi
done
finish
