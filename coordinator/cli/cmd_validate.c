/* cmd_validate.c - `docmint validate JOB.json`: check a job file against
 * schemas/job.schema.json (and optionally read its corpus) without running
 * anything; `--schema` prints the embedded schema. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/data/corpus.h"
#include "coordinator/dispatch.h"
#include "worker/analyze/stage_analyze.h"
#include "coordinator/job.h"
#include "coordinator/kv_retrieval.h"
#include "coordinator/store_ids.h"
#include "common/jsonschema.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint validate JOB.json [--corpus] [--print]\n"
               "       docmint validate --schema\n"
               "\n"
               "Check a job file: unknown keys, missing keys, wrong types and values are\n"
               "reported with the key's path; then what `docmint run` would refuse\n"
               "before any work: a stage this build cannot run, a missing model folder, an\n"
               "output that cannot be created, a corpus path that is missing or is an image.\n"
               "\n"
               "  --corpus   also read the corpus and count its pages and questions (and\n"
               "             check that cache-logits has a gold answer for each)\n"
               "  --print    print the job with every default filled in and every path\n"
               "             resolved (what `docmint run` will use)\n"
               "  --schema   print the job schema (every key, its type, default and meaning)\n"
               "  -h, --help show this help\n");
}

int cmd_validate(int argc, char **argv)
{
    const char *path = NULL;
    int corpus = 0, print = 0, schema = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--corpus")) {
            corpus = 1;
        } else if (!strcmp(argv[i], "--print")) {
            print = 1;
        } else if (!strcmp(argv[i], "--schema")) {
            schema = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint validate: unknown option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!path) {
            path = argv[i];
        } else {
            fprintf(stderr, "docmint validate: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (schema) {
        const char *text = jsonschema_embedded("job.schema.json", NULL);
        if (!text) {
            fprintf(stderr, "docmint validate: job.schema.json is not embedded in this build\n");
            return 1;
        }
        fputs(text, stdout);
        return 0;
    }
    if (!path) {
        fprintf(stderr, "docmint validate: needs JOB.json (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    Job *job = NULL;
    if (job_load(path, &job, &err)) {
        fprintf(stderr, "docmint validate: %s\n", err.msg);
        return 1;
    }
    if (job_check(job, &err)) {
        fprintf(stderr, "docmint validate: %s\n", err.msg);
        job_free(&job);
        return 1;
    }
    Corpus *c = NULL;
    char analyze[8192];
    if (!strcmp(job->stage, "analyze") &&
        dispatch_analyze_settings(job, analyze, sizeof analyze, &err)) {
        fprintf(stderr, "docmint validate: %s\n", err.msg);
        job_free(&job);
        return 1;
    }
    /* the sites and sub-layers against the model */
    if (!strcmp(job->stage, "analyze")) {
        DonutModel *m = NULL;
        AnalyzeOpts ao;
        int bad = analyze_opts_parse(analyze, path, &ao, &err) || donut_load(job->model, &m, &err) ||
                  analyze_opts_check(m, &ao, &err);
        donut_free(&m);
        if (bad) {
            fprintf(stderr, "docmint validate: %s: %s\n", path, err.msg);
            job_free(&job);
            return 1;
        }
    }
    /* an archive: progress while scanning, and the page counts of the
     * output store's last scan for unchanged documents */
    char *scan = NULL;
    if (corpus && job->corpus.format == CORPUS_ARCHIVE) {
        scan = store_ids_read_scan(job->output);
        job->corpus.scan_cache = scan;
        job->corpus.progress = stderr;
    }
    int bad = corpus && corpus_load(&job->corpus, &c, &err);
    job->corpus.scan_cache = NULL;
    free(scan);
    bad = bad || (corpus && job_check_corpus(job, c, &err));
    if (bad) {
        corpus_free(&c);
        fprintf(stderr, "docmint validate: %s\n", err.msg);
        job_free(&job);
        return 1;
    }
    /* the analyses teacher-force the gold answers */
    if (c && !strcmp(job->stage, "analyze") && dispatch_corpus_answers(c) == 0) {
        fprintf(stderr, "docmint validate: %s: corpus %s has no gold answers: stage analyze "
                        "teacher-forces them\n", path, job->corpus.path);
        corpus_free(&c);
        job_free(&job);
        return 1;
    }
    /* kv_retrieval: the corrupt corpus, and with --corpus its pairing */
    if (job->kv_retrieval) {
        KvTable *kv = NULL;
        bad = kv_table_load(job->corrupt_corpus, &kv, &err) ||
              (c && kv_table_pair(kv, c, job->corpus.path, &err));
        kv_table_free(&kv);
        if (bad) {
            fprintf(stderr, "docmint validate: %s\n", err.msg);
            corpus_free(&c);
            job_free(&job);
            return 1;
        }
    }
    if (print) {
        char *s = json_dumps(job->doc, JSON_INDENT(2));
        if (s)
            puts(s);
        free(s);
    } else if (c) {
        printf("%s: valid (stage %s); corpus %s: %d pages, %d questions\n", path, job->stage,
               job->corpus.path, c->npages, c->nquestions);
    } else {
        printf("%s: valid (stage %s)\n", path, job->stage);
    }
    corpus_free(&c);
    job_free(&job);
    return 0;
}
