# lib.sh - shared by the MPI integration and fault tests (tests/mpi/*.sh):
# a temporary folder, ok/bad lines, a tiny random model, synthetic corpora,
# job files, mpirun settings and store checks.  Sourced, not run.
#
# Every process a test starts in the background is recorded (PIDS) and
# killed by id on exit; nothing is killed by name.
set -u
: "${DOCMINT:=build/docmint}"
case "$DOCMINT" in /*) ;; *) DOCMINT="$PWD/$DOCMINT" ;; esac
[ -x "$DOCMINT" ] || { echo "FAIL  $DOCMINT is not built"; exit 1; }
T=$(mktemp -d /tmp/docmint-mpi-XXXXXX)
PIDS=""
pass=0
fail=0

cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    # ... and anything still running on this test's files (the ranks of an
    # mpirun killed above, a worker it started), found by our temp folder.
    for p in $(job_pids "$T/"); do kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 143' TERM INT # all.sh's time limit: clean up on the way out

ok() { pass=$((pass + 1)); echo "  ok    $1"; }
bad() { fail=$((fail + 1)); echo "  FAIL  $1"; }

# finish: the closing line; the exit status says whether all passed.
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit $?
}

# Open MPI on one machine, as root too, over loopback and shared memory only.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
# Under `make SAN=1` Open MPI's own allocations would fail LeakSanitizer.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
# A hung job must not hang the test suite.
MPIRUN="timeout -s KILL 300 mpirun --oversubscribe"
command -v python3 >/dev/null || { echo "FAIL  python3 is needed for the checks"; exit 1; }

# make_model DIR: the tiny random-weight model (seed 7).
make_model() {
    "$DOCMINT" init "$1" --config jobs/configs/tiny.json --seed 7 >/dev/null
}

# make_corpus DIR DOCS [SEED]: a synthetic corpus; the questions are in
# DIR/train_v1.0_withQT.json.
make_corpus() {
    "$DOCMINT" synth "$1" --docs "$2" --seed "${3:-3}" --quiet
}

# write_job FILE MODEL CORPUS_JSON OUTPUT [EXTRA_JSON_MEMBERS]
# (heartbeats every 0.5 s; a peer silent for LIVENESS of them, 4 unless
# set, counts as gone)
write_job() {
    cat >"$1" <<JOB
{"model": "$2", "output": "$4", "corpus": {"path": "$3"},
 "endpoint": "tcp://127.0.0.1:0", "heartbeat_seconds": 0.5, "heartbeat_liveness": ${LIVENESS:-4}${5:+, $5}}
JOB
}

# meta STORE KEY: one meta value of a store.
meta() {
    "$DOCMINT" store stat "$1" --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["meta"].get(sys.argv[1], ""))' "$2"
}

# stored STORE: records + errors in a store (0 when it cannot be read).
stored() {
    "$DOCMINT" store stat "$1" --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["records"] + d["errors"])' \
        2>/dev/null || echo 0
}

# check_once STORE CORPUS_JSON: every question of the corpus is in the
# store exactly once (an answer or an error, never both, nothing else).
# Prints "N answers, M errors" or what is wrong; non-zero on failure.
check_once() {
    "$DOCMINT" store dump "$1" >"$T/dump.rec" 2>"$T/dump.err1" &&
        "$DOCMINT" store dump "$1" --errors >"$T/dump.errs" 2>"$T/dump.err2" &&
        python3 - "$2" "$T/dump.rec" "$T/dump.errs" <<'PY'
import json, sys
want = [q["questionId"] for q in json.load(open(sys.argv[1]))["data"]]
recs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
errs = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
r = [x["questionId"] for x in recs]
e = [x["questionId"] for x in errs]
problems = []
if len(set(want)) != len(want): problems.append("corpus repeats questionIds")
if len(r) != len(set(r)): problems.append("an answer stored twice")
if len(e) != len(set(e)): problems.append("an error stored twice")
both = set(r) & set(e)
if both: problems.append("answered and failed: %s" % sorted(both)[:5])
missing = set(want) - set(r) - set(e)
if missing: problems.append("%d missing, e.g. %s" % (len(missing), sorted(missing)[:5]))
extra = (set(r) | set(e)) - set(want)
if extra: problems.append("%d not in the corpus" % len(extra))
print("; ".join(problems) if problems else "%d answers, %d errors" % (len(r), len(e)))
sys.exit(1 if problems else 0)
PY
}

# wait_for SECONDS COMMAND...: poll until COMMAND succeeds; non-zero on timeout.
wait_for() {
    limit=$1
    shift
    end=$(($(date +%s) + limit))
    while ! "$@" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}

# job_pids PATH: ids of the live docmint/mpirun processes with an argument
# that is PATH or starts with it (a job file, or this test's folder with a
# trailing slash): our own children and the ranks mpirun started for us.
job_pids() {
    python3 - "$1" <<'PY'
import os, sys
job = sys.argv[1]
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        argv = [a.decode(errors="replace") for a in open("/proc/%s/cmdline" % p, "rb").read().split(b"\0") if a]
        state = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()[0]
    except OSError:
        continue
    if argv and os.path.basename(argv[0]) in ("docmint", "mpirun", "orterun", "mpiexec") \
            and any(a == job or (job.endswith("/") and a.startswith(job)) for a in argv) \
            and state != "Z":
        print(p)
PY
}

# wait_gone JOBFILE SECONDS: wait until no process runs the job.
wait_gone() {
    end=$(($(date +%s) + $2))
    while [ -n "$(job_pids "$1")" ]; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}

# wait_stored STORE N SECONDS: wait until the store holds N records + errors.
wait_stored() {
    end=$(($(date +%s) + $3))
    while [ "$(stored "$1")" -lt "$2" ]; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}
