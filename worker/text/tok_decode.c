/* tok_decode.c - ids back to text: the tokenizer.json decoder, then
 * transformers' clean_up_tokenization_spaces. */
#include "worker/text/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* transformers' clean_up_tokenization, one str.replace after another. */
static void s_cleanup(TokBuf *b)
{
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    for (size_t r = 0; r < sizeof from / sizeof *from; r++) {
        size_t fl = strlen(from[r]), tl = strlen(to[r]), o = 0;
        if (!b->p)
            return;
        /* replacements only shrink the text, so rewrite in place */
        for (size_t i = 0; i < b->len;) {
            if (b->len - i >= fl && !memcmp(b->p + i, from[r], fl)) {
                memcpy(b->p + o, to[r], tl);
                o += tl;
                i += fl;
            } else {
                b->p[o++] = b->p[i++];
            }
        }
        b->len = o;
        b->p[o] = '\0';
    }
}

int tokenizer_decode(const Tokenizer *t, const int32_t *ids, int n, int skip_special, int cleanup,
                     char **text, DmErr *err)
{
    TokBuf b = {0};
    tok_buf_put(&b, "", 0);
    int kept = 0;
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0) {
            free(b.p);
            return dm_err(err, "tokenizer_decode: id %d at position %d is negative", (int)id, i);
        }
        if (id >= t->vocab_size || !t->id_piece[id])
            continue;
        if (skip_special && t->id_special[id])
            continue;
        const char *p = t->id_piece[id];
        size_t pl = strlen(p);
        if (!t->decoder_metaspace) {
            if (kept)
                tok_buf_putc(&b, ' ');
            tok_buf_put(&b, p, pl);
        } else {
            int drop = kept == 0 && t->dec_prepend != TOK_PREPEND_NEVER;
            for (size_t k = 0; k < pl;) {
                if (pl - k >= t->dec_rep_len && !memcmp(p + k, t->dec_rep, t->dec_rep_len)) {
                    if (!drop)
                        tok_buf_putc(&b, ' ');
                    k += t->dec_rep_len;
                } else {
                    tok_buf_putc(&b, p[k++]);
                }
            }
        }
        kept++;
    }
    if (cleanup && !b.oom)
        s_cleanup(&b);
    if (b.oom) {
        free(b.p);
        return dm_err(err, "tokenizer: out of memory");
    }
    *text = b.p;
    return 0;
}
