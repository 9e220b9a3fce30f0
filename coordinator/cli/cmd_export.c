/* cmd_export.c - `docmint export`: what a store holds, as one file.
 *
 * Two kinds of file:
 *   - a DocVQA evaluation-server submission (--annotations): [{"questionId":
 *     int, "answer": str}, ...], one per question of the annotation file,
 *     in its order;
 *   - a table of results (--format jsonl|csv|json) for any corpus: the
 *     corpus the job read (meta "job") in its order, documents in the order
 *     the corpus first names them, their pages in page order, each page's
 *     questions in corpus order; one row per question with its document,
 *     page, question, answer, confidence (mean_logprob) and error.
 * Both are written to FILE.tmp and renamed, so FILE is whole or absent. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "coordinator/annotations.h"
#include "coordinator/cli/commands.h"
#include "coordinator/job.h"
#include "coordinator/store_ids.h"
#include "common/records.h"
#include "common/store.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint export STORE -o FILE [--format jsonl|csv|json] [--partial]\n"
               "       docmint export STORE --annotations FILE -o SUBMISSION.json [--partial]\n"
               "  -o FILE             where to write (written whole or not at all)\n"
               "  --format F          jsonl (one JSON object a line), csv (RFC 4180, a header\n"
               "                      line), json (one array); default: from FILE's extension\n"
               "                      (.jsonl .csv .json).  One row per question of the job's\n"
               "                      corpus, in corpus order by document, page and question:\n"
               "                      questionId, document, page (from 0), page_id, question,\n"
               "                      answer, mean_logprob (the confidence), error\n"
               "  --annotations FILE  instead: a DocVQA evaluation-server submission for this\n"
               "                      annotation file (e.g. test_v1.0.json), in its order\n"
               "  --partial           write what the store has even if some questions are not\n"
               "                      in it (tables: their rows say so in error); default:\n"
               "                      refuse and list the missing questionIds\n");
}

typedef enum { FMT_NONE, FMT_JSONL, FMT_CSV, FMT_JSON, FMT_DOCVQA } Format;

static Format s_format_parse(const char *s)
{
    return !strcmp(s, "jsonl") ? FMT_JSONL
           : !strcmp(s, "csv") ? FMT_CSV
           : !strcmp(s, "json") ? FMT_JSON
           : !strcmp(s, "docvqa") ? FMT_DOCVQA
                                  : FMT_NONE;
}

static Format s_format_of_name(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/'))
        return FMT_NONE;
    if (!strcasecmp(dot, ".jsonl"))
        return FMT_JSONL;
    if (!strcasecmp(dot, ".csv"))
        return FMT_CSV;
    if (!strcasecmp(dot, ".json"))
        return FMT_JSON;
    return FMT_NONE;
}

/* ---- the table of results ------------------------------------------ */

/* One row: the record's answer, or its error, or neither (not in the
 * store).  Strings point into the records. */
typedef struct Row {
    const CorpusPage *pg;
    const CorpusQuestion *q;
    const char *answer;  /* NULL: no answer */
    float mean_logprob;  /* NAN: none */
    const char *error;   /* NULL: none */
} Row;

/* A JSON string (UTF-8 kept, control characters escaped). */
static int s_json_str(FILE *f, const char *s)
{
    json_t *j = json_string(s);
    char *t = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    if (!t)
        return -1;
    int rc = fputs(t, f) < 0 ? -1 : 0;
    free(t);
    return rc;
}

/* A CSV field per RFC 4180: quoted (with quotes doubled) when it holds a
 * comma, a quote, CR or LF. */
static void s_csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int s_row_json(FILE *f, const Row *r)
{
    char num[32];
    fprintf(f, "{\"questionId\":%lld,\"document\":", (long long)r->q->qid);
    if (s_json_str(f, r->pg->document))
        return -1;
    fprintf(f, ",\"page\":%d,\"page_id\":", r->pg->page_no);
    if (s_json_str(f, r->pg->page_id) || fputs(",\"question\":", f) < 0 ||
        s_json_str(f, r->q->text) || fputs(",\"answer\":", f) < 0)
        return -1;
    if (r->answer ? s_json_str(f, r->answer) : fputs("null", f) < 0)
        return -1;
    records_format_float(num, r->mean_logprob);
    fprintf(f, ",\"mean_logprob\":%s,\"error\":", num);
    if (r->error ? s_json_str(f, r->error) : fputs("null", f) < 0)
        return -1;
    return fputc('}', f) == EOF ? -1 : 0;
}

static int s_row_csv(FILE *f, const Row *r)
{
    char num[32];
    fprintf(f, "%lld,", (long long)r->q->qid);
    s_csv_field(f, r->pg->document);
    fprintf(f, ",%d,", r->pg->page_no);
    s_csv_field(f, r->pg->page_id);
    fputc(',', f);
    s_csv_field(f, r->q->text);
    fputc(',', f);
    if (r->answer)
        s_csv_field(f, r->answer);
    records_format_float(num, r->mean_logprob);
    fprintf(f, ",%s,", strcmp(num, "null") ? num : "");
    if (r->error)
        s_csv_field(f, r->error);
    return fputs("\r\n", f) < 0 ? -1 : 0;
}

enum { ROW_ANSWER, ROW_ERROR, ROW_MISSING };

/* Fill r from the store: its answer record (*a), else its error record
 * (*e, key: the decimal questionId), else neither.  Returns ROW_*, or -1
 * when a stored value is not a record or the store cannot be read. */
static int s_row_lookup(Store *st, Row *r, Docmint__AnswerRecord **a, Docmint__ErrorRecord **e,
                        DmErr *err)
{
    unsigned char key[8];
    char ekey[32];
    void *val;
    size_t vlen;
    store_key_u64((uint64_t)r->q->qid, key);
    int got = store_get(st, STORE_RECORDS, key, 8, &val, &vlen, err);
    if (got == 1) {
        *a = record_answer_unpack(val, vlen, err);
        free(val);
        if (!*a)
            return -1;
        r->answer = (*a)->answer;
        r->mean_logprob = (*a)->mean_logprob;
        return ROW_ANSWER;
    }
    if (got < 0)
        return -1;
    snprintf(ekey, sizeof ekey, "%lld", (long long)r->q->qid);
    got = store_get(st, STORE_ERRORS, ekey, strlen(ekey), &val, &vlen, err);
    if (got == 1) {
        *e = record_error_unpack(val, vlen, err);
        free(val);
        if (!*e)
            return -1;
        r->error = (*e)->reason;
        return ROW_ERROR;
    }
    if (got < 0)
        return -1;
    r->error = "not in the store (not computed yet)";
    return ROW_MISSING;
}

/* Row number i (from 0) in fmt; 0 or -1 when the file cannot be written. */
static int s_row_write(FILE *f, Format fmt, const Row *r, long i)
{
    if (fmt == FMT_CSV)
        return s_row_csv(f, r);
    if (fmt == FMT_JSON && fputs(i ? ",\n" : "\n", f) < 0)
        return -1;
    if (s_row_json(f, r))
        return -1;
    return fmt == FMT_JSONL && fputc('\n', f) == EOF ? -1 : 0;
}

/* Pages in table order: documents in the order the corpus first names
 * them, a document's pages by page number, ties in corpus order. */
typedef struct PageOrd {
    const CorpusPage *pg;
    int idx;   /* corpus order */
    int first; /* corpus order of the document's first page */
} PageOrd;

static int s_by_document(const void *a, const void *b)
{
    const PageOrd *x = a, *y = b;
    int c = strcmp(x->pg->document, y->pg->document);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

static int s_by_table(const void *a, const void *b)
{
    const PageOrd *x = a, *y = b;
    if (x->first != y->first)
        return (x->first > y->first) - (x->first < y->first);
    if (x->pg->page_no != y->pg->page_no)
        return (x->pg->page_no > y->pg->page_no) - (x->pg->page_no < y->pg->page_no);
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static PageOrd *s_table_order(const Corpus *c)
{
    PageOrd *o = malloc(((size_t)c->npages + 1) * sizeof *o);
    if (!o)
        return NULL;
    for (int i = 0; i < c->npages; i++)
        o[i] = (PageOrd){&c->pages[i], i, i};
    qsort(o, (size_t)c->npages, sizeof *o, s_by_document);
    for (int i = 1; i < c->npages; i++)
        if (!strcmp(o[i].pg->document, o[i - 1].pg->document))
            o[i].first = o[i - 1].first;
    qsort(o, (size_t)c->npages, sizeof *o, s_by_table);
    return o;
}

/* The corpus of the job that made the store (meta "job"), read as that
 * job read it: an archive with the store's kept scan and id scheme. */
static int s_store_corpus(Store *st, const char *store_path, Corpus **out, DmErr *err)
{
    char *kind = store_meta_get(st, "kind", err);
    if (kind && strcmp(kind, "answers")) {
        dm_err(err, "%s: a store of kind \"%s\" holds no answers to export", store_path, kind);
        free(kind);
        return -1;
    }
    free(kind);
    char *text = store_meta_get(st, "job", err);
    if (!text)
        return dm_err(err, "%s: no job in the store's meta (made by store import?): export "
                           "--annotations FILE, or docmint store dump",
                      store_path);
    Job *job = NULL;
    char what[4200];
    snprintf(what, sizeof what, "%s: meta job", store_path);
    int rc = job_parse(text, what, &job, err);
    free(text);
    if (rc)
        return -1;
    char *scan = NULL;
    if (job->corpus.format == CORPUS_ARCHIVE) {
        int legacy = store_ids_legacy(st, err);
        if (legacy < 0) {
            job_free(&job);
            return -1;
        }
        job->corpus.legacy_ids = legacy;
        scan = store_meta_get(st, STORE_IDS_SCAN_META, err);
        job->corpus.scan_cache = scan;
        job->corpus.progress = stderr;
    }
    rc = corpus_load(&job->corpus, out, err);
    if (rc)
        dm_err_prefix(err, "%s: the job's corpus", store_path);
    free(scan);
    job_free(&job);
    return rc;
}

static int s_table(const char *store_path, Format fmt, const char *out, int partial, DmErr *err)
{
    Store *st = NULL;
    Corpus *c = NULL;
    PageOrd *ord = NULL;
    FILE *f = NULL;
    char *missing = NULL;
    size_t mlen = 0;
    FILE *mf = NULL;
    char tmp[4200];
    int rc = -1, nmissing = 0, nerrors = 0;
    long rows = 0;
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    if (store_open(store_path, STORE_READ, &st, err) || s_store_corpus(st, store_path, &c, err))
        goto done;
    if (!(ord = s_table_order(c)) || !(mf = open_memstream(&missing, &mlen))) {
        dm_err(err, "out of memory");
        goto done;
    }
    if (!(f = fopen(tmp, "wb"))) {
        dm_err_errno(err, "%s: cannot write", tmp);
        goto done;
    }
    if (fmt == FMT_CSV)
        fputs("questionId,document,page,page_id,question,answer,mean_logprob,error\r\n", f);
    else if (fmt == FMT_JSON)
        fputs("[", f);
    for (int i = 0; i < c->npages; i++) {
        const CorpusPage *pg = ord[i].pg;
        for (int j = 0; j < pg->nq; j++) {
            Row r = {pg, &pg->q[j], NULL, NAN, NULL};
            Docmint__AnswerRecord *a = NULL;
            Docmint__ErrorRecord *e = NULL;
            int found = s_row_lookup(st, &r, &a, &e, err);
            if (found < 0) {
                dm_err_prefix(err, "%s: questionId %lld", store_path, (long long)r.q->qid);
                goto done;
            }
            if (found == ROW_ERROR)
                nerrors++;
            if (found == ROW_MISSING) {
                if (nmissing < 20)
                    fprintf(mf, "%s%lld", nmissing ? ", " : "", (long long)r.q->qid);
                nmissing++;
            }
            int wrc = s_row_write(f, fmt, &r, rows++);
            record_answer_free(&a);
            record_error_free(&e);
            if (wrc) {
                dm_err_errno(err, "%s: cannot write", tmp);
                goto done;
            }
        }
    }
    if (fmt == FMT_JSON)
        fputs(rows ? "\n]\n" : "]\n", f);
    fclose(mf);
    mf = NULL;
    if (nmissing && !partial) {
        dm_err(err, "%s: %d of %ld questions have no record (questionIds %s%s); --partial "
                    "writes every row anyway",
               store_path, nmissing, rows, missing, nmissing > 20 ? ", ..." : "");
        goto done;
    }
    int wbad = ferror(f);
    if (fclose(f) != 0 || wbad) {
        f = NULL;
        dm_err_errno(err, "%s: cannot write", tmp);
        goto done;
    }
    f = NULL;
    if (rename(tmp, out) != 0) {
        dm_err_errno(err, "%s: cannot write", out);
        goto done;
    }
    fprintf(stderr, "%s: %ld rows (%ld answers, %d errors, %d not in the store)\n", out, rows,
            rows - nerrors - nmissing, nerrors, nmissing);
    rc = 0;
done:
    if (f) {
        fclose(f);
        unlink(tmp);
    } else if (rc) {
        unlink(tmp);
    }
    if (mf)
        fclose(mf);
    free(missing);
    free(ord);
    corpus_free(&c);
    store_close(&st);
    return rc;
}

/* ---- the DocVQA submission ------------------------------------------ */

static int s_submission(const char *store_path, const char *annot, const char *out, int partial,
                        DmErr *errp)
{
    DmErr err = {{0}};
    Store *st = NULL;
    Annotations *an = NULL;
    json_t *arr = json_array();
    char *missing = NULL;
    size_t mlen = 0;
    FILE *mf = open_memstream(&missing, &mlen);
    int rc = 1, nmissing = 0;
    if (!mf || annotations_load(annot, &an, &err) || store_open(store_path, STORE_READ, &st, &err))
        goto done;
    for (int i = 0; i < an->n; i++) {
        unsigned char key[8];
        store_key_u64((uint64_t)an->q[i].qid, key);
        void *val;
        size_t vlen;
        int got = store_get(st, STORE_RECORDS, key, 8, &val, &vlen, &err);
        if (got < 0)
            goto done;
        if (got == 0) {
            if (nmissing < 20)
                fprintf(mf, "%s%lld", nmissing ? ", " : "", (long long)an->q[i].qid);
            nmissing++;
            continue;
        }
        Docmint__AnswerRecord *r = record_answer_unpack(val, vlen, &err);
        free(val);
        if (!r) {
            dm_err_prefix(&err, "%s: questionId %lld", store_path, (long long)an->q[i].qid);
            goto done;
        }
        json_t *s = json_string(r->answer ? r->answer : "");
        if (!s) {
            dm_err(&err, "%s: questionId %lld: the answer is not valid UTF-8", store_path,
                   (long long)an->q[i].qid);
            record_answer_free(&r);
            goto done;
        }
        json_array_append_new(arr, json_pack("{s:I, s:o}", "questionId",
                                             (json_int_t)an->q[i].qid, "answer", s));
        record_answer_free(&r);
    }
    fclose(mf);
    mf = NULL;
    if (nmissing && !partial) {
        dm_err(&err, "%s: %d of %d questions have no answer (questionIds %s%s); "
                     "--partial writes the others",
               store_path, nmissing, an->n, missing, nmissing > 20 ? ", ..." : "");
        goto done;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    if (json_dump_file(arr, tmp, JSON_INDENT(1)) != 0 ||
        rename(tmp, out) != 0) {
        unlink(tmp);
        dm_err_errno(&err, "%s: cannot write", out);
        goto done;
    }
    if (nmissing)
        fprintf(stderr, "docmint export: partial submission: %d of %d questions missing\n",
                nmissing, an->n);
    fprintf(stderr, "%s: %zu answers\n", out, json_array_size(arr));
    rc = 0;
done:
    if (rc)
        *errp = err;
    if (mf)
        fclose(mf);
    free(missing);
    json_decref(arr);
    annotations_free(&an);
    store_close(&st);
    return rc ? -1 : 0;
}

int cmd_export(int argc, char **argv)
{
    const char *store_path = NULL, *annot = NULL, *out = NULL, *fmt_name = NULL;
    int partial = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--annotations") && i + 1 < argc) {
            annot = argv[++i];
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--format") && i + 1 < argc) {
            fmt_name = argv[++i];
        } else if (!strcmp(argv[i], "--partial")) {
            partial = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint export: unknown or incomplete option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!store_path) {
            store_path = argv[i];
        } else {
            fprintf(stderr, "docmint export: unexpected argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (!store_path || !out) {
        fprintf(stderr, "docmint export: needs STORE and -o FILE (see --help)\n");
        return 2;
    }
    Format fmt = FMT_NONE;
    if (fmt_name && (fmt = s_format_parse(fmt_name)) == FMT_NONE) {
        fprintf(stderr, "docmint export: --format %s: expected jsonl, csv, json or docvqa\n", fmt_name);
        return 2;
    }
    if (annot && fmt != FMT_NONE && fmt != FMT_DOCVQA) {
        fprintf(stderr, "docmint export: --annotations writes a DocVQA submission, not --format %s "
                        "(the table formats read the corpus of the store's job)\n",
                fmt_name);
        return 2;
    }
    if (annot)
        fmt = FMT_DOCVQA;
    if (fmt == FMT_DOCVQA && !annot) {
        fprintf(stderr, "docmint export: --format docvqa needs --annotations FILE\n");
        return 2;
    }
    if (fmt == FMT_NONE && (fmt = s_format_of_name(out)) == FMT_NONE) {
        fprintf(stderr, "docmint export: %s: cannot tell the format from the name; give "
                        "--format jsonl, csv or json\n",
                out);
        return 2;
    }
    DmErr err = {{0}};
    int rc = fmt == FMT_DOCVQA ? s_submission(store_path, annot, out, partial, &err)
                               : s_table(store_path, fmt, out, partial, &err);
    if (rc) {
        fprintf(stderr, "docmint export: %s\n", err.msg);
        return 1;
    }
    return 0;
}
