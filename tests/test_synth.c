/* test_synth.c - the synthetic corpus: same seed, same bytes, for any
 * number of threads; every answer in the JSON is on its page according to
 * the generator's own record of the rendered lines; pages load at the
 * declared size; each kind's content checked by its own arithmetic and
 * layout; no value string in two splits; corrupted twins of key-value
 * pages; seeded augmentation checked against the geometry it should do;
 * missing fonts; multi-page TIFFs; pages too small for their text are
 * refused. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cli/commands.h"
#include "worker/image/augment.h"
#include "worker/image/image.h"
#include "worker/image/synth.h"
#include "tutil.h"

static void s_rmtree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("\n  could not remove %s", dir);
}

static char *s_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static int s_same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *x = s_read(a, &la), *y = s_read(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

/* Run `docmint synth` with the common options plus extra ones. */
static int s_synth(const char *out, const char *seed, const char *extra1, const char *extra2)
{
    char *argv[20] = {"synth", (char *)out, "--docs", "3", "--seed", (char *)seed, "--width", "240",
                      "--height", "320", "--pages-per-doc", "2", "--questions-per-page", "4", "--quiet"};
    int argc = 15;
    if (extra1)
        argv[argc++] = (char *)extra1;
    if (extra2)
        argv[argc++] = (char *)extra2;
    argv[argc] = NULL;
    return cmd_synth(argc, argv);
}

static const char *const s_files[] = {"train_v1.0_withQT.json", "val_v1.0_withQT.json", "test_v1.0.json", "test_v1.0_withQT.json",
                                      "synth_lines.jsonl", "documents/syn00000_1.png",
                                      "documents/syn00002_2.png"};

static int s_same_tree(const char *a, const char *b)
{
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "diff -rq '%s' '%s' >/dev/null 2>&1", a, b);
    return system(cmd) == 0;
}

static void t_deterministic(void)
{
    char dir[] = "/tmp/docmint-synth-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char a[600], b[600], c[600], pa[700], pb[700];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(c, sizeof c, "%s/c", dir);
    CU_ASSERT_EQUAL_FATAL(s_synth(a, "42", NULL, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(s_synth(b, "42", NULL, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(s_synth(c, "43", NULL, NULL), 0);
    for (size_t i = 0; i < sizeof s_files / sizeof *s_files; i++) {
        snprintf(pa, sizeof pa, "%s/%s", a, s_files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, s_files[i]);
        if (!s_same_file(pa, pb))
            printf("\n  %s differs between two runs with one seed", s_files[i]);
        CU_ASSERT(s_same_file(pa, pb));
    }
    snprintf(pa, sizeof pa, "%s/train_v1.0_withQT.json", a);
    snprintf(pb, sizeof pb, "%s/train_v1.0_withQT.json", c);
    CU_ASSERT(!s_same_file(pa, pb));
    s_rmtree(dir);
}

/* 70 documents (more than one chunk of 64) on 1, 2 and 3 threads, with
 * twins and augmentation: the same files, byte for byte. */
static void t_threads(void)
{
    char dir[] = "/tmp/docmint-synth-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char out[3][600];
    for (int t = 0; t < 3; t++) {
        char th[8];
        snprintf(out[t], sizeof out[t], "%s/t%d", dir, t + 1);
        snprintf(th, sizeof th, "%d", t + 1);
        char *argv[] = {"synth", out[t], "--docs", "70", "--seed", "9", "--width", "240", "--height", "320",
                        "--threads", th, "--corrupt", "--augment", "rotate=1,blur=0.6,jpeg=60", "--quiet",
                        NULL};
        CU_ASSERT_EQUAL_FATAL(cmd_synth(16, argv), 0);
    }
    char p[700];
    snprintf(p, sizeof p, "%s/documents/syn00069_1.png", out[2]);
    CU_ASSERT_EQUAL(access(p, F_OK), 0);
    CU_ASSERT(s_same_tree(out[0], out[1]));
    CU_ASSERT(s_same_tree(out[0], out[2]));
    s_rmtree(dir);
}

static SynthSplit s_split_named(const char *s)
{
    return s && !strcmp(s, "val") ? SYNTH_VAL : s && !strcmp(s, "test") ? SYNTH_TEST : SYNTH_TRAIN;
}

/* The page of an entry, regenerated from the options, the document number
 * in its ucsf_document_id and its split. */
static const SynthPage *s_page_of(const json_t *e, const SynthOptions *o, SynthDoc *doc)
{
    int d = -1, p = -1;
    const char *ucsf = json_string_value(json_object_get(e, "ucsf_document_id"));
    const char *pno = json_string_value(json_object_get(e, "ucsf_document_page_no"));
    SynthSplit split = s_split_named(json_string_value(json_object_get(e, "data_split")));
    if (!ucsf || !pno || sscanf(ucsf, "syn%d", &d) != 1 || sscanf(pno, "%d", &p) != 1)
        return NULL;
    DmErr err = {{0}};
    if (doc->pages && doc->index == d)
        return p >= 1 && p <= doc->npages ? &doc->pages[p - 1] : NULL;
    synth_doc_free(doc);
    if (synth_doc_make(o, d, split, doc, &err))
        return NULL;
    return p >= 1 && p <= doc->npages ? &doc->pages[p - 1] : NULL;
}

static int s_on_page(const SynthPage *p, const char *answer)
{
    for (int i = 0; i < p->nlines; i++)
        if (strstr(p->lines[i], answer))
            return 1;
    return 0;
}

/* Every entry of every split: the question is one the generator made for
 * that page, its answer is the generator's and is printed on the page. */
static const char *s_path(const char *out, const char *file, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", out, file);
    return buf;
}

static void s_check_answers(const char *out, const SynthOptions *o)
{
    static const char *const files[] = {"train_v1.0_withQT.json", "val_v1.0_withQT.json",
                                        "test_v1.0.json", "test_v1.0_withQT.json"};
    char path[700];
    int checked = 0, nq[4] = {0};
    SynthDoc doc = {0};
    for (int s = 0; s < 4; s++) {
        snprintf(path, sizeof path, "%s/%s", out, files[s]);
        json_t *root = json_load_file(path, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(root);
        const json_t *data = json_object_get(root, "data");
        CU_ASSERT(json_array_size(data) > 0);
        nq[s] = (int)json_array_size(data);
        size_t i;
        json_t *e;
        json_array_foreach(data, i, e) {
            if (s == 3) {
                /* the test split again, the same questions in the same order */
                json_t *t = json_load_file(s_path(out, files[2], path, sizeof path), 0, NULL);
                json_t *te = json_array_get(json_object_get(t, "data"), i);
                CU_ASSERT(json_equal(json_object_get(te, "questionId"),
                                     json_object_get(e, "questionId")));
                json_decref(t);
            }
            const SynthPage *p = s_page_of(e, o, &doc);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            const char *q = json_string_value(json_object_get(e, "question"));
            const SynthQA *qa = NULL;
            for (int k = 0; k < p->nqa && q; k++)
                if (!strcmp(p->qa[k].question, q))
                    qa = &p->qa[k];
            CU_ASSERT_PTR_NOT_NULL_FATAL(qa);
            const json_t *ans = json_object_get(e, "answers");
            if (s == 2) {
                CU_ASSERT_PTR_NULL(ans); /* the test split has no answers */
                CU_ASSERT_PTR_NULL(json_object_get(e, "question_types"));
            } else {
                CU_ASSERT_EQUAL_FATAL(json_array_size(ans), 1);
                const char *a = json_string_value(json_array_get(ans, 0));
                CU_ASSERT_STRING_EQUAL(a, qa->answer);
                if (!s_on_page(p, a))
                    printf("\n  answer \"%s\" to \"%s\" is not on its page", a, q);
                CU_ASSERT(s_on_page(p, a));
                checked++;
            }
        }
        json_decref(root);
    }
    synth_doc_free(&doc);
    CU_ASSERT(checked > 0);
    CU_ASSERT_EQUAL(nq[3], nq[2]);
}

static void t_answers_on_page(void)
{
    char dir[] = "/tmp/docmint-synth-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char out[600], path[700];
    snprintf(out, sizeof out, "%s/s", dir);
    CU_ASSERT_EQUAL_FATAL(s_synth(out, "7", NULL, NULL), 0);
    SynthOptions o;
    synth_options_default(&o);
    o.seed = 7;
    o.width = 240;
    o.height = 320;
    o.pages_per_doc = 2;
    o.questions_per_page = 4;
    s_check_answers(out, &o);

    /* synth_lines.jsonl is the generator's record, page by page */
    snprintf(path, sizeof path, "%s/synth_lines.jsonl", out);
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[16384];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *rec = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
        SynthDoc doc;
        DmErr err = {{0}};
        int d = n / 2, p = n % 2;
        CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, d, synth_split_of(3, d), &doc, &err), 0);
        const json_t *lines = json_object_get(rec, "lines");
        CU_ASSERT_EQUAL(json_array_size(lines), (size_t)doc.pages[p].nlines);
        for (int k = 0; k < doc.pages[p].nlines && k < (int)json_array_size(lines); k++)
            CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(lines, k)), doc.pages[p].lines[k]);
        /* the page image: declared size, with ink on it */
        char img[800];
        snprintf(img, sizeof img, "%s/%s", out, json_string_value(json_object_get(rec, "image")));
        DmImage im = {0};
        CU_ASSERT_EQUAL_FATAL(image_load_page(img, 0, IMAGE_PDF_DPI_DEFAULT, &im, &err), 0);
        CU_ASSERT_EQUAL(im.w, 240);
        CU_ASSERT_EQUAL(im.h, 320);
        size_t dark = 0;
        for (size_t k = 0; k < (size_t)im.w * im.h * 3; k += 3)
            dark += im.rgb[k] < 128;
        CU_ASSERT(dark > 100);
        CU_ASSERT_EQUAL(im.rgb[0], 255); /* white margin */
        image_free(&im);
        synth_doc_free(&doc);
        json_decref(rec);
        n++;
    }
    fclose(f);
    CU_ASSERT_EQUAL(n, 6);
    s_rmtree(dir);
}

/* "$1,234.56" -> 123456 */
static long long s_cents(const char *s)
{
    long long c = 0;
    for (; *s; s++)
        if (*s >= '0' && *s <= '9')
            c = c * 10 + (*s - '0');
    return c;
}

static int s_block_headed(const SynthPage *p, const char *head)
{
    for (int b = 0; b < p->nblocks; b++)
        if (p->blocks[b].n > 0 && !strcmp(p->lines[p->blocks[b].first], head))
            return b;
    return -1;
}

static int s_find_line(const SynthPage *p, const char *prefix)
{
    for (int i = 0; i < p->nlines; i++)
        if (!strncmp(p->lines[i], prefix, strlen(prefix)))
            return i;
    return -1;
}

/* A form page offers the date, the total, every field and the table; the
 * total is the sum of the table. */
static void t_form_content(void)
{
    SynthOptions o;
    synth_options_default(&o);
    o.kind = SYNTH_FORM;
    o.questions_per_page = 100;
    for (int d = 0; d < 20; d++) {
        SynthDoc doc;
        DmErr err = {{0}};
        CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, d, SYNTH_TRAIN, &doc, &err), 0);
        const SynthPage *p = &doc.pages[0];
        int date = 0, total = 0;
        for (int k = 0; k < p->nqa; k++) {
            date |= !strcmp(p->qa[k].question, "What is the date?");
            total |= !strcmp(p->qa[k].question, "What is the total amount?");
        }
        CU_ASSERT(date && total);
        CU_ASSERT(p->nqa >= 13);
        int qty = s_block_headed(p, "Qty"), price = s_block_headed(p, "Unit price");
        int tot = s_find_line(p, "Total amount: ");
        CU_ASSERT_FATAL(qty >= 0 && price >= 0 && tot >= 0);
        long long sum = 0;
        for (int r = 1; r < 4; r++)
            sum += atoi(p->lines[p->blocks[qty].first + r]) * s_cents(p->lines[p->blocks[price].first + r]);
        CU_ASSERT_EQUAL(s_cents(p->lines[tot]), sum);
        synth_doc_free(&doc);
    }
}

/* Every kind in every split: answers on the line the generator says, in
 * the page's values; values of the split; one answer per question; each
 * kind's own arithmetic and layout. */
static void t_kinds(void)
{
    static const char *const qtypes[] = {"form", "table/list", "free_text", "layout"};
    int seen_qtype[4] = {0};
    for (int k = 0; k < SYNTH_NKINDS; k++)
        for (int s = 0; s < 3; s++) {
            SynthOptions o;
            synth_options_default(&o);
            o.kind = (SynthKind)k;
            o.questions_per_page = 100;
            o.seed = 3;
            for (int d = 0; d < 12; d++) {
                SynthDoc doc;
                DmErr err = {{0}};
                if (synth_doc_make(&o, d, (SynthSplit)s, &doc, &err)) {
                    printf("\n  %s", err.msg);
                    CU_FAIL_FATAL("synth_doc_make");
                }
                CU_ASSERT_EQUAL(doc.kind, (SynthKind)k);
                const SynthPage *p = &doc.pages[0];
                CU_ASSERT(p->nqa >= 4);
                for (int v = 0; v < p->nvalues; v++) {
                    CU_ASSERT_EQUAL(synth_value_split(p->values[v]), (SynthSplit)s);
                    CU_ASSERT(s_on_page(p, p->values[v]));
                }
                for (int q = 0; q < p->nqa; q++) {
                    const SynthQA *qa = &p->qa[q];
                    CU_ASSERT_FATAL(qa->line >= 0 && qa->line < p->nlines);
                    if (!strstr(p->lines[qa->line], qa->answer))
                        printf("\n  %s: \"%s\" not on line \"%s\"", synth_kind_name((SynthKind)k), qa->answer,
                               p->lines[qa->line]);
                    CU_ASSERT_PTR_NOT_NULL(strstr(p->lines[qa->line], qa->answer));
                    int in_values = 0, known = 0;
                    for (int v = 0; v < p->nvalues; v++)
                        in_values |= !strcmp(p->values[v], qa->answer);
                    CU_ASSERT(in_values);
                    for (int t = 0; t < 4; t++)
                        if (!strcmp(qa->qtype, qtypes[t]))
                            known = 1, seen_qtype[t] = 1;
                    CU_ASSERT(known);
                    for (int q2 = 0; q2 < q; q2++)
                        CU_ASSERT(strcmp(p->qa[q2].question, qa->question) != 0);
                }
                if (k == SYNTH_RECEIPT) { /* subtotal = sum of prices; total = subtotal + tax */
                    int sub = s_find_line(p, "Subtotal"), items = -1, prices = -1;
                    for (int b = 0; b < p->nblocks; b++)
                        if (p->blocks[b].align_right && prices < 0)
                            prices = b, items = b - 1;
                    CU_ASSERT_FATAL(sub >= 0 && prices > 0);
                    const SynthBlock *pb = &p->blocks[prices], *amounts = &p->blocks[prices + 2];
                    long long sum = 0;
                    for (int i = 0; i < pb->n; i++)
                        sum += s_cents(p->lines[pb->first + i]);
                    CU_ASSERT_EQUAL(p->blocks[items].n, pb->n);
                    int rate = 0;
                    CU_ASSERT_EQUAL(sscanf(p->lines[sub + 1], "Tax %d%%", &rate), 1);
                    long long s0 = s_cents(p->lines[amounts->first]), t0 = s_cents(p->lines[amounts->first + 1]);
                    CU_ASSERT_EQUAL(s0, sum);
                    CU_ASSERT_EQUAL(t0, (sum * rate + 50) / 100);
                    CU_ASSERT_EQUAL(s_cents(p->lines[amounts->first + 2]), s0 + t0);
                }
                if (k == SYNTH_TABLE) /* "What is the <col> for <row>?": the cell on <row>'s line */
                    for (int q = 0; q < p->nqa; q++) {
                        char col[64], row[64];
                        if (sscanf(p->qa[q].question, "What is the %63[^f]for %63[^?]?", col, row) != 2)
                            continue;
                        const SynthBlock *rows = &p->blocks[1];
                        int ri = -1, ci = p->qa[q].line;
                        for (int i = 1; i < rows->n; i++)
                            if (!strcmp(p->lines[rows->first + i], row))
                                ri = i;
                        int cb = -1;
                        for (int b = 2; b < p->nblocks; b++)
                            if (ci >= p->blocks[b].first && ci < p->blocks[b].first + p->blocks[b].n)
                                cb = b;
                        CU_ASSERT_FATAL(ri > 0 && cb > 1);
                        CU_ASSERT_EQUAL(ci - p->blocks[cb].first, ri);
                    }
                if (k == SYNTH_KV_COLOURS || k == SYNTH_KV_NOUNS || k == SYNTH_KV_NUMBERS) {
                    CU_ASSERT(p->kv);
                    CU_ASSERT_EQUAL(p->nlines, 12);
                    for (int q = 0; q < p->nqa; q++) {
                        char key[64], want[160];
                        CU_ASSERT_EQUAL_FATAL(sscanf(p->qa[q].question, "What is %63[^?]?", key), 1);
                        snprintf(want, sizeof want, "%s: %s", key, p->qa[q].answer);
                        CU_ASSERT_STRING_EQUAL(p->lines[p->qa[q].line], want);
                    }
                    for (int i = 0; i < p->nlines; i++)
                        for (int j = 0; j < i; j++) {
                            size_t ki = strcspn(p->lines[i], ":"), kj = strcspn(p->lines[j], ":");
                            CU_ASSERT(ki != kj || strncmp(p->lines[i], p->lines[j], ki) != 0);
                        }
                    if (k == SYNTH_KV_NUMBERS)
                        for (int i = 0; i < p->nlines; i++)
                            for (const char *c = p->lines[i]; *c; c++)
                                CU_ASSERT(!(*c >= '0' && *c <= '9'));
                }
                synth_doc_free(&doc);
            }
        }
    for (int t = 0; t < 4; t++)
        CU_ASSERT(seen_qtype[t]);
}

/* A generated corpus: no page and no value string in two splits, every
 * answer among its page's values. */
static void t_splits(void)
{
    char dir[] = "/tmp/docmint-synth-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char out[600], path[700];
    snprintf(out, sizeof out, "%s/s", dir);
    char *argv[] = {"synth", out, "--docs", "40", "--seed", "17", "--width", "240", "--height", "320",
                    "--questions-per-page", "100", "--quiet", NULL};
    CU_ASSERT_EQUAL_FATAL(cmd_synth(13, argv), 0);
    snprintf(path, sizeof path, "%s/synth_lines.jsonl", out);
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    json_t *where = json_object(); /* value -> split; image -> split */
    json_t *pages = json_object(); /* image -> its record */
    char line[16384];
    int nvalues = 0, nsplit[3] = {0};
    while (fgets(line, sizeof line, f)) {
        json_t *rec = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
        const char *split = json_string_value(json_object_get(rec, "split"));
        const char *img = json_string_value(json_object_get(rec, "image"));
        CU_ASSERT_PTR_NULL(json_object_get(pages, img));
        json_object_set(pages, img, rec);
        nsplit[s_split_named(split)]++;
        const json_t *vals = json_object_get(rec, "values"), *lines = json_object_get(rec, "lines");
        size_t i, j;
        json_t *v, *l;
        json_array_foreach(vals, i, v) {
            const char *s = json_string_value(v);
            const char *before = json_string_value(json_object_get(where, s));
            if (before && strcmp(before, split))
                printf("\n  value \"%s\" in %s and %s", s, before, split);
            CU_ASSERT(!before || !strcmp(before, split));
            json_object_set_new(where, s, json_string(split));
            int on = 0;
            json_array_foreach(lines, j, l) on |= strstr(json_string_value(l), s) != NULL;
            CU_ASSERT(on);
            nvalues++;
        }
        json_decref(rec);
    }
    fclose(f);
    CU_ASSERT(nvalues > 200);
    CU_ASSERT(nsplit[0] == 32 && nsplit[1] == 4 && nsplit[2] == 4);
    /* the annotation files: each page in its split's file only, answers
     * among the page's values */
    static const char *const files[] = {"train_v1.0_withQT.json", "val_v1.0_withQT.json", "test_v1.0.json"};
    for (int s = 0; s < 3; s++) {
        snprintf(path, sizeof path, "%s/%s", out, files[s]);
        json_t *root = json_load_file(path, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(root);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(root, "data"), i, e) {
            const json_t *rec = json_object_get(pages, json_string_value(json_object_get(e, "image")));
            CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
            CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(rec, "split")),
                                   synth_split_name((SynthSplit)s));
            const char *a = json_string_value(json_array_get(json_object_get(e, "answers"), 0));
            if (a) {
                int found = 0;
                size_t j;
                json_t *v;
                json_array_foreach(json_object_get(rec, "values"), j, v) found |= !strcmp(json_string_value(v), a);
                CU_ASSERT(found);
            }
        }
        json_decref(root);
    }
    json_decref(where);
    json_decref(pages);
    s_rmtree(dir);
}

/* "key: value" -> its parts (in static buffers, one pair at a time). */
static void s_kv_split(const char *line, char *k, char *v)
{
    const char *sep = strstr(line, ": ");
    size_t n = sep ? (size_t)(sep - line) : strlen(line);
    memcpy(k, line, n);
    k[n] = '\0';
    strcpy(v, sep ? sep + 2 : "");
}

/* The corrupted twin: same blocks, keys and values each a derangement of
 * the clean page's; V_clean, V_new, V_pos read back from the lines. */
static void t_corrupt(void)
{
    SynthOptions o;
    synth_options_default(&o);
    o.kind = SYNTH_KV_NOUNS;
    o.questions_per_page = 12;
    SynthDoc doc;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, 5, SYNTH_TRAIN, &doc, &err), 0);
    const SynthPage *c = &doc.pages[0];
    SynthPage t;
    CU_ASSERT_EQUAL_FATAL(synth_page_corrupt(c, 77, &t, &err), 0);
    CU_ASSERT_EQUAL_FATAL(t.nlines, c->nlines);
    CU_ASSERT_EQUAL(t.nblocks, c->nblocks);
    CU_ASSERT(memcmp(t.blocks, c->blocks, (size_t)c->nblocks * sizeof *c->blocks) == 0);
    CU_ASSERT_EQUAL(t.nqa, 12);
    char k1[128], v1[128], k2[128], v2[128];
    for (int i = 0; i < c->nlines; i++) {
        s_kv_split(c->lines[i], k1, v1);
        s_kv_split(t.lines[i], k2, v2);
        CU_ASSERT(strcmp(k1, k2) != 0); /* every key moved */
        /* key i of the clean page is on exactly one twin line */
        int n = 0;
        for (int j = 0; j < t.nlines; j++) {
            s_kv_split(t.lines[j], k2, v2);
            n += !strcmp(k1, k2);
        }
        CU_ASSERT_EQUAL(n, 1);
    }
    for (int q = 0; q < t.nqa; q++) {
        const SynthQA *a = &t.qa[q];
        char key[64];
        CU_ASSERT_EQUAL_FATAL(sscanf(a->question, "What is %63[^?]?", key), 1);
        int ci = -1, ti = -1;
        for (int i = 0; i < c->nlines; i++) {
            s_kv_split(c->lines[i], k1, v1);
            if (!strcmp(k1, key))
                ci = i;
            s_kv_split(t.lines[i], k2, v2);
            if (!strcmp(k2, key))
                ti = i;
        }
        CU_ASSERT_FATAL(ci >= 0 && ti >= 0);
        s_kv_split(c->lines[ci], k1, v1);
        CU_ASSERT_STRING_EQUAL(a->v_clean, v1);
        s_kv_split(t.lines[ti], k2, v2);
        CU_ASSERT_STRING_EQUAL(a->answer, v2);
        CU_ASSERT_EQUAL(a->line, ti);
        s_kv_split(t.lines[ci], k2, v2);
        CU_ASSERT_STRING_EQUAL(a->v_pos, v2);
    }
    synth_page_free(&t);
    /* a form page has no twin */
    SynthDoc form;
    o.kind = SYNTH_FORM;
    CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, 1, SYNTH_TRAIN, &form, &err), 0);
    CU_ASSERT_EQUAL(synth_page_corrupt(&form.pages[0], 1, &t, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "only key-value pages"));
    synth_doc_free(&form);
    synth_doc_free(&doc);

    /* through the command: corrupt_v1.0_withQT.json against the rendered lines */
    char dir[] = "/tmp/docmint-synth-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char out[600], path[800];
    snprintf(out, sizeof out, "%s/c", dir);
    char *argv[] = {"synth", out, "--docs", "4", "--kv", "colours", "--width", "480", "--height", "640",
                    "--corrupt", "--quiet", NULL};
    CU_ASSERT_EQUAL_FATAL(cmd_synth(12, argv), 0);
    snprintf(path, sizeof path, "%s/corrupt_v1.0_withQT.json", out);
    json_t *root = json_load_file(path, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(root);
    const json_t *data = json_object_get(root, "data");
    CU_ASSERT_EQUAL(json_array_size(data), 12); /* 4 pages, 3 questions each */
    size_t i;
    json_t *e;
    json_array_foreach(data, i, e) {
        const char *img = json_string_value(json_object_get(e, "image"));
        const char *clean = json_string_value(json_object_get(e, "clean_image"));
        snprintf(path, sizeof path, "%s/%s", out, img);
        CU_ASSERT_EQUAL(access(path, F_OK), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(img, "_corrupt.png"));
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(e, "answers"), 0)),
                               json_string_value(json_object_get(e, "v_new")));
        /* the page's record */
        snprintf(path, sizeof path, "%s/synth_lines.jsonl", out);
        FILE *f = fopen(path, "r");
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        char line[16384];
        json_t *rec = NULL;
        while (!rec && fgets(line, sizeof line, f)) {
            rec = json_loads(line, 0, NULL);
            if (rec && strcmp(json_string_value(json_object_get(rec, "image")), clean)) {
                json_decref(rec);
                rec = NULL;
            }
        }
        fclose(f);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
        char key[64];
        CU_ASSERT_EQUAL_FATAL(sscanf(json_string_value(json_object_get(e, "question")), "What is %63[^?]?", key), 1);
        const json_t *cl = json_object_get(rec, "lines"), *tl = json_object_get(rec, "corrupt_lines");
        int ci = -1, ti = -1;
        for (size_t j = 0; j < json_array_size(cl); j++) {
            s_kv_split(json_string_value(json_array_get(cl, j)), k1, v1);
            if (!strcmp(k1, key))
                ci = (int)j;
            s_kv_split(json_string_value(json_array_get(tl, j)), k2, v2);
            if (!strcmp(k2, key))
                ti = (int)j;
        }
        CU_ASSERT_FATAL(ci >= 0 && ti >= 0);
        s_kv_split(json_string_value(json_array_get(cl, (size_t)ci)), k1, v1);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "v_clean")), v1);
        s_kv_split(json_string_value(json_array_get(tl, (size_t)ti)), k2, v2);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "v_new")), v2);
        s_kv_split(json_string_value(json_array_get(tl, (size_t)ci)), k2, v2);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "v_pos")), v2);
        json_decref(rec);
    }
    json_decref(root);
    s_rmtree(dir);
}

/* The centroid of the dark pixels of an RGB image. */
static void s_dark_centroid(const DmImage *im, double *cx, double *cy)
{
    double sx = 0, sy = 0, w = 0;
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++) {
            double d = 255.0 - im->rgb[((size_t)y * im->w + x) * 3];
            sx += d * x;
            sy += d * y;
            w += d;
        }
    *cx = w > 0 ? sx / w : -1;
    *cy = w > 0 ? sy / w : -1;
}

static void s_dot_image(DmImage *im)
{
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(image_alloc(im, 200, 120, &err), 0);
    memset(im->rgb, 255, (size_t)200 * 120 * 3);
    for (int y = 29; y <= 31; y++) /* a dark 3x3 dot centred at (150, 30) */
        for (int x = 149; x <= 151; x++)
            memset(im->rgb + ((size_t)y * 200 + x) * 3, 0, 3);
}

/* Rotation and scaling move a dot where the formula says; blur spreads it;
 * JPEG perturbs it a little; one seed, one result. */
static void t_augment(void)
{
    DmErr err = {{0}};
    ImageAugment a;
    CU_ASSERT_EQUAL_FATAL(image_augment_parse("rotate=10,scale=0.2", &a, &err), 0);
    int moved = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        DmImage im = {0};
        s_dot_image(&im);
        ImageAugmentDraw d;
        image_augment_draw(&a, seed, &d);
        CU_ASSERT(fabs(d.angle) <= 10 && fabs(d.scale - 1) <= 0.2 && d.sigma == 0 && d.quality == 0);
        CU_ASSERT_EQUAL_FATAL(image_augment(&im, &a, seed, &err), 0);
        /* the dot's centre (150.5, 30.5 in pixel-area coordinates) about the
         * page centre (100, 60), rotated by the angle and scaled */
        double r = d.angle * M_PI / 180, dx = 150.5 - 100, dy = 30.5 - 60;
        double ex = 100 + d.scale * (cos(r) * dx - sin(r) * dy) - 0.5;
        double ey = 60 + d.scale * (sin(r) * dx + cos(r) * dy) - 0.5;
        double cx, cy;
        s_dark_centroid(&im, &cx, &cy);
        if (fabs(cx - ex) > 0.75 || fabs(cy - ey) > 0.75)
            printf("\n  seed %d: angle %.2f scale %.3f: dot at (%.2f, %.2f), expected (%.2f, %.2f)", (int)seed,
                   d.angle, d.scale, cx, cy, ex, ey);
        CU_ASSERT(fabs(cx - ex) <= 0.75 && fabs(cy - ey) <= 0.75);
        moved += fabs(cx - 150) > 1 || fabs(cy - 30) > 1;
        CU_ASSERT_EQUAL(im.rgb[0], 255); /* white comes in at the corners */
        image_free(&im);
    }
    CU_ASSERT(moved >= 3);
    /* blur: the dot's darkest pixel lightens, its ink stays about the same */
    CU_ASSERT_EQUAL_FATAL(image_augment_parse("blur=3", &a, &err), 0);
    uint64_t seed = 1;
    ImageAugmentDraw d;
    while (image_augment_draw(&a, seed, &d), d.sigma < 1.5)
        seed++;
    DmImage im = {0}, ref = {0};
    s_dot_image(&im);
    s_dot_image(&ref);
    CU_ASSERT_EQUAL_FATAL(image_augment(&im, &a, seed, &err), 0);
    double ink0 = 0, ink1 = 0;
    int darkest = 255;
    for (size_t k = 0; k < (size_t)200 * 120 * 3; k += 3) {
        ink0 += 255 - ref.rgb[k];
        ink1 += 255 - im.rgb[k];
        darkest = im.rgb[k] < darkest ? im.rgb[k] : darkest;
    }
    CU_ASSERT(darkest > 60);
    CU_ASSERT(fabs(ink1 - ink0) < 0.1 * ink0);
    image_free(&im);
    /* JPEG: close to the original, not equal; same seed, same bytes */
    CU_ASSERT_EQUAL_FATAL(image_augment_parse("jpeg=20", &a, &err), 0);
    DmImage j1 = {0}, j2 = {0};
    s_dot_image(&j1);
    s_dot_image(&j2);
    CU_ASSERT_EQUAL_FATAL(image_augment(&j1, &a, 5, &err), 0);
    CU_ASSERT_EQUAL_FATAL(image_augment(&j2, &a, 5, &err), 0);
    CU_ASSERT(memcmp(j1.rgb, j2.rgb, (size_t)200 * 120 * 3) == 0);
    CU_ASSERT(memcmp(j1.rgb, ref.rgb, (size_t)200 * 120 * 3) != 0);
    double mad = 0;
    for (size_t k = 0; k < (size_t)200 * 120 * 3; k++)
        mad += fabs((double)j1.rgb[k] - ref.rgb[k]);
    CU_ASSERT(mad / (200.0 * 120 * 3) < 4);
    image_free(&j1);
    image_free(&j2);
    image_free(&ref);
    /* the spec's errors */
    CU_ASSERT_EQUAL(image_augment_parse("rotate=50", &a, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "rotate=50 out of range"));
    CU_ASSERT_EQUAL(image_augment_parse("tilt=1", &a, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "unknown item \"tilt\""));
    CU_ASSERT_EQUAL(image_augment_parse("none", &a, &err), 0);
    CU_ASSERT(!image_augment_active(&a));
    CU_ASSERT_EQUAL(image_augment_parse("default", &a, &err), 0);
    CU_ASSERT(a.rotate == 1.5 && a.jpeg == 50);
}

/* The font folder of t_fonts stays until the process ends: fontconfig
 * keeps the files it was given for as long as the process runs. */
static char s_font_dir[] = "/tmp/docmint-synth-XXXXXX";
static void s_font_dir_remove(void)
{
    s_rmtree(s_font_dir);
}

/* Missing fonts: a note naming them and their packages; drawn in another
 * font while one is left, a clear error when none is. */
static void t_fonts(void)
{
    char *dir = s_font_dir;
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    atexit(s_font_dir_remove);
    SynthOptions o;
    synth_options_default(&o);
    char note[4096], cmd[1600], path[800];
    /* the Debian folder has them all (deploy/install-deps.sh) */
    int missing = synth_fonts_check(&o, note, sizeof note);
    if (missing)
        printf("\n  %s", note);
    CU_ASSERT_EQUAL(missing, 0);
    o.font_dir = dir;
    CU_ASSERT_EQUAL(synth_fonts_check(&o, note, sizeof note), synth_nfonts);
    CU_ASSERT_PTR_NOT_NULL(strstr(note, "DejaVu Sans ("));
    CU_ASSERT_PTR_NOT_NULL(strstr(note, "fonts-liberation"));
    CU_ASSERT_PTR_NOT_NULL(strstr(note, "no font left"));
    SynthDoc doc;
    DmErr err = {{0}};
    o.width = 240;
    o.height = 320;
    o.kind = SYNTH_FORM;
    CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, 0, SYNTH_TRAIN, &doc, &err), 0);
    snprintf(path, sizeof path, "%s/p.png", dir);
    CU_ASSERT_EQUAL(synth_page_save(&o, &doc.pages[0], 0, path, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "fonts-dejavu-core"));
    /* only DejaVu there: the others are drawn in it */
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/dejavu' && cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "
             "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf "
             "'%s/dejavu/'", dir, dir);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    CU_ASSERT_EQUAL(synth_fonts_check(&o, note, sizeof note), synth_nfonts - 3);
    CU_ASSERT_PTR_NOT_NULL(strstr(note, "FreeSerif"));
    CU_ASSERT_PTR_NULL(strstr(note, "DejaVu"));
    CU_ASSERT_PTR_NOT_NULL(strstr(note, "drawn in another font"));
    if (synth_page_save(&o, &doc.pages[0], 0, path, &err))
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL(access(path, F_OK), 0);
    synth_doc_free(&doc);
}

static void t_tiff(void)
{
    char dir[] = "/tmp/docmint-synth-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char out[600], tif[700], png[700];
    snprintf(out, sizeof out, "%s/t", dir);
    CU_ASSERT_EQUAL_FATAL(s_synth(out, "5", "--tiff", NULL), 0);
    snprintf(tif, sizeof tif, "%s/tiff/syn00001.tif", out);
    snprintf(png, sizeof png, "%s/documents/syn00001_2.png", out);
    int n = 0;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(image_count_pages(tif, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 2);
    DmImage a = {0}, b = {0};
    CU_ASSERT_EQUAL_FATAL(image_load_page(tif, 1, IMAGE_PDF_DPI_DEFAULT, &a, &err), 0);
    CU_ASSERT_EQUAL_FATAL(image_load_page(png, 0, IMAGE_PDF_DPI_DEFAULT, &b, &err), 0);
    CU_ASSERT(a.w == b.w && a.h == b.h && memcmp(a.rgb, b.rgb, (size_t)a.w * a.h * 3) == 0);
    image_free(&a);
    image_free(&b);
    s_rmtree(dir);
}

static void t_errors(void)
{
    SynthOptions o;
    synth_options_default(&o);
    o.width = 240;
    o.height = 320;
    SynthDoc doc;
    DmErr err = {{0}};
    /* a line longer than the page is refused, not clipped */
    char *lines[] = {"Reference: a value much too long to fit on one line of a page this narrow, "
                     "going on and on well past the right margin of the page"};
    SynthBlock block = {80, 0, 22, 3, 0, 1, 0, 0};
    SynthPage page = {lines, 1, &block, 1, NULL, 0, NULL, 0, 0};
    CU_ASSERT_EQUAL(synth_page_save(&o, &page, 0, "/tmp/docmint-never.png", &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "synth: page 240x320 too small: \"Reference: a value"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "is too wide"));
    o.width = 32;
    CU_ASSERT_EQUAL(synth_page_save(&o, &page, 0, "/tmp/docmint-never.png", &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "page size 32x320 out of range"));
    o.pages_per_doc = 0;
    CU_ASSERT_EQUAL(synth_doc_make(&o, 0, SYNTH_TRAIN, &doc, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "pages per document 0"));
    SynthKind k;
    CU_ASSERT_EQUAL(synth_kind_parse("colors", &k), 0);
    CU_ASSERT_EQUAL(k, SYNTH_KV_COLOURS);
    CU_ASSERT_EQUAL(synth_kind_parse("receipt", &k), 0);
    CU_ASSERT_EQUAL(k, SYNTH_RECEIPT);
    CU_ASSERT_EQUAL(synth_kind_parse("shapes", &k), -1);
    /* the split rule */
    CU_ASSERT_EQUAL(synth_split_of(2, 1), SYNTH_TRAIN);
    CU_ASSERT_EQUAL(synth_split_of(3, 1), SYNTH_VAL);
    CU_ASSERT_EQUAL(synth_split_of(3, 2), SYNTH_TEST);
    CU_ASSERT_EQUAL(synth_split_of(40, 31), SYNTH_TRAIN);
    CU_ASSERT_EQUAL(synth_split_of(40, 32), SYNTH_VAL);
    CU_ASSERT_EQUAL(synth_split_of(40, 36), SYNTH_TEST);
    /* the command's usage errors: status 2 */
    printf("\n    (five usage lines below are expected) ");
    fflush(stdout);
    char *bad_kv[] = {"synth", "/tmp/docmint-never", "--kv", "shapes", NULL};
    char *bad_kind[] = {"synth", "/tmp/docmint-never", "--kind", "letters", NULL};
    char *bad_aug[] = {"synth", "/tmp/docmint-never", "--augment", "blur=99", NULL};
    char *bad_docs[] = {"synth", "/tmp/docmint-never", "--docs", "0", NULL};
    char *no_dir[] = {"synth", "--docs", "2", NULL};
    CU_ASSERT_EQUAL(cmd_synth(4, bad_kv), 2);
    CU_ASSERT_EQUAL(cmd_synth(4, bad_kind), 2);
    CU_ASSERT_EQUAL(cmd_synth(4, bad_aug), 2);
    CU_ASSERT_EQUAL(cmd_synth(4, bad_docs), 2);
    CU_ASSERT_EQUAL(cmd_synth(3, no_dir), 2);
    CU_ASSERT_NOT_EQUAL(access("/tmp/docmint-never", F_OK), 0);
}

void tests_synth(void)
{
    TU_SUITE("synth", {"same seed, same bytes", t_deterministic},
             {"same files on 1, 2 and 3 threads", t_threads},
             {"answers on the page, images at the declared size", t_answers_on_page},
             {"form content and total", t_form_content}, {"every kind in every split", t_kinds},
             {"no value or page in two splits", t_splits}, {"corrupted twins", t_corrupt},
             {"augmentation", t_augment}, {"missing fonts", t_fonts}, {"multi-page TIFF", t_tiff},
             {"errors", t_errors});
}
