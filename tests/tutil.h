/* tutil.h - helpers shared by the CUnit test files.  Tests run with the
 * working directory set to tests/, so reference data is under data/. */
#ifndef DM_TUTIL_H
#define DM_TUTIL_H

#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>

#include "tensorfile.h"

#define TU_TINY "data/tiny-a"
#define TU_TOK "data/tokenizer-a"

/* Max |a - b| over n floats (NaN counts as infinite). */
static inline double tu_maxdiff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d)
            return INFINITY;
        if (d > m)
            m = d;
    }
    return m;
}

/* Register a suite with its tests: TU_SUITE("name", {"t1", fn1}, ...). */
typedef struct TuCase {
    const char *name;
    void (*fn)(void);
} TuCase;

static inline void tu_register(const char *suite, const TuCase *cases, int n)
{
    CU_pSuite s = CU_add_suite(suite, NULL, NULL);
    for (int i = 0; i < n; i++)
        CU_add_test(s, cases[i].name, cases[i].fn);
}
#define TU_SUITE(name, ...)                                                    \
    do {                                                                       \
        static const TuCase tu_cases_[] = {__VA_ARGS__};                       \
        tu_register(name, tu_cases_, (int)(sizeof tu_cases_ / sizeof *tu_cases_)); \
    } while (0)

#endif
