/* anls.h - Average Normalized Levenshtein Similarity, as the official
 * DocVQA evaluation computes it.
 *
 * Per question: both strings are stripped, lower-cased and their internal
 * whitespace collapsed to single spaces (Python's str.strip().lower() and
 * " ".join(s.split())); the Levenshtein distance is taken over Unicode code
 * points of the normalised strings; the denominator is the larger length
 * (in code points) of the two raw strings upper-cased; the similarity is 1
 * minus the smallest normalised distance over the gold answers, and 0 when
 * it falls below the threshold (0.5).  Empty-vs-empty scores 1. */
#ifndef DM_ANLS_H
#define DM_ANLS_H

#define ANLS_THRESHOLD 0.5

/* Similarity of a prediction against the gold answers, in [0, 1]. */
double anls_question(const char *pred, const char *const *gold, int ngold);

/* Levenshtein distance over code points (exposed for tests). */
int anls_levenshtein(const char *a, const char *b);

/* Normalise: strip, lower, collapse whitespace.  Returns a malloc'ed string. */
char *anls_normalize(const char *s);

#endif
