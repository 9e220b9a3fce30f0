/* test_swin.c - the Swin encoder against the HF goldens of data/tiny-a. */
#include <stdlib.h>
#include <string.h>

#include "donut.h"
#include "kern.h"
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

void tests_swin(void)
{
    TU_SUITE("swin", {"grid math (tiny and full size)", t_grid},
             {"case0 vs HF (states + attentions)", t_case0}, {"case1 vs HF", t_case1},
             {"case2 vs HF", t_case2}, {"errors", t_errors}, {"odd sizes, window == min(H,W)", t_small_odd},
             {"cleanup", t_cleanup});
}
