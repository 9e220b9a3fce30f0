/* test_store_damage.c - damaged stores give errors, not crashes: the
 * CRC-32C against the published check values, the checksum each record
 * carries (read back with LMDB itself), a flipped byte found by every
 * reader and by store_verify, a store written before checksums, a cut
 * data.mdb refused before it is mapped, a file cut while it is open (a
 * bus error inside the map), and random damage to every page of a real
 * store, each read in a child process that must exit, never die of a
 * signal. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <ftw.h>
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/crc32c.h"
#include "common/records.h"
#include "common/store.h"
#include "common/store_verify.h"
#include "tutil.h"

static int s_rm(const char *p, const struct stat *st, int flag, struct FTW *ftw) { return remove(p); }

static char *s_tmpdir(void)
{
    char *t = strdup("/tmp/docmint-damage-XXXXXX");
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

/* CRC-32C check values: "123456789" (the catalogue's check value) and the
 * three 32-byte vectors of RFC 3720 appendix B.4. */
static void test_crc32c(void)
{
    CU_ASSERT_EQUAL(crc32c(0, "123456789", 9), 0xE3069283u);
    unsigned char b[32];
    memset(b, 0, sizeof b);
    CU_ASSERT_EQUAL(crc32c(0, b, 32), 0x8A9136AAu);
    memset(b, 0xff, sizeof b);
    CU_ASSERT_EQUAL(crc32c(0, b, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)i;
    CU_ASSERT_EQUAL(crc32c(0, b, 32), 0x46DD794Eu);
    /* in pieces, unaligned */
    CU_ASSERT_EQUAL(crc32c(crc32c(0, b, 5), b + 5, 27), 0x46DD794Eu);
    CU_ASSERT_EQUAL(crc32c(0, "", 0), 0u);
}

/* A store of n answer records (questionIds 1..n) at dir/name. */
static void s_make_store(const char *path, int n)
{
    DmErr err = {{0}};
    Store *s;
    CU_ASSERT_EQUAL_FATAL(store_open(path, STORE_WRITE, &s, &err), 0);
    for (int i = 1; i <= n; i++) {
        char ans[96], page[32];
        snprintf(ans, sizeof ans, "answer %d, long enough to fill pages of the tree %d", i, i * 7);
        snprintf(page, sizeof page, "page%04d", i);
        int32_t ids[3] = {i, i + 1, i + 2};
        Docmint__AnswerRecord r = DOCMINT__ANSWER_RECORD__INIT;
        r.question_id = i;
        r.answer = ans;
        r.page_id = page;
        r.question = "what?";
        r.token_ids = ids;
        r.n_token_ids = 3;
        Docmint__AnswerRecord *rp = &r;
        CU_ASSERT_EQUAL_FATAL(records_put(s, &rp, 1, NULL, 0, &err), 0);
    }
    store_close(&s);
}

/* The raw value LMDB holds for questionId id. */
static int s_raw_value(const char *path, uint64_t id, unsigned char *out, size_t cap, size_t *n)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 8);
    int rc = mdb_env_open(env, path, MDB_RDONLY, 0664);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        rc = mdb_dbi_open(txn, "records", 0, &dbi);
        unsigned char k[8];
        store_key_u64(id, k);
        MDB_val kv = {8, k}, v;
        if (rc == 0)
            rc = mdb_get(txn, dbi, &kv, &v);
        if (rc == 0 && v.mv_size <= cap) {
            memcpy(out, v.mv_data, v.mv_size);
            *n = v.mv_size;
        }
        mdb_txn_abort(txn);
    }
    mdb_env_close(env);
    return rc;
}

typedef struct Damage {
    int n;
    char key[64], what[256];
} Damage;

static void s_on_damage(void *ctx, const char *db, const char *key, const char *what)
{
    Damage *d = ctx;
    if (d->n++ == 0) {
        snprintf(d->key, sizeof d->key, "%s", key);
        snprintf(d->what, sizeof d->what, "%s", what);
    }
}

static int s_count_visit(void *ctx, const void *k, size_t kl, const void *v, size_t vl)
{
    (*(int *)ctx)++;
    return 0;
}

/* Flip one byte of the value of questionId id inside data.mdb (found by
 * its answer text). */
static int s_flip_in_file(const char *data, const char *needle)
{
    FILE *f = fopen(data, "r+b");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    char *b = malloc((size_t)n);
    fseek(f, 0, SEEK_SET);
    int rc = -1;
    if (fread(b, 1, (size_t)n, f) == (size_t)n) {
        char *p = memmem(b, (size_t)n, needle, strlen(needle));
        if (p) {
            long off = p - b + 2;
            fseek(f, off, SEEK_SET);
            fputc(b[off] ^ 0x01, f);
            rc = 0;
        }
    }
    free(b);
    fclose(f);
    return rc;
}

static void test_checksums(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char path[512], data[600];
    snprintf(path, sizeof path, "%s/st", dir);
    snprintf(data, sizeof data, "%s/data.mdb", path);
    s_make_store(path, 40);

    /* the stored bytes: the record, then its CRC-32C little-endian */
    unsigned char raw[512];
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(s_raw_value(path, 17, raw, sizeof raw, &n), 0);
    CU_ASSERT_FATAL(n > 4);
    uint32_t tail = (uint32_t)raw[n - 4] | (uint32_t)raw[n - 3] << 8 | (uint32_t)raw[n - 2] << 16 |
                    (uint32_t)raw[n - 1] << 24;
    CU_ASSERT_EQUAL(tail, crc32c(0, raw, n - 4));
    DmErr err = {{0}};
    Docmint__AnswerRecord *r = record_answer_unpack(raw, n - 4, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(r->question_id, 17);
    record_answer_free(&r);

    /* a sound store verifies */
    Store *s;
    StoreVerifyCounts c;
    Damage dmg = {0};
    CU_ASSERT_EQUAL_FATAL(store_open(path, STORE_READ, &s, &err), 0);
    CU_ASSERT_EQUAL(store_checksums(s), 1);
    CU_ASSERT_EQUAL(store_verify(s, s_on_damage, &dmg, &c, &err), 0);
    CU_ASSERT_EQUAL(c.records, 40);
    CU_ASSERT_EQUAL(c.damaged, 0);
    store_close(&s);

    /* one flipped byte inside record 17's answer */
    CU_ASSERT_EQUAL_FATAL(s_flip_in_file(data, "answer 17,"), 0);
    CU_ASSERT_EQUAL_FATAL(store_open(path, STORE_READ, &s, &err), 0);
    void *v;
    size_t vl;
    unsigned char k[8];
    store_key_u64(17, k);
    CU_ASSERT_EQUAL(store_get(s, STORE_RECORDS, k, 8, &v, &vl, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "questionId 17"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "checksum mismatch"));
    store_key_u64(16, k);
    CU_ASSERT_EQUAL(store_get(s, STORE_RECORDS, k, 8, &v, &vl, &err), 1);
    free(v);
    int seen = 0;
    CU_ASSERT_EQUAL(store_foreach(s, STORE_RECORDS, s_count_visit, &seen, &err), -1);
    CU_ASSERT_EQUAL(seen, 16);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "questionId 17"));
    memset(&dmg, 0, sizeof dmg);
    CU_ASSERT_EQUAL(store_verify(s, s_on_damage, &dmg, &c, &err), 0);
    CU_ASSERT_EQUAL(c.records, 40);
    CU_ASSERT_EQUAL(c.damaged, 1);
    CU_ASSERT_EQUAL(dmg.n, 1);
    CU_ASSERT_STRING_EQUAL(dmg.key, "questionId 17");
    CU_ASSERT_PTR_NOT_NULL(strstr(dmg.what, "checksum mismatch"));
    store_close(&s);
    s_rmtree(dir);
}

/* A store as docmint wrote it before checksums: meta schema_version 1, no
 * value_checksum, plain protobuf values.  Read as it is; store_verify
 * checks the parses; a writer resuming it keeps its format. */
static void test_legacy(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, rec, errs;
    mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 8);
    CU_ASSERT_EQUAL_FATAL(mdb_env_open(env, dir, 0, 0664), 0);
    mdb_txn_begin(env, NULL, 0, &txn);
    mdb_dbi_open(txn, "meta", MDB_CREATE, &meta);
    mdb_dbi_open(txn, "records", MDB_CREATE, &rec);
    mdb_dbi_open(txn, "errors", MDB_CREATE, &errs);
    MDB_val k = {14, "schema_version"}, v = {1, "1"};
    mdb_put(txn, meta, &k, &v, 0);
    DmErr err = {{0}};
    for (int i = 1; i <= 3; i++) {
        Docmint__AnswerRecord r = DOCMINT__ANSWER_RECORD__INIT;
        r.question_id = i;
        r.answer = "old";
        uint8_t *buf;
        size_t len;
        unsigned char key[8];
        store_key_u64((uint64_t)i, key);
        CU_ASSERT_EQUAL_FATAL(record_answer_pack(&r, &buf, &len, &err), 0);
        MDB_val kk = {8, key}, vv = {len, buf};
        if (i == 3)
            vv = (MDB_val){5, "\xff\xff\xff\xff\xff"}; /* not a record */
        CU_ASSERT_EQUAL(mdb_put(txn, rec, &kk, &vv, 0), 0);
        free(buf);
    }
    CU_ASSERT_EQUAL_FATAL(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    Store *s;
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_READ, &s, &err), 0);
    CU_ASSERT_EQUAL(store_checksums(s), 0);
    unsigned char key[8];
    void *val;
    size_t vl;
    store_key_u64(2, key);
    CU_ASSERT_EQUAL(store_get(s, STORE_RECORDS, key, 8, &val, &vl, &err), 1);
    Docmint__AnswerRecord *r = record_answer_unpack(val, vl, &err);
    CU_ASSERT_PTR_NOT_NULL(r);
    if (r)
        CU_ASSERT_STRING_EQUAL(r->answer, "old");
    record_answer_free(&r);
    free(val);
    StoreVerifyCounts c;
    Damage dmg = {0};
    CU_ASSERT_EQUAL(store_verify(s, s_on_damage, &dmg, &c, &err), 0);
    CU_ASSERT_EQUAL(c.checksums, 0);
    CU_ASSERT_EQUAL(c.records, 3);
    CU_ASSERT_EQUAL(c.damaged, 1);
    CU_ASSERT_STRING_EQUAL(dmg.key, "questionId 3");
    store_close(&s);

    /* a writer resuming it keeps writing plain values */
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &s, &err), 0);
    CU_ASSERT_EQUAL(store_checksums(s), 0);
    store_key_u64(9, key);
    StoreItem it = {STORE_RECORDS, key, 8, "abc", 3};
    CU_ASSERT_EQUAL(store_put_batch(s, &it, 1, &err), 0);
    store_close(&s);
    size_t n = 0;
    unsigned char raw[64];
    CU_ASSERT_EQUAL(s_raw_value(dir, 9, raw, sizeof raw, &n), 0);
    CU_ASSERT_EQUAL(n, 3);
    s_rmtree(dir);
}

/* data.mdb cut short: refused before LMDB maps it. */
static void test_truncated(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char path[512], data[600];
    snprintf(path, sizeof path, "%s/st", dir);
    snprintf(data, sizeof data, "%s/data.mdb", path);
    s_make_store(path, 300);
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(data, &st), 0);
    DmErr err = {{0}};
    Store *s = NULL;
    /* one page short, then shorter than a meta page */
    off_t cuts[] = {st.st_size - 4096, 8192 + 100, 100};
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL_FATAL(truncate(data, cuts[i]), 0);
        CU_ASSERT_EQUAL(store_open(path, STORE_READ, &s, &err), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, data));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "damaged"));
        CU_ASSERT_EQUAL(store_open(path, STORE_WRITE, &s, &err), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "damaged"));
    }
    s_rmtree(dir);
}

/* The file cut while the store is open: the next read touches pages past
 * the end (SIGBUS), which must come back as an error naming the store. */
static void test_cut_while_open(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char path[512], data[600];
    snprintf(path, sizeof path, "%s/st", dir);
    snprintf(data, sizeof data, "%s/data.mdb", path);
    s_make_store(path, 300);
    DmErr err = {{0}};
    Store *s;
    CU_ASSERT_EQUAL_FATAL(store_open(path, STORE_READ, &s, &err), 0);
    CU_ASSERT_EQUAL_FATAL(truncate(data, 8192), 0);
    int seen = 0;
    CU_ASSERT_EQUAL(store_foreach(s, STORE_RECORDS, s_count_visit, &seen, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "bus error"));
    /* the handle is spent, and says so */
    uint64_t n;
    CU_ASSERT_EQUAL(store_count(s, STORE_RECORDS, &n, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "damaged store"));
    store_close(&s);
    s_rmtree(dir);
}

/* Read everything a reader would; exit 0 (sound), 1 (an error), never a
 * signal. */
static void s_read_all_child(const char *path)
{
    DmErr err = {{0}};
    Store *s;
    if (store_open(path, STORE_READ, &s, &err) < 0)
        _exit(1);
    int bad = 0, seen = 0;
    StoreVerifyCounts c;
    uint64_t n;
    bad |= store_verify(s, NULL, NULL, &c, &err) < 0 || c.damaged > 0;
    bad |= store_count(s, STORE_RECORDS, &n, &err) < 0;
    bad |= store_foreach(s, STORE_RECORDS, s_count_visit, &seen, &err) < 0;
    for (uint64_t id = 1; id <= 300; id += 37) {
        unsigned char k[8];
        void *v;
        size_t vl;
        store_key_u64(id, k);
        int rc = store_get(s, STORE_RECORDS, k, 8, &v, &vl, &err);
        bad |= rc != 1;
        if (rc == 1)
            free(v);
    }
    store_close(&s);
    _exit(bad ? 1 : 0);
}

/* Random damage to a real store: bytes flipped in a random page, a page
 * zeroed, or the file cut; every read in a child that must not die of a
 * signal (LMDB assertions included). */
static void test_random_damage(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char path[512], data[600], copy[600], cdata[700];
    snprintf(path, sizeof path, "%s/st", dir);
    snprintf(data, sizeof data, "%s/data.mdb", path);
    snprintf(copy, sizeof copy, "%s/copy", dir);
    snprintf(cdata, sizeof cdata, "%s/data.mdb", copy);
    s_make_store(path, 300);
    FILE *f = fopen(data, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *orig = malloc((size_t)size), *buf = malloc((size_t)size);
    CU_ASSERT_FATAL(fread(orig, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    long pages = size / 4096;
    mkdir(copy, 0777);
    int outcome[3] = {0, 0, 0}; /* sound, error, signal */
    unsigned seed = 20261206u;
    for (int t = 0; t < 150; t++) {
        memcpy(buf, orig, (size_t)size);
        long len = size;
        int kind = t % 3;
        long pg = 2 + (long)(rand_r(&seed) % (unsigned)(pages - 2));
        if (kind == 0) {
            for (int j = 0; j < 8; j++)
                buf[pg * 4096 + rand_r(&seed) % 4096] ^= (unsigned char)(1 + rand_r(&seed) % 255);
        } else if (kind == 1) {
            memset(buf + pg * 4096 + 16, 0, 4096 - 16);
            buf[pg * 4096 + rand_r(&seed) % 16] ^= 0xff; /* and its header */
        } else {
            len = pg * 4096 + (long)(rand_r(&seed) % 4096);
        }
        char lock[720];
        snprintf(lock, sizeof lock, "%s/lock.mdb", copy);
        unlink(lock);
        FILE *o = fopen(cdata, "wb");
        CU_ASSERT_PTR_NOT_NULL_FATAL(o);
        fwrite(buf, 1, (size_t)len, o);
        fclose(o);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            s_read_all_child(copy);
        }
        int status;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status)) {
            outcome[2]++;
            printf("\n    trial %d (kind %d, page %ld): signal %d", t, kind, pg, WTERMSIG(status));
        } else {
            outcome[WEXITSTATUS(status) ? 1 : 0]++;
        }
    }
    printf("\n    150 damaged copies: %d read clean, %d errors, %d signals", outcome[0], outcome[1],
           outcome[2]);
    CU_ASSERT_EQUAL(outcome[2], 0);
    CU_ASSERT(outcome[1] >= 50); /* every cut copy at least */
    free(orig);
    free(buf);
    s_rmtree(dir);
}

void tests_store_damage(void)
{
    TU_SUITE("store damage", {"CRC-32C check values", test_crc32c},
             {"record checksums: stored, checked, verified", test_checksums},
             {"stores written before checksums", test_legacy},
             {"data.mdb cut short: refused before mapping", test_truncated},
             {"file cut while open: bus error becomes an error", test_cut_while_open},
             {"random damage: errors, never signals", test_random_damage});
}
