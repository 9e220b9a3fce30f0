/* train.h - training the decoder of a (possibly pruned) student, or the
 * whole model.
 *
 * The trainable parameters are every decoder weight except the token
 * embeddings and the tied LM head, which stay frozen with the encoder
 * (train_params_init); or every weight (train_params_init_all: the
 * encoder's gradients come from worker/train/swin_grad.h, the token
 * embeddings' from both of their uses here).
 * TrainParams holds them in one contiguous float32 buffer (so one
 * all-reduce sums every gradient) and repoints the model's decoder weights
 * into it, so the ordinary forward, generation and checkpoint writing see
 * the weights being trained.
 *
 * Loss of one item (one teacher-forced sequence), as Hugging Face computes
 * it for a batch of one: with a = answer_start and the loss positions
 * t = a .. T-2 (label y_t = ids[t+1]), n = T-1-a,
 *   ce    = mean_t  -log softmax(s_t)[y_t]
 *   kd    = tau^2 * mean_t KL(p_t || q_t), p = teacher at tau, q = softmax(s_t / tau)
 *   total = ce + alpha * kd
 * where the teacher is known only on its kept tokens plus the mass of the
 * rest (see KdTarget and docs/cache.md, on the missing mass). */
#ifndef DM_TRAIN_H
#define DM_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "worker/model/donut.h"
#include "worker/model/mask.h"

typedef struct TrainParam {
    char name[128];    /* Hugging Face name, e.g. decoder.model.decoder.layers.0.fc1.weight */
    size_t offset;     /* in floats, into TrainParams.data and .grad */
    size_t count;
    int ndim;
    int64_t shape[4];
} TrainParam;

/* How train_item_grad computes cross-attention.  With keys K = E Wk^T + bk
 * of the n_enc encoder rows E, the scores of head h are (q_h Wk_h) E^T up
 * to a per-row constant and its context is (P_h E) Wv_h^T + bv_h, so the
 * keys and values need not be formed: that costs ~heads * T * n_enc * d
 * per product instead of n_enc * d * heads * head_dim, less for sequences
 * shorter than head_dim (the full model's 4800 encoder rows make the K/V
 * products most of the work).  AUTO picks the cheaper; the others force
 * one (both are tested against the reference). */
typedef enum { TRAIN_CROSS_AUTO = 0, TRAIN_CROSS_KV, TRAIN_CROSS_FACTORED } TrainCross;

typedef struct TrainParams {
    int n;
    TrainParam *p;     /* binding order of the checkpoint loader */
    size_t total;      /* floats */
    float *data;       /* the weights; the model's decoder pointers point here */
    float *grad;       /* same layout; train_item_grad adds into it */
    TrainCross cross;  /* AUTO after train_params_init */
    uint8_t *keep;     /* [total]: 0 for weights a mask holds at zero (a
                        * masked student, mask.h); NULL when none */
    long long held;    /* how many */
    int whole;         /* 1: the encoder and token embeddings are trained too */
} TrainParams;

/* Copy the trainable decoder weights of m into one buffer and repoint m's
 * decoder (a model loaded for training, not shared) at it; tp must outlive
 * every later use of m's decoder.  Refuses an untied LM head and bfloat16
 * weights (their second copy would not follow training); pre-packed GEMM
 * forms are dropped and, with m->training set, never made again. */
int train_params_init(DonutModel *m, TrainParams *tp, DmErr *err);
/* The whole model instead (distill's "train": "all"): every encoder weight
 * (worker/train/swin_grad.h computes their gradients), the token
 * embeddings with the tied LM head, and the decoder weights above, in one
 * buffer in that order; the encoder's packed GEMM forms are dropped too.
 * tp->whole is 1. */
int train_params_init_all(DonutModel *m, TrainParams *tp, DmErr *err);
void train_params_free(TrainParams *tp);

/* Take the mask of a masked student (mask.h; NULL: none).  From then on
 * train_params_hold_mask keeps its pruned weights at exactly zero. */
void train_params_set_mask(TrainParams *tp, const DmMask *k);
/* Zero the gradient (grad: before clipping and the optimizer, so the
 * norm and AdamW's moments see only kept weights) or the weights (after
 * each optimizer step) wherever the mask prunes; nothing without a mask. */
void train_params_hold_mask(TrainParams *tp, int grad);
const TrainParam *train_param_find(const TrainParams *tp, const char *name);

/* The teacher at one loss position.  k == vocab means every logit is known
 * (ids may then be NULL: logits are in vocabulary order). */
typedef struct KdTarget {
    int k;
    const uint32_t *ids;   /* [k] */
    const float *logits;   /* [k] raw teacher logits */
    double lse;            /* log sum_v exp(z_v / tau) over the whole vocabulary */
    double lse_rest;       /* the same over the tokens not kept; NAN when unknown */
} KdTarget;

typedef struct TrainItem {
    const float *enc;      /* frozen encoder output [n_enc, d_model] */
    int n_enc;
    const int32_t *ids;    /* the whole sequence, prompt and answer */
    int T;
    int answer_start;      /* a */
    const KdTarget *teacher; /* [T-1-a], or NULL: no distillation term */
} TrainItem;

typedef struct LossCfg {
    double alpha;          /* weight of the KD term */
    double tau;            /* temperature */
} LossCfg;

typedef struct LossParts {
    double ce, kd, total;
    int positions;
} LossParts;

/* One loss position: student logits s [V], label, teacher t (NULL: no
 * distillation).  Gives ce = -log softmax(s)[label], kl = the KL above at
 * tau (the formula of kd_kl_topk, without the tau^2), and
 * g [V] = d(ce + alpha * tau^2 * kl) / ds in double. */
int train_loss_row(const float *s, int V, int label, const KdTarget *t, const LossCfg *cfg,
                   double *ce, double *kl, double *g, DmErr *err);

/* Forward and backward of one item with the current weights: adds
 * scale * d total / d w into tp->grad and, when enc_grad is not NULL,
 * adds scale * d total / d enc into enc_grad [n_enc, d_model] (the
 * encoder's backward starts from it when the whole model trains).  m must be the model whose decoder tp repoints;
 * the gradient of a weight is found at its offset from tp->data, so
 * threads may share data with their own grad buffers. */
int train_item_grad(const DonutModel *m, TrainParams *tp, const TrainItem *it,
                    const LossCfg *cfg, double scale, LossParts *out, float *enc_grad,
                    DmErr *err);

/* Wanda's calibration (mask.h): the teacher-forced forward of one item,
 * adding the squares of the inputs of every decoder linear per input
 * feature into sq[k][j] (k in mask_linears order, j < the linear's in):
 * the LayerNorm output for q, k, v of self-attention, q of
 * cross-attention and fc1; the encoder rows for k and v of
 * cross-attention; the heads' context for out_proj; GELU(fc1) for fc2.
 * No loss, no backward. */
int train_item_input_sq(const DonutModel *m, TrainParams *tp, const TrainItem *it, double **sq,
                        DmErr *err);

/* AdamW as torch.optim.AdamW (decoupled weight decay applied to every
 * parameter, bias correction, eps added after the square root). */
typedef struct AdamW {
    double beta1, beta2, eps, weight_decay;
    long step;             /* steps taken */
    size_t n;
    float *m, *v;          /* moments, [n] */
} AdamW;

int adamw_init(AdamW *o, size_t n, double beta1, double beta2, double eps, double weight_decay,
               DmErr *err);
void adamw_step(AdamW *o, float *w, const float *g, double lr);
void adamw_free(AdamW *o);

#endif
