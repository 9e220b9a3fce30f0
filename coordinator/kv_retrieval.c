/* kv_retrieval.c - the corrupt corpus, the answer classes and the record
 * fields of the key-value retrieval analysis (kv_retrieval.h). */
#include "coordinator/kv_retrieval.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "coordinator/anls.h"

static int s_cmp_item(const void *a, const void *b)
{
    int64_t x = ((const KvItem *)a)->qid, y = ((const KvItem *)b)->qid;
    return x < y ? -1 : x > y;
}

static void s_item_free(KvItem *it)
{
    free(it->twin);
    free(it->clean);
    free(it->v_clean);
    free(it->v_new);
    free(it->v_pos);
    free(it->set);
}

void kv_table_free(KvTable **pt)
{
    KvTable *t = *pt;
    if (!t)
        return;
    for (int i = 0; i < t->n; i++)
        s_item_free(&t->items[i]);
    for (int p = 0; p < t->npages; p++)
        free(t->twin_of_page[p]);
    free(t->twin_of_page);
    free(t->items);
    free(t->path);
    free(t);
    *pt = NULL;
}

/* dir/rel resolved to an absolute path of an existing regular file, or
 * NULL (errno set). */
static char *s_file(const char *dir, const char *rel)
{
    char joined[PATH_MAX * 2];
    if (rel[0] == '/')
        snprintf(joined, sizeof joined, "%s", rel);
    else
        snprintf(joined, sizeof joined, "%s/%s", dir, rel);
    struct stat sb;
    char *r = realpath(joined, NULL);
    if (r && (stat(r, &sb) || !S_ISREG(sb.st_mode))) {
        free(r);
        return NULL;
    }
    return r;
}

static const char *s_str(const json_t *e, const char *key)
{
    const json_t *v = json_object_get(e, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int kv_table_load(const char *path, KvTable **out, DmErr *err)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return dm_err(err, "%s: not a JSON file (line %d: %s)", path, je.line, je.text);
    KvTable *t = calloc(1, sizeof *t);
    json_t *data = json_object_get(root, "data");
    char *dir = t ? strdup(path) : NULL;
    int rc = -1;
    if (!t || !dir || !(t->path = strdup(path))) {
        dm_err(err, "%s: out of memory", path);
        goto done;
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    if (!json_is_array(data) || !json_array_size(data)) {
        dm_err(err, "%s: no \"data\" array of questions (a corrupt corpus is "
                    "corrupt_v1.0_withQT.json of docmint synth --kv SET --corrupt)", path);
        goto done;
    }
    size_t n = json_array_size(data), i;
    json_t *e;
    if (!(t->items = calloc(n, sizeof *t->items))) {
        dm_err(err, "%s: out of memory", path);
        goto done;
    }
    json_array_foreach(data, i, e) {
        KvItem *it = &t->items[t->n++]; /* counted now: freed with the table on any error */
        const json_t *qv = json_object_get(e, "questionId");
        if (!json_is_integer(qv) || json_integer_value(qv) < 0) {
            dm_err(err, "%s: data[%zu]: no questionId (a non-negative integer)", path, i);
            goto done;
        }
        it->qid = json_integer_value(qv);
        it->page = -1;
        static const char *const need[] = {"image", "clean_image", "v_clean", "v_new", "v_pos"};
        for (size_t k = 0; k < sizeof need / sizeof *need; k++)
            if (!s_str(e, need[k])) {
                dm_err(err, "%s: data[%zu] (questionId %lld): no \"%s\" string (kv_retrieval "
                            "needs image, clean_image, v_clean, v_new and v_pos, as docmint "
                            "synth --corrupt writes them)",
                       path, i, (long long)it->qid, need[k]);
                goto done;
            }
        const char *img = s_str(e, "image"), *clean = s_str(e, "clean_image");
        const char *set = s_str(e, "kv_set");
        if (!(it->twin = s_file(dir, img))) {
            dm_err(err, "%s: data[%zu] (questionId %lld): the twin page %s does not exist", path,
                   i, (long long)it->qid, img);
            goto done;
        }
        if (!(it->clean = s_file(dir, clean))) {
            dm_err(err, "%s: data[%zu] (questionId %lld): the clean page %s does not exist", path,
                   i, (long long)it->qid, clean);
            goto done;
        }
        if (!(it->v_clean = strdup(s_str(e, "v_clean"))) ||
            !(it->v_new = strdup(s_str(e, "v_new"))) || !(it->v_pos = strdup(s_str(e, "v_pos"))) ||
            !(it->set = strdup(set ? set : "other"))) {
            dm_err(err, "%s: out of memory", path);
            goto done;
        }
    }
    qsort(t->items, (size_t)t->n, sizeof *t->items, s_cmp_item);
    for (int k = 1; k < t->n; k++)
        if (t->items[k].qid == t->items[k - 1].qid) {
            dm_err(err, "%s: questionId %lld appears twice", path, (long long)t->items[k].qid);
            goto done;
        }
    rc = 0;
done:
    free(dir);
    json_decref(root);
    if (rc)
        kv_table_free(&t);
    *out = t;
    return rc;
}

static KvItem *s_find(const KvTable *t, int64_t qid)
{
    KvItem key = {.qid = qid};
    return t->n ? bsearch(&key, t->items, (size_t)t->n, sizeof key, s_cmp_item) : NULL;
}

const KvItem *kv_table_find(const KvTable *t, int64_t qid)
{
    const KvItem *it = t ? s_find(t, qid) : NULL;
    return it && it->page >= 0 ? it : NULL;
}

int kv_table_pair(KvTable *t, const Corpus *c, const char *corpus_path, DmErr *err)
{
    if (!(t->twin_of_page = calloc((size_t)c->npages + 1, sizeof *t->twin_of_page)))
        return dm_err(err, "%s: out of memory", t->path);
    t->npages = c->npages;
    t->paired = 0;
    for (int p = 0; p < c->npages; p++) {
        const CorpusPage *cp = &c->pages[p];
        char *real = NULL;
        for (int q = 0; q < cp->nq; q++) {
            KvItem *it = s_find(t, cp->q[q].qid);
            if (!it)
                continue;
            if (!real && !(real = realpath(cp->image_path, NULL)))
                return dm_err(err, "%s: questionId %lld: its corpus page %s does not exist",
                              t->path, (long long)it->qid, cp->image_path);
            if (strcmp(real, it->clean) || cp->page_no != 0) {
                dm_err(err, "%s: questionId %lld: clean_image %s is not the page of that question "
                            "in %s (%s)",
                       t->path, (long long)it->qid, it->clean, corpus_path, cp->page_id);
                free(real);
                return -1;
            }
            if (t->twin_of_page[p] && strcmp(t->twin_of_page[p], it->twin)) {
                dm_err(err, "%s: questionId %lld: page %s has two twins, %s and %s", t->path,
                       (long long)it->qid, cp->page_id, t->twin_of_page[p], it->twin);
                free(real);
                return -1;
            }
            if (!t->twin_of_page[p] && !(t->twin_of_page[p] = strdup(it->twin))) {
                free(real);
                return dm_err(err, "%s: out of memory", t->path);
            }
            it->page = p;
            t->paired++;
        }
        free(real);
    }
    if (!t->paired)
        return dm_err(err, "%s: pairs no question of corpus %s (no questionId in common)",
                      t->path, corpus_path);
    return 0;
}

Docmint__KvClass kv_classify(const char *answer, const char *v_clean, const char *v_new,
                             const char *v_pos)
{
    char *a = anls_normalize(answer ? answer : ""), *c = anls_normalize(v_clean),
         *n = anls_normalize(v_new), *p = anls_normalize(v_pos);
    Docmint__KvClass k = !strcmp(c, n) || !strcmp(c, p) || !strcmp(n, p)
                             ? DOCMINT__KV_CLASS__KV_TIED
                         : !strcmp(a, p) ? DOCMINT__KV_CLASS__KV_POSITIONAL
                         : !strcmp(a, n) ? DOCMINT__KV_CLASS__KV_SEMANTIC
                         : !strcmp(a, c) ? DOCMINT__KV_CLASS__KV_MEMORISED
                                         : DOCMINT__KV_CLASS__KV_FAILURE;
    free(a);
    free(c);
    free(n);
    free(p);
    return k;
}

const char *kv_class_name(Docmint__KvClass c)
{
    switch (c) {
    case DOCMINT__KV_CLASS__KV_POSITIONAL: return "positional";
    case DOCMINT__KV_CLASS__KV_SEMANTIC: return "semantic";
    case DOCMINT__KV_CLASS__KV_MEMORISED: return "memorised";
    case DOCMINT__KV_CLASS__KV_FAILURE: return "failure";
    case DOCMINT__KV_CLASS__KV_TIED: return "tied";
    default: return "none";
    }
}

void kv_record_fill(const KvTable *t, Docmint__AnalysisRecord *r)
{
    const KvItem *it = r->answer_index == 0 ? kv_table_find(t, r->question_id) : NULL;
    if (!it) {
        /* not a key-value item: nothing a worker sent stays */
        r->kv_answer_clean = r->kv_answer_patched = r->kv_answer_control = (char *)"";
        r->kv_set = r->kv_v_clean = r->kv_v_new = r->kv_v_pos = (char *)"";
        r->kv_class = r->kv_control_class = DOCMINT__KV_CLASS__KV_NONE;
        return;
    }
    r->kv_set = it->set;
    r->kv_v_clean = it->v_clean;
    r->kv_v_new = it->v_new;
    r->kv_v_pos = it->v_pos;
    r->kv_class = kv_classify(r->kv_answer_patched, it->v_clean, it->v_new, it->v_pos);
    r->kv_control_class = kv_classify(r->kv_answer_control, it->v_clean, it->v_new, it->v_pos);
}
