/* compare.c - the spec, the split, the steps and the rows of
 * `docmint compare` (compare.h); compare_report.c writes the results. */
#include "coordinator/compare.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/dm_fs.h"
#include "common/jsonschema.h"
#include "coordinator/compare_int.h"

/* ------------------------------------------------------------------ spec */

static char *s_resolve(const char *dir, const char *p)
{
    if (p[0] == '/')
        return dm_xstrdup(p);
    size_t n = strlen(dir) + strlen(p) + 2;
    char *s = dm_xmalloc(n);
    snprintf(s, n, "%s/%s", dir, p);
    return s;
}

static void s_resolve_key(json_t *o, const char *key, const char *dir)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return;
    char *r = s_resolve(dir, json_string_value(v));
    json_object_set_new(o, key, json_string(r));
    free(r);
}

/* A job document as compare writes them, for the spec check: the job
 * schema refuses what a block holds that no job takes. */
static int s_check_block(const char *path, const char *key, const char *stage, json_t *extra,
                         DmErr *err)
{
    const json_t *schema = jsonschema_get("job.schema.json", err);
    if (!schema)
        return -1;
    json_t *job = json_pack("{s:s, s:s, s:s, s:{s:s}}", "stage", stage, "model", "m", "output",
                            "o", "corpus", "path", "c");
    if (!strcmp(stage, "distill")) {
        json_t *d = json_deep_copy(extra);
        json_object_set_new(d, "logits", json_string("l"));
        json_object_set_new(job, "distill", d);
    } else {
        json_object_update(job, extra);
    }
    int rc = 0;
    const char *k;
    json_t *v;
    json_object_foreach(extra, k, v)
    {
        if (!strcmp(stage, "distill") && !strcmp(k, "logits"))
            rc = dm_err(err, "%s: distill.logits: compare fills it in (the teacher's cached logits)",
                        path);
        else if (strcmp(stage, "distill") &&
                 (!strcmp(k, "stage") || !strcmp(k, "model") || !strcmp(k, "output") ||
                  !strcmp(k, "corpus")))
            rc = dm_err(err, "%s: %s.%s: compare sets it", path, key, k);
        if (rc)
            break;
    }
    if (!rc && jsonschema_validate(schema, job, 0, err))
        rc = dm_err_prefix(err, "%s: %s (as the %s job takes it)", path, key, stage);
    json_decref(job);
    return rc;
}

int compare_spec_load(const char *path, json_t **out, DmErr *err)
{
    *out = NULL;
    json_error_t je;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!doc)
        return dm_err(err, "%s: line %d: %s", path, je.line, je.text);
    const json_t *schema = jsonschema_get("compare.schema.json", err);
    /* twice: the first pass adds the default {} of an absent object, the
     * second fills that object's own defaults */
    if (!schema || jsonschema_validate(schema, doc, 1, err) ||
        jsonschema_validate(schema, doc, 1, err)) {
        json_decref(doc);
        return schema ? dm_err_prefix(err, "%s", path) : -1;
    }
    json_t *sp = json_object_get(doc, "split");
    double sum = json_number_value(json_object_get(sp, "analysis")) +
                 json_number_value(json_object_get(sp, "selection")) +
                 json_number_value(json_object_get(sp, "evaluation"));
    int rc = 0;
    if (fabs(sum - 1.0) > 1e-6)
        rc = dm_err(err, "%s: split: analysis + selection + evaluation must be 1, got %g", path,
                    sum);
    if (!rc && s_check_block(path, "distill", "distill", json_object_get(doc, "distill"), err))
        rc = -1;
    if (!rc && s_check_block(path, "analysis", "analyze", json_object_get(doc, "analysis"), err))
        rc = -1;
    /* methods named twice would share a folder */
    json_t *m = json_object_get(doc, "methods");
    for (size_t i = 0; !rc && i < json_array_size(m); i++)
        for (size_t j = 0; !rc && j < i; j++)
            if (!strcmp(json_string_value(json_array_get(m, i)),
                        json_string_value(json_array_get(m, j))))
                rc = dm_err(err, "%s: methods[%zu]: \"%s\" is listed twice", path, i,
                            json_string_value(json_array_get(m, i)));
    json_t *b = json_object_get(doc, "budgets");
    for (size_t i = 0; !rc && i < json_array_size(b); i++)
        for (size_t j = 0; !rc && j < i; j++)
            if (json_number_value(json_array_get(b, i)) == json_number_value(json_array_get(b, j)))
                rc = dm_err(err, "%s: budgets[%zu]: %g is listed twice", path, i,
                            json_number_value(json_array_get(b, i)));
    for (size_t i = 0; !rc && i < json_array_size(m); i++) {
        const char *s = json_string_value(json_array_get(m, i));
        for (const char *c = s; !rc && *c; c++)
            if (!(*c == '-' || *c == '_' || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9')))
                rc = dm_err(err, "%s: methods[%zu]: \"%s\": a method name is lowercase letters, "
                                 "digits, - and _", path, i, s);
    }
    if (rc) {
        json_decref(doc);
        return -1;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    char real[PATH_MAX];
    if (realpath(dir, real))
        snprintf(dir, sizeof dir, "%s", real);
    s_resolve_key(doc, "teacher", dir);
    s_resolve_key(doc, "corpus", dir);
    s_resolve_key(doc, "image_root", dir);
    if (json_is_null(json_object_get(doc, "image_root"))) {
        const char *c = json_string_value(json_object_get(doc, "corpus"));
        char root[PATH_MAX];
        snprintf(root, sizeof root, "%s", c);
        char *s = strrchr(root, '/');
        *s = '\0';
        json_object_set_new(doc, "image_root", json_string(root));
    }
    *out = doc;
    return 0;
}

/* ----------------------------------------------------------------- split */

/* splitmix64: the page shuffle's generator. */
static uint64_t s_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Write text to path unless it holds exactly that already; a file that
 * holds something else is refused (the folder was made by another spec). */
static int s_write_same(const char *path, const char *text, int refuse_other, DmErr *err)
{
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t n = strlen(text);
        char *old = malloc(n + 2);
        size_t got = old ? fread(old, 1, n + 1, f) : 0;
        fclose(f);
        int same = old && got == n && !memcmp(old, text, n);
        free(old);
        if (same)
            return 0;
        if (refuse_other)
            return dm_err(err, "%s: made by another spec (another corpus or split): use a new "
                               "output folder", path);
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f)
        return dm_err_errno(err, "%s: cannot create", tmp);
    int bad = fputs(text, f) < 0;
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return dm_err_errno(err, "%s: cannot write", path);
    }
    return 0;
}

static int s_write_json(const char *path, json_t *doc, int refuse_other, DmErr *err)
{
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text)
        return dm_err(err, "%s: out of memory", path);
    size_t n = strlen(text);
    text = dm_xrealloc(text, n + 2);
    text[n] = '\n';
    text[n + 1] = '\0';
    int rc = s_write_same(path, text, refuse_other, err);
    free(text);
    return rc;
}

int compare_split(Compare *c, DmErr *err)
{
    const char *path = json_string_value(json_object_get(c->spec, "corpus"));
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc)
        return dm_err(err, "%s: line %d: %s", path, je.line, je.text);
    json_t *data = json_object_get(doc, "data");
    int rc = 0;
    size_t nq = json_array_size(data);
    if (!json_is_array(data) || nq == 0)
        rc = dm_err(err, "%s: no \"data\" array of questions (a DocVQA annotation file)", path);
    /* pages in the order the corpus first names them */
    const char **pages = dm_xcalloc(nq ? nq : 1, sizeof *pages);
    int *page_of = dm_xcalloc(nq ? nq : 1, sizeof *page_of);
    size_t np = 0;
    for (size_t i = 0; !rc && i < nq; i++) {
        json_t *q = json_array_get(data, i);
        const char *img = json_string_value(json_object_get(q, "image"));
        json_t *ans = json_object_get(q, "answers");
        if (!img || !json_is_integer(json_object_get(q, "questionId")))
            rc = dm_err(err, "%s: data[%zu]: needs a questionId and an image", path, i);
        else if (!json_is_array(ans) || json_array_size(ans) == 0)
            rc = dm_err(err, "%s: data[%zu]: no answers (compare scores every question: a test "
                             "split cannot be used)", path, i);
        if (rc)
            break;
        size_t p;
        for (p = 0; p < np && strcmp(pages[p], img); p++)
            ;
        if (p == np)
            pages[np++] = img;
        page_of[i] = (int)p;
    }
    json_t *sp = json_object_get(c->spec, "split");
    double fa = json_number_value(json_object_get(sp, "analysis"));
    double fs = json_number_value(json_object_get(sp, "selection"));
    long na = lround(fa * (double)np), ns = lround(fs * (double)np);
    na = na < 1 ? 1 : na;
    ns = ns < 1 ? 1 : ns;
    if (!rc && (long)np - na - ns < 1)
        rc = dm_err(err, "%s: %zu pages cannot be split into three non-empty parts", path, np);
    int *part = NULL;
    if (!rc) {
        /* Fisher-Yates over the page order, then the first na pages of the
         * shuffle are analysed, the next ns select, the rest evaluate */
        size_t *perm = dm_xmalloc(np * sizeof *perm);
        for (size_t i = 0; i < np; i++)
            perm[i] = i;
        uint64_t s = (uint64_t)json_integer_value(json_object_get(sp, "seed"));
        for (size_t i = np - 1; i > 0; i--) {
            size_t j = (size_t)(s_next(&s) % (i + 1));
            size_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        part = dm_xmalloc(np * sizeof *part);
        for (size_t i = 0; i < np; i++)
            part[perm[i]] = (long)i < na ? 0 : (long)i < na + ns ? 1 : 2;
        free(perm);
    }
    c->eval_image[0] = c->eval_question[0] = '\0';
    for (int k = 0; !rc && k < 3; k++) {
        json_t *sub = json_deep_copy(doc), *d = json_array();
        int pg = 0, qs = 0;
        for (size_t i = 0; i < nq; i++)
            if (part[page_of[i]] == k) {
                json_t *q = json_array_get(data, i);
                json_array_append(d, q);
                qs++;
                if (k == 2 && !c->eval_image[0]) {
                    snprintf(c->eval_image, sizeof c->eval_image, "%s/%s", c->image_root,
                             json_string_value(json_object_get(q, "image")));
                    snprintf(c->eval_question, sizeof c->eval_question, "%s",
                             json_string_value(json_object_get(q, "question")));
                }
            }
        for (size_t p = 0; p < np; p++)
            pg += part[p] == k;
        json_object_set_new(sub, "data", d);
        if (k == 1) /* the distill items: one per non-empty gold answer */
            for (size_t i = 0; i < json_array_size(d); i++) {
                json_t *ans = json_object_get(json_array_get(d, i), "answers");
                for (size_t a = 0; a < json_array_size(ans); a++) {
                    const char *t = json_string_value(json_array_get(ans, a));
                    c->selection_items += t && t[0];
                }
            }
        c->part_pages[k] = pg;
        c->part_questions[k] = qs;
        rc = s_write_json(c->part_path[k], sub, 1, err);
        json_decref(sub);
    }
    free(part);
    free(pages);
    free(page_of);
    json_decref(doc);
    return rc;
}

/* ----------------------------------------------------------------- steps */

static char *s_read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *s = dm_xmalloc(cap);
    size_t got;
    while ((got = fread(s + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap)
            s = dm_xrealloc(s, cap *= 2);
    }
    fclose(f);
    s[n] = '\0';
    return s;
}

/* The last non-empty line of a log, for the one-line error of a step. */
static void s_last_line(const char *path, char *out, size_t cap)
{
    char *s = s_read_text(path);
    out[0] = '\0';
    if (!s)
        return;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    char *l = strrchr(s, '\n');
    snprintf(out, cap, "%s", l ? l + 1 : s);
    free(s);
}

int compare_step(Compare *c, const char *dir, const char *name, char *const *argv,
                 const char *job_path, const char *stdout_path, int also_ok, DmErr *err)
{
    char marker[PATH_MAX], logp[PATH_MAX];
    snprintf(marker, sizeof marker, "%s/steps/%s.done", dir, name);
    snprintf(logp, sizeof logp, "%s/steps/%s.log", dir, name);
    {
        char sdir[PATH_MAX];
        snprintf(sdir, sizeof sdir, "%s/steps", dir);
        if (dm_mkdirs(sdir, err))
            return -1;
    }
    /* what the step is: its command line from the docmint binary on, and
     * its job file (not the launcher, nor where the binary lives: a rebuilt
     * or installed docmint, or more ranks, resume the same steps) */
    int from = 0;
    for (int i = 0; argv[i]; i++)
        if (argv[i] == c->exe)
            from = i;
    size_t cap = 256;
    for (int i = from; argv[i]; i++)
        cap += strlen(argv[i]) + 3;
    char *job = job_path ? s_read_text(job_path) : NULL;
    cap += job ? strlen(job) : 0;
    char *sig = dm_xmalloc(cap);
    size_t k = 0;
    for (int i = from; argv[i]; i++)
        k += (size_t)snprintf(sig + k, cap - k, "%s%s", i > from ? " " : "",
                              i == from ? "docmint" : argv[i]);
    k += (size_t)snprintf(sig + k, cap - k, "\n%s", job ? job : "");
    free(job);
    char *done = s_read_text(marker);
    if (done) {
        int same = !strcmp(done, sig);
        free(done);
        free(sig);
        if (same) {
            if (!c->quiet)
                fprintf(stderr, "docmint compare: %s: %s: done before\n", dir, name);
            return 0;
        }
        return dm_err(err, "step %s was done with other settings (%s): use a new output folder",
                      name, marker);
    }
    if (!c->quiet)
        fprintf(stderr, "docmint compare: %s: %s\n", dir, name);
    pid_t pid = fork();
    if (pid < 0) {
        free(sig);
        return dm_err_errno(err, "step %s: cannot fork", name);
    }
    if (pid == 0) {
        int lf = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int of = stdout_path ? open(stdout_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : lf;
        int nul = open("/dev/null", O_RDONLY);
        if (lf < 0 || of < 0 || nul < 0)
            _exit(126);
        dup2(nul, STDIN_FILENO);
        dup2(of, STDOUT_FILENO);
        dup2(lf, STDERR_FILENO);
        execvp(argv[0], argv);
        dprintf(STDERR_FILENO, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int ok = WIFEXITED(status) &&
             (WEXITSTATUS(status) == 0 || (also_ok && WEXITSTATUS(status) == also_ok));
    if (!ok) {
        free(sig);
        char last[600];
        s_last_line(logp, last, sizeof last);
        if (WIFSIGNALED(status))
            return dm_err(err, "step %s: killed by signal %d (log %s)", name, WTERMSIG(status),
                          logp);
        return dm_err(err, "step %s failed (exit %d): %s (log %s)", name, WEXITSTATUS(status),
                      last[0] ? last : "no message", logp);
    }
    int rc = s_write_same(marker, sig, 0, err);
    free(sig);
    return rc;
}

/* A `docmint run` step: the job written to DIR/jobs/NAME.json, run
 * in-process or under the spec's launcher. */
static int s_run_job(Compare *c, const char *dir, const char *name, json_t *job, int also_ok,
                     DmErr *err)
{
    char jp[PATH_MAX];
    snprintf(jp, sizeof jp, "%s/jobs", dir);
    if (dm_mkdirs(jp, err))
        return -1;
    snprintf(jp, sizeof jp, "%s/jobs/%s.json", dir, name);
    if (c->threads > 0)
        json_object_set_new(job, "threads", json_integer(c->threads));
    if (s_write_json(jp, job, 0, err))
        return -1;
    json_t *mp = json_object_get(c->spec, "mpirun");
    size_t nm = json_array_size(mp);
    char **argv = dm_xcalloc(nm + 5, sizeof *argv);
    size_t a = 0;
    for (size_t i = 0; i < nm; i++)
        argv[a++] = (char *)json_string_value(json_array_get(mp, i));
    argv[a++] = (char *)c->exe;
    argv[a++] = "run";
    argv[a++] = jp;
    argv[a] = NULL;
    int rc = compare_step(c, dir, name, argv, jp, NULL, also_ok, err);
    free(argv);
    return rc;
}

static json_t *s_corpus(const Compare *c, int part)
{
    return json_pack("{s:s, s:s, s:s}", "format", "docvqa", "path", c->part_path[part],
                     "image_root", c->image_root);
}

/* --------------------------------------------------------------- the rows */

static void s_fail(CompareRow *r, const DmErr *err)
{
    if (!r->error[0])
        snprintf(r->error, sizeof r->error, "%s", err->msg);
}

/* Answers of the evaluation part, their ANLS, the counts and the timing
 * of the row's final model. */
static int s_measure(Compare *c, CompareRow *r, DmErr *err)
{
    char p[3][PATH_MAX];
    snprintf(p[0], sizeof p[0], "%s/answers", r->dir);
    json_t *job = json_pack("{s:s, s:s, s:s, s:o, s:s}", "stage", "infer", "model", r->model,
                            "output", p[0], "corpus", s_corpus(c, 2), "endpoint",
                            "tcp://127.0.0.1:0");
    if (c->max_length > 0)
        json_object_set_new(job, "max_length", json_integer(c->max_length));
    /* exit 3: done, but some questions hold error records (a prompt too
     * long, an unreadable page): they score 0, as a missing answer does */
    int rc = s_run_job(c, r->dir, "infer", job, 3, err);
    json_decref(job);
    if (rc)
        return -1;
    snprintf(p[1], sizeof p[1], "%s/predictions.json", r->dir);
    char *ex[] = {(char *)c->exe, "export", p[0], "--annotations", c->part_path[2], "-o", p[1],
                  "--partial", NULL};
    if (compare_step(c, r->dir, "export", ex, NULL, NULL, 0, err))
        return -1;
    snprintf(p[2], sizeof p[2], "%s/eval.json", r->dir);
    char *ev[] = {(char *)c->exe, "eval", "--predictions", p[1], "--annotations", c->part_path[2],
                  "--report", p[2], NULL};
    if (compare_step(c, r->dir, "eval", ev, NULL, NULL, 0, err))
        return -1;
    char out[PATH_MAX];
    snprintf(out, sizeof out, "%s/params.json", r->dir);
    char *pa[] = {(char *)c->exe, "params", r->model, "--flops", "--json", NULL};
    if (compare_step(c, r->dir, "params", pa, NULL, out, 0, err))
        return -1;
    /* the timed decodes: one page given `repeat` times, its first question */
    snprintf(out, sizeof out, "%s/timing.jsonl", r->dir);
    char th[32];
    snprintf(th, sizeof th, "%d", c->timing_threads);
    char **tv = dm_xcalloc((size_t)c->timing_repeat + 12, sizeof *tv);
    int a = 0;
    tv[a++] = (char *)c->exe;
    tv[a++] = "ask";
    tv[a++] = "--json";
    tv[a++] = "--threads";
    tv[a++] = th;
    char ml[32];
    if (c->max_length > 0) {
        snprintf(ml, sizeof ml, "%d", c->max_length);
        tv[a++] = "--max-length";
        tv[a++] = ml;
    }
    tv[a++] = r->model;
    for (int i = 0; i < c->timing_repeat; i++)
        tv[a++] = c->eval_image;
    tv[a++] = "--";
    tv[a++] = c->eval_question;
    tv[a] = NULL;
    rc = compare_step(c, r->dir, "timing", tv, NULL, out, 0, err);
    free(tv);
    return rc;
}

static int s_student(Compare *c, CompareRow *r, DmErr *err)
{
    char pruned[PATH_MAX], budget[32];
    snprintf(pruned, sizeof pruned, "%s/pruned", r->dir);
    snprintf(budget, sizeof budget, "%.17g", r->budget);
    int done_marker = 0;
    {
        char m[PATH_MAX];
        snprintf(m, sizeof m, "%s/steps/prune.done", r->dir);
        done_marker = access(m, F_OK) == 0;
    }
    if (!done_marker)
        dm_rm_tree(pruned); /* what a failed prune left */
    if (r->kind == ROW_STRUCTURED) {
        if (c->analysis_error[0])
            return dm_err(err, "needs the analysis store: %s", c->analysis_error);
        char plan_dir[PATH_MAX], plan[PATH_MAX];
        snprintf(plan_dir, sizeof plan_dir, "%s/plan", r->plan_owner);
        snprintf(plan, sizeof plan, "%s/plan.json", plan_dir);
        if (!strcmp(r->plan_owner, r->dir)) {
            /* finercut and michel measure on the selection part, and
             * mint checks its plan there; enumerate reads the store alone */
            int measured = strcmp(r->method, "enumerate") != 0;
            char *pv[] = {(char *)c->exe, "plan", c->analysis_store, "--budget", budget,
                          "--method", r->method, "--model", (char *)c->teacher, "-o", plan_dir,
                          measured ? "--corpus" : NULL, c->part_path[1], "--image-root",
                          (char *)c->image_root, NULL};
            if (compare_step(c, r->dir, "plan", pv, NULL, NULL, 0, err))
                return -1;
        } else if (access(plan, F_OK) != 0) {
            return dm_err(err, "the plan of %s is missing", r->plan_owner);
        }
        char *pv[] = {(char *)c->exe, "prune", (char *)c->teacher, "--plan", plan, "-o", pruned,
                      r->lowercase ? "--lowercase-questions" : NULL, NULL};
        if (compare_step(c, r->dir, "prune", pv, NULL, NULL, 0, err))
            return -1;
    } else {
        if (r->kind == ROW_WANDA && c->cache_error[0])
            return dm_err(err, "needs the teacher's logits: %s", c->cache_error);
        char *pv[] = {(char *)c->exe, "prune", (char *)c->teacher, "--unstructured", r->method,
                      "--budget", budget, "-o", pruned,
                      r->kind == ROW_WANDA ? "--calibration" : NULL, c->logits,
                      "--corpus", c->part_path[1], NULL};
        if (compare_step(c, r->dir, "prune", pv, NULL, NULL, 0, err))
            return -1;
    }
    if (c->cache_error[0])
        return dm_err(err, "needs the teacher's logits: %s", c->cache_error);
    char out[PATH_MAX];
    snprintf(out, sizeof out, "%s/distill", r->dir);
    json_t *d = json_deep_copy(json_object_get(c->spec, "distill"));
    json_object_set_new(d, "logits", json_string(c->logits));
    json_t *job = json_pack("{s:s, s:s, s:s, s:o, s:o}", "stage", "distill", "model", pruned,
                            "output", out, "corpus", s_corpus(c, 1), "distill", d);
    int rc = s_run_job(c, r->dir, "distill", job, 0, err);
    json_decref(job);
    if (rc)
        return -1;
    snprintf(r->model, sizeof r->model, "%s/distill/student", r->dir);
    return s_measure(c, r, err);
}

static void s_add_row(Compare *c, RowKind kind, const char *method, double budget, int lc)
{
    c->rows = dm_xrealloc(c->rows, (size_t)(c->nrows + 1) * sizeof *c->rows);
    CompareRow *r = &c->rows[c->nrows++];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    snprintf(r->method, sizeof r->method, "%s", method);
    r->budget = budget;
    r->lowercase = lc;
    if (kind == ROW_TEACHER) {
        snprintf(r->id, sizeof r->id, "teacher");
        snprintf(r->dir, sizeof r->dir, "%s/teacher", c->out);
        snprintf(r->model, sizeof r->model, "%s", c->teacher);
    } else {
        snprintf(r->id, sizeof r->id, "%s-%g%s", method, budget, lc ? "-lc" : "");
        snprintf(r->dir, sizeof r->dir, "%s/students/%s", c->out, r->id);
    }
    /* the row without lowercasing plans; the one with it reuses the plan */
    snprintf(r->plan_owner, sizeof r->plan_owner, "%s/students/%s-%g", c->out, method, budget);
    if (lc && strcmp(json_string_value(json_object_get(c->spec, "lowercase_questions")), "both"))
        snprintf(r->plan_owner, sizeof r->plan_owner, "%s", r->dir);
}

int compare_run(const CompareOpts *o, DmErr *err)
{
    Compare c;
    memset(&c, 0, sizeof c);
    c.quiet = o->quiet;
    c.exe = o->exe;
    if (compare_spec_load(o->spec_path, &c.spec, err))
        return -1;
    int rc = -1;
    if (dm_mkdirs(o->out_dir, err) || !realpath(o->out_dir, c.out)) {
        if (!err->msg[0])
            dm_err_errno(err, "%s: cannot resolve", o->out_dir);
        goto done;
    }
    c.teacher = json_string_value(json_object_get(c.spec, "teacher"));
    c.image_root = json_string_value(json_object_get(c.spec, "image_root"));
    c.threads = (int)json_integer_value(json_object_get(c.spec, "threads"));
    c.max_length = (int)json_integer_value(json_object_get(c.spec, "max_length"));
    json_t *tm = json_object_get(c.spec, "timing");
    c.timing_repeat = (int)json_integer_value(json_object_get(tm, "repeat"));
    c.timing_threads = (int)json_integer_value(json_object_get(tm, "threads"));
    struct stat st;
    if (stat(c.teacher, &st) != 0 || !S_ISDIR(st.st_mode)) {
        dm_err(err, "%s: teacher: %s is not a model folder", o->spec_path, c.teacher);
        goto done;
    }
    char splitdir[PATH_MAX];
    snprintf(splitdir, sizeof splitdir, "%s/split", c.out);
    if (dm_mkdirs(splitdir, err))
        goto done;
    static const char *parts[3] = {"analysis", "selection", "evaluation"};
    for (int k = 0; k < 3; k++)
        snprintf(c.part_path[k], sizeof c.part_path[k], "%s/%s.json", splitdir, parts[k]);
    if (compare_split(&c, err))
        goto done;
    /* a batch larger than the selection part would fail every distill */
    {
        json_t *job = json_pack("{s:s, s:s, s:s, s:{s:s}, s:O}", "stage", "distill", "model", "m",
                                "output", "o", "corpus", "path", "c", "distill",
                                json_object_get(c.spec, "distill"));
        json_t *copy = json_deep_copy(job);
        const json_t *schema = jsonschema_get("job.schema.json", err);
        int bad = !schema || jsonschema_validate(schema, copy, 1, err);
        long batch = bad ? 0 : (long)json_integer_value(
                                  json_object_get(json_object_get(copy, "distill"), "batch_size"));
        json_decref(copy);
        json_decref(job);
        if (bad)
            goto done;
        if (batch > c.selection_items) {
            dm_err(err, "%s: distill.batch_size: %ld is more than the %d (question, answer) items "
                        "of the selection part (%d page%s): lower it or raise split.selection",
                   o->spec_path, batch, c.selection_items, c.part_pages[1],
                   c.part_pages[1] == 1 ? "" : "s");
            goto done;
        }
    }
    /* the copy of the spec as it was run, defaults filled and paths resolved */
    char sp[PATH_MAX];
    snprintf(sp, sizeof sp, "%s/spec.json", c.out);
    if (s_write_json(sp, c.spec, 0, err))
        goto done;
    snprintf(c.analysis_store, sizeof c.analysis_store, "%s/shared/analysis", c.out);
    snprintf(c.logits, sizeof c.logits, "%s/shared/logits", c.out);
    char shared[PATH_MAX];
    snprintf(shared, sizeof shared, "%s/shared", c.out);

    /* the rows: the teacher, then every budget x method */
    const char *lcmode = json_string_value(json_object_get(c.spec, "lowercase_questions"));
    s_add_row(&c, ROW_TEACHER, "teacher", 1.0, 0);
    json_t *budgets = json_object_get(c.spec, "budgets"), *methods = json_object_get(c.spec, "methods");
    int any_structured = 0, any_student = 0;
    for (size_t b = 0; b < json_array_size(budgets); b++)
        for (size_t m = 0; m < json_array_size(methods); m++) {
            const char *name = json_string_value(json_array_get(methods, m));
            double bv = json_number_value(json_array_get(budgets, b));
            RowKind k = !strcmp(name, "wanda")       ? ROW_WANDA
                        : !strcmp(name, "magnitude") ? ROW_MAGNITUDE
                                                     : ROW_STRUCTURED;
            any_student = 1;
            if (k != ROW_STRUCTURED) {
                s_add_row(&c, k, name, bv, 0);
                continue;
            }
            any_structured = 1;
            if (strcmp(lcmode, "on"))
                s_add_row(&c, k, name, bv, 0);
            if (strcmp(lcmode, "off"))
                s_add_row(&c, k, name, bv, 1);
        }

    /* the shared steps: one analysis, one logit cache */
    DmErr e2 = {{0}};
    if (any_structured) {
        json_t *job = json_pack("{s:s, s:s, s:s, s:o, s:s}", "stage", "analyze", "model",
                                c.teacher, "output", c.analysis_store, "corpus", s_corpus(&c, 0),
                                "endpoint", "tcp://127.0.0.1:0");
        json_object_update(job, json_object_get(c.spec, "analysis"));
        if (s_run_job(&c, shared, "analyze", job, 0, &e2))
            snprintf(c.analysis_error, sizeof c.analysis_error, "%s", e2.msg);
        json_decref(job);
    }
    if (any_student) {
        json_t *d = json_object_get(c.spec, "distill"), *t = json_object_get(d, "temperature");
        json_t *job = json_pack("{s:s, s:s, s:s, s:o, s:I, s:[f], s:b, s:s}", "stage",
                                "cache-logits", "model", c.teacher, "output", c.logits, "corpus",
                                s_corpus(&c, 1), "top_k",
                                (json_int_t)json_integer_value(json_object_get(c.spec, "top_k")),
                                "temperatures", json_is_number(t) ? json_number_value(t) : 1.0,
                                "keep_features", 1, "endpoint", "tcp://127.0.0.1:0");
        memset(&e2, 0, sizeof e2);
        if (s_run_job(&c, shared, "cache-logits", job, 0, &e2))
            snprintf(c.cache_error, sizeof c.cache_error, "%s", e2.msg);
        json_decref(job);
    }
    for (int i = 0; i < c.nrows; i++) {
        CompareRow *r = &c.rows[i];
        memset(&e2, 0, sizeof e2);
        if (dm_mkdirs(r->dir, &e2) ||
            (r->kind == ROW_TEACHER ? s_measure(&c, r, &e2) : s_student(&c, r, &e2)))
            s_fail(r, &e2);
        if (r->error[0])
            fprintf(stderr, "docmint compare: %s: %s\n", r->id, r->error);
    }
    if (compare_report(&c, err))
        goto done;
    int failed = 0;
    for (int i = 0; i < c.nrows; i++)
        failed += c.rows[i].error[0] != 0;
    if (!c.quiet)
        fprintf(stderr, "docmint compare: %d of %d rows complete; %s/compare.md\n",
                c.nrows - failed, c.nrows, c.out);
    rc = failed ? 3 : 0;
done:
    free(c.rows);
    json_decref(c.spec);
    return rc;
}
