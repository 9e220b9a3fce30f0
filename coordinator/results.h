/* results.h - the coordinator's side of the output store: what the store
 * already holds (so a rerun skips it), and the batched writer of answers
 * and error records.
 *
 * Records queue in memory and go to the store in one transaction when
 * commit_every of them are waiting or the oldest has waited a second
 * (results_due), and at the end.  Each transaction also rewrites the
 * run's counts in meta, so after a crash the meta matches the records.
 * Only the coordinator writes; keys are questionIds, so a record written
 * twice stays one record. */
#ifndef DM_RESULTS_H
#define DM_RESULTS_H

#include <stdint.h>

#include "common/dm_error.h"
#include "records.pb-c.h"
#include "common/store.h"

typedef struct Results Results;

/* Counts of the store and of this run. */
typedef struct ResultsCounts {
    uint64_t records0, errors0;   /* in the store when the run began */
    int64_t answers, errors;      /* committed this run */
    int64_t acc_answers, acc_errors; /* accepted this run (committed or queued) */
    int64_t features;             /* feature records committed this run */
} ResultsCounts;

/* Read the store's counts and the questionIds it holds (answers and
 * errors: a question with an error record is done). */
int results_open(Store *s, int commit_every, int retry_errors, Results **out, DmErr *err);
/* retry_errors (run --retry-errors): questions with an error record are
 * not held (planned again, even when some of their answers have logit
 * records), and results_start deletes every error record in its
 * transaction; results_retried tells how many. */
size_t results_retried(const Results *r);
/* Whether the store held qid as a record or an error (retry or not), and
 * how many distinct questions it held: a corpus must ask every one of
 * them for the store to be resumed with it. */
int results_stored(const Results *r, int64_t qid);
int64_t results_stored_count(const Results *r);
void results_free(Results **r);

/* What this run writes (default: kind "answers", stage "infer", no extra
 * meta).  extra: key, value, ..., NULL - meta written at the start of each
 * run, which a resumed store must already have with the same values
 * (except "corpus"); the strings must outlive r. */
void results_set_kind(Results *r, const char *kind, const char *stage, const char *const *extra);

/* Queue a teacher-logit record (key: questionId + answer index). */
int results_add_logit(Results *r, const Docmint__LogitRecord *l, double now, DmErr *err);

/* Queue a page's encoder output (features database, key: page id).  A
 * record that cannot be stored as it is becomes an error record with item
 * "features of page ID". */
/* Queue an AnalysisRecord (stage analyze) under its question and answer
 * index, as a logit record's key. */
int results_add_analysis(Results *r, const Docmint__AnalysisRecord *a, double now, DmErr *err);
int results_add_feature(Results *r, const Docmint__FeatureRecord *f, double now, DmErr *err);

/* Whether the store held qid when results_open ran. */
int results_held(const Results *r, int64_t qid);
/* Drop the held set once planning is over. */
void results_forget_held(Results *r);

/* The store's existing meta must fit this job: the same "kind", the same
 * model fingerprint when both are known, and the same extra meta. */
int results_check_meta(Results *r, const char *output, const char *model, const char *fingerprint,
                       DmErr *err);

/* Write the start-of-run meta (schema_version, kind, job, fingerprints,
 * started_at kept from the first run, run_started_at, finished_at "",
 * held_at_start, runs) in one transaction. */
int results_start(Results *r, const char *job_json, const char *fingerprint,
                  const char *tok_fingerprint, int64_t held, DmErr *err);

/* Queue an answer.  One that cannot be stored as it is (a string that is
 * not UTF-8) becomes an error record with the reason. */
int results_add_answer(Results *r, const Docmint__AnswerRecord *a, double now, DmErr *err);
/* Queue an error record for question qid: er (its item becomes the
 * questionId), or a new one with stage "infer" and reason. */
int results_add_error(Results *r, int64_t qid, const Docmint__ErrorRecord *er,
                      const char *reason, double now, DmErr *err);

/* Queue an error record under its own item (cache-logits: "QID" or
 * "QID/INDEX"); an empty item becomes the questionId. */
int results_add_error_item(Results *r, const Docmint__ErrorRecord *er, double now, DmErr *err);

/* Whether a flush is due (commit_every records, 64 MiB, or a second). */
int results_due(const Results *r, double now);

/* Commit what is queued with the counts in meta (computed_this_run,
 * count_records, count_errors, dispatched_this_run, dropped_this_run,
 * features_this_run, and finished_at when given).  Works with nothing queued (meta only). */
int results_flush(Results *r, int64_t dispatched, int64_t dropped, const char *finished_at,
                  DmErr *err);

const ResultsCounts *results_counts(const Results *r);

/* "2024-05-01T12:00:00Z" (UTC, now). */
void results_iso_now(char *out, size_t n);

#endif
