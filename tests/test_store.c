/* test_store.c - the LMDB stores and their records, on real LMDB
 * environments in temporary folders: put/get/foreach/count, idempotent
 * rewrites, map growth from 1 MiB, a write that hits a file size limit
 * (the disk-full path), refusing foreign or missing stores, one writer per
 * store, and the record encodings (protobuf and JSON lines). */
#define _GNU_SOURCE
#include <ftw.h>
#include <lmdb.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/records.h"
#include "common/store.h"
#include "tutil.h"

/* ---- temporary folders ---------------------------------------------- */

static int s_rm(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

static char *s_tmpdir(void)
{
    char *t = strdup("/tmp/docmint-store-XXXXXX");
    if (!mkdtemp(t)) {
        free(t);
        return NULL;
    }
    return t;
}

static void s_rmtree(char *dir)
{
    if (dir) {
        nftw(dir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
        free(dir);
    }
}

/* dir/name into a static buffer (one at a time). */
static const char *s_sub(const char *dir, const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

/* ---- put / get / foreach / count ------------------------------------ */

typedef struct Seen {
    int n;
    uint64_t last;
    int ordered;
    size_t bytes;
} Seen;

static int s_visit(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    Seen *s = ctx;
    uint64_t id = klen == 8 ? store_key_to_u64(key) : 0;
    if (s->n > 0 && id <= s->last)
        s->ordered = 0;
    s->last = id;
    s->n++;
    s->bytes += vlen;
    return 0;
}

static int s_stop_at_two(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    return ++*(int *)ctx == 2;
}

static void test_put_get(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    const char *path = s_sub(dir, "answers");
    char spath[512];
    snprintf(spath, sizeof spath, "%s", path);
    DmErr err = {{0}};
    Store *s = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(spath, STORE_WRITE, &s, &err), 0);
    CU_ASSERT_STRING_EQUAL(store_path(s), spath);

    /* keys written out of order come back sorted by id */
    uint64_t ids[] = {300, 7, 65536, 1ull << 40, 0};
    unsigned char keys[5][8];
    char vals[5][32];
    StoreItem items[5];
    for (int i = 0; i < 5; i++) {
        store_key_u64(ids[i], keys[i]);
        snprintf(vals[i], sizeof vals[i], "value-%llu", (unsigned long long)ids[i]);
        items[i] = (StoreItem){STORE_RECORDS, keys[i], 8, vals[i], strlen(vals[i])};
    }
    CU_ASSERT_EQUAL(store_put_batch(s, items, 5, &err), 0);
    uint64_t n = 0;
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_EQUAL(store_count(s, STORE_ERRORS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 0);

    void *v = NULL;
    size_t vlen = 0;
    CU_ASSERT_EQUAL(store_get(s, STORE_RECORDS, keys[2], 8, &v, &vlen, &err), 1);
    CU_ASSERT_EQUAL(vlen, strlen("value-65536"));
    CU_ASSERT(v && memcmp(v, "value-65536", vlen) == 0);
    free(v);
    unsigned char absent[8];
    store_key_u64(8, absent);
    CU_ASSERT_EQUAL(store_get(s, STORE_RECORDS, absent, 8, &v, &vlen, &err), 0);
    CU_ASSERT_PTR_NULL(v);
    CU_ASSERT_EQUAL(store_get(s, "nope", absent, 8, &v, &vlen, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "nope"));

    Seen seen = {0, 0, 1, 0};
    CU_ASSERT_EQUAL(store_foreach(s, STORE_RECORDS, s_visit, &seen, &err), 0);
    CU_ASSERT_EQUAL(seen.n, 5);
    CU_ASSERT(seen.ordered);
    CU_ASSERT_EQUAL(seen.last, 1ull << 40);
    int calls = 0;
    CU_ASSERT_EQUAL(store_foreach(s, STORE_RECORDS, s_stop_at_two, &calls, &err), 0);
    CU_ASSERT_EQUAL(calls, 2);

    /* meta: the schema version is there from the start */
    char *sv = store_meta_get(s, "schema_version", &err);
    CU_ASSERT(sv && strcmp(sv, STORE_SCHEMA_VERSION) == 0);
    free(sv);
    CU_ASSERT_EQUAL(store_meta_set(s, "model_fingerprint", "sha256:ab12 é", &err), 0);
    char *fp = store_meta_get(s, "model_fingerprint", &err);
    CU_ASSERT(fp && strcmp(fp, "sha256:ab12 é") == 0);
    free(fp);
    CU_ASSERT_PTR_NULL(store_meta_get(s, "finished_at", &err));
    CU_ASSERT_EQUAL(err.msg[0], '\0');
    char *mv = (char *)"x";
    CU_ASSERT_EQUAL(store_meta_read(s, "finished_at", &mv, &err), 0);
    CU_ASSERT_PTR_NULL(mv);
    CU_ASSERT_EQUAL(store_meta_set(s, "bad", "\xff\xfe", &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "UTF-8"));

    /* bad keys are refused with the key named */
    StoreItem empty = {STORE_ERRORS, "", 0, "x", 1};
    CU_ASSERT_EQUAL(store_put_batch(s, &empty, 1, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "key length 0"));
    char longkey[600];
    memset(longkey, 'k', sizeof longkey);
    StoreItem big = {STORE_ERRORS, longkey, sizeof longkey, "x", 1};
    CU_ASSERT_EQUAL(store_put_batch(s, &big, 1, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "kkkk"));

    uint64_t map = 0, used = 0;
    CU_ASSERT_EQUAL(store_sizes(s, &map, &used, &err), 0);
    CU_ASSERT(map >= (uint64_t)1 << 20);
    CU_ASSERT(used > 0 && used <= map);
    store_close(&s);
    CU_ASSERT_PTR_NULL(s);

    /* a reader sees the same and cannot write */
    CU_ASSERT_EQUAL_FATAL(store_open(spath, STORE_READ, &s, &err), 0);
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_EQUAL(store_put_batch(s, items, 1, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "read-only"));
    store_close(&s);
    s_rmtree(dir);
}

static void test_idempotent(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DmErr err = {{0}};
    Store *s = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &s, &err), 0);
    unsigned char k[8];
    store_key_u64(42, k);
    StoreItem a = {STORE_RECORDS, k, 8, "first", 5};
    StoreItem b = {STORE_RECORDS, k, 8, "second!", 7};
    StoreItem twice[2] = {a, b};
    CU_ASSERT_EQUAL(store_put_batch(s, &a, 1, &err), 0);
    CU_ASSERT_EQUAL(store_put_batch(s, &a, 1, &err), 0);
    uint64_t n = 0;
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 1);
    /* the same key twice in one batch: the later value wins */
    CU_ASSERT_EQUAL(store_put_batch(s, twice, 2, &err), 0);
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 1);
    void *v;
    size_t vlen;
    CU_ASSERT_EQUAL(store_get(s, STORE_RECORDS, k, 8, &v, &vlen, &err), 1);
    CU_ASSERT(vlen == 7 && memcmp(v, "second!", 7) == 0);
    free(v);
    store_close(&s);
    /* reopening for writing keeps everything */
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &s, &err), 0);
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 1);
    store_close(&s);
    s_rmtree(dir);
}

/* ---- map growth ----------------------------------------------------- */

static void s_fill(unsigned char *buf, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)((id * 131 + i * 7) & 0xff);
}

typedef struct Verify {
    int n, bad;
    unsigned char *want;
    size_t vsize;
} Verify;

static int s_verify(void *ctx, const void *key, size_t klen, const void *val, size_t vlen)
{
    Verify *c = ctx;
    uint64_t id = store_key_to_u64(key);
    s_fill(c->want, c->vsize, id);
    if (klen != 8 || vlen != c->vsize || memcmp(val, c->want, vlen) != 0 || id != (uint64_t)c->n)
        c->bad++;
    c->n++;
    return 0;
}

static void test_map_growth(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    const char *old = getenv("DOCMINT_STORE_MAP_MB");
    char *saved = old ? strdup(old) : NULL;
    setenv("DOCMINT_STORE_MAP_MB", "1", 1);
    DmErr err = {{0}};
    Store *s = NULL;
    int rc = store_open(dir, STORE_WRITE, &s, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    uint64_t map0 = 0, used = 0;
    CU_ASSERT_EQUAL(store_sizes(s, &map0, &used, &err), 0);
    CU_ASSERT_EQUAL(map0, (uint64_t)1 << 20);

    /* 20 MiB: 2560 records of 8 KiB in batches of 64 */
    enum { NREC = 2560, VSIZE = 8192, BATCH = 64 };
    unsigned char (*keys)[8] = malloc(BATCH * 8);
    unsigned char *vals = malloc((size_t)BATCH * VSIZE);
    StoreItem items[BATCH];
    int failed = 0;
    for (int b = 0; b < NREC / BATCH && !failed; b++) {
        for (int i = 0; i < BATCH; i++) {
            uint64_t id = (uint64_t)b * BATCH + (uint64_t)i;
            store_key_u64(id, keys[i]);
            s_fill(vals + (size_t)i * VSIZE, VSIZE, id);
            items[i] = (StoreItem){STORE_RECORDS, keys[i], 8, vals + (size_t)i * VSIZE, VSIZE};
        }
        if (store_put_batch(s, items, BATCH, &err) < 0) {
            printf("\n  batch %d: %s", b, err.msg);
            failed = 1;
        }
    }
    CU_ASSERT_FALSE(failed);
    uint64_t map1 = 0;
    CU_ASSERT_EQUAL(store_sizes(s, &map1, &used, &err), 0);
    CU_ASSERT(map1 >= (uint64_t)20 << 20);
    CU_ASSERT(used > (uint64_t)20 << 20 && used <= map1);
    CU_ASSERT(store_map_grows(s) >= 5); /* 1 -> 32 MiB at least */
    uint64_t n = 0;
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, NREC);
    store_close(&s);

    /* everything is there, byte for byte, for a reader and for a writer
     * that reopens (which keeps the grown map) */
    Verify c = {0, 0, malloc(VSIZE), VSIZE};
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_READ, &s, &err), 0);
    CU_ASSERT_EQUAL(store_foreach(s, STORE_RECORDS, s_verify, &c, &err), 0);
    CU_ASSERT_EQUAL(c.n, NREC);
    CU_ASSERT_EQUAL(c.bad, 0);
    store_close(&s);
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &s, &err), 0);
    uint64_t map2 = 0;
    CU_ASSERT_EQUAL(store_sizes(s, &map2, &used, &err), 0);
    CU_ASSERT(map2 >= map1);
    store_close(&s);

    /* a bad override is a clear error */
    setenv("DOCMINT_STORE_MAP_MB", "lots", 1);
    CU_ASSERT_EQUAL(store_open(dir, STORE_WRITE, &s, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "DOCMINT_STORE_MAP_MB"));
    if (saved)
        setenv("DOCMINT_STORE_MAP_MB", saved, 1);
    else
        unsetenv("DOCMINT_STORE_MAP_MB");
    free(saved);
    free(c.want);
    free(keys);
    free(vals);
    s_rmtree(dir);
}

/* ---- disk full ------------------------------------------------------ */

/* A child process writes one batch, then, under a file size limit just
 * above the file's size (the same failure as a full disk: the write
 * returns EFBIG instead of ENOSPC), a batch too big to fit.  The second
 * batch must fail with a clear message and the first must survive. */
static void test_disk_full(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char msgfile[512];
    snprintf(msgfile, sizeof msgfile, "%s.msg", dir);
    fflush(stdout);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        DmErr err = {{0}};
        Store *s;
        if (store_open(dir, STORE_WRITE, &s, &err) < 0)
            _exit(10);
        static unsigned char val[4096];
        unsigned char keys[200][8];
        StoreItem items[200];
        for (int i = 0; i < 200; i++) {
            store_key_u64((uint64_t)i, keys[i]);
            items[i] = (StoreItem){STORE_RECORDS, keys[i], 8, val, sizeof val};
        }
        if (store_put_batch(s, items, 10, &err) < 0)
            _exit(11);
        struct stat st;
        if (stat(s_sub(dir, "data.mdb"), &st) < 0)
            _exit(12);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {(rlim_t)st.st_size + 65536, (rlim_t)st.st_size + 65536};
        if (setrlimit(RLIMIT_FSIZE, &rl) < 0)
            _exit(13);
        int rc = store_put_batch(s, items + 10, 190, &err);
        FILE *f = fopen(msgfile, "w");
        if (f) {
            fputs(err.msg, f);
            fclose(f);
        }
        store_close(&s);
        _exit(rc < 0 ? 0 : 14);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        printf("\n  disk-full child: status %d", status);
    char msg[1100] = "";
    FILE *f = fopen(msgfile, "r");
    if (f) {
        size_t got = fread(msg, 1, sizeof msg - 1, f);
        msg[got] = '\0';
        fclose(f);
    }
    remove(msgfile);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, dir));
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "disk full"));
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "intact"));
    if (!strstr(msg, "disk full"))
        printf("\n  disk-full message: %s", msg);

    DmErr err = {{0}};
    Store *s = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_READ, &s, &err), 0);
    uint64_t n = 0;
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 10);
    store_close(&s);
    /* and the store takes writes again once there is room */
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &s, &err), 0);
    unsigned char k[8];
    store_key_u64(99, k);
    StoreItem it = {STORE_RECORDS, k, 8, "ok", 2};
    CU_ASSERT_EQUAL(store_put_batch(s, &it, 1, &err), 0);
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 11);
    store_close(&s);
    s_rmtree(dir);
}

/* ---- refusals ------------------------------------------------------- */

/* An LMDB environment at path (an existing folder) with the named
 * databases, and key = val in the last of them. */
static void s_raw_lmdb(const char *path, const char *const *dbs, int n, const char *key,
                       const char *val)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 8);
    CU_ASSERT_EQUAL_FATAL(mdb_env_open(env, path, 0, 0664), 0);
    mdb_txn_begin(env, NULL, 0, &txn);
    for (int i = 0; i < n; i++)
        mdb_dbi_open(txn, dbs[i], MDB_CREATE, &dbi);
    MDB_val k = {strlen(key), (void *)key}, v = {strlen(val), (void *)val};
    CU_ASSERT_EQUAL(mdb_put(txn, dbi, &k, &v, 0), 0);
    CU_ASSERT_EQUAL(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void test_refusals(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DmErr err = {{0}};
    Store *s = NULL;
    char p[512];

    /* a missing store, read-only: the path is in the message */
    snprintf(p, sizeof p, "%s/missing", dir);
    CU_ASSERT_EQUAL(store_open(p, STORE_READ, &s, &err), -1);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, p));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no such store"));
    /* a folder without data.mdb */
    CU_ASSERT_EQUAL(store_open(dir, STORE_READ, &s, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a docmint store"));
    /* a file, not a folder */
    snprintf(p, sizeof p, "%s/file", dir);
    FILE *f = fopen(p, "w");
    fclose(f);
    CU_ASSERT_EQUAL(store_open(p, STORE_WRITE, &s, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a store"));
    /* a parent that does not exist */
    snprintf(p, sizeof p, "%s/no/such/parent", dir);
    CU_ASSERT_EQUAL(store_open(p, STORE_WRITE, &s, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, p));

    /* an LMDB environment that is not a docmint store */
    snprintf(p, sizeof p, "%s/foreign", dir);
    mkdir(p, 0777);
    static const char *const other[] = {"other"};
    s_raw_lmdb(p, other, 1, "key", "val");
    CU_ASSERT_EQUAL(store_open(p, STORE_READ, &s, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a docmint store"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, p));
    CU_ASSERT_EQUAL(store_open(p, STORE_WRITE, &s, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a docmint store"));

    /* a store of another schema version */
    snprintf(p, sizeof p, "%s/v2", dir);
    CU_ASSERT_EQUAL_FATAL(store_open(p, STORE_WRITE, &s, &err), 0);
    CU_ASSERT_EQUAL(store_meta_set(s, "schema_version", "2", &err), 0);
    store_close(&s);
    CU_ASSERT_EQUAL(store_open(p, STORE_READ, &s, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "schema version '2'"));

    /* one writer per store; readers are welcome */
    snprintf(p, sizeof p, "%s/one", dir);
    Store *w = NULL, *w2 = NULL, *r = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(p, STORE_WRITE, &w, &err), 0);
    CU_ASSERT_EQUAL(store_open(p, STORE_WRITE, &w2, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "writing this store"));
    CU_ASSERT_EQUAL(store_open(p, STORE_READ, &r, &err), 0);
    store_close(&r);
    store_close(&w);
    CU_ASSERT_EQUAL(store_open(p, STORE_WRITE, &w2, &err), 0);
    store_close(&w2);
    s_rmtree(dir);
}

/* A store written before the features database existed: readers see it
 * empty, a writer adds it. */
static void test_optional_features(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    static const char *const dbs[] = {"records", "errors", "meta"};
    s_raw_lmdb(dir, dbs, 3, "schema_version", "1");

    DmErr err = {{0}};
    Store *s = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_READ, &s, &err), 0);
    uint64_t n = 1;
    void *val = NULL;
    size_t vlen = 0;
    StoreDbSize z = {1, 1, 1};
    CU_ASSERT_EQUAL(store_count(s, STORE_FEATURES, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(store_has(s, STORE_FEATURES, "p", 1, &err), 0);
    CU_ASSERT_EQUAL(store_get(s, STORE_FEATURES, "p", 1, &val, &vlen, &err), 0);
    CU_ASSERT_EQUAL(store_db_size(s, STORE_FEATURES, &z, &err), 0);
    CU_ASSERT(z.entries == 0 && z.bytes == 0 && z.page_bytes == 0);
    CU_ASSERT_EQUAL(store_has(s, "nosuch", "p", 1, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "unknown database 'nosuch'"));
    store_close(&s);

    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &s, &err), 0);
    StoreItem it = {STORE_FEATURES, "page", 4, "value", 5};
    CU_ASSERT_EQUAL(store_put_batch(s, &it, 1, &err), 0);
    store_close(&s);
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_READ, &s, &err), 0);
    CU_ASSERT_EQUAL(store_has(s, STORE_FEATURES, "page", 4, &err), 1);
    CU_ASSERT_EQUAL(store_db_size(s, STORE_FEATURES, &z, &err), 0);
    CU_ASSERT(z.entries == 1 && z.bytes == 9 && z.page_bytes >= 4096);
    store_close(&s);
    s_rmtree(dir);
}

/* ---- records -------------------------------------------------------- */

static void test_records_roundtrip(void)
{
    Docmint__AnswerRecord a = DOCMINT__ANSWER_RECORD__INIT;
    int32_t ids[] = {57523, 0, -1, 2147483647};
    a.question_id = 49153;
    a.answer = (char *)"東京 \"quoted\" \\ tab\t nl\n bell\x07 é";
    a.n_token_ids = 4;
    a.token_ids = ids;
    a.mean_logprob = -0.1234567f;
    a.seconds = 1.5f;
    a.page_id = (char *)"";
    a.question = (char *)"What is the date? ✓";
    uint8_t *buf;
    size_t len;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(record_answer_pack(&a, &buf, &len, &err), 0);
    Docmint__AnswerRecord *b = record_answer_unpack(buf, len, &err);
    free(buf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(b->question_id, 49153);
    CU_ASSERT_STRING_EQUAL(b->answer, a.answer);
    CU_ASSERT_STRING_EQUAL(b->page_id, "");
    CU_ASSERT_STRING_EQUAL(b->question, a.question);
    CU_ASSERT_EQUAL(b->n_token_ids, 4);
    CU_ASSERT(b->n_token_ids == 4 && memcmp(b->token_ids, ids, sizeof ids) == 0);
    CU_ASSERT_EQUAL(b->mean_logprob, a.mean_logprob);
    CU_ASSERT_EQUAL(b->seconds, 1.5f);
    char *json = record_answer_json(b);
    CU_ASSERT_STRING_EQUAL(json,
                           "{\"questionId\":49153,\"answer\":\"東京 \\\"quoted\\\" \\\\ tab\\t nl\\n "
                           "bell\\u0007 é\",\"token_ids\":[57523,0,-1,2147483647],"
                           "\"mean_logprob\":-0.1234567,\"seconds\":1.5,\"page_id\":\"\","
                           "\"question\":\"What is the date? ✓\"}");
    free(json);
    record_answer_free(&b);
    CU_ASSERT_PTR_NULL(b);

    /* an all-default record: empty strings, no ids, zeros */
    Docmint__AnswerRecord e = DOCMINT__ANSWER_RECORD__INIT;
    CU_ASSERT_EQUAL_FATAL(record_answer_pack(&e, &buf, &len, &err), 0);
    CU_ASSERT_EQUAL(len, 0);
    b = record_answer_unpack(buf, len, &err);
    free(buf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    json = record_answer_json(b);
    CU_ASSERT_STRING_EQUAL(json, "{\"questionId\":0,\"answer\":\"\",\"token_ids\":[],\"mean_logprob\":0,"
                                 "\"seconds\":0,\"page_id\":\"\",\"question\":\"\"}");
    free(json);
    record_answer_free(&b);

    /* invalid UTF-8 is refused, naming the record and field */
    a.answer = (char *)"caf\xe9";
    CU_ASSERT_EQUAL(record_answer_pack(&a, &buf, &len, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "49153"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "answer"));
    CU_ASSERT_PTR_NULL(record_answer_unpack("\xff\xff\xff", 3, &err));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "AnswerRecord"));

    Docmint__ErrorRecord r = DOCMINT__ERROR_RECORD__INIT;
    r.item = (char *)"page-7";
    r.stage = (char *)"infer";
    r.reason = (char *)"images/p7.png: not an image";
    CU_ASSERT_EQUAL_FATAL(record_error_pack(&r, &buf, &len, &err), 0);
    Docmint__ErrorRecord *q = record_error_unpack(buf, len, &err);
    free(buf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(q);
    json = record_error_json(q);
    CU_ASSERT_STRING_EQUAL(json, "{\"item\":\"page-7\",\"stage\":\"infer\",\"reason\":\"images/p7.png: not "
                                 "an image\",\"questionId\":0}");
    free(json);
    record_error_free(&q);
}

static void test_float_format(void)
{
    char b[32];
    records_format_float(b, 0.1f);
    CU_ASSERT_STRING_EQUAL(b, "0.1");
    records_format_float(b, -2.5f);
    CU_ASSERT_STRING_EQUAL(b, "-2.5");
    records_format_float(b, 1e-5f);
    CU_ASSERT_STRING_EQUAL(b, "1e-05");
    records_format_float(b, 16777216.0f);
    CU_ASSERT_STRING_EQUAL(b, "16777216");
    records_format_float(b, NAN);
    CU_ASSERT_STRING_EQUAL(b, "null");
    records_format_float(b, -INFINITY);
    CU_ASSERT_STRING_EQUAL(b, "null");
    /* every printed value reads back to the same float */
    uint32_t x = 12345;
    int bad = 0;
    for (int i = 0; i < 100000; i++) {
        x = x * 1664525u + 1013904223u;
        float f;
        memcpy(&f, &x, 4);
        if (!isfinite(f))
            continue;
        records_format_float(b, f);
        bad += (float)strtod(b, NULL) != f;
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_records_put(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DmErr err = {{0}};
    Store *s = NULL;
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &s, &err), 0);
    Docmint__AnswerRecord a1 = DOCMINT__ANSWER_RECORD__INIT, a2 = DOCMINT__ANSWER_RECORD__INIT;
    a1.question_id = 10;
    a1.answer = (char *)"ten";
    a2.question_id = 2;
    a2.answer = (char *)"two";
    Docmint__ErrorRecord e1 = DOCMINT__ERROR_RECORD__INIT, e2 = DOCMINT__ERROR_RECORD__INIT;
    e1.item = (char *)"page-3";
    e1.reason = (char *)"bad image";
    e2.question_id = 77; /* no item: keyed by the questionId */
    e2.reason = (char *)"decode failed";
    Docmint__AnswerRecord *as[] = {&a1, &a2};
    Docmint__ErrorRecord *es[] = {&e1, &e2};
    CU_ASSERT_EQUAL(records_put(s, as, 2, es, 2, &err), 0);
    CU_ASSERT_EQUAL(records_put(s, as, 2, es, 2, &err), 0); /* again: same records */
    uint64_t n;
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_EQUAL(store_count(s, STORE_ERRORS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 2);
    unsigned char k[8];
    store_key_u64(2, k);
    void *v;
    size_t vlen;
    CU_ASSERT_EQUAL(store_get(s, STORE_RECORDS, k, 8, &v, &vlen, &err), 1);
    Docmint__AnswerRecord *got = record_answer_unpack(v, vlen, &err);
    free(v);
    CU_ASSERT(got && strcmp(got->answer, "two") == 0);
    record_answer_free(&got);
    CU_ASSERT_EQUAL(store_get(s, STORE_ERRORS, "77", 2, &v, &vlen, &err), 1);
    free(v);
    CU_ASSERT_EQUAL(store_get(s, STORE_ERRORS, "page-3", 6, &v, &vlen, &err), 1);
    free(v);
    /* a record that cannot be packed writes nothing of its batch */
    Docmint__AnswerRecord bad = DOCMINT__ANSWER_RECORD__INIT;
    bad.question_id = 5;
    bad.question = (char *)"\xc0\x80";
    Docmint__AnswerRecord *bs[] = {&bad};
    CU_ASSERT_EQUAL(records_put(s, bs, 1, NULL, 0, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, dir));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "question"));
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 2);
    store_close(&s);
    s_rmtree(dir);
}

void tests_store(void)
{
    TU_SUITE("store", {"put, get, foreach, count, meta", test_put_get},
             {"idempotent rewrites", test_idempotent}, {"map grows from 1 MiB to hold 20 MiB", test_map_growth},
             {"disk full keeps committed batches", test_disk_full},
             {"missing, foreign, other-version stores; one writer", test_refusals},
             {"features database: optional for readers, created by writers", test_optional_features},
             {"records: pack/unpack/JSON round trip", test_records_roundtrip},
             {"records: float formatting", test_float_format}, {"records_put", test_records_put});
}
