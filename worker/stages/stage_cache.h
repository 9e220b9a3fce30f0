/* stage_cache.h - the `cache-logits` stage on one shard: for each page,
 * one encoder pass and one DecPage (cross-attention K/V), then for each
 * question and gold answer one teacher-forced pass over the Donut training
 * sequence (the page's sequences forwarded together)
 *   <s_docvqa><s_question>{q}</s_question><s_answer>{a}</s_answer></s>
 * (answers exactly "yes"/"no" written <yes/>/<no/>, as the Donut recipe
 * does; tokenized without special tokens), keeping per answer position the
 * top-k raw logits, their ids and the log-sum-exp at each temperature
 * (LogitRecord in schemas/records.proto defines the positions).
 *
 * A page that cannot be loaded or encoded gives one ErrorRecord per
 * question; a question without gold answers gives one; an answer whose
 * sequence does not fit the model gives one with item "QID/INDEX" (the
 * question's other answers are kept).  Only running out of memory fails
 * the shard.
 *
 * A page sent with `features` also gives its encoder output as a
 * FeatureRecord (float16; logit_store.h reads it back). */
#ifndef DM_STAGE_CACHE_H
#define DM_STAGE_CACHE_H

#include <stdatomic.h>

#include "common/dm_error.h"
#include "worker/model/decoder.h"
#include "worker/stages/qa.h"
#include "records.pb-c.h"

#define CACHE_MAX_TEMPS 16

typedef struct CacheOpts {
    int top_k;                /* kept logits per position; 0 = full */
    int n_temps;              /* temperatures[0] is 1 */
    double temps[CACHE_MAX_TEMPS];
    int first_answer_only;
    int pdf_dpi;
} CacheOpts;

typedef struct CacheStage CacheStage;

int cache_open(const char *model_dir, const CacheOpts *o, CacheStage **out, DmErr *err);
void cache_close(CacheStage **st);
const char *cache_fingerprint(const CacheStage *st);
const char *cache_tokenizer_fingerprint(const CacheStage *st);

/* Compute a shard into res (zeroed by the caller with
 * docmint__result__init; free with cache_result_clear).  Stops between
 * pages when *cancel becomes non-zero (-1, "cancelled"). */
int cache_shard(CacheStage *st, const Docmint__Shard *shard, Docmint__Result *res,
                const atomic_int *cancel, DmErr *err);
void cache_result_clear(Docmint__Result *res);

/* The training sequence of (question, answer): malloc'ed ids, their count
 * and the index of <s_answer>.  Fails when it does not fit the model. */
int cache_sequence(const QaModel *qa, const char *question, const char *answer, int32_t **ids,
                   int *n, int *answer_start, DmErr *err);

/* One teacher-forced pass: *logits (malloc'ed) = [n, vocab]. */
int cache_forward(const DonutModel *m, const DecPage *page, const int32_t *ids, int n,
                  float **logits, DmErr *err);

/* The same passes for ns sequences of one page at once (the page's
 * teacher-forced block: each weight is read once for all their rows), with
 * the LM head only at the cached positions: *logits (malloc'ed) holds, for
 * each sequence in order, rows a0[i] .. n[i]-2 ([sum (n[i]-1-a0[i]),
 * vocab]).  cache_forward is its plain twin. */
int cache_forward_page(const DonutModel *m, const DecPage *page, int ns,
                       const int32_t *const *ids, const int *n, const int *a0, float **logits,
                       DmErr *err);

/* Fill r (initialised by the caller; its buffers malloc'ed, freed by
 * cache_record_clear) from the logits of a sequence at its cached
 * positions: row p of logits is position answer_start + p. */
int cache_fill_record(const CacheOpts *o, int vocab, const int32_t *ids, int n, int answer_start,
                      const float *logits, Docmint__LogitRecord *r, DmErr *err);
void cache_record_clear(Docmint__LogitRecord *r);
/* cache_fill_record for the ns sequences of one block (ids, n, a0 and the
 * logits as cache_forward_page takes and returns them) into recs[0..ns-1],
 * one record per thread. */
int cache_fill_block(const CacheOpts *o, int vocab, int ns, const int32_t *const *ids,
                     const int *n, const int *a0, const float *logits,
                     Docmint__LogitRecord *const *recs, DmErr *err);

#endif
