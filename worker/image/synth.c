/* synth.c - synthetic document pages: options, splits, documents from
 * their seeded stream, corrupted twins (see synth.h).  The kinds of pages
 * are in synth_kinds.c, the drawing in synth_render.c. */
#define _GNU_SOURCE /* strndup */
#include "worker/image/synth.h"

#include "worker/image/synth_gen.h"

const SynthFont synth_fonts[] = {
    {"DejaVu Sans", "dejavu/DejaVuSans.ttf", "fonts-dejavu-core", 0},
    {"DejaVu Serif", "dejavu/DejaVuSerif.ttf", "fonts-dejavu-core", 0},
    {"Liberation Sans", "liberation/LiberationSans-Regular.ttf", "fonts-liberation", 0},
    {"Liberation Serif", "liberation/LiberationSerif-Regular.ttf", "fonts-liberation", 0},
    {"FreeSans", "freefont/FreeSans.ttf", "fonts-freefont-ttf", 0},
    {"FreeSerif", "freefont/FreeSerif.ttf", "fonts-freefont-ttf", 0},
    {"DejaVu Sans Mono", "dejavu/DejaVuSansMono.ttf", "fonts-dejavu-core", 1},
    {"Liberation Mono", "liberation/LiberationMono-Regular.ttf", "fonts-liberation", 1},
    {"FreeMono", "freefont/FreeMono.ttf", "fonts-freefont-ttf", 1},
};
const int synth_nfonts = S_N(synth_fonts);

SynthSplit synth_value_split(const char *value)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a, then a final mix */
    for (const unsigned char *c = (const unsigned char *)value; *c; c++)
        h = (h ^ *c) * 0x100000001b3ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    int k = (int)(h % 10);
    return k == 0 ? SYNTH_VAL : k == 1 ? SYNTH_TEST : SYNTH_TRAIN;
}

/* Keep v when it belongs to the page's split, else free it and return NULL
 * (set *oom when v itself is NULL). */
void synth_options_default(SynthOptions *o)
{
    memset(o, 0, sizeof *o);
    o->seed = 1;
    o->kind = SYNTH_MIX;
    o->pages_per_doc = 1;
    o->questions_per_page = 3;
    o->width = SYNTH_WIDTH_DEFAULT;
    o->height = SYNTH_HEIGHT_DEFAULT;
}

static const char *const s_kind_names[] = {"form", "colours", "nouns", "numbers", "table",
                                           "receipt", "text", "mix"};

int synth_kind_parse(const char *s, SynthKind *k)
{
    for (int i = 0; i < S_N(s_kind_names); i++)
        if (!strcmp(s, s_kind_names[i])) {
            *k = (SynthKind)i;
            return 0;
        }
    if (!strcmp(s, "colors")) {
        *k = SYNTH_KV_COLOURS;
        return 0;
    }
    return -1;
}

const char *synth_kind_name(SynthKind k)
{
    return (int)k >= 0 && (int)k < S_N(s_kind_names) ? s_kind_names[k] : "form";
}

const char *synth_split_name(SynthSplit s)
{
    return s == SYNTH_VAL ? "val" : s == SYNTH_TEST ? "test" : "train";
}

SynthSplit synth_split_of(int ndocs, int index)
{
    int nheld = ndocs >= 3 ? (ndocs / 10 > 1 ? ndocs / 10 : 1) : 0;
    int ntrain = ndocs - 2 * nheld;
    return index < ntrain ? SYNTH_TRAIN : index < ntrain + nheld ? SYNTH_VAL : SYNTH_TEST;
}

void synth_page_free(SynthPage *p)
{
    for (int i = 0; i < p->nlines; i++)
        free(p->lines[i]);
    free(p->lines);
    free(p->blocks);
    for (int i = 0; i < p->nqa; i++) {
        free(p->qa[i].question);
        free(p->qa[i].answer);
        free(p->qa[i].v_clean);
        free(p->qa[i].v_pos);
    }
    free(p->qa);
    for (int i = 0; i < p->nvalues; i++)
        free(p->values[i]);
    free(p->values);
    memset(p, 0, sizeof *p);
}

void synth_doc_free(SynthDoc *doc)
{
    if (!doc)
        return;
    for (int i = 0; i < doc->npages; i++)
        synth_page_free(&doc->pages[i]);
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
    for (int i = 0; i < q && i < n; i++) {
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

int synth_doc_make(const SynthOptions *o, int index, SynthSplit split, SynthDoc *doc, DmErr *err)
{
    memset(doc, 0, sizeof *doc);
    if (o->pages_per_doc < 1 || o->pages_per_doc > 1000)
        return dm_err(err, "synth: pages per document %d out of range 1..1000", o->pages_per_doc);
    if (o->questions_per_page < 1)
        return dm_err(err, "synth: questions per page %d must be at least 1", o->questions_per_page);
    if (index < 0)
        return dm_err(err, "synth: document index %d is negative", index);
    if ((int)o->kind < 0 || (int)o->kind > SYNTH_MIX)
        return dm_err(err, "synth: unknown page kind %d", (int)o->kind);
    /* One stream per document, independent of the others. */
    S_Rng r = {o->seed * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)index + 1) * 0xd1b54a32d192ed03ULL};
    s_next(&r);
    doc->index = index;
    doc->split = split;
    doc->kind = o->kind == SYNTH_MIX ? (SynthKind)s_below(&r, SYNTH_NKINDS) : o->kind;
    S_Style st;
    st.font = s_below(&r, S_NPROP);
    st.mono = S_NPROP + s_below(&r, synth_nfonts - S_NPROP);
    st.size = 18 + 2 * s_below(&r, 4);
    st.x = 60 + 15 * s_below(&r, 5);
    st.aligned = s_below(&r, 2);
    const char *title = synth_gen_title(doc->kind, &r);
    doc->pages = calloc((size_t)o->pages_per_doc, sizeof *doc->pages);
    doc->title = strdup(title);
    if (!doc->pages || !doc->title) {
        synth_doc_free(doc);
        return dm_err(err, "synth: out of memory");
    }
    for (int p = 0; p < o->pages_per_doc; p++) {
        S_Page sp = {&doc->pages[p], 0, 0, 0, 0, &r, split, st};
        doc->npages = p + 1;
        int rc = synth_gen_page(doc->kind, &sp, doc->title, p, o->pages_per_doc);
        if (rc) {
            SynthKind kind = doc->kind;
            synth_doc_free(doc);
            return dm_err(err, "synth: document %d (%s, %s): out of memory or no value of this split",
                          index, synth_kind_name(kind), synth_split_name(split));
        }
        s_keep_questions(&r, &doc->pages[p], o->questions_per_page);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* corrupted twins */

static void s_derange(S_Rng *r, int *perm, int n)
{
    for (int tries = 0; tries < 1000; tries++) {
        for (int i = 0; i < n; i++)
            perm[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = s_below(r, i + 1), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        int fixed = 0;
        for (int i = 0; i < n; i++)
            fixed |= perm[i] == i;
        if (!fixed || n < 2)
            return;
    }
}

int synth_page_corrupt(const SynthPage *clean, uint64_t seed, SynthPage *twin, DmErr *err)
{
    memset(twin, 0, sizeof *twin);
    if (!clean->kv)
        return dm_err(err, "synth: only key-value pages have corrupted twins");
    int n = clean->nlines;
    char **key = calloc((size_t)n, sizeof *key), **val = calloc((size_t)n, sizeof *val);
    int *pk = malloc((size_t)n * sizeof *pk), *pv = malloc((size_t)n * sizeof *pv);
    int rc = !key || !val || !pk || !pv;
    for (int i = 0; i < n && !rc; i++) {
        const char *sep = strstr(clean->lines[i], ": ");
        if (!sep) {
            rc = dm_err(err, "synth: line \"%s\" is not \"key: value\"", clean->lines[i]);
            break;
        }
        key[i] = strndup(clean->lines[i], (size_t)(sep - clean->lines[i]));
        val[i] = strdup(sep + 2);
        rc = !key[i] || !val[i];
    }
    if (!rc) {
        S_Rng r = {seed ^ 0x5851f42d4c957f2dULL};
        s_next(&r);
        s_derange(&r, pk, n); /* twin line i shows key pk[i] ... */
        s_derange(&r, pv, n); /* ... and value pv[i] */
        twin->nlines = n;
        twin->lines = calloc((size_t)n, sizeof *twin->lines);
        twin->nblocks = clean->nblocks;
        twin->blocks = malloc((size_t)clean->nblocks * sizeof *twin->blocks);
        twin->qa = calloc((size_t)(clean->nqa ? clean->nqa : 1), sizeof *twin->qa);
        twin->kv = 1;
        rc = !twin->lines || !twin->blocks || !twin->qa;
        if (!rc)
            memcpy(twin->blocks, clean->blocks, (size_t)clean->nblocks * sizeof *twin->blocks);
        for (int i = 0; i < n && !rc; i++)
            rc = !(twin->lines[i] = s_fmt("%s: %s", key[pk[i]], val[pv[i]]));
        for (int q = 0; q < clean->nqa && !rc; q++) {
            int c = clean->qa[q].line, j = 0;
            while (j < n && pk[j] != c)
                j++;
            SynthQA *t = &twin->qa[twin->nqa++];
            *t = (SynthQA){strdup(clean->qa[q].question), strdup(val[pv[j]]), clean->qa[q].qtype, j,
                           strdup(val[c]), strdup(val[pv[c]])};
            rc = !t->question || !t->answer || !t->v_clean || !t->v_pos;
        }
    }
    for (int i = 0; i < n && key; i++) {
        free(key[i]);
        free(val ? val[i] : NULL);
    }
    free(key);
    free(val);
    free(pk);
    free(pv);
    if (rc) {
        synth_page_free(twin);
        return err && err->msg[0] ? -1 : dm_err(err, "synth: out of memory");
    }
    return 0;
}
