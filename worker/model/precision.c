/* precision.c - running a loaded Donut in bfloat16 (donut.h).
 *
 * A decoding step reads every weight once, so halving the bytes of the
 * weights halves its time; bf16 keeps float32's range, and its 8-bit
 * mantissa costs less than 1e-2 relative on a dot product of 1024 terms
 * (docs/performance.md, "Decoding", measures the effect on logits and
 * answers).  Weight matrices become one block of bfloat16 (or stay where a
 * BF16 file holds them); the float32 matrices they replace are released so
 * the resident set shrinks: copies made at load are freed, pages of the
 * mapped file are handed back with madvise (they are clean file pages:
 * touching them again would just read the file). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "worker/model/donut.h"
#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"

int donut_precision_parse(const char *s, DmPrecision *out)
{
    if (!strcmp(s, "fp32"))
        *out = DM_PREC_F32;
    else if (!strcmp(s, "bf16"))
        *out = DM_PREC_BF16;
    else
        return -1;
    return 0;
}

const char *donut_precision_name(DmPrecision p) { return p == DM_PREC_BF16 ? "bf16" : "fp32"; }

/* The packed form of l when it was packed in the precision l computes in
 * (bf16 exactly when l has bfloat16 weights), else NULL. */
static const void *s_packed(const DmLinear *l)
{
    return donut_packed_as(l, l->wbf != NULL) ? l->packed : NULL;
}

/* Rows from which a linear with a packed form runs on the GEMM backend:
 * below it the streaming kernels read each weight once for all rows. */
static int s_use_packed(const DmLinear *l, int M) { return !kern_small_m(M) && s_packed(l); }

void donut_linear(const DmLinear *l, const float *x, int M, float *y)
{
    DmErr e;
    if (s_use_packed(l, M) && !kern_gemm_run(l->packed, x, M, l->in, l->b, 0, y, l->out, NULL, &e))
        return;
    if (l->wbf)
        kern_linear_bf16(x, M, l->in, l->wbf, l->b, l->out, y);
    else
        kern_linear(x, M, l->in, l->w, l->b, l->out, y);
}

void donut_linear_gelu(const DmLinear *l, const float *x, int M, float *y)
{
    DmErr e;
    if (s_use_packed(l, M) &&
        !kern_gemm_run(l->packed, x, M, l->in, l->b, KG_GELU, y, l->out, NULL, &e))
        return;
    donut_linear(l, x, M, y);
    kern_gelu(y, (size_t)M * l->out);
}

void donut_drop_pages(const TensorFile *tf, const void *p, size_t bytes)
{
    if (!tf)
        return; /* a model built in memory: nothing is mapped */
    uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    uintptr_t mlo = (uintptr_t)tf->map, mhi = mlo + tf->map_len;
    if (!tf->map || lo < mlo || hi > mhi)
        return; /* inside a reader's own block (a packed pytorch view): kept */
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (lo + pg - 1) & ~(pg - 1), b = hi & ~(pg - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

/* A float32 matrix the model no longer reads: free it when the model owns
 * it, else hand the whole pages it covers in the mapped file back. */
static void s_release(DonutModel *m, const float *p, size_t n)
{
    for (int i = 0; i < m->nowned; i++)
        if (m->owned[i] == p) {
            free(m->owned[i]);
            m->owned[i] = m->owned[--m->nowned];
            return;
        }
    donut_drop_pages(m->weights, p, n * sizeof(float));
}

/* The matrices to convert: each with its float32 source and bf16 slot. */
typedef struct Mat {
    const float **w;
    const uint16_t **bf;
    size_t n;
} Mat;

static int s_add_linear(Mat *list, int k, DmLinear *l)
{
    if (l->w && !l->wbf)
        list[k++] = (Mat){&l->w, &l->wbf, (size_t)l->out * l->in};
    return k;
}

static int s_add_attn(Mat *list, int k, DecAttn *a)
{
    if (!a->present)
        return k;
    k = s_add_linear(list, k, &a->q);
    k = s_add_linear(list, k, &a->k);
    k = s_add_linear(list, k, &a->v);
    return s_add_linear(list, k, &a->o);
}

int donut_set_precision(DonutModel *m, DmPrecision prec, DmErr *err)
{
    if (prec == m->precision)
        return 0;
    if (prec != DM_PREC_BF16)
        return dm_err(err, "%s: a model in bf16 cannot go back to fp32 (load it again)", m->dir);
    const MBartConfig *c = &m->cfg.dec;
    MBartWeights *d = &m->dec;
    int cap = 2 + 10 * c->layers; /* embedding, head; q k v o twice, fc1 fc2 */
    if (DM_SWIN_BF16)
        for (int s = 0; s < m->cfg.enc.nstages; s++)
            cap += 6 * m->enc.stages[s].depth + 1;
    Mat *list = calloc((size_t)cap, sizeof *list);
    if (!list)
        return dm_err(err, "out of memory");
    int k = 0;
    int tied = d->lm_head == d->embed_tokens;
    if (d->embed_tokens && !d->embed_tokens_bf16)
        list[k++] = (Mat){&d->embed_tokens, &d->embed_tokens_bf16, (size_t)c->vocab * c->d_model};
    if (!tied && d->lm_head && !d->lm_head_bf16)
        list[k++] = (Mat){&d->lm_head, &d->lm_head_bf16, (size_t)c->vocab * c->d_model};
    for (int l = 0; l < c->layers; l++) {
        DecLayer *L = &d->layers[l];
        k = s_add_attn(list, k, &L->self);
        k = s_add_attn(list, k, &L->cross);
        if (L->ffn.present) {
            k = s_add_linear(list, k, &L->ffn.fc1);
            k = s_add_linear(list, k, &L->ffn.fc2);
        }
    }
    for (int s = 0; DM_SWIN_BF16 && s < m->cfg.enc.nstages; s++) {
        SwinStage *st = &m->enc.stages[s];
        for (int b = 0; b < st->depth; b++) {
            SwinBlock *bl = &st->blocks[b];
            DmLinear *ls[] = {&bl->q, &bl->k, &bl->v, &bl->proj, &bl->fc1, &bl->fc2};
            for (int i = 0; i < 6; i++)
                k = s_add_linear(list, k, ls[i]);
        }
        if (st->has_merge)
            k = s_add_linear(list, k, &st->merge);
    }
    size_t total = 0;
    for (int i = 0; i < k; i++)
        total += list[i].n;
    uint16_t *block = total ? malloc(total * sizeof *block) : NULL;
    if (total && !block) {
        free(list);
        return dm_err(err, "%s: out of memory for %zu MiB of bf16 weights", m->dir,
                      (total * sizeof *block) >> 20);
    }
    uint16_t *p = block;
    for (int i = 0; i < k; i++) {
        kern_to_bf16(*list[i].w, p, list[i].n);
        *list[i].bf = p;
        s_release(m, *list[i].w, list[i].n);
        *list[i].w = NULL;
        p += list[i].n;
    }
    if (tied) {
        d->lm_head = d->embed_tokens;
        d->lm_head_bf16 = d->embed_tokens_bf16;
    }
    m->bf16 = block;
    m->precision = DM_PREC_BF16;
    free(list);
    donut_unpack_decoder(m); /* float32 blocks: packed again in bf16 on demand */
    return 0;
}

/* ------------------------------------------------------- packed weights */

static pthread_mutex_t s_pack_mu = PTHREAD_MUTEX_INITIALIZER;

void donut_pack_lock(void) { pthread_mutex_lock(&s_pack_mu); }
void donut_pack_unlock(void) { pthread_mutex_unlock(&s_pack_mu); }

int donut_own(DonutModel *m, void *p, DmErr *err)
{
    if (m->nowned == m->capowned) {
        int cap = m->capowned ? 2 * m->capowned : 64;
        float **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o)
            return dm_err(err, "%s: out of memory (owned buffers)", m->dir);
        m->owned = o;
        m->capowned = cap;
    }
    m->owned[m->nowned++] = p;
    return 0;
}

int donut_packed_as(const DmLinear *l, int bf16)
{
    int n, k, b;
    if (!l->packed)
        return 0;
    kern_gemm_packed_shape(l->packed, &n, &k, &b);
    return b == bf16;
}

void donut_unpack_linear(DonutModel *m, DmLinear *l)
{
    for (int i = 0; l->packed && i < m->nowned; i++)
        if (m->owned[i] == l->packed) {
            free(m->owned[i]);
            m->owned[i] = m->owned[--m->nowned];
            break;
        }
    l->packed = NULL;
}

int donut_pack_linear(DonutModel *m, DmLinear *l, int bf16, DmErr *err)
{
    void *p;
    donut_unpack_linear(m, l);
    if (kern_gemm_pack(l->w, l->wbf, l->out, l->in, bf16, &p, err))
        return -1;
    if (donut_own(m, p, err)) {
        free(p);
        return -1;
    }
    l->packed = p;
    /* The packed block serves the passes over many rows from now on: the
     * float32 pages of the mapped file go back to the kernel (clean file
     * pages, read again from the file if a decoding step touches them). */
    if (l->w)
        donut_drop_pages(m->weights, l->w, (size_t)l->out * l->in * sizeof(float));
    return 0;
}

int donut_dec_linears(DonutModel *m, DmLinear **out)
{
    int n = 0;
    for (int l = 0; l < m->cfg.dec.layers; l++) {
        DecLayer *L = &m->dec.layers[l];
        DecAttn *at[2] = {&L->self, &L->cross};
        for (int i = 0; i < 2; i++)
            if (at[i]->present) {
                out[n++] = &at[i]->q;
                out[n++] = &at[i]->k;
                out[n++] = &at[i]->v;
                out[n++] = &at[i]->o;
            }
        if (L->ffn.present) {
            out[n++] = &L->ffn.fc1;
            out[n++] = &L->ffn.fc2;
        }
    }
    return n;
}

void donut_unpack_decoder(DonutModel *m)
{
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    donut_pack_lock();
    int n = donut_dec_linears(m, lin);
    for (int i = 0; i < n; i++)
        donut_unpack_linear(m, lin[i]);
    donut_unpack_linear(m, &m->dec.head);
    donut_pack_unlock();
}
