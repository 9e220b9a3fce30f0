/* test_compare.c - the parts of `docmint compare` and of the lowercase
 * flag that can be checked without running the protocol
 * (tests/mpi/compare.sh runs it): the Pareto front against a sweep
 * written here, the spec check, lowercasing against Python's str.lower()
 * (the expected bytes were printed by Python 3), prompt.json. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/logit_store.h"
#include "common/store.h"
#include "coordinator/compare.h"
#include "tests/tutil.h"
#include "worker/data/corpus.h"
#include "worker/image/preprocess.h"
#include "worker/model/donut.h"
#include "worker/stages/qa.h"
#include "worker/stages/stage_cache.h"
#include "worker/text/tokenizer.h"
#include "worker/train/distill_data.h"

/* The front by a sweep: sorted by x (ties: higher y first), a point is on
 * it when its y beats every y of a point with smaller or equal x. */
static void s_sweep(const double *x, const double *y, int n, int *front)
{
    int *o = malloc((size_t)n * sizeof *o);
    int m = 0;
    for (int i = 0; i < n; i++) {
        front[i] = 0;
        if (isfinite(x[i]) && isfinite(y[i]))
            o[m++] = i;
    }
    for (int i = 1; i < m; i++)
        for (int j = i; j > 0; j--) {
            int a = o[j - 1], b = o[j];
            if (x[a] > x[b] || (x[a] == x[b] && y[a] < y[b])) {
                o[j - 1] = b;
                o[j] = a;
            }
        }
    double best = -INFINITY, bx = NAN;
    for (int k = 0; k < m; k++) {
        int i = o[k];
        /* an exact twin of the point that set best is not beaten by it */
        if (y[i] > best || (y[i] == best && x[i] == bx))
            front[i] = 1;
        if (y[i] > best) {
            best = y[i];
            bx = x[i];
        }
    }
    free(o);
}

static void test_pareto(void)
{
    /* by hand: (0.3, 0.5) and (0.5, 0.7) and (1, 0.9) on it; (0.6, 0.6)
     * below (0.5, 0.7); the NaN row out */
    double x[] = {1.0, 0.3, 0.5, 0.6, NAN, 0.5};
    double y[] = {0.9, 0.5, 0.7, 0.6, 0.8, 0.7};
    int f[6];
    compare_pareto(x, y, 6, f);
    int want[6] = {1, 1, 1, 0, 0, 1};
    for (int i = 0; i < 6; i++)
        CU_ASSERT_EQUAL(f[i], want[i]);
    /* random sets, with ties on a coarse grid, against the sweep */
    srand(11);
    for (int t = 0; t < 200; t++) {
        int n = 1 + rand() % 12;
        double xs[12], ys[12];
        int a[12], b[12];
        for (int i = 0; i < n; i++) {
            xs[i] = (rand() % 6) / 5.0;
            ys[i] = (rand() % 6) / 5.0;
        }
        compare_pareto(xs, ys, n, a);
        s_sweep(xs, ys, n, b);
        for (int i = 0; i < n; i++)
            CU_ASSERT_EQUAL(a[i], b[i]);
    }
}

static void test_lowercase(void)
{
    static const char *cases[][2] = {
        {"WHAT IS X?", "what is x?"},
        {"\xc3\x89" "cole \xc3\x80\xc3\x89\xc3\x8e\xc3\x95\xc3\x9c \xc5\xb8",
         "\xc3\xa9" "cole \xc3\xa0\xc3\xa9\xc3\xae\xc3\xb5\xc3\xbc \xc3\xbf"},
        {"\xce\x94\xce\xa9", "\xce\xb4\xcf\x89"},
        /* U+023A: 2 bytes whose lowercase takes 3 */
        {"\xc8\xba\xc8\xba\xc8\xba\xc8\xba", "\xe2\xb1\xa5\xe2\xb1\xa5\xe2\xb1\xa5\xe2\xb1\xa5"},
        {"Kelvin \xe2\x84\xaa", "kelvin k"},
        {"\xd0\x94\xd0\x9e\xd0\x9a\xd0\xa3\xd0\x9c\xd0\x95\xd0\x9d\xd0\xa2 \xe2\x84\x96" "5",
         "\xd0\xb4\xd0\xbe\xd0\xba\xd1\x83\xd0\xbc\xd0\xb5\xd0\xbd\xd1\x82 \xe2\x84\x96" "5"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *out = NULL;
        DmErr err = {{0}};
        CU_ASSERT_EQUAL_FATAL(tok_lowercase(cases[i][0], &out, &err), 0);
        CU_ASSERT_STRING_EQUAL(out, cases[i][1]);
        free(out);
    }
    char *out = NULL;
    DmErr err = {{0}};
    CU_ASSERT_NOT_EQUAL(tok_lowercase("AB\xff", &out, &err), 0);
    CU_ASSERT_PTR_NULL(out);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "invalid UTF-8 at byte 2"));
}

static char s_dir[64];

static void s_write(const char *name, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", s_dir, name);
    FILE *f = fopen(p, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

static void s_mkdir(void)
{
    if (!s_dir[0]) {
        snprintf(s_dir, sizeof s_dir, "/tmp/docmint-cmp-XXXXXX");
        CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(s_dir));
    }
}

static void test_prompt_config(void)
{
    s_mkdir();
    int lc = -1;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(qa_prompt_config(s_dir, &lc, &err), 0); /* no file: off */
    CU_ASSERT_EQUAL(lc, 0);
    CU_ASSERT_EQUAL(qa_prompt_config_write(s_dir, 1, &err), 0);
    CU_ASSERT_EQUAL(qa_prompt_config(s_dir, &lc, &err), 0);
    CU_ASSERT_EQUAL(lc, 1);
    static const char *bad[][2] = {
        {"[true]", "must be a JSON object"},
        {"{\"lowercase_questions\": 1}", "lowercase_questions must be true or false"},
        {"{\"lowercase\": true}", "unknown key \"lowercase\""},
        {"{\"lowercase_questions\": tru", "prompt.json: line 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s_write("prompt.json", bad[i][0]);
        memset(&err, 0, sizeof err);
        CU_ASSERT_NOT_EQUAL(qa_prompt_config(s_dir, &lc, &err), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad[i][1]));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, s_dir));
    }
    unlink(strcat(strcat((char[256]){0}, s_dir), "/prompt.json"));
}

/* A spec's check: what it refuses, and the defaults it fills. */
static void test_spec(void)
{
    s_mkdir();
    char path[256];
    snprintf(path, sizeof path, "%s/spec.json", s_dir);
    s_write("spec.json", "{\"teacher\": \"t\", \"corpus\": \"c/a.json\", \"budgets\": [0.31],"
                         " \"methods\": [\"mint\", \"wanda\"], \"distill\": {\"steps\": 5}}");
    json_t *doc = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(compare_spec_load(path, &doc, &err), 0);
    json_t *sp = json_object_get(doc, "split");
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(sp, "evaluation")), 0.6, 1e-12);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(sp, "seed")), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(doc, "timing"), "repeat")), 3);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc, "lowercase_questions")), "off");
    char want[300];
    snprintf(want, sizeof want, "%s/c", s_dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc, "image_root")), want);
    snprintf(want, sizeof want, "%s/t", s_dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(doc, "teacher")), want);
    json_decref(doc);
    static const char *bad[][2] = {
        {"\"methods\": [\"mint\"], \"distill\": {\"stepz\": 5}", "distill (as the distill job takes it)"},
        {"\"methods\": [\"mint\"], \"distill\": {\"logits\": \"x\"}", "compare fills it in"},
        {"\"methods\": [\"mint\", \"mint\"], \"distill\": {}", "listed twice"},
        {"\"methods\": [\"Mint\"], \"distill\": {}", "lowercase letters"},
        {"\"methods\": [\"mint\"], \"distill\": {}, \"analysis\": {\"model\": \"m\"}",
         "analysis.model: compare sets it"},
        {"\"methods\": [\"mint\"], \"distill\": {}, \"analysis\": {\"analyses\": [\"nope\"]}",
         "analysis (as the analyze job takes it)"},
        {"\"methods\": [\"mint\"], \"distill\": {}, \"split\": {\"analysis\": 0.5}",
         "must be 1, got 1.3"},
        {"\"methods\": [], \"distill\": {}", "methods"},
        {"\"methods\": [\"mint\"], \"distill\": {}, \"mpirun\": []", "mpirun"},
        {"\"methods\": [\"mint\"], \"distill\": {}, \"lowercase_questions\": \"yes\"",
         "lowercase_questions"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"teacher\": \"t\", \"corpus\": \"c.json\", \"budgets\": "
                                    "[0.31], %s}", bad[i][0]);
        s_write("spec.json", text);
        memset(&err, 0, sizeof err);
        doc = NULL;
        CU_ASSERT_NOT_EQUAL(compare_spec_load(path, &doc, &err), 0);
        CU_ASSERT_PTR_NULL(doc);
        if (!strstr(err.msg, bad[i][1]) || !strstr(err.msg, path))
            fprintf(stderr, "\n  case %zu: %s\n", i, err.msg);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad[i][1]));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
        CU_ASSERT_PTR_NULL(strchr(err.msg, '\n'));
    }
}

static int s_prompt(void *ctx, const char *question, int32_t **ids, int *n, DmErr *err)
{
    return qa_prompt(ctx, question, ids, n, err);
}

/* A teacher-logit store made by cache-logits on a synthetic corpus whose
 * questions start with capitals, read for a student that lowercases: every
 * item must be exactly the sequence cache_sequence makes for the
 * lowercasing student (its prompt from the lowercased question, then the
 * record's answer), with the teacher's targets on its answer positions. */
static void test_distill_restated(void)
{
    const char *bin = getenv("DOCMINT");
    if (!bin || access(bin, X_OK) != 0) {
        fprintf(stderr, "\n    DOCMINT not set or not executable, not tested ");
        return;
    }
    s_mkdir();
    char cmd[2048], path[512];
    snprintf(cmd, sizeof cmd,
             "%s init %s/m --config ../jobs/configs/tiny.json --seed 7 >/dev/null && "
             "%s synth %s/c --docs 4 --seed 3 --quiet && "
             "printf '{\"stage\": \"cache-logits\", \"model\": \"m\", \"output\": \"l\", "
             "\"corpus\": {\"path\": \"c/train_v1.0_withQT.json\"}, \"top_k\": 4, "
             "\"temperatures\": [2.0], \"threads\": 1, \"endpoint\": \"tcp://127.0.0.1:0\"}' "
             "> %s/job.json && %s run %s/job.json --quiet",
             bin, s_dir, bin, s_dir, s_dir, bin, s_dir);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    DmErr err = {{0}};
    DonutModel *m = NULL;
    Tokenizer *tok = NULL;
    PreprocConfig pc;
    Corpus *c = NULL;
    Store *st = NULL;
    DistillData *d = NULL;
    char mdir[300], cpath[300];
    snprintf(mdir, sizeof mdir, "%s/m", s_dir);
    snprintf(cpath, sizeof cpath, "%s/c/train_v1.0_withQT.json", s_dir);
    snprintf(path, sizeof path, "%s/m/preprocessor_config.json", s_dir);
    CorpusSpec cs = {.format = CORPUS_DOCVQA, .path = cpath, .pdf_dpi = 200};
    CU_ASSERT_EQUAL_FATAL(donut_load(mdir, &m, &err) || tokenizer_load(mdir, &tok, &err) ||
                              preproc_config_load(path, &pc, &err) || corpus_load(&cs, &c, &err),
                          0);
    snprintf(path, sizeof path, "%s/l", s_dir);
    CU_ASSERT_EQUAL_FATAL(store_open(path, STORE_READ, &st, &err), 0);
    CU_ASSERT_EQUAL_FATAL(distill_data_open(st, c, m, &pc, 200, 2.0, 64u << 20, 0, &d, &err), 0);
    QaModel teacher, student;
    CU_ASSERT_EQUAL_FATAL(qa_from(m, tok, mdir, &teacher, &err), 0);
    student = teacher;
    student.lowercase_questions = 1;
    distill_data_set_prompt(d, s_prompt, &student);
    int n = distill_data_count(d), changed = 0;
    CU_ASSERT(n >= 6);
    for (int i = 0; i < n; i++) {
        DistillLoaded l;
        CU_ASSERT_EQUAL_FATAL(distill_item_load(d, i, &l, &err), 0);
        int64_t qid;
        unsigned ai;
        logit_key_parse(distill_data_item(d, i)->key, &qid, &ai);
        const CorpusQuestion *q = NULL;
        for (int p = 0; p < c->npages && !q; p++)
            for (int k = 0; k < c->pages[p].nq; k++)
                if (c->pages[p].q[k].qid == qid)
                    q = &c->pages[p].q[k];
        CU_ASSERT_PTR_NOT_NULL_FATAL(q);
        int32_t *want = NULL, *was = NULL;
        int nw = 0, a0 = 0, nwas = 0, a0was = 0;
        CU_ASSERT_EQUAL_FATAL(cache_sequence(&student, q->text, q->answers[ai], &want, &nw, &a0, &err), 0);
        CU_ASSERT_EQUAL_FATAL(cache_sequence(&teacher, q->text, q->answers[ai], &was, &nwas, &a0was, &err), 0);
        CU_ASSERT_EQUAL(l.it.T, nw);
        CU_ASSERT_EQUAL(l.it.answer_start, a0);
        CU_ASSERT(l.it.T == nw && !memcmp(l.it.ids, want, (size_t)nw * sizeof *want));
        /* the teacher's record had its own prompt; the answer part is the same */
        CU_ASSERT_EQUAL(nw - a0, nwas - a0was);
        CU_ASSERT_EQUAL(logit_record_positions(l.rec), nw - 1 - a0);
        CU_ASSERT_PTR_EQUAL(l.it.teacher, l.kt);
        changed += nw != nwas || memcmp(want, was, (size_t)nw * sizeof *want) != 0;
        free(want);
        free(was);
        distill_item_clear(&l);
    }
    CU_ASSERT_EQUAL(changed, n); /* every synthetic question starts with a capital */
    distill_data_close(&d);
    store_close(&st);
    corpus_free(&c);
    tokenizer_free(&tok);
    donut_free(&m);
}

static void test_zz_cleanup(void)
{
    if (s_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
        CU_ASSERT_EQUAL(system(cmd), 0);
    }
}

void tests_compare(void)
{
    TU_SUITE("compare", {"Pareto front against a sweep", test_pareto},
             {"lowercasing against Python's str.lower", test_lowercase},
             {"prompt.json", test_prompt_config}, {"the spec check", test_spec},
             {"distill items restated for a lowercasing student", test_distill_restated},
             {"remove temporary files", test_zz_cleanup});
}
