/* records.c - pack, unpack and print the store records with the
 * protobuf-c code generated from schemas/records.proto. */
#include "common/records.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 ---------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one
 * (overlong forms, surrogates and code points above U+10FFFF are not). */
static size_t s_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

int records_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = s_utf8_seq(p + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

static const char *s_str(const char *s)
{
    return s ? s : "";
}

/* ---- pack / unpack -------------------------------------------------- */

static int s_check_utf8(const char *s, const char *field, const char *what, DmErr *err)
{
    if (s && !records_utf8_valid(s, strlen(s)))
        return dm_err(err, "%s: field %s is not valid UTF-8", what, field);
    return 0;
}

int record_answer_pack(const Docmint__AnswerRecord *r, uint8_t **buf, size_t *len, DmErr *err)
{
    *buf = NULL;
    *len = 0;
    char what[64];
    snprintf(what, sizeof what, "answer record questionId %" PRId64, r->question_id);
    if (s_check_utf8(r->answer, "answer", what, err) < 0 ||
        s_check_utf8(r->page_id, "page_id", what, err) < 0 ||
        s_check_utf8(r->question, "question", what, err) < 0)
        return -1;
    size_t n = docmint__answer_record__get_packed_size(r);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return dm_err(err, "%s: out of memory packing %zu bytes", what, n);
    *len = docmint__answer_record__pack(r, b);
    *buf = b;
    return 0;
}

int record_error_pack(const Docmint__ErrorRecord *r, uint8_t **buf, size_t *len, DmErr *err)
{
    *buf = NULL;
    *len = 0;
    char what[96];
    snprintf(what, sizeof what, "error record questionId %" PRId64, r->question_id);
    if (s_check_utf8(r->item, "item", what, err) < 0 || s_check_utf8(r->stage, "stage", what, err) < 0 ||
        s_check_utf8(r->reason, "reason", what, err) < 0)
        return -1;
    size_t n = docmint__error_record__get_packed_size(r);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return dm_err(err, "%s: out of memory packing %zu bytes", what, n);
    *len = docmint__error_record__pack(r, b);
    *buf = b;
    return 0;
}

Docmint__AnswerRecord *record_answer_unpack(const void *buf, size_t len, DmErr *err)
{
    Docmint__AnswerRecord *r = docmint__answer_record__unpack(NULL, len, buf);
    if (!r)
        dm_err(err, "%zu bytes are not an AnswerRecord (schemas/records.proto)", len);
    return r;
}

Docmint__ErrorRecord *record_error_unpack(const void *buf, size_t len, DmErr *err)
{
    Docmint__ErrorRecord *r = docmint__error_record__unpack(NULL, len, buf);
    if (!r)
        dm_err(err, "%zu bytes are not an ErrorRecord (schemas/records.proto)", len);
    return r;
}

void record_answer_free(Docmint__AnswerRecord **r)
{
    if (r && *r) {
        docmint__answer_record__free_unpacked(*r, NULL);
        *r = NULL;
    }
}

void record_error_free(Docmint__ErrorRecord **r)
{
    if (r && *r) {
        docmint__error_record__free_unpacked(*r, NULL);
        *r = NULL;
    }
}

int record_error_key(const Docmint__ErrorRecord *r, char *key, size_t cap)
{
    const char *item = s_str(r->item);
    size_t n = strlen(item);
    if (n == 0) {
        char num[32];
        n = (size_t)snprintf(num, sizeof num, "%" PRId64, r->question_id);
        if (n > cap)
            return -1;
        memcpy(key, num, n);
        return (int)n;
    }
    if (n > cap)
        return -1;
    memcpy(key, item, n);
    return (int)n;
}

/* ---- store writes --------------------------------------------------- */

int records_put(Store *s, Docmint__AnswerRecord *const *answers, size_t n_answers,
                Docmint__ErrorRecord *const *errors, size_t n_errors, DmErr *err)
{
    size_t n = n_answers + n_errors;
    if (n == 0)
        return 0;
    if (n > INT32_MAX)
        return dm_err(err, "%s: batch of %zu records is too large", store_path(s), n);
    StoreItem *items = calloc(n, sizeof *items);
    uint8_t **bufs = calloc(n, sizeof *bufs);
    unsigned char (*akeys)[8] = calloc(n_answers ? n_answers : 1, 8);
    char (*ekeys)[512] = calloc(n_errors ? n_errors : 1, 512);
    int rc = 0;
    if (!items || !bufs || !akeys || !ekeys) {
        rc = dm_err(err, "%s: out of memory for a batch of %zu records", store_path(s), n);
        goto done;
    }
    for (size_t i = 0; i < n_answers && rc == 0; i++) {
        size_t len;
        if (record_answer_pack(answers[i], &bufs[i], &len, err) < 0) {
            rc = dm_err_prefix(err, "%s", store_path(s));
            break;
        }
        store_key_u64((uint64_t)answers[i]->question_id, akeys[i]);
        items[i] = (StoreItem){STORE_RECORDS, akeys[i], 8, bufs[i], len};
    }
    for (size_t j = 0; j < n_errors && rc == 0; j++) {
        size_t i = n_answers + j, len;
        int klen = record_error_key(errors[j], ekeys[j], 511);
        if (klen < 0) {
            rc = dm_err(err, "%s: error record item '%.60s...' is longer than a store key (511 bytes)",
                        store_path(s), s_str(errors[j]->item));
            break;
        }
        if (record_error_pack(errors[j], &bufs[i], &len, err) < 0) {
            rc = dm_err_prefix(err, "%s", store_path(s));
            break;
        }
        items[i] = (StoreItem){STORE_ERRORS, ekeys[j], (size_t)klen, bufs[i], len};
    }
    if (rc == 0)
        rc = store_put_batch(s, items, (int)n, err);
done:
    if (bufs)
        for (size_t i = 0; i < n; i++)
            free(bufs[i]);
    free(bufs);
    free(items);
    free(akeys);
    free(ekeys);
    return rc;
}

/* ---- JSON lines ----------------------------------------------------- */

typedef struct Buf {
    char *p;
    size_t n, cap;
    int oom;
} Buf;

static void s_put(Buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void s_puts(Buf *b, const char *s)
{
    s_put(b, s, strlen(s));
}

/* A JSON string as Python's json.dumps(s, ensure_ascii=False) writes it;
 * bytes that are not UTF-8 (never in a packed record) become U+FFFD. */
static void s_put_jstr(Buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s_str(s);
    size_t n = strlen((const char *)p);
    s_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        const char *esc = NULL;
        char u[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", c);
                esc = u;
            }
        }
        if (esc) {
            s_puts(b, esc);
            i++;
            continue;
        }
        size_t k = s_utf8_seq(p + i, n - i);
        if (k) {
            s_put(b, (const char *)p + i, k);
            i += k;
        } else {
            s_puts(b, "\xEF\xBF\xBD");
            i++;
        }
    }
    s_put(b, "\"", 1);
}

void records_format_float(char buf[32], float f)
{
    if (!isfinite(f)) {
        strcpy(buf, "null");
        return;
    }
    /* Read back through double, as Python does (float(s) then float32),
     * so both writers choose the same digits. */
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, 32, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f)
            return;
    }
}

static void s_put_i64(Buf *b, int64_t v)
{
    char t[32];
    snprintf(t, sizeof t, "%" PRId64, v);
    s_puts(b, t);
}

static void s_put_float(Buf *b, float f)
{
    char t[32];
    records_format_float(t, f);
    s_puts(b, t);
}

static char *s_finish(Buf *b)
{
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    return b->p;
}

char *record_answer_json(const Docmint__AnswerRecord *r)
{
    Buf b = {0};
    s_puts(&b, "{\"questionId\":");
    s_put_i64(&b, r->question_id);
    s_puts(&b, ",\"answer\":");
    s_put_jstr(&b, r->answer);
    s_puts(&b, ",\"token_ids\":[");
    for (size_t i = 0; i < r->n_token_ids; i++) {
        if (i)
            s_put(&b, ",", 1);
        s_put_i64(&b, r->token_ids[i]);
    }
    s_puts(&b, "],\"mean_logprob\":");
    s_put_float(&b, r->mean_logprob);
    s_puts(&b, ",\"seconds\":");
    s_put_float(&b, r->seconds);
    s_puts(&b, ",\"page_id\":");
    s_put_jstr(&b, r->page_id);
    s_puts(&b, ",\"question\":");
    s_put_jstr(&b, r->question);
    s_puts(&b, "}");
    return s_finish(&b);
}

char *record_error_json(const Docmint__ErrorRecord *r)
{
    Buf b = {0};
    s_puts(&b, "{\"item\":");
    s_put_jstr(&b, r->item);
    s_puts(&b, ",\"stage\":");
    s_put_jstr(&b, r->stage);
    s_puts(&b, ",\"reason\":");
    s_put_jstr(&b, r->reason);
    s_puts(&b, ",\"questionId\":");
    s_put_i64(&b, r->question_id);
    s_puts(&b, "}");
    return s_finish(&b);
}
