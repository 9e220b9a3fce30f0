/* cmd_params.c - `docmint params`: parameters per module of a checkpoint
 * (the paper's Table 1), each as a share of the teacher's decoder layers
 * (the paper's convention) and of the whole decoder with its embeddings;
 * with --flops, the multiply-adds per module of one page and one answer
 * under the paper's convention and docmint's real cost (flops.h).  A
 * student's teacher follows from its config.json, since pruning only
 * removes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "coordinator/cli/commands.h"
#include "worker/model/flops.h"
#include "worker/model/mask.h"
#include "worker/model/plan.h"

/* The paper's Table 1 (multiply-adds; n = 42 prompt tokens, m = 35 new). */
#define T1_PROMPT 42
#define T1_NEW 35
static const struct {
    const char *what;
    double paper;
} s_table1[] = {{"encoder", 1.30e12},
                {"unembedding", 117.17e9},
                {"self-attention, per layer", 8.58e9},
                {"cross-attention, per layer", 366.11e9},
                {"feed-forward, per layer", 16.69e9}};
#define T1_ROWS 5

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint params MODEL [--flops] [--prompt N] [--new M] [--table1] [--json]\n"
            "  MODEL       a model folder, or a config.json alone (the unpruned structure;\n"
            "              nothing is loaded)\n"
            "  --flops     also multiply-adds per module for one page and one answer\n"
            "  --prompt N  prompt tokens (default %d)\n"
            "  --new M     new tokens generated (default %d)\n"
            "  --table1    the paper's Table 1 beside docmint's counts (implies --flops;\n"
            "              the full-size Donut only; n = %d and m = %d unless given)\n"
            "  --json      one JSON object instead of the tables (for scripts)\n"
            "Sub-layer rows (S<l> self-attention, C<l> cross-attention, M<l> feed-forward)\n"
            "include their LayerNorm; \"norms\" is layernorm_embedding and the final\n"
            "layer_norm; a tied unembedding shares the token embedding's parameters.\n"
            "Shares: \"%% layers\" is of the teacher's decoder layers alone, the paper's\n"
            "\"decoder\" and the base of budgets; \"%% decoder\" also counts the embeddings\n"
            "and norms.  FLOPs are multiply-adds (x2 for separate multiplies and adds):\n"
            "\"paper\" recomputes the whole prefix and the cross keys and values at every\n"
            "step, as the paper's table does; \"docmint\" is what docmint computes (cross\n"
            "keys and values once per page, a KV cache).  See docs/flops.md.\n",
            T1_PROMPT, T1_NEW, T1_PROMPT, T1_NEW);
}

static double s_share(long long n, long long of)
{
    return of ? (double)n / (double)of : 0.0;
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
    printf("%-12s %14s %8s %9s  %s\n", "module", "params", "% layers", "% decoder", "notes");
    char note[400];
    long long L = t->teacher_layers, Dd = t->teacher_decoder;
    for (int i = 0; i < t->nrows; i++) {
        const ParamRow *r = &t->rows[i];
        if (i < DM_PMOD_FIXED)
            snprintf(note, sizeof note, "%s%s", what[i],
                     i == DM_PMOD_UNEMBED && t->tied ? ", tied to the token embedding" : "");
        else
            s_heads(p, i, r, note, sizeof note);
        if (i == DM_PMOD_ENCODER)
            printf("%-12s %14lld %8s %9s  %s\n", r->name, r->count, "-", "-", note);
        else if (i < DM_PMOD_FIXED)
            printf("%-12s %14lld %8s %8.2f%%  %s\n", r->name, r->count, "-",
                   100 * s_share(r->count, Dd), note);
        else
            printf("%-12s %14lld %7.2f%% %8.2f%%  %s\n", r->name, r->count,
                   100 * s_share(r->count, L), 100 * s_share(r->count, Dd), note);
    }
    printf("%-12s %14lld %7.2f%% %8.2f%%  S, C and M rows: the paper's \"decoder\"\n", "layers",
           t->layers, 100 * s_share(t->layers, L), 100 * s_share(t->layers, Dd));
    printf("%-12s %14lld %8s %8.2f%%  layers + embeddings + norms\n", "decoder", t->decoder, "-",
           100 * s_share(t->decoder, Dd));
    printf("%-12s %14lld %7.2f%% %8.2f%%  unpruned, from config.json\n", "teacher dec.",
           t->teacher_decoder, 100 * s_share(t->teacher_layers, L), 100.0);
    printf("%-12s %14lld %8s %9s  encoder + decoder\n", "total", t->total, "-", "-");
    printf("%% layers: share of the teacher's decoder layers (%lld, the paper's convention, "
           "used for budgets); %% decoder: share of the teacher's whole decoder (%lld)\n",
           L, Dd);
}

/* A masked student's non-zero weights per layer row (zeros held by its
 * mask subtracted) and their share of the teacher's layers. */
static void s_print_nonzero(const ParamTable *t, const long long *zeros)
{
    long long nz = 0, all = 0;
    printf("\nmasked student (mask.safetensors): non-zero weights\n");
    printf("%-12s %14s %14s %8s\n", "module", "params", "non-zero", "% layers");
    for (int i = DM_PMOD_FIXED; i < t->nrows; i++) {
        const ParamRow *r = &t->rows[i];
        long long n = r->count - zeros[i];
        nz += n;
        all += r->count;
        printf("%-12s %14lld %14lld %7.2f%%\n", r->name, r->count, n,
               100 * s_share(n, t->teacher_layers));
    }
    printf("%-12s %14lld %14lld %7.2f%%\n", "layers", all, nz,
           100 * s_share(nz, t->teacher_layers));
}

/* 1.30T, 117.17G, 8.59M: two decimals and an SI prefix, as the paper. */
static const char *s_si(double v, char *buf, size_t n)
{
    static const char *const pre[] = {"", "K", "M", "G", "T", "P"};
    int k = 0;
    while (v >= 999.995 && k < 5) {
        v /= 1000;
        k++;
    }
    snprintf(buf, n, "%.2f%s", v, pre[k]);
    return buf;
}

static void s_print_flops(const FlopsTable *fp, const FlopsTable *fc)
{
    char a[32], b[32], c[32], e[32];
    printf("\nFLOPs as multiply-adds (x2 for separate multiplies and adds), one page and one "
           "answer:\n%d prompt tokens, %d new tokens, %d encoder tokens.\n"
           "paper: no cache, %lld passes recomputing the prefix and the cross keys/values "
           "(%lld positions)\ndocmint: cross keys/values once per page, KV cache, %lld passes "
           "(%lld positions)\n",
           fc->prompt, fc->new_tokens, fc->enc_tokens, fp->passes, fp->positions, fc->passes,
           fc->positions);
    printf("%-12s %12s %12s %21s  %s\n", "module", "paper", "docmint", "per head paper/docmint",
           "notes");
    for (int i = 0; i < fc->nrows; i++) {
        const FlopsRow *p = &fp->rows[i], *r = &fc->rows[i];
        const char *note = "";
        if (i == DM_PMOD_ENCODER)
            note = "one page";
        else if (i == DM_PMOD_TOKENS || i == DM_PMOD_POSITIONS)
            note = "lookups";
        else if (i == DM_PMOD_NORMS)
            note = "not counted (elementwise)";
        else if (i == DM_PMOD_UNEMBED)
            note = "paper: every position; docmint: the last of each pass";
        char ph[48] = "";
        if (r->per_head || p->per_head)
            snprintf(ph, sizeof ph, "%s / %s", s_si((double)p->per_head, c, sizeof c),
                     s_si((double)r->per_head, e, sizeof e));
        char kvn[96] = "";
        if (r->cross_kv)
            snprintf(kvn, sizeof kvn, "cross K/V %s / %s",
                     s_si((double)p->cross_kv, c, sizeof c), s_si((double)r->cross_kv, e, sizeof e));
        printf("%-12s %12s %12s %21s  %s%s\n", r->name, s_si((double)p->macs, a, sizeof a),
               s_si((double)r->macs, b, sizeof b), ph, note, kvn);
    }
    printf("%-12s %12s %12s\n", "layers", s_si((double)fp->layers, a, sizeof a),
           s_si((double)fc->layers, b, sizeof b));
    printf("%-12s %12s %12s  layers + unembedding\n", "decoder",
           s_si((double)fp->decoder, a, sizeof a), s_si((double)fc->decoder, b, sizeof b));
    printf("%-12s %12s %12s  encoder + decoder\n", "total", s_si((double)fp->total, a, sizeof a),
           s_si((double)fc->total, b, sizeof b));
}

/* Table 1's rows from a table of the full-size teacher: layer 0 stands for
 * every layer (all four are alike). */
static void s_table1_rows(const FlopsTable *t, double out[T1_ROWS])
{
    out[0] = (double)t->rows[DM_PMOD_ENCODER].macs;
    out[1] = (double)t->rows[DM_PMOD_UNEMBED].macs;
    for (int k = 0; k < 3; k++)
        out[2 + k] = (double)t->rows[DM_PMOD_FIXED + k].macs;
}

static void s_print_table1(const FlopsTable *fp, const FlopsTable *fc)
{
    double p[T1_ROWS], c[T1_ROWS];
    s_table1_rows(fp, p);
    s_table1_rows(fc, c);
    char a[32], b[32], d[32];
    printf("\nThe paper's Table 1 (n = %d, m = %d) beside docmint's counts "
           "(multiply-adds):\n", T1_PROMPT, T1_NEW);
    printf("%-27s %9s %14s %8s %14s\n", "module", "paper", "docmint, paper", "differs",
           "docmint, real");
    for (int i = 0; i < T1_ROWS; i++)
        printf("%-27s %9s %14s %+7.2f%% %14s\n", s_table1[i].what,
               s_si(s_table1[i].paper, a, sizeof a), s_si(p[i], b, sizeof b),
               100 * (p[i] / s_table1[i].paper - 1), s_si(c[i], d, sizeof d));
    printf("docs/flops.md explains each difference.\n");
}

/* Table 1 is of the full-size Donut: say what differs, if anything. */
static int s_is_full_size(const DonutConfig *c, char *why, size_t n)
{
    const MBartConfig *d = &c->dec;
    int e;
    flops_encoder(&c->enc, &e);
    if (d->d_model == 1024 && d->layers == 4 && d->heads == 16 && d->ffn == 4096 &&
        d->vocab == 57532 && e == 4800)
        return 1;
    snprintf(why, n, "d_model %d, %d layers, %d heads, ffn %d, vocab %d, %d encoder tokens "
             "(the paper's: 1024, 4, 16, 4096, 57532, 4800)",
             d->d_model, d->layers, d->heads, d->ffn, d->vocab, e);
    return 0;
}

static json_t *s_flops_json(const FlopsTable *t)
{
    json_t *o = json_object(), *mods = json_array();
    json_object_set_new(o, "passes", json_integer(t->passes));
    json_object_set_new(o, "positions", json_integer(t->positions));
    for (int i = 0; i < t->nrows; i++) {
        const FlopsRow *r = &t->rows[i];
        json_t *m = json_object();
        json_object_set_new(m, "name", json_string(r->name));
        json_object_set_new(m, "macs", json_integer(r->macs));
        if (r->per_head)
            json_object_set_new(m, "macs_per_head", json_integer(r->per_head));
        if (r->cross_kv)
            json_object_set_new(m, "cross_kv_macs", json_integer(r->cross_kv));
        json_array_append_new(mods, m);
    }
    json_object_set_new(o, "modules", mods);
    json_object_set_new(o, "layers", json_integer(t->layers));
    json_object_set_new(o, "decoder", json_integer(t->decoder));
    json_object_set_new(o, "total", json_integer(t->total));
    return o;
}

static void s_print_json(const ParamTable *t, const DmPlan *p, const FlopsTable *fp,
                         const FlopsTable *fc, int table1, const long long *zeros)
{
    long long nz = 0;
    json_t *doc = json_object(), *mods = json_array();
    for (int i = 0; i < t->nrows; i++) {
        const ParamRow *r = &t->rows[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(r->name));
        json_object_set_new(o, "params", json_integer(r->count));
        json_object_set_new(o, "teacher_params", json_integer(r->teacher));
        if (i != DM_PMOD_ENCODER)
            json_object_set_new(o, "share_of_teacher_decoder",
                                json_real(s_share(r->count, t->teacher_decoder)));
        if (i >= DM_PMOD_FIXED) {
            int l = (i - DM_PMOD_FIXED) / 3, k = (i - DM_PMOD_FIXED) % 3;
            json_object_set_new(o, "share_of_teacher_layers",
                                json_real(s_share(r->count, t->teacher_layers)));
            json_object_set_new(o, "present", json_boolean(r->present));
            if (zeros) {
                json_object_set_new(o, "nonzero_params", json_integer(r->count - zeros[i]));
                nz += r->count - zeros[i];
            }
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
    json_object_set_new(doc, "layers", json_integer(t->layers));
    json_object_set_new(doc, "teacher_layers", json_integer(t->teacher_layers));
    json_object_set_new(doc, "layers_share", json_real(s_share(t->layers, t->teacher_layers)));
    json_object_set_new(doc, "masked", json_boolean(zeros != NULL));
    if (zeros) {
        json_object_set_new(doc, "nonzero_layers", json_integer(nz));
        json_object_set_new(doc, "nonzero_layers_share", json_real(s_share(nz, t->teacher_layers)));
    }
    json_object_set_new(doc, "decoder", json_integer(t->decoder));
    json_object_set_new(doc, "teacher_decoder", json_integer(t->teacher_decoder));
    json_object_set_new(doc, "decoder_share", json_real(s_share(t->decoder, t->teacher_decoder)));
    json_object_set_new(doc, "encoder", json_integer(t->encoder));
    json_object_set_new(doc, "total", json_integer(t->total));
    if (fp) {
        json_t *f = json_object();
        json_object_set_new(f, "counting", json_string("multiply-adds"));
        json_object_set_new(f, "prompt", json_integer(fc->prompt));
        json_object_set_new(f, "new", json_integer(fc->new_tokens));
        json_object_set_new(f, "encoder_tokens", json_integer(fc->enc_tokens));
        if (zeros)
            json_object_set_new(f, "note", json_string("masked student: dense FLOPs, the same "
                                                       "as unmasked"));
        json_object_set_new(f, "paper", s_flops_json(fp));
        json_object_set_new(f, "docmint", s_flops_json(fc));
        if (table1) {
            double pp[T1_ROWS], cc[T1_ROWS];
            s_table1_rows(fp, pp);
            s_table1_rows(fc, cc);
            json_t *rows = json_array();
            for (int i = 0; i < T1_ROWS; i++) {
                json_t *r = json_object();
                json_object_set_new(r, "module", json_string(s_table1[i].what));
                json_object_set_new(r, "paper", json_real(s_table1[i].paper));
                json_object_set_new(r, "docmint_paper_convention", json_real(pp[i]));
                json_object_set_new(r, "docmint_real", json_real(cc[i]));
                json_array_append_new(rows, r);
            }
            json_object_set_new(f, "table1", rows);
        }
        json_object_set_new(doc, "flops", f);
    }
    json_dumpf(doc, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    putchar('\n');
    json_decref(doc);
}

/* A masked student: the weights of each row that are zero in its masked
 * matrices (zeros[row]); returns 1 when the model has a mask. */
static int s_mask_zeros(DonutModel *m, const char *dir, long long *zeros, DmErr *err)
{
    DmMask *k = NULL;
    if (mask_load(m, dir, &k, err))
        return -1;
    if (!k)
        return 0;
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    char(*names)[128] = malloc(DM_DEC_LINEARS_MAX * sizeof *names);
    int n = names ? mask_linears(m, lin, names) : 0;
    for (int i = 0; i < n; i++) {
        int l = 0;
        char part[64] = "";
        if (!mask_find(k, names[i], NULL) || !lin[i]->w ||
            sscanf(names[i], "decoder.model.decoder.layers.%d.%63[a-z_]", &l, part) != 2)
            continue;
        int kind = !strcmp(part, "self_attn") ? DM_SUB_S
                   : !strcmp(part, "encoder_attn") ? DM_SUB_C : DM_SUB_M;
        size_t cnt = (size_t)lin[i]->out * lin[i]->in;
        for (size_t e = 0; e < cnt; e++)
            zeros[DM_PMOD_FIXED + 3 * l + kind] += lin[i]->w[e] == 0.0f;
    }
    free(names);
    mask_free(&k);
    return 1;
}

/* A positive count for --prompt / --new. */
static int s_count_arg(const char *flag, const char *v, int *out)
{
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < 1 || x > 1000000) {
        fprintf(stderr, "docmint params: %s needs a positive whole number, got %s\n", flag,
                v ? v : "nothing");
        return -1;
    }
    *out = (int)x;
    return 0;
}

int cmd_params(int argc, char **argv)
{
    const char *path = NULL;
    int as_json = 0, flops = 0, table1 = 0, n = -1, m = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (!strcmp(argv[i], "--flops")) {
            flops = 1;
        } else if (!strcmp(argv[i], "--table1")) {
            flops = table1 = 1;
        } else if (!strcmp(argv[i], "--prompt") || !strcmp(argv[i], "--new")) {
            if (s_count_arg(argv[i], i + 1 < argc ? argv[i + 1] : NULL,
                            argv[i][2] == 'p' ? &n : &m))
                return 2;
            i++;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint params: unknown option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!path) {
            path = argv[i];
        } else {
            fprintf(stderr, "docmint params: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "docmint params: needs MODEL (see --help)\n");
        return 2;
    }
    if ((n > 0 || m > 0) && !flops) {
        fprintf(stderr, "docmint params: --prompt and --new go with --flops\n");
        return 2;
    }
    int defaults = n < 0 && m < 0;
    n = n > 0 ? n : T1_PROMPT;
    m = m > 0 ? m : T1_NEW;
    DmErr err = {{0}};
    DmPlan p;
    DonutConfig cfg;
    long long zeros[DM_PMOD_FIXED + 3 * DM_MAX_LAYERS] = {0};
    int masked = 0;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        /* a config alone: the unpruned structure */
        if (donut_config_load(path, &cfg, &err)) {
            fprintf(stderr, "docmint params: %s\n", err.msg);
            return 1;
        }
        plan_full(&cfg.dec, &p);
    } else {
        /* Loading checks every tensor against the shapes the counts assume. */
        DonutModel *mod = NULL;
        if (donut_load(path, &mod, &err)) {
            fprintf(stderr, "docmint params: %s\n", err.msg);
            return 1;
        }
        cfg = mod->cfg;
        plan_of_model(mod, &p);
        masked = s_mask_zeros(mod, path, zeros, &err);
        donut_free(&mod);
        if (masked < 0) {
            fprintf(stderr, "docmint params: %s\n", err.msg);
            return 1;
        }
    }
    char why[300];
    if (table1 && !s_is_full_size(&cfg, why, sizeof why)) {
        fprintf(stderr, "docmint params: %s: --table1 is for the full-size Donut; this one has %s\n",
                path, why);
        return 2;
    }
    if (flops && n + m - 1 > cfg.dec.max_pos) {
        fprintf(stderr, "docmint params: %s: %d prompt and %d new tokens need %d positions; "
                "the decoder has %d%s\n", path, n, m, n + m - 1, cfg.dec.max_pos,
                defaults ? " (the defaults: give --prompt and --new)" : "");
        return 2;
    }
    ParamTable t;
    params_count(&cfg, &p, &t);
    FlopsTable fp, fc, tp, tc;
    if (flops) {
        flops_count(&cfg, &p, n, m, DM_FLOPS_PAPER, &fp);
        flops_count(&cfg, &p, n, m, DM_FLOPS_CACHED, &fc);
    }
    if (table1) {
        /* the teacher's rows, whatever the structure of MODEL */
        DmPlan full;
        plan_full(&cfg.dec, &full);
        flops_count(&cfg, &full, T1_PROMPT, T1_NEW, DM_FLOPS_PAPER, &tp);
        flops_count(&cfg, &full, T1_PROMPT, T1_NEW, DM_FLOPS_CACHED, &tc);
    }
    if (as_json) {
        s_print_json(&t, &p, flops ? &fp : NULL, flops ? &fc : NULL, table1,
                     masked ? zeros : NULL);
        return 0;
    }
    s_print_table(&t, &p);
    if (masked)
        s_print_nonzero(&t, zeros);
    if (flops) {
        s_print_flops(&fp, &fc);
        if (masked)
            printf("A masked student: its pruned weights are zeros in dense matrices, so the "
                   "dense FLOPs above are what it computes, the same as unmasked.\n");
    }
    if (table1)
        s_print_table1(&tp, &tc);
    return 0;
}
