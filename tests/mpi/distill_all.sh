#!/bin/sh
# Whole-model training ("train": "all") without a teacher (no logit store:
# cross-entropy on the corpus's gold answers) under mpirun: 2 ranks with
# half the batch each end with the weights of 1 rank with the whole batch,
# encoder included (float rounding aside; the max difference is printed);
# a run resumed from a checkpoint ends bit-identical to an uninterrupted
# one; the encoder weights are trained and saved as float32.
. tests/mpi/lib.sh
echo "mpi: whole-model training, 1 vs 2 ranks, resume"
PY=/usr/bin/python3
make_model "$T/m"
make_corpus "$T/corpus" 5
C="$T/corpus/train_v1.0_withQT.json"

# all_job FILE OUTPUT EXTRA_DISTILL_MEMBERS
all_job() {
    cat >"$1" <<JOB
{"stage": "distill", "model": "$T/m", "output": "$2", "corpus": {"path": "$C"}, "threads": 1,
 "distill": {"train": "all", "lr": 0.003, "weight_decay": 0.01, "warmup_steps": 1, "decay": "cosine",
             "clip_norm": 5.0, "seed": 5, "batch_size": 4$3}}
JOB
}

# maxdiff A B: the largest |a - b| over all tensors of two model.safetensors
# (every one float32), then the largest move of an encoder tensor from the
# initial model.
maxdiff() {
    $PY - "$1" "$2" "$T/m/model.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    assert all(v["dtype"] == "F32" for v in h.values()), p
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=np.float32) for k, v in h.items()}
a, b, s = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
assert set(a) == set(b)
enc = [k for k in a if k.startswith("encoder.") and k in s]
assert enc
d = max(float(np.abs(a[k] - b[k]).max()) for k in a)
moved = min(float(np.abs(a[k] - s[k]).max()) for k in enc if "relative_position_index" not in k)
print("%.3g %.3g" % (d, moved))
PY
}

# 1. The same global batch of 4 on 1 rank and on 2 ranks (2 each).
all_job "$T/one.json" "$T/one" ', "steps": 3, "micro_batch": 4'
all_job "$T/two.json" "$T/two" ', "steps": 3, "micro_batch": 2'
if "$DOCMINT" run "$T/one.json" >"$T/one.log" 2>&1 &&
    $MPIRUN -n 2 "$DOCMINT" run "$T/two.json" >"$T/two.log" 2>&1 &&
    r=$(maxdiff "$T/one/student/model.safetensors" "$T/two/student/model.safetensors") &&
    $PY -c 'import sys; d, m = map(float, sys.argv[1:3]); sys.exit(0 if d <= 5e-5 and m > 0 else 1)' $r; then
    ok "train all, no teacher: 2 ranks x 2 == 1 rank x 4 after 3 steps: max |diff| $(echo $r | cut -d' ' -f1) over every tensor (every encoder tensor moved, the least by $(echo $r | cut -d' ' -f2))"
else
    bad "1 vs 2 ranks: ${r:-} $(tail -2 "$T/one.log") $(tail -2 "$T/two.log")"
fi
if grep -q "kd 0.0000" "$T/two.log" && grep -q "2 per rank on 2 ranks" "$T/two.log"; then
    ok "no logit store: cross-entropy alone ($(grep -o '[0-9]* items' "$T/two.log" | head -1) from the corpus's gold answers)"
else
    bad "2-rank log: $(head -3 "$T/two.log")"
fi

# 2. Resume: a finished run with a checkpoint at step 2 loses its last
# checkpoint and its student; the rerun resumes from step 2 and must end
# with the same bits as before.
all_job "$T/res.json" "$T/res" ', "steps": 4, "checkpoint_every": 2'
if "$DOCMINT" run "$T/res.json" >"$T/res1.log" 2>&1; then
    cp "$T/res/student/model.safetensors" "$T/first.safetensors"
    cp "$T/res/student/optimizer.safetensors" "$T/first.opt"
    cp "$T/res/train.jsonl" "$T/first.jsonl"
    rm -rf "$T/res/student" "$T/res/checkpoints/step-4"
    why=""
    "$DOCMINT" run "$T/res.json" >"$T/res2.log" 2>&1 || why="rerun failed: $(tail -2 "$T/res2.log")"
    [ -z "$why" ] && ! grep -q "resuming from .*step-2 " "$T/res2.log" && why="did not resume from step-2: $(head -3 "$T/res2.log")"
    [ -z "$why" ] && ! cmp -s "$T/first.safetensors" "$T/res/student/model.safetensors" && why="weights differ: $(maxdiff "$T/first.safetensors" "$T/res/student/model.safetensors")"
    [ -z "$why" ] && ! cmp -s "$T/first.opt" "$T/res/student/optimizer.safetensors" && why="AdamW moments differ"
    [ -z "$why" ] && ! cmp -s "$T/first.jsonl" "$T/res/train.jsonl" 2>/dev/null &&
        ! $PY - "$T/first.jsonl" "$T/res/train.jsonl" <<'PY' && why="logged losses differ"
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
k = ("step", "loss", "ce", "kd", "lr", "grad_norm")
sys.exit(0 if [[r[x] for x in k] for r in a] == [[r[x] for x in k] for r in b] else 1)
PY
    if [ -z "$why" ]; then
        ok "resumed from step-2: weights (encoder included), AdamW moments and logged losses bit-identical to the uninterrupted run"
    else
        bad "resume: $why"
    fi
else
    bad "resume run: $(tail -2 "$T/res1.log")"
fi
if $PY - "$T/res/student/optimizer.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
sys.exit(0 if "exp_avg.encoder.embeddings.patch_embeddings.projection.weight" in h and
         h["exp_avg.encoder.embeddings.patch_embeddings.projection.weight"]["shape"] == [16, 3, 4, 4] else 1)
PY
then ok "optimizer.safetensors holds the encoder's AdamW moments (patch embedding [16, 3, 4, 4])"
else bad "optimizer.safetensors lacks the encoder's moments"; fi
# 3. The other combinations run: the decoder alone without a teacher, and
# the whole model with a teacher's logit store (its KD term, alpha 0.5).
all_job "$T/dec.json" "$T/dec" ', "steps": 2'
sed -i 's/"train": "all"/"train": "decoder"/' "$T/dec.json"
# (the teacher: the whole-model student of part 1, same tokenizer)
write_job "$T/cache.json" "$T/one/student" "$C" "$T/logits" '"stage": "cache-logits", "top_k": 16, "temperatures": [2.0]'
all_job "$T/kd.json" "$T/kd" ', "steps": 2, "logits": "'"$T"'/logits", "temperature": 2.0, "alpha": 0.5'
if "$DOCMINT" run "$T/dec.json" >"$T/dec.log" 2>&1 && [ "$(wc -l <"$T/dec/train.jsonl")" = 2 ] &&
    "$DOCMINT" run "$T/cache.json" --quiet >"$T/cache.log" 2>&1 &&
    "$DOCMINT" run "$T/kd.json" >"$T/kd.log" 2>&1 &&
    $PY -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; sys.exit(0 if len(r)==2 and all(x["kd"]>0 for x in r) else 1)' "$T/kd/train.jsonl"; then
    ok "train decoder without a teacher, and train all with a logit store (kd > 0), both run"
else
    bad "other combinations: $(tail -1 "$T/dec.log") $(tail -3 "$T/cache.log") $(tail -3 "$T/kd.log")"
fi
# 4. Items grouped by page, and answers scored during training: the
# ANLS that the last scoring logs must be the one the infer stage and
# docmint eval give the saved student on the same questions.
$PY - "$C" "$T/corpus/first6.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["data"] = d["data"][:6]
json.dump(d, open(sys.argv[2], "w"))
PY
all_job "$T/ev.json" "$T/ev" ', "steps": 3, "order": "pages", "eval": {"corpus": "'"$T"'/corpus/first6.json", "questions": 6, "every": 2}'
write_job "$T/evinf.json" "$T/ev/student" "$T/corpus/first6.json" "$T/evans" '"stage": "infer"'
if $MPIRUN -n 2 "$DOCMINT" run "$T/ev.json" >"$T/ev.log" 2>&1 &&
    "$DOCMINT" run "$T/evinf.json" --quiet >"$T/evinf.log" 2>&1 &&
    "$DOCMINT" export "$T/evans" --annotations "$T/corpus/first6.json" -o "$T/evsub.json" 2>>"$T/evinf.log" &&
    "$DOCMINT" eval --predictions "$T/evsub.json" --annotations "$T/corpus/first6.json" --report "$T/evrep.json" >/dev/null &&
    r=$($PY - "$T/ev/val.jsonl" "$T/evrep.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rep = json.load(open(sys.argv[2]))
ok = [r["step"] for r in rows] == [0, 2, 3] and all(r["questions"] == 6 for r in rows)
ok = ok and abs(rows[-1]["anls"] - rep["anls"]) < 1e-9
print("%.4f %.4f" % (rows[-1]["anls"], rep["anls"]))
sys.exit(0 if ok else 1)
PY
) && [ -s "$T/ev/val_anls.png" ]; then
    ok "order pages + eval: scored at steps 0, 2, 3; the last ANLS ($r) is infer + eval's on the saved student; val_anls.png drawn"
else
    bad "eval during training: ${r:-} $(tail -3 "$T/ev.log") $(tail -2 "$T/evinf.log")"
fi
# The same training again (deterministic), scored against the infer
# stage's own answers as gold: every answer given during training must be
# the infer stage's, so the ANLS is exactly 1.
$PY - "$T/corpus/first6.json" "$T/evsub.json" "$T/corpus/self6.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
got = {p["questionId"]: p["answer"] for p in json.load(open(sys.argv[2]))}
for q in d["data"]:
    q["answers"] = [got[q["questionId"]]]
json.dump(d, open(sys.argv[3], "w"))
PY
all_job "$T/ev2.json" "$T/ev2" ', "steps": 3, "order": "pages", "eval": {"corpus": "'"$T"'/corpus/self6.json", "questions": 6, "every": 3}'
if $MPIRUN -n 2 "$DOCMINT" run "$T/ev2.json" >"$T/ev2.log" 2>&1 &&
    cmp -s "$T/ev/student/model.safetensors" "$T/ev2/student/model.safetensors" &&
    $PY -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; sys.exit(0 if r[-1]["step"] == 3 and r[-1]["anls"] == 1.0 else 1)' "$T/ev2/val.jsonl"; then
    ok "eval during training answers as the infer stage does: ANLS 1 against the infer stage's answers to the same 6 questions"
else
    bad "eval against infer's answers: $(tail -1 "$T/ev2/val.jsonl" 2>/dev/null) $(tail -2 "$T/ev2.log")"
fi

# The trained student reads back as a model and answers.
img="$T/corpus/$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"][0]["image"])' "$C")"
if "$DOCMINT" ask "$T/res/student" "$img" "What is the date?" >/dev/null 2>"$T/ask.err"; then
    ok "the whole-model student loads and answers"
else
    bad "ask: $(cat "$T/ask.err")"
fi
finish
