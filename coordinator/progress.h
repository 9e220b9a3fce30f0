/* progress.h - the coordinator's progress report on stderr.
 *
 * A line (on a terminal, one line rewritten in place each second; else a
 * new line every 10 seconds):
 *   docmint run: 1200/5349 questions (22.4%), 3.1 q/s, ETA 22m18s, 4 errors, 2 workers
 * done counts what the store held at the start plus what this run added;
 * the rate is this run's (questions accepted / seconds since the first
 * shard went out).  A summary line closes the run.  quiet silences both. */
#ifndef DM_PROGRESS_H
#define DM_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef struct Progress Progress;

typedef struct ProgressCounts {
    int64_t total;     /* questions of the job */
    int64_t held;      /* in the store before this run */
    int64_t done;      /* accepted this run (answers + errors) */
    int64_t errors;    /* error records, held + this run */
    int workers;       /* connected now */
} ProgressCounts;

Progress *progress_new(FILE *f, const char *prefix, int quiet);
/* Mark the moment work started (the rate's origin). */
void progress_start(Progress *p, double now);
/* Print a line if one is due. */
void progress_update(Progress *p, const ProgressCounts *c, double now);
/* The closing summary line (what follows "prefix: "). */
void progress_finish(Progress *p, const ProgressCounts *c, double now, const char *tail);
void progress_free(Progress **p);

/* Format the progress line (without prefix and newline) into out;
 * elapsed = seconds since progress_start.  For tests. */
void progress_format(char *out, size_t n, const ProgressCounts *c, double elapsed);

/* "1h02m03s", "4m05s", "12s". */
void progress_duration(char *out, size_t n, double seconds);

#endif
