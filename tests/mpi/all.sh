#!/bin/sh
# The MPI integration and fault tests, one after another, with real
# processes (mpirun, docmint run, docmint worker).  Run from the
# repository root: DOCMINT=build/docmint sh tests/mpi/all.sh
# Each script prints ok/FAIL lines and "N passed, N failed"; this prints
# the sum and exits non-zero when any script failed.  About 6 minutes on
# 2 cores (the distill tests take 3 to 4 of them).
set -u
total_pass=0
total_fail=0
status=0
for t in run_basic bad_images kill_resume lease_expiry wrong_keys coordinator_pause cache_logits distill distill_e2e; do
    out=$(sh "tests/mpi/$t.sh" 2>&1)
    rc=$?
    printf '%s\n' "$out" | grep -v ' passed, .* failed$'
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    p=$(printf '%s' "$line" | sed -n 's/^\([0-9]*\) passed.*/\1/p')
    f=$(printf '%s' "$line" | sed -n 's/.* \([0-9]*\) failed$/\1/p')
    total_pass=$((total_pass + ${p:-0}))
    total_fail=$((total_fail + ${f:-0}))
    if [ $rc -ne 0 ]; then
        status=1
        [ -z "$line" ] && { echo "  FAIL  $t.sh ended early (status $rc)"; total_fail=$((total_fail + 1)); }
    fi
done
echo "mpi: $total_pass passed, $total_fail failed"
exit $status
