#!/bin/sh
# The distill stage under mpirun: 2 ranks with half the batch each end
# with the parameters of 1 rank with the whole batch (float rounding
# aside; the max difference is printed); a job killed between checkpoints
# and rerun ends bit-identical to an uninterrupted one (weights, AdamW
# moments, the logged losses); bad jobs and a logit store of another
# teacher or tokenizer are refused with a message naming the problem.
. tests/mpi/lib.sh
echo "mpi: distill with 1 and 2 ranks, resume after a kill, refusals"
PY=/usr/bin/python3
make_model "$T/teacher"
make_corpus "$T/corpus" 4
C="$T/corpus/train_v1.0_withQT.json"
write_job "$T/cache.json" "$T/teacher" "$C" "$T/logits" '"stage": "cache-logits", "top_k": 16, "temperatures": [2.0]'
"$DOCMINT" run "$T/cache.json" --quiet >"$T/cache.log" 2>&1 || bad "cache-logits: $(tail -2 "$T/cache.log")"
fp=$(meta "$T/logits" teacher_fingerprint)
# The pruned student: S1 removed (its tensors are simply not loaded).
mkdir "$T/student"
cp "$T/teacher/"* "$T/student/"
echo "{\"keep\": {\"S1\": false}, \"teacher_fingerprint\": \"$fp\"}" >"$T/student/pruning.json"

# distill_job FILE OUTPUT EXTRA_DISTILL_MEMBERS
distill_job() {
    cat >"$1" <<JOB
{"stage": "distill", "model": "$T/student", "output": "$2", "corpus": {"path": "$C"}, "threads": 1,
 "distill": {"logits": "$T/logits", "temperature": 2.0, "alpha": 0.5, "lr": 0.003, "weight_decay": 0.01,
             "warmup_steps": 2, "decay": "cosine", "clip_norm": 5.0, "seed": 11$3}}
JOB
}

# maxdiff A B: the largest |a - b| over the decoder tensors of two model.safetensors,
# then the largest |a - student| (how far training moved them).
maxdiff() {
    $PY - "$1" "$2" "$T/student/model.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype={"F32": np.float32}[v["dtype"]]) for k, v in h.items()}
a, b, s = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
dec = [k for k in a if k.startswith("decoder.model.decoder.layers")]
assert dec and set(a) == set(b)
d = max(float(np.abs(a[k] - b[k]).max()) for k in a)
moved = max(float(np.abs(a[k] - s[k]).max()) for k in dec)
print("%.3g %.3g" % (d, moved))
PY
}

# Float sums in another order differ in the last bits, and AdamW divides
# by the gradient's running RMS, so after 8 steps the weights may differ
# by a few 1e-6 (bound 5e-5, against moves of ~1e-2).
# 1. The same global batch of 4 on 1 rank (micro-batch 4) and on 2 ranks (micro-batch 2).
distill_job "$T/one.json" "$T/one" ', "steps": 8, "batch_size": 4, "micro_batch": 4'
distill_job "$T/two.json" "$T/two" ', "steps": 8, "batch_size": 4, "micro_batch": 2'
if "$DOCMINT" run "$T/one.json" >"$T/one.log" 2>&1 &&
    $MPIRUN -n 2 "$DOCMINT" run "$T/two.json" >"$T/two.log" 2>&1 &&
    r=$(maxdiff "$T/one/student/model.safetensors" "$T/two/student/model.safetensors") &&
    $PY -c 'import sys; d, m = map(float, sys.argv[1:3]); sys.exit(0 if d <= 5e-5 and m > 1e-3 else 1)' $r; then
    ok "2 ranks x micro-batch 2 == 1 rank x micro-batch 4 after 8 steps: max |diff| $(echo $r | cut -d' ' -f1) (training moved weights by up to $(echo $r | cut -d' ' -f2))"
else
    bad "1 vs 2 ranks: ${r:-} $(tail -2 "$T/one.log") $(tail -2 "$T/two.log")"
fi
if grep -q "all-reduce over mpi-shm" "$T/two.log" && grep -q "2 per rank on 2 ranks" "$T/two.log"; then
    ok "2 ranks: $(grep -o 'batch 4 ([^)]*)' "$T/two.log"), all-reduce over mpi-shm"
else
    bad "2-rank log: $(head -3 "$T/two.log")"
fi
# The shared-memory sum against MPI_Allreduce (its plain twin): with 2
# ranks a + b is the same float either way, so the weights are the same bits.
distill_job "$T/twin.json" "$T/twin" ', "steps": 8, "batch_size": 4, "micro_batch": 2'
if DOCMINT_COLL=mpi $MPIRUN -n 2 -x DOCMINT_COLL "$DOCMINT" run "$T/twin.json" >"$T/twin.log" 2>&1 &&
    grep -q "all-reduce over mpi," "$T/twin.log" &&
    cmp -s "$T/twin/student/model.safetensors" "$T/two/student/model.safetensors"; then
    ok "DOCMINT_COLL=mpi (MPI_Allreduce) gives the same weights as the shared-memory sum, bit for bit"
else
    bad "shared-memory sum vs MPI_Allreduce: $(grep -o 'all-reduce over [a-z-]*' "$T/twin.log") $(tail -2 "$T/twin.log")"
fi
n=$(wc -l <"$T/two/train.jsonl")
if [ "$n" = 8 ] && $PY - "$T/two/train.jsonl" <<'PY'
import json, sys
keys = {"step", "loss", "ce", "kd", "lr", "alpha", "grad_norm", "tokens_per_s", "allreduce_s", "sync_wait_s", "step_s"}
rows = [json.loads(l) for l in open(sys.argv[1])]
sys.exit(0 if all(keys <= set(r) for r in rows) and [r["step"] for r in rows] == list(range(1, 9)) else 1)
PY
then ok "train.jsonl: one line per step with loss, ce, kd, lr, alpha, grad_norm, tokens/s, all-reduce and step seconds"
else bad "train.jsonl: $(head -2 "$T/two/train.jsonl")"; fi
if [ -s "$T/two/losses.png" ] && "$DOCMINT" ask "$T/two/student" "$T/corpus/$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"][0]["image"])' "$C")" "What is the date?" >/dev/null 2>&1 &&
    [ -f "$T/two/student/pruning.json" ] && [ -f "$T/two/student/tokenizer.json" ]; then
    ok "losses.png written; the final student loads and answers (pruning.json and tokenizer kept)"
else
    bad "student folder: $(ls "$T/two/student" 2>&1)"
fi

# 2. Resume: killed after a checkpoint, rerun == uninterrupted.
distill_job "$T/full.json" "$T/full" ', "steps": 16, "batch_size": 4, "checkpoint_every": 4, "hash_check_every": 1, "keep_checkpoints": 2'
distill_job "$T/kill.json" "$T/kill" ', "steps": 16, "batch_size": 4, "checkpoint_every": 4, "hash_check_every": 1, "keep_checkpoints": 2'
$MPIRUN -n 2 "$DOCMINT" run "$T/full.json" >"$T/full.log" 2>&1 || bad "uninterrupted run: $(tail -2 "$T/full.log")"
DOCMINT_TEST_STALL_SECONDS=0.4 $MPIRUN -n 2 -x DOCMINT_TEST_STALL_SECONDS "$DOCMINT" run "$T/kill.json" >"$T/kill1.log" 2>&1 &
mp=$!
PIDS="$PIDS $mp"
if wait_for 120 test -d "$T/kill/checkpoints/step-4"; then
    for p in $(job_pids "$T/kill.json") $mp; do kill -9 "$p" 2>/dev/null; done
    wait "$mp" 2>/dev/null
    wait_gone "$T/kill.json" 20
    killed_at=$(wc -l <"$T/kill/train.jsonl")
    newest=$(ls "$T/kill/checkpoints" | grep -v tmp | sort -t- -k2 -n | tail -1)
    why=""
    [ -d "$T/kill/student" ] && why="the job finished before the kill"
    # as if the kill had come while a checkpoint was being written
    mkdir -p "$T/kill/checkpoints/step-99.tmp-1" && touch "$T/kill/checkpoints/step-99.tmp-1/model.safetensors"
    [ -z "$why" ] && ! $MPIRUN -n 2 "$DOCMINT" run "$T/kill.json" >"$T/kill2.log" 2>&1 && why="rerun failed: $(tail -2 "$T/kill2.log")"
    [ -z "$why" ] && ! grep -q "resuming from .*$newest " "$T/kill2.log" && why="did not resume from $newest: $(head -3 "$T/kill2.log")"
    [ -z "$why" ] && ! cmp -s "$T/full/student/model.safetensors" "$T/kill/student/model.safetensors" && why="weights differ: $(maxdiff "$T/full/student/model.safetensors" "$T/kill/student/model.safetensors")"
    [ -z "$why" ] && ! cmp -s "$T/full/student/optimizer.safetensors" "$T/kill/student/optimizer.safetensors" && why="AdamW moments differ"
    [ -z "$why" ] && ! $PY - "$T/full/train.jsonl" "$T/kill/train.jsonl" <<'PY' && why="logged losses differ"
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
k = ("step", "loss", "ce", "kd", "lr", "alpha", "grad_norm")
sys.exit(0 if [[r[x] for x in k] for r in a] == [[r[x] for x in k] for r in b] else 1)
PY
    if [ -z "$why" ]; then
        ok "killed after $killed_at steps, rerun resumes from $newest: weights, AdamW moments and logged losses bit-identical to the uninterrupted run"
    else
        bad "resume: $why"
    fi
else
    bad "no checkpoint step-4 appeared: $(tail -3 "$T/kill1.log")"
fi
if [ "$(ls "$T/kill/checkpoints" | sort | tr '\n' ' ')" = "step-12 step-16 " ]; then
    ok "keep_checkpoints 2 (and no half-written folder left by the kill): $(ls "$T/kill/checkpoints" | tr '\n' ' ')"
else
    bad "checkpoints kept: $(ls "$T/kill/checkpoints" | tr '\n' ' ')"
fi
if "$DOCMINT" run "$T/kill.json" >"$T/kill3.log" 2>&1 && grep -q "resuming from .*step-16" "$T/kill3.log" &&
    cmp -s "$T/full/student/model.safetensors" "$T/kill/student/model.safetensors"; then
    ok "rerun of a finished job trains nothing"
else
    bad "rerun of a finished job: $(tail -2 "$T/kill3.log")"
fi
distill_job "$T/changed0.json" "$T/kill" ', "steps": 16, "batch_size": 4'
sed 's/"lr": 0.003/"lr": 0.001/' "$T/changed0.json" >"$T/changed.json"
if ! "$DOCMINT" run "$T/changed.json" >/dev/null 2>"$T/changed.err" && grep -q "another training (lr differs)" "$T/changed.err"; then
    ok "checkpoints of another training are refused: $(grep -o "another training.*" "$T/changed.err")"
else
    bad "changed job resumed: $(cat "$T/changed.err")"
fi

# A rank whose weights drift is caught by the hash check.
distill_job "$T/desync.json" "$T/desync" ', "steps": 4, "batch_size": 4, "hash_check_every": 2'
if ! DOCMINT_TEST_DESYNC_RANK=1 $MPIRUN -n 2 -x DOCMINT_TEST_DESYNC_RANK "$DOCMINT" run "$T/desync.json" >"$T/desync.log" 2>&1 &&
    grep -q "after step 2 the parameters differ across ranks" "$T/desync.log" && [ ! -d "$T/desync/student" ]; then
    ok "one weight changed by one ulp on rank 1: $(grep -o 'after step 2 the parameters differ.*' "$T/desync.log" | head -1)"
else
    bad "desync not caught: $(tail -3 "$T/desync.log")"
fi

# A CUDA build picks NCCL when every rank has a GPU, else says why and uses MPI.
CUDA_BIN=${DOCMINT_CUDA:-build-cuda/docmint}
if [ -x "$CUDA_BIN" ]; then
    distill_job "$T/cuda.json" "$T/cuda" ', "steps": 2, "batch_size": 4'
    if $MPIRUN -n 2 "$CUDA_BIN" run "$T/cuda.json" >"$T/cuda.log" 2>&1 &&
        { grep -q "all-reduce over nccl" "$T/cuda.log" ||
            { grep -q "built with CUDA but .*: using MPI for the all-reduce" "$T/cuda.log" &&
                grep -q "all-reduce over mpi" "$T/cuda.log"; }; }; then
        ok "CUDA build: $(grep -o 'all-reduce over [a-z]*' "$T/cuda.log" | head -1) ($(grep -o 'built with CUDA but [^:]*' "$T/cuda.log" | head -1))"
    else
        bad "CUDA build: $(head -3 "$T/cuda.log")"
    fi
else
    echo "  skip  no CUDA build ($CUDA_BIN; make CUDA=1): the NCCL choice is not tried"
fi

# 3. Refusals.
expect_fail() { # label pattern job
    if ! "$DOCMINT" run "$3" >"$T/f.out" 2>"$T/f.err" && grep -q "$2" "$T/f.err"; then
        ok "$1: $(grep -m1 "$2" "$T/f.err")"
    else
        bad "$1: $(cat "$T/f.err")"
    fi
}
distill_job "$T/bad1.json" "$T/bad" ', "step": 3'
expect_fail "unknown key" "distill.step: unknown key" "$T/bad1.json"
sed 's/"decay": "cosine"/"decay": "exp"/' "$T/one.json" >"$T/bad2.json"
expect_fail "bad decay" "distill.decay: expected one of" "$T/bad2.json"
sed 's/"alpha": 0.5/"alpha": "big"/' "$T/one.json" >"$T/bad3.json"
expect_fail "alpha neither number nor auto" "distill.alpha" "$T/bad3.json"
sed 's/"temperature": 2.0/"temperature": 3.0/' "$T/one.json" >"$T/bad4.json"
expect_fail "temperature the store lacks" "distill.temperature: 3 is not among the temperatures" "$T/bad4.json"
write_job "$T/bad5.json" "$T/student" "$C" "$T/bad" '"stage": "distill"'
expect_fail "distill without its block" "distill: missing" "$T/bad5.json"
# A student whose record names another teacher.
mkdir "$T/other-student"
cp "$T/student/"* "$T/other-student/"
echo '{"keep": {"S1": false}, "teacher_fingerprint": "0123456789abcdef"}' >"$T/other-student/pruning.json"
sed "s|\"model\": \"$T/student\"|\"model\": \"$T/other-student\"|" "$T/one.json" >"$T/bad6.json"
expect_fail "store of another teacher" "teacher mismatch" "$T/bad6.json"
# A student with another tokenizer.
"$DOCMINT" init "$T/other" --config jobs/configs/tiny.json --seed 8 >/dev/null
sed "s|\"model\": \"$T/student\"|\"model\": \"$T/other\"|" "$T/one.json" >"$T/bad7.json"
expect_fail "store of another tokenizer" "tokenizer mismatch" "$T/bad7.json"
finish
