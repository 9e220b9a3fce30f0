/* store_ids.c - the id scheme and archive scan kept in a store's meta
 * (store_ids.h). */
#include "coordinator/store_ids.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

char *store_ids_read_scan(const char *path)
{
    char data[4200];
    struct stat st;
    snprintf(data, sizeof data, "%s/data.mdb", path);
    if (stat(data, &st) != 0)
        return NULL;
    Store *s = NULL;
    DmErr err = {{0}};
    if (store_open(path, STORE_READ, &s, &err))
        return NULL;
    char *scan = store_meta_get(s, STORE_IDS_SCAN_META, &err);
    store_close(&s);
    return scan;
}

int store_ids_legacy(Store *s, DmErr *err)
{
    char *v = NULL;
    int has = store_meta_read(s, STORE_IDS_META, &v, err);
    free(v);
    if (has < 0)
        return -1;
    if (has)
        return 0;
    uint64_t nrec, nerr;
    if (store_count(s, STORE_RECORDS, &nrec, err) < 0 || store_count(s, STORE_ERRORS, &nerr, err) < 0)
        return -1;
    return nrec + nerr > 0;
}

int store_ids_mark(Store *s, const char *scan, DmErr *err)
{
    StoreItem items[2] = {
        {STORE_META, STORE_IDS_META, strlen(STORE_IDS_META), STORE_IDS_53, strlen(STORE_IDS_53)},
        {0},
    };
    int n = 1;
    char *kept = NULL;
    if (scan) {
        if (store_meta_read(s, STORE_IDS_SCAN_META, &kept, err) < 0)
            return -1;
        if (!kept || strcmp(kept, scan))
            items[n++] = (StoreItem){STORE_META, STORE_IDS_SCAN_META, strlen(STORE_IDS_SCAN_META),
                                     scan, strlen(scan)};
    }
    int rc = store_put_batch(s, items, n, err);
    free(kept);
    return rc;
}
