/* test_result_check.c - the limits on a worker's result (result_check.h):
 * records made by hand for a made-up model (vocabulary 100, max_length 10,
 * 20 positions, pieces of at most 4 bytes), each broken in one way, against
 * the rule it breaks; correct ones pass.  The size bounds are checked
 * against sums written out here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/result_check.h"
#include "tutil.h"

static char *s_answers_q1[] = {"alpha", "beta"};
static CorpusQuestion s_cq[2] = {{.qid = 11, .text = "what?", .answers = s_answers_q1, .nanswers = 2},
                                 {.qid = 12, .text = "who?", .answers = NULL, .nanswers = 0}};
static ShardQuestion s_sq[2];

static ResultLimits s_lim(int cache)
{
    ResultLimits l;
    memset(&l, 0, sizeof l);
    l.cache = cache;
    l.m = (InferLimits){.vocab = 100, .max_length = 10, .max_pos = 20, .max_piece_bytes = 4,
                        .enc_dim = 8, .enc_tokens_max = 16};
    l.top_k = 3;
    l.n_temps = 1;
    l.temps[0] = 1.0;
    return l;
}

static void s_questions(void)
{
    s_sq[0] = (ShardQuestion){11, &s_cq[0], "p1", "/p1.png", 0};
    s_sq[1] = (ShardQuestion){12, &s_cq[1], "p1", "/p1.png", 0};
}

static int s_check(const ResultLimits *l, Docmint__Result *r, char *why)
{
    size_t bytes = docmint__result__get_packed_size(r);
    return result_check(l, r, bytes, s_sq, 2, 1, why, 300);
}

static void test_answers(void)
{
    s_questions();
    ResultLimits l = s_lim(0);
    int32_t ids[11] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    Docmint__AnswerRecord a, b;
    docmint__answer_record__init(&a);
    docmint__answer_record__init(&b);
    a.question_id = 11;
    a.answer = "ok";
    a.token_ids = ids;
    a.n_token_ids = 10;
    a.mean_logprob = -0.25f;
    b = a;
    b.question_id = 12;
    Docmint__AnswerRecord *v[2] = {&a, &b};
    Docmint__Result r;
    docmint__result__init(&r);
    r.answers = v;
    r.n_answers = 2;
    char why[300] = "";
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);

    a.n_token_ids = 11; /* more than max_length */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "11 token ids, max_length is 10"));
    a.n_token_ids = 10;
    ids[3] = 100; /* the vocabulary is 0..99 */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "outside the vocabulary of 100"));
    ids[3] = -1;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    ids[3] = 4;
    a.mean_logprob = NAN;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "mean log-probability"));
    a.mean_logprob = 0.5f; /* a probability above 1 */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    a.mean_logprob = -0.25f;
    a.seconds = -1;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    a.seconds = 0;
    /* 10 tokens x 4 bytes + 16 = 56 bytes at most */
    char text[58];
    memset(text, 'x', 57);
    text[56] = '\0';
    a.answer = text;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);
    text[56] = 'x';
    text[57] = '\0';
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "57 bytes of text"));
    a.answer = "ok";
    /* two records for one question; a question outside the shard */
    b.question_id = 11;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "two records for question 11"));
    b.question_id = 13;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "question 13, which is not in the shard"));
    b.question_id = 12;
    /* the message size: 4096 + per question the larger of its largest
     * answer (56 bytes of text, 6 x 10 for the ids, page id "p1",
     * question, 64) and its largest error record (2048 + 32 + 64 + 64),
     * plus 16 */
    size_t err_max = 2048 + 32 + 64 + 64;
    CU_ASSERT(56 + 60 + 2 + 5 + 64 < err_max);
    size_t got = result_max_bytes(&l, s_sq, 2, 1);
    CU_ASSERT_EQUAL(got, 4096 + 2 * (err_max + 16));
    CU_ASSERT_EQUAL(result_check(&l, &r, got + 1, s_sq, 2, 1, why, sizeof why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "a message of"));
    /* a logit record in an infer shard */
    Docmint__LogitRecord lr;
    docmint__logit_record__init(&lr);
    lr.question_id = 12;
    Docmint__LogitRecord *lv[1] = {&lr};
    r.n_answers = 1;
    r.logits = lv;
    r.n_logits = 1;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "a logit record outside a cache-logits shard"));
}

static void test_errors(void)
{
    s_questions();
    ResultLimits l = s_lim(0);
    Docmint__ErrorRecord e;
    docmint__error_record__init(&e);
    e.question_id = 12;
    e.stage = "infer";
    char reason[RESULT_REASON_MAX + 2];
    memset(reason, 'r', sizeof reason - 1);
    reason[RESULT_REASON_MAX] = '\0';
    e.reason = reason;
    Docmint__ErrorRecord *v[1] = {&e};
    Docmint__Result r;
    docmint__result__init(&r);
    r.errors = v;
    r.n_errors = 1;
    char why[300] = "";
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);
    reason[RESULT_REASON_MAX] = 'r';
    reason[RESULT_REASON_MAX + 1] = '\0';
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "a reason of 2049 bytes"));
    e.reason = "bad page";
    /* cache-logits: the item names the question, an answer index within its answers */
    ResultLimits lc = s_lim(1);
    e.question_id = 11;
    const char *good[] = {"", "11", "11/0", "11/1"};
    for (int i = 0; i < 4; i++) {
        e.item = (char *)good[i];
        CU_ASSERT_EQUAL(s_check(&lc, &r, why), 0);
    }
    const char *badi[] = {"12", "11/2", "11/", "11/x", "111", "1"};
    for (int i = 0; i < 6; i++) {
        e.item = (char *)badi[i];
        CU_ASSERT_EQUAL(s_check(&lc, &r, why), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(why, "is not this question's"));
    }
}

/* A correct logit record of question 11, answer 1 ("beta"): 5 tokens,
 * answer_start 2, so P = 2 positions, k = 3 of 100 (2-byte ids), T = [1]. */
typedef struct LogitFix {
    int32_t ids[5], targets[2];
    uint8_t top_ids[2 * 3 * 2], top_logits[2 * 3 * 2];
    float temps[1], lse[2], shift[2], lse_rest[2];
    Docmint__LogitRecord r;
} LogitFix;

static void s_logit(LogitFix *f)
{
    memset(f, 0, sizeof *f);
    int32_t ids[5] = {1, 2, 3, 4, 5};
    memcpy(f->ids, ids, sizeof ids);
    f->targets[0] = 4;
    f->targets[1] = 5;
    for (int i = 0; i < 6; i++) {
        f->top_ids[2 * i] = (uint8_t)(10 + i);
        /* float16 0 (the largest) then -1 (0xbc00) */
        uint16_t h = i % 3 == 0 ? 0x0000 : 0xbc00;
        f->top_logits[2 * i] = (uint8_t)(h & 0xff);
        f->top_logits[2 * i + 1] = (uint8_t)(h >> 8);
    }
    f->temps[0] = 1.0f;
    f->lse[0] = f->lse[1] = 2.0f;
    f->shift[0] = f->shift[1] = 1.5f;
    f->lse_rest[0] = -INFINITY; /* nothing left out at this position */
    f->lse_rest[1] = 0.5f;
    Docmint__LogitRecord *r = &f->r;
    docmint__logit_record__init(r);
    r->question_id = 11;
    r->answer_index = 1;
    r->answer = "beta";
    r->token_ids = f->ids;
    r->n_token_ids = 5;
    r->answer_start = 2;
    r->targets = f->targets;
    r->n_targets = 2;
    r->k = 3;
    r->vocab = 100;
    r->id_bytes = 2;
    r->top_ids = (ProtobufCBinaryData){sizeof f->top_ids, f->top_ids};
    r->top_logits = (ProtobufCBinaryData){sizeof f->top_logits, f->top_logits};
    r->temperatures = f->temps;
    r->n_temperatures = 1;
    r->lse = f->lse;
    r->n_lse = 2;
    r->shift = f->shift;
    r->n_shift = 2;
    r->lse_rest = f->lse_rest;
    r->n_lse_rest = 2;
    r->page_id = "p1";
}

static void test_logits(void)
{
    s_questions();
    ResultLimits l = s_lim(1);
    LogitFix f;
    Docmint__LogitRecord *v[1] = {&f.r};
    Docmint__Result r;
    docmint__result__init(&r);
    r.logits = v;
    r.n_logits = 1;
    char why[300] = "";
    s_logit(&f);
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);
    if (why[0])
        fprintf(stderr, "\n    unexpected: %s\n", why);

    s_logit(&f);
    f.r.answer = "gamma"; /* not the gold answer */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "not a gold answer"));
    s_logit(&f);
    f.r.answer_index = 2;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    s_logit(&f);
    f.r.question_id = 12; /* a question without gold answers */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    s_logit(&f);
    f.ids[0] = 100;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "outside the vocabulary"));
    s_logit(&f);
    f.targets[1] = 1000;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    s_logit(&f);
    f.top_ids[4] = 100; /* a kept id of 100 */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "kept id outside"));
    s_logit(&f);
    f.r.k = 2; /* not the job's top_k (the sizes would not fit either) */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    s_logit(&f);
    f.temps[0] = 2.0f;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "temperature"));
    s_logit(&f);
    f.shift[1] = NAN;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "not finite"));
    s_logit(&f);
    f.lse[0] = INFINITY;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    s_logit(&f);
    f.lse_rest[1] = NAN;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    s_logit(&f);
    f.top_logits[3] = 0x7e; /* float16 0x7e00: NaN */
    f.top_logits[2] = 0x00;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "NaN logit"));
    s_logit(&f);
    f.top_logits[3] = 0x3c; /* float16 +1: above the row's largest */
    f.top_logits[2] = 0x00;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "above its row's largest"));
    s_logit(&f);
    f.r.n_targets = 1; /* sizes that do not agree (logit_record_validate) */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "targets for 2 positions"));

    /* features: only when the job keeps them, of the shard's pages, the
     * encoder's width */
    s_logit(&f);
    uint8_t vals[4 * 8 * 2] = {0};
    Docmint__FeatureRecord fr;
    docmint__feature_record__init(&fr);
    fr.page_id = "p1";
    fr.tokens = 4;
    fr.dim = 8;
    fr.values = (ProtobufCBinaryData){sizeof vals, vals};
    Docmint__FeatureRecord *fv[1] = {&fr};
    r.features = fv;
    r.n_features = 1;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1); /* keep_features off */
    l.keep_features = 1;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);
    fr.page_id = "p2";
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "not asked for in the shard"));
    fr.page_id = "p1";
    fr.tokens = 2;
    fr.dim = 16; /* the same bytes, another width */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "the encoder gives at most"));
}

/* Analysis records (stage analyze): one per (question, answer), the
 * decoder's shape, ids within the vocabulary, bounded arrays (NaN marks an
 * analysis not asked for, and passes); an
 * analysis record outside an analyze shard and an answer record inside
 * one are refused. */
static void test_analyses(void)
{
    s_questions();
    ResultLimits l = s_lim(0);
    l.analyze = 1;
    l.m.dec_layers = 2;
    l.m.dec_heads = 4;
    int32_t ids[6] = {1, 2, 3, 4, 5, 6}, top1[4] = {7, 8, 9, 10};
    float skip[6] = {0.5f, 0.25f, 0.125f, 1, 2, 3};
    Docmint__AnalysisRecord y0, y1;
    docmint__analysis_record__init(&y0);
    y0.question_id = 11;
    y0.token_ids = ids;
    y0.n_token_ids = 6;
    y0.answer_start = 3;
    y0.layers = 2;
    y0.heads = 4;
    y0.nll_clean = 1.5f;
    y0.nll_skip = skip;
    y0.n_nll_skip = 6;
    y0.lens_top1 = top1;
    y0.n_lens_top1 = 4;
    y1 = y0;
    y1.answer_index = 1; /* the second gold answer of question 11 */
    Docmint__AnalysisRecord *v[2] = {&y0, &y1};
    Docmint__Result r;
    docmint__result__init(&r);
    r.analyses = v;
    r.n_analyses = 2;
    char why[300];
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);
    y1.answer_index = 2; /* question 11 has two answers */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "answer 2 of 2"));
    y1.answer_index = 1;
    skip[4] = NAN; /* an analysis the job did not ask for */
    y0.nll_corrupt = NAN;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);
    skip[4] = 2;
    top1[2] = 100; /* the vocabulary is 100 */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "outside the vocabulary"));
    top1[2] = 9;
    y0.heads = 5;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "the decoder has 2 x 4"));
    y0.heads = 4;
    /* the bound on any array: (3 L + 2) (H + 1) max_pos = 8 * 5 * 20 */
    float *big = calloc(801, sizeof *big);
    y0.nll_skip = big;
    y0.n_nll_skip = 800;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), 0);
    y0.n_nll_skip = 801;
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "a field of 801 values, at most 800"));
    free(big);
    y0.nll_skip = skip;
    y0.n_nll_skip = 6;
    l.analyze = 0; /* an infer shard */
    CU_ASSERT_EQUAL(s_check(&l, &r, why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "an analysis record outside an analyze shard"));
}

void tests_result_check(void)
{
    TU_SUITE("result check", {"answers: ids, vocabulary, log-probability, text, questions, size",
                               test_answers},
             {"error records: reason length, items", test_errors},
             {"logit and feature records against the job", test_logits},
             {"analysis records: answers, shape, vocabulary, sizes", test_analyses});
}
