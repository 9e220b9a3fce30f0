/* test_synth.c - the synthetic corpus: same seed, same bytes; every answer
 * in the JSON is on its page according to the generator's own record of
 * the rendered lines; pages load at the declared size; key-value pages;
 * multi-page TIFFs; pages too small for their text are refused. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cli/commands.h"
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

static const char *const s_files[] = {"train_v1.0_withQT.json", "val_v1.0_withQT.json", "test_v1.0.json",
                                      "synth_lines.jsonl", "documents/syn00000_1.png",
                                      "documents/syn00002_2.png"};

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

/* The page of an entry, regenerated from the options and the document
 * number in its ucsf_document_id. */
static const SynthPage *s_page_of(const json_t *e, const SynthOptions *o, SynthDoc *doc)
{
    int d = -1, p = -1;
    const char *ucsf = json_string_value(json_object_get(e, "ucsf_document_id"));
    const char *pno = json_string_value(json_object_get(e, "ucsf_document_page_no"));
    if (!ucsf || !pno || sscanf(ucsf, "syn%d", &d) != 1 || sscanf(pno, "%d", &p) != 1)
        return NULL;
    DmErr err = {{0}};
    if (doc->pages && doc->index == d)
        return p >= 1 && p <= doc->npages ? &doc->pages[p - 1] : NULL;
    synth_doc_free(doc);
    if (synth_doc_make(o, d, doc, &err))
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
static void s_check_answers(const char *out, const SynthOptions *o)
{
    static const char *const files[] = {"train_v1.0_withQT.json", "val_v1.0_withQT.json", "test_v1.0.json"};
    char path[700];
    int checked = 0;
    SynthDoc doc = {0};
    for (int s = 0; s < 3; s++) {
        snprintf(path, sizeof path, "%s/%s", out, files[s]);
        json_t *root = json_load_file(path, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(root);
        const json_t *data = json_object_get(root, "data");
        CU_ASSERT(json_array_size(data) > 0);
        size_t i;
        json_t *e;
        json_array_foreach(data, i, e) {
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
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *rec = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
        SynthDoc doc;
        DmErr err = {{0}};
        int d = n / 2, p = n % 2;
        CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, d, &doc, &err), 0);
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
        CU_ASSERT(dark > 200);
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

/* A form page offers the date, the total, every field and the table; the
 * total is the sum of the table. */
static void t_form_content(void)
{
    SynthOptions o;
    synth_options_default(&o);
    o.questions_per_page = 100;
    for (int d = 0; d < 20; d++) {
        SynthDoc doc;
        DmErr err = {{0}};
        CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, d, &doc, &err), 0);
        const SynthPage *p = &doc.pages[0];
        int date = 0, total = 0;
        for (int k = 0; k < p->nqa; k++) {
            date |= !strcmp(p->qa[k].question, "What is the date?");
            total |= !strcmp(p->qa[k].question, "What is the total amount?");
            CU_ASSERT(s_on_page(p, p->qa[k].answer));
        }
        CU_ASSERT(date && total);
        CU_ASSERT(p->nqa >= 13);
        /* blocks: title, date, fields, item, qty, price, total */
        CU_ASSERT_EQUAL_FATAL(p->nblocks, 7);
        const SynthBlock *qty = &p->blocks[4], *price = &p->blocks[5], *tot = &p->blocks[6];
        long long sum = 0;
        for (int r = 1; r < 4; r++) {
            int qn = atoi(p->lines[qty->first + r]);
            long long cents = 0;
            for (const char *c = p->lines[price->first + r]; *c; c++)
                if (*c >= '0' && *c <= '9')
                    cents = cents * 10 + (*c - '0');
            sum += qn * cents;
        }
        long long shown = 0;
        for (const char *c = p->lines[tot->first]; *c; c++)
            if (*c >= '0' && *c <= '9')
                shown = shown * 10 + (*c - '0');
        CU_ASSERT_EQUAL(shown, sum);
        synth_doc_free(&doc);
    }
}

/* Key-value pages: "key: value" lines from the chosen word set, distinct
 * keys, questions "What is the <key>?". */
static void t_kv_pages(void)
{
    static const SynthKind kinds[] = {SYNTH_KV_COLOURS, SYNTH_KV_NOUNS, SYNTH_KV_NUMBERS};
    for (int k = 0; k < 3; k++) {
        SynthOptions o;
        synth_options_default(&o);
        o.kind = kinds[k];
        o.questions_per_page = 5;
        SynthDoc doc;
        DmErr err = {{0}};
        CU_ASSERT_EQUAL_FATAL(synth_doc_make(&o, 3, &doc, &err), 0);
        const SynthPage *p = &doc.pages[0];
        CU_ASSERT_EQUAL(p->nlines, 12);
        CU_ASSERT_EQUAL(p->nqa, 5);
        for (int i = 0; i < p->nlines; i++) {
            CU_ASSERT_PTR_NOT_NULL(strstr(p->lines[i], ": "));
            for (int j = 0; j < i; j++) {
                size_t ki = strcspn(p->lines[i], ":"), kj = strcspn(p->lines[j], ":");
                CU_ASSERT(ki != kj || strncmp(p->lines[i], p->lines[j], ki) != 0);
            }
        }
        for (int q = 0; q < p->nqa; q++) {
            char key[64], want[160];
            CU_ASSERT_EQUAL_FATAL(sscanf(p->qa[q].question, "What is the %63[^?]?", key), 1);
            snprintf(want, sizeof want, "%s: %s", key, p->qa[q].answer);
            int found = 0;
            for (int i = 0; i < p->nlines; i++)
                found |= !strcmp(p->lines[i], want);
            CU_ASSERT(found);
        }
        if (kinds[k] == SYNTH_KV_NUMBERS)
            for (int i = 0; i < p->nlines; i++)
                for (const char *c = p->lines[i]; *c; c++)
                    CU_ASSERT(!(*c >= '0' && *c <= '9'));
        synth_doc_free(&doc);
    }
    /* and through the command, with answers on the page */
    char dir[] = "/tmp/docmint-synth-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char out[600];
    snprintf(out, sizeof out, "%s/kv", dir);
    CU_ASSERT_EQUAL_FATAL(s_synth(out, "11", "--kv", "nouns"), 0);
    SynthOptions o;
    synth_options_default(&o);
    o.seed = 11;
    o.kind = SYNTH_KV_NOUNS;
    o.width = 240;
    o.height = 320;
    o.pages_per_doc = 2;
    o.questions_per_page = 4;
    s_check_answers(out, &o);
    s_rmtree(dir);
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
    SynthBlock block = {80, 0, 22, 3, 0, 1};
    SynthPage page = {lines, 1, &block, 1, NULL, 0};
    CU_ASSERT_EQUAL(synth_page_save(&o, &page, "/tmp/docmint-never.png", &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "synth: page 240x320 too small: \"Reference: a value"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "is too wide"));
    o.width = 32;
    CU_ASSERT_EQUAL(synth_page_save(&o, &page, "/tmp/docmint-never.png", &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "page size 32x320 out of range"));
    o.pages_per_doc = 0;
    CU_ASSERT_EQUAL(synth_doc_make(&o, 0, &doc, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "pages per document 0"));
    SynthKind k;
    CU_ASSERT_EQUAL(synth_kind_parse("colors", &k), 0);
    CU_ASSERT_EQUAL(k, SYNTH_KV_COLOURS);
    CU_ASSERT_EQUAL(synth_kind_parse("shapes", &k), -1);
    /* the command's usage errors: status 2 */
    printf("\n    (three usage lines below are expected) ");
    fflush(stdout);
    char *bad_kv[] = {"synth", "/tmp/docmint-never", "--kv", "shapes", NULL};
    char *bad_docs[] = {"synth", "/tmp/docmint-never", "--docs", "0", NULL};
    char *no_dir[] = {"synth", "--docs", "2", NULL};
    CU_ASSERT_EQUAL(cmd_synth(4, bad_kv), 2);
    CU_ASSERT_EQUAL(cmd_synth(4, bad_docs), 2);
    CU_ASSERT_EQUAL(cmd_synth(3, no_dir), 2);
    CU_ASSERT_NOT_EQUAL(access("/tmp/docmint-never", F_OK), 0);
}

void tests_synth(void)
{
    TU_SUITE("synth", {"same seed, same bytes", t_deterministic},
             {"answers on the page, images at the declared size", t_answers_on_page},
             {"form content and total", t_form_content}, {"key-value pages", t_kv_pages},
             {"multi-page TIFF", t_tiff}, {"errors", t_errors});
}
