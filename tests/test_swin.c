/* test_swin.c - the Swin encoder against the HF goldens of data/tiny-a. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/donut.h"
#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"
#include "tutil.h"

/* --------------------------------------------------------- probe capture */

typedef struct Cap {
    char name[96];
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    size_t n;
    float *data;
} Cap;

typedef struct Caps {
    Cap *v;
    int n, cap;
} Caps;

static void cap_emit(void *ctx, const char *name, int ndim, const int64_t *shape, const float *data)
{
    Caps *cs = ctx;
    if (cs->n == cs->cap) {
        cs->cap = cs->cap ? 2 * cs->cap : 16;
        cs->v = realloc(cs->v, sizeof *cs->v * cs->cap);
    }
    Cap *c = &cs->v[cs->n++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->ndim = ndim;
    c->n = 1;
    for (int i = 0; i < ndim; i++) {
        c->shape[i] = shape[i];
        c->n *= (size_t)shape[i];
    }
    c->data = malloc(sizeof(float) * (c->n ? c->n : 1));
    memcpy(c->data, data, sizeof(float) * c->n);
}

static const Cap *cap_find(const Caps *cs, const char *name)
{
    for (int i = 0; i < cs->n; i++)
        if (strcmp(cs->v[i].name, name) == 0)
            return &cs->v[i];
    return NULL;
}

static void caps_free(Caps *cs)
{
    for (int i = 0; i < cs->n; i++)
        free(cs->v[i].data);
    free(cs->v);
    memset(cs, 0, sizeof *cs);
}

/* --------------------------------------------------------------- goldens */

static DonutModel *s_model;
static TensorFile *s_exp;

static int load_all(void)
{
    DmErr err = {{0}};
    if (!s_model && donut_load(TU_TINY, &s_model, &err) != 0) {
        fprintf(stderr, "\n  donut_load: %s\n", err.msg);
        return -1;
    }
    if (!s_exp && tensorfile_open(TU_TINY "/expected.safetensors", &s_exp, &err) != 0) {
        fprintf(stderr, "\n  expected: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static void t_cleanup(void)
{
    if (s_model)
        donut_free(&s_model);
    if (s_exp)
        tensorfile_close(&s_exp);
}

/* Compare one emitted tensor with the golden; returns max diff (INFINITY on
 * shape mismatch or absence). */
static double cmp_one(const Caps *cs, const char *cas, const char *name, double tol)
{
    char gname[160];
    snprintf(gname, sizeof gname, "%s.%s", cas, name);
    const DmTensor *g = tensorfile_find(s_exp, gname);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    const Cap *c = cap_find(cs, name);
    CU_ASSERT_PTR_NOT_NULL(c);
    if (!c) {
        printf("\n    %s: not emitted", gname);
        return INFINITY;
    }
    int same = c->ndim == g->ndim;
    for (int i = 0; same && i < g->ndim; i++)
        same = c->shape[i] == g->shape[i];
    CU_ASSERT(same);
    if (!same) {
        printf("\n    %s: shape mismatch", gname);
        return INFINITY;
    }
    size_t n = (size_t)dm_tensor_numel(g);
    float *gf = malloc(sizeof(float) * n);
    DmErr err;
    CU_ASSERT_FATAL(dm_tensor_to_f32(g, gf, &err) == 0);
    double d = tu_maxdiff(c->data, gf, n);
    free(gf);
    printf("\n    %-52s max|diff| %.3e", gname, d);
    CU_ASSERT(d <= tol);
    return d;
}

static void run_case(const char *cas, int with_attn)
{
    if (load_all() != 0) {
        CU_FAIL("cannot load tiny-a");
        return;
    }
    const SwinConfig *c = &s_model->cfg.enc;
    char nm[160];
    snprintf(nm, sizeof nm, "%s.pixel_values", cas);
    const DmTensor *pv = tensorfile_find(s_exp, nm);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pv);
    CU_ASSERT_FATAL(pv->ndim == 4 && pv->shape[0] == 1 && pv->shape[1] == c->channels);
    int H = (int)pv->shape[2], W = (int)pv->shape[3];
    float *pix = malloc(sizeof(float) * (size_t)dm_tensor_numel(pv));
    DmErr err = {{0}};
    CU_ASSERT_FATAL(dm_tensor_to_f32(pv, pix, &err) == 0);

    int oh, ow;
    swin_output_grid(c, H, W, &oh, &ow);
    size_t nout = (size_t)oh * ow * c->hidden_size;
    float *out = malloc(sizeof(float) * nout);
    float *out2 = malloc(sizeof(float) * nout);

    Caps cs = {0};
    DmProbe probe = {cap_emit, &cs};
    double t0 = dm_now();
    int rc = swin_encode(s_model, pix, H, W, out, &probe, &err);
    double t1 = dm_now();
    if (rc)
        printf("\n    swin_encode: %s", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    rc = swin_encode(s_model, pix, H, W, out2, NULL, &err);
    double t2 = dm_now();
    CU_ASSERT_FATAL(rc == 0);
    printf("\n    %s: %dx%d -> %dx%d tokens; %.1f ms with probe, %.1f ms without", cas, H, W, oh,
           ow, (t1 - t0) * 1e3, (t2 - t1) * 1e3);

    /* the probe-free path gives the same numbers */
    CU_ASSERT(memcmp(out, out2, sizeof(float) * nout) == 0);
    const Cap *last = cap_find(&cs, "encoder.last_hidden_state");
    CU_ASSERT_PTR_NOT_NULL(last);
    if (last && last->n == nout)
        CU_ASSERT(memcmp(last->data, out, sizeof(float) * nout) == 0);

    cmp_one(&cs, cas, "encoder.last_hidden_state", 1e-4);
    for (int s = 0; s <= c->nstages; s++) {
        snprintf(nm, sizeof nm, "encoder.hidden_states.%d", s);
        cmp_one(&cs, cas, nm, 1e-4);
    }
    for (int s = 0; s < c->nstages; s++) {
        snprintf(nm, sizeof nm, "encoder.stage_outputs_before_downsampling.%d", s);
        cmp_one(&cs, cas, nm, 1e-4);
    }
    for (int s = 0; s < c->nstages; s++) {
        snprintf(nm, sizeof nm, "encoder.attentions.%d", s);
        if (with_attn)
            cmp_one(&cs, cas, nm, 5e-5);
        else
            CU_ASSERT_PTR_NOT_NULL(cap_find(&cs, nm));
    }
    /* nothing unexpected was emitted */
    CU_ASSERT_EQUAL(cs.n, 1 + (c->nstages + 1) + 2 * c->nstages);
    printf("\n  ");

    caps_free(&cs);
    free(pix);
    free(out);
    free(out2);
}

static void t_case0(void) { run_case("case0", 1); }
static void t_case1(void) { run_case("case1", 0); }
static void t_case2(void) { run_case("case2", 0); }

/* The encoder in bf16 (weights rounded by donut_set_precision, activations
 * rounded on the way into each GEMM, float32 accumulation) against the HF
 * float32 goldens: the difference is the rounding's, about 2^-9 relative
 * per operand; bounded here at 3e-2 of the output's largest value. */
static void t_bf16(void)
{
    if (load_all() != 0) {
        CU_FAIL("cannot load tiny-a");
        return;
    }
    DonutModel *m = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &m, &err), 0);
    int rc = donut_set_precision(m, DM_PREC_BF16, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    static const char *cases[] = {"case0", "case1", "case2"};
    for (int k = 0; k < 3; k++) {
        char nm[160];
        snprintf(nm, sizeof nm, "%s.pixel_values", cases[k]);
        const DmTensor *pv = tensorfile_find(s_exp, nm);
        snprintf(nm, sizeof nm, "%s.encoder.last_hidden_state", cases[k]);
        const DmTensor *g = tensorfile_find(s_exp, nm);
        CU_ASSERT_FATAL(pv && g);
        int H = (int)pv->shape[2], W = (int)pv->shape[3];
        size_t n = (size_t)dm_tensor_numel(g);
        float *pix = malloc(sizeof(float) * (size_t)dm_tensor_numel(pv));
        float *gf = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n),
              *o32 = malloc(sizeof(float) * n);
        CU_ASSERT_FATAL(dm_tensor_to_f32(pv, pix, &err) == 0 && dm_tensor_to_f32(g, gf, &err) == 0);
        rc = swin_encode(m, pix, H, W, out, NULL, &err);
        if (rc)
            printf("\n    swin_encode bf16: %s", err.msg);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        CU_ASSERT_EQUAL_FATAL(swin_encode(s_model, pix, H, W, o32, NULL, &err), 0);
        double amax = 0;
        for (size_t i = 0; i < n; i++)
            amax = fabs(gf[i]) > amax ? fabs(gf[i]) : amax;
        double d = tu_maxdiff(out, gf, n), d32 = tu_maxdiff(out, o32, n);
        printf("\n    %s bf16 last_hidden_state: max|diff| %.3e vs HF, %.3e vs fp32 (absmax %.2f)",
               cases[k], d, d32, amax);
        CU_ASSERT(d <= 3e-2 * (amax > 1.0 ? amax : 1.0));
        CU_ASSERT(d > 0.0); /* it did run in bf16 */
        free(pix);
        free(gf);
        free(out);
        free(o32);
    }
    /* The encoder's weights are held once, as the backend's bf16 blocks. */
    const DmLinear *fc1 = &m->enc.stages[0].blocks[0].fc1;
    int pn = 0, pk = 0, pb = 0;
    CU_ASSERT_PTR_NOT_NULL_FATAL(fc1->packed);
    kern_gemm_packed_shape(fc1->packed, &pn, &pk, &pb);
    CU_ASSERT(pb == 1 && pn == fc1->out && pk == fc1->in);
    CU_ASSERT_PTR_NULL(fc1->wbf);
    donut_free(&m);
}

/* --------------------------------------------------------------- grid math */

static void t_grid(void)
{
    SwinConfig c;
    memset(&c, 0, sizeof c);
    c.patch = 4;
    c.nstages = 4;
    c.embed_dim = 128;
    c.window = 10;
    int oh, ow;
    swin_output_grid(&c, 2560, 1920, &oh, &ow);
    CU_ASSERT_EQUAL(oh, 80);
    CU_ASSERT_EQUAL(ow, 60);
    CU_ASSERT_EQUAL(oh * ow, 4800);
    CU_ASSERT_EQUAL(c.embed_dim << (c.nstages - 1), 1024);
    /* tiny: 232x200 -> 58x50 -> 29x25 -> 15x13 -> 8x7 */
    c.embed_dim = 16;
    c.window = 5;
    swin_output_grid(&c, 232, 200, &oh, &ow);
    CU_ASSERT_EQUAL(oh, 8);
    CU_ASSERT_EQUAL(ow, 7);
    /* non-multiples of the patch are padded: 233x201 -> 59x51 -> 30x26 -> 15x13 -> 8x7 */
    swin_output_grid(&c, 233, 201, &oh, &ow);
    CU_ASSERT_EQUAL(oh, 8);
    CU_ASSERT_EQUAL(ow, 7);
    swin_output_grid(&c, 1, 1, &oh, &ow);
    CU_ASSERT_EQUAL(oh, 1);
    CU_ASSERT_EQUAL(ow, 1);
}

/* ------------------------------------------------------------------ errors */

static void t_errors(void)
{
    if (load_all() != 0) {
        CU_FAIL("cannot load tiny-a");
        return;
    }
    DmErr err = {{0}};
    float px[3 * 40 * 40] = {0};
    float out[1024];
    /* 40x40 -> 10x10 -> 5x5 -> 3x3 at stage 2: smaller than window 5 */
    CU_ASSERT_EQUAL(swin_encode(s_model, px, 40, 40, out, NULL, &err), -1);
    CU_ASSERT(strstr(err.msg, "window") != NULL);
    CU_ASSERT(strchr(err.msg, '\n') == NULL);
    CU_ASSERT_EQUAL(swin_encode(s_model, px, 0, 40, out, NULL, &err), -1);
    CU_ASSERT_EQUAL(swin_encode(s_model, NULL, 40, 40, out, NULL, &err), -1);
}

/* An input whose map exactly equals the window at some stage (shift off,
 * window = min(H, W)) and odd sizes everywhere runs and is deterministic. */
static void t_small_odd(void)
{
    if (load_all() != 0) {
        CU_FAIL("cannot load tiny-a");
        return;
    }
    const SwinConfig *c = &s_model->cfg.enc;
    /* 163x157 -> 41x40 -> 21x20 -> 11x10 -> 6x5 (min == window at stage 3) */
    int H = 163, W = 157, oh, ow;
    swin_output_grid(c, H, W, &oh, &ow);
    CU_ASSERT_EQUAL(oh, 6);
    CU_ASSERT_EQUAL(ow, 5);
    float *px = malloc(sizeof(float) * 3 * H * W);
    for (int i = 0; i < 3 * H * W; i++)
        px[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;
    size_t n = (size_t)oh * ow * c->hidden_size;
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(swin_encode(s_model, px, H, W, a, NULL, &err), 0);
    CU_ASSERT_EQUAL_FATAL(swin_encode(s_model, px, H, W, b, NULL, &err), 0);
    CU_ASSERT(memcmp(a, b, sizeof(float) * n) == 0);
    int finite = 1;
    for (size_t i = 0; i < n; i++)
        finite &= isfinite(a[i]) != 0;
    CU_ASSERT(finite);
    free(px);
    free(a);
    free(b);
}

/* --------------------------------------------------- reused working memory */

/* Pages of different sizes and contents through one model's kept working
 * memory (small, larger, the small one again, another small one) each give
 * bit for bit what a freshly loaded model gives: nothing a page leaves in
 * the block reaches the next.  A call that finds the block taken by another
 * works in a private block and leaves the model's alone; two threads
 * encoding with one model at once both get the fresh results. */
typedef struct WsPage {
    int H, W;
    unsigned seed;
    float *px, *fresh;
    size_t n;
} WsPage;

static void ws_page_init(WsPage *pg, const SwinConfig *c)
{
    size_t np = (size_t)3 * pg->H * pg->W;
    pg->px = malloc(sizeof(float) * np);
    uint32_t x = pg->seed;
    for (size_t i = 0; i < np; i++) {
        x = x * 1664525u + 1013904223u;
        pg->px[i] = (float)(x >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
    int oh, ow;
    swin_output_grid(c, pg->H, pg->W, &oh, &ow);
    pg->n = (size_t)oh * ow * c->hidden_size;
    /* the reference: a model loaded for this page alone */
    DonutModel *m = NULL;
    DmErr err = {{0}};
    pg->fresh = malloc(sizeof(float) * pg->n);
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &m, &err), 0);
    CU_ASSERT_EQUAL_FATAL(swin_encode(m, pg->px, pg->H, pg->W, pg->fresh, NULL, &err), 0);
    donut_free(&m);
}

static int ws_page_same(const DonutModel *m, const WsPage *pg)
{
    float *out = malloc(sizeof(float) * pg->n);
    memset(out, 0xff, sizeof(float) * pg->n);
    DmErr err = {{0}};
    int rc = swin_encode(m, pg->px, pg->H, pg->W, out, NULL, &err);
    if (rc)
        printf("\n    swin_encode %dx%d: %s", pg->H, pg->W, err.msg);
    int same = rc == 0 && memcmp(out, pg->fresh, sizeof(float) * pg->n) == 0;
    free(out);
    return same;
}

typedef struct WsThread {
    const DonutModel *m;
    const WsPage *pg;
    int same;
} WsThread;

static void *ws_thread(void *arg)
{
    WsThread *t = arg;
    t->same = ws_page_same(t->m, t->pg) && ws_page_same(t->m, t->pg);
    return NULL;
}

static void t_workspace(void)
{
    DonutModel *m = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &m, &err), 0);
    const SwinConfig *c = &m->cfg.enc;
    /* 163x157 -> 6x5 out; 292x256 -> 10x8 out; 201x233 -> 7x8 out */
    WsPage pg[3] = {{.H = 163, .W = 157, .seed = 1}, {.H = 292, .W = 256, .seed = 2},
                    {.H = 201, .W = 233, .seed = 3}};
    for (int i = 0; i < 3; i++)
        ws_page_init(&pg[i], c);

    CU_ASSERT(ws_page_same(m, &pg[0]));
    size_t n_small = m->enc_ws_n;
    CU_ASSERT(n_small > 0);
    CU_ASSERT(ws_page_same(m, &pg[1]));
    const float *big = m->enc_ws;
    size_t n_big = m->enc_ws_n;
    CU_ASSERT(n_big > n_small); /* grown for the larger page */
    CU_ASSERT(ws_page_same(m, &pg[0]));
    CU_ASSERT(ws_page_same(m, &pg[2]));
    CU_ASSERT(m->enc_ws == big && m->enc_ws_n == n_big); /* kept, not reallocated */

    /* taken by another call: a private block, the model's untouched */
    atomic_store(&m->enc_ws_busy, 1);
    CU_ASSERT(ws_page_same(m, &pg[1]));
    swin_free_workspace(m); /* refused while taken */
    CU_ASSERT(m->enc_ws == big && m->enc_ws_n == n_big);
    atomic_store(&m->enc_ws_busy, 0);

    WsThread th[2] = {{m, &pg[1], 0}, {m, &pg[2], 0}};
    pthread_t id[2];
    int started[2];
    for (int i = 0; i < 2; i++)
        started[i] = pthread_create(&id[i], NULL, ws_thread, &th[i]) == 0;
    for (int i = 0; i < 2; i++)
        if (started[i])
            pthread_join(id[i], NULL);
    CU_ASSERT(started[0] && started[1] && th[0].same && th[1].same);
    CU_ASSERT_EQUAL(atomic_load(&m->enc_ws_busy), 0);

    swin_free_workspace(m);
    CU_ASSERT(m->enc_ws == NULL && m->enc_ws_n == 0);
    CU_ASSERT(ws_page_same(m, &pg[2])); /* allocated again */
    donut_free(&m);
    for (int i = 0; i < 3; i++) {
        free(pg[i].px);
        free(pg[i].fresh);
    }
}

/* ------------------------------------------- synthetic model vs naive HF */

/* A small random model whose attention takes the kernels of the real
 * checkpoint (window 10: 100 tokens per window; head dim 32), checked
 * against a plain double-precision transcription of HF's modules. */

static uint64_t s_rs = 0x9E3779B97F4A7C15ULL;
static float rndu(void)
{
    s_rs ^= s_rs << 13;
    s_rs ^= s_rs >> 7;
    s_rs ^= s_rs << 17;
    return (float)((s_rs >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

typedef struct Alloc {
    void *p[512];
    int n;
} Alloc;

static float *arand(Alloc *al, size_t n, float scale, float off)
{
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        p[i] = off + scale * rndu();
    al->p[al->n++] = p;
    return p;
}

static DmLinear mklin(Alloc *al, int out, int in, int bias)
{
    DmLinear l = {arand(al, (size_t)out * in, sqrtf(3.0f / in), 0.0f),
                  bias ? arand(al, out, 0.05f, 0.0f) : NULL, out, in};
    return l;
}

static DmNorm mknorm(Alloc *al, int n)
{
    DmNorm x = {arand(al, n, 0.1f, 1.0f), arand(al, n, 0.1f, 0.0f), n};
    return x;
}

static void synth_model(DonutModel *m, Alloc *al, int embed, int nst, const int *depths,
                        const int *heads, int window)
{
    memset(m, 0, sizeof *m);
    SwinConfig *c = &m->cfg.enc;
    c->patch = 4;
    c->channels = 3;
    c->embed_dim = embed;
    c->nstages = nst;
    c->window = window;
    c->mlp_ratio = 4.0f;
    c->qkv_bias = 1;
    c->ln_eps = 1e-5f;
    c->hidden_size = embed << (nst - 1);
    m->enc.patch_w = arand(al, (size_t)embed * 48, 0.25f, 0.0f);
    m->enc.patch_b = arand(al, embed, 0.05f, 0.0f);
    m->enc.patch_norm = mknorm(al, embed);
    int nrel = (2 * window - 1) * (2 * window - 1);
    for (int s = 0; s < nst; s++) {
        SwinStage *st = &m->enc.stages[s];
        int C = embed << s;
        c->depths[s] = depths[s];
        c->heads[s] = heads[s];
        st->depth = depths[s];
        st->dim = C;
        st->heads = heads[s];
        st->blocks = calloc(depths[s], sizeof *st->blocks);
        al->p[al->n++] = st->blocks;
        for (int b = 0; b < depths[s]; b++) {
            SwinBlock *bl = &st->blocks[b];
            int qb = b % 2 == 0; /* odd blocks: no q/k/v bias */
            bl->ln_before = mknorm(al, C);
            bl->q = mklin(al, C, C, qb);
            bl->k = mklin(al, C, C, qb);
            bl->v = mklin(al, C, C, qb);
            bl->rel_bias = arand(al, (size_t)nrel * heads[s], 1.0f, 0.0f);
            bl->proj = mklin(al, C, C, 1);
            bl->ln_after = mknorm(al, C);
            bl->fc1 = mklin(al, 4 * C, C, 1);
            bl->fc2 = mklin(al, C, 4 * C, 1);
        }
        if (s + 1 < nst) {
            st->has_merge = 1;
            st->merge_norm = mknorm(al, 4 * C);
            st->merge = mklin(al, 2 * C, 4 * C, 0);
        }
    }
}

static void ref_ln(double *x, int n, const DmNorm *ln, double eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    for (int i = 0; i < n; i++)
        x[i] = (x[i] - mean) / sqrt(var + eps) * ln->g[i] + ln->b[i];
}

static void ref_lin(const double *x, const DmLinear *l, double *y)
{
    for (int o = 0; o < l->out; o++) {
        double acc = l->b ? l->b[o] : 0.0;
        for (int i = 0; i < l->in; i++)
            acc += x[i] * l->w[(size_t)o * l->in + i];
        y[o] = acc;
    }
}

/* One HF DonutSwinLayer on x [h*w, C] (double). */
static void ref_block(const SwinConfig *c, const SwinBlock *bl, int heads, int C, int h, int w,
                      int odd, double *x)
{
    int win = c->window, shift = odd ? c->window / 2 : 0;
    int mn = h < w ? h : w;
    if (mn <= win) { /* set_shift_and_window_size */
        shift = 0;
        win = mn;
    }
    int Hp = (h + win - 1) / win * win, Wp = (w + win - 1) / win * win, N = win * win;
    int hd = C / heads;
    double *P = calloc((size_t)Hp * Wp * C, sizeof(double));
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            double *d = P + ((size_t)i * Wp + j) * C;
            memcpy(d, x + ((size_t)i * w + j) * C, sizeof(double) * C);
            ref_ln(d, C, &bl->ln_before, c->ln_eps);
        }
    double *A = calloc((size_t)Hp * Wp * C, sizeof(double)); /* attention output, unrolled */
    double *q = malloc(sizeof(double) * N * C), *k = malloc(sizeof(double) * N * C);
    double *v = malloc(sizeof(double) * N * C), *ctx = malloc(sizeof(double) * N * C);
    double *sc = malloc(sizeof(double) * N);
    int *lab = malloc(sizeof(int) * N), *pos = malloc(sizeof(int) * N);
    for (int wr = 0; wr < Hp / win; wr++)
        for (int wc = 0; wc < Wp / win; wc++) {
            for (int t = 0; t < N; t++) {
                int i = wr * win + t / win, j = wc * win + t % win; /* rolled coords */
                int si = (i + shift) % Hp, sj = (j + shift) % Wp;   /* torch.roll(-shift) */
                pos[t] = si * Wp + sj;
                int hi = i < Hp - win ? 0 : i < Hp - shift ? 1 : 2;
                int wi = j < Wp - win ? 0 : j < Wp - shift ? 1 : 2;
                lab[t] = hi * 3 + wi;
                ref_lin(P + (size_t)pos[t] * C, &bl->q, q + (size_t)t * C);
                ref_lin(P + (size_t)pos[t] * C, &bl->k, k + (size_t)t * C);
                ref_lin(P + (size_t)pos[t] * C, &bl->v, v + (size_t)t * C);
            }
            for (int hh = 0; hh < heads; hh++)
                for (int a = 0; a < N; a++) {
                    double mx = -1e300;
                    for (int b = 0; b < N; b++) {
                        double dot = 0;
                        for (int d = 0; d < hd; d++)
                            dot += q[(size_t)a * C + hh * hd + d] * k[(size_t)b * C + hh * hd + d];
                        int ya = a / win, xa = a % win, yb = b / win, xb = b % win;
                        int idx = (ya - yb + c->window - 1) * (2 * c->window - 1) +
                                  (xa - xb + c->window - 1);
                        double s = dot / sqrt((double)hd) + bl->rel_bias[(size_t)idx * heads + hh];
                        if (shift > 0 && lab[a] != lab[b])
                            s += -100.0;
                        sc[b] = s;
                        if (s > mx)
                            mx = s;
                    }
                    double sum = 0;
                    for (int b = 0; b < N; b++)
                        sum += (sc[b] = exp(sc[b] - mx));
                    for (int d = 0; d < hd; d++) {
                        double acc = 0;
                        for (int b = 0; b < N; b++)
                            acc += sc[b] / sum * v[(size_t)b * C + hh * hd + d];
                        ctx[(size_t)a * C + hh * hd + d] = acc;
                    }
                }
            for (int t = 0; t < N; t++)
                ref_lin(ctx + (size_t)t * C, &bl->proj, A + (size_t)pos[t] * C);
        }
    double *tmp = malloc(sizeof(double) * C), *hid = malloc(sizeof(double) * bl->fc1.out);
    double *o2 = malloc(sizeof(double) * C);
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            double *xr = x + ((size_t)i * w + j) * C;
            for (int d = 0; d < C; d++)
                xr[d] += A[((size_t)i * Wp + j) * C + d];
            memcpy(tmp, xr, sizeof(double) * C);
            ref_ln(tmp, C, &bl->ln_after, c->ln_eps);
            ref_lin(tmp, &bl->fc1, hid);
            for (int d = 0; d < bl->fc1.out; d++)
                hid[d] = 0.5 * hid[d] * (1.0 + erf(hid[d] / sqrt(2.0)));
            ref_lin(hid, &bl->fc2, o2);
            for (int d = 0; d < C; d++)
                xr[d] += o2[d];
        }
    free(P);
    free(A);
    free(q);
    free(k);
    free(v);
    free(ctx);
    free(sc);
    free(lab);
    free(pos);
    free(tmp);
    free(hid);
    free(o2);
}

/* Naive encoder; returns the final map (caller frees), sets *T. */
static double *ref_encode(const DonutModel *m, const float *px, int H, int W, int *T)
{
    const SwinConfig *c = &m->cfg.enc;
    int P = c->patch, E = c->embed_dim;
    int h = (H + P - 1) / P, w = (W + P - 1) / P;
    double *x = calloc((size_t)h * w * E, sizeof(double));
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++)
            for (int e = 0; e < E; e++) {
                double acc = m->enc.patch_b[e];
                for (int ch = 0; ch < c->channels; ch++)
                    for (int ki = 0; ki < P; ki++)
                        for (int kj = 0; kj < P; kj++) {
                            int y = i * P + ki, xx = j * P + kj;
                            if (y < H && xx < W)
                                acc += (double)px[((size_t)ch * H + y) * W + xx] *
                                       m->enc.patch_w[(((size_t)e * c->channels + ch) * P + ki) * P + kj];
                        }
                double *d = x + ((size_t)i * w + j) * E;
                d[e] = acc;
                if (e == E - 1)
                    ref_ln(d, E, &m->enc.patch_norm, c->ln_eps);
            }
    for (int s = 0; s < c->nstages; s++) {
        const SwinStage *st = &m->enc.stages[s];
        int C = st->dim;
        for (int b = 0; b < st->depth; b++)
            ref_block(c, &st->blocks[b], st->heads, C, h, w, b % 2, x);
        if (s + 1 < c->nstages) {
            int h2 = (h + 1) / 2, w2 = (w + 1) / 2;
            double *x2 = calloc((size_t)h2 * w2 * 2 * C, sizeof(double));
            double *cat = malloc(sizeof(double) * 4 * C);
            static const int dy[4] = {0, 1, 0, 1}, dx[4] = {0, 0, 1, 1};
            for (int i = 0; i < h2; i++)
                for (int j = 0; j < w2; j++) {
                    for (int qd = 0; qd < 4; qd++) {
                        int y = 2 * i + dy[qd], xx = 2 * j + dx[qd];
                        for (int d = 0; d < C; d++)
                            cat[qd * C + d] = (y < h && xx < w) ? x[((size_t)y * w + xx) * C + d] : 0.0;
                    }
                    ref_ln(cat, 4 * C, &st->merge_norm, c->ln_eps);
                    ref_lin(cat, &st->merge, x2 + ((size_t)i * w2 + j) * 2 * C);
                }
            free(cat);
            free(x);
            x = x2;
            h = h2;
            w = w2;
        }
    }
    *T = h * w;
    return x;
}

static void synth_check(int H, int W, int embed, int nst, const int *depths, const int *heads,
                        int window)
{
    Alloc al = {{0}, 0};
    DonutModel m;
    synth_model(&m, &al, embed, nst, depths, heads, window);
    float *px = arand(&al, (size_t)3 * H * W, 1.0f, 0.0f);
    int oh, ow, T;
    swin_output_grid(&m.cfg.enc, H, W, &oh, &ow);
    size_t n = (size_t)oh * ow * m.cfg.enc.hidden_size;
    float *out = malloc(sizeof(float) * n);
    DmErr err = {{0}};
    int rc = swin_encode(&m, px, H, W, out, NULL, &err);
    if (rc)
        printf("\n    swin_encode: %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    double *ref = ref_encode(&m, px, H, W, &T);
    CU_ASSERT_EQUAL(T, oh * ow);
    double md = 0, amax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(out[i] - ref[i]);
        if (!(d <= md))
            md = d;
        if (fabs(ref[i]) > amax)
            amax = fabs(ref[i]);
    }
    printf("\n    %dx%d embed %d window %d heads %d..: max|diff| %.3e (absmax %.2f)", H, W, embed,
           window, heads[0], md, amax);
    CU_ASSERT(md <= 1e-4 * (amax > 1.0 ? amax : 1.0));
    free(ref);
    free(out);
    for (int i = 0; i < al.n; i++)
        free(al.p[i]);
    for (int i = 0; i < m.nowned; i++) /* the encoder's packed weights */
        free(m.owned[i]);
    free(m.owned);
    swin_free_workspace(&m);
}

static void t_synth(void)
{
    /* window 10, head dim 32: 92x84 -> 23x21 (pad 30x30, 9 windows)
     * -> 12x11 (pad 20x20, shifted) ; odd merge */
    int d1[2] = {2, 2}, h1[2] = {2, 4};
    synth_check(92, 84, 64, 2, d1, h1, 10);
    /* head dim 16 and 48 (the generic 8-wide paths), window 7; W not a
     * multiple of the patch: 107x116 -> 27x29 -> 14x15 -> 7x8, where
     * min(H, W) == window (no shift, window 7) */
    int d2[3] = {2, 1, 2}, h2[3] = {3, 2, 4};
    synth_check(107, 116, 48, 3, d2, h2, 7);
    /* head dim 12 (the scalar P.v fallback): 60x52 -> 15x13 -> 8x7 */
    int d3[2] = {2, 2}, h3[2] = {2, 4};
    synth_check(60, 52, 24, 2, d3, h3, 5);
}

void tests_swin(void)
{
    TU_SUITE("swin", {"grid math (tiny and full size)", t_grid},
             {"case0 vs HF (states + attentions)", t_case0}, {"case1 vs HF", t_case1},
             {"case2 vs HF", t_case2}, {"bf16 encoder vs HF (fp32 goldens)", t_bf16}, {"errors", t_errors}, {"odd sizes, window == min(H,W)", t_small_odd},
             {"synthetic window-10 / head-dim-32 model vs naive HF", t_synth},
             {"pages through the kept working memory = fresh model, bit for bit", t_workspace},
             {"cleanup", t_cleanup});
}
