/* plan.h - pruning plans of the mBART decoder, pruned checkpoints, and
 * parameter counts per module.
 *
 * A plan names the decoder sub-layers that remain (S<l> self-attention,
 * C<l> cross-attention, M<l> feed-forward) and the heads that remain in
 * each attention sub-layer, always by their index in the unpruned teacher.
 * Two spellings are read (schemas/plan.schema.json):
 *   {"keep": ["S1", "C0", "C1", "M0"], "heads": ["C1.H0", "C1.H2"]}
 *     keep lists every sub-layer that remains (the others go); heads lists
 *     kept heads as "X<l>.H<h>", and an attention sub-layer with none
 *     listed keeps the heads it has;
 *   {"keep": {"S0": false, ...}, "heads": {"C1": [0, 2]}}
 *     the form of a student's pruning.json: sub-layers not named stay as
 *     they are.
 * A plan is read against a base structure (the model it prunes): it may
 * only remove, so pruning a student again composes, and naming a sub-layer
 * or head the base no longer has is an error. */
#ifndef DM_PLAN_H
#define DM_PLAN_H

#include <jansson.h>

#include "worker/model/donut.h"

/* The structure of a decoder: which sub-layers remain, which heads. */
typedef struct DmPlan {
    int layers, heads;                     /* of the teacher (config.json) */
    int keep[DM_MAX_LAYERS][3];            /* [l][DM_SUB_S/C/M] */
    int nheads[DM_MAX_LAYERS][2];          /* [l][DM_SUB_S/C] kept heads */
    int head_ids[DM_MAX_LAYERS][2][DM_MAX_HEADS]; /* ascending teacher indices */
    char teacher_fingerprint[17];          /* of the unpruned weights; "" unknown */
} DmPlan;

/* Every sub-layer and head of a decoder of this config. */
void plan_full(const MBartConfig *d, DmPlan *p);

/* Read a plan from doc (either spelling), validated against the embedded
 * schema and then against the base structure.  `what` names the file in
 * messages.  out may not alias base. */
int plan_from_json(json_t *doc, const char *what, const DmPlan *base, DmPlan *out, DmErr *err);

/* The same from a file. */
int plan_load(const char *path, const DmPlan *base, DmPlan *out, DmErr *err);

/* The structure of a loaded model, and the reverse. */
void plan_of_model(const DonutModel *m, DmPlan *p);
void plan_apply(const DmPlan *p, DonutModel *m);

/* Is this the teacher's structure (nothing removed)? */
int plan_is_full(const DmPlan *p);

/* The pruning.json form: every sub-layer in "keep", "heads" for attention
 * sub-layers that lost heads, and the teacher's fingerprint when known.
 * A new reference. */
json_t *plan_to_json(const DmPlan *p);

/* Copy the files of a model folder that a student keeps as they are
 * (config, image processor, tokenizer, generation and prompt settings;
 * with_pruning: pruning.json too) from src to dst, those that exist. */
int prune_copy_side_files(const char *src, const char *dst, int with_pruning, DmErr *err);

/* Write the student of model_dir under plan_path into out_dir: weights
 * physically cut, encoder and embeddings as they are, config, tokenizer and
 * processor files copied, the resulting structure in pruning.json.  Written
 * to a temporary folder beside out_dir, then renamed; out_dir must be
 * absent or empty.  The resulting structure is returned in *result when
 * result is not NULL. */
int prune_checkpoint(const char *model_dir, const char *plan_path, const char *out_dir,
                     DmPlan *result, DmErr *err);

/* ------------------------------------------------------- parameter counts */

enum { DM_PMOD_ENCODER, DM_PMOD_TOKENS, DM_PMOD_POSITIONS, DM_PMOD_UNEMBED, DM_PMOD_NORMS,
       DM_PMOD_FIXED }; /* fixed rows before the sub-layers */

typedef struct ParamRow {
    char name[16];      /* "encoder", "S0", ... */
    long long count;    /* parameters of the (pruned) model */
    long long teacher;  /* parameters of the same module in the teacher */
    int present;        /* 0: removed sub-layer (count 0) */
    int nheads;         /* attention: heads kept; else 0 */
} ParamRow;

typedef struct ParamTable {
    int nrows;          /* DM_PMOD_FIXED + 3 * layers */
    ParamRow rows[DM_PMOD_FIXED + 3 * DM_MAX_LAYERS];
    int tied;           /* unembedding tied to the token embedding (counted once) */
    long long decoder, teacher_decoder, encoder, total;
    /* the decoder's layers alone (the S/C/M rows): the paper's "decoder",
     * the base of its shares and budgets */
    long long layers, teacher_layers;
} ParamTable;

/* Parameters per module of a model of config c with structure p, from the
 * shapes the config implies (the loader checks the file has exactly those);
 * sub-layer rows include their LayerNorm, the norms row holds
 * layernorm_embedding and the final layer_norm. */
void params_count(const DonutConfig *c, const DmPlan *p, ParamTable *t);

#endif
