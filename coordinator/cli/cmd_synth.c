/* cmd_synth.c - `docmint synth OUT_DIR`: a synthetic corpus in the
 * official DocVQA layout (documents/DOC_PAGE.png, train_v1.0_withQT.json,
 * val_v1.0_withQT.json, test_v1.0.json without answers, and the test
 * split with its answers in test_v1.0_withQT.json), whose answers are
 * all printed on their pages.  Pages come from worker/image/synth.c; this file
 * splits, renders them on a pool of threads, numbers and writes them.
 *
 * Documents are rendered in chunks: the threads take the chunk's documents
 * in any order, then one thread appends their questions in document order,
 * so every file is the same for any number of threads. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <vips/vips.h>

#include "coordinator/cli/commands.h"
#include "common/dm_error.h"
#include "worker/image/augment.h"
#include "worker/image/image.h"
#include "worker/image/synth.h"

#define S_CHUNK 64
#define S_MAX_THREADS 64

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint synth OUT_DIR [--docs N] [--seed S] [options]\n"
            "\n"
            "Render a synthetic DocVQA-style corpus: OUT_DIR/documents/<doc>_<page>.png,\n"
            "OUT_DIR/train_v1.0_withQT.json, val_v1.0_withQT.json, test_v1.0.json (the\n"
            "official layout: test has no answers), test_v1.0_withQT.json (the test split\n"
            "with its answers, to score it) and OUT_DIR/synth_lines.jsonl (every rendered\n"
            "line and printed value of every page).  The same seed gives the same\n"
            "corpus, for any number of threads.  No exact value string (an answer, a cell,\n"
            "an amount) appears in two splits.  See docs/synth.md.\n"
            "\n"
            "  --docs N                documents (default 10); with 3 or more, a tenth (at\n"
            "                          least one) goes to val and to test, the rest to train\n"
            "  --seed S                random seed (default 1)\n"
            "  --kind K                form, table, receipt, text, colours, nouns, numbers,\n"
            "                          or mix: each document draws one (default mix)\n"
            "  --kv colours|nouns|numbers\n"
            "                          the same as --kind: key-value pages of the retrieval\n"
            "                          experiment (\"key: value\" lines; \"What is <key>?\")\n"
            "  --pages-per-doc K       pages per document (default 1)\n"
            "  --questions-per-page Q  questions per page (default 3; a page offers 6 to 20)\n"
            "  --width W --height H    page size in pixels (default %dx%d)\n"
            "  --threads T             rendering threads (default: the CPUs, at most 16)\n"
            "  --augment SPEC          augment every page: default, none, or a comma list of\n"
            "                          rotate=DEG,scale=F,blur=SIGMA,jpeg=MINQ (default none;\n"
            "                          'default' is rotate=1.5,scale=0.04,blur=0.8,jpeg=50)\n"
            "  --corrupt               also render the corrupted twin of every key-value page,\n"
            "                          documents/<doc>_<page>_corrupt.png, and write\n"
            "                          corrupt_v1.0_withQT.json (answers on the twins, with\n"
            "                          v_clean, v_new, v_pos per question)\n"
            "  --font-dir DIR          where the font files are (default\n"
            "                          /usr/share/fonts/truetype)\n"
            "  --tiff                  also write each multi-page document as one\n"
            "                          multi-page TIFF, OUT_DIR/tiff/<doc>.tif\n"
            "  --quiet                 no summary line\n"
            "  -h, --help              show this help\n",
            SYNTH_WIDTH_DEFAULT, SYNTH_HEIGHT_DEFAULT);
}

static int s_int_arg(const char *flag, const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "docmint synth: %s %s: expected an integer from %d to %d\n", flag, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int s_mkdir(const char *path, DmErr *err)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return dm_err_errno(err, "%s: cannot create folder", path);
    struct stat st;
    if (stat(path, &st) || !S_ISDIR(st.st_mode))
        return dm_err(err, "%s: exists and is not a folder", path);
    return 0;
}

static json_t *s_strlist(const char *s)
{
    json_t *a = json_array();
    json_array_append_new(a, json_string(s));
    return a;
}

static int s_write(const char *dir, const char *name, json_t *root, DmErr *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (json_dump_file(root, path, 0))
        return dm_err(err, "%s: cannot write", path);
    return 0;
}

/* One document of a chunk: made and rendered by a thread. */
typedef struct S_Slot {
    SynthDoc doc;
    SynthPage *twins; /* doc.npages, or NULL when not a key-value document */
    int rc;
    DmErr err;
} S_Slot;

typedef struct S_Work {
    const SynthOptions *o;
    const char *out;
    int ndocs, first, n, tiff, corrupt;
    S_Slot *slots;
    int next; /* the next slot to take (under mu) */
    pthread_mutex_t mu;
} S_Work;

static int s_render_doc(const S_Work *w, int d, S_Slot *s)
{
    char path[PATH_MAX];
    SynthDoc *doc = &s->doc;
    if (synth_doc_make(w->o, d, synth_split_of(w->ndocs, d), doc, &s->err))
        return -1;
    if (w->corrupt && doc->pages[0].kv) {
        s->twins = calloc((size_t)doc->npages, sizeof *s->twins);
        if (!s->twins)
            return dm_err(&s->err, "synth: out of memory");
    }
    for (int p = 0; p < doc->npages; p++) {
        snprintf(path, sizeof path, "%s/documents/syn%05d_%d.png", w->out, d, p + 1);
        if (synth_page_save(w->o, &doc->pages[p], synth_aug_key(d, p), path, &s->err))
            return -1;
        if (s->twins) {
            /* the twin is augmented like its clean page, so its lines
             * stay where the clean page's are */
            uint64_t seed = w->o->seed * 0x94d049bb133111ebULL ^ synth_aug_key(d, p);
            snprintf(path, sizeof path, "%s/documents/syn%05d_%d_corrupt.png", w->out, d, p + 1);
            if (synth_page_corrupt(&doc->pages[p], seed, &s->twins[p], &s->err) ||
                synth_page_save(w->o, &s->twins[p], synth_aug_key(d, p), path, &s->err))
                return -1;
        }
    }
    if (w->tiff && doc->npages > 1) {
        snprintf(path, sizeof path, "%s/tiff/syn%05d.tif", w->out, d);
        if (synth_doc_save_tiff(w->o, doc, path, &s->err))
            return -1;
    }
    return 0;
}

static void *s_thread(void *arg)
{
    S_Work *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int i = w->next++;
        pthread_mutex_unlock(&w->mu);
        if (i >= w->n)
            return NULL;
        w->slots[i].rc = s_render_doc(w, w->first + i, &w->slots[i]);
    }
}

typedef struct S_Out {
    json_t *split[3];
    json_t *test_gold; /* the test split with its answers */
    json_t *corrupt;
    FILE *lines;
    long long qid;
    int nq, counts[3], kinds[SYNTH_NKINDS], npages;
} S_Out;

static json_t *s_entry(long long qid, const SynthQA *qa, const char *img, int d, const char *ucsf,
                       const char *pno, SynthSplit split, int answers)
{
    json_t *e = json_object();
    json_object_set_new(e, "questionId", json_integer(qid));
    json_object_set_new(e, "question", json_string(qa->question));
    if (answers)
        json_object_set_new(e, "question_types", s_strlist(qa->qtype));
    json_object_set_new(e, "image", json_string(img));
    json_object_set_new(e, "docId", json_integer(d + 1));
    json_object_set_new(e, "ucsf_document_id", json_string(ucsf));
    json_object_set_new(e, "ucsf_document_page_no", json_string(pno));
    if (answers)
        json_object_set_new(e, "answers", s_strlist(qa->answer));
    json_object_set_new(e, "data_split", json_string(synth_split_name(split)));
    return e;
}

static json_t *s_strarray(char **s, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_string(s[i]));
    return a;
}

/* Append one rendered document's questions and lines, in page order. */
static int s_append(S_Out *so, const char *out, const S_Slot *s, DmErr *err)
{
    const SynthDoc *doc = &s->doc;
    int d = doc->index, si = doc->split;
    char ucsf[32], rel[128], trel[160], pno[16];
    snprintf(ucsf, sizeof ucsf, "syn%05d", d);
    so->counts[si]++;
    so->kinds[doc->kind]++;
    for (int p = 0; p < doc->npages; p++) {
        const SynthPage *pg = &doc->pages[p];
        const SynthPage *tw = s->twins ? &s->twins[p] : NULL;
        snprintf(rel, sizeof rel, "documents/%s_%d.png", ucsf, p + 1);
        snprintf(trel, sizeof trel, "documents/%s_%d_corrupt.png", ucsf, p + 1);
        snprintf(pno, sizeof pno, "%d", p + 1);
        so->npages++;
        for (int q = 0; q < pg->nqa; q++) {
            long long qid = so->qid++;
            json_array_append_new(so->split[si],
                                  s_entry(qid, &pg->qa[q], rel, d, ucsf, pno, doc->split, si != SYNTH_TEST));
            if (si == SYNTH_TEST)
                json_array_append_new(so->test_gold,
                                      s_entry(qid, &pg->qa[q], rel, d, ucsf, pno, doc->split, 1));
            so->nq++;
            if (tw) {
                const SynthQA *t = &tw->qa[q];
                json_t *e = s_entry(qid, t, trel, d, ucsf, pno, doc->split, 1);
                json_object_set_new(e, "clean_image", json_string(rel));
                json_object_set_new(e, "v_clean", json_string(t->v_clean));
                json_object_set_new(e, "v_new", json_string(t->answer));
                json_object_set_new(e, "v_pos", json_string(t->v_pos));
                json_object_set_new(e, "kv_set", json_string(synth_kind_name(doc->kind)));
                json_array_append_new(so->corrupt, e);
            }
        }
        json_t *rec = json_object();
        json_object_set_new(rec, "image", json_string(rel));
        json_object_set_new(rec, "docId", json_integer(d + 1));
        json_object_set_new(rec, "split", json_string(synth_split_name(doc->split)));
        json_object_set_new(rec, "kind", json_string(synth_kind_name(doc->kind)));
        json_object_set_new(rec, "lines", s_strarray(pg->lines, pg->nlines));
        json_object_set_new(rec, "values", s_strarray(pg->values, pg->nvalues));
        if (tw) {
            json_object_set_new(rec, "corrupt_image", json_string(trel));
            json_object_set_new(rec, "corrupt_lines", s_strarray(tw->lines, tw->nlines));
        }
        char *line = json_dumps(rec, JSON_COMPACT);
        json_decref(rec);
        int bad = !line || fprintf(so->lines, "%s\n", line) < 0;
        free(line);
        if (bad)
            return dm_err(err, "%s/synth_lines.jsonl: write failed", out);
    }
    return 0;
}

static void s_slot_free(S_Slot *s)
{
    if (s->twins)
        for (int p = 0; p < s->doc.npages; p++)
            synth_page_free(&s->twins[p]);
    free(s->twins);
    synth_doc_free(&s->doc);
    memset(s, 0, sizeof *s);
}

static int s_write_split(const char *out, const char *file, const char *name, json_t *data, DmErr *err)
{
    json_t *root = json_object();
    json_object_set_new(root, "dataset_name", json_string("docvqa-synth"));
    json_object_set_new(root, "dataset_version", json_string("1.0"));
    json_object_set_new(root, "dataset_split", json_string(name));
    json_object_set(root, "data", data);
    int rc = s_write(out, file, root, err);
    json_decref(root);
    return rc;
}

static int s_synth(const char *out, const SynthOptions *o, int ndocs, int tiff, int corrupt, int threads,
                   S_Out *so, DmErr *err)
{
    char path[PATH_MAX];
    if (image_vips_init(err))
        return -1;
    snprintf(path, sizeof path, "%s/documents", out);
    if (s_mkdir(out, err) || s_mkdir(path, err))
        return -1;
    if (tiff) {
        snprintf(path, sizeof path, "%s/tiff", out);
        if (s_mkdir(path, err))
            return -1;
    }
    snprintf(path, sizeof path, "%s/synth_lines.jsonl", out);
    so->lines = fopen(path, "w");
    if (!so->lines)
        return dm_err_errno(err, "%s: cannot create", path);
    for (int s = 0; s < 3; s++)
        so->split[s] = json_array();
    so->corrupt = json_array();
    so->test_gold = json_array();
    so->qid = 1;
    S_Slot *slots = calloc(S_CHUNK, sizeof *slots);
    int rc = slots ? 0 : dm_err(err, "synth: out of memory");
    /* libvips' own threads would only compete with ours.  No operation
     * cache: a cached text operation let go later, on another thread, would
     * free its Pango layout outside the text lock of synth_render.c. */
    int vips_threads = vips_concurrency_get(), vips_cache = vips_cache_get_max();
    if (threads > 1) {
        vips_concurrency_set(1);
        vips_cache_set_max(0);
    }
    for (int first = 0; first < ndocs && !rc; first += S_CHUNK) {
        S_Work w = {o, out, ndocs, first, ndocs - first < S_CHUNK ? ndocs - first : S_CHUNK, tiff, corrupt,
                    slots, 0, PTHREAD_MUTEX_INITIALIZER};
        pthread_t tid[S_MAX_THREADS];
        int nt = threads < w.n ? threads : w.n, started = 0;
        for (int t = 1; t < nt; t++)
            if (pthread_create(&tid[t], NULL, s_thread, &w) == 0)
                started = t;
            else
                break;
        s_thread(&w);
        for (int t = 1; t <= started; t++)
            pthread_join(tid[t], NULL);
        for (int i = 0; i < w.n; i++) {
            if (!rc && slots[i].rc) {
                *err = slots[i].err;
                rc = -1;
            }
            if (!rc)
                rc = s_append(so, out, &slots[i], err);
            s_slot_free(&slots[i]);
        }
    }
    vips_concurrency_set(vips_threads);
    vips_cache_set_max(vips_cache);
    free(slots);
    if (fclose(so->lines) && !rc)
        rc = dm_err(err, "%s/synth_lines.jsonl: write failed", out);
    static const char *const files[3] = {"train_v1.0_withQT.json", "val_v1.0_withQT.json", "test_v1.0.json"};
    for (int s = 0; s < 3 && !rc; s++)
        rc = s_write_split(out, files[s], synth_split_name((SynthSplit)s), so->split[s], err);
    if (!rc)
        rc = s_write_split(out, "test_v1.0_withQT.json", "test", so->test_gold, err);
    if (!rc && corrupt)
        rc = s_write_split(out, "corrupt_v1.0_withQT.json", "corrupt", so->corrupt, err);
    for (int s = 0; s < 3; s++)
        json_decref(so->split[s]);
    json_decref(so->corrupt);
    json_decref(so->test_gold);
    return rc;
}

int cmd_synth(int argc, char **argv)
{
    const char *out = NULL;
    int ndocs = 10, tiff = 0, quiet = 0, corrupt = 0, threads = 0;
    SynthOptions o;
    synth_options_default(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--tiff")) {
            tiff = 1;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "--corrupt")) {
            corrupt = 1;
        } else if (v && !strcmp(a, "--docs")) {
            if (s_int_arg(a, v, 1, 10000000, &ndocs))
                return 2;
            i++;
        } else if (v && !strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-') {
                fprintf(stderr, "docmint synth: --seed %s: expected a non-negative integer\n", v);
                return 2;
            }
            i++;
        } else if (v && !strcmp(a, "--pages-per-doc")) {
            if (s_int_arg(a, v, 1, 1000, &o.pages_per_doc))
                return 2;
            i++;
        } else if (v && !strcmp(a, "--questions-per-page")) {
            if (s_int_arg(a, v, 1, 100, &o.questions_per_page))
                return 2;
            i++;
        } else if (v && !strcmp(a, "--threads")) {
            if (s_int_arg(a, v, 1, S_MAX_THREADS, &threads))
                return 2;
            i++;
        } else if (v && !strcmp(a, "--kv")) {
            if (synth_kind_parse(v, &o.kind) ||
                (o.kind != SYNTH_KV_COLOURS && o.kind != SYNTH_KV_NOUNS && o.kind != SYNTH_KV_NUMBERS)) {
                fprintf(stderr, "docmint synth: --kv %s: expected colours, nouns or numbers\n", v);
                return 2;
            }
            i++;
        } else if (v && !strcmp(a, "--kind")) {
            if (synth_kind_parse(v, &o.kind)) {
                fprintf(stderr, "docmint synth: --kind %s: expected form, table, receipt, text, colours, "
                                "nouns, numbers or mix\n", v);
                return 2;
            }
            i++;
        } else if (v && !strcmp(a, "--augment")) {
            DmErr e = {{0}};
            if (image_augment_parse(v, &o.augment, &e)) {
                fprintf(stderr, "docmint synth: --%s\n", e.msg);
                return 2;
            }
            i++;
        } else if (v && !strcmp(a, "--font-dir")) {
            o.font_dir = v;
            i++;
        } else if (v && !strcmp(a, "--width")) {
            if (s_int_arg(a, v, 64, 20000, &o.width))
                return 2;
            i++;
        } else if (v && !strcmp(a, "--height")) {
            if (s_int_arg(a, v, 64, 20000, &o.height))
                return 2;
            i++;
        } else if (a[0] == '-') {
            fprintf(stderr, "docmint synth: unknown or incomplete option %s (see --help)\n", a);
            return 2;
        } else if (!out) {
            out = a;
        } else {
            fprintf(stderr, "docmint synth: unexpected argument %s\n", a);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "docmint synth: needs OUT_DIR (see --help)\n");
        return 2;
    }
    if (!threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > 16 ? 16 : (int)n;
    }
    char note[2048];
    int missing = synth_fonts_check(&o, note, sizeof note);
    if (missing == synth_nfonts) {
        fprintf(stderr, "docmint synth: %s\n", note);
        return 1;
    }
    if (missing)
        fprintf(stderr, "docmint synth: %s\n", note);
    DmErr err = {{0}};
    S_Out so;
    memset(&so, 0, sizeof so);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (s_synth(out, &o, ndocs, tiff, corrupt, threads, &so, &err)) {
        fprintf(stderr, "docmint synth: %s\n", err.msg);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (!quiet) {
        printf("%s: %d documents (train %d, val %d, test %d), %d pages of %dx%d, %d questions, "
               "%s pages, seed %llu\n",
               out, ndocs, so.counts[0], so.counts[1], so.counts[2], so.npages, o.width, o.height, so.nq,
               synth_kind_name(o.kind), (unsigned long long)o.seed);
        printf("kinds:");
        for (int k = 0; k < SYNTH_NKINDS; k++)
            if (so.kinds[k])
                printf(" %s %d", synth_kind_name((SynthKind)k), so.kinds[k]);
        printf("; %.1f s, %.1f pages/s on %d thread%s\n", secs, secs > 0 ? so.npages / secs : 0.0, threads,
               threads == 1 ? "" : "s");
    }
    return 0;
}
