/* qa.h - document question answering with a loaded Donut checkpoint: the
 * DocVQA prompt, one encoder pass per page, the page's questions decoded
 * together, and the answer extracted as the Donut recipe does. */
#ifndef DM_QA_H
#define DM_QA_H

#include "worker/model/donut.h"
#include "worker/model/generate.h"
#include "worker/text/tokenizer.h"

typedef struct QaModel {
    DonutModel *model;
    Tokenizer *tok;
    GenConfig gen;
    int32_t id_answer_open, id_answer_close, id_yes, id_no; /* -1 if absent */
    int lowercase_questions; /* the folder's prompt.json asks for it */
} QaModel;

typedef struct QaAnswer {
    char *text;          /* extracted answer (malloc'ed) */
    int32_t *ids;        /* generated ids after the prompt (malloc'ed) */
    int n_ids;
    double mean_logprob; /* mean log-probability of the generated tokens */
} QaAnswer;

int qa_open(const char *dir, QaModel *qa, DmErr *err);
/* The same with the model in the given precision (donut_load_as). */
int qa_open_as(const char *dir, DmPrecision prec, QaModel *qa, DmErr *err);
void qa_close(QaModel *qa);
/* A QaModel over a model and tokenizer loaded elsewhere (dir names them in
 * messages); it does not own them: do not qa_close it. */
int qa_from(DonutModel *m, Tokenizer *tok, const char *dir, QaModel *qa, DmErr *err);

/* A QaModel for prompts alone (no weights: qa_prompt and
 * qa_question_text only), over a tokenizer loaded from dir, whose
 * prompt.json it reads. */
int qa_prompt_only(Tokenizer *tok, const char *dir, QaModel *qa, DmErr *err);

/* A model folder's prompt settings: DIR/prompt.json, when present, is
 * {"lowercase_questions": true|false} (docs/pruning.md); *lowercase is 0
 * without the file.  A file that is not such an object is an error naming
 * it.  qa_open and qa_from read it, so every stage that builds a prompt
 * honours it. */
#define QA_PROMPT_FILE "prompt.json"
int qa_prompt_config(const char *dir, int *lowercase, DmErr *err);
/* Write DIR/prompt.json with the flag. */
int qa_prompt_config_write(const char *dir, int lowercase, DmErr *err);

/* The question as the prompt carries it: lowercased when the folder asks
 * for it, else a copy (malloc'ed). */
int qa_question_text(const QaModel *qa, const char *question, char **out, DmErr *err);

/* Token ids of the DocVQA prompt for a question (no <s>), the one place a
 * question is tokenized (cache_sequence builds on it). */
int qa_prompt(const QaModel *qa, const char *question, int32_t **ids, int *n, DmErr *err);

/* Answer n questions about one page given its encoder output. */
int qa_answer_page(const QaModel *qa, const float *enc, int n_enc, const char *const *questions,
                   int n, QaAnswer *answers, DmErr *err);

/* The answer text within generated ids (after the prompt): the tokens up
 * to </s_answer> (or </s>, or the end when neither comes), <yes/> and <no/>
 * mapped to "yes" and "no", decoded without special tokens, trimmed. */
int qa_extract_answer(const QaModel *qa, const int32_t *ids, int n, char **text, DmErr *err);

void qa_answer_free(QaAnswer *a);

#endif
