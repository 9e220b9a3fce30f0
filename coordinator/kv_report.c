/* kv_report.c - counts, JSON, Markdown and the stacked-bar figure of the
 * key-value retrieval analysis (kv_report.h). */
#include "coordinator/kv_report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <vips/vips.h>

#include "coordinator/anls.h"
#include "coordinator/kv_retrieval.h"
#include "coordinator/plot.h"
#include "worker/image/image.h" /* image_vips_init */

/* The counted classes, bottom segment first. */
static const Docmint__KvClass s_classes[4] = {
    DOCMINT__KV_CLASS__KV_POSITIONAL, DOCMINT__KV_CLASS__KV_SEMANTIC,
    DOCMINT__KV_CLASS__KV_MEMORISED, DOCMINT__KV_CLASS__KV_FAILURE};

static int s_set(KvReport *k, const char *name)
{
    for (int i = 0; i < k->nsets; i++)
        if (!strcmp(k->set[i], name))
            return i;
    if (k->nsets == KV_REPORT_MAX_SETS) {
        /* too many names: the last slot gathers the rest */
        snprintf(k->set[KV_REPORT_MAX_SETS - 1], sizeof k->set[0], "other");
        return KV_REPORT_MAX_SETS - 1;
    }
    snprintf(k->set[k->nsets], sizeof k->set[0], "%s", name);
    return k->nsets++;
}

void kv_report_add(KvReport *k, const Docmint__AnalysisRecord *r)
{
    int p = r->kv_class, c = r->kv_control_class;
    if (p <= DOCMINT__KV_CLASS__KV_NONE || p > DOCMINT__KV_CLASS__KV_TIED)
        return;
    int s = s_set(k, r->kv_set && r->kv_set[0] ? r->kv_set : "other");
    k->count[s][0][p]++;
    if (p != DOCMINT__KV_CLASS__KV_TIED && r->kv_answer_clean && r->kv_v_clean) {
        char *a = anls_normalize(r->kv_answer_clean), *v = anls_normalize(r->kv_v_clean);
        k->clean_correct[s] += !strcmp(a, v);
        free(a);
        free(v);
    }
    k->count[s][1][c > DOCMINT__KV_CLASS__KV_NONE && c <= DOCMINT__KV_CLASS__KV_TIED
                       ? c
                       : DOCMINT__KV_CLASS__KV_FAILURE]++;
}

/* Counts of set s (-1: every set) for run w (0 patched, 1 control). */
static void s_counts(const KvReport *k, int s, int w, long out[6])
{
    memset(out, 0, 6 * sizeof *out);
    for (int i = 0; i < k->nsets; i++)
        if (s < 0 || s == i)
            for (int c = 0; c < 6; c++)
                out[c] += k->count[i][w][c];
}

static long s_counted(const long c[6])
{
    long n = 0;
    for (int i = 0; i < 4; i++)
        n += c[s_classes[i]];
    return n;
}

long kv_report_items(const KvReport *k)
{
    long c[6];
    s_counts(k, -1, 0, c);
    return s_counted(c) + c[DOCMINT__KV_CLASS__KV_TIED];
}

static json_t *s_shares(const long c[6])
{
    json_t *o = json_object();
    long n = s_counted(c);
    for (int i = 0; o && i < 4; i++) {
        long x = c[s_classes[i]];
        json_object_set_new(o, kv_class_name(s_classes[i]),
                            json_pack("{s:I s:o}", "count", (json_int_t)x, "share",
                                      n ? json_real((double)x / n) : json_null()));
    }
    return o;
}

static json_t *s_group(const KvReport *k, int s)
{
    long p[6], c[6], ok = 0;
    s_counts(k, s, 0, p);
    s_counts(k, s, 1, c);
    for (int i = 0; i < k->nsets; i++)
        ok += s < 0 || s == i ? k->clean_correct[i] : 0;
    return json_pack("{s:I s:I s:I s:I s:o s:o}", "items",
                     (json_int_t)(s_counted(p) + p[DOCMINT__KV_CLASS__KV_TIED]), "tied",
                     (json_int_t)p[DOCMINT__KV_CLASS__KV_TIED], "counted", (json_int_t)s_counted(p),
                     "clean_correct", (json_int_t)ok, "patched", s_shares(p), "control",
                     s_shares(c));
}

json_t *kv_report_json(const KvReport *k)
{
    json_t *o = s_group(k, -1), *by = json_object();
    for (int s = 0; o && by && s < k->nsets; s++)
        json_object_set_new(by, k->set[s], s_group(k, s));
    if (!o || !by) {
        json_decref(o);
        json_decref(by);
        return NULL;
    }
    json_object_set_new(o, "by_set", by);
    return o;
}

static void s_md_row(FILE *f, const char *name, const json_t *g)
{
    fprintf(f, "| %s | %lld | %lld | %lld |", name,
            (long long)json_integer_value(json_object_get(g, "counted")),
            (long long)json_integer_value(json_object_get(g, "tied")),
            (long long)json_integer_value(json_object_get(g, "clean_correct")));
    for (int w = 0; w < 2; w++) {
        const json_t *run = json_object_get(g, w ? "control" : "patched");
        for (int i = 0; i < 4; i++) {
            const json_t *c = json_object_get(run, kv_class_name(s_classes[i]));
            const json_t *sh = json_object_get(c, "share");
            if (json_is_number(sh))
                fprintf(f, " %.3f (%lld) |", json_number_value(sh),
                        (long long)json_integer_value(json_object_get(c, "count")));
            else
                fprintf(f, " - |");
        }
    }
    fputc('\n', f);
}

void kv_report_markdown(FILE *f, const json_t *kv)
{
    fprintf(f, "\n## Key-value retrieval\n\n"
               "Greedy answers on the corrupted twins, the last cross-attention's query "
               "patched from the clean run at the answer positions (patched), and unpatched "
               "(control): the share of each class among the counted items (an item whose "
               "v_clean, v_new and v_pos are not all different is not counted), the count in "
               "brackets; clean correct: counted items whose greedy answer on the clean page "
               "is v_clean.\n\n"
               "| set | counted | not counted | clean correct | patched: positional | semantic | "
               "memorised | failure | control: positional | semantic | memorised | failure |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const char *name;
    json_t *g;
    json_object_foreach(json_object_get(kv, "by_set"), name, g)
        s_md_row(f, name, g);
    s_md_row(f, "all", kv);
    fprintf(f, "\n![Key-value retrieval](figures/kv_retrieval.png)\n");
}

json_t *kv_record_json(const Docmint__AnalysisRecord *r)
{
    if (r->kv_class == DOCMINT__KV_CLASS__KV_NONE)
        return json_null();
    return json_pack("{s:s s:s s:s s:s s:s s:s s:s s:s s:s}", "set", r->kv_set, "v_clean",
                     r->kv_v_clean, "v_new", r->kv_v_new, "v_pos", r->kv_v_pos, "answer_clean",
                     r->kv_answer_clean, "answer_patched", r->kv_answer_patched,
                     "answer_control", r->kv_answer_control, "class", kv_class_name(r->kv_class),
                     "control_class", kv_class_name(r->kv_control_class));
}

/* ------------------------------------------------------------ figure */

#define BAR_W 64
#define BAR_GAP 10
#define GROUP_GAP 36
#define PLOT_H 320
#define LEFT 70
#define TOP 76
#define BOTTOM 70

static void s_fill(VipsImage *img, const double *ink, int x, int y, int w, int h)
{
    vips_draw_rect(img, (double *)ink, 3, x, y, w, h, "fill", TRUE, NULL);
}

int kv_report_figure(const KvReport *k, const char *png, DmErr *err)
{
    if (image_vips_init(err))
        return -1;
    static const double colour[4][3] = {{33, 102, 172}, {230, 126, 34}, {39, 174, 96},
                                        {170, 170, 170}};
    static const double black[3] = {0, 0, 0}, white[3] = {255, 255, 255},
                        axis[3] = {120, 120, 120}, rule[3] = {225, 225, 225};
    const char *font = "DejaVu Sans 10", *bold = "DejaVu Sans Bold 12";
    static const char *const what[4] = {"positional (= v_pos)", "semantic (= v_new)",
                                        "memorised (= v_clean)", "failure"};
    int legend_w = 0;
    for (int i = 0; i < 4; i++) {
        int w = plot_text_width(what[i], font);
        legend_w = w > legend_w ? w : legend_w;
    }
    legend_w += 60;
    int groups = k->nsets + 1, gw = 2 * BAR_W + BAR_GAP;
    int W = LEFT + groups * gw + (groups + 1) * GROUP_GAP + legend_w, H = TOP + PLOT_H + BOTTOM;
    const char *title = "Key-value retrieval: the last cross-attention's query patched from "
                        "the clean run";
    int wt = 28 + plot_text_width(title, bold);
    W = W > wt ? W : wt;
    VipsImage *img = plot_canvas(W, H, png, err);
    if (!img)
        return -1;
    int rc = plot_text(img, title, 14, 20, -1, black, bold, png, err);
    if (!rc)
        rc = plot_text(img, "share of the counted items by answer class; n = counted items, "
                            "the count in each segment", 14, 44, -1, axis, font, png, err);
    /* the axis: 0 to 100 % */
    for (int t = 0; !rc && t <= 4; t++) {
        int y = TOP + PLOT_H - t * PLOT_H / 4;
        char lab[16];
        snprintf(lab, sizeof lab, "%d%%", 25 * t);
        s_fill(img, t ? rule : axis, LEFT, y, W - LEFT - legend_w, 1);
        rc = plot_text(img, lab, LEFT - 8, y, 1, black, font, png, err);
    }
    for (int g = 0; !rc && g < groups; g++) {
        int s = g < k->nsets ? g : -1, x0 = LEFT + GROUP_GAP + g * (gw + GROUP_GAP);
        long n = 0;
        for (int w = 0; !rc && w < 2; w++) {
            long c[6];
            s_counts(k, s, w, c);
            n = w ? n : s_counted(c);
            int x = x0 + w * (BAR_W + BAR_GAP);
            long cum = 0, tot = s_counted(c);
            for (int i = 0; !rc && tot && i < 4; i++) {
                long v = c[s_classes[i]];
                /* segment edges from cumulative counts, so the bar ends at 100 % */
                int top = TOP + PLOT_H - (int)lround((double)(cum + v) * PLOT_H / tot);
                int bot = TOP + PLOT_H - (int)lround((double)cum * PLOT_H / tot);
                cum += v;
                if (bot <= top)
                    continue;
                s_fill(img, colour[i], x, top, BAR_W, bot - top);
                if (bot - top >= 16) {
                    char lab[24];
                    snprintf(lab, sizeof lab, "%ld", v);
                    rc = plot_text(img, lab, x + BAR_W / 2, (top + bot) / 2, 0,
                                   i == 3 ? black : white, font, png, err);
                }
            }
            if (!rc)
                rc = plot_text(img, w ? "control" : "patched", x + BAR_W / 2, TOP + PLOT_H + 14,
                               0, black, font, png, err);
        }
        char lab[64];
        snprintf(lab, sizeof lab, "%s (n=%ld)", s < 0 ? "all" : k->set[s], n);
        if (!rc)
            rc = plot_text(img, lab, x0 + gw / 2, TOP + PLOT_H + 40, 0, black, bold, png, err);
    }
    /* the legend, top class first as the bars stack */
    int lx = W - legend_w + 20;
    for (int i = 3; !rc && i >= 0; i--) {
        int ly = TOP + 10 + (3 - i) * 26;
        s_fill(img, colour[i], lx, ly - 8, 16, 16);
        rc = plot_text(img, what[i], lx + 24, ly, -1, black, font, png, err);
    }
    rc = plot_save_png(img, png, rc, err);
    g_object_unref(img);
    return rc;
}
