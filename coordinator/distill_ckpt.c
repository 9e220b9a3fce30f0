/* distill_ckpt.c - checkpoint folders of the distill stage
 * (distill_ckpt.h). */
#include "coordinator/distill_ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dm_fs.h"

/* Files of the student folder that a checkpoint writes itself. */
static int s_own_file(const char *name)
{
    static const char *own[] = {"model.safetensors", "pytorch_model.bin", "optimizer.safetensors",
                                "state.json", "distill.json"};
    for (size_t i = 0; i < sizeof own / sizeof *own; i++)
        if (!strcmp(name, own[i]))
            return 1;
    return name[0] == '.';
}

/* Copy the student folder's other files (config, tokenizer, processor,
 * pruning record, ...). */
static int s_copy_side_files(const char *src, const char *dst, DmErr *err)
{
    DIR *d = opendir(src);
    if (!d)
        return dm_err_errno(err, "%s: cannot list", src);
    struct dirent *e;
    int rc = 0;
    char a[4200], b[4200];
    while (!rc && (e = readdir(d))) {
        if (s_own_file(e->d_name))
            continue;
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        struct stat st;
        if (stat(a, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        rc = dm_copy_file(a, b, err);
    }
    closedir(d);
    return rc;
}

/* A decoder tensor of a sub-layer the student does not have. */
static int s_removed(const DonutModel *m, const char *name)
{
    int l, n = 0;
    char part[64];
    if (sscanf(name, "decoder.model.decoder.layers.%d.%63[a-z_]%n", &l, part, &n) != 2 ||
        l < 0 || l >= m->cfg.dec.layers)
        return 0;
    const DecLayer *L = &m->dec.layers[l];
    if (!strncmp(part, "self_attn", 9))
        return !L->self.present;
    if (!strncmp(part, "encoder_attn", 12))
        return !L->cross.present;
    return !L->ffn.present; /* fc1, fc2, final_layer_norm */
}

static int s_write_model(const char *path, const DonutModel *m, const TrainParams *tp,
                         DmErr *err)
{
    StWriter *w = st_writer_new();
    const TensorFile *tf = m->weights;
    for (int i = 0; i < tf->n; i++) {
        const DmTensor *t = &tf->t[i];
        if (s_removed(m, t->name))
            continue;
        const TrainParam *p = train_param_find(tp, t->name);
        if (!p && !strcmp(t->name, "decoder.lm_head.weight")) /* tied: the trained embedding */
            p = train_param_find(tp, "decoder.model.decoder.embed_tokens.weight");
        if (p)
            st_writer_add_f32(w, t->name, p->ndim, p->shape, tp->data + p->offset);
        else
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    st_writer_meta(w, "format", "pt");
    int rc = st_writer_save(w, path, err);
    st_writer_free(&w);
    return rc;
}

static int s_write_optimizer(const char *path, const TrainParams *tp, const AdamW *opt,
                             DmErr *err)
{
    StWriter *w = st_writer_new();
    char nm[160], num[32];
    for (int i = 0; i < tp->n; i++) {
        const TrainParam *p = &tp->p[i];
        snprintf(nm, sizeof nm, "exp_avg.%s", p->name);
        st_writer_add_f32(w, nm, p->ndim, p->shape, opt->m + p->offset);
        snprintf(nm, sizeof nm, "exp_avg_sq.%s", p->name);
        st_writer_add_f32(w, nm, p->ndim, p->shape, opt->v + p->offset);
    }
    snprintf(num, sizeof num, "%ld", opt->step);
    st_writer_meta(w, "step", num);
    int rc = st_writer_save(w, path, err);
    st_writer_free(&w);
    return rc;
}

static int s_write_json(const char *path, const json_t *doc, DmErr *err)
{
    if (json_dump_file(doc, path, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)))
        return dm_err_errno(err, "%s: cannot write", path);
    return 0;
}

int distill_ckpt_write(const char *dir, const DonutModel *m, const TrainParams *tp,
                       const AdamW *opt, const json_t *state, const json_t *record, DmErr *err)
{
    char tmp[4200], path[4300], old[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", dir, (int)getpid());
    dm_rm_tree(tmp);
    if (mkdir(tmp, 0755) != 0)
        return dm_err_errno(err, "%s: cannot create", tmp);
    int rc = s_copy_side_files(m->dir, tmp, err);
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    rc = rc ? rc : s_write_model(path, m, tp, err);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
    rc = rc ? rc : s_write_optimizer(path, tp, opt, err);
    snprintf(path, sizeof path, "%s/state.json", tmp);
    rc = rc ? rc : s_write_json(path, state, err);
    snprintf(path, sizeof path, "%s/distill.json", tmp);
    rc = rc ? rc : s_write_json(path, record, err);
    if (rc) {
        dm_rm_tree(tmp);
        return -1;
    }
    /* An older folder of the same name (the final student of an earlier
     * run) moves aside first, so DIR is never missing a file. */
    snprintf(old, sizeof old, "%s.old-%d", dir, (int)getpid());
    int had = access(dir, F_OK) == 0;
    if (had && rename(dir, old) != 0) {
        dm_rm_tree(tmp);
        return dm_err_errno(err, "%s: cannot move aside", dir);
    }
    if (rename(tmp, dir) != 0) {
        dm_err_errno(err, "%s: cannot rename to %s", tmp, dir);
        dm_rm_tree(tmp);
        return -1;
    }
    if (had)
        dm_rm_tree(old);
    return 0;
}

/* Leftovers of a killed writer in folder dir. */
static int s_clean_dir(const char *dir, const char *output, DmErr *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : dm_err_errno(err, "%s: cannot list", dir);
    struct dirent *e;
    int rc = 0;
    char p[4200], student[4200];
    snprintf(student, sizeof student, "%s/student", output);
    while (!rc && (e = readdir(d))) {
        int tmp = strstr(e->d_name, ".tmp-") != NULL;
        int old = !strncmp(e->d_name, "student.old-", 12);
        if (!tmp && !old)
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (old && access(student, F_OK) != 0) {
            if (rename(p, student) != 0)
                rc = dm_err_errno(err, "%s: cannot rename to %s", p, student);
        } else if (dm_rm_tree(p)) {
            rc = dm_err_errno(err, "%s: cannot delete", p);
        }
    }
    closedir(d);
    return rc;
}

int distill_ckpt_clean(const char *output, DmErr *err)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/checkpoints", output);
    return s_clean_dir(dir, output, err) || s_clean_dir(output, output, err) ? -1 : 0;
}

/* step-N folders with a state.json, in the checkpoints folder. */
static int s_list(const char *output, long **steps, int *n, DmErr *err)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/checkpoints", output);
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : dm_err_errno(err, "%s: cannot list", dir);
    struct dirent *e;
    int cap = 0;
    while ((e = readdir(d))) {
        long s;
        int used = 0;
        if (sscanf(e->d_name, "step-%ld%n", &s, &used) != 1 || e->d_name[used] || s < 0)
            continue;
        char st[4400];
        snprintf(st, sizeof st, "%s/%s/state.json", dir, e->d_name);
        if (access(st, F_OK) != 0)
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            long *ns = realloc(*steps, (size_t)cap * sizeof *ns);
            if (!ns) {
                closedir(d);
                return dm_err(err, "out of memory");
            }
            *steps = ns;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    return 0;
}

int distill_ckpt_newest(const char *output, char *path, size_t n, long *step, DmErr *err)
{
    long *steps;
    int k;
    if (s_list(output, &steps, &k, err))
        return -1;
    long best = -1;
    for (int i = 0; i < k; i++)
        if (steps[i] > best)
            best = steps[i];
    free(steps);
    if (best < 0)
        return 0;
    *step = best;
    snprintf(path, n, "%s/checkpoints/step-%ld", output, best);
    return 1;
}

int distill_ckpt_prune(const char *output, int keep, DmErr *err)
{
    long *steps;
    int k;
    if (keep <= 0)
        return 0;
    if (s_list(output, &steps, &k, err))
        return -1;
    int rc = 0;
    for (int i = 0; i < k; i++) {
        int newer = 0;
        for (int j = 0; j < k; j++)
            newer += steps[j] > steps[i];
        if (newer < keep)
            continue;
        char p[4200];
        snprintf(p, sizeof p, "%s/checkpoints/step-%ld", output, steps[i]);
        if (dm_rm_tree(p))
            rc = dm_err_errno(err, "%s: cannot delete", p);
    }
    free(steps);
    return rc;
}

/* Copy tensor `name` of tf, which must have the parameter's shape, into
 * dst as float32. */
static int s_read_tensor(const TensorFile *tf, const char *name, const TrainParam *p, float *dst,
                         DmErr *err)
{
    const DmTensor *t = tensorfile_find(tf, name);
    if (!t)
        return dm_err(err, "%s: tensor %s is missing", tf->path, name);
    if (dm_tensor_numel(t) != (int64_t)p->count || t->ndim != p->ndim)
        return dm_err(err, "%s: tensor %s has another shape than the student's", tf->path, name);
    if (t->dtype != DM_F32)
        return dm_err(err, "%s: tensor %s is %s, a checkpoint holds F32", tf->path, name,
                      dm_dtype_name(t->dtype));
    memcpy(dst, t->data, p->count * sizeof(float));
    return 0;
}

int distill_ckpt_read(const char *dir, TrainParams *tp, AdamW *opt, json_t **state, DmErr *err)
{
    char path[4300];
    TensorFile *mf = NULL, *of = NULL;
    *state = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = safetensors_open(path, &mf, err);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    rc = rc ? rc : safetensors_open(path, &of, err);
    char nm[160];
    for (int i = 0; !rc && i < tp->n; i++) {
        const TrainParam *p = &tp->p[i];
        rc = s_read_tensor(mf, p->name, p, tp->data + p->offset, err);
        snprintf(nm, sizeof nm, "exp_avg.%s", p->name);
        rc = rc ? rc : s_read_tensor(of, nm, p, opt->m + p->offset, err);
        snprintf(nm, sizeof nm, "exp_avg_sq.%s", p->name);
        rc = rc ? rc : s_read_tensor(of, nm, p, opt->v + p->offset, err);
    }
    tensorfile_close(&mf);
    tensorfile_close(&of);
    if (rc)
        return -1;
    snprintf(path, sizeof path, "%s/state.json", dir);
    json_error_t je;
    *state = json_load_file(path, 0, &je);
    if (!*state)
        return dm_err(err, "%s: line %d: %s", path, je.line, je.text);
    return 0;
}
