/* cmd_run.c - `docmint run JOB.json [--quiet]`: a batch job.
 *
 * Under `mpirun -n N` rank 0 is the coordinator (dispatch.h) and ranks >= 1
 * are workers (worker_loop.h).  MPI only bootstraps and ends the job: rank
 * 0 broadcasts a status and the join document (endpoint, per-job CURVE
 * keys, model), the work flows over ZeroMQ, and a last broadcast from rank
 * 0 tells the worker ranks the job is over (they poll it with MPI_Test
 * while they work).  Without mpirun (MPI singleton, size 1) the same
 * coordinator runs with a worker thread in this process that connects
 * over the same CURVE/TCP path.
 *
 * Threads per worker: job.threads, else the node's cores divided by the
 * worker ranks on that node (MPI_COMM_TYPE_SHARED), at most the cores this
 * rank may run on.  A worker rank that cannot start (its model does not
 * load) aborts the job: a dead rank ends an MPI job, and a rerun resumes.
 *
 * Stage "distill" is SPMD instead (distill.h): rank 0 reads the job and
 * broadcasts it (paths resolved), and every rank trains. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "kernels/comm/coll.h"
#include "coordinator/cli/commands.h"
#include "coordinator/dispatch.h"
#include "coordinator/analyze_report.h"
#include "coordinator/distill.h"
#include "coordinator/job.h"
#include "worker/stages/worker_loop.h"
#include "worker/analyze/stage_analyze.h"


/* The stages of worker/analyze, which worker_run cannot name itself. */
static const WorkerStageOps *const s_more_stages[] = {&analyze_stage_ops, NULL};
#define PREFIX "docmint run"

enum { RUN_FAILED = 0, RUN_WORK = 1, RUN_NOTHING = 2 };

/* Exit statuses (docs/running.md). */
enum { EXIT_DONE = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_ITEM_ERRORS = 3, EXIT_INTERRUPTED = 130 };

static volatile sig_atomic_t s_stop;
/* The keys file, removed by the signal handler itself: under mpirun a
 * rank gets SIGTERM and, a second later, SIGKILL. */
static char s_keys[4200];
static volatile sig_atomic_t s_armed;       /* the handler may write and unlink */
static volatile sig_atomic_t s_line_written; /* it did */

#define INTERRUPTED_LINE                                                                     \
    PREFIX ": interrupted; the store keeps every result committed: rerun the same command to "   \
           "resume\n"

/* The keys file goes and the line is written here, in the handler (both
 * async-signal-safe): mpirun stops forwarding the ranks' output as it
 * ends the job, and SIGKILL may come before the loop sees s_stop. */
static void s_on_signal(int sig)
{
    (void)sig;
    if (s_stop)
        return;
    s_stop = 1;
    if (s_armed) {
        if (s_keys[0])
            unlink(s_keys);
        ssize_t w = write(STDERR_FILENO, INTERRUPTED_LINE, sizeof INTERRUPTED_LINE - 1);
        (void)w;
        s_line_written = 1;
    }
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint run JOB.json [--quiet] [--retry-errors] [--force-new]\n"
               "  runs a job: mpirun -n N docmint run JOB.json (rank 0 coordinates, the\n"
               "  others compute), or docmint run JOB.json alone (one worker in-process);\n"
               "  stage distill: every rank trains its slice of each batch (data parallel)\n"
               "  --quiet         no progress lines and no summary (job key \"quiet\" too)\n"
               "  --retry-errors  compute again the questions the store holds error records\n"
               "                  for (infer, cache-logits; the records are deleted first)\n"
               "  --force-new     start a fresh output: an existing one is renamed to\n"
               "                  OUTPUT.old-<UTC time> first (a rerun otherwise resumes it,\n"
               "                  and refuses it when made with other settings)\n"
               "  exit status: 0 done; 3 done, but the store holds error records; 1 failed;\n"
               "  2 bad command line; 130 interrupted (under mpirun: mpirun's own status)\n"
               "  workers started by hand join with: docmint worker --keys OUTPUT/worker.keys\n");
}

/* Broadcast from rank 0, every rank the same way.  Non-blocking and
 * polled with short sleeps: a rank waiting for rank 0 (which may be
 * loading a corpus) must not spin on a core its node's workers need. */
static void s_wait(MPI_Request *req)
{
    int flag = 0;
    for (;;) {
        MPI_Test(req, &flag, MPI_STATUS_IGNORE);
        if (flag)
            return;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void s_bcast(void *buf, int count, MPI_Datatype type)
{
    MPI_Request req;
    MPI_Ibcast(buf, count, type, 0, MPI_COMM_WORLD, &req);
    s_wait(&req);
}

/* Compute threads for one worker among `local_workers` on this node. */
static int s_auto_threads(int local_workers)
{
    long node = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    int mine = (int)node;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        mine = CPU_COUNT(&set);
    int t = (int)(node / (local_workers > 0 ? local_workers : 1));
    if (t > mine)
        t = mine;
    return t > 0 ? t : 1;
}

/* ------------------------------------------------- the in-process worker */

typedef struct LocalWorker {
    WireJoin join;
    char endpoint[512];
    char name[192];
    void *zctx;
    int threads;
    pthread_t th;
    atomic_int stop, failed;
    DmErr err;
} LocalWorker;

static int s_local_should_stop(void *ctx) { return atomic_load(&((LocalWorker *)ctx)->stop); }

static void *s_local_thread(void *arg)
{
    LocalWorker *lw = arg;
    WorkerOpts o = {0};
    o.stages = s_more_stages;
    o.join = &lw->join;
    o.endpoint = lw->endpoint;
    o.zctx = lw->zctx;
    o.name = lw->name;
    o.log_prefix = PREFIX;
    o.threads = lw->threads;
    o.should_stop = s_local_should_stop;
    o.stop_ctx = lw;
    if (worker_run(&o, &lw->err) != 0)
        atomic_store(&lw->failed, 1);
    return NULL;
}

static int s_local_failed(void *ctx, DmErr *err)
{
    LocalWorker *lw = ctx;
    if (!atomic_load(&lw->failed))
        return 0;
    dm_err(err, "in-process worker: %s", lw->err.msg);
    return 1;
}

/* ---------------------------------------------------------- SPMD stages */

/* The aggregates, figures and report of an analyze job (nothing for the
 * other stages). */
static int s_analyze_report(const char *path, DmErr *err)
{
    Job *j = NULL;
    int rc = job_load(path, &j, err) ? -1 : 0;
    if (rc == 0 && !strcmp(j->stage, "analyze")) {
        json_t *lq = json_object_get(j->doc, "lens_question");
        rc = analyze_report(j->output, &j->corpus, j->model,
                            json_is_integer(lq) ? (int64_t)json_integer_value(lq) : -1, err);
    }
    job_free(&j);
    return rc;
}

/* Rank 0: the job document when the job is a distill job, else NULL (a
 * job that does not load goes the batch way, which reports why). */
static char *s_spmd_job(const char *path, int force_new, int *failed)
{
    Job *j = NULL;
    DmErr err;
    char *text = NULL, moved[4200];
    *failed = 0;
    if (job_load(path, &j, &err) == 0 && job_check(j, &err) == 0 && !strcmp(j->stage, "distill")) {
        if (force_new && job_move_aside(j, moved, sizeof moved, &err)) {
            fprintf(stderr, "%s: %s\n", PREFIX, err.msg);
            *failed = 1;
        } else {
            if (force_new && moved[0])
                fprintf(stderr, "%s: --force-new: the old output was moved to %s\n", PREFIX, moved);
            text = json_dumps(j->doc, JSON_COMPACT);
        }
    }
    job_free(&j);
    return text;
}

static int s_distill(char *text, int rank, int local_ranks, int quiet)
{
    int len = text ? (int)strlen(text) + 1 : 0;
    s_bcast(&len, 1, MPI_INT);
    if (rank != 0 && !(text = malloc((size_t)len)))
        MPI_Abort(MPI_COMM_WORLD, 1);
    s_bcast(text, len, MPI_CHAR);
    Job *job = NULL;
    Coll *coll = NULL;
    DmErr err = {{0}};
    int rc = 1;
    if (job_parse(text, "the job broadcast", &job, &err) == 0 &&
        coll_open(MPI_COMM_WORLD, COLL_AUTO, &coll, &err) == 0)
        rc = distill_run(job, coll, job->threads > 0 ? job->threads : s_auto_threads(local_ranks),
                         quiet);
    else
        fprintf(stderr, "%s: rank %d: %s\n", PREFIX, rank, err.msg);
    coll_close(&coll);
    job_free(&job);
    free(text);
    return rc;
}

/* --------------------------------------------------------------- rank 0 */

static int s_coordinator(const char *job_path, int quiet, int retry, int force_new, int size,
                         int local_workers, int *interrupted)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    DmErr err = {{0}};
    int64_t errors = 0;
    void *zctx = zmq_ctx_new();
    LocalWorker *lw = NULL;
    Dispatch *d = NULL;
    WireJoin join;
    memset(&join, 0, sizeof join);
    DispatchOpts o = {0};
    o.job_path = job_path;
    o.quiet = quiet;
    o.log_prefix = PREFIX;
    o.zctx = zctx;
    o.stop = &s_stop;
    o.retry_errors = retry;
    o.force_new = force_new;
    int rc = zctx ? dispatch_open(&o, &d, &join, &err) : dm_err(&err, "zmq_ctx_new failed");
    if (rc == 0) {
        snprintf(s_keys, sizeof s_keys, "%s", dispatch_keys_path(d));
        s_armed = 1;
        if (dispatch_moved_to(d)[0])
            fprintf(stderr, "%s: --force-new: the old store was moved to %s\n", PREFIX,
                    dispatch_moved_to(d));
        if (retry && !quiet)
            fprintf(stderr, "%s: --retry-errors: %zu error record%s deleted, %lld questions to "
                            "compute\n",
                    PREFIX, dispatch_retried(d), dispatch_retried(d) == 1 ? "" : "s",
                    (long long)dispatch_todo(d));
    }
    int status = rc ? RUN_FAILED : dispatch_todo(d) == 0 ? RUN_NOTHING : RUN_WORK;
    char *text = NULL;
    if (status == RUN_WORK && wire_join_to_json(&join, &text, &err)) {
        status = RUN_FAILED;
        rc = -1;
    }
    s_bcast(&status, 1, MPI_INT);
    if (status == RUN_WORK) {
        int len = (int)strlen(text) + 1;
        s_bcast(&len, 1, MPI_INT);
        s_bcast(text, len, MPI_CHAR);
    }
    free(text);
    if (rc)
        goto done;
    if (size == 1 && status == RUN_WORK) {
        lw = calloc(1, sizeof *lw);
        if (!lw) {
            rc = dm_err(&err, "out of memory");
            goto done;
        }
        lw->join = join;
        snprintf(lw->endpoint, sizeof lw->endpoint, "%s", dispatch_local_endpoint(d));
        char host[160];
        wire_process_name(host, sizeof host);
        snprintf(lw->name, sizeof lw->name, "in-process@%s", host);
        lw->zctx = zctx;
        lw->threads = join.threads > 0 ? join.threads : s_auto_threads(local_workers);
        atomic_init(&lw->stop, 0);
        atomic_init(&lw->failed, 0);
        if (pthread_create(&lw->th, NULL, s_local_thread, lw) != 0) {
            free(lw);
            lw = NULL;
            rc = dm_err(&err, "cannot start the in-process worker thread");
            goto done;
        }
        dispatch_set_failed(d, s_local_failed, lw);
    }
    rc = dispatch_run(d, interrupted, &err);
    if (rc == 0 && (errors = dispatch_store_errors(d, &err)) < 0)
        rc = -1;
    if (rc == 0 && errors > 0 && !quiet)
        fprintf(stderr, "%s: the store holds %lld error record%s (docmint store dump %s --errors "
                        "lists them; docmint run %s --retry-errors computes them again)\n",
                PREFIX, (long long)errors, errors == 1 ? "" : "s", dispatch_output(d), job_path);
done:
    if (lw) {
        atomic_store(&lw->stop, 1);
        pthread_join(lw->th, NULL);
        free(lw);
    }
    /* The end of the job for the worker ranks (not after an interruption:
     * mpirun is taking them down). */
    if (size > 1 && status == RUN_WORK && !*interrupted) {
        /* Non-blocking like the workers' (a blocking MPI_Bcast would not
         * match their MPI_Ibcast). */
        int end = 1;
        s_bcast(&end, 1, MPI_INT);
    }
    s_armed = 0;
    dispatch_close(&d);
    /* an analyze job ends with its aggregates, figures and report */
    if (rc == 0 && !*interrupted)
        rc = s_analyze_report(job_path, &err);
    memset(&join, 0, sizeof join);
    if (zctx)
        zmq_ctx_term(zctx);
    if (rc) {
        if (*interrupted && !s_line_written)
            fputs(INTERRUPTED_LINE, stderr); /* stopped before the loop began */
        else if (!*interrupted)
            fprintf(stderr, "%s: %s\n", PREFIX, err.msg);
        return *interrupted ? EXIT_INTERRUPTED : EXIT_FAILED;
    }
    return errors > 0 ? EXIT_ITEM_ERRORS : EXIT_DONE;
}

/* ------------------------------------------------------------ ranks >= 1 */

typedef struct EndWatch {
    MPI_Request req;
    int done;
} EndWatch;

static int s_mpi_end(void *ctx)
{
    EndWatch *w = ctx;
    if (!w->done) {
        int flag = 0;
        MPI_Test(&w->req, &flag, MPI_STATUS_IGNORE);
        w->done = flag;
    }
    return w->done;
}

static int s_worker_rank(int rank, int local_workers)
{
    int status = RUN_FAILED;
    s_bcast(&status, 1, MPI_INT);
    if (status == RUN_FAILED)
        return 1; /* rank 0 said why */
    if (status == RUN_NOTHING)
        return 0;
    int len = 0;
    s_bcast(&len, 1, MPI_INT);
    char *text = malloc((size_t)(len > 0 ? len : 1));
    if (!text)
        MPI_Abort(MPI_COMM_WORLD, 1);
    s_bcast(text, len, MPI_CHAR);
    text[len > 0 ? len - 1 : 0] = '\0';
    DmErr err = {{0}};
    WireJoin join;
    if (wire_join_parse(text, "the job broadcast", &join, &err)) {
        free(text);
        fprintf(stderr, "%s: rank %d: %s\n", PREFIX, rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    free(text);
    EndWatch end = {0};
    int end_buf = 0;
    MPI_Ibcast(&end_buf, 1, MPI_INT, 0, MPI_COMM_WORLD, &end.req);
    char host[160], name[192];
    wire_process_name(host, sizeof host);
    snprintf(name, sizeof name, "rank%d@%s", rank, host);
    WorkerOpts o = {0};
    o.stages = s_more_stages;
    o.join = &join;
    o.name = name;
    o.log_prefix = PREFIX;
    o.threads = join.threads > 0 ? join.threads : s_auto_threads(local_workers);
    o.should_stop = s_mpi_end;
    o.stop_ctx = &end;
    if (worker_run(&o, &err) != 0) {
        fprintf(stderr, "%s: rank %d: %s\n", PREFIX, rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (!end.done)
        s_wait(&end.req);
    memset(&join, 0, sizeof join);
    return 0;
}

int cmd_run(int argc, char **argv)
{
    const char *job = NULL;
    int quiet = 0, retry = 0, force_new = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) {
            quiet = 1;
        } else if (!strcmp(argv[i], "--retry-errors")) {
            retry = 1;
        } else if (!strcmp(argv[i], "--force-new")) {
            force_new = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "docmint run: unknown option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!job) {
            job = argv[i];
        } else {
            fprintf(stderr, "docmint run: one job file only, got %s and %s (see --help)\n", job,
                    argv[i]);
            return 2;
        }
    }
    if (!job) {
        fprintf(stderr, "docmint run: needs a job file (see --help)\n");
        return 2;
    }
    int provided = 0, rank = 0, size = 1;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "docmint run: MPI_Init failed\n");
        return 1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    /* Worker ranks on this node share its cores. */
    MPI_Comm local;
    int is_worker = rank != 0 || size == 1, local_workers = 1, one = 1, local_ranks = 1;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
    MPI_Allreduce(&is_worker, &local_workers, 1, MPI_INT, MPI_SUM, local);
    MPI_Allreduce(&one, &local_ranks, 1, MPI_INT, MPI_SUM, local);
    MPI_Comm_free(&local);
    int spmd_failed = 0;
    char *spmd = rank == 0 ? s_spmd_job(job, force_new, &spmd_failed) : NULL;
    int is_spmd = spmd_failed ? 2 : spmd != NULL;
    s_bcast(&is_spmd, 1, MPI_INT);
    if (is_spmd == 2) {
        MPI_Finalize();
        return EXIT_FAILED;
    }
    if (is_spmd) {
        int rc = s_distill(spmd, rank, local_ranks, quiet);
        MPI_Finalize();
        return rc;
    }
    int interrupted = 0;
    int rc = rank == 0 ? s_coordinator(job, quiet, retry, force_new, size, local_workers,
                                       &interrupted)
                       : s_worker_rank(rank, local_workers);
    if (interrupted && size > 1)
        return rc; /* peers are being killed: MPI_Finalize could wait for them */
    MPI_Finalize();
    return rc;
}
