/* test_anls.c - ANLS against values computed by hand from the official
 * definition (normalise by strip/lower/whitespace collapse, Levenshtein
 * over code points, divide by the longer raw upper-cased length, 1 minus
 * the best, 0 below 0.5). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/anls.h"
#include "tutil.h"

static void s_expect(const char *pred, const char *g1, const char *g2, double want)
{
    const char *gold[2] = {g1, g2};
    double got = anls_question(pred, gold, g2 ? 2 : 1);
    if (fabs(got - want) > 1e-12)
        printf("\n  anls(\"%s\", \"%s\"%s%s%s) = %.15g, want %.15g", pred, g1, g2 ? ", \"" : "",
               g2 ? g2 : "", g2 ? "\"" : "", got, want);
    CU_ASSERT_DOUBLE_EQUAL(got, want, 1e-12);
}

static void test_anls_cases(void)
{
    s_expect("Hello", "hello", NULL, 1.0);                 /* case only */
    s_expect(" The  Cat ", "the cat", NULL, 1.0);          /* strip + collapse */
    s_expect("a\tb\nc", "a b c", NULL, 1.0);               /* any whitespace */
    s_expect("abcd", "abce", NULL, 0.75);                  /* 1 edit over 4 */
    s_expect("ab", "abcd", NULL, 0.5);                     /* 2/4: at the threshold, kept */
    s_expect("a", "abcd", NULL, 0.0);                      /* 3/4 -> 0.25 < 0.5 -> 0 */
    s_expect("", "", NULL, 1.0);                           /* both empty: distance 0 over 0 */
    s_expect("", "abc", NULL, 0.0);                        /* 3/3 */
    s_expect("1998", "12 March 1998", "1998", 1.0);        /* best of the gold answers */
    s_expect("199", "12 March 1998", "1998", 0.75);        /* 1/4 against the second */
    s_expect("café", "cafe", NULL, 0.75);                  /* code points, not bytes: 1/4 */
    s_expect("ÉCOLE", "école", NULL, 1.0);                 /* non-ASCII lower-casing */
    s_expect("Straße", "strasse", NULL, 1.0 - 2.0 / 7.0);  /* STRASSE has 7 letters */
    s_expect("東京都", "東京", NULL, 1.0 - 1.0 / 3.0);        /* CJK: 1 deletion over 3 */
    s_expect("abc  ", "abc", NULL, 1.0 - 0.0);             /* raw length 5 but distance 0 */
    s_expect("xbcde", "abcde", NULL, 0.8);                 /* 1/5 */
}

/* str.lower() is the full lower-case mapping, not case folding, and the
 * length divides by len(raw.upper()) with the full upper-case mapping.
 * Each value below is worked out by hand: normalised strings, their edit
 * distance, the longer upper-cased raw length. */
static void test_anls_case_mapping(void)
{
    /* sharp s stays sharp s; TRASSE 6 and STRASSE 7 letters: 1 - 1/7 */
    s_expect("traße", "straße", NULL, 1.0 - 1.0 / 7.0);
    /* "strasse" vs "straße": s->ß and one s deleted, over STRASSE (7) */
    s_expect("STRASSE", "straße", NULL, 1.0 - 2.0 / 7.0);
    /* capital sigma at the end of a word lowers to the final sigma */
    s_expect("ΟΔΟΣ", "οδος", NULL, 1.0);
    s_expect("ΟΔΟΣ", "οδοσ", NULL, 0.75);                  /* ς vs σ: 1/4 */
    s_expect("ΣΑΣ", "σας", NULL, 1.0);                     /* first σ, last ς */
    s_expect("ΑΣ.Β", "ασ.β", NULL, 1.0);  /* '.' is case-ignorable: a letter follows */
    s_expect("ΑΣ.Β", "ας.β", NULL, 0.75);
    s_expect("Α.Σ", "α.ς", NULL, 1.0);    /* ... and a letter precedes */
    s_expect("ΑΣ Β", "ας β", NULL, 1.0);  /* a space ends the word */
    /* İ lowers to i + U+0307 (two code points); its upper case is one */
    s_expect("İSTANBUL", "i̇stanbul", NULL, 1.0);
    s_expect("İSTANBUL", "istanbul", NULL, 1.0 - 1.0 / 8.0);
    /* ligatures have no lower-case mapping; their upper case is FI, FFL */
    s_expect("ﬁnal", "final", NULL, 1.0 - 2.0 / 5.0);
    s_expect("oﬄine", "OFFLINE", NULL, 1.0 - 3.0 / 7.0);
    s_expect("ﬁnal", "ﬁnal", NULL, 1.0);
}

static void test_levenshtein(void)
{
    CU_ASSERT_EQUAL(anls_levenshtein("kitten", "sitting"), 3);
    CU_ASSERT_EQUAL(anls_levenshtein("", "abc"), 3);
    CU_ASSERT_EQUAL(anls_levenshtein("flaw", "lawn"), 2);
    CU_ASSERT_EQUAL(anls_levenshtein("über", "uber"), 1);
    char *n = anls_normalize("  Hello \t  World\n");
    CU_ASSERT_STRING_EQUAL(n, "hello world");
    free(n);
}

void tests_anls(void)
{
    TU_SUITE("anls", {"hand-computed cases", test_anls_cases},
             {"lower-casing as str.lower, lengths as str.upper", test_anls_case_mapping},
             {"levenshtein and normalisation", test_levenshtein});
}
