#!/bin/sh
# (g) A worker that holds the job's keys and misbehaves cannot change the
# store (build/rogue_worker, tests/tools/rogue_worker.c): while
# `mpirun -n 2 docmint run` works, it
#   - hoards: 3 identities ask for 100 shards each and never answer;
#   - forges results for a shard leased to another identity: a guessed
#     token, no token (sequential lease ids), that identity's real token
#     sent from another one, and a connection without a routing id;
#   - floods: with leases of its own, an 8 MiB answer, 2000 token ids, a NaN
#     log-probability, a token id past the vocabulary, 100 KB error reasons,
#     errors for questions outside its shard.
# Then: the job completes; the coordinator logged each forged or invalid
# result with the worker's name and dropped it; no hoarding identity held
# more than the job's credit; and the store holds exactly what a clean run
# of the same job holds (the same answers, token ids and log-probabilities,
# no error records).
. tests/mpi/lib.sh
echo "mpi: a rogue worker with the job's keys forges, floods and hoards"
ROGUE=$(dirname "$DOCMINT")/rogue_worker
[ -x "$ROGUE" ] || { echo "  FAIL  $ROGUE is not built (make $(dirname "$DOCMINT")/rogue_worker)"; exit 1; }
make_model "$T/model"
make_corpus "$T/corpus" 10
C="$T/corpus/train_v1.0_withQT.json"
CREDIT=1

# The clean run: one in-process worker, nobody else.
write_job "$T/clean.json" "$T/model" "$C" "$T/clean"
if timeout -s KILL 120 "$DOCMINT" run "$T/clean.json" --quiet >"$T/clean.log" 2>&1; then
    ok "clean run completes"
else
    bad "clean run failed: $(tail -3 "$T/clean.log")"
fi

# The attacked run: leases of 4 s so the hoarded shards come back soon;
# the job's own worker slowed so the rogue finds shards to take; credit
# 1, so its own lease never waits behind another of its shards.
write_job "$T/job.json" "$T/model" "$C" "$T/out" \
    "\"lease_seconds\": 4, \"credit\": $CREDIT, \"commit_every\": 4"
DOCMINT_TEST_STALL_SECONDS=0.6 $MPIRUN -n 2 "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1 &
mp=$!
PIDS="$PIDS $mp"
wait_for 60 test -f "$T/out/worker.keys" || bad "no keys file within 60 s: $(tail -3 "$T/run.log")"
timeout -s KILL 120 "$ROGUE" "$T/out/worker.keys" 90 >"$T/rogue.out" 2>"$T/rogue.err" &
rg=$!
PIDS="$PIDS $rg"
if wait "$mp"; then ok "the job completes"; else bad "mpirun failed: $(tail -5 "$T/run.log")"; fi
wait "$rg"
st=$?
if [ $st -eq 0 ] && grep -q "^end: NO_MORE" "$T/rogue.out"; then
    ok "the hoarders were told NO_MORE at the end"
else
    bad "rogue worker: exit $st: $(tail -3 "$T/rogue.out") $(tail -2 "$T/rogue.err")"
fi

for name in forge-guess forge-notoken forge-replay flood-big flood-ids flood-nan flood-vocab \
    flood-reason flood-outside; do
    if ! grep -q "^flood: rogue-$name got no shard" "$T/rogue.out" &&
        grep -q "rejected a result from worker rogue-$name .*; the worker is dropped" "$T/run.log"; then
        ok "rejected and dropped: $(grep -m1 "worker rogue-$name " "$T/run.log" | sed 's/^docmint run: //' | cut -c1-220)"
    else
        bad "rogue-$name: not rejected: $(grep "rogue-$name" "$T/rogue.out" "$T/run.log" | head -3)"
    fi
done
if grep -q "ignoring a peer without a worker routing id" "$T/run.log"; then
    ok "a connection without a routing id of its own is ignored"
else
    bad "no line about the peer without a routing id"
fi
most=$(sed -n 's/^hoard: most shards one identity held: //p' "$T/rogue.out")
if [ -n "$most" ] && [ "$most" -ge 1 ] && [ "$most" -le $CREDIT ]; then
    ok "a hoarding identity held at most the credit: $most of $CREDIT"
else
    bad "hoarding: most shards one identity held: '${most}' (credit $CREDIT)"
fi

if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
"$DOCMINT" store dump "$T/clean" >"$T/clean.rec" 2>&1
"$DOCMINT" store dump "$T/out" >"$T/out.rec" 2>&1
"$DOCMINT" store dump "$T/out" --errors >"$T/out.errs" 2>&1
if msg=$(python3 - "$T/clean.rec" "$T/out.rec" "$T/out.errs" <<'PY'
import json, sys
def load(path):
    out = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            out[r["questionId"]] = (r.get("answer"), r.get("tokenIds"), r.get("meanLogprob"))
    return out
clean, got = load(sys.argv[1]), load(sys.argv[2])
errs = [l for l in open(sys.argv[3]) if l.strip()]
diff = [q for q in clean if got.get(q) != clean[q]]
problems = []
if not clean: problems.append("the clean store is empty")
if diff: problems.append("%d answers differ, e.g. %s: %s vs %s" % (len(diff), diff[0], got.get(diff[0]), clean[diff[0]]))
if set(got) - set(clean): problems.append("%d answers the clean run lacks" % len(set(got) - set(clean)))
if errs: problems.append("%d error records, e.g. %s" % (len(errs), errs[0][:200]))
print("; ".join(problems) if problems else "%d answers equal the clean run's, 0 errors" % len(clean))
sys.exit(1 if problems else 0)
PY
); then ok "$msg"; else bad "store differs from the clean run: $msg"; fi
if grep -q FORGED "$T/out.rec" "$T/out.errs"; then bad "a forged answer was stored"; else ok "no forged answer stored"; fi
finish
