/* anls.c - ANLS over UTF-8 strings with Python's string semantics.
 *
 * The official DocVQA script normalises both answers with
 * ' '.join(s.strip().lower().split()), takes the Levenshtein distance of the
 * normalised strings over code points, and divides it by
 * max(len(gold.upper()), len(pred.upper())) of the RAW strings.  So this file
 * follows Python 3's str methods:
 *   - str.isspace: bidirectional class WS, B or S, or category Zs;
 *   - str.lower: the full lower-case mapping, not case folding.  It is the
 *     simple mapping for every code point except U+0130 (I with dot above,
 *     which becomes i + U+0307) and the capital sigma, which becomes the
 *     final sigma at the end of a word.  Sharp s and the ligatures have no
 *     lower-case mapping and stay as they are;
 *   - len(str.upper()): one per code point except those whose full
 *     upper-case mapping (Unicode's SpecialCasing.txt, unconditional part)
 *     is longer, listed in s_upper_long.
 * utf8proc supplies the character properties and simple mappings. */
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

/* Code points whose full upper-case mapping is longer than one code point,
 * with its length (SpecialCasing.txt, Unicode 14, unconditional mappings:
 * sharp s, the Latin, Armenian and Greek ligatures and the Greek letters
 * with iota subscript or dialytika and tonos). */
static const struct {
    int32_t cp;
    int8_t len;
} s_upper_long[] = {
    {0x00DF, 2}, {0x0149, 2}, {0x01F0, 2}, {0x0390, 3}, {0x03B0, 3}, {0x0587, 2}, {0x1E96, 2},
    {0x1E97, 2}, {0x1E98, 2}, {0x1E99, 2}, {0x1E9A, 2}, {0x1F50, 2}, {0x1F52, 3}, {0x1F54, 3},
    {0x1F56, 3}, {0x1F80, 2}, {0x1F81, 2}, {0x1F82, 2}, {0x1F83, 2}, {0x1F84, 2}, {0x1F85, 2},
    {0x1F86, 2}, {0x1F87, 2}, {0x1F88, 2}, {0x1F89, 2}, {0x1F8A, 2}, {0x1F8B, 2}, {0x1F8C, 2},
    {0x1F8D, 2}, {0x1F8E, 2}, {0x1F8F, 2}, {0x1F90, 2}, {0x1F91, 2}, {0x1F92, 2}, {0x1F93, 2},
    {0x1F94, 2}, {0x1F95, 2}, {0x1F96, 2}, {0x1F97, 2}, {0x1F98, 2}, {0x1F99, 2}, {0x1F9A, 2},
    {0x1F9B, 2}, {0x1F9C, 2}, {0x1F9D, 2}, {0x1F9E, 2}, {0x1F9F, 2}, {0x1FA0, 2}, {0x1FA1, 2},
    {0x1FA2, 2}, {0x1FA3, 2}, {0x1FA4, 2}, {0x1FA5, 2}, {0x1FA6, 2}, {0x1FA7, 2}, {0x1FA8, 2},
    {0x1FA9, 2}, {0x1FAA, 2}, {0x1FAB, 2}, {0x1FAC, 2}, {0x1FAD, 2}, {0x1FAE, 2}, {0x1FAF, 2},
    {0x1FB2, 2}, {0x1FB3, 2}, {0x1FB4, 2}, {0x1FB6, 2}, {0x1FB7, 3}, {0x1FBC, 2}, {0x1FC2, 2},
    {0x1FC3, 2}, {0x1FC4, 2}, {0x1FC6, 2}, {0x1FC7, 3}, {0x1FCC, 2}, {0x1FD2, 3}, {0x1FD3, 3},
    {0x1FD6, 2}, {0x1FD7, 3}, {0x1FE2, 3}, {0x1FE3, 3}, {0x1FE4, 2}, {0x1FE6, 2}, {0x1FE7, 3},
    {0x1FF2, 2}, {0x1FF3, 2}, {0x1FF4, 2}, {0x1FF6, 2}, {0x1FF7, 3}, {0x1FFC, 2}, {0xFB00, 2},
    {0xFB01, 2}, {0xFB02, 2}, {0xFB03, 3}, {0xFB04, 3}, {0xFB05, 2}, {0xFB06, 2}, {0xFB13, 2},
    {0xFB14, 2}, {0xFB15, 2}, {0xFB16, 2}, {0xFB17, 2},
};

static int s_upper_len1(int32_t c)
{
    int lo = 0, hi = (int)(sizeof s_upper_long / sizeof *s_upper_long) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (s_upper_long[mid].cp == c)
            return s_upper_long[mid].len;
        if (s_upper_long[mid].cp < c)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return 1;
}

/* Unicode's Case_Ignorable: general category Mn, Me, Cf, Lm or Sk, or
 * Word_Break MidLetter, MidNumLet or Single_Quote (the short list below). */
static int s_case_ignorable(int32_t c)
{
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK: return 1;
    default: break;
    }
    switch (c) {
    case 0x27:   /* Single_Quote */
    case 0x2E:   /* MidNumLet: . and its compatibility forms */
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0xFE52:
    case 0xFF07:
    case 0xFF0E:
    case 0x3A:   /* MidLetter: : and the middle dots */
    case 0xB7:
    case 0x387:
    case 0x55F:
    case 0x5F4:
    case 0x2027:
    case 0xFE13:
    case 0xFE55:
    case 0xFF1A: return 1;
    default: return 0;
    }
}

/* Unicode's Cased: a letter of category Lu, Ll or Lt, or one with a case
 * mapping, or one of the Other_Lowercase / Other_Uppercase characters that
 * are not case-ignorable anyway: the feminine and masculine ordinal
 * indicators and the squared and negative circled or squared capital
 * letters. */
static int s_cased(int32_t c)
{
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL ||
           k == UTF8PROC_CATEGORY_LT || utf8proc_tolower(c) != c || utf8proc_toupper(c) != c ||
           c == 0xAA || c == 0xBA || (c >= 0x1F130 && c <= 0x1F149) ||
           (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189);
}

/* The capital sigma at cp[i] lowers to the final sigma when a cased letter
 * comes before it and none after it, case-ignorable characters skipped on
 * both sides (Unicode's Final_Sigma condition, as str.lower applies it). */
static int s_final_sigma(const int32_t *cp, int n, int i)
{
    int j = i - 1;
    while (j >= 0 && s_case_ignorable(cp[j]))
        j--;
    if (j < 0 || !s_cased(cp[j]))
        return 0;
    j = i + 1;
    while (j < n && s_case_ignorable(cp[j]))
        j++;
    return j == n || !s_cased(cp[j]);
}

/* Lower-case cp[i] into out as str.lower does; returns the number of code
 * points written (2 for U+0130). */
static int s_lower(const int32_t *cp, int n, int i, int32_t *out)
{
    int32_t c = cp[i];
    if (c == 0x130) { /* LATIN CAPITAL LETTER I WITH DOT ABOVE -> i + combining dot */
        out[0] = 'i';
        out[1] = 0x307;
        return 2;
    }
    if (c == 0x3A3) { /* GREEK CAPITAL LETTER SIGMA */
        out[0] = s_final_sigma(cp, n, i) ? 0x3C2 : 0x3C3;
        return 1;
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
        k += s_lower(cp, m, i, out + k);
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
    for (int i = 0; i < n; i++)
        len += s_upper_len1(cp[i]);
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
