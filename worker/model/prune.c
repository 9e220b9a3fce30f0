/* prune.c - write a pruned student (see prune_checkpoint in plan.h).
 *
 * The cut works on the tensors as the file stores them, byte by byte, so a
 * float16 or bfloat16 checkpoint stays float16 or bfloat16 and the kept
 * weights are bit-identical to the teacher's.  The student is checked by
 * loading it with the ordinary loader before it is renamed into place. */
#define _GNU_SOURCE /* memrchr */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dm_fs.h"
#include "worker/model/plan.h"

/* The files of a Hugging Face Donut folder that a student shares with its
 * teacher (other weight formats of the teacher would be uncut: left out). */
static const char *const s_copied[] = {
    "config.json",          "preprocessor_config.json", "tokenizer.json",
    "sentencepiece.bpe.model", "added_tokens.json",     "special_tokens_map.json",
    "tokenizer_config.json", "generation_config.json", "prompt.json",  "pruning.json",
};

int prune_copy_side_files(const char *src, const char *dst, int with_pruning, DmErr *err)
{
    char from[4200], to[4200];
    size_t n = sizeof s_copied / sizeof *s_copied - (with_pruning ? 0 : 1);
    for (size_t i = 0; i < n; i++) {
        snprintf(from, sizeof from, "%s/%s", src, s_copied[i]);
        snprintf(to, sizeof to, "%s/%s", dst, s_copied[i]);
        if (access(from, F_OK) == 0 && dm_copy_file(from, to, err))
            return -1;
    }
    return 0;
}

/* out_dir must be absent, or an empty folder. */
static int s_check_out(const char *out_dir, DmErr *err)
{
    struct stat st;
    if (stat(out_dir, &st) != 0)
        return errno == ENOENT ? 0 : dm_err_errno(err, "%s: cannot inspect", out_dir);
    if (!S_ISDIR(st.st_mode))
        return dm_err(err, "%s: exists and is not a folder", out_dir);
    DIR *d = opendir(out_dir);
    if (!d)
        return dm_err_errno(err, "%s: cannot open", out_dir);
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty ? 0 : dm_err(err, "%s: exists and is not empty (the student needs a new folder)",
                              out_dir);
}

/* The sub-layer a decoder layer tensor belongs to: 0 when it is not one. */
static int s_locate(const char *name, int *layer, int *kind, const char **rest)
{
    static const char pfx[] = "decoder.model.decoder.layers.";
    if (strncmp(name, pfx, sizeof pfx - 1))
        return 0;
    char *end;
    long l = strtol(name + sizeof pfx - 1, &end, 10);
    if (*end != '.' || l < 0 || l >= DM_MAX_LAYERS)
        return 0;
    *layer = (int)l;
    *rest = end + 1;
    if (!strncmp(*rest, "self_attn", 9))
        *kind = DM_SUB_S;
    else if (!strncmp(*rest, "encoder_attn", 12))
        *kind = DM_SUB_C;
    else if (!strncmp(*rest, "fc1.", 4) || !strncmp(*rest, "fc2.", 4) ||
             !strncmp(*rest, "final_layer_norm.", 17))
        *kind = DM_SUB_M;
    else
        return 0;
    return 1;
}

/* Add tensor t cut to the kept heads: q/k/v weights and biases keep the
 * rows of each kept head, out_proj.weight its columns.  pos[i] is the
 * position in the stored tensor of the i-th kept head. */
static int s_add_cut(StWriter *w, const DmTensor *t, const char *rest, const int *pos, int nk,
                     int nstored, DmErr *err)
{
    size_t es = dm_dtype_size(t->dtype);
    int is_out = strstr(rest, "out_proj.") != NULL;
    if (is_out && strstr(rest, ".bias")) {
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
        return 0;
    }
    int64_t inner = is_out ? t->shape[1] : t->shape[0];
    if ((is_out && t->ndim != 2) || inner % nstored)
        return dm_err(err, "tensor %s: shape does not split into %d heads", t->name, nstored);
    size_t hd = (size_t)(inner / nstored);
    int64_t shape[2] = {t->shape[0], t->ndim == 2 ? t->shape[1] : 1};
    const unsigned char *src = t->data;
    unsigned char *dst;
    if (is_out) { /* [d, nstored*hd] -> [d, nk*hd] */
        size_t rows = (size_t)shape[0], run = hd * es;
        dst = dm_xmalloc(rows * nk * run + 1);
        for (size_t r = 0; r < rows; r++)
            for (int k = 0; k < nk; k++)
                memcpy(dst + (r * nk + k) * run, src + (r * nstored + pos[k]) * run, run);
        shape[1] = (int64_t)(nk * hd);
    } else { /* [nstored*hd, cols] -> [nk*hd, cols] */
        size_t run = hd * (size_t)shape[1] * es;
        dst = dm_xmalloc(nk * run + 1);
        for (int k = 0; k < nk; k++)
            memcpy(dst + k * run, src + pos[k] * run, run);
        shape[0] = (int64_t)(nk * hd);
    }
    st_writer_add(w, t->name, t->dtype, t->ndim, shape, dst);
    free(dst);
    return 0;
}

static int s_write_weights(const DonutModel *m, const DmPlan *base, const DmPlan *p,
                           const char *path, DmErr *err)
{
    StWriter *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    const TensorFile *tf = m->weights;
    int rc = 0;
    for (int i = 0; rc == 0 && i < tf->n; i++) {
        const DmTensor *t = &tf->t[i];
        int l, kind;
        const char *rest;
        if (!s_locate(t->name, &l, &kind, &rest) || l >= p->layers) {
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        if (!p->keep[l][kind])
            continue;
        int is_proj = kind != DM_SUB_M && !strstr(rest, "layer_norm");
        if (!is_proj || p->nheads[l][kind] == base->nheads[l][kind]) {
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        int pos[DM_MAX_HEADS], nk = p->nheads[l][kind];
        for (int k = 0, j = 0; k < nk; k++) {
            while (base->head_ids[l][kind][j] != p->head_ids[l][kind][k])
                j++; /* the plan's heads are a subset of the base's (plan_load) */
            pos[k] = j;
        }
        rc = s_add_cut(w, t, rest, pos, nk, base->nheads[l][kind], err);
    }
    if (rc == 0)
        rc = st_writer_save(w, path, err);
    st_writer_free(&w);
    return rc;
}

static int s_write_json(json_t *doc, const char *path, DmErr *err)
{
    char *text = json_dumps(doc, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    FILE *f = text ? fopen(path, "w") : NULL;
    int bad = !f || fputs(text, f) == EOF || fputc('\n', f) == EOF;
    if (f && fclose(f) != 0)
        bad = 1;
    free(text);
    return bad ? dm_err_errno(err, "%s: cannot write", path) : 0;
}

int prune_checkpoint(const char *model_dir, const char *plan_path, const char *out_dir,
                     DmPlan *result, DmErr *err)
{
    char path[4096], src[4096], tmp[4096] = "";
    DonutModel *m = NULL, *check = NULL;
    DmPlan full, base, p;
    int rc = -1;
    size_t olen = strlen(out_dir);
    while (olen > 1 && out_dir[olen - 1] == '/')
        olen--;
    if (olen == 0 || olen > 3000)
        return dm_err(err, "output folder \"%s\": bad name", out_dir);
    if (s_check_out(out_dir, err) || donut_load(model_dir, &m, err))
        goto done;
    plan_full(&m->cfg.dec, &full);
    plan_of_model(m, &base);
    snprintf(path, sizeof path, "%s/pruning.json", model_dir);
    if (access(path, F_OK) == 0) {
        DmPlan rec;
        if (plan_load(path, &full, &rec, err))
            goto done;
        memcpy(base.teacher_fingerprint, rec.teacher_fingerprint, sizeof rec.teacher_fingerprint);
    } else {
        memcpy(base.teacher_fingerprint, m->fingerprint, sizeof m->fingerprint);
    }
    if (plan_load(plan_path, &base, &p, err))
        goto done;
    memcpy(p.teacher_fingerprint, base.teacher_fingerprint, sizeof p.teacher_fingerprint);

    /* A hidden temporary folder beside out_dir, so the rename stays on one
     * file system. */
    const char *slash = memrchr(out_dir, '/', olen);
    int plen = slash ? (int)(slash - out_dir) + 1 : 0;
    if (plen > 1) { /* the parent folder, created if missing */
        snprintf(tmp, sizeof tmp, "%.*s", plen - 1, out_dir);
        if (dm_mkdirs(tmp, err))
            goto done;
    }
    snprintf(tmp, sizeof tmp, "%.*s.%.*s.tmp-XXXXXX", plen, out_dir, (int)(olen - plen),
             out_dir + plen);
    if (!mkdtemp(tmp)) {
        dm_err_errno(err, "%.*s: cannot create a temporary folder beside it", (int)olen, out_dir);
        tmp[0] = '\0';
        goto done;
    }
    mode_t mask = umask(0); /* mkdtemp's 0700 would outlive the rename */
    umask(mask);
    chmod(tmp, 0777 & ~mask);
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    if (s_write_weights(m, &base, &p, path, err))
        goto done;
    json_t *rec = plan_to_json(&p);
    snprintf(src, sizeof src, "docmint prune of %s with %s", model_dir, plan_path);
    json_object_set_new(rec, "description", json_string(src));
    snprintf(path, sizeof path, "%s/pruning.json", tmp);
    int bad = s_write_json(rec, path, err);
    json_decref(rec);
    if (bad)
        goto done;
    if (prune_copy_side_files(model_dir, tmp, 0, err))
        goto done;
    if (donut_load(tmp, &check, err)) {
        dm_err_prefix(err, "the written student does not load");
        goto done;
    }
    snprintf(path, sizeof path, "%.*s", (int)olen, out_dir);
    if (rename(tmp, path) != 0) {
        dm_err_errno(err, "%s: cannot move the student into place", path);
        goto done;
    }
    tmp[0] = '\0';
    if (result)
        *result = p;
    rc = 0;
done:
    if (tmp[0])
        dm_rm_tree(tmp);
    donut_free(&check);
    donut_free(&m);
    return rc;
}
