/* store_file.c - the meta pages of an LMDB data file (store_file.h). */
#include "common/store_file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Offsets in a meta page of LMDB 0.9 on a 64-bit host (mdb.c): the page
 * header is mp_pgno (8), mp_pad (2), mp_flags (2), mp_lower, mp_upper (2
 * each); MDB_meta follows: mm_magic (4), mm_version (4), mm_address (8),
 * mm_mapsize (8), mm_dbs[2] (MDB_db: md_pad 4, md_flags 2, md_depth 2,
 * then branch, leaf, overflow pages, entries and md_root, 8 each),
 * mm_last_pg (8), mm_txnid (8).  The page size is mm_dbs[0].md_pad. */
enum {
    PAGE_HDR = 16,
    OFF_FLAGS = 10,
    OFF_MAGIC = PAGE_HDR + 0,
    OFF_VERSION = PAGE_HDR + 4,
    OFF_DBS = PAGE_HDR + 24,
    MDB_DB_BYTES = 48,
    OFF_PSIZE = OFF_DBS + 0,
    OFF_ROOT0 = OFF_DBS + 40,
    OFF_ROOT1 = OFF_DBS + MDB_DB_BYTES + 40,
    OFF_LAST_PG = OFF_DBS + 2 * MDB_DB_BYTES,
    OFF_TXNID = OFF_LAST_PG + 8,
    META_BYTES = OFF_TXNID + 8,
};
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_DATA_VERSION 1u
#define P_META 0x08u
#define P_INVALID UINT64_MAX

typedef struct Meta {
    uint32_t psize;
    uint64_t root[2], last_pg, txnid;
} Meta;

static uint16_t s_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t s_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t s_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Meta page i (at offset off) of path into m. */
static int s_read_meta(int fd, const char *path, int i, uint64_t off, uint64_t fsize, Meta *m,
                       DmErr *err)
{
    unsigned char b[META_BYTES];
    if (off + META_BYTES > fsize)
        return dm_err(err, "%s: damaged: the file ends (%" PRIu64 " bytes) before meta page %d", path,
                      fsize, i);
    ssize_t got = pread(fd, b, sizeof b, (off_t)off);
    if (got < 0)
        return dm_err_errno(err, "%s: cannot read meta page %d", path, i);
    if ((size_t)got != sizeof b)
        return dm_err(err, "%s: damaged: short read of meta page %d", path, i);
    if (!(s_u16(b + OFF_FLAGS) & P_META) || s_u32(b + OFF_MAGIC) != LMDB_MAGIC)
        return dm_err(err, "%s: damaged or not an LMDB file: page %d is not a meta page", path, i);
    if (s_u32(b + OFF_VERSION) != LMDB_DATA_VERSION)
        return dm_err(err, "%s: LMDB data version %u in meta page %d, this LMDB reads version %u", path,
                      s_u32(b + OFF_VERSION), i, LMDB_DATA_VERSION);
    m->psize = s_u32(b + OFF_PSIZE);
    m->root[0] = s_u64(b + OFF_ROOT0);
    m->root[1] = s_u64(b + OFF_ROOT1);
    m->last_pg = s_u64(b + OFF_LAST_PG);
    m->txnid = s_u64(b + OFF_TXNID);
    if (m->psize < 512 || m->psize > 65536 || (m->psize & (m->psize - 1)))
        return dm_err(err, "%s: damaged: meta page %d gives a page size of %u bytes", path, i, m->psize);
    return 0;
}

int store_file_check(const char *path, StoreFileInfo *info, DmErr *err)
{
    memset(info, 0, sizeof *info);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            info->empty = 1;
            return 0;
        }
        return dm_err_errno(err, "%s: cannot open", path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        dm_err_errno(err, "%s: cannot stat", path);
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return dm_err(err, "%s: not a regular file", path);
    }
    uint64_t fsize = (uint64_t)st.st_size;
    info->file_bytes = fsize;
    if (fsize == 0) {
        close(fd);
        info->empty = 1;
        return 0;
    }
    Meta m[2];
    int rc = s_read_meta(fd, path, 0, 0, fsize, &m[0], err);
    if (rc == 0)
        rc = s_read_meta(fd, path, 1, m[0].psize, fsize, &m[1], err);
    close(fd);
    if (rc < 0)
        return -1;
    if (m[1].psize != m[0].psize)
        return dm_err(err, "%s: damaged: the meta pages disagree on the page size (%u and %u)", path,
                      m[0].psize, m[1].psize);
    /* LMDB uses the meta page with the larger txnid (mdb_env_pick_meta) */
    const Meta *use = &m[m[1].txnid > m[0].txnid];
    int which = m[1].txnid > m[0].txnid;
    uint64_t ps = use->psize;
    if (use->last_pg < 1 || use->last_pg > (UINT64_MAX / ps) - 1)
        return dm_err(err, "%s: damaged: meta page %d names page %" PRIu64 " as the last in use", path,
                      which, use->last_pg);
    uint64_t need = (use->last_pg + 1) * ps;
    if (fsize < need)
        return dm_err(err, "%s: damaged (truncated?): %" PRIu64 " bytes, but its meta page (txn %" PRIu64
                           ") uses pages up to %" PRIu64 ", %" PRIu64 " bytes",
                      path, fsize, use->txnid, use->last_pg, need);
    for (int d = 0; d < 2; d++)
        if (use->root[d] != P_INVALID && (use->root[d] < 2 || use->root[d] > use->last_pg))
            return dm_err(err, "%s: damaged: meta page %d gives the %s database the root page %" PRIu64
                               ", outside pages 2..%" PRIu64,
                          path, which, d ? "main" : "free", use->root[d], use->last_pg);
    info->page_size = use->psize;
    info->last_page = use->last_pg;
    info->txnid = use->txnid;
    return 0;
}
