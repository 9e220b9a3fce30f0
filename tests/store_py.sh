#!/bin/sh
# store_py.sh - a store written by docmint reads the same from Python.
# Imports answer and error records (awkward strings, every kind of float,
# large and negative ids) into a store that starts with a 1 MiB map, then
# checks that `docmint store dump` and schemas/python/dmstore.py print
# byte-identical JSON lines, that those lines hold the imported values, and
# that a dump re-imported dumps the same.  Run from the repository root:
#   DOCMINT=build/docmint sh tests/store_py.sh
# PYTHON may name an interpreter with the lmdb and protobuf modules
# (default: the first of python3, /usr/bin/python3 that has them).
set -u
: "${DOCMINT:=build/docmint}"
case "$DOCMINT" in /*) ;; *) DOCMINT="$PWD/$DOCMINT" ;; esac
T=$(mktemp -d /tmp/docmint-storepy-XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); printf "  ok    %s\n" "$1"; }
bad() { fail=$((fail + 1)); printf "  FAIL  %s\n" "$1" | cut -c1-400; }

echo "store_py: docmint store and the Python reader"
PY=""
for p in ${PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import lmdb, google.protobuf' 2>/dev/null; then
        PY=$p
        break
    fi
done
if [ -z "$PY" ]; then
    bad "no python3 with the lmdb and protobuf modules (Debian: python3-lmdb python3-protobuf; or set PYTHON)"
    echo "store_py: $pass passed, $fail failed"
    exit 1
fi
if make -s python-schemas PY_GEN="$T/py" >"$T/make.log" 2>&1 && [ -f "$T/py/records_pb2.py" ]; then
    ok "make python-schemas generates records_pb2.py"
else
    bad "make python-schemas: $(tail -3 "$T/make.log")"
fi
export DOCMINT_PYGEN="$T/py"

# Input: answers and errors as JSON lines.
"$PY" - "$T" <<'PY'
import json, random, struct, sys
rnd = random.Random(7)
strings = ["", "plain", "東京 タワー", "quote \" backslash \\ slash /", "tab\tnl\ncr\rff\fbs\b",
           "ctl \x01\x1f del \x7f", "emoji 😀 e\u0301", "line sep \u2028 \u2029", "nbsp\u00a0x",
           "Straße 1998 ÉCOLE", "\ufeffbom", "{\"json\": [1, 2]}"]
def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]
floats = [0.0, -0.0, 1.0, -1.5, 0.1, 1e-5, 3.4028234663852886e38, 1.401298464324817e-45,
          f32(0x7fc00000), f32(0x7f800000), f32(0xff800000), 16777217.0, 123456789.0]
def num(x):
    return None if x != x or x in (float("inf"), float("-inf")) else x
ids = [0, 1, 2, 49153, 2**31, 2**53 + 1, 2**63 - 1, -1, -2**63] + rnd.sample(range(3, 10**6), 2000)
def fl(i):  # the special values first, then random float32 bit patterns
    return num(floats[i] if i < len(floats) else f32(rnd.getrandbits(32)))
with open(sys.argv[1] + "/answers.jsonl", "w") as f:
    for i, q in enumerate(ids):
        rec = {"questionId": q, "answer": rnd.choice(strings) + ("x" * rnd.randrange(0, 3000 if i < 300 else 30)),
               "token_ids": [rnd.randrange(-2**31, 2**31) for _ in range(rnd.randrange(0, 40))],
               "mean_logprob": fl(i), "seconds": fl((i * 7 + 3) % (len(ids) + 50)),
               "page_id": rnd.choice(strings), "question": rnd.choice(strings)}
        f.write(json.dumps(rec, ensure_ascii=rnd.random() < 0.5) + "\n")
with open(sys.argv[1] + "/errors.jsonl", "w") as f:
    for i in range(50):
        rec = {"item": "page-%d %s" % (i, rnd.choice(strings)) if i % 3 else "",
               "stage": rnd.choice(["infer", "cache-logits"]), "reason": rnd.choice(strings),
               "questionId": rnd.randrange(1, 10**9)}
        f.write(json.dumps(rec) + "\n")
PY

S="$T/store"
if DOCMINT_STORE_MAP_MB=1 "$DOCMINT" store import "$S" --batch 7 <"$T/answers.jsonl" 2>"$T/err" &&
    "$DOCMINT" store import "$S" --errors <"$T/errors.jsonl" 2>>"$T/err"; then
    ok "import 2009 answers (1 MiB map, batches of 7) and 50 errors"
else
    bad "import: $(tail -2 "$T/err")"
fi

for kind in answers errors; do
    flag=""
    [ $kind = errors ] && flag="--errors"
    "$DOCMINT" store dump "$S" $flag >"$T/c.$kind" 2>"$T/cerr"
    cs=$?
    "$PY" schemas/python/dmstore.py "$S" $flag >"$T/p.$kind" 2>"$T/perr"
    ps=$?
    if [ $cs -eq 0 ] && [ $ps -eq 0 ] && [ -s "$T/c.$kind" ] && cmp -s "$T/c.$kind" "$T/p.$kind"; then
        ok "dump $kind: C and Python print identical lines ($(wc -l <"$T/c.$kind"))"
    else
        bad "dump $kind: C status $cs, Python status $ps: $(head -c 300 "$T/cerr" "$T/perr"); $(diff "$T/c.$kind" "$T/p.$kind" | head -4)"
    fi
done

# The dumped lines hold what was imported (floats as float32).
if "$PY" - "$T" <<'PY'
import json, struct, sys
t = sys.argv[1]
def f32(x):
    return None if x is None else struct.unpack("<f", struct.pack("<f", x))[0]
def key_a(r):
    return r["questionId"] % 2**64
ins = sorted((json.loads(l) for l in open(t + "/answers.jsonl")), key=key_a)
outs = [json.loads(l) for l in open(t + "/c.answers")]
assert len(ins) == len(outs), (len(ins), len(outs))
for a, b in zip(ins, outs):
    for k in ("questionId", "answer", "token_ids", "page_id", "question"):
        assert a[k] == b[k], (a["questionId"], k, a[k], b[k])
    for k in ("mean_logprob", "seconds"):
        want = f32(a[k])
        assert (want is None and b[k] is None) or (b[k] is not None and f32(float(b[k])) == want), \
            (a["questionId"], k, a[k], b[k])
errs = {}
for l in open(t + "/errors.jsonl"):
    r = json.loads(l)
    errs[(r["item"] or str(r["questionId"])).encode()] = r
got = [json.loads(l) for l in open(t + "/c.errors")]
assert [k for k in sorted(errs)] == [(r["item"] or str(r["questionId"])).encode() for r in got]
for r in got:
    assert errs[(r["item"] or str(r["questionId"])).encode()] == r, r
PY
then ok "dumped values equal the imported ones"; else bad "dumped values differ from the input"; fi

# dump -> import -> dump is a fixed point
if "$DOCMINT" store import "$T/again" <"$T/c.answers" 2>/dev/null &&
    "$DOCMINT" store dump "$T/again" >"$T/c2" && cmp -s "$T/c.answers" "$T/c2"; then
    ok "a dump re-imported dumps the same"
else
    bad "dump -> import -> dump differs: $(diff "$T/c.answers" "$T/c2" | head -3)"
fi

# get prints the dump line of one record; the module API sees the same
line=$(grep -m1 '"questionId":49153,' "$T/c.answers")
if [ "$("$DOCMINT" store get "$S" 49153)" = "$line" ] &&
    [ "$("$DOCMINT" store get "$S" -1)" = "$(grep -m1 '"questionId":-1,' "$T/c.answers")" ] &&
    "$PY" - "$S" <<'PY'
import sys
sys.path.insert(0, "schemas/python")
import dmstore
with dmstore.open_store(sys.argv[1]) as st:
    assert st.counts() == (2009, 50), st.counts()
    assert st.get(49153).question_id == 49153 and st.get(123456789012) is None
    assert len(list(st)) == 2009 and len(list(st.errors())) == 50
    m = st.meta()
    assert m["schema_version"] == "1" and m["count_records"] == "2009" and m["count_errors"] == "50", m
PY
then ok "get and the Python module API agree with dump"; else bad "get / module API"; fi

# errors are one line, naming the store
for cmd in "$DOCMINT store dump $T/missing" "$PY schemas/python/dmstore.py $T/missing"; do
    $cmd >"$T/out" 2>"$T/err"
    st=$?
    if [ $st -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -qF "$T/missing" "$T/err"; then
        ok "missing store: one-line error ($(echo "$cmd" | cut -d' ' -f1 | xargs basename))"
    else
        bad "missing store: status $st: $(head -c 300 "$T/err")"
    fi
done

# damaged stores: a flipped byte inside one record, and a cut data.mdb.
# Both readers exit 1 with one line naming the store (and the record), and
# the CRC-32C of the Python reader is the published check value.
if "$PY" -c 'import sys; sys.path.insert(0, "schemas/python"); import dmstore
assert dmstore.crc32c(b"123456789") == 0xE3069283'; then
    ok "Python CRC-32C gives the check value e3069283"
else
    bad "Python CRC-32C check value"
fi
mkdir -p "$T/flip" "$T/cut"
cp "$S/data.mdb" "$T/flip/data.mdb"
cp "$S/data.mdb" "$T/cut/data.mdb"
qid=$("$PY" - "$T/flip/data.mdb" "$T/c.answers" <<'PY'
import json, sys
# flip a byte inside the answer of the first record whose answer text
# occurs once in the file
data = bytearray(open(sys.argv[1], "rb").read())
for line in open(sys.argv[2], encoding="utf-8"):
    r = json.loads(line)
    a = r["answer"].encode("utf-8")
    if len(a) >= 12 and data.count(a) == 1:
        i = data.find(a) + 5
        data[i] ^= 0x01
        open(sys.argv[1], "wb").write(data)
        print(r["questionId"])
        break
PY
)
truncate -s $(( $(stat -c %s "$S/data.mdb") / 2 )) "$T/cut/data.mdb"
for what in flip cut; do
    for cmd in "$DOCMINT store dump $T/$what" "$DOCMINT store verify $T/$what" "$PY schemas/python/dmstore.py $T/$what"; do
        $cmd >"$T/out" 2>"$T/err"
        st=$?
        want="$T/$what"
        # verify lists the records on stdout; its stderr line names the store
        case "$what $cmd" in "flip "*verify*) ;; "flip "*) want="questionId $qid" ;; esac
        if [ $st -eq 1 ] && grep -qF "$want" "$T/err" && [ "$(wc -l <"$T/err")" -eq 1 ]; then
            ok "$what store: exit 1, one line naming $want ($(echo "$cmd" | cut -d' ' -f1-3 | xargs -n1 basename | tr '\n' ' '))"
        else
            bad "$what store ($cmd): status $st: $(head -c 300 "$T/err")"
        fi
    done
done
if [ -n "$qid" ] && grep -q "^damaged: records questionId $qid: checksum mismatch" "$T/out" 2>/dev/null ||
    "$DOCMINT" store verify "$T/flip" 2>/dev/null | grep -q "^damaged: records questionId $qid: checksum mismatch"; then
    ok "verify lists the damaged record, questionId $qid"
else
    bad "verify does not list questionId $qid"
fi

# Every kind of store from the system's Python (/usr/bin/python3, where the
# Debian packages python3-lmdb and python3-protobuf live): a teacher-logit
# store with its features and an error record, made by a real run of the
# tiny model; Python prints the lines `docmint store dump` prints.
SYS=/usr/bin/python3
L="$T/logit"
mkdir -p "$L"
"$DOCMINT" init "$L/model" --config jobs/configs/tiny.json --seed 5 >/dev/null &&
    "$DOCMINT" synth "$L/c" --docs 3 --seed 4 --quiet
"$SYS" - "$L/c/train_v1.0_withQT.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
# one question whose page does not exist: an error record in the store
q = dict(d["data"][0], questionId=999, image="documents/none.png")
d["data"].append(q)
json.dump(d, open(sys.argv[1], "w"))
PY
printf '{"stage": "cache-logits", "model": "model", "output": "logits", "corpus": {"path": "c/train_v1.0_withQT.json"}, "keep_features": true, "top_k": 4, "endpoint": "tcp://127.0.0.1:0", "quiet": true}\n' >"$L/job.json"
"$DOCMINT" run "$L/job.json" >"$L/run.log" 2>&1
st=$?
[ $st -eq 3 ] && ok "cache-logits run with one missing page: exit 3 (a store with records, features and an error)" ||
    bad "cache-logits run: status $st: $(tail -2 "$L/run.log")"
for flag in "" --errors --features; do
    "$DOCMINT" store dump "$L/logits" $flag >"$L/c.out" 2>"$L/c.err"
    cs=$?
    "$SYS" schemas/python/dmstore.py "$L/logits" $flag >"$L/p.out" 2>"$L/p.err"
    ps=$?
    if [ $cs -eq 0 ] && [ $ps -eq 0 ] && [ -s "$L/c.out" ] && cmp -s "$L/c.out" "$L/p.out"; then
        ok "logit store ${flag:-records}: C and $SYS print identical lines ($(wc -l <"$L/c.out"))"
    else
        bad "logit store ${flag:-records}: C $cs, Python $ps: $(head -c 300 "$L/p.err"); $(diff "$L/c.out" "$L/p.out" | head -4)"
    fi
done
# The module API: every logit record's shape as schemas/records.proto
# lays it out, the features, the error record.
if "$SYS" - "$L/logits" <<'PY'
import sys
sys.path.insert(0, "schemas/python")
import dmstore
with dmstore.open_store(sys.argv[1]) as st:
    m = st.meta()
    assert m["kind"] == "logits" and m["top_k"] == "4", m
    recs = list(st)
    assert recs and all(type(r).__name__ == "LogitRecord" for r in recs)
    for r in recs:
        P = dmstore.logit_positions(r)
        assert P >= 1 and len(r.targets) == P and r.k == 4, r.question_id
        assert len(r.top_logits) == P * r.k * 2 and len(r.lse) == P * len(r.temperatures)
    feats = list(st.features())
    assert feats, "no features"
    try:
        import numpy  # noqa: F401  (get_features needs it)
    except ImportError:
        numpy = None
    for f in feats:
        assert f.tokens * f.dim * 2 == len(f.values)
        if numpy is not None:
            assert st.get_features(f.page_id).shape == (f.tokens, f.dim)
    assert [e.question_id for e in st.errors()] == [999]
PY
then ok "module API on the logit store: LogitRecords with consistent shapes, features, the error"; else bad "module API on the logit store"; fi

# `make` writes records_pb2.py where dmstore.py looks without being told.
if make -s python-schemas >/dev/null 2>&1 &&
    env -u DOCMINT_PYGEN "$SYS" schemas/python/dmstore.py "$L/logits" >/dev/null 2>"$L/noenv.err"; then
    ok "dmstore.py finds build/gen/python/records_pb2.py by itself"
else
    bad "dmstore.py without DOCMINT_PYGEN: $(cat "$L/noenv.err")"
fi
# A Python without lmdb (here the same interpreter without its site
# packages): one line naming /usr/bin/python3 and the Debian package.
"$SYS" -S schemas/python/dmstore.py "$L/logits" >/dev/null 2>"$L/nolmdb.err"
st=$?
if [ $st -ne 0 ] && [ "$(wc -l <"$L/nolmdb.err")" -eq 1 ] && grep -q "/usr/bin/python3" "$L/nolmdb.err" &&
    grep -q "python3-lmdb" "$L/nolmdb.err"; then
    ok "lmdb missing: $(cut -c1-120 "$L/nolmdb.err")..."
else
    bad "lmdb missing: status $st: $(cat "$L/nolmdb.err")"
fi

echo "store_py: $pass passed, $fail failed"
[ $fail -eq 0 ]
