/* an_kv.c - the key-value retrieval experiment of one question (analyze.h,
 * docs/analyze.md "Key-value retrieval"): greedy answers on the clean page,
 * on its corrupted twin, and on the twin with the last cross-attention's
 * query taken from the clean run at the answer positions.
 *
 * Every greedy decoding here runs the decoder's hooked pass (with a KV
 * cache, one token a step), patched or not, so the three answers differ
 * only by the patch, never by a faster path's rounding. */
#include "worker/analyze/analyze.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

typedef struct GreedyCtx {
    int qsub;          /* the patched sub-layer (3 * layer + DM_SUB_C), -1: none */
    const float *qsrc; /* row t = the query at position t */
    int q0, q1;        /* the patched positions q0 <= t < q1 */
} GreedyCtx;

static int s_hook(void *ctx, DecHookEvent *ev)
{
    const GreedyCtx *g = ctx;
    if (g->qsub < 0 || ev->point != DEC_HOOK_QUERY || 3 * ev->layer + ev->kind != g->qsub)
        return 0;
    int width = (int)ev->shape[1];
    for (int r = 0; r < (int)ev->shape[0]; r++) {
        int t = ev->pos0 + r;
        if (t >= g->q0 && t < g->q1)
            memcpy(ev->data + (size_t)r * width, g->qsrc + (size_t)t * width,
                   (size_t)width * sizeof(float));
    }
    return 0;
}

int an_greedy(const DecPage *page, const int32_t *prompt, int plen, const AnGreedyCfg *g,
              int qsub, const float *qsrc, int q0, int q1, int32_t **out, int *nout, DmErr *err)
{
    const DonutModel *m = page->m;
    int V = m->cfg.dec.vocab, cap = plen + g->max_new;
    *out = NULL;
    *nout = 0;
    if (plen < 1 || g->max_new < 1)
        return dm_err(err, "analyze: greedy decoding of %d prompt tokens, %d new", plen,
                      g->max_new);
    if (cap > m->cfg.dec.max_pos)
        cap = m->cfg.dec.max_pos;
    if (plen >= cap)
        return dm_err(err, "analyze: a prompt of %d tokens leaves no room in the model's %d "
                           "positions", plen, m->cfg.dec.max_pos);
    DecSeq seq = {0};
    float *logits = malloc((size_t)V * sizeof(float));
    int32_t *gen = malloc((size_t)(cap - plen) * sizeof(int32_t));
    int rc = -1, n = 0;
    if (!logits || !gen) {
        dm_err(err, "analyze: out of memory for greedy decoding");
        goto done;
    }
    if (dec_seq_init(&seq, m, cap, err))
        goto done;
    GreedyCtx ctx = {qsrc ? qsub : -1, qsrc, q0, q1};
    DecHooks hooks = {s_hook, &ctx};
    DecSeq *sp = &seq;
    const int32_t *feed = prompt;
    int cnt = plen;
    for (;;) {
        if (dec_forward(page, &sp, &feed, &cnt, 1, logits, 0, &hooks, NULL, err))
            goto done;
        if (g->unk_id >= 0 && g->unk_id < V)
            logits[g->unk_id] = -INFINITY;
        int tok = kern_argmax(logits, V);
        gen[n++] = tok;
        if (tok == g->stop1 || tok == g->stop2 || plen + n >= cap)
            break;
        feed = &gen[n - 1];
        cnt = 1;
    }
    *out = gen;
    *nout = n;
    gen = NULL;
    rc = 0;
done:
    dec_seq_free(&seq);
    free(logits);
    free(gen);
    return rc;
}

void an_kv_free(AnKv *k)
{
    free(k->clean);
    free(k->patched);
    free(k->control);
    memset(k, 0, sizeof *k);
}

int an_kv(const DecPage *clean, const DecPage *twin, const int32_t *prompt, int plen,
          const AnGreedyCfg *g, AnKv *out, AnStats *stats, DmErr *err)
{
    const DonutModel *m = clean->m;
    memset(out, 0, sizeof *out);
    if (twin->m != m)
        return dm_err(err, "analyze: the clean page and its twin are of different models");
    int lc = -1;
    for (int l = m->cfg.dec.layers - 1; l >= 0 && lc < 0; l--)
        if (m->dec.layers[l].cross.present)
            lc = l;
    if (lc < 0)
        return dm_err(err, "analyze: kv_retrieval needs a cross-attention, the model has none");
    int qsub = 3 * lc + DM_SUB_C;
    double t0 = dm_now();
    int32_t *seq = NULL;
    AnTrace tr = {0};
    int rc = -1;
    if (an_greedy(clean, prompt, plen, g, -1, NULL, 0, 0, &out->clean, &out->nclean, err))
        goto done;
    /* The clean answer teacher-forced: its query at the answer positions
     * a .. T-2 (a = the prompt's last position), those that produced the
     * answer's tokens, stop token included. */
    int T = plen + out->nclean, a = plen - 1;
    if (!(seq = malloc((size_t)T * sizeof *seq))) {
        dm_err(err, "analyze: out of memory");
        goto done;
    }
    memcpy(seq, prompt, (size_t)plen * sizeof *seq);
    memcpy(seq + plen, out->clean, (size_t)out->nclean * sizeof *seq);
    if (an_run(clean, seq, T, a, NULL, 0, 0, &tr, err))
        goto done;
    if (an_greedy(twin, prompt, plen, g, qsub, tr.query[qsub], a, T - 1, &out->patched,
                  &out->npatched, err) ||
        an_greedy(twin, prompt, plen, g, -1, NULL, 0, 0, &out->control, &out->ncontrol, err))
        goto done;
    if (stats) {
        stats->passes++;
        stats->seconds += dm_now() - t0;
    }
    rc = 0;
done:
    free(seq);
    an_trace_free(&tr);
    if (rc)
        an_kv_free(out);
    return rc;
}
