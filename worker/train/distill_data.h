/* distill_data.h - the training items of the distill stage: one per
 * (question, gold answer) record of a teacher-logit store, with the page
 * it is asked of, and the frozen encoder output of those pages.
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
    TrainItem it;
} DistillLoaded;

int distill_item_load(DistillData *d, int i, DistillLoaded *out, DmErr *err);
void distill_item_clear(DistillLoaded *l);

/* The encoder output of page p (computed or from the cache); valid until
 * the next call. */
int distill_page_features(DistillData *d, int p, const float **enc, int *n_enc, DmErr *err);

#endif
