/* tokenizer.c - loading a Hugging Face tokenizer.json into a Tokenizer (the
 * model and the added vocabulary here, the pipeline parts in tok_parts.c),
 * and the lookups.  Normalizing is in tok_normalize.c, encoding in
 * tok_encode.c, decoding in tok_decode.c, the tries in tok_trie.c, the
 * synthetic tokenizer in tok_synth.c. */
#include "worker/text/tok_internal.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- model ---- */

static int s_parse_model(Tokenizer *t, json_t *m, DmErr *err)
{
    const char *P = t->path;
    if (!json_is_object(m))
        return dm_err(err, "%s: \"model\" is missing or not an object", P);
    json_t *vocab = json_object_get(m, "vocab");
    const char *type = tok_json_type(m);
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
        if (tok_json_int(u, &v) < 0 || v < 0 || v >= (long long)n)
            return dm_err(err, "%s: model.unk_id must be an id below the vocabulary size %zu", P, n);
        t->unk_id = (int32_t)v;
    }
    if (tok_json_bool(t, m, "byte_fallback", 0, &t->byte_fallback, "model", err) < 0)
        return -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = t->byte_fallback ? tok_trie_get(&t->vocab, name, strlen(name)) : -1;
    }
    return 0;
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
        if (tok_json_bool(t, e, "special", 0, &a->special, w, err) < 0 ||
            tok_json_bool(t, e, "single_word", 0, &a->single_word, w, err) < 0 ||
            tok_json_bool(t, e, "lstrip", 0, &a->lstrip, w, err) < 0 ||
            tok_json_bool(t, e, "rstrip", 0, &a->rstrip, w, err) < 0 ||
            tok_json_bool(t, e, "normalized", !a->special, &a->normalized, w, err) < 0)
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
    TokBuf nb = {0};
    for (int k = 0; k < t->nadded; k++) {
        TokAdded *a = &t->added[k];
        a->piece = NULL;
        if (!a->normalized)
            continue;
        if (tok_normalize(t, a->content, a->len, &nb, NULL, err) < 0) {
            free(nb.p);
            goto done;
        }
        a->piece = dm_xmalloc(nb.len + 1);
        memcpy(a->piece, nb.p ? nb.p : "", nb.len);
        a->piece[nb.len] = '\0';
    }
    for (int j = 0; j < nplain; j++)
        order[nspecial + j] = plain[j];
    /* split patterns: specials first, then the others, first pattern wins */
    for (int j = 0; j < nspecial + nplain; j++) {
        const TokAdded *a = &list[order[j]];
        int32_t id = tok_trie_get(&t->added_map, a->content, a->len);
        if (!a->normalized) {
            tok_trie_insert_first(&t->added_raw, a->content, a->len, id);
            t->has_added_raw = 1;
            continue;
        }
        if (tok_normalize(t, a->content, a->len, &nb, NULL, err) < 0) {
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
        t->id_piece[t->added[i].id] = t->added[i].piece ? t->added[i].piece : t->added[i].content;
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

/* jansson lexes strings a byte at a time, which costs ~20 ms on Donut's
 * 316 KB charsmap, so each "precompiled_charsmap": "<base64>" value is cut
 * out of the text first (pointers into buf, kept in t->cut) and replaced
 * by a short marker that tok_parts.c resolves.  A value holding anything
 * but base64 characters is left for jansson.  Returns the new text, or
 * NULL when nothing was cut. */
static const char *s_find(const char *p, const char *e, const char *key, size_t kl)
{
    for (; (size_t)(e - p) >= kl; p++) {
        p = memchr(p, key[0], (size_t)(e - p) - kl + 1);
        if (!p)
            return NULL;
        if (!memcmp(p, key, kl))
            return p;
    }
    return NULL;
}

static const char *s_skip_ws(const char *q, const char *e)
{
    while (q < e && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'))
        q++;
    return q;
}

static char *s_cut_charsmaps(Tokenizer *t, const char *buf, size_t len, size_t *out_len)
{
    static const char key[] = "\"precompiled_charsmap\"";
    size_t kl = sizeof key - 1;
    TokBuf o = {0};
    size_t done = 0;
    for (const char *p = buf; (p = s_find(p, buf + len, key, kl)); ) {
        const char *q = s_skip_ws(p + kl, buf + len), *e = buf + len;
        p += kl;
        if (q >= e || *q != ':')
            continue;
        q = s_skip_ws(q + 1, e);
        if (q >= e || *q != '"')
            continue;
        const char *v = ++q;
        while (q < e && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
            q++;
        if (q >= e || *q != '"')
            continue;
        char mark[64];
        int ml = snprintf(mark, sizeof mark, TOK_CUT_MARK "%d", t->ncut);
        t->cut = dm_xrealloc(t->cut, sizeof *t->cut * (size_t)(t->ncut + 1));
        t->cut_len = dm_xrealloc(t->cut_len, sizeof *t->cut_len * (size_t)(t->ncut + 1));
        t->cut[t->ncut] = v;
        t->cut_len[t->ncut++] = (size_t)(q - v);
        tok_buf_put(&o, buf + done, (size_t)(v - buf) - done);
        tok_buf_put(&o, mark, (size_t)ml);
        done = (size_t)(q - buf);
        p = q;
    }
    if (!t->ncut)
        return NULL;
    tok_buf_put(&o, buf + done, len - done);
    if (o.oom) {
        free(o.p);
        t->ncut = 0;
        return NULL;
    }
    *out_len = o.len;
    return o.p;
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

static void s_drop_cuts(Tokenizer *t)
{
    free(t->cut);
    free(t->cut_len);
    t->cut = NULL;
    t->cut_len = NULL;
    t->ncut = 0;
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
    size_t clen = 0;
    char *cut = s_cut_charsmaps(t, buf, len, &clen);
    j = cut ? s_parse_json(t->path, cut, clen, 0, err) : s_parse_json(t->path, buf, len, 0, err);
    free(cut);
    if (!j)
        goto fail;
    if (!json_is_object(j)) {
        dm_err(err, "%s: top level is not a JSON object", t->path);
        goto fail;
    }
    /* the model first: added tokens and templates refer to its ids */
    if (s_parse_model(t, json_object_get(j, "model"), err) < 0 ||
        tok_parse_normalizer(t, json_object_get(j, "normalizer"), "normalizer", 0, err) < 0 ||
        tok_parse_pretok(t, json_object_get(j, "pre_tokenizer"), err) < 0 ||
        tok_parse_post(t, json_object_get(j, "post_processor"), err) < 0 ||
        tok_parse_decoder(t, json_object_get(j, "decoder"), err) < 0 ||
        s_parse_added(t, json_object_get(j, "added_tokens"), err) < 0)
        goto fail;
    json_decref(j);
    j = NULL;
    free(buf);
    buf = NULL;
    s_drop_cuts(t);
    s_build_ids(t);
    if (cfg && s_load_config(t, cfg, err) < 0)
        goto fail;
    free(cfg);
    *out = t;
    return 0;
fail:
    json_decref(j);
    free(buf);
    s_drop_cuts(t);
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
        free(t->added[i].content), free(t->added[i].piece);
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
