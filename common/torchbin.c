/* torchbin.c - read PyTorch's zip checkpoint (`torch.save`, the hub's
 * `pytorch_model.bin`) without Python.
 *
 * Layout written by torch.save since PyTorch 1.6:
 *
 *   <prefix>/data.pkl     pickle of the object saved (a state dict)
 *   <prefix>/data/<key>   raw bytes of one storage, little-endian
 *   <prefix>/version      archive format version ("3\n")
 *   <prefix>/byteorder    "little" or "big" (newer torch only)
 *
 * The zip entries are stored uncompressed, and torch pads the local headers
 * so that entry data starts on a 64-byte boundary; we mmap the file once and
 * point contiguous tensors straight into the mapping.  Tensors that are
 * views (stride, broadcast) or whose data is misaligned for their dtype are
 * packed into one owned block (TensorFile.priv, a single malloc so that
 * tensorfile_close's free(priv) releases it).
 *
 * The pickle is evaluated by a small stack machine that knows only the
 * opcodes and callables torch emits for a state dict; it never runs code.
 * A call of anything else (os.system, a custom class) is an error, as is any
 * opcode outside the list. */
#include "common/tensorfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ byte helpers */

/* Explicit little-endian decoding: the zip and pickle fields are LE whatever
 * the host, and these never make unaligned loads. */
static uint16_t s_le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t s_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t s_le64(const unsigned char *p)
{
    return (uint64_t)s_le32(p) | (uint64_t)s_le32(p + 4) << 32;
}

/* CRC-32 (IEEE, reflected 0xEDB88320).  Only the small entries (data.pkl,
 * byteorder) are checked: a flipped byte in the pickle would otherwise turn
 * into a confusing opcode error.  Storages are not checked, since that would
 * mean reading every byte of a multi-GB file at start-up, which the zero-copy
 * mmap exists to avoid (torch.load(mmap=True) does not check them either). */
static uint32_t s_crc32(const unsigned char *p, size_t n)
{
    /* The table is rebuilt per call (2 K operations, against a pickle of
     * ~100 KB) rather than cached in a static, which would be a data race
     * when several threads open checkpoints. */
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* torch.save before 1.6 wrote a bare pickle stream starting with the pickled
 * magic number 0x1950a86a20f9469cfc6c (PROTO 2, LONG1 of 10 bytes); it is
 * recognised only to say so clearly. */
static const unsigned char s_legacy_magic[10] = {0x80, 0x02, 0x8a, 0x0a, 0x6c,
                                                 0xfc, 0x9c, 0x46, 0xf9, 0x20};

/* ------------------------------------------------------------------- zip */

typedef struct TbEntry {
    const char *name; /* points into the central directory, not NUL-terminated */
    size_t name_len;
    uint64_t lho;     /* local header offset */
    uint64_t csize, usize;
    uint32_t crc;
    uint16_t method, flags;
} TbEntry;

typedef struct TbZip {
    const char *path;
    const unsigned char *base;
    size_t len;
    TbEntry *e;
    size_t n;
} TbZip;

static int s_entry_cmp(const void *a, const void *b)
{
    const TbEntry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c)
        return c;
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Find the end-of-central-directory record, following the ZIP64 locator when
 * present (torch writes ZIP64 records for archives over 4 GiB or 65535
 * entries), and fill z->e with the entries sorted by name. */
static int s_zip_read(TbZip *z, DmErr *err)
{
    const unsigned char *b = z->base;
    size_t len = z->len;
    if (len >= sizeof s_legacy_magic && memcmp(b, s_legacy_magic, sizeof s_legacy_magic) == 0)
        return dm_err(err, "%s: legacy torch.save format (PyTorch < 1.6, not a zip) is not "
                           "supported; re-save it with a current torch or convert it to "
                           "safetensors", z->path);
    if (len < 22 || memcmp(b, "PK", 2) != 0)
        return dm_err(err, "%s: not a zip archive (a torch.save checkpoint is a zip file)",
                      z->path);
    /* The record is 22 bytes plus a comment of at most 65535 bytes. */
    size_t eocd = (size_t)-1;
    size_t lo = len - 22 > 65535 ? len - 22 - 65535 : 0;
    for (size_t i = len - 22 + 1; i-- > lo;) {
        if (b[i] == 'P' && s_le32(b + i) == 0x06054b50u && i + 22 + s_le16(b + i + 20) <= len) {
            eocd = i;
            break;
        }
    }
    if (eocd == (size_t)-1)
        return dm_err(err, "%s: truncated or not a zip archive (no end-of-central-directory "
                           "record)", z->path);
    uint64_t count = s_le16(b + eocd + 10);
    uint64_t cd_size = s_le32(b + eocd + 12);
    uint64_t cd_off = s_le32(b + eocd + 16);
    if (eocd >= 20 && s_le32(b + eocd - 20) == 0x07064b50u) {
        uint64_t z64 = s_le64(b + eocd - 20 + 8);
        if (z64 > len || len - z64 < 56 || s_le32(b + z64) != 0x06064b50u)
            return dm_err(err, "%s: truncated or corrupt zip (bad ZIP64 end-of-central-directory "
                               "record)", z->path);
        count = s_le64(b + z64 + 32);
        cd_size = s_le64(b + z64 + 40);
        cd_off = s_le64(b + z64 + 48);
    }
    if (cd_off > len || cd_size > len - cd_off)
        return dm_err(err, "%s: truncated zip (central directory at %llu+%llu of a %zu-byte file)",
                      z->path, (unsigned long long)cd_off, (unsigned long long)cd_size, len);
    /* Each central record is at least 46 bytes, which bounds the allocation
     * by the file size whatever the count field claims. */
    if (count > cd_size / 46)
        return dm_err(err, "%s: corrupt zip (%llu entries in a %llu-byte central directory)",
                      z->path, (unsigned long long)count, (unsigned long long)cd_size);
    z->e = dm_xcalloc(count ? count : 1, sizeof *z->e);
    const unsigned char *p = b + cd_off, *end = b + cd_off + cd_size;
    for (uint64_t i = 0; i < count; i++) {
        if (end - p < 46 || s_le32(p) != 0x02014b50u)
            return dm_err(err, "%s: corrupt zip central directory (entry %llu)", z->path,
                          (unsigned long long)i);
        TbEntry *e = &z->e[z->n];
        e->flags = s_le16(p + 8);
        e->method = s_le16(p + 10);
        e->crc = s_le32(p + 16);
        e->csize = s_le32(p + 20);
        e->usize = s_le32(p + 24);
        size_t nl = s_le16(p + 28), xl = s_le16(p + 30), cl = s_le16(p + 32);
        e->lho = s_le32(p + 42);
        if ((size_t)(end - p) < 46 + nl + xl + cl)
            return dm_err(err, "%s: corrupt zip central directory (entry %llu overruns it)",
                          z->path, (unsigned long long)i);
        e->name = (const char *)p + 46;
        e->name_len = nl;
        /* ZIP64 extended information: 64-bit values for exactly those
         * fields whose 32-bit slot holds 0xFFFFFFFF, in this fixed order. */
        const unsigned char *x = p + 46 + nl, *xend = x + xl;
        while (xend - x >= 4) {
            uint16_t id = s_le16(x), sz = s_le16(x + 2);
            if ((size_t)(xend - x - 4) < sz)
                break;
            if (id == 0x0001) {
                const unsigned char *f = x + 4, *fend = x + 4 + sz;
                uint64_t *slots[3] = {&e->usize, &e->csize, &e->lho};
                for (int k = 0; k < 3; k++) {
                    if (*slots[k] != 0xFFFFFFFFu)
                        continue;
                    if (fend - f < 8)
                        return dm_err(err, "%s: corrupt zip (short ZIP64 field of entry %.*s)",
                                      z->path, (int)nl, e->name);
                    *slots[k] = s_le64(f);
                    f += 8;
                }
            }
            x += 4 + sz;
        }
        z->n++;
        p += 46 + nl + xl + cl;
    }
    qsort(z->e, z->n, sizeof *z->e, s_entry_cmp);
    return 0;
}

static const TbEntry *s_zip_find(const TbZip *z, const char *name, size_t name_len)
{
    TbEntry key = {.name = name, .name_len = name_len};
    return bsearch(&key, z->e, z->n, sizeof *z->e, s_entry_cmp);
}

/* Locate an entry's bytes in the mapping: it must be stored (torch never
 * compresses, and a compressed entry cannot be used in place), unencrypted,
 * and lie inside the file.  The sizes come from the central directory
 * because torch sets bit 3 (data descriptor) and leaves the local header's
 * sizes zero. */
static int s_entry_data(const TbZip *z, const TbEntry *e, const char *ctx,
                        const unsigned char **data, DmErr *err)
{
    if (e->flags & 1)
        return dm_err(err, "%s: %szip entry %.*s is encrypted", z->path, ctx, (int)e->name_len,
                      e->name);
    if (e->method != 0)
        return dm_err(err, "%s: %szip entry %.*s is compressed (method %u); torch.save stores "
                           "entries uncompressed, re-save the checkpoint without compression",
                      z->path, ctx, (int)e->name_len, e->name, e->method);
    if (e->csize != e->usize)
        return dm_err(err, "%s: %szip entry %.*s: stored size %llu differs from size %llu",
                      z->path, ctx, (int)e->name_len, e->name, (unsigned long long)e->csize,
                      (unsigned long long)e->usize);
    if (e->lho > z->len || z->len - e->lho < 30 || s_le32(z->base + e->lho) != 0x04034b50u)
        return dm_err(err, "%s: %struncated or corrupt zip (no local header for entry %.*s)",
                      z->path, ctx, (int)e->name_len, e->name);
    const unsigned char *h = z->base + e->lho;
    uint64_t start = e->lho + 30 + (uint64_t)s_le16(h + 26) + s_le16(h + 28);
    if (start > z->len || z->len - start < e->csize)
        return dm_err(err, "%s: %struncated: zip entry %.*s (%llu bytes) extends past the end of "
                           "the %zu-byte file", z->path, ctx, (int)e->name_len, e->name,
                      (unsigned long long)e->csize, z->len);
    *data = z->base + start;
    return 0;
}

/* --------------------------------------------------------- pickle values */

typedef enum TbKind {
    V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT,
    V_GLOBAL, V_STORAGE, V_TENSOR,
} TbKind;

static const char *const s_kind_name[] = {
    "None", "bool", "int", "float", "str", "tuple", "list", "dict",
    "global", "storage", "tensor",
};

/* What a GLOBAL refers to; only the callables are ever "called". */
typedef enum TbGlob {
    G_OTHER,        /* a name kept as a value (e.g. Parameter as a type argument) */
    G_ODICT,        /* collections.OrderedDict */
    G_REBUILD_V1,   /* torch._utils._rebuild_tensor(storage, offset, size, stride) */
    G_REBUILD_V2,   /* torch._utils._rebuild_tensor_v2(..., requires_grad, hooks[, meta]) */
    G_REBUILD_V3,   /* torch._utils._rebuild_tensor_v3(..., hooks, dtype[, meta]) */
    G_PARAM,        /* torch._utils._rebuild_parameter[_with_state](tensor, ...) */
    G_FROM_TYPE,    /* torch._tensor._rebuild_from_type_v2(func, type, args, state) */
    G_STORAGE_TYPE, /* torch.FloatStorage ...: a typed storage class */
    G_UNTYPED,      /* torch.UntypedStorage: bytes */
    G_DTYPE,        /* torch.float32 ...: the dtype argument of v3 */
} TbGlob;

typedef struct TbVal TbVal;
struct TbVal {
    TbKind kind;
    union {
        int64_t i;   /* V_BOOL, V_INT */
        double f;    /* V_FLOAT */
        struct {     /* V_STR: points into the pickle, not NUL-terminated */
            const char *p;
            size_t n;
        } s;
        struct {     /* V_TUPLE, V_LIST; V_DICT holds key,value pairs flat */
            TbVal **v;
            size_t n, cap;
        } seq;
        struct {     /* V_GLOBAL */
            TbGlob g;
            DmDtype dt;
            const char *mod, *name;
            size_t modn, namen;
        } glob;
        struct {     /* V_STORAGE: one persistent id */
            const char *key;
            size_t keyn;
            int typed;      /* 0: UntypedStorage, numel counts bytes */
            DmDtype dt;
            uint64_t numel;
        } st;
        struct {     /* V_TENSOR */
            TbVal *storage;
            int64_t offset;
            int ndim;
            int64_t size[DM_MAX_DIMS], stride[DM_MAX_DIMS];
            DmDtype dt;
            /* filled when the TensorFile is assembled */
            int resolved, owned;
            const unsigned char *src; /* storage data + offset */
            const void *data;
            size_t nbytes, own_off;
        } ten;
    } u;
};

typedef struct TbVm {
    const char *path, *entry;   /* for messages: file and "archive/data.pkl" */
    const unsigned char *p;
    size_t n, pos, op_pos;
    TbVal **all;                /* every value made, freed together */
    size_t nall, capall;
    TbVal **stack;
    size_t sp, capstack;
    size_t *marks;              /* stack heights at each MARK */
    size_t nmarks, capmarks;
    TbVal **memo;
    size_t capmemo, nmemo_next; /* nmemo_next: the index MEMOIZE uses */
    DmErr *err;
} TbVm;

/* Growth helper for the VM's arrays; dm_xrealloc exits on out-of-memory,
 * as the rest of start-up does. */
#define S_GROW(arr, count, cap)                                                   \
    do {                                                                          \
        if ((count) >= (cap)) {                                                   \
            (cap) = (cap) ? 2 * (cap) : 64;                                       \
            (arr) = dm_xrealloc((arr), (cap) * sizeof *(arr));                    \
        }                                                                         \
    } while (0)

static int s_vm_err(TbVm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Every pickle error names the file, the entry and the opcode's offset. */
static int s_vm_err(TbVm *vm, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dm_err(vm->err, "%s: %s: %s (pickle byte %zu)", vm->path, vm->entry, msg, vm->op_pos);
}

static TbVal *s_new(TbVm *vm, TbKind k)
{
    TbVal *v = dm_xcalloc(1, sizeof *v);
    v->kind = k;
    S_GROW(vm->all, vm->nall, vm->capall);
    vm->all[vm->nall++] = v;
    return v;
}

static void s_vm_free(TbVm *vm)
{
    for (size_t i = 0; i < vm->nall; i++) {
        TbVal *v = vm->all[i];
        if (v->kind == V_TUPLE || v->kind == V_LIST || v->kind == V_DICT)
            free(v->u.seq.v);
        free(v);
    }
    free(vm->all);
    free(vm->stack);
    free(vm->marks);
    free(vm->memo);
}

static void s_seq_push(TbVal *seq, TbVal *x)
{
    S_GROW(seq->u.seq.v, seq->u.seq.n, seq->u.seq.cap);
    seq->u.seq.v[seq->u.seq.n++] = x;
}

static int s_str_eq(const TbVal *v, const char *s)
{
    return v->kind == V_STR && v->u.s.n == strlen(s) && memcmp(v->u.s.p, s, v->u.s.n) == 0;
}

/* Python dict semantics: a repeated key replaces the value, so names in the
 * resulting TensorFile stay unique.  Linear search: state dicts have at most
 * a few thousand entries. */
static int s_dict_set(TbVm *vm, TbVal *d, TbVal *k, TbVal *v)
{
    if (d->kind != V_DICT)
        return s_vm_err(vm, "SETITEM on a %s, not a dict", s_kind_name[d->kind]);
    if (k->kind == V_STR) {
        for (size_t i = 0; i < d->u.seq.n; i += 2) {
            TbVal *o = d->u.seq.v[i];
            if (o->kind == V_STR && o->u.s.n == k->u.s.n && memcmp(o->u.s.p, k->u.s.p, k->u.s.n) == 0) {
                d->u.seq.v[i + 1] = v;
                return 0;
            }
        }
    }
    s_seq_push(d, k);
    s_seq_push(d, v);
    return 0;
}

static void s_push(TbVm *vm, TbVal *v)
{
    S_GROW(vm->stack, vm->sp, vm->capstack);
    vm->stack[vm->sp++] = v;
}

/* Pop one value; values below the innermost MARK are not reachable. */
static int s_pop(TbVm *vm, TbVal **out)
{
    size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
    if (vm->sp <= floor)
        return s_vm_err(vm, "stack underflow");
    *out = vm->stack[--vm->sp];
    return 0;
}

static int s_top(TbVm *vm, TbVal **out)
{
    size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
    if (vm->sp <= floor)
        return s_vm_err(vm, "stack underflow");
    *out = vm->stack[vm->sp - 1];
    return 0;
}

/* Pop back to the innermost MARK: *items and *count hold the values above it
 * (still valid in vm->stack until the next push). */
static int s_pop_mark(TbVm *vm, TbVal ***items, size_t *count)
{
    if (!vm->nmarks)
        return s_vm_err(vm, "no MARK on the stack");
    size_t m = vm->marks[--vm->nmarks];
    *items = vm->stack + m;
    *count = vm->sp - m;
    vm->sp = m;
    return 0;
}

static int s_read(TbVm *vm, size_t k, const unsigned char **out)
{
    if (vm->n - vm->pos < k)
        return s_vm_err(vm, "pickle ends inside an opcode (truncated or corrupt)");
    *out = vm->p + vm->pos;
    vm->pos += k;
    return 0;
}

/* ------------------------------------------------------------- globals */

static const struct {
    const char *name;
    DmDtype dt;
} s_storage_types[] = {
    {"FloatStorage", DM_F32}, {"HalfStorage", DM_F16},  {"BFloat16Storage", DM_BF16},
    {"DoubleStorage", DM_F64}, {"LongStorage", DM_I64}, {"IntStorage", DM_I32},
    {"ShortStorage", DM_I16}, {"CharStorage", DM_I8},   {"ByteStorage", DM_U8},
    {"BoolStorage", DM_BOOL},
};

/* torch.dtype objects pickle as the global torch.<name>; aliases included. */
static const struct {
    const char *name;
    DmDtype dt;
} s_torch_dtypes[] = {
    {"float32", DM_F32}, {"float", DM_F32},   {"float16", DM_F16}, {"half", DM_F16},
    {"bfloat16", DM_BF16}, {"float64", DM_F64}, {"double", DM_F64}, {"int64", DM_I64},
    {"long", DM_I64},    {"int32", DM_I32},   {"int", DM_I32},     {"int16", DM_I16},
    {"short", DM_I16},   {"int8", DM_I8},     {"uint8", DM_U8},    {"bool", DM_BOOL},
    {"uint16", DM_U16},  {"uint32", DM_U32},  {"uint64", DM_U64},
};

static int s_name_is(const char *p, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

/* Classify module.name; unknown names stay plain values (G_OTHER) and only
 * fail if something tries to call them. */
static TbVal *s_make_global(TbVm *vm, const char *mod, size_t modn, const char *name, size_t namen)
{
    TbVal *v = s_new(vm, V_GLOBAL);
    v->u.glob.mod = mod;
    v->u.glob.modn = modn;
    v->u.glob.name = name;
    v->u.glob.namen = namen;
    TbGlob g = G_OTHER;
    if (s_name_is(mod, modn, "collections") && s_name_is(name, namen, "OrderedDict"))
        g = G_ODICT;
    else if (s_name_is(mod, modn, "torch._utils")) {
        if (s_name_is(name, namen, "_rebuild_tensor"))
            g = G_REBUILD_V1;
        else if (s_name_is(name, namen, "_rebuild_tensor_v2"))
            g = G_REBUILD_V2;
        else if (s_name_is(name, namen, "_rebuild_tensor_v3"))
            g = G_REBUILD_V3;
        else if (s_name_is(name, namen, "_rebuild_parameter") ||
                 s_name_is(name, namen, "_rebuild_parameter_with_state"))
            g = G_PARAM;
    } else if (s_name_is(mod, modn, "torch._tensor") &&
               s_name_is(name, namen, "_rebuild_from_type_v2")) {
        g = G_FROM_TYPE;
    } else if (s_name_is(mod, modn, "torch") || s_name_is(mod, modn, "torch.cuda") ||
               s_name_is(mod, modn, "torch.storage")) {
        if (s_name_is(name, namen, "UntypedStorage"))
            g = G_UNTYPED;
        for (size_t i = 0; g == G_OTHER && i < sizeof s_storage_types / sizeof *s_storage_types; i++)
            if (s_name_is(name, namen, s_storage_types[i].name)) {
                g = G_STORAGE_TYPE;
                v->u.glob.dt = s_storage_types[i].dt;
            }
        for (size_t i = 0; g == G_OTHER && s_name_is(mod, modn, "torch") &&
                           i < sizeof s_torch_dtypes / sizeof *s_torch_dtypes; i++)
            if (s_name_is(name, namen, s_torch_dtypes[i].name)) {
                g = G_DTYPE;
                v->u.glob.dt = s_torch_dtypes[i].dt;
            }
    }
    v->u.glob.g = g;
    return v;
}

/* ------------------------------------------------------------ callables */

static int s_int_arg(TbVm *vm, TbVal *v, const char *what, int64_t *out)
{
    if (v->kind != V_INT && v->kind != V_BOOL)
        return s_vm_err(vm, "%s is a %s, not an int", what, s_kind_name[v->kind]);
    *out = v->u.i;
    return 0;
}

/* size/stride: a tuple (or list) of ints. */
static int s_dims_arg(TbVm *vm, TbVal *v, const char *what, int64_t *dims, int *ndim)
{
    if (v->kind != V_TUPLE && v->kind != V_LIST)
        return s_vm_err(vm, "tensor %s is a %s, not a tuple", what, s_kind_name[v->kind]);
    if (v->u.seq.n > DM_MAX_DIMS)
        return s_vm_err(vm, "tensor has %zu dimensions (at most %d)", v->u.seq.n, DM_MAX_DIMS);
    for (size_t i = 0; i < v->u.seq.n; i++) {
        if (s_int_arg(vm, v->u.seq.v[i], what, &dims[i]))
            return -1;
        if (dims[i] < 0)
            return s_vm_err(vm, "tensor %s has a negative entry %lld", what, (long long)dims[i]);
    }
    *ndim = (int)v->u.seq.n;
    return 0;
}

/* _rebuild_tensor{,_v2,_v3}: record storage, offset, size and stride; the
 * bytes are checked against the zip entry later, when the tensor's name is
 * known for the message. */
static int s_rebuild_tensor(TbVm *vm, TbGlob g, TbVal **a, size_t n, TbVal **out)
{
    size_t need = g == G_REBUILD_V1 ? 4 : g == G_REBUILD_V2 ? 6 : 7;
    if (n < need || n > need + 1 - (g == G_REBUILD_V1))
        return s_vm_err(vm, "tensor rebuild call with %zu arguments", n);
    if (a[0]->kind != V_STORAGE)
        return s_vm_err(vm, "tensor rebuild call: first argument is a %s, not a storage",
                        s_kind_name[a[0]->kind]);
    TbVal *t = s_new(vm, V_TENSOR);
    t->u.ten.storage = a[0];
    if (s_int_arg(vm, a[1], "tensor storage offset", &t->u.ten.offset))
        return -1;
    if (t->u.ten.offset < 0)
        return s_vm_err(vm, "negative tensor storage offset");
    int nd1, nd2;
    if (s_dims_arg(vm, a[2], "size", t->u.ten.size, &nd1) ||
        s_dims_arg(vm, a[3], "stride", t->u.ten.stride, &nd2))
        return -1;
    if (nd1 != nd2)
        return s_vm_err(vm, "tensor size has %d dimensions but stride %d", nd1, nd2);
    t->u.ten.ndim = nd1;
    if (g == G_REBUILD_V3) {
        /* v3 (torch >= 2.1, dtypes without a legacy storage class): the
         * storage is untyped bytes and the dtype is an extra argument. */
        if (a[6]->kind != V_GLOBAL || a[6]->u.glob.g != G_DTYPE)
            return s_vm_err(vm, "_rebuild_tensor_v3: dtype argument is not a supported "
                                "torch dtype");
        t->u.ten.dt = a[6]->u.glob.dt;
    } else {
        if (!a[0]->u.st.typed)
            return s_vm_err(vm, "tensor rebuilt from an untyped storage without a dtype");
        t->u.ten.dt = a[0]->u.st.dt;
    }
    *out = t;
    return 0;
}

/* REDUCE: apply a known callable to an argument tuple.  depth bounds the
 * nesting of _rebuild_from_type_v2, which calls its own func argument. */
static int s_call(TbVm *vm, TbVal *fn, TbVal *args, int depth, TbVal **out)
{
    if (args->kind != V_TUPLE)
        return s_vm_err(vm, "call arguments are a %s, not a tuple", s_kind_name[args->kind]);
    if (fn->kind != V_GLOBAL)
        return s_vm_err(vm, "cannot call a %s", s_kind_name[fn->kind]);
    TbVal **a = args->u.seq.v;
    size_t n = args->u.seq.n;
    switch (fn->u.glob.g) {
    case G_ODICT:
        /* OrderedDict() -- items follow via SETITEMS.  A list of pairs as
         * argument would come from OrderedDict([...]), which torch never
         * writes; refuse rather than silently drop it. */
        if (n != 0)
            return s_vm_err(vm, "collections.OrderedDict called with arguments");
        *out = s_new(vm, V_DICT);
        return 0;
    case G_REBUILD_V1:
    case G_REBUILD_V2:
    case G_REBUILD_V3:
        return s_rebuild_tensor(vm, fn->u.glob.g, a, n, out);
    case G_PARAM:
        /* nn.Parameter(data, requires_grad, hooks[, state]): the data. */
        if (n < 1 || a[0]->kind != V_TENSOR)
            return s_vm_err(vm, "_rebuild_parameter without a tensor argument");
        *out = a[0];
        return 0;
    case G_FROM_TYPE:
        /* Tensor subclasses (e.g. Parameter in torch >= 2): func(*args),
         * then a type change and state that do not affect the data. */
        if (n != 4 || a[2]->kind != V_TUPLE)
            return s_vm_err(vm, "_rebuild_from_type_v2 with unexpected arguments");
        if (depth > 8)
            return s_vm_err(vm, "_rebuild_from_type_v2 nested too deeply");
        if (s_call(vm, a[0], a[2], depth + 1, out))
            return -1;
        if ((*out)->kind != V_TENSOR)
            return s_vm_err(vm, "_rebuild_from_type_v2 did not produce a tensor");
        return 0;
    default:
        return s_vm_err(vm, "unsupported callable %.*s.%.*s (only tensors, parameters and "
                            "OrderedDict are understood)", (int)fn->u.glob.modn, fn->u.glob.mod,
                        (int)fn->u.glob.namen, fn->u.glob.name);
    }
}

/* BINPERSID: ('storage', storage_type, key, location, numel). */
static int s_persistent_load(TbVm *vm, TbVal *pid, TbVal **out)
{
    if (pid->kind != V_TUPLE || pid->u.seq.n != 5 || !s_str_eq(pid->u.seq.v[0], "storage"))
        return s_vm_err(vm, "persistent id is not a ('storage', type, key, location, numel) "
                            "tuple");
    TbVal **a = pid->u.seq.v;
    TbVal *st = s_new(vm, V_STORAGE);
    if (a[1]->kind != V_GLOBAL ||
        (a[1]->u.glob.g != G_STORAGE_TYPE && a[1]->u.glob.g != G_UNTYPED)) {
        if (a[1]->kind == V_GLOBAL)
            return s_vm_err(vm, "unsupported storage type %.*s.%.*s", (int)a[1]->u.glob.modn,
                            a[1]->u.glob.mod, (int)a[1]->u.glob.namen, a[1]->u.glob.name);
        return s_vm_err(vm, "storage type is a %s", s_kind_name[a[1]->kind]);
    }
    st->u.st.typed = a[1]->u.glob.g == G_STORAGE_TYPE;
    st->u.st.dt = st->u.st.typed ? a[1]->u.glob.dt : DM_U8;
    if (a[2]->kind != V_STR || a[2]->u.s.n == 0 || a[2]->u.s.n > 64 ||
        memchr(a[2]->u.s.p, '/', a[2]->u.s.n) || memchr(a[2]->u.s.p, 0, a[2]->u.s.n))
        return s_vm_err(vm, "bad storage key");
    st->u.st.key = a[2]->u.s.p;
    st->u.st.keyn = a[2]->u.s.n;
    int64_t numel = 0;
    if (s_int_arg(vm, a[4], "storage size", &numel))
        return -1;
    if (numel < 0)
        return s_vm_err(vm, "negative storage size");
    st->u.st.numel = (uint64_t)numel;
    *out = st;
    return 0;
}

/* ------------------------------------------------------------ the machine */

/* Opcode names, so that an unsupported opcode is reported by name. */
static const char *s_op_name(unsigned op)
{
    switch (op) {
    case '(': return "MARK";          case '.': return "STOP";
    case '0': return "POP";           case '1': return "POP_MARK";
    case '2': return "DUP";           case 'F': return "FLOAT";
    case 'I': return "INT";           case 'J': return "BININT";
    case 'K': return "BININT1";       case 'L': return "LONG";
    case 'M': return "BININT2";       case 'N': return "NONE";
    case 'P': return "PERSID";        case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";        case 'S': return "STRING";
    case 'T': return "BINSTRING";     case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";       case 'X': return "BINUNICODE";
    case 'a': return "APPEND";        case 'b': return "BUILD";
    case 'c': return "GLOBAL";        case 'd': return "DICT";
    case '}': return "EMPTY_DICT";    case 'e': return "APPENDS";
    case 'g': return "GET";           case 'h': return "BINGET";
    case 'i': return "INST";          case 'j': return "LONG_BINGET";
    case 'l': return "LIST";          case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";           case 'p': return "PUT";
    case 'q': return "BINPUT";        case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";       case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";   case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";      case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";       case 0x82: return "EXT1";
    case 0x83: return "EXT2";         case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";       case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";       case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";     case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";        case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES"; case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";  case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL"; case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";        case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";  case 0x98: return "READONLY_BUFFER";
    default: return NULL;
    }
}

/* Memo indices are chosen by the writer; cap them so a corrupt LONG_BINPUT
 * cannot request a huge table (torch numbers them densely from 0). */
#define S_MEMO_MAX (1u << 24)

static int s_memo_put(TbVm *vm, uint64_t idx, TbVal *v)
{
    if (idx >= S_MEMO_MAX)
        return s_vm_err(vm, "memo index %llu too large", (unsigned long long)idx);
    if (idx >= vm->capmemo) {
        size_t cap = vm->capmemo ? vm->capmemo : 256;
        while (cap <= idx)
            cap *= 2;
        vm->memo = dm_xrealloc(vm->memo, cap * sizeof *vm->memo);
        memset(vm->memo + vm->capmemo, 0, (cap - vm->capmemo) * sizeof *vm->memo);
        vm->capmemo = cap;
    }
    vm->memo[idx] = v;
    if (idx >= vm->nmemo_next)
        vm->nmemo_next = idx + 1;
    return 0;
}

static int s_memo_get(TbVm *vm, uint64_t idx)
{
    if (idx >= vm->capmemo || !vm->memo[idx])
        return s_vm_err(vm, "memo index %llu was never stored", (unsigned long long)idx);
    s_push(vm, vm->memo[idx]);
    return 0;
}

static TbVal *s_make_str(TbVm *vm, const unsigned char *p, size_t n)
{
    TbVal *v = s_new(vm, V_STR);
    v->u.s.p = (const char *)p;
    v->u.s.n = n;
    return v;
}

/* A little-endian two's complement integer of n bytes (LONG1/LONG4). */
static int s_long(TbVm *vm, const unsigned char *p, size_t n)
{
    if (n > 8)
        return s_vm_err(vm, "integer of %zu bytes does not fit 64 bits", n);
    uint64_t u = 0;
    for (size_t i = 0; i < n; i++)
        u |= (uint64_t)p[i] << (8 * i);
    if (n > 0 && n < 8 && (p[n - 1] & 0x80))
        u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    TbVal *v = s_new(vm, V_INT);
    v->u.i = (int64_t)u;
    s_push(vm, v);
    return 0;
}

/* Read a length-prefixed string/bytes opcode (lenbytes = 1, 4 or 8). */
static int s_sized_str(TbVm *vm, int lenbytes, int is_signed)
{
    const unsigned char *q = NULL;
    if (s_read(vm, (size_t)lenbytes, &q))
        return -1;
    uint64_t n = lenbytes == 1 ? q[0] : lenbytes == 4 ? s_le32(q) : s_le64(q);
    if (is_signed && (n & 0x80000000u))
        return s_vm_err(vm, "negative string length");
    if (n > vm->n - vm->pos)
        return s_vm_err(vm, "string of %llu bytes runs past the end of the pickle",
                        (unsigned long long)n);
    if (s_read(vm, (size_t)n, &q))
        return -1;
    s_push(vm, s_make_str(vm, q, (size_t)n));
    return 0;
}

/* Build a tuple from the top k values (TUPLE1/2/3). */
static int s_tuple_n(TbVm *vm, size_t k)
{
    size_t floor = vm->nmarks ? vm->marks[vm->nmarks - 1] : 0;
    if (vm->sp - floor < k)
        return s_vm_err(vm, "stack underflow");
    TbVal *t = s_new(vm, V_TUPLE);
    for (size_t i = vm->sp - k; i < vm->sp; i++)
        s_seq_push(t, vm->stack[i]);
    vm->sp -= k;
    s_push(vm, t);
    return 0;
}

/* Run the pickle to STOP; *result is the object it returns. */
static int s_run(TbVm *vm, TbVal **result)
{
    for (;;) {
        vm->op_pos = vm->pos;
        const unsigned char *q = NULL;
        if (vm->pos >= vm->n)
            return s_vm_err(vm, "pickle ends without STOP (truncated or corrupt)");
        unsigned op = vm->p[vm->pos++];
        TbVal *a = NULL, *b = NULL, *c = NULL, **items = NULL;
        size_t cnt = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if (s_read(vm, 1, &q))
                return -1;
            if (q[0] > 5)
                return s_vm_err(vm, "pickle protocol %u is not supported", q[0]);
            break;
        case 0x95: /* FRAME: a length hint only; opcodes simply continue */
            if (s_read(vm, 8, &q))
                return -1;
            break;
        case '.': /* STOP */
            if (s_pop(vm, result))
                return -1;
            return 0;
        case '(': /* MARK */
            S_GROW(vm->marks, vm->nmarks, vm->capmarks);
            vm->marks[vm->nmarks++] = vm->sp;
            break;
        case '0': /* POP */
            if (s_pop(vm, &a))
                return -1;
            break;
        case '1': /* POP_MARK */
            if (s_pop_mark(vm, &items, &cnt))
                return -1;
            break;
        case '2': /* DUP */
            if (s_top(vm, &a))
                return -1;
            s_push(vm, a);
            break;
        case 'N':
            s_push(vm, s_new(vm, V_NONE));
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            a = s_new(vm, V_BOOL);
            a->u.i = op == 0x88;
            s_push(vm, a);
            break;
        case 'J': /* BININT: signed 32-bit */
            if (s_read(vm, 4, &q))
                return -1;
            a = s_new(vm, V_INT);
            a->u.i = (int32_t)s_le32(q);
            s_push(vm, a);
            break;
        case 'K': /* BININT1 */
            if (s_read(vm, 1, &q))
                return -1;
            a = s_new(vm, V_INT);
            a->u.i = q[0];
            s_push(vm, a);
            break;
        case 'M': /* BININT2 */
            if (s_read(vm, 2, &q))
                return -1;
            a = s_new(vm, V_INT);
            a->u.i = s_le16(q);
            s_push(vm, a);
            break;
        case 0x8a: /* LONG1 */
            if (s_read(vm, 1, &q))
                return -1;
            cnt = q[0];
            if (s_read(vm, cnt, &q) || s_long(vm, q, cnt))
                return -1;
            break;
        case 0x8b: /* LONG4 */
            if (s_read(vm, 4, &q))
                return -1;
            cnt = s_le32(q);
            if (cnt > 8)
                return s_vm_err(vm, "integer of %zu bytes does not fit 64 bits", cnt);
            if (s_read(vm, cnt, &q) || s_long(vm, q, cnt))
                return -1;
            break;
        case 'G': { /* BINFLOAT: big-endian IEEE double */
            if (s_read(vm, 8, &q))
                return -1;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = u << 8 | q[i];
            a = s_new(vm, V_FLOAT);
            memcpy(&a->u.f, &u, 8);
            s_push(vm, a);
            break;
        }
        case 0x8c: /* SHORT_BINUNICODE */
        case 'U':  /* SHORT_BINSTRING */
        case 'C':  /* SHORT_BINBYTES */
            if (s_sized_str(vm, 1, 0))
                return -1;
            break;
        case 'X': /* BINUNICODE */
        case 'B': /* BINBYTES */
            if (s_sized_str(vm, 4, 0))
                return -1;
            break;
        case 'T': /* BINSTRING: signed length */
            if (s_sized_str(vm, 4, 1))
                return -1;
            break;
        case 0x8d: /* BINUNICODE8 */
        case 0x8e: /* BINBYTES8 */
            if (s_sized_str(vm, 8, 0))
                return -1;
            break;
        case ')': /* EMPTY_TUPLE */
            s_push(vm, s_new(vm, V_TUPLE));
            break;
        case 0x85: /* TUPLE1..3 */
        case 0x86:
        case 0x87:
            if (s_tuple_n(vm, op - 0x84))
                return -1;
            break;
        case 't': /* TUPLE */
        case 'l': /* LIST */
            if (s_pop_mark(vm, &items, &cnt))
                return -1;
            a = s_new(vm, op == 't' ? V_TUPLE : V_LIST);
            for (size_t i = 0; i < cnt; i++)
                s_seq_push(a, items[i]);
            s_push(vm, a);
            break;
        case ']': /* EMPTY_LIST */
            s_push(vm, s_new(vm, V_LIST));
            break;
        case 'a': /* APPEND */
            if (s_pop(vm, &b) || s_top(vm, &a))
                return -1;
            if (a->kind != V_LIST)
                return s_vm_err(vm, "APPEND to a %s, not a list", s_kind_name[a->kind]);
            s_seq_push(a, b);
            break;
        case 'e': /* APPENDS */
            if (s_pop_mark(vm, &items, &cnt) || s_top(vm, &a))
                return -1;
            if (a->kind != V_LIST)
                return s_vm_err(vm, "APPENDS to a %s, not a list", s_kind_name[a->kind]);
            for (size_t i = 0; i < cnt; i++)
                s_seq_push(a, items[i]);
            break;
        case '}': /* EMPTY_DICT */
            s_push(vm, s_new(vm, V_DICT));
            break;
        case 'd': /* DICT */
            if (s_pop_mark(vm, &items, &cnt))
                return -1;
            if (cnt % 2)
                return s_vm_err(vm, "DICT with an odd number of items");
            a = s_new(vm, V_DICT);
            for (size_t i = 0; i < cnt; i += 2)
                if (s_dict_set(vm, a, items[i], items[i + 1]))
                    return -1;
            s_push(vm, a);
            break;
        case 's': /* SETITEM */
            if (s_pop(vm, &c) || s_pop(vm, &b) || s_top(vm, &a) || s_dict_set(vm, a, b, c))
                return -1;
            break;
        case 'u': /* SETITEMS */
            if (s_pop_mark(vm, &items, &cnt) || s_top(vm, &a))
                return -1;
            if (cnt % 2)
                return s_vm_err(vm, "SETITEMS with an odd number of items");
            for (size_t i = 0; i < cnt; i += 2)
                if (s_dict_set(vm, a, items[i], items[i + 1]))
                    return -1;
            break;
        case 'c': { /* GLOBAL "module\nname\n" */
            const unsigned char *s = vm->p + vm->pos, *e = vm->p + vm->n;
            const unsigned char *nl1 = memchr(s, '\n', (size_t)(e - s));
            const unsigned char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(e - nl1 - 1)) : NULL;
            if (!nl2)
                return s_vm_err(vm, "GLOBAL without two newline-terminated names");
            s_push(vm, s_make_global(vm, (const char *)s, (size_t)(nl1 - s), (const char *)nl1 + 1,
                                     (size_t)(nl2 - nl1 - 1)));
            vm->pos = (size_t)(nl2 + 1 - vm->p);
            break;
        }
        case 0x93: /* STACK_GLOBAL: module, name on the stack */
            if (s_pop(vm, &b) || s_pop(vm, &a))
                return -1;
            if (a->kind != V_STR || b->kind != V_STR)
                return s_vm_err(vm, "STACK_GLOBAL needs two strings");
            s_push(vm, s_make_global(vm, a->u.s.p, a->u.s.n, b->u.s.p, b->u.s.n));
            break;
        case 'R': /* REDUCE: callable(*args) */
            if (s_pop(vm, &b) || s_pop(vm, &a) || s_call(vm, a, b, 0, &c))
                return -1;
            s_push(vm, c);
            break;
        case 0x81: /* NEWOBJ: cls.__new__(cls, *args); only OrderedDict */
            if (s_pop(vm, &b) || s_pop(vm, &a))
                return -1;
            if (a->kind != V_GLOBAL || a->u.glob.g != G_ODICT)
                return s_vm_err(vm, "NEWOBJ of an unsupported class");
            s_push(vm, s_new(vm, V_DICT));
            break;
        case 'b': /* BUILD: set state.  The state torch writes here is
                   * metadata (a state dict's _metadata versions, tensor
                   * attributes) that does not change any bytes: drop it. */
            if (s_pop(vm, &b) || s_top(vm, &a))
                return -1;
            break;
        case 'Q': /* BINPERSID */
            if (s_pop(vm, &a) || s_persistent_load(vm, a, &b))
                return -1;
            s_push(vm, b);
            break;
        case 'q': /* BINPUT */
            if (s_read(vm, 1, &q) || s_top(vm, &a) || s_memo_put(vm, q[0], a))
                return -1;
            break;
        case 'r': /* LONG_BINPUT */
            if (s_read(vm, 4, &q) || s_top(vm, &a) || s_memo_put(vm, s_le32(q), a))
                return -1;
            break;
        case 0x94: /* MEMOIZE */
            if (s_top(vm, &a) || s_memo_put(vm, vm->nmemo_next, a))
                return -1;
            break;
        case 'h': /* BINGET */
            if (s_read(vm, 1, &q) || s_memo_get(vm, q[0]))
                return -1;
            break;
        case 'j': /* LONG_BINGET */
            if (s_read(vm, 4, &q) || s_memo_get(vm, s_le32(q)))
                return -1;
            break;
        default: {
            const char *name = s_op_name(op);
            if (name)
                return s_vm_err(vm, "unsupported pickle opcode %s (0x%02x)", name, op);
            return s_vm_err(vm, "invalid pickle opcode 0x%02x (corrupt data.pkl?)", op);
        }
        }
    }
}

/* --------------------------------------------------------- assembling */

typedef struct TbLoad {
    const char *path;
    TbZip zip;
    const char *prefix; /* "archive/" part of "archive/data.pkl" */
    size_t prefixn;
} TbLoad;

/* Find <prefix>/data.pkl: torch names the top directory after the file
 * ("archive", "pytorch_model"), so accept any single directory level. */
static const TbEntry *s_find_pickle(TbLoad *L)
{
    for (size_t i = 0; i < L->zip.n; i++) {
        const TbEntry *e = &L->zip.e[i];
        if (e->name_len < 8 || memcmp(e->name + e->name_len - 8, "data.pkl", 8) != 0)
            continue;
        size_t pl = e->name_len - 8;
        const char *slash = pl ? memchr(e->name, '/', pl) : NULL;
        if (pl == 0 || (slash && (size_t)(slash - e->name) == pl - 1)) {
            L->prefix = e->name;
            L->prefixn = pl;
            return e;
        }
    }
    return NULL;
}

/* A checkpoint written on a big-endian machine stores big-endian storages;
 * torch can byte-swap them on load, we do not. */
static int s_check_byteorder(TbLoad *L, DmErr *err)
{
    char name[512];
    if (L->prefixn + 9 >= sizeof name)
        return 0;
    memcpy(name, L->prefix, L->prefixn);
    memcpy(name + L->prefixn, "byteorder", 9);
    const TbEntry *e = s_zip_find(&L->zip, name, L->prefixn + 9);
    if (!e)
        return 0; /* older torch: always the writer's order, in practice little */
    const unsigned char *d;
    if (s_entry_data(&L->zip, e, "", &d, err))
        return -1;
    size_t n = (size_t)e->usize;
    while (n && (d[n - 1] == '\n' || d[n - 1] == '\r' || d[n - 1] == ' '))
        n--;
    if (n == 6 && memcmp(d, "little", 6) == 0)
        return 0;
    if (n == 3 && memcmp(d, "big", 3) == 0)
        return dm_err(err, "%s: big-endian checkpoint (%.*s says \"big\") is not supported; "
                           "re-save it on a little-endian machine", L->path, (int)e->name_len,
                      e->name);
    return dm_err(err, "%s: %.*s holds \"%.*s\", expected \"little\" or \"big\"", L->path,
                  (int)e->name_len, e->name, (int)(n > 32 ? 32 : n), (const char *)d);
}

/* Row-major strides for a packed tensor; dimensions of size 1 may carry any
 * stride (torch leaves them arbitrary). */
static int s_is_packed(const TbVal *t)
{
    int64_t expect = 1;
    for (int d = t->u.ten.ndim - 1; d >= 0; d--) {
        if (t->u.ten.size[d] != 1 && t->u.ten.stride[d] != expect)
            return 0;
        expect *= t->u.ten.size[d];
    }
    return 1;
}

/* Check a tensor against its storage entry and decide where its bytes come
 * from; name is the state-dict key, for messages. */
static int s_resolve(TbLoad *L, TbVal *t, const char *name, DmErr *err)
{
    if (t->u.ten.resolved)
        return 0; /* the same tensor object under a second name (tied weights) */
    TbVal *st = t->u.ten.storage;
    size_t es = dm_dtype_size(t->u.ten.dt);
    uint64_t numel = 1, last = 0, nbytes;
    for (int d = 0; d < t->u.ten.ndim; d++) {
        uint64_t sz = (uint64_t)t->u.ten.size[d], span;
        if (__builtin_mul_overflow(numel, sz, &numel))
            return dm_err(err, "%s: tensor %s: shape overflows", L->path, name);
        if (sz && (__builtin_mul_overflow(sz - 1, (uint64_t)t->u.ten.stride[d], &span) ||
                   __builtin_add_overflow(last, span, &last)))
            return dm_err(err, "%s: tensor %s: strides overflow", L->path, name);
    }
    if (__builtin_mul_overflow(numel, (uint64_t)es, &nbytes) || nbytes > SIZE_MAX / 2)
        return dm_err(err, "%s: tensor %s: shape overflows", L->path, name);
    /* Storage bytes the tensor touches: (offset + last index + 1) elements. */
    uint64_t need = 0, have_decl;
    if (numel &&
        (__builtin_add_overflow(last, (uint64_t)t->u.ten.offset + 1, &need) ||
         __builtin_mul_overflow(need, (uint64_t)es, &need)))
        return dm_err(err, "%s: tensor %s: storage offset overflows", L->path, name);
    size_t ses = st->u.st.typed ? dm_dtype_size(st->u.st.dt) : 1;
    if (__builtin_mul_overflow(st->u.st.numel, (uint64_t)ses, &have_decl))
        return dm_err(err, "%s: tensor %s: storage size overflows", L->path, name);

    char ename[512];
    int en = snprintf(ename, sizeof ename, "%.*sdata/%.*s", (int)L->prefixn, L->prefix,
                      (int)st->u.st.keyn, st->u.st.key);
    const TbEntry *e = en > 0 && (size_t)en < sizeof ename ? s_zip_find(&L->zip, ename, (size_t)en)
                                                          : NULL;
    if (!e)
        return dm_err(err, "%s: truncated or corrupt: tensor %s: storage entry %s is missing",
                      L->path, name, ename);
    const unsigned char *data;
    char ctx[300];
    snprintf(ctx, sizeof ctx, "tensor %s: ", name);
    if (s_entry_data(&L->zip, e, ctx, &data, err))
        return -1;
    if (need > e->usize)
        return dm_err(err, "%s: truncated: tensor %s needs %llu bytes of storage %s, the entry "
                           "holds %llu", L->path, name, (unsigned long long)need, ename,
                      (unsigned long long)e->usize);
    if (need > have_decl)
        return dm_err(err, "%s: tensor %s extends past its storage (%llu of %llu bytes)", L->path,
                      name, (unsigned long long)need, (unsigned long long)have_decl);
    t->u.ten.src = data + (size_t)t->u.ten.offset * es;
    t->u.ten.nbytes = (size_t)nbytes;
    /* Views are packed into an owned copy.  So is data whose address is not
     * a multiple of the element size (possible only in a zip not written by
     * torch): callers read tensors as float/int64 arrays. */
    if (numel == 0)
        t->u.ten.data = data;
    else if (s_is_packed(t) && (uintptr_t)t->u.ten.src % es == 0)
        t->u.ten.data = t->u.ten.src;
    else
        t->u.ten.owned = 1;
    t->u.ten.resolved = 1;
    return 0;
}

/* Copy a strided view into dst, packed row-major.  The innermost dimension
 * is copied as one run when its stride is 1. */
static void s_pack(const TbVal *t, unsigned char *dst)
{
    int nd = t->u.ten.ndim;
    size_t es = dm_dtype_size(t->u.ten.dt);
    if (nd == 0) {
        memcpy(dst, t->u.ten.src, es);
        return;
    }
    const int64_t *sz = t->u.ten.size, *sd = t->u.ten.stride;
    int64_t idx[DM_MAX_DIMS] = {0};
    int64_t inner = sz[nd - 1], istride = sd[nd - 1];
    for (;;) {
        int64_t off = 0;
        for (int d = 0; d < nd - 1; d++)
            off += idx[d] * sd[d];
        const unsigned char *s = t->u.ten.src + (size_t)off * es;
        if (istride == 1) {
            memcpy(dst, s, (size_t)inner * es);
            dst += (size_t)inner * es;
        } else {
            for (int64_t i = 0; i < inner; i++, dst += es)
                memcpy(dst, s + (size_t)(i * istride) * es, es);
        }
        int d = nd - 2;
        while (d >= 0 && ++idx[d] == sz[d])
            idx[d--] = 0;
        if (d < 0)
            return;
    }
}

static int s_fail(TensorFile *tf, TensorFile **out)
{
    tensorfile_close(&tf);
    *out = NULL;
    return -1;
}

static int s_map_file(TensorFile *tf, DmErr *err)
{
    int fd = open(tf->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dm_err_errno(err, "%s: cannot open", tf->path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int bad = errno;
        close(fd);
        errno = bad;
        return dm_err_errno(err, "%s: cannot stat", tf->path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return dm_err(err, "%s: not a regular file", tf->path);
    }
    if (st.st_size == 0) {
        close(fd);
        return dm_err(err, "%s: file is empty", tf->path);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return dm_err_errno(err, "%s: cannot mmap", tf->path);
    tf->map = m;
    tf->map_len = (size_t)st.st_size;
    return 0;
}

int torchbin_open(const char *path, TensorFile **out, DmErr *err)
{
    *out = NULL;
    TensorFile *tf = dm_xcalloc(1, sizeof *tf);
    tf->path = dm_xstrdup(path);
    if (s_map_file(tf, err))
        return s_fail(tf, out);

    TbLoad L = {.path = path, .zip = {.path = path, .base = tf->map, .len = tf->map_len}};
    TbVm vm = {.path = path, .err = err};
    int rc = -1;
    char entry_name[512];
    if (s_zip_read(&L.zip, err))
        goto done;
    const TbEntry *pk = s_find_pickle(&L);
    if (!pk) {
        dm_err(err, "%s: zip archive has no data.pkl entry (not a torch.save checkpoint)", path);
        goto done;
    }
    snprintf(entry_name, sizeof entry_name, "%.*s", (int)pk->name_len, pk->name);
    if (s_check_byteorder(&L, err) || s_entry_data(&L.zip, pk, "", &vm.p, err))
        goto done;
    vm.n = (size_t)pk->usize;
    vm.entry = entry_name;
    if (s_crc32(vm.p, vm.n) != pk->crc) {
        dm_err(err, "%s: %s is corrupt (CRC mismatch)", path, entry_name);
        goto done;
    }

    TbVal *root;
    if (s_run(&vm, &root))
        goto done;
    if (root->kind != V_DICT) {
        dm_err(err, "%s: %s holds a %s, not a dict of tensors", path, entry_name,
               s_kind_name[root->kind]);
        goto done;
    }

    /* Pass 1: names, checks, and the owned block's layout. */
    size_t npairs = root->u.seq.n / 2, own_total = 0;
    tf->t = dm_xcalloc(npairs ? npairs : 1, sizeof *tf->t);
    for (size_t i = 0; i < npairs; i++) {
        TbVal *k = root->u.seq.v[2 * i], *v = root->u.seq.v[2 * i + 1];
        if (v->kind != V_TENSOR)
            continue; /* e.g. an int buffer counter: not a tensor, not ours */
        if (k->kind != V_STR || memchr(k->u.s.p, 0, k->u.s.n)) {
            dm_err(err, "%s: %s: a tensor's key is a %s, not a name", path, entry_name,
                   s_kind_name[k->kind]);
            goto done;
        }
        DmTensor *t = &tf->t[tf->n];
        t->name = dm_xmalloc(k->u.s.n + 1);
        memcpy(t->name, k->u.s.p, k->u.s.n);
        t->name[k->u.s.n] = 0;
        tf->n++; /* counted now so that close frees the name on error */
        int was_resolved = v->u.ten.resolved;
        if (s_resolve(&L, v, t->name, err))
            goto done;
        if (!was_resolved && v->u.ten.owned) {
            v->u.ten.own_off = own_total;
            own_total += (v->u.ten.nbytes + 63) & ~(size_t)63; /* keep each copy 64-aligned */
        }
        t->dtype = v->u.ten.dt;
        t->ndim = v->u.ten.ndim;
        memcpy(t->shape, v->u.ten.size, sizeof t->shape);
        t->nbytes = v->u.ten.nbytes;
    }
    if (tf->n == 0 && npairs > 0) {
        TbVal *v = root->u.seq.v[1];
        dm_err(err, "%s: %s: dict holds no tensors (first value is a %s; a nested checkpoint?)",
               path, entry_name, s_kind_name[v->kind]);
        goto done;
    }

    /* Pass 2: one owned block for every view, then the data pointers. */
    if (own_total) {
        if (posix_memalign(&tf->priv, 64, own_total) != 0) {
            tf->priv = NULL;
            dm_err(err, "%s: out of memory packing %zu bytes of strided tensors", path, own_total);
            goto done;
        }
    }
    for (size_t i = 0, j = 0; i < npairs; i++) {
        TbVal *v = root->u.seq.v[2 * i + 1];
        if (v->kind != V_TENSOR)
            continue;
        if (v->u.ten.owned && !v->u.ten.data) {
            unsigned char *dst = (unsigned char *)tf->priv + v->u.ten.own_off;
            s_pack(v, dst);
            v->u.ten.data = dst;
        }
        tf->t[j++].data = v->u.ten.data;
    }
    rc = 0;
done:
    s_vm_free(&vm);
    free(L.zip.e);
    if (rc)
        return s_fail(tf, out);
    *out = tf;
    return 0;
}
