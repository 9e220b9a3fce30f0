/* stage_infer.c - answer the questions of a shard's pages (stage_infer.h). */
#include "worker/stages/stage_infer.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/image/image.h"
#include "worker/model/page_encode.h"
#include "worker/image/preprocess.h"
#include "worker/stages/qa.h"
#include "worker/stages/stage_result.h"

struct InferStage {
    QaModel qa;
    PreprocConfig pc;
    int pdf_dpi;
};

int infer_open(const char *model_dir, int max_length, int pdf_dpi, DmPrecision prec,
               InferStage **out, DmErr *err)
{
    *out = NULL;
    InferStage *st = calloc(1, sizeof *st);
    if (!st)
        return dm_err(err, "out of memory");
    if (qa_open_as(model_dir, prec, &st->qa, err)) {
        free(st);
        return -1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", model_dir);
    if (preproc_config_load(path, &st->pc, err))
        goto fail;
    if (max_length > 0) {
        if (max_length > st->qa.model->cfg.dec.max_pos) {
            dm_err(err, "max_length %d exceeds the model's %d positions (%s)", max_length,
                   st->qa.model->cfg.dec.max_pos, model_dir);
            goto fail;
        }
        st->qa.gen.max_length = max_length;
    }
    st->pdf_dpi = pdf_dpi > 0 ? pdf_dpi : IMAGE_PDF_DPI_DEFAULT;
    *out = st;
    return 0;
fail:
    qa_close(&st->qa);
    free(st);
    return -1;
}

void infer_limits(const InferStage *st, InferLimits *out)
{
    const DonutConfig *c = &st->qa.model->cfg;
    out->vocab = c->dec.vocab;
    out->max_length = st->qa.gen.max_length;
    out->max_pos = c->dec.max_pos;
    int longest = 1, nv = tokenizer_vocab_size(st->qa.tok);
    for (int id = 0; id < nv; id++) {
        const char *piece = tokenizer_id_to_piece(st->qa.tok, id);
        int n = piece ? (int)strlen(piece) : 0;
        if (n > longest)
            longest = n;
    }
    out->max_piece_bytes = longest;
    out->enc_dim = c->enc.hidden_size;
    int p = c->enc.patch > 0 ? c->enc.patch : 1;
    out->enc_tokens_max = (c->enc.image_h / p + 1) * (c->enc.image_w / p + 1);
    out->dec_layers = c->dec.layers;
    out->dec_heads = c->dec.heads;
}

int infer_max_length(const InferStage *st) { return st->qa.gen.max_length; }

void infer_close(InferStage **pst)
{
    InferStage *st = *pst;
    if (!st)
        return;
    qa_close(&st->qa);
    free(st);
    *pst = NULL;
}

const char *infer_fingerprint(const InferStage *st) { return st->qa.model->fingerprint; }
const char *infer_tokenizer_fingerprint(const InferStage *st)
{
    return tokenizer_fingerprint(st->qa.tok);
}

/* ----------------------------------------------------------- result building */


static int s_add_answer(Docmint__Result *res, const Docmint__Page *pg, const Docmint__Question *q,
                        QaAnswer *a, double seconds)
{
    Docmint__AnswerRecord **v = realloc(res->answers, (res->n_answers + 1) * sizeof *v);
    if (!v)
        return -1;
    res->answers = v;
    Docmint__AnswerRecord *r = malloc(sizeof *r);
    if (!r)
        return -1;
    docmint__answer_record__init(r);
    res->answers[res->n_answers++] = r;
    r->question_id = q->question_id;
    r->answer = a->text; /* ownership moves to the record */
    a->text = NULL;
    r->token_ids = a->ids;
    r->n_token_ids = (size_t)a->n_ids;
    a->ids = NULL;
    r->mean_logprob = (float)a->mean_logprob;
    r->seconds = (float)seconds;
    r->page_id = strdup(pg->page_id ? pg->page_id : "");
    r->question = strdup(q->text ? q->text : "");
    r->document = strdup(pg->document ? pg->document : "");
    r->page = pg->page_no;
    if (!r->answer || !r->page_id || !r->question || !r->document)
        return -1;
    return 0;
}


void infer_result_clear(Docmint__Result *res)
{
    for (size_t i = 0; i < res->n_answers; i++) {
        Docmint__AnswerRecord *r = res->answers[i];
        if (!r)
            continue;
        stage_free_str(r->answer);
        stage_free_str(r->page_id);
        stage_free_str(r->question);
        stage_free_str(r->document);
        free(r->token_ids);
        free(r);
    }
    stage_free_errors(res);
    free(res->answers);
    docmint__result__init(res);
}

/* ------------------------------------------------------------------- a page */

static int s_page(void *stage, const Docmint__Page *pg, Docmint__Result *res, DmErr *err)
{
    InferStage *st = stage;
    size_t nq = pg->n_questions;
    if (nq == 0)
        return 0;
    double t0 = dm_now();
    size_t e0 = res->n_errors;
    const char **texts = calloc(nq, sizeof *texts);
    const Docmint__Question **qs = calloc(nq, sizeof *qs);
    QaAnswer *ans = calloc(nq, sizeof *ans);
    float *enc = NULL;
    int n_enc = 0, rc = -1, nok = 0;
    if (!texts || !qs || !ans)
        goto oom;
    /* Questions whose prompt cannot work are errors on their own. */
    for (size_t i = 0; i < nq; i++) {
        const Docmint__Question *q = pg->questions[i];
        int32_t *ids = NULL;
        int n = 0;
        DmErr qe = {{0}};
        if (qa_prompt(&st->qa, q->text ? q->text : "", &ids, &n, &qe)) {
            char reason[1200];
            snprintf(reason, sizeof reason, "question %" PRId64 ": %s", q->question_id, qe.msg);
            if (stage_add_error(res, "infer", q->question_id, -1, reason))
                goto oom;
            continue;
        }
        free(ids);
        texts[nok] = q->text;
        qs[nok++] = q;
    }
    if (nok == 0) {
        rc = 0;
        goto done;
    }
    DmErr pe = {{0}};
    if (page_encode(st->qa.model, &st->pc, pg->image_path, pg->page_no, st->pdf_dpi, &enc, &n_enc,
                    &pe) ||
        qa_answer_page(&st->qa, enc, n_enc, texts, nok, ans, &pe)) {
        if (strstr(pe.msg, "out of memory")) {
            dm_err(err, "%s", pe.msg);
            goto done;
        }
        for (int i = 0; i < nok; i++)
            if (stage_add_error(res, "infer", qs[i]->question_id, -1, pe.msg))
                goto oom;
        rc = 0;
        goto done;
    }
    double share = (dm_now() - t0) / nok;
    for (int i = 0; i < nok; i++)
        if (s_add_answer(res, pg, qs[i], &ans[i], share))
            goto oom;
    rc = 0;
    goto done;
oom:
    dm_err(err, "out of memory building the result of page %s", pg->page_id);
done:
    /* the error records of this page name its document and page */
    for (size_t i = e0; rc == 0 && i < res->n_errors; i++) {
        Docmint__ErrorRecord *e = res->errors[i];
        e->page = pg->page_no;
        if (pg->document && pg->document[0] && !(e->document = strdup(pg->document))) {
            e->document = (char *)protobuf_c_empty_string;
            rc = dm_err(err, "out of memory building the result of page %s", pg->page_id);
        }
    }
    for (int i = 0; ans && i < nok; i++)
        qa_answer_free(&ans[i]);
    free(ans);
    free(texts);
    free(qs);
    free(enc);
    return rc;
}

int infer_shard(InferStage *st, const Docmint__Shard *shard, Docmint__Result *res,
                const atomic_int *cancel, DmErr *err)
{
    return stage_shard(st, s_page, shard, res, cancel, err);
}
