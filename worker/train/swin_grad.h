/* swin_grad.h - the Swin encoder's training forward and backward.
 *
 * swin_tape_forward runs the encoder of worker/model/swin.c on one page
 * (same operations, plain float32 GEMMs on the current weights instead of
 * the packed forms) and keeps what the backward needs on a tape;
 * swin_tape_backward takes d loss / d encoder output and adds the
 * gradient of every encoder weight into tp->grad (tp made by
 * train_params_init_all) and, when asked, d loss / d pixel_values.
 *
 * Memory (SwinKeep): SWIN_KEEP_ALL keeps every block's activations;
 * SWIN_KEEP_INPUTS keeps only each block's input and recomputes one block
 * at a time during the backward (one more forward of the blocks, the
 * memory of one block instead of all).  Both give bit-identical
 * gradients.  swin_tape_bytes states what either needs. */
#ifndef DM_SWIN_GRAD_H
#define DM_SWIN_GRAD_H

#include <stddef.h>

#include "worker/model/donut.h"
#include "worker/train/train.h"

typedef enum { SWIN_KEEP_ALL = 0, SWIN_KEEP_INPUTS = 1 } SwinKeep;

typedef struct SwinTape SwinTape;

/* Forward of pixels [channels, H, W] into out [oh*ow, hidden_size]
 * (swin_output_grid), keeping the tape. */
int swin_tape_forward(const DonutModel *m, const float *pixels, int H, int W, SwinKeep keep,
                      float *out, SwinTape **tape, DmErr *err);

/* Backward of the tape's forward: dout [oh*ow, hidden_size] is d loss /
 * d out; adds d loss / d weight into tp->grad at each encoder weight's
 * offset (the model's encoder must point into tp->data) and, when dpix is
 * not NULL, stores d loss / d pixels [channels, H, W] there. */
int swin_tape_backward(const DonutModel *m, SwinTape *tape, const float *dout, TrainParams *tp,
                       float *dpix, DmErr *err);

void swin_tape_free(SwinTape **t);

/* Bytes of the tape of a page of H x W for that keep mode (the largest
 * block's recomputed activations included for SWIN_KEEP_INPUTS), without
 * the backward's transient scratch (about one block's size again). */
size_t swin_tape_bytes(const SwinConfig *c, int H, int W, SwinKeep keep);

/* ---- the window-attention kernels, exposed for their tests ----
 * One head of one window: q, k, v rows of N tokens (row stride ld, head
 * dim hd; q not yet scaled), bias [N, N] (relative position bias plus
 * the shift mask).  Forward: P [N, N] = softmax(scale q k^T + bias) and
 * ctx (row stride ld) = P v.  Backward from dctx: dq, dk, dv (row stride
 * ld, stored), dS [N, N] the gradient of the scores (= of the bias).
 * The _ref twins are the plain definitions in double precision. */
void swin_attn_head_fwd(int N, int hd, int ld, float scale, const float *q, const float *k,
                        const float *v, const float *bias, float *P, float *ctx);
void swin_attn_head_bwd(int N, int hd, int ld, float scale, const float *q, const float *k,
                        const float *v, const float *P, const float *dctx, float *dq, float *dk,
                        float *dv, float *dS);
void swin_attn_head_bwd_ref(int N, int hd, int ld, float scale, const float *q, const float *k,
                            const float *v, const float *P, const float *dctx, float *dq,
                            float *dk, float *dv, float *dS);

/* LayerNorm backward of rows of n: dx (+)= the input gradient from dy,
 * with xhat = (x - mean) * rstd of the forward; dg, db accumulate.  The
 * _ref twin in double precision. */
void swin_ln_bwd(const float *dy, int rows, int n, const float *g, const float *xhat,
                 const float *rstd, float *dg, float *db, float *dx);
void swin_ln_bwd_ref(const float *dy, int rows, int n, const float *g, const float *xhat,
                     const float *rstd, float *dg, float *db, float *dx);

#endif
