/* job.c - read a job file, validate it against the embedded
 * schemas/job.schema.json, fill the defaults and resolve relative paths
 * against the job file's folder.
 *
 * The resolved paths are written back into job->doc as well, so the
 * document can be sent to another process (or stored in a store's meta)
 * and parsed there with job_parse without depending on the original
 * folder or working directory. */
#include "coordinator/job.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
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
    d->skip_damaged = json_is_true(json_object_get(o, "skip_damaged"));
    d->train_all = !strcmp(json_string_value(json_object_get(o, "train")), "all");
    d->order_pages = !strcmp(json_string_value(json_object_get(o, "order")), "pages");
    json_t *ev = json_object_get(o, "eval");
    if (json_is_object(ev)) {
        if (s_path_key(ev, "corpus", dir, &d->eval_corpus, err))
            return dm_err_prefix(err, "distill.eval");
        json_t *q = json_object_get(ev, "questions"), *every = json_object_get(ev, "every");
        d->eval_questions = q ? (int)json_integer_value(q) : 200;
        d->eval_every = every ? (long)json_integer_value(every) : 0;
    }
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
    if (s_path_key(doc, "worker_keys", dir, &j->worker_keys, err))
        return -1;
    if (s_path_key(c, "image_root", dir, &root, err))
        return -1;
    j->corpus.image_root = root;
    if (s_path_key(c, "questions", dir, &questions, err))
        return -1;
    j->corpus.questions = questions;
    if (corpus_format_parse(json_string_value(json_object_get(c, "format")), &j->corpus.format))
        return dm_err(err, "corpus.format: unknown format"); /* the schema's enum prevents this */
    j->corpus.pdf_dpi = s_int(c, "pdf_dpi");
    j->corpus.max_page_pixels = (int64_t)json_integer_value(json_object_get(c, "max_page_pixels"));
    j->pages_per_shard = s_int(doc, "pages_per_shard");
    j->lease_seconds = json_number_value(json_object_get(doc, "lease_seconds"));
    j->page_timeout_seconds = json_number_value(json_object_get(doc, "page_timeout_seconds"));
    if (j->page_timeout_seconds <= 0) {
        /* automatic: half the lease per shard; none under a lease so short
         * (a test setting) that a slow page is better recomputed elsewhere */
        j->page_timeout_seconds = j->lease_seconds / (2.0 * (j->pages_per_shard > 0 ? j->pages_per_shard : 1));
        if (j->page_timeout_seconds < 30)
            j->page_timeout_seconds = 0;
    } else if (j->page_timeout_seconds * j->pages_per_shard >= j->lease_seconds)
        return dm_err(err, "page_timeout_seconds %g x pages_per_shard %d is not less than lease_seconds %g: "
                           "the lease would expire first and hand a hung page to the next worker",
                      j->page_timeout_seconds, j->pages_per_shard, j->lease_seconds);
    j->max_lease_expiries = s_int(doc, "max_lease_expiries");
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
    if (s_path_key(doc, "corrupt_corpus", dir, &j->corrupt_corpus, err))
        return -1;
    size_t ai;
    json_t *av;
    json_array_foreach(json_object_get(doc, "analyses"), ai, av)
        j->kv_retrieval |= json_is_string(av) && !strcmp(json_string_value(av), "kv_retrieval");
    if (j->kv_retrieval && strcmp(j->stage, "analyze") != 0)
        return dm_err(err, "analyses: \"kv_retrieval\" is for stage \"analyze\"");
    if (j->kv_retrieval && !j->corrupt_corpus)
        return dm_err(err, "corrupt_corpus: required by \"kv_retrieval\" (the corrupted twins' "
                           "questions, corrupt_v1.0_withQT.json of docmint synth --corrupt)");
    if (!j->kv_retrieval && j->corrupt_corpus)
        return dm_err(err, "corrupt_corpus: only with \"kv_retrieval\" in \"analyses\"");
    /* Rules across keys, which the schema does not express. */
    if (j->precision && strcmp(j->stage, "infer") != 0)
        return dm_err(err, "precision: \"bf16\" is for the infer stage; stage \"%s\" keeps "
                           "the teacher in fp32 (its logits are the reference students learn)",
                      j->stage);
    if (j->corpus.format == CORPUS_ARCHIVE && !j->corpus.questions)
        return dm_err(err, "corpus.questions: required when corpus.format is \"archive\" (a file "
                           "of questions asked of every page)");
    if (j->corpus.format == CORPUS_ARCHIVE &&
        (!strcmp(j->stage, "cache-logits") || !strcmp(j->stage, "analyze")))
        return dm_err(err, "corpus.format: stage \"%s\" reads the gold answers, and an archive "
                           "has none (use a docvqa or jsonl corpus with answers)",
                      j->stage);
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
    free(j->worker_keys);
    free(j->corrupt_corpus);
    free((char *)j->corpus.path);
    free((char *)j->corpus.image_root);
    free((char *)j->corpus.questions);
    free(j->endpoint);
    free(j->distill.logits);
    free(j->distill.eval_corpus);
    json_decref(j->doc);
    free(j);
    *job = NULL;
}

/* ------------------------------------------------ checks against the disk */

int job_stage_runnable(const char *stage)
{
    return !strcmp(stage, "infer") || !strcmp(stage, "cache-logits") || !strcmp(stage, "distill") ||
           !strcmp(stage, "analyze");
}

/* The kind of document a file starts with, when it is an image or a PDF
 * (NULL otherwise). */
static const char *s_image_kind(const char *path)
{
    unsigned char b[12] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8))
        return "a PNG image";
    if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF)
        return "a JPEG image";
    if (n >= 4 && (!memcmp(b, "II*\0", 4) || !memcmp(b, "MM\0*", 4)))
        return "a TIFF image";
    if (n >= 5 && !memcmp(b, "%PDF-", 5))
        return "a PDF document";
    if (n >= 6 && (!memcmp(b, "GIF87a", 6) || !memcmp(b, "GIF89a", 6)))
        return "a GIF image";
    if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4))
        return "a WebP image";
    if (n >= 2 && b[0] == 'B' && b[1] == 'M')
        return "a BMP image";
    return NULL;
}

/* The output folder: absent (its nearest existing parent must be a
 * writable folder: run creates the rest) or a folder. */
static int s_check_output(const char *out, DmErr *err)
{
    struct stat st;
    if (stat(out, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return dm_err(err, "output %s: exists and is not a folder", out);
        if (access(out, W_OK | X_OK) != 0)
            return dm_err_errno(err, "output %s", out);
        return 0;
    }
    if (errno != ENOENT && errno != ENOTDIR)
        return dm_err_errno(err, "output %s", out);
    char *p = strdup(out);
    if (!p)
        return dm_err(err, "out of memory");
    int rc = 0;
    for (;;) {
        size_t n = strlen(p);
        while (n > 1 && p[n - 1] == '/')
            p[--n] = '\0';
        char *slash = strrchr(p, '/');
        if (!slash) {
            snprintf(p, n + 1, ".");
        } else if (slash == p) {
            p[1] = '\0';
        } else {
            *slash = '\0';
        }
        if (stat(p, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                rc = dm_err(err, "output %s: %s is not a folder", out, p);
            else if (access(p, W_OK | X_OK) != 0)
                rc = dm_err(err, "output %s: cannot create it in %s: %s", out, p, strerror(errno));
            break;
        }
        if (errno != ENOENT && errno != ENOTDIR) {
            rc = dm_err_errno(err, "output %s: %s", out, p);
            break;
        }
        if (!strcmp(p, ".") || !strcmp(p, "/"))
            break;
    }
    free(p);
    return rc;
}

int job_check(const Job *j, DmErr *err)
{
    struct stat st;
    if (!job_stage_runnable(j->stage))
        return dm_err(err, "%s: stage \"%s\": this build of docmint cannot run it (it runs "
                           "infer, cache-logits, analyze and distill)",
                      j->path, j->stage);
    if (stat(j->model, &st) != 0)
        return dm_err_errno(err, "%s: model %s", j->path, j->model);
    if (!S_ISDIR(st.st_mode))
        return dm_err(err, "%s: model %s: not a folder (a checkpoint folder holds config.json, "
                           "model.safetensors and the tokenizer files)",
                      j->path, j->model);
    char cfg[PATH_MAX + 16];
    snprintf(cfg, sizeof cfg, "%s/config.json", j->model);
    if (access(cfg, R_OK) != 0)
        return dm_err(err, "%s: model %s: no readable config.json (is it a checkpoint folder?)",
                      j->path, j->model);
    if (s_check_output(j->output, err))
        return dm_err_prefix(err, "%s", j->path);
    const char *cp = j->corpus.path;
    if (stat(cp, &st) != 0)
        return dm_err_errno(err, "%s: corpus.path %s", j->path, cp);
    if (S_ISDIR(st.st_mode) && j->corpus.format != CORPUS_ARCHIVE)
        return dm_err(err, "%s: corpus.path %s: is a folder; the %s format reads one file (a "
                           "folder of documents is corpus.format \"archive\")",
                      j->path, cp, j->corpus.format == CORPUS_DOCVQA ? "docvqa" : "jsonl");
    const char *kind = S_ISREG(st.st_mode) ? s_image_kind(cp) : NULL;
    if (kind && j->corpus.format == CORPUS_ARCHIVE)
        return dm_err(err, "%s: corpus.path %s: is %s, not a folder or a list file of "
                           "documents (put it in a folder and name the folder, or use "
                           "`docmint ask` for one page)",
                      j->path, cp, kind);
    if (kind)
        return dm_err(err, "%s: corpus.path %s: is %s, not %s (for folders of documents use "
                           "corpus.format \"archive\")",
                      j->path, cp, kind,
                      j->corpus.format == CORPUS_DOCVQA ? "a DocVQA annotation JSON file"
                                                        : "a JSON lines file");
    if (j->corpus.questions && stat(j->corpus.questions, &st) != 0)
        return dm_err_errno(err, "%s: corpus.questions %s", j->path, j->corpus.questions);
    return 0;
}

int job_check_corpus(const Job *j, const Corpus *c, DmErr *err)
{
    if (strcmp(j->stage, "cache-logits") != 0 && strcmp(j->stage, "analyze") != 0)
        return 0;
    int missing = 0;
    const CorpusQuestion *first = NULL;
    const CorpusPage *first_page = NULL;
    for (int p = 0; p < c->npages; p++)
        for (int q = 0; q < c->pages[p].nq; q++)
            if (c->pages[p].q[q].nanswers == 0) {
                if (!missing++) {
                    first = &c->pages[p].q[q];
                    first_page = &c->pages[p];
                }
            }
    if (!missing)
        return 0;
    return dm_err(err, "%s: corpus %s: %d of %d questions have no gold answer (e.g. questionId "
                       "%lld on %s); stage %s reads the gold answers: use a corpus that has them "
                       "(a train or validation split)",
                  j->path, j->corpus.path, missing, c->nquestions, (long long)first->qid,
                  first_page->page_id, j->stage);
}

int job_move_aside(const Job *j, char *moved_to, size_t cap, DmErr *err)
{
    moved_to[0] = '\0';
    char out[PATH_MAX];
    snprintf(out, sizeof out, "%s", j->output);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = '\0';
    struct stat st;
    if (lstat(out, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return dm_err_errno(err, "output %s", out);
    }
    char stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    for (int k = 1; k < 1000; k++) {
        if (k == 1)
            snprintf(moved_to, cap, "%s.old-%s", out, stamp);
        else
            snprintf(moved_to, cap, "%s.old-%s-%d", out, stamp, k);
        if (lstat(moved_to, &st) == 0)
            continue;
        if (rename(out, moved_to) == 0)
            return 0;
        int e = errno;
        moved_to[0] = '\0';
        return dm_err(err, "--force-new: cannot move %s aside: %s", out, strerror(e));
    }
    moved_to[0] = '\0';
    return dm_err(err, "--force-new: cannot find a free name to move %s aside", out);
}
