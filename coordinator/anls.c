/* anls.c - ANLS over UTF-8 strings with Python's string semantics.
 *
 * Python's str.isspace, str.lower and str.upper work on code points with
 * full Unicode case mappings; utf8proc supplies the character properties.
 * Full upper-case mappings that lengthen a string (German sharp s, the
 * Latin ligatures) are counted through case folding, which lengthens the
 * same characters by the same amount. */
#include "coordinator/anls.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* Decode UTF-8 into code points (invalid bytes become U+FFFD, one each). */
static int32_t *s_decode(const char *s, int *n)
{
    size_t len = strlen(s);
    int32_t *cp = malloc((len + 1) * sizeof *cp);
    int k = 0;
    if (!cp)
        abort();
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    while (len > 0) {
        utf8proc_int32_t c;
        utf8proc_ssize_t used = utf8proc_iterate(p, (utf8proc_ssize_t)len, &c);
        if (used <= 0) {
            c = 0xFFFD;
            used = 1;
        }
        cp[k++] = c;
        p += used;
        len -= (size_t)used;
    }
    *n = k;
    return cp;
}

/* Python's str.isspace: bidirectional class WS, B or S, or category Zs. */
static int s_isspace(int32_t c)
{
    const utf8proc_property_t *p = utf8proc_get_property(c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

/* Lower-case one code point into out (Python's full mapping for the one
 * multi-character case, U+0130); returns the number written. */
static int s_lower(int32_t c, int32_t *out)
{
    if (c == 0x130) { /* LATIN CAPITAL LETTER I WITH DOT ABOVE -> i + combining dot */
        out[0] = 'i';
        out[1] = 0x307;
        return 2;
    }
    out[0] = utf8proc_tolower(c);
    return 1;
}

/* Normalised code points: strip, lower, collapse whitespace runs. */
static int32_t *s_norm_cp(const char *s, int *n)
{
    int m;
    int32_t *cp = s_decode(s, &m);
    int32_t *out = malloc((2 * (size_t)m + 1) * sizeof *out);
    if (!out)
        abort();
    int k = 0, pending_space = 0;
    for (int i = 0; i < m; i++) {
        if (s_isspace(cp[i])) {
            pending_space = k > 0;
            continue;
        }
        if (pending_space)
            out[k++] = ' ';
        pending_space = 0;
        k += s_lower(cp[i], out + k);
    }
    free(cp);
    *n = k;
    return out;
}

char *anls_normalize(const char *s)
{
    int n;
    int32_t *cp = s_norm_cp(s, &n);
    char *out = malloc(4 * (size_t)n + 1);
    if (!out)
        abort();
    size_t o = 0;
    for (int i = 0; i < n; i++)
        o += (size_t)utf8proc_encode_char(cp[i], (utf8proc_uint8_t *)out + o);
    out[o] = '\0';
    free(cp);
    return out;
}

/* len(s.upper()) in code points. */
static int s_upper_len(const char *s)
{
    int n;
    int32_t *cp = s_decode(s, &n);
    int len = 0;
    for (int i = 0; i < n; i++) {
        utf8proc_int32_t buf[8];
        int last = 0;
        utf8proc_ssize_t k =
            utf8proc_decompose_char(cp[i], buf, 8, UTF8PROC_CASEFOLD, &last);
        /* Case folding lengthens exactly where full upper-casing does for
         * the letters that matter here (sharp s, ligatures); other letters
         * map one to one. */
        int grow = 1;
        if (k > 1 && utf8proc_toupper(cp[i]) == cp[i] &&
            utf8proc_category(cp[i]) != UTF8PROC_CATEGORY_LU)
            grow = (int)k; /* no simple upper mapping: the full one expands */
        len += grow;
    }
    free(cp);
    return len;
}

static int s_lev(const int32_t *a, int n, const int32_t *b, int m)
{
    int *row = malloc(((size_t)m + 1) * sizeof *row);
    if (!row)
        abort();
    for (int j = 0; j <= m; j++)
        row[j] = j;
    for (int i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= m; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    int d = row[m];
    free(row);
    return d;
}

int anls_levenshtein(const char *a, const char *b)
{
    int n, m;
    int32_t *ca = s_decode(a, &n), *cb = s_decode(b, &m);
    int d = s_lev(ca, n, cb, m);
    free(ca);
    free(cb);
    return d;
}

double anls_question(const char *pred, const char *const *gold, int ngold)
{
    if (ngold <= 0)
        return 0.0;
    int pn;
    int32_t *p = s_norm_cp(pred ? pred : "", &pn);
    int plen = s_upper_len(pred ? pred : "");
    double best = 1.0;
    for (int g = 0; g < ngold; g++) {
        int gn;
        int32_t *gc = s_norm_cp(gold[g], &gn);
        int glen = s_upper_len(gold[g]);
        int len = glen > plen ? glen : plen;
        double v = len == 0 ? 0.0 : (double)s_lev(gc, gn, p, pn) / len;
        if (v < best)
            best = v;
        free(gc);
    }
    free(p);
    double score = 1.0 - best;
    return score < ANLS_THRESHOLD ? 0.0 : score;
}
