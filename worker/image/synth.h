/* synth.h - synthetic document pages for training, tests, demos and the
 * paper's key-value retrieval experiment.
 *
 * A document is generated from (seed, document index, split) alone, so any
 * one of them can be regenerated without the others, and the same seed
 * always gives the same text (and, with the same fonts, the same pixels).
 * The generator keeps its own record of every line it renders, and every
 * answer is a substring of one of those lines.
 *
 * Kinds (one per document; SYNTH_MIX lets each document draw one):
 *   form      a title, a date, "key: value" fields (inline or in two
 *             aligned columns), a small item table and its total, a footer
 *             code.  Questions of type form, table/list and layout.
 *   table     a title and a table of 3-4 columns and 4-7 rows (counts,
 *             amounts, percentages).  Questions "What is the <column> of
 *             <row>?" (table/list) and the footer code (layout).
 *   receipt   a shop's receipt in a monospaced font: items with prices,
 *             subtotal, tax, total.  Questions of type table/list and form.
 *   text      a memo of wrapped sentences that carry names, places, dates,
 *             amounts; questions about them (free_text).
 *   colours, nouns, numbers
 *             the paper's key-value sets: only "key: value" lines (one pair
 *             a line) whose keys and values are colour names, common nouns
 *             or spelled-out numbers; questions "What is <key>?" (form).
 *             Keys are distinct on a page.
 * Fonts, body sizes, margins and field layouts vary by document.
 *
 * Splits: a document belongs to train, val or test (the caller decides;
 * synth_split_of is the corpus rule).  Every value printed on a page (every
 * string that is or could be an answer: field values, cells, amounts,
 * slot fillers of the memo, the key-value sets' values) belongs to the
 * split that synth_value_split assigns to that exact string, a fixed hash
 * of the string: so no exact value string appears in two splits, for any
 * seed.  Labels, keys, titles and headers are shared vocabulary.
 *
 * Rendering uses libvips' text operation (Pango markup), black on white,
 * one grey band, font sizes scaled to the page size (designed for the
 * default 960x1280; a page too small for its text is an error rather than
 * clipped text). */
#ifndef DM_SYNTH_H
#define DM_SYNTH_H

#include <stdint.h>

#include "common/dm_error.h"
#include "worker/image/augment.h"

#define SYNTH_WIDTH_DEFAULT 960
#define SYNTH_HEIGHT_DEFAULT 1280

typedef enum {
    SYNTH_FORM = 0,
    SYNTH_KV_COLOURS,
    SYNTH_KV_NOUNS,
    SYNTH_KV_NUMBERS,
    SYNTH_TABLE,
    SYNTH_RECEIPT,
    SYNTH_TEXT,
    SYNTH_MIX /* each document draws one of the kinds above */
} SynthKind;
#define SYNTH_NKINDS 7 /* the concrete kinds, SYNTH_FORM .. SYNTH_TEXT */

typedef enum { SYNTH_TRAIN = 0, SYNTH_VAL, SYNTH_TEST } SynthSplit;

typedef struct SynthOptions {
    uint64_t seed;
    SynthKind kind;
    int pages_per_doc;      /* >= 1 */
    int questions_per_page; /* at most this many (a page may offer fewer) */
    int width, height;      /* page size in pixels */
    const char *font_dir;   /* where the font files are (NULL: the Debian
                               place, /usr/share/fonts/truetype) */
    ImageAugment augment;   /* applied to every rendered page (all zero: none) */
} SynthOptions;

/* Fill the defaults: seed 1, mixed kinds, 1 page per document, 3
 * questions per page, 960x1280, no augmentation. */
void synth_options_default(SynthOptions *o);

/* Parse "form", "table", "receipt", "text", "colours" (or "colors"),
 * "nouns", "numbers", "mix". */
int synth_kind_parse(const char *s, SynthKind *k);
const char *synth_kind_name(SynthKind k);
const char *synth_split_name(SynthSplit s);

/* The corpus rule: with 3 or more documents, the last tenth (at least one)
 * is test, the tenth before it val, the rest train; fewer: all train. */
SynthSplit synth_split_of(int ndocs, int index);

/* The split an exact value string belongs to: about 80% train, 10% val,
 * 10% test, by a fixed hash of its bytes. */
SynthSplit synth_value_split(const char *value);

/* Fonts: each from a Debian package that deploy/install-deps.sh installs. */
typedef struct SynthFont {
    const char *family;  /* the fontconfig family name */
    const char *file;    /* regular face, relative to the font folder */
    const char *package; /* the Debian package that ships it */
    int mono;
} SynthFont;
extern const SynthFont synth_fonts[];
extern const int synth_nfonts;

/* Check the font files under o->font_dir.  Returns the number missing and
 * writes a one-line note naming them and their packages into note (empty
 * when none is missing).  A missing font is replaced at render time by the
 * first present one of the same kind (proportional or monospaced), else by
 * any present one; with none present rendering fails with a message
 * naming the files and packages. */
int synth_fonts_check(const SynthOptions *o, char *note, int cap);

typedef struct SynthQA {
    char *question;
    char *answer;      /* verbatim on the page */
    const char *qtype; /* DocVQA question type: "form", "table/list", "free_text", "layout" */
    int line;          /* the line the answer is printed on */
    /* corrupted twins only (synth_page_corrupt), else NULL: */
    char *v_clean;     /* the key's value on the clean page */
    char *v_pos;       /* what the twin shows on the line where the key stood */
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
    int font;     /* index into synth_fonts */
    int align_right; /* x is the right edge of the block, not the left */
} SynthBlock;

typedef struct SynthPage {
    char **lines; /* plain text of every rendered line, in render order */
    int nlines;
    SynthBlock *blocks;
    int nblocks;
    SynthQA *qa;  /* the questions chosen for this page */
    int nqa;
    char **values; /* every value printed on the page (see above) */
    int nvalues;
    int kv;       /* 1: a key-value page (every line "key: value"), which
                     synth_page_corrupt accepts */
} SynthPage;

typedef struct SynthDoc {
    int index;
    SynthKind kind;
    SynthSplit split;
    char *title;
    SynthPage *pages;
    int npages;
} SynthDoc;

/* Generate document `index` of `split` (content only, nothing rendered). */
int synth_doc_make(const SynthOptions *o, int index, SynthSplit split, SynthDoc *doc, DmErr *err);
void synth_doc_free(SynthDoc *doc);

/* The corrupted twin of a key-value page: the same blocks and line
 * positions; the keys permuted among the lines and the values permuted
 * independently (both derangements, drawn from seed).  Every question of
 * the clean page is kept, asking for the same key: answer is the key's
 * value on the twin (V_new), v_clean its value on the clean page, v_pos
 * the value the twin shows on the line where the key stood on the clean
 * page.  Free the twin with synth_page_free. */
int synth_page_corrupt(const SynthPage *clean, uint64_t seed, SynthPage *twin, DmErr *err);
void synth_page_free(SynthPage *p);

/* Render one page (width x height, grey, augmented when o->augment asks;
 * the augmentation's seed is drawn from o->seed and aug_key) and save it:
 * PNG, or any format libvips picks from the file name. */
int synth_page_save(const SynthOptions *o, const SynthPage *page, uint64_t aug_key, const char *path,
                    DmErr *err);

/* Render every page of doc into one multi-page TIFF (one page per
 * directory, each width x height; page p augmented with key
 * synth_aug_key(doc->index, p)). */
int synth_doc_save_tiff(const SynthOptions *o, const SynthDoc *doc, const char *path, DmErr *err);

/* The augmentation key of page `page` of document `index` (a corrupted
 * twin takes its clean page's key, so both get the same transform). */
uint64_t synth_aug_key(int index, int page);

#endif
