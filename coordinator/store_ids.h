/* store_ids.h - what an answers store keeps about its questionIds and its
 * archive: which id scheme made its keys, and the archive's last scan.
 *
 * meta "question_ids" = "53-bit": written by every run since archive
 * questionIds became 53-bit hashes (all ids at most 2^53 - 1).  A store
 * with records but without it was made before, with 63-bit archive ids:
 * `docmint export` still reads it (the corpus recomputes the old ids), a
 * rerun of an archive job into it is refused (it would ask every question
 * again under new ids).
 * meta "archive_scan": the archive's documents with size, modification
 * time and page count (Corpus.scan), so a rerun does not open every
 * unchanged document again to count its pages. */
#ifndef DM_STORE_IDS_H
#define DM_STORE_IDS_H

#include "common/dm_error.h"
#include "common/store.h"

#define STORE_IDS_META "question_ids"
#define STORE_IDS_53 "53-bit"
#define STORE_IDS_SCAN_META "archive_scan"

/* The archive scan kept in the store at path, or NULL when there is no
 * store there or it keeps none (a store that cannot be read is left to
 * the open that follows to report). */
char *store_ids_read_scan(const char *path);

/* 1 when s holds records or error records from before 53-bit ids, 0 when
 * not, -1 on a read error. */
int store_ids_legacy(Store *s, DmErr *err);

/* Mark s as holding 53-bit ids and keep scan (NULL: none) when it differs
 * from the kept one; one transaction. */
int store_ids_mark(Store *s, const char *scan, DmErr *err);

#endif
