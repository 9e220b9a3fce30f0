/* cmd_params.c - `docmint params`: parameters per module of a checkpoint
 * (the paper's Table 1), each as a share of the teacher's decoder.  A
 * student's teacher follows from its config.json, since pruning only
 * removes. */
#include <stdio.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/model/plan.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint params MODEL_DIR [--json]\n"
               "  --json   one JSON object instead of the table (for scripts)\n"
               "Sub-layer rows (S<l> self-attention, C<l> cross-attention, M<l> feed-forward)\n"
               "include their LayerNorm; \"norms\" is layernorm_embedding and the final\n"
               "layer_norm; a tied unembedding shares the token embedding's parameters.\n");
}

static double s_share(long long n, const ParamTable *t)
{
    return t->teacher_decoder ? (double)n / (double)t->teacher_decoder : 0.0;
}

/* "heads 0,2,3 of 4" for a cut attention sub-layer. */
static void s_heads(const DmPlan *p, int row, const ParamRow *r, char *buf, size_t n)
{
    int l = (row - DM_PMOD_FIXED) / 3, k = (row - DM_PMOD_FIXED) % 3;
    buf[0] = '\0';
    if (!r->present) {
        snprintf(buf, n, "removed");
        return;
    }
    if (k == DM_SUB_M)
        return;
    if (r->nheads == p->heads) {
        snprintf(buf, n, "all %d heads", p->heads);
        return;
    }
    size_t o = (size_t)snprintf(buf, n, "heads ");
    for (int i = 0; i < r->nheads && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%d", i ? "," : "", p->head_ids[l][k][i]);
    if (o < n)
        snprintf(buf + o, n - o, " of %d", p->heads);
}

static void s_print_table(const ParamTable *t, const DmPlan *p)
{
    static const char *const what[DM_PMOD_FIXED] = {
        "Swin encoder", "token embedding", "learned positions", "LM head", "embedding + final LayerNorm"};
    printf("%-12s %14s %9s  %s\n", "module", "params", "% decoder", "notes");
    char note[400];
    for (int i = 0; i < t->nrows; i++) {
        const ParamRow *r = &t->rows[i];
        if (i < DM_PMOD_FIXED)
            snprintf(note, sizeof note, "%s%s", what[i],
                     i == DM_PMOD_UNEMBED && t->tied ? ", tied to the token embedding" : "");
        else
            s_heads(p, i, r, note, sizeof note);
        if (i == DM_PMOD_ENCODER)
            printf("%-12s %14lld %9s  %s\n", r->name, r->count, "-", note);
        else
            printf("%-12s %14lld %8.2f%%  %s\n", r->name, r->count, 100 * s_share(r->count, t), note);
    }
    printf("%-12s %14lld %8.2f%%\n", "decoder", t->decoder, 100 * s_share(t->decoder, t));
    printf("%-12s %14lld %8.2f%%  unpruned, from config.json\n", "teacher dec.", t->teacher_decoder,
           100.0);
    printf("%-12s %14lld %9s  encoder + decoder\n", "total", t->total, "-");
}

static void s_print_json(const ParamTable *t, const DmPlan *p)
{
    json_t *doc = json_object(), *mods = json_array();
    for (int i = 0; i < t->nrows; i++) {
        const ParamRow *r = &t->rows[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(r->name));
        json_object_set_new(o, "params", json_integer(r->count));
        json_object_set_new(o, "teacher_params", json_integer(r->teacher));
        if (i != DM_PMOD_ENCODER)
            json_object_set_new(o, "share_of_teacher_decoder", json_real(s_share(r->count, t)));
        if (i >= DM_PMOD_FIXED) {
            int l = (i - DM_PMOD_FIXED) / 3, k = (i - DM_PMOD_FIXED) % 3;
            json_object_set_new(o, "present", json_boolean(r->present));
            if (k < 2) {
                json_t *h = json_array();
                for (int j = 0; j < r->nheads; j++)
                    json_array_append_new(h, json_integer(p->head_ids[l][k][j]));
                json_object_set_new(o, "heads", h);
            }
        }
        if (i == DM_PMOD_UNEMBED)
            json_object_set_new(o, "tied", json_boolean(t->tied));
        json_array_append_new(mods, o);
    }
    json_object_set_new(doc, "modules", mods);
    json_object_set_new(doc, "decoder", json_integer(t->decoder));
    json_object_set_new(doc, "teacher_decoder", json_integer(t->teacher_decoder));
    json_object_set_new(doc, "decoder_share", json_real(s_share(t->decoder, t)));
    json_object_set_new(doc, "encoder", json_integer(t->encoder));
    json_object_set_new(doc, "total", json_integer(t->total));
    json_dumpf(doc, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    putchar('\n');
    json_decref(doc);
}

int cmd_params(int argc, char **argv)
{
    const char *dir = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint params: unknown option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "docmint params: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "docmint params: needs MODEL_DIR (see --help)\n");
        return 2;
    }
    /* Loading checks every tensor against the shapes the counts assume. */
    DmErr err = {{0}};
    DonutModel *m = NULL;
    if (donut_load(dir, &m, &err)) {
        fprintf(stderr, "docmint params: %s\n", err.msg);
        return 1;
    }
    DmPlan p;
    ParamTable t;
    plan_of_model(m, &p);
    params_count(&m->cfg, &p, &t);
    donut_free(&m);
    if (as_json)
        s_print_json(&t, &p);
    else
        s_print_table(&t, &p);
    return 0;
}
