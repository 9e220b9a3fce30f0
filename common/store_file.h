/* store_file.h - a look at an LMDB data file before LMDB maps it.
 *
 * LMDB trusts its file: a data.mdb cut short makes a read of a page past
 * its end a bus error, and damaged meta pages can point anywhere.  So
 * before mdb_env_open, docmint reads both meta pages the way LMDB does
 * (mdb.c, MDB_page and MDB_meta of LMDB 0.9: a 16-byte page header, then
 * magic 0xBEEFC0DE, data version 1, the page size in the free database's
 * md_pad, the last page in use mm_last_pg and the committing txnid) and
 * asks of the meta LMDB will pick (the larger txnid) that the file holds
 * every page up to its last page and both root pages. */
#ifndef DM_STORE_FILE_H
#define DM_STORE_FILE_H

#include <stdint.h>

#include "common/dm_error.h"

typedef struct StoreFileInfo {
    uint32_t page_size;
    uint64_t last_page;  /* mm_last_pg of the meta in use */
    uint64_t txnid;      /* its transaction id */
    uint64_t file_bytes; /* size of data.mdb */
    int empty;           /* data.mdb missing or 0 bytes (a writer creates it) */
} StoreFileInfo;

/* Check data_path (a store's data.mdb).  0 and *info when it passes (or is
 * missing/empty: info->empty); -1 with one line naming the file and what
 * is wrong. */
int store_file_check(const char *data_path, StoreFileInfo *info, DmErr *err);

#endif
