/* stage_infer.h - the `infer` stage on one shard: for each page, load the
 * image, run the Donut processor and the encoder once, then decode all its
 * questions together (the sequence of `docmint ask`).
 *
 * A page that cannot be loaded or encoded gives one ErrorRecord per
 * question (stage "infer", reason = the error); a question whose prompt is
 * unusable (empty, too long) gives one ErrorRecord and the page's other
 * questions are answered.  Only running out of memory fails the shard. */
#ifndef DM_STAGE_INFER_H
#define DM_STAGE_INFER_H

#include <stdatomic.h>

#include "common/dm_error.h"
#include "worker/model/donut.h"
#include "records.pb-c.h"

typedef struct InferStage InferStage;

/* Load the model once, in precision prec: checkpoint, tokenizer,
 * preprocessor_config.json.  max_length 0 keeps the model's
 * max_position_embeddings. */
int infer_open(const char *model_dir, int max_length, int pdf_dpi, DmPrecision prec,
               InferStage **out, DmErr *err);
void infer_close(InferStage **st);

/* The generation limit in force (max_length, or the model's positions). */
int infer_max_length(const InferStage *st);

/* Hex fingerprints of the loaded weights and tokenizer. */
const char *infer_fingerprint(const InferStage *st);
const char *infer_tokenizer_fingerprint(const InferStage *st);

/* Compute a shard into res (zeroed by the caller with
 * docmint__result__init; free its contents with infer_result_clear).
 * Stops between pages when *cancel becomes non-zero (returns -1, "cancelled"). */
/* What a correct result of this model can hold: the coordinator checks
 * every worker's result against these. */
typedef struct InferLimits {
    int vocab;           /* token ids are below this */
    int max_length;      /* generated ids per answer, at most (the job's max_length) */
    int max_pos;         /* tokens of a whole sequence, at most */
    int max_piece_bytes; /* the longest token piece: answer bytes <= max_length x this */
    int enc_dim;         /* the encoder's output width (features) */
    int enc_tokens_max;  /* more encoder tokens than this cannot be (features) */
    int dec_layers, dec_heads; /* the decoder's (analysis records) */
} InferLimits;
void infer_limits(const InferStage *st, InferLimits *out);

int infer_shard(InferStage *st, const Docmint__Shard *shard, Docmint__Result *res,
                const atomic_int *cancel, DmErr *err);

/* Free what infer_shard put in res and re-initialise it. */
void infer_result_clear(Docmint__Result *res);

#endif
