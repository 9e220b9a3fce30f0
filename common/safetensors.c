/* safetensors.c - safetensors reader (mmap) and writer, dtype helpers. */
#include "common/tensorfile.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} s_dtypes[DM_DTYPE_COUNT] = {
    [DM_F32] = {"F32", 4},  [DM_F16] = {"F16", 2}, [DM_BF16] = {"BF16", 2},
    [DM_F64] = {"F64", 8},  [DM_I64] = {"I64", 8}, [DM_I32] = {"I32", 4},
    [DM_I16] = {"I16", 2},  [DM_I8] = {"I8", 1},   [DM_U8] = {"U8", 1},
    [DM_U16] = {"U16", 2},  [DM_U32] = {"U32", 4}, [DM_U64] = {"U64", 8},
    [DM_BOOL] = {"BOOL", 1},
};

size_t dm_dtype_size(DmDtype dt) { return (unsigned)dt < DM_DTYPE_COUNT ? s_dtypes[dt].size : 0; }

const char *dm_dtype_name(DmDtype dt)
{
    return (unsigned)dt < DM_DTYPE_COUNT ? s_dtypes[dt].name : "?";
}

int dm_dtype_parse(const char *s, DmDtype *out)
{
    for (int i = 0; i < DM_DTYPE_COUNT; i++)
        if (strcmp(s, s_dtypes[i].name) == 0) {
            *out = (DmDtype)i;
            return 0;
        }
    return -1;
}

int64_t dm_tensor_numel(const DmTensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

float dm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t dm_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (absx < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* value = m * 2^(e-150); half subnormal unit 2^-24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = absx + 0xfff + ((absx >> 13) & 1); /* round to nearest even */
    r -= (127 - 15) << 23;
    return (uint16_t)(sign | (r >> 13));
}

float dm_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t dm_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

int dm_tensor_to_f32(const DmTensor *t, float *dst, DmErr *err)
{
    int64_t n = dm_tensor_numel(t);
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case DM_F32:
        memcpy(dst, p, (size_t)n * 4);
        return 0;
    case DM_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = dm_f16_to_f32(h);
        }
        return 0;
    case DM_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = dm_bf16_to_f32(h);
        }
        return 0;
    case DM_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    default:
        return dm_err(err, "tensor %s: dtype %s is not a floating type", t->name,
                      dm_dtype_name(t->dtype));
    }
}

int dm_tensor_to_i64(const DmTensor *t, int64_t *dst, DmErr *err)
{
    int64_t n = dm_tensor_numel(t);
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case DM_I64: memcpy(&dst[i], p + 8 * i, 8); break;
        case DM_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = v; break; }
        case DM_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = v; break; }
        case DM_I8: dst[i] = (int8_t)p[i]; break;
        case DM_U8: dst[i] = p[i]; break;
        case DM_U16: { uint16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = v; break; }
        case DM_U32: { uint32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = v; break; }
        default:
            return dm_err(err, "tensor %s: dtype %s is not an integer type", t->name,
                          dm_dtype_name(t->dtype));
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- reading */

static int s_map_file(const char *path, void **map, size_t *len, DmErr *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dm_err_errno(err, "%s: cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return dm_err_errno(err, "%s: cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return dm_err(err, "%s: not a regular file", path);
    }
    *len = (size_t)st.st_size;
    if (*len == 0) {
        close(fd);
        return dm_err(err, "%s: file is empty", path);
    }
    *map = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (*map == MAP_FAILED) {
        *map = NULL;
        return dm_err_errno(err, "%s: cannot mmap", path);
    }
    return 0;
}

static int s_fail(TensorFile *tf, TensorFile **out)
{
    tensorfile_close(&tf);
    *out = NULL;
    return -1;
}

int safetensors_open(const char *path, TensorFile **out, DmErr *err)
{
    TensorFile *tf = dm_xcalloc(1, sizeof *tf);
    tf->path = dm_xstrdup(path);
    *out = NULL;
    if (s_map_file(path, &tf->map, &tf->map_len, err) != 0)
        return s_fail(tf, out);
    const unsigned char *base = tf->map;
    if (tf->map_len < 8) {
        dm_err(err, "%s: truncated safetensors file (%zu bytes, no header length)", path,
               tf->map_len);
        return s_fail(tf, out);
    }
    uint64_t hlen;
    memcpy(&hlen, base, 8);
    if (hlen > tf->map_len - 8 || hlen > (100u << 20)) {
        dm_err(err, "%s: not a safetensors file or truncated (header length %llu, file %zu bytes)",
               path, (unsigned long long)hlen, tf->map_len);
        return s_fail(tf, out);
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)base + 8, (size_t)hlen, 0, &jerr);
    if (!root || !json_is_object(root)) {
        dm_err(err, "%s: safetensors header is not a JSON object (%s)", path,
               root ? "wrong type" : jerr.text);
        json_decref(root);
        return s_fail(tf, out);
    }
    size_t data_start = 8 + (size_t)hlen;
    size_t data_len = tf->map_len - data_start;
    tf->t = dm_xcalloc(json_object_size(root) + 1, sizeof(DmTensor));
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        DmTensor *t = &tf->t[tf->n];
        json_t *jdt = json_object_get(val, "dtype");
        json_t *jsh = json_object_get(val, "shape");
        json_t *jof = json_object_get(val, "data_offsets");
        if (!json_is_string(jdt) || !json_is_array(jsh) || !json_is_array(jof) ||
            json_array_size(jof) != 2) {
            dm_err(err, "%s: tensor %s: header entry lacks dtype/shape/data_offsets", path, key);
            goto bad;
        }
        if (dm_dtype_parse(json_string_value(jdt), &t->dtype) != 0) {
            dm_err(err, "%s: tensor %s: unsupported dtype %s", path, key, json_string_value(jdt));
            goto bad;
        }
        if (json_array_size(jsh) > DM_MAX_DIMS) {
            dm_err(err, "%s: tensor %s: %zu dimensions (at most %d)", path, key,
                   json_array_size(jsh), DM_MAX_DIMS);
            goto bad;
        }
        t->ndim = (int)json_array_size(jsh);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            json_t *s = json_array_get(jsh, (size_t)d);
            if (!json_is_integer(s) || json_integer_value(s) < 0) {
                dm_err(err, "%s: tensor %s: bad shape", path, key);
                goto bad;
            }
            t->shape[d] = json_integer_value(s);
            /* A wrapped count could match a zero-byte data range and give
             * a tensor whose shape promises far more than is mapped. */
            if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel) ||
                numel > SIZE_MAX / 8) {
                dm_err(err, "%s: tensor %s: shape overflows the address space", path, key);
                goto bad;
            }
        }
        json_t *b0 = json_array_get(jof, 0), *b1 = json_array_get(jof, 1);
        if (!json_is_integer(b0) || !json_is_integer(b1) || json_integer_value(b0) < 0 ||
            json_integer_value(b1) < json_integer_value(b0)) {
            dm_err(err, "%s: tensor %s: bad data_offsets", path, key);
            goto bad;
        }
        uint64_t o0 = (uint64_t)json_integer_value(b0), o1 = (uint64_t)json_integer_value(b1);
        if (o1 - o0 != numel * dm_dtype_size(t->dtype)) {
            dm_err(err, "%s: tensor %s: %llu bytes stored for shape of %llu %s elements", path, key,
                   (unsigned long long)(o1 - o0), (unsigned long long)numel,
                   dm_dtype_name(t->dtype));
            goto bad;
        }
        if (o1 > data_len) {
            dm_err(err, "%s: truncated: tensor %s ends at byte %llu of a %zu-byte data section",
                   path, key, (unsigned long long)o1, data_len);
            goto bad;
        }
        t->name = dm_xstrdup(key);
        t->nbytes = (size_t)(o1 - o0);
        t->data = base + data_start + o0;
        tf->n++;
    }
    json_decref(root);
    *out = tf;
    return 0;
bad:
    json_decref(root);
    return s_fail(tf, out);
}

int tensorfile_open(const char *path, TensorFile **out, DmErr *err)
{
    unsigned char magic[10] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_errno(err, "%s: cannot open", path);
    size_t got = fread(magic, 1, sizeof magic, f);
    fclose(f);
    /* torch's legacy pickle format (pickled magic number) goes to torchbin
     * too, which names it instead of reporting a bogus safetensors header. */
    static const unsigned char legacy[10] = {0x80, 0x02, 0x8a, 0x0a, 0x6c,
                                             0xfc, 0x9c, 0x46, 0xf9, 0x20};
    if ((got >= 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4) ||
        (got == sizeof legacy && memcmp(magic, legacy, sizeof legacy) == 0))
        return torchbin_open(path, out, err);
    return safetensors_open(path, out, err);
}

const DmTensor *tensorfile_find(const TensorFile *tf, const char *name)
{
    for (int i = 0; i < tf->n; i++)
        if (strcmp(tf->t[i].name, name) == 0)
            return &tf->t[i];
    return NULL;
}

void tensorfile_close(TensorFile **ptf)
{
    TensorFile *tf = *ptf;
    if (!tf)
        return;
    for (int i = 0; i < tf->n; i++)
        free(tf->t[i].name);
    free(tf->t);
    if (tf->map)
        munmap(tf->map, tf->map_len);
    free(tf->priv);
    free(tf->path);
    free(tf);
    *ptf = NULL;
}

/* ---------------------------------------------------------------- writing */

typedef struct StEntry {
    char *name;
    DmDtype dtype;
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    size_t nbytes;
    void *data;
} StEntry;

struct StWriter {
    StEntry *e;
    int n, cap;
    json_t *meta;
};

StWriter *st_writer_new(void)
{
    StWriter *w = dm_xcalloc(1, sizeof *w);
    w->meta = json_object();
    json_object_set_new(w->meta, "format", json_string("pt"));
    return w;
}

void st_writer_add(StWriter *w, const char *name, DmDtype dt, int ndim, const int64_t *shape,
                   const void *data)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 32;
        w->e = dm_xrealloc(w->e, (size_t)w->cap * sizeof *w->e);
    }
    StEntry *e = &w->e[w->n++];
    e->name = dm_xstrdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        numel *= (size_t)shape[i];
    }
    e->nbytes = numel * dm_dtype_size(dt);
    e->data = dm_xmalloc(e->nbytes);
    if (e->nbytes)
        memcpy(e->data, data, e->nbytes);
}

void st_writer_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape,
                       const float *data)
{
    st_writer_add(w, name, DM_F32, ndim, shape, data);
}

void st_writer_meta(StWriter *w, const char *key, const char *value)
{
    json_object_set_new(w->meta, key, json_string(value));
}

int st_writer_save(StWriter *w, const char *path, DmErr *err)
{
    json_t *hdr = json_object();
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        StEntry *e = &w->e[i];
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++)
            json_array_append_new(shape, json_integer(e->shape[d]));
        json_t *ent = json_pack("{s:s, s:o, s:[I,I]}", "dtype", dm_dtype_name(e->dtype), "shape",
                                shape, "data_offsets", (json_int_t)off,
                                (json_int_t)(off + e->nbytes));
        /* Refuse what JSON would otherwise drop silently: a repeated name
         * (the object keeps one) or a name that is not UTF-8 (not stored). */
        if (json_object_get(hdr, e->name)) {
            json_decref(ent);
            json_decref(hdr);
            return dm_err(err, "%s: tensor %s added twice", path, e->name);
        }
        if (json_object_set_new(hdr, e->name, ent) != 0) {
            json_decref(hdr);
            return dm_err(err, "%s: tensor name \"%s\" is not valid UTF-8", path, e->name);
        }
        off += e->nbytes;
    }
    json_object_set(hdr, "__metadata__", w->meta);
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!text)
        return dm_err(err, "%s: cannot encode the safetensors header", path);
    size_t tlen = strlen(text);
    size_t padded = (tlen + 7) & ~(size_t)7;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(text);
        return dm_err_errno(err, "%s: cannot create", tmp);
    }
    uint64_t hlen = padded;
    int ok = fwrite(&hlen, 8, 1, f) == 1 && fwrite(text, 1, tlen, f) == tlen;
    for (size_t i = tlen; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < w->n; i++)
        ok = w->e[i].nbytes == 0 || fwrite(w->e[i].data, 1, w->e[i].nbytes, f) == w->e[i].nbytes;
    free(text);
    if (!ok || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        dm_err_errno(err, "%s: write failed", tmp);
        fclose(f);
        unlink(tmp);
        return -1;
    }
    if (fclose(f) != 0) {
        unlink(tmp);
        return dm_err_errno(err, "%s: write failed", tmp);
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return dm_err_errno(err, "%s: cannot rename into place", path);
    }
    return 0;
}

void st_writer_free(StWriter **pw)
{
    StWriter *w = *pw;
    if (!w)
        return;
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].data);
    }
    free(w->e);
    json_decref(w->meta);
    free(w);
    *pw = NULL;
}
