/* corpus.c - read DocVQA annotation files, JSON lines and document
 * archives into pages with their questions (see corpus.h).
 *
 * Every format goes through one builder: s_add puts a question on its
 * (image, page), creating the page on first sight, so pages keep the order
 * in which the corpus first mentions them and questions keep file order.
 * Missing image files are not checked here: the worker records an
 * unreadable page as an item error, and one bad file must not stop a job
 * of a million pages. */
#include "worker/data/corpus.h"
#include "common/dm_fs.h"
#include "common/jsonschema.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "worker/image/image.h"

/* ------------------------------------------------------------------ */
/* a small open-addressing map: 64-bit hash -> int, equality by callback */

typedef struct S_Map {
    uint64_t *h;
    int *v; /* -1: empty */
    size_t cap, n;
} S_Map;

static uint64_t s_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t s_hash_str(const char *s, uint64_t h)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static int s_map_grow(S_Map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    uint64_t *h = malloc(cap * sizeof *h);
    int *v = malloc(cap * sizeof *v);
    if (!h || !v) {
        free(h);
        free(v);
        return -1;
    }
    for (size_t i = 0; i < cap; i++)
        v[i] = -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->v[i] < 0)
            continue;
        size_t j = m->h[i] & (cap - 1);
        while (v[j] >= 0)
            j = (j + 1) & (cap - 1);
        h[j] = m->h[i];
        v[j] = m->v[i];
    }
    free(m->h);
    free(m->v);
    m->h = h;
    m->v = v;
    m->cap = cap;
    return 0;
}

/* The value stored under hash h for which eq(ctx, value) holds, or -1. */
static int s_map_find(const S_Map *m, uint64_t h, int (*eq)(const void *, int), const void *ctx)
{
    if (!m->cap)
        return -1;
    for (size_t j = h & (m->cap - 1); m->v[j] >= 0; j = (j + 1) & (m->cap - 1))
        if (m->h[j] == h && eq(ctx, m->v[j]))
            return m->v[j];
    return -1;
}

static int s_map_put(S_Map *m, uint64_t h, int v)
{
    if ((m->n + 1) * 2 > m->cap && s_map_grow(m))
        return -1;
    size_t j = h & (m->cap - 1);
    while (m->v[j] >= 0)
        j = (j + 1) & (m->cap - 1);
    m->h[j] = h;
    m->v[j] = v;
    m->n++;
    return 0;
}

static void s_map_free(S_Map *m)
{
    free(m->h);
    free(m->v);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------ */
/* the builder */

typedef enum { S_WHERE_DATA, S_WHERE_LINE, S_WHERE_ARCHIVE } S_Where;

typedef struct S_Builder {
    Corpus *c;
    const char *file;   /* named in messages */
    const char *root;   /* image paths resolve against it */
    S_Where where_kind; /* how an entry is named in messages */
    int pcap;
    int *qcap;          /* per page */
    S_Map pages;        /* (image_path, page_no) -> page index */
    S_Map qids;         /* qid -> index into qid/where */
    int64_t *qid;
    int *where;         /* entry index or line of each question */
    int nall, allcap;
} S_Builder;

typedef struct S_PageKey {
    const Corpus *c;
    const char *path;
    int page;
} S_PageKey;

static int s_page_eq(const void *ctx, int v)
{
    const S_PageKey *k = ctx;
    return k->c->pages[v].page_no == k->page && !strcmp(k->c->pages[v].image_path, k->path);
}

typedef struct S_QidKey {
    const S_Builder *b;
    int64_t qid;
} S_QidKey;

static int s_qid_eq(const void *ctx, int v)
{
    const S_QidKey *k = ctx;
    return k->b->qid[v] == k->qid;
}

static void s_question_free(CorpusQuestion *q)
{
    free(q->text);
    for (int i = 0; i < q->nanswers; i++)
        free(q->answers[i]);
    free(q->answers);
    for (int i = 0; i < q->nqtypes; i++)
        free(q->qtypes[i]);
    free(q->qtypes);
    memset(q, 0, sizeof *q);
}

static void s_where(const S_Builder *b, int w, char *buf, size_t n)
{
    if (b->where_kind == S_WHERE_DATA)
        snprintf(buf, n, "data[%d]", w);
    else if (b->where_kind == S_WHERE_LINE)
        snprintf(buf, n, "line %d", w);
    else
        snprintf(buf, n, "question %d", w);
}

/* "root/rel", or rel when it is absolute or there is no root. */
static char *s_join(const char *root, const char *rel)
{
    if (rel[0] == '/' || !root || !*root)
        return strdup(rel);
    size_t lr = strlen(root), ll = strlen(rel);
    char *s = malloc(lr + ll + 2);
    if (!s)
        return NULL;
    memcpy(s, root, lr);
    size_t n = lr;
    if (s[n - 1] != '/')
        s[n++] = '/';
    memcpy(s + n, rel, ll + 1);
    return s;
}

static char *s_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Find or create the page of `image` (as the corpus writes it) and page
 * number; returns its index or -1. */
static int s_page(S_Builder *b, const char *image, int page_no, DmErr *err)
{
    Corpus *c = b->c;
    char *path = s_join(b->root, image);
    if (!path)
        return dm_err(err, "%s: out of memory", b->file);
    S_PageKey key = {c, path, page_no};
    uint64_t h = s_mix(s_hash_str(path, 0xcbf29ce484222325ULL) ^ (uint64_t)page_no);
    int p = s_map_find(&b->pages, h, s_page_eq, &key);
    if (p >= 0) {
        free(path);
        return p;
    }
    if (c->npages == b->pcap) {
        int cap = b->pcap ? b->pcap * 2 : 64;
        CorpusPage *np = realloc(c->pages, (size_t)cap * sizeof *np);
        if (np)
            c->pages = np;
        int *nq = realloc(b->qcap, (size_t)cap * sizeof *nq);
        if (nq)
            b->qcap = nq;
        if (!np || !nq) {
            free(path);
            return dm_err(err, "%s: out of memory", b->file);
        }
        b->pcap = cap;
    }
    CorpusPage *pg = &c->pages[c->npages];
    memset(pg, 0, sizeof *pg);
    pg->image_path = path;
    pg->page_no = page_no;
    size_t il = strlen(image);
    pg->page_id = malloc(il + 16);
    if (!pg->page_id) {
        free(path);
        return dm_err(err, "%s: out of memory", b->file);
    }
    if (page_no > 0)
        snprintf(pg->page_id, il + 16, "%s#p%d", image, page_no);
    else
        memcpy(pg->page_id, image, il + 1);
    pg->document = strdup(image);
    b->qcap[c->npages] = 0;
    if (!pg->document || s_map_put(&b->pages, h, c->npages)) {
        free(pg->document);
        free(pg->page_id);
        free(path);
        return dm_err(err, "%s: out of memory", b->file);
    }
    return c->npages++;
}

/* Add q (taken over, freed on error) on page p; `where` names the entry. */
static int s_add_to(S_Builder *b, int p, CorpusQuestion *q, int where, DmErr *err)
{
    char w1[64], w2[64];
    S_QidKey key = {b, q->qid};
    uint64_t h = s_mix((uint64_t)q->qid);
    int prev = s_map_find(&b->qids, h, s_qid_eq, &key);
    if (prev >= 0) {
        s_where(b, where, w1, sizeof w1);
        s_where(b, b->where[prev], w2, sizeof w2);
        dm_err(err, "%s: %s: questionId %lld repeats %s", b->file, w1, (long long)q->qid, w2);
        s_question_free(q);
        return -1;
    }
    if (b->nall == b->allcap) {
        int cap = b->allcap ? b->allcap * 2 : 256;
        int64_t *nq = realloc(b->qid, (size_t)cap * sizeof *nq);
        if (nq)
            b->qid = nq;
        int *nw = realloc(b->where, (size_t)cap * sizeof *nw);
        if (nw)
            b->where = nw;
        if (!nq || !nw)
            goto oom;
        b->allcap = cap;
    }
    CorpusPage *pg = &b->c->pages[p];
    if (pg->nq == b->qcap[p]) {
        int cap = b->qcap[p] ? b->qcap[p] * 2 : 4;
        CorpusQuestion *nq = realloc(pg->q, (size_t)cap * sizeof *nq);
        if (!nq)
            goto oom;
        pg->q = nq;
        b->qcap[p] = cap;
    }
    if (s_map_put(&b->qids, h, b->nall))
        goto oom;
    b->qid[b->nall] = q->qid;
    b->where[b->nall] = where;
    b->nall++;
    pg->q[pg->nq++] = *q;
    b->c->nquestions++;
    return 0;
oom:
    s_question_free(q);
    return dm_err(err, "%s: out of memory", b->file);
}

static int s_add(S_Builder *b, const char *image, int page_no, CorpusQuestion *q, int where, DmErr *err)
{
    int p = s_page(b, image, page_no, err);
    if (p < 0) {
        s_question_free(q);
        return -1;
    }
    return s_add_to(b, p, q, where, err);
}

static int s_builder_init(S_Builder *b, const char *file, const char *root, S_Where kind, DmErr *err)
{
    memset(b, 0, sizeof *b);
    b->file = file;
    b->root = root;
    b->where_kind = kind;
    b->c = calloc(1, sizeof *b->c);
    if (!b->c)
        return dm_err(err, "%s: out of memory", file);
    return 0;
}

/* Finish: hand the corpus over (or free it when rc != 0). */
static int s_builder_done(S_Builder *b, int rc, Corpus **out)
{
    s_map_free(&b->pages);
    s_map_free(&b->qids);
    free(b->qcap);
    free(b->qid);
    free(b->where);
    if (rc == 0) {
        *out = b->c;
    } else {
        corpus_free(&b->c);
    }
    b->c = NULL;
    return rc;
}

/* ------------------------------------------------------------------ */
/* reading entries (DocVQA and JSON lines share these) */


/* An array of strings (or, with allow_string, one string) into a list. */
static int s_strings(const json_t *v, int allow_string, char ***out, int *n, const char *file,
                     const char *w, const char *key, DmErr *err)
{
    *out = NULL;
    *n = 0;
    if (allow_string && json_is_string(v)) {
        *out = malloc(sizeof **out);
        if (!*out || !(**out = strdup(json_string_value(v)))) {
            free(*out);
            *out = NULL;
            return dm_err(err, "%s: out of memory", file);
        }
        *n = 1;
        return 0;
    }
    if (!json_is_array(v))
        return dm_err(err, "%s: %s: %s: expected %sa list of strings, got %s", file, w, key,
                      allow_string ? "a string or " : "", jsonschema_type_name(v));
    size_t k = json_array_size(v);
    for (size_t i = 0; i < k; i++)
        if (!json_is_string(json_array_get(v, i)))
            return dm_err(err, "%s: %s: %s[%zu]: expected string, got %s", file, w, key, i,
                          jsonschema_type_name(json_array_get(v, i)));
    if (!k)
        return 0;
    *out = calloc(k, sizeof **out);
    if (!*out)
        return dm_err(err, "%s: out of memory", file);
    for (size_t i = 0; i < k; i++) {
        (*out)[i] = strdup(json_string_value(json_array_get(v, i)));
        if (!(*out)[i]) {
            for (size_t j = 0; j < i; j++)
                free((*out)[j]);
            free(*out);
            *out = NULL;
            return dm_err(err, "%s: out of memory", file);
        }
    }
    *n = (int)k;
    return 0;
}

/* The first of `keys` present in obj (NULL if none); *name gets its key. */
static json_t *s_get_alias(const json_t *obj, const char *const *keys, const char **name)
{
    for (int i = 0; keys[i]; i++) {
        json_t *v = json_object_get(obj, keys[i]);
        if (v) {
            *name = keys[i];
            return v;
        }
    }
    *name = keys[0];
    return NULL;
}

static const char *const s_k_qid[] = {"questionId", "question_id", "id", NULL};
static const char *const s_k_question[] = {"question", NULL};
static const char *const s_k_image[] = {"image", "image_path", "file_name", NULL};
static const char *const s_k_answers[] = {"answers", "answer", NULL};
static const char *const s_k_qtypes[] = {"question_types", NULL};
static const char *const s_k_page[] = {"page", NULL};

/* One entry (a DocVQA data[] element or a JSON line) into the builder.
 * jsonl: accept the aliases, a single answer string and a page number. */
static int s_entry(S_Builder *b, const json_t *e, int where, int jsonl, DmErr *err)
{
    char w[64];
    const char *k;
    s_where(b, where, w, sizeof w);
    if (!json_is_object(e))
        return dm_err(err, "%s: %s: expected an object, got %s", b->file, w, jsonschema_type_name(e));
    CorpusQuestion q = {0};
    /* the official layout has exactly one spelling of each key */
    static const char *const qid1[] = {"questionId", NULL}, *const img1[] = {"image", NULL},
                             *const ans1[] = {"answers", NULL};
    const char *const *alias_qid = jsonl ? s_k_qid : qid1;
    const char *const *alias_img = jsonl ? s_k_image : img1;
    const char *const *alias_ans = jsonl ? s_k_answers : ans1;
    const json_t *v = s_get_alias(e, alias_qid, &k);
    if (!v)
        return dm_err(err, "%s: %s: %s: missing (required integer)", b->file, w,
                      jsonl ? "questionId (or question_id, id)" : k);
    if (!json_is_integer(v))
        return dm_err(err, "%s: %s: %s: expected integer, got %s", b->file, w, k, jsonschema_type_name(v));
    /* Store keys are the id as unsigned big-endian bytes: a negative id
     * would sort after every positive one and read back as another. */
    if (json_integer_value(v) < 0)
        return dm_err(err, "%s: %s: %s: must not be negative, got %lld", b->file, w, k,
                      (long long)json_integer_value(v));
    /* Every JSON output prints ids as numbers, and many JSON readers hold
     * numbers as doubles: above 2^53 - 1 they would round to another id. */
    if (json_integer_value(v) > CORPUS_MAX_QID)
        return dm_err(err, "%s: %s: %s: %lld is above 2^53-1 = %lld, the largest id JSON "
                           "readers keep exactly",
                      b->file, w, k, (long long)json_integer_value(v), CORPUS_MAX_QID);
    q.qid = (int64_t)json_integer_value(v);
    v = s_get_alias(e, s_k_question, &k);
    if (!v)
        return dm_err(err, "%s: %s: question: missing (required string)", b->file, w);
    if (!json_is_string(v))
        return dm_err(err, "%s: %s: question: expected string, got %s", b->file, w, jsonschema_type_name(v));
    if (!json_string_length(v))
        return dm_err(err, "%s: %s: question: empty", b->file, w);
    const json_t *qv = v;
    const json_t *img = s_get_alias(e, alias_img, &k);
    if (!img)
        return dm_err(err, "%s: %s: %s: missing (required string)", b->file, w,
                      jsonl ? "image (or image_path, file_name)" : k);
    if (!json_is_string(img))
        return dm_err(err, "%s: %s: %s: expected string, got %s", b->file, w, k, jsonschema_type_name(img));
    if (!json_string_length(img))
        return dm_err(err, "%s: %s: %s: empty", b->file, w, k);
    int page_no = 0;
    if (jsonl && (v = s_get_alias(e, s_k_page, &k))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000)
            return dm_err(err, "%s: %s: page: expected a page number from 0, got %s", b->file, w,
                          jsonschema_type_name(v));
        page_no = (int)json_integer_value(v);
    }
    if ((v = s_get_alias(e, alias_ans, &k)) && !json_is_null(v) &&
        s_strings(v, jsonl, &q.answers, &q.nanswers, b->file, w, k, err))
        return -1;
    if ((v = s_get_alias(e, s_k_qtypes, &k)) && !json_is_null(v) &&
        s_strings(v, 0, &q.qtypes, &q.nqtypes, b->file, w, k, err)) {
        s_question_free(&q);
        return -1;
    }
    if (!(q.text = strdup(json_string_value(qv)))) {
        s_question_free(&q);
        return dm_err(err, "%s: out of memory", b->file);
    }
    return s_add(b, json_string_value(img), page_no, &q, where, err);
}

/* ------------------------------------------------------------------ */
/* DocVQA annotation JSON */

static int s_load_docvqa(const CorpusSpec *spec, const char *root, Corpus **out, DmErr *err)
{
    json_error_t je;
    json_t *doc = json_load_file(spec->path, 0, &je);
    if (!doc) {
        if (je.line <= 0)
            return dm_err(err, "%s: %s", spec->path, je.text);
        return dm_err(err, "%s:%d:%d: %s", spec->path, je.line, je.column, je.text);
    }
    const json_t *data = json_object_get(doc, "data");
    if (!json_is_object(doc) || !json_is_array(data)) {
        json_decref(doc);
        return dm_err(err, "%s: not a DocVQA annotation file (expected an object with a \"data\" "
                           "list)",
                      spec->path);
    }
    S_Builder b;
    if (s_builder_init(&b, spec->path, root, S_WHERE_DATA, err)) {
        json_decref(doc);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < json_array_size(data) && !rc; i++)
        rc = s_entry(&b, json_array_get(data, i), (int)i, 0, err);
    json_decref(doc);
    return s_builder_done(&b, rc, out);
}

/* ------------------------------------------------------------------ */
/* JSON lines */

static int s_load_jsonl(const CorpusSpec *spec, const char *root, Corpus **out, DmErr *err)
{
    FILE *f = dm_fopen_regular(spec->path, err);
    if (!f)
        return -1;
    S_Builder b;
    if (s_builder_init(&b, spec->path, root, S_WHERE_LINE, err)) {
        fclose(f);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0, lineno = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        const char *s = line;
        if (lineno == 1 && len >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3))
            s += 3;
        while (*s && isspace((unsigned char)*s))
            s++;
        if (!*s)
            continue;
        json_error_t je;
        json_t *e = json_loads(s, JSON_DISABLE_EOF_CHECK, &je);
        if (!e) {
            rc = dm_err(err, "%s: line %d: %s", spec->path, lineno, je.text);
            break;
        }
        size_t used = je.position;
        while (s[used] && isspace((unsigned char)s[used]))
            used++;
        if (s[used])
            rc = dm_err(err, "%s: line %d: more than one JSON value on the line", spec->path, lineno);
        else
            rc = s_entry(&b, e, lineno, 1, err);
        json_decref(e);
    }
    if (!rc && ferror(f))
        rc = dm_err(err, "%s: read error", spec->path);
    free(line);
    fclose(f);
    return s_builder_done(&b, rc, out);
}

/* ------------------------------------------------------------------ */
/* archives */

typedef struct S_List {
    char **s;
    int n, cap;
} S_List;

static int s_list_push(S_List *l, char *s)
{
    if (!s)
        return -1;
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        char **ns = realloc(l->s, (size_t)cap * sizeof *ns);
        if (!ns) {
            free(s);
            return -1;
        }
        l->s = ns;
        l->cap = cap;
    }
    l->s[l->n++] = s;
    return 0;
}

static void s_list_free(S_List *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static int s_doc_ext(const char *name)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pdf"};
    const char *dot = strrchr(name, '.');
    if (!dot)
        return 0;
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (!strcasecmp(dot, ext[i]))
            return 1;
    return 0;
}

/* Scanning progress: a line at most every 2 s (a folder of thousands of
 * PDFs takes a while to list and count). */
typedef struct S_Progress {
    FILE *f;      /* NULL: silent */
    double last;  /* monotonic time of the start or the last line */
} S_Progress;

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int s_progress_due(S_Progress *pr)
{
    if (!pr->f)
        return 0;
    double t = s_now();
    if (t - pr->last < 2.0)
        return 0;
    pr->last = t;
    return 1;
}

/* Collect document paths under root/rel (rel "" at the top), relative to
 * root.  Hidden entries are skipped; symbolic links to files are
 * followed, links to folders are not (no cycles). */
static int s_scan(const char *root, const char *rel, S_List *out, int depth, S_Progress *pr,
                  DmErr *err)
{
    char *dir = *rel ? s_join(root, rel) : strdup(root);
    if (!dir)
        return dm_err(err, "%s: out of memory", root);
    if (depth > 64) {
        dm_err(err, "%s: folders nested too deep", dir);
        free(dir);
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        dm_err_errno(err, "%s", dir);
        free(dir);
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *sub = *rel ? s_join(rel, de->d_name) : strdup(de->d_name);
        char *full = sub ? s_join(root, sub) : NULL;
        struct stat st;
        if (!sub || !full) {
            rc = dm_err(err, "%s: out of memory", dir);
        } else if (lstat(full, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                rc = s_scan(root, sub, out, depth + 1, pr, err);
            } else if (s_doc_ext(de->d_name) &&
                       (S_ISREG(st.st_mode) || (S_ISLNK(st.st_mode) && stat(full, &st) == 0 &&
                                                S_ISREG(st.st_mode)))) {
                rc = s_list_push(out, sub) ? dm_err(err, "%s: out of memory", dir) : 0;
                sub = NULL;
                if (!rc && s_progress_due(pr))
                    fprintf(pr->f, "docmint: scanning %s: %d documents found so far\n", root,
                            out->n);
            }
        }
        free(sub);
        free(full);
    }
    closedir(d);
    free(dir);
    return rc;
}

static int s_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read a whole file (NUL-terminated). */
static char *s_read_all(const char *path, size_t *len, DmErr *err)
{
    FILE *f = dm_fopen_regular(path, err);
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                dm_err(err, "%s: out of memory", path);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (!got)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        dm_err(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* Split text into trimmed, non-empty lines, skipping those starting with
 * `comment` (0: none).  lineno (optional) gets each kept line's number. */
static int s_lines(char *text, char comment, S_List *out, int **lineno, const char *file, DmErr *err)
{
    int ln = 0, cap = 0;
    if (lineno)
        *lineno = NULL;
    if (!memcmp(text, "\xEF\xBB\xBF", 3))
        text += 3;
    for (char *s = text; *s;) {
        char *e = strchr(s, '\n');
        char *next = e ? e + 1 : s + strlen(s);
        if (!e)
            e = next;
        ln++;
        while (s < e && isspace((unsigned char)*s))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (e > s && !(comment && *s == comment)) {
            if (s_list_push(out, strndup(s, (size_t)(e - s))))
                return dm_err(err, "%s: out of memory", file);
            if (lineno) {
                if (out->n > cap) {
                    cap = out->cap;
                    int *nl = realloc(*lineno, (size_t)cap * sizeof *nl);
                    if (!nl)
                        return dm_err(err, "%s: out of memory", file);
                    *lineno = nl;
                }
                (*lineno)[out->n - 1] = ln;
            }
        }
        s = next;
    }
    return 0;
}

/* The questions file: a JSON array of strings, or one question per line. */
static int s_questions(const char *path, S_List *out, DmErr *err)
{
    size_t len;
    char *text = s_read_all(path, &len, err);
    if (!text)
        return -1;
    if (strlen(text) != len) {
        free(text);
        return dm_err(err, "%s: contains NUL bytes (not a text file)", path);
    }
    const char *s = text;
    if (!memcmp(s, "\xEF\xBB\xBF", 3))
        s += 3;
    while (isspace((unsigned char)*s))
        s++;
    int rc = 0, *lineno = NULL;
    if (*s == '[') {
        json_error_t je;
        json_t *arr = json_loads(s, 0, &je);
        if (!arr) {
            rc = dm_err(err, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        } else {
            for (size_t i = 0; i < json_array_size(arr) && !rc; i++) {
                const json_t *q = json_array_get(arr, i);
                if (!json_is_string(q))
                    rc = dm_err(err, "%s: [%zu]: expected string, got %s", path, i, jsonschema_type_name(q));
                else if (!json_string_length(q))
                    rc = dm_err(err, "%s: [%zu]: empty question", path, i);
                else if (s_list_push(out, strdup(json_string_value(q))))
                    rc = dm_err(err, "%s: out of memory", path);
                else {
                    for (int j = 0; j + 1 < out->n && !rc; j++)
                        if (!strcmp(out->s[j], out->s[out->n - 1]))
                            rc = dm_err(err, "%s: [%zu]: repeats [%d]", path, i, j);
                }
            }
            json_decref(arr);
        }
    } else {
        rc = s_lines(text, 0, out, &lineno, path, err);
        for (int i = 1; i < out->n && !rc; i++)
            for (int j = 0; j < i && !rc; j++)
                if (!strcmp(out->s[i], out->s[j]))
                    rc = dm_err(err, "%s: line %d: repeats line %d", path, lineno[i], lineno[j]);
    }
    free(lineno);
    free(text);
    if (!rc && !out->n)
        rc = dm_err(err, "%s: no questions", path);
    return rc;
}

/* Archive questionIds: a hash of the page id and the question, so they
 * stay the same when documents are added to or removed from the archive
 * (a rerun over a grown folder resumes instead of renumbering).  53 bits,
 * positive, so that JSON readers holding numbers as doubles keep them
 * exact (legacy: the 63 bits of stores made before); a collision is
 * reported as a duplicate questionId.  n questions collide with
 * probability about n^2 / 2^54: 1 in 18,000 for a million. */
static int64_t s_archive_qid(const char *page_id, const char *question, int legacy)
{
    uint64_t h = s_hash_str(page_id, 0xcbf29ce484222325ULL);
    h = (h ^ '\n') * 0x100000001b3ULL;
    h = s_mix(s_hash_str(question, h));
    int64_t id = (int64_t)(h & (legacy ? 0x7FFFFFFFFFFFFFFFULL : (uint64_t)CORPUS_MAX_QID));
    return id ? id : 1;
}

static int s_load_archive(const CorpusSpec *spec, Corpus **out, DmErr *err)
{
    struct stat st;
    if (stat(spec->path, &st))
        return dm_err_errno(err, "%s", spec->path);
    if (!spec->questions)
        return dm_err(err, "%s: an archive needs a questions file (corpus.questions)", spec->path);
    int is_dir = S_ISDIR(st.st_mode);
    S_List docs = {0}, qs = {0};
    S_Progress pr = {spec->progress, s_now()};
    /* A folder's documents are found in it, so paths resolve against it;
     * a list file's lines resolve against image_root or its folder. */
    char *root = is_dir ? strdup(spec->path)
                        : spec->image_root ? strdup(spec->image_root) : s_dirname(spec->path);
    if (!root)
        return dm_err(err, "%s: out of memory", spec->path);
    int rc;
    if (is_dir) {
        rc = s_scan(spec->path, "", &docs, 0, &pr, err);
        if (!rc && docs.n)
            qsort(docs.s, (size_t)docs.n, sizeof *docs.s, s_cmp_str);
    } else {
        char *text = s_read_all(spec->path, NULL, err);
        rc = text ? s_lines(text, '#', &docs, NULL, spec->path, err) : -1;
        free(text);
    }
    if (!rc && !docs.n)
        rc = dm_err(err, "%s: no documents (.png .jpg .jpeg .tif .tiff .pdf)", spec->path);
    if (!rc)
        rc = s_questions(spec->questions, &qs, err);
    S_Builder b;
    if (!rc)
        rc = s_builder_init(&b, spec->path, root, S_WHERE_ARCHIVE, err);
    if (rc) {
        s_list_free(&docs);
        s_list_free(&qs);
        free(root);
        return -1;
    }
    /* Page counts of the earlier scan, by document: reused while the
     * file's size and modification time stay the same. */
    json_t *cache = spec->scan_cache ? json_loads(spec->scan_cache, 0, NULL) : NULL;
    json_t *old = json_integer_value(json_object_get(cache, "version")) == 1
                      ? json_object_get(cache, "files") : NULL;
    json_t *files = json_object();
    if (!rc && !files)
        rc = dm_err(err, "%s: out of memory", spec->path);
    int nth = 0, total_pages = 0;
    for (int d = 0; d < docs.n && !rc; d++) {
        char *path = s_join(root, docs.s[d]);
        int npages = 1, known = 0;
        struct stat fs;
        DmErr ignored;
        if (!path) {
            rc = dm_err(err, "%s: out of memory", spec->path);
            break;
        }
        int have = stat(path, &fs) == 0 && S_ISREG(fs.st_mode);
        json_t *e = have && old ? json_object_get(old, docs.s[d]) : NULL;
        if (json_is_array(e) && json_array_size(e) == 4 &&
            json_integer_value(json_array_get(e, 0)) == (json_int_t)fs.st_size &&
            json_integer_value(json_array_get(e, 1)) == (json_int_t)fs.st_mtim.tv_sec &&
            json_integer_value(json_array_get(e, 2)) == (json_int_t)fs.st_mtim.tv_nsec &&
            json_integer_value(json_array_get(e, 3)) >= 1 &&
            json_integer_value(json_array_get(e, 3)) <= 1000000) {
            npages = (int)json_integer_value(json_array_get(e, 3));
            known = 1;
            b.c->scan_reused++;
        } else {
            /* An unreadable document still gets its page 0, so the worker
             * records the reason as an item error; it is not kept in the
             * scan, so the next load looks at it again. */
            known = image_count_pages(path, &npages, &ignored) == 0;
            if (!known)
                npages = 1;
            b.c->scan_counted++;
        }
        free(path);
        /* a name that is not UTF-8 cannot be a JSON key: counted each time */
        if (have && known)
            json_object_set_new(files, docs.s[d],
                                json_pack("[I,I,I,i]", (json_int_t)fs.st_size,
                                          (json_int_t)fs.st_mtim.tv_sec,
                                          (json_int_t)fs.st_mtim.tv_nsec, npages));
        total_pages += npages;
        if (s_progress_due(&pr))
            fprintf(pr.f, "docmint: %s: %d of %d documents, %d pages so far (%d counted, %d "
                          "from the earlier scan)\n",
                    spec->path, d + 1, docs.n, total_pages, b.c->scan_counted, b.c->scan_reused);
        for (int p = 0; p < npages && !rc; p++) {
            int pi = s_page(&b, docs.s[d], p, err);
            if (pi < 0) {
                rc = -1;
                break;
            }
            for (int j = 0; j < qs.n && !rc; j++) {
                CorpusQuestion q = {0};
                q.qid = s_archive_qid(b.c->pages[pi].page_id, qs.s[j], spec->legacy_ids);
                if (!(q.text = strdup(qs.s[j])))
                    rc = dm_err(err, "%s: out of memory", spec->path);
                else
                    rc = s_add_to(&b, pi, &q, nth++, err);
            }
        }
    }
    if (!rc) {
        json_t *keep = json_pack("{s:i s:O}", "version", 1, "files", files);
        b.c->scan = keep ? json_dumps(keep, JSON_COMPACT) : NULL;
        json_decref(keep);
        if (!b.c->scan)
            rc = dm_err(err, "%s: out of memory", spec->path);
    }
    json_decref(files);
    json_decref(cache);
    s_list_free(&docs);
    s_list_free(&qs);
    rc = s_builder_done(&b, rc, out);
    free(root);
    return rc;
}

/* ------------------------------------------------------------------ */

int corpus_format_parse(const char *s, CorpusFormat *f)
{
    if (!s)
        return -1;
    if (!strcmp(s, "docvqa"))
        *f = CORPUS_DOCVQA;
    else if (!strcmp(s, "jsonl"))
        *f = CORPUS_JSONL;
    else if (!strcmp(s, "archive"))
        *f = CORPUS_ARCHIVE;
    else
        return -1;
    return 0;
}

int corpus_load(const CorpusSpec *spec, Corpus **out, DmErr *err)
{
    if (!out)
        return dm_err(err, "corpus_load: no output");
    *out = NULL;
    if (!spec || !spec->path || !*spec->path)
        return dm_err(err, "corpus: no path");
    if (spec->format == CORPUS_ARCHIVE)
        return s_load_archive(spec, out, err);
    if (spec->format != CORPUS_DOCVQA && spec->format != CORPUS_JSONL)
        return dm_err(err, "%s: unknown corpus format %d", spec->path, (int)spec->format);
    struct stat st;
    if (stat(spec->path, &st))
        return dm_err_errno(err, "%s", spec->path);
    if (S_ISDIR(st.st_mode))
        return dm_err(err, "%s: is a folder, not an annotation file", spec->path);
    char *root = spec->image_root ? strdup(spec->image_root) : s_dirname(spec->path);
    if (!root)
        return dm_err(err, "%s: out of memory", spec->path);
    int rc = spec->format == CORPUS_DOCVQA ? s_load_docvqa(spec, root, out, err)
                                           : s_load_jsonl(spec, root, out, err);
    free(root);
    return rc;
}

void corpus_free(Corpus **c)
{
    if (!c || !*c)
        return;
    Corpus *k = *c;
    for (int i = 0; i < k->npages; i++) {
        CorpusPage *p = &k->pages[i];
        for (int j = 0; j < p->nq; j++)
            s_question_free(&p->q[j]);
        free(p->q);
        free(p->page_id);
        free(p->document);
        free(p->image_path);
    }
    free(k->pages);
    free(k->scan);
    free(k);
    *c = NULL;
}
