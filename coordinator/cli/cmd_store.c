/* cmd_store.c - `docmint store`: look inside a store (stat, get, dump) and,
 * as a repair and testing tool, write records into one (import). */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/analyze_report.h"
#include "coordinator/cli/commands.h"
#include "common/logit_store.h"
#include "common/records.h"
#include "common/store.h"
#include "common/store_verify.h"

static void s_help(FILE *f)
{
    fprintf(f,
            "usage: docmint store stat STORE [--json]\n"
            "       docmint store get STORE QUESTION_ID\n"
            "       docmint store get STORE ITEM --errors\n"
            "       docmint store get STORE PAGE_ID --features\n"
            "       docmint store dump STORE [--errors | --features]\n"
            "       docmint store import STORE [--errors] [--batch N] < IN.jsonl\n"
            "       docmint store verify STORE\n"
            "  stat        meta entries (schema version, kind, model fingerprint, counts, start/end),\n"
            "              record and error counts, map size, bytes used, bytes per record; a logit\n"
            "              store adds positions and bytes per position, and its features (count,\n"
            "              bytes, bytes per page)\n"
            "  get         one record as a JSON line: an answer by questionId (in a logit store,\n"
            "              every answer record of the question), or with --errors an\n"
            "              error record by its item (questionId or page id)\n"
            "  dump        every record as JSON lines in key order (answers by questionId):\n"
            "              {\"questionId\",\"answer\",\"token_ids\",\"mean_logprob\",\"seconds\",\"page_id\",\"question\"};\n"
            "              with --errors {\"item\",\"stage\",\"reason\",\"questionId\"}; with --features\n"
            "              {\"page_id\",\"tokens\",\"dim\",\"image_path\",\"page_no\",\"value_bytes\",\"max_abs\"}\n"
            "              per page (the float16 values themselves: logit_store_features in C,\n"
            "              dmstore.py features() in Python).\n"
            "              schemas/python/dmstore.py prints the same lines from Python\n"
            "  import      repair/testing tool: JSON lines in the form dump prints -> records (created\n"
            "              when STORE is missing); an existing key is replaced; a bad line stops\n"
            "              the import (batches before it stay written); then meta\n"
            "              count_records/count_errors are set to the store's counts\n"
            "  verify      read every entry of every database: each record's checksum (CRC-32C; a\n"
            "              store written before checksums has none), then its parse and shape; prints\n"
            "              one line per damaged entry (database, key, what is wrong) and a summary;\n"
            "              exit status 1 when any entry is damaged or the store cannot be read\n"
            "  --json      stat: one JSON object instead of text (default: text)\n"
            "  --errors    get/dump/import the errors database (default: the answer records)\n"
            "  --features  get/dump the features database of a logit store (encoder output per page)\n"
            "  --batch N   import: records per transaction (default 1000)\n"
            "  -h, --help  this help\n"
            "environment: DOCMINT_STORE_MAP_MB  initial map size in MiB of a store opened for writing\n"
            "             (default 64; the map doubles whenever a batch does not fit)\n");
}

typedef struct Args {
    const char *sub, *store, *key;
    int json, errors, features;
    long batch;
} Args;

/* Returns -1 to go on, else the exit status. */
static int s_parse(int argc, char **argv, Args *a)
{
    memset(a, 0, sizeof *a);
    a->batch = 1000;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            s_help(stdout);
            return 0;
        } else if (!strcmp(s, "--json")) {
            a->json = 1;
        } else if (!strcmp(s, "--errors")) {
            a->errors = 1;
        } else if (!strcmp(s, "--features")) {
            a->features = 1;
        } else if (!strcmp(s, "--batch")) {
            char *end;
            if (i + 1 >= argc) {
                fprintf(stderr, "docmint store: --batch needs a number\n");
                return 2;
            }
            errno = 0;
            a->batch = strtol(argv[++i], &end, 10);
            if (errno || *end || a->batch < 1 || a->batch > 1000000) {
                fprintf(stderr, "docmint store: --batch %s: expected a number from 1 to 1000000\n", argv[i]);
                return 2;
            }
        } else if (s[0] == '-' && s[1] && !(s[1] >= '0' && s[1] <= '9')) {
            fprintf(stderr, "docmint store: unknown flag '%s' (docmint store --help lists them)\n", s);
            return 2;
        } else if (!a->sub) {
            a->sub = s;
        } else if (!a->store) {
            a->store = s;
        } else if (!a->key) {
            a->key = s;
        } else {
            fprintf(stderr, "docmint store: unexpected argument '%s'\n", s);
            return 2;
        }
    }
    if (!a->sub) {
        fprintf(stderr, "docmint store: missing subcommand: stat, get, dump, import or verify (docmint store --help)\n");
        return 2;
    }
    static const char *const subs[] = {"stat", "get", "dump", "import", "verify"};
    int known = 0;
    for (int i = 0; i < 5; i++)
        known |= !strcmp(a->sub, subs[i]);
    if (!known) {
        fprintf(stderr, "docmint store: unknown subcommand '%s' (stat, get, dump, import or verify)\n", a->sub);
        return 2;
    }
    if (!a->store) {
        fprintf(stderr, "docmint store %s: missing STORE\n", a->sub);
        return 2;
    }
    int wants_key = !strcmp(a->sub, "get");
    if (wants_key && !a->key) {
        fprintf(stderr, "docmint store get: missing %s\n",
                a->errors ? "ITEM" : a->features ? "PAGE_ID" : "QUESTION_ID");
        return 2;
    }
    if (!wants_key && a->key) {
        fprintf(stderr, "docmint store %s: unexpected argument '%s'\n", a->sub, a->key);
        return 2;
    }
    if (a->json && strcmp(a->sub, "stat")) {
        fprintf(stderr, "docmint store %s: --json is a stat flag (get and dump always print JSON)\n", a->sub);
        return 2;
    }
    if ((a->errors || a->features) && !strcmp(a->sub, "verify")) {
        fprintf(stderr, "docmint store verify: takes no --errors or --features (it reads every database)\n");
        return 2;
    }
    if (a->errors && !strcmp(a->sub, "stat")) {
        fprintf(stderr, "docmint store stat: --errors is a get/dump/import flag\n");
        return 2;
    }
    if (a->features && (a->errors || !strcmp(a->sub, "stat") || !strcmp(a->sub, "import"))) {
        fprintf(stderr, "docmint store %s: --features is a get/dump flag, without --errors\n", a->sub);
        return 2;
    }
    return -1;
}

static int s_out(const char *line)
{
    return line && fputs(line, stdout) >= 0 && fputc('\n', stdout) != EOF ? 0 : -1;
}

/* ---- stat ----------------------------------------------------------- */

typedef struct MetaList {
    json_t *obj; /* key -> string, in key order (insertion order) */
} MetaList;

static int s_meta_visit(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    MetaList *m = ctx;
    char *k = strndup(key, klen);
    json_t *v = json_stringn_nocheck(val, vlen);
    if (k && v)
        json_object_set_new_nocheck(m->obj, k, v);
    else
        json_decref(v);
    free(k);
    return 0;
}

static void s_human(char *buf, size_t cap, double bytes)
{
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

/* A logit store's size per cached position: the unit that scales with a
 * corpus (answer tokens + 2 end tokens per answer). */
typedef struct LogitSize {
    uint64_t positions, value_bytes;
    int bad;
    DmErr err;
} LogitSize;

static int s_logit_size_visit(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    LogitSize *z = ctx;
    Docmint__LogitRecord *r = logit_record_unpack(val, vlen, &z->err);
    if (!r) {
        z->bad = 1;
        return 1;
    }
    z->positions += (uint64_t)logit_record_positions(r);
    z->value_bytes += vlen + klen;
    logit_record_free(&r);
    return 0;
}

static int s_stat(Store *s, int as_json, DmErr *err)
{
    MetaList m = {json_object()};
    uint64_t nrec, nerr, map, used;
    if (!m.obj || store_foreach(s, STORE_META, s_meta_visit, &m, err) < 0 ||
        store_count(s, STORE_RECORDS, &nrec, err) < 0 || store_count(s, STORE_ERRORS, &nerr, err) < 0 ||
        store_sizes(s, &map, &used, err) < 0) {
        json_decref(m.obj);
        return -1;
    }
    double per = nrec ? (double)used / (double)nrec : 0.0;
    int rc = 0;
    const char *kind = json_string_value(json_object_get(m.obj, "kind"));
    LogitSize z = {0};
    int logits = kind && !strcmp(kind, "logits");
    if (logits && (store_foreach(s, STORE_RECORDS, s_logit_size_visit, &z, err) < 0 || z.bad)) {
        json_decref(m.obj);
        if (!z.bad)
            return -1;
        *err = z.err;
        return dm_err_prefix(err, "%s", store_path(s));
    }
    /* An answer store's records and errors are read too (each value's
     * checksum is checked on the way), so a damaged store fails stat. */
    StoreDbSize rs, es;
    if (!logits && (store_db_size(s, STORE_RECORDS, &rs, err) < 0 || store_db_size(s, STORE_ERRORS, &es, err) < 0)) {
        json_decref(m.obj);
        return -1;
    }
    StoreDbSize f = {0};
    if (logits && store_db_size(s, STORE_FEATURES, &f, err) < 0) {
        json_decref(m.obj);
        return -1;
    }
    /* Per position: the logit records' pages, not the features'. */
    double rec_pp = z.positions ? (double)z.value_bytes / (double)z.positions : 0.0;
    double used_pp = z.positions ? (double)(used - f.page_bytes) / (double)z.positions : 0.0;
    double feat_pp = f.entries ? (double)f.bytes / (double)f.entries : 0.0;
    if (as_json) {
        json_t *o = json_pack("{s:s s:O s:I s:I s:I s:I s:f}", "path", store_path(s), "meta", m.obj,
                              "records", (json_int_t)nrec, "errors", (json_int_t)nerr, "map_bytes",
                              (json_int_t)map, "used_bytes", (json_int_t)used, "bytes_per_record",
                              round(per * 10) / 10);
        if (o && logits) {
            json_object_set_new(o, "positions", json_integer((json_int_t)z.positions));
            json_object_set_new(o, "bytes_per_position", json_real(round(rec_pp * 10) / 10));
            json_object_set_new(o, "used_bytes_per_position", json_real(round(used_pp * 10) / 10));
            json_object_set_new(o, "features", json_integer((json_int_t)f.entries));
            json_object_set_new(o, "feature_bytes", json_integer((json_int_t)f.bytes));
            json_object_set_new(o, "feature_used_bytes", json_integer((json_int_t)f.page_bytes));
            json_object_set_new(o, "bytes_per_feature_page", json_real(round(feat_pp)));
        }
        char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        rc = s_out(line);
        free(line);
        json_decref(o);
    } else {
        printf("path: %s\n", store_path(s));
        const char *k;
        json_t *v;
        json_object_foreach(m.obj, k, v) {
            const char *text = json_string_value(v);
            int plain = 1;
            for (const unsigned char *p = (const unsigned char *)text; *p; p++)
                plain &= *p >= 0x20;
            json_t *scan = !strcmp(k, "archive_scan") ? json_loads(text, 0, NULL) : NULL;
            if (scan) { /* one entry per document: a count, not the list */
                printf("meta %s: %zu documents (their size, time and page count; --json "
                       "prints them)\n",
                       k, json_object_size(json_object_get(scan, "files")));
                json_decref(scan);
            } else if (plain) {
                printf("meta %s: %s\n", k, text);
            } else { /* multi-line values (the job JSON) as one escaped line */
                char *q = json_dumps(v, JSON_ENCODE_ANY);
                printf("meta %s: %s\n", k, q ? q : "?");
                free(q);
            }
        }
        char hm[32], hu[32];
        s_human(hm, sizeof hm, (double)map);
        s_human(hu, sizeof hu, (double)used);
        printf("records: %" PRIu64 "\nerrors: %" PRIu64 "\n", nrec, nerr);
        printf("map_bytes: %" PRIu64 " (%s)\n", map, hm);
        printf("used_bytes: %" PRIu64 " (%s, %.1f%% of the map)\n", used, hu,
               map ? 100.0 * (double)used / (double)map : 0.0);
        if (nrec)
            printf("bytes_per_record: %.1f\n", per);
        else
            printf("bytes_per_record: - (no records)\n");
        if (logits && z.positions) {
            char hr[32];
            s_human(hr, sizeof hr, (double)z.value_bytes);
            printf("positions: %" PRIu64 " (cached answer positions)\n", z.positions);
            printf("bytes_per_position: %.1f (keys + record values: %s in total)\n", rec_pp, hr);
            printf("used_bytes_per_position: %.1f (store pages of the records)\n", used_pp);
        }
        if (logits) {
            char hf[32], hp[32];
            s_human(hf, sizeof hf, (double)f.bytes);
            s_human(hp, sizeof hp, (double)f.page_bytes);
            printf("features: %" PRIu64 " pages (encoder outputs), %s (%s of store pages)\n",
                   f.entries, hf, hp);
            if (f.entries)
                printf("bytes_per_feature_page: %.0f\n", feat_pp);
        }
    }
    json_decref(m.obj);
    if (rc < 0)
        return dm_err(err, "cannot write stdout");
    return 0;
}

/* ---- get / dump ----------------------------------------------------- */

typedef struct Dump {
    const char *path;
    int errors, features;
    int logits; /* a logit store (meta kind "logits") */
    int analysis; /* an analysis store (meta kind "analysis") */
    int failed;
    DmErr err;
} Dump;

/* The JSON line of a stored value; NULL with err set when the bytes are
 * not a record, or out of memory. */
static char *s_json_of(const void *val, size_t vlen, int errors, DmErr *err)
{
    char *line = NULL;
    if (errors) {
        Docmint__ErrorRecord *r = record_error_unpack(val, vlen, err);
        if (!r)
            return NULL;
        line = record_error_json(r);
        record_error_free(&r);
    } else {
        Docmint__AnswerRecord *r = record_answer_unpack(val, vlen, err);
        if (!r)
            return NULL;
        line = record_answer_json(r);
        record_answer_free(&r);
    }
    if (!line)
        dm_err(err, "out of memory");
    return line;
}

/* A logit record as one JSON line: identity and shape, not the numbers
 * (cache-check compares those; schemas/records.proto has the layout). */
static char *s_logit_json(const void *val, size_t vlen, DmErr *err)
{
    Docmint__LogitRecord *r = logit_record_unpack(val, vlen, err);
    if (!r)
        return NULL;
    json_t *t = json_array();
    for (size_t i = 0; t && i < r->n_targets; i++)
        json_array_append_new(t, json_integer(r->targets[i]));
    json_t *o = json_pack("{s:I s:i s:s s:s s:i s:i s:i s:b s:o}", "questionId",
                          (json_int_t)r->question_id, "answer_index", (int)r->answer_index,
                          "answer", r->answer, "page_id", r->page_id, "positions",
                          logit_record_positions(r), "k", (int)r->k, "vocab", (int)r->vocab,
                          "full", (int)r->full, "targets", t);
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    logit_record_free(&r);
    if (!line)
        dm_err(err, "out of memory");
    return line;
}

/* A feature record as one JSON line: its page and shape, and the largest
 * |value| as a glance at the numbers. */
static char *s_feature_json(const void *val, size_t vlen, DmErr *err)
{
    Docmint__FeatureRecord *r = feature_record_unpack(val, vlen, err);
    if (!r)
        return NULL;
    float *x = NULL, amax = 0;
    char *line = NULL;
    if (feature_record_values(r, &x, err) == 0) {
        for (size_t i = 0; i < (size_t)r->tokens * r->dim; i++)
            amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        json_t *o = json_pack("{s:s s:i s:i s:s s:i s:I s:f}", "page_id", r->page_id, "tokens",
                              (int)r->tokens, "dim", (int)r->dim, "image_path", r->image_path,
                              "page_no", (int)r->page_no, "value_bytes",
                              (json_int_t)r->values.len, "max_abs", (double)amax);
        line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        if (!line)
            dm_err(err, "out of memory");
    }
    free(x);
    docmint__feature_record__free_unpacked(r, NULL);
    return line;
}

static int s_dump_visit(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    Dump *d = ctx;
    dm_err_clear(&d->err);
    char *line = d->features              ? s_feature_json(val, vlen, &d->err)
                 : d->logits && !d->errors ? s_logit_json(val, vlen, &d->err)
                 : d->analysis && !d->errors ? analyze_record_json(val, vlen, &d->err)
                                           : s_json_of(val, vlen, d->errors, &d->err);
    if (!line) {
        if (d->features)
            dm_err_prefix(&d->err, "%s: features of page '%.*s'", d->path,
                          (int)(klen < 200 ? klen : 200), (const char *)key);
        else if (!d->errors && (klen == 8 || klen == LOGIT_KEY_LEN))
            dm_err_prefix(&d->err, "%s: questionId %" PRIu64, d->path, store_key_to_u64(key));
        else
            dm_err_prefix(&d->err, "%s: errors item '%.*s'", d->path, (int)(klen < 80 ? klen : 80),
                          (const char *)key);
        d->failed = 1;
        return 1;
    }
    int rc = s_out(line);
    free(line);
    if (rc < 0) {
        dm_err(&d->err, "cannot write stdout");
        d->failed = 1;
        return 1;
    }
    return 0;
}

static int s_dump(Store *s, int errors, int features, DmErr *err)
{
    Dump d = {store_path(s), errors, features, 0, 0, 0, {{0}}};
    char *kind = store_meta_get(s, "kind", err);
    d.logits = kind && !strcmp(kind, "logits");
    d.analysis = kind && !strcmp(kind, "analysis");
    free(kind);
    const char *db = features ? STORE_FEATURES : errors ? STORE_ERRORS : STORE_RECORDS;
    if (store_foreach(s, db, s_dump_visit, &d, err) < 0)
        return -1;
    if (d.failed) {
        *err = d.err;
        return -1;
    }
    return 0;
}

static int s_get_feature(Store *s, const char *page, DmErr *err)
{
    void *val;
    size_t vlen;
    int found = store_get(s, STORE_FEATURES, page, strlen(page), &val, &vlen, err);
    if (found < 0)
        return -1;
    if (!found)
        return dm_err(err, "%s: no features for page '%s'", store_path(s), page);
    char *line = s_feature_json(val, vlen, err);
    free(val);
    if (!line)
        return dm_err_prefix(err, "%s: features of page '%s'", store_path(s), page);
    int rc = s_out(line);
    free(line);
    return rc < 0 ? dm_err(err, "cannot write stdout") : 0;
}

/* A logit store keys a record by (questionId, answer index): print every
 * answer record of the question, in answer order. */
typedef struct LogitGet {
    uint64_t qid;
    int found, failed;
    DmErr err;
} LogitGet;

static int s_logit_get_visit(void *ctx, const void *key, size_t klen, const void *val,
                             size_t vlen)
{
    LogitGet *g = ctx;
    if (klen != LOGIT_KEY_LEN || store_key_to_u64(key) != g->qid)
        return 0;
    char *line = s_logit_json(val, vlen, &g->err);
    if (!line || s_out(line) < 0) {
        if (line)
            dm_err(&g->err, "cannot write stdout");
        free(line);
        g->failed = 1;
        return 1;
    }
    free(line);
    g->found++;
    return 0;
}

static int s_get_logits(Store *s, uint64_t qid, const char *key, DmErr *err)
{
    LogitGet g = {qid, 0, 0, {{0}}};
    if (store_foreach(s, STORE_RECORDS, s_logit_get_visit, &g, err) < 0)
        return -1;
    if (g.failed) {
        *err = g.err;
        return dm_err_prefix(err, "%s: questionId %s", store_path(s), key);
    }
    return g.found ? 0 : dm_err(err, "%s: no logit record for questionId %s", store_path(s), key);
}

static int s_get(Store *s, const char *key, int errors, DmErr *err)
{
    unsigned char k8[8];
    const void *k = key;
    size_t klen = strlen(key);
    if (!errors) {
        char *end;
        errno = 0;
        long long id = strtoll(key, &end, 10);
        if (errno || !*key || *end)
            return dm_err(err, "QUESTION_ID '%s': expected an integer (error records: --errors ITEM)", key);
        char *kind = store_meta_get(s, "kind", err);
        int logits = kind && !strcmp(kind, "logits");
        free(kind);
        if (logits)
            return s_get_logits(s, (uint64_t)id, key, err);
        store_key_u64((uint64_t)id, k8);
        k = k8;
        klen = 8;
    }
    void *val;
    size_t vlen;
    int found = store_get(s, errors ? STORE_ERRORS : STORE_RECORDS, k, klen, &val, &vlen, err);
    if (found < 0)
        return -1;
    if (!found)
        return errors ? dm_err(err, "%s: no error record for item '%s'", store_path(s), key)
                      : dm_err(err, "%s: no record for questionId %s", store_path(s), key);
    char *line = s_json_of(val, vlen, errors, err);
    free(val);
    if (!line)
        return dm_err_prefix(err, "%s: %s %s", store_path(s), errors ? "item" : "questionId", key);
    int rc = s_out(line);
    free(line);
    return rc < 0 ? dm_err(err, "cannot write stdout") : 0;
}

/* ---- import --------------------------------------------------------- */

/* Strict field readers: a missing key leaves the default. */
static const char *s_field_str(json_t *o, const char *k, const char **bad)
{
    json_t *v = json_object_get(o, k);
    if (!v)
        return "";
    if (!json_is_string(v)) {
        *bad = k;
        return "";
    }
    return json_string_value(v);
}

static float s_field_float(json_t *o, const char *k, const char **bad)
{
    json_t *v = json_object_get(o, k);
    if (!v)
        return 0.0f;
    if (json_is_null(v))
        return NAN;
    if (!json_is_number(v)) {
        *bad = k;
        return 0.0f;
    }
    return (float)json_number_value(v);
}

static int s_check_keys(json_t *o, const char *const *keys, int n, long lineno, DmErr *err)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        int i;
        for (i = 0; i < n && strcmp(k, keys[i]); i++)
            ;
        if (i == n)
            return dm_err(err, "stdin line %ld: unknown key '%s'", lineno, k);
    }
    return 0;
}

/* Build an answer record from a dump line; the strings point into o. */
static int s_answer_from_json(json_t *o, long lineno, Docmint__AnswerRecord *r, DmErr *err)
{
    static const char *const keys[] = {"questionId", "answer", "token_ids", "mean_logprob",
                                       "seconds", "page_id", "question"};
    if (s_check_keys(o, keys, 7, lineno, err) < 0)
        return -1;
    json_t *id = json_object_get(o, "questionId"), *ids = json_object_get(o, "token_ids");
    if (!json_is_integer(id))
        return dm_err(err, "stdin line %ld: questionId must be an integer", lineno);
    const char *bad = NULL;
    docmint__answer_record__init(r);
    r->question_id = json_integer_value(id);
    r->answer = (char *)s_field_str(o, "answer", &bad);
    r->page_id = (char *)s_field_str(o, "page_id", &bad);
    r->question = (char *)s_field_str(o, "question", &bad);
    r->mean_logprob = s_field_float(o, "mean_logprob", &bad);
    r->seconds = s_field_float(o, "seconds", &bad);
    if (bad)
        return dm_err(err, "stdin line %ld: questionId %" PRId64 ": wrong type for '%s'", lineno,
                      r->question_id, bad);
    if (ids && !json_is_array(ids))
        return dm_err(err, "stdin line %ld: token_ids must be an array of integers", lineno);
    size_t n = json_array_size(ids);
    r->token_ids = malloc(sizeof *r->token_ids * (n ? n : 1));
    if (!r->token_ids)
        return dm_err(err, "stdin line %ld: out of memory", lineno);
    r->n_token_ids = n;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(ids, i);
        if (!json_is_integer(t) || json_integer_value(t) < INT32_MIN || json_integer_value(t) > INT32_MAX)
            return dm_err(err, "stdin line %ld: token_ids[%zu] must be a 32-bit integer", lineno, i);
        r->token_ids[i] = (int32_t)json_integer_value(t);
    }
    return 0;
}

static int s_error_from_json(json_t *o, long lineno, Docmint__ErrorRecord *r, DmErr *err)
{
    static const char *const keys[] = {"item", "stage", "reason", "questionId"};
    if (s_check_keys(o, keys, 4, lineno, err) < 0)
        return -1;
    json_t *id = json_object_get(o, "questionId");
    if (id && !json_is_integer(id))
        return dm_err(err, "stdin line %ld: questionId must be an integer", lineno);
    const char *bad = NULL;
    docmint__error_record__init(r);
    r->question_id = id ? json_integer_value(id) : 0;
    r->item = (char *)s_field_str(o, "item", &bad);
    r->stage = (char *)s_field_str(o, "stage", &bad);
    r->reason = (char *)s_field_str(o, "reason", &bad);
    if (bad)
        return dm_err(err, "stdin line %ld: wrong type for '%s'", lineno, bad);
    if (!r->item[0] && !id)
        return dm_err(err, "stdin line %ld: an error record needs an item or a questionId", lineno);
    return 0;
}

typedef struct Batch {
    long n, cap;
    json_t **docs; /* kept alive: the records point into them */
    Docmint__AnswerRecord *answers;
    Docmint__ErrorRecord *errors;
    Docmint__AnswerRecord **pa;
    Docmint__ErrorRecord **pe;
} Batch;

static void s_batch_clear(Batch *b)
{
    for (long i = 0; i < b->n; i++) {
        json_decref(b->docs[i]);
        if (b->answers) {
            free(b->answers[i].token_ids);
            b->answers[i].token_ids = NULL;
        }
    }
    b->n = 0;
}

static int s_batch_flush(Store *s, Batch *b, int errors, DmErr *err)
{
    int rc = b->n == 0 ? 0
             : errors ? records_put(s, NULL, 0, b->pe, (size_t)b->n, err)
                      : records_put(s, b->pa, (size_t)b->n, NULL, 0, err);
    s_batch_clear(b);
    return rc;
}

static int s_set_counts(Store *s, DmErr *err)
{
    uint64_t nrec, nerr;
    if (store_count(s, STORE_RECORDS, &nrec, err) < 0 || store_count(s, STORE_ERRORS, &nerr, err) < 0)
        return -1;
    char a[32], e[32];
    snprintf(a, sizeof a, "%" PRIu64, nrec);
    snprintf(e, sizeof e, "%" PRIu64, nerr);
    const char *kind = "answers";
    char *cur = NULL;
    int has_kind = store_meta_read(s, "kind", &cur, err);
    free(cur);
    if (has_kind < 0)
        return -1;
    StoreItem items[3] = {
        {STORE_META, "count_records", strlen("count_records"), a, strlen(a)},
        {STORE_META, "count_errors", strlen("count_errors"), e, strlen(e)},
        {STORE_META, "kind", strlen("kind"), kind, strlen(kind)},
    };
    return store_put_batch(s, items, has_kind ? 2 : 3, err);
}

static int s_import(Store *s, int errors, long batch, DmErr *err)
{
    Batch b = {0};
    b.cap = batch;
    b.docs = calloc((size_t)batch, sizeof *b.docs);
    if (errors) {
        b.errors = calloc((size_t)batch, sizeof *b.errors);
        b.pe = calloc((size_t)batch, sizeof *b.pe);
    } else {
        b.answers = calloc((size_t)batch, sizeof *b.answers);
        b.pa = calloc((size_t)batch, sizeof *b.pa);
    }
    int rc = 0;
    if (!b.docs || !(errors ? b.errors && b.pe : b.answers && b.pa))
        rc = dm_err(err, "out of memory for a batch of %ld", batch);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, total = 0;
    while (rc == 0 && (len = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        size_t i = 0;
        while (i < (size_t)len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\n' || line[i] == '\r'))
            i++;
        if (i == (size_t)len)
            continue; /* blank line */
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)len, 0, &je);
        if (!o || !json_is_object(o)) {
            json_decref(o);
            rc = o ? dm_err(err, "stdin line %ld: expected a JSON object", lineno)
                   : dm_err(err, "stdin line %ld: malformed JSON: %s", lineno, je.text);
            break;
        }
        b.docs[b.n] = o;
        if (errors) {
            b.pe[b.n] = &b.errors[b.n];
            rc = s_error_from_json(o, lineno, &b.errors[b.n], err);
        } else {
            b.pa[b.n] = &b.answers[b.n];
            b.answers[b.n].token_ids = NULL;
            rc = s_answer_from_json(o, lineno, &b.answers[b.n], err);
        }
        b.n++;
        total++;
        if (rc == 0 && b.n == b.cap)
            rc = s_batch_flush(s, &b, errors, err);
    }
    free(line);
    if (rc == 0 && ferror(stdin))
        rc = dm_err_errno(err, "stdin: read error");
    if (rc == 0)
        rc = s_batch_flush(s, &b, errors, err);
    s_batch_clear(&b);
    if (rc == 0)
        rc = s_set_counts(s, err);
    if (rc == 0)
        fprintf(stderr, "docmint store import: %ld %s records written to %s\n", total,
                errors ? "error" : "answer", store_path(s));
    free(b.docs);
    free(b.answers);
    free(b.errors);
    free(b.pa);
    free(b.pe);
    return rc;
}

static void s_verify_line(void *ctx, const char *db, const char *key, const char *what)
{
    printf("damaged: %s %s: %s\n", db, key, what);
}

/* 0 when every entry is sound; -1 with err naming the damage otherwise. */
static int s_verify(Store *s, DmErr *err)
{
    StoreVerifyCounts c;
    if (store_verify(s, s_verify_line, NULL, &c, err) < 0)
        return -1;
    printf("%s: %" PRIu64 " records, %" PRIu64 " errors, %" PRIu64 " features, %" PRIu64
           " meta entries read; %" PRIu64 " damaged; %s\n",
           store_path(s), c.records, c.errors, c.features, c.meta, c.damaged,
           c.checksums ? "values checked against their CRC-32C"
                       : "no checksums (a store written before them): parses checked only");
    if (c.damaged)
        return dm_err(err, "%s: %" PRIu64 " damaged entr%s (listed above)", store_path(s), c.damaged,
                      c.damaged == 1 ? "y" : "ies");
    return 0;
}

int cmd_store(int argc, char **argv)
{
    Args a;
    int code = s_parse(argc, argv, &a);
    if (code >= 0)
        return code;
    DmErr err = {{0}};
    Store *s;
    int write = !strcmp(a.sub, "import");
    if (store_open(a.store, write ? STORE_WRITE : STORE_READ, &s, &err) < 0) {
        fprintf(stderr, "docmint store %s: %s\n", a.sub, err.msg);
        return 1;
    }
    int rc;
    if (!strcmp(a.sub, "stat"))
        rc = s_stat(s, a.json, &err);
    else if (!strcmp(a.sub, "get"))
        rc = a.features ? s_get_feature(s, a.key, &err) : s_get(s, a.key, a.errors, &err);
    else if (!strcmp(a.sub, "dump"))
        rc = s_dump(s, a.errors, a.features, &err);
    else if (!strcmp(a.sub, "verify"))
        rc = s_verify(s, &err);
    else
        rc = s_import(s, a.errors, a.batch, &err);
    store_close(&s);
    if (rc == 0 && fflush(stdout) != 0)
        rc = dm_err(&err, "cannot write stdout");
    if (rc < 0) {
        fprintf(stderr, "docmint store %s: %s\n", a.sub, err.msg);
        return 1;
    }
    return 0;
}
