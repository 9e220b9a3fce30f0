/* compare_int.h - what compare.c (the steps) and compare_report.c (the
 * results) share; not for other files. */
#ifndef DM_COMPARE_INT_H
#define DM_COMPARE_INT_H

#include <jansson.h>
#include <limits.h>

#include "common/dm_error.h"

typedef enum { ROW_TEACHER, ROW_STRUCTURED, ROW_WANDA, ROW_MAGNITUDE } RowKind;

typedef struct CompareRow {
    RowKind kind;
    char id[160];          /* "teacher", "mint-0.31", "mint-0.31-lc", "wanda-0.07" */
    char method[96];
    double budget;         /* 1 for the teacher */
    int lowercase;         /* the student lowercases its questions */
    char dir[PATH_MAX];    /* OUT/teacher or OUT/students/ID */
    char plan_owner[PATH_MAX]; /* the row folder whose plan/ this row prunes by */
    char model[PATH_MAX];  /* the model scored: the teacher, or DIR/distill/student */
    char error[1200];      /* why the row is incomplete; empty when it is */
} CompareRow;

typedef struct Compare {
    json_t *spec;          /* filled, paths resolved */
    char out[PATH_MAX];    /* OUT_DIR, absolute */
    const char *exe, *teacher, *image_root;
    int quiet, threads, max_length, timing_repeat, timing_threads;
    char part_path[3][PATH_MAX]; /* analysis, selection, evaluation */
    int part_pages[3], part_questions[3];
    int selection_items; /* non-empty gold answers of the selection part */
    char eval_image[PATH_MAX], eval_question[1024];
    char analysis_store[PATH_MAX], logits[PATH_MAX];
    char analysis_error[1200], cache_error[1200];
    CompareRow *rows;
    int nrows;
} Compare;

/* Split the spec's corpus into the three part files (compare.c). */
int compare_split(Compare *c, DmErr *err);

/* Run one step: argv (argv[0] found on PATH or a path), stderr (and
 * stdout unless stdout_path) into DIR/steps/NAME.log; exit status 0, or
 * also_ok when that is not 0, is success.  Skipped when
 * DIR/steps/NAME.done records the same command line and job file
 * (job_path, or NULL); refused when it records another. */
int compare_step(Compare *c, const char *dir, const char *name, char *const *argv,
                 const char *job_path, const char *stdout_path, int also_ok, DmErr *err);

/* compare.json, compare.md and pareto.png from the rows' files
 * (compare_report.c). */
int compare_report(Compare *c, DmErr *err);

#endif
