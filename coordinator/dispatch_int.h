/* dispatch_int.h - the coordinator's state, shared by dispatch.c (set-up,
 * workers, the loop) and dispatch_result.c (a worker's result).  Private
 * to those two files. */
#ifndef DM_DISPATCH_INT_H
#define DM_DISPATCH_INT_H

#include <stdint.h>

#include "coordinator/dispatch.h"
#include "coordinator/job.h"
#include "coordinator/kv_retrieval.h"
#include "coordinator/lease.h"
#include "coordinator/progress.h"
#include "coordinator/result_check.h"
#include "coordinator/results.h"
#include "coordinator/zap_auth.h"
#include "common/store.h"
#include "worker/data/corpus.h"

/* A worker is its routing id (random, chosen by the worker) together with
 * the CURVE key it connected with (the ZAP user id). */
typedef struct WorkerSlot {
    unsigned char id[256];
    size_t idlen;
    char user[128];
    char name[128];
    int alive;
    int banned;        /* sent a result that was rejected: ignored from then on */
    int want;          /* shards asked for and not sent yet */
    int held;          /* hand-outs it has not answered (expired ones too) */
    double last_seen;  /* last message from it */
    double last_sent;  /* last message to it */
    uint64_t results;  /* valid results from it (errors included) */
} WorkerSlot;

struct Dispatch {
    DispatchOpts o;
    Job *job;
    Corpus *corpus;
    Store *store;
    Plan *plan;
    ZapAuth *zap;
    void *router;
    WireJoin join;
    char local_ep[512];
    char keys_path[4200];
    char moved_to[4200]; /* --force-new: where the old store went */
    char cwd[4096];
    int quiet;
    double hb, lease_s;
    int liveness;
    int max_expiries;
    ResultLimits lim;
    int expire_failed; /* a give-up could not queue its records (err in expire_err) */
    DmErr expire_err;
    uint64_t bad_ids;  /* messages from peers without a worker routing id */
    WorkerSlot *w;
    int nw, capw;
    Results *res;
    DispatchStats st;
    Progress *prog;
    int (*failed)(void *ctx, DmErr *err);
    void *failed_ctx;
    /* cache-logits: records per (question, answer), and the store's extra meta */
    int cache;
    int analyze;      /* stage analyze: records per (question, answer) as well */
    int corrupt_page; /* analyze: another page corrupts each page */
    KvTable *kv;      /* analyze kv_retrieval: the corrupt corpus, paired with the corpus */
    uint64_t seed;
    char m_fp[17], m_topk[16], m_temps[400], m_foa[8], m_kf[8];
    /* infer: the settings that change answers */
    char m_maxlen[16];
    const char *extra[16];
};

/* Worker i is gone (why: "disconnected", "silent for 2.1 s", "dropped"):
 * its shards go back to the queue. */
void dispatch_worker_lost(Dispatch *d, int i, const char *why);

/* Send worker i an Envelope of this kind alone (HEARTBEAT, NO_MORE). */
void dispatch_send_kind(Dispatch *d, int i, int kind);

/* Whether a worker other than `not` is alive and not dropped. */
int dispatch_other_alive(const Dispatch *d, int not);

/* The questions of shard ls, sorted by qid (free the result); NULL when
 * out of memory. */
ShardQuestion *dispatch_shard_questions(const Dispatch *d, const LeaseShard *ls, int *n);

/* A RESULT from worker i (bytes: its size on the wire).  Returns 0
 * (handled: stored, dropped as a duplicate, or handed to another worker
 * for its errors), 1 (rejected: the worker is dropped) or -1 (err). */
int dispatch_result(Dispatch *d, int i, const Docmint__Result *r, size_t bytes, double now,
                    DmErr *err);

#endif
