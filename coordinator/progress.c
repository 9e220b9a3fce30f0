/* progress.c - progress lines on stderr (progress.h). */
#include "coordinator/progress.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROGRESS_TTY_EVERY 1.0
#define PROGRESS_LOG_EVERY 10.0

struct Progress {
    FILE *f;
    char prefix[64];
    int quiet, tty, started, dirty;
    double t0, last;
};

Progress *progress_new(FILE *f, const char *prefix, int quiet)
{
    Progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->f = f;
    snprintf(p->prefix, sizeof p->prefix, "%s", prefix);
    p->quiet = quiet;
    p->tty = isatty(fileno(f));
    p->last = -1e300;
    return p;
}

void progress_start(Progress *p, double now)
{
    if (!p || p->started)
        return;
    p->started = 1;
    p->t0 = now;
    p->last = now; /* first line after one period */
}

void progress_duration(char *out, size_t n, double s)
{
    if (!isfinite(s) || s < 0)
        s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, n, "%ldh%02ldm%02lds", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60)
        snprintf(out, n, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(out, n, "%lds", t);
}

void progress_format(char *out, size_t n, const ProgressCounts *c, double elapsed)
{
    int64_t done = c->held + c->done;
    double pct = c->total > 0 ? 100.0 * (double)done / (double)c->total : 100.0;
    double rate = elapsed > 0 ? (double)c->done / elapsed : 0;
    char eta[32];
    if (done >= c->total)
        snprintf(eta, sizeof eta, "0s");
    else if (rate > 0)
        progress_duration(eta, sizeof eta, (double)(c->total - done) / rate);
    else
        snprintf(eta, sizeof eta, "?");
    snprintf(out, n, "%lld/%lld questions (%.1f%%), %.2f q/s, ETA %s, %lld error%s, %d worker%s",
             (long long)done, (long long)c->total, pct, rate, eta, (long long)c->errors,
             c->errors == 1 ? "" : "s", c->workers, c->workers == 1 ? "" : "s");
}

void progress_update(Progress *p, const ProgressCounts *c, double now)
{
    if (!p || p->quiet || !p->started)
        return;
    if (now - p->last < (p->tty ? PROGRESS_TTY_EVERY : PROGRESS_LOG_EVERY))
        return;
    p->last = now;
    char line[256];
    progress_format(line, sizeof line, c, now - p->t0);
    if (p->tty) {
        fprintf(p->f, "\r%s: %s\033[K", p->prefix, line);
        p->dirty = 1;
    } else {
        fprintf(p->f, "%s: %s\n", p->prefix, line);
    }
    fflush(p->f);
}

void progress_finish(Progress *p, const ProgressCounts *c, double now, const char *tail)
{
    if (!p || p->quiet)
        return;
    double el = p->started ? now - p->t0 : 0;
    char dur[32];
    progress_duration(dur, sizeof dur, el);
    if (p->dirty)
        fprintf(p->f, "\r\033[K");
    fprintf(p->f,
            "%s: done: %lld/%lld questions, %lld computed in %s (%.2f q/s), %lld resumed from the "
            "store, %lld error%s%s%s\n",
            p->prefix, (long long)(c->held + c->done), (long long)c->total, (long long)c->done,
            dur, el > 0 ? (double)c->done / el : 0.0, (long long)c->held, (long long)c->errors,
            c->errors == 1 ? "" : "s", tail && *tail ? "; " : "", tail ? tail : "");
    fflush(p->f);
    p->dirty = 0;
}

void progress_free(Progress **pp)
{
    Progress *p = *pp;
    if (!p)
        return;
    if (p->dirty) {
        fprintf(p->f, "\n");
        fflush(p->f);
    }
    free(p);
    *pp = NULL;
}
