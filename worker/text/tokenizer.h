/* tokenizer.h - Hugging Face tokenizer.json (Unigram / SentencePiece kind,
 * as Donut ships it) with the encode/decode semantics of the Rust
 * `tokenizers` library, plus a synthetic tokenizer for random-weight models.
 *
 * Supported pipeline parts (anything else is refused at load with an error
 * naming the file and the part):
 *   normalizer     null, Sequence, Precompiled (SentencePiece charsmap),
 *                  Replace (String, or Regex of the form "C{n,}", "C+",
 *                  "C{n}", "C{n,m}" where C is one literal character or \s),
 *                  NFC, NFD, NFKC, NFKD (utf8proc), Strip, Prepend
 *   pre_tokenizer  null, Metaspace (add_prefix_space or prepend_scheme/split),
 *                  WhitespaceSplit, or a Sequence [WhitespaceSplit, Metaspace]
 *   model          Unigram (with or without byte_fallback)
 *   post_processor null, TemplateProcessing, RobertaProcessing, BertProcessing
 *   decoder        null, Metaspace
 * truncation and padding in tokenizer.json are ignored.
 *
 * Fidelity (checked against tokenizers 0.23.2 on the golden cases and on
 * random text): exact for the Donut pipeline and the other parts above,
 * including added tokens (ids re-derived on load as tokenizers does, a
 * normalized added token reported by its normalized content), lstrip,
 * rstrip, single_word, byte fallback and prepend_scheme "first".  One known
 * difference: NFC/NFD/NFKC/NFKD use utf8proc's Unicode 15 tables while
 * tokenizers uses older ones, so marks assigned since (e.g. U+1ABF..U+1AFF)
 * may be ordered differently.  Donut does not use these normalizers.
 *
 * A loaded Tokenizer is read-only: every function taking a const Tokenizer *
 * may be called from several threads at once. */
#ifndef DM_TOKENIZER_H
#define DM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"

typedef struct Tokenizer Tokenizer;

/* Load DIR/tokenizer.json (and, if present, DIR/tokenizer_config.json for
 * clean_up_tokenization_spaces), or a path ending in ".json" directly. */
int tokenizer_load(const char *dir, Tokenizer **out, DmErr *err);
void tokenizer_free(Tokenizer **t);

/* Encode UTF-8 text to ids (malloc'ed into *ids, count in *n; *ids may be
 * NULL when *n is 0).  add_special applies the post-processor's template.
 * Invalid UTF-8 is an error.  The _n forms take an explicit byte length so
 * the text may contain U+0000. */
int tokenizer_encode(const Tokenizer *t, const char *text, int add_special, int32_t **ids, int *n,
                     DmErr *err);
int tokenizer_encode_n(const Tokenizer *t, const char *text, size_t len, int add_special,
                       int32_t **ids, int *n, DmErr *err);
int tokenizer_encode_pair(const Tokenizer *t, const char *a, const char *b, int add_special,
                          int32_t **ids, int *n, DmErr *err);
int tokenizer_encode_pair_n(const Tokenizer *t, const char *a, size_t alen, const char *b,
                            size_t blen, int add_special, int32_t **ids, int *n, DmErr *err);

/* Decode ids to malloc'ed UTF-8.  skip_special drops every special added
 * token (for Donut also <unk>, <pad>, <mask>); cleanup applies transformers'
 * clean_up_tokenization_spaces.  As in `tokenizers`, ids with no token
 * (>= vocab size, or gaps) are dropped silently; a negative id is an error. */
int tokenizer_decode(const Tokenizer *t, const int32_t *ids, int n, int skip_special, int cleanup,
                     char **text, DmErr *err);

/* transformers' clean_up_tokenization_spaces default for this folder: the
 * tokenizer_config.json key if present, else 1 (Donut-era behaviour). */
int tokenizer_default_cleanup(const Tokenizer *t);

/* The normalizer alone (no added-token splitting), for inspection and tests;
 * *out is malloc'ed and NUL-terminated, *out_len excludes the NUL. */
int tokenizer_normalize(const Tokenizer *t, const char *text, size_t len, char **out,
                        size_t *out_len, DmErr *err);

/* text lowercased code point by code point (Unicode's simple case
 * mapping, utf8proc_tolower), malloc'ed into *out; invalid UTF-8 is an
 * error.  The prompt of a model folder that asks for lowercased questions
 * (qa.h) goes through it. */
int tok_lowercase(const char *text, char **out, DmErr *err);

/* Vocabulary string or added-token content of id; NULL if there is none. */
const char *tokenizer_id_to_piece(const Tokenizer *t, int32_t id);
/* Id of an added token's content or a vocabulary piece; -1 if absent. */
int32_t tokenizer_piece_to_id(const Tokenizer *t, const char *piece);
/* Max id + 1 over vocabulary and added tokens. */
int tokenizer_vocab_size(const Tokenizer *t);
/* 1 if id is a special added token (dropped by skip_special). */
int tokenizer_is_special(const Tokenizer *t, int32_t id);
/* 16 hex digits identifying the tokenizer.json bytes (64-bit FNV-1a). */
const char *tokenizer_fingerprint(const Tokenizer *t);

/* Write DIR/tokenizer.json, tokenizer_config.json, special_tokens_map.json
 * and added_tokens.json for a random-weight model: exactly vocab_size ids,
 * 0..3 = <s> <pad> </s> <unk>, then Unigram pieces (U+2581, printable ASCII
 * characters, the same with U+2581 in front, English word pieces, then
 * seed-made syllable words), then <mask> (last vocabulary piece), and as the
 * last TOKENIZER_SYNTH_NSPECIAL ids the Donut task tokens in the order of
 * tokenizer_synth_specials.  Creates DIR if missing.  vocab_size >= 128. */
#define TOKENIZER_SYNTH_NSPECIAL 8
extern const char *const tokenizer_synth_specials[TOKENIZER_SYNTH_NSPECIAL];
int tokenizer_write_synthetic(const char *dir, int vocab_size, uint64_t seed, DmErr *err);

#endif
