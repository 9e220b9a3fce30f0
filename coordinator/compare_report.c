/* compare_report.c - compare.json, compare.md and pareto.png of
 * `docmint compare`, read back from the files each row's steps wrote
 * (eval.json, params.json, timing.jsonl), so a resumed run reports the
 * same as an uninterrupted one. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/compare.h"
#include "coordinator/compare_int.h"

static json_t *s_load(const char *dir, const char *name)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return json_load_file(p, 0, NULL);
}

static double s_num(const json_t *o, const char *path)
{
    char key[128];
    const json_t *v = o;
    while (v && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        snprintf(key, sizeof key, "%.*s", (int)n, path);
        v = json_object_get(v, key);
        path += n + (dot ? 1 : 0);
    }
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static json_t *s_real(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* The fastest decoder time per generated token of the timed decodes (the
 * first is left out when there are others: it warms the caches). */
static double s_ms_per_token(const char *dir, int *tokens)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/timing.jsonl", dir);
    FILE *f = fopen(p, "r");
    *tokens = 0;
    if (!f)
        return NAN;
    char line[8192];
    double best = NAN;
    int n = 0;
    double first = NAN;
    int first_tokens = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        double ms = s_num(o, "timing_ms.decoder"), t = s_num(o, "tokens");
        json_decref(o);
        if (!(isfinite(ms) && t > 0))
            continue;
        double v = ms / t;
        if (n++ == 0) {
            first = v;
            first_tokens = (int)t;
        } else if (!(v >= best)) {
            best = v;
            *tokens = (int)t;
        }
    }
    fclose(f);
    if (n == 1) {
        *tokens = first_tokens;
        return first;
    }
    return best;
}

static void s_flops(json_t *to, const char *conv, const json_t *p, const json_t *tp)
{
    char k[64];
    snprintf(k, sizeof k, "flops.%s.layers", conv);
    double l = s_num(p, k), tl = s_num(tp, k);
    snprintf(k, sizeof k, "flops.%s.total", conv);
    double t = s_num(p, k), tt = s_num(tp, k);
    json_object_set_new(to, conv,
                        json_pack("{s:o, s:o, s:o, s:o}", "layers", s_real(l), "layers_share",
                                  s_real(l / tl), "total", s_real(t), "total_share",
                                  s_real(t / tt)));
}

static json_t *s_row(const Compare *c, const CompareRow *r, const json_t *teacher_params)
{
    json_t *o = json_pack("{s:s, s:s, s:f, s:b, s:s, s:s}", "id", r->id, "method", r->method,
                          "budget", r->budget, "lowercase_questions", r->lowercase, "status",
                          r->error[0] ? "failed" : "complete", "folder", r->dir);
    if (r->error[0])
        json_object_set_new(o, "error", json_string(r->error));
    json_object_set_new(o, "model", r->model[0] && !r->error[0] ? json_string(r->model) : json_null());
    json_t *ev = s_load(r->dir, "eval.json"), *pa = s_load(r->dir, "params.json");
    double anls = r->error[0] ? NAN : s_num(ev, "anls");
    json_object_set_new(o, "anls", s_real(anls));
    json_object_set_new(o, "questions", s_real(r->error[0] ? NAN : s_num(ev, "questions")));
    /* questions without an answer (their error records are in the answer
     * store): they score 0 */
    json_object_set_new(o, "unanswered", s_real(r->error[0] ? NAN : s_num(ev, "missing")));
    json_t *params = json_object();
    if (pa && !r->error[0]) {
        int masked = json_is_true(json_object_get(pa, "masked"));
        double layers = s_num(pa, masked ? "nonzero_layers" : "layers");
        json_object_set_new(params, "layers", s_real(layers));
        json_object_set_new(params, "layers_share", s_real(layers / s_num(pa, "teacher_layers")));
        json_object_set_new(params, "decoder", s_real(s_num(pa, "decoder")));
        json_object_set_new(params, "total", s_real(s_num(pa, "total")));
        json_object_set_new(params, "masked", json_boolean(masked));
        json_t *fl = json_object();
        s_flops(fl, "docmint", pa, teacher_params);
        s_flops(fl, "paper", pa, teacher_params);
        json_t *note = json_object_get(json_object_get(pa, "flops"), "note");
        if (json_is_string(note))
            json_object_set(fl, "note", note);
        json_object_set_new(o, "flops", fl);
    }
    json_object_set_new(o, "params", params);
    int tokens = 0;
    double ms = r->error[0] ? NAN : s_ms_per_token(r->dir, &tokens);
    json_object_set_new(o, "decode_ms_per_token", s_real(ms));
    json_object_set_new(o, "timed_tokens", json_integer(tokens));
    json_decref(ev);
    json_decref(pa);
    (void)c;
    return o;
}

static void s_cell(FILE *f, const json_t *o, const char *path, const char *fmt, double mul)
{
    double v = s_num(o, path);
    if (isfinite(v))
        fprintf(f, fmt, v * mul);
    else
        fputs("-", f);
}

static int s_markdown(const Compare *c, const json_t *rows, const char *path, DmErr *err)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return dm_err_errno(err, "%s: cannot create", tmp);
    fprintf(f, "# docmint compare\n\n");
    fprintf(f, "Teacher `%s`; corpus `%s` split by page: analysis %d pages (%d questions), "
               "selection %d (%d), evaluation %d (%d).  ANLS on the evaluation part.\n\n",
            c->teacher, json_string_value(json_object_get(c->spec, "corpus")), c->part_pages[0],
            c->part_questions[0], c->part_pages[1], c->part_questions[1], c->part_pages[2],
            c->part_questions[2]);
    fprintf(f, "| row | method | budget | ANLS | layer params kept | share of layers | "
               "FLOPs docmint (share) | FLOPs paper (share) | decode ms/token | model |\n");
    fprintf(f, "|---|---|---|---|---|---|---|---|---|---|\n");
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        const char *id = json_string_value(json_object_get(r, "id"));
        if (!strcmp(json_string_value(json_object_get(r, "status")), "failed")) {
            fprintf(f, "| %s | %s%s | %g | failed: %s | | | | | | |\n", id,
                    json_string_value(json_object_get(r, "method")),
                    json_is_true(json_object_get(r, "lowercase_questions")) ? " (lowercase)" : "",
                    json_number_value(json_object_get(r, "budget")),
                    json_string_value(json_object_get(r, "error")));
            continue;
        }
        fprintf(f, "| %s | %s%s | %g | ", id, json_string_value(json_object_get(r, "method")),
                json_is_true(json_object_get(r, "lowercase_questions")) ? " (lowercase)" : "",
                json_number_value(json_object_get(r, "budget")));
        s_cell(f, r, "anls", "%.4f", 1);
        fputs(" | ", f);
        s_cell(f, r, "params.layers", "%.0f", 1);
        fputs(json_is_true(json_object_get(json_object_get(r, "params"), "masked")) ? " non-zero"
                                                                                    : "",
              f);
        fputs(" | ", f);
        s_cell(f, r, "params.layers_share", "%.1f%%", 100);
        fputs(" | ", f);
        s_cell(f, r, "flops.docmint.total", "%.3g", 1);
        fputs(" (", f);
        s_cell(f, r, "flops.docmint.layers_share", "%.1f%% of layers", 100);
        fputs(") | ", f);
        s_cell(f, r, "flops.paper.total", "%.3g", 1);
        fputs(" (", f);
        s_cell(f, r, "flops.paper.layers_share", "%.1f%% of layers", 100);
        fputs(") | ", f);
        s_cell(f, r, "decode_ms_per_token", "%.3f", 1);
        fprintf(f, " | `%s` |\n", json_string_value(json_object_get(r, "model")));
    }
    fprintf(f, "\nFLOPs are multiply-adds for one page and one answer (docs/flops.md): docmint's "
               "convention counts what docmint computes (cross keys and values once per page, a "
               "KV cache), the paper's recomputes the prefix at every step; the share is of the "
               "teacher's decoder layers.  A masked student (wanda, magnitude) keeps the dense "
               "shapes: its FLOPs are the teacher's, its parameters are the non-zero ones.  "
               "Decode ms/token: `docmint ask` on one evaluation page, the fastest of the timed "
               "decodes, decoder time over generated tokens.\n");
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0)
        return dm_err_errno(err, "%s: cannot write", path);
    return 0;
}

int compare_report(Compare *c, DmErr *err)
{
    json_t *rows = json_array();
    json_t *tp = c->nrows > 0 ? s_load(c->rows[0].dir, "params.json") : NULL;
    for (int i = 0; i < c->nrows; i++)
        json_array_append_new(rows, s_row(c, &c->rows[i], tp));
    json_decref(tp);
    json_t *split = json_array();
    static const char *names[3] = {"analysis", "selection", "evaluation"};
    for (int k = 0; k < 3; k++)
        json_array_append_new(split, json_pack("{s:s, s:s, s:i, s:i}", "part", names[k], "file",
                                               c->part_path[k], "pages", c->part_pages[k],
                                               "questions", c->part_questions[k]));
    json_t *doc = json_pack("{s:O, s:o, s:o}", "spec", c->spec, "split", split, "rows", rows);
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/compare.json", c->out);
    int rc = json_dump_file(doc, p, JSON_INDENT(2) | JSON_PRESERVE_ORDER)
                 ? dm_err_errno(err, "%s: cannot write", p)
                 : 0;
    if (!rc) {
        snprintf(p, sizeof p, "%s/compare.md", c->out);
        rc = s_markdown(c, rows, p, err);
    }
    if (!rc) {
        snprintf(p, sizeof p, "%s/pareto.png", c->out);
        rc = compare_plot(rows, p, err);
    }
    json_decref(doc);
    return rc;
}
