/* plan_evidence.h - pruning plans made from an analysis store's
 * aggregates (`docmint plan`): the budget, the two methods (mint and
 * enumerate, which read the store; finercut and michel, which measure
 * on a selection corpus) and the files they write.  docs/pruning.md, section "Plans
 * from evidence", states every rule. */
#ifndef DM_PLAN_EVIDENCE_H
#define DM_PLAN_EVIDENCE_H

#include <jansson.h>

#include "worker/analyze/an_select.h"
#include "worker/model/plan.h"

typedef enum {
    PE_BUDGET_SHARE = 0, /* a share of the teacher's decoder layers' parameters */
    PE_BUDGET_PARAMS,    /* a parameter count of the decoder layers */
    PE_BUDGET_FLOPS      /* a share of the decoder layers' multiply-adds (cached) */
} PeBudgetKind;

typedef enum { PE_MINT = 0, PE_ENUMERATE = 1, PE_FINERCUT = 2, PE_MICHEL = 3 } PeMethod;

/* The method's name as --method spells it. */
const char *pe_method_name(PeMethod m);

typedef struct PeOptions {
    PeMethod method;
    PeBudgetKind kind;
    double budget;         /* the share, or the parameter count */
    int top;               /* enumerate: plans written */
    int prompt, new_tokens; /* FLOPs budgets: n and m of docs/flops.md */
    double reproject_tol;  /* mint: nats an input reprojection may cost and count as lossless */
    double type_ratio;     /* mint: a type's ablation effect against the next type's */
    double type_min;       /* mint: ... and at least this many nats */
} PeOptions;

/* What the plan is made from: the store's aggregates (report.json text,
 * parsed), its analyze settings (meta "analyze", may be NULL) and names
 * for plan.md. */
typedef struct PeInput {
    const DonutConfig *cfg;
    const DmPlan *base;        /* the structure of the analysed model */
    const json_t *aggregates;
    const json_t *analyze;
    const char *store, *model, *fingerprint;
    /* the selection corpus on the analysed model (--corpus; NULL: none):
     * finercut and michel need it, mint checks its plan on it */
    AnSel *sel;
    const char *corpus;
} PeInput;

/* The analyses (job key "analyses") a method needs that the aggregates
 * lack, comma-separated into out ("" when none). */
void pe_missing_analyses(const json_t *aggregates, PeMethod m, char *out, size_t n);

/* Make the plan(s) and write out_dir/plan.json (the best; enumerate also
 * plan-2.json ... plan-K.json) and out_dir/plan.md.  A budget no plan
 * meets is an error naming the smallest plan possible. */
int pe_make_plan(const PeInput *in, const PeOptions *o, const char *out_dir, DmErr *err);

#endif
