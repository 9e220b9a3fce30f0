/* logit_store.h - reading and checking a teacher-logit store (kind
 * "logits", made by the cache-logits stage; layout: LogitRecord in
 * schemas/records.proto).
 *
 * Every reader of such a store (cache-check, later the distill stage) calls
 * logit_store_check first: logits are only meaningful for the teacher and
 * tokenizer that made them, so a mismatch stops the reader. */
#ifndef DM_LOGIT_STORE_H
#define DM_LOGIT_STORE_H

#include <stdint.h>

#include "common/dm_error.h"
#include "records.pb-c.h"
#include "common/store.h"

#define LOGIT_KEY_LEN 10

/* Key of a LogitRecord: questionId 8-byte big-endian + answer index
 * 2-byte big-endian, so a question's answers sort together. */
void logit_key(int64_t qid, unsigned answer_index, unsigned char key[LOGIT_KEY_LEN]);
void logit_key_parse(const unsigned char key[LOGIT_KEY_LEN], int64_t *qid, unsigned *answer_index);

/* The store must be a logit store made by this teacher and tokenizer (hex
 * fingerprints; NULL or "" skips that check).  A mismatch is an error that
 * says which (teacher or tokenizer) and gives both fingerprints. */
int logit_store_check(Store *s, const char *teacher_fp, const char *tok_fp, DmErr *err);

/* Serialise / parse (free with logit_record_free). */
int logit_record_pack(const Docmint__LogitRecord *r, uint8_t **buf, size_t *len, DmErr *err);
Docmint__LogitRecord *logit_record_unpack(const void *buf, size_t len, DmErr *err);
void logit_record_free(Docmint__LogitRecord **r);

/* Shape checks of an unpacked record (sizes of the byte fields agree with
 * k, positions and temperatures).  Returns 0 or an error naming the key. */
int logit_record_validate(const Docmint__LogitRecord *r, DmErr *err);

/* Cached positions of a record: len(token_ids) - 1 - answer_start. */
int logit_record_positions(const Docmint__LogitRecord *r);
/* Slot i of position p: its raw logit (shift + the float16 value) and
 * token id. */
double logit_record_value(const Docmint__LogitRecord *r, int p, int i);
uint32_t logit_record_id(const Docmint__LogitRecord *r, int p, int i);
/* Index of temperature T in the record (exact float match after float32
 * rounding), or -1. */
int logit_record_temp_index(const Docmint__LogitRecord *r, double T);

/* ---- the feature store: per-page encoder outputs (FeatureRecord in the
 * "features" database, key = page id as UTF-8), kept by a cache-logits
 * job with keep_features so a student can be trained without running the
 * encoder again. */

/* A FeatureRecord of a [tokens, dim] float32 encoder output, rounded to
 * float16 (free with feature_record_free).  On failure err says why. */
Docmint__FeatureRecord *feature_record_make(const char *page_id, const float *enc, int tokens,
                                            int dim, DmErr *err);
void feature_record_free(Docmint__FeatureRecord **r);

/* Serialise / parse and check (values hold tokens x dim x 2 bytes; the
 * message names the page). */
int feature_record_pack(const Docmint__FeatureRecord *r, uint8_t **buf, size_t *len, DmErr *err);
Docmint__FeatureRecord *feature_record_unpack(const void *buf, size_t len, DmErr *err);
int feature_record_validate(const Docmint__FeatureRecord *r, DmErr *err);

/* The values of a record as float32: *out (malloc'ed) = [tokens, dim]. */
int feature_record_values(const Docmint__FeatureRecord *r, float **out, DmErr *err);

/* The encoder output of page_id: 1 and *out (malloc'ed float32 [*tokens,
 * *dim]) when the store holds it, 0 when it does not, -1 on error (a
 * record that is not a well-formed FeatureRecord of that page is one). */
int logit_store_features(Store *s, const char *page_id, float **out, int *tokens, int *dim,
                         DmErr *err);

#endif
