/* distill_ckpt.h - checkpoints of the distill stage.
 *
 * A checkpoint is a folder that loads as a model (donut_load) and resumes
 * training:
 *   config.json, preprocessor_config.json, tokenizer files, pruning.json
 *       copied from the student's folder;
 *   model.safetensors   every tensor of the student under its Hugging Face
 *       name: the trained weights (float32; the decoder's, or all of them
 *       with "train": "all", the tied LM head included) and the frozen rest as
 *       the student's file holds them (tensors of removed sub-layers left
 *       out);
 *   optimizer.safetensors  AdamW's exp_avg.NAME and exp_avg_sq.NAME per
 *       trainable tensor (float32, the parameter's shape), metadata "step";
 *   state.json  where training stands (distill.c writes it);
 *   distill.json  the teacher and tokenizer fingerprints of the logit store
 *       the student learnt from (a later distill from this folder checks
 *       its store against them).
 * It is written into DIR.tmp-PID and renamed to DIR, so a folder named
 * DIR is always complete. */
#ifndef DM_DISTILL_CKPT_H
#define DM_DISTILL_CKPT_H

#include <jansson.h>

#include "worker/train/train.h"

/* Write the folder dir (replacing an older one of the same name). */
int distill_ckpt_write(const char *dir, const DonutModel *m, const TrainParams *tp,
                       const AdamW *opt, const json_t *state, const json_t *record, DmErr *err);

/* The newest complete OUTPUT/checkpoints/step-N: 1 and its path and N, 0
 * when there is none, -1 on error. */
int distill_ckpt_newest(const char *output, char *path, size_t n, long *step, DmErr *err);

/* Read a checkpoint's trained weights into tp->data, AdamW's moments into
 * opt (allocated for tp->total) and its state.json. */
int distill_ckpt_read(const char *dir, TrainParams *tp, AdamW *opt, json_t **state, DmErr *err);

/* Delete all but the newest `keep` step-N folders (keep 0: none deleted). */
int distill_ckpt_prune(const char *output, int keep, DmErr *err);

/* Remove what a killed writer left in output: checkpoints/step-N.tmp-PID
 * and student.tmp-PID folders; a student.old-PID goes back to student when
 * the kill came between the two renames, else it is deleted.  Call before
 * writing (one writer per output folder). */
int distill_ckpt_clean(const char *output, DmErr *err);

#endif
