/* tok_internal.h - the Tokenizer's insides, shared by worker/text/tokenizer.c and
 * the worker/text/tok_*.c files.  Not for use outside the tokenizer (tests may
 * look, to check intermediate stages). */
#ifndef DM_TOK_INTERNAL_H
#define DM_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"
#include "worker/text/tokenizer.h"

/* ---- byte trie (tok_trie.c) ----
 * Edges live in one open-addressing hash table keyed by (node, byte), so a
 * 250k-piece vocabulary costs a few MB and each step is one probe. */
typedef struct TokTrie {
    int32_t *value; /* per node: stored value or -1 */
    int32_t nnodes, capnodes;
    uint64_t *ekey; /* (node << 8 | byte) + 1; 0 = empty slot */
    int32_t *echild;
    size_t ecap, nedges;
} TokTrie;

void tok_trie_init(TokTrie *tr);
void tok_trie_free(TokTrie *tr);
/* Insert key -> value (value >= 0), overwriting an earlier value. */
void tok_trie_insert(TokTrie *tr, const char *key, size_t len, int32_t value);
/* Insert only if key has no value yet (first pattern wins). */
void tok_trie_insert_first(TokTrie *tr, const char *key, size_t len, int32_t value);
/* Child of node along byte b, or -1.  The root is node 0. */
int32_t tok_trie_child(const TokTrie *tr, int32_t node, unsigned char b);
/* Value of exactly key, or -1. */
int32_t tok_trie_get(const TokTrie *tr, const char *key, size_t len);

/* ---- SentencePiece precompiled charsmap (tok_trie.c) ---- */
typedef struct TokCharsmap {
    uint32_t *units; /* darts-clone double array */
    size_t nunits;
    char *pool; /* replacement strings, NUL-separated */
    size_t pool_len;
} TokCharsmap;

/* Decode the base64 blob; errors name `where`. */
int tok_charsmap_load(TokCharsmap *cm, const char *b64, size_t b64len, const char *where, DmErr *err);
void tok_charsmap_free(TokCharsmap *cm);
/* Shortest key that is a prefix of s[0..len): 1 and its replacement, else 0. */
int tok_charsmap_lookup(const TokCharsmap *cm, const uint8_t *s, size_t len, const char **rep,
                        size_t *rep_len);

/* ---- growable byte buffer (tok_normalize.c); p stays NUL-terminated ---- */
typedef struct TokBuf {
    char *p;
    size_t len, cap;
    int oom;
} TokBuf;
void tok_buf_put(TokBuf *b, const void *s, size_t n);
void tok_buf_putc(TokBuf *b, char c);

/* ---- pipeline description ---- */
enum { TOK_NORM_PRECOMPILED, TOK_NORM_REPLACE, TOK_NORM_NFC, TOK_NORM_NFD, TOK_NORM_NFKC,
       TOK_NORM_NFKD, TOK_NORM_STRIP, TOK_NORM_PREPEND };

typedef struct TokNormStep {
    int kind;
    TokCharsmap cm;
    /* Replace: a literal pattern, or a one-atom regex repeated qmin..qmax
     * times (qmax -1 = unbounded); atom_ws matches Unicode White_Space. */
    int is_regex;
    char *pat;
    size_t pat_len;
    int atom_ws;
    int32_t atom_cp;
    int qmin, qmax;
    char *content; /* Replace content, Prepend text */
    size_t content_len;
    int strip_left, strip_right;
} TokNormStep;

enum { TOK_PREPEND_NEVER, TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST };

typedef struct TokPreTok {
    int whitespace_split; /* WhitespaceSplit runs before Metaspace */
    int metaspace;
    char rep[8]; /* Metaspace replacement character, UTF-8 */
    size_t rep_len;
    int prepend; /* TOK_PREPEND_* */
    int split;
} TokPreTok;

typedef struct TokAdded {
    int32_t id;
    char *content;
    char *piece; /* what id_to_token gives: the normalized content when
                  * normalized is set (tokenizers stores it so), else NULL */
    size_t len;
    int special, lstrip, rstrip, single_word, normalized;
} TokAdded;

/* One post-processor template item: a sequence (0 = A, 1 = B) or ids. */
typedef struct TokTplItem {
    int seq; /* 0, 1, or -1 for special ids */
    int32_t *ids;
    int nids;
} TokTplItem;

struct Tokenizer {
    char *path; /* the tokenizer.json, for messages */
    char fingerprint[17];
    int cleanup_default;

    /* model: Unigram */
    int npieces;
    char **pieces;
    size_t *piece_len;
    double *scores;
    TokTrie vocab;
    int32_t unk_id; /* -1 if none */
    double min_score;
    int byte_fallback;
    int32_t byte_ids[256]; /* id of "<0xXX>" or -1 */

    /* added tokens as tokenizers rebuilds them on load: one entry per id
     * (sorted by id), content -> id, the split patterns of tokens with
     * normalized false (raw text) and true (normalized content, matched in
     * normalized text) -> id, and the set of special contents */
    int nadded;
    TokAdded *added;
    TokTrie added_map;
    TokTrie added_raw, added_norm;
    int has_added_raw, has_added_norm;
    TokTrie special_set;

    TokNormStep *norm;
    int nnorm;
    int has_pretok;
    TokPreTok pretok;

    int has_post;
    TokTplItem *tpl_single, *tpl_pair;
    int ntpl_single, ntpl_pair;

    int decoder_metaspace; /* else join with " " */
    char dec_rep[8];
    size_t dec_rep_len;
    int dec_prepend;

    /* per id (0..vocab_size-1): string (NULL for gaps) and special flag */
    int vocab_size;
    const char **id_piece;
    uint8_t *id_special;

    /* during tokenizer_load only: charsmap base64 strings cut out of the
     * file text before JSON parsing (see tokenizer.c) */
    const char **cut;
    size_t *cut_len;
    int ncut;
};

/* The JSON stand-in for the i-th cut-out charsmap string. */
#define TOK_CUT_MARK "@docmint-cut:"


/* tok_parts.c: JSON helpers (errors name t->path and `where`) and parsers
 * of the pipeline parts; json_t is jansson's. */
struct json_t;
int tok_json_bool(const Tokenizer *t, struct json_t *o, const char *key, int dflt, int *out,
                  const char *where, DmErr *err);
int tok_json_int(struct json_t *v, long long *out);
const char *tok_json_type(struct json_t *o);
int tok_parse_normalizer(Tokenizer *t, struct json_t *n, const char *where, int depth, DmErr *err);
int tok_parse_pretok(Tokenizer *t, struct json_t *o, DmErr *err);
int tok_parse_post(Tokenizer *t, struct json_t *pp, DmErr *err);
int tok_parse_decoder(Tokenizer *t, struct json_t *d, DmErr *err);

/* tokenizer.c: the added-token entry of id, or NULL */
const TokAdded *tok_added_find(const Tokenizer *t, int32_t id);

/* tok_normalize.c */
/* Run the normalizer on s[0..len).  flags (may be NULL) gets one byte per
 * output byte: 1 if tokenizers aligns it to s[0] (see tok_normalize.c). */
int tok_normalize(const Tokenizer *t, const char *s, size_t len, TokBuf *out, TokBuf *flags, DmErr *err);
/* Decode UTF-8 at s[0..len) into *cp; bytes consumed, or -1 if invalid. */
int tok_utf8_next(const uint8_t *s, size_t len, int32_t *cp);
/* The same for walking text that should be UTF-8 but may not be (a
 * damaged charsmap can put bytes of a broken character into the
 * normalized text): an invalid byte is one step of 1 with *cp = U+FFFD, so
 * the step is at least 1 whenever len > 0 and a loop always advances. */
int tok_utf8_step(const uint8_t *s, size_t len, int32_t *cp);
/* The code point ending at s[end-1] (s valid UTF-8, end > 0); *start = its offset. */
int32_t tok_prev_cp(const char *s, size_t end, size_t *start);
int tok_utf8_check(const char *s, size_t len, DmErr *err);
int tok_is_white_space(int32_t cp);

/* tok_encode.c */
/* Pre-tokenize one normalized piece: the words, as offsets into *work
 * (pairs of start/end in *spans, count in *nspans).  at0[i] (may be NULL)
 * tells whether byte i maps back to offset 0 of the whole text, for
 * Metaspace's prepend_scheme "first". */
int tok_pre_tokenize(const Tokenizer *t, const char *s, size_t len, const uint8_t *at0, TokBuf *work,
                     size_t **spans, int *nspans, DmErr *err);

#endif
