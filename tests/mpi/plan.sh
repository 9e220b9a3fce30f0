#!/bin/sh
# docmint plan: an analysis store of the tiny model (two synthetic pages)
# turned into plans by every method (mint, enumerate; finercut, michel and
# mint's check with the analysed corpus as selection corpus); each plan
# loads through `docmint prune` and its student runs through `docmint
# forward`; the kept
# parameters are within the budget, counted here from config.json's
# shapes; enumerate's best plan is the best subset found here from
# report.json (the store's skip set where one matches, else the sum of
# single-skip increases); refusals: a budget below the smallest plan, a
# store that is not an analysis store, one lacking the analyses a method
# needs, one of another model, a measured method without --corpus, a
# selection corpus without answers.
. tests/mpi/lib.sh
echo "mpi: plan from an analysis store (mint, enumerate, finercut, michel, refusals)"
make_model "$T/model"
make_corpus "$T/corpus" 2
C="$T/corpus/train_v1.0_withQT.json"
write_job "$T/an-job.json" "$T/model" "$C" "$T/an" '"stage": "analyze", "skip_sets": {"late": ["S1", "M1"]}'
if "$DOCMINT" run "$T/an-job.json" --quiet >"$T/an.log" 2>&1; then
    ok "analysis store made: $(meta "$T/an" count_records) records"
else
    bad "analyze job: $(tail -3 "$T/an.log")"
    finish
fi

# params_ok MODEL PLAN.json LIMIT: the plan's kept parameters of the decoder
# layers, counted from the config's shapes, are at most LIMIT
params_ok() {
    python3 - "$1/config.json" "$2" "$3" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["decoder"]
p = json.load(open(sys.argv[2]))
D, F, H, L = c["d_model"], c["decoder_ffn_dim"], c["decoder_attention_heads"], c["decoder_layers"]
hd = D // H
def attn(n):  # q, k, v rows of n heads with biases, out_proj columns, its bias, LayerNorm
    return 3 * (n * hd * D + n * hd) + D * n * hd + D + 2 * D
ffn = D * F + F + F * D + D + 2 * D
total = L * (2 * attn(H) + ffn)
kept = 0
for l in range(L):
    for k in "SCM":
        name = f"{k}{l}"
        if not p["keep"].get(name, True):
            continue
        kept += ffn if k == "M" else attn(len(p.get("heads", {}).get(name, range(H))))
limit = float(sys.argv[3]) if "." in sys.argv[3] else int(sys.argv[3])
if isinstance(limit, float):
    limit = limit * total
print(f"{kept} of {total} parameters ({kept / total:.4f}), limit {limit:.0f}")
sys.exit(0 if kept <= limit else 1)
PY
}

# an input for forward: a page and a stored training sequence
"$DOCMINT" store dump "$T/an" >"$T/an.rec"
python3 - "$T/an.rec" "$T/corpus" "$T/seq.st" >"$T/seq.txt" <<'PY'
import json, sys
from array import array
sys.path.insert(0, "tests/tools")
import st
r = json.loads(open(sys.argv[1]).readline())
st.save(sys.argv[3], {"decoder_input_ids": ("I64", [1, len(r["token_ids"])], array("q", r["token_ids"]))})
print(sys.argv[2] + "/" + r["page_id"])
PY
read -r IMG <"$T/seq.txt"
"$DOCMINT" preprocess "$T/model" "$IMG" -o "$T/px.st" >/dev/null 2>&1
python3 - "$T/px.st" "$T/seq.st" "$T/in.st" <<'PY'
import sys
sys.path.insert(0, "tests/tools")
import st
a, b = st.load(sys.argv[1]), st.load(sys.argv[2])
st.save(sys.argv[3], {"pixel_values": a["pixel_values"], "decoder_input_ids": b["decoder_input_ids"]})
PY

# student_runs NAME PLAN.json: prune, then forward with generation
student_runs() {
    "$DOCMINT" prune "$T/model" --plan "$2" -o "$T/st-$1" >/dev/null 2>"$T/st-$1.err" &&
        "$DOCMINT" forward "$T/st-$1" --in "$T/in.st" --out "$T/fw-$1.st" --generate 64 \
            >/dev/null 2>>"$T/st-$1.err" &&
        python3 - "$T/fw-$1.st" <<'PY'
import math, sys
sys.path.insert(0, "tests/tools")
import st
t = st.load(sys.argv[1])
lg = t["decoder.logits"][2]
assert len(lg) > 0 and all(math.isfinite(x) for x in lg), "logits"
assert len(t["generate.ids"][2]) > 0, "generated ids"
PY
}

# mint at half the layers' parameters (reprojection tolerance 0, so the
# sub-layers are ranked by their skip increase), a parameter count, a FLOPs share
for spec in "half:--budget 0.5 --reproject-tol 0" "count:--budget-params 250000" "flops:--budget-flops 0.6"; do
    name=${spec%%:*}
    args=${spec#*:}
    # shellcheck disable=SC2086
    if "$DOCMINT" plan "$T/an" $args -o "$T/plan-$name" >"$T/plan-$name.log" 2>&1 &&
        [ -s "$T/plan-$name/plan.md" ] && grep -q "## Steps" "$T/plan-$name/plan.md" &&
        student_runs "mint-$name" "$T/plan-$name/plan.json"; then
        ok "mint $args: plan.json pruned and the student runs forward"
    else
        bad "mint $args: $(tail -2 "$T/plan-$name.log") $(tail -2 "$T/st-mint-$name.err" 2>/dev/null)"
    fi
done
if msg=$(params_ok "$T/model" "$T/plan-half/plan.json" 0.5); then
    ok "mint --budget 0.5 within the budget: $msg"
else
    bad "mint --budget 0.5 over the budget: $msg"
fi
if msg=$(params_ok "$T/model" "$T/plan-count/plan.json" 250000); then
    ok "mint --budget-params 250000 within the budget: $msg"
else
    bad "mint --budget-params 250000 over the budget: $msg"
fi

# the FLOPs budget, counted by `docmint params --flops` on the student and
# the teacher (docmint's cached convention, 42 + 35 tokens)
if python3 - <<PY
import json, subprocess, sys
def layers(d):
    out = subprocess.run(["$DOCMINT", "params", d, "--flops", "--json"], capture_output=True, check=True).stdout
    return json.loads(out)["flops"]["docmint"]["layers"]
s, t = layers("$T/st-mint-flops"), layers("$T/model")
print(f"  ..    student {s} of {t} multiply-adds ({s / t:.4f}), limit 0.6")
sys.exit(0 if s <= 0.6 * t else 1)
PY
then
    ok "mint --budget-flops 0.6 within the budget by docmint params --flops"
else
    bad "mint --budget-flops 0.6 over the budget"
fi

# enumerate: the best 3 plans; the best is the best subset found here
if "$DOCMINT" plan "$T/an" --method enumerate --budget 0.5 --top 3 -o "$T/enum" >"$T/enum.log" 2>&1 &&
    [ -s "$T/enum/plan-2.json" ] && [ -s "$T/enum/plan-3.json" ] &&
    grep -q "additive approximation" "$T/enum/plan.md" &&
    student_runs enum "$T/enum/plan.json" &&
    msg=$(params_ok "$T/model" "$T/enum/plan.json" 0.5) &&
    msg2=$(python3 - "$T/an/report.json" "$T/model/config.json" "$T/enum/plan.json" <<'PY'
import itertools, json, sys
rep = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))["decoder"]
D, F, H, L = c["d_model"], c["decoder_ffn_dim"], c["decoder_attention_heads"], c["decoder_layers"]
attn = 4 * D * D + 4 * D + 2 * D
ffn = 2 * D * F + F + D + 2 * D
size = {f"{k}{l}": (ffn if k == "M" else attn) for l in range(L) for k in "SCM"}
names = list(size)
total = sum(size.values())
clean = rep["fields"]["nll_clean"]["mean"]
skip = dict(zip(names, rep["fields"]["nll_skip"]["mean"]))
sets = {frozenset(["S1", "M1"]): rep["fields"]["named.skip_set.late"]["mean"]}
best = None
for r in range(1, len(names) + 1):
    for kept in itertools.combinations(names, r):
        if sum(size[n] for n in kept) > 0.5 * total:
            continue
        removed = frozenset(names) - frozenset(kept)
        score = sets.get(removed, clean + sum(skip[n] - clean for n in removed))
        if best is None or score < best[0]:
            best = (score, frozenset(kept))
plan = json.load(open(sys.argv[3]))
got = frozenset(n for n, v in plan["keep"].items() if v)
print("best keeps", sorted(best[1]), "predicted NLL %.6f" % best[0], "; plan keeps", sorted(got))
sys.exit(0 if got == best[1] else 1)
PY
); then
    ok "enumerate: 3 plans, the best loads, runs and is within the budget ($msg); $msg2"
else
    bad "enumerate: $(tail -2 "$T/enum.log") ${msg:-} ${msg2:-}"
fi


# the measured methods on the analysed corpus as selection corpus: finercut
# and michel at the paper's two budgets, mint with its check; each plan
# loads through prune, its student runs forward, and it is within budget
# (one thread: finercut's many small passes on the tiny model lose more to
# thread start-up than they gain on a busy machine)
for spec in "finercut:0.31" "finercut:0.07" "michel:0.31" "michel:0.07" "mint:0.31" "mint:0.07"; do
    meth=${spec%%:*}
    bud=${spec#*:}
    name="$meth-$bud"
    if OMP_NUM_THREADS=1 "$DOCMINT" plan "$T/an" --method "$meth" --budget "$bud" --corpus "$C" -o "$T/plan-$name" \
        >"$T/plan-$name.log" 2>&1 &&
        grep -q "## Check" "$T/plan-$name/plan.md" &&
        grep -q "measured NLL" "$T/plan-$name/plan.json" &&
        student_runs "$name" "$T/plan-$name/plan.json" &&
        msg=$(params_ok "$T/model" "$T/plan-$name/plan.json" "$bud"); then
        ok "$meth --budget $bud --corpus: pruned, runs forward, $msg; $(sed -n 's/.*(--method [a-z]*; //p' "$T/plan-$name.log" | cut -d')' -f1)"
    else
        bad "$meth --budget $bud --corpus: $(tail -2 "$T/plan-$name.log") $(tail -2 "$T/st-$name.err" 2>/dev/null) ${msg:-}"
    fi
done
if grep -q "Measured on the selection corpus" "$T/plan-mint-0.31/plan.md" &&
    grep -q "predicted NLL" "$T/plan-mint-0.31/plan.json"; then
    ok "mint --corpus: $(grep -o 'predicted NLL [0-9.]*.*measured NLL [0-9.]*' "$T/plan-mint-0.31/plan.json")"
else
    bad "mint --corpus: no check in plan.md"
fi

# refusals, each one line
refused() { # NAME EXPECTED_SUBSTRING COMMAND...
    n=$1 want=$2
    shift 2
    if "$@" >/dev/null 2>"$T/ref.err"; then
        bad "$n: accepted"
    elif [ "$(wc -l <"$T/ref.err")" -eq 1 ] && grep -qF -- "$want" "$T/ref.err"; then
        ok "$n: $(cut -c1-150 "$T/ref.err")"
    else
        bad "$n: $(head -2 "$T/ref.err")"
    fi
}
# the smallest plans from the shapes: one attention head, or the feed-forward sub-layer alone
small=$(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["decoder"]
D, F, H = c["d_model"], c["decoder_ffn_dim"], c["decoder_attention_heads"]
hd = D // H
print(3 * (hd * D + hd) + D * hd + D + 2 * D, min(2 * D * F + F + D + 2 * D, 4 * D * D + 6 * D))' "$T/model/config.json")
refused "mint: a budget below the smallest plan" "smallest plan possible: S0 with one head, ${small%% *} parameters" \
    "$DOCMINT" plan "$T/an" --budget 0.01 -o "$T/r1"
refused "enumerate: a budget below the smallest whole sub-layer" "${small##* } parameters" \
    "$DOCMINT" plan "$T/an" --method enumerate --budget 0.1 -o "$T/r2"
# a store whose analyses lacked reproject and ablation: the store copied,
# those fields taken out of its aggregates (meta is plain LMDB, no checksum)
cp -r "$T/an" "$T/few" && rm -f "$T/few/writer.lock"
/usr/bin/python3 - "$T/few" <<'PY'
import json, sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, subdir=True)
db = env.open_db(b"meta")
with env.begin(write=True, db=db) as tx:
    agg = json.loads(bytes(tx.get(b"aggregates")).rstrip(b"\0"))
    for f in ("nll_reproject", "nll_head_ablation"):
        del agg["fields"][f]
    tx.put(b"aggregates", json.dumps(agg).encode())
PY
refused "mint on a store without reproject and ablation" '"analyses" including [reproject,ablation]' \
    "$DOCMINT" plan "$T/few" --budget 0.5 -o "$T/r3"
if "$DOCMINT" plan "$T/few" --method enumerate --budget 0.5 -o "$T/r4" >/dev/null 2>"$T/r4.err"; then
    ok "enumerate needs only skip: the same store serves it"
else
    bad "enumerate on a skip store: $(head -2 "$T/r4.err")"
fi
write_job "$T/inf-job.json" "$T/model" "$C" "$T/inf" '"stage": "infer", "max_length": 8'
"$DOCMINT" run "$T/inf-job.json" --quiet >"$T/inf.log" 2>&1
refused "an answer store" "not an analysis store" "$DOCMINT" plan "$T/inf" --budget 0.5 -o "$T/r5"
"$DOCMINT" init "$T/model8" --config jobs/configs/tiny.json --seed 8 >/dev/null
refused "another model" "$(meta "$T/an" model_fingerprint), but $T/model8 is " \
    "$DOCMINT" plan "$T/an" --budget 0.5 --model "$T/model8" -o "$T/r6"
refused "finercut without a corpus" "--method finercut needs --corpus SEL.json" \
    "$DOCMINT" plan "$T/an" --method finercut --budget 0.5 -o "$T/r7"
refused "michel without a corpus" "--method michel needs --corpus SEL.json" \
    "$DOCMINT" plan "$T/an" --method michel --budget 0.5 -o "$T/r8"
python3 - "$C" "$T/corpus/noanswers.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
del d["data"][1]["answers"]
json.dump(d, open(sys.argv[2], "w"))
PY
refused "a selection corpus without answers" "$T/corpus/noanswers.json: questionId" \
    "$DOCMINT" plan "$T/an" --method michel --budget 0.5 --corpus "$T/corpus/noanswers.json" -o "$T/r9"
finish
