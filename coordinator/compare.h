/* compare.h - `docmint compare`: the paper's Table 2 protocol on one
 * machine.  A spec (schemas/compare.schema.json) names a teacher, a
 * corpus, budgets and methods; the corpus is split by page into analysis,
 * selection and evaluation parts; the teacher is analysed once and its
 * logits cached once; every (method, budget) student is planned or
 * masked, distilled with one recipe, answers the evaluation part and is
 * scored; the teacher is the first row.  Every step is the docmint
 * binary itself run as a child process, recorded as done in OUT_DIR when
 * it succeeds, so a rerun resumes; a failing row keeps its error and the
 * others go on.  Results: OUT_DIR/compare.json, compare.md, pareto.png
 * (docs/compare.md). */
#ifndef DM_COMPARE_H
#define DM_COMPARE_H

#include <jansson.h>

#include "common/dm_error.h"

typedef struct CompareOpts {
    const char *spec_path;
    const char *out_dir;
    const char *exe; /* the docmint binary the steps run */
    int quiet;
} CompareOpts;

/* Load and check a spec: the schema (defaults filled), the split shares,
 * the distill and analysis blocks as the job schema takes them, and
 * every path resolved against the spec's folder.  *out is the filled
 * document. */
int compare_spec_load(const char *path, json_t **out, DmErr *err);

/* Run everything.  Returns 0 when every row is complete, 3 when some rows
 * failed (their errors are in compare.json), -1 with err set when compare
 * itself cannot go on (a bad spec, an output it cannot write). */
int compare_run(const CompareOpts *o, DmErr *err);

/* The figure: ANLS against the share of the teacher's FLOPs, one
 * labelled marker per row, the Pareto front drawn (compare_plot.c).
 * rows: compare.json's "rows" array. */
int compare_plot(const json_t *rows, const char *png, DmErr *err);

/* The indices of the rows (n of them, x lower is better, y higher is
 * better) on the Pareto front: no other row is at least as good in both
 * and better in one.  front[i] is set to 1 or 0. */
void compare_pareto(const double *x, const double *y, int n, int *front);

#endif
