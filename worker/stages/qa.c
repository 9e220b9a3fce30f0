/* qa.c - DocVQA prompt, batched answering of one page, answer extraction. */
#include "worker/stages/qa.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "worker/model/decoder.h"

int qa_open(const char *dir, QaModel *qa, DmErr *err)
{
    return qa_open_as(dir, DM_PREC_F32, qa, err);
}

int qa_open_as(const char *dir, DmPrecision prec, QaModel *qa, DmErr *err)
{
    memset(qa, 0, sizeof *qa);
    if (donut_load_as(dir, prec, &qa->model, err))
        return -1;
    if (tokenizer_load(dir, &qa->tok, err)) {
        donut_free(&qa->model);
        return -1;
    }
    if (qa_from(qa->model, qa->tok, dir, qa, err)) {
        qa_close(qa);
        return -1;
    }
    return 0;
}

int qa_from(DonutModel *m, Tokenizer *tok, const char *dir, QaModel *qa, DmErr *err)
{
    memset(qa, 0, sizeof *qa);
    qa->model = m;
    qa->tok = tok;
    gen_config_default(qa->model, &qa->gen);
    int32_t unk = tokenizer_piece_to_id(qa->tok, "<unk>");
    if (unk >= 0)
        qa->gen.unk_id = unk;
    qa->id_answer_open = tokenizer_piece_to_id(qa->tok, "<s_answer>");
    qa->id_answer_close = tokenizer_piece_to_id(qa->tok, "</s_answer>");
    qa->id_yes = tokenizer_piece_to_id(qa->tok, "<yes/>");
    qa->id_no = tokenizer_piece_to_id(qa->tok, "<no/>");
    if (tokenizer_vocab_size(qa->tok) > qa->model->cfg.dec.vocab)
        return dm_err(err, "%s: the tokenizer has %d ids but the model's vocabulary is %d", dir,
                      tokenizer_vocab_size(qa->tok), qa->model->cfg.dec.vocab);
    if (qa->id_answer_open < 0 || tokenizer_piece_to_id(qa->tok, "<s_docvqa>") < 0)
        return dm_err(err, "%s: the tokenizer lacks Donut's DocVQA tokens (<s_docvqa>, <s_answer>)",
                      dir);
    return qa_prompt_config(dir, &qa->lowercase_questions, err);
}

int qa_prompt_only(Tokenizer *tok, const char *dir, QaModel *qa, DmErr *err)
{
    memset(qa, 0, sizeof *qa);
    qa->tok = tok;
    qa->gen.max_length = INT_MAX;
    qa->id_answer_open = tokenizer_piece_to_id(tok, "<s_answer>");
    qa->id_answer_close = tokenizer_piece_to_id(tok, "</s_answer>");
    qa->id_yes = tokenizer_piece_to_id(tok, "<yes/>");
    qa->id_no = tokenizer_piece_to_id(tok, "<no/>");
    if (qa->id_answer_open < 0 || tokenizer_piece_to_id(tok, "<s_docvqa>") < 0)
        return dm_err(err, "%s: the tokenizer lacks Donut's DocVQA tokens (<s_docvqa>, <s_answer>)",
                      dir);
    return qa_prompt_config(dir, &qa->lowercase_questions, err);
}

int qa_prompt_config(const char *dir, int *lowercase, DmErr *err)
{
    char path[4200];
    *lowercase = 0;
    snprintf(path, sizeof path, "%s/%s", dir, QA_PROMPT_FILE);
    if (access(path, F_OK) != 0)
        return 0;
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc)
        return dm_err(err, "%s: line %d: %s", path, je.line, je.text);
    int rc = 0;
    const char *key;
    json_t *v;
    if (!json_is_object(doc))
        rc = dm_err(err, "%s: must be a JSON object such as {\"lowercase_questions\": true}", path);
    else
        json_object_foreach(doc, key, v)
        {
            if (strcmp(key, "lowercase_questions"))
                rc = dm_err(err, "%s: unknown key \"%s\" (the only key is lowercase_questions)",
                            path, key);
            else if (!json_is_boolean(v))
                rc = dm_err(err, "%s: lowercase_questions must be true or false", path);
            else
                *lowercase = json_is_true(v);
            if (rc)
                break;
        }
    json_decref(doc);
    return rc;
}

int qa_prompt_config_write(const char *dir, int lowercase, DmErr *err)
{
    char path[4200], text[64];
    snprintf(path, sizeof path, "%s/%s", dir, QA_PROMPT_FILE);
    int n = snprintf(text, sizeof text, "{\"lowercase_questions\": %s}\n",
                     lowercase ? "true" : "false");
    FILE *f = fopen(path, "w");
    if (!f)
        return dm_err_errno(err, "%s: cannot create", path);
    int bad = fwrite(text, 1, (size_t)n, f) != (size_t)n;
    if (fclose(f) != 0 || bad)
        return dm_err_errno(err, "%s: cannot write", path);
    return 0;
}

int qa_question_text(const QaModel *qa, const char *question, char **out, DmErr *err)
{
    if (qa->lowercase_questions)
        return tok_lowercase(question, out, err);
    *out = strdup(question);
    return *out ? 0 : dm_err(err, "out of memory");
}

void qa_close(QaModel *qa)
{
    tokenizer_free(&qa->tok);
    donut_free(&qa->model);
}

int qa_prompt(const QaModel *qa, const char *question, int32_t **ids, int *n, DmErr *err)
{
    const char *q = question;
    while (*q && isspace((unsigned char)*q))
        q++;
    if (!*q)
        return dm_err(err, "empty question");
    char *qt = NULL;
    if (qa_question_text(qa, question, &qt, err))
        return -1;
    size_t len = strlen(qt) + 64;
    char *text = malloc(len);
    if (!text) {
        free(qt);
        return dm_err(err, "out of memory");
    }
    snprintf(text, len, "<s_docvqa><s_question>%s</s_question><s_answer>", qt);
    free(qt);
    int rc = tokenizer_encode(qa->tok, text, 0, ids, n, err);
    free(text);
    if (rc == 0 && *n >= qa->gen.max_length) {
        free(*ids);
        *ids = NULL;
        return dm_err(err, "question of %d prompt tokens is too long: the model allows %d in all",
                      *n, qa->gen.max_length - 1);
    }
    return rc;
}

int qa_extract_answer(const QaModel *qa, const int32_t *ids, int n, char **text, DmErr *err)
{
    int32_t *keep = malloc((size_t)(n + 1) * sizeof *keep);
    if (!keep)
        return dm_err(err, "out of memory");
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] == qa->id_answer_close || ids[i] == qa->gen.eos_id)
            break;
        keep[k++] = ids[i];
    }
    /* A lone <yes/> or <no/> is the answer "yes" or "no". */
    if (k == 1 && (keep[0] == qa->id_yes || keep[0] == qa->id_no)) {
        free(keep);
        *text = strdup(ids[0] == qa->id_yes ? "yes" : "no");
        return *text ? 0 : dm_err(err, "out of memory");
    }
    char *s = NULL;
    int rc = tokenizer_decode(qa->tok, keep, k, 1, tokenizer_default_cleanup(qa->tok), &s, err);
    free(keep);
    if (rc)
        return -1;
    size_t b = 0, e = strlen(s);
    while (b < e && isspace((unsigned char)s[b]))
        b++;
    while (e > b && isspace((unsigned char)s[e - 1]))
        e--;
    memmove(s, s + b, e - b);
    s[e - b] = '\0';
    *text = s;
    return 0;
}

int qa_answer_page(const QaModel *qa, const float *enc, int n_enc, const char *const *questions,
                   int n, QaAnswer *answers, DmErr *err)
{
    memset(answers, 0, (size_t)n * sizeof *answers);
    int32_t **prompts = calloc((size_t)n, sizeof *prompts);
    int *lens = calloc((size_t)n, sizeof *lens);
    GenResult *res = calloc((size_t)n, sizeof *res);
    DecPage page = {0};
    int rc = -1, have_res = 0;
    if (!prompts || !lens || !res) {
        dm_err(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++)
        if (qa_prompt(qa, questions[i], &prompts[i], &lens[i], err)) {
            dm_err_prefix(err, "question %d", i + 1);
            goto done;
        }
    if (dec_page_init(&page, qa->model, enc, n_enc, err))
        goto done;
    if (gen_greedy(&page, (const int32_t *const *)prompts, lens, n, &qa->gen, res, NULL, NULL, err))
        goto done;
    have_res = 1;
    for (int i = 0; i < n; i++) {
        QaAnswer *a = &answers[i];
        a->n_ids = res[i].len - res[i].prompt_len;
        a->ids = malloc((size_t)(a->n_ids + 1) * sizeof(int32_t));
        if (!a->ids) {
            dm_err(err, "out of memory");
            goto done;
        }
        memcpy(a->ids, res[i].ids + res[i].prompt_len, (size_t)a->n_ids * sizeof(int32_t));
        a->mean_logprob = a->n_ids ? res[i].sum_logprob / a->n_ids : 0.0;
        if (qa_extract_answer(qa, a->ids, a->n_ids, &a->text, err))
            goto done;
    }
    rc = 0;
done:
    if (rc)
        for (int i = 0; i < n; i++)
            qa_answer_free(&answers[i]);
    for (int i = 0; prompts && i < n; i++)
        free(prompts[i]);
    if (have_res)
        for (int i = 0; i < n; i++)
            gen_result_free(&res[i]);
    dec_page_free(&page);
    free(prompts);
    free(lens);
    free(res);
    return rc;
}

void qa_answer_free(QaAnswer *a)
{
    free(a->text);
    free(a->ids);
    a->text = NULL;
    a->ids = NULL;
}
