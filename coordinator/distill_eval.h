/* distill_eval.h - answers scored while the distill stage trains (job key
 * distill.eval): the model answers a fixed set of questions greedily, as
 * the infer stage does, and their ANLS, overall and by question type,
 * becomes a point of OUTPUT/val.jsonl and of OUTPUT/val_anls.png. */
#ifndef DM_DISTILL_EVAL_H
#define DM_DISTILL_EVAL_H

#include <jansson.h>
#include <stdio.h>

#include "common/dm_error.h"
#include "kernels/comm/coll.h"
#include "worker/image/preprocess.h"
#include "worker/stages/qa.h"

typedef struct DistillEval DistillEval;

/* A run resumed at `step` keeps the lines of the JSON-lines log at path
 * whose "step" is at most step (none when step is 0: a new run), calling
 * each(ctx, step, line) for every one (a non-zero return drops the line),
 * then opens the log for appending (*append).  The file is rewritten
 * through PATH.tmp and a rename. */
int distill_jsonl_keep(const char *path, long step, int (*each)(void *ctx, long s, json_t *o),
                       void *ctx, FILE **append, DmErr *err);

/* Load the corpus (DocVQA format; every chosen question needs an answer)
 * and take its first max_q questions in file order (0: all). */
int distill_eval_open(const char *corpus_path, int max_q, int pdf_dpi, DistillEval **e,
                      DmErr *err);
void distill_eval_free(DistillEval **e);
int distill_eval_questions(const DistillEval *e);

/* Rank 0: OUTPUT/val.jsonl kept up to step (the lines of a run resumed
 * from an earlier checkpoint are dropped) and its points loaded for the
 * plot. */
int distill_eval_log_open(DistillEval *e, const char *output, long step, DmErr *err);

/* Collective: every rank answers the questions of its pages (page i goes
 * to rank i % size) with the model as it is now; the sums are all-reduced.
 * Rank 0 then appends the step's line to val.jsonl, redraws val_anls.png
 * and sets *anls (every rank gets it). */
int distill_eval_score(DistillEval *e, const QaModel *qa, const PreprocConfig *pc, Coll *coll,
                       int rank, int size, long step, double *anls, DmErr *err);

/* "ANLS 0.4312 (form 0.51, table 0.33, ...)" of the last scoring. */
const char *distill_eval_summary(const DistillEval *e);

#endif
