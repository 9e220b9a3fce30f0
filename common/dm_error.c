/* dm_error.c - error messages, checked allocation, clock. */
#include "common/dm_error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int dm_err(DmErr *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int dm_err_errno(DmErr *e, const char *fmt, ...)
{
    int saved = errno;
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof e->msg)
            snprintf(e->msg + n, sizeof e->msg - (size_t)n, ": %s", strerror(saved));
    }
    errno = saved;
    return -1;
}

int dm_err_prefix(DmErr *e, const char *fmt, ...)
{
    if (e) {
        char head[512];
        char old[sizeof e->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(head, sizeof head, fmt, ap);
        va_end(ap);
        memcpy(old, e->msg, sizeof old);
        snprintf(e->msg, sizeof e->msg, "%s: %s", head, old);
    }
    return -1;
}

void dm_err_clear(DmErr *e)
{
    if (e)
        e->msg[0] = '\0';
}

static void s_oom(size_t n, const char *file, int line)
{
    fprintf(stderr, "docmint: out of memory allocating %zu bytes at %s:%d\n", n, file, line);
    exit(2);
}

void *dm_xmalloc_at(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        s_oom(n, file, line);
    return p;
}

void *dm_xcalloc_at(size_t n, size_t size, const char *file, int line)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        s_oom(n * size, file, line);
    return p;
}

void *dm_xrealloc_at(void *p, size_t n, const char *file, int line)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        s_oom(n, file, line);
    return q;
}

char *dm_xstrdup_at(const char *s, const char *file, int line)
{
    size_t n = strlen(s) + 1;
    char *p = dm_xmalloc_at(n, file, line);
    memcpy(p, s, n);
    return p;
}

double dm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
