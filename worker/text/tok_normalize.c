/* tok_normalize.c - the normalizer steps of tokenizer.json, plus the UTF-8
 * and buffer helpers the other tok_*.c files share.
 *
 * Besides the text, each step carries one flag per output byte: whether
 * `tokenizers` would align that byte to the first byte of its input (its
 * NormalizedString alignments, start only).  Metaspace's prepend_scheme
 * "first" depends on it: a word gets U+2581 only if it maps back to offset
 * 0 of the text, and deletions, expansions and stripping move that in ways
 * that follow the library's bookkeeping rather than common sense. */
#include "worker/text/tok_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- shared helpers ---- */

void tok_buf_put(TokBuf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *p = realloc(b->p, nc);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = nc;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void tok_buf_putc(TokBuf *b, char c) { tok_buf_put(b, &c, 1); }

static void s_fill(TokBuf *b, uint8_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tok_buf_putc(b, (char)v);
}

int tok_utf8_next(const uint8_t *s, size_t len, int32_t *cp)
{
    if (!len)
        return -1;
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int n;
    int32_t v, min;
    if ((c & 0xE0) == 0xC0) {
        n = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if ((size_t)n > len)
        return -1;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return -1;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return -1;
    *cp = v;
    return n;
}

int tok_utf8_step(const uint8_t *s, size_t len, int32_t *cp)
{
    int m = tok_utf8_next(s, len, cp);
    if (m > 0)
        return m;
    *cp = 0xFFFD;
    return len ? 1 : 0;
}

int32_t tok_prev_cp(const char *s, size_t end, size_t *start)
{
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    int32_t cp = 0;
    tok_utf8_next((const uint8_t *)s + i, end - i, &cp);
    *start = i;
    return cp;
}

/* Rust's char::is_whitespace (the Unicode White_Space property). */
int tok_is_white_space(int32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

int tok_utf8_check(const char *s, size_t len, DmErr *err)
{
    for (size_t i = 0; i < len;) {
        int32_t cp;
        int m = tok_utf8_next((const uint8_t *)s + i, len - i, &cp);
        if (m < 0)
            return dm_err(err, "tokenizer: text is not valid UTF-8 at byte %zu", i);
        i += (size_t)m;
    }
    return 0;
}

static size_t s_count_cps(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static size_t s_cp_len(const char *s, size_t n)
{
    int32_t cp;
    int m = tok_utf8_next((const uint8_t *)s, n, &cp);
    return m > 0 ? (size_t)m : 1;
}

/* ---- Precompiled ---- */

/* tokenizers' NormalizedString::transform, flags only: each emitted
 * character either takes the flag of the next unconsumed input character
 * (change <= 0, consuming it and -change more) or, as an insertion
 * (change > 0), that of the byte before the consumption point. */
typedef struct Xform {
    const char *in;
    const uint8_t *fin;
    size_t len, off;
    TokBuf *out, *fout;
} Xform;

static void s_emit(Xform *x, const char *c, size_t n, long change)
{
    uint8_t f = 0;
    if (change > 0) {
        if (x->fin)
            f = x->off < 1 ? 1 : x->fin[x->off - 1];
    } else {
        if (x->fin && x->off < x->len)
            f = x->fin[x->off];
        for (long k = 0; k <= -change && x->off < x->len; k++)
            x->off += s_cp_len(x->in + x->off, x->len - x->off);
    }
    tok_buf_put(x->out, c, n);
    if (x->fout)
        s_fill(x->fout, f, n);
}

/* A charsmap replacement of old_count characters: the first new character
 * replaces all of them, any further ones are insertions.  (This is what
 * tokenizers 0.23 does as far as offsets show: an expansion keeps the
 * alignment of the character it replaces; checked by fuzzing.) */
static void s_emit_rep(Xform *x, const char *rep, size_t rl, size_t old_count)
{
    size_t i = 0, k = 0;
    while (i < rl) {
        size_t m = s_cp_len(rep + i, rl - i);
        s_emit(x, rep + i, m, k == 0 ? 1 - (long)old_count : 1);
        i += m;
        k++;
    }
}

/* tokenizers' Precompiled: per extended grapheme cluster shorter than 6
 * bytes, the shortest charsmap key that prefixes the cluster replaces the
 * whole cluster; otherwise each code point is looked up on its own. */
static void s_norm_precompiled(const TokCharsmap *cm, Xform *x)
{
    const uint8_t *u = (const uint8_t *)x->in;
    size_t len = x->len;
    utf8proc_int32_t state = 0;
    size_t i = 0;
    int32_t cp;
    int k = len ? tok_utf8_step(u, len, &cp) : 0;
    while (i < len) {
        size_t ce = i + (size_t)k;
        int32_t prev = cp;
        while (ce < len) {
            k = tok_utf8_step(u + ce, len - ce, &cp);
            if (utf8proc_grapheme_break_stateful(prev, cp, &state))
                break;
            prev = cp;
            ce += (size_t)k;
        }
        const char *rep;
        size_t rl;
        if (ce - i < 6 && tok_charsmap_lookup(cm, u + i, ce - i, &rep, &rl)) {
            s_emit_rep(x, rep, rl, s_count_cps(x->in + i, ce - i));
        } else {
            for (size_t j = i; j < ce;) {
                size_t m = s_cp_len(x->in + j, ce - j);
                if (tok_charsmap_lookup(cm, u + j, m, &rep, &rl))
                    s_emit_rep(x, rep, rl, 1);
                else
                    s_emit(x, x->in + j, m, 0);
                j += m;
            }
        }
        i = ce;
    }
}

/* ---- Replace ---- */

/* Length in bytes of the run of the regex atom at s[i..], at most qmax
 * atoms (qmax -1 = unbounded); *count gets the number of atoms. */
static size_t s_atom_run(const TokNormStep *st, const char *s, size_t len, size_t i, int *count)
{
    size_t j = i;
    int c = 0;
    while (j < len && (st->qmax < 0 || c < st->qmax)) {
        int32_t cp;
        int m = tok_utf8_step((const uint8_t *)s + j, len - j, &cp);
        if (st->atom_ws ? !tok_is_white_space(cp) : cp != st->atom_cp)
            break;
        j += (size_t)m;
        c++;
    }
    *count = c;
    return j - i;
}

/* Non-overlapping leftmost matches; the content is recorded as inserted
 * after the match, so it takes the flag of the match's last byte. */
static void s_norm_replace(const TokNormStep *st, Xform *x)
{
    const char *s = x->in;
    size_t len = x->len, i = 0;
    while (i < len) {
        size_t run = 0;
        if (st->is_regex) {
            int c;
            run = s_atom_run(st, s, len, i, &c);
            if (c < st->qmin)
                run = 0;
        } else if (st->pat_len && len - i >= st->pat_len && !memcmp(s + i, st->pat, st->pat_len)) {
            run = st->pat_len;
        }
        if (run) {
            tok_buf_put(x->out, st->content, st->content_len);
            if (x->fout)
                s_fill(x->fout, x->fin[i + run - 1], st->content_len);
            i += run;
            continue;
        }
        /* copy one whole code point so matching restarts on a boundary */
        size_t m = s_cp_len(s + i, len - i);
        tok_buf_put(x->out, s + i, m);
        if (x->fout)
            tok_buf_put(x->fout, x->fin + i, m);
        i += m;
    }
}

/* ---- the others ---- */

static void s_norm_strip(const TokNormStep *st, Xform *x)
{
    const char *s = x->in;
    size_t a = 0, b = x->len;
    while (st->strip_left && a < b) {
        int32_t cp;
        int m = tok_utf8_step((const uint8_t *)s + a, b - a, &cp);
        if (!tok_is_white_space(cp))
            break;
        a += (size_t)m;
    }
    while (st->strip_right && b > a) {
        size_t st0;
        int32_t cp = tok_prev_cp(s, b, &st0);
        if (!tok_is_white_space(cp))
            break;
        b = st0;
    }
    tok_buf_put(x->out, s + a, b - a);
    if (x->fout)
        tok_buf_put(x->fout, x->fin + a, b - a);
}

static void s_norm_prepend(const TokNormStep *st, Xform *x)
{
    if (!x->len)
        return;
    tok_buf_put(x->out, st->content, st->content_len);
    tok_buf_put(x->out, x->in, x->len);
    if (x->fout) {
        /* all of it is recorded against the old first character */
        size_t m = s_cp_len(x->in, x->len);
        s_fill(x->fout, x->fin[0], st->content_len + m);
        tok_buf_put(x->fout, x->fin + m, x->len - m);
    }
}

static int s_utf8proc(int kind, const char *s, size_t len, TokBuf *out)
{
    utf8proc_option_t opt = UTF8PROC_STABLE;
    if (kind == TOK_NORM_NFC || kind == TOK_NORM_NFKC)
        opt |= UTF8PROC_COMPOSE;
    else
        opt |= UTF8PROC_DECOMPOSE;
    if (kind == TOK_NORM_NFKC || kind == TOK_NORM_NFKD)
        opt |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst, opt);
    if (n < 0)
        return -1;
    tok_buf_put(out, dst, (size_t)n);
    free(dst);
    return 0;
}

/* Unicode normalization of the whole text.  Flags are approximated per
 * run of a starter and its combining marks (each run's output takes the
 * flag of its first input byte), which is what tokenizers' alignment-
 * tracking normalizer gives except where composition joins two starters. */
static int s_norm_unicode(int kind, Xform *x)
{
    size_t start = x->out->len;
    if (s_utf8proc(kind, x->in, x->len, x->out) < 0)
        return -1;
    if (!x->fout)
        return 0;
    size_t want = x->out->len - start, got = 0;
    TokBuf piece = {0};
    const uint8_t *u = (const uint8_t *)x->in;
    size_t i = 0;
    while (i < x->len) {
        size_t ce = i + s_cp_len(x->in + i, x->len - i);
        while (ce < x->len) {
            int32_t cp;
            int k = tok_utf8_step(u + ce, x->len - ce, &cp);
            if (utf8proc_get_property(cp)->combining_class == 0)
                break;
            ce += (size_t)k;
        }
        piece.len = 0;
        if (s_utf8proc(kind, x->in + i, ce - i, &piece) < 0)
            break;
        s_fill(x->fout, x->fin[i], piece.len);
        got += piece.len;
        i = ce;
    }
    free(piece.p);
    /* runs normalized apart came out different (e.g. Hangul jamo): keep
     * the lengths equal, only the first byte keeps its flag */
    if (got != want) {
        x->fout->len -= got;
        s_fill(x->fout, 0, want);
        if (want && x->len)
            x->fout->p[x->fout->len - want] = (char)x->fin[0];
    }
    return piece.oom ? -1 : 0;
}

int tok_normalize(const Tokenizer *t, const char *s, size_t len, TokBuf *out, TokBuf *flags, DmErr *err)
{
    out->len = 0;
    tok_buf_put(out, s, len);
    if (flags) {
        /* every byte of the first character is aligned to offset 0 */
        flags->len = 0;
        s_fill(flags, 0, len);
        if (len && !flags->oom)
            memset(flags->p, 1, s_cp_len(s, len));
    }
    TokBuf tmp = {0}, ftmp = {0};
    int rc = 0;
    for (int i = 0; i < t->nnorm && !out->oom && rc == 0; i++) {
        const TokNormStep *st = &t->norm[i];
        tmp.len = 0;
        ftmp.len = 0;
        tok_buf_put(&tmp, "", 0);
        tok_buf_put(&ftmp, "", 0);
        Xform x = {out->p, flags ? (const uint8_t *)flags->p : NULL, out->len, 0, &tmp,
                   flags ? &ftmp : NULL};
        switch (st->kind) {
        case TOK_NORM_PRECOMPILED:
            s_norm_precompiled(&st->cm, &x);
            break;
        case TOK_NORM_REPLACE:
            s_norm_replace(st, &x);
            break;
        case TOK_NORM_STRIP:
            s_norm_strip(st, &x);
            break;
        case TOK_NORM_PREPEND:
            s_norm_prepend(st, &x);
            break;
        default:
            if (s_norm_unicode(st->kind, &x) < 0)
                rc = dm_err(err, "tokenizer: Unicode normalization failed");
        }
        if (tmp.oom || ftmp.oom)
            out->oom = 1;
        TokBuf sw = *out;
        *out = tmp;
        tmp = sw;
        if (flags) {
            sw = *flags;
            *flags = ftmp;
            ftmp = sw;
        }
    }
    free(tmp.p);
    free(ftmp.p);
    if (rc == 0 && (out->oom || (flags && flags->oom)))
        rc = dm_err(err, "tokenizer: out of memory");
    return rc;
}

int tokenizer_normalize(const Tokenizer *t, const char *text, size_t len, char **out,
                        size_t *out_len, DmErr *err)
{
    if (tok_utf8_check(text, len, err) < 0)
        return -1;
    TokBuf b = {0};
    if (tok_normalize(t, text, len, &b, NULL, err) < 0) {
        free(b.p);
        return -1;
    }
    if (!b.p) {
        b.p = malloc(1);
        if (!b.p)
            return dm_err(err, "tokenizer: out of memory");
        b.p[0] = '\0';
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}
