/* cmd_synth.c - `docmint synth OUT_DIR`: a synthetic corpus in the
 * official DocVQA layout (documents/DOC_PAGE.png, train_v1.0_withQT.json,
 * val_v1.0_withQT.json, test_v1.0.json without answers), whose answers are
 * all printed on their pages.  Pages come from worker/image/synth.c; this file
 * numbers, splits and writes them. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "coordinator/cli/commands.h"
#include "common/dm_error.h"
#include "worker/image/synth.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint synth OUT_DIR [--docs N] [--seed S] [options]\n"
            "\n"
            "Render a synthetic DocVQA-style corpus: OUT_DIR/documents/<doc>_<page>.png,\n"
            "OUT_DIR/train_v1.0_withQT.json, val_v1.0_withQT.json, test_v1.0.json (the\n"
            "official layout; test has no answers) and OUT_DIR/synth_lines.jsonl (every\n"
            "rendered line of every page).  The same seed gives the same corpus.\n"
            "\n"
            "  --docs N                documents (default 10); with 3 or more, a tenth (at\n"
            "                          least one) goes to val and to test, the rest to train\n"
            "  --seed S                random seed (default 1)\n"
            "  --pages-per-doc K       pages per document (default 1)\n"
            "  --questions-per-page Q  questions per page (default 3; a form page offers\n"
            "                          about 15, a key-value page 12)\n"
            "  --kv colours|nouns|numbers\n"
            "                          key-value pages of the retrieval experiment (keys and\n"
            "                          values are colour names, common nouns or spelled-out\n"
            "                          numbers) instead of form pages (default: forms)\n"
            "  --width W --height H    page size in pixels (default %dx%d)\n"
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

typedef struct S_Split {
    const char *name, *file;
    int answers;
    json_t *data;
} S_Split;

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

static int s_synth(const char *out, const SynthOptions *o, int ndocs, int tiff, int *nq_total,
                   int counts[3], DmErr *err)
{
    char path[PATH_MAX], rel[128];
    snprintf(path, sizeof path, "%s/documents", out);
    if (s_mkdir(out, err) || s_mkdir(path, err))
        return -1;
    if (tiff) {
        snprintf(path, sizeof path, "%s/tiff", out);
        if (s_mkdir(path, err))
            return -1;
    }
    S_Split split[3] = {{"train", "train_v1.0_withQT.json", 1, json_array()},
                        {"val", "val_v1.0_withQT.json", 1, json_array()},
                        {"test", "test_v1.0.json", 0, json_array()}};
    int nheld = ndocs >= 3 ? (ndocs / 10 > 1 ? ndocs / 10 : 1) : 0;
    int ntrain = ndocs - 2 * nheld;
    snprintf(path, sizeof path, "%s/synth_lines.jsonl", out);
    FILE *lines = fopen(path, "w");
    if (!lines) {
        for (int s = 0; s < 3; s++)
            json_decref(split[s].data);
        return dm_err_errno(err, "%s: cannot create", path);
    }
    int rc = 0;
    long long qid = 1;
    *nq_total = 0;
    counts[0] = counts[1] = counts[2] = 0;
    for (int d = 0; d < ndocs && !rc; d++) {
        SynthDoc doc;
        if (synth_doc_make(o, d, &doc, err)) {
            rc = -1;
            break;
        }
        int si = d < ntrain ? 0 : d < ntrain + nheld ? 1 : 2;
        S_Split *sp = &split[si];
        counts[si]++;
        char ucsf[32];
        snprintf(ucsf, sizeof ucsf, "syn%05d", d);
        for (int p = 0; p < doc.npages && !rc; p++) {
            const SynthPage *pg = &doc.pages[p];
            snprintf(rel, sizeof rel, "documents/%s_%d.png", ucsf, p + 1);
            snprintf(path, sizeof path, "%s/%s", out, rel);
            if (synth_page_save(o, pg, path, err)) {
                rc = -1;
                break;
            }
            char pno[16];
            snprintf(pno, sizeof pno, "%d", p + 1);
            for (int q = 0; q < pg->nqa; q++) {
                json_t *e = json_object();
                json_object_set_new(e, "questionId", json_integer(qid++));
                json_object_set_new(e, "question", json_string(pg->qa[q].question));
                if (sp->answers)
                    json_object_set_new(e, "question_types", s_strlist(pg->qa[q].qtype));
                json_object_set_new(e, "image", json_string(rel));
                json_object_set_new(e, "docId", json_integer(d + 1));
                json_object_set_new(e, "ucsf_document_id", json_string(ucsf));
                json_object_set_new(e, "ucsf_document_page_no", json_string(pno));
                if (sp->answers)
                    json_object_set_new(e, "answers", s_strlist(pg->qa[q].answer));
                json_object_set_new(e, "data_split", json_string(sp->name));
                json_array_append_new(sp->data, e);
                (*nq_total)++;
            }
            json_t *rec = json_object(), *ls = json_array();
            for (int l = 0; l < pg->nlines; l++)
                json_array_append_new(ls, json_string(pg->lines[l]));
            json_object_set_new(rec, "image", json_string(rel));
            json_object_set_new(rec, "docId", json_integer(d + 1));
            json_object_set_new(rec, "lines", ls);
            char *s = json_dumps(rec, JSON_COMPACT);
            json_decref(rec);
            if (!s || fprintf(lines, "%s\n", s) < 0)
                rc = dm_err(err, "%s/synth_lines.jsonl: write failed", out);
            free(s);
        }
        if (!rc && tiff && doc.npages > 1) {
            snprintf(path, sizeof path, "%s/tiff/%s.tif", out, ucsf);
            rc = synth_doc_save_tiff(o, &doc, path, err);
        }
        synth_doc_free(&doc);
    }
    if (fclose(lines) && !rc)
        rc = dm_err(err, "%s/synth_lines.jsonl: write failed", out);
    for (int s = 0; s < 3; s++) {
        if (!rc) {
            json_t *root = json_object();
            json_object_set_new(root, "dataset_name", json_string("docvqa-synth"));
            json_object_set_new(root, "dataset_version", json_string("1.0"));
            json_object_set_new(root, "dataset_split", json_string(split[s].name));
            json_object_set(root, "data", split[s].data);
            rc = s_write(out, split[s].file, root, err);
            json_decref(root);
        }
        json_decref(split[s].data);
    }
    return rc;
}

int cmd_synth(int argc, char **argv)
{
    const char *out = NULL;
    int ndocs = 10, tiff = 0, quiet = 0;
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
        } else if (v && !strcmp(a, "--kv")) {
            if (synth_kind_parse(v, &o.kind) || o.kind == SYNTH_FORM) {
                fprintf(stderr, "docmint synth: --kv %s: expected colours, nouns or numbers\n", v);
                return 2;
            }
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
    DmErr err = {{0}};
    int nq = 0, counts[3] = {0, 0, 0};
    if (s_synth(out, &o, ndocs, tiff, &nq, counts, &err)) {
        fprintf(stderr, "docmint synth: %s\n", err.msg);
        return 1;
    }
    if (!quiet)
        printf("%s: %d documents (train %d, val %d, test %d), %d pages of %dx%d, %d questions, "
               "%s pages, seed %llu\n",
               out, ndocs, counts[0], counts[1], counts[2], ndocs * o.pages_per_doc, o.width,
               o.height, nq, synth_kind_name(o.kind), (unsigned long long)o.seed);
    return 0;
}
