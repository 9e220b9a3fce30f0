/* tok_parts.c - reading the pipeline parts of tokenizer.json (normalizer,
 * pre-tokenizer, post-processor, decoder) into a Tokenizer, refusing what
 * the encoder does not implement with an error naming the file and part. */
#include "worker/text/tok_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small JSON helpers (errors name the file and the JSON path) ---- */

int tok_json_bool(const Tokenizer *t, json_t *o, const char *key, int dflt, int *out,
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
int tok_json_int(json_t *v, long long *out)
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

const char *tok_json_type(json_t *o) { return json_string_value(json_object_get(o, "type")); }

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

int tok_parse_normalizer(Tokenizer *t, json_t *n, const char *where, int depth, DmErr *err)
{
    const char *P = t->path;
    if (!n || json_is_null(n))
        return 0;
    const char *type = tok_json_type(n);
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
            if (tok_parse_normalizer(t, json_array_get(arr, i), sub, depth + 1, err) < 0)
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
        const char *b64 = json_string_value(cm);
        size_t b64len = json_string_length(cm), ml = strlen(TOK_CUT_MARK);
        if (b64len > ml && !memcmp(b64, TOK_CUT_MARK, ml)) {
            int k = atoi(b64 + ml);
            if (k < 0 || k >= t->ncut)
                return dm_err(err, "%s: %s.precompiled_charsmap is not valid base64", P, where);
            b64 = t->cut[k];
            b64len = t->cut_len[k];
        }
        return tok_charsmap_load(&st->cm, b64, b64len, w, err);
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
        if (tok_json_bool(t, n, "strip_left", 1, &st->strip_left, where, err) < 0 ||
            tok_json_bool(t, n, "strip_right", 1, &st->strip_right, where, err) < 0)
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
        if (tok_json_bool(t, o, "add_prefix_space", 1, &add, where, err) < 0)
            return -1;
        *prepend = add ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    }
    return split ? tok_json_bool(t, o, "split", 1, split, where, err) : 0;
}

static int s_parse_pretok_one(Tokenizer *t, json_t *o, const char *where, DmErr *err)
{
    const char *type = tok_json_type(o);
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

int tok_parse_pretok(Tokenizer *t, json_t *o, DmErr *err)
{
    if (!o || json_is_null(o))
        return 0;
    t->has_pretok = 1;
    const char *type = tok_json_type(o);
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
                if (tok_json_int(json_array_get(ids, (size_t)k), &x) < 0 || x < 0 || x > INT32_MAX) {
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
    if (!json_is_array(e) || tok_json_int(json_array_get(e, 1), &x) < 0 || x < 0 || x > INT32_MAX)
        return dm_err(err, "%s: post_processor.%s must be [token, id]", t->path, key);
    *id = (int32_t)x;
    return 0;
}

int tok_parse_post(Tokenizer *t, json_t *pp, DmErr *err)
{
    if (!pp || json_is_null(pp))
        return 0;
    const char *type = tok_json_type(pp);
    t->has_post = 1;
    if (type && !strcmp(type, "TemplateProcessing"))
        return s_parse_template(t, pp, "single", 0, &t->tpl_single, &t->ntpl_single, err) < 0 ||
                       s_parse_template(t, pp, "pair", 1, &t->tpl_pair, &t->ntpl_pair, err) < 0
                   ? -1
                   : 0;
    if (type && (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing"))) {
        int32_t cls = 0, sep = 0;
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

int tok_parse_decoder(Tokenizer *t, json_t *d, DmErr *err)
{
    if (!d || json_is_null(d))
        return 0;
    const char *type = tok_json_type(d);
    if (type && !strcmp(type, "Metaspace")) {
        t->decoder_metaspace = 1;
        return s_parse_metaspace(t, d, "decoder", t->dec_rep, &t->dec_rep_len, &t->dec_prepend, NULL, err);
    }
    return dm_err(err, "%s: decoder type \"%s\" is not supported (only Metaspace)", t->path,
                  type ? type : "?");
}

