/* decoder.h - the mBART decoder of Donut with per-run state.
 *
 * DecPage holds what one page contributes: the encoder output and each
 * cross-attention's keys and values, computed once and shared by every
 * question asked of that page.  DecSeq holds one sequence's self-attention
 * KV cache.  dec_forward appends tokens to sequences: the whole prompt (or a
 * teacher-forced sequence) at once, or one token per sequence per step for
 * a batch of questions, so each weight is read once per step for all. */
#ifndef DM_DECODER_H
#define DM_DECODER_H

#include "worker/model/donut.h"

typedef struct DecPage {
    const DonutModel *m;
    int n_enc;                  /* encoder tokens */
    const float *enc;           /* [n_enc, d_model], borrowed */
    /* cross keys transposed, [nheads*hd, n_enc] (head h's [hd, n_enc] at
     * row h*hd: a decoding step's scores need no horizontal sums), and
     * values head by head, [nheads, n_enc, hd] (a head's values one
     * contiguous block); NULL if C<l> was removed */
    float *ck[DM_MAX_LAYERS];
    float *cv[DM_MAX_LAYERS];
    /* A model in bf16 keeps its cross keys and values in bfloat16 instead
     * (ck, cv NULL): half the bytes a decoding step streams per layer. */
    uint16_t *ckb[DM_MAX_LAYERS];
    uint16_t *cvb[DM_MAX_LAYERS];
} DecPage;

typedef struct DecSeq {
    int len, cap;               /* tokens in the cache, capacity */
    float *sk[DM_MAX_LAYERS];   /* self keys [cap, nheads*hd] */
    float *sv[DM_MAX_LAYERS];
} DecSeq;

/* Where a hook is called, for each present sub-layer (S, C, M) of a layer:
 * INPUT: the residual stream entering the sub-layer [T, d];
 * QUERY: the queries q_proj(LayerNorm(x)) before their 1/sqrt(head_dim)
 *   scaling [T, heads*hd] (attention sub-layers only);
 * ATTN: attention probabilities [heads, T, S] (attention sub-layers only);
 * HEADS: each head's attention output before out_proj [T, heads*hd], head
 *   h in columns h*hd .. (attention sub-layers only);
 * OUTPUT: the sub-layer's output before it is added to the residual [T, d]
 *   (zeroing it skips the sub-layer).
 * The hook may read and overwrite `data` in place.
 *
 * A pass over several sequences (B > 1) calls the hook once per site for
 * the whole block: `data` holds the rows of every sequence, sequence b's
 * counts[b] rows after those of the sequences before it (nseq = B).  ATTN
 * is reported only for a single sequence. */
typedef enum {
    DEC_HOOK_INPUT,
    DEC_HOOK_ATTN,
    DEC_HOOK_OUTPUT,
    DEC_HOOK_QUERY,
    DEC_HOOK_HEADS
} DecHookPoint;

typedef struct DecHookEvent {
    int layer;
    int kind; /* DM_SUB_S, DM_SUB_C, DM_SUB_M */
    DecHookPoint point;
    float *data;
    int ndim;
    int64_t shape[3];
    int pos0; /* position of the first of the T rows (of the first sequence) */
    int nseq;           /* sequences in the block */
    const int *counts;  /* [nseq] rows of each */
} DecHookEvent;

/* A pass with a hook or a probe takes the operation-per-call path with
 * GEMM attention everywhere (the hook may rewrite the probabilities), so
 * its numbers can differ from an unwatched pass's by float rounding.
 * Probes are honoured for a single sequence only. */
typedef struct DecHooks {
    int (*fn)(void *ctx, DecHookEvent *ev); /* return -1 to abort the pass */
    void *ctx;
} DecHooks;

/* Pack every decoder linear and the LM head for the GEMM backend, in the
 * model's precision (again after a precision change): passes over many rows
 * (teacher forcing, prompts) then run at GEMM speed.  The float32 pages of
 * the mapped file are handed back, so the resident set grows little; the
 * decoding steps, which stream the plain weights, fault them back in.  For
 * processes that mostly teacher-force (the teacher-logit cache).  The cross
 * keys' and values' projections are packed by dec_page_init regardless. */
int dec_pack(const DonutModel *m, DmErr *err);
/* (Packing is guarded by a lock, but the passes that read packed forms do
 * not take it: pack before threads share the model, as the cache stage
 * does when it opens the teacher.) */

int dec_page_init(DecPage *p, const DonutModel *m, const float *enc, int n_enc, DmErr *err);
void dec_page_free(DecPage *p);

int dec_seq_init(DecSeq *s, const DonutModel *m, int cap, DmErr *err);
void dec_seq_free(DecSeq *s);

/* Append tokens to B sequences: sequence b gets counts[b] tokens from
 * ids[b].  logits (may be NULL) receives, row by row in sequence order,
 * either every appended position (all_logits) or only the last position
 * of each sequence: [sum counts or B, vocab].  The probe is honoured only
 * when B == 1 (the forward command), hooks for any B (analysis). */
int dec_forward(const DecPage *p, DecSeq **seqs, const int32_t *const *ids, const int *counts,
                int B, float *logits, int all_logits, const DecHooks *hooks,
                const DmProbe *probe, DmErr *err);

/* dec_forward computing the LM head only where it is wanted: logits
 * receives, for each sequence b in order, the rows from[b] .. counts[b]-1
 * of its appended tokens ([sum (counts[b] - from[b]), vocab]).  The
 * teacher-logit cache needs the answer positions only, and so do the
 * analyses' intervention runs (with hooks; NULL for none). */
int dec_forward_rows(const DecPage *p, DecSeq **seqs, const int32_t *const *ids,
                     const int *counts, const int *from, int B, float *logits,
                     const DecHooks *hooks, DmErr *err);

/* dec_forward_rows from sub-layer `start` (3 * layer + kind; 3 * layers:
 * the final LayerNorm alone) on, for fresh sequences: x [sum counts,
 * d_model] is the residual stream entering that sub-layer, row by row in
 * sequence order.  The embedding and the sub-layers before are not run,
 * so the sequences' caches of those layers stay unwritten: sequences for
 * one teacher-forced pass, not for decoding on.  The analyses' runs whose
 * first intervention comes late start from the stream their clean run
 * recorded. */
int dec_forward_from(const DecPage *p, DecSeq **seqs, const int32_t *const *ids,
                     const int *counts, const int *from, int B, int start, const float *x,
                     float *logits, const DecHooks *hooks, DmErr *err);

#endif
