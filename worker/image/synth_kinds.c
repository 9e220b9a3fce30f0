/* synth_kinds.c - the kinds of synthetic pages: word lists, value makers,
 * and one function per kind (form, table, receipt, memo, key-value), all
 * drawing from the document's stream (see synth.h). */
#define _GNU_SOURCE /* vasprintf, strndup */
#include "worker/image/synth_gen.h"

static const char *const s_titles[] = {"INVOICE",        "PURCHASE ORDER", "EXPENSE REPORT",
                                       "SHIPPING NOTICE", "QUOTATION",      "RECEIPT",
                                       "ORDER CONFIRMATION", "CREDIT NOTE"};
static const char *const s_first[] = {"James", "Mary",   "Robert", "Patricia", "John",  "Linda",
                                      "David", "Barbara", "Thomas", "Susan",   "Helen", "George",
                                      "Alice", "Edward", "Ruth",   "Frank",    "Grace", "Walter",
                                      "Irene", "Victor", "Nora",   "Samuel",   "Clara", "Oscar"};
static const char *const s_last[] = {"Harlow",  "Whitfield", "Bennett", "Okafor",  "Lindqvist",
                                     "Moreau",  "Castillo",  "Nakamura", "Brennan", "Fischer",
                                     "Delgado", "Kowalski",  "Hughes",  "Marsh",   "Ashworth",
                                     "Pereira", "Sorensen",  "Adeyemi", "Quinn",   "Varga"};
static const char *const s_suffix[] = {"Industries", "Supply Co.", "& Sons", "Laboratories",
                                       "Trading",    "Holdings",   "Corp.",  "Associates"};
static const char *const s_shops[] = {"Market", "Hardware", "Pharmacy", "Bakery", "Books",
                                      "Grocery", "Stationers", "Deli"};
static const char *const s_cities[] = {
    "Richmond", "Winston-Salem", "Louisville", "Denver",   "Portland", "Baltimore", "Tucson",
    "Omaha",    "Raleigh",       "San Francisco", "Columbus", "Madison", "Boise",   "Savannah",
    "Spokane",  "Albany",        "Durham",   "Fresno",   "Toledo",   "Wichita",   "Lansing",
    "Reno",     "Eugene",        "Dayton",   "Tacoma",   "Akron",    "Macon",     "Provo"};
static const char *const s_depts[] = {"Accounts Payable", "Research",  "Purchasing", "Legal",
                                      "Marketing",        "Logistics", "Quality Control",
                                      "Human Resources",  "Facilities", "Engineering", "Sales",
                                      "Customer Service", "Compliance", "Internal Audit",
                                      "Procurement",      "Training"};
static const char *const s_terms[] = {"Net 30", "Net 60", "Due on receipt", "Net 15", "2/10 Net 30",
                                      "Net 45", "Net 90", "Cash on delivery", "Prepaid", "1/10 Net 30",
                                      "Net 10", "End of month"};
static const char *const s_ship[] = {"UPS Ground", "FedEx Priority", "Air freight", "Rail", "Courier",
                                     "Pickup", "Sea freight", "USPS Priority", "DHL Express", "Truck",
                                     "Overnight", "Second day air"};
static const char *const s_items[] = {"Paper clips",   "Toner cartridge", "Envelopes",   "Binders",
                                      "Desk lamp",     "Stapler",         "Printer paper", "Filing cabinet",
                                      "Ledger book",   "Ink ribbon",      "Index cards", "Folders",
                                      "Calculator",    "Tape dispenser",  "Label maker", "Notepads",
                                      "Marker pens",   "Rubber stamps",   "Scissors",    "Desk chair"};
static const char *const s_months[] = {"January", "February", "March",     "April",   "May",
                                       "June",    "July",     "August",    "September", "October",
                                       "November", "December"};
static const char *const s_colours[] = {
    "red",      "blue",     "green",     "yellow",  "orange",   "purple",   "pink",     "brown",
    "black",    "white",    "grey",      "violet",  "indigo",   "cyan",     "magenta",  "maroon",
    "olive",    "navy",     "teal",      "silver",  "gold",     "beige",    "coral",    "crimson",
    "lavender", "ivory",    "khaki",     "lime",    "salmon",   "turquoise", "amber",   "azure",
    "bronze",   "charcoal", "chartreuse", "cobalt", "copper",   "cream",    "emerald",  "fuchsia",
    "jade",     "lilac",    "mauve",     "mint",    "mustard",  "ochre",    "peach",    "plum",
    "ruby",     "rust",     "sapphire",  "scarlet", "sepia",    "tan",      "taupe",    "ultramarine",
    "vermilion", "wheat"};
static const char *const s_nouns[] = {
    "table",   "river",   "apple",   "house",    "window",  "garden",  "bottle",  "chair",
    "mountain", "pencil", "horse",   "bridge",   "candle",  "forest",  "kettle",  "ladder",
    "mirror",  "needle",  "ocean",   "pillow",   "rabbit",  "saddle",  "tower",   "wagon",
    "basket",  "castle",  "drum",    "engine",   "feather", "hammer",  "island",  "jacket",
    "lemon",   "market",  "orchard", "pepper",   "button",  "cloud",   "tunnel",  "violin",
    "anchor",  "barrel",  "blanket", "cabinet",  "canoe",   "carpet",  "cottage", "desert",
    "doorway", "falcon",  "fountain", "glacier", "harbour", "helmet",  "lantern", "meadow",
    "monkey",  "napkin",  "oven",    "parrot",   "pebble",  "piano",   "pocket",  "puzzle",
    "quilt",   "rocket",  "shovel",  "sponge",   "statue",  "teapot",  "thimble", "tractor",
    "trumpet", "umbrella", "valley", "walnut",   "whistle", "zipper",  "compass", "lobster"};
static const char *const s_ones[] = {"zero",    "one",     "two",       "three",    "four",
                                     "five",    "six",     "seven",     "eight",    "nine",
                                     "ten",     "eleven",  "twelve",    "thirteen", "fourteen",
                                     "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
static const char *const s_tens[] = {"", "", "twenty", "thirty", "forty", "fifty", "sixty",
                                     "seventy", "eighty", "ninety"};
static const char *const s_regions[] = {"North", "South", "East", "West", "Central", "Pacific",
                                        "Atlantic", "Mountain", "Midwest", "Gulf"};
static const char *const s_samples[] = {"Sample A", "Sample B", "Sample C", "Sample D", "Sample E",
                                        "Sample F", "Sample G", "Sample H", "Sample J", "Sample K"};
static const char *const s_memo_titles[] = {"MEMORANDUM", "MINUTES", "NOTICE", "INTERNAL NOTE",
                                            "BULLETIN"};
static const char *const s_fillers[] = {
    "All figures are preliminary and subject to revision.",
    "Please keep this note with the project records.",
    "Questions may be directed to the office of the secretary.",
    "The committee thanked everyone for their careful work.",
    "Copies of the full report are available on request.",
    "No other business was raised at the meeting.",
    "The schedule will be reviewed again next quarter.",
    "Staff are reminded to file their expenses on time."};

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

static char *s_person(S_Rng *r)
{
    const char *a = s_pick(r, s_first, S_N(s_first));
    return s_fmt("%s %s", a, s_pick(r, s_last, S_N(s_last)));
}

static char *s_company(S_Rng *r)
{
    const char *a = s_pick(r, s_last, S_N(s_last));
    return s_fmt("%s %s", a, s_pick(r, s_suffix, S_N(s_suffix)));
}

static char *s_phone(S_Rng *r)
{
    int x = 200 + s_below(r, 790), y = 200 + s_below(r, 790), z = s_below(r, 10000);
    return s_fmt("(%03d) %03d-%04d", x, y, z);
}

static char *s_field_value(S_Rng *r, S_FieldKind k)
{
    const char *a, *b;
    switch (k) {
    case F_COMPANY: return s_company(r);
    case F_PERSON: return s_person(r);
    case F_PHONE: return s_phone(r);
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

/* k distinct indices out of n (n <= 64), in random order. */
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

static char *s_lower_first(const char *s)
{
    char *c = strdup(s);
    if (c && c[0] >= 'A' && c[0] <= 'Z')
        c[0] = (char)(c[0] - 'A' + 'a');
    return c;
}

/* A footer code ("Form QX-4471"), asked about as a layout question. */
static int s_footer(S_Page *sp, const char *what)
{
    int oom = 0;
    S_Rng *r = sp->r;
    char *code = S_DRAW(sp, &oom, s_fmt("%c%c-%04d", 'A' + s_below(r, 26), 'A' + s_below(r, 26),
                                        s_below(r, 10000)));
    if (!code)
        return oom ? -1 : 0;
    if (s_block(sp, sp->st.x, 0, sp->st.size - 6, 0) || s_line(sp, s_fmt("%s %s", what, code)) ||
        s_qa(sp, s_fmt("What is the %s code at the bottom of the page?", what), code, "layout"))
        return -1;
    s_block_end(sp);
    return 0;
}

/* Items with quantities and prices whose total also belongs to the split. */
static int s_items_total(S_Page *sp, int n, int *items, int *qty, long long *price, long long *total,
                         char **qs, char **ps, char **ts)
{
    S_Rng *r = sp->r;
    int oom = 0;
    for (int tries = 0; tries < 100000; tries++) {
        s_choose(r, items, S_N(s_items), n);
        *total = 0;
        int ok = 1;
        for (int i = 0; i < n; i++) {
            qs[i] = S_DRAW(sp, &oom, s_fmt("%d", 1 + s_below(r, 120)));
            ps[i] = S_DRAW(sp, &oom, s_money(price[i] = 50 + s_below(r, 25000)));
            if (!qs[i] || !ps[i])
                ok = 0;
            qty[i] = qs[i] ? atoi(qs[i]) : 0;
            *total += (long long)qty[i] * price[i];
        }
        *ts = ok ? s_keep(sp, s_money(*total), &oom) : NULL;
        if (ok && *ts)
            return 0;
        for (int i = 0; i < n; i++) {
            free(qs[i]);
            free(ps[i]);
            qs[i] = ps[i] = NULL;
        }
        if (oom)
            return -1;
    }
    return -1;
}

static int s_form_page(S_Page *sp, const char *title, int page, int npages)
{
    S_Rng *r = sp->r;
    const S_Style *st = &sp->st;
    int oom = 0, sz = st->size;
    /* title, and the date beside it */
    if (s_block(sp, st->x, 0, sz + 10, 1) || s_line(sp, strdup(title)))
        return -1;
    s_block_end(sp);
    char *date = S_DRAW(sp, &oom, s_date(r));
    if (date) {
        /* beside a short title, under a long one */
        if (s_block(sp, 600, strlen(title) <= 12, sz, 3) || s_line(sp, s_fmt("Date: %s", date)) ||
            s_qa(sp, strdup("What is the date?"), date, "form"))
            return -1;
        s_block_end(sp);
    } else if (oom) {
        return -1;
    }
    /* the fields: "Key: value" lines, or keys and values in two columns */
    int nf = 5 + s_below(r, 3), idx[16], kept = 0;
    char *vals[16];
    s_choose(r, idx, S_N(s_fields), S_N(s_fields));
    for (int i = 0; i < S_N(s_fields) && kept < nf; i++) {
        char *v = S_DRAW(sp, &oom, s_field_value(r, s_fields[idx[i]].kind));
        if (oom)
            break;
        if (v) {
            idx[kept] = idx[i];
            vals[kept++] = v;
        }
    }
    int rc = oom ? -1 : 0;
    if (!rc && st->aligned) {
        rc = s_block(sp, st->x, 0, sz, 1);
        for (int i = 0; i < kept && !rc; i++)
            rc = s_line(sp, s_fmt("%s:", s_fields[idx[i]].label));
        if (!rc) {
            s_block_end(sp);
            rc = s_block(sp, st->x + 300, 1, sz, 0);
        }
        for (int i = 0; i < kept && !rc; i++) {
            rc = s_line(sp, strdup(vals[i])) || s_qa(sp, strdup(s_fields[idx[i]].question), vals[i], "form");
            vals[i] = NULL;
        }
    } else if (!rc) {
        rc = s_block(sp, st->x, 0, sz, 3);
        for (int i = 0; i < kept && !rc; i++) {
            rc = s_line(sp, s_fmt("%s: %s", s_fields[idx[i]].label, vals[i])) ||
                 s_qa(sp, strdup(s_fields[idx[i]].question), vals[i], "form");
            vals[i] = NULL;
        }
    }
    for (int i = 0; i < kept; i++)
        if (vals[i] && rc)
            free(vals[i]);
    if (rc)
        return -1;
    s_block_end(sp);
    /* the table: three columns, header bold */
    int items[3], qty[3];
    long long price[3], total;
    char *qs[3] = {0}, *ps[3] = {0}, *ts = NULL;
    if (s_items_total(sp, 3, items, qty, price, &total, qs, ps, &ts))
        return -1;
    rc = s_block(sp, st->x, 0, sz, 2) || s_line(sp, strdup("Item"));
    for (int i = 0; i < 3 && !rc; i++)
        rc = s_line(sp, strdup(s_items[items[i]]));
    if (!rc) {
        s_block_end(sp);
        rc = s_block(sp, 560, 1, sz, 2) || s_line(sp, strdup("Qty"));
    }
    for (int i = 0; i < 3 && !rc; i++) {
        char *q = s_lower_first(s_items[items[i]]);
        rc = s_line(sp, strdup(qs[i])) ||
             s_qa(sp, s_fmt("What is the quantity of %s?", q ? q : ""), qs[i], "table/list");
        qs[i] = NULL;
        free(q);
    }
    if (!rc) {
        s_block_end(sp);
        rc = s_block(sp, 720, 1, sz, 2) || s_line(sp, strdup("Unit price"));
    }
    for (int i = 0; i < 3 && !rc; i++) {
        char *q = s_lower_first(s_items[items[i]]);
        rc = s_line(sp, strdup(ps[i])) ||
             s_qa(sp, s_fmt("What is the unit price of %s?", q ? q : ""), ps[i], "table/list");
        ps[i] = NULL;
        free(q);
    }
    if (rc) {
        for (int i = 0; i < 3; i++) {
            free(qs[i]);
            free(ps[i]);
        }
        free(ts);
        return -1;
    }
    s_block_end(sp);
    /* the total, under the price column */
    if (s_block(sp, 480, 0, sz, 3) || s_line(sp, s_fmt("Total amount: %s", ts)) ||
        s_qa(sp, strdup("What is the total amount?"), ts, "form"))
        return -1;
    s_block_end(sp);
    if (s_footer(sp, "Form"))
        return -1;
    if (npages > 1) {
        if (s_block(sp, st->x, 0, 16, 0) || s_line(sp, s_fmt("Page %d of %d", page + 1, npages)))
            return -1;
        s_block_end(sp);
    }
    return 0;
}

/* A table of 4-7 rows: row labels and three value columns. */
static int s_table_page(S_Page *sp, int page, int npages)
{
    static const struct {
        const char *title, *head0, *const *rows;
        int nrows;
        const char *col[3];
    } schemas[] = {
        {"REGIONAL SALES", "Region", s_regions, S_N(s_regions), {"Units", "Revenue", "Share"}},
        {"INVENTORY", "Item", s_items, S_N(s_items), {"In stock", "Unit cost", "Reorder"}},
        {"LABORATORY RESULTS", "Sample", s_samples, S_N(s_samples), {"Weight (g)", "pH", "Yield"}},
    };
    S_Rng *r = sp->r;
    const S_Style *st = &sp->st;
    int s = s_below(r, S_N(schemas)), nrows = 4 + s_below(r, 4), rows[16], oom = 0, rc = 0;
    int sz = st->size - 2;
    s_choose(r, rows, schemas[s].nrows, nrows);
    char *cell[16][3] = {{0}};
    for (int i = 0; i < nrows; i++)
        for (int c = 0; c < 3 && !rc; c++) {
            int k = s * 3 + c;
            cell[i][c] = S_DRAW(sp, &oom,
                k == 0 ? s_fmt("%d", 10 + s_below(r, 9990)) :
                k == 1 ? s_money(100 + s_below(r, 999900)) :
                k == 2 || k == 8 ? s_fmt("%d.%d%%", 1 + s_below(r, 60), s_below(r, 10)) :
                k == 3 || k == 5 ? s_fmt("%d", s_below(r, 500)) :
                k == 4 ? s_money(5 + s_below(r, 20000)) :
                k == 6 ? s_fmt("%d.%d", 1 + s_below(r, 200), s_below(r, 10)) :
                s_fmt("%d.%d", 3 + s_below(r, 8), s_below(r, 10)));
            if (!cell[i][c])
                rc = -1; /* out of memory, or no value of this split */
        }
    if (oom)
        rc = -1;
    if (!rc)
        rc = s_block(sp, st->x, 0, sz + 8, 1) || s_line(sp, strdup(schemas[s].title));
    if (!rc) {
        s_block_end(sp);
        rc = s_block(sp, st->x, 0, sz, 2) || s_line(sp, strdup(schemas[s].head0));
    }
    for (int i = 0; i < nrows && !rc; i++)
        rc = s_line(sp, strdup(schemas[s].rows[rows[i]]));
    static const int colx[3] = {440, 620, 790};
    for (int c = 0; c < 3 && !rc; c++) {
        s_block_end(sp);
        rc = s_block(sp, colx[c], 1, sz, 2) || s_line(sp, strdup(schemas[s].col[c]));
        for (int i = 0; i < nrows && !rc; i++) {
            char *col = s_lower_first(schemas[s].col[c]);
            rc = s_line(sp, strdup(cell[i][c])) ||
                 s_qa(sp, s_fmt("What is the %s for %s?", col ? col : "", schemas[s].rows[rows[i]]),
                      cell[i][c], "table/list");
            cell[i][c] = NULL;
            free(col);
        }
    }
    for (int i = 0; i < nrows; i++)
        for (int c = 0; c < 3; c++)
            free(cell[i][c]);
    if (rc)
        return -1;
    s_block_end(sp);
    if (s_footer(sp, "Table"))
        return -1;
    if (npages > 1) {
        if (s_block(sp, st->x, 0, 16, 0) || s_line(sp, s_fmt("Page %d of %d", page + 1, npages)))
            return -1;
        s_block_end(sp);
    }
    return 0;
}

/* A shop's receipt, monospaced, in a centred column. */
static int s_receipt_page(S_Page *sp)
{
    S_Rng *r = sp->r;
    int oom = 0, sz = sp->st.size - 2, f = sp->st.mono, x = 250, xr = 760;
    char *shop = S_DRAW(sp, &oom, s_fmt("%s's %s", s_pick(r, s_last, S_N(s_last)),
                                        s_pick(r, s_shops, S_N(s_shops))));
    char *city = shop ? S_DRAW(sp, &oom, strdup(s_pick(r, s_cities, S_N(s_cities)))) : NULL;
    char *date = city ? S_DRAW(sp, &oom, s_date(r)) : NULL;
    char *no = date ? S_DRAW(sp, &oom, s_fmt("%04d-%03d", s_below(r, 10000), s_below(r, 1000))) : NULL;
    int n = 3 + s_below(r, 5), items[8], rate = 5 + s_below(r, 5), rc = 0;
    char *ps[8] = {0}, *sub = NULL, *tax = NULL, *tot = NULL;
    if (no) {
        rc = -1;
        for (int tries = 0; tries < 200000 && rc && !oom; tries++) {
            s_choose(r, items, S_N(s_items), n);
            long long s = 0;
            int ok = 1;
            for (int i = 0; i < n && ok; i++) {
                long long c = 0;
                ps[i] = S_DRAW(sp, &oom, s_money(c = 99 + s_below(r, 9900)));
                ok = ps[i] != NULL;
                s += c;
            }
            long long t = (s * rate + 50) / 100;
            if (ok && (sub = s_keep(sp, s_money(s), &oom)) && (tax = s_keep(sp, s_money(t), &oom)) &&
                (tot = s_keep(sp, s_money(s + t), &oom))) {
                rc = 0;
                break;
            }
            for (int i = 0; i < n; i++) {
                free(ps[i]);
                ps[i] = NULL;
            }
            free(sub);
            free(tax);
            sub = tax = NULL;
        }
    }
    if (!no || rc) {
        free(shop);
        free(city);
        free(date);
        free(no);
        return -1; /* out of memory, or a split with none of these values */
    }
    rc = s_block_f(sp, x, 0, sz + 6, 1, f, 0) || s_line(sp, strdup(shop)) ||
         s_qa(sp, strdup("What is the name of the store?"), shop, "layout");
    shop = NULL;
    if (!rc) {
        s_block_end(sp);
        rc = s_block_f(sp, x, 0, sz, 0, f, 0) || s_line(sp, strdup(city)) ||
             s_qa(sp, strdup("In which city is the store?"), city, "layout");
        city = NULL;
    }
    if (!rc)
        rc = s_line(sp, s_fmt("Date: %s", date)) || s_qa(sp, strdup("What is the date of the receipt?"), date, "form");
    date = NULL;
    if (!rc)
        rc = s_line(sp, s_fmt("Receipt no: %s", no)) || s_qa(sp, strdup("What is the receipt number?"), no, "form");
    no = NULL;
    if (!rc)
        rc = s_line(sp, strdup("--------------------------"));
    if (!rc) {
        s_block_end(sp);
        rc = s_block_f(sp, x, 0, sz, 0, f, 0);
    }
    for (int i = 0; i < n && !rc; i++)
        rc = s_line(sp, strdup(s_items[items[i]]));
    if (!rc) {
        s_block_end(sp);
        rc = s_block_f(sp, xr, 1, sz, 0, f, 1);
    }
    for (int i = 0; i < n && !rc; i++) {
        char *q = s_lower_first(s_items[items[i]]);
        rc = s_line(sp, strdup(ps[i])) ||
             s_qa(sp, s_fmt("What is the price of %s?", q ? q : ""), ps[i], "table/list");
        ps[i] = NULL;
        free(q);
    }
    if (!rc) {
        s_block_end(sp);
        rc = s_block_f(sp, x, 0, sz, 1, f, 0) || s_line(sp, strdup("Subtotal")) ||
             s_line(sp, s_fmt("Tax %d%%", rate)) || s_line(sp, strdup("TOTAL"));
    }
    if (!rc) {
        s_block_end(sp);
        rc = s_block_f(sp, xr, 1, sz, 1, f, 1) || s_line(sp, strdup(sub)) ||
             s_qa(sp, strdup("What is the subtotal?"), sub, "form");
        sub = NULL;
    }
    if (!rc)
        rc = s_line(sp, strdup(tax)) || s_qa(sp, strdup("How much is the tax?"), tax, "form");
    tax = NULL;
    if (!rc)
        rc = s_line(sp, strdup(tot)) || s_qa(sp, strdup("What is the total?"), tot, "form");
    tot = NULL;
    if (!rc) {
        s_block_end(sp);
        rc = s_block_f(sp, x, 0, sz - 2, 0, f, 0) || s_line(sp, strdup("Thank you for shopping!"));
        if (!rc)
            s_block_end(sp);
    }
    for (int i = 0; i < n; i++)
        free(ps[i]);
    free(shop);
    free(city);
    free(date);
    free(no);
    free(sub);
    free(tax);
    free(tot);
    return rc;
}

/* A memo: header fields, then sentences wrapped into lines.  A value is
 * one unbreakable token, so an answer never straddles two lines. */
typedef struct S_Tok {
    char *text;     /* as printed (a value may carry a full stop) */
    char *value;    /* the printed value, or NULL for plain words */
    char *question; /* the value's question, or NULL (a value asked about nowhere) */
} S_Tok;

static int s_text_page(S_Page *sp, const char *title)
{
    S_Rng *r = sp->r;
    const S_Style *st = &sp->st;
    int oom = 0, sz = st->size;
    if (s_block(sp, st->x, 0, sz + 8, 1) || s_line(sp, strdup(title)))
        return -1;
    s_block_end(sp);
    char *to = S_DRAW(sp, &oom, s_person(r));
    char *from = NULL;
    for (int t = 0; to && t < 100 && !oom && (!from || !strcmp(from, to)); t++) {
        free(from);
        from = S_DRAW(sp, &oom, s_person(r));
    }
    char *date = from ? S_DRAW(sp, &oom, s_date(r)) : NULL;
    if (!date || !strcmp(to, from)) {
        free(to);
        free(from);
        free(date);
        return oom ? -1 : 0;
    }
    int rc = s_block(sp, st->x, 0, sz, 3) || s_line(sp, s_fmt("To: %s", to)) ||
             s_qa(sp, strdup("To whom is the memo addressed?"), to, "form");
    if (!rc)
        rc = s_line(sp, s_fmt("From: %s", from)) || s_qa(sp, strdup("Who wrote the memo?"), from, "form");
    else
        free(from);
    if (!rc)
        rc = s_line(sp, s_fmt("Date: %s", date)) || s_qa(sp, strdup("What is the date of the memo?"), date, "form");
    else
        free(date);
    if (rc)
        return -1;
    s_block_end(sp);
    /* sentences: each template at most once, so every question has one answer */
    enum { NT = 5, MAXTOK = 64 };
    int order[NT], nt = 3 + s_below(r, 3), ntok = 0;
    s_choose(r, order, NT, nt);
    S_Tok tok[MAXTOK];
    char *v[3];
#define S_W(str) (tok[ntok++] = (S_Tok){strdup(str), NULL, NULL})
#define S_V(val, stop, q) (tok[ntok++] = (S_Tok){(stop) ? s_fmt("%s.", val) : strdup(val), strdup(val), (q)})
    for (int k = 0; k < nt && !oom; k++) {
        if (s_below(r, 2))
            S_W(s_fillers[s_below(r, S_N(s_fillers))]);
        v[0] = v[1] = v[2] = NULL;
        switch (order[k]) {
        case 0:
            v[0] = S_DRAW(sp, &oom, s_company(r));
            v[1] = v[0] ? S_DRAW(sp, &oom, strdup(s_pick(r, s_cities, S_N(s_cities)))) : NULL;
            v[2] = v[1] ? S_DRAW(sp, &oom, s_date(r)) : NULL;
            if (!v[2])
                break;
            S_W("The annual meeting of");
            S_V(v[0], 0, NULL);
            S_W("was held in");
            S_V(v[1], 0, s_fmt("Where was the annual meeting of %s held?", v[0]));
            S_W("on");
            S_V(v[2], 1, s_fmt("When was the annual meeting of %s held?", v[0]));
            break;
        case 1:
            v[0] = S_DRAW(sp, &oom, s_person(r));
            v[1] = v[0] ? S_DRAW(sp, &oom, strdup(s_pick(r, s_depts, S_N(s_depts)))) : NULL;
            if (!v[1])
                break;
            S_V(v[0], 0, s_fmt("Who was appointed head of %s?", v[1]));
            S_W("was appointed head of");
            S_V(v[1], 0, s_fmt("Which department does %s now lead?", v[0]));
            S_W("after a long search.");
            break;
        case 2:
            v[0] = S_DRAW(sp, &oom, s_fmt("%d", 12 + s_below(r, 988)));
            v[1] = v[0] ? S_DRAW(sp, &oom, s_money(100000 + (long long)s_below(r, 90000000))) : NULL;
            if (!v[1])
                break;
            S_W("The study enrolled");
            S_V(v[0], 0, strdup("How many participants did the study enroll?"));
            S_W("participants and cost");
            S_V(v[1], 0, strdup("How much did the study cost?"));
            S_W("in total.");
            break;
        case 3:
            v[0] = S_DRAW(sp, &oom, s_person(r));
            v[1] = v[0] ? S_DRAW(sp, &oom, s_phone(r)) : NULL;
            if (!v[1])
                break;
            S_W("Shipments are handled by");
            S_V(v[0], 0, strdup("Who handles shipments?"));
            S_W("who can be reached at");
            S_V(v[1], 1, s_fmt("What is the phone number of %s?", v[0]));
            break;
        default:
            v[0] = S_DRAW(sp, &oom, s_fmt("%d", 1990 + s_below(r, 30)));
            v[1] = v[0] ? S_DRAW(sp, &oom, strdup(s_pick(r, s_cities, S_N(s_cities)))) : NULL;
            if (!v[1])
                break;
            S_W("The company was founded in");
            S_V(v[0], 0, strdup("In which year was the company founded?"));
            S_W("and moved its offices to");
            S_V(v[1], 1, strdup("Where did the company move its offices?"));
            break;
        }
        for (int i = 0; i < 3; i++)
            free(v[i]);
    }
#undef S_W
#undef S_V
    /* wrap: characters per line from the usable width and the size */
    int width = (940 - st->x) * SYNTH_WIDTH_DEFAULT / 1000;
    int cpl = (int)(width / (0.62 * sz));
    char line[512] = "";
    int first = 0; /* tokens [first, i) are on the line being filled */
    rc = oom || s_block(sp, st->x, 0, sz, 0);
    for (int i = 0; i < ntok && !rc; i++)
        rc = !tok[i].text || (tok[i].value && !tok[i].question && s_note(sp, tok[i].value));
    for (int i = 0; i <= ntok && !rc; i++) {
        size_t len = strlen(line), tl = i < ntok ? strlen(tok[i].text) : 0;
        if (i == ntok || (len && (int)(len + 1 + tl) > cpl)) {
            rc = s_line(sp, strdup(line));
            for (int k = first; k < i && !rc; k++)
                if (tok[k].question) {
                    rc = s_qa(sp, tok[k].question, tok[k].value, "free_text");
                    tok[k].question = tok[k].value = NULL;
                }
            line[0] = '\0';
            len = 0;
            first = i;
        }
        if (i < ntok && len + tl + 2 < sizeof line) {
            if (len)
                strcat(line, " ");
            strcat(line, tok[i].text);
        }
    }
    for (int i = 0; i < ntok; i++) {
        free(tok[i].text);
        free(tok[i].value);
        free(tok[i].question);
    }
    if (rc)
        return -1;
    s_block_end(sp);
    return 0;
}

static const char *const *s_kv_list(SynthKind kind, int *n)
{
    if (kind == SYNTH_KV_COLOURS) {
        *n = S_N(s_colours);
        return s_colours;
    }
    *n = S_N(s_nouns);
    return s_nouns;
}

static char *s_kv_word(S_Rng *r, SynthKind kind)
{
    if (kind == SYNTH_KV_NUMBERS)
        return s_spelled(1 + s_below(r, 99));
    int n;
    const char *const *list = s_kv_list(kind, &n);
    return strdup(s_pick(r, list, n));
}

static int s_kv_page(S_Page *sp, SynthKind kind)
{
    enum { NPAIRS = 12 };
    S_Rng *r = sp->r;
    char *keys[NPAIRS] = {0};
    int rc = s_block(sp, sp->st.x, 0, sp->st.size, 3), oom = 0;
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
            v = S_DRAW(sp, &oom, s_kv_word(r, kind));
        } while (k && v && !strcmp(k, v));
        keys[i] = k;
        if (!k || !v || s_line(sp, s_fmt("%s: %s", k, v)) || s_qa(sp, s_fmt("What is %s?", k), v, "form")) {
            rc = -1;
        }
    }
    if (!rc)
        s_block_end(sp);
    sp->p->kv = 1;
    for (int i = 0; i < NPAIRS; i++)
        free(keys[i]);
    return rc;
}

int synth_gen_page(SynthKind kind, S_Page *sp, const char *title, int page, int npages)
{
    switch (kind) {
    case SYNTH_FORM: return s_form_page(sp, title, page, npages);
    case SYNTH_TABLE: return s_table_page(sp, page, npages);
    case SYNTH_RECEIPT: return s_receipt_page(sp);
    case SYNTH_TEXT: return s_text_page(sp, title);
    default: return s_kv_page(sp, kind);
    }
}

const char *synth_gen_title(SynthKind kind, S_Rng *r)
{
    return kind == SYNTH_FORM ? s_pick(r, s_titles, S_N(s_titles))
           : kind == SYNTH_TEXT ? s_pick(r, s_memo_titles, S_N(s_memo_titles))
                                : "";
}
