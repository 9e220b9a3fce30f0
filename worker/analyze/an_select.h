/* an_select.h - a selection corpus: teacher-forced sequences on encoded
 * pages, scored under removals of sub-layers and heads, for the plans
 * that measure their choices (`docmint plan --method finercut|michel`,
 * mint's final check; docs/pruning.md).
 *
 * Every page is encoded once; each (question, gold answer) is one item,
 * the Donut training sequence scored as the analyze stage scores it
 * (analyze.h: positions a .. T-2).  A removal zeroes a sub-layer's output
 * (a removed sub-layer) or a head's output before out_proj (a dropped
 * head, out_proj's bias kept): exactly what a pruned student computes.
 * The teacher is the model as loaded, nothing removed; its next-token
 * log-probabilities are kept for the KL of every later run. */
#ifndef DM_AN_SELECT_H
#define DM_AN_SELECT_H

#include "worker/analyze/analyze.h"
#include "worker/image/preprocess.h"
#include "worker/stages/qa.h"

/* What is removed, by sub-layer index i = 3 * layer + kind and original
 * head index. */
typedef struct AnRemoval {
    unsigned char sub[3 * DM_MAX_LAYERS];
    unsigned char head[3 * DM_MAX_LAYERS][DM_MAX_HEADS];
} AnRemoval;

typedef struct AnSelItem {
    int page;
    int32_t *ids;
    int T, answer_start;
    float *teacher_lp; /* [P, vocab] log softmax of the teacher's scored logits */
} AnSelItem;

typedef struct AnSel {
    const DonutModel *m;
    int npages, nitems;
    float **enc;      /* [npages] encoder outputs (owned) */
    DecPage *pages;   /* [npages] */
    AnSelItem *items; /* [nitems] */
    double clean_nll; /* the teacher's mean NLL over the items (after an_sel_teacher) */
    int has_teacher;
    long passes, backward; /* teacher-forced passes and backward passes run so far */
    long encoded;          /* encoder passes */
} AnSel;

int an_sel_new(const DonutModel *m, AnSel **out, DmErr *err);
void an_sel_free(AnSel **s);
/* Add a page from its encoder output (taken over: freed with the set);
 * its index into *page. */
int an_sel_add_page(AnSel *s, float *enc, int n_enc, int *page, DmErr *err);
/* Add a sequence on a page (ids copied). */
int an_sel_add_item(AnSel *s, int page, const int32_t *ids, int T, int answer_start, DmErr *err);

/* A DocVQA-format corpus (every question with at least one gold answer;
 * images resolved against its folder): each page encoded once, each
 * (question, answer) added.  Errors name the file. */
int an_sel_load(const QaModel *qa, const PreprocConfig *pc, const char *path,
                const char *image_root, int pdf_dpi, AnSel **out, DmErr *err);

/* The teacher's runs: clean_nll and each item's log-probabilities. */
int an_sel_teacher(AnSel *s, DmErr *err);

/* Under removal r: the mean over items of the NLL and of the KL(teacher ||
 * run), each item's KL the mean over its scored positions.  Either output
 * may be NULL.  Runs the teacher first when it has not run. */
int an_sel_eval(AnSel *s, const AnRemoval *r, double *nll, double *kl, DmErr *err);

/* The gates of Michel et al.: a gate multiplying each head's output (and
 * each sub-layer's output), at 1.  For each item, dL/dgate = sum over
 * positions of <output, dL/doutput>, L the item's NLL; head_imp[i * H + h]
 * (i the sub-layer index, h the original head) and sub_imp[i] receive the
 * mean over items of |dL/dgate|, item_head (may be NULL) item k's signed
 * head values at [k * nsub * H + i * H + h].  Entries of absent heads and
 * sub-layers are 0.  On the model as loaded (nothing removed). */
int an_sel_gate_grads(AnSel *s, double *head_imp, double *sub_imp, double *item_head,
                      DmErr *err);

#endif
