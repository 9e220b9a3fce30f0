/* test_swin_grad.c - whole-model training math: the Swin encoder's
 * backward (worker/train/swin_grad.c) with the decoder's, against what
 * PyTorch autograd computed for the tiny reference model
 * (tests/data/tiny-a/full_train.*): the loss, the gradient of every
 * encoder parameter for every listed case, of every parameter for the
 * first, and of pixel_values; tolerances are multiples of the float32
 * rounding scale the reference measured against float64.  Then the fast
 * window-attention and LayerNorm backward kernels against their plain
 * double-precision twins, the two memory modes against each other, and
 * finite differences on a geometry the reference does not have. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "worker/train/swin_grad.h"
#include "worker/train/train.h"
#include "tutil.h"

static TensorFile *s_gold, *s_full;
static json_t *s_json;

static int s_setup(void)
{
    DmErr err = {{0}};
    json_error_t je;
    s_json = json_load_file(TU_TINY "/full_train.json", 0, &je);
    if (!s_json || tensorfile_open(TU_TINY "/expected.safetensors", &s_gold, &err) ||
        tensorfile_open(TU_TINY "/full_train.safetensors", &s_full, &err)) {
        fprintf(stderr, "swin grad tests: %s %s\n", err.msg, s_json ? "" : je.text);
        return 1;
    }
    return 0;
}

static int s_teardown(void)
{
    tensorfile_close(&s_gold);
    tensorfile_close(&s_full);
    json_decref(s_json);
    return 0;
}

static const DmTensor *s_need(const TensorFile *tf, const char *name)
{
    const DmTensor *t = tensorfile_find(tf, name);
    if (!t)
        printf("\n  missing golden tensor %s", name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    return t;
}

/* The float32 rounding scale of a golden tensor (max |f32 - f64|). */
static double s_dev(const char *name)
{
    json_t *d = json_object_get(json_object_get(s_json, "float64_deviation"), name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    return json_number_value(json_object_get(d, "max_abs"));
}

typedef struct Model {
    DonutModel *m;
    TrainParams tp;
} Model;

static void s_model(Model *w)
{
    DmErr err = {{0}};
    int rc = donut_load(TU_TINY, &w->m, &err);
    if (rc == 0)
        rc = train_params_init_all(w->m, &w->tp, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static void s_model_free(Model *w)
{
    train_params_free(&w->tp);
    donut_free(&w->m);
}

/* Forward and backward of case `name` (loss: cross-entropy on the next
 * ids at a = T // 2 .. T-2, as the reference): gradients into w->tp.grad
 * (zeroed first), d pixels into dpix, the loss into *ce. */
static void s_run_case(Model *w, const char *name, SwinKeep keep, float *dpix, double *ce)
{
    char nm[128];
    DmErr err = {{0}};
    snprintf(nm, sizeof nm, "%s.pixel_values", name);
    const DmTensor *px = s_need(s_gold, nm);
    int H = (int)px->shape[2], W = (int)px->shape[3];
    snprintf(nm, sizeof nm, "%s.decoder_input_ids", name);
    const DmTensor *ti = s_need(s_gold, nm);
    int64_t tmp[128];
    int32_t ids[128];
    int T = (int)ti->shape[1];
    CU_ASSERT_FATAL(T <= 128);
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(ti, tmp, &err), 0);
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)tmp[i];
    int oh, ow, D = w->m->cfg.enc.hidden_size;
    swin_output_grid(&w->m->cfg.enc, H, W, &oh, &ow);
    float *enc = calloc((size_t)oh * ow * D, sizeof *enc);
    float *denc = calloc((size_t)oh * ow * D, sizeof *denc);
    SwinTape *tape = NULL;
    memset(w->tp.grad, 0, w->tp.total * sizeof(float));
    int rc = swin_tape_forward(w->m, px->data, H, W, keep, enc, &tape, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    /* the training forward is the encoder's forward */
    snprintf(nm, sizeof nm, "%s.encoder.last_hidden_state", name);
    CU_ASSERT(tu_maxdiff(enc, s_need(s_gold, nm)->data, (size_t)oh * ow * D) < 1e-4);
    TrainItem it = {enc, oh * ow, ids, T, T / 2, NULL};
    LossCfg cfg = {0.0, 1.0};
    LossParts lp;
    rc = train_item_grad(w->m, &w->tp, &it, &cfg, 1.0, &lp, denc, &err);
    if (rc == 0)
        rc = swin_tape_backward(w->m, tape, denc, &w->tp, dpix, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    *ce = lp.ce;
    swin_tape_free(&tape);
    free(enc);
    free(denc);
}

/* Worst diff / rounding scale per tensor group, printed by the test. */
enum { G_PATCH, G_LN, G_ATTN, G_BIAS, G_MLP, G_MERGE, G_DEC, G_EMB, G_PIX, G_KEYB, G_N };
static const char *s_gname[G_N] = {"patch embedding", "encoder LayerNorms", "q/k/v/proj",
                                   "relative position bias", "encoder MLP", "patch merging",
                                   "decoder", "token embeddings", "pixel_values",
                                   "key biases (abs)"};
static double s_worst[G_N];

static int s_group(const char *p)
{
    if (!strcmp(p, "pixel_values"))
        return G_PIX;
    if (strstr(p, "key.bias") || strstr(p, "k_proj.bias"))
        return G_KEYB;
    if (!strncmp(p, "decoder.", 8))
        return strstr(p, "embed_tokens") ? G_EMB : G_DEC;
    if (strstr(p, "patch_embeddings"))
        return G_PATCH;
    if (strstr(p, "downsample"))
        return G_MERGE;
    if (strstr(p, "relative_position"))
        return G_BIAS;
    if (strstr(p, "norm"))
        return G_LN;
    if (strstr(p, "attention"))
        return G_ATTN;
    return G_MLP;
}

/* Every golden gradient of the case against ours.  A tensor passes when
 * max |ours - golden| <= 20 x its float32 rounding scale + 1e-6 x its
 * absmax (the key biases, zero in exact arithmetic: <= 2e-5 absolute). */
static void s_check_case(Model *w, const char *name, const float *dpix, int *count)
{
    char pre[64];
    snprintf(pre, sizeof pre, "%s.grad.", name);
    size_t np = strlen(pre);
    for (int i = 0; i < s_full->n; i++) {
        const DmTensor *g = &s_full->t[i];
        if (strncmp(g->name, pre, np))
            continue;
        const char *pname = g->name + np;
        size_t n = (size_t)dm_tensor_numel(g);
        const float *got;
        if (!strcmp(pname, "pixel_values")) {
            got = dpix;
        } else {
            const TrainParam *p = train_param_find(&w->tp, pname);
            if (!p || p->count != n)
                printf("\n  %s: %s", g->name, p ? "size differs" : "no such parameter");
            CU_ASSERT_FATAL(p && p->count == n);
            got = w->tp.grad + p->offset;
        }
        double amax = 0.0;
        for (size_t k = 0; k < n; k++)
            amax = fmax(amax, fabs(((const float *)g->data)[k]));
        double d = tu_maxdiff(got, g->data, n), dev = s_dev(g->name);
        int grp = s_group(pname);
        double tol = grp == G_KEYB ? 2e-5 : 20.0 * dev + 1e-6 * amax;
        double r = grp == G_KEYB ? d : d / dev;
        if (r > s_worst[grp])
            s_worst[grp] = r;
        if (!(d <= tol))
            printf("\n  %s: max abs diff %.3g, tolerance %.3g (rounding scale %.3g, absmax %.3g)",
                   g->name, d, tol, dev, amax);
        CU_ASSERT(d <= tol);
        (*count)++;
    }
}

static void test_golden(void)
{
    Model w;
    s_model(&w);
    memset(s_worst, 0, sizeof s_worst);
    json_t *cases = json_object_get(s_json, "cases");
    CU_ASSERT_FATAL(json_array_size(cases) >= 1);
    size_t ci;
    json_t *c;
    json_array_foreach(cases, ci, c)
    {
        const char *name = json_string_value(json_object_get(c, "name"));
        const DmTensor *px;
        char nm[96];
        snprintf(nm, sizeof nm, "%s.pixel_values", name);
        px = s_need(s_gold, nm);
        float *dpix = calloc((size_t)dm_tensor_numel(px), sizeof *dpix);
        double ce = 0;
        /* the first case keeps everything, the others recompute */
        s_run_case(&w, name, ci == 0 ? SWIN_KEEP_ALL : SWIN_KEEP_INPUTS, dpix, &ce);
        double want = json_number_value(json_object_get(c, "loss_ce"));
        snprintf(nm, sizeof nm, "%s.loss.ce", name);
        CU_ASSERT(fabs(ce - want) <= 20.0 * s_dev(nm));
        int count = 0;
        s_check_case(&w, name, dpix, &count);
        /* every encoder parameter has a golden gradient; the first case
         * has every parameter's */
        int want_n = 1;
        for (int i = 0; i < w.tp.n; i++)
            want_n += ci == 0 || !strncmp(w.tp.p[i].name, "encoder.", 8);
        if (count != want_n)
            printf("\n  %s: %d gradients compared, %d expected", name, count, want_n);
        CU_ASSERT_EQUAL(count, want_n);
        free(dpix);
    }
    printf("\n  worst max|diff| / float32 rounding scale:");
    for (int g = 0; g < G_N; g++)
        printf("\n    %-24s %.3g", s_gname[g], s_worst[g]);
    s_model_free(&w);
}

/* Both memory modes give the same bits. */
static void test_keep_modes(void)
{
    Model w;
    s_model(&w);
    const DmTensor *px = s_need(s_gold, "case1.pixel_values");
    size_t np = (size_t)dm_tensor_numel(px);
    float *d1 = calloc(np, sizeof *d1), *d2 = calloc(np, sizeof *d2);
    float *g1 = malloc(w.tp.total * sizeof *g1);
    double ce1, ce2;
    s_run_case(&w, "case1", SWIN_KEEP_ALL, d1, &ce1);
    memcpy(g1, w.tp.grad, w.tp.total * sizeof *g1);
    s_run_case(&w, "case1", SWIN_KEEP_INPUTS, d2, &ce2);
    CU_ASSERT_EQUAL(ce1, ce2);
    CU_ASSERT(memcmp(g1, w.tp.grad, w.tp.total * sizeof *g1) == 0);
    CU_ASSERT(memcmp(d1, d2, np * sizeof *d1) == 0);
    const SwinConfig *c = &w.m->cfg.enc;
    CU_ASSERT(swin_tape_bytes(c, 232, 200, SWIN_KEEP_INPUTS) <
              swin_tape_bytes(c, 232, 200, SWIN_KEEP_ALL));
    free(d1);
    free(d2);
    free(g1);
    s_model_free(&w);
}

static double s_urand(uint64_t *x)
{
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*x >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static double s_relmax(const float *a, const float *b, size_t n)
{
    double amax = 0.0;
    for (size_t i = 0; i < n; i++)
        amax = fmax(amax, fabs(b[i]));
    return tu_maxdiff(a, b, n) / (amax > 0 ? amax : 1.0);
}

/* The fast attention backward against its double twin, with softmax
 * probabilities from the forward kernel. */
static void test_attn_twin(void)
{
    uint64_t seed = 7;
    int shapes[3][2] = {{25, 8}, {49, 16}, {100, 32}};
    for (int si = 0; si < 3; si++) {
        int N = shapes[si][0], hd = shapes[si][1], ld = hd * 3;
        size_t nr = (size_t)N * ld, nn = (size_t)N * N;
        float *q = malloc(nr * 4), *k = malloc(nr * 4), *v = malloc(nr * 4), *dc = malloc(nr * 4);
        float *B = malloc(nn * 4), *P = malloc(nn * 4), *ctx = calloc(nr, 4);
        float *o[8];
        for (int i = 0; i < 8; i++)
            o[i] = calloc(i % 4 == 3 ? nn : nr, 4);
        for (size_t i = 0; i < nr; i++) {
            q[i] = (float)s_urand(&seed);
            k[i] = (float)s_urand(&seed);
            v[i] = (float)s_urand(&seed);
            dc[i] = (float)s_urand(&seed);
        }
        for (size_t i = 0; i < nn; i++)
            B[i] = (float)s_urand(&seed) - (i % 7 == 0 ? 100.0f : 0.0f);
        float scale = 1.0f / sqrtf((float)hd);
        swin_attn_head_fwd(N, hd, ld, scale, q, k, v, B, P, ctx);
        for (int i = 0; i < N; i++) { /* rows of P sum to 1 */
            double s = 0;
            for (int j = 0; j < N; j++)
                s += P[(size_t)i * N + j];
            CU_ASSERT(fabs(s - 1.0) < 1e-5);
        }
        swin_attn_head_bwd(N, hd, ld, scale, q, k, v, P, dc, o[0], o[1], o[2], o[3]);
        swin_attn_head_bwd_ref(N, hd, ld, scale, q, k, v, P, dc, o[4], o[5], o[6], o[7]);
        for (int i = 0; i < 4; i++) {
            double r = s_relmax(o[i], o[4 + i], i == 3 ? nn : nr);
            if (!(r < 1e-5))
                printf("\n  N %d hd %d output %d: rel diff %.3g", N, hd, i, r);
            CU_ASSERT(r < 1e-5);
        }
        free(q), free(k), free(v), free(dc), free(B), free(P), free(ctx);
        for (int i = 0; i < 8; i++)
            free(o[i]);
    }
}

static void test_ln_twin(void)
{
    uint64_t seed = 11;
    int rows = 600, n = 48;
    size_t rn = (size_t)rows * n;
    float *dy = malloc(rn * 4), *xh = malloc(rn * 4), *rs = malloc(rows * 4), *g = malloc(n * 4);
    float *dx1 = calloc(rn, 4), *dx2 = calloc(rn, 4), *gb1 = calloc(2 * n, 4),
          *gb2 = calloc(2 * n, 4);
    for (int r = 0; r < rows; r++) {
        double m = 0, s = 0;
        for (int i = 0; i < n; i++) {
            xh[(size_t)r * n + i] = (float)s_urand(&seed);
            m += xh[(size_t)r * n + i];
        }
        m /= n;
        for (int i = 0; i < n; i++)
            s += (xh[(size_t)r * n + i] - m) * (xh[(size_t)r * n + i] - m);
        for (int i = 0; i < n; i++) /* a real normalised row: mean 0, variance 1 */
            xh[(size_t)r * n + i] = (float)((xh[(size_t)r * n + i] - m) / sqrt(s / n));
        rs[r] = (float)(1.0 + s_urand(&seed) * 0.5);
    }
    for (size_t i = 0; i < rn; i++)
        dy[i] = (float)s_urand(&seed), dx1[i] = dx2[i] = 0.25f;
    for (int i = 0; i < n; i++)
        g[i] = (float)(1.0 + 0.1 * s_urand(&seed));
    swin_ln_bwd(dy, rows, n, g, xh, rs, gb1, gb1 + n, dx1);
    swin_ln_bwd_ref(dy, rows, n, g, xh, rs, gb2, gb2 + n, dx2);
    CU_ASSERT(s_relmax(dx1, dx2, rn) < 1e-5);
    CU_ASSERT(s_relmax(gb1, gb2, 2 * n) < 1e-5);
    free(dy), free(xh), free(rs), free(g), free(dx1), free(dx2), free(gb1), free(gb2);
}

/* Finite differences where the reference has no case: a page whose maps
 * are exactly one window wide at stage 0 (HF then shrinks nothing but
 * turns the shift off), a 3x3 merge input and no padding in the windows.
 * Loss L = sum(out * R) for fixed random R; for a direction u over a whole
 * tensor (half random, half along the gradient), (L(w + e u) - L(w - e u))
 * / 2e against <grad, u>. */
static void test_finite_differences(void)
{
    Model w;
    s_model(&w);
    DmErr err = {{0}};
    int H = 20, W = 28, C = 3; /* stage 0: 5x7 (window 5, no shift) */
    const SwinConfig *c = &w.m->cfg.enc;
    /* one stage deep enough for this page: stop the model after stage 0 */
    int oh, ow;
    int saved = w.m->cfg.enc.nstages;
    w.m->cfg.enc.nstages = 2; /* 5x7 -> merge (odd: pad) -> 3x4, a 3x4 map < window: depth 0 */
    int depth1 = w.m->enc.stages[1].depth;
    w.m->enc.stages[1].depth = 0;
    swin_output_grid(c, H, W, &oh, &ow);
    int D = w.m->enc.stages[1].dim;
    size_t nout = (size_t)oh * ow * D, npix = (size_t)C * H * W;
    uint64_t seed = 3;
    float *pix = malloc(npix * 4), *R = malloc(nout * 4), *out = malloc(nout * 4);
    float *dpix = calloc(npix, 4);
    for (size_t i = 0; i < npix; i++)
        pix[i] = (float)s_urand(&seed);
    for (size_t i = 0; i < nout; i++)
        R[i] = (float)s_urand(&seed);
    SwinTape *tape = NULL;
    memset(w.tp.grad, 0, w.tp.total * sizeof(float));
    int rc = swin_tape_forward(w.m, pix, H, W, SWIN_KEEP_ALL, out, &tape, &err);
    if (rc == 0)
        rc = swin_tape_backward(w.m, tape, R, &w.tp, dpix, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    swin_tape_free(&tape);
    const char *names[] = {"encoder.embeddings.patch_embeddings.projection.weight",
                           "encoder.embeddings.norm.bias",
                           "encoder.encoder.layers.0.blocks.0.attention.self.relative_position_bias_table",
                           "encoder.encoder.layers.0.blocks.1.attention.self.query.weight",
                           "encoder.encoder.layers.0.blocks.1.attention.self.key.weight",
                           "encoder.encoder.layers.0.blocks.1.attention.self.value.bias",
                           "encoder.encoder.layers.0.blocks.1.intermediate.dense.weight",
                           "encoder.encoder.layers.0.blocks.0.layernorm_before.weight",
                           "encoder.encoder.layers.0.downsample.norm.weight",
                           "encoder.encoder.layers.0.downsample.reduction.weight",
                           "pixels"};
    double worst = 0;
    for (size_t ni = 0; ni < sizeof names / sizeof *names; ni++) {
        float *x, *gr;
        size_t n;
        if (!strcmp(names[ni], "pixels")) {
            x = pix, gr = dpix, n = npix;
        } else {
            const TrainParam *p = train_param_find(&w.tp, names[ni]);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            x = w.tp.data + p->offset, gr = w.tp.grad + p->offset, n = p->count;
        }
        float *x0 = malloc(n * 4), *u = malloc(n * 4);
        memcpy(x0, x, n * 4);
        /* u: half along the gradient (so the derivative stands well
         * above float32 noise), half random */
        double xs = 0, dot = 0, gmax = 0;
        for (size_t i = 0; i < n; i++) {
            xs = fmax(xs, fabs(x0[i]));
            gmax = fmax(gmax, fabs(gr[i]));
        }
        for (size_t i = 0; i < n; i++) {
            u[i] = (float)(0.5 * s_urand(&seed) + (gmax > 0 ? 0.5 * gr[i] / gmax : 0.0));
            dot += (double)u[i] * gr[i];
        }
        double e = 1e-2 * (xs > 0.1 ? xs : 0.1), L[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            for (size_t i = 0; i < n; i++)
                x[i] = (float)(x0[i] + (sgn ? -e : e) * u[i]);
            rc = swin_tape_forward(w.m, pix, H, W, SWIN_KEEP_INPUTS, out, &tape, &err);
            CU_ASSERT_EQUAL_FATAL(rc, 0);
            swin_tape_free(&tape);
            double s = 0;
            for (size_t i = 0; i < nout; i++)
                s += (double)out[i] * R[i];
            L[sgn] = s;
        }
        memcpy(x, x0, n * 4);
        double fd = (L[0] - L[1]) / (2 * e), rel = fabs(fd - dot) / fmax(fabs(dot), 1e-3);
        if (!(rel < 2e-2))
            printf("\n  %s: finite difference %.6g, gradient %.6g", names[ni], fd, dot);
        CU_ASSERT(rel < 2e-2);
        worst = fmax(worst, rel);
        free(x0);
        free(u);
    }
    printf("\n  worst |finite difference - gradient| / |gradient| over %zu tensors: %.3g",
           sizeof names / sizeof *names, worst);
    w.m->cfg.enc.nstages = saved;
    w.m->enc.stages[1].depth = depth1;
    free(pix), free(R), free(out), free(dpix);
    s_model_free(&w);
}

void tests_swin_grad(void)
{
    CU_pSuite s = CU_add_suite("swin_grad", s_setup, s_teardown);
    CU_add_test(s, "golden gradients, every parameter and pixel_values", test_golden);
    CU_add_test(s, "keep and recompute give the same bits", test_keep_modes);
    CU_add_test(s, "attention backward against its twin", test_attn_twin);
    CU_add_test(s, "LayerNorm backward against its twin", test_ln_twin);
    CU_add_test(s, "finite differences, unpadded windows without shift", test_finite_differences);
}
