#!/bin/sh
# A masked student through the distill stage: its pruned weights are zero
# in the checkpoint after every AdamW step and in the final student while
# the kept ones train; a run resumed from a middle checkpoint ends
# bit-identical to the uninterrupted one, its pruned weights still zero.
. tests/mpi/lib.sh
echo "mpi: a masked student through distill, and resumed"
PY=/usr/bin/python3
make_model "$T/teacher"
make_corpus "$T/corpus" 4
C="$T/corpus/train_v1.0_withQT.json"
write_job "$T/cache.json" "$T/teacher" "$C" "$T/logits" '"stage": "cache-logits", "top_k": 16, "temperatures": [2.0]'
"$DOCMINT" run "$T/cache.json" --quiet >"$T/cache.log" 2>&1 || bad "cache-logits: $(tail -2 "$T/cache.log")"
"$DOCMINT" prune "$T/teacher" --unstructured magnitude --sparsity 0.5 -o "$T/masked" >"$T/prune.log" 2>&1 ||
    bad "prune --unstructured: $(cat "$T/prune.log")"
cat >"$T/job.json" <<JOB
{"stage": "distill", "model": "$T/masked", "output": "$T/out", "corpus": {"path": "$C"}, "threads": 1,
 "distill": {"logits": "$T/logits", "temperature": 2.0, "alpha": 0.5, "lr": 0.003, "weight_decay": 0.01,
             "warmup_steps": 1, "decay": "cosine", "clip_norm": 5.0, "seed": 5, "steps": 6, "batch_size": 4,
             "checkpoint_every": 1, "keep_checkpoints": 0}}
JOB

# check MASK TEACHER_WEIGHTS WEIGHTS...: in every file, each weight the mask
# prunes is exactly zero; prints the largest move of a kept weight from the
# masked student's start.
check() {
    $PY - "$@" <<'PY'
import json, struct, sys
import numpy as np
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    dt = {"F32": np.float32, "U8": np.uint8}
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=dt[v["dtype"]]) for k, v in h.items() if v["dtype"] in dt}
mask, start = load(sys.argv[1]), load(sys.argv[2])
assert len(mask) == 2 * 10, len(mask)  # tiny: 2 layers x 10 linears
moved = 0.0
for f in sys.argv[3:]:
    w = load(f)
    for k, m in mask.items():
        pruned = w[k][m == 0]
        assert pruned.size and not pruned.any(), (f, k, np.abs(pruned).max())
        moved = max(moved, float(np.abs(w[k][m == 1] - start[k][m == 1]).max()))
print("%d files, %d pruned weights each, kept weights moved by up to %.3g" %
      (len(sys.argv) - 3, sum(int((m == 0).sum()) for m in mask.values()), moved))
PY
}

if "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1 && grep -q "masked student: [0-9]* of its weights held at zero" "$T/run.log" &&
    r=$(check "$T/masked/mask.safetensors" "$T/masked/model.safetensors" \
        "$T/out/checkpoints/step-"*/model.safetensors "$T/out/student/model.safetensors") &&
    [ -f "$T/out/student/mask.safetensors" ] && [ "$(ls -d "$T/out/checkpoints/step-"* | wc -l)" = 6 ]; then
    ok "every AdamW step (checkpoints 1..6) and the final student: $r; the student keeps its mask"
else
    bad "masked distill: ${r:-} $(tail -3 "$T/run.log")"
fi
if "$DOCMINT" params "$T/out/student" --json >"$T/params.json" &&
    $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["masked"] and 0.49 < d["nonzero_layers_share"] < 0.51 else 1)' "$T/params.json"; then
    ok "params of the distilled student: $($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%d of %d layer weights non-zero" % (d["nonzero_layers"], d["layers"]))' "$T/params.json")"
else
    bad "params of the distilled student: $(head -c 300 "$T/params.json")"
fi

# Resume: the last three steps' checkpoints and the student removed, the
# rerun resumes from step 3 (the mask read again from the student folder).
cp "$T/out/student/model.safetensors" "$T/uninterrupted.safetensors"
rm -rf "$T/out/student" "$T/out/checkpoints/step-4" "$T/out/checkpoints/step-5" "$T/out/checkpoints/step-6"
if "$DOCMINT" run "$T/job.json" >"$T/resume.log" 2>&1 && grep -q "resuming from .*step-3" "$T/resume.log" &&
    cmp -s "$T/uninterrupted.safetensors" "$T/out/student/model.safetensors" &&
    r=$(check "$T/masked/mask.safetensors" "$T/masked/model.safetensors" \
        "$T/out/checkpoints/step-"*/model.safetensors); then
    ok "resumed from step 3: bit-identical to the uninterrupted run; $r"
else
    bad "masked resume: ${r:-} $(tail -3 "$T/resume.log")"
fi
# Wanda: norms from the store's items over the corpus; every row half pruned,
# and a different choice from magnitude's (the input norms matter)
if "$DOCMINT" prune "$T/teacher" --unstructured wanda --sparsity 0.5 --calibration "$T/logits" \
    --corpus "$C" --items 0 -o "$T/wanda" >"$T/wanda.log" 2>&1 &&
    r=$($PY - "$T/wanda/mask.safetensors" "$T/masked/mask.safetensors" "$T/wanda/model.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    dt = {"F32": np.float32, "U8": np.uint8}
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=dt[v["dtype"]]).reshape(v["shape"]) for k, v in h.items() if v["dtype"] in dt}
wa, mg, w = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
assert set(wa) == set(mg) and len(wa) == 20
differ = 0
for k, m in wa.items():
    assert ((m == 0).sum(axis=1) == m.shape[1] // 2).all(), k
    assert not w[k][m == 0].any(), k
    differ += int((m != mg[k]).sum())
assert differ > 0
print("%d of %d mask entries differ from magnitude's" % (differ, sum(m.size for m in wa.values())))
PY
); then
    ok "prune --unstructured wanda: half of every row, pruned weights zero; $r ($(grep -o 'over [0-9]* calibration items' "$T/wanda.log"))"
else
    bad "wanda: ${r:-} $(tail -3 "$T/wanda.log")"
fi
finish
