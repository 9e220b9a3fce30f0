/* mask.h - masked students: unstructured pruning of the decoder's linear
 * weights.
 *
 * A masked student is an ordinary model folder whose decoder weights are
 * dense but zero where pruned, plus mask.safetensors: for each masked
 * weight matrix (q_proj, k_proj, v_proj, out_proj of self_attn and
 * encoder_attn, fc1, fc2 of a decoder layer), a U8 tensor under the
 * weight's own name and shape, 1 where the weight is kept and 0 where it is
 * pruned.  The loader needs nothing more; training reads the mask and keeps
 * the pruned weights at zero (train_params_set_mask); `docmint params`
 * counts the non-zero weights.  Dense arithmetic does not change.
 *
 * Scoring, per output row as Sun et al. (2023) compare weights: in each
 * row of W [out, in], the floor(sparsity * in) weights of smallest score
 * are pruned (ties: the lower column first):
 *   magnitude  score |W_ij|
 *   wanda      score |W_ij| * ||X_j||_2, with ||X_j|| the norm of input
 *              feature j over calibration tokens. */
#ifndef DM_MASK_H
#define DM_MASK_H

#include <stdint.h>

#include "worker/model/donut.h"

#define DM_MASK_FILE "mask.safetensors"

typedef enum { DM_MASK_MAGNITUDE = 0, DM_MASK_WANDA = 1 } DmMaskMethod;

/* keep [out, in] for one weight matrix: 1 kept, 0 pruned.  xnorm [in] is
 * used by wanda only (NULL for magnitude). */
void mask_rows(const float *W, int out, int in, const float *xnorm, double sparsity,
               DmMaskMethod method, uint8_t *keep);

/* The mask of a model folder, or none. */
typedef struct DmMask {
    TensorFile *tf;    /* mask.safetensors; each tensor U8 [out, in] */
    long long pruned;  /* zeros over every masked matrix */
    long long masked;  /* entries of every masked matrix */
} DmMask;

/* Read dir/mask.safetensors for model m: *out NULL when the folder has
 * none.  Refused, naming the file and tensor: a name that is not a
 * decoder linear weight of m, a shape or dtype other than the weight's, a
 * value other than 0 and 1, and a pruned weight that is not zero in m. */
int mask_load(const DonutModel *m, const char *dir, DmMask **out, DmErr *err);
void mask_free(DmMask **k);
/* The keep bytes of the weight called name, or NULL when it is unmasked. */
const uint8_t *mask_find(const DmMask *k, const char *name, size_t *count);

/* Write the masked student of model_dir into out_dir (absent or empty):
 * every decoder linear weight of a present sub-layer pruned by `method` to
 * `sparsity` (0 <= sparsity < 1) in each row, model.safetensors with those
 * weights zero (float32; the other tensors as the file stores them),
 * mask.safetensors, and the folder's config, tokenizer, processor and
 * pruning files.  wanda needs xnorms: for each masked matrix in the order
 * mask_for_each gives them, its input norms; magnitude takes NULL. */
int mask_prune_checkpoint(const char *model_dir, DmMaskMethod method, double sparsity,
                          const float *const *xnorms, const char *out_dir, DmErr *err);

/* The decoder linears that a mask may cover, in a fixed order (layers,
 * then self q, k, v, out, cross q, k, v, out, fc1, fc2), with their Hugging
 * Face weight names; returns how many (at most DM_DEC_LINEARS_MAX). */
int mask_linears(DonutModel *m, DmLinear **lin, char (*names)[128]);

#endif
