/* tok_trie.c - the byte trie behind vocabulary and added-token lookups, and
 * the reader of SentencePiece's precompiled charsmap (a darts-clone double
 * array followed by a pool of replacement strings). */
#include "worker/text/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- hash-edge trie ---- */

static size_t s_hash(uint64_t k, size_t mask)
{
    k *= 0x9E3779B97F4A7C15ull;
    return (size_t)(k >> 29) & mask;
}

void tok_trie_init(TokTrie *tr)
{
    memset(tr, 0, sizeof *tr);
    tr->capnodes = 64;
    tr->value = dm_xmalloc(sizeof *tr->value * (size_t)tr->capnodes);
    tr->value[0] = -1;
    tr->nnodes = 1;
    tr->ecap = 64;
    tr->ekey = dm_xcalloc(tr->ecap, sizeof *tr->ekey);
    tr->echild = dm_xmalloc(sizeof *tr->echild * tr->ecap);
}

void tok_trie_free(TokTrie *tr)
{
    free(tr->value);
    free(tr->ekey);
    free(tr->echild);
    memset(tr, 0, sizeof *tr);
}

static void s_edge_put(uint64_t *keys, int32_t *child, size_t cap, uint64_t k, int32_t c)
{
    size_t i = s_hash(k, cap - 1);
    while (keys[i])
        i = (i + 1) & (cap - 1);
    keys[i] = k;
    child[i] = c;
}

static void s_grow_edges(TokTrie *tr)
{
    size_t ncap = tr->ecap * 2;
    uint64_t *nk = dm_xcalloc(ncap, sizeof *nk);
    int32_t *nc = dm_xmalloc(sizeof *nc * ncap);
    for (size_t i = 0; i < tr->ecap; i++)
        if (tr->ekey[i])
            s_edge_put(nk, nc, ncap, tr->ekey[i], tr->echild[i]);
    free(tr->ekey);
    free(tr->echild);
    tr->ekey = nk;
    tr->echild = nc;
    tr->ecap = ncap;
}

int32_t tok_trie_child(const TokTrie *tr, int32_t node, unsigned char b)
{
    uint64_t k = (((uint64_t)node << 8) | b) + 1;
    size_t mask = tr->ecap - 1;
    for (size_t i = s_hash(k, mask);; i = (i + 1) & mask) {
        if (tr->ekey[i] == k)
            return tr->echild[i];
        if (!tr->ekey[i])
            return -1;
    }
}

void tok_trie_insert(TokTrie *tr, const char *key, size_t len, int32_t value)
{
    int32_t node = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)key[i];
        int32_t c = tok_trie_child(tr, node, b);
        if (c < 0) {
            if (tr->nnodes == tr->capnodes) {
                tr->capnodes *= 2;
                tr->value = dm_xrealloc(tr->value, sizeof *tr->value * (size_t)tr->capnodes);
            }
            c = tr->nnodes++;
            tr->value[c] = -1;
            /* keep the load factor at most 1/2 so probes stay short */
            if (2 * (tr->nedges + 1) > tr->ecap)
                s_grow_edges(tr);
            s_edge_put(tr->ekey, tr->echild, tr->ecap, (((uint64_t)node << 8) | b) + 1, c);
            tr->nedges++;
        }
        node = c;
    }
    tr->value[node] = value;
}

void tok_trie_insert_first(TokTrie *tr, const char *key, size_t len, int32_t value)
{
    if (tok_trie_get(tr, key, len) < 0)
        tok_trie_insert(tr, key, len, value);
}

int32_t tok_trie_get(const TokTrie *tr, const char *key, size_t len)
{
    int32_t node = 0;
    for (size_t i = 0; i < len && node >= 0; i++)
        node = tok_trie_child(tr, node, (unsigned char)key[i]);
    return node >= 0 ? tr->value[node] : -1;
}

/* ---- precompiled charsmap ---- */

static int s_b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Standard base64 with optional padding; whitespace is not expected in
 * tokenizer.json, so any other byte is an error. */
static int s_b64_decode(const char *s, size_t n, uint8_t **out, size_t *out_len)
{
    while (n && s[n - 1] == '=')
        n--;
    if (n % 4 == 1)
        return -1;
    uint8_t *o = dm_xmalloc(n / 4 * 3 + 3);
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = s_b64_val((unsigned char)s[i]);
        if (v < 0) {
            free(o);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (uint8_t)(acc >> bits);
        }
    }
    *out = o;
    *out_len = k;
    return 0;
}

static int s_utf8_valid(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        int32_t cp;
        int k = tok_utf8_next((const uint8_t *)s + i, n - i, &cp);
        if (k < 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

static uint32_t s_has_leaf(uint32_t u);
static uint32_t s_offset(uint32_t u);
static uint32_t s_value(uint32_t u);

/* Every replacement the trie can name must start on a character of the
 * pool: a damaged unit pointing into the middle of one would put broken
 * UTF-8 into the normalized text (tokenizers itself would panic slicing
 * its string there).  Non-leaf units (bit 31 clear) that have a leaf name
 * it at i ^ offset. */
static int s_check_leaves(const TokCharsmap *cm, const char *where, DmErr *err)
{
    for (size_t i = 0; i < cm->nunits; i++) {
        uint32_t u = cm->units[i];
        if ((u >> 31) || !s_has_leaf(u))
            continue;
        size_t leaf = i ^ s_offset(u);
        if (leaf >= cm->nunits)
            return dm_err(err, "%s: precompiled_charsmap is damaged: unit %zu names a leaf outside the "
                               "trie's %zu units", where, i, cm->nunits);
        size_t off = s_value(cm->units[leaf]);
        if (off > cm->pool_len)
            return dm_err(err, "%s: precompiled_charsmap is damaged: unit %zu names replacement byte %zu "
                               "of a %zu-byte pool", where, leaf, off, cm->pool_len);
        if (off < cm->pool_len && ((unsigned char)cm->pool[off] & 0xC0) == 0x80)
            return dm_err(err, "%s: precompiled_charsmap is damaged: unit %zu names a replacement that "
                               "starts inside a character (pool byte %zu)", where, leaf, off);
    }
    return 0;
}

int tok_charsmap_load(TokCharsmap *cm, const char *b64, size_t b64len, const char *where, DmErr *err)
{
    memset(cm, 0, sizeof *cm);
    uint8_t *blob;
    size_t n;
    if (s_b64_decode(b64, b64len, &blob, &n) < 0)
        return dm_err(err, "%s: precompiled_charsmap is not valid base64", where);
    if (n < 4) {
        free(blob);
        return dm_err(err, "%s: precompiled_charsmap is %zu bytes, too short for its header", where, n);
    }
    uint32_t tsize = (uint32_t)blob[0] | (uint32_t)blob[1] << 8 | (uint32_t)blob[2] << 16 |
                     (uint32_t)blob[3] << 24;
    if (tsize % 4 || tsize < 4 || (size_t)tsize > n - 4) {
        free(blob);
        return dm_err(err, "%s: precompiled_charsmap trie size %u does not fit its %zu bytes", where,
                      tsize, n);
    }
    cm->nunits = tsize / 4;
    cm->units = dm_xmalloc(sizeof *cm->units * cm->nunits);
    for (size_t i = 0; i < cm->nunits; i++) {
        const uint8_t *p = blob + 4 + 4 * i;
        cm->units[i] = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                       (uint32_t)p[3] << 24;
    }
    cm->pool_len = n - 4 - tsize;
    cm->pool = dm_xmalloc(cm->pool_len + 1);
    memcpy(cm->pool, blob + 4 + tsize, cm->pool_len);
    cm->pool[cm->pool_len] = '\0';
    free(blob);
    /* tokenizers refuses a pool that is not UTF-8 (it becomes a String) */
    if (!s_utf8_valid(cm->pool, cm->pool_len)) {
        tok_charsmap_free(cm);
        return dm_err(err, "%s: precompiled_charsmap replacement strings are not valid UTF-8", where);
    }
    if (s_check_leaves(cm, where, err) < 0) {
        tok_charsmap_free(cm);
        return -1;
    }
    return 0;
}

void tok_charsmap_free(TokCharsmap *cm)
{
    free(cm->units);
    free(cm->pool);
    memset(cm, 0, sizeof *cm);
}

/* darts-clone unit fields */
static uint32_t s_label(uint32_t u) { return u & 0x800000FFu; }
static uint32_t s_has_leaf(uint32_t u) { return (u >> 8) & 1u; }
static uint32_t s_offset(uint32_t u) { return (u >> 10) << ((u & 0x200u) >> 6); }
static uint32_t s_value(uint32_t u) { return u & 0x7FFFFFFFu; }

int tok_charsmap_lookup(const TokCharsmap *cm, const uint8_t *s, size_t len, const char **rep,
                        size_t *rep_len)
{
    if (!cm->nunits)
        return 0;
    size_t pos = s_offset(cm->units[0]);
    for (size_t i = 0; i < len; i++) {
        /* the key is a C string to darts: a NUL ends it */
        if (s[i] == 0)
            return 0;
        pos ^= s[i];
        if (pos >= cm->nunits)
            return 0;
        uint32_t u = cm->units[pos];
        if (s_label(u) != s[i])
            return 0;
        pos ^= s_offset(u);
        if (s_has_leaf(u)) {
            if (pos >= cm->nunits)
                return 0;
            /* the first (shortest) match is the one tokenizers uses */
            size_t off = s_value(cm->units[pos]);
            if (off > cm->pool_len)
                off = cm->pool_len;
            const char *p = cm->pool + off;
            const char *e = memchr(p, 0, cm->pool_len - off);
            *rep = p;
            *rep_len = e ? (size_t)(e - p) : cm->pool_len - off;
            return 1;
        }
    }
    return 0;
}
