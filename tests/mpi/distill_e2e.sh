#!/bin/sh
# The distill workflow end to end on a synthetic corpus, under mpirun -n 2:
#   1. a teacher that answers: the tiny random Donut trained on the gold
#      answers by docmint's own distill with alpha 0 (the CE term alone;
#      the logit store it needs comes from the random model itself);
#   2. cache-logits with that teacher (top-32, T = 1 and 2, the encoder
#      outputs kept in the feature store, which distill reads);
#   3. docmint prune: the teacher without S1 and M1;
#   4. distill the pruned student (alpha auto, T = 2) on 2 ranks;
#   5. infer with the teacher, the untrained and the distilled student, and
#      compare each student's answers with the teacher's: exact match and
#      ANLS (docmint eval with the teacher's answers as the gold).
# Passes when the KD loss falls over training and both agreements rise.
# About 2-3 minutes on 2 cores.
. tests/mpi/lib.sh
echo "mpi: distill end to end (teacher, cache-logits, prune, distill on 2 ranks, infer, eval)"
PY=/usr/bin/python3
make_model "$T/random"
make_corpus "$T/corpus" 10 5
C="$T/corpus/train_v1.0_withQT.json"
t0=$(date +%s)

distill_job() { # FILE MODEL LOGITS OUTPUT DISTILL_MEMBERS
    cat >"$1" <<JOB
{"stage": "distill", "model": "$2", "output": "$4", "corpus": {"path": "$C"}, "threads": 1,
 "distill": {"logits": "$3", $5}}
JOB
}
infer() { # MODEL NAME: answers store, submission
    write_job "$T/infer-$2.json" "$1" "$C" "$T/answers-$2" '"threads": 1'
    "$DOCMINT" run "$T/infer-$2.json" --quiet >"$T/infer-$2.log" 2>&1 &&
        "$DOCMINT" export "$T/answers-$2" --annotations "$C" -o "$T/sub-$2.json" 2>>"$T/infer-$2.log"
}
# agreement NAME: "EM ANLS" of NAME's answers against the teacher's.
agreement() {
    "$DOCMINT" eval --predictions "$T/sub-$1.json" --annotations "$T/teacher-gold.json" \
        --report "$T/eval-$1.json" >/dev/null 2>&1 &&
        $PY - "$T/sub-$1.json" "$T/sub-teacher.json" "$T/eval-$1.json" <<'PY'
import json, sys
s, t = ({r["questionId"]: r["answer"] for r in json.load(open(p))} for p in sys.argv[1:3])
em = sum(s[q].strip().lower() == t[q].strip().lower() for q in t) / len(t)
rep = json.load(open(sys.argv[3]))
print("%.4f %.4f" % (em, rep["anls"]))
PY
}

# 1. The teacher: CE on the gold answers.
write_job "$T/cache0.json" "$T/random" "$C" "$T/logits0" '"stage": "cache-logits", "top_k": 8, "first_answer_only": true'
distill_job "$T/teach.json" "$T/random" "$T/logits0" "$T/teach" \
    '"alpha": 0, "steps": 150, "batch_size": 8, "lr": 0.003, "warmup_steps": 10, "weight_decay": 0, "checkpoint_every": 0, "plot": false'
if "$DOCMINT" run "$T/cache0.json" --quiet >"$T/cache0.log" 2>&1 &&
    $MPIRUN -n 2 "$DOCMINT" run "$T/teach.json" --quiet >"$T/teach.log" 2>&1 && infer "$T/teach/student" teacher &&
    "$DOCMINT" eval --predictions "$T/sub-teacher.json" --annotations "$C" >"$T/teacher-eval.txt" 2>&1; then
    ok "teacher trained on the gold answers (150 CE steps on 2 ranks): $(head -1 "$T/teacher-eval.txt") against the gold"
else
    bad "teacher: $(tail -2 "$T/cache0.log" "$T/teach.log" "$T/infer-teacher.log")"
fi
# The teacher's answers as the gold of the agreement.
$PY - "$C" "$T/sub-teacher.json" "$T/teacher-gold.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = {r["questionId"]: r["answer"] for r in json.load(open(sys.argv[2]))}
for q in d["data"]:
    q["answers"] = [t[q["questionId"]]]
json.dump(d, open(sys.argv[3], "w"))
PY

# 2. Its logits.
write_job "$T/cache.json" "$T/teach/student" "$C" "$T/logits" '"stage": "cache-logits", "top_k": 32, "temperatures": [2.0], "keep_features": true'
"$DOCMINT" run "$T/cache.json" --quiet >"$T/cache.log" 2>&1 || bad "cache-logits: $(tail -2 "$T/cache.log")"
fp=$(meta "$T/logits" teacher_fingerprint)

# 3. The pruned student: S1 and M1 removed.
echo '{"keep": {"S1": false, "M1": false}}' >"$T/plan.json"
if "$DOCMINT" prune "$T/teach/student" --plan "$T/plan.json" -o "$T/pruned" >"$T/prune.log" 2>&1 &&
    grep -q "\"teacher_fingerprint\": \"$fp\"" "$T/pruned/pruning.json"; then
    ok "docmint prune: S1 and M1 removed, pruning.json names the teacher $fp"
else
    bad "prune: $(cat "$T/prune.log") $(cat "$T/pruned/pruning.json")"
fi
infer "$T/pruned" pruned || bad "infer with the pruned student: $(tail -2 "$T/infer-pruned.log")"
before=$(agreement pruned)

# 4. Distill on 2 ranks.
distill_job "$T/distill.json" "$T/pruned" "$T/logits" "$T/out" \
    '"alpha": "auto", "temperature": 2.0, "steps": 100, "batch_size": 8, "lr": 0.002, "warmup_steps": 5, "checkpoint_every": 50'
if $MPIRUN -n 2 "$DOCMINT" run "$T/distill.json" >"$T/distill.log" 2>&1; then
    ok "distill on 2 ranks: $(grep -o 'alpha auto:.*' "$T/distill.log"); $(grep -o '[0-9]* pages encoded, [0-9]* from the feature store' "$T/distill.log")"
else
    bad "distill: $(tail -3 "$T/distill.log")"
fi
if kd=$($PY - "$T/out/train.jsonl" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
a = sum(x["kd"] for x in r[:10]) / 10
b = sum(x["kd"] for x in r[-10:]) / 10
print("%.4f -> %.4f" % (a, b))
sys.exit(0 if b < 0.8 * a else 1)
PY
); then
    ok "KD loss falls (mean of the first 10 steps -> last 10): $kd"
else
    bad "KD loss does not fall: $kd"
fi

# 5. The distilled student against the teacher.
infer "$T/out/student" distilled || bad "infer with the distilled student: $(tail -2 "$T/infer-distilled.log")"
after=$(agreement distilled)
echo "  agreement with the teacher's answers (exact match, ANLS): untrained pruned student $before, distilled $after"
if $PY -c 'import sys; a = list(map(float, sys.argv[1:3])); b = list(map(float, sys.argv[3:5])); sys.exit(0 if b[0] > a[0] and b[1] > a[1] else 1)' $before $after; then
    ok "the distilled student agrees more with the teacher: exact match $(echo $before | cut -d' ' -f1) -> $(echo $after | cut -d' ' -f1), ANLS $(echo $before | cut -d' ' -f2) -> $(echo $after | cut -d' ' -f2)"
else
    bad "agreement did not rise: before $before, after $after"
fi
echo "  ($(($(date +%s) - t0)) s)"
finish
