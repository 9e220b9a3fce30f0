/* job.c - read a job file, validate it against the embedded
 * schemas/job.schema.json, fill the defaults and resolve relative paths
 * against the job file's folder.
 *
 * The resolved paths are written back into job->doc as well, so the
 * document can be sent to another process (or stored in a store's meta)
 * and parsed there with job_parse without depending on the original
 * folder or working directory. */
#include "coordinator/job.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/jsonschema.h"

#define S_SCHEMA "job.schema.json"

/* dir + "/" + rel, made absolute against the working directory when dir
 * is relative; "./" components and doubled slashes are dropped.  ".." is
 * kept: collapsing it is wrong across symbolic links. */
static char *s_resolve(const char *dir, const char *rel)
{
    char cwd[PATH_MAX];
    const char *parts[3] = {NULL, NULL, rel};
    if (rel[0] != '/') {
        parts[1] = dir && *dir ? dir : ".";
        if (parts[1][0] != '/')
            parts[0] = getcwd(cwd, sizeof cwd) ? cwd : NULL;
    }
    size_t cap = 4;
    for (int i = 0; i < 3; i++)
        cap += parts[i] ? strlen(parts[i]) + 1 : 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        const char *p = parts[i];
        if (!p)
            continue;
        while (*p) {
            const char *seg = p;
            while (*p && *p != '/')
                p++;
            size_t len = (size_t)(p - seg);
            if (*p == '/')
                p++;
            if (len == 0 || (len == 1 && seg[0] == '.'))
                continue;
            out[n++] = '/';
            memcpy(out + n, seg, len);
            n += len;
        }
    }
    if (n == 0)
        out[n++] = '/';
    /* keep a trailing slash of the original (a folder the user marked) */
    size_t rl = strlen(rel);
    if (rl > 1 && rel[rl - 1] == '/' && out[n - 1] != '/')
        out[n++] = '/';
    out[n] = '\0';
    return out;
}

/* The folder part of a path ("" for a bare name). */
static char *s_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup("");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Resolve doc[key] in place (a string; null and absent are left alone)
 * and return a copy for the Job. */
static int s_path_key(json_t *obj, const char *key, const char *dir, char **out, DmErr *err)
{
    *out = NULL;
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return 0;
    if (!dir) {
        *out = strdup(json_string_value(v));
    } else {
        *out = s_resolve(dir, json_string_value(v));
        if (*out)
            json_object_set_new(obj, key, json_string(*out));
    }
    if (!*out)
        return dm_err(err, "%s: out of memory", key);
    return 0;
}

static int s_int(const json_t *obj, const char *key)
{
    return (int)json_number_value(json_object_get(obj, key));
}

/* The "distill" block: present exactly when the stage is distill. */
static int s_fill_distill(Job *j, json_t *doc, const char *dir, DmErr *err)
{
    json_t *o = json_object_get(doc, "distill");
    if (json_is_null(o))
        o = NULL;
    int is_distill = !strcmp(j->stage, "distill");
    if (!o && is_distill)
        return dm_err(err, "distill: missing (required object for stage \"distill\", e.g. "
                           "{\"logits\": STORE})");
    if (o && !is_distill)
        return dm_err(err, "distill: only for stage \"distill\" (this job's stage is \"%s\")",
                      j->stage);
    if (!o)
        return 0;
    DistillSpec *d = &j->distill;
    if (s_path_key(o, "logits", dir, &d->logits, err))
        return dm_err_prefix(err, "distill");
    d->steps = (long)json_number_value(json_object_get(o, "steps"));
    d->epochs = s_int(o, "epochs");
    d->batch_size = s_int(o, "batch_size");
    d->micro_batch = s_int(o, "micro_batch");
    d->lr = json_number_value(json_object_get(o, "lr"));
    d->warmup_steps = (long)json_number_value(json_object_get(o, "warmup_steps"));
    const char *decay = json_string_value(json_object_get(o, "decay"));
    d->decay = !strcmp(decay, "cosine") ? DISTILL_DECAY_COSINE
               : !strcmp(decay, "constant") ? DISTILL_DECAY_CONSTANT
                                            : DISTILL_DECAY_LINEAR;
    d->weight_decay = json_number_value(json_object_get(o, "weight_decay"));
    json_t *betas = json_object_get(o, "adam_betas");
    d->beta1 = json_number_value(json_array_get(betas, 0));
    d->beta2 = json_number_value(json_array_get(betas, 1));
    d->eps = json_number_value(json_object_get(o, "adam_eps"));
    d->clip_norm = json_number_value(json_object_get(o, "clip_norm"));
    json_t *alpha = json_object_get(o, "alpha");
    d->alpha_auto = json_is_string(alpha);
    d->alpha = d->alpha_auto ? 0 : json_number_value(alpha);
    d->alpha_batches = s_int(o, "alpha_batches");
    d->temperature = json_number_value(json_object_get(o, "temperature"));
    d->seed = (uint64_t)json_number_value(json_object_get(o, "seed"));
    d->checkpoint_every = (long)json_number_value(json_object_get(o, "checkpoint_every"));
    d->keep_checkpoints = s_int(o, "keep_checkpoints");
    d->hash_check_every = (long)json_number_value(json_object_get(o, "hash_check_every"));
    d->feature_cache_mb = (long)json_number_value(json_object_get(o, "feature_cache_mb"));
    d->plot = json_is_true(json_object_get(o, "plot"));
    d->train_all = !strcmp(json_string_value(json_object_get(o, "train")), "all");
    if (d->micro_batch > d->batch_size)
        return dm_err(err, "distill.micro_batch: %d is more than batch_size %d", d->micro_batch,
                      d->batch_size);
    if (d->steps > 0 && d->warmup_steps > d->steps)
        return dm_err(err, "distill.warmup_steps: %ld is more than steps %ld", d->warmup_steps,
                      d->steps);
    return 0;
}

/* Fill the Job from a validated document (which it takes over). */
static int s_fill(Job *j, json_t *doc, const char *dir, DmErr *err)
{
    j->doc = doc;
    json_t *c = json_object_get(doc, "corpus");
    char *cpath, *root, *questions;
    if (!(j->stage = strdup(json_string_value(json_object_get(doc, "stage")))) ||
        !(j->endpoint = strdup(json_string_value(json_object_get(doc, "endpoint")))))
        return dm_err(err, "out of memory");
    if (s_path_key(doc, "model", dir, &j->model, err) || s_path_key(doc, "output", dir, &j->output, err) ||
        s_path_key(c, "path", dir, &cpath, err))
        return -1;
    j->corpus.path = cpath;
    if (s_path_key(c, "image_root", dir, &root, err))
        return -1;
    j->corpus.image_root = root;
    if (s_path_key(c, "questions", dir, &questions, err))
        return -1;
    j->corpus.questions = questions;
    if (corpus_format_parse(json_string_value(json_object_get(c, "format")), &j->corpus.format))
        return dm_err(err, "corpus.format: unknown format"); /* the schema's enum prevents this */
    j->corpus.pdf_dpi = s_int(c, "pdf_dpi");
    j->pages_per_shard = s_int(doc, "pages_per_shard");
    j->lease_seconds = json_number_value(json_object_get(doc, "lease_seconds"));
    j->heartbeat_seconds = json_number_value(json_object_get(doc, "heartbeat_seconds"));
    j->heartbeat_liveness = s_int(doc, "heartbeat_liveness");
    j->credit = s_int(doc, "credit");
    j->commit_every = s_int(doc, "commit_every");
    j->max_length = s_int(doc, "max_length");
    j->threads = s_int(doc, "threads");
    j->precision = !strcmp(json_string_value(json_object_get(doc, "precision")), "bf16");
    j->quiet = json_is_true(json_object_get(doc, "quiet"));
    json_t *tk = json_object_get(doc, "top_k");
    j->top_k = json_is_integer(tk) ? (int)json_integer_value(tk) : 0;
    /* T = 1 always first: the stored log-sum-exp at 1 gives the teacher's
     * own probabilities (cross-entropy, checks) whatever the job asks. */
    j->temps[j->n_temps++] = 1.0;
    size_t ti;
    json_t *tv;
    json_array_foreach(json_object_get(doc, "temperatures"), ti, tv) {
        double T = json_number_value(tv);
        int dup = 0;
        for (int i = 0; i < j->n_temps; i++)
            dup |= (float)j->temps[i] == (float)T;
        if (!dup)
            j->temps[j->n_temps++] = T;
    }
    j->first_answer_only = json_is_true(json_object_get(doc, "first_answer_only"));
    j->keep_features = json_is_true(json_object_get(doc, "keep_features"));
    if (j->keep_features && strcmp(j->stage, "cache-logits") != 0)
        return dm_err(err, "keep_features: only for stage \"cache-logits\" (the feature store "
                           "lives in a teacher-logit store)");
    /* A shard's result is one message of at most WIRE_MAX_MSG (64 MiB); a
     * full-size page's features take 9.4 MiB. */
    if (j->keep_features && j->pages_per_shard > 4)
        return dm_err(err, "pages_per_shard %d: with keep_features at most 4 (a shard's result, "
                           "about 9.4 MiB of features a page at full size, must fit a 64 MiB "
                           "message)",
                      j->pages_per_shard);
    if (s_fill_distill(j, doc, dir, err))
        return -1;
    /* Rules across keys, which the schema does not express. */
    if (j->precision && strcmp(j->stage, "infer") != 0)
        return dm_err(err, "precision: \"bf16\" is for the infer stage; stage \"%s\" keeps "
                           "the teacher in fp32 (its logits are the reference students learn)",
                      j->stage);
    if (j->corpus.format == CORPUS_ARCHIVE && !j->corpus.questions)
        return dm_err(err, "corpus.questions: required when corpus.format is \"archive\" (a file "
                           "of questions asked of every page)");
    if (j->corpus.format != CORPUS_ARCHIVE && j->corpus.questions)
        return dm_err(err, "corpus.questions: only for corpus.format \"archive\" (the %s format "
                           "carries its own questions)",
                      j->corpus.format == CORPUS_DOCVQA ? "docvqa" : "jsonl");
    return 0;
}

/* Parse, validate, fill.  dir: the folder relative paths resolve against
 * (NULL: leave them as written). */
static int s_parse(const char *text, size_t len, const char *what, const char *dir, Job **out,
                   DmErr *err)
{
    *out = NULL;
    json_error_t je;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!doc)
        return dm_err(err, "%s:%d:%d: %s", what, je.line, je.column, je.text);
    const json_t *schema = jsonschema_get(S_SCHEMA, err);
    if (!schema || jsonschema_validate(schema, doc, 1, err)) {
        json_decref(doc);
        return dm_err_prefix(err, "%s", what);
    }
    Job *j = calloc(1, sizeof *j);
    if (!j || !(j->path = strdup(what))) {
        free(j);
        json_decref(doc);
        return dm_err(err, "%s: out of memory", what);
    }
    if (s_fill(j, doc, dir, err)) {
        job_free(&j);
        return dm_err_prefix(err, "%s", what);
    }
    *out = j;
    return 0;
}

int job_parse(const char *text, const char *what, Job **out, DmErr *err)
{
    if (!out)
        return dm_err(err, "job_parse: no output");
    *out = NULL;
    if (!text)
        return dm_err(err, "%s: no text", what ? what : "job");
    return s_parse(text, strlen(text), what ? what : "job", NULL, out, err);
}

int job_load(const char *path, Job **out, DmErr *err)
{
    if (!out)
        return dm_err(err, "job_load: no output");
    *out = NULL;
    if (!path || !*path)
        return dm_err(err, "job file: empty path");
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_errno(err, "%s", path);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return dm_err(err, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return dm_err(err, "%s: read error", path);
    }
    char *dir = s_dirname(path);
    int rc = dir ? s_parse(buf, len, path, dir, out, err) : dm_err(err, "%s: out of memory", path);
    free(dir);
    free(buf);
    return rc;
}

void job_free(Job **job)
{
    if (!job || !*job)
        return;
    Job *j = *job;
    free(j->path);
    free(j->stage);
    free(j->model);
    free(j->output);
    free((char *)j->corpus.path);
    free((char *)j->corpus.image_root);
    free((char *)j->corpus.questions);
    free(j->endpoint);
    free(j->distill.logits);
    json_decref(j->doc);
    free(j);
    *job = NULL;
}
