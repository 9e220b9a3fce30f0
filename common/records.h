/* records.h - AnswerRecord and ErrorRecord (schemas/records.proto) as
 * they are stored: protobuf bytes in, typed messages out, and the JSON line
 * form that `docmint store dump` and schemas/python/dmstore.py print.
 *
 * Strings in a record must be valid UTF-8 (proto3 requires it, and the
 * Python reader refuses anything else), so packing checks them. */
#ifndef DM_RECORDS_H
#define DM_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"
#include "records.pb-c.h"
#include "common/store.h"

/* Serialise r into a malloc'ed buffer.  Fails (naming the questionId or
 * item and the field) when a string is not valid UTF-8. */
int record_answer_pack(const Docmint__AnswerRecord *r, uint8_t **buf, size_t *len, DmErr *err);
int record_error_pack(const Docmint__ErrorRecord *r, uint8_t **buf, size_t *len, DmErr *err);

/* Parse a stored value; NULL (err set) when the bytes are not a record.
 * Free with record_answer_free / record_error_free. */
Docmint__AnswerRecord *record_answer_unpack(const void *buf, size_t len, DmErr *err);
Docmint__ErrorRecord *record_error_unpack(const void *buf, size_t len, DmErr *err);
void record_answer_free(Docmint__AnswerRecord **r);
void record_error_free(Docmint__ErrorRecord **r);

/* The store key of an error record: its item, or the decimal questionId
 * when the item is empty.  Writes at most cap bytes (no NUL needed by the
 * store) and returns the key length, or -1 when there is no usable key. */
int record_error_key(const Docmint__ErrorRecord *r, char *key, size_t cap);

/* Write answers (key: questionId, 8-byte big-endian) and errors (key:
 * record_error_key) in one store transaction: the shape of a worker's
 * Result message.  Rewriting an item replaces it. */
int records_put(Store *s, Docmint__AnswerRecord *const *answers, size_t n_answers,
                Docmint__ErrorRecord *const *errors, size_t n_errors, DmErr *err);

/* One JSON object on one line (no trailing newline), malloc'ed; NULL when
 * out of memory.  Keys in this order:
 *   answers: questionId answer token_ids mean_logprob seconds page_id question
 *   errors:  item stage reason questionId
 * Strings are UTF-8 (not \u-escaped except control characters, as
 * Python's json.dumps(ensure_ascii=False)); floats are the shortest %g
 * that reads back to the same float32, non-finite floats are null.
 * schemas/python/dmstore.py prints byte-identical lines. */
char *record_answer_json(const Docmint__AnswerRecord *r);
char *record_error_json(const Docmint__ErrorRecord *r);

/* Helpers shared with other JSON writers. */
int records_utf8_valid(const char *s, size_t n);
/* Shortest "%.Ng" (N = 1..9) of f that reads back as f; "null" when f is
 * not finite.  buf needs 32 bytes. */
void records_format_float(char buf[32], float f);

#endif
