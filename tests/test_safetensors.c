/* test_safetensors.c - the safetensors reader/writer and the dtype helpers
 * of common/safetensors.c. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tutil.h"

/* ------------------------------------------------------------ helpers */

static TuTmp s_tmpdir = {.pattern = "/tmp/dm_safetensors_XXXXXX"};

/* Remove the temp dir at the end of each test that used it (a later
 * sanitizer stop skips atexit); atexit is the fallback after a failure. */
static void s_tmp_done(void) { tu_tmp_done(&s_tmpdir); }

static const char *s_tmp(const char *name) { return tu_tmp(&s_tmpdir, name, s_tmp_done); }

static void s_write(const char *path, const void *p, size_t n) { tu_write(path, p, n); }

/* A file of an 8-byte header length and the given header text, then data. */
static void s_write_raw(const char *path, const char *header, const void *data, size_t n)
{
    size_t hl = strlen(header);
    unsigned char *buf = malloc(8 + hl + n + 1);
    uint64_t h = hl;
    memcpy(buf, &h, 8);
    memcpy(buf + 8, header, hl);
    if (n)
        memcpy(buf + 8 + hl, data, n);
    s_write(path, buf, 8 + hl + n);
    free(buf);
}

static unsigned char *s_slurp(const char *path, size_t *n) { return tu_slurp(path, n); }

static void s_expect_fail(const char *path, const char *want1, const char *want2)
{
    tu_expect_open_fail(safetensors_open, path, want1, want2);
}

static uint32_t s_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float s_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ------------------------------------------------------------ round trip */

static const float s_f32[6] = {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-30f};
static const uint16_t s_f16[4] = {0x3C00, 0x7BFF, 0x0001, 0xC000};
static const uint16_t s_bf16[4] = {0x3F80, 0xC040, 0x0001, 0x7F80};
static const int64_t s_i64[3] = {-1, (int64_t)1 << 53, INT64_MAX};
static const uint8_t s_u8[5] = {0, 1, 127, 128, 255};

static void test_roundtrip(void)
{
    const char *path = s_tmp("rt.safetensors");
    StWriter *w = st_writer_new();
    st_writer_add_f32(w, "a.f32", 2, (int64_t[]){2, 3}, s_f32);
    st_writer_add(w, "b.f16", DM_F16, 1, (int64_t[]){4}, s_f16);
    st_writer_add(w, "c.bf16", DM_BF16, 2, (int64_t[]){2, 2}, s_bf16);
    st_writer_add(w, "d.i64", DM_I64, 1, (int64_t[]){3}, s_i64);
    st_writer_add(w, "e.u8", DM_U8, 1, (int64_t[]){5}, s_u8);
    float scalar = 42.0f;
    st_writer_add_f32(w, "f.scalar", 0, NULL, &scalar);
    st_writer_add_f32(w, "g.empty", 2, (int64_t[]){0, 4}, NULL);
    st_writer_meta(w, "producer", "test");
    DmErr err = {{0}};
    int rc = st_writer_save(w, path, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    st_writer_free(&w);
    CU_ASSERT_PTR_NULL(w);

    /* No temporary left behind; the header is padded to 8 bytes and holds
     * the metadata. */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CU_ASSERT(access(tmp, F_OK) != 0);
    size_t n = 0;
    unsigned char *raw = s_slurp(path, &n);
    CU_ASSERT_FATAL(raw && n >= 8);
    uint64_t hl;
    memcpy(&hl, raw, 8);
    CU_ASSERT(hl % 8 == 0 && 8 + hl <= n);
    json_t *hdr = json_loadb((const char *)raw + 8, (size_t)hl, 0, NULL);
    CU_ASSERT_FATAL(hdr != NULL);
    json_t *meta = json_object_get(hdr, "__metadata__");
    CU_ASSERT(json_is_string(json_object_get(meta, "format")) &&
              strcmp(json_string_value(json_object_get(meta, "format")), "pt") == 0);
    CU_ASSERT(json_is_string(json_object_get(meta, "producer")));
    CU_ASSERT_EQUAL(n, 8 + hl + 24 + 8 + 8 + 24 + 5 + 4);
    json_decref(hdr);
    free(raw);

    TensorFile *tf = NULL;
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(path, &tf, &err), 0); /* dispatch: not a zip */
    CU_ASSERT_EQUAL(tf->n, 7);
    struct {
        const char *name;
        DmDtype dt;
        int nd;
        int64_t shape[2];
        const void *data;
        size_t nbytes;
    } want[] = {
        {"a.f32", DM_F32, 2, {2, 3}, s_f32, 24},   {"b.f16", DM_F16, 1, {4}, s_f16, 8},
        {"c.bf16", DM_BF16, 2, {2, 2}, s_bf16, 8}, {"d.i64", DM_I64, 1, {3}, s_i64, 24},
        {"e.u8", DM_U8, 1, {5}, s_u8, 5},          {"f.scalar", DM_F32, 0, {0}, &scalar, 4},
        {"g.empty", DM_F32, 2, {0, 4}, NULL, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const DmTensor *t = tensorfile_find(tf, want[i].name);
        int ok = t && t->dtype == want[i].dt && t->ndim == want[i].nd &&
                 t->nbytes == want[i].nbytes &&
                 memcmp(t->shape, want[i].shape, sizeof(int64_t) * (size_t)want[i].nd) == 0 &&
                 (want[i].nbytes == 0 || memcmp(t->data, want[i].data, want[i].nbytes) == 0) &&
                 dm_tensor_numel(t) * (int64_t)dm_dtype_size(t->dtype) == (int64_t)t->nbytes;
        if (!ok)
            printf("\n  %s did not survive the round trip", want[i].name);
        CU_ASSERT(ok);
    }
    CU_ASSERT_PTR_NULL(tensorfile_find(tf, "__metadata__"));
    CU_ASSERT_PTR_NULL(tensorfile_find(tf, "missing"));
    tensorfile_close(&tf);
    CU_ASSERT_PTR_NULL(tf);
    tensorfile_close(&tf); /* closing NULL is a no-op */

    /* Saving over an existing file replaces it. */
    w = st_writer_new();
    st_writer_add(w, "only", DM_U8, 1, (int64_t[]){2}, s_u8);
    CU_ASSERT_EQUAL(st_writer_save(w, path, &err), 0);
    st_writer_free(&w);
    CU_ASSERT_EQUAL_FATAL(safetensors_open(path, &tf, &err), 0);
    CU_ASSERT(tf->n == 1 && tensorfile_find(tf, "only"));
    tensorfile_close(&tf);
    unlink(path);
    s_tmp_done();
}

static void test_writer_errors(void)
{
    DmErr err = {{0}};
    StWriter *w = st_writer_new();
    st_writer_add(w, "x", DM_U8, 1, (int64_t[]){2}, s_u8);
    const char *bad = "/nonexistent-dir-for-docmint-tests/out.safetensors";
    CU_ASSERT_EQUAL(st_writer_save(w, bad, &err), -1);
    CU_ASSERT(strstr(err.msg, "/nonexistent-dir-for-docmint-tests/out.safetensors") != NULL);
    st_writer_free(&w);
    /* A name that cannot be a JSON key, and a repeated name: refused rather
     * than silently dropped from the header. */
    const char *path = s_tmp("bad.safetensors");
    w = st_writer_new();
    st_writer_add(w, "bad\xff", DM_U8, 1, (int64_t[]){2}, s_u8);
    CU_ASSERT_EQUAL(st_writer_save(w, path, &err), -1);
    CU_ASSERT(strstr(err.msg, path) != NULL);
    st_writer_free(&w);
    w = st_writer_new();
    st_writer_add(w, "twice", DM_U8, 1, (int64_t[]){2}, s_u8);
    st_writer_add(w, "twice", DM_U8, 1, (int64_t[]){1}, s_u8);
    CU_ASSERT_EQUAL(st_writer_save(w, path, &err), -1);
    CU_ASSERT(strstr(err.msg, "twice") != NULL);
    st_writer_free(&w);
    CU_ASSERT(access(path, F_OK) != 0);
    st_writer_free(&w); /* NULL: no-op */
    s_tmp_done();
}

/* ------------------------------------------------------------ dtypes */

static void test_dtype_table(void)
{
    static const size_t size[DM_DTYPE_COUNT] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 2, 4, 8, 1};
    for (int i = 0; i < DM_DTYPE_COUNT; i++) {
        DmDtype back = DM_DTYPE_COUNT;
        CU_ASSERT_EQUAL(dm_dtype_parse(dm_dtype_name((DmDtype)i), &back), 0);
        CU_ASSERT_EQUAL(back, (DmDtype)i);
        CU_ASSERT_EQUAL(dm_dtype_size((DmDtype)i), size[i]);
    }
    DmDtype dt;
    CU_ASSERT_EQUAL(dm_dtype_parse("F8_E4M3", &dt), -1);
    CU_ASSERT_EQUAL(dm_dtype_parse("f32", &dt), -1);
    CU_ASSERT_STRING_EQUAL(dm_dtype_name(DM_DTYPE_COUNT), "?");
    CU_ASSERT_EQUAL(dm_dtype_size(DM_DTYPE_COUNT), 0);
    CU_ASSERT_STRING_EQUAL(dm_dtype_name(DM_BF16), "BF16");
}

/* IEEE binary16 values from the standard's tables. */
static void test_f16_known(void)
{
    static const struct {
        float f;
        uint16_t h;
    } exact[] = {
        {1.0f, 0x3C00},      {-2.0f, 0xC000},        {0.5f, 0x3800},    {65504.0f, 0x7BFF},
        {0x1p-24f, 0x0001},  {0x1p-14f, 0x0400},     {1023 * 0x1p-24f, 0x03FF},
        {0.0f, 0x0000},      {0.333251953125f, 0x3555}, {-65504.0f, 0xFBFF},
        {1.0009765625f, 0x3C01},
    };
    for (size_t i = 0; i < sizeof exact / sizeof *exact; i++) {
        CU_ASSERT_EQUAL(dm_f32_to_f16(exact[i].f), exact[i].h);
        CU_ASSERT(dm_f16_to_f32(exact[i].h) == exact[i].f);
    }
    CU_ASSERT_EQUAL(dm_f32_to_f16(-0.0f), 0x8000);
    CU_ASSERT(dm_f16_to_f32(0x8000) == 0.0f && signbit(dm_f16_to_f32(0x8000)));
    CU_ASSERT_EQUAL(dm_f32_to_f16(INFINITY), 0x7C00);
    CU_ASSERT_EQUAL(dm_f32_to_f16(-INFINITY), 0xFC00);
    CU_ASSERT(isinf(dm_f16_to_f32(0x7C00)) && dm_f16_to_f32(0xFC00) < 0);
    CU_ASSERT(isnan(dm_f16_to_f32(0x7E00)) && isnan(dm_f16_to_f32(0x7C01)));
    uint16_t qn = dm_f32_to_f16(NAN);
    CU_ASSERT((qn & 0x7C00) == 0x7C00 && (qn & 0x03FF) != 0);

    /* Round to nearest, ties to even. */
    CU_ASSERT_EQUAL(dm_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);          /* tie, 0x3C00 even */
    CU_ASSERT_EQUAL(dm_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);      /* tie, up to even */
    CU_ASSERT_EQUAL(dm_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01); /* above the tie */
    CU_ASSERT_EQUAL(dm_f32_to_f16(65519.0f), 0x7BFF);                 /* below the tie */
    CU_ASSERT_EQUAL(dm_f32_to_f16(65520.0f), 0x7C00);                 /* tie: up to inf */
    CU_ASSERT_EQUAL(dm_f32_to_f16(1e10f), 0x7C00);
    CU_ASSERT_EQUAL(dm_f32_to_f16(0x1p-25f), 0x0000);                 /* tie with 0 */
    CU_ASSERT_EQUAL(dm_f32_to_f16(0x1p-25f * 1.0001f), 0x0001);
    CU_ASSERT_EQUAL(dm_f32_to_f16(3 * 0x1p-25f), 0x0002);             /* tie: 1 or 2 */
    CU_ASSERT_EQUAL(dm_f32_to_f16(5 * 0x1p-25f), 0x0002);             /* tie: 2 or 3 */
    CU_ASSERT_EQUAL(dm_f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400);      /* into the normals */
    CU_ASSERT_EQUAL(dm_f32_to_f16(1e-10f), 0x0000);
    CU_ASSERT_EQUAL(dm_f32_to_f16(-1e-10f), 0x8000);
    CU_ASSERT_EQUAL(dm_f32_to_f16(s_float(0x00000001)), 0x0000);       /* f32 subnormal */
}

/* Every finite or infinite half survives f16 -> f32 -> f16, NaNs stay NaN;
 * the f32 midpoints between neighbouring halves round to the even one. */
static void test_f16_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = dm_f16_to_f32((uint16_t)h);
        int nan = (h & 0x7C00) == 0x7C00 && (h & 0x03FF);
        if (nan) {
            bad += !isnan(f) || !isnan(dm_f16_to_f32(dm_f32_to_f16(f)));
            continue;
        }
        bad += dm_f32_to_f16(f) != h;
        /* The midpoint to the next half of larger magnitude (exact in
         * float: 12 significant bits) rounds to whichever is even; the one
         * above 65504 (65520, rounding to inf) is checked separately. */
        if ((h & 0x7FFF) < 0x7BFF) {
            float g = dm_f16_to_f32((uint16_t)(h + 1));
            float mid = (float)(((double)f + (double)g) / 2);
            bad += dm_f32_to_f16(mid) != ((h & 1) ? h + 1 : h);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_bf16(void)
{
    CU_ASSERT_EQUAL(dm_f32_to_bf16(1.0f), 0x3F80);
    CU_ASSERT_EQUAL(dm_f32_to_bf16(-2.0f), 0xC000);
    CU_ASSERT_EQUAL(dm_f32_to_bf16(3.0f), 0x4040);
    CU_ASSERT(dm_bf16_to_f32(0x3F80) == 1.0f && dm_bf16_to_f32(0xC040) == -3.0f);
    CU_ASSERT_EQUAL(dm_f32_to_bf16(s_float(0x3F808000)), 0x3F80); /* tie, even stays */
    CU_ASSERT_EQUAL(dm_f32_to_bf16(s_float(0x3F818000)), 0x3F82); /* tie, odd goes up */
    CU_ASSERT_EQUAL(dm_f32_to_bf16(s_float(0x3F808001)), 0x3F81); /* above the tie */
    CU_ASSERT_EQUAL(dm_f32_to_bf16(s_float(0x3F807FFF)), 0x3F80); /* below the tie */
    CU_ASSERT_EQUAL(dm_f32_to_bf16(s_float(0x7F7FFFFF)), 0x7F80); /* FLT_MAX rounds to inf */
    CU_ASSERT_EQUAL(dm_f32_to_bf16(INFINITY), 0x7F80);
    CU_ASSERT_EQUAL(dm_f32_to_bf16(-0.0f), 0x8000);
    CU_ASSERT_EQUAL(dm_f32_to_bf16(s_float(0x00010000)), 0x0001); /* subnormal kept */
    uint16_t qn = dm_f32_to_bf16(NAN);
    CU_ASSERT((qn & 0x7F80) == 0x7F80 && (qn & 0x7F) != 0);
    /* A NaN whose payload sits only in the low 16 bits must stay a NaN. */
    uint16_t low = dm_f32_to_bf16(s_float(0x7F800001));
    CU_ASSERT((low & 0x7F80) == 0x7F80 && (low & 0x7F) != 0);
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = dm_bf16_to_f32((uint16_t)h);
        bad += s_bits(f) != h << 16;
        bad += isnan(f) ? !isnan(dm_bf16_to_f32(dm_f32_to_bf16(f))) : dm_f32_to_bf16(f) != h;
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_convert(void)
{
    DmErr err = {{0}};
    float out[4];
    int64_t iout[5];
    DmTensor t = {.name = "t", .dtype = DM_F16, .ndim = 1, .shape = {4}, .data = s_f16};
    CU_ASSERT_EQUAL(dm_tensor_to_f32(&t, out, &err), 0);
    CU_ASSERT(out[0] == 1.0f && out[1] == 65504.0f && out[2] == 0x1p-24f && out[3] == -2.0f);
    t.dtype = DM_BF16;
    t.data = s_bf16;
    CU_ASSERT_EQUAL(dm_tensor_to_f32(&t, out, &err), 0);
    CU_ASSERT(out[0] == 1.0f && out[1] == -3.0f && isinf(out[3]));
    const double d[2] = {0.1, -1e300};
    t.dtype = DM_F64;
    t.shape[0] = 2;
    t.data = d;
    CU_ASSERT_EQUAL(dm_tensor_to_f32(&t, out, &err), 0);
    CU_ASSERT(out[0] == 0.1f && isinf(out[1]) && out[1] < 0);
    t.dtype = DM_U8;
    t.shape[0] = 5;
    t.data = s_u8;
    CU_ASSERT_EQUAL(dm_tensor_to_i64(&t, iout, &err), 0);
    CU_ASSERT(iout[0] == 0 && iout[3] == 128 && iout[4] == 255);
    const int8_t i8[2] = {-128, 127};
    t.dtype = DM_I8;
    t.shape[0] = 2;
    t.data = i8;
    CU_ASSERT_EQUAL(dm_tensor_to_i64(&t, iout, &err), 0);
    CU_ASSERT(iout[0] == -128 && iout[1] == 127);
    const uint32_t u32[2] = {0xFFFFFFFFu, 7};
    t.dtype = DM_U32;
    t.data = u32;
    CU_ASSERT_EQUAL(dm_tensor_to_i64(&t, iout, &err), 0);
    CU_ASSERT(iout[0] == 0xFFFFFFFFll && iout[1] == 7);
    t.dtype = DM_I64;
    t.shape[0] = 3;
    t.data = s_i64;
    CU_ASSERT_EQUAL(dm_tensor_to_i64(&t, iout, &err), 0);
    CU_ASSERT(iout[0] == -1 && iout[2] == INT64_MAX);
    CU_ASSERT_EQUAL(dm_tensor_to_f32(&t, out, &err), -1);
    CU_ASSERT(strstr(err.msg, "tensor t") && strstr(err.msg, "I64"));
    t.dtype = DM_F32;
    CU_ASSERT_EQUAL(dm_tensor_to_i64(&t, iout, &err), -1);
    CU_ASSERT(strstr(err.msg, "tensor t") && strstr(err.msg, "F32"));
}

/* ------------------------------------------------------------ bad files */

static void test_bad_files(void)
{
    char path[256], cut[256]; /* s_tmp's buffer is reused by the next call */
    snprintf(path, sizeof path, "%s", s_tmp("ok.safetensors"));
    snprintf(cut, sizeof cut, "%s", s_tmp("cut.safetensors"));
    StWriter *w = st_writer_new();
    st_writer_add_f32(w, "first", 2, (int64_t[]){2, 3}, s_f32);
    st_writer_add(w, "last", DM_I64, 1, (int64_t[]){3}, s_i64);
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(st_writer_save(w, path, &err), 0);
    st_writer_free(&w);
    size_t n = 0;
    unsigned char *all = s_slurp(path, &n);
    CU_ASSERT_FATAL(all != NULL);
    uint64_t hl;
    memcpy(&hl, all, 8);

    s_write(cut, all, n - 1); /* last byte of "last" missing */
    s_expect_fail(cut, "truncated", "tensor last");
    s_write(cut, all, 8 + (size_t)hl + 24); /* only "first" remains */
    s_expect_fail(cut, "truncated", "tensor last");
    s_write(cut, all, 8 + (size_t)hl / 2); /* inside the header */
    s_expect_fail(cut, "truncated", NULL);
    s_write(cut, all, 5);
    s_expect_fail(cut, "truncated", NULL);
    s_write(cut, all, 0);
    s_expect_fail(cut, "empty", NULL);
    /* Garbage where the header should be. */
    memset(all + 8, '#', 4);
    s_write(cut, all, n);
    s_expect_fail(cut, "not a JSON object", NULL);
    free(all);

    static const unsigned char pad[64];
    static const struct {
        const char *header;
        const char *want1, *want2;
    } bad[] = {
        {"[1, 2, 3]", "not a JSON object", NULL},
        {"{\"x\": {\"dtype\": \"F32\", \"shape\": [2]}}", "tensor x", "dtype/shape/data_offsets"},
        {"{\"x\": 5}", "tensor x", NULL},
        {"{\"x\": {\"dtype\": \"F8\", \"shape\": [2], \"data_offsets\": [0, 2]}}", "tensor x",
         "unsupported dtype F8"},
        {"{\"x\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", "tensor x",
         "8 bytes"},
        {"{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", "tensor x",
         "data_offsets"},
        {"{\"x\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", "tensor x",
         "shape"},
        {"{\"x\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
         "tensor x", "dimensions"},
        {"{\"x\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [60, 62]}}", "truncated",
         "tensor x"},
        /* Shapes whose element or byte count wraps 64 bits would otherwise
         * pass the size check with zero bytes. */
        {"{\"x\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 4], \"data_offsets\": "
         "[0, 0]}}", "tensor x", "shape"},
        {"{\"x\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904], \"data_offsets\": "
         "[0, 0]}}", "tensor x", "shape"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s_write_raw(cut, bad[i].header, pad, 32);
        s_expect_fail(cut, bad[i].want1, bad[i].want2);
    }
    /* A header length larger than the file. */
    unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{', '}'};
    s_write(cut, huge, sizeof huge);
    s_expect_fail(cut, "header length", NULL);
    /* An empty dict is a valid, empty file. */
    s_write_raw(cut, "{}      ", NULL, 0);
    TensorFile *tf = NULL;
    CU_ASSERT_EQUAL(safetensors_open(cut, &tf, &err), 0);
    CU_ASSERT(tf && tf->n == 0);
    tensorfile_close(&tf);
    unlink(cut);
    s_expect_fail(cut, "cannot open", NULL);
    unlink(path);
    s_tmp_done();
}

void tests_safetensors(void)
{
    TU_SUITE("safetensors",
             {"write/read round trip", test_roundtrip},
             {"writer errors", test_writer_errors},
             {"dtype table", test_dtype_table},
             {"f16 known values and rounding", test_f16_known},
             {"f16 exhaustive", test_f16_exhaustive},
             {"bf16", test_bf16},
             {"tensor conversions", test_convert},
             {"truncated and malformed files", test_bad_files});
}
