/* lease.h - shard planning and the lease table of the coordinator.
 *
 * Planning: the corpus's pages in order, each with the questions the output
 * store does not hold yet (a page with none left is dropped), cut into
 * shards of pages_per_shard pages.  All the questions of one page stay in
 * one shard, so the encoder runs once per page.
 *
 * Leases: a shard is QUEUED, OUT (leased to one worker until a deadline) or
 * DONE.  Each hand-out gets a new lease id (unique within the run).  An
 * expired lease, or one held by a worker found dead, puts the shard back at
 * the front of the queue.  The first result for a shard that is not DONE
 * wins, even from an earlier lease of that shard (otherwise a page slower
 * than lease_seconds could never complete); every later result is a
 * duplicate and is dropped.  Nothing here does I/O, so it is unit-tested
 * on its own (tests/test_dispatch.c). */
#ifndef DM_LEASE_H
#define DM_LEASE_H

#include <stdint.h>

#include "worker/data/corpus.h"
#include "common/dm_error.h"

typedef struct PlanPage {
    int page;   /* index into Corpus.pages */
    int *qidx;  /* indices into the page's questions still to do */
    int nq;
} PlanPage;

enum { LEASE_QUEUED = 0, LEASE_OUT = 1, LEASE_DONE = 2 };

typedef struct LeaseShard {
    uint64_t id;          /* shard id: its index in the plan */
    int first, npages;    /* PlanPage range */
    int nq;               /* questions in the shard */
    int state;
    uint64_t lease_id;    /* the current (last) lease */
    uint64_t *issued;     /* every lease id handed out for this shard */
    int nissued, capissued;
    double deadline;      /* of the current lease */
    int owner;            /* worker slot holding the current lease, -1 */
} LeaseShard;

typedef struct Plan {
    PlanPage *pages;
    int npages;
    LeaseShard *shards;
    int nshards;
    int64_t total_q;   /* distinct questions in the corpus */
    int64_t held_q;    /* already in the store */
    int64_t todo_q;    /* planned: total_q - held_q */
    int64_t dup_q;     /* repeated questionIds in the corpus, planned once */
    /* queue of QUEUED shard indices (a ring) */
    int *queue;
    int qhead, qlen;
    uint64_t next_lease;
    int nout, ndone;
} Plan;

/* Decide whether question qid is already done (held by the store). */
typedef int (*PlanIsDone)(void *ctx, int64_t qid);

int plan_build(const Corpus *c, int pages_per_shard, PlanIsDone is_done, void *ctx, Plan **out,
               DmErr *err);
void plan_free(Plan **p);

/* Lease the next queued shard to worker slot `owner` until now + seconds.
 * Returns the shard index, or -1 when the queue is empty. */
int lease_take(Plan *p, int owner, double now, double seconds);

/* A result for (shard_id, lease_id) arrived.  Returns LEASE_ACCEPT (first
 * result: the shard is now DONE), LEASE_DUPLICATE (already DONE) or
 * LEASE_UNKNOWN (no such shard or a lease id never issued for it). */
enum { LEASE_ACCEPT = 0, LEASE_DUPLICATE = 1, LEASE_UNKNOWN = 2 };
int lease_complete(Plan *p, uint64_t shard_id, uint64_t lease_id);

/* Put shard i back at the front of the queue (from OUT).  */
void lease_requeue(Plan *p, int i);

/* Re-queue every OUT shard whose deadline is before now; calls on_expire
 * (may be NULL) for each before it goes back.  Returns how many. */
typedef void (*LeaseExpired)(void *ctx, const LeaseShard *s, double now);
int lease_expire(Plan *p, double now, LeaseExpired on_expire, void *ctx);

/* Re-queue every OUT shard held by worker slot `owner`.  Returns how many. */
int lease_release_owner(Plan *p, int owner);

/* Earliest deadline of an OUT shard, or a huge value when none is out. */
double lease_next_deadline(const Plan *p);

static inline int lease_all_done(const Plan *p) { return p->ndone == p->nshards; }

#endif
