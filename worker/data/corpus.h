/* corpus.h - question corpora read into pages with their questions.
 *
 * Formats: the official DocVQA annotation JSON (data[] with questionId,
 * question, image, docId, ucsf_document_id, ucsf_document_page_no,
 * answers, question_types, data_split), JSON lines with the usual key
 * aliases, and archives (a folder or list file of documents, every page of
 * every document, with a list of questions asked of each page).  All the
 * questions of one image page are grouped, so the encoder runs once per
 * page.
 *
 * Details (corpus.c):
 *   - pages keep the order in which the corpus first mentions them,
 *     questions keep file order; a repeated questionId is an error naming
 *     both entries ("data[7]: questionId 42 repeats data[3]").
 *   - errors name the file, the entry (data[i], or "line N" for JSON lines)
 *     and the key; missing image files are not corpus errors (the worker
 *     records them as item errors).  questionIds must be >= 0.
 *   - JSON lines: questionId | question_id | id, question,
 *     image | image_path | file_name, answers | answer (a string or a
 *     list), optional question_types and page (from 0); when several
 *     aliases are present the first listed wins.  Blank lines are skipped.
 *   - archives: a folder is scanned recursively for .png .jpg .jpeg .tif
 *     .tiff .pdf (any case; hidden entries and links to folders skipped),
 *     sorted by relative path; a list file keeps its order (blank lines and
 *     # comments skipped) and its relative lines resolve against image_root
 *     or the list's folder.  Every page of every document
 *     (image_count_pages; an unreadable file gets one page) is asked every
 *     question of the questions file.  Archive questionIds are a 53-bit
 *     hash of (page_id, question): stable when documents are added or
 *     removed, so a rerun over a grown folder resumes, and at most
 *     2^53 - 1, so a JSON reader that holds numbers as doubles (jq,
 *     JavaScript) keeps them exact.  Stores made before kept 63-bit ids
 *     (spec.legacy_ids reproduces them).
 *   - questionIds of DocVQA and JSON-lines corpora must lie in
 *     0 .. 2^53 - 1 (CORPUS_MAX_QID) for the same reason.
 *   - archive page counts: a folder scan lists every document with its
 *     size and modification time; a document whose size and time match
 *     spec.scan_cache (an earlier Corpus.scan) keeps the page count found
 *     then, any other is opened and counted.  With spec.progress set, a
 *     scan reports to it at most every 2 s (the totals are the caller's
 *     to print: Corpus.npages, scan_counted, scan_reused). */
#ifndef DM_CORPUS_H
#define DM_CORPUS_H

#include <stdint.h>
#include <stdio.h>

#include "common/dm_error.h"

typedef struct CorpusQuestion {
    int64_t qid;         /* questionId; archives number them */
    char *text;
    char **answers;      /* gold answers (may be empty) */
    int nanswers;
    char **qtypes;       /* question_types (may be empty) */
    int nqtypes;
} CorpusQuestion;

/* The largest questionId: 2^53 - 1, exact as an IEEE double. */
#define CORPUS_MAX_QID 9007199254740991LL

typedef struct CorpusPage {
    char *page_id;       /* stable: image path relative to the root, plus "#p<N>" for page N > 0 */
    char *image_path;    /* resolved against the job's image root */
    int page_no;         /* page inside a multi-page file, from 0 */
    CorpusQuestion *q;
    int nq;
    char *document;      /* the document as the corpus names it (page_id without "#p<N>") */
} CorpusPage;

typedef enum { CORPUS_DOCVQA, CORPUS_JSONL, CORPUS_ARCHIVE } CorpusFormat;

typedef struct CorpusSpec {
    CorpusFormat format;
    const char *path;        /* annotation JSON / JSONL / folder or list file of documents */
    const char *image_root;  /* image paths resolve against it (default: the annotation's folder) */
    const char *questions;   /* archives: file with one question per line (or JSON array) */
    int pdf_dpi;
    /* archives only */
    const char *scan_cache;  /* JSON text of an earlier Corpus.scan (NULL: none) */
    FILE *progress;          /* where scanning progress goes (NULL: silent) */
    int legacy_ids;          /* 63-bit questionIds, as stores made before 53-bit ids have */
    int64_t max_page_pixels; /* the largest decoded page (image_set_max_pixels) */
} CorpusSpec;

typedef struct Corpus {
    CorpusPage *pages;
    int npages;
    int nquestions;
    /* archives: the scan to keep for the next load (JSON text: {"version":
     * 1, "files": {document: [size, mtime_s, mtime_ns, pages], ...}}), and
     * how many documents were opened to count pages or taken from
     * scan_cache; NULL and 0 for other formats */
    char *scan;
    int scan_counted, scan_reused;
} Corpus;

int corpus_load(const CorpusSpec *spec, Corpus **out, DmErr *err);
void corpus_free(Corpus **c);

/* Parse a format name: "docvqa", "jsonl", "archive". */
int corpus_format_parse(const char *s, CorpusFormat *f);

#endif
