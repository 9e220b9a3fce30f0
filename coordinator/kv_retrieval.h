/* kv_retrieval.h - the coordinator's side of the analyze stage's key-value
 * retrieval (docs/analyze.md "Key-value retrieval"): the corrupt corpus
 * that `docmint synth --kv SET --corrupt` writes, read and checked against
 * the analysed corpus; the class of an answer; the values and classes put
 * into a worker's AnalysisRecord before it is stored.
 *
 * The values come from the coordinator's own reading of the corrupt
 * corpus, never from a worker: a worker sends the greedy answers only. */
#ifndef DM_KV_RETRIEVAL_H
#define DM_KV_RETRIEVAL_H

#include <stdint.h>

#include "common/dm_error.h"
#include "worker/data/corpus.h"
#include "records.pb-c.h"

typedef struct KvItem {
    int64_t qid;
    char *twin;      /* the twin page (resolved, absolute) */
    char *clean;     /* the clean page as the entry names it (resolved) */
    char *v_clean, *v_new, *v_pos;
    char *set;       /* "colours", "nouns", "numbers", or "other" */
    int page;        /* the corpus page of the question; -1: not in the corpus */
} KvItem;

typedef struct KvTable {
    char *path;
    KvItem *items;   /* sorted by qid */
    int n;
    int paired;      /* items whose question the corpus has */
    char **twin_of_page; /* [corpus pages]: the page's twin, or NULL */
    int npages;
} KvTable;

/* Read a corrupt corpus (DocVQA layout: data[] entries with questionId,
 * image, clean_image, v_clean, v_new, v_pos, optional kv_set; images
 * relative to the file's folder).  Every error is one line naming the
 * file: an unreadable file, an entry without its v_* strings, an image
 * (twin or clean page) that does not exist, a repeated questionId. */
int kv_table_load(const char *path, KvTable **out, DmErr *err);

/* Pair the entries with the corpus's questions by questionId: an entry's
 * clean_image must be its question's page, and the questions of one page
 * must share one twin.  Fills page and twin_of_page; a file that pairs no
 * question of the corpus is an error naming both. */
int kv_table_pair(KvTable *t, const Corpus *c, const char *corpus_path, DmErr *err);

/* The entry of a question the corpus has, or NULL. */
const KvItem *kv_table_find(const KvTable *t, int64_t qid);

void kv_table_free(KvTable **t);

/* The class of an answer: its text and the values normalised as ANLS
 * normalises (strip, lower-case, collapse white space); KV_TIED when two of
 * the values are the same after normalisation, else KV_POSITIONAL (=
 * v_pos), KV_SEMANTIC (= v_new), KV_MEMORISED (= v_clean) or KV_FAILURE. */
Docmint__KvClass kv_classify(const char *answer, const char *v_clean, const char *v_new,
                             const char *v_pos);

/* The class's name in reports: "positional", "semantic", "memorised",
 * "failure", "tied" or "none". */
const char *kv_class_name(Docmint__KvClass c);

/* Fill r (a shallow copy of a worker's record, its strings borrowed from
 * the table) with the values and the classes of its question's entry, when
 * it is the record of the first answer of a paired question; else clear
 * the kv fields. */
void kv_record_fill(const KvTable *t, Docmint__AnalysisRecord *r);

#endif
