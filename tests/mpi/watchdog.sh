#!/bin/sh
# A page that never ends (DOCMINT_TEST_HANG_PAGE: the compute thread
# blocks for ever on it, as a read of a pipe would) under a job with
# page_timeout_seconds 10 and a lease of 120 s: the worker holding it
# answers its questions with error records naming page_timeout_seconds,
# goes on with a new compute thread, and the job completes with every
# other question answered, before the lease could move the hang to the
# next worker.  A page_timeout_seconds that does not fit in the lease is
# refused by the job.
. tests/mpi/lib.sh
echo "mpi: the per-page watchdog"
make_model "$T/model"
make_corpus "$T/corpus" 4
C="$T/corpus/train_v1.0_withQT.json"
img=$(python3 -c 'import json,sys,os; print(os.path.basename(json.load(open(sys.argv[1]))["data"][0]["image"]))' "$C")
write_job "$T/job.json" "$T/model" "$C" "$T/out" '"lease_seconds": 120, "page_timeout_seconds": 10, "credit": 2'
DOCMINT_TEST_HANG_PAGE="$img" $MPIRUN -n 2 -x DOCMINT_TEST_HANG_PAGE "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1
st=$?
# exit 3: the job ended, and the hung page's questions are error records
if [ $st -eq 3 ]; then
    ok "the job completes although page $img never ends (exit 3: items ended in errors)"
else
    bad "run: status $st: $(tail -5 "$T/run.log")"
fi
grep -q "DOCMINT_TEST_HANG_PAGE: page .* hangs" "$T/run.log" && ok "the page did hang (test hook)" ||
    bad "the hook did not fire: $(head -5 "$T/run.log")"
if grep -q "still running after [0-9]* s (page_timeout_seconds 10 x 1 page" "$T/run.log"; then
    ok "the worker gave up on it: $(grep -m1 -o 'shard [0-9]* still running after [0-9]* s' "$T/run.log")"
else
    bad "no watchdog line: $(tail -5 "$T/run.log")"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
"$DOCMINT" store dump "$T/out" --errors >"$T/errors.jsonl" 2>&1
if msg=$(python3 - "$T/errors.jsonl" "$C" "$img" <<'PY'
import json, os, sys
errs = [json.loads(l) for l in open(sys.argv[1])]
data = json.load(open(sys.argv[2]))["data"]
want = sorted(q["questionId"] for q in data if os.path.basename(q["image"]) == sys.argv[3])
got = sorted(e["questionId"] for e in errs)
bad = [e for e in errs if "past page_timeout_seconds 10" not in e["reason"] or sys.argv[3] not in e["reason"]]
if got != want or bad:
    print("errors for %s, want %s; %s" % (got, want, bad[:1]))
    sys.exit(1)
print("%d error records for the %d questions of %s: %s" % (len(errs), len(want), sys.argv[3], errs[0]["reason"]))
PY
); then ok "$msg"; else bad "error records: $msg"; fi
if grep -q "expired" "$T/run.log"; then bad "a lease expired: $(grep -m1 expired "$T/run.log")"; else ok "no lease expired"; fi
# a timeout that does not fit in the lease
write_job "$T/bad.json" "$T/model" "$C" "$T/bad" '"lease_seconds": 10, "page_timeout_seconds": 6, "pages_per_shard": 2'
if "$DOCMINT" run "$T/bad.json" >"$T/bad.log" 2>&1; then
    bad "a page_timeout_seconds beyond the lease was accepted"
elif grep -q "page_timeout_seconds 6 x pages_per_shard 2 is not less than lease_seconds 10" "$T/bad.log"; then
    ok "refused: $(head -1 "$T/bad.log" | cut -c1-160)"
else
    bad "refusal message: $(head -2 "$T/bad.log")"
fi
finish
