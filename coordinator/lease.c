/* lease.c - shard planning and leases (lease.h). */
#include "coordinator/lease.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* ------------------------------------------------------ a set of questionIds */

typedef struct QidSet {
    int64_t *slot; /* open addressing; INT64_MIN marks an empty slot */
    size_t cap, n;
} QidSet;

static size_t s_hash(int64_t v)
{
    uint64_t x = (uint64_t)v;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static int s_set_init(QidSet *s, size_t expect)
{
    s->cap = 16;
    while (s->cap < expect * 2)
        s->cap <<= 1;
    s->n = 0;
    s->slot = malloc(s->cap * sizeof *s->slot);
    if (!s->slot)
        return -1;
    for (size_t i = 0; i < s->cap; i++)
        s->slot[i] = INT64_MIN;
    return 0;
}

/* Insert; returns 1 when v was new, 0 when present. */
static int s_set_add(QidSet *s, int64_t v)
{
    size_t i = s_hash(v) & (s->cap - 1);
    while (s->slot[i] != INT64_MIN) {
        if (s->slot[i] == v)
            return 0;
        i = (i + 1) & (s->cap - 1);
    }
    s->slot[i] = v;
    s->n++;
    return 1;
}

/* ------------------------------------------------------------------ planning */

int plan_build(const Corpus *c, int pages_per_shard, PlanIsDone is_done, void *ctx, Plan **out,
               DmErr *err)
{
    *out = NULL;
    if (pages_per_shard < 1)
        return dm_err(err, "pages_per_shard %d: must be at least 1", pages_per_shard);
    Plan *p = calloc(1, sizeof *p);
    QidSet seen = {0};
    if (!p || s_set_init(&seen, (size_t)(c->nquestions > 0 ? c->nquestions : 1)) != 0)
        goto oom;
    /* One spare entry: the page being filled sits at index npages. */
    p->pages = calloc((size_t)c->npages + 1, sizeof *p->pages);
    if (!p->pages)
        goto oom;
    for (int i = 0; i < c->npages; i++) {
        const CorpusPage *cp = &c->pages[i];
        PlanPage *pp = &p->pages[p->npages];
        pp->page = i;
        pp->qidx = malloc((size_t)(cp->nq > 0 ? cp->nq : 1) * sizeof *pp->qidx);
        if (!pp->qidx)
            goto oom;
        for (int k = 0; k < cp->nq; k++) {
            int64_t qid = cp->q[k].qid;
            if (!s_set_add(&seen, qid)) {
                p->dup_q++;
                continue;
            }
            p->total_q++;
            if (is_done && is_done(ctx, qid)) {
                p->held_q++;
                continue;
            }
            pp->qidx[pp->nq++] = k;
        }
        if (pp->nq == 0) {
            free(pp->qidx);
            pp->qidx = NULL;
        } else {
            p->npages++;
            p->todo_q += pp->nq;
        }
    }
    int ns = (p->npages + pages_per_shard - 1) / pages_per_shard;
    p->shards = calloc((size_t)(ns > 0 ? ns : 1), sizeof *p->shards);
    p->queue = malloc((size_t)(ns > 0 ? ns : 1) * sizeof *p->queue);
    if (!p->shards || !p->queue)
        goto oom;
    for (int s = 0; s < ns; s++) {
        LeaseShard *sh = &p->shards[s];
        sh->id = (uint64_t)s;
        sh->first = s * pages_per_shard;
        sh->npages = p->npages - sh->first < pages_per_shard ? p->npages - sh->first
                                                               : pages_per_shard;
        for (int k = 0; k < sh->npages; k++)
            sh->nq += p->pages[sh->first + k].nq;
        sh->owner = -1;
        sh->last_owner = -1;
        sh->avoid = -1;
        p->queue[s] = s;
    }
    p->nshards = ns;
    p->qlen = ns;
    free(seen.slot);
    *out = p;
    return 0;
oom:
    free(seen.slot);
    plan_free(&p);
    return dm_err(err, "out of memory planning shards");
}

void plan_free(Plan **pp)
{
    Plan *p = *pp;
    if (!p)
        return;
    for (int i = 0; p->pages && i <= p->npages; i++)
        free(p->pages[i].qidx);
    for (int s = 0; p->shards && s < p->nshards; s++)
        free(p->shards[s].issued);
    free(p->pages);
    free(p->shards);
    free(p->queue);
    free(p);
    *pp = NULL;
}

/* -------------------------------------------------------------------- leases */

static void s_push_front(Plan *p, int i)
{
    p->qhead = (p->qhead + p->nshards - 1) % p->nshards;
    p->queue[p->qhead] = i;
    p->qlen++;
}

/* Take the k-th queued entry out of the queue (order kept). */
static int s_remove_at(Plan *p, int k)
{
    int i = p->queue[(p->qhead + k) % p->nshards];
    for (int m = k; m > 0; m--)
        p->queue[(p->qhead + m) % p->nshards] = p->queue[(p->qhead + m - 1) % p->nshards];
    p->qhead = (p->qhead + 1) % p->nshards;
    p->qlen--;
    return i;
}

static int s_random(uint8_t *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(buf + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

int lease_take_if(Plan *p, int owner, double now, double seconds, LeaseFilter ok, void *ctx)
{
    int k = 0;
    while (k < p->qlen && ok && !ok(ctx, &p->shards[p->queue[(p->qhead + k) % p->nshards]], owner))
        k++;
    if (k >= p->qlen)
        return -1;
    LeaseShard *s = &p->shards[p->queue[(p->qhead + k) % p->nshards]];
    if (s->nissued == s->capissued) {
        int cap = s->capissued ? 2 * s->capissued : 2;
        LeaseIssue *v = realloc(s->issued, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        s->issued = v;
        s->capissued = cap;
    }
    LeaseIssue *is = &s->issued[s->nissued];
    if (s_random(is->token, sizeof is->token) != 0)
        return -1;
    int i = s_remove_at(p, k);
    is->id = ++p->next_lease;
    is->owner = owner;
    is->open = 1;
    s->nissued++;
    s->lease_id = is->id;
    memcpy(s->token, is->token, sizeof s->token);
    s->state = LEASE_OUT;
    s->deadline = now + seconds;
    s->owner = owner;
    s->last_owner = owner;
    p->nout++;
    return i;
}

int lease_take(Plan *p, int owner, double now, double seconds)
{
    return lease_take_if(p, owner, now, seconds, NULL, NULL);
}

/* Token comparison whose time does not depend on where they differ. */
static int s_token_eq(const uint8_t *a, const uint8_t *b)
{
    unsigned d = 0;
    for (int k = 0; k < LEASE_TOKEN_BYTES; k++)
        d |= (unsigned)(a[k] ^ b[k]);
    return d == 0;
}

int lease_check(Plan *p, uint64_t shard_id, const void *token, size_t toklen, int owner,
                LeaseIssue **issue)
{
    if (issue)
        *issue = NULL;
    if (shard_id >= (uint64_t)p->nshards || !token || toklen != LEASE_TOKEN_BYTES)
        return LEASE_UNKNOWN;
    LeaseShard *s = &p->shards[shard_id];
    LeaseIssue *is = NULL;
    for (int k = 0; k < s->nissued; k++)
        if (s_token_eq(s->issued[k].token, token))
            is = &s->issued[k];
    if (!is)
        return LEASE_UNKNOWN;
    if (is->owner != owner)
        return LEASE_FOREIGN;
    if (issue)
        *issue = is;
    return s->state == LEASE_DONE ? LEASE_DUPLICATE : LEASE_ACCEPT;
}

void lease_finish(Plan *p, int i)
{
    LeaseShard *s = &p->shards[i];
    if (s->state == LEASE_DONE)
        return;
    if (s->state == LEASE_OUT) {
        p->nout--;
    } else {
        /* QUEUED again (its lease expired): take it out of the queue. */
        for (int k = 0; k < p->qlen; k++)
            if (p->queue[(p->qhead + k) % p->nshards] == i) {
                s_remove_at(p, k);
                break;
            }
    }
    s->state = LEASE_DONE;
    s->owner = -1;
    p->ndone++;
}

int lease_complete(Plan *p, uint64_t shard_id, const void *token, size_t toklen, int owner)
{
    int st = lease_check(p, shard_id, token, toklen, owner, NULL);
    if (st == LEASE_ACCEPT)
        lease_finish(p, (int)shard_id);
    return st;
}

void lease_requeue(Plan *p, int i)
{
    LeaseShard *s = &p->shards[i];
    if (s->state != LEASE_OUT)
        return;
    s->state = LEASE_QUEUED;
    s->owner = -1;
    p->nout--;
    s_push_front(p, i);
}

void lease_retry(Plan *p, int i, int avoid)
{
    LeaseShard *s = &p->shards[i];
    s->avoid = avoid;
    s->error_retried = 1;
    if (s->state == LEASE_OUT && s->owner == avoid)
        lease_requeue(p, i);
}

int lease_expire(Plan *p, double now, LeaseExpired on_expire, void *ctx)
{
    int n = 0;
    if (p->nout == 0)
        return 0;
    /* Walk backwards so the earliest shard ends up first in the queue. */
    for (int i = p->nshards - 1; i >= 0; i--) {
        LeaseShard *s = &p->shards[i];
        if (s->state == LEASE_OUT && s->deadline < now) {
            s->expiries++;
            if (on_expire && on_expire(ctx, s, now))
                lease_finish(p, i);
            else
                lease_requeue(p, i);
            n++;
        }
    }
    return n;
}

int lease_release_owner(Plan *p, int owner)
{
    int n = 0;
    for (int i = p->nshards - 1; i >= 0; i--) {
        LeaseShard *s = &p->shards[i];
        for (int k = 0; k < s->nissued; k++)
            if (s->issued[k].owner == owner)
                s->issued[k].open = 0;
        if (s->state == LEASE_OUT && s->owner == owner) {
            lease_requeue(p, i);
            n++;
        }
    }
    return n;
}

double lease_next_deadline(const Plan *p)
{
    double d = 1e300;
    if (p->nout == 0)
        return d;
    for (int i = 0; i < p->nshards; i++)
        if (p->shards[i].state == LEASE_OUT && p->shards[i].deadline < d)
            d = p->shards[i].deadline;
    return d;
}
