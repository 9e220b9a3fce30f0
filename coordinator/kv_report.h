/* kv_report.h - the key-value retrieval part of an analyze job's report
 * (docs/analyze.md "Key-value retrieval"): counts of each answer class by
 * key-value set, for the patched answers and the unpatched control, as
 * report.json's "kv_retrieval", a section of report.md and a stacked-bar
 * figure (the paper's Fig. 7). */
#ifndef DM_KV_REPORT_H
#define DM_KV_REPORT_H

#include <stdio.h>

#include <jansson.h>

#include "common/dm_error.h"
#include "records.pb-c.h"

#define KV_REPORT_MAX_SETS 16

typedef struct KvReport {
    int nsets;
    char set[KV_REPORT_MAX_SETS][32];
    /* [set][0 patched, 1 control][class: DOCMINT__KV_CLASS__*] */
    long count[KV_REPORT_MAX_SETS][2][6];
    /* [set]: counted items whose clean greedy answer is v_clean */
    long clean_correct[KV_REPORT_MAX_SETS];
} KvReport;

/* Count a record (nothing when it is not a key-value item).  Sets past
 * KV_REPORT_MAX_SETS count under the last one, "other". */
void kv_report_add(KvReport *k, const Docmint__AnalysisRecord *r);

/* Items counted in all (every set, tied included). */
long kv_report_items(const KvReport *k);

/* {"items", "tied", "counted", "clean_correct", "patched": {CLASS:
 * {"count", "share"}}, "control": {...}, "by_set": {SET: the same}};
 * share = count / counted (null when nothing is counted); clean_correct:
 * counted items whose clean greedy answer is v_clean (normalised). */
json_t *kv_report_json(const KvReport *k);

/* The report.md section, from that JSON. */
void kv_report_markdown(FILE *f, const json_t *kv);

/* Stacked bars of the four shares, a patched and a control bar per set
 * and for all sets, the count written in each segment. */
int kv_report_figure(const KvReport *k, const char *png, DmErr *err);

/* A record's kv fields as a JSON object, or JSON null when it has none. */
json_t *kv_record_json(const Docmint__AnalysisRecord *r);

#endif
