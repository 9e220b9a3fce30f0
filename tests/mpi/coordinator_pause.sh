#!/bin/sh
# The coordinator goes quiet for a while (SIGSTOP, then SIGCONT) while an
# external worker and the in-process worker of a singleton `docmint run`
# compute: the workers notice the silence after heartbeat_liveness periods,
# reconnect with backoff, are welcomed back under the same identities (the
# routing id each keeps; the shards they held go back to the queue when
# they say HELLO again, as one sent during the reconnect is lost), and the
# job completes with every question once and both processes exiting 0.
. tests/mpi/lib.sh
echo "mpi: coordinator paused, workers reconnect"
make_model "$T/model"
make_corpus "$T/corpus" 40
C="$T/corpus/train_v1.0_withQT.json"
write_job "$T/job.json" "$T/model" "$C" "$T/out" '"commit_every": 4'
DOCMINT_TEST_STALL_SECONDS=0.3 timeout -s KILL 300 "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1 &
co=$!
PIDS="$PIDS $co"
wait_for 60 test -f "$T/out/worker.keys" || bad "no keys file within 60 s: $(tail -3 "$T/run.log")"
DOCMINT_TEST_STALL_SECONDS=0.3 timeout -s KILL 300 "$DOCMINT" worker --keys "$T/out/worker.keys" --name ext \
    >"$T/ext.log" 2>&1 &
ext=$!
PIDS="$PIDS $ext"
wait_for 120 grep -q stalling "$T/ext.log" || bad "the external worker got no shard"
# $co is timeout(1); the coordinator is its child.
coord=$(job_pids "$T/job.json" | while read -r p; do
    [ "$(cat /proc/$p/comm 2>/dev/null)" = docmint ] && echo "$p"; done | head -1)
kill -STOP "$coord"
sleep 4
kill -CONT "$coord"
if wait "$co"; then ok "the job completes"; else bad "the run failed: $(tail -5 "$T/run.log")"; fi
if wait "$ext"; then ok "the external worker exits 0"; else bad "the external worker failed: $(tail -3 "$T/ext.log")"; fi
if grep -q "is silent.*reconnecting" "$T/ext.log"; then
    ok "the external worker reconnected: $(grep -m1 'is silent' "$T/ext.log" | sed 's/^docmint worker: //')"
else
    bad "the external worker never noticed the silence: $(tail -3 "$T/ext.log")"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
finish
