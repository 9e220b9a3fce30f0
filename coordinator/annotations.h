/* annotations.h - the question list of an official DocVQA annotation file,
 * in file order, as the evaluation server and the ANLS evaluation see it. */
#ifndef DM_ANNOTATIONS_H
#define DM_ANNOTATIONS_H

#include <stdint.h>

#include "common/dm_error.h"

typedef struct AnnotQuestion {
    int64_t qid;
    char **answers;
    int nanswers;
    char **qtypes;
    int nqtypes;
} AnnotQuestion;

typedef struct Annotations {
    AnnotQuestion *q;
    int n;
} Annotations;

int annotations_load(const char *path, Annotations **out, DmErr *err);
void annotations_free(Annotations **a);

#endif
