/* lease.h - shard planning and the lease table of the coordinator.
 *
 * Planning: the corpus's pages in order, each with the questions the output
 * store does not hold yet (a page with none left is dropped), cut into
 * shards of pages_per_shard pages.  All the questions of one page stay in
 * one shard, so the encoder runs once per page.
 *
 * Leases: a shard is QUEUED, OUT (leased to one worker until a deadline) or
 * DONE.  Each hand-out gets a lease id (sequential, for the logs) and a
 * token of 16 random bytes (getrandom) that only the worker it was sent to
 * knows, and it is bound to that worker's slot.  A result counts only when
 * it carries a token issued for its shard to the worker sending it: a
 * token issued to another worker, or never issued, is a forgery
 * (LEASE_FOREIGN, LEASE_UNKNOWN).  An expired lease, or one held by a
 * worker found dead, puts the shard back at the front of the queue.  The
 * first result for a shard that is not DONE wins, even from an earlier
 * lease of that shard (otherwise a page slower than lease_seconds could
 * never complete); every later result is a duplicate and is dropped.
 * Nothing here does I/O, so it is unit-tested on its own
 * (tests/test_dispatch.c). */
#ifndef DM_LEASE_H
#define DM_LEASE_H

#include <stddef.h>
#include <stdint.h>

#include "worker/data/corpus.h"
#include "common/dm_error.h"

typedef struct PlanPage {
    int page;   /* index into Corpus.pages */
    int *qidx;  /* indices into the page's questions still to do */
    int nq;
} PlanPage;

enum { LEASE_QUEUED = 0, LEASE_OUT = 1, LEASE_DONE = 2 };

#define LEASE_TOKEN_BYTES 16

/* One hand-out of a shard. */
typedef struct LeaseIssue {
    uint64_t id;
    uint8_t token[LEASE_TOKEN_BYTES];
    int owner; /* the worker slot it was given to */
    int open;  /* not answered by its owner yet, nor released (the
                * coordinator's count of what a worker holds) */
} LeaseIssue;

typedef struct LeaseShard {
    uint64_t id;          /* shard id: its index in the plan */
    int first, npages;    /* PlanPage range */
    int nq;               /* questions in the shard */
    int state;
    uint64_t lease_id;    /* the current (last) lease */
    uint8_t token[LEASE_TOKEN_BYTES]; /* ... and its token */
    LeaseIssue *issued;   /* every hand-out of this shard */
    int nissued, capissued;
    double deadline;      /* of the current lease */
    int owner;            /* worker slot holding the current lease, -1 */
    int last_owner;       /* the slot of the last hand-out, -1 before any */
    int expiries;         /* leases of this shard that expired */
    int error_retried;    /* errors reported once: handed out again */
    int avoid;            /* slot not to give it to (it reported errors), -1 */
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
 * Returns the shard index, or -1 when the queue is empty (or no random
 * bytes could be had). */
int lease_take(Plan *p, int owner, double now, double seconds);

/* The same with the first queued shard that ok(ctx, shard, owner) accepts
 * (ok may be NULL: any). */
typedef int (*LeaseFilter)(void *ctx, const LeaseShard *s, int owner);
int lease_take_if(Plan *p, int owner, double now, double seconds, LeaseFilter ok, void *ctx);

/* A result for shard_id with a lease token arrived from worker slot
 * `owner`.  Returns LEASE_ACCEPT (the token was issued to owner and the
 * shard is not DONE), LEASE_DUPLICATE (issued to owner, shard already
 * DONE), LEASE_FOREIGN (the token was issued to another slot) or
 * LEASE_UNKNOWN (no such shard, or a token never issued for it).  *issue
 * (may be NULL) receives the hand-out for the first two.  Changes nothing. */
enum { LEASE_ACCEPT = 0, LEASE_DUPLICATE = 1, LEASE_UNKNOWN = 2, LEASE_FOREIGN = 3 };
int lease_check(Plan *p, uint64_t shard_id, const void *token, size_t toklen, int owner,
                LeaseIssue **issue);

/* Mark shard i DONE (from OUT or QUEUED). */
void lease_finish(Plan *p, int i);

/* lease_check, then lease_finish when accepted. */
int lease_complete(Plan *p, uint64_t shard_id, const void *token, size_t toklen, int owner);

/* Put shard i back at the front of the queue (from OUT).  */
void lease_requeue(Plan *p, int i);

/* Hand shard i out again, not to slot `avoid` when another can take it:
 * re-queued when `avoid` holds its current lease, otherwise (queued, or
 * out with another worker) only marked. */
void lease_retry(Plan *p, int i, int avoid);

/* Every OUT shard whose deadline is before now counts an expiry, then
 * on_expire (may be NULL) decides: 0 re-queues it, 1 gives it up (DONE;
 * the caller has written its records).  Returns how many expired. */
typedef int (*LeaseExpired)(void *ctx, const LeaseShard *s, double now);
int lease_expire(Plan *p, double now, LeaseExpired on_expire, void *ctx);

/* Re-queue every OUT shard held by worker slot `owner`, and close its open
 * hand-outs.  Returns how many shards went back. */
int lease_release_owner(Plan *p, int owner);

/* Earliest deadline of an OUT shard, or a huge value when none is out. */
double lease_next_deadline(const Plan *p);

static inline int lease_all_done(const Plan *p) { return p->ndone == p->nshards; }

#endif
