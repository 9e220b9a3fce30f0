/* store.h - docmint's LMDB stores: one environment per output with named
 * databases "records", "errors", "meta" and "features" (record layouts:
 * schemas/).  "features" (per-page encoder outputs of a logit store) came
 * later: a reader of an older store sees it empty.
 *
 * One writer per store (the coordinator); readers open read-only.  Writes
 * go in batches, one transaction each; when the map is full it grows and
 * the batch is retried, so a long job never stops on MDB_MAP_FULL.  Keys
 * are stable identifiers, so writing an item twice leaves one record.
 *
 * Damage: every value of records, errors and features ends in a CRC-32C of
 * the value (4 bytes, little-endian; meta value_checksum = "crc32c"),
 * checked on every read; callers see the value without it.  A store
 * written before checksums (no value_checksum) is read as it is and a
 * writer resuming it keeps its format.  data.mdb is checked against its
 * meta pages before it is mapped (store_file.h), and a bus error,
 * segmentation fault or LMDB assertion inside a read of the map becomes an
 * error naming the store (the handle then refuses further use); inside a
 * write it stops the process with a message. */
#ifndef DM_STORE_H
#define DM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"

typedef struct Store Store;

#define STORE_RECORDS "records"
#define STORE_ERRORS "errors"
#define STORE_META "meta"
#define STORE_FEATURES "features"
#define STORE_SCHEMA_VERSION "1"

enum { STORE_READ = 0, STORE_WRITE = 1 };

/* Open (and for STORE_WRITE create) the store at path (a folder).  A
 * writer's map starts at DOCMINT_STORE_MAP_MB MiB (default 64) or the size
 * an earlier run grew it to, and doubles when a batch does not fit.  Only
 * one writer per store (writer.lock in the folder): a second STORE_WRITE
 * open fails, in this process or another.  Opening an LMDB folder that is
 * not a docmint store (no meta schema_version) fails. */
int store_open(const char *path, int mode, Store **out, DmErr *err);
void store_close(Store **s);
const char *store_path(const Store *s);

typedef struct StoreItem {
    const char *db;     /* STORE_RECORDS, STORE_ERRORS, STORE_META */
    const void *key;
    size_t klen;
    const void *val;
    size_t vlen;
} StoreItem;

/* Put n items in one transaction (growing the map when full).  An item
 * whose val is NULL deletes its key (a missing key is fine). */
int store_put_batch(Store *s, const StoreItem *items, int n, DmErr *err);

/* Look a key up.  Returns 1 and a malloc'ed copy when found, 0 when absent,
 * -1 on error. */
int store_get(Store *s, const char *db, const void *key, size_t klen, void **val, size_t *vlen,
              DmErr *err);

/* Call fn for every entry of db in key order; fn returns non-zero to stop.
 * key and val point into the map, valid only during the call; fn must not
 * write to the store. */
typedef int (*StoreVisit)(void *ctx, const void *key, size_t klen, const void *val, size_t vlen);
int store_foreach(Store *s, const char *db, StoreVisit fn, void *ctx, DmErr *err);

/* Like store_foreach, but every record is handed on, damaged ones too:
 * damage is NULL for a sound record, else what is wrong (its checksum
 * fails; val and vlen are then the stored bytes, checksum included). */
typedef int (*StoreScanVisit)(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                              const char *damage);
int store_scan(Store *s, const char *db, StoreScanVisit fn, void *ctx, DmErr *err);

/* 1 when the store's values carry checksums, 0 for a store written
 * before them. */
int store_checksums(const Store *s);

/* Whether db holds key: 1 yes, 0 no, -1 error (no copy of the value). */
int store_has(Store *s, const char *db, const void *key, size_t klen, DmErr *err);

/* Number of entries in db. */
int store_count(Store *s, const char *db, uint64_t *n, DmErr *err);

/* Size of one database (for stat): entries, bytes of their keys and
 * values, and bytes of the store pages it occupies. */
typedef struct StoreDbSize {
    uint64_t entries, bytes, page_bytes;
} StoreDbSize;
int store_db_size(Store *s, const char *db, StoreDbSize *out, DmErr *err);

/* meta helpers: UTF-8 strings.  store_meta_get returns a malloc'ed string
 * or NULL when absent. */
int store_meta_set(Store *s, const char *key, const char *value, DmErr *err);
char *store_meta_get(Store *s, const char *key, DmErr *err);
/* Same with the error told apart from absence: 1 and a malloc'ed string
 * when found, 0 (value NULL) when absent, -1 on error. */
int store_meta_read(Store *s, const char *key, char **value, DmErr *err);

/* Stable record keys: questionId as 8-byte big-endian, so keys sort by id. */
void store_key_u64(uint64_t id, unsigned char key[8]);
uint64_t store_key_to_u64(const void *key);

/* Current map size in bytes and bytes in use (for stat). */
int store_sizes(Store *s, uint64_t *map_bytes, uint64_t *used_bytes, DmErr *err);

/* How many times this handle doubled the map (for logs and tests). */
unsigned store_map_grows(const Store *s);

#endif
