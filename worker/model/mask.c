/* mask.c - masked students (mask.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dm_fs.h"
#include "worker/model/mask.h"
#include "worker/model/plan.h"

/* ------------------------------------------------------------- scoring */

typedef struct Scored {
    double s;
    int j;
} Scored;

static int s_cmp(const void *a, const void *b)
{
    const Scored *x = a, *y = b;
    if (x->s != y->s)
        return x->s < y->s ? -1 : 1;
    return x->j - y->j;
}

void mask_rows(const float *W, int out, int in, const float *xnorm, double sparsity,
               DmMaskMethod method, uint8_t *keep)
{
    int drop = (int)floor(sparsity * in);
    Scored *sc = dm_xmalloc((size_t)in * sizeof *sc);
    for (int i = 0; i < out; i++) {
        const float *w = W + (size_t)i * in;
        for (int j = 0; j < in; j++) {
            sc[j].s = fabs((double)w[j]) * (method == DM_MASK_WANDA ? (double)xnorm[j] : 1.0);
            sc[j].j = j;
        }
        qsort(sc, (size_t)in, sizeof *sc, s_cmp);
        uint8_t *k = keep + (size_t)i * in;
        memset(k, 1, (size_t)in);
        for (int r = 0; r < drop; r++)
            k[sc[r].j] = 0;
    }
    free(sc);
}

/* ------------------------------------------------------------- linears */

int mask_linears(DonutModel *m, DmLinear **lin, char (*names)[128])
{
    static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    const char *pre = "decoder.model.decoder.layers";
    int n = 0;
    for (int l = 0; l < m->cfg.dec.layers; l++) {
        DecLayer *L = &m->dec.layers[l];
        DecAttn *att[2] = {&L->self, &L->cross};
        static const char *const an[2] = {"self_attn", "encoder_attn"};
        for (int a = 0; a < 2; a++) {
            if (!att[a]->present)
                continue;
            DmLinear *x[4] = {&att[a]->q, &att[a]->k, &att[a]->v, &att[a]->o};
            for (int i = 0; i < 4; i++) {
                lin[n] = x[i];
                snprintf(names[n++], 128, "%s.%d.%s.%s.weight", pre, l, an[a], proj[i]);
            }
        }
        if (L->ffn.present) {
            lin[n] = &L->ffn.fc1;
            snprintf(names[n++], 128, "%s.%d.fc1.weight", pre, l);
            lin[n] = &L->ffn.fc2;
            snprintf(names[n++], 128, "%s.%d.fc2.weight", pre, l);
        }
    }
    return n;
}

/* ---------------------------------------------------------------- load */

int mask_load(const DonutModel *m, const char *dir, DmMask **out, DmErr *err)
{
    *out = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, DM_MASK_FILE);
    if (access(path, F_OK) != 0)
        return 0;
    DmMask *k = dm_xcalloc(1, sizeof *k);
    if (safetensors_open(path, &k->tf, err)) {
        free(k);
        return -1;
    }
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    char(*names)[128] = dm_xmalloc(DM_DEC_LINEARS_MAX * sizeof *names);
    int nl = mask_linears((DonutModel *)m, lin, names);
    for (int i = 0; i < k->tf->n; i++) {
        const DmTensor *t = &k->tf->t[i];
        int at = -1;
        for (int j = 0; j < nl && at < 0; j++)
            if (!strcmp(names[j], t->name))
                at = j;
        if (at < 0) {
            dm_err(err, "%s: %s is not a linear weight of this model's decoder layers", path,
                   t->name);
            goto fail;
        }
        const DmLinear *l = lin[at];
        if (t->dtype != DM_U8 || t->ndim != 2 || t->shape[0] != l->out || t->shape[1] != l->in) {
            dm_err(err, "%s: %s must be U8 [%d, %d] like its weight (it is %s with %d dims)",
                   path, t->name, l->out, l->in, dm_dtype_name(t->dtype), t->ndim);
            goto fail;
        }
        const uint8_t *b = t->data;
        size_t n = (size_t)l->out * l->in;
        long long nonzero = 0;
        for (size_t e = 0; e < n; e++) {
            if (b[e] > 1) {
                dm_err(err, "%s: %s holds %d at entry %zu (1 keeps a weight, 0 prunes it)", path,
                       t->name, b[e], e);
                goto fail;
            }
            if (!b[e]) {
                k->pruned++;
                if (l->w && l->w[e] != 0.0f)
                    nonzero++;
            }
        }
        if (nonzero) {
            dm_err(err, "%s: %s: %lld weights the mask prunes are not zero in the model", path,
                   t->name, nonzero);
            goto fail;
        }
        k->masked += (long long)n;
    }
    free(names);
    *out = k;
    return 0;
fail:
    free(names);
    mask_free(&k);
    return -1;
}

void mask_free(DmMask **k)
{
    if (!*k)
        return;
    tensorfile_close(&(*k)->tf);
    free(*k);
    *k = NULL;
}

const uint8_t *mask_find(const DmMask *k, const char *name, size_t *count)
{
    const DmTensor *t = k ? tensorfile_find(k->tf, name) : NULL;
    if (count)
        *count = t ? (size_t)dm_tensor_numel(t) : 0;
    return t ? t->data : NULL;
}

/* ------------------------------------------------------------- writing */

int mask_prune_checkpoint(const char *model_dir, DmMaskMethod method, double sparsity,
                          const float *const *xnorms, const char *out_dir, DmErr *err)
{
    if (!(sparsity >= 0 && sparsity < 1))
        return dm_err(err, "sparsity %g: must be at least 0 and less than 1", sparsity);
    if (method == DM_MASK_WANDA && !xnorms)
        return dm_err(err, "wanda needs the input norms of every masked weight");
    struct stat st;
    if (stat(out_dir, &st) == 0)
        return dm_err(err, "%s: exists (the masked student needs a new folder)", out_dir);
    char tmp[4200], path[4300], src[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", out_dir, (int)getpid());
    dm_rm_tree(tmp);
    DonutModel *m = NULL, *check = NULL;
    DmMask *k = NULL;
    StWriter *ww = NULL, *mw = NULL;
    float *zero = NULL;
    uint8_t *keep = NULL;
    char(*names)[128] = NULL;
    int rc = -1, made = 0;
    if (donut_load(model_dir, &m, err))
        goto done;
    if (mask_load(m, model_dir, &k, err))
        goto done;
    if (k) {
        dm_err(err, "%s: already a masked student (masking again is not supported)", model_dir);
        goto done;
    }
    if (mkdir(tmp, 0755) != 0) {
        dm_err_errno(err, "%s: cannot create", tmp);
        goto done;
    }
    made = 1;
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    names = dm_xmalloc(DM_DEC_LINEARS_MAX * sizeof *names);
    int nl = mask_linears(m, lin, names);
    ww = st_writer_new();
    mw = st_writer_new();
    const TensorFile *tf = m->weights;
    for (int i = 0; i < tf->n; i++) {
        const DmTensor *t = &tf->t[i];
        int at = -1;
        for (int j = 0; j < nl && at < 0; j++)
            if (!strcmp(names[j], t->name))
                at = j;
        if (at < 0) {
            st_writer_add(ww, t->name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        const DmLinear *l = lin[at];
        size_t n = (size_t)l->out * l->in;
        zero = dm_xrealloc(zero, n * sizeof *zero);
        keep = dm_xrealloc(keep, n);
        mask_rows(l->w, l->out, l->in, xnorms ? xnorms[at] : NULL, sparsity, method, keep);
        for (size_t e = 0; e < n; e++)
            zero[e] = keep[e] ? l->w[e] : 0.0f;
        int64_t shape[2] = {l->out, l->in};
        st_writer_add_f32(ww, t->name, 2, shape, zero);
        st_writer_add(mw, t->name, DM_U8, 2, shape, keep);
    }
    st_writer_meta(ww, "format", "pt");
    char num[64];
    snprintf(num, sizeof num, "%g", sparsity);
    st_writer_meta(mw, "method", method == DM_MASK_WANDA ? "wanda" : "magnitude");
    st_writer_meta(mw, "sparsity", num);
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    if (st_writer_save(ww, path, err))
        goto done;
    snprintf(path, sizeof path, "%s/%s", tmp, DM_MASK_FILE);
    if (st_writer_save(mw, path, err))
        goto done;
    /* a teacher has no pruning record: the student's names its weights */
    snprintf(src, sizeof src, "%s/pruning.json", model_dir);
    if (access(src, F_OK) != 0) {
        DmPlan p;
        plan_of_model(m, &p);
        memcpy(p.teacher_fingerprint, m->fingerprint, sizeof p.teacher_fingerprint);
        json_t *rec = plan_to_json(&p);
        snprintf(path, sizeof path, "masked student of %s: %s, sparsity %g", model_dir,
                 method == DM_MASK_WANDA ? "wanda" : "magnitude", sparsity);
        json_object_set_new(rec, "description", json_string(path));
        snprintf(path, sizeof path, "%s/pruning.json", tmp);
        int bad = json_dump_file(rec, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        json_decref(rec);
        if (bad) {
            dm_err_errno(err, "%s: cannot write", path);
            goto done;
        }
    }
    if (prune_copy_side_files(model_dir, tmp, 1, err))
        goto done;
    /* the student loads, and its mask checks against it */
    if (donut_load(tmp, &check, err) || mask_load(check, tmp, &k, err)) {
        dm_err_prefix(err, "the written student does not load");
        goto done;
    }
    if (rename(tmp, out_dir) != 0) {
        dm_err_errno(err, "%s: cannot move the student into place", out_dir);
        goto done;
    }
    made = 0;
    rc = 0;
done:
    if (made)
        dm_rm_tree(tmp);
    free(zero);
    free(keep);
    free(names);
    st_writer_free(&ww);
    st_writer_free(&mw);
    mask_free(&k);
    donut_free(&check);
    donut_free(&m);
    return rc;
}
