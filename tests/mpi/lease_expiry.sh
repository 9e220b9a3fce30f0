#!/bin/sh
# (b) A worker started by hand (`docmint worker --keys OUTPUT/worker.keys`)
# joins a running job (mpirun: rank 0 + one worker), receives a shard and
# never returns it:
#   1. it stalls (DOCMINT_TEST_STALL_SECONDS) but stays alive and keeps
#      heartbeating: the lease expires (lease_seconds 10), the shard is
#      handed out again, the job completes, the stalled worker is told
#      NO_MORE and exits 0;
#   2. it is killed with SIGKILL right after receiving a shard: its shard
#      goes back to the queue (lease expiry or the dead peer, whichever
#      comes first) and the job completes without a restart;
#   3. it is stopped (SIGSTOP) with a long lease: silent for
#      heartbeat_liveness periods, it counts as dead and its shards go back
#      at once; continued (SIGCONT), it is welcomed back, works on, and
#      exits 0 at the end.
# In all, every question is stored exactly once.
. tests/mpi/lib.sh
echo "mpi: external worker stalls or is killed holding a shard"
make_model "$T/model"
make_corpus "$T/corpus" 40
C="$T/corpus/train_v1.0_withQT.json"

# start_job NAME [LEASE] [LIVENESS]: mpirun -n 2 in the background, its
# workers slowed a little so the external worker has time to join.
start_job() {
    LIVENESS=${3:-4} write_job "$T/$1.json" "$T/model" "$C" "$T/$1" "\"lease_seconds\": ${2:-2}, \"credit\": 1, \"commit_every\": 2"
    DOCMINT_TEST_STALL_SECONDS=0.25 $MPIRUN -n 2 "$DOCMINT" run "$T/$1.json" >"$T/$1.log" 2>&1 &
    mp=$!
    PIDS="$PIDS $mp"
    wait_for 60 test -f "$T/$1/worker.keys" || bad "$1: no keys file within 60 s: $(tail -3 "$T/$1.log")"
    [ "$(stat -c %a "$T/$1/worker.keys" 2>/dev/null)" = 600 ] && ok "$1: keys file mode 0600" ||
        bad "$1: keys file mode $(stat -c %a "$T/$1/worker.keys" 2>/dev/null)"
}

# start_external NAME [STALL]: a worker that stalls STALL (600) s on every shard.
start_external() {
    ep=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$T/$1/worker.keys")
    DOCMINT_TEST_STALL_SECONDS=${2:-600} "$DOCMINT" worker --keys "$T/$1/worker.keys" --connect "$ep" --name "ext-$1" \
        --give-up 20 >"$T/$1.ext.log" 2>&1 &
    ext=$!
    PIDS="$PIDS $ext"
    if wait_for 120 grep -q "stalling" "$T/$1.ext.log"; then
        shard=$(sed -n 's/.*on shard \([0-9]*\) .*/\1/p' "$T/$1.ext.log" | head -1)
        ok "$1: the external worker received shard $shard"
    else
        shard=""
        bad "$1: the external worker got no shard: $(tail -3 "$T/$1.ext.log")"
    fi
}

# -- 1. stalled, alive.  The lease is 10 s, so that the job's own worker
# finishes its shards inside theirs even on a loaded machine (a shard of
# theirs taken back and handed to the external worker would be finished
# by them, and the external worker's lease would never expire); a worker
# counts as gone after 20 s of silence, so only the lease takes the
# stalled worker's shard back.
start_job stall 10 40
start_external stall
if wait_for 120 grep -q "shard $shard (worker ext-stall) expired" "$T/stall.log"; then
    ok "stall: $(grep -m1 "shard $shard (worker ext-stall) expired" "$T/stall.log" | sed 's/^.*lease/lease/')"
else
    bad "stall: no lease expiry logged: $(grep "ext-stall\|shard $shard " "$T/stall.log" | head -5)"
fi
if wait "$mp"; then ok "stall: the job completes"; else bad "stall: mpirun failed: $(tail -5 "$T/stall.log")"; fi
if msg=$(check_once "$T/stall" "$C"); then ok "stall: every question exactly once: $msg"; else bad "stall: store: $msg"; fi
if wait_for 60 sh -c "! kill -0 $ext 2>/dev/null"; then
    wait "$ext"
    st=$?
    [ $st -eq 0 ] && ok "stall: the stalled worker was told NO_MORE and exited 0" ||
        bad "stall: the stalled worker exited $st: $(tail -2 "$T/stall.ext.log")"
else
    bad "stall: the stalled worker is still running after the job ended"
fi

# -- 2. killed
start_job kill
start_external kill
kill -9 "$ext"
wait "$ext" 2>/dev/null
if wait_for 120 grep -q "ext-kill.*handed out again" "$T/kill.log"; then
    ok "kill: $(grep -m1 "ext-kill.*handed out again" "$T/kill.log" | sed 's/^docmint run: //')"
else
    bad "kill: the killed worker's shard was not handed out again: $(tail -3 "$T/kill.log")"
fi
if wait "$mp"; then ok "kill: the job completes without a restart"; else bad "kill: mpirun failed: $(tail -5 "$T/kill.log")"; fi
if msg=$(check_once "$T/kill" "$C"); then ok "kill: every question exactly once: $msg"; else bad "kill: store: $msg"; fi
[ "$(meta "$T/kill" held_at_start)" = 0 ] && ok "kill: one run, nothing resumed" || bad "kill: held_at_start $(meta "$T/kill" held_at_start)"

# -- 3. stopped, then continued
start_job stop 600
start_external stop 0.25
kill -STOP "$ext"
if wait_for 120 grep -q "worker ext-stop silent for .* handed out again" "$T/stop.log"; then
    ok "stop: $(grep -m1 "ext-stop silent" "$T/stop.log" | sed 's/^docmint run: //')"
else
    bad "stop: the silent worker was not counted dead: $(tail -3 "$T/stop.log")"
fi
kill -CONT "$ext"
if wait "$mp"; then ok "stop: the job completes"; else bad "stop: mpirun failed: $(tail -5 "$T/stop.log")"; fi
if msg=$(check_once "$T/stop" "$C"); then ok "stop: every question exactly once: $msg"; else bad "stop: store: $msg"; fi
if wait_for 60 sh -c "! kill -0 $ext 2>/dev/null"; then
    wait "$ext"
    st=$?
    n=$(grep -c stalling "$T/stop.ext.log")
    [ $st -eq 0 ] && [ "$n" -ge 2 ] && ok "stop: the continued worker worked on ($n shards) and exited 0" ||
        bad "stop: the continued worker exited $st after $n shards: $(tail -2 "$T/stop.ext.log")"
else
    bad "stop: the continued worker is still running after the job ended"
fi
finish
