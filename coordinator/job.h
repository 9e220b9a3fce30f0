/* job.h - job files: one JSON format for every stage, validated against
 * schemas/job.schema.json (embedded in the binary).  Unknown keys, missing
 * keys and wrong types are rejected with the key's path and the expected
 * type; absent optional keys take the schema's defaults. */
#ifndef DM_JOB_H
#define DM_JOB_H

#include <jansson.h>
#include <stdint.h>

#include "worker/data/corpus.h"
#include "common/dm_error.h"

/* The "distill" block (stage distill only; schema descriptions say more). */
typedef enum { DISTILL_DECAY_LINEAR, DISTILL_DECAY_COSINE, DISTILL_DECAY_CONSTANT } DistillDecay;

typedef struct DistillSpec {
    char *logits;          /* teacher-logit store (path resolved like model); NULL: no
                            * teacher, cross-entropy on the corpus's gold answers */
    int train_all;         /* "train": "all" (1) or "decoder" (0) */
    int order_pages;       /* "order": "pages" (1) or "items" (0) */
    long steps;            /* 0: epochs * floor(items / batch_size) */
    int epochs;
    int batch_size;        /* items per optimizer step, all ranks together */
    int micro_batch;       /* items per pass on a rank; 0 = its whole share */
    double lr;
    long warmup_steps;
    DistillDecay decay;
    double weight_decay;
    double beta1, beta2, eps;
    double clip_norm;      /* 0: no clipping */
    int alpha_auto;        /* alpha "auto" */
    double alpha;          /* when not auto */
    int alpha_batches;
    double temperature;
    uint64_t seed;
    long checkpoint_every; /* 0: only at the end */
    int keep_checkpoints;  /* 0: all */
    long hash_check_every; /* 0: only at the end */
    long feature_cache_mb;
    int plot;
    int skip_damaged;      /* leave out (and count) logit records that fail verification */
    char *eval_corpus;     /* "eval": {"corpus"}: answers scored during training (NULL: none) */
    int eval_questions;    /* its first N questions (0: all) */
    long eval_every;       /* steps between scorings (0: at each checkpoint) */
} DistillSpec;

typedef struct Job {
    char *path;            /* the job file */
    char *stage;           /* "infer", "cache-logits" or "distill" ("analyze" later) */
    char *model;           /* checkpoint folder (relative paths resolve against the job file's folder) */
    char *output;          /* output store folder */
    char *worker_keys;     /* allow-list of outside workers' keys, or NULL (shared job key) */
    CorpusSpec corpus;     /* strings owned by the job */
    int pages_per_shard;   /* default 1: a shard is one page with all its questions */
    int max_lease_expiries; /* a shard whose lease expired this often is given up (default 3) */
    double lease_seconds;  /* a shard not returned in time is handed out again (default 600) */
    double page_timeout_seconds; /* the workers' watchdog per page; 0: none (0 in the file:
                                    lease_seconds / (2 * pages_per_shard) when >= 30 s) */
    double heartbeat_seconds; /* default 1 */
    int heartbeat_liveness;   /* missed heartbeats before a peer counts as dead (default 5) */
    int credit;            /* shards a worker may hold at once (default 2) */
    int commit_every;      /* records per store transaction (default 256) */
    int max_length;        /* generation max_length; 0 = the model's max_position_embeddings */
    int threads;           /* compute threads per worker; 0 = cores / workers on the node */
    int precision;         /* DmPrecision of the workers' model: 0 "fp32" (default), 1 "bf16" */
    int quiet;             /* no progress lines */
    /* cache-logits */
    int top_k;             /* kept logits per position; 0 = "full" (default 64) */
    int n_temps;           /* temps[0] is 1 (added when the job omits it) */
    double temps[16];
    int first_answer_only;
    int keep_features;     /* also store each page's encoder output (features database) */
    /* analyze */
    char *corrupt_corpus;  /* kv_retrieval's twins (corrupt_v1.0_withQT.json), resolved; or NULL */
    int kv_retrieval;      /* "kv_retrieval" is among "analyses" */
    DistillSpec distill;   /* stage "distill" */
    char *endpoint;        /* coordinator bind address (default: every interface, port 0 = any free port) */
    json_t *doc;           /* the validated document with defaults filled in and paths resolved
                              (absolute), so job_parse reads it back anywhere */
} Job;

/* Read, validate and fill defaults. */
int job_load(const char *path, Job **out, DmErr *err);
/* Validate text (for tests and for jobs received over the wire); `what`
 * names it in messages.  Relative paths are left as written. */
int job_parse(const char *text, const char *what, Job **out, DmErr *err);
void job_free(Job **job);

/* What `docmint validate` and `docmint run` both refuse before any work,
 * from the file system (job_load checks the document only): a stage this
 * build cannot run, a model folder that is missing or holds no
 * config.json, an output that is not a folder or whose nearest existing
 * parent is not a writable folder (missing parents are created by run),
 * a corpus path that is missing or is an image or PDF rather than an
 * annotation or list file, an archive questions file that is missing. */
int job_check(const Job *job, DmErr *err);

/* Rules between the stage and the loaded corpus: cache-logits and
 * analyze read the gold answers, so every question must have one. */
int job_check_corpus(const Job *job, const Corpus *c, DmErr *err);

/* --force-new: rename an existing output folder to OUTPUT.old-<UTC time>
 * (moved_to receives that name, "" when there was nothing to move). */
int job_move_aside(const Job *job, char *moved_to, size_t cap, DmErr *err);

/* Whether this build runs the stage ("infer", "cache-logits", "distill"). */
int job_stage_runnable(const char *stage);

#endif
