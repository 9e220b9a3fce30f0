/* synth.h - synthetic document pages for tests, demos and the paper's
 * key-value retrieval experiment.
 *
 * A document is generated from (seed, document index) alone, so any one
 * of them can be regenerated without the others, and the same seed always
 * gives the same text (and, with the same fonts, the same pixels).  The
 * generator keeps its own record of every line it renders, and every
 * answer is a substring of one of those lines.
 *
 * Form pages (SYNTH_FORM): a title, a date line, key: value lines (company,
 * contact, phone, invoice number, ...), a small table (item, quantity, unit
 * price) and a total amount, which is the sum of the table.  Questions:
 * "What is the date?", "What is the total amount?", "What is the <key>?",
 * "What is the quantity of <item>?", "What is the unit price of <item>?".
 *
 * Key-value pages (SYNTH_KV_*): only "key: value" lines whose keys and
 * values are colour names, common nouns or spelled-out numbers; questions
 * "What is the <key>?".  Keys are distinct on a page.
 *
 * Rendering uses libvips' text operation (Pango markup), black on white,
 * one grey band, font sizes scaled to the page size (designed for the
 * default 960x1280; a page too small for its text is an error rather than
 * clipped text). */
#ifndef DM_SYNTH_H
#define DM_SYNTH_H

#include <stdint.h>

#include "common/dm_error.h"

#define SYNTH_WIDTH_DEFAULT 960
#define SYNTH_HEIGHT_DEFAULT 1280

typedef enum { SYNTH_FORM = 0, SYNTH_KV_COLOURS, SYNTH_KV_NOUNS, SYNTH_KV_NUMBERS } SynthKind;

typedef struct SynthOptions {
    uint64_t seed;
    SynthKind kind;
    int pages_per_doc;      /* >= 1 */
    int questions_per_page; /* at most this many (a page may offer fewer) */
    int width, height;      /* page size in pixels */
} SynthOptions;

/* Fill the defaults: seed 1, form pages, 1 page per document, 3 questions
 * per page, 960x1280. */
void synth_options_default(SynthOptions *o);

/* Parse "form", "colours" (or "colors"), "nouns", "numbers". */
int synth_kind_parse(const char *s, SynthKind *k);
const char *synth_kind_name(SynthKind k);

typedef struct SynthQA {
    char *question;
    char *answer;      /* verbatim on the page */
    const char *qtype; /* DocVQA question type: "form", "table/list", "layout" */
} SynthQA;

/* A run of lines rendered as one text image.  x is in thousandths of the
 * page width; a block with same_row sits at the y of the block before it
 * (table columns), otherwise below everything so far. */
typedef struct SynthBlock {
    int x_permille;
    int same_row;
    int size_pt;  /* at the default page size */
    int bold;     /* 1: every line bold; 2: the first line bold (table
                     header); 3: each line's key (up to ':') bold */
    int first, n; /* lines[first .. first + n) */
} SynthBlock;

typedef struct SynthPage {
    char **lines; /* plain text of every rendered line, in render order */
    int nlines;
    SynthBlock *blocks;
    int nblocks;
    SynthQA *qa;  /* the questions chosen for this page */
    int nqa;
} SynthPage;

typedef struct SynthDoc {
    int index;
    char *title;
    SynthPage *pages;
    int npages;
} SynthDoc;

/* Generate document `index` (content only, nothing rendered). */
int synth_doc_make(const SynthOptions *o, int index, SynthDoc *doc, DmErr *err);
void synth_doc_free(SynthDoc *doc);

/* Render one page (width x height, grey) and save it: PNG, or any format
 * libvips picks from the file name. */
int synth_page_save(const SynthOptions *o, const SynthPage *page, const char *path, DmErr *err);

/* Render every page of doc into one multi-page TIFF (one page per
 * directory, each width x height). */
int synth_doc_save_tiff(const SynthOptions *o, const SynthDoc *doc, const char *path, DmErr *err);

#endif
