/* synth_gen.h - the page builder shared by synth.c and synth_kinds.c (not
 * part of the public interface): the seeded stream, the document's look,
 * a page under construction and its helpers.  Every helper returns -1 when
 * memory runs out.  Include it after defining _GNU_SOURCE (vasprintf). */
#ifndef DM_SYNTH_GEN_H
#define DM_SYNTH_GEN_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/image/synth.h"

#define S_N(a) ((int)(sizeof(a) / sizeof *(a)))
#define S_NPROP 6 /* synth_fonts[0..6) are proportional, the rest monospaced */

typedef struct S_Rng {
    uint64_t s;
} S_Rng;

static inline uint64_t s_next(S_Rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static inline int s_below(S_Rng *r, int n)
{
    return (int)(s_next(r) % (uint64_t)n);
}

static inline const char *s_pick(S_Rng *r, const char *const *list, int n)
{
    return list[s_below(r, n)];
}

/* The document's look: fonts, body size, left margin, field layout. */
typedef struct S_Style {
    int font, mono, size, x, aligned;
} S_Style;

/* A growing page under construction. */
typedef struct S_Page {
    SynthPage *p;
    int lcap, bcap, qcap, vcap;
    S_Rng *r;
    SynthSplit split;
    S_Style st;
} S_Page;

static inline char *s_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline char *s_fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static inline int s_grow(void **a, int *cap, int n, size_t size)
{
    if (n < *cap)
        return 0;
    int nc = *cap ? *cap * 2 : 16;
    void *na = realloc(*a, (size_t)nc * size);
    if (!na)
        return -1;
    *a = na;
    *cap = nc;
    return 0;
}

/* Append a line (taken over); -1 when out of memory. */
static inline int s_line(S_Page *sp, char *text)
{
    SynthPage *p = sp->p;
    if (!text || s_grow((void **)&p->lines, &sp->lcap, p->nlines, sizeof *p->lines)) {
        free(text);
        return -1;
    }
    p->lines[p->nlines++] = text;
    return 0;
}

/* Start a block at the next line, in the document's font. */
static inline int s_block_f(S_Page *sp, int x, int same_row, int size_pt, int bold, int font, int right)
{
    SynthPage *p = sp->p;
    if (s_grow((void **)&p->blocks, &sp->bcap, p->nblocks, sizeof *p->blocks))
        return -1;
    p->blocks[p->nblocks++] = (SynthBlock){x, same_row, size_pt, bold, p->nlines, 0, font, right};
    return 0;
}

static inline int s_block(S_Page *sp, int x, int same_row, int size_pt, int bold)
{
    return s_block_f(sp, x, same_row, size_pt, bold, sp->st.font, 0);
}

/* Close the current block at the current line. */
static inline void s_block_end(S_Page *sp)
{
    SynthBlock *b = &sp->p->blocks[sp->p->nblocks - 1];
    b->n = sp->p->nlines - b->first;
}

/* Record a printed value (copied). */
static inline int s_note(S_Page *sp, const char *v)
{
    SynthPage *p = sp->p;
    char *c = strdup(v);
    if (!c || s_grow((void **)&p->values, &sp->vcap, p->nvalues, sizeof *p->values)) {
        free(c);
        return -1;
    }
    p->values[p->nvalues++] = c;
    return 0;
}

/* Offer a question (both strings taken over) whose answer is on the line
 * just added; the answer is recorded as a printed value. */
static inline int s_qa(S_Page *sp, char *q, char *a, const char *qtype)
{
    SynthPage *p = sp->p;
    if (!q || !a || s_note(sp, a) || s_grow((void **)&p->qa, &sp->qcap, p->nqa, sizeof *p->qa)) {
        free(q);
        free(a);
        return -1;
    }
    p->qa[p->nqa++] = (SynthQA){q, a, qtype, p->nlines - 1, NULL, NULL};
    return 0;
}

static inline char *s_keep(S_Page *sp, char *v, int *oom)
{
    if (!v) {
        *oom = 1;
        return NULL;
    }
    if (synth_value_split(v) == sp->split)
        return v;
    free(v);
    return NULL;
}

/* Draw with make() until the value belongs to the page's split: NULL after
 * 4000 tries (the set has none of this split) or when memory runs out
 * (*oom set). */
#define S_DRAW(sp, oom, expr)                                                                      \
    ({                                                                                             \
        char *v_ = NULL;                                                                           \
        for (int t_ = 0; t_ < 4000 && !v_ && !*(oom); t_++)                                        \
            v_ = s_keep((sp), (expr), (oom));                                                      \
        v_;                                                                                        \
    })


/* Fill sp's page with one page of `kind` (a concrete kind). */
int synth_gen_page(SynthKind kind, S_Page *sp, const char *title, int page, int npages);

/* The document title of `kind` ("" for kinds without one). */
const char *synth_gen_title(SynthKind kind, S_Rng *r);

#endif
