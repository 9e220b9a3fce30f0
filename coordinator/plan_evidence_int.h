/* plan_evidence_int.h - what the methods of `docmint plan` share
 * (plan_evidence.c: reading, sizes, files, enumerate; plan_mint.c: mint;
 * plan_measured.c: finercut, michel and the measurement of a plan on a
 * selection corpus): the evidence read from
 * the store, the budget, plan surgery and the files written. */
#ifndef DM_PLAN_EVIDENCE_INT_H
#define DM_PLAN_EVIDENCE_INT_H

#include <stdio.h>

#include "coordinator/plan_evidence.h"

#define PE_SUBS (3 * DM_MAX_LAYERS)
#define PE_HEADS (2 * DM_MAX_LAYERS * DM_MAX_HEADS)

/* One question type's numbers. */
typedef struct PeType {
    const char *name;
    long records;
    double clean;
    double *abl; /* [L, 2, H] means, NaN where absent */
} PeType;

/* The evidence, read from the aggregates, and what the methods work with. */
typedef struct Pe {
    const PeInput *in;
    const PeOptions *o;
    int L, H;
    long records;
    double clean;
    double skip[PE_SUBS], skip_se[PE_SUBS];
    double repro[PE_SUBS + 1];
    int has_skip, has_repro, has_heads, has_abl, has_atp;
    double ent[DM_MAX_LAYERS * DM_MAX_HEADS], var[DM_MAX_LAYERS * DM_MAX_HEADS];
    double abl[PE_HEADS], atp[PE_HEADS];
    PeType *types;
    int ntypes;
    long long full, limit; /* size of the teacher's layers; the budget in the same unit */
    /* mint */
    int replaceable[PE_SUBS];
    double sub_eff[PE_SUBS];
    double head_eff[PE_HEADS], head_p[PE_HEADS], head_w[PE_HEADS];
    char head_note[PE_HEADS][48];
} Pe;

extern const char pe_kind[3]; /* 'S', 'C', 'M' */

/* The plan's size in the budget's unit, its parameters of the decoder
 * layers, the unit's name. */
long long pe_size(const Pe *e, const DmPlan *p);
long long pe_params(const Pe *e, const DmPlan *p);
const char *pe_unit(const Pe *e);

/* Plan surgery: kept sub-layers, head membership, removals. */
int pe_nsubs(const DmPlan *p);
int pe_has_head(const DmPlan *p, int l, int k, int h);
void pe_drop_head(DmPlan *p, int l, int k, int h);
void pe_add_head(DmPlan *p, int l, int k, int h);
void pe_drop_sub(DmPlan *p, int l, int k);
void pe_head_name(int l, int k, int h, char *out, size_t n);

/* The smallest plan removals can reach from p: one of its sub-layers
 * alone, an attention sub-layer with one head. */
long long pe_floor(const Pe *e, const DmPlan *p);

/* An error naming the smallest plan possible when the budget is below it
 * (whole: whole sub-layers only). */
int pe_refuse_budget(const Pe *e, int whole, DmErr *err);

/* plan.json with its description; plan.md's header and result lines. */
int pe_write_plan(const Pe *e, const DmPlan *p, const char *desc, const char *path, DmErr *err);
void pe_header(const Pe *e, FILE *f, const char *method);
void pe_result(const Pe *e, FILE *f, const DmPlan *p);

/* plan_mint.c: method mint. */
int pe_mint(Pe *e, const char *dir, DmErr *err);

/* plan_measured.c: the methods scored on the selection corpus, and mint's
 * check of a chosen plan (measured NLL into *nll). */
int pe_finercut(Pe *e, const char *dir, DmErr *err);
int pe_michel(Pe *e, const char *dir, DmErr *err);
int pe_measure(Pe *e, const DmPlan *p, double *nll, double *kl, DmErr *err);

#endif
