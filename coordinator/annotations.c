/* annotations.c - read data[].questionId / answers / question_types. */
#include "coordinator/annotations.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int s_strings(json_t *arr, const char *path, int i, const char *key, char ***out, int *n,
                     DmErr *err)
{
    *out = NULL;
    *n = 0;
    if (!arr)
        return 0;
    if (json_is_string(arr)) { /* a single answer given as a string */
        *out = dm_xcalloc(1, sizeof **out);
        (*out)[0] = dm_xstrdup(json_string_value(arr));
        *n = 1;
        return 0;
    }
    if (!json_is_array(arr))
        return dm_err(err, "%s: data[%d].%s must be a list of strings", path, i, key);
    *out = dm_xcalloc(json_array_size(arr) + 1, sizeof **out);
    for (size_t k = 0; k < json_array_size(arr); k++) {
        json_t *s = json_array_get(arr, k);
        if (!json_is_string(s))
            return dm_err(err, "%s: data[%d].%s[%zu] must be a string", path, i, key, k);
        (*out)[(*n)++] = dm_xstrdup(json_string_value(s));
    }
    return 0;
}

int annotations_load(const char *path, Annotations **out, DmErr *err)
{
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return dm_err(err, "%s: %s (line %d)", path, jerr.text, jerr.line);
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data)) {
        json_decref(root);
        return dm_err(err, "%s: no \"data\" list (expected the DocVQA annotation layout)", path);
    }
    Annotations *a = dm_xcalloc(1, sizeof *a);
    a->q = dm_xcalloc(json_array_size(data) + 1, sizeof *a->q);
    int rc = 0;
    for (size_t i = 0; i < json_array_size(data) && rc == 0; i++) {
        json_t *e = json_array_get(data, i);
        json_t *qid = json_object_get(e, "questionId");
        if (!json_is_integer(qid)) {
            rc = dm_err(err, "%s: data[%zu].questionId must be an integer", path, i);
            break;
        }
        AnnotQuestion *q = &a->q[a->n++];
        q->qid = json_integer_value(qid);
        rc = s_strings(json_object_get(e, "answers"), path, (int)i, "answers", &q->answers,
                       &q->nanswers, err) ||
             s_strings(json_object_get(e, "question_types"), path, (int)i, "question_types",
                       &q->qtypes, &q->nqtypes, err);
    }
    json_decref(root);
    if (rc) {
        annotations_free(&a);
        return -1;
    }
    *out = a;
    return 0;
}

void annotations_free(Annotations **pa)
{
    Annotations *a = *pa;
    if (!a)
        return;
    for (int i = 0; i < a->n; i++) {
        for (int k = 0; k < a->q[i].nanswers; k++)
            free(a->q[i].answers[k]);
        for (int k = 0; k < a->q[i].nqtypes; k++)
            free(a->q[i].qtypes[k]);
        free(a->q[i].answers);
        free(a->q[i].qtypes);
    }
    free(a->q);
    free(a);
    *pa = NULL;
}
