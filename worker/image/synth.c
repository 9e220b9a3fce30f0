/* synth.c - synthetic document pages: content from a seeded generator,
 * rendered with libvips' text operation (see synth.h). */
#define _GNU_SOURCE /* vasprintf */
#include "worker/image/synth.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>

#include "worker/image/image.h"

#define S_FONT "DejaVu Sans"

/* ------------------------------------------------------------------ */
/* word lists */

#define S_N(a) ((int)(sizeof(a) / sizeof *(a)))

static const char *const s_titles[] = {"INVOICE",        "PURCHASE ORDER", "EXPENSE REPORT",
                                       "SHIPPING NOTICE", "QUOTATION",      "RECEIPT",
                                       "ORDER CONFIRMATION", "CREDIT NOTE"};
static const char *const s_first[] = {"James", "Mary",   "Robert", "Patricia", "John",  "Linda",
                                      "David", "Barbara", "Thomas", "Susan",   "Helen", "George",
                                      "Alice", "Edward", "Ruth",   "Frank",    "Grace", "Walter"};
static const char *const s_last[] = {"Harlow",  "Whitfield", "Bennett", "Okafor",  "Lindqvist",
                                     "Moreau",  "Castillo",  "Nakamura", "Brennan", "Fischer",
                                     "Delgado", "Kowalski",  "Hughes",  "Marsh",   "Ashworth"};
static const char *const s_suffix[] = {"Industries", "Supply Co.", "& Sons", "Laboratories",
                                       "Trading",    "Holdings",   "Corp.",  "Associates"};
static const char *const s_cities[] = {"Richmond", "Winston-Salem", "Louisville", "Denver",
                                       "Portland", "Baltimore",     "Tucson",     "Omaha",
                                       "Raleigh",  "San Francisco", "Columbus",   "Madison"};
static const char *const s_depts[] = {"Accounts Payable", "Research",  "Purchasing", "Legal",
                                      "Marketing",        "Logistics", "Quality Control",
                                      "Human Resources"};
static const char *const s_terms[] = {"Net 30", "Net 60", "Due on receipt", "Net 15", "2/10 Net 30"};
static const char *const s_ship[] = {"UPS Ground", "FedEx Priority", "Air freight", "Rail",
                                     "Courier", "Pickup"};
static const char *const s_items[] = {"Paper clips",    "Toner cartridge", "Envelopes",
                                      "Binders",        "Desk lamp",       "Stapler",
                                      "Printer paper",  "Filing cabinet",  "Ledger book",
                                      "Ink ribbon",     "Index cards",     "Folders",
                                      "Calculator",     "Tape dispenser",  "Label maker"};
static const char *const s_months[] = {"January", "February", "March",     "April",   "May",
                                       "June",    "July",     "August",    "September", "October",
                                       "November", "December"};
static const char *const s_colours[] = {
    "red",    "blue",   "green",  "yellow",  "orange",  "purple", "pink",   "brown",
    "black",  "white",  "grey",   "violet",  "indigo",  "cyan",   "magenta", "maroon",
    "olive",  "navy",   "teal",   "silver",  "gold",    "beige",  "coral",  "crimson",
    "lavender", "ivory", "khaki", "lime",    "salmon",  "turquoise"};
static const char *const s_nouns[] = {
    "table",  "river",  "apple",  "house",  "window", "garden", "bottle", "chair",
    "mountain", "pencil", "horse", "bridge", "candle", "forest", "kettle", "ladder",
    "mirror", "needle", "ocean",  "pillow", "rabbit", "saddle", "tower",  "wagon",
    "basket", "castle", "drum",   "engine", "feather", "hammer", "island", "jacket",
    "lemon",  "market", "orchard", "pepper", "button", "cloud", "tunnel", "violin"};
static const char *const s_ones[] = {"zero",    "one",     "two",       "three",    "four",
                                     "five",    "six",     "seven",     "eight",    "nine",
                                     "ten",     "eleven",  "twelve",    "thirteen", "fourteen",
                                     "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
static const char *const s_tens[] = {"", "", "twenty", "thirty", "forty", "fifty", "sixty",
                                     "seventy", "eighty", "ninety"};

/* Form fields: the label on the page, the question asking for it, and how
 * its value is made. */
typedef enum { F_COMPANY, F_PERSON, F_PHONE, F_NUMBER, F_ACCOUNT, F_CITY, F_DEPT, F_REF,
               F_EMAIL, F_TERMS, F_SHIP } S_FieldKind;
static const struct {
    const char *label, *question;
    S_FieldKind kind;
} s_fields[] = {
    {"Company", "What is the company name?", F_COMPANY},
    {"Contact", "Who is the contact?", F_PERSON},
    {"Phone", "What is the phone number?", F_PHONE},
    {"Fax", "What is the fax number?", F_PHONE},
    {"Invoice number", "What is the invoice number?", F_NUMBER},
    {"Account number", "What is the account number?", F_ACCOUNT},
    {"City", "What is the city?", F_CITY},
    {"Department", "What is the department?", F_DEPT},
    {"Reference", "What is the reference?", F_REF},
    {"Email", "What is the email address?", F_EMAIL},
    {"Terms", "What are the payment terms?", F_TERMS},
    {"Ship via", "How is the order shipped?", F_SHIP},
    {"Approved by", "Who approved it?", F_PERSON},
};

/* ------------------------------------------------------------------ */
/* generator */

typedef struct S_Rng {
    uint64_t s;
} S_Rng;

static uint64_t s_next(S_Rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static int s_below(S_Rng *r, int n)
{
    return (int)(s_next(r) % (uint64_t)n);
}

static const char *s_pick(S_Rng *r, const char *const *list, int n)
{
    return list[s_below(r, n)];
}

/* A growing page under construction. */
typedef struct S_Page {
    SynthPage *p;
    int lcap, bcap, qcap;
} S_Page;

static char *s_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *s_fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static int s_grow(void **a, int *cap, int n, size_t size)
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
static int s_line(S_Page *sp, char *text)
{
    SynthPage *p = sp->p;
    if (!text || s_grow((void **)&p->lines, &sp->lcap, p->nlines, sizeof *p->lines)) {
        free(text);
        return -1;
    }
    p->lines[p->nlines++] = text;
    return 0;
}

/* Start a block at the next line. */
static int s_block(S_Page *sp, int x, int same_row, int size_pt, int bold)
{
    SynthPage *p = sp->p;
    if (s_grow((void **)&p->blocks, &sp->bcap, p->nblocks, sizeof *p->blocks))
        return -1;
    p->blocks[p->nblocks++] = (SynthBlock){x, same_row, size_pt, bold, p->nlines, 0};
    return 0;
}

/* Close the current block at the current line. */
static void s_block_end(S_Page *sp)
{
    SynthBlock *b = &sp->p->blocks[sp->p->nblocks - 1];
    b->n = sp->p->nlines - b->first;
}

/* Offer a question (both strings taken over). */
static int s_qa(S_Page *sp, char *q, char *a, const char *qtype)
{
    SynthPage *p = sp->p;
    if (!q || !a || s_grow((void **)&p->qa, &sp->qcap, p->nqa, sizeof *p->qa)) {
        free(q);
        free(a);
        return -1;
    }
    p->qa[p->nqa++] = (SynthQA){q, a, qtype};
    return 0;
}

static char *s_spelled(int n)
{
    if (n < 20)
        return strdup(s_ones[n]);
    if (n % 10 == 0)
        return strdup(s_tens[n / 10]);
    return s_fmt("%s-%s", s_tens[n / 10], s_ones[n % 10]);
}

static char *s_date(S_Rng *r)
{
    int y = 1985 + s_below(r, 21), m = 1 + s_below(r, 12), d = 1 + s_below(r, 28);
    switch (s_below(r, 4)) {
    case 0: return s_fmt("%s %d, %d", s_months[m - 1], d, y);
    case 1: return s_fmt("%d %s %d", d, s_months[m - 1], y);
    case 2: return s_fmt("%02d/%02d/%d", m, d, y);
    default: return s_fmt("%d-%02d-%02d", y, m, d);
    }
}

/* Cents as "$1,234.56". */
static char *s_money(long long cents)
{
    long long dollars = cents / 100;
    char digits[32], grouped[48];
    snprintf(digits, sizeof digits, "%lld", dollars);
    size_t n = strlen(digits), k = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0)
            grouped[k++] = ',';
        grouped[k++] = digits[i];
    }
    grouped[k] = '\0';
    return s_fmt("$%s.%02lld", grouped, cents % 100);
}

static char *s_field_value(S_Rng *r, S_FieldKind k)
{
    const char *a, *b;
    switch (k) {
    case F_COMPANY:
        a = s_pick(r, s_last, S_N(s_last));
        return s_fmt("%s %s", a, s_pick(r, s_suffix, S_N(s_suffix)));
    case F_PERSON:
        a = s_pick(r, s_first, S_N(s_first));
        return s_fmt("%s %s", a, s_pick(r, s_last, S_N(s_last)));
    case F_PHONE: {
        int x = 200 + s_below(r, 790), y = 200 + s_below(r, 790), z = s_below(r, 10000);
        return s_fmt("(%03d) %03d-%04d", x, y, z);
    }
    case F_NUMBER: return s_fmt("INV-%05d", s_below(r, 100000));
    case F_ACCOUNT: {
        int x = s_below(r, 10000);
        return s_fmt("%04d-%04d", x, s_below(r, 10000));
    }
    case F_CITY: return strdup(s_pick(r, s_cities, S_N(s_cities)));
    case F_DEPT: return strdup(s_pick(r, s_depts, S_N(s_depts)));
    case F_REF: {
        char c1 = (char)('A' + s_below(r, 26)), c2 = (char)('A' + s_below(r, 26));
        return s_fmt("%c%c-%d", c1, c2, 100 + s_below(r, 900));
    }
    case F_EMAIL:
        a = s_pick(r, s_first, S_N(s_first));
        b = s_pick(r, s_last, S_N(s_last));
        {
            char *s = s_fmt("%c.%s@example.com", a[0], b);
            for (char *c = s; c && *c; c++)
                *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
            return s;
        }
    case F_TERMS: return strdup(s_pick(r, s_terms, S_N(s_terms)));
    case F_SHIP: return strdup(s_pick(r, s_ship, S_N(s_ship)));
    }
    return NULL;
}

/* k distinct indices out of n, in random order. */
static void s_choose(S_Rng *r, int *idx, int n, int k)
{
    int all[64];
    for (int i = 0; i < n; i++)
        all[i] = i;
    for (int i = 0; i < k; i++) {
        int j = i + s_below(r, n - i);
        int t = all[i];
        all[i] = all[j];
        all[j] = t;
        idx[i] = all[i];
    }
}

static int s_form_page(S_Rng *r, const char *title, int page, int npages, S_Page *sp)
{
    /* title, and the date beside it */
    if (s_block(sp, 80, 0, 34, 1) || s_line(sp, strdup(title)))
        return -1;
    s_block_end(sp);
    char *date = s_date(r);
    if (!date || s_block(sp, 600, 1, 22, 3) || s_line(sp, s_fmt("Date: %s", date)) ||
        s_qa(sp, strdup("What is the date?"), date, "form"))
        return -1;
    s_block_end(sp);
    /* key: value lines */
    int nf = 5 + s_below(r, 3), idx[16];
    s_choose(r, idx, S_N(s_fields), nf);
    if (s_block(sp, 80, 0, 22, 3))
        return -1;
    for (int i = 0; i < nf; i++) {
        char *v = s_field_value(r, s_fields[idx[i]].kind);
        if (!v || s_line(sp, s_fmt("%s: %s", s_fields[idx[i]].label, v)) ||
            s_qa(sp, strdup(s_fields[idx[i]].question), v, "form"))
            return -1;
    }
    s_block_end(sp);
    /* the table: three columns, header bold */
    int items[3], qty[3];
    long long price[3], total = 0;
    s_choose(r, items, S_N(s_items), 3);
    for (int i = 0; i < 3; i++) {
        qty[i] = 1 + s_below(r, 48);
        price[i] = 50 + s_below(r, 25000);
        total += qty[i] * price[i];
    }
    if (s_block(sp, 80, 0, 22, 2) || s_line(sp, strdup("Item")))
        return -1;
    for (int i = 0; i < 3; i++)
        if (s_line(sp, strdup(s_items[items[i]])))
            return -1;
    s_block_end(sp);
    if (s_block(sp, 560, 1, 22, 2) || s_line(sp, strdup("Qty")))
        return -1;
    for (int i = 0; i < 3; i++)
        if (s_line(sp, s_fmt("%d", qty[i])))
            return -1;
    s_block_end(sp);
    if (s_block(sp, 720, 1, 22, 2) || s_line(sp, strdup("Unit price")))
        return -1;
    for (int i = 0; i < 3; i++)
        if (s_line(sp, s_money(price[i])))
            return -1;
    s_block_end(sp);
    for (int i = 0; i < 3; i++) {
        const char *it = s_items[items[i]];
        char lower[64];
        snprintf(lower, sizeof lower, "%s", it);
        lower[0] = (char)(lower[0] - 'A' + 'a');
        if (s_qa(sp, s_fmt("What is the quantity of %s?", lower), s_fmt("%d", qty[i]), "table/list") ||
            s_qa(sp, s_fmt("What is the unit price of %s?", lower), s_money(price[i]), "table/list"))
            return -1;
    }
    /* the total, under the price column */
    char *amount = s_money(total);
    if (!amount || s_block(sp, 560, 0, 22, 3) || s_line(sp, s_fmt("Total amount: %s", amount)) ||
        s_qa(sp, strdup("What is the total amount?"), amount, "form"))
        return -1;
    s_block_end(sp);
    if (npages > 1) {
        if (s_block(sp, 80, 0, 16, 0) || s_line(sp, s_fmt("Page %d of %d", page + 1, npages)))
            return -1;
        s_block_end(sp);
    }
    return 0;
}

static char *s_kv_word(S_Rng *r, SynthKind kind)
{
    if (kind == SYNTH_KV_COLOURS)
        return strdup(s_pick(r, s_colours, S_N(s_colours)));
    if (kind == SYNTH_KV_NOUNS)
        return strdup(s_pick(r, s_nouns, S_N(s_nouns)));
    return s_spelled(1 + s_below(r, 99));
}

static int s_kv_page(S_Rng *r, SynthKind kind, S_Page *sp)
{
    enum { NPAIRS = 12 };
    char *keys[NPAIRS] = {0};
    int rc = s_block(sp, 80, 0, 22, 3);
    for (int i = 0; i < NPAIRS && !rc; i++) {
        char *k;
        int again;
        do { /* distinct keys, so each question has one answer */
            k = s_kv_word(r, kind);
            again = 0;
            for (int j = 0; k && j < i; j++)
                again |= !strcmp(k, keys[j]);
            if (again)
                free(k);
        } while (again);
        char *v = NULL;
        do {
            free(v);
            v = s_kv_word(r, kind);
        } while (k && v && !strcmp(k, v));
        keys[i] = k;
        if (!k || !v || s_line(sp, s_fmt("%s: %s", k, v)) ||
            s_qa(sp, s_fmt("What is the %s?", k), v, "form"))
            rc = -1;
    }
    if (!rc)
        s_block_end(sp);
    for (int i = 0; i < NPAIRS; i++)
        free(keys[i]);
    return rc;
}

void synth_options_default(SynthOptions *o)
{
    memset(o, 0, sizeof *o);
    o->seed = 1;
    o->kind = SYNTH_FORM;
    o->pages_per_doc = 1;
    o->questions_per_page = 3;
    o->width = SYNTH_WIDTH_DEFAULT;
    o->height = SYNTH_HEIGHT_DEFAULT;
}

int synth_kind_parse(const char *s, SynthKind *k)
{
    if (!strcmp(s, "form"))
        *k = SYNTH_FORM;
    else if (!strcmp(s, "colours") || !strcmp(s, "colors"))
        *k = SYNTH_KV_COLOURS;
    else if (!strcmp(s, "nouns"))
        *k = SYNTH_KV_NOUNS;
    else if (!strcmp(s, "numbers"))
        *k = SYNTH_KV_NUMBERS;
    else
        return -1;
    return 0;
}

const char *synth_kind_name(SynthKind k)
{
    switch (k) {
    case SYNTH_KV_COLOURS: return "colours";
    case SYNTH_KV_NOUNS: return "nouns";
    case SYNTH_KV_NUMBERS: return "numbers";
    default: return "form";
    }
}

static void s_page_free(SynthPage *p)
{
    for (int i = 0; i < p->nlines; i++)
        free(p->lines[i]);
    free(p->lines);
    free(p->blocks);
    for (int i = 0; i < p->nqa; i++) {
        free(p->qa[i].question);
        free(p->qa[i].answer);
    }
    free(p->qa);
    memset(p, 0, sizeof *p);
}

void synth_doc_free(SynthDoc *doc)
{
    if (!doc)
        return;
    for (int i = 0; i < doc->npages; i++)
        s_page_free(&doc->pages[i]);
    free(doc->pages);
    free(doc->title);
    memset(doc, 0, sizeof *doc);
}

/* Keep questions_per_page of the offered questions, chosen at random but
 * kept in the order they appear on the page. */
static void s_keep_questions(S_Rng *r, SynthPage *p, int q)
{
    if (q >= p->nqa)
        return;
    char keep[256] = {0};
    int n = p->nqa < 256 ? p->nqa : 256;
    for (int i = 0; i < q; i++) {
        int j;
        do
            j = s_below(r, n);
        while (keep[j]);
        keep[j] = 1;
    }
    int k = 0;
    for (int i = 0; i < p->nqa; i++) {
        if (i < n && keep[i]) {
            p->qa[k++] = p->qa[i];
        } else {
            free(p->qa[i].question);
            free(p->qa[i].answer);
        }
    }
    p->nqa = k;
}

int synth_doc_make(const SynthOptions *o, int index, SynthDoc *doc, DmErr *err)
{
    memset(doc, 0, sizeof *doc);
    if (o->pages_per_doc < 1 || o->pages_per_doc > 1000)
        return dm_err(err, "synth: pages per document %d out of range 1..1000", o->pages_per_doc);
    if (o->questions_per_page < 1)
        return dm_err(err, "synth: questions per page %d must be at least 1", o->questions_per_page);
    if (index < 0)
        return dm_err(err, "synth: document index %d is negative", index);
    /* One stream per document, independent of the others. */
    S_Rng r = {o->seed * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)index + 1) * 0xd1b54a32d192ed03ULL};
    s_next(&r);
    doc->index = index;
    doc->pages = calloc((size_t)o->pages_per_doc, sizeof *doc->pages);
    doc->title = strdup(o->kind == SYNTH_FORM ? s_pick(&r, s_titles, S_N(s_titles)) : "");
    if (!doc->pages || !doc->title) {
        synth_doc_free(doc);
        return dm_err(err, "synth: out of memory");
    }
    for (int p = 0; p < o->pages_per_doc; p++) {
        S_Page sp = {&doc->pages[p], 0, 0, 0};
        doc->npages = p + 1;
        int rc = o->kind == SYNTH_FORM ? s_form_page(&r, doc->title, p, o->pages_per_doc, &sp)
                                       : s_kv_page(&r, o->kind, &sp);
        if (rc) {
            synth_doc_free(doc);
            return dm_err(err, "synth: out of memory");
        }
        s_keep_questions(&r, &doc->pages[p], o->questions_per_page);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* rendering */

static int s_vips_fail(DmErr *err, const char *what)
{
    const char *m = vips_error_buffer();
    char line[300];
    size_t i = 0;
    while (m[i] && m[i] != '\n' && i + 1 < sizeof line) {
        line[i] = m[i];
        i++;
    }
    line[i] = '\0';
    vips_error_clear();
    return dm_err(err, "%s: %s", what, line[0] ? line : "libvips failed");
}

/* The Pango markup of one block. */
static char *s_markup(const SynthPage *p, const SynthBlock *b)
{
    GString *g = g_string_new(NULL);
    for (int i = 0; i < b->n; i++) {
        const char *line = p->lines[b->first + i];
        const char *colon = strchr(line, ':');
        int bold = b->bold == 1 || (b->bold == 2 && i == 0);
        if (i)
            g_string_append_c(g, '\n');
        if (b->bold == 3 && colon) {
            gchar *k = g_markup_escape_text(line, colon - line + 1);
            gchar *v = g_markup_escape_text(colon + 1, -1);
            g_string_append_printf(g, "<b>%s</b>%s", k, v);
            g_free(k);
            g_free(v);
        } else {
            gchar *t = g_markup_escape_text(line, -1);
            g_string_append_printf(g, bold ? "<b>%s</b>" : "%s", t);
            g_free(t);
        }
    }
    return g_string_free(g, FALSE);
}

/* Render to a one-band uchar image, white page, black text. */
static int s_render(const SynthOptions *o, const SynthPage *p, VipsImage **out, DmErr *err)
{
    *out = NULL;
    if (image_vips_init(err))
        return -1;
    int W = o->width, H = o->height;
    if (W < 64 || H < 64 || W > 20000 || H > 20000)
        return dm_err(err, "synth: page size %dx%d out of range 64..20000", W, H);
    double scale = fmin((double)W / SYNTH_WIDTH_DEFAULT, (double)H / SYNTH_HEIGHT_DEFAULT);
    /* Font sizes are designed at 72 dpi on the default page; smaller or
     * larger pages scale through the rendering resolution. */
    int dpi = (int)floor(72.0 * scale);
    if (dpi < 4)
        dpi = 4;
    int margin_x = W / 24, margin_y = H / 20;
    VipsImage *canvas = NULL;
    if (vips_black(&canvas, W, H, NULL))
        return s_vips_fail(err, "synth: canvas");
    int cursor = margin_y, row_y = margin_y, prev_right = 0;
    for (int i = 0; i < p->nblocks; i++) {
        const SynthBlock *b = &p->blocks[i];
        char font[64];
        snprintf(font, sizeof font, S_FONT " %d", b->size_pt);
        char *markup = s_markup(p, b);
        VipsImage *t = NULL, *c2 = NULL;
        int rc = vips_text(&t, markup, "font", font, "dpi", dpi, NULL);
        g_free(markup);
        if (rc) {
            g_object_unref(canvas);
            return s_vips_fail(err, "synth: text");
        }
        int x = (int)((int64_t)b->x_permille * W / 1000);
        int y = b->same_row ? row_y : cursor;
        int tw = vips_image_get_width(t), th = vips_image_get_height(t);
        const char *why = NULL;
        if (b->same_row && x < prev_right + margin_x / 4)
            why = "overlaps the text beside it";
        else if (x + tw > W - margin_x / 2)
            why = "is too wide";
        else if (y + th > H - margin_y / 2)
            why = "does not fit";
        if (why) {
            g_object_unref(t);
            g_object_unref(canvas);
            return dm_err(err, "synth: page %dx%d too small: \"%s\" %s", W, H, p->lines[b->first], why);
        }
        rc = vips_insert(canvas, t, &c2, x, y, NULL);
        g_object_unref(t);
        g_object_unref(canvas);
        if (rc)
            return s_vips_fail(err, "synth: insert");
        canvas = c2;
        if (!b->same_row)
            row_y = y;
        prev_right = x + tw;
        int gap = (int)lround(b->size_pt * scale * 0.9);
        if (y + th + gap > cursor)
            cursor = y + th + gap;
    }
    VipsImage *inv = NULL;
    int rc = vips_invert(canvas, &inv, NULL);
    g_object_unref(canvas);
    if (rc)
        return s_vips_fail(err, "synth: invert");
    VipsImage *u8 = NULL;
    rc = vips_cast(inv, &u8, VIPS_FORMAT_UCHAR, NULL);
    g_object_unref(inv);
    if (rc)
        return s_vips_fail(err, "synth: cast");
    *out = u8;
    return 0;
}

int synth_page_save(const SynthOptions *o, const SynthPage *page, const char *path, DmErr *err)
{
    VipsImage *img;
    if (s_render(o, page, &img, err))
        return -1;
    int rc = vips_image_write_to_file(img, path, NULL);
    g_object_unref(img);
    if (rc)
        return s_vips_fail(err, path);
    return 0;
}

int synth_doc_save_tiff(const SynthOptions *o, const SynthDoc *doc, const char *path, DmErr *err)
{
    if (doc->npages < 1)
        return dm_err(err, "%s: document has no pages", path);
    VipsImage **pages = calloc((size_t)doc->npages, sizeof *pages);
    if (!pages)
        return dm_err(err, "%s: out of memory", path);
    int rc = 0;
    for (int i = 0; i < doc->npages && !rc; i++)
        rc = s_render(o, &doc->pages[i], &pages[i], err);
    VipsImage *joined = NULL, *tall = NULL;
    if (!rc && vips_arrayjoin(pages, &joined, doc->npages, "across", 1, NULL))
        rc = s_vips_fail(err, path);
    for (int i = 0; i < doc->npages; i++)
        if (pages[i])
            g_object_unref(pages[i]);
    free(pages);
    /* A tall image with page-height set is saved as one TIFF directory
     * per page. */
    if (!rc && vips_copy(joined, &tall, NULL))
        rc = s_vips_fail(err, path);
    if (joined)
        g_object_unref(joined);
    if (rc)
        return -1;
    vips_image_set_int(tall, VIPS_META_PAGE_HEIGHT, o->height);
    if (vips_tiffsave(tall, path, "compression", VIPS_FOREIGN_TIFF_COMPRESSION_DEFLATE, NULL))
        rc = s_vips_fail(err, path);
    g_object_unref(tall);
    return rc;
}
