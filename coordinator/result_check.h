/* result_check.h - what a worker's result for a shard may hold.
 *
 * The coordinator stores nothing a worker sends before this check passes.
 * Limits come from the job and the model the coordinator loaded itself:
 *   - every record names a question of the shard (features: a page of it),
 *     and an infer shard has at most one record per question;
 *   - answers: at most max_length generated ids, each below the vocabulary,
 *     a finite mean log-probability that is not positive, finite
 *     non-negative seconds, and at most max_length x (longest token piece)
 *     bytes of text;
 *   - teacher-logit records: the gold answer the coordinator holds for
 *     (question, answer index), a sequence within the model's positions,
 *     ids below the vocabulary, the job's k (or the whole vocabulary), id
 *     width and temperatures, the sizes logit_record_validate wants, and
 *     finite shifts, log-sum-exps and logits;
 *   - features: the encoder's width, no more tokens than its input allows;
 *   - error records: stage, item and reason of bounded length, an item that
 *     names the question ("QID" or "QID/INDEX");
 *   - the whole message: at most the sum of the largest records the shard's
 *     questions can have (cache-logits records grow with top-k and length).
 * A result that breaks any of these is rejected whole, with the reason. */
#ifndef DM_RESULT_CHECK_H
#define DM_RESULT_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "worker/data/corpus.h"
#include "worker/stages/stage_infer.h"
#include "records.pb-c.h"

#define RESULT_REASON_MAX 2048 /* bytes of an error record's reason */
#define RESULT_STAGE_MAX 32
#define RESULT_ITEM_MAX 64

typedef struct ResultLimits {
    int cache;           /* stage cache-logits (else infer) */
    int analyze;         /* stage analyze (records per answer, as cache-logits) */
    InferLimits m;       /* of the job's model */
    int top_k;           /* the job's (0: full) */
    int n_temps;
    double temps[16];
    int keep_features;
} ResultLimits;

/* One question of the shard, sorted by qid for result_check. */
typedef struct ShardQuestion {
    int64_t qid;
    const CorpusQuestion *cq;
    const char *page_id;
    const char *page_path; /* its image, as sent */
    int taken;             /* scratch */
} ShardQuestion;

int shard_question_cmp(const void *a, const void *b);

/* The largest message a correct result for these questions can be. */
size_t result_max_bytes(const ResultLimits *lim, const ShardQuestion *qs, int nq, int npages);

/* 0 when r may be stored; -1 with the reason in why.  bytes: the message's
 * size on the wire.  qs sorted by qid (shard_question_cmp); their taken
 * flags are left at 0. */
int result_check(const ResultLimits *lim, const Docmint__Result *r, size_t bytes,
                 ShardQuestion *qs, int nq, int npages, char *why, size_t whyn);

#endif
