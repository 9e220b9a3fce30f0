/* cmd_compare.c - `docmint compare SPEC.json -o OUT_DIR`: pruning methods
 * at several budgets, distilled alike and scored on held-out pages, the
 * teacher first (coordinator/compare.h, docs/compare.md). */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cli/commands.h"
#include "coordinator/compare.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint compare SPEC.json -o OUT_DIR [--quiet]\n"
            "       docmint compare SPEC.json --check\n"
            "  runs the paper's Table 2 protocol: the spec's corpus split by page into\n"
            "  analysis, selection and evaluation parts (OUT_DIR/split/); the teacher analysed\n"
            "  once (analysis part) and its logits cached once (selection part); for every\n"
            "  budget x method a student planned (docmint plan) or masked (wanda, magnitude),\n"
            "  distilled with the spec's recipe, run on the evaluation part and scored (ANLS);\n"
            "  the teacher is the first row.  Each step is this docmint run as a child process\n"
            "  (its log in the row's steps/ folder); a step done before is skipped, so a rerun\n"
            "  resumes; a failing row keeps its error and the others go on.\n"
            "  -o DIR    the output folder: compare.json, compare.md, pareto.png, teacher/,\n"
            "            students/<method>-<budget>[-lc]/ (each student's model folder is\n"
            "            distill/student), shared/ (analysis store, teacher logits)\n"
            "  --check   only check the spec (schemas/compare.schema.json) and print it with\n"
            "            every default filled in and every path resolved\n"
            "  --quiet   no progress lines\n"
            "  exit status: 0 every row complete; 3 some rows failed (compare.json says why);\n"
            "  1 compare could not run (a bad spec or corpus); 2 bad command line\n");
}

int cmd_compare(int argc, char **argv)
{
    const char *spec = NULL, *out = NULL;
    int quiet = 0, check = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) {
            quiet = 1;
        } else if (!strcmp(argv[i], "--check")) {
            check = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint compare: unknown or incomplete option %s (see --help)\n",
                    argv[i]);
            return 2;
        } else if (!spec) {
            spec = argv[i];
        } else {
            fprintf(stderr, "docmint compare: one spec only, got %s and %s\n", spec, argv[i]);
            return 2;
        }
    }
    if (!spec || (!out && !check)) {
        fprintf(stderr, "docmint compare: needs SPEC.json and -o OUT_DIR (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    if (check) {
        json_t *doc = NULL;
        if (compare_spec_load(spec, &doc, &err)) {
            fprintf(stderr, "docmint compare: %s\n", err.msg);
            return 1;
        }
        json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
        json_decref(doc);
        return 0;
    }
    /* the steps run this very binary */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        fprintf(stderr, "docmint compare: cannot find its own binary (/proc/self/exe)\n");
        return 1;
    }
    exe[n] = '\0';
    CompareOpts o = {.spec_path = spec, .out_dir = out, .exe = exe, .quiet = quiet};
    int rc = compare_run(&o, &err);
    if (rc < 0) {
        fprintf(stderr, "docmint compare: %s\n", err.msg);
        return 1;
    }
    return rc;
}
