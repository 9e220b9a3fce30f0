/* test_kv.c - the key-value retrieval analysis (docs/analyze.md "Key-value
 * retrieval"): the answer classes on hand cases (normalisation as ANLS's,
 * ties not counted); the mechanics on data/tiny-a (random-ish weights):
 * the analysis pass's greedy decoding against generate.c's, a run's own
 * query patched into itself changing nothing, the patched greedy answer
 * against a teacher-forced pass with the same patch; the corrupt corpus's
 * errors; the report's counts, shares and figure. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <vips/vips.h>

#include "tutil.h"
#include "coordinator/kv_report.h"
#include "coordinator/kv_retrieval.h"
#include "kernels/cpu/kern.h"
#include "worker/analyze/analyze.h"
#include "worker/model/generate.h"
#include "worker/model/donut.h"

#define EXPECTED TU_TINY "/expected.safetensors"

static TuTmp s_tmp = {"/tmp/dm_kv_XXXXXX"};

static void s_cleanup(void)
{
    static const char *const names[] = {"documents/p1.png",  "documents/p1_corrupt.png",
                                        "documents/p2.png",  "c_ok.json",
                                        "c_nopos.json",      "c_notwin.json",
                                        "c_noclean.json",    "c_dup.json",
                                        "kv.png"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unlink(tu_tmp(&s_tmp, names[i], NULL));
    rmdir(tu_tmp(&s_tmp, "documents", NULL));
    tu_tmp_done(&s_tmp);
}

/* ------------------------------------------------------------ classes */

static void test_classify(void)
{
    const struct {
        const char *answer, *clean, *new_, *pos;
        Docmint__KvClass want;
    } cases[] = {
        {"indigo", "peach", "ochre", "indigo", DOCMINT__KV_CLASS__KV_POSITIONAL},
        {"  Ochre ", "peach", "ochre", "indigo", DOCMINT__KV_CLASS__KV_SEMANTIC},
        {"PEACH", "peach", "ochre", "indigo", DOCMINT__KV_CLASS__KV_MEMORISED},
        {"teal", "peach", "ochre", "indigo", DOCMINT__KV_CLASS__KV_FAILURE},
        {"", "peach", "ochre", "indigo", DOCMINT__KV_CLASS__KV_FAILURE},
        /* white space inside collapses, hyphens do not */
        {"forty\t  two", "six", "forty two", "nine", DOCMINT__KV_CLASS__KV_SEMANTIC},
        {"forty-two", "six", "forty two", "nine", DOCMINT__KV_CLASS__KV_FAILURE},
        /* full Unicode lower-casing, as the DocVQA script's str.lower() */
        {"ÉCRU", "écru", "ochre", "indigo", DOCMINT__KV_CLASS__KV_MEMORISED},
        /* two values the same after normalisation: not counted, whatever
         * the answer */
        {"peach", "peach", "Peach ", "indigo", DOCMINT__KV_CLASS__KV_TIED},
        {"indigo", "peach", "indigo", " INDIGO", DOCMINT__KV_CLASS__KV_TIED},
        {"ochre", "ochre", "peach", "ochre", DOCMINT__KV_CLASS__KV_TIED},
        {"x", "a", "a", "a", DOCMINT__KV_CLASS__KV_TIED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Docmint__KvClass got =
            kv_classify(cases[i].answer, cases[i].clean, cases[i].new_, cases[i].pos);
        if (got != cases[i].want)
            fprintf(stderr, "\n  case %zu: %s, want %s\n", i, kv_class_name(got),
                    kv_class_name(cases[i].want));
        CU_ASSERT(got == cases[i].want);
    }
    CU_ASSERT_STRING_EQUAL(kv_class_name(DOCMINT__KV_CLASS__KV_POSITIONAL), "positional");
    CU_ASSERT_STRING_EQUAL(kv_class_name(DOCMINT__KV_CLASS__KV_TIED), "tied");
}

/* ------------------------------------------------------------ mechanics */

/* The last cross-attention's queries of a teacher-forced pass of prompt +
 * answer on page: [plen + n, width] (malloc'ed). */
static float *s_query(const DecPage *page, const int32_t *prompt, int plen, const int32_t *ans,
                      int n, int qsub, int width)
{
    int T = plen + n;
    int32_t seq[128];
    if (T > 128 || n < 1)
        return NULL;
    memcpy(seq, prompt, (size_t)plen * sizeof *seq);
    memcpy(seq + plen, ans, (size_t)n * sizeof *seq);
    AnTrace tr;
    DmErr err = {{0}};
    if (an_run(page, seq, T, plen - 1, NULL, 0, 0, &tr, &err))
        return NULL;
    float *q = malloc((size_t)T * width * sizeof *q);
    if (q)
        memcpy(q, tr.query[qsub], (size_t)T * width * sizeof *q);
    an_trace_free(&tr);
    return q;
}

static void test_mechanics(void)
{
    DonutModel *m = NULL;
    TensorFile *ex = NULL;
    DmErr err = {{0}};
    CU_ASSERT_FATAL(donut_load(TU_TINY, &m, &err) == 0);
    CU_ASSERT_FATAL(tensorfile_open(EXPECTED, &ex, &err) == 0);
    const MBartConfig *c = &m->cfg.dec;
    int qsub = 3 * (c->layers - 1) + DM_SUB_C, width = c->heads * m->dec.head_dim;
    float *enc[2];
    int n_enc[2];
    DecPage page[2];
    for (int k = 0; k < 2; k++) {
        CU_ASSERT_FATAL((enc[k] = tu_encode_case(m, ex, k, &n_enc[k])) != NULL);
        CU_ASSERT_FATAL(dec_page_init(&page[k], m, enc[k], n_enc[k], &err) == 0);
    }
    /* the prompt: the first half of case 0's decoder input */
    const DmTensor *ti = tensorfile_find(ex, "case0.decoder_input_ids");
    CU_ASSERT_FATAL(ti != NULL);
    int64_t ids64[64];
    int32_t prompt[64];
    int T0 = (int)ti->shape[1];
    CU_ASSERT_FATAL(T0 <= 64 && dm_tensor_to_i64(ti, ids64, &err) == 0);
    int plen = T0 / 2 + 1;
    for (int i = 0; i < plen; i++)
        prompt[i] = (int32_t)ids64[i];
    AnGreedyCfg g = {12, c->eos_id, -1, c->unk_id};

    int32_t *ans[2] = {NULL, NULL}, *same[2] = {NULL, NULL};
    int nans[2], nsame[2];
    for (int k = 0; k < 2; k++) {
        /* the analysis pass's greedy answer against generate.c's (no hook,
         * the fast path) up to the stop token */
        CU_ASSERT_FATAL(an_greedy(&page[k], prompt, plen, &g, -1, NULL, 0, 0, &ans[k], &nans[k],
                                  &err) == 0);
        CU_ASSERT(nans[k] >= 1 && nans[k] <= g.max_new);
        GenConfig gc;
        gen_config_default(m, &gc);
        gc.max_length = plen + g.max_new + 1; /* its forced EOS past ours */
        GenResult gr;
        const int32_t *pp = prompt;
        CU_ASSERT_FATAL(gen_greedy(&page[k], &pp, &plen, 1, &gc, &gr, NULL, NULL, &err) == 0);
        CU_ASSERT(gr.len - plen >= nans[k] &&
                  memcmp(gr.ids + plen, ans[k], (size_t)nans[k] * sizeof(int32_t)) == 0);
        if (ans[k][nans[k] - 1] == c->eos_id)
            CU_ASSERT(gr.len - plen == nans[k]);
        gen_result_free(&gr);
        /* a run's own query at its answer positions patched into itself:
         * the same answer */
        float *q = s_query(&page[k], prompt, plen, ans[k], nans[k], qsub, width);
        CU_ASSERT_FATAL(q != NULL);
        CU_ASSERT_FATAL(an_greedy(&page[k], prompt, plen, &g, qsub, q, plen - 1,
                                  plen + nans[k] - 1, &same[k], &nsame[k], &err) == 0);
        CU_ASSERT(nsame[k] == nans[k] &&
                  memcmp(same[k], ans[k], (size_t)nans[k] * sizeof(int32_t)) == 0);
        free(q);
    }
    /* The experiment on page 0 (clean) and page 1 (twin): the clean answer,
     * the control, and the patched answer, checked against a teacher-forced
     * pass of the twin on prompt + patched answer with the clean queries set
     * by an_run's own intervention (AN_SET, as nll.patch_query): each
     * patched token is that pass's argmax at the position before it. */
    AnKv kv;
    AnStats stats = {0};
    CU_ASSERT_FATAL(an_kv(&page[0], &page[1], prompt, plen, &g, &kv, &stats, &err) == 0);
    CU_ASSERT(kv.nclean == nans[0] && !memcmp(kv.clean, ans[0], (size_t)nans[0] * sizeof(int32_t)));
    CU_ASSERT(kv.ncontrol == nans[1] &&
              !memcmp(kv.control, ans[1], (size_t)nans[1] * sizeof(int32_t)));
    CU_ASSERT(stats.passes == 1 && stats.seconds > 0);
    float *qc = s_query(&page[0], prompt, plen, kv.clean, kv.nclean, qsub, width);
    CU_ASSERT_FATAL(qc != NULL);
    int Tp = plen + kv.npatched, Tc = plen + kv.nclean;
    int32_t seq[128];
    memcpy(seq, prompt, (size_t)plen * sizeof *seq);
    memcpy(seq + plen, kv.patched, (size_t)kv.npatched * sizeof *seq);
    /* the pass needs one token past the last scored position: a filler
     * that no scored position sees */
    seq[Tp] = 0;
    AnOp op = {.site = {qsub, AN_QUERY, 0}, .op = AN_SET, .src = qc, .row0 = plen - 1,
               .row1 = Tc - 1 < Tp ? Tc - 1 : Tp};
    AnTrace tr;
    CU_ASSERT_FATAL(an_run(&page[1], seq, Tp + 1, plen - 1, &op, 1, 0, &tr, &err) == 0);
    int agree = 0;
    for (int j = 0; j < kv.npatched; j++) {
        float *row = tr.logits + (size_t)j * c->vocab;
        if (c->unk_id >= 0)
            row[c->unk_id] = -INFINITY;
        agree += kern_argmax(row, c->vocab) == kv.patched[j];
    }
    CU_ASSERT(agree == kv.npatched);
    /* on tiny-a the patch changes the answer, so the check above sees it act */
    CU_ASSERT(kv.npatched != kv.ncontrol ||
              memcmp(kv.patched, kv.control, (size_t)kv.npatched * sizeof(int32_t)) != 0);
    an_trace_free(&tr);
    free(qc);
    an_kv_free(&kv);
    for (int k = 0; k < 2; k++) {
        free(ans[k]);
        free(same[k]);
        dec_page_free(&page[k]);
        free(enc[k]);
    }
    tensorfile_close(&ex);
    donut_free(&m);
}

/* ------------------------------------------------------------ corrupt corpus */

static const char *s_entry =
    "{\"questionId\": %d, \"question\": \"What is coral?\", \"image\": \"%s\", "
    "\"clean_image\": \"%s\", \"answers\": [\"ochre\"], \"v_clean\": \"peach\", "
    "\"v_new\": \"ochre\"%s, \"kv_set\": \"colours\"}";

static const char *s_corrupt(const char *name, const char *twin, const char *clean,
                             const char *pos, int dup)
{
    char e[1024], text[2200];
    snprintf(e, sizeof e, s_entry, 7, twin, clean, pos);
    if (dup) {
        char e2[1024];
        snprintf(e2, sizeof e2, s_entry, 7, twin, clean, pos);
        snprintf(text, sizeof text, "{\"data\": [%s, %s]}", e, e2);
    } else {
        snprintf(text, sizeof text, "{\"data\": [%s]}", e);
    }
    const char *p = tu_tmp(&s_tmp, name, s_cleanup);
    tu_write(p, text, strlen(text));
    return p;
}

static void test_corrupt_corpus(void)
{
    tu_tmp(&s_tmp, "x", s_cleanup);
    CU_ASSERT_FATAL(mkdir(tu_tmp(&s_tmp, "documents", NULL), 0700) == 0);
    tu_write(tu_tmp(&s_tmp, "documents/p1.png", NULL), "x", 1);
    tu_write(tu_tmp(&s_tmp, "documents/p1_corrupt.png", NULL), "x", 1);
    tu_write(tu_tmp(&s_tmp, "documents/p2.png", NULL), "x", 1);
    const char *pos = ", \"v_pos\": \"indigo\"";
    KvTable *t = NULL;
    DmErr err = {{0}};
    char path[256];

    snprintf(path, sizeof path, "%s", s_corrupt("c_nopos.json", "documents/p1_corrupt.png",
                                                 "documents/p1.png", "", 0));
    CU_ASSERT(kv_table_load(path, &t, &err) != 0 && t == NULL);
    CU_ASSERT(strstr(err.msg, path) && strstr(err.msg, "\"v_pos\"") && !strchr(err.msg, '\n'));

    dm_err_clear(&err);
    snprintf(path, sizeof path, "%s", s_corrupt("c_notwin.json", "documents/p9_corrupt.png",
                                                 "documents/p1.png", pos, 0));
    CU_ASSERT(kv_table_load(path, &t, &err) != 0);
    CU_ASSERT(strstr(err.msg, path) && strstr(err.msg, "p9_corrupt.png does not exist"));

    dm_err_clear(&err);
    snprintf(path, sizeof path, "%s", s_corrupt("c_noclean.json", "documents/p1_corrupt.png",
                                                 "documents/p8.png", pos, 0));
    CU_ASSERT(kv_table_load(path, &t, &err) != 0);
    CU_ASSERT(strstr(err.msg, path) && strstr(err.msg, "p8.png does not exist"));

    dm_err_clear(&err);
    snprintf(path, sizeof path, "%s", s_corrupt("c_dup.json", "documents/p1_corrupt.png",
                                                 "documents/p1.png", pos, 1));
    CU_ASSERT(kv_table_load(path, &t, &err) != 0 && strstr(err.msg, "appears twice"));

    /* a good file, paired with a corpus by questionId and page */
    dm_err_clear(&err);
    snprintf(path, sizeof path, "%s", s_corrupt("c_ok.json", "documents/p1_corrupt.png",
                                                 "documents/p1.png", pos, 0));
    CU_ASSERT_FATAL(kv_table_load(path, &t, &err) == 0);
    char img1[256], img2[256];
    snprintf(img1, sizeof img1, "%s", tu_tmp(&s_tmp, "documents/p1.png", NULL));
    snprintf(img2, sizeof img2, "%s", tu_tmp(&s_tmp, "documents/p2.png", NULL));
    CorpusQuestion q7 = {.qid = 7}, q8 = {.qid = 8};
    CorpusPage pages[2] = {{.page_id = "documents/p2.png", .image_path = img2, .q = &q7, .nq = 1},
                           {.page_id = "documents/p1.png", .image_path = img1, .q = &q8, .nq = 1}};
    Corpus corpus = {.pages = pages, .npages = 2, .nquestions = 2};
    /* question 7 on another page than the file's clean_image */
    CU_ASSERT(kv_table_pair(t, &corpus, "val.json", &err) != 0);
    CU_ASSERT(strstr(err.msg, path) && strstr(err.msg, "questionId 7") &&
              strstr(err.msg, "not the page"));
    kv_table_free(&t);
    CU_ASSERT_FATAL(kv_table_load(path, &t, &err) == 0);
    pages[0].q = &q8;
    pages[1].q = &q7;
    dm_err_clear(&err);
    CU_ASSERT(kv_table_pair(t, &corpus, "val.json", &err) == 0);
    CU_ASSERT(t->paired == 1 && !t->twin_of_page[0] && t->twin_of_page[1] &&
              strstr(t->twin_of_page[1], "p1_corrupt.png"));
    CU_ASSERT(kv_table_find(t, 7) != NULL && kv_table_find(t, 8) == NULL);
    /* the record of question 7's first answer gets the file's values and
     * the classes; another question's record keeps nothing a worker sent */
    Docmint__AnalysisRecord r;
    docmint__analysis_record__init(&r);
    r.question_id = 7;
    r.kv_answer_patched = "Indigo";
    r.kv_answer_control = "ochre";
    kv_record_fill(t, &r);
    CU_ASSERT(r.kv_class == DOCMINT__KV_CLASS__KV_POSITIONAL &&
              r.kv_control_class == DOCMINT__KV_CLASS__KV_SEMANTIC);
    CU_ASSERT_STRING_EQUAL(r.kv_v_pos, "indigo");
    CU_ASSERT_STRING_EQUAL(r.kv_set, "colours");
    r.question_id = 8;
    r.kv_v_pos = "forged";
    kv_record_fill(t, &r);
    CU_ASSERT(r.kv_class == DOCMINT__KV_CLASS__KV_NONE && !r.kv_v_pos[0] &&
              !r.kv_answer_patched[0]);
    /* a file that pairs nothing */
    kv_table_free(&t);
    CU_ASSERT_FATAL(kv_table_load(path, &t, &err) == 0);
    pages[1].q = &q8;
    CU_ASSERT(kv_table_pair(t, &corpus, "val.json", &err) != 0 &&
              strstr(err.msg, "pairs no question of corpus val.json"));
    kv_table_free(&t);
}

/* ------------------------------------------------------------ report */

static void s_add(KvReport *k, const char *set, Docmint__KvClass p, Docmint__KvClass c, int times)
{
    Docmint__AnalysisRecord r;
    docmint__analysis_record__init(&r);
    r.kv_set = (char *)set;
    r.kv_v_clean = "Forty-two";
    r.kv_answer_clean = !strcmp(set, "numbers") ? " forty-TWO" : "";
    r.kv_class = p;
    r.kv_control_class = c;
    for (int i = 0; i < times; i++)
        kv_report_add(k, &r);
}

static double s_share(const json_t *g, const char *run, const char *cls)
{
    const json_t *c = json_object_get(json_object_get(g, run), cls);
    return json_number_value(json_object_get(c, "share"));
}

static void test_report(void)
{
    KvReport k = {0};
    s_add(&k, "colours", DOCMINT__KV_CLASS__KV_POSITIONAL, DOCMINT__KV_CLASS__KV_SEMANTIC, 6);
    s_add(&k, "colours", DOCMINT__KV_CLASS__KV_SEMANTIC, DOCMINT__KV_CLASS__KV_SEMANTIC, 2);
    s_add(&k, "colours", DOCMINT__KV_CLASS__KV_TIED, DOCMINT__KV_CLASS__KV_TIED, 1);
    s_add(&k, "numbers", DOCMINT__KV_CLASS__KV_MEMORISED, DOCMINT__KV_CLASS__KV_FAILURE, 1);
    s_add(&k, "numbers", DOCMINT__KV_CLASS__KV_FAILURE, DOCMINT__KV_CLASS__KV_MEMORISED, 3);
    s_add(&k, "nouns", DOCMINT__KV_CLASS__KV_NONE, DOCMINT__KV_CLASS__KV_NONE, 5); /* not items */
    CU_ASSERT(kv_report_items(&k) == 13);
    json_t *j = kv_report_json(&k);
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT(json_integer_value(json_object_get(j, "counted")) == 12);
    CU_ASSERT(json_integer_value(json_object_get(j, "tied")) == 1);
    /* the four counted numbers items answered v_clean on the clean page */
    CU_ASSERT(json_integer_value(json_object_get(j, "clean_correct")) == 4);
    json_t *by = json_object_get(j, "by_set"), *col = json_object_get(by, "colours");
    CU_ASSERT(json_object_size(by) == 2 && !json_object_get(by, "nouns"));
    CU_ASSERT(fabs(s_share(col, "patched", "positional") - 6.0 / 8) < 1e-12);
    CU_ASSERT(fabs(s_share(col, "control", "semantic") - 1.0) < 1e-12);
    CU_ASSERT(fabs(s_share(json_object_get(by, "numbers"), "patched", "failure") - 0.75) < 1e-12);
    CU_ASSERT(fabs(s_share(j, "patched", "positional") - 0.5) < 1e-12);
    json_decref(j);
    /* the figure: a PNG as wide as its bars and legend */
    DmErr err = {{0}};
    const char *png = tu_tmp(&s_tmp, "kv.png", s_cleanup);
    CU_ASSERT_FATAL(kv_report_figure(&k, png, &err) == 0);
    VipsImage *im = vips_image_new_from_file(png, NULL);
    CU_ASSERT_FATAL(im != NULL);
    CU_ASSERT(vips_image_get_width(im) >= 3 * 2 * 64 && vips_image_get_height(im) > 320);
    g_object_unref(im);
}

void tests_kv(void)
{
    TU_SUITE("kv_retrieval", {"answer classes: normalisation and ties", test_classify},
             {"greedy decoding and query patching on tiny-a", test_mechanics},
             {"the corrupt corpus: errors, pairing, record fields", test_corrupt_corpus},
             {"report: counts, shares, figure", test_report});
}
