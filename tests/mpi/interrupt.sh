#!/bin/sh
# (f) Ctrl-C: SIGINT to mpirun in the middle of a job (Open MPI then sends
# the ranks SIGTERM, and SIGKILL a second later): one line from rank 0,
# the keys file removed, nothing else printed by docmint; a rerun resumes
# with every question exactly once.  The same for a run without mpirun,
# which exits 130.
. tests/mpi/lib.sh
echo "mpi: SIGINT to mpirun mid-job, and to a single-process run"
make_model "$T/model"
make_corpus "$T/corpus" 30
C="$T/corpus/train_v1.0_withQT.json"
total=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$C")
write_job "$T/job.json" "$T/model" "$C" "$T/out" '"commit_every": 2, "credit": 1'

# Every worker sleeps 0.5 s per shard, so the signal lands mid-job.
DOCMINT_TEST_STALL_SECONDS=0.5 mpirun --oversubscribe -n 3 "$DOCMINT" run "$T/job.json" --quiet >"$T/run1.log" 2>&1 &
mp=$!
PIDS="$PIDS $mp"
if wait_for 60 test -e "$T/out/worker.keys" && wait_stored "$T/out" 2 60; then
    kill -INT "$mp"
    wait "$mp"
    st=$?
    if wait_gone "$T/job.json" 30; then ok "every rank gone after SIGINT to mpirun"; else bad "ranks left: $(job_pids "$T/job.json")"; fi
    # mpirun's own status after it was interrupted is 1 (Open MPI 4.1),
    # whatever the ranks return
    [ "$st" -ne 0 ] && ok "mpirun exits non-zero ($st)" || bad "mpirun exited 0 after SIGINT"
    lines=$(grep -v 'DOCMINT_TEST_STALL' "$T/run1.log")
    if [ "$(printf '%s\n' "$lines" | grep -c .)" -eq 1 ] &&
        printf '%s' "$lines" | grep -q '^docmint run: interrupted; the store keeps every result committed: rerun the same command to resume$'; then
        ok "one line from rank 0: $lines"
    else
        bad "output after SIGINT: $(printf '%s' "$lines" | head -5)"
    fi
    [ ! -e "$T/out/worker.keys" ] && ok "keys file removed" || bad "worker.keys left behind"
else
    bad "the job did not start: $(tail -3 "$T/run1.log")"
    kill -9 "$mp" 2>/dev/null
fi
n1=$(stored "$T/out")
if [ "$n1" -gt 0 ] && [ "$n1" -lt "$total" ]; then ok "interrupted in the middle: $n1 of $total stored"; else bad "interrupted at $n1 of $total"; fi
if $MPIRUN -n 3 "$DOCMINT" run "$T/job.json" --quiet >"$T/run2.log" 2>&1; then
    ok "rerun completes"
else
    bad "rerun failed: $(tail -3 "$T/run2.log")"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi

# Without mpirun: SIGINT to the process, exit 130, the same line.
write_job "$T/job1.json" "$T/model" "$C" "$T/out1" '"commit_every": 2, "credit": 1'
DOCMINT_TEST_STALL_SECONDS=0.5 "$DOCMINT" run "$T/job1.json" --quiet >"$T/one.log" 2>&1 &
p=$!
PIDS="$PIDS $p"
if wait_for 60 test -e "$T/out1/worker.keys" && wait_stored "$T/out1" 2 60; then
    kill -INT "$p"
    wait "$p"
    st=$?
    lines=$(grep -v 'DOCMINT_TEST_STALL' "$T/one.log")
    if [ "$st" -eq 130 ] && [ "$(printf '%s\n' "$lines" | grep -c .)" -eq 1 ] &&
        printf '%s' "$lines" | grep -q 'interrupted; the store keeps every result' && [ ! -e "$T/out1/worker.keys" ]; then
        ok "single process: exit 130, one line, keys file removed"
    else
        bad "single process: status $st, keys $(ls "$T/out1"), output: $(printf '%s' "$lines" | head -3)"
    fi
else
    bad "single-process job did not start: $(tail -3 "$T/one.log")"
fi
finish
