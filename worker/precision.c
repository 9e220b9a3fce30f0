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
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "donut.h"
#include "kern.h"

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

void donut_linear(const DmLinear *l, const float *x, int M, float *y)
{
    if (l->wbf)
        kern_linear_bf16(x, M, l->in, l->wbf, l->b, l->out, y);
    else
        kern_linear(x, M, l->in, l->w, l->b, l->out, y);
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
    return 0;
}
