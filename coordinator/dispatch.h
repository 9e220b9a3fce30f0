/* dispatch.h - rank 0 of `docmint run`: the coordinator.
 *
 * dispatch_open: load and validate the job, read the corpus, check the
 *   model (weights, tokenizer, preprocessor, max_length) and note its
 *   fingerprint, open the output store (refusing one written by another
 *   model), plan the shards of the questions the store does not hold yet,
 *   make per-job CURVE keys, start the ZAP handler, bind the ROUTER (CURVE
 *   server, ZMQ_ROUTER_MANDATORY) and write OUTPUT/worker.keys (0600).
 * dispatch_run: the loop.  Workers send HELLO/REQUEST/RESULT with a
 *   credit (shards wanted) and heartbeats; the coordinator hands shards out
 *   under leases (lease.h), re-queues the shards of expired leases and of
 *   workers silent for heartbeat_liveness periods or gone (ROUTER send ->
 *   EHOSTUNREACH), drops duplicate results, writes results in batches
 *   (results.h: commit_every records or one second, one transaction each,
 *   with the meta counts in the same transaction), prints progress
 *   (progress.h), and ends with NO_MORE to every worker.  It is the only
 *   writer of the store.
 *
 * Store meta written (besides schemas/records.proto's list):
 *   "held_at_start"       questions of the corpus the store held when this run began
 *   "computed_this_run"   records (answers + errors) this run committed
 *   "dispatched_this_run" questions handed out this run (re-hand-outs included)
 *   "dropped_this_run"    questions in results this run dropped (duplicate, rejected,
 *                         or with errors handed to another worker)
 *   "run_started_at"      this run's start; "finished_at" is "" until a run completes
 *   "runs"                number of runs that opened the store
 * A question with an error record counts as done: a rerun does not retry it
 * unless opts.retry_errors.  An answer store also records "precision",
 * "max_length" (in force), "corpus" and (archives) "questions"; a rerun
 * with another precision, max_length or model is refused, and so is a
 * corpus that does not ask every question the store holds.
 *
 * Trust (docs/security.md): a worker is its routing id (16 random bytes it
 * chooses and keeps across reconnects; peers with another kind of id get
 * nothing) and the CURVE key it connected with.  A result counts only with
 * a lease token issued to that worker for that shard, and only when it
 * passes result_check (result_check.h); otherwise it is logged with the
 * worker's identity and the worker is dropped: its leases go back to the
 * queue and it is ignored from then on.  A worker holds at most `credit`
 * shards (an expired lease counts until it answers).  A result with error
 * records (or questions left out) is not stored the first time while
 * another worker can take the shard: the shard goes to another worker
 * once, and the second result is stored as it is; with no other worker,
 * the errors are stored at once (a line says so).  A shard whose lease
 * expires max_lease_expiries times is given up: an error record "gave up
 * after N leases: last worker NAME" per question.
 *
 * The stage is the job's: "infer" (AnswerRecord per question) or
 * "cache-logits" (LogitRecord per question and gold answer, the answers
 * sent with the shard; the store's kind is "logits" and its meta records
 * the teacher and tokenizer fingerprints and the cache settings, see
 * schemas/records.proto).  A question counts as done once any of its
 * records is stored: a shard's records are committed in one transaction. */
#ifndef DM_DISPATCH_H
#define DM_DISPATCH_H

#include <signal.h>
#include <stdint.h>

#include "common/dm_error.h"
#include "common/wire.h"
#include "coordinator/job.h"
#include "worker/data/corpus.h"

typedef struct Dispatch Dispatch;

typedef struct DispatchOpts {
    const char *job_path;
    int quiet;                   /* --quiet (job.quiet also silences) */
    const char *log_prefix;      /* "docmint run" */
    void *zctx;                  /* the process's ZeroMQ context */
    volatile sig_atomic_t *stop; /* set by SIGINT/SIGTERM: flush and stop */
    int retry_errors;            /* --retry-errors: compute the errored questions again */
    int force_new;               /* --force-new: move an existing output aside first */
} DispatchOpts;

typedef struct DispatchStats {
    int64_t total_q, held_q, todo_q;
    int64_t computed;     /* committed this run */
    int64_t answers, errors; /* committed this run */
    int64_t dispatched;   /* questions handed out (with re-hand-outs) */
    int64_t dropped;      /* questions of dropped results */
    int64_t expired;      /* leases that expired */
    int64_t requeued_dead;/* shards re-queued because their worker died */
    int64_t rejected;     /* results rejected (each dropped its worker) */
    int64_t retried;      /* shards handed out again because a worker reported errors */
    int64_t given_up;     /* shards given up after max_lease_expiries expired leases */
    int workers_seen;
} DispatchStats;

/* Set up everything before the loop; *join receives what the workers need
 * (for MPI_Bcast).  Prints nothing. */
int dispatch_open(const DispatchOpts *o, Dispatch **out, WireJoin *join, DmErr *err);

/* Questions left to compute (0: the store already holds the whole corpus). */
int64_t dispatch_todo(const Dispatch *d);

/* OUTPUT/worker.keys ("" when none was written), for a signal handler. */
const char *dispatch_keys_path(const Dispatch *d);
/* The job's output store. */
const char *dispatch_output(const Dispatch *d);
/* --force-new: the folder the old store was moved to ("" if none). */
const char *dispatch_moved_to(const Dispatch *d);
/* --retry-errors: error records deleted at the start. */
size_t dispatch_retried(const Dispatch *d);
/* Error records in the store now (-1 on a read error). */
int64_t dispatch_store_errors(Dispatch *d, DmErr *err);

/* Endpoint a worker inside this process connects to (loopback when the
 * ROUTER is bound to every interface). */
const char *dispatch_local_endpoint(const Dispatch *d);

/* Polled each loop turn: non-zero (with err filled) ends the run with that
 * error - the in-process worker reporting that it failed. */
void dispatch_set_failed(Dispatch *d, int (*failed)(void *ctx, DmErr *err), void *ctx);

/* Serve until every shard is done.  Returns 0 when the job is complete;
 * -1 on an error or an interruption (the store keeps every result that
 * arrived; a rerun resumes).  *interrupted tells the latter. */
int dispatch_run(Dispatch *d, int *interrupted, DmErr *err);

const DispatchStats *dispatch_stats(const Dispatch *d);

/* Close sockets, the ZAP thread and the store; remove the keys file. */
void dispatch_close(Dispatch **d);

/* The analyze stage's job keys ("analyses", "skip_sets", ...) as one
 * compact JSON object into out (the join document's "analyze"), checked
 * (stage_analyze.h); an error names the job file and the key. */
int dispatch_analyze_settings(const Job *job, char *out, size_t n, DmErr *err);
/* Questions of a corpus with at least one gold answer. */
long dispatch_corpus_answers(const Corpus *c);

#endif
