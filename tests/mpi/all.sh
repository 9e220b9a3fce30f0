#!/bin/sh
# The MPI integration and fault tests, one after another, with real
# processes (mpirun, docmint run, docmint worker).  Run from the
# repository root: DOCMINT=build/docmint sh tests/mpi/all.sh
# Each script prints ok/FAIL lines and "N passed, N failed"; this prints
# the sum and exits non-zero when any script failed.  About 8 minutes on
# 2 cores (the distill tests take 3 to 4 of them).  A script still running
# after LIMIT seconds (DOCMINT_MPI_TEST_LIMIT, 900) is stopped and fails:
# a hang shows as a named failure, not as a suite that never ends.
# DOCMINT_MPI_SKIP="a b" leaves out scripts a.sh and b.sh, saying so;
# DOCMINT_MPI_ONLY="a b" runs only those (CI's sanitizer run: .ci/run).
set -u
total_pass=0
total_fail=0
status=0
limit=${DOCMINT_MPI_TEST_LIMIT:-900}
for t in run_basic bad_images damaged_stores kill_resume interrupt lease_expiry watchdog wrong_keys rogue_worker worker_keys coordinator_pause cache_logits analyze kv_retrieval plan compare distill distill_e2e distill_all masked; do
    case " ${DOCMINT_MPI_SKIP:-} " in
    *" $t "*)
        echo "  skip  $t.sh (DOCMINT_MPI_SKIP)"
        continue
        ;;
    esac
    if [ -n "${DOCMINT_MPI_ONLY:-}" ]; then
        case " $DOCMINT_MPI_ONLY " in
        *" $t "*) ;;
        *)
            echo "  skip  $t.sh (not in DOCMINT_MPI_ONLY)"
            continue
            ;;
        esac
    fi
    t0=$(date +%s)
    out=$(timeout -k 10 "$limit" sh "tests/mpi/$t.sh" 2>&1)
    rc=$?
    secs=$(($(date +%s) - t0))
    printf '%s\n' "$out" | grep -v ' passed, .* failed$'
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    p=$(printf '%s' "$line" | sed -n 's/^\([0-9]*\) passed.*/\1/p')
    f=$(printf '%s' "$line" | sed -n 's/.* \([0-9]*\) failed$/\1/p')
    total_pass=$((total_pass + ${p:-0}))
    total_fail=$((total_fail + ${f:-0}))
    if [ $rc -ne 0 ]; then
        status=1
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            echo "  FAIL  $t.sh was still running after $limit s: stopped"
            total_fail=$((total_fail + 1))
        elif [ -z "$line" ]; then
            echo "  FAIL  $t.sh ended early (status $rc)"
            total_fail=$((total_fail + 1))
        fi
    fi
    echo "  ($t.sh: $secs s)"
done
echo "mpi: $total_pass passed, $total_fail failed"
exit $status
