/* donut.h - the Donut model: configuration, weights, and the entry points
 * of the encoder (Swin), the decoder (mBART) and generation.
 *
 * Read-only weights live in DonutModel; per-run state (KV caches, scratch)
 * lives in the objects of decoder.h, so many pages and questions share one
 * loaded model.  A pruned student is the same struct with fewer sub-layers
 * and heads. */
#ifndef DM_DONUT_H
#define DM_DONUT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"
#include "common/tensorfile.h"

#define DM_MAX_STAGES 8
#define DM_MAX_HEADS 64
#define DM_MAX_LAYERS 64

typedef struct SwinConfig {
    int image_h, image_w;  /* encoder.image_size as [H, W] */
    int patch;             /* patch_size */
    int channels;          /* num_channels */
    int embed_dim;
    int nstages;
    int depths[DM_MAX_STAGES];
    int heads[DM_MAX_STAGES];
    int window;
    float mlp_ratio;
    int qkv_bias;
    float ln_eps;
    int hidden_size;       /* embed_dim * 2^(nstages-1) */
} SwinConfig;

typedef struct MBartConfig {
    int vocab;
    int d_model;
    int layers;
    int heads;
    int ffn;
    int max_pos;           /* max_position_embeddings (table has max_pos + 2 rows) */
    int scale_embedding;
    int pad_id, bos_id, eos_id, unk_id;
    int decoder_start_id;  /* -1 when null */
    int forced_eos_id;     /* -1 when null */
    int tie_word_embeddings;
    float ln_eps;          /* 1e-5: mBART's LayerNorms use torch's default */
} MBartConfig;

typedef struct DonutConfig {
    SwinConfig enc;
    MBartConfig dec;
} DonutConfig;

typedef struct DmLinear {
    const float *w;       /* [out, in]; NULL once the model runs in bf16 and
                           * its float32 weights were let go */
    const float *b;       /* [out] or NULL */
    int out, in;
    const uint16_t *wbf;  /* [out, in] bfloat16 copy when the model runs in
                           * bf16, else NULL */
    void *packed;         /* the GEMM backend's pre-packed form, or NULL */
} DmLinear;

/* Arithmetic of the weights: float32 everywhere, or bfloat16 weights with
 * float32 accumulation. */
typedef enum { DM_PREC_F32 = 0, DM_PREC_BF16 = 1 } DmPrecision;

/* 1 when donut_set_precision also gives the encoder's linears a bf16 copy
 * (DmLinear.wbf) and lets their float32 weights go.  At 0 (the choice
 * made: one copy less, 0.15 GB at full size) the encoder keeps its float32
 * weights, its GEMM backend rounds them into its own packed bf16 blocks on
 * the first page, and the float32 pages of the mapped file are handed back
 * then, so the encoder's weights are resident once, as packed bf16. */
#define DM_SWIN_BF16 0

typedef struct DmNorm {
    const float *g, *b;
    int n;
} DmNorm;

typedef struct SwinBlock {
    DmNorm ln_before;
    DmLinear q, k, v;
    const float *rel_bias; /* relative_position_bias_table [(2w-1)^2, heads] */
    DmLinear proj;         /* attention.output.dense */
    DmNorm ln_after;
    DmLinear fc1, fc2;     /* intermediate.dense, output.dense */
} SwinBlock;

typedef struct SwinStage {
    int depth, dim, heads;
    SwinBlock *blocks;
    int has_merge;
    DmNorm merge_norm;     /* downsample.norm over 4*dim */
    DmLinear merge;        /* downsample.reduction [2*dim, 4*dim], no bias */
} SwinStage;

typedef struct SwinWeights {
    const float *patch_w;  /* [embed, channels, patch, patch] */
    const float *patch_b;  /* [embed] */
    DmNorm patch_norm;
    SwinStage stages[DM_MAX_STAGES];
} SwinWeights;

/* Sub-layer kinds, named as in the paper: S (self-attention), C (cross-
 * attention), M (feed-forward). */
enum { DM_SUB_S = 0, DM_SUB_C = 1, DM_SUB_M = 2 };

typedef struct DecAttn {
    int present;
    int nheads;                 /* heads kept */
    int head_ids[DM_MAX_HEADS]; /* original index of each kept head */
    DmNorm ln;
    DmLinear q, k, v, o;        /* q/k/v: [nheads*hd, d]; o: [d, nheads*hd] */
} DecAttn;

typedef struct DecFfn {
    int present;
    DmNorm ln;
    DmLinear fc1, fc2;
} DecFfn;

typedef struct DecLayer {
    DecAttn self, cross;
    DecFfn ffn;
} DecLayer;

typedef struct MBartWeights {
    const float *embed_tokens;    /* [vocab, d] */
    const float *embed_positions; /* [max_pos + 2, d] */
    DmNorm ln_emb;                /* layernorm_embedding */
    DecLayer layers[DM_MAX_LAYERS];
    DmNorm ln_final;              /* layer_norm */
    const float *lm_head;         /* [vocab, d]; = embed_tokens when tied */
    /* bfloat16 [vocab, d] of the two above when the model runs in bf16
     * (their float32 pointers are then NULL), else NULL */
    const uint16_t *embed_tokens_bf16, *lm_head_bf16;
    /* the LM head's packed form (dec_pack) in .packed, with the shape in
     * .out/.in; .w/.wbf are the weights it was packed from, valid only
     * while the model's precision is the one it was packed in */
    DmLinear head;
    int head_dim;
} MBartWeights;

typedef struct DonutModel {
    char *dir;
    DonutConfig cfg;
    SwinWeights enc;
    MBartWeights dec;
    TensorFile *weights;  /* the opened weight file (mapped) */
    float **owned;        /* float32 copies made at load (dtype conversion, cuts) */
    int nowned, capowned;
    DmPrecision precision;
    uint16_t *bf16;       /* the bfloat16 weights made from float32 ones (one
                           * block); BF16 tensors of the file are used in place */
    int training;         /* weights are being trained in place: no packed
                           * forms are made (they would go stale) */
    char fingerprint[17]; /* 64-bit hash (hex) over every weight as loaded, in
                           * binding order: the same weights give the same
                           * fingerprint from safetensors or pytorch_model.bin */
    /* the encoder's working memory (feature maps and scratch), kept from
     * page to page by swin_encode; enc_ws_busy is 1 while a call uses it */
    float *enc_ws;
    size_t enc_ws_n;      /* floats */
    atomic_int enc_ws_busy;
} DonutModel;

/* A probe receives named intermediate tensors during a forward pass (the
 * names of the golden files, without their case prefix).  It must copy what
 * it wants to keep. */
typedef struct DmProbe {
    void (*emit)(void *ctx, const char *name, int ndim, const int64_t *shape, const float *data);
    void *ctx;
} DmProbe;

/* ------------------------------------------------------------- checkpoint */

/* Parse config.json text of a VisionEncoderDecoder Donut model.  `what`
 * names the file in messages. */
int donut_config_parse(const char *json_text, const char *what, DonutConfig *cfg, DmErr *err);
/* The same from a file (a model's config.json, or a config alone). */
int donut_config_load(const char *path, DonutConfig *cfg, DmErr *err);

/* Load a checkpoint folder: config.json, then model.safetensors or
 * pytorch_model.bin, and a pruning record if the folder has one.
 * donut_load_as runs it in the given precision (donut_set_precision); in
 * bf16 the BF16 weight matrices of a safetensors file are used where they
 * lie, without a float32 copy. */
int donut_load(const char *dir, DonutModel **out, DmErr *err);
int donut_load_as(const char *dir, DmPrecision prec, DonutModel **out, DmErr *err);
void donut_free(DonutModel **m);

/* ---------------------------------------------------------- precision */

/* Switch a loaded float32 model to bf16 (DM_PREC_F32 leaves it as it is;
 * bf16 to float32 is refused): every decoder linear and the token
 * embedding / LM head get bfloat16 weights (round to nearest even), the
 * encoder's too when DM_SWIN_BF16, and the float32 matrices they replace
 * are let go: owned copies freed, pages of the mapped file returned to the
 * kernel (madvise), their pointers set to NULL.  Biases, LayerNorms,
 * position embeddings and everything kept float32 stay as they are.
 * The fingerprint does not change.  Training code needs DM_PREC_F32. */
int donut_set_precision(DonutModel *m, DmPrecision prec, DmErr *err);

/* Hand the whole pages of the mapped weight file that [p, p + bytes)
 * covers back to the kernel (madvise); nothing when p is not in the map.
 * Reading them again faults them back in from the file. */
void donut_drop_pages(const TensorFile *tf, const void *p, size_t bytes);

/* ------------------------------------------------------- packed weights
 * A linear may carry a pre-packed form for the GEMM backend (kern_gemm.h):
 * the encoder packs all of its linears on its first page, the decoder its
 * cross keys and values on its first page (dec_page_init) and everything
 * else on request (dec_pack).  Blocks join the model's owned buffers.
 * Packing and the owned list are guarded by one process-wide lock. */
void donut_pack_lock(void);
void donut_pack_unlock(void);
/* Add p to the model's owned buffers (freed by donut_free). */
int donut_own(DonutModel *m, void *p, DmErr *err);
/* 1 when l has a packed form in that precision. */
int donut_packed_as(const DmLinear *l, int bf16);
/* Free l's packed form, if any. */
void donut_unpack_linear(DonutModel *m, DmLinear *l);
/* (Re)pack l from its float32 weights, or its bfloat16 ones when it has
 * them, in the given precision; the mapped float32 pages it came from are
 * handed back to the kernel. */
int donut_pack_linear(DonutModel *m, DmLinear *l, int bf16, DmErr *err);

/* The present linears of the decoder's layers (self and cross q, k, v, o,
 * fc1, fc2), at most DM_DEC_LINEARS_MAX; returns how many. */
#define DM_DEC_LINEARS_MAX (10 * DM_MAX_LAYERS)
int donut_dec_linears(DonutModel *m, DmLinear **out);
/* Free the packed forms of the decoder's linears and LM head. */
void donut_unpack_decoder(DonutModel *m);

/* "fp32" / "bf16" to DmPrecision (0, or -1 for anything else) and back. */
int donut_precision_parse(const char *s, DmPrecision *out);
const char *donut_precision_name(DmPrecision p);

/* y[M, out] = x[M, in] W^T + b with whichever weights l holds (bfloat16
 * when wbf is set, else float32): for more rows than the streaming kernels
 * take (kern_small_m), from l's packed form when it has one in that
 * precision. */
void donut_linear(const DmLinear *l, const float *x, int M, float *y);
/* The same followed by the exact GELU (fused into the GEMM when packed). */
void donut_linear_gelu(const DmLinear *l, const float *x, int M, float *y);

/* Write config.json (a copy of config_path, validated) and a
 * model.safetensors of random weights for that config into dir. */
int donut_write_random(const char *config_path, const char *dir, uint64_t seed, DmErr *err);

/* ---------------------------------------------------------------- encoder */

/* Number of encoder output tokens and their grid for an input of H x W. */
void swin_output_grid(const SwinConfig *c, int H, int W, int *oh, int *ow);

/* Run the Swin encoder on one image, pixels [channels, H, W] (normalised).
 * out receives [oh*ow, hidden_size].  probe may be NULL; it receives
 * encoder.hidden_states.N, encoder.stage_outputs_before_downsampling.N,
 * encoder.attentions.N (last block of each stage) and
 * encoder.last_hidden_state.  Its working memory is kept with the model for
 * the next page; threads may call it on one model at once (one of them
 * uses the kept memory, the others private memory of their own). */
int swin_encode(const DonutModel *m, const float *pixels, int H, int W, float *out,
                const DmProbe *probe, DmErr *err);

/* Give back the encoder's working memory that swin_encode keeps with the
 * model (about 260 MB at the full-size config on a 2560x1920 page), for a
 * caller that encodes no more pages for a while; the next encode allocates
 * it again.  Nothing happens while an encode holds it.  donut_free calls it. */
void swin_free_workspace(const DonutModel *m);

#endif
