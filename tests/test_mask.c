/* test_mask.c - masked students (worker/model/mask.h): the row scores
 * against a hand computation, a masked student of tiny-a checked against
 * its teacher's weights, training steps that keep the pruned weights at
 * zero, and bad mask files refused. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dm_fs.h"
#include "tutil.h"
#include "worker/model/decoder.h"
#include "worker/model/mask.h"
#include "worker/train/train.h"

/* W [2, 4], input norms [4], by hand:
 *   row 0 |W| .5 .1 .3 .7        wanda |W|*x  .5 .4 .6 .35
 *   row 1 |W| .2 .2 .9 .05       wanda        .2 .8 1.8 .025
 * sparsity 0.5 drops 2 per row, 0.3 drops floor(1.2) = 1:
 *   magnitude 0.5: row 0 drops .1, .3 (cols 1, 2); row 1 .05 then the
 *     lower of the tied .2s (cols 3, 0)
 *   wanda 0.5:     row 0 drops .35, .4 (cols 3, 1); row 1 .025, .2 (3, 0)
 *   magnitude 0.3: row 0 col 1; row 1 col 3 */
static void test_rows_by_hand(void)
{
    const float W[8] = {0.5f, -0.1f, 0.3f, -0.7f, 0.2f, 0.2f, -0.9f, 0.05f};
    const float x[4] = {1.0f, 4.0f, 2.0f, 0.5f};
    uint8_t k[8];
    const uint8_t mag50[8] = {1, 0, 0, 1, 0, 1, 1, 0};
    const uint8_t wan50[8] = {1, 0, 1, 0, 0, 1, 1, 0};
    const uint8_t mag30[8] = {1, 0, 1, 1, 1, 1, 1, 0};
    mask_rows(W, 2, 4, NULL, 0.5, DM_MASK_MAGNITUDE, k);
    CU_ASSERT_EQUAL(memcmp(k, mag50, 8), 0);
    mask_rows(W, 2, 4, x, 0.5, DM_MASK_WANDA, k);
    CU_ASSERT_EQUAL(memcmp(k, wan50, 8), 0);
    mask_rows(W, 2, 4, NULL, 0.3, DM_MASK_MAGNITUDE, k);
    CU_ASSERT_EQUAL(memcmp(k, mag30, 8), 0);
    mask_rows(W, 2, 4, x, 0.0, DM_MASK_WANDA, k);
    for (int i = 0; i < 8; i++)
        CU_ASSERT_EQUAL(k[i], 1);
}

static char s_dir[256];

/* A masked student of tiny-a at sparsity 0.5, written once. */
static int s_setup(void)
{
    snprintf(s_dir, sizeof s_dir, "/tmp/dm-mask-%d", (int)getpid());
    dm_rm_tree(s_dir);
    DmErr err = {{0}};
    if (mask_prune_checkpoint(TU_TINY, DM_MASK_MAGNITUDE, 0.5, NULL, s_dir, &err)) {
        printf("\n  %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int s_teardown(void)
{
    dm_rm_tree(s_dir);
    return 0;
}

/* Every masked row of the student against the teacher: half of each row
 * zero, the kept weights bit-identical, none of them smaller in magnitude
 * than a pruned one; everything else unchanged. */
static void test_student(void)
{
    DmErr err = {{0}};
    DonutModel *t = NULL, *s = NULL;
    DmMask *k = NULL;
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &t, &err), 0);
    CU_ASSERT_EQUAL_FATAL(donut_load(s_dir, &s, &err), 0);
    CU_ASSERT_EQUAL_FATAL(mask_load(s, s_dir, &k, &err), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    DmLinear *lt[DM_DEC_LINEARS_MAX], *ls[DM_DEC_LINEARS_MAX];
    char(*names)[128] = malloc(DM_DEC_LINEARS_MAX * sizeof *names);
    int n = mask_linears(t, lt, names);
    CU_ASSERT_EQUAL(mask_linears(s, ls, names), n);
    CU_ASSERT_EQUAL(n, 2 * 10); /* tiny-a: 2 layers x (4 + 4 + 2) */
    long long pruned = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        size_t cnt = 0;
        const uint8_t *keep = mask_find(k, names[i], &cnt);
        CU_ASSERT_PTR_NOT_NULL_FATAL(keep);
        int out = lt[i]->out, in = lt[i]->in;
        CU_ASSERT_EQUAL(cnt, (size_t)out * in);
        for (int r = 0; r < out; r++) {
            int zeros = 0;
            double max_pruned = 0, min_kept = INFINITY;
            for (int j = 0; j < in; j++) {
                size_t e = (size_t)r * in + j;
                float w = lt[i]->w[e];
                if (keep[e]) {
                    bad += ls[i]->w[e] != w;
                    min_kept = fmin(min_kept, fabs(w));
                } else {
                    zeros++;
                    bad += ls[i]->w[e] != 0.0f;
                    max_pruned = fmax(max_pruned, fabs(w));
                }
            }
            bad += zeros != in / 2;
            bad += max_pruned > min_kept;
            pruned += zeros;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(k->pruned, pruned);
    /* the rest as the teacher's: the token embedding, a LayerNorm */
    CU_ASSERT_EQUAL(memcmp(s->dec.embed_tokens, t->dec.embed_tokens,
                           (size_t)t->cfg.dec.vocab * t->cfg.dec.d_model * sizeof(float)), 0);
    CU_ASSERT_EQUAL(memcmp(s->dec.layers[1].ffn.ln.g, t->dec.layers[1].ffn.ln.g,
                           (size_t)t->cfg.dec.d_model * sizeof(float)), 0);
    printf(" [%lld of %lld weights pruned]", k->pruned, k->masked);
    free(names);
    mask_free(&k);
    donut_free(&s);
    donut_free(&t);
}

/* Training steps on the masked student (the distill stage's order: the
 * gradient, held, then AdamW with weight decay, then the weights held):
 * pruned weights stay exactly zero, kept ones move.  Without holding, the
 * same steps move pruned weights: the check can fail. */
static void test_training_holds(void)
{
    for (int hold = 1; hold >= 0; hold--) {
        DmErr err = {{0}};
        DonutModel *m = NULL;
        DmMask *k = NULL;
        TrainParams tp;
        CU_ASSERT_EQUAL_FATAL(donut_load(s_dir, &m, &err), 0);
        CU_ASSERT_EQUAL_FATAL(train_params_init(m, &tp, &err), 0);
        CU_ASSERT_EQUAL_FATAL(mask_load(m, s_dir, &k, &err), 0);
        if (hold)
            train_params_set_mask(&tp, k);
        CU_ASSERT_EQUAL(tp.held, hold ? k->pruned : 0);
        /* the keep bytes of fc1 of layer 1, to look at after training */
        const TrainParam *fc1 = train_param_find(&tp, "decoder.model.decoder.layers.1.fc1.weight");
        CU_ASSERT_PTR_NOT_NULL_FATAL(fc1);
        const uint8_t *keep = mask_find(k, fc1->name, NULL);
        float *before = malloc(fc1->count * sizeof(float));
        memcpy(before, tp.data + fc1->offset, fc1->count * sizeof(float));
        /* a sequence of 12 tokens against 56 made-up encoder rows */
        int D = m->cfg.dec.d_model, E = 56;
        float *enc = malloc((size_t)E * D * sizeof(float));
        for (int i = 0; i < E * D; i++)
            enc[i] = (float)sin(0.37 * i);
        int32_t ids[12] = {0, 296, 17, 45, 88, 297, 298, 120, 7, 299, 2, 2};
        TrainItem it = {enc, E, ids, 11, 6, NULL};
        LossCfg cfg = {0.0, 1.0};
        AdamW o;
        CU_ASSERT_EQUAL_FATAL(adamw_init(&o, tp.total, 0.9, 0.999, 1e-8, 0.01, &err), 0);
        for (int step = 0; step < 4; step++) {
            memset(tp.grad, 0, tp.total * sizeof(float));
            LossParts lp;
            CU_ASSERT_EQUAL_FATAL(train_item_grad(m, &tp, &it, &cfg, 1.0, &lp, NULL, &err), 0);
            train_params_hold_mask(&tp, 1);
            adamw_step(&o, tp.data, tp.grad, 1e-3);
            train_params_hold_mask(&tp, 0);
        }
        long long nonzero_pruned = 0, kept_moved = 0, kept = 0;
        const float *w = tp.data + fc1->offset;
        for (size_t e = 0; e < fc1->count; e++) {
            if (keep[e]) {
                kept++;
                kept_moved += w[e] != before[e];
            } else {
                nonzero_pruned += w[e] != 0.0f;
            }
        }
        if (hold) {
            CU_ASSERT_EQUAL(nonzero_pruned, 0);
            /* every masked matrix, not only fc1 */
            long long all = 0;
            for (size_t e = 0; e < tp.total; e++)
                all += !tp.keep[e] && tp.data[e] != 0.0f;
            CU_ASSERT_EQUAL(all, 0);
        } else {
            CU_ASSERT(nonzero_pruned > 0);
        }
        CU_ASSERT(kept_moved > kept / 2);
        printf(" [%s: %lld pruned fc1 weights non-zero, %lld of %lld kept moved]",
               hold ? "held" : "not held", nonzero_pruned, kept_moved, kept);
        adamw_free(&o);
        free(enc);
        free(before);
        mask_free(&k);
        train_params_free(&tp);
        donut_free(&m);
    }
}

/* Wanda's calibration sums against the ordinary decoder: a hook takes the
 * residual stream entering each sub-layer, the test applies the
 * sub-layer's LayerNorm itself (in double) and sums the squares per
 * feature; those are the inputs of q, k, v (self), q (cross) and fc1.  The
 * cross keys' and values' inputs are the encoder rows. */
typedef struct NormHook {
    const DonutModel *m;
    double sq[2][3][128]; /* [layer][S, C, M][feature] */
} NormHook;

static int s_norm_hook(void *ctx, DecHookEvent *ev)
{
    NormHook *h = ctx;
    if (ev->point != DEC_HOOK_INPUT)
        return 0;
    const DecLayer *L = &h->m->dec.layers[ev->layer];
    const DmNorm *ln = ev->kind == DM_SUB_S ? &L->self.ln
                       : ev->kind == DM_SUB_C ? &L->cross.ln : &L->ffn.ln;
    int T = (int)ev->shape[0], D = (int)ev->shape[1];
    for (int t = 0; t < T; t++) {
        const float *x = ev->data + (size_t)t * D;
        double mean = 0, var = 0;
        for (int j = 0; j < D; j++)
            mean += x[j];
        mean /= D;
        for (int j = 0; j < D; j++)
            var += (x[j] - mean) * (x[j] - mean);
        double rstd = 1.0 / sqrt(var / D + 1e-5);
        for (int j = 0; j < D; j++) {
            double y = (x[j] - mean) * rstd * ln->g[j] + ln->b[j];
            h->sq[ev->layer][ev->kind][j] += y * y;
        }
    }
    return 0;
}

static void test_calibration_sums(void)
{
    DmErr err = {{0}};
    DonutModel *m = NULL;
    TensorFile *ex = NULL;
    TrainParams tp;
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &m, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &ex, &err), 0);
    CU_ASSERT_EQUAL_FATAL(train_params_init(m, &tp, &err), 0);
    const DmTensor *enc = tensorfile_find(ex, "case1.encoder.last_hidden_state");
    const DmTensor *idt = tensorfile_find(ex, "case1.decoder_input_ids");
    CU_ASSERT_PTR_NOT_NULL_FATAL(enc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(idt);
    int T = (int)idt->shape[1], E = (int)enc->shape[1], D = m->cfg.dec.d_model;
    int32_t ids[64];
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)((const int64_t *)idt->data)[i];
    /* train's forward */
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    char(*names)[128] = malloc(DM_DEC_LINEARS_MAX * sizeof *names);
    int nl = mask_linears(m, lin, names);
    double **sq = malloc((size_t)nl * sizeof *sq);
    for (int i = 0; i < nl; i++)
        sq[i] = calloc((size_t)lin[i]->in, sizeof **sq);
    TrainItem it = {enc->data, E, ids, T, T - 2, NULL};
    CU_ASSERT_EQUAL_FATAL(train_item_input_sq(m, &tp, &it, sq, &err), 0);
    /* the ordinary decoder, watched */
    NormHook h = {.m = m};
    DecPage page;
    DecSeq seq;
    CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, m, enc->data, E, &err), 0);
    CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, m, T, &err), 0);
    DecSeq *sp = &seq;
    const int32_t *ip = ids;
    DecHooks hooks = {s_norm_hook, &h};
    CU_ASSERT_EQUAL_FATAL(dec_forward(&page, &sp, &ip, &T, 1, NULL, 0, &hooks, NULL, &err), 0);
    double enc_sq[128] = {0};
    const float *e = enc->data;
    for (int r = 0; r < E; r++)
        for (int j = 0; j < D; j++)
            enc_sq[j] += (double)e[(size_t)r * D + j] * e[(size_t)r * D + j];
    /* per layer: self q k v out, cross q k v out, fc1 fc2 */
    const int which[10] = {0, 0, 0, -1, 1, 3, 3, -1, 2, -1};
    double worst = 0;
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 10; k++) {
            if (which[k] < 0)
                continue;
            const double *want = which[k] == 3 ? enc_sq : h.sq[l][which[k]];
            for (int j = 0; j < D; j++) {
                double rel = fabs(sq[10 * l + k][j] - want[j]) / fmax(want[j], 1e-12);
                worst = fmax(worst, rel);
            }
        }
    CU_ASSERT(worst < 1e-4);
    printf(" [%d tokens, %d encoder rows: worst relative difference %.2g]", T, E, worst);
    for (int i = 0; i < nl; i++)
        free(sq[i]);
    free(sq);
    free(names);
    dec_seq_free(&seq);
    dec_page_free(&page);
    train_params_free(&tp);
    tensorfile_close(&ex);
    donut_free(&m);
}

/* A copy of the student with its mask replaced by one tensor. */
static void s_bad_mask(const char *dir, const char *name, int64_t d0, int64_t d1,
                       const uint8_t *data)
{
    char a[512], b[512];
    DmErr err = {{0}};
    dm_rm_tree(dir);
    CU_ASSERT_EQUAL_FATAL(dm_mkdirs(dir, &err), 0);
    const char *files[] = {"config.json", "model.safetensors", "preprocessor_config.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(a, sizeof a, "%s/%s", s_dir, files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        CU_ASSERT_EQUAL_FATAL(dm_copy_file(a, b, &err), 0);
    }
    StWriter *w = st_writer_new();
    int64_t shape[2] = {d0, d1};
    st_writer_add(w, name, DM_U8, 2, shape, data);
    snprintf(b, sizeof b, "%s/%s", dir, DM_MASK_FILE);
    CU_ASSERT_EQUAL_FATAL(st_writer_save(w, b, &err), 0);
    st_writer_free(&w);
}

static void s_expect_refused(const char *dir, const char *needle)
{
    DmErr err = {{0}};
    DonutModel *m = NULL;
    DmMask *k = NULL;
    CU_ASSERT_EQUAL_FATAL(donut_load(dir, &m, &err), 0);
    CU_ASSERT_EQUAL(mask_load(m, dir, &k, &err), -1);
    CU_ASSERT_PTR_NULL(k);
    if (!strstr(err.msg, needle) || !strstr(err.msg, DM_MASK_FILE))
        printf("\n  expected \"%s\" in: %s", needle, err.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, needle));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, DM_MASK_FILE));
    donut_free(&m);
}

static void test_bad_masks(void)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s-bad", s_dir);
    const char *fc1 = "decoder.model.decoder.layers.0.fc1.weight"; /* [256, 128] */
    uint8_t *ones = malloc(256 * 128);
    memset(ones, 1, 256 * 128);
    s_bad_mask(dir, "decoder.model.decoder.layers.0.final_layer_norm.weight", 1, 128, ones);
    s_expect_refused(dir, "final_layer_norm.weight is not a linear weight");
    s_bad_mask(dir, fc1, 128, 256, ones);
    s_expect_refused(dir, "must be U8 [256, 128]");
    ones[5] = 2;
    s_bad_mask(dir, fc1, 256, 128, ones);
    s_expect_refused(dir, "holds 2 at entry 5");
    ones[5] = 1;
    /* pruning weights the student kept: not zero in the model */
    ones[0] = ones[1] = ones[2] = ones[3] = 0;
    s_bad_mask(dir, fc1, 256, 128, ones);
    s_expect_refused(dir, "are not zero in the model");
    free(ones);
    dm_rm_tree(dir);
}

void tests_mask(void)
{
    CU_pSuite su = CU_add_suite("mask (masked students)", s_setup, s_teardown);
    CU_add_test(su, "row scores against a hand computation", test_rows_by_hand);
    CU_add_test(su, "a masked student of tiny-a against its teacher", test_student);
    CU_add_test(su, "training steps hold the pruned weights at zero", test_training_holds);
    CU_add_test(su, "bad mask files are refused", test_bad_masks);
    CU_add_test(su, "wanda's input sums against the watched decoder", test_calibration_sums);
}
