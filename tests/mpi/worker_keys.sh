#!/bin/sh
# (h) Outside workers with keys of their own (job key worker_keys, an
# allow-list made with `docmint worker-key`): under `mpirun -n 2 docmint run`
#   - OUTPUT/worker.keys holds no client key, and a worker without --key is
#     told to bring one;
#   - a key that is not listed is refused;
#   - a listed worker ("good") joins, computes and exits 0;
#   - a listed worker that sends an invalid result ("bad", the rogue worker
#     with --key) is dropped, and its key is refused from then on: a new
#     connection with it (another routing id) gets no shard;
# the job completes with every question answered once and no error record.
# A malformed allow-list stops `docmint run` with the file and line.
. tests/mpi/lib.sh
echo "mpi: per-worker keys, an allow-list, a dropped key"
ROGUE=$(dirname "$DOCMINT")/rogue_worker
[ -x "$ROGUE" ] || { echo "  FAIL  $ROGUE is not built (make $(dirname "$DOCMINT")/rogue_worker)"; exit 1; }
make_model "$T/model"
make_corpus "$T/corpus" 8
C="$T/corpus/train_v1.0_withQT.json"
{
    echo "# outside workers of this job"
    "$DOCMINT" worker-key "$T/good.key" --name good
    "$DOCMINT" worker-key "$T/bad.key" --name bad
} >"$T/allow.txt"
"$DOCMINT" worker-key "$T/stranger.key" --name stranger >/dev/null
if [ "$(stat -c %a "$T/good.key")" = 600 ] && [ "$(grep -c '^good \|^bad ' "$T/allow.txt")" = 2 ]; then
    ok "docmint worker-key: key files of mode 0600, allow-list lines"
else
    bad "worker-key: mode $(stat -c %a "$T/good.key"), list: $(cat "$T/allow.txt")"
fi
if "$DOCMINT" worker-key "$T/good.key" --name again >"$T/wk.log" 2>&1; then
    bad "worker-key overwrote a key file"
else
    ok "an existing key file is not overwritten: $(cat "$T/wk.log")"
fi

printf 'good not-a-key\n' >"$T/badlist.txt"
write_job "$T/badlist.json" "$T/model" "$C" "$T/out-badlist" "\"worker_keys\": \"$T/badlist.txt\""
if "$DOCMINT" run "$T/badlist.json" >"$T/badlist.log" 2>&1; then
    bad "a malformed allow-list was accepted"
elif grep -q "badlist.txt:1: \"not-a-key\" is not a 40-character Z85 key" "$T/badlist.log"; then
    ok "a malformed allow-list: $(tail -1 "$T/badlist.log")"
else
    bad "malformed allow-list: $(tail -2 "$T/badlist.log")"
fi

write_job "$T/job.json" "$T/model" "$C" "$T/out" \
    "\"worker_keys\": \"$T/allow.txt\", \"credit\": 1, \"commit_every\": 4"
DOCMINT_TEST_STALL_SECONDS=0.5 $MPIRUN -n 2 "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1 &
mp=$!
PIDS="$PIDS $mp"
wait_for 60 test -f "$T/out/worker.keys" || bad "no keys file within 60 s: $(tail -3 "$T/run.log")"
if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d["client_secret"] != "" or d["client_public"] != "")' "$T/out/worker.keys"; then
    ok "the keys file holds no client key"
else
    bad "the keys file holds a client key"
fi
if "$DOCMINT" worker --keys "$T/out/worker.keys" >"$T/nokey.log" 2>&1; then
    bad "a worker without --key ran"
elif grep -q "pass --key FILE" "$T/nokey.log"; then
    ok "without --key: $(cat "$T/nokey.log")"
else
    bad "without --key: $(cat "$T/nokey.log")"
fi
DOCMINT_TEST_STALL_SECONDS=0.01 timeout -s KILL 60 "$DOCMINT" worker --keys "$T/out/worker.keys" \
    --key "$T/stranger.key" --name stranger --give-up 15 >"$T/stranger.log" 2>&1 &
sp=$!
DOCMINT_TEST_STALL_SECONDS=0.3 timeout -s KILL 120 "$DOCMINT" worker --keys "$T/out/worker.keys" \
    --key "$T/good.key" --name good-worker >"$T/good.log" 2>&1 &
gp=$!
timeout -s KILL 120 "$ROGUE" "$T/out/worker.keys" 60 --key "$T/bad.key" >"$T/rogue.out" 2>"$T/rogue.err" &
rg=$!
PIDS="$PIDS $sp $gp $rg"
wait "$sp"
st=$?
if [ $st -ne 0 ] && grep -q "refused our CURVE key" "$T/stranger.log"; then
    ok "an unlisted key is refused: $(tail -1 "$T/stranger.log")"
else
    bad "unlisted key: exit $st: $(tail -2 "$T/stranger.log")"
fi
wait "$rg"
if grep -q "^keyed: rogue-keyed answered" "$T/rogue.out" && grep -q "^again: 0 shards" "$T/rogue.out"; then
    ok "the dropped key gets nothing on a new connection: $(tr '\n' ' ' <"$T/rogue.out")"
else
    bad "rogue with its own key: $(cat "$T/rogue.out" "$T/rogue.err" | tail -3)"
fi
if wait "$mp"; then ok "the job completes"; else bad "mpirun failed: $(tail -5 "$T/run.log")"; fi
if wait "$gp" && grep -q stalling "$T/good.log"; then
    ok "the listed worker computed shards and exited 0"
else
    bad "the listed worker: $(tail -3 "$T/good.log")"
fi
if grep -q "rejected a result from worker rogue-keyed (routing id [0-9a-f]*\.\.\., key bad\.\.\.)" "$T/run.log" &&
    grep -q "key bad is refused from now on" "$T/run.log"; then
    ok "$(grep -m1 'rejected a result' "$T/run.log" | sed 's/^docmint run: //' | cut -c1-160)"
else
    bad "no rejection of key bad: $(grep -i 'reject\|refused' "$T/run.log" | head -3)"
fi
if grep -q "key bad was dropped" "$T/run.log"; then
    ok "the coordinator refused the dropped key: $(grep -m1 'key bad was dropped' "$T/run.log" | sed 's/^docmint run: //')"
else
    bad "no refusal of the dropped key in the log"
fi
if msg=$(check_once "$T/out" "$C"); then
    case "$msg" in *" 0 errors") ok "every question exactly once: $msg" ;; *) bad "store: $msg" ;; esac
else
    bad "store: $msg"
fi
finish
