/* worker_loop.h - a worker: load the model once, then ask the coordinator
 * for shards, compute them, send the results back, until told there is no
 * more work.
 *
 * Two threads, each owning its sockets (the ZeroMQ rule):
 *   - the network thread (the caller) owns the DEALER to the coordinator:
 *     HELLO with the credit, heartbeats every heartbeat_seconds, shards
 *     forwarded to the compute thread, results sent back each with a
 *     credit of 1 (a request for the next shard).  When the coordinator is
 *     silent for heartbeat_liveness periods it reconnects with exponential
 *     backoff (1 s doubling to 32 s) and gives up after give_up_seconds of
 *     silence (Paranoid Pirate).  A ZAP refusal of our key ends the worker
 *     at once with a clear message.
 *   - the compute thread computes one shard at a time with the job's stage
 *     (stage_infer.h or stage_cache.h) and
 *     hands the packed RESULT envelope back over an inproc PAIR.
 * So heartbeats flow while a long page is being computed.
 *
 * The watchdog (join page_timeout_seconds, 0 = none): when the compute
 * thread has spent more than that per page on a shard, the network thread
 * answers the shard with one error record per question, gives up on the
 * compute thread (it cannot be stopped from outside; it frees itself if it
 * ever returns) and starts a new one, which opens its own copy of the
 * stage and receives the shards queued behind the hung one.  After 2 such
 * threads the worker stops with an error.
 *
 * Fault-injection hooks for tests: DOCMINT_TEST_HANG_PAGE=TEXT makes the
 * compute thread block for ever on a shard with a page whose image path
 * contains TEXT ("hangs" on stderr first); DOCMINT_TEST_STALL_SECONDS=N makes the
 * compute thread sleep N seconds after receiving each shard (heartbeats
 * go on), printing "stalling" with the shard id on stderr first. */
#ifndef DM_WORKER_LOOP_H
#define DM_WORKER_LOOP_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/dm_error.h"
#include "common/wire.h"

typedef struct WorkerStats {
    uint64_t shards;    /* shards computed and sent */
    uint64_t answers;   /* answer records sent */
    uint64_t errors;    /* error records sent */
    uint64_t reconnects;
} WorkerStats;

/* A stage of a layer above this one (worker/analyze), handed to worker_run
 * by the command that starts the worker. */
typedef struct WorkerStageOps {
    const char *stage; /* the job's "stage" */
    int (*open)(const WireJoin *j, void **st, DmErr *err);
    int (*shard)(void *st, const Docmint__Shard *sh, Docmint__Result *res,
                 const atomic_int *cancel, DmErr *err);
    void (*clear)(Docmint__Result *res);
    void (*close)(void **st);
    const char *(*fingerprint)(const void *st);
} WorkerStageOps;

typedef struct WorkerOpts {
    const WireJoin *join;    /* keys, model, stage settings */
    const char *endpoint;    /* NULL: join->endpoint */
    void *zctx;              /* ZeroMQ context to use (in-process worker); NULL: own one */
    const char *name;        /* shown by the coordinator: "rank1@host:pid" */
    const char *log_prefix;  /* e.g. "docmint worker" */
    int threads;             /* compute threads (kern_set_threads); 0: leave as is */
    double give_up_seconds;  /* 0: 60 */
    int verbose;             /* a line per shard on stderr */
    /* Polled every loop turn (at least every heartbeat): non-zero ends the
     * worker cleanly (the end of an MPI job, the in-process worker's stop). */
    int (*should_stop)(void *ctx);
    void *stop_ctx;
    WorkerStats *stats;      /* may be NULL */
    const WorkerStageOps *const *stages; /* more stages, NULL-terminated; may be NULL */
} WorkerOpts;

/* Run until NO_MORE, should_stop, or a fatal error (model cannot load,
 * key refused, coordinator gone for give_up_seconds). */
int worker_run(const WorkerOpts *o, DmErr *err);

#endif
