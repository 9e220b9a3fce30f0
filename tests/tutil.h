/* tutil.h - helpers shared by the CUnit test files.  Tests run with the
 * working directory set to tests/, so reference data is under data/. */
#ifndef DM_TUTIL_H
#define DM_TUTIL_H

#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>

#include "common/tensorfile.h"

#define TU_TINY "data/tiny-a"
#define TU_TOK "data/tokenizer-a"

/* Max |a - b| over n floats (NaN counts as infinite). */
static inline double tu_maxdiff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d)
            return INFINITY;
        if (d > m)
            m = d;
    }
    return m;
}

/* Register a suite with its tests: TU_SUITE("name", {"t1", fn1}, ...). */
typedef struct TuCase {
    const char *name;
    void (*fn)(void);
} TuCase;

static inline void tu_register(const char *suite, const TuCase *cases, int n)
{
    CU_pSuite s = CU_add_suite(suite, NULL, NULL);
    for (int i = 0; i < n; i++)
        CU_add_test(s, cases[i].name, cases[i].fn);
}
#define TU_SUITE(name, ...)                                                    \
    do {                                                                       \
        static const TuCase tu_cases_[] = {__VA_ARGS__};                       \
        tu_register(name, tu_cases_, (int)(sizeof tu_cases_ / sizeof *tu_cases_)); \
    } while (0)

#endif

/* A probe sink that keeps copies of every emitted tensor, for comparison
 * with the reference files. */
#include <stdlib.h>
#include <string.h>

typedef struct TuCollect {
    int n;
    char *name[256];
    int ndim[256];
    int64_t shape[256][8];
    float *data[256];
} TuCollect;

static inline void tu_collect_emit(void *ctx, const char *name, int ndim, const int64_t *shape,
                                   const float *data)
{
    TuCollect *c = ctx;
    if (c->n >= 256)
        return;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        c->shape[c->n][i] = shape[i];
        numel *= (size_t)shape[i];
    }
    c->name[c->n] = strdup(name);
    c->ndim[c->n] = ndim;
    c->data[c->n] = malloc(numel * sizeof(float));
    memcpy(c->data[c->n], data, numel * sizeof(float));
    c->n++;
}

static inline int tu_collect_find(const TuCollect *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->name[i], name))
            return i;
    return -1;
}

static inline void tu_collect_free(TuCollect *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->name[i]);
        free(c->data[i]);
    }
    c->n = 0;
}

/* Compare collected tensor `name` with golden tensor `prefix.name` in tf:
 * same shape, max abs diff <= tol.  Returns the max diff (or INFINITY when
 * missing or mis-shaped) and records a CUnit assertion. */
static inline double tu_check_tensor(const TuCollect *c, const TensorFile *tf, const char *prefix,
                                     const char *name, double tol)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const DmTensor *g = tensorfile_find(tf, full);
    int i = tu_collect_find(c, name);
    double diff = INFINITY;
    if (g && i >= 0 && g->dtype == DM_F32 && g->ndim == c->ndim[i]) {
        int same = 1;
        for (int d = 0; d < g->ndim; d++)
            same &= g->shape[d] == c->shape[i][d];
        if (same)
            diff = tu_maxdiff(c->data[i], (const float *)g->data, (size_t)dm_tensor_numel(g));
    }
    if (!(diff <= tol))
        printf("\n  %s: max abs diff %.3g (tolerance %.1g)%s%s", full, diff, tol,
               g ? "" : " [no golden]", i >= 0 ? "" : " [not produced]");
    CU_ASSERT(diff <= tol);
    return diff;
}

/* A private temporary folder for a test file's scratch files, made on first
 * use and removed (once empty) by tu_tmp_done. */
#include <unistd.h>

typedef struct TuTmp {
    const char *pattern; /* mkdtemp pattern, e.g. "/tmp/dm_x_XXXXXX" */
    char dir[64];
    char path[256];
    int registered;
} TuTmp;

static inline void tu_tmp_done(TuTmp *t)
{
    if (t->dir[0])
        rmdir(t->dir);
    t->dir[0] = 0;
}

/* Path of `name` in the folder (a buffer in t, valid until the next call);
 * at_exit (may be NULL) is registered once as a fallback clean-up. */
static inline const char *tu_tmp(TuTmp *t, const char *name, void (*at_exit)(void))
{
    if (!t->dir[0]) {
        snprintf(t->dir, sizeof t->dir, "%s", t->pattern);
        if (!mkdtemp(t->dir)) {
            perror("mkdtemp");
            abort();
        }
        if (at_exit && !t->registered++)
            atexit(at_exit);
    }
    snprintf(t->path, sizeof t->path, "%s/%s", t->dir, name);
    return t->path;
}

static inline void tu_write(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_FATAL(n == 0 || fwrite(p, 1, n, f) == n);
    fclose(f);
}

/* The whole file in a malloc'ed buffer (NULL when unreadable). */
static inline unsigned char *tu_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(*n ? *n : 1);
    if (fread(p, 1, *n, f) != *n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

/* open_fn must fail on path, leave *out NULL, and give one line naming the
 * file (and, when given, the words that make the message useful). */
static inline void tu_expect_open_fail(int (*open_fn)(const char *, TensorFile **, DmErr *),
                                       const char *path, const char *want1, const char *want2)
{
    TensorFile *tf = (TensorFile *)1;
    DmErr err = {{0}};
    int rc = open_fn(path, &tf, &err);
    int ok = rc == -1 && tf == NULL && strstr(err.msg, path) && strchr(err.msg, '\n') == NULL &&
             (!want1 || strstr(err.msg, want1)) && (!want2 || strstr(err.msg, want2));
    if (!ok)
        printf("\n  %s: rc %d, message \"%s\" (wanted \"%s\", \"%s\")", path, rc, err.msg,
               want1 ? want1 : "", want2 ? want2 : "");
    CU_ASSERT(ok);
    if (rc == 0)
        tensorfile_close(&tf);
}

#include "worker/model/donut.h"

/* Case k's decoder_input_ids in a reference file into ids (at most cap):
 * their count, or -1 when missing or longer. */
static inline int tu_case_ids(const TensorFile *ex, int k, int32_t *ids, int cap)
{
    char name[64];
    snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
    const DmTensor *t = tensorfile_find(ex, name);
    int T = t ? (int)dm_tensor_numel(t) : -1;
    int64_t *v = T > 0 && T <= cap ? malloc((size_t)T * sizeof *v) : NULL;
    DmErr err = {{0}};
    if (!v || dm_tensor_to_i64(t, v, &err))
        T = -1;
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)v[i];
    free(v);
    return T;
}

/* The encoder output of case k's pixel_values in a reference file
 * (malloc'ed, *n_enc tokens), or NULL. */
static inline float *tu_encode_case(const DonutModel *m, const TensorFile *ex, int k, int *n_enc)
{
    char name[64];
    snprintf(name, sizeof name, "case%d.pixel_values", k);
    const DmTensor *t = tensorfile_find(ex, name);
    if (!t)
        return NULL;
    int H = (int)t->shape[2], W = (int)t->shape[3], oh, ow;
    swin_output_grid(&m->cfg.enc, H, W, &oh, &ow);
    float *pix = malloc((size_t)dm_tensor_numel(t) * sizeof *pix);
    float *enc = malloc((size_t)oh * ow * m->cfg.enc.hidden_size * sizeof *enc);
    DmErr err = {{0}};
    if (!pix || !enc || dm_tensor_to_f32(t, pix, &err) ||
        swin_encode(m, pix, H, W, enc, NULL, &err)) {
        free(enc);
        enc = NULL;
    }
    free(pix);
    *n_enc = oh * ow;
    return enc;
}
