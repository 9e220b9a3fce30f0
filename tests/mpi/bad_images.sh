#!/bin/sh
# (c) corrupt, empty and missing images, a named pipe where an image
# should be (a read of it would block for ever), and two decompression
# bombs (a 17 KB PNG of 12000 x 12000 pixels, a 333-byte PDF of a 200-inch
# page; tests/data/bombs): one error record each
# (stage "infer", item = the questionId, the reason names the file), every
# other question answered, the job completes with exit status 3.  With two
# workers, each error is tried once more on the other worker before it is
# stored; with the pages repaired, --retry-errors answers them.
. tests/mpi/lib.sh
echo "mpi: corrupt, empty and missing page images, a FIFO, decompression bombs"
make_model "$T/model"
mkdir -p "$T/c/img"
cp jobs/demo/page.png "$T/c/img/good1.png"
cp jobs/demo/page.png "$T/c/img/good2.png"
head -c 3000 jobs/demo/page.png >"$T/c/img/corrupt.png"   # a truncated PNG
: >"$T/c/img/empty.png"
mkfifo "$T/c/img/pipe.png"
cp tests/data/bombs/wide.png tests/data/bombs/huge_page.pdf tests/data/bombs/4mp.png "$T/c/img/"
python3 - "$T/c/docvqa.json" <<'PY'
import json, sys
pages = [("img/good1.png", ["What is the date?", "Who is the vendor?"]),
         ("img/corrupt.png", ["What is the total?"]),
         ("img/good2.png", ["What is the invoice number?"]),
         ("img/empty.png", ["What is the amount due?"]),
         ("img/missing.png", ["Who is the contact?"]),
         ("img/pipe.png", ["What is the account?"]),
         ("img/wide.png", ["What is the width?"]),
         ("img/huge_page.pdf", ["What is the page size?"])]
data, qid = [], 100
for doc, (img, qs) in enumerate(pages):
    for q in qs:
        qid += 1
        data.append({"questionId": qid, "question": q, "image": img, "docId": doc,
                     "ucsf_document_id": "d%d" % doc, "ucsf_document_page_no": "1",
                     "answers": ["x"], "data_split": "val"})
json.dump({"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0",
           "data": data}, open(sys.argv[1], "w"))
PY
C="$T/c/docvqa.json"
write_job "$T/job.json" "$T/model" "$C" "$T/out"
$MPIRUN -n 3 "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1
st=$?
if [ $st -eq 3 ] && grep -q "the store holds 6 error records" "$T/run.log"; then
    ok "the job completes despite six bad pages: mpirun exits 3 (rank 0's status: items ended in errors)"
else
    bad "run: status $st: $(tail -5 "$T/run.log")"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
"$DOCMINT" store dump "$T/out" --errors >"$T/errors.jsonl" 2>&1
if msg=$(python3 - "$T/errors.jsonl" <<'PY'
import json, sys
errs = {e["questionId"]: e for e in map(json.loads, open(sys.argv[1]))}
want = {103: "corrupt.png", 105: "empty.png", 106: "missing.png", 107: "pipe.png: a named pipe",
        108: "wide.png: page 0 is 12000x12000 = 144000000 pixels, more than the limit of 50000000",
        109: "huge_page.pdf: PDF page 0 at 200 dpi is 40000x40000 = 1600000000 pixels"}
bad = []
for qid, f in want.items():
    e = errs.get(qid)
    if not e or e["item"] != str(qid) or e["stage"] != "infer" or f not in e["reason"]:
        bad.append("%d: %s" % (qid, e))
if set(errs) != set(want):
    bad.append("error ids %s" % sorted(errs))
print("; ".join(bad) if bad else " | ".join(errs[q]["reason"] for q in sorted(errs)))
sys.exit(1 if bad else 0)
PY
); then ok "one error record per bad page: $msg"; else bad "error records: $msg"; fi
[ "$(meta "$T/out" count_errors)" = 6 ] && [ "$(meta "$T/out" count_records)" = 3 ] &&
    ok "meta counts: 3 records, 6 errors" || bad "meta counts: $(meta "$T/out" count_records) records, $(meta "$T/out" count_errors) errors"
grep -q "6 errors" "$T/run.log" && ok "the summary counts the errors" || bad "summary: $(grep done: "$T/run.log")"

n=$(grep -c "reported 1 error .*: handed to another worker once" "$T/run.log")
if [ "$n" = 6 ]; then
    ok "each bad page tried on a second worker: $(grep -m1 'handed to another' "$T/run.log" | sed 's/^docmint run: //' | cut -c1-200)"
else
    bad "$n of 6 bad pages retried on another worker: $(grep 'reported' "$T/run.log" | head -3)"
fi

# corpus.max_page_pixels reaches the workers: under a limit of 2,000,000
# the 2000 x 2000 page (4,000,000) is refused, the 960 x 1280 demo page
# (1,228,800) answered.
python3 - "$T/c/small.json" <<'PY'
import json, sys
data = [{"questionId": 201, "question": "What is the date?", "image": "img/good1.png", "docId": 0,
         "answers": ["x"]},
        {"questionId": 202, "question": "What is the total?", "image": "img/4mp.png", "docId": 1,
         "answers": ["x"]}]
json.dump({"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0", "data": data},
          open(sys.argv[1], "w"))
PY
cat >"$T/limit.json" <<JOB
{"model": "$T/model", "output": "$T/limit", "corpus": {"path": "$T/c/small.json", "max_page_pixels": 2000000},
 "endpoint": "tcp://127.0.0.1:0", "heartbeat_seconds": 0.5, "heartbeat_liveness": 4}
JOB
$MPIRUN -n 2 "$DOCMINT" run "$T/limit.json" >"$T/limit.log" 2>&1
st=$?
if [ $st -eq 3 ] && "$DOCMINT" store get "$T/limit" 202 --errors >"$T/limit.err" 2>&1 &&
    grep -q "2000x2000 = 4000000 pixels, more than the limit of 2000000" "$T/limit.err" &&
    "$DOCMINT" store get "$T/limit" 201 >/dev/null 2>&1; then
    ok "corpus.max_page_pixels 2000000 on the workers: the 4 MP page is an error record, the 1.2 MP page answered"
else
    bad "max_page_pixels: $(tail -2 "$T/limit.log") $(cat "$T/limit.err")"
fi

# Five pages repaired (the PDF bomb stays): --retry-errors deletes the
# error records and computes the six questions again; nothing else is
# computed, the bomb is an error again, and the job again exits 3.
rm -f "$T/c/img/pipe.png" "$T/c/img/wide.png"
for f in corrupt empty missing pipe wide; do cp jobs/demo/page.png "$T/c/img/$f.png"; done
$MPIRUN -n 3 "$DOCMINT" run "$T/job.json" --retry-errors >"$T/retry.log" 2>&1
st=$?
if [ $st -eq 3 ] && [ "$(meta "$T/out" count_errors)" = 1 ] && [ "$(meta "$T/out" computed_this_run)" = 6 ] &&
    [ "$(meta "$T/out" held_at_start)" = 3 ]; then
    ok "--retry-errors under mpirun: 3 held, the 6 errored questions computed, the PDF bomb an error again, exit 3"
else
    bad "--retry-errors: status $st: $(tail -3 "$T/retry.log"); errors $(meta "$T/out" count_errors), computed $(meta "$T/out" computed_this_run)"
fi
if msg=$(check_once "$T/out" "$C") && [ "$msg" = "8 answers, 1 errors" ]; then ok "every question answered once: $msg"; else bad "store after retry: $msg"; fi
finish
