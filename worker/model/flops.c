/* flops.c - multiply-adds per module (flops.h; docs/flops.md has the
 * derivations).  Everything is counted from the config and the structure,
 * so the numbers hold for any weights of that shape. */
#include <stdio.h>
#include <string.h>

#include "worker/model/flops.h"

static long long s_round_up(long long x, long long k)
{
    return (x + k - 1) / k * k;
}

long long flops_encoder(const SwinConfig *c, int *enc_tokens)
{
    long long h = (c->image_h + c->patch - 1) / c->patch;
    long long w = (c->image_w + c->patch - 1) / c->patch;
    /* patch embedding: a patch x patch x channels convolution per token */
    long long n = (long long)c->channels * c->patch * c->patch * c->embed_dim * h * w;
    for (int s = 0; s < c->nstages; s++) {
        long long C = (long long)c->embed_dim << s, hid = (long long)(C * c->mlp_ratio);
        long long mn = h < w ? h : w, win = mn <= c->window ? mn : c->window;
        long long padded = s_round_up(h, win) * s_round_up(w, win), N = win * win;
        /* q, k, v and the output projection run over the padded windows,
         * each window's q k^T and P v are N x N x C (all heads together);
         * the MLP runs over the real tokens only */
        long long block = 4 * C * C * padded + 2 * padded * N * C + 2 * C * hid * h * w;
        n += block * c->depths[s];
        if (s + 1 < c->nstages) {
            h = (h + 1) / 2;
            w = (w + 1) / 2;
            n += 4 * C * 2 * C * h * w; /* merging: 4C -> 2C per merged token */
        }
    }
    if (enc_tokens)
        *enc_tokens = (int)(h * w);
    return n;
}

void flops_count(const DonutConfig *c, const DmPlan *p, int n, int m, DmFlopsConv conv,
                 FlopsTable *t)
{
    memset(t, 0, sizeof *t);
    const MBartConfig *d = &c->dec;
    long long D = d->d_model, hd = D / d->heads, F = d->ffn, V = d->vocab;
    t->conv = conv;
    t->prompt = n;
    t->new_tokens = m;
    long long E;
    {
        int e;
        long long enc = flops_encoder(&c->enc, &e);
        E = e;
        t->enc_tokens = e;
        t->rows[DM_PMOD_ENCODER].macs = enc;
    }
    /* pos: positions computed; att: key positions summed over the queries
     * of self-attention; kv: times the cross keys and values are made;
     * head: positions the LM head runs on */
    long long pos, att, kv, head;
    if (conv == DM_FLOPS_CACHED) {
        t->passes = m;
        pos = n + m - 1;
        att = (long long)n * n + (long long)(m - 1) * n + (long long)m * (m - 1) / 2;
        kv = 1;
        head = m;
    } else {
        long long s = m - 1;
        t->passes = s;
        pos = s * n + s * (s - 1) / 2;
        att = 0;
        for (long long L = n; L < n + s; L++)
            att += L * L;
        kv = s;
        head = pos;
    }
    t->positions = pos;
    static const char *const fixed[DM_PMOD_FIXED] = {"encoder", "tokens", "positions",
                                                     "unembedding", "norms"};
    static const char kinds[3] = {'S', 'C', 'M'};
    for (int i = 0; i < DM_PMOD_FIXED; i++)
        snprintf(t->rows[i].name, sizeof t->rows[i].name, "%s", fixed[i]);
    t->rows[DM_PMOD_UNEMBED].macs = V * D * head;
    t->nrows = DM_PMOD_FIXED;
    for (int l = 0; l < d->layers; l++)
        for (int k = 0; k < 3; k++) {
            FlopsRow *r = &t->rows[t->nrows++];
            snprintf(r->name, sizeof r->name, "%c%d", kinds[k], l);
            if (!p->keep[l][k])
                continue;
            if (k == DM_SUB_M) {
                r->macs = 2 * D * F * pos;
                continue;
            }
            long long nh = p->nheads[l][k], kvh = 0;
            if (k == DM_SUB_S)
                r->per_head = 4 * D * hd * pos + 2 * hd * att;
            else {
                kvh = 2 * D * hd * E * kv;
                r->per_head = 2 * D * hd * pos + kvh + 2 * hd * E * pos;
            }
            r->macs = r->per_head * nh;
            r->cross_kv = kvh * nh;
        }
    for (int i = DM_PMOD_FIXED; i < t->nrows; i++)
        t->layers += t->rows[i].macs;
    t->decoder = t->layers + t->rows[DM_PMOD_UNEMBED].macs;
    t->total = t->decoder + t->rows[DM_PMOD_ENCODER].macs;
}
