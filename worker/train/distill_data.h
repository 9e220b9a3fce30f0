/* distill_data.h - the training items of the distill stage: one per
 * (question, gold answer) record of a teacher-logit store (or, without a
 * store, per gold answer of the corpus), with the page it is asked of,
 * and the frozen encoder output of those pages (their pixel values when
 * the whole model trains).
 *
 * Items are the store's records in key order (questionId, answer index),
 * so every rank numbers them the same way; the records themselves are read
 * from the store when an item is trained (a rank holds only keys and
 * sizes).  The encoder is frozen, so a page's output is computed once and
 * kept while it fits the cache budget (least recently used pages leave
 * first); the feature store of cache-logits (keep_features) is looked up
 * before the encoder runs. */
#ifndef DM_DISTILL_DATA_H
#define DM_DISTILL_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "worker/data/corpus.h"
#include "common/logit_store.h"
#include "worker/image/preprocess.h"
#include "worker/train/train.h"

typedef struct DistillItem {
    unsigned char key[LOGIT_KEY_LEN];
    int page;       /* index into the corpus */
    int tokens;     /* sequence length T */
    int positions;  /* loss positions T - 1 - answer_start */
    int32_t *ids;   /* gold items (no store): the sequence, else NULL */
    int answer_start;
} DistillItem;

typedef struct DistillData DistillData;

/* Read the item list of store s (a logit store already checked against
 * the student) and map each record's page_id to a page of corpus c, which
 * must stay alive.  Every record must have the student's vocabulary and
 * temperature tau, fit the model's positions and name a corpus page; the
 * first that does not is an error naming the store and the record.  A
 * damaged record (its checksum fails, or it does not parse as a
 * well-formed LogitRecord of its key) is an error too, unless skip_damaged:
 * then it is left out and counted (distill_data_skipped). */
int distill_data_open(Store *s, const Corpus *c, const DonutModel *m, const PreprocConfig *pc,
                      int pdf_dpi, double tau, size_t cache_bytes, int skip_damaged,
                      DistillData **out, DmErr *err);
long distill_data_skipped(const DistillData *d);
void distill_data_close(DistillData **d);

/* Items without a teacher: every (question, gold answer) of corpus c, in
 * corpus order, keyed (questionId, answer index) like a logit store's,
 * each sequence made by seq (the caller's tokenizer: prompt and answer,
 * *answer_start the position of <s_answer>).  Items are trained on
 * cross-entropy alone (no teacher).  An answer seq refuses is an error
 * naming the question. */
typedef int (*DistillSeqFn)(void *ctx, const char *question, const char *answer, int32_t **ids,
                            int *n, int *answer_start, DmErr *err);
int distill_data_open_gold(const Corpus *c, const DonutModel *m, const PreprocConfig *pc,
                           int pdf_dpi, size_t cache_bytes, DistillSeqFn seq, void *ctx,
                           DistillData **out, DmErr *err);

/* Whole-model training: the encoder is trained, so no encoder output is
 * cached or read from the feature store; distill_item_load gives the
 * page's pixel values instead (cached within the same budget). */
void distill_data_set_whole(DistillData *d);

/* A student that words its prompt differently from the teacher (its
 * folder lowercases questions: qa.h): fn gives the student's prompt ids
 * for a question, ending with <s_answer>, and each store item's sequence
 * becomes that prompt followed by the record's answer tokens; the
 * teacher's targets stay with the answer positions they belong to. */
typedef int (*DistillPromptFn)(void *ctx, const char *question, int32_t **ids, int *n,
                               DmErr *err);
void distill_data_set_prompt(DistillData *d, DistillPromptFn fn, void *ctx);

int distill_data_count(const DistillData *d);
const DistillItem *distill_data_item(const DistillData *d, int i);
/* Pages encoded so far, read from the feature store, and cache hits (for
 * the log). */
void distill_data_cache_stats(const DistillData *d, long *encoded, long *stored, long *hits);

/* One item made ready for train_item_grad: it.teacher points into the
 * buffers here and it.enc into the page cache (valid until the next
 * distill_item_load of this DistillData). */
typedef struct DistillLoaded {
    Docmint__LogitRecord *rec;
    int32_t *ids;
    KdTarget *kt;
    uint32_t *kid;
    float *klogits;
    TrainItem it;          /* it.enc NULL in whole-model mode */
    const float *pix;      /* whole-model mode: pixels [3, H, W] (in the cache) */
    int H, W;
} DistillLoaded;

int distill_item_load(DistillData *d, int i, DistillLoaded *out, DmErr *err);
void distill_item_clear(DistillLoaded *l);

/* The encoder output of page p (computed or from the cache); valid until
 * the next call. */
int distill_page_features(DistillData *d, int p, const float **enc, int *n_enc, DmErr *err);

#endif
