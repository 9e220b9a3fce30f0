/* calibrate.h - the input norms Wanda scores weights by (mask.h): for
 * every decoder linear of a model, ||X_j||_2 of each input feature j over
 * the tokens of calibration items, run teacher-forced through the model.
 * The items are those of a teacher-logit store (its questions, answers and
 * pages; the logits themselves are not used) over the corpus it was made
 * from, in the store's key order. */
#ifndef DM_CALIBRATE_H
#define DM_CALIBRATE_H

#include "worker/data/corpus.h"
#include "worker/train/train.h"

typedef struct CalibNorms {
    int n;          /* linears, in mask_linears order */
    int items;      /* calibration items run */
    float **xnorm;  /* [n][in of linear k] */
} CalibNorms;

/* The norms for model_dir from the first max_items (0: all) items of the
 * logit store at store_path over corpus cs.  The store's tokenizer must be
 * the model's. */
int calib_input_norms(const char *model_dir, const char *store_path, const CorpusSpec *cs,
                      int max_items, CalibNorms *out, DmErr *err);
void calib_free(CalibNorms *c);

#endif
