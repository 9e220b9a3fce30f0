/* results.c - what the store holds, and the batched writer (results.h). */
#include "coordinator/results.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/logit_store.h"
#include "common/records.h"

#define FLUSH_SECONDS 1.0 /* a queued record waits at most this long */
#define FLUSH_BYTES ((size_t)64 << 20) /* queued bytes that are due (features are large) */

struct Results {
    Store *store;
    int commit_every;
    /* the batch: items whose key and value live in bufs[i] */
    StoreItem *items;
    unsigned char **bufs;
    int n, cap;
    int nrec, nerr;  /* answers and errors in the batch */
    int nfeat;       /* feature records in the batch */
    size_t bytes;    /* keys and values in the batch */
    double first_at; /* when the batch's first item came */
    int64_t *held;   /* sorted questionIds the store held */
    size_t nheld, capheld;
    /* --retry-errors: the questions of error records (not held), and the
     * error keys results_start deletes */
    int retry;
    int64_t *errq;
    size_t nerrq, caperrq;
    unsigned char **delkeys;
    size_t *dellens;
    size_t ndel, capdel;
    int64_t stored;  /* distinct questions with a record or an error */
    ResultsCounts c;
    const char *kind, *stage;  /* "answers"/"infer" or "logits"/"cache-logits" */
    const char *const *extra;  /* key, value, ..., NULL */
};

void results_set_kind(Results *r, const char *kind, const char *stage, const char *const *extra)
{
    r->kind = kind;
    r->stage = stage;
    r->extra = extra;
}

void results_iso_now(char *out, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ------------------------------------------------------------ held set */

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int s_push(int64_t **a, size_t *n, size_t *cap, int64_t v)
{
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 1024;
        int64_t *p = realloc(*a, c * sizeof *p);
        if (!p)
            return 1;
        *a = p;
        *cap = c;
    }
    (*a)[(*n)++] = v;
    return 0;
}

static int s_hold(Results *r, int64_t qid) { return s_push(&r->held, &r->nheld, &r->capheld, qid); }

/* Sort and drop repeats; returns the new length. */
static size_t s_sort_unique(int64_t *a, size_t n)
{
    if (n == 0)
        return 0;
    qsort(a, n, sizeof *a, s_cmp_i64);
    size_t m = 1;
    for (size_t i = 1; i < n; i++)
        if (a[i] != a[m - 1])
            a[m++] = a[i];
    return m;
}

/* --retry-errors: note an error record's question and key. */
static int s_retry_error(Results *r, int64_t qid, const void *key, size_t klen)
{
    if (r->ndel == r->capdel) {
        size_t c = r->capdel ? 2 * r->capdel : 256;
        unsigned char **k = realloc(r->delkeys, c * sizeof *k);
        if (!k)
            return 1;
        r->delkeys = k;
        size_t *l = realloc(r->dellens, c * sizeof *l);
        if (!l)
            return 1;
        r->dellens = l;
        r->capdel = c;
    }
    if (!(r->delkeys[r->ndel] = malloc(klen)))
        return 1;
    memcpy(r->delkeys[r->ndel], key, klen);
    r->dellens[r->ndel++] = klen;
    return qid ? s_push(&r->errq, &r->nerrq, &r->caperrq, qid) : 0;
}

static int s_visit_record(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)val;
    (void)vlen;
    /* answers: questionId; logits: questionId + answer index (a question
     * is done once any of its answers is stored: a shard's records are
     * committed in one transaction, so all of them or none). */
    return klen == 8 || klen == LOGIT_KEY_LEN ? s_hold(ctx, (int64_t)store_key_to_u64(key)) : 0;
}

static int s_error_qid(const void *key, size_t klen, const void *val, size_t vlen, int64_t *qid)
{
    char buf[32];
    *qid = 0;
    if (klen > 0 && klen < sizeof buf) {
        memcpy(buf, key, klen);
        buf[klen] = '\0';
        char *end;
        errno = 0;
        long long v = strtoll(buf, &end, 10);
        if (!*end && !errno) {
            *qid = v;
            return 0;
        }
    }
    /* Not a questionId key: the record may name its question. */
    DmErr err;
    Docmint__ErrorRecord *e = record_error_unpack(val, vlen, &err);
    if (e)
        *qid = e->question_id;
    record_error_free(&e);
    return 0;
}

static int s_visit_error(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    Results *r = ctx;
    int64_t qid;
    s_error_qid(key, klen, val, vlen, &qid);
    if (r->retry)
        return s_retry_error(r, qid, key, klen);
    return qid ? s_hold(r, qid) : 0;
}

/* With --retry-errors a question with an error record is not held, even
 * when (cache-logits) some of its answers have records. */
static size_t s_drop_errored(Results *r)
{
    size_t m = 0;
    for (size_t i = 0; i < r->nheld; i++)
        if (!(r->nerrq && bsearch(&r->held[i], r->errq, r->nerrq, sizeof *r->errq, s_cmp_i64)))
            r->held[m++] = r->held[i];
    return m;
}

int results_open(Store *s, int commit_every, int retry_errors, Results **out, DmErr *err)
{
    *out = NULL;
    Results *r = calloc(1, sizeof *r);
    if (!r)
        return dm_err(err, "out of memory");
    r->store = s;
    r->commit_every = commit_every > 0 ? commit_every : 256;
    r->kind = "answers";
    r->stage = "infer";
    r->retry = retry_errors;
    if (store_count(s, STORE_RECORDS, &r->c.records0, err) ||
        store_count(s, STORE_ERRORS, &r->c.errors0, err) ||
        store_foreach(s, STORE_RECORDS, s_visit_record, r, err) ||
        store_foreach(s, STORE_ERRORS, s_visit_error, r, err)) {
        results_free(&r);
        return -1;
    }
    r->nheld = s_sort_unique(r->held, r->nheld);
    r->nerrq = s_sort_unique(r->errq, r->nerrq);
    /* distinct questions the store holds, errored ones included */
    r->stored = (int64_t)r->nheld + (int64_t)r->nerrq;
    for (size_t i = 0; i < r->nerrq; i++)
        r->stored -= r->nheld && bsearch(&r->errq[i], r->held, r->nheld, sizeof *r->held, s_cmp_i64);
    if (r->retry) {
        r->nheld = s_drop_errored(r);
        r->c.errors0 = 0; /* results_start deletes them */
    }
    *out = r;
    return 0;
}

int results_held(const Results *r, int64_t qid)
{
    return r->nheld && bsearch(&qid, r->held, r->nheld, sizeof *r->held, s_cmp_i64) != NULL;
}

int results_stored(const Results *r, int64_t qid)
{
    return results_held(r, qid) ||
           (r->nerrq && bsearch(&qid, r->errq, r->nerrq, sizeof *r->errq, s_cmp_i64) != NULL);
}

int64_t results_stored_count(const Results *r) { return r->stored; }

size_t results_retried(const Results *r) { return r->ndel; }

void results_forget_held(Results *r)
{
    free(r->held);
    r->held = NULL;
    r->nheld = r->capheld = 0;
    free(r->errq);
    r->errq = NULL;
    r->nerrq = r->caperrq = 0;
}

/* ---------------------------------------------------------------- batch */

static int s_add(Results *r, const char *db, const void *key, size_t klen, const void *val,
                 size_t vlen, double now)
{
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 256;
        StoreItem *it = realloc(r->items, (size_t)cap * sizeof *it);
        if (!it)
            return -1;
        r->items = it;
        unsigned char **bf = realloc(r->bufs, (size_t)cap * sizeof *bf);
        if (!bf)
            return -1;
        r->bufs = bf;
        r->cap = cap;
    }
    unsigned char *buf = malloc(klen + vlen + 1);
    if (!buf)
        return -1;
    memcpy(buf, key, klen);
    if (vlen)
        memcpy(buf + klen, val, vlen);
    r->bufs[r->n] = buf;
    r->items[r->n] = (StoreItem){db, buf, klen, val ? buf + klen : NULL, vlen}; /* NULL: delete */
    r->bytes += klen + vlen;
    if (r->n == 0)
        r->first_at = now;
    r->n++;
    return 0;
}

/* Queue a packed record and count it, as an error record or as a record;
 * buf is freed here. */
static int s_queue(Results *r, const char *db, const void *key, size_t klen, uint8_t *buf,
                   size_t len, double now, DmErr *err)
{
    int bad = s_add(r, db, key, klen, buf, len, now);
    free(buf);
    if (bad)
        return dm_err(err, "out of memory queueing a record");
    if (!strcmp(db, STORE_ERRORS)) {
        r->nerr++;
        r->c.acc_errors++;
    } else {
        r->nrec++;
        r->c.acc_answers++;
    }
    return 0;
}

static int s_meta(Results *r, const char *key, const char *val)
{
    return s_add(r, STORE_META, key, strlen(key), val, strlen(val), dm_now());
}

static int s_meta_i64(Results *r, const char *key, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return s_meta(r, key, buf);
}

static void s_clear(Results *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->bufs[i]);
    r->n = r->nrec = r->nerr = r->nfeat = 0;
    r->bytes = 0;
}

int results_add_error(Results *r, int64_t qid, const Docmint__ErrorRecord *er,
                      const char *reason, double now, DmErr *err)
{
    Docmint__ErrorRecord e;
    char item[32];
    snprintf(item, sizeof item, "%" PRId64, qid);
    if (er) {
        e = *er;
    } else {
        docmint__error_record__init(&e);
        e.stage = (char *)r->stage;
        e.reason = (char *)reason;
    }
    e.item = item;
    e.question_id = qid;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (record_error_pack(&e, &buf, &len, err) != 0) {
        /* A worker's text that is not UTF-8: keep the record, lose the text. */
        e.stage = (char *)r->stage;
        e.reason = "the worker's reason was not valid UTF-8";
        if (record_error_pack(&e, &buf, &len, err) != 0)
            return -1;
    }
    return s_queue(r, STORE_ERRORS, item, strlen(item), buf, len, now, err);
}

int results_add_answer(Results *r, const Docmint__AnswerRecord *a, double now, DmErr *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    DmErr perr = {{0}};
    if (record_answer_pack(a, &buf, &len, &perr) != 0)
        return results_add_error(r, a->question_id, NULL, perr.msg, now, err);
    unsigned char key[8];
    store_key_u64((uint64_t)a->question_id, key);
    return s_queue(r, STORE_RECORDS, key, 8, buf, len, now, err);
}

int results_add_error_item(Results *r, const Docmint__ErrorRecord *er, double now, DmErr *err)
{
    char key[256];
    int klen = record_error_key(er, key, sizeof key);
    if (klen <= 0 || !records_utf8_valid(er->item, strlen(er->item)) || strchr(er->item, '\n'))
        return results_add_error(r, er->question_id, er, NULL, now, err);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (record_error_pack(er, &buf, &len, err) != 0)
        return results_add_error(r, er->question_id, er, NULL, now, err);
    return s_queue(r, STORE_ERRORS, key, (size_t)klen, buf, len, now, err);
}

int results_add_logit(Results *r, const Docmint__LogitRecord *l, double now, DmErr *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    DmErr perr = {{0}};
    if (logit_record_pack(l, &buf, &len, &perr) != 0)
        return results_add_error(r, l->question_id, NULL, perr.msg, now, err);
    unsigned char key[LOGIT_KEY_LEN];
    logit_key(l->question_id, l->answer_index, key);
    return s_queue(r, STORE_RECORDS, key, sizeof key, buf, len, now, err);
}

int results_add_analysis(Results *r, const Docmint__AnalysisRecord *a, double now, DmErr *err)
{
    size_t n = docmint__analysis_record__get_packed_size(a);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return dm_err(err, "out of memory packing an analysis record");
    size_t len = docmint__analysis_record__pack(a, buf);
    unsigned char key[LOGIT_KEY_LEN];
    logit_key(a->question_id, a->answer_index, key);
    return s_queue(r, STORE_RECORDS, key, sizeof key, buf, len, now, err);
}

int results_add_feature(Results *r, const Docmint__FeatureRecord *f, double now, DmErr *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    DmErr perr = {{0}};
    size_t klen = f->page_id ? strlen(f->page_id) : 0;
    if (klen == 0 || klen > 511)
        dm_err(&perr, "features: a page id of %zu bytes is not a store key (1 to 511)", klen);
    if (perr.msg[0] || feature_record_pack(f, &buf, &len, &perr) != 0) {
        /* A page the worker described wrongly: an error record, not a
         * stopped job. */
        char item[300];
        snprintf(item, sizeof item, "features of page %.200s", f->page_id ? f->page_id : "");
        Docmint__ErrorRecord e;
        docmint__error_record__init(&e);
        e.item = item;
        e.stage = (char *)r->stage;
        e.reason = perr.msg;
        return results_add_error_item(r, &e, now, err);
    }
    int bad = s_add(r, STORE_FEATURES, f->page_id, klen, buf, len, now);
    free(buf);
    if (bad)
        return dm_err(err, "out of memory queueing the features of page %s", f->page_id);
    r->nfeat++;
    return 0;
}

int results_due(const Results *r, double now)
{
    return r->nrec + r->nerr >= r->commit_every || r->bytes >= FLUSH_BYTES ||
           (r->n > 0 && now - r->first_at >= FLUSH_SECONDS);
}

int results_flush(Results *r, int64_t dispatched, int64_t dropped, const char *finished_at,
                  DmErr *err)
{
    int64_t answers = r->c.answers + r->nrec, errors = r->c.errors + r->nerr;
    int64_t features = r->c.features + r->nfeat;
    if (s_meta_i64(r, "count_records", (int64_t)r->c.records0 + answers) ||
        s_meta_i64(r, "count_errors", (int64_t)r->c.errors0 + errors) ||
        s_meta_i64(r, "computed_this_run", answers + errors) ||
        s_meta_i64(r, "dispatched_this_run", dispatched) ||
        s_meta_i64(r, "dropped_this_run", dropped) ||
        (!strcmp(r->kind, "logits") && s_meta_i64(r, "features_this_run", features)) ||
        (finished_at && s_meta(r, "finished_at", finished_at))) {
        s_clear(r);
        return dm_err(err, "out of memory preparing a store batch");
    }
    int rc = store_put_batch(r->store, r->items, r->n, err);
    s_clear(r);
    if (rc)
        return dm_err_prefix(err, "writing %s", store_path(r->store));
    r->c.answers = answers;
    r->c.errors = errors;
    r->c.features = features;
    return 0;
}

/* ----------------------------------------------------------------- meta */

int results_check_meta(Results *r, const char *output, const char *model, const char *fingerprint,
                       DmErr *err)
{
    char *kind = store_meta_get(r->store, "kind", err);
    char *old = store_meta_get(r->store, "model_fingerprint", err);
    int rc = 0, logits = !strcmp(r->kind, "logits");
    if (kind && strcmp(kind, r->kind) != 0)
        rc = dm_err(err, "%s: the store holds \"%s\" records, not %s: choose another output",
                    output, kind, r->kind);
    else if (old && old[0] && fingerprint[0] && strcmp(old, fingerprint) != 0)
        rc = dm_err(err,
                    "%s: the store holds %s of %s %s, but %s is %s: choose another output, "
                    "use the model the store was made with, or rerun with --force-new",
                    output, logits ? "logits" : "answers", logits ? "teacher" : "model", old,
                    model, fingerprint);
    for (int i = 0; rc == 0 && kind && r->extra && r->extra[i]; i += 2) {
        /* the corpus may grow: dispatch checks that it asks every
         * question the store holds */
        if (!strcmp(r->extra[i], "corpus") || !strcmp(r->extra[i], "questions"))
            continue;
        char *have = store_meta_get(r->store, r->extra[i], err);
        if (have && strcmp(have, r->extra[i + 1]) != 0)
            rc = dm_err(err, "%s: the store was made with %s %s, this job has %s: choose another "
                             "output, or rerun with --force-new (a fresh store; the old one is "
                             "moved aside)",
                        output, r->extra[i], have, r->extra[i + 1]);
        free(have);
    }
    free(kind);
    free(old);
    return rc;
}

int results_start(Results *r, const char *job_json, const char *fingerprint,
                  const char *tok_fingerprint, int64_t held, DmErr *err)
{
    char now[32];
    results_iso_now(now, sizeof now);
    char *started = store_meta_get(r->store, "started_at", err);
    char *runs = store_meta_get(r->store, "runs", err);
    long nruns = runs ? strtol(runs, NULL, 10) : 0;
    int bad = s_meta(r, "schema_version", STORE_SCHEMA_VERSION) || s_meta(r, "kind", r->kind) ||
              s_meta(r, "job", job_json) ||
              (fingerprint[0] && s_meta(r, "model_fingerprint", fingerprint)) ||
              (tok_fingerprint[0] && s_meta(r, "tokenizer_fingerprint", tok_fingerprint)) ||
              s_meta(r, "started_at", started && started[0] ? started : now) ||
              s_meta(r, "run_started_at", now) || s_meta(r, "finished_at", "") ||
              s_meta_i64(r, "held_at_start", held) || s_meta_i64(r, "runs", nruns + 1);
    for (int i = 0; !bad && r->extra && r->extra[i]; i += 2)
        bad = s_meta(r, r->extra[i], r->extra[i + 1]);
    /* --retry-errors: the error records go in the same transaction. */
    for (size_t i = 0; !bad && i < r->ndel; i++)
        bad = s_add(r, STORE_ERRORS, r->delkeys[i], r->dellens[i], NULL, 0, dm_now());
    free(started);
    free(runs);
    if (bad) {
        s_clear(r);
        return dm_err(err, "out of memory");
    }
    return results_flush(r, 0, 0, NULL, err);
}

const ResultsCounts *results_counts(const Results *r) { return &r->c; }

void results_free(Results **pr)
{
    Results *r = *pr;
    if (!r)
        return;
    s_clear(r);
    free(r->items);
    free(r->bufs);
    free(r->held);
    free(r->errq);
    for (size_t i = 0; i < r->ndel; i++)
        free(r->delkeys[i]);
    free(r->delkeys);
    free(r->dellens);
    free(r);
    *pr = NULL;
}
