/* cmd_export.c - `docmint export`: a DocVQA evaluation-server submission
 * from an answers store: [{"questionId": int, "answer": str}, ...], one per
 * question of the annotation file, in its order. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/annotations.h"
#include "coordinator/cli/commands.h"
#include "common/records.h"
#include "common/store.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint export STORE --annotations FILE -o SUBMISSION.json [--partial]\n"
               "  --annotations FILE  the DocVQA annotation file (e.g. test_v1.0.json); its order is kept\n"
               "  -o FILE             where to write the submission (written whole or not at all)\n"
               "  --partial           write the questions the store has even if some are missing\n"
               "                      (default: refuse and list the missing questionIds)\n");
}

int cmd_export(int argc, char **argv)
{
    const char *store_path = NULL, *annot = NULL, *out = NULL;
    int partial = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--annotations") && i + 1 < argc) {
            annot = argv[++i];
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--partial")) {
            partial = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint export: unknown or incomplete option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!store_path) {
            store_path = argv[i];
        } else {
            fprintf(stderr, "docmint export: unexpected argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (!store_path || !annot || !out) {
        fprintf(stderr, "docmint export: needs STORE, --annotations and -o (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    Store *st = NULL;
    Annotations *an = NULL;
    json_t *arr = json_array();
    char *missing = NULL;
    size_t mlen = 0;
    FILE *mf = open_memstream(&missing, &mlen);
    int rc = 1, nmissing = 0;
    if (!mf || annotations_load(annot, &an, &err) || store_open(store_path, STORE_READ, &st, &err))
        goto done;
    for (int i = 0; i < an->n; i++) {
        unsigned char key[8];
        store_key_u64((uint64_t)an->q[i].qid, key);
        void *val;
        size_t vlen;
        int got = store_get(st, STORE_RECORDS, key, 8, &val, &vlen, &err);
        if (got < 0)
            goto done;
        if (got == 0) {
            if (nmissing < 20)
                fprintf(mf, "%s%lld", nmissing ? ", " : "", (long long)an->q[i].qid);
            nmissing++;
            continue;
        }
        Docmint__AnswerRecord *r = record_answer_unpack(val, vlen, &err);
        free(val);
        if (!r) {
            dm_err_prefix(&err, "%s: questionId %lld", store_path, (long long)an->q[i].qid);
            goto done;
        }
        json_t *s = json_string(r->answer ? r->answer : "");
        if (!s) {
            dm_err(&err, "%s: questionId %lld: the answer is not valid UTF-8", store_path,
                   (long long)an->q[i].qid);
            record_answer_free(&r);
            goto done;
        }
        json_array_append_new(arr, json_pack("{s:I, s:o}", "questionId",
                                             (json_int_t)an->q[i].qid, "answer", s));
        record_answer_free(&r);
    }
    fclose(mf);
    mf = NULL;
    if (nmissing && !partial) {
        dm_err(&err, "%s: %d of %d questions have no answer (questionIds %s%s); "
                     "--partial writes the others",
               store_path, nmissing, an->n, missing, nmissing > 20 ? ", ..." : "");
        goto done;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    if (json_dump_file(arr, tmp, JSON_INDENT(1)) != 0 ||
        rename(tmp, out) != 0) {
        unlink(tmp);
        dm_err_errno(&err, "%s: cannot write", out);
        goto done;
    }
    if (nmissing)
        fprintf(stderr, "docmint export: partial submission: %d of %d questions missing\n",
                nmissing, an->n);
    fprintf(stderr, "%s: %zu answers\n", out, json_array_size(arr));
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "docmint export: %s\n", err.msg);
    if (mf)
        fclose(mf);
    free(missing);
    json_decref(arr);
    annotations_free(&an);
    store_close(&st);
    return rc;
}
