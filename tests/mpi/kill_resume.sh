#!/bin/sh
# (a) SIGKILL of mpirun in the middle of a job, then the same command again:
# the store ends with every question exactly once, and the second run
# computes exactly the questions the store did not hold (held_at_start +
# computed_this_run = total, dispatched_this_run = computed_this_run).
. tests/mpi/lib.sh
echo "mpi: kill -9 mpirun mid-job, rerun resumes"
make_model "$T/model"
make_corpus "$T/corpus" 40
C="$T/corpus/train_v1.0_withQT.json"
total=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$C")
write_job "$T/job.json" "$T/model" "$C" "$T/out" '"commit_every": 3, "credit": 1'

# Every worker sleeps 0.3 s per shard (the fault-injection hook), so the
# kill lands in the middle whatever the machine's speed.
DOCMINT_TEST_STALL_SECONDS=0.3 mpirun --oversubscribe -n 3 "$DOCMINT" run "$T/job.json" --quiet >"$T/run1.log" 2>&1 &
mp=$!
PIDS="$PIDS $mp"
if wait_stored "$T/out" 6 60; then
    kill -9 "$mp"
    wait "$mp" 2>/dev/null
    # The ranks notice their launcher is gone and exit; wait for them.
    if wait_gone "$T/job.json" 30; then
        ok "every rank gone after kill -9 of mpirun"
    else
        left=$(job_pids "$T/job.json" | tr '\n' ' ')
        bad "ranks still alive 30 s after kill -9 of mpirun: $left"
        for p in $left; do kill -9 "$p"; done
    fi
else
    bad "no results committed within 60 s: $(tail -3 "$T/run1.log")"
    kill -9 "$mp" 2>/dev/null
fi
n1=$(stored "$T/out")
if [ "$n1" -gt 0 ] && [ "$n1" -lt "$total" ]; then
    ok "killed in the middle: $n1 of $total questions stored"
else
    bad "killed at $n1 of $total questions (expected in the middle)"
fi

if $MPIRUN -n 3 "$DOCMINT" run "$T/job.json" --quiet >"$T/run2.log" 2>&1; then
    ok "rerun completes"
else
    bad "rerun failed: $(tail -5 "$T/run2.log")"
fi
if msg=$(check_once "$T/out" "$C"); then ok "every question exactly once: $msg"; else bad "store: $msg"; fi
held=$(meta "$T/out" held_at_start)
comp=$(meta "$T/out" computed_this_run)
disp=$(meta "$T/out" dispatched_this_run)
fin=$(meta "$T/out" finished_at)
if [ "$held" = "$n1" ] && [ "$((held + comp))" -eq "$total" ] && [ "$disp" = "$comp" ]; then
    ok "rerun: $held held, $comp computed, $disp dispatched (nothing done twice)"
else
    bad "rerun counts: held $held (store had $n1), computed $comp, dispatched $disp, total $total"
fi
[ -n "$fin" ] && ok "finished_at set: $fin" || bad "finished_at empty after the rerun"
[ ! -e "$T/out/worker.keys" ] && ok "keys file removed at the end" || bad "keys file left behind"
finish
