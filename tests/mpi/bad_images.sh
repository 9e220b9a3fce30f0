#!/bin/sh
# (c) corrupt, empty and missing images: one error record each (stage
# "infer", item = the questionId, the reason names the file), every other
# question answered, the job completes with exit status 3; with the pages
# repaired, --retry-errors answers them.
. tests/mpi/lib.sh
echo "mpi: corrupt, empty and missing page images"
make_model "$T/model"
mkdir -p "$T/c/img"
cp jobs/demo/page.png "$T/c/img/good1.png"
cp jobs/demo/page.png "$T/c/img/good2.png"
head -c 3000 jobs/demo/page.png >"$T/c/img/corrupt.png"   # a truncated PNG
: >"$T/c/img/empty.png"
python3 - "$T/c/docvqa.json" <<'PY'
import json, sys
pages = [("img/good1.png", ["What is the date?", "Who is the vendor?"]),
         ("img/corrupt.png", ["What is the total?"]),
         ("img/good2.png", ["What is the invoice number?"]),
         ("img/empty.png", ["What is the amount due?"]),
         ("img/missing.png", ["Who is the contact?"])]
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
if [ $st -eq 3 ] && grep -q "the store holds 3 error records" "$T/run.log"; then
    ok "the job completes despite three bad pages: mpirun exits 3 (rank 0's status: items ended in errors)"
else
    bad "run: status $st: $(tail -5 "$T/run.log")"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
"$DOCMINT" store dump "$T/out" --errors >"$T/errors.jsonl" 2>&1
if msg=$(python3 - "$T/errors.jsonl" <<'PY'
import json, sys
errs = {e["questionId"]: e for e in map(json.loads, open(sys.argv[1]))}
want = {103: "corrupt.png", 105: "empty.png", 106: "missing.png"}
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
[ "$(meta "$T/out" count_errors)" = 3 ] && [ "$(meta "$T/out" count_records)" = 3 ] &&
    ok "meta counts: 3 records, 3 errors" || bad "meta counts: $(meta "$T/out" count_records) records, $(meta "$T/out" count_errors) errors"
grep -q "3 errors" "$T/run.log" && ok "the summary counts the errors" || bad "summary: $(grep done: "$T/run.log")"

# The pages repaired: --retry-errors deletes the error records and answers
# the three questions; nothing else is computed again.
cp jobs/demo/page.png "$T/c/img/corrupt.png"
cp jobs/demo/page.png "$T/c/img/empty.png"
cp jobs/demo/page.png "$T/c/img/missing.png"
if $MPIRUN -n 3 "$DOCMINT" run "$T/job.json" --retry-errors >"$T/retry.log" 2>&1 &&
    [ "$(meta "$T/out" count_errors)" = 0 ] && [ "$(meta "$T/out" computed_this_run)" = 3 ] &&
    [ "$(meta "$T/out" held_at_start)" = 3 ]; then
    ok "--retry-errors under mpirun: exit 0, 3 held, the 3 errored questions computed, no error left"
else
    bad "--retry-errors: $(tail -3 "$T/retry.log"); errors $(meta "$T/out" count_errors), computed $(meta "$T/out" computed_this_run)"
fi
if msg=$(check_once "$T/out" "$C") && [ "$msg" = "6 answers, 0 errors" ]; then ok "every question answered once: $msg"; else bad "store after retry: $msg"; fi
finish
