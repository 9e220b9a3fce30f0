#!/bin/sh
# (d) Connections without the job's keys are refused and the job goes on:
#   - a forged keys file (the job's endpoint and server key, another valid
#     client keypair): the coordinator's ZAP handler refuses it and logs the
#     refusal; the worker says it was refused and exits non-zero;
#   - a keys file with another server key: the CURVE handshake cannot
#     complete; the worker gives up;
# neither ever receives a shard (the stall hook would print "stalling"), and
# the job completes with every question exactly once.  A worker whose
# connect fails at once (an endpoint with no port) stops at once too, time
# after time: it must not wait for a compute thread that has not started.
. tests/mpi/lib.sh
echo "mpi: workers with wrong keys are refused"
make_model "$T/model"
make_corpus "$T/corpus" 30
C="$T/corpus/train_v1.0_withQT.json"
write_job "$T/job.json" "$T/model" "$C" "$T/out" '"commit_every": 2'
DOCMINT_TEST_STALL_SECONDS=0.4 $MPIRUN -n 2 "$DOCMINT" run "$T/job.json" >"$T/run.log" 2>&1 &
mp=$!
PIDS="$PIDS $mp"
wait_for 60 test -f "$T/out/worker.keys" || bad "no keys file within 60 s: $(tail -3 "$T/run.log")"
python3 tests/mpi/forge_keys.py "$T/out/worker.keys" "$T/forged-client.keys" client
python3 tests/mpi/forge_keys.py "$T/out/worker.keys" "$T/forged-server.keys" server

# The job removes its keys file when it ends; the fail-at-once workers
# below run after it, on a copy (the model it names is still there).
cp "$T/out/worker.keys" "$T/copy.keys"

DOCMINT_TEST_STALL_SECONDS=0.01 timeout -s KILL 120 "$DOCMINT" worker --keys "$T/forged-client.keys" \
    --name forged-client --give-up 15 >"$T/fc.log" 2>&1 &
fc=$!
DOCMINT_TEST_STALL_SECONDS=0.01 timeout -s KILL 120 "$DOCMINT" worker --keys "$T/forged-server.keys" \
    --name forged-server --give-up 4 >"$T/fs.log" 2>&1 &
fs=$!
PIDS="$PIDS $fc $fs"
wait "$fc"
st=$?
if [ $st -ne 0 ] && grep -q "refused our CURVE key" "$T/fc.log"; then
    ok "forged client key: the worker is refused: $(cat "$T/fc.log")"
else
    bad "forged client key: exit $st: $(tail -3 "$T/fc.log")"
fi
wait "$fs"
st=$?
if [ $st -ne 0 ] && grep -q "giving up" "$T/fs.log"; then
    ok "wrong server key: no handshake, the worker gives up: $(tail -1 "$T/fs.log")"
else
    bad "wrong server key: exit $st: $(tail -3 "$T/fs.log")"
fi
if wait "$mp"; then ok "the job completes"; else bad "mpirun failed: $(tail -5 "$T/run.log")"; fi
if grep -q "refused a connection.*is not this job's\|refused [0-9]* connections.*is not this job's" "$T/run.log"; then
    ok "the coordinator logged: $(grep -m1 'refused' "$T/run.log" | sed 's/^docmint run: //')"
else
    bad "no refusal in the coordinator's log: $(tail -3 "$T/run.log")"
fi
if grep -q stalling "$T/fc.log" "$T/fs.log" || grep -q "forged" "$T/run.log"; then
    bad "a forged worker got work"
else
    ok "no forged worker ever got a shard"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
hung=0 quick=0
for i in 1 2 3 4 5 6 7 8 9 10; do
    timeout -s KILL 30 "$DOCMINT" worker --keys "$T/copy.keys" --connect tcp://no-port-here \
        >"$T/np.log" 2>&1
    st=$?
    [ $st -eq 137 ] && hung=$((hung + 1))
    [ $st -eq 1 ] && grep -q "connect tcp://no-port-here" "$T/np.log" && quick=$((quick + 1))
done
if [ $hung -eq 0 ] && [ $quick -eq 10 ]; then
    ok "a connect that fails at once: the worker exits 1 at once, 10 times of 10: $(cat "$T/np.log")"
else
    bad "a connect that fails at once: $hung of 10 runs hung, $quick exited 1 with the reason: $(tail -2 "$T/np.log")"
fi
finish
