/* analyze_report.h - the end of an analyze job: aggregates of every
 * AnalysisRecord of the store (mean, standard error, count, overall) into
 * OUTPUT/report.json and the store's meta "aggregates", the heat maps of
 * the means into OUTPUT/figures/, and OUTPUT/report.md linking them with
 * the headline numbers.  Also the JSON line of a record for `store dump`. */
#ifndef DM_ANALYZE_REPORT_H
#define DM_ANALYZE_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"
#include "worker/data/corpus.h"

/* Aggregate the analysis store at output (the job's output folder); the
 * corpus (may be NULL) gives the question types; the logit-lens grid is
 * drawn for question lens_qid (-1: the first record), its tokens named by
 * the tokenizer of the model folder. */
int analyze_report(const char *output, const CorpusSpec *corpus, const char *model,
                   int64_t lens_qid, DmErr *err);

/* An AnalysisRecord's bytes as one JSON line (every field; NaN as null);
 * NULL with err set when they are not one. */
char *analyze_record_json(const void *val, size_t vlen, DmErr *err);

#endif
