/* tok_encode.c - encode with the semantics of the Rust `tokenizers`
 * library: added-token split on the raw text, normalizer (tok_normalize.c),
 * pre-tokenizer, Unigram Viterbi, template.  Each step mirrors the
 * library's order of work because that order decides ties and edge cases
 * (see the golden README). */
#include "worker/text/tok_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- small helpers ---- */

typedef struct IdVec {
    int32_t *v;
    int n, cap;
    int oom;
} IdVec;

static void s_ids_push(IdVec *a, int32_t id)
{
    if (a->oom)
        return;
    if (a->n == a->cap) {
        int nc = a->cap ? a->cap * 2 : 32;
        int32_t *p = realloc(a->v, sizeof *p * (size_t)nc);
        if (!p) {
            a->oom = 1;
            return;
        }
        a->v = p;
        a->cap = nc;
    }
    a->v[a->n++] = id;
}

/* Approximates the regex \w that tokenizers uses for single_word tokens. */
static int s_is_word_char(int32_t c)
{
    if (c == '_' || c == 0x200C || c == 0x200D)
        return 1;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

static int s_oom(DmErr *err) { return dm_err(err, "tokenizer: out of memory"); }

/* ---- added tokens ---- */

typedef struct Span {
    size_t s, e;
    int32_t added; /* added token id, or -1 for text */
} Span;

typedef struct SpanVec {
    Span *v;
    int n, cap;
    int oom;
} SpanVec;

static void s_span_push(SpanVec *a, size_t s, size_t e, int32_t added)
{
    if (a->oom)
        return;
    if (a->n == a->cap) {
        int nc = a->cap ? a->cap * 2 : 16;
        Span *p = realloc(a->v, sizeof *p * (size_t)nc);
        if (!p) {
            a->oom = 1;
            return;
        }
        a->v = p;
        a->cap = nc;
    }
    a->v[a->n++] = (Span){s, e, added};
}

/* tokenizers' AddedVocabulary::find_matches: leftmost-longest matches
 * (each search resumes after the previous automaton match, even one that is
 * then discarded), single_word checks, lstrip/rstrip widening. */
static void s_split_added(const Tokenizer *t, const TokTrie *tr, const char *s, size_t len,
                          SpanVec *out)
{
    out->n = 0;
    size_t start_offset = 0;
    size_t p = 0;
    while (p < len) {
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = p; j < len; j++) {
            node = tok_trie_child(tr, node, (unsigned char)s[j]);
            if (node < 0)
                break;
            if (tr->value[node] >= 0) {
                best = tr->value[node];
                best_end = j + 1;
            }
        }
        if (best < 0) {
            p++;
            continue;
        }
        const TokAdded *a = tok_added_find(t, best);
        size_t start = p, stop = best_end;
        p = best_end;
        if (!a) /* cannot happen: every pattern's id has an entry */
            continue;
        if (a->single_word) {
            size_t dummy;
            int start_space = start == 0 || !s_is_word_char(tok_prev_cp(s, start, &dummy));
            int32_t nx = 0;
            int stop_space = stop == len ||
                             (tok_utf8_step((const uint8_t *)s + stop, len - stop, &nx), !s_is_word_char(nx));
            if (!start_space || !stop_space)
                continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t prev;
                int32_t cp = tok_prev_cp(s, ns, &prev);
                if (!tok_is_white_space(cp))
                    break;
                ns = prev;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < len) {
                int32_t cp;
                int m = tok_utf8_step((const uint8_t *)s + stop, len - stop, &cp);
                if (!tok_is_white_space(cp))
                    break;
                stop += (size_t)m;
            }
        }
        if (start_offset < start)
            s_span_push(out, start_offset, start, -1);
        s_span_push(out, start, stop, best);
        start_offset = stop;
    }
    if (start_offset < len)
        s_span_push(out, start_offset, len, -1);
}

/* ---- pre-tokenizer ---- */

static void s_span2_push(size_t **spans, int *n, int *cap, size_t a, size_t b, int *oom)
{
    if (*oom)
        return;
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 16;
        size_t *p = realloc(*spans, sizeof *p * 2 * (size_t)nc);
        if (!p) {
            *oom = 1;
            return;
        }
        *spans = p;
        *cap = nc;
    }
    (*spans)[2 * *n] = a;
    (*spans)[2 * *n + 1] = b;
    (*n)++;
}

/* Metaspace on one word s[0..len): spaces -> replacement, prepend, then
 * split before every replacement (MergedWithNext).  Appends to work. */
static void s_metaspace(const TokPreTok *pt, const char *s, size_t len, int first, TokBuf *work,
                        size_t **spans, int *n, int *cap, int *oom)
{
    size_t base = work->len;
    int pre = pt->prepend == TOK_PREPEND_ALWAYS || (pt->prepend == TOK_PREPEND_FIRST && first);
    int starts = len > 0 && s[0] == ' ';
    if (!starts && len >= pt->rep_len && !memcmp(s, pt->rep, pt->rep_len))
        starts = 1;
    if (pre && !starts)
        tok_buf_put(work, pt->rep, pt->rep_len);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ')
            tok_buf_put(work, pt->rep, pt->rep_len);
        else
            tok_buf_putc(work, s[i]);
    }
    if (work->oom) {
        *oom = 1;
        return;
    }
    size_t end = work->len;
    if (!pt->split) {
        if (end > base)
            s_span2_push(spans, n, cap, base, end, oom);
        return;
    }
    size_t wstart = base;
    for (size_t i = base; i + pt->rep_len <= end;) {
        if (!memcmp(work->p + i, pt->rep, pt->rep_len)) {
            if (i > wstart)
                s_span2_push(spans, n, cap, wstart, i, oom);
            wstart = i;
            i += pt->rep_len;
        } else {
            i++;
        }
    }
    if (end > wstart)
        s_span2_push(spans, n, cap, wstart, end, oom);
}

int tok_pre_tokenize(const Tokenizer *t, const char *s, size_t len, const uint8_t *at0, TokBuf *work,
                     size_t **spans, int *nspans, DmErr *err)
{
    int cap = 0, oom = 0;
    *nspans = 0;
    *spans = NULL;
    work->len = 0;
    const TokPreTok *pt = &t->pretok;
    /* tokenizers drops empty splits before pre-tokenizing: no lone U+2581 */
    if (!len)
        return 0;
    if (!t->has_pretok || (!pt->whitespace_split && !pt->metaspace)) {
        tok_buf_put(work, s, len);
        if (len)
            s_span2_push(spans, nspans, &cap, 0, len, &oom);
    } else if (!pt->whitespace_split) {
        s_metaspace(pt, s, len, at0 && at0[0], work, spans, nspans, &cap, &oom);
    } else {
        size_t i = 0;
        while (i < len) {
            int32_t cp;
            int m = tok_utf8_step((const uint8_t *)s + i, len - i, &cp);
            if (tok_is_white_space(cp)) {
                i += (size_t)m;
                continue;
            }
            size_t ws = i;
            while (i < len) {
                m = tok_utf8_step((const uint8_t *)s + i, len - i, &cp);
                if (tok_is_white_space(cp))
                    break;
                i += (size_t)m;
            }
            if (pt->metaspace) {
                s_metaspace(pt, s + ws, i - ws, at0 && at0[ws], work, spans, nspans, &cap, &oom);
            } else {
                size_t b = work->len;
                tok_buf_put(work, s + ws, i - ws);
                s_span2_push(spans, nspans, &cap, b, work->len, &oom);
            }
        }
    }
    if (oom || work->oom) {
        free(*spans);
        *spans = NULL;
        return s_oom(err);
    }
    return 0;
}

/* ---- Unigram ---- */

typedef struct Lattice {
    double *score;
    int32_t *from; /* start of the best node ending here, -1 = none yet */
    int32_t *id;
    int32_t *path;
    size_t cap;
} Lattice;

static int s_lattice_fit(Lattice *L, size_t n)
{
    if (n + 1 <= L->cap)
        return 0;
    size_t c = L->cap ? L->cap : 64;
    while (c < n + 1)
        c *= 2;
    double *a = realloc(L->score, sizeof *a * c);
    if (a)
        L->score = a;
    int32_t *b = realloc(L->from, sizeof *b * c);
    if (b)
        L->from = b;
    int32_t *d = realloc(L->id, sizeof *d * c);
    if (d)
        L->id = d;
    int32_t *p = realloc(L->path, sizeof *p * c);
    if (p)
        L->path = p;
    if (!a || !b || !d || !p)
        return -1;
    L->cap = c;
    return 0;
}

/* Id of a fused unknown run: the vocab piece if it happens to be one, else
 * byte fallback, else unk (tokenizers' Unigram::tokenize). */
static void s_emit_unk_run(const Tokenizer *t, const char *s, size_t len, IdVec *out)
{
    int32_t id = tok_trie_get(&t->vocab, s, len);
    if (id >= 0) {
        s_ids_push(out, id);
        return;
    }
    if (t->byte_fallback) {
        size_t i;
        for (i = 0; i < len && t->byte_ids[(unsigned char)s[i]] >= 0; i++)
            ;
        if (i == len) {
            for (i = 0; i < len; i++)
                s_ids_push(out, t->byte_ids[(unsigned char)s[i]]);
            return;
        }
    }
    s_ids_push(out, t->unk_id);
}

/* Forward Viterbi exactly as tokenizers' encode_optimized: starts left to
 * right, trie matches shortest to longest, replace only when strictly
 * better; then backtrack, fusing adjacent unk nodes. */
static int s_unigram(const Tokenizer *t, const char *w, size_t n, Lattice *L, IdVec *out, DmErr *err)
{
    if (!n)
        return 0;
    if (n > INT32_MAX - 1)
        return dm_err(err, "tokenizer: word of %zu bytes is too long", n);
    if (s_lattice_fit(L, n) < 0)
        return s_oom(err);
    double unk_score = t->min_score - 10.0;
    for (size_t i = 0; i <= n; i++) {
        L->from[i] = -1;
        L->score[i] = 0.0;
        L->id[i] = 0;
    }
    const uint8_t *u = (const uint8_t *)w;
    for (size_t st = 0; st < n;) {
        double base = L->score[st];
        int32_t cp;
        size_t mblen = (size_t)tok_utf8_step(u + st, n - st, &cp);
        int single = 0;
        int32_t node = 0;
        for (size_t j = st; j < n; j++) {
            node = tok_trie_child(&t->vocab, node, u[j]);
            if (node < 0)
                break;
            int32_t id = t->vocab.value[node];
            if (id < 0)
                continue;
            size_t end = j + 1;
            double cand = t->scores[id] + base;
            if (L->from[end] < 0 || cand > L->score[end]) {
                L->score[end] = cand;
                L->from[end] = (int32_t)st;
                L->id[end] = id;
            }
            if (end - st == mblen)
                single = 1;
        }
        if (!single) {
            if (t->unk_id < 0)
                return dm_err(err, "%s: text has a character missing from the vocabulary and the "
                                   "model has no unk_id", t->path);
            size_t end = st + mblen;
            double cand = unk_score + base;
            if (L->from[end] < 0 || cand > L->score[end]) {
                L->score[end] = cand;
                L->from[end] = (int32_t)st;
                L->id[end] = t->unk_id;
            }
        }
        st += mblen;
    }
    /* backtrack into path[] (node ends, back to front), then emit front to
     * back so a fused unknown run or byte fallback keeps its order */
    int np = 0;
    for (size_t e = n; e > 0; e = (size_t)L->from[e])
        L->path[np++] = (int32_t)e;
    size_t run_start = 0;
    int in_run = 0;
    for (int k = np - 1; k >= 0; k--) {
        size_t e = (size_t)L->path[k], s = (size_t)L->from[e];
        int32_t id = L->id[e];
        if (id == t->unk_id) {
            if (!in_run)
                run_start = s;
            in_run = 1;
            continue;
        }
        if (in_run)
            s_emit_unk_run(t, w + run_start, s - run_start, out);
        in_run = 0;
        s_ids_push(out, id);
    }
    if (in_run)
        s_emit_unk_run(t, w + run_start, n - run_start, out);
    if (out->oom)
        return s_oom(err);
    return 0;
}

/* ---- encode ---- */

typedef struct EncWork {
    TokBuf norm, flags, words;
    SpanVec raw, sub;
    Lattice lat;
    size_t *spans;
} EncWork;

static void s_work_free(EncWork *w)
{
    free(w->norm.p);
    free(w->flags.p);
    free(w->words.p);
    free(w->raw.v);
    free(w->sub.v);
    free(w->lat.score);
    free(w->lat.from);
    free(w->lat.id);
    free(w->lat.path);
    free(w->spans);
}

static int s_words(const Tokenizer *t, EncWork *w, const char *s, size_t len, const uint8_t *at0, IdVec *out,
                   DmErr *err)
{
    int nw;
    free(w->spans);
    w->spans = NULL;
    if (tok_pre_tokenize(t, s, len, at0, &w->words, &w->spans, &nw, err) < 0)
        return -1;
    for (int k = 0; k < nw; k++)
        if (s_unigram(t, w->words.p + w->spans[2 * k], w->spans[2 * k + 1] - w->spans[2 * k],
                      &w->lat, out, err) < 0)
            return -1;
    return 0;
}

static int s_encode_seq(const Tokenizer *t, EncWork *w, const char *text, size_t len, IdVec *out,
                        DmErr *err)
{
    if (tok_utf8_check(text, len, err) < 0)
        return -1;
    SpanVec *raw = &w->raw;
    raw->n = 0;
    if (t->has_added_raw)
        s_split_added(t, &t->added_raw, text, len, raw);
    else if (len)
        s_span_push(raw, 0, len, -1);
    if (raw->oom)
        return s_oom(err);
    for (int i = 0; i < raw->n; i++) {
        Span sp = raw->v[i];
        if (sp.added >= 0) {
            s_ids_push(out, sp.added);
            continue;
        }
        if (sp.e <= sp.s)
            continue;
        if (tok_normalize(t, text + sp.s, sp.e - sp.s, &w->norm, &w->flags, err) < 0)
            return -1;
        if (!w->norm.len)
            continue;
        /* only the piece at text offset 0 can be "first" for Metaspace */
        const uint8_t *at0 = sp.s == 0 ? (const uint8_t *)w->flags.p : NULL;
        if (!t->has_added_norm) {
            if (s_words(t, w, w->norm.p, w->norm.len, at0, out, err) < 0)
                return -1;
            continue;
        }
        s_split_added(t, &t->added_norm, w->norm.p, w->norm.len, &w->sub);
        if (w->sub.oom)
            return s_oom(err);
        for (int k = 0; k < w->sub.n; k++) {
            Span q = w->sub.v[k];
            if (q.added >= 0)
                s_ids_push(out, q.added);
            else if (q.e > q.s &&
                     s_words(t, w, w->norm.p + q.s, q.e - q.s, at0 ? at0 + q.s : NULL, out, err) < 0)
                return -1;
        }
    }
    return out->oom ? s_oom(err) : 0;
}

static int s_encode(const Tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                    int add_special, int32_t **ids, int *n, DmErr *err)
{
    EncWork w = {0};
    IdVec A = {0}, B = {0}, R = {0};
    int rc = -1;
    *ids = NULL;
    *n = 0;
    if (!a && alen)
        goto done;
    if (s_encode_seq(t, &w, a ? a : "", alen, &A, err) < 0)
        goto done;
    if (b && s_encode_seq(t, &w, b, blen, &B, err) < 0)
        goto done;
    if (add_special && t->has_post) {
        const TokTplItem *tpl = b ? t->tpl_pair : t->tpl_single;
        int ntpl = b ? t->ntpl_pair : t->ntpl_single;
        for (int i = 0; i < ntpl; i++) {
            const IdVec *src = tpl[i].seq == 0 ? &A : tpl[i].seq == 1 ? &B : NULL;
            if (src)
                for (int k = 0; k < src->n; k++)
                    s_ids_push(&R, src->v[k]);
            else
                for (int k = 0; k < tpl[i].nids; k++)
                    s_ids_push(&R, tpl[i].ids[k]);
        }
    } else {
        for (int k = 0; k < A.n; k++)
            s_ids_push(&R, A.v[k]);
        for (int k = 0; k < B.n; k++)
            s_ids_push(&R, B.v[k]);
    }
    if (R.oom) {
        s_oom(err);
        goto done;
    }
    *ids = R.v;
    *n = R.n;
    R.v = NULL;
    rc = 0;
done:
    s_work_free(&w);
    free(A.v);
    free(B.v);
    free(R.v);
    return rc;
}

int tokenizer_encode_n(const Tokenizer *t, const char *text, size_t len, int add_special,
                       int32_t **ids, int *n, DmErr *err)
{
    if (!text && len)
        return dm_err(err, "tokenizer_encode: text is NULL");
    return s_encode(t, text, len, NULL, 0, add_special, ids, n, err);
}

int tokenizer_encode(const Tokenizer *t, const char *text, int add_special, int32_t **ids, int *n,
                     DmErr *err)
{
    if (!text)
        return dm_err(err, "tokenizer_encode: text is NULL");
    return s_encode(t, text, strlen(text), NULL, 0, add_special, ids, n, err);
}

int tokenizer_encode_pair_n(const Tokenizer *t, const char *a, size_t alen, const char *b,
                            size_t blen, int add_special, int32_t **ids, int *n, DmErr *err)
{
    if (!a || !b)
        return dm_err(err, "tokenizer_encode_pair: text is NULL");
    return s_encode(t, a, alen, b, blen, add_special, ids, n, err);
}

int tokenizer_encode_pair(const Tokenizer *t, const char *a, const char *b, int add_special,
                          int32_t **ids, int *n, DmErr *err)
{
    if (!a || !b)
        return dm_err(err, "tokenizer_encode_pair: text is NULL");
    return s_encode(t, a, strlen(a), b, strlen(b), add_special, ids, n, err);
}

