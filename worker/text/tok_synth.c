/* tok_synth.c - a working tokenizer folder for random-weight models made by
 * `docmint init`: same pipeline shape as Donut's (Unigram, Metaspace,
 * XLM-R template, task tokens as special added tokens), no charsmap, and
 * every printable ASCII character in the vocabulary so ASCII text always
 * round-trips without <unk>. */
#include "worker/text/tok_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *const tokenizer_synth_specials[TOKENIZER_SYNTH_NSPECIAL] = {
    "<s_docvqa>", "<s_question>", "</s_question>", "<s_answer>",
    "</s_answer>", "<yes/>",      "<no/>",         "<sep/>",
};

#define S_META "\xE2\x96\x81" /* U+2581 */
#define S_MIN_VOCAB 128

/* Frequent document / question words, most frequent first. */
static const char *const s_words[] = {
    "the", "of", "and", "to", "in", "is", "for", "on", "what", "date", "total", "amount", "name",
    "number", "a", "at", "by", "with", "from", "which", "who", "when", "where", "how", "are", "was",
    "this", "that", "page", "invoice", "address", "phone", "fax", "no", "yes", "due", "paid", "tax",
    "price", "quantity", "item", "description", "company", "inc", "ltd", "street", "city", "state",
    "zip", "code", "account", "report", "form", "table", "figure", "year", "month", "day", "time",
    "department", "office", "manager", "director", "signature", "approved", "received", "sent",
    "subject", "re", "dear", "sincerely", "please", "thank", "you", "we", "our", "your", "their",
    "it", "be", "as", "or", "an", "not", "all", "per", "cent", "percent", "value", "cost", "sales",
    "balance", "payment", "order", "product", "brand", "research", "study", "results", "data",
    "program", "project", "budget", "meeting", "agenda", "minutes", "memo", "letter", "fiscal",
    "quarter", "annual", "net", "gross", "income", "expenses", "revenue", "profit", "loss", "market",
    "share", "growth", "rate", "level", "test", "sample", "group", "control", "type", "size",
    "weight", "height", "age", "male", "female", "total", "sum", "average", "mean", "range", "list",
    "section", "title", "author", "volume", "issue", "pages", "journal", "university", "school",
    "center", "national", "american", "new", "york", "washington", "tobacco", "cigarette", "health",
    "medical", "science", "committee", "board", "members", "chairman", "president", "vice",
    "secretary", "treasurer", "mr", "mrs", "ms", "dr", "jan", "feb", "mar", "apr", "may", "jun",
    "jul", "aug", "sep", "oct", "nov", "dec", "monday", "friday", "question", "answer", "mentioned",
    "given", "shown", "written", "stated", "first", "second", "last", "above", "below", "top",
    "bottom", "left", "right", "heading", "document", "file", "ref", "id", "contact", "email",
};
/* Word-internal pieces (no U+2581). */
static const char *const s_suffixes[] = {
    "s", "ed", "ing", "er", "es", "ly", "tion", "al", "ment", "ness", "ity", "ive", "ous", "ers",
    "ted", "ions", "able", "00", "000", "19", "20", "th", "nd", "rd", "st", "an", "en", "in", "on",
    "re", "te", "at", "or", "ar", "is", "it", "ic", "le", "ro", "ri", "ra", "li", "la", "lo", "de",
};
static const char *const s_onsets[] = {"b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p",
                                       "r", "s", "t", "v", "w", "y", "z", "ch", "sh", "th", "st",
                                       "tr", "pr", "br", "gr", "pl", "cl", ""};
static const char *const s_vowels[] = {"a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "ee", "oa"};
static const char *const s_codas[] = {"", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng"};
#define S_LEN(a) (sizeof a / sizeof *a)

static uint64_t s_mix(uint64_t *st)
{
    uint64_t z = (*st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double s_unit(uint64_t *st) { return (double)(s_mix(st) >> 11) / 9007199254740992.0; }

typedef struct SynVocab {
    json_t *arr;
    TokTrie seen;
    int n, max;
} SynVocab;

/* Add a piece unless present or the vocabulary is full; scores are float32
 * values widened, like a converted SentencePiece model's. */
static int s_add(SynVocab *v, const char *piece, double score)
{
    size_t len = strlen(piece);
    if (v->n >= v->max || tok_trie_get(&v->seen, piece, len) >= 0)
        return 0;
    tok_trie_insert(&v->seen, piece, len, v->n);
    json_array_append_new(v->arr, json_pack("[s f]", piece, (double)(float)score));
    v->n++;
    return 1;
}

static json_t *s_added_tok(int id, const char *content, int lstrip)
{
    return json_pack("{s:i s:s s:b s:b s:b s:b s:b}", "id", id, "content", content, "single_word", 0,
                     "lstrip", lstrip, "rstrip", 0, "normalized", 0, "special", 1);
}

static json_t *s_metaspace(void)
{
    return json_pack("{s:s s:s s:s s:b}", "type", "Metaspace", "replacement", S_META,
                     "prepend_scheme", "always", "split", 1);
}

static json_t *s_tpl_special(const char *id)
{
    return json_pack("{s:{s:s s:i}}", "SpecialToken", "id", id, "type_id", 0);
}

static json_t *s_tpl_seq(const char *id)
{
    return json_pack("{s:{s:s s:i}}", "Sequence", "id", id, "type_id", 0);
}

static json_t *s_post_processor(void)
{
    json_t *single = json_pack("[o o o]", s_tpl_special("<s>"), s_tpl_seq("A"), s_tpl_special("</s>"));
    json_t *pair = json_pack("[o o o o o o]", s_tpl_special("<s>"), s_tpl_seq("A"),
                             s_tpl_special("</s>"), s_tpl_special("</s>"), s_tpl_seq("B"),
                             s_tpl_special("</s>"));
    json_t *specials = json_pack("{s:{s:s s:[i] s:[s]} s:{s:s s:[i] s:[s]}}", "</s>", "id", "</s>",
                                 "ids", 2, "tokens", "</s>", "<s>", "id", "<s>", "ids", 0, "tokens", "<s>");
    return json_pack("{s:s s:o s:o s:o}", "type", "TemplateProcessing", "single", single, "pair", pair,
                     "special_tokens", specials);
}

static json_t *s_special_map(void)
{
    json_t *extra = json_array();
    for (int i = 0; i < TOKENIZER_SYNTH_NSPECIAL; i++)
        json_array_append_new(extra, json_string(tokenizer_synth_specials[i]));
    return json_pack("{s:s s:s s:s s:{s:s s:b s:b s:b s:b} s:s s:s s:s s:o}", "bos_token", "<s>",
                     "cls_token", "<s>", "eos_token", "</s>", "mask_token", "content", "<mask>",
                     "lstrip", 1, "normalized", 1, "rstrip", 0, "single_word", 0, "pad_token",
                     "<pad>", "sep_token", "</s>", "unk_token", "<unk>", "additional_special_tokens",
                     extra);
}

static int s_write(json_t *j, const char *dir, const char *name, size_t flags, DmErr *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!j)
        return dm_err(err, "%s: could not build the JSON", path);
    int rc = json_dump_file(j, path, flags | JSON_PRESERVE_ORDER);
    json_decref(j);
    return rc ? dm_err_errno(err, "%s: cannot write", path) : 0;
}

int tokenizer_write_synthetic(const char *dir, int vocab_size, uint64_t seed, DmErr *err)
{
    if (vocab_size < S_MIN_VOCAB)
        return dm_err(err, "tokenizer_write_synthetic: vocab_size %d is too small (at least %d: 4 "
                           "control tokens, 95 characters, <mask>, %d task tokens and some words)",
                      vocab_size, S_MIN_VOCAB, TOKENIZER_SYNTH_NSPECIAL);
    if (vocab_size > (1 << 22))
        return dm_err(err, "tokenizer_write_synthetic: vocab_size %d is too large (at most %d)",
                      vocab_size, 1 << 22);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return dm_err_errno(err, "%s: cannot create directory", dir);

    uint64_t rng = seed ^ 0x746f6b656e697a65ull;
    SynVocab v = {json_array(), {0}, 0, vocab_size - TOKENIZER_SYNTH_NSPECIAL - 1};
    tok_trie_init(&v.seen);
    const char *ctrl[] = {"<s>", "<pad>", "</s>", "<unk>"};
    for (int i = 0; i < 4; i++)
        s_add(&v, ctrl[i], 0.0);
    s_add(&v, S_META, -3.0 - 0.2 * s_unit(&rng));
    char buf[64];
    for (int c = 0x21; c < 0x7F; c++) {
        snprintf(buf, sizeof buf, "%c", c);
        s_add(&v, buf, -7.0 - s_unit(&rng));
    }
    for (int c = 0x21; c < 0x7F; c++) {
        snprintf(buf, sizeof buf, S_META "%c", c);
        s_add(&v, buf, -8.0 - s_unit(&rng));
    }
    int nw = (int)S_LEN(s_words);
    for (int i = 0; i < nw; i++) {
        double base = -4.0 - 3.0 * i / nw;
        snprintf(buf, sizeof buf, S_META "%s", s_words[i]);
        s_add(&v, buf, base - 0.3 * s_unit(&rng));
        /* capitalised at sentence starts and in headings */
        snprintf(buf, sizeof buf, S_META "%c%s", s_words[i][0] - 32, s_words[i] + 1);
        s_add(&v, buf, base - 1.0 - 0.3 * s_unit(&rng));
    }
    for (size_t i = 0; i < S_LEN(s_suffixes); i++)
        s_add(&v, s_suffixes[i], -5.0 - 2.0 * s_unit(&rng));
    /* fill the rest with seed-made syllable words, with and without U+2581 */
    long tries = 0, limit = 1000L * vocab_size;
    while (v.n < v.max && tries++ < limit) {
        int nsyl = 1 + (int)(s_mix(&rng) % 3);
        int pre = (int)(s_mix(&rng) & 1);
        size_t k = 0;
        if (pre)
            k += (size_t)snprintf(buf, sizeof buf, S_META);
        for (int s = 0; s < nsyl; s++)
            k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%s%s",
                                  s_onsets[s_mix(&rng) % S_LEN(s_onsets)],
                                  s_vowels[s_mix(&rng) % S_LEN(s_vowels)],
                                  s_codas[s_mix(&rng) % S_LEN(s_codas)]);
        s_add(&v, buf, -9.0 - 3.0 * s_unit(&rng));
    }
    int full = v.n == v.max;
    tok_trie_free(&v.seen);
    if (!full) {
        json_decref(v.arr);
        return dm_err(err, "tokenizer_write_synthetic: could not make %d distinct pieces", v.max);
    }
    /* <mask> closes the model vocabulary, as in XLM-R */
    int mask_id = v.n;
    json_array_append_new(v.arr, json_pack("[s f]", "<mask>", 0.0));

    json_t *added = json_array();
    for (int i = 0; i < 4; i++)
        json_array_append_new(added, s_added_tok(i, ctrl[i], 0));
    json_array_append_new(added, s_added_tok(mask_id, "<mask>", 1));
    json_t *added_file = json_object();
    for (int i = 0; i < TOKENIZER_SYNTH_NSPECIAL; i++) {
        int id = vocab_size - TOKENIZER_SYNTH_NSPECIAL + i;
        json_array_append_new(added, s_added_tok(id, tokenizer_synth_specials[i], 0));
        json_object_set_new(added_file, tokenizer_synth_specials[i], json_integer(id));
    }
    json_t *norm = json_pack("{s:s s:[{s:s s:{s:s} s:s}]}", "type", "Sequence", "normalizers", "type",
                             "Replace", "pattern", "Regex", " {2,}", "content", " ");
    json_t *tok = json_pack("{s:s s:n s:n s:o s:o s:o s:o s:o s:{s:s s:i s:o s:b}}", "version", "1.0",
                            "truncation", "padding", "added_tokens", added, "normalizer", norm,
                            "pre_tokenizer", s_metaspace(), "post_processor", s_post_processor(),
                            "decoder", s_metaspace(), "model", "type", "Unigram", "unk_id", 3, "vocab",
                            v.arr, "byte_fallback", 0);
    json_t *cfg = s_special_map();
    if (cfg) {
        json_object_set_new(cfg, "tokenizer_class", json_string("XLMRobertaTokenizer"));
        json_object_set_new(cfg, "processor_class", json_string("DonutProcessor"));
        json_object_set_new(cfg, "clean_up_tokenization_spaces", json_true());
        json_object_set_new(cfg, "sp_model_kwargs", json_object());
    }
    if (s_write(tok, dir, "tokenizer.json", JSON_COMPACT, err) < 0) {
        json_decref(cfg);
        json_decref(added_file);
        return -1;
    }
    if (s_write(cfg, dir, "tokenizer_config.json", JSON_INDENT(2), err) < 0) {
        json_decref(added_file);
        return -1;
    }
    if (s_write(s_special_map(), dir, "special_tokens_map.json", JSON_INDENT(2), err) < 0) {
        json_decref(added_file);
        return -1;
    }
    return s_write(added_file, dir, "added_tokens.json", JSON_INDENT(2), err);
}
