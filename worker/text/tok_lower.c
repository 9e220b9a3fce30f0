/* tok_lower.c - lowercasing UTF-8 text code point by code point
 * (tokenizer.h: tok_lowercase), the simple case mapping of Unicode that
 * Python's str.lower() also applies to every letter outside a few
 * multi-character special cases (such as U+0130). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "worker/text/tokenizer.h"

int tok_lowercase(const char *text, char **out, DmErr *err)
{
    *out = NULL;
    size_t len = strlen(text);
    /* a lowercase letter never takes more than 4 bytes, nor more than
     * 1.5 times its capital's (U+023A -> U+2C65: 2 bytes to 3) */
    char *o = malloc(2 * len + 4);
    if (!o)
        return dm_err(err, "out of memory");
    const utf8proc_uint8_t *s = (const utf8proc_uint8_t *)text;
    size_t i = 0, k = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (n <= 0) {
            free(o);
            return dm_err(err, "invalid UTF-8 at byte %zu", i);
        }
        k += (size_t)utf8proc_encode_char(utf8proc_tolower(cp), (utf8proc_uint8_t *)o + k);
        i += (size_t)n;
    }
    o[k] = '\0';
    *out = o;
    return 0;
}
