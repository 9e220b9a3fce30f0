/* calibrate.c - Wanda's input norms from calibration items (calibrate.h). */
#include "worker/train/calibrate.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/text/tokenizer.h"
#include "worker/train/distill_data.h"

void calib_free(CalibNorms *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->xnorm[i]);
    free(c->xnorm);
    memset(c, 0, sizeof *c);
}

int calib_input_norms(const char *model_dir, const char *store_path, const CorpusSpec *cs,
                      int max_items, CalibNorms *out, DmErr *err)
{
    memset(out, 0, sizeof *out);
    DonutModel *m = NULL;
    Tokenizer *tok = NULL;
    Store *st = NULL;
    Corpus *corpus = NULL;
    DistillData *data = NULL;
    TrainParams tp = {0};
    double **sq = NULL;
    char *temps = NULL;
    int rc = -1, nl = 0;
    char path[4200];
    PreprocConfig pc;
    if (donut_load(model_dir, &m, err) || tokenizer_load(model_dir, &tok, err))
        goto done;
    snprintf(path, sizeof path, "%s/preprocessor_config.json", model_dir);
    if (preproc_config_load(path, &pc, err))
        goto done;
    /* the teacher's logits are not used: only its questions, answers and
     * pages, whose token ids must be this tokenizer's */
    if (store_open(store_path, STORE_READ, &st, err) ||
        logit_store_check(st, NULL, tokenizer_fingerprint(tok), err))
        goto done;
    if (store_meta_read(st, "temperatures", &temps, err) < 0)
        goto done;
    json_t *ta = temps ? json_loads(temps, 0, NULL) : NULL;
    double tau = json_number_value(json_array_get(ta, 0));
    json_decref(ta);
    if (!(tau > 0)) {
        dm_err(err, "%s: records no temperatures", store_path);
        goto done;
    }
    if (corpus_load(cs, &corpus, err) ||
        distill_data_open(st, corpus, m, &pc, cs->pdf_dpi, tau, (size_t)256 << 20, 0, &data, err) ||
        train_params_init(m, &tp, err))
        goto done;
    int items = distill_data_count(data);
    if (max_items > 0 && items > max_items)
        items = max_items;
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    char(*names)[128] = dm_xmalloc(DM_DEC_LINEARS_MAX * sizeof *names);
    nl = mask_linears(m, lin, names);
    free(names);
    sq = dm_xcalloc((size_t)nl, sizeof *sq);
    for (int i = 0; i < nl; i++)
        sq[i] = dm_xcalloc((size_t)lin[i]->in, sizeof **sq);
    for (int i = 0; i < items; i++) {
        DistillLoaded l;
        if (distill_item_load(data, i, &l, err))
            goto done;
        int bad = train_item_input_sq(m, &tp, &l.it, sq, err);
        distill_item_clear(&l);
        if (bad)
            goto done;
    }
    out->n = nl;
    out->items = items;
    out->xnorm = dm_xcalloc((size_t)nl, sizeof *out->xnorm);
    for (int i = 0; i < nl; i++) {
        out->xnorm[i] = dm_xmalloc((size_t)lin[i]->in * sizeof(float));
        for (int j = 0; j < lin[i]->in; j++)
            out->xnorm[i][j] = (float)sqrt(sq[i][j]);
    }
    rc = 0;
done:
    if (sq)
        for (int i = 0; i < nl; i++)
            free(sq[i]);
    free(sq);
    free(temps);
    if (tp.n)
        train_params_free(&tp);
    distill_data_close(&data);
    corpus_free(&corpus);
    store_close(&st);
    tokenizer_free(&tok);
    donut_free(&m);
    return rc;
}
