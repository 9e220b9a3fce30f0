/* cmd_prune.c - `docmint prune`: write a pruned student of a checkpoint
 * folder under a plan file (see plan.h and schemas/plan.schema.json). */
#include <stdio.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/model/plan.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint prune MODEL_DIR --plan PLAN.json -o OUT_DIR\n"
            "  --plan FILE   which decoder sub-layers and heads remain (schemas/plan.schema.json):\n"
            "                {\"keep\": [\"C0\", \"M0\", \"S1\", \"C1\"], \"heads\": [\"C1.H0\", \"C1.H2\"]}\n"
            "                or {\"keep\": {\"S0\": false, ...}, \"heads\": {\"C1\": [0, 2]}};\n"
            "                heads are named by their index in the unpruned teacher\n"
            "  -o DIR        the student folder (must be absent or empty): model.safetensors cut\n"
            "                to the kept heads, pruning.json, config, tokenizer and processor files\n"
            "MODEL_DIR may itself be a student: the plan then removes more (pruning composes).\n");
}

int cmd_prune(int argc, char **argv)
{
    const char *dir = NULL, *plan = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--plan") && i + 1 < argc) {
            plan = argv[++i];
        } else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc) {
            out = argv[++i];
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint prune: unknown or incomplete option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "docmint prune: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir || !plan || !out) {
        fprintf(stderr, "docmint prune: needs MODEL_DIR, --plan and -o (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    DmPlan p;
    if (prune_checkpoint(dir, plan, out, &p, &err)) {
        fprintf(stderr, "docmint prune: %s\n", err.msg);
        return 1;
    }
    int subs = 0, kept = 0, heads = 0, kept_heads = 0;
    for (int l = 0; l < p.layers; l++)
        for (int k = 0; k < 3; k++) {
            subs++;
            kept += p.keep[l][k];
            if (k < 2) {
                heads += p.heads;
                kept_heads += p.nheads[l][k];
            }
        }
    printf("%s: student written: %d of %d sub-layers, %d of %d attention heads "
           "(docmint params %s counts them)\n",
           out, kept, subs, kept_heads, heads, out);
    return 0;
}
