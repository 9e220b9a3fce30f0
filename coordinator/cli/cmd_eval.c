/* cmd_eval.c - `docmint eval`: ANLS of a submission against an annotation
 * file, overall and by question type. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/annotations.h"
#include "coordinator/anls.h"
#include "coordinator/cli/commands.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint eval --predictions SUBMISSION.json --annotations FILE [--report REPORT.json]\n"
               "  --predictions FILE  [{\"questionId\": int, \"answer\": str}, ...] (export's format)\n"
               "  --annotations FILE  DocVQA annotation file with answers (train/val)\n"
               "  --report FILE       also write the figures as JSON, with every question's\n"
               "                      score and answer (default: none)\n"
               "  every question of the annotation file counts; a missing prediction scores 0\n");
}

typedef struct Pred {
    int64_t qid;
    const char *answer;
} Pred;

static int s_cmp(const void *a, const void *b)
{
    int64_t x = ((const Pred *)a)->qid, y = ((const Pred *)b)->qid;
    return x < y ? -1 : x > y;
}

typedef struct TypeSum {
    const char *name;
    double sum;
    int n;
} TypeSum;

int cmd_eval(int argc, char **argv)
{
    const char *pred_path = NULL, *annot = NULL, *report = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--predictions") && i + 1 < argc) {
            pred_path = argv[++i];
        } else if (!strcmp(argv[i], "--annotations") && i + 1 < argc) {
            annot = argv[++i];
        } else if (!strcmp(argv[i], "--report") && i + 1 < argc) {
            report = argv[++i];
        } else {
            fprintf(stderr, "docmint eval: unknown or incomplete argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (!pred_path || !annot) {
        fprintf(stderr, "docmint eval: needs --predictions and --annotations (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    Annotations *an = NULL;
    json_error_t jerr;
    json_t *preds = json_load_file(pred_path, 0, &jerr);
    Pred *p = NULL;
    TypeSum *types = NULL;
    json_t *perq = NULL;
    int ntypes = 0, rc = 1, np = 0, missing = 0;
    if (!preds) {
        dm_err(&err, "%s: %s (line %d)", pred_path, jerr.text, jerr.line);
        goto done;
    }
    if (!json_is_array(preds)) {
        dm_err(&err, "%s: expected a JSON array of {questionId, answer}", pred_path);
        goto done;
    }
    p = calloc(json_array_size(preds) + 1, sizeof *p);
    for (size_t i = 0; i < json_array_size(preds); i++) {
        json_t *e = json_array_get(preds, i);
        json_t *q = json_object_get(e, "questionId"), *a = json_object_get(e, "answer");
        if (!json_is_integer(q) || !json_is_string(a)) {
            dm_err(&err, "%s: entry %zu needs an integer questionId and a string answer",
                   pred_path, i);
            goto done;
        }
        p[np].qid = json_integer_value(q);
        p[np++].answer = json_string_value(a);
    }
    qsort(p, (size_t)np, sizeof *p, s_cmp);
    for (int i = 1; i < np; i++)
        if (p[i].qid == p[i - 1].qid) {
            dm_err(&err, "%s: questionId %lld appears twice", pred_path, (long long)p[i].qid);
            goto done;
        }
    if (annotations_load(annot, &an, &err))
        goto done;
    double total = 0.0;
    int scored = 0;
    perq = json_array();
    for (int i = 0; i < an->n; i++) {
        const AnnotQuestion *q = &an->q[i];
        if (q->nanswers == 0) {
            dm_err(&err, "%s: questionId %lld has no answers (a test split cannot be evaluated)",
                   annot, (long long)q->qid);
            goto done;
        }
        Pred key = {q->qid, NULL};
        Pred *hit = bsearch(&key, p, (size_t)np, sizeof *p, s_cmp);
        double s = hit ? anls_question(hit->answer, (const char *const *)q->answers, q->nanswers)
                       : 0.0;
        missing += !hit;
        total += s;
        json_array_append_new(perq, json_pack("{s:I, s:f, s:s?}", "questionId", (json_int_t)q->qid,
                                              "anls", s, "answer", hit ? hit->answer : NULL));
        scored++;
        for (int t = 0; t < q->nqtypes; t++) {
            int k = 0;
            while (k < ntypes && strcmp(types[k].name, q->qtypes[t]))
                k++;
            if (k == ntypes) {
                types = realloc(types, (size_t)(ntypes + 1) * sizeof *types);
                types[ntypes++] = (TypeSum){q->qtypes[t], 0.0, 0};
            }
            types[k].sum += s;
            types[k].n++;
        }
    }
    double anls = scored ? total / scored : 0.0;
    printf("ANLS %.4f over %d questions (%d without a prediction)\n", anls, scored, missing);
    for (int k = 0; k < ntypes; k++)
        printf("  %-24s %.4f  (%d)\n", types[k].name, types[k].sum / types[k].n, types[k].n);
    if (report) {
        json_t *bt = json_object();
        for (int k = 0; k < ntypes; k++)
            json_object_set_new(bt, types[k].name,
                                json_pack("{s:f, s:i}", "anls", types[k].sum / types[k].n,
                                          "count", types[k].n));
        json_t *r = json_pack("{s:f, s:i, s:i, s:o, s:s, s:s, s:O}", "anls", anls, "questions",
                              scored, "missing", missing, "by_question_type", bt, "predictions",
                              pred_path, "annotations", annot, "per_question", perq);
        int bad = json_dump_file(r, report, JSON_INDENT(2));
        json_decref(r);
        if (bad) {
            dm_err_errno(&err, "%s: cannot write", report);
            goto done;
        }
    }
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "docmint eval: %s\n", err.msg);
    free(types);
    free(p);
    json_decref(preds);
    json_decref(perq);
    annotations_free(&an);
    return rc;
}
