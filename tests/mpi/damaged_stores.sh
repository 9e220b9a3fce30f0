#!/bin/sh
# Damaged stores give errors, never a crash: an answer store (infer) and a
# teacher-logit store (cache-logits) of a real job, each copied three ways
# (one byte flipped inside one record, data.mdb cut to half, data.mdb cut
# by one page), then every command that reads a store: store stat, dump,
# get, verify, export, cache-check, the Python reader, a rerun of the job
# into its damaged output, and distill.  Each must exit 1 (2 for usage)
# with a message naming the store, never die of a signal.  Distill refuses
# a logit store with a damaged record, naming it, and with
# distill.skip_damaged trains without it and says how many it skipped.
. tests/mpi/lib.sh
echo "mpi: damaged stores (flipped byte, cut file) under every store reader"
PY=/usr/bin/python3
make_model "$T/model"
make_corpus "$T/corpus" 3
C="$T/corpus/train_v1.0_withQT.json"
write_job "$T/infer.json" "$T/model" "$C" "$T/answers" '"threads": 1'
write_job "$T/cache.json" "$T/model" "$C" "$T/logits" '"stage": "cache-logits", "top_k": 8, "temperatures": [2.0], "threads": 1'
if "$DOCMINT" run "$T/infer.json" --quiet >"$T/infer.log" 2>&1 &&
    "$DOCMINT" run "$T/cache.json" --quiet >"$T/cache.log" 2>&1; then
    ok "infer and cache-logits made the stores ($(stored "$T/answers") and $(stored "$T/logits") entries)"
else
    bad "making the stores: $(tail -2 "$T/infer.log") $(tail -2 "$T/cache.log")"
    finish
fi
make -s python-schemas PY_GEN="$T/py" >/dev/null 2>&1
export DOCMINT_PYGEN="$T/py"

# damage KIND SRC DST: a copy of store SRC with the damage KIND.
damage() {
    mkdir -p "$3"
    cp "$2/data.mdb" "$3/data.mdb"
    size=$(stat -c %s "$3/data.mdb")
    case $1 in
    flip) $PY - "$3/data.mdb" "$2" <<'PY'
import sys
sys.path.insert(0, "schemas/python")
import dmstore
# a byte in the middle of the first record's value, found by its bytes
with dmstore.open_store(sys.argv[2]) as st:
    with st.env.begin(db=st._records) as txn:
        k, v = next(iter(txn.cursor()))
data = bytearray(open(sys.argv[1], "rb").read())
i = data.find(v[:-4])
assert i > 0 and data.count(v[:-4]) == 1
data[i + len(v) // 2] ^= 0x10
open(sys.argv[1], "wb").write(data)
PY
        ;;
    half) truncate -s $((size / 2)) "$3/data.mdb" ;;
    page) truncate -s $((size - 4096)) "$3/data.mdb" ;;
    esac
}

# expect_fail NAME STORE COMMAND...: exit 1 or 2 (not a signal, not 0), a
# message on stderr naming the store.
expect_fail() {
    name=$1
    st=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ $rc -ge 1 ] && [ $rc -le 2 ] && grep -qF "$st" "$T/err"; then
        ok "$name: exit $rc, $(head -1 "$T/err" | sed "s|$T/||g" | cut -c1-150)"
    else
        bad "$name: exit $rc: $(head -c 300 "$T/err")"
    fi
}

for kind in flip half page; do
    A="$T/answers-$kind"
    L="$T/logits-$kind"
    damage $kind "$T/answers" "$A"
    damage $kind "$T/logits" "$L"
    expect_fail "$kind answers: store stat" "$A" "$DOCMINT" store stat "$A"
    expect_fail "$kind answers: store dump" "$A" "$DOCMINT" store dump "$A"
    expect_fail "$kind answers: store verify" "$A" "$DOCMINT" store verify "$A"
    expect_fail "$kind answers: export" "$A" "$DOCMINT" export "$A" --annotations "$C" -o "$T/sub.json"
    expect_fail "$kind answers: Python reader" "$A" $PY schemas/python/dmstore.py "$A"
    expect_fail "$kind logits: store stat" "$L" "$DOCMINT" store stat "$L"
    expect_fail "$kind logits: store verify" "$L" "$DOCMINT" store verify "$L"
    expect_fail "$kind logits: cache-check" "$L" "$DOCMINT" cache-check "$T/model" "$L" --limit 4
    # a rerun of the job resumes into its (damaged) output store
    write_job "$T/rerun-$kind.json" "$T/model" "$C" "$A" '"threads": 1'
    expect_fail "$kind answers: rerun of the job into it" "$A" "$DOCMINT" run "$T/rerun-$kind.json" --quiet
done
# get of the one damaged answer record names it
"$DOCMINT" store verify "$T/answers-flip" >"$T/verify.out" 2>/dev/null
qid=$(sed -n 's/^damaged: records questionId \([0-9]*\): checksum mismatch.*/\1/p' "$T/verify.out")
if [ -n "$qid" ] && [ "$(grep -c '^damaged:' "$T/verify.out")" -eq 1 ]; then
    ok "verify lists exactly one damaged record, questionId $qid"
    expect_fail "flip answers: store get $qid" "questionId $qid" "$DOCMINT" store get "$T/answers-flip" "$qid"
else
    bad "verify of the flipped answer store: $(head -3 "$T/verify.out")"
fi

# distill refuses the flipped logit store, then skips and counts
mkdir "$T/student"
cp "$T/model/"* "$T/student/"
distill_job() {
    cat >"$1" <<JOB
{"stage": "distill", "model": "$T/student", "output": "$2", "corpus": {"path": "$C"}, "threads": 1,
 "distill": {"logits": "$3", "temperature": 2.0, "alpha": 0.5, "steps": 1, "batch_size": 2,
             "plot": false$4}}
JOB
}
distill_job "$T/d1.json" "$T/d1" "$T/logits-flip" ""
expect_fail "distill on the flipped logit store" "$T/logits-flip" "$DOCMINT" run "$T/d1.json" --quiet
if grep -q "is damaged" "$T/err" && grep -q "skip_damaged" "$T/err"; then
    ok "distill names the damaged record and the key that skips it"
else
    bad "distill refusal: $(head -c 300 "$T/err")"
fi
distill_job "$T/d2.json" "$T/d2" "$T/logits-flip" ', "skip_damaged": true'
if "$DOCMINT" run "$T/d2.json" >"$T/d2.log" 2>&1 && grep -q "skipped 1 damaged records" "$T/d2.log" &&
    [ -f "$T/d2/student/model.safetensors" ]; then
    ok "distill.skip_damaged: trains without it ($(grep -o 'skipped 1 damaged records[^;]*' "$T/d2.log" | head -1))"
else
    bad "distill skip_damaged: $(tail -3 "$T/d2.log")"
fi
finish
