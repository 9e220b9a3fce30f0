/* flops.h - multiply-adds per module of a Donut model: one page through
 * the Swin encoder, then m new tokens generated greedily after an n-token
 * prompt.  docs/flops.md derives every formula.
 *
 * Counting: one multiply-add (a*b + c) counts 1, as in the paper's
 * Table 1; FLOPs that count the multiply and the add apart are twice these.
 * Only the products with weights and the attention products (q k^T and
 * P v) are counted; biases, LayerNorms, softmax, GELU, the embedding
 * lookups and the residual adds are not (they add under 0.5%).
 *
 * Two conventions for the decoder:
 *   DM_FLOPS_CACHED  docmint's real cost: the cross-attention keys and
 *     values over the encoder tokens once per page, the prompt as one pass
 *     (its self-attention over the full n x n square, as the GEMM computes
 *     it), then m - 1 one-token steps against the KV cache; the LM head on
 *     the last position of each pass (m rows).
 *   DM_FLOPS_PAPER   the paper's, as its table can be reconstructed: no
 *     cache at all; every pass recomputes the whole prefix, the cross keys
 *     and values, and the LM head at every position.  Its rows fit m - 1
 *     such passes over prefixes of n, n+1, ..., n+m-2 tokens (for n = 42,
 *     m = 35: 34 passes, 1,989 positions), so that is what is counted.
 * The encoder is counted the same way in both. */
#ifndef DM_FLOPS_H
#define DM_FLOPS_H

#include "worker/model/plan.h"

typedef enum { DM_FLOPS_CACHED = 0, DM_FLOPS_PAPER = 1 } DmFlopsConv;

typedef struct FlopsRow {
    char name[16];       /* as the ParamTable row of the same index */
    long long macs;      /* multiply-adds of the module */
    long long per_head;  /* attention sub-layers: of one kept head; else 0 */
    long long cross_kv;  /* C<l>: the part that is the keys and values over
                          * the encoder tokens; else 0 */
} FlopsRow;

typedef struct FlopsTable {
    DmFlopsConv conv;
    int prompt, new_tokens;  /* n, m */
    int enc_tokens;          /* encoder output tokens of a page */
    long long passes;        /* decoder passes counted */
    long long positions;     /* decoder positions computed, summed over passes */
    int nrows;               /* as ParamTable: DM_PMOD_FIXED + 3 * layers */
    FlopsRow rows[DM_PMOD_FIXED + 3 * DM_MAX_LAYERS];
    long long layers;        /* the S/C/M rows together */
    long long decoder;       /* layers + unembedding */
    long long total;         /* encoder + decoder */
} FlopsTable;

/* Multiply-adds of the Swin encoder on one page of the config's image
 * size, as docmint (and HF) compute it: window attention over the map
 * padded to whole windows, the window shrunk to the map when the map is
 * smaller, patch merging over the map padded to even sides. */
long long flops_encoder(const SwinConfig *c, int *enc_tokens);

/* The table for config c with structure p, n prompt tokens and m new
 * tokens (n >= 1, m >= 1; the caller checks n + m - 1 <= max positions). */
void flops_count(const DonutConfig *c, const DmPlan *p, int n, int m, DmFlopsConv conv,
                 FlopsTable *t);

#endif
