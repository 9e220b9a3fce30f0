/* stage_analyze.h - the `analyze` stage on one shard: for each page, one
 * encoder pass for the page and one for its corrupted twin (the same
 * pixels with Gaussian noise, or another page the coordinator chose), then for each question and gold answer the
 * Donut training sequence (built as the cache-logits stage builds it,
 * cache_sequence) analysed by an_item (analyze.h) into an AnalysisRecord
 * (schemas/records.proto).
 *
 * A page that cannot be loaded gives one ErrorRecord per question; a
 * question without gold answers gives one; an answer whose sequence does
 * not fit the model gives one with item "QID/INDEX".  Only running out of
 * memory fails the shard. */
#ifndef DM_STAGE_ANALYZE_H
#define DM_STAGE_ANALYZE_H

#include <stdatomic.h>
#include <stdint.h>

#include "worker/analyze/analyze.h"
#include "records.pb-c.h"

#define ANALYZE_MAX_NAMED 64

typedef struct AnalyzeOpts {
    unsigned analyses;          /* AN_A_* bits */
    int first_answer_only;
    int pdf_dpi;
    int corrupt_page;           /* the corrupted page is another page (the shard names
                                 * it), not the page with noise */
    double noise_scale;         /* the corrupted page: pixels + noise_scale * N(0, 1) */
    uint64_t seed;              /* with the page id, seeds the noise */
    /* named skip sets, patched sites, replacements as analyze-item takes
     * them ("NAME=S0,C1", "C3.H5", "M3.out:=-C3.out"), checked at open */
    int nskip, npatch, nreplace;
    char skip[ANALYZE_MAX_NAMED][256];
    char patch[ANALYZE_MAX_NAMED][32];
    char replace[ANALYZE_MAX_NAMED][96];
    int patch_all_positions;
    int kv_max_tokens;          /* kv_retrieval: greedy answers of at most this many tokens */
} AnalyzeOpts;

#define ANALYZE_KV_MAX_TOKENS 32

/* The job keys of the stage (schemas/job.schema.json) from a JSON object's
 * text ("" or NULL: every analysis, the defaults): "analyses",
 * "skip_sets", "patch_sites", "patch_scope", "replacements", "corruption",
 * "noise_scale", "seed", "kv_max_tokens".  `what` names the source in messages, which name the key. */
int analyze_opts_parse(const char *json, const char *what, AnalyzeOpts *o, DmErr *err);

/* The stage for worker_run (worker_loop.h). */
struct WorkerStageOps;
extern const struct WorkerStageOps analyze_stage_ops;

typedef struct AnalyzeStage AnalyzeStage;

int analyze_open(const char *model_dir, const AnalyzeOpts *o, AnalyzeStage **out, DmErr *err);
void analyze_close(AnalyzeStage **st);
const char *analyze_fingerprint(const AnalyzeStage *st);

/* Check the named interventions of o against a model (a wrong site is an
 * error naming the job key): what analyze_open does first. */
int analyze_opts_check(const DonutModel *m, const AnalyzeOpts *o, DmErr *err);

/* Compute a shard into res (zeroed by the caller with
 * docmint__result__init; free with analyze_result_clear).  Stops between
 * pages when *cancel becomes non-zero. */
int analyze_shard(AnalyzeStage *st, const Docmint__Shard *shard, Docmint__Result *res,
                  const atomic_int *cancel, DmErr *err);
void analyze_result_clear(Docmint__Result *res);

/* An AnSink filling r (initialised by the caller) from an_item's results;
 * free the record's contents with analyze_record_clear. */
void analyze_record_sink(Docmint__AnalysisRecord *r, AnSink *sink);
void analyze_record_clear(Docmint__AnalysisRecord *r);

/* pixels [3, H, W] + scale * N(0, 1), the normal draws seeded by seed and
 * the page id. */
void analyze_add_noise(float *pixels, size_t n, double scale, uint64_t seed, const char *page_id);

#endif
