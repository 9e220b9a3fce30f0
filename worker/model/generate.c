/* generate.c - greedy decoding with a self-attention KV cache. */
#include "worker/model/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

void gen_config_default(const DonutModel *m, GenConfig *g)
{
    const MBartConfig *c = &m->cfg.dec;
    g->max_length = c->max_pos;
    g->eos_id = c->eos_id;
    g->unk_id = c->unk_id;
    g->forced_eos_id = c->forced_eos_id;
}

void gen_process_scores(const GenConfig *g, int cur_len, float *s, int vocab)
{
    if (g->unk_id >= 0 && g->unk_id < vocab)
        s[g->unk_id] = -INFINITY;
    if (g->forced_eos_id >= 0 && g->forced_eos_id < vocab && cur_len == g->max_length - 1) {
        for (int v = 0; v < vocab; v++)
            s[v] = -INFINITY;
        s[g->forced_eos_id] = 0.0f;
    }
}

void gen_result_free(GenResult *r)
{
    free(r->ids);
    r->ids = NULL;
}

int gen_greedy(const DecPage *page, const int32_t *const *prompts, const int *prompt_lens, int B,
               const GenConfig *g, GenResult *out, GenStepFn on_step, void *ctx, DmErr *err)
{
    const DonutModel *m = page->m;
    int V = m->cfg.dec.vocab;
    int cap = g->max_length;
    if (cap > m->cfg.dec.max_pos)
        return dm_err(err, "max_length %d exceeds the model's %d positions", cap,
                      m->cfg.dec.max_pos);
    for (int b = 0; b < B; b++) {
        if (prompt_lens[b] < 1)
            return dm_err(err, "question %d: empty prompt", b);
        if (prompt_lens[b] >= cap)
            return dm_err(err, "question %d: prompt of %d tokens leaves no room within max_length %d",
                          b, prompt_lens[b], cap);
    }
    memset(out, 0, (size_t)B * sizeof *out);
    DecSeq *seqs = calloc((size_t)B, sizeof *seqs);
    DecSeq **active = calloc((size_t)B, sizeof *active);
    int *idx = calloc((size_t)B, sizeof *idx);
    int *cnt = calloc((size_t)B, sizeof *cnt);
    const int32_t **feed = calloc((size_t)B, sizeof *feed);
    int32_t *next = calloc((size_t)B, sizeof *next);
    float *logits = malloc((size_t)B * V * sizeof(float));
    float *raw = malloc((size_t)V * sizeof(float));
    int rc = -1;
    if (!seqs || !active || !idx || !cnt || !feed || !next || !logits || !raw) {
        dm_err(err, "out of memory for generation");
        goto done;
    }
    for (int b = 0; b < B; b++) {
        if (dec_seq_init(&seqs[b], m, cap, err))
            goto done;
        out[b].ids = malloc((size_t)cap * sizeof(int32_t));
        if (!out[b].ids) {
            dm_err(err, "out of memory for generation");
            goto done;
        }
        memcpy(out[b].ids, prompts[b], (size_t)prompt_lens[b] * sizeof(int32_t));
        out[b].len = out[b].prompt_len = prompt_lens[b];
    }
    /* Prompts first, each as one pass over all its tokens. */
    for (int b = 0; b < B; b++) {
        DecSeq *s = &seqs[b];
        if (dec_forward(page, &s, &prompts[b], &prompt_lens[b], 1, logits + (size_t)b * V, 0,
                        NULL, NULL, err))
            goto done;
    }
    int nact = B;
    for (int b = 0; b < B; b++)
        idx[b] = b;
    for (int step = 0; nact > 0; step++) {
        /* logits holds row k for sequence idx[k] */
        int keep = 0;
        for (int k = 0; k < nact; k++) {
            int b = idx[k];
            float *s = logits + (size_t)k * V;
            if (on_step)
                on_step(ctx, b, step, s, V);
            memcpy(raw, s, (size_t)V * sizeof(float));
            gen_process_scores(g, out[b].len, raw, V);
            /* torch.argmax, and the log-softmax there: the largest score
             * less the log of its sum of exponentials, in double */
            int tok = kern_argmax(raw, V);
            out[b].sum_logprob -= log(kern_sum_exp_f64(raw, V, raw[tok]));
            out[b].ids[out[b].len++] = tok;
            if (tok == g->eos_id) {
                out[b].stopped_by_eos = 1;
                continue;
            }
            if (out[b].len >= g->max_length)
                continue;
            next[keep] = tok;
            idx[keep++] = b;
        }
        nact = keep;
        if (!nact)
            break;
        for (int k = 0; k < nact; k++) {
            active[k] = &seqs[idx[k]];
            feed[k] = &next[k];
            cnt[k] = 1;
        }
        if (dec_forward(page, active, feed, cnt, nact, logits, 0, NULL, NULL, err))
            goto done;
    }
    rc = 0;
done:
    if (seqs)
        for (int b = 0; b < B; b++)
            dec_seq_free(&seqs[b]);
    if (rc)
        for (int b = 0; b < B; b++)
            gen_result_free(&out[b]);
    free(seqs);
    free(active);
    free(idx);
    free(cnt);
    free(feed);
    free(next);
    free(logits);
    free(raw);
    return rc;
}
