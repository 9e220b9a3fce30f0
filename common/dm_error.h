/* dm_error.h - one error convention for all of docmint.
 *
 * Functions return 0 on success and -1 on failure; on failure they fill the
 * caller's DmErr with one line that names the file, key or argument and what
 * is wrong.  Errors are reported where they are detected and passed up
 * unchanged elsewhere (callers may prefix context with dm_err_prefix). */
#ifndef DM_ERROR_H
#define DM_ERROR_H

#include <stddef.h>

typedef struct DmErr {
    char msg[1024];
} DmErr;

/* Set the message (printf-style) and return -1, so callers can write
 * `return dm_err(e, "%s: truncated", path);`.  e may be NULL. */
int dm_err(DmErr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Same, appending ": strerror(errno)". */
int dm_err_errno(DmErr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepend "prefix: " to the message already in e; returns -1. */
int dm_err_prefix(DmErr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clear the message. */
void dm_err_clear(DmErr *e);

/* Checked allocation for start-up code and tools: print file:line and exit
 * on failure.  The coordinator loop uses plain malloc and returns errors. */
void *dm_xmalloc_at(size_t n, const char *file, int line);
void *dm_xcalloc_at(size_t n, size_t size, const char *file, int line);
void *dm_xrealloc_at(void *p, size_t n, const char *file, int line);
char *dm_xstrdup_at(const char *s, const char *file, int line);
#define dm_xmalloc(n) dm_xmalloc_at((n), __FILE__, __LINE__)
#define dm_xcalloc(n, s) dm_xcalloc_at((n), (s), __FILE__, __LINE__)
#define dm_xrealloc(p, n) dm_xrealloc_at((p), (n), __FILE__, __LINE__)
#define dm_xstrdup(s) dm_xstrdup_at((s), __FILE__, __LINE__)

/* Monotonic wall clock in seconds. */
double dm_now(void);

#endif
