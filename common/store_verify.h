/* store_verify.h - read every record of a store and say which are damaged
 * (`docmint store verify`): the checksum of each value (a store written
 * before checksums has none to check), then its parse as the record its
 * database and the store's kind call for (schemas/records.proto) with the
 * checks its readers make (a logit record's shapes, a feature record's
 * size, a record's id against its key), and meta values as UTF-8 text. */
#ifndef DM_STORE_VERIFY_H
#define DM_STORE_VERIFY_H

#include <stdint.h>

#include "common/dm_error.h"
#include "common/store.h"

typedef struct StoreVerifyCounts {
    uint64_t records, errors, features, meta; /* entries read */
    uint64_t damaged;
    int checksums; /* store_checksums() */
} StoreVerifyCounts;

/* Called once per damaged entry: db, the key as text (a questionId, a
 * questionId/answer index, or the item/page id) and what is wrong. */
typedef void (*StoreDamageFn)(void *ctx, const char *db, const char *key, const char *what);

/* Walk the store.  0 when every entry could be read (damaged ones are
 * counted and handed to fn); -1 when the walk itself failed (a fault in
 * the map, an LMDB error), with err. */
int store_verify(Store *s, StoreDamageFn fn, void *ctx, StoreVerifyCounts *out, DmErr *err);

/* The key of a record of db as text, for messages (cap >= 64). */
void store_key_text(const char *db, int logits, const void *key, size_t klen, char *out, size_t cap);

/* Parse one sound value of db (records of a logit store when logits): 0,
 * or -1 and err saying what is wrong with it. */
int store_verify_value(const char *db, int logits, const void *key, size_t klen, const void *val,
                       size_t vlen, DmErr *err);

#endif
