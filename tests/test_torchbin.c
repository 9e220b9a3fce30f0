/* test_torchbin.c - the PyTorch zip checkpoint reader (common/torchbin.c).
 *
 * The golden data/tiny-a/pytorch_model.bin (written by torch 1.13) must hold
 * exactly the tensors of model.safetensors.  Everything else is built here:
 * a small zip writer that lays entries out as torch does (64-byte aligned
 * data, data descriptors, optionally ZIP64 records) and a pickle builder,
 * so that views, dtypes, newer torch forms and broken files can be tested
 * without Python. */
#include <CUnit/CUnit.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tutil.h"

#define TB_BIN TU_TINY "/pytorch_model.bin"
#define TB_ST TU_TINY "/model.safetensors"

/* ------------------------------------------------------------ helpers */

static TuTmp s_tmpdir = {.pattern = "/tmp/dm_torchbin_XXXXXX"};

/* Remove the temp dir at the end of each test that used it (a later
 * sanitizer stop skips atexit); atexit is the fallback after a failure. */
static void s_tmp_done(void) { tu_tmp_done(&s_tmpdir); }

static const char *s_tmp(const char *name) { return tu_tmp(&s_tmpdir, name, s_tmp_done); }

static void s_write(const char *path, const void *p, size_t n) { tu_write(path, p, n); }

static unsigned char *s_slurp(const char *path, size_t *n) { return tu_slurp(path, n); }

/* torchbin_open must fail, leave *out NULL, and say which file (and,
 * when given, the words that make the message useful). */
static void s_expect_fail(const char *path, const char *want1, const char *want2)
{
    tu_expect_open_fail(torchbin_open, path, want1, want2);
}

typedef struct TbBuf {
    unsigned char *p;
    size_t n, cap;
} TbBuf;

static void s_put(TbBuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void s_u8(TbBuf *b, unsigned v) { unsigned char c = (unsigned char)v; s_put(b, &c, 1); }
static void s_u16(TbBuf *b, unsigned v) { s_u8(b, v & 0xff); s_u8(b, (v >> 8) & 0xff); }
static void s_u32(TbBuf *b, uint32_t v) { s_u16(b, v & 0xffff); s_u16(b, v >> 16); }
static void s_u64(TbBuf *b, uint64_t v) { s_u32(b, (uint32_t)v); s_u32(b, (uint32_t)(v >> 32)); }

static uint32_t s_crc(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

/* ------------------------------------------------------------ zip writer */

typedef struct ZipW {
    TbBuf b;
    struct {
        char name[96];
        uint64_t lho, size;
        uint32_t crc;
        uint16_t method;
    } e[48];
    int n;
    int zip64;     /* ZIP64 central fields and end records, as torch for > 4 GiB */
    int misalign;  /* start entry data at 1 mod 64 instead of 0 */
} ZipW;

/* One entry the way torch writes it: bit 3 set (sizes follow the data in a
 * descriptor, zero in the local header), an "FB" extra field padding the
 * data to a 64-byte boundary.  method != 0 only labels the (unchanged)
 * bytes as compressed, to test the rejection. */
static void z_add(ZipW *z, const char *name, const void *data, size_t n, unsigned method)
{
    int i = z->n++;
    snprintf(z->e[i].name, sizeof z->e[i].name, "%s", name);
    z->e[i].lho = z->b.n;
    z->e[i].size = n;
    z->e[i].crc = s_crc(data, n);
    z->e[i].method = (uint16_t)method;
    size_t nl = strlen(name);
    size_t base = z->b.n + 30 + nl + 4;
    size_t pad = (64 - base % 64) % 64;
    if (z->misalign)
        pad = (65 - base % 64) % 64;
    s_u32(&z->b, 0x04034b50u);
    s_u16(&z->b, z->zip64 ? 45 : 20);
    s_u16(&z->b, 0x08);
    s_u16(&z->b, method);
    s_u16(&z->b, 0);
    s_u16(&z->b, 0x21);
    s_u32(&z->b, 0);
    s_u32(&z->b, 0);
    s_u32(&z->b, 0);
    s_u16(&z->b, (unsigned)nl);
    s_u16(&z->b, (unsigned)(4 + pad));
    s_put(&z->b, name, nl);
    s_u16(&z->b, 0x4246); /* "FB" */
    s_u16(&z->b, (unsigned)pad);
    for (size_t k = 0; k < pad; k++)
        s_u8(&z->b, 'Z');
    s_put(&z->b, data, n);
    s_u32(&z->b, 0x08074b50u);
    s_u32(&z->b, z->e[i].crc);
    if (z->zip64) {
        s_u64(&z->b, n);
        s_u64(&z->b, n);
    } else {
        s_u32(&z->b, (uint32_t)n);
        s_u32(&z->b, (uint32_t)n);
    }
}

/* Central directory and end records; the archive is then in z->b. */
static void z_finish(ZipW *z)
{
    uint64_t cd = z->b.n;
    for (int i = 0; i < z->n; i++) {
        size_t nl = strlen(z->e[i].name);
        s_u32(&z->b, 0x02014b50u);
        s_u16(&z->b, z->zip64 ? 45 : 20);
        s_u16(&z->b, z->zip64 ? 45 : 20);
        s_u16(&z->b, 0x08);
        s_u16(&z->b, z->e[i].method);
        s_u16(&z->b, 0);
        s_u16(&z->b, 0x21);
        s_u32(&z->b, z->e[i].crc);
        s_u32(&z->b, z->zip64 ? 0xFFFFFFFFu : (uint32_t)z->e[i].size);
        s_u32(&z->b, z->zip64 ? 0xFFFFFFFFu : (uint32_t)z->e[i].size);
        s_u16(&z->b, (unsigned)nl);
        s_u16(&z->b, z->zip64 ? 4 + 24 : 0);
        s_u16(&z->b, 0);
        s_u16(&z->b, 0);
        s_u16(&z->b, 0);
        s_u32(&z->b, 0);
        s_u32(&z->b, z->zip64 ? 0xFFFFFFFFu : (uint32_t)z->e[i].lho);
        s_put(&z->b, z->e[i].name, nl);
        if (z->zip64) {
            s_u16(&z->b, 0x0001);
            s_u16(&z->b, 24);
            s_u64(&z->b, z->e[i].size);
            s_u64(&z->b, z->e[i].size);
            s_u64(&z->b, z->e[i].lho);
        }
    }
    uint64_t cd_size = z->b.n - cd;
    if (z->zip64) {
        uint64_t rec = z->b.n;
        s_u32(&z->b, 0x06064b50u);
        s_u64(&z->b, 44);
        s_u16(&z->b, 45);
        s_u16(&z->b, 45);
        s_u32(&z->b, 0);
        s_u32(&z->b, 0);
        s_u64(&z->b, (uint64_t)z->n);
        s_u64(&z->b, (uint64_t)z->n);
        s_u64(&z->b, cd_size);
        s_u64(&z->b, cd);
        s_u32(&z->b, 0x07064b50u);
        s_u32(&z->b, 0);
        s_u64(&z->b, rec);
        s_u32(&z->b, 1);
    }
    s_u32(&z->b, 0x06054b50u);
    s_u16(&z->b, 0);
    s_u16(&z->b, 0);
    s_u16(&z->b, z->zip64 ? 0xFFFF : (unsigned)z->n);
    s_u16(&z->b, z->zip64 ? 0xFFFF : (unsigned)z->n);
    s_u32(&z->b, z->zip64 ? 0xFFFFFFFFu : (uint32_t)cd_size);
    s_u32(&z->b, z->zip64 ? 0xFFFFFFFFu : (uint32_t)cd);
    s_u16(&z->b, 0);
}

/* --------------------------------------------------------- pickle builder */

typedef struct Pk {
    TbBuf b;
    int proto4;  /* SHORT_BINUNICODE + STACK_GLOBAL + MEMOIZE instead of X/c/BINPUT */
    int memo;    /* next memo index */
} Pk;

static void pk_op(Pk *p, unsigned op) { s_u8(&p->b, op); }

static int pk_memo(Pk *p)
{
    if (p->proto4) {
        pk_op(p, 0x94); /* MEMOIZE */
    } else if (p->memo < 256) {
        pk_op(p, 'q');
        s_u8(&p->b, (unsigned)p->memo);
    } else {
        pk_op(p, 'r');
        s_u32(&p->b, (uint32_t)p->memo);
    }
    return p->memo++;
}

static void pk_get(Pk *p, int idx)
{
    if (idx < 256) {
        pk_op(p, 'h');
        s_u8(&p->b, (unsigned)idx);
    } else {
        pk_op(p, 'j');
        s_u32(&p->b, (uint32_t)idx);
    }
}

static void pk_str(Pk *p, const char *s)
{
    size_t n = strlen(s);
    if (p->proto4 && n < 256) {
        pk_op(p, 0x8c);
        s_u8(&p->b, (unsigned)n);
    } else {
        pk_op(p, 'X');
        s_u32(&p->b, (uint32_t)n);
    }
    s_put(&p->b, s, n);
}

static void pk_int(Pk *p, int64_t v)
{
    if (v >= 0 && v < 256) {
        pk_op(p, 'K');
        s_u8(&p->b, (unsigned)v);
    } else if (v >= 0 && v < 65536) {
        pk_op(p, 'M');
        s_u16(&p->b, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        pk_op(p, 'J');
        s_u32(&p->b, (uint32_t)(int32_t)v);
    } else {
        pk_op(p, 0x8a);
        s_u8(&p->b, 8);
        s_u64(&p->b, (uint64_t)v);
    }
}

static void pk_global(Pk *p, const char *mod, const char *name)
{
    if (p->proto4) {
        pk_str(p, mod);
        pk_str(p, name);
        pk_op(p, 0x93);
    } else {
        pk_op(p, 'c');
        s_put(&p->b, mod, strlen(mod));
        s_u8(&p->b, '\n');
        s_put(&p->b, name, strlen(name));
        s_u8(&p->b, '\n');
    }
}

static void pk_ints(Pk *p, int n, const int64_t *v)
{
    pk_op(p, '(');
    for (int i = 0; i < n; i++)
        pk_int(p, v[i]);
    pk_op(p, 't');
}

/* collections.OrderedDict(), the backward-hooks argument. */
static void pk_odict(Pk *p)
{
    pk_global(p, "collections", "OrderedDict");
    pk_op(p, ')');
    pk_op(p, 'R');
}

typedef struct PkTensor {
    const char *name;
    const char *stype; /* torch.<stype>, e.g. "FloatStorage"; "UntypedStorage" for v3 */
    const char *key;
    int64_t numel;     /* storage elements (bytes when untyped) */
    int64_t off;
    int nd;
    int64_t size[4], stride[4];
    const char *v3dtype; /* torch.<v3dtype>: _rebuild_tensor_v3 */
    int param;           /* wrap in _rebuild_parameter */
    int from_type;       /* wrap in _rebuild_from_type_v2 (Parameter, torch >= 2) */
} PkTensor;

/* The value only (no key): a tensor as torch's Tensor.__reduce_ex__ emits. */
static void pk_tensor_value(Pk *p, const PkTensor *t)
{
    if (t->param)
        pk_global(p, "torch._utils", "_rebuild_parameter");
    if (t->from_type)
        pk_global(p, "torch._tensor", "_rebuild_from_type_v2");
    if (t->param || t->from_type)
        pk_op(p, '(');
    pk_global(p, "torch._utils", t->v3dtype ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    if (t->from_type) {
        pk_global(p, "torch.nn.parameter", "Parameter");
        pk_op(p, '(');
    } else {
        pk_op(p, '(');
    }
    pk_op(p, '(');
    pk_str(p, "storage");
    pk_global(p, "torch", t->stype);
    pk_str(p, t->key);
    pk_str(p, "cpu");
    pk_int(p, t->numel);
    pk_op(p, 't');
    pk_memo(p);
    pk_op(p, 'Q');
    pk_int(p, t->off);
    pk_ints(p, t->nd, t->size);
    pk_ints(p, t->nd, t->stride);
    pk_op(p, 0x89);
    pk_odict(p);
    if (t->v3dtype)
        pk_global(p, "torch", t->v3dtype);
    pk_op(p, 't');
    if (t->from_type) {
        pk_op(p, '}'); /* state */
        pk_op(p, 't');
        pk_op(p, 'R');
    } else if (!t->param) {
        pk_op(p, 'R');
    }
    if (t->param) {
        pk_op(p, 'R');
        pk_op(p, 0x88);
        pk_odict(p);
        pk_op(p, 't');
        pk_op(p, 'R');
    }
    pk_memo(p);
}

static void pk_begin(Pk *p)
{
    pk_op(p, 0x80);
    s_u8(&p->b, 2);
    pk_global(p, "collections", "OrderedDict");
    pk_memo(p);
    pk_op(p, ')');
    pk_op(p, 'R');
    pk_memo(p);
    pk_op(p, '(');
}

static void pk_end(Pk *p)
{
    pk_op(p, 'u');
    pk_op(p, '.');
}

/* A one-file archive "archive/..." from a pickle and storages key -> bytes. */
typedef struct TbStorage {
    const char *key;
    const void *data;
    size_t n;
    unsigned method;
} TbStorage;

static void s_archive(const char *path, const TbBuf *pkl, unsigned pkl_method,
                      const TbStorage *st, int nst, const char *byteorder, int zip64, int misalign)
{
    ZipW z = {.zip64 = zip64, .misalign = misalign};
    if (byteorder)
        z_add(&z, "archive/byteorder", byteorder, strlen(byteorder), 0);
    if (pkl)
        z_add(&z, "archive/data.pkl", pkl->p, pkl->n, pkl_method);
    for (int i = 0; i < nst; i++) {
        char name[96];
        snprintf(name, sizeof name, "archive/data/%s", st[i].key);
        z_add(&z, name, st[i].data, st[i].n, st[i].method);
    }
    z_add(&z, "archive/version", "3\n", 2, 0);
    z_finish(&z);
    s_write(path, z.b.p, z.b.n);
    free(z.b.p);
}

/* A state dict with the given tensors, protocol 2 as torch writes it. */
static void s_simple_pickle(Pk *p, const PkTensor *t, int n)
{
    pk_begin(p);
    for (int i = 0; i < n; i++) {
        pk_str(p, t[i].name);
        pk_memo(p);
        pk_tensor_value(p, &t[i]);
    }
    pk_end(p);
}

/* ---------------------------------------------------- the golden file */

static void test_golden_matches_safetensors(void)
{
    TensorFile *bin = NULL, *st = NULL;
    DmErr err = {{0}};
    int rc = torchbin_open(TB_BIN, &bin, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL_FATAL(safetensors_open(TB_ST, &st, &err), 0);
    CU_ASSERT_EQUAL(bin->n, st->n);
    CU_ASSERT_EQUAL(bin->n, 216);
    int bad = 0;
    for (int i = 0; i < st->n; i++) {
        const DmTensor *a = &st->t[i], *b = tensorfile_find(bin, a->name);
        int same = b && a->dtype == b->dtype && a->ndim == b->ndim && a->nbytes == b->nbytes &&
                   memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim) == 0 &&
                   memcmp(a->data, b->data, a->nbytes) == 0;
        if (!same && bad++ < 5)
            printf("\n  %s differs or is missing in %s", a->name, TB_BIN);
    }
    for (int i = 0; i < bin->n; i++) {
        if (!tensorfile_find(st, bin->t[i].name) && bad++ < 10)
            printf("\n  %s is only in %s", bin->t[i].name, TB_BIN);
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* Both dtypes of the golden file came through. */
    const DmTensor *idx =
        tensorfile_find(bin, "encoder.encoder.layers.0.blocks.0.attention.self.relative_position_index");
    CU_ASSERT(idx && idx->dtype == DM_I64 && idx->ndim == 2 && idx->shape[0] == 25);
    tensorfile_close(&bin);
    tensorfile_close(&st);
}

static void test_golden_tied_and_zero_copy(void)
{
    TensorFile *bin = NULL;
    DmErr err = {{0}};
    /* Through the content dispatch, as the model loader opens it. */
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TB_BIN, &bin, &err), 0);
    const DmTensor *head = tensorfile_find(bin, "decoder.lm_head.weight");
    const DmTensor *emb = tensorfile_find(bin, "decoder.model.decoder.embed_tokens.weight");
    CU_ASSERT_FATAL(head && emb);
    CU_ASSERT(head->ndim == 2 && head->shape[0] == 300 && head->shape[1] == 128);
    CU_ASSERT(head->nbytes == emb->nbytes && memcmp(head->data, emb->data, head->nbytes) == 0);
    CU_ASSERT_PTR_EQUAL(head->data, emb->data); /* one storage, one copy in memory */
    /* Every golden tensor is contiguous: all point into the mapping, 64-byte
     * aligned storages, and nothing was copied. */
    const unsigned char *lo = bin->map, *hi = lo + bin->map_len;
    int inside = 0;
    for (int i = 0; i < bin->n; i++) {
        const unsigned char *d = bin->t[i].data;
        inside += d >= lo && d + bin->t[i].nbytes <= hi && (uintptr_t)d % 4 == 0;
    }
    CU_ASSERT_EQUAL(inside, bin->n);
    CU_ASSERT_PTR_NULL(bin->priv);
    tensorfile_close(&bin);
    CU_ASSERT_PTR_NULL(bin);
}

/* ------------------------------------------------------ synthetic files */

static const float s_f[12] = {0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f, 8.5f, 9.5f, 10.5f, 11.5f};

static int s_check(const TensorFile *tf, const char *name, DmDtype dt, int nd, const int64_t *shape,
                   const void *want, size_t nbytes)
{
    const DmTensor *t = tensorfile_find(tf, name);
    int ok = t && t->dtype == dt && t->ndim == nd && t->nbytes == nbytes &&
             (nd == 0 || memcmp(t->shape, shape, sizeof *shape * (size_t)nd) == 0) &&
             (nbytes == 0 || memcmp(t->data, want, nbytes) == 0);
    if (!ok)
        printf("\n  tensor %s: %s", name, t ? "wrong dtype, shape or bytes" : "missing");
    return ok;
}

static int s_inside(const TensorFile *tf, const char *name)
{
    const DmTensor *t = tensorfile_find(tf, name);
    const unsigned char *d = t ? t->data : NULL, *lo = tf->map;
    return d && d >= lo && d + t->nbytes <= lo + tf->map_len;
}

/* All storage classes of the legacy form, views, storage offsets, a
 * broadcast, a scalar, an empty tensor and nn.Parameter, in a zip laid out
 * like torch's. */
static void test_synthetic_dtypes_views(void)
{
    const uint16_t half[3] = {0x3C00, 0x7BFF, 0x0001};
    const uint16_t bf[2] = {0x3F80, 0xC000};
    const int64_t lng[3] = {-5, (int64_t)1 << 40, INT64_MIN + 1};
    const uint8_t bools[3] = {1, 0, 1}, bytes[2] = {0, 255};
    const int8_t chars[2] = {-1, 127};
    const int32_t ints[1] = {-70000};
    const int16_t shorts[1] = {-300};
    const double dbl[1] = {0.1};
    const TbStorage st[] = {
        {"0", s_f, sizeof s_f, 0},      {"1", half, sizeof half, 0},
        {"2", bf, sizeof bf, 0},        {"3", lng, sizeof lng, 0},
        {"4", bools, sizeof bools, 0},  {"5", bytes, sizeof bytes, 0},
        {"6", chars, sizeof chars, 0},  {"7", ints, sizeof ints, 0},
        {"8", shorts, sizeof shorts, 0}, {"9", dbl, sizeof dbl, 0},
    };
    const PkTensor t[] = {
        {"w", "FloatStorage", "0", 12, 0, 2, {3, 4}, {4, 1}},
        {"wt", "FloatStorage", "0", 12, 0, 2, {4, 3}, {1, 4}},
        {"row", "FloatStorage", "0", 12, 4, 1, {4}, {1}},
        {"col", "FloatStorage", "0", 12, 1, 1, {3}, {4}},
        {"sub", "FloatStorage", "0", 12, 5, 2, {2, 2}, {4, 1}},
        {"scalar", "FloatStorage", "0", 12, 11, 0, {0}, {0}},
        {"bcast", "FloatStorage", "0", 12, 0, 2, {2, 3}, {0, 1}},
        {"empty", "FloatStorage", "0", 12, 0, 2, {0, 5}, {5, 1}},
        {"unit", "FloatStorage", "0", 12, 2, 3, {1, 2, 1}, {7, 1, 9}},
        {"h", "HalfStorage", "1", 3, 0, 1, {3}, {1}},
        {"bf", "BFloat16Storage", "2", 2, 0, 1, {2}, {1}},
        {"l", "LongStorage", "3", 3, 0, 1, {3}, {1}},
        {"b", "BoolStorage", "4", 3, 0, 1, {3}, {1}},
        {"u8", "ByteStorage", "5", 2, 0, 1, {2}, {1}},
        {"i8", "CharStorage", "6", 2, 0, 1, {2}, {1}},
        {"i32", "IntStorage", "7", 1, 0, 1, {1}, {1}},
        {"i16", "ShortStorage", "8", 1, 0, 1, {1}, {1}},
        {"p", "DoubleStorage", "9", 1, 0, 1, {1}, {1}, .param = 1},
    };
    Pk p = {0};
    s_simple_pickle(&p, t, (int)(sizeof t / sizeof *t));
    const char *path = s_tmp("views.bin");
    s_archive(path, &p.b, 0, st, (int)(sizeof st / sizeof *st), "little", 0, 0);
    free(p.b.p);

    TensorFile *tf = NULL;
    DmErr err = {{0}};
    int rc = tensorfile_open(path, &tf, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(tf->n, (int)(sizeof t / sizeof *t));
    const float wt[12] = {0.5f, 4.5f, 8.5f, 1.5f, 5.5f, 9.5f, 2.5f, 6.5f, 10.5f, 3.5f, 7.5f, 11.5f};
    const float col[3] = {1.5f, 5.5f, 9.5f}, sub[4] = {5.5f, 6.5f, 9.5f, 10.5f};
    const float bc[6] = {0.5f, 1.5f, 2.5f, 0.5f, 1.5f, 2.5f};
    CU_ASSERT(s_check(tf, "w", DM_F32, 2, (int64_t[]){3, 4}, s_f, 48));
    CU_ASSERT(s_check(tf, "wt", DM_F32, 2, (int64_t[]){4, 3}, wt, 48));
    CU_ASSERT(s_check(tf, "row", DM_F32, 1, (int64_t[]){4}, s_f + 4, 16));
    CU_ASSERT(s_check(tf, "col", DM_F32, 1, (int64_t[]){3}, col, 12));
    CU_ASSERT(s_check(tf, "sub", DM_F32, 2, (int64_t[]){2, 2}, sub, 16));
    CU_ASSERT(s_check(tf, "scalar", DM_F32, 0, NULL, s_f + 11, 4));
    CU_ASSERT(s_check(tf, "bcast", DM_F32, 2, (int64_t[]){2, 3}, bc, 24));
    CU_ASSERT(s_check(tf, "empty", DM_F32, 2, (int64_t[]){0, 5}, NULL, 0));
    CU_ASSERT(s_check(tf, "unit", DM_F32, 3, (int64_t[]){1, 2, 1}, s_f + 2, 8));
    CU_ASSERT(s_check(tf, "h", DM_F16, 1, (int64_t[]){3}, half, 6));
    CU_ASSERT(s_check(tf, "bf", DM_BF16, 1, (int64_t[]){2}, bf, 4));
    CU_ASSERT(s_check(tf, "l", DM_I64, 1, (int64_t[]){3}, lng, 24));
    CU_ASSERT(s_check(tf, "b", DM_BOOL, 1, (int64_t[]){3}, bools, 3));
    CU_ASSERT(s_check(tf, "u8", DM_U8, 1, (int64_t[]){2}, bytes, 2));
    CU_ASSERT(s_check(tf, "i8", DM_I8, 1, (int64_t[]){2}, chars, 2));
    CU_ASSERT(s_check(tf, "i32", DM_I32, 1, (int64_t[]){1}, ints, 4));
    CU_ASSERT(s_check(tf, "i16", DM_I16, 1, (int64_t[]){1}, shorts, 2));
    CU_ASSERT(s_check(tf, "p", DM_F64, 1, (int64_t[]){1}, dbl, 8));
    /* Contiguous tensors (size-1 dims with any stride count as contiguous)
     * point into the mapping; views are packed copies. */
    CU_ASSERT(s_inside(tf, "w") && s_inside(tf, "row") && s_inside(tf, "scalar") &&
              s_inside(tf, "unit") && s_inside(tf, "h") && s_inside(tf, "l"));
    CU_ASSERT(!s_inside(tf, "wt") && !s_inside(tf, "col") && !s_inside(tf, "sub") &&
              !s_inside(tf, "bcast"));
    const DmTensor *w = tensorfile_find(tf, "w"), *row = tensorfile_find(tf, "row");
    CU_ASSERT(w && row && (const char *)row->data == (const char *)w->data + 16);
    CU_ASSERT(w && (uintptr_t)w->data % 64 == 0); /* torch's alignment, kept */
    /* The loader's converters work on the result. */
    float f[3];
    CU_ASSERT_EQUAL(dm_tensor_to_f32(tensorfile_find(tf, "h"), f, &err), 0);
    CU_ASSERT(f[0] == 1.0f && f[1] == 65504.0f && f[2] == 0x1p-24f);
    tensorfile_close(&tf);
    unlink(path);
    s_tmp_done();
}

/* Newer writers: protocol 4 opcodes (FRAME, SHORT_BINUNICODE, STACK_GLOBAL,
 * MEMOIZE), a plain dict filled by SETITEM, a BUILD with _metadata, the
 * torch >= 2 Parameter form (_rebuild_from_type_v2), _rebuild_tensor_v3
 * with an untyped storage and a dtype, one tensor object under two names
 * (tied weights, BINGET), two tensors sharing a storage, a non-tensor
 * value; stored as a ZIP64 archive with misaligned entry data. */
static void test_synthetic_newer_forms(void)
{
    const uint16_t u16[4] = {1, 2, 65535, 40000};
    const TbStorage st[] = {{"0", s_f, sizeof s_f, 0}, {"1", u16, sizeof u16, 0}};
    Pk p = {.proto4 = 1};
    pk_op(&p, 0x80);
    s_u8(&p.b, 4);
    pk_op(&p, 0x95); /* FRAME: length of the rest (a hint only) */
    size_t frame_at = p.b.n;
    s_u64(&p.b, 0);
    pk_op(&p, '}');
    pk_memo(&p);
    const PkTensor a = {"emb", "FloatStorage", "0", 12, 0, 2, {3, 4}, {4, 1}, .from_type = 1};
    const PkTensor b = {"half", "FloatStorage", "0", 12, 6, 1, {6}, {1}};
    const PkTensor c = {"u16", "UntypedStorage", "1", 8, 0, 1, {4}, {1}, .v3dtype = "uint16"};
    pk_str(&p, "emb");
    pk_memo(&p);
    pk_tensor_value(&p, &a);
    int emb = p.memo - 1;
    pk_op(&p, 's');
    pk_str(&p, "lm_head");
    pk_memo(&p);
    pk_get(&p, emb);
    pk_op(&p, 's');
    pk_str(&p, "half");
    pk_tensor_value(&p, &b);
    pk_op(&p, 's');
    pk_str(&p, "u16");
    pk_tensor_value(&p, &c);
    pk_op(&p, 's');
    pk_str(&p, "count"); /* not a tensor: skipped */
    pk_int(&p, 3);
    pk_op(&p, 's');
    /* BUILD state {'_metadata': {'': {'version': 1}}, 'x': [1.5, None, True]} */
    pk_op(&p, '}');
    pk_str(&p, "_metadata");
    pk_op(&p, '(');
    pk_str(&p, "");
    pk_op(&p, '(');
    pk_str(&p, "version");
    pk_int(&p, 1);
    pk_op(&p, 'd');
    pk_op(&p, 'd');
    pk_op(&p, 's');
    pk_str(&p, "x");
    pk_op(&p, ']');
    pk_op(&p, '(');
    pk_op(&p, 'G');
    const unsigned char onefive[8] = {0x3f, 0xf8, 0, 0, 0, 0, 0, 0};
    s_put(&p.b, onefive, 8);
    pk_op(&p, 'N');
    pk_op(&p, 0x88);
    pk_op(&p, 'e');
    pk_op(&p, 's');
    pk_op(&p, 'b');
    pk_op(&p, '.');
    uint64_t rest = p.b.n - frame_at - 8;
    for (int i = 0; i < 8; i++)
        p.b.p[frame_at + i] = (unsigned char)(rest >> (8 * i));

    const char *path = s_tmp("newer.bin");
    s_archive(path, &p.b, 0, st, 2, NULL, 1, 1);
    free(p.b.p);
    TensorFile *tf = NULL;
    DmErr err = {{0}};
    int rc = torchbin_open(path, &tf, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(tf->n, 4);
    CU_ASSERT(s_check(tf, "emb", DM_F32, 2, (int64_t[]){3, 4}, s_f, 48));
    CU_ASSERT(s_check(tf, "lm_head", DM_F32, 2, (int64_t[]){3, 4}, s_f, 48));
    CU_ASSERT(s_check(tf, "half", DM_F32, 1, (int64_t[]){6}, s_f + 6, 24));
    CU_ASSERT(s_check(tf, "u16", DM_U16, 1, (int64_t[]){4}, u16, 8));
    CU_ASSERT_PTR_NULL(tensorfile_find(tf, "count"));
    /* Misaligned storages are copied so that float/uint16 reads are aligned;
     * the tied name shares the copy. */
    const DmTensor *e = tensorfile_find(tf, "emb"), *h = tensorfile_find(tf, "lm_head");
    CU_ASSERT(e && h && e->data == h->data && (uintptr_t)e->data % 4 == 0 && !s_inside(tf, "emb"));
    const DmTensor *u = tensorfile_find(tf, "u16");
    CU_ASSERT(u && (uintptr_t)u->data % 2 == 0);
    tensorfile_close(&tf);
    unlink(path);
    s_tmp_done();
}

/* ------------------------------------------------------------ bad input */

static void test_bad_truncated_golden(void)
{
    size_t n = 0;
    unsigned char *all = s_slurp(TB_BIN, &n);
    CU_ASSERT_FATAL(all != NULL && n > 1000);
    const char *path = s_tmp("truncated.bin");
    size_t cuts[] = {1, 4, 30, 100, 4096, n / 2, n - 4096, n - 100, n - 22, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        s_write(path, all, cuts[i]);
        s_expect_fail(path, NULL, NULL);
    }
    unlink(path);
    free(all);
    s_tmp_done();
}

/* A flipped byte inside data.pkl of the golden file: the CRC catches it. */
static void test_bad_corrupt_golden_pickle(void)
{
    size_t n = 0;
    unsigned char *all = s_slurp(TB_BIN, &n);
    CU_ASSERT_FATAL(all != NULL && n > 1000);
    /* The first entry is data.pkl: its data follows the 30-byte local header,
     * the name and the extra field. */
    CU_ASSERT_FATAL(all[0] == 'P' && all[1] == 'K');
    size_t data = 30 + (all[26] | all[27] << 8) + (all[28] | all[29] << 8);
    CU_ASSERT_FATAL(all[data] == 0x80);
    all[data + 40] ^= 0x5a;
    const char *path = s_tmp("corrupt.bin");
    s_write(path, all, n);
    s_expect_fail(path, "data.pkl", "CRC");
    unlink(path);
    free(all);
    s_tmp_done();
}

static void test_bad_not_zip(void)
{
    const char *path = s_tmp("text.bin");
    s_write(path, "hello, this is not a checkpoint\n", 32);
    s_expect_fail(path, "not a zip", NULL);
    s_write(path, "", 0);
    s_expect_fail(path, "empty", NULL);
    static const char pk_only[] = "PK\003\004 and then nothing useful at all......";
    s_write(path, pk_only, sizeof pk_only - 1);
    s_expect_fail(path, "zip", NULL);
    /* torch < 1.6: a bare pickle, named as such (also via tensorfile_open). */
    static const unsigned char legacy[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                           0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e, 0x80,
                                           0x02, 0x4d, 0xe9, 0x03, 0x2e};
    s_write(path, legacy, sizeof legacy);
    s_expect_fail(path, "legacy torch.save format", NULL);
    TensorFile *tf = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(tensorfile_open(path, &tf, &err), -1);
    CU_ASSERT(strstr(err.msg, "legacy torch.save format") && strstr(err.msg, path));
    unlink(path);
    s_expect_fail(path, "cannot open", NULL);
    s_expect_fail(TB_ST, "not a zip", NULL); /* a safetensors file */
    s_expect_fail(TU_TINY, "not a regular file", NULL);
    s_tmp_done();
}

static void test_bad_zip_without_pickle(void)
{
    const char *path = s_tmp("nopickle.bin");
    const TbStorage st[] = {{"0", s_f, sizeof s_f, 0}};
    s_archive(path, NULL, 0, st, 1, "little", 0, 0);
    s_expect_fail(path, "no data.pkl", NULL);
    unlink(path);
    s_tmp_done();
}

/* A valid one-tensor pickle, to break in various ways. */
static void s_one_tensor(Pk *p, const char *key, int64_t numel)
{
    const PkTensor t = {"weight", "FloatStorage", key, numel, 2, 2, {2, 5}, {5, 1}};
    s_simple_pickle(p, &t, 1);
}

static void test_bad_entries(void)
{
    const char *path = s_tmp("entries.bin");
    Pk p = {0};
    s_one_tensor(&p, "0", 12);
    const TbStorage ok[] = {{"0", s_f, sizeof s_f, 0}};
    /* sanity: this one loads */
    s_archive(path, &p.b, 0, ok, 1, "little", 0, 0);
    TensorFile *tf = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(torchbin_open(path, &tf, &err), 0);
    tensorfile_close(&tf);

    s_archive(path, &p.b, 8, ok, 1, "little", 0, 0);
    s_expect_fail(path, "archive/data.pkl is compressed", NULL);
    const TbStorage deflated[] = {{"0", s_f, sizeof s_f, 8}};
    s_archive(path, &p.b, 0, deflated, 1, "little", 0, 0);
    s_expect_fail(path, "tensor weight", "compressed");
    s_archive(path, &p.b, 0, ok, 1, "big", 0, 0);
    s_expect_fail(path, "big-endian", NULL);
    s_archive(path, &p.b, 0, ok, 1, "middle", 0, 0);
    s_expect_fail(path, "byteorder", NULL);
    /* The storage entry holds 11 floats, the tensor needs 2 + 10 = 12. */
    const TbStorage short_st[] = {{"0", s_f, 11 * 4, 0}};
    s_archive(path, &p.b, 0, short_st, 1, "little", 0, 0);
    s_expect_fail(path, "truncated", "tensor weight");
    const TbStorage other[] = {{"1", s_f, sizeof s_f, 0}};
    s_archive(path, &p.b, 0, other, 1, "little", 0, 0);
    s_expect_fail(path, "tensor weight", "archive/data/0 is missing");
    free(p.b.p);
    /* The persistent id claims 11 elements although 12 are used and stored. */
    Pk q = {0};
    s_one_tensor(&q, "0", 11);
    s_archive(path, &q.b, 0, ok, 1, NULL, 1, 0);
    s_expect_fail(path, "tensor weight", "extends past its storage");
    free(q.b.p);
    unlink(path);
    s_tmp_done();
}

/* Pickles that must be refused, each with the words its message needs. */
static void test_bad_pickles(void)
{
    const char *path = s_tmp("pickle.bin");
    const TbStorage st[] = {{"0", s_f, sizeof s_f, 0}};
    /* TB_L: bytes and length of a literal (the pickles contain NULs).  Hex
     * escapes are split from following hex digits ("\x00" "a"). */
#define TB_L(s) s, sizeof(s) - 1
    struct {
        const char *bytes;
        size_t n;
        const char *want;
    } cases[] = {
        {TB_L("\x80\x02}q\x00."), NULL}, /* valid: an empty dict; checked separately */
        {TB_L("\x80\x02" "cos\nsystem\n" "(X\x02\x00\x00\x00" "lst" "R."), "os.system"},
        {TB_L("\x80\x02" "(I1\n" "t."), "opcode INT"},
        {TB_L("\x80\x02" "(i__main__\nX\n" "."), "opcode INST"},
        {TB_L("\x80\x02" "\xff"), "invalid pickle opcode 0xff"},
        {TB_L("\x80\x02" "]q\x00."), "list, not a dict"},
        {TB_L("\x80\x02" "}q\x00"), "without STOP"},
        {TB_L("\x80\x02" "u."), "MARK"},
        {TB_L("\x80\x02" "s."), "underflow"},
        {TB_L("\x80\x02" "h\x05."), "memo"},
        {TB_L("\x80\x02" "X\xff\xff\x00\x00" "ab."), "past the end"},
        {TB_L("\x80\x09"), "protocol 9"},
        {TB_L("\x80\x02" "}(X\x01\x00\x00\x00" "a(X\x07\x00\x00\x00" "storage"
              "ctorch\nComplexFloatStorage\n" "X\x01\x00\x00\x00" "0X\x03\x00\x00\x00"
              "cpuK\x01tQu."),
         "ComplexFloatStorage"},
        {TB_L("\x80\x02" "}(X\x01\x00\x00\x00" "a(X\x03\x00\x00\x00" "boxtQu."),
         "persistent id"},
        {TB_L("\x80\x02" "\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09."), "64 bits"},
        {TB_L("\x80\x02" "ccollections\nOrderedDict\n" "(K\x01tR."), "OrderedDict"},
        {TB_L("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n" "(K\x01K\x02tR."), "arguments"},
    };
#undef TB_L
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        TbBuf b = {0};
        s_put(&b, cases[i].bytes, cases[i].n);
        s_archive(path, &b, 0, st, 1, NULL, 0, 0);
        free(b.p);
        if (i == 0) {
            TensorFile *tf = NULL;
            DmErr err = {{0}};
            CU_ASSERT_EQUAL(torchbin_open(path, &tf, &err), 0);
            CU_ASSERT(tf && tf->n == 0);
            tensorfile_close(&tf);
            continue;
        }
        s_expect_fail(path, "archive/data.pkl", cases[i].want);
    }
    unlink(path);
    s_tmp_done();
}

/* Every prefix of a valid pickle must be refused, and every single-byte
 * change must load or be refused cleanly (no crash, no leak: ASan). */
static void test_bad_pickle_mutations(void)
{
    const char *path = s_tmp("mutant.bin");
    const TbStorage st[] = {{"0", s_f, sizeof s_f, 0}};
    const PkTensor t[] = {
        {"a", "FloatStorage", "0", 12, 0, 2, {3, 4}, {4, 1}},
        {"b", "FloatStorage", "0", 12, 1, 2, {2, 2}, {1, 4}, .param = 1},
    };
    Pk p = {0};
    s_simple_pickle(&p, t, 2);
    int refused = 0;
    for (size_t n = 0; n < p.b.n; n++) {
        TbBuf cut = {p.b.p, n, n};
        s_archive(path, &cut, 0, st, 1, NULL, 0, 0);
        TensorFile *tf = NULL;
        DmErr err = {{0}};
        refused += torchbin_open(path, &tf, &err) == -1 && tf == NULL && strstr(err.msg, path);
        tensorfile_close(&tf);
    }
    CU_ASSERT_EQUAL(refused, (int)p.b.n);
    static const unsigned char vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '(', ')', '.', 'R',
                                         'Q',  'h',  'q',  't',  'u',  's', 'X', 'K', 0x8a};
    int clean = 0, total = 0;
    for (size_t i = 0; i < p.b.n; i++) {
        for (size_t v = 0; v < sizeof vals; v++) {
            if (p.b.p[i] == vals[v])
                continue;
            unsigned char keep = p.b.p[i];
            p.b.p[i] = vals[v];
            s_archive(path, &p.b, 0, st, 1, NULL, 0, 0);
            p.b.p[i] = keep;
            TensorFile *tf = NULL;
            DmErr err = {{0}};
            int rc = torchbin_open(path, &tf, &err);
            clean += rc == 0 ? tf != NULL : (tf == NULL && strstr(err.msg, path) != NULL);
            total++;
            tensorfile_close(&tf);
        }
    }
    CU_ASSERT_EQUAL(clean, total);
    free(p.b.p);
    unlink(path);
    s_tmp_done();
}

void tests_torchbin(void)
{
    TU_SUITE("torchbin",
             {"golden .bin equals model.safetensors", test_golden_matches_safetensors},
             {"golden tied lm_head, zero copy", test_golden_tied_and_zero_copy},
             {"all storage dtypes, views, offsets", test_synthetic_dtypes_views},
             {"protocol 4, v3, zip64, tied, misaligned", test_synthetic_newer_forms});
    TU_SUITE("torchbin errors",
             {"truncated copies of the golden file", test_bad_truncated_golden},
             {"corrupt golden data.pkl", test_bad_corrupt_golden_pickle},
             {"not a zip, empty, missing", test_bad_not_zip},
             {"zip without data.pkl", test_bad_zip_without_pickle},
             {"compressed, big-endian, short and missing storages", test_bad_entries},
             {"refused pickles", test_bad_pickles},
             {"truncated and mutated pickles", test_bad_pickle_mutations});
}
