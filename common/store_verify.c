/* store_verify.c - every record of a store, checked (store_verify.h). */
#include "common/store_verify.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/logit_store.h"
#include "common/records.h"

void store_key_text(const char *db, int logits, const void *key, size_t klen, char *out, size_t cap)
{
    const unsigned char *k = key;
    if (!strcmp(db, STORE_RECORDS) && logits && klen == LOGIT_KEY_LEN) {
        int64_t q;
        unsigned a;
        logit_key_parse(k, &q, &a);
        snprintf(out, cap, "questionId %" PRId64 " answer %u", q, a);
        return;
    }
    if (!strcmp(db, STORE_RECORDS) && klen == 8) {
        snprintf(out, cap, "questionId %" PRIu64, store_key_to_u64(key));
        return;
    }
    size_t o = 0;
    for (size_t i = 0; i < klen && o + 8 < cap; i++) {
        if (i >= 80) {
            o += (size_t)snprintf(out + o, cap - o, "...");
            break;
        }
        if (k[i] >= 0x20 && k[i] < 0x7f)
            out[o++] = (char)k[i];
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", k[i]);
    }
    out[o < cap ? o : cap - 1] = '\0';
}

/* The record's own id against its key. */
static int s_same(const char *what, const char *in_key, const char *in_rec, DmErr *err)
{
    if (strcmp(in_key, in_rec))
        return dm_err(err, "the key says %s %s, the record %s", what, in_key, in_rec);
    return 0;
}

int store_verify_value(const char *db, int logits, const void *key, size_t klen, const void *val,
                       size_t vlen, DmErr *err)
{
    char a[64], b[64];
    if (!strcmp(db, STORE_META)) {
        if (!records_utf8_valid(val, vlen))
            return dm_err(err, "value is not UTF-8 text");
        return 0;
    }
    if (!strcmp(db, STORE_ERRORS)) {
        Docmint__ErrorRecord *r = record_error_unpack(val, vlen, err);
        if (!r)
            return -1;
        record_error_free(&r);
        return 0;
    }
    if (!strcmp(db, STORE_FEATURES)) {
        Docmint__FeatureRecord *r = feature_record_unpack(val, vlen, err);
        if (!r)
            return -1;
        char *page = malloc(klen + 1);
        int rc = page ? 0 : dm_err(err, "out of memory");
        if (page) {
            memcpy(page, key, klen);
            page[klen] = '\0';
            rc = s_same("page", page, r->page_id ? r->page_id : "", err);
            free(page);
        }
        feature_record_free(&r);
        return rc;
    }
    if (logits) {
        if (klen != LOGIT_KEY_LEN)
            return dm_err(err, "a key of %zu bytes (a logit record's is %d)", klen, LOGIT_KEY_LEN);
        Docmint__LogitRecord *r = logit_record_unpack(val, vlen, err); /* validates the shapes */
        if (!r)
            return -1;
        int64_t q;
        unsigned ai;
        logit_key_parse(key, &q, &ai);
        snprintf(a, sizeof a, "%" PRId64 "/%u", q, ai);
        snprintf(b, sizeof b, "%" PRId64 "/%u", (int64_t)r->question_id, r->answer_index);
        int rc = s_same("questionId/answer", a, b, err);
        logit_record_free(&r);
        return rc;
    }
    if (klen != 8)
        return dm_err(err, "a key of %zu bytes (an answer record's is 8)", klen);
    Docmint__AnswerRecord *r = record_answer_unpack(val, vlen, err);
    if (!r)
        return -1;
    snprintf(a, sizeof a, "%" PRIu64, store_key_to_u64(key));
    snprintf(b, sizeof b, "%" PRIu64, (uint64_t)r->question_id);
    int rc = s_same("questionId", a, b, err);
    record_answer_free(&r);
    return rc;
}

typedef struct Walk {
    const char *db;
    int logits;
    uint64_t *count;
    StoreVerifyCounts *out;
    StoreDamageFn fn;
    void *ctx;
} Walk;

static int s_visit(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                   const char *damage)
{
    Walk *w = ctx;
    (*w->count)++;
    DmErr e = {{0}};
    if (!damage && store_verify_value(w->db, w->logits, key, klen, val, vlen, &e) == 0)
        return 0;
    w->out->damaged++;
    if (w->fn) {
        char kt[256];
        store_key_text(w->db, w->logits, key, klen, kt, sizeof kt);
        w->fn(w->ctx, w->db, kt, damage ? damage : e.msg);
    }
    return 0;
}

int store_verify(Store *s, StoreDamageFn fn, void *ctx, StoreVerifyCounts *out, DmErr *err)
{
    memset(out, 0, sizeof *out);
    out->checksums = store_checksums(s);
    char *kind = NULL;
    if (store_meta_read(s, "kind", &kind, err) < 0)
        return -1;
    int logits = kind && !strcmp(kind, "logits");
    free(kind);
    const char *dbs[4] = {STORE_META, STORE_RECORDS, STORE_ERRORS, STORE_FEATURES};
    uint64_t *counts[4] = {&out->meta, &out->records, &out->errors, &out->features};
    for (int i = 0; i < 4; i++) {
        Walk w = {dbs[i], logits, counts[i], out, fn, ctx};
        if (store_scan(s, dbs[i], s_visit, &w, err) < 0)
            return -1;
    }
    return 0;
}
