/* store.c - docmint's LMDB stores (see store.h).
 *
 * A store is a folder holding an LMDB environment (data.mdb, lock.mdb)
 * with four named databases, plus writer.lock: the writer holds an
 * exclusive flock on it, so a second job (or a second open in the same
 * process, which LMDB forbids) cannot write the store at the same time.
 *
 * The map starts small (DOCMINT_STORE_MAP_MB, default 64 MiB) and doubles
 * whenever a batch does not fit: the transaction is aborted, the map grown,
 * the batch retried.  LMDB only replaces its meta page once every data page
 * of a commit is on disk, so a failed commit (disk full, file size limit,
 * I/O error) leaves every earlier batch intact. */
#include "common/store.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <inttypes.h>
#include <lmdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/records.h" /* records_utf8_valid */
#include "common/store_file.h"
#include "common/store_guard.h"

enum { DB_RECORDS, DB_ERRORS, DB_META, DB_FEATURES, NDB };
static const char *const s_db_names[NDB] = {STORE_RECORDS, STORE_ERRORS, STORE_META,
                                            STORE_FEATURES};
/* Databases added after schema version 1 came out: a writer creates them,
 * a reader of an older store finds them missing and sees them empty. */
static const int s_db_optional[NDB] = {0, 0, 0, 1};

#define STORE_DEFAULT_MAP_MB 64
#define STORE_MAX_MAP ((size_t)1 << 40) /* 1 TiB: growth stops there */

/* Databases whose values end in a CRC-32C of the value (4 bytes, little
 * endian) in a store whose meta value_checksum is "crc32c".  meta stays
 * plain text. */
static const int s_db_crc[NDB] = {1, 1, 0, 1};
#define STORE_CRC_KEY "value_checksum"
#define STORE_CRC_NAME "crc32c"
#define CRC_BYTES 4

struct Store {
    MDB_env *env;
    MDB_dbi dbi[NDB];
    int have[NDB]; /* 0: an optional database this (read-only) store lacks */
    int mode;
    int lock_fd;
    int crc;       /* values carry a CRC-32C (0: a store from before checksums) */
    unsigned grows;
    char *path;
    StoreMap map;  /* where the map is, for telling a fault in it from one elsewhere */
    char *broken;  /* why the store can no longer be used (a fault in its map) */
};

/* ---- errors --------------------------------------------------------- */

/* "PATH: what: LMDB message" plus what a user can do about it. */
static int s_lmdb_err(const char *path, int rc, DmErr *err, const char *what)
{
    const char *hint = "";
    if (rc == EACCES || rc == EPERM || rc == EROFS)
        hint = " (check the permissions of the store folder)";
    else if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
        hint = " (not an LMDB store of this LMDB version)";
    else if (rc == MDB_TXN_FULL)
        hint = " (write smaller batches)";
    else if (rc == MDB_READERS_FULL)
        hint = " (too many processes are reading this store)";
    return dm_err(err, "%s: %s: %s%s", path, what, mdb_strerror(rc), hint);
}

/* A write that failed on the way to disk.  LMDB reports a short write as
 * EIO, so look for the usual cause: a full filesystem or a file size
 * limit.  LMDB writes the meta page last, so the store still holds every
 * earlier commit. */
static int s_write_err(const char *path, int rc, size_t batch_bytes, DmErr *err, const char *what)
{
    char cause[160] = "";
    struct statvfs fs;
    struct rlimit rl;
    struct stat st;
    char data[4096];
    snprintf(data, sizeof data, "%s/data.mdb", path);
    uint64_t need = (uint64_t)batch_bytes + ((uint64_t)4 << 20);
    if (statvfs(path, &fs) == 0 && (uint64_t)fs.f_bavail * fs.f_frsize < need)
        snprintf(cause, sizeof cause, "disk full (%llu MiB free on the store's filesystem)",
                 (unsigned long long)((uint64_t)fs.f_bavail * fs.f_frsize >> 20));
    else if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && stat(data, &st) == 0 &&
             (uint64_t)st.st_size + batch_bytes > (uint64_t)rl.rlim_cur)
        snprintf(cause, sizeof cause, "disk full for this process: file size limit (ulimit -f) of %llu bytes",
                 (unsigned long long)rl.rlim_cur);
    else if (rc == ENOSPC || rc == EDQUOT)
        snprintf(cause, sizeof cause, "disk full or over quota");
    if (cause[0])
        return dm_err(err, "%s: %s: %s: %s; every batch committed before this one is intact (free "
                           "space and rerun to resume)",
                      path, what, mdb_strerror(rc), cause);
    return dm_err(err, "%s: %s: %s; every batch committed before this one is intact", path, what,
                  mdb_strerror(rc));
}

static int s_db_index(const char *db)
{
    for (int i = 0; db && i < NDB; i++)
        if (!strcmp(db, s_db_names[i]))
            return i;
    return -1;
}

/* The index of a database named by a caller, or -1 with the error. */
static int s_db_arg(const Store *s, const char *db, DmErr *err)
{
    int d = s_db_index(db);
    if (d < 0)
        dm_err(err, "%s: unknown database '%s' (records, errors, meta or features)", s->path,
               db ? db : "(null)");
    return d;
}

/* A printable form of a key for messages: a questionId for 8-byte record
 * keys, else the text with non-printable bytes as \xNN, shortened. */
static void s_key_text(int db, const void *key, size_t klen, char *out, size_t cap)
{
    if (db == DB_RECORDS && klen == 8) {
        snprintf(out, cap, "questionId %" PRIu64, store_key_to_u64(key));
        return;
    }
    if (db == DB_RECORDS && klen == 10) { /* a logit record: questionId, answer index */
        const unsigned char *k = key;
        snprintf(out, cap, "questionId %" PRId64 " answer %u", (int64_t)store_key_to_u64(key),
                 (unsigned)k[8] << 8 | k[9]);
        return;
    }
    const unsigned char *k = key;
    size_t o = 0;
    o += (size_t)snprintf(out, cap, "key '");
    for (size_t i = 0; i < klen && o + 8 < cap; i++) {
        if (i >= 60) {
            o += (size_t)snprintf(out + o, cap - o, "...");
            break;
        }
        if (k[i] >= 0x20 && k[i] < 0x7f)
            out[o++] = (char)k[i];
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", k[i]);
    }
    snprintf(out + o, cap - o, "'");
}

/* After a jump: the handle is spent; the error names the store, the
 * fault and what was being done. */
static int s_fault_err(Store *s, int why, const char *what, DmErr *err)
{
    char cause[320];
    if (why == SIGBUS)
        snprintf(cause, sizeof cause, "bus error reading its map (data.mdb is shorter than its pages: "
                                      "truncated?)");
    else if (why == SIGSEGV)
        snprintf(cause, sizeof cause, "invalid memory access inside its map (a damaged page)");
    else
        snprintf(cause, sizeof cause, "LMDB %s", store_guard_assert_text());
    char msg[600];
    snprintf(msg, sizeof msg, "%s: damaged store: %s while %s", s->path, cause, what);
    free(s->broken);
    s->broken = strdup(msg);
    return dm_err(err, "%s", msg);
}

static int s_check_usable(const Store *s, DmErr *err)
{
    if (s->broken)
        return dm_err(err, "%s (the store was not read further)", s->broken);
    return 0;
}

/* ---- checksums ------------------------------------------------------ */

static void s_put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* A stored value of database d: 1 and v trimmed to the value when sound,
 * 0 and why when its checksum fails. */
static int s_value_ok(const Store *s, int d, MDB_val *v, char *why, size_t cap)
{
    /* a damaged node can give a size that runs past the map */
    uintptr_t a = (uintptr_t)v->mv_data;
    if (s->map.hi && (a < s->map.lo || a > s->map.hi || v->mv_size > s->map.hi - a)) {
        snprintf(why, cap, "a value of %zu bytes that runs past the end of the store's map (a damaged page)",
                 v->mv_size);
        return 0;
    }
    if (!s->crc || !s_db_crc[d])
        return 1;
    if (v->mv_size < CRC_BYTES) {
        snprintf(why, cap, "%zu bytes, shorter than its checksum", v->mv_size);
        return 0;
    }
    size_t n = v->mv_size - CRC_BYTES;
    const unsigned char *p = (const unsigned char *)v->mv_data + n;
    uint32_t want = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    uint32_t got = crc32c(0, v->mv_data, n);
    if (got != want) {
        snprintf(why, cap, "checksum mismatch: CRC-32C of its %zu bytes is %08x, the record says %08x", n, got, want);
        return 0;
    }
    v->mv_size = n;
    return 1;
}

int store_checksums(const Store *s)
{
    return s->crc;
}

/* ---- transactions --------------------------------------------------- */

/* Begin a transaction; adopt a map another process grew meanwhile. */
static int s_begin(Store *s, unsigned flags, MDB_txn **txn, DmErr *err)
{
    int rc = mdb_txn_begin(s->env, NULL, flags, txn);
    if (rc == MDB_MAP_RESIZED) {
        rc = mdb_env_set_mapsize(s->env, 0);
        store_map_locate(&s->map);
        if (rc == 0)
            rc = mdb_txn_begin(s->env, NULL, flags, txn);
    }
    if (rc != 0) {
        *txn = NULL;
        return s_lmdb_err(s->path, rc, err, "cannot begin a transaction");
    }
    return 0;
}

static int s_map_size(MDB_env *env, size_t *size)
{
    MDB_envinfo info;
    int rc = mdb_env_info(env, &info);
    if (rc == 0)
        *size = info.me_mapsize;
    return rc;
}

/* Double the map (called with no transaction open). */
static int s_grow(Store *s, size_t nitems, DmErr *err)
{
    size_t cur;
    int rc = s_map_size(s->env, &cur);
    if (rc != 0)
        return s_lmdb_err(s->path, rc, err, "cannot read the map size");
    if (cur >= STORE_MAX_MAP)
        return dm_err(err, "%s: a batch of %zu items does not fit in a %zu GiB map", s->path, nitems,
                      cur >> 30);
    size_t next = cur * 2 < STORE_MAX_MAP ? cur * 2 : STORE_MAX_MAP;
    rc = mdb_env_set_mapsize(s->env, next);
    if (rc != 0) {
        char what[96];
        snprintf(what, sizeof what, "cannot grow the map from %zu to %zu MiB", cur >> 20, next >> 20);
        return s_lmdb_err(s->path, rc, err, what);
    }
    s->grows++;
    store_map_locate(&s->map);
    return 0;
}

/* ---- open / close --------------------------------------------------- */

static int s_initial_map(size_t *bytes, DmErr *err)
{
    const char *v = getenv("DOCMINT_STORE_MAP_MB");
    unsigned long long mb = STORE_DEFAULT_MAP_MB;
    if (v && *v) {
        char *end;
        errno = 0;
        mb = strtoull(v, &end, 10);
        if (errno || *end || mb == 0 || mb > (STORE_MAX_MAP >> 20))
            return dm_err(err, "DOCMINT_STORE_MAP_MB='%s': expected a map size in MiB from 1 to %zu", v,
                          STORE_MAX_MAP >> 20);
    }
    *bytes = (size_t)mb << 20;
    return 0;
}

/* Read meta.schema_version inside txn: 0 when it is this version. */
static int s_check_schema(Store *s, MDB_txn *txn, DmErr *err)
{
    MDB_val k = {strlen("schema_version"), (void *)"schema_version"}, v;
    int rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND)
        return dm_err(err, "%s: not a docmint store (its meta database has no schema_version)", s->path);
    if (rc != 0)
        return s_lmdb_err(s->path, rc, err, "cannot read meta schema_version");
    size_t n = strlen(STORE_SCHEMA_VERSION);
    if (v.mv_size != n || memcmp(v.mv_data, STORE_SCHEMA_VERSION, n) != 0)
        return dm_err(err, "%s: store schema version '%.*s', this docmint reads version %s", s->path,
                      (int)(v.mv_size < 32 ? v.mv_size : 32), (const char *)v.mv_data,
                      STORE_SCHEMA_VERSION);
    return 0;
}

/* Which checksum the store's values carry: meta value_checksum "crc32c",
 * or none in a store written before checksums (read as it is). */
static int s_check_crc(Store *s, MDB_txn *txn, DmErr *err)
{
    MDB_val k = {strlen(STORE_CRC_KEY), (void *)STORE_CRC_KEY}, v;
    int rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        s->crc = 0;
        return 0;
    }
    if (rc != 0)
        return s_lmdb_err(s->path, rc, err, "cannot read meta " STORE_CRC_KEY);
    size_t n = strlen(STORE_CRC_NAME);
    if (v.mv_size != n || memcmp(v.mv_data, STORE_CRC_NAME, n) != 0)
        return dm_err(err, "%s: meta " STORE_CRC_KEY " is '%.*s', this docmint knows '" STORE_CRC_NAME "'",
                      s->path, (int)(v.mv_size < 32 ? v.mv_size : 32), (const char *)v.mv_data);
    s->crc = 1;
    return 0;
}

/* Open the named databases; a writer creates them (and the schema version)
 * in a fresh environment, and refuses an LMDB environment that holds
 * something else.  txn is the caller's (guarded) transaction. */
static int s_open_dbs_in(Store *s, MDB_txn *txn, DmErr *err)
{
    int write = s->mode == STORE_WRITE;
    int rc = mdb_dbi_open(txn, STORE_META, 0, &s->dbi[DB_META]);
    int fresh = 0;
    s->have[DB_META] = 1;
    if (rc == MDB_NOTFOUND && write) {
        MDB_dbi main;
        MDB_stat st;
        rc = mdb_dbi_open(txn, NULL, 0, &main);
        if (rc == 0)
            rc = mdb_stat(txn, main, &st);
        if (rc == 0 && st.ms_entries > 0)
            return dm_err(err, "%s: not a docmint store (an LMDB environment without a meta database)",
                          s->path);
        fresh = 1;
        if (rc == 0)
            rc = mdb_dbi_open(txn, STORE_META, MDB_CREATE, &s->dbi[DB_META]);
    } else if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
        return dm_err(err, "%s: not a docmint store (no meta database)", s->path);
    }
    if (rc != 0)
        return s_lmdb_err(s->path, rc, err, "cannot open the meta database");
    if (!fresh && (s_check_schema(s, txn, err) < 0 || s_check_crc(s, txn, err) < 0))
        return -1;
    for (int i = 0; i < NDB; i++) {
        if (i == DB_META)
            continue;
        rc = mdb_dbi_open(txn, s_db_names[i], write ? MDB_CREATE : 0, &s->dbi[i]);
        if (rc == MDB_NOTFOUND && s_db_optional[i])
            continue;
        if (rc != 0) {
            if (rc == MDB_NOTFOUND)
                return dm_err(err, "%s: not a docmint store (no %s database)", s->path, s_db_names[i]);
            char what[64];
            snprintf(what, sizeof what, "cannot open the %s database", s_db_names[i]);
            return s_lmdb_err(s->path, rc, err, what);
        }
        s->have[i] = 1;
    }
    if (fresh) {
        /* a new store: every value carries its CRC-32C */
        static const char *const kv[2][2] = {{"schema_version", STORE_SCHEMA_VERSION},
                                             {STORE_CRC_KEY, STORE_CRC_NAME}};
        for (int i = 0; i < 2; i++) {
            MDB_val k = {strlen(kv[i][0]), (void *)kv[i][0]}, v = {strlen(kv[i][1]), (void *)kv[i][1]};
            rc = mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
            if (rc != 0)
                return s_lmdb_err(s->path, rc, err, "cannot write the store's meta");
        }
        s->crc = 1;
    }
    return 0;
}

static int s_open_dbs(Store *s, DmErr *err)
{
    int write = s->mode == STORE_WRITE;
    MDB_txn *txn;
    if (s_begin(s, write ? 0 : MDB_RDONLY, &txn, err) < 0)
        return -1;
    MDB_txn *volatile vtxn = txn;
    sigjmp_buf jb;
    StoreGuard prev = store_guard_enter(&s->map, &jb, write);
    if (sigsetjmp(jb, 0)) {
        store_guard_leave(prev);
        mdb_txn_abort(vtxn); /* a read transaction (a writer never jumps) */
        return s_fault_err(s, store_guard_why(), "opening its databases", err);
    }
    int rc = s_open_dbs_in(s, txn, err);
    if (rc < 0) {
        mdb_txn_abort(txn);
        store_guard_leave(prev);
        return -1;
    }
    /* Committing (even a read-only transaction) makes the handles usable
     * by later transactions. */
    rc = mdb_txn_commit(txn);
    store_guard_leave(prev);
    if (rc != 0)
        return s_lmdb_err(s->path, rc, err, write ? "cannot create the databases" : "cannot open the databases");
    return 0;
}

static int s_lock_writer(Store *s, DmErr *err)
{
    size_t n = strlen(s->path) + sizeof "/writer.lock";
    char *p = malloc(n);
    if (!p)
        return dm_err(err, "%s: out of memory", s->path);
    snprintf(p, n, "%s/writer.lock", s->path);
    s->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (s->lock_fd < 0) {
        dm_err_errno(err, "%s: cannot open", p);
        free(p);
        return -1;
    }
    free(p);
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            return dm_err(err, "%s: another docmint process (or another open in this one) is writing "
                               "this store", s->path);
        return dm_err_errno(err, "%s/writer.lock: cannot lock", s->path);
    }
    return 0;
}

int store_open(const char *path, int mode, Store **out, DmErr *err)
{
    *out = NULL;
    if (!path || !*path)
        return dm_err(err, "store: empty path");
    if (mode != STORE_READ && mode != STORE_WRITE)
        return dm_err(err, "%s: unknown store mode %d", path, mode);
    size_t initial = 0;
    if (mode == STORE_WRITE && s_initial_map(&initial, err) < 0)
        return -1;

    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno != ENOENT)
            return dm_err_errno(err, "%s: cannot open store", path);
        if (mode == STORE_READ)
            return dm_err(err, "%s: no such store", path);
        if (mkdir(path, 0777) < 0)
            return dm_err_errno(err, "%s: cannot create the store folder", path);
    } else if (!S_ISDIR(st.st_mode)) {
        return dm_err(err, "%s: not a store (a store is a folder holding data.mdb)", path);
    }
    char data[4096];
    snprintf(data, sizeof data, "%s/data.mdb", path);
    if (mode == STORE_READ && access(data, F_OK) != 0)
        return dm_err(err, "%s: not a docmint store (no data.mdb in the folder)", path);
    /* LMDB maps the file as its meta page describes it: check that first */
    StoreFileInfo fi;
    if (store_file_check(data, &fi, err) < 0)
        return -1;
    if (mode == STORE_READ && fi.empty)
        return dm_err(err, "%s: not a docmint store (data.mdb is empty)", path);
    store_guard_init();

    Store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return dm_err(err, "%s: out of memory", path);
    }
    s->mode = mode;
    s->lock_fd = -1;
    if (mode == STORE_WRITE && s_lock_writer(s, err) < 0)
        goto fail;

    int rc = mdb_env_create(&s->env);
    if (rc != 0) {
        s->env = NULL;
        s_lmdb_err(path, rc, err, "cannot create an LMDB environment");
        goto fail;
    }
    s->map.path = s->path;
    store_guard_env(s->env, &s->map);
    rc = mdb_env_set_maxdbs(s->env, 8);
    if (rc == 0)
        rc = mdb_env_open(s->env, path, MDB_NOTLS | (mode == STORE_READ ? MDB_RDONLY : 0), 0664);
    if (rc != 0) {
        s_lmdb_err(path, rc, err, "cannot open");
        goto fail;
    }
    /* A writer keeps a map that an earlier run grew, else starts at the
     * initial size; a reader uses the size in the file. */
    size_t cur = 0;
    rc = s_map_size(s->env, &cur);
    if (rc == 0 && mode == STORE_WRITE && cur < initial)
        rc = mdb_env_set_mapsize(s->env, initial);
    if (rc != 0) {
        s_lmdb_err(path, rc, err, "cannot set the map size");
        goto fail;
    }
    store_map_locate(&s->map);
    int dead = 0;
    rc = mdb_reader_check(s->env, &dead);
    if (rc != 0) {
        s_lmdb_err(path, rc, err, "cannot clear stale readers");
        goto fail;
    }
    if (s_open_dbs(s, err) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    store_close(&s);
    return -1;
}

void store_close(Store **sp)
{
    if (!sp || !*sp)
        return;
    Store *s = *sp;
    if (s->env)
        mdb_env_close(s->env);
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the writer lock */
    free(s->broken);
    free(s->path);
    free(s);
    *sp = NULL;
}

const char *store_path(const Store *s)
{
    return s->path;
}

unsigned store_map_grows(const Store *s)
{
    return s->grows;
}

/* ---- writes --------------------------------------------------------- */

/* Put the items in txn; *failed gets the index of an item that failed. */
static int s_put_items(Store *s, MDB_txn *txn, const StoreItem *items, int n, int *failed)
{
    for (int i = 0; i < n; i++) {
        int db = s_db_index(items[i].db);
        MDB_val k = {items[i].klen, (void *)items[i].key};
        if (!items[i].val) { /* a NULL value deletes the key (absent is fine) */
            int rc = mdb_del(txn, s->dbi[db], &k, NULL);
            if (rc != 0 && rc != MDB_NOTFOUND) {
                *failed = i;
                return rc;
            }
            continue;
        }
        int crc = s->crc && s_db_crc[db];
        MDB_val v = {items[i].vlen + (crc ? CRC_BYTES : 0), (void *)items[i].val};
        /* a checksummed value is written in place: LMDB reserves the room */
        int rc = mdb_put(txn, s->dbi[db], &k, &v, crc ? MDB_RESERVE : 0);
        if (rc != 0) {
            *failed = i;
            return rc;
        }
        if (crc) {
            unsigned char *p = v.mv_data;
            if (items[i].vlen)
                memcpy(p, items[i].val, items[i].vlen);
            s_put_le32(p + items[i].vlen, crc32c(0, items[i].val, items[i].vlen));
        }
    }
    return 0;
}

int store_put_batch(Store *s, const StoreItem *items, int n, DmErr *err)
{
    if (s->mode != STORE_WRITE)
        return dm_err(err, "%s: store opened read-only", s->path);
    if (s_check_usable(s, err) < 0)
        return -1;
    if (n <= 0)
        return 0;
    int maxkey = mdb_env_get_maxkeysize(s->env);
    for (int i = 0; i < n; i++) {
        int db = s_db_arg(s, items[i].db, err);
        if (db < 0)
            return -1;
        if (items[i].klen == 0 || items[i].klen > (size_t)maxkey) {
            char kt[128];
            s_key_text(db, items[i].key, items[i].klen, kt, sizeof kt);
            return dm_err(err, "%s: %s %s: key length %zu, must be 1 to %d bytes", s->path, items[i].db,
                          kt, items[i].klen, maxkey);
        }
    }
    for (;;) {
        MDB_txn *txn;
        if (s_begin(s, 0, &txn, err) < 0)
            return -1;
        /* a fault inside a write transaction stops the process (see the
         * guard), so there is no jump to come back to here */
        sigjmp_buf jb;
        StoreGuard prev = store_guard_enter(&s->map, &jb, 1);
        int i = -1;
        int rc = s_put_items(s, txn, items, n, &i);
        if (rc == 0)
            rc = mdb_txn_commit(txn); /* frees txn, also on failure */
        else
            mdb_txn_abort(txn);
        store_guard_leave(prev);
        if (rc == 0)
            return 0;
        if (rc == MDB_MAP_FULL) {
            if (s_grow(s, (size_t)n, err) < 0)
                return -1;
            continue; /* retry the whole batch in the bigger map */
        }
        char what[256];
        if (i < 0) {
            size_t bytes = 0;
            for (int j = 0; j < n; j++)
                bytes += items[j].klen + items[j].vlen;
            snprintf(what, sizeof what, "commit of a batch of %d items (%zu bytes) failed", n, bytes);
            return s_write_err(s->path, rc, bytes, err, what);
        } else {
            char kt[128];
            s_key_text(s_db_index(items[i].db), items[i].key, items[i].klen, kt, sizeof kt);
            snprintf(what, sizeof what, "cannot write %s %s (%zu bytes)", items[i].db, kt, items[i].vlen);
        }
        return s_lmdb_err(s->path, rc, err, what);
    }
}

int store_meta_set(Store *s, const char *key, const char *value, DmErr *err)
{
    if (!records_utf8_valid(value, strlen(value)))
        return dm_err(err, "%s: meta %s: value is not valid UTF-8", s->path, key);
    StoreItem it = {STORE_META, key, strlen(key), value, strlen(value)};
    return store_put_batch(s, &it, 1, err);
}

/* ---- reads ----------------------------------------------------------
 *
 * Each read runs in its own read transaction under a guard; a fault
 * comes back as an error naming the store. */

/* The error of a record whose checksum fails. */
static int s_damage_err(const Store *s, int d, const void *key, size_t klen, const char *why, DmErr *err)
{
    char kt[128];
    s_key_text(d, key, klen, kt, sizeof kt);
    return dm_err(err, "%s: %s %s: %s (`docmint store verify %s` lists every damaged record)", s->path,
                  s_db_names[d], kt, why, s->path);
}

/* Look key up in database d: 1 and (copy ? a malloc'ed copy : nothing)
 * when found, 0 when absent, -1 on error. */
static int s_lookup(Store *s, int d, const void *key, size_t klen, int copy, void **val, size_t *vlen,
                    const char *what, DmErr *err)
{
    if (s_check_usable(s, err) < 0)
        return -1;
    if (!s->have[d] || klen == 0 || klen > (size_t)mdb_env_get_maxkeysize(s->env))
        return 0; /* no such key can be stored */
    MDB_txn *txn;
    if (s_begin(s, MDB_RDONLY, &txn, err) < 0)
        return -1;
    MDB_txn *volatile vtxn = txn;
    sigjmp_buf jb;
    StoreGuard prev = store_guard_enter(&s->map, &jb, 0);
    if (sigsetjmp(jb, 0)) {
        store_guard_leave(prev);
        mdb_txn_abort(vtxn);
        char kt[128], w[200];
        s_key_text(d, key, klen, kt, sizeof kt);
        snprintf(w, sizeof w, "%s %s %s", what, s_db_names[d], kt);
        return s_fault_err(s, store_guard_why(), w, err);
    }
    MDB_val k = {klen, (void *)key}, v;
    int rc = mdb_get(txn, s->dbi[d], &k, &v), out = 1;
    char why[160];
    if (rc == MDB_NOTFOUND) {
        out = 0;
    } else if (rc != 0) {
        char kt[128], w[192];
        s_key_text(d, key, klen, kt, sizeof kt);
        snprintf(w, sizeof w, "cannot %s %s %s", what, s_db_names[d], kt);
        out = s_lmdb_err(s->path, rc, err, w);
    } else if (!s_value_ok(s, d, &v, why, sizeof why)) {
        out = s_damage_err(s, d, key, klen, why, err);
    } else if (copy) {
        void *c = malloc(v.mv_size + 1); /* +1: meta values get a NUL */
        if (!c) {
            out = dm_err(err, "%s: out of memory reading %zu bytes", s->path, v.mv_size);
        } else {
            memcpy(c, v.mv_data, v.mv_size);
            ((char *)c)[v.mv_size] = '\0';
            *val = c;
            *vlen = v.mv_size;
        }
    }
    store_guard_leave(prev);
    mdb_txn_abort(txn);
    return out;
}

int store_get(Store *s, const char *db, const void *key, size_t klen, void **val, size_t *vlen,
              DmErr *err)
{
    *val = NULL;
    *vlen = 0;
    int d = s_db_arg(s, db, err);
    if (d < 0)
        return -1;
    return s_lookup(s, d, key, klen, 1, val, vlen, "read", err);
}

int store_meta_read(Store *s, const char *key, char **value, DmErr *err)
{
    void *v;
    size_t n;
    int rc = store_get(s, STORE_META, key, strlen(key), &v, &n, err);
    *value = rc == 1 ? v : NULL;
    return rc;
}

char *store_meta_get(Store *s, const char *key, DmErr *err)
{
    char *v;
    if (store_meta_read(s, key, &v, err) == 0)
        dm_err_clear(err);
    return v;
}

/* Walk database d in key order: fn (store_foreach's) stops at the first
 * damaged record with an error; scan (store_scan's) is handed every
 * record with what is wrong with it.  A damaged tree could lead a cursor
 * round in a loop, so the walk stops when it yields more entries than the
 * database's header counts. */
static int s_walk(Store *s, int d, StoreVisit fn, StoreScanVisit scan, void *ctx, DmErr *err)
{
    if (s_check_usable(s, err) < 0)
        return -1;
    if (!s->have[d])
        return 0;
    MDB_txn *txn;
    if (s_begin(s, MDB_RDONLY, &txn, err) < 0)
        return -1;
    MDB_txn *volatile vtxn = txn;
    MDB_cursor *volatile vcur = NULL;
    sigjmp_buf jb;
    StoreGuard prev = store_guard_enter(&s->map, &jb, 0);
    if (sigsetjmp(jb, 0)) {
        store_guard_leave(prev);
        if (vcur)
            mdb_cursor_close(vcur);
        mdb_txn_abort(vtxn);
        char w[96];
        snprintf(w, sizeof w, "reading the %s database", s_db_names[d]);
        return s_fault_err(s, store_guard_why(), w, err);
    }
    MDB_stat st;
    MDB_cursor *cur = NULL;
    int rc = mdb_stat(txn, s->dbi[d], &st);
    if (rc == 0)
        rc = mdb_cursor_open(txn, s->dbi[d], &cur);
    vcur = cur;
    int out = 0;
    if (rc != 0) {
        out = s_lmdb_err(s->path, rc, err, "cannot open a cursor");
    } else {
        MDB_val k, v;
        uint64_t seen = 0;
        char why[160];
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (++seen > st.ms_entries) {
                out = dm_err(err, "%s: damaged store: the %s database yields more entries than the %zu "
                                  "its header counts", s->path, s_db_names[d], st.ms_entries);
                break;
            }
            int ok = s_value_ok(s, d, &v, why, sizeof why);
            if (scan) {
                if (scan(ctx, k.mv_data, k.mv_size, v.mv_data, v.mv_size, ok ? NULL : why))
                    break;
            } else if (!ok) {
                out = s_damage_err(s, d, k.mv_data, k.mv_size, why, err);
                break;
            } else if (fn(ctx, k.mv_data, k.mv_size, v.mv_data, v.mv_size)) {
                break;
            }
        }
        if (out == 0 && rc != 0 && rc != MDB_NOTFOUND) {
            char what[64];
            snprintf(what, sizeof what, "cannot read the %s database", s_db_names[d]);
            out = s_lmdb_err(s->path, rc, err, what);
        }
        mdb_cursor_close(cur);
    }
    store_guard_leave(prev);
    mdb_txn_abort(txn);
    return out;
}

int store_foreach(Store *s, const char *db, StoreVisit fn, void *ctx, DmErr *err)
{
    int d = s_db_arg(s, db, err);
    return d < 0 ? -1 : s_walk(s, d, fn, NULL, ctx, err);
}

int store_scan(Store *s, const char *db, StoreScanVisit fn, void *ctx, DmErr *err)
{
    int d = s_db_arg(s, db, err);
    return d < 0 ? -1 : s_walk(s, d, NULL, fn, ctx, err);
}

int store_has(Store *s, const char *db, const void *key, size_t klen, DmErr *err)
{
    int d = s_db_arg(s, db, err);
    if (d < 0)
        return -1;
    void *v = NULL;
    size_t n = 0;
    return s_lookup(s, d, key, klen, 0, &v, &n, "look up", err);
}

static int s_add_bytes(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    StoreDbSize *z = ctx;
    z->entries++;
    z->bytes += klen + vlen;
    return 0;
}

/* mdb_stat of database d, or -1 with err naming what failed. */
static int s_db_stat(Store *s, int d, MDB_stat *st, const char *what, DmErr *err)
{
    if (s_check_usable(s, err) < 0)
        return -1;
    MDB_txn *txn;
    if (s_begin(s, MDB_RDONLY, &txn, err) < 0)
        return -1;
    MDB_txn *volatile vtxn = txn;
    sigjmp_buf jb;
    StoreGuard prev = store_guard_enter(&s->map, &jb, 0);
    if (sigsetjmp(jb, 0)) {
        store_guard_leave(prev);
        mdb_txn_abort(vtxn);
        return s_fault_err(s, store_guard_why(), what, err);
    }
    int rc = mdb_stat(txn, s->dbi[d], st);
    store_guard_leave(prev);
    mdb_txn_abort(txn);
    return rc ? s_lmdb_err(s->path, rc, err, what) : 0;
}

int store_db_size(Store *s, const char *db, StoreDbSize *out, DmErr *err)
{
    memset(out, 0, sizeof *out);
    int d = s_db_arg(s, db, err);
    if (d < 0 || store_foreach(s, db, s_add_bytes, out, err) < 0)
        return -1;
    MDB_stat st;
    if (!s->have[d])
        return 0;
    if (s_db_stat(s, d, &st, "reading the database sizes", err) < 0)
        return -1;
    out->page_bytes = (uint64_t)st.ms_psize *
                      (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages);
    return 0;
}

int store_count(Store *s, const char *db, uint64_t *n, DmErr *err)
{
    *n = 0;
    int d = s_db_arg(s, db, err);
    if (d < 0)
        return -1;
    MDB_stat st;
    if (!s->have[d])
        return 0;
    if (s_db_stat(s, d, &st, "counting entries", err) < 0)
        return -1;
    *n = st.ms_entries;
    return 0;
}

int store_sizes(Store *s, uint64_t *map_bytes, uint64_t *used_bytes, DmErr *err)
{
    if (s_check_usable(s, err) < 0)
        return -1;
    /* A read transaction first, so a map grown by another process is
     * adopted before it is reported. */
    MDB_txn *txn;
    if (s_begin(s, MDB_RDONLY, &txn, err) < 0)
        return -1;
    mdb_txn_abort(txn);
    MDB_envinfo info;
    MDB_stat st;
    int rc = mdb_env_info(s->env, &info);
    if (rc == 0)
        rc = mdb_env_stat(s->env, &st);
    if (rc != 0)
        return s_lmdb_err(s->path, rc, err, "cannot read the environment sizes");
    *map_bytes = info.me_mapsize;
    *used_bytes = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
    return 0;
}

/* ---- keys ----------------------------------------------------------- */

void store_key_u64(uint64_t id, unsigned char key[8])
{
    for (int i = 7; i >= 0; i--) {
        key[i] = (unsigned char)(id & 0xff);
        id >>= 8;
    }
}

uint64_t store_key_to_u64(const void *key)
{
    const unsigned char *k = key;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | k[i];
    return v;
}
