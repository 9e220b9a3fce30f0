/* tokenizer.c - loading a Hugging Face tokenizer.json into a Tokenizer, and
 * the lookups.  Encoding and decoding are in tok_encode.c, the tries in
 * tok_trie.c, the synthetic tokenizer in tok_synth.c. */
#include "tok_internal.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- small JSON helpers (errors name the file and the JSON path) ---- */

static int s_get_bool(const Tokenizer *t, json_t *o, const char *key, int dflt, int *out,
                      const char *where, DmErr *err)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return dm_err(err, "%s: %s.%s must be true or false", t->path, where, key);
    *out = json_is_true(v);
    return 0;
}

/* An integer, also accepted as an integral real. */
static int s_as_int(json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9e15) {
            *out = (long long)d;
            return 0;
        }
    }
    return -1;
}

static const char *s_type(json_t *o) { return json_string_value(json_object_get(o, "type")); }

/* ---- model ---- */

static int s_parse_model(Tokenizer *t, json_t *m, DmErr *err)
{
    const char *P = t->path;
    if (!json_is_object(m))
        return dm_err(err, "%s: \"model\" is missing or not an object", P);
    json_t *vocab = json_object_get(m, "vocab");
    const char *type = s_type(m);
    if (!type) {
        /* untagged serialisations are told apart by the vocab's shape */
        if (!json_is_array(vocab))
            return dm_err(err, "%s: model has no \"type\" and is not a Unigram model (only Unigram "
                               "is supported)", P);
        type = "Unigram";
    }
    if (strcmp(type, "Unigram") != 0)
        return dm_err(err, "%s: model type \"%s\" is not supported (only Unigram)", P, type);
    if (!json_is_array(vocab))
        return dm_err(err, "%s: model.vocab is not an array", P);
    size_t n = json_array_size(vocab);
    if (n == 0)
        return dm_err(err, "%s: model.vocab is empty", P);
    if (n > (size_t)INT32_MAX / 2)
        return dm_err(err, "%s: model.vocab has %zu entries, too many", P, n);
    t->npieces = (int)n;
    t->pieces = dm_xcalloc(n, sizeof *t->pieces);
    t->piece_len = dm_xcalloc(n, sizeof *t->piece_len);
    t->scores = dm_xcalloc(n, sizeof *t->scores);
    t->min_score = INFINITY;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(vocab, i);
        json_t *p = json_array_get(e, 0), *s = json_array_get(e, 1);
        if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(p) || !json_is_number(s))
            return dm_err(err, "%s: model.vocab[%zu] is not a [piece, score] pair", P, i);
        t->piece_len[i] = json_string_length(p);
        t->pieces[i] = dm_xmalloc(t->piece_len[i] + 1);
        memcpy(t->pieces[i], json_string_value(p), t->piece_len[i] + 1);
        t->scores[i] = json_number_value(s);
        if (t->scores[i] < t->min_score)
            t->min_score = t->scores[i];
        /* a repeated piece maps to its last id, like tokenizers' HashMap */
        tok_trie_insert(&t->vocab, t->pieces[i], t->piece_len[i], (int32_t)i);
    }
    t->unk_id = -1;
    json_t *u = json_object_get(m, "unk_id");
    if (u && !json_is_null(u)) {
        long long v;
        if (s_as_int(u, &v) < 0 || v < 0 || v >= (long long)n)
            return dm_err(err, "%s: model.unk_id must be an id below the vocabulary size %zu", P, n);
        t->unk_id = (int32_t)v;
    }
    if (s_get_bool(t, m, "byte_fallback", 0, &t->byte_fallback, "model", err) < 0)
        return -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = t->byte_fallback ? tok_trie_get(&t->vocab, name, strlen(name)) : -1;
    }
    return 0;
}

/* ---- normalizer ---- */

static TokNormStep *s_new_step(Tokenizer *t, int kind)
{
    t->norm = dm_xrealloc(t->norm, sizeof *t->norm * (size_t)(t->nnorm + 1));
    TokNormStep *st = &t->norm[t->nnorm++];
    memset(st, 0, sizeof *st);
    st->kind = kind;
    return st;
}

/* The regexes Donut-style files use: one atom (a literal character, an
 * escaped punctuation character, or \s) with an optional greedy quantifier
 * "+", "{n}", "{n,}", "{n,m}" (at least one repetition). */
static int s_parse_regex(TokNormStep *st, const char *pat, size_t len)
{
    size_t i;
    if (len >= 2 && pat[0] == '\\') {
        unsigned char c = (unsigned char)pat[1];
        if (c == 's')
            st->atom_ws = 1;
        else if (c < 0x80 && strchr("\\.^$|?*+()[]{}/- #&~", c) && c)
            st->atom_cp = c;
        else
            return -1;
        i = 2;
    } else {
        int32_t cp;
        int m = tok_utf8_next((const uint8_t *)pat, len, &cp);
        if (m < 0 || (cp < 0x80 && strchr("\\.^$|?*+()[]{}", (int)cp)))
            return -1;
        st->atom_cp = cp;
        i = (size_t)m;
    }
    st->qmin = st->qmax = 1;
    if (i == len)
        return 0;
    if (pat[i] == '+' && i + 1 == len) {
        st->qmax = -1;
        return 0;
    }
    if (pat[i] != '{')
        return -1;
    i++;
    long a = 0, b;
    size_t d0 = i;
    while (i < len && pat[i] >= '0' && pat[i] <= '9' && a < 100000)
        a = a * 10 + (pat[i++] - '0');
    if (i == d0 || i >= len)
        return -1;
    if (pat[i] == '}') {
        b = a;
    } else if (pat[i] == ',') {
        i++;
        size_t d1 = i;
        b = 0;
        while (i < len && pat[i] >= '0' && pat[i] <= '9' && b < 100000)
            b = b * 10 + (pat[i++] - '0');
        if (i == d1)
            b = -1;
        if (i >= len || pat[i] != '}')
            return -1;
    } else {
        return -1;
    }
    if (i + 1 != len || a < 1 || (b >= 0 && b < a))
        return -1;
    st->qmin = (int)a;
    st->qmax = (int)b;
    return 0;
}

static int s_parse_normalizer(Tokenizer *t, json_t *n, const char *where, int depth, DmErr *err)
{
    const char *P = t->path;
    if (!n || json_is_null(n))
        return 0;
    const char *type = s_type(n);
    if (!json_is_object(n) || !type)
        return dm_err(err, "%s: %s has no \"type\"", P, where);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers");
        if (!json_is_array(arr))
            return dm_err(err, "%s: %s.normalizers is not an array", P, where);
        if (depth > 8)
            return dm_err(err, "%s: %s nests Sequences too deeply", P, where);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            if (s_parse_normalizer(t, json_array_get(arr, i), sub, depth + 1, err) < 0)
                return -1;
        }
        return 0;
    }
    if (!strcmp(type, "Precompiled")) {
        json_t *cm = json_object_get(n, "precompiled_charsmap");
        if (!json_is_string(cm))
            return dm_err(err, "%s: %s.precompiled_charsmap is not a string", P, where);
        TokNormStep *st = s_new_step(t, TOK_NORM_PRECOMPILED);
        char w[512];
        snprintf(w, sizeof w, "%s: %s", P, where);
        return tok_charsmap_load(&st->cm, json_string_value(cm), json_string_length(cm), w, err);
    }
    if (!strcmp(type, "Replace")) {
        json_t *pat = json_object_get(n, "pattern"), *content = json_object_get(n, "content");
        json_t *ps = json_object_get(pat, "String"), *pr = json_object_get(pat, "Regex");
        if (!json_is_string(content) || (!json_is_string(ps) && !json_is_string(pr)))
            return dm_err(err, "%s: %s needs a pattern {\"String\"|\"Regex\": ...} and a content string",
                          P, where);
        TokNormStep *st = s_new_step(t, TOK_NORM_REPLACE);
        json_t *p = ps ? ps : pr;
        st->pat_len = json_string_length(p);
        st->pat = dm_xstrdup(json_string_value(p));
        st->content_len = json_string_length(content);
        st->content = dm_xstrdup(json_string_value(content));
        st->is_regex = pr != NULL && ps == NULL;
        if (st->is_regex && s_parse_regex(st, st->pat, st->pat_len) < 0)
            return dm_err(err, "%s: %s: regex \"%s\" is not supported (only one character or \\s "
                               "repeated, e.g. \" {2,}\")", P, where, st->pat);
        return 0;
    }
    static const struct {
        const char *name;
        int kind;
    } simple[] = {{"NFC", TOK_NORM_NFC}, {"NFD", TOK_NORM_NFD}, {"NFKC", TOK_NORM_NFKC}, {"NFKD", TOK_NORM_NFKD}};
    for (size_t i = 0; i < sizeof simple / sizeof *simple; i++)
        if (!strcmp(type, simple[i].name)) {
            s_new_step(t, simple[i].kind);
            return 0;
        }
    if (!strcmp(type, "Strip")) {
        TokNormStep *st = s_new_step(t, TOK_NORM_STRIP);
        if (s_get_bool(t, n, "strip_left", 1, &st->strip_left, where, err) < 0 ||
            s_get_bool(t, n, "strip_right", 1, &st->strip_right, where, err) < 0)
            return -1;
        return 0;
    }
    if (!strcmp(type, "Prepend")) {
        json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p))
            return dm_err(err, "%s: %s.prepend is not a string", P, where);
        TokNormStep *st = s_new_step(t, TOK_NORM_PREPEND);
        st->content_len = json_string_length(p);
        st->content = dm_xstrdup(json_string_value(p));
        return 0;
    }
    return dm_err(err, "%s: %s type \"%s\" is not supported", P, where, type);
}

/* ---- Metaspace (pre-tokenizer and decoder share the fields) ---- */

static int s_parse_metaspace(Tokenizer *t, json_t *o, const char *where, char rep[8], size_t *rep_len,
                             int *prepend, int *split, DmErr *err)
{
    const char *P = t->path;
    json_t *r = json_object_get(o, "replacement");
    const char *rs = json_string_value(r);
    int32_t cp;
    if (!rs || !*rs)
        return dm_err(err, "%s: %s.replacement is missing", P, where);
    int m = tok_utf8_next((const uint8_t *)rs, json_string_length(r), &cp);
    if (m < 0 || (size_t)m != json_string_length(r))
        return dm_err(err, "%s: %s.replacement must be exactly one character", P, where);
    memcpy(rep, rs, (size_t)m);
    rep[m] = '\0';
    *rep_len = (size_t)m;
    json_t *ps = json_object_get(o, "prepend_scheme");
    if (ps && !json_is_null(ps)) {
        const char *s = json_string_value(ps);
        if (s && !strcmp(s, "always"))
            *prepend = TOK_PREPEND_ALWAYS;
        else if (s && !strcmp(s, "never"))
            *prepend = TOK_PREPEND_NEVER;
        else if (s && !strcmp(s, "first"))
            *prepend = TOK_PREPEND_FIRST;
        else
            return dm_err(err, "%s: %s.prepend_scheme must be \"always\", \"never\" or \"first\"", P, where);
    } else {
        /* the pre-0.14 spelling */
        int add = 1;
        if (s_get_bool(t, o, "add_prefix_space", 1, &add, where, err) < 0)
            return -1;
        *prepend = add ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    }
    return split ? s_get_bool(t, o, "split", 1, split, where, err) : 0;
}

static int s_parse_pretok_one(Tokenizer *t, json_t *o, const char *where, DmErr *err)
{
    const char *type = s_type(o);
    TokPreTok *pt = &t->pretok;
    if (!type)
        return dm_err(err, "%s: %s has no \"type\"", t->path, where);
    if (!strcmp(type, "Metaspace")) {
        if (pt->metaspace)
            return dm_err(err, "%s: %s: a second Metaspace is not supported", t->path, where);
        pt->metaspace = 1;
        return s_parse_metaspace(t, o, where, pt->rep, &pt->rep_len, &pt->prepend, &pt->split, err);
    }
    if (!strcmp(type, "WhitespaceSplit")) {
        if (pt->whitespace_split || pt->metaspace)
            return dm_err(err, "%s: %s: WhitespaceSplit is supported only once, before Metaspace",
                          t->path, where);
        pt->whitespace_split = 1;
        return 0;
    }
    return dm_err(err, "%s: %s type \"%s\" is not supported (Metaspace, WhitespaceSplit)", t->path,
                  where, type);
}

static int s_parse_pretok(Tokenizer *t, json_t *o, DmErr *err)
{
    if (!o || json_is_null(o))
        return 0;
    t->has_pretok = 1;
    const char *type = s_type(o);
    if (type && !strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(o, "pretokenizers");
        if (!json_is_array(arr))
            return dm_err(err, "%s: pre_tokenizer.pretokenizers is not an array", t->path);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char w[64];
            snprintf(w, sizeof w, "pre_tokenizer.pretokenizers[%zu]", i);
            if (s_parse_pretok_one(t, json_array_get(arr, i), w, err) < 0)
                return -1;
        }
        return 0;
    }
    return s_parse_pretok_one(t, o, "pre_tokenizer", err);
}

/* ---- post-processor ---- */

static void s_tpl_add(TokTplItem **items, int *n, int seq, const int32_t *ids, int nids)
{
    *items = dm_xrealloc(*items, sizeof **items * (size_t)(*n + 1));
    TokTplItem *it = &(*items)[(*n)++];
    it->seq = seq;
    it->nids = nids;
    it->ids = nids ? dm_xmalloc(sizeof *ids * (size_t)nids) : NULL;
    if (nids)
        memcpy(it->ids, ids, sizeof *ids * (size_t)nids);
}

static int s_parse_template(Tokenizer *t, json_t *pp, const char *key, int pair, TokTplItem **items,
                            int *n, DmErr *err)
{
    const char *P = t->path;
    json_t *arr = json_object_get(pp, key), *specials = json_object_get(pp, "special_tokens");
    if (!json_is_array(arr))
        return dm_err(err, "%s: post_processor.%s is not an array", P, key);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        json_t *seq = json_object_get(e, "Sequence"), *sp = json_object_get(e, "SpecialToken");
        if (seq) {
            const char *id = json_string_value(json_object_get(seq, "id"));
            if (!id || (strcmp(id, "A") && strcmp(id, "B")) || (!pair && !strcmp(id, "B")))
                return dm_err(err, "%s: post_processor.%s[%zu]: Sequence id must be \"A\"%s", P, key,
                              i, pair ? " or \"B\"" : "");
            s_tpl_add(items, n, id[0] == 'A' ? 0 : 1, NULL, 0);
        } else if (sp) {
            const char *id = json_string_value(json_object_get(sp, "id"));
            json_t *def = id ? json_object_get(specials, id) : NULL;
            json_t *ids = json_object_get(def, "ids");
            if (!json_is_array(ids))
                return dm_err(err, "%s: post_processor.%s[%zu]: special token \"%s\" is not in "
                                   "special_tokens", P, key, i, id ? id : "?");
            int m = (int)json_array_size(ids);
            int32_t *v = dm_xmalloc(sizeof *v * (size_t)(m ? m : 1));
            for (int k = 0; k < m; k++) {
                long long x;
                if (s_as_int(json_array_get(ids, (size_t)k), &x) < 0 || x < 0 || x > INT32_MAX) {
                    free(v);
                    return dm_err(err, "%s: post_processor.special_tokens[\"%s\"].ids[%d] is not an id",
                                  P, id, k);
                }
                v[k] = (int32_t)x;
            }
            s_tpl_add(items, n, -1, v, m);
            free(v);
        } else {
            return dm_err(err, "%s: post_processor.%s[%zu] is neither Sequence nor SpecialToken", P,
                          key, i);
        }
    }
    return 0;
}

/* RobertaProcessing / BertProcessing as templates: [token, id] pairs. */
static int s_pair_id(Tokenizer *t, json_t *pp, const char *key, int32_t *id, DmErr *err)
{
    long long x;
    json_t *e = json_object_get(pp, key);
    if (!json_is_array(e) || s_as_int(json_array_get(e, 1), &x) < 0 || x < 0 || x > INT32_MAX)
        return dm_err(err, "%s: post_processor.%s must be [token, id]", t->path, key);
    *id = (int32_t)x;
    return 0;
}

static int s_parse_post(Tokenizer *t, json_t *pp, DmErr *err)
{
    if (!pp || json_is_null(pp))
        return 0;
    const char *type = s_type(pp);
    t->has_post = 1;
    if (type && !strcmp(type, "TemplateProcessing"))
        return s_parse_template(t, pp, "single", 0, &t->tpl_single, &t->ntpl_single, err) < 0 ||
                       s_parse_template(t, pp, "pair", 1, &t->tpl_pair, &t->ntpl_pair, err) < 0
                   ? -1
                   : 0;
    if (type && (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing"))) {
        int32_t cls, sep;
        if (s_pair_id(t, pp, "cls", &cls, err) < 0 || s_pair_id(t, pp, "sep", &sep, err) < 0)
            return -1;
        s_tpl_add(&t->tpl_single, &t->ntpl_single, -1, &cls, 1);
        s_tpl_add(&t->tpl_single, &t->ntpl_single, 0, NULL, 0);
        s_tpl_add(&t->tpl_single, &t->ntpl_single, -1, &sep, 1);
        s_tpl_add(&t->tpl_pair, &t->ntpl_pair, -1, &cls, 1);
        s_tpl_add(&t->tpl_pair, &t->ntpl_pair, 0, NULL, 0);
        s_tpl_add(&t->tpl_pair, &t->ntpl_pair, -1, &sep, 1);
        if (type[0] == 'R') /* RoBERTa doubles the separator between the sequences */
            s_tpl_add(&t->tpl_pair, &t->ntpl_pair, -1, &sep, 1);
        s_tpl_add(&t->tpl_pair, &t->ntpl_pair, 1, NULL, 0);
        s_tpl_add(&t->tpl_pair, &t->ntpl_pair, -1, &sep, 1);
        return 0;
    }
    return dm_err(err, "%s: post_processor type \"%s\" is not supported (TemplateProcessing, "
                       "RobertaProcessing, BertProcessing)", t->path, type ? type : "?");
}

static int s_parse_decoder(Tokenizer *t, json_t *d, DmErr *err)
{
    if (!d || json_is_null(d))
        return 0;
    const char *type = s_type(d);
    if (type && !strcmp(type, "Metaspace")) {
        t->decoder_metaspace = 1;
        return s_parse_metaspace(t, d, "decoder", t->dec_rep, &t->dec_rep_len, &t->dec_prepend, NULL, err);
    }
    return dm_err(err, "%s: decoder type \"%s\" is not supported (only Metaspace)", t->path,
                  type ? type : "?");
}

/* ---- added tokens ---- */

static int s_added_same(const TokAdded *a, const TokAdded *b)
{
    return a->len == b->len && !memcmp(a->content, b->content, a->len) && a->special == b->special &&
           a->lstrip == b->lstrip && a->rstrip == b->rstrip && a->single_word == b->single_word &&
           a->normalized == b->normalized;
}

static int s_cmp_added(const void *a, const void *b)
{
    int32_t x = ((const TokAdded *)a)->id, y = ((const TokAdded *)b)->id;
    return (x > y) - (x < y);
}

const TokAdded *tok_added_find(const Tokenizer *t, int32_t id)
{
    int lo = 0, hi = t->nadded - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (t->added[mid].id == id)
            return &t->added[mid];
        if (t->added[mid].id < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

/* Rebuild the added vocabulary the way tokenizers does on load: tokens are
 * added one at a time, an id comes from the content (already added, or in
 * the model vocabulary) or is the next free one; the ids written in the
 * file are only checked by tokenizers, not used. */
static int s_parse_added(Tokenizer *t, json_t *arr, DmErr *err)
{
    const char *P = t->path;
    if (!arr || json_is_null(arr))
        arr = NULL;
    else if (!json_is_array(arr))
        return dm_err(err, "%s: added_tokens is not an array", P);
    size_t n = arr ? json_array_size(arr) : 0;
    TokAdded *list = dm_xcalloc(n ? n : 1, sizeof *list);
    int *order = dm_xmalloc(sizeof *order * (n ? n : 1)); /* specials then others */
    int nspecial = 0, nplain = 0;
    int *plain = dm_xmalloc(sizeof *plain * (n ? n : 1));
    int rc = -1;
    int32_t max_id = -1;
    tok_trie_init(&t->added_map);
    tok_trie_init(&t->added_raw);
    tok_trie_init(&t->added_norm);
    tok_trie_init(&t->special_set);
    t->added = dm_xcalloc(n ? n : 1, sizeof *t->added);
    t->nadded = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, i);
        json_t *c = json_object_get(e, "content");
        char w[64];
        snprintf(w, sizeof w, "added_tokens[%zu]", i);
        if (!json_is_string(c)) {
            dm_err(err, "%s: %s.content is not a string", P, w);
            goto done;
        }
        TokAdded *a = &list[i];
        a->content = (char *)json_string_value(c);
        a->len = json_string_length(c);
        if (s_get_bool(t, e, "special", 0, &a->special, w, err) < 0 ||
            s_get_bool(t, e, "single_word", 0, &a->single_word, w, err) < 0 ||
            s_get_bool(t, e, "lstrip", 0, &a->lstrip, w, err) < 0 ||
            s_get_bool(t, e, "rstrip", 0, &a->rstrip, w, err) < 0 ||
            s_get_bool(t, e, "normalized", !a->special, &a->normalized, w, err) < 0)
            goto done;
        if (a->special && a->len && tok_trie_get(&t->special_set, a->content, a->len) < 0) {
            tok_trie_insert(&t->special_set, a->content, a->len, 1);
            order[nspecial++] = (int)i;
        }
        if (!a->len)
            continue;
        int dup = 0;
        for (int k = 0; k < t->nadded && !dup; k++)
            dup = s_added_same(&t->added[k], a);
        if (dup)
            continue;
        int32_t id = tok_trie_get(&t->added_map, a->content, a->len);
        if (id < 0)
            id = tok_trie_get(&t->vocab, a->content, a->len);
        if (id < 0) {
            if (max_id < 0)
                id = t->npieces;
            else
                id = max_id >= t->npieces ? max_id + 1 : t->npieces;
        }
        if (id == INT32_MAX) {
            dm_err(err, "%s: %s: too many ids", P, w);
            goto done;
        }
        tok_trie_insert(&t->added_map, a->content, a->len, id);
        if (id > max_id)
            max_id = id;
        int k;
        for (k = 0; k < t->nadded && t->added[k].id != id; k++)
            ;
        if (k == t->nadded)
            t->nadded++;
        else
            free(t->added[k].content);
        t->added[k] = *a;
        t->added[k].id = id;
        t->added[k].content = dm_xmalloc(a->len + 1);
        memcpy(t->added[k].content, a->content, a->len + 1);
        if (tok_trie_get(&t->special_set, a->content, a->len) < 0)
            plain[nplain++] = (int)i;
    }
    qsort(t->added, (size_t)t->nadded, sizeof *t->added, s_cmp_added);
    for (int j = 0; j < nplain; j++)
        order[nspecial + j] = plain[j];
    /* split patterns: specials first, then the others, first pattern wins */
    TokBuf nb = {0};
    for (int j = 0; j < nspecial + nplain; j++) {
        const TokAdded *a = &list[order[j]];
        int32_t id = tok_trie_get(&t->added_map, a->content, a->len);
        if (!a->normalized) {
            tok_trie_insert_first(&t->added_raw, a->content, a->len, id);
            t->has_added_raw = 1;
            continue;
        }
        if (tok_normalize(t, a->content, a->len, &nb, err) < 0) {
            free(nb.p);
            goto done;
        }
        if (nb.len) {
            tok_trie_insert_first(&t->added_norm, nb.p, nb.len, id);
            t->has_added_norm = 1;
        }
    }
    free(nb.p);
    rc = 0;
done:
    free(list);
    free(order);
    free(plain);
    return rc;
}

/* ---- id tables ---- */

static void s_build_ids(Tokenizer *t)
{
    int32_t vs = t->npieces;
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].id + 1 > vs)
            vs = t->added[i].id + 1;
    t->vocab_size = vs;
    t->id_piece = dm_xcalloc((size_t)vs, sizeof *t->id_piece);
    t->id_special = dm_xcalloc((size_t)vs, 1);
    for (int i = 0; i < t->npieces; i++)
        t->id_piece[i] = t->pieces[i];
    for (int i = 0; i < t->nadded; i++)
        t->id_piece[t->added[i].id] = t->added[i].content;
    /* skip_special_tokens tests the token string, so a vocabulary piece equal
     * to a special token's content is dropped too */
    for (int32_t i = 0; i < vs; i++)
        if (t->id_piece[i])
            t->id_special[i] = tok_trie_get(&t->special_set, t->id_piece[i], strlen(t->id_piece[i])) >= 0;
}

/* ---- load / free ---- */

static int s_read_file(const char *path, char **buf, size_t *len, DmErr *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_errno(err, "%s: cannot open", path);
    size_t cap = 1 << 16, n = 0;
    char *b = dm_xmalloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            b = dm_xrealloc(b, cap);
        }
        size_t k = fread(b + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return dm_err(err, "%s: read error", path);
    }
    *buf = b;
    *len = n;
    return 0;
}

static json_t *s_parse_json(const char *path, const char *buf, size_t len, size_t flags, DmErr *err)
{
    json_error_t je;
    json_t *j = json_loadb(buf, len, flags, &je);
    if (!j)
        dm_err(err, "%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
    return j;
}

static int s_load_config(Tokenizer *t, const char *path, DmErr *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return 0; /* optional */
    char *buf;
    size_t len;
    if (s_read_file(path, &buf, &len, err) < 0)
        return -1;
    /* Donut's config holds model_max_length = 1e30 as an integer literal */
    json_t *j = s_parse_json(path, buf, len, JSON_DECODE_INT_AS_REAL, err);
    free(buf);
    if (!j)
        return -1;
    json_t *c = json_object_get(j, "clean_up_tokenization_spaces");
    int rc = 0;
    if (json_is_boolean(c))
        t->cleanup_default = json_is_true(c);
    else if (c && !json_is_null(c))
        rc = dm_err(err, "%s: clean_up_tokenization_spaces must be true or false", path);
    json_decref(j);
    return rc;
}

int tokenizer_load(const char *dir, Tokenizer **out, DmErr *err)
{
    *out = NULL;
    if (!dir || !*dir)
        return dm_err(err, "tokenizer_load: no tokenizer path given");
    Tokenizer *t = dm_xcalloc(1, sizeof *t);
    t->cleanup_default = 1;
    t->unk_id = -1;
    tok_trie_init(&t->vocab);
    char *cfg = NULL;
    struct stat st;
    size_t dl = strlen(dir);
    int is_file;
    if (stat(dir, &st) == 0)
        is_file = !S_ISDIR(st.st_mode);
    else /* missing: say which file was looked for */
        is_file = dl > 5 && !strcmp(dir + dl - 5, ".json");
    if (is_file) {
        t->path = dm_xstrdup(dir);
    } else {
        t->path = dm_xmalloc(dl + 32);
        cfg = dm_xmalloc(dl + 32);
        snprintf(t->path, dl + 32, "%s/tokenizer.json", dir);
        snprintf(cfg, dl + 32, "%s/tokenizer_config.json", dir);
    }
    char *buf = NULL;
    size_t len = 0;
    json_t *j = NULL;
    if (s_read_file(t->path, &buf, &len, err) < 0)
        goto fail;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)buf[i]) * 0x100000001b3ull;
    snprintf(t->fingerprint, sizeof t->fingerprint, "%016llx", (unsigned long long)h);
    j = s_parse_json(t->path, buf, len, 0, err);
    free(buf);
    if (!j)
        goto fail;
    if (!json_is_object(j)) {
        dm_err(err, "%s: top level is not a JSON object", t->path);
        goto fail;
    }
    /* the model first: added tokens and templates refer to its ids */
    if (s_parse_model(t, json_object_get(j, "model"), err) < 0 ||
        s_parse_normalizer(t, json_object_get(j, "normalizer"), "normalizer", 0, err) < 0 ||
        s_parse_pretok(t, json_object_get(j, "pre_tokenizer"), err) < 0 ||
        s_parse_post(t, json_object_get(j, "post_processor"), err) < 0 ||
        s_parse_decoder(t, json_object_get(j, "decoder"), err) < 0 ||
        s_parse_added(t, json_object_get(j, "added_tokens"), err) < 0)
        goto fail;
    json_decref(j);
    j = NULL;
    s_build_ids(t);
    if (cfg && s_load_config(t, cfg, err) < 0)
        goto fail;
    free(cfg);
    *out = t;
    return 0;
fail:
    json_decref(j);
    free(cfg);
    tokenizer_free(&t);
    return -1;
}

void tokenizer_free(Tokenizer **tp)
{
    if (!tp || !*tp)
        return;
    Tokenizer *t = *tp;
    for (int i = 0; i < t->npieces; i++)
        free(t->pieces[i]);
    free(t->pieces);
    free(t->piece_len);
    free(t->scores);
    tok_trie_free(&t->vocab);
    for (int i = 0; i < t->nadded; i++)
        free(t->added[i].content);
    free(t->added);
    tok_trie_free(&t->added_map);
    tok_trie_free(&t->added_raw);
    tok_trie_free(&t->added_norm);
    tok_trie_free(&t->special_set);
    for (int i = 0; i < t->nnorm; i++) {
        tok_charsmap_free(&t->norm[i].cm);
        free(t->norm[i].pat);
        free(t->norm[i].content);
    }
    free(t->norm);
    for (int i = 0; i < t->ntpl_single; i++)
        free(t->tpl_single[i].ids);
    for (int i = 0; i < t->ntpl_pair; i++)
        free(t->tpl_pair[i].ids);
    free(t->tpl_single);
    free(t->tpl_pair);
    free(t->id_piece);
    free(t->id_special);
    free(t->path);
    free(t);
    *tp = NULL;
}

/* ---- lookups ---- */

const char *tokenizer_id_to_piece(const Tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->vocab_size ? t->id_piece[id] : NULL;
}

int32_t tokenizer_piece_to_id(const Tokenizer *t, const char *piece)
{
    if (!piece)
        return -1;
    size_t n = strlen(piece);
    int32_t id = tok_trie_get(&t->added_map, piece, n);
    return id >= 0 ? id : tok_trie_get(&t->vocab, piece, n);
}

int tokenizer_vocab_size(const Tokenizer *t) { return t->vocab_size; }

int tokenizer_is_special(const Tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->vocab_size && t->id_special[id];
}

int tokenizer_default_cleanup(const Tokenizer *t) { return t->cleanup_default; }

const char *tokenizer_fingerprint(const Tokenizer *t) { return t->fingerprint; }
