/* test_corpus.c - corpus readers on the hand-written fixtures of
 * data/corpus/ (DocVQA JSON, JSON lines, archives as folder and as list
 * file) and on a synthetic corpus: grouping by page in first-appearance
 * order, aliases, answers, page numbers, deterministic archive ids, and
 * one-line errors naming the file, the entry and the key. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator/cli/commands.h"
#include "worker/data/corpus.h"
#include "tutil.h"

#define S_DIR "data/corpus"

static Corpus *s_load(CorpusFormat f, const char *path, const char *root, const char *questions)
{
    CorpusSpec spec = {f, path, root, questions, 200};
    Corpus *c = NULL;
    DmErr err = {{0}};
    if (corpus_load(&spec, &c, &err)) {
        printf("\n  %s", err.msg);
        return NULL;
    }
    return c;
}

static void s_expect_error(CorpusFormat f, const char *path, const char *questions, const char *needle)
{
    CorpusSpec spec = {f, path, NULL, questions, 200};
    Corpus *c = (Corpus *)1;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(corpus_load(&spec, &c, &err), -1);
    CU_ASSERT_PTR_NULL(c);
    int found = strstr(err.msg, needle) != NULL;
    if (!found)
        printf("\n  expected \"%s\" in \"%s\"", needle, err.msg);
    CU_ASSERT(found);
    CU_ASSERT(strchr(err.msg, '\n') == NULL);
}

static void t_docvqa(void)
{
    Corpus *c = s_load(CORPUS_DOCVQA, S_DIR "/docvqa_small.json", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(c->npages, 3);
    CU_ASSERT_EQUAL(c->nquestions, 5);
    /* pages in first-appearance order, questions in file order */
    CU_ASSERT_STRING_EQUAL(c->pages[0].page_id, "documents/aaa_1.png");
    CU_ASSERT_STRING_EQUAL(c->pages[0].image_path, S_DIR "/documents/aaa_1.png");
    CU_ASSERT_EQUAL(c->pages[0].page_no, 0);
    CU_ASSERT_EQUAL_FATAL(c->pages[0].nq, 2);
    CU_ASSERT_EQUAL(c->pages[0].q[0].qid, 11);
    CU_ASSERT_EQUAL(c->pages[0].q[1].qid, 13);
    CU_ASSERT_STRING_EQUAL(c->pages[0].q[0].text, "What is the date?");
    CU_ASSERT_EQUAL_FATAL(c->pages[0].q[0].nanswers, 2);
    CU_ASSERT_STRING_EQUAL(c->pages[0].q[0].answers[1], "4 May 1990");
    CU_ASSERT_EQUAL_FATAL(c->pages[0].q[0].nqtypes, 1);
    CU_ASSERT_STRING_EQUAL(c->pages[0].q[0].qtypes[0], "form");
    CU_ASSERT_STRING_EQUAL(c->pages[1].page_id, "documents/bbb_2.png");
    CU_ASSERT_EQUAL_FATAL(c->pages[1].nq, 2);
    CU_ASSERT_EQUAL(c->pages[1].q[0].nqtypes, 2);
    CU_ASSERT_EQUAL(c->pages[1].q[1].qid, 15);
    CU_ASSERT_EQUAL(c->pages[1].q[1].nanswers, 0);
    CU_ASSERT_EQUAL(c->pages[1].q[1].nqtypes, 0);
    /* a test-split entry: no answers, no question types */
    CU_ASSERT_STRING_EQUAL(c->pages[2].page_id, "documents/ccc_1.png");
    CU_ASSERT_EQUAL(c->pages[2].q[0].nanswers, 0);
    CU_ASSERT_PTR_NULL(c->pages[2].q[0].answers);
    corpus_free(&c);
    CU_ASSERT_PTR_NULL(c);

    /* image_root moves the images, not the page ids */
    c = s_load(CORPUS_DOCVQA, S_DIR "/docvqa_small.json", "/data/docvqa/val", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_STRING_EQUAL(c->pages[0].image_path, "/data/docvqa/val/documents/aaa_1.png");
    CU_ASSERT_STRING_EQUAL(c->pages[0].page_id, "documents/aaa_1.png");
    corpus_free(&c);
}

static void t_docvqa_errors(void)
{
    s_expect_error(CORPUS_DOCVQA, S_DIR "/docvqa_dup.json", NULL,
                   S_DIR "/docvqa_dup.json: data[3]: questionId 7 repeats data[0]");
    s_expect_error(CORPUS_DOCVQA, S_DIR "/docvqa_badtype.json", NULL,
                   S_DIR "/docvqa_badtype.json: data[1]: questionId: expected integer, got string");
    s_expect_error(CORPUS_DOCVQA, S_DIR "/docvqa_missing.json", NULL,
                   S_DIR "/docvqa_missing.json: data[2]: question: missing (required string)");
    s_expect_error(CORPUS_DOCVQA, S_DIR "/docvqa_badanswers.json", NULL,
                   "docvqa_badanswers.json: data[0]: answers[1]: expected string, got integer");
    s_expect_error(CORPUS_DOCVQA, S_DIR "/small.jsonl", NULL, S_DIR "/small.jsonl:");
    s_expect_error(CORPUS_DOCVQA, S_DIR "/questions.json", NULL,
                   "questions.json: not a DocVQA annotation file");
    s_expect_error(CORPUS_DOCVQA, S_DIR "/nothere.json", NULL, S_DIR "/nothere.json: No such file");
    s_expect_error(CORPUS_DOCVQA, S_DIR, NULL, "is a folder");
}

static void t_jsonl(void)
{
    Corpus *c = s_load(CORPUS_JSONL, S_DIR "/small.jsonl", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(c->nquestions, 4);
    CU_ASSERT_EQUAL_FATAL(c->npages, 3);
    /* question_id / image_path / answer as one string */
    CU_ASSERT_STRING_EQUAL(c->pages[0].page_id, "pages/p1.png");
    CU_ASSERT_EQUAL_FATAL(c->pages[0].nq, 2);
    CU_ASSERT_EQUAL(c->pages[0].q[0].qid, 101);
    CU_ASSERT_EQUAL_FATAL(c->pages[0].q[0].nanswers, 1);
    CU_ASSERT_STRING_EQUAL(c->pages[0].q[0].answers[0], "Ada");
    /* questionId / image / answers as one string, question_types */
    CU_ASSERT_EQUAL(c->pages[0].q[1].qid, 103);
    CU_ASSERT_STRING_EQUAL(c->pages[0].q[1].answers[0], "London");
    CU_ASSERT_EQUAL(c->pages[0].q[1].nqtypes, 1);
    /* id / file_name / page 1: its own page */
    CU_ASSERT_STRING_EQUAL(c->pages[1].page_id, "pages/p2.tif#p1");
    CU_ASSERT_STRING_EQUAL(c->pages[1].image_path, S_DIR "/pages/p2.tif");
    CU_ASSERT_EQUAL(c->pages[1].page_no, 1);
    CU_ASSERT_EQUAL(c->pages[1].q[0].qid, 102);
    CU_ASSERT_EQUAL(c->pages[1].q[0].nanswers, 2);
    /* page 0 of the same file is another page */
    CU_ASSERT_STRING_EQUAL(c->pages[2].page_id, "pages/p2.tif");
    CU_ASSERT_EQUAL(c->pages[2].page_no, 0);
    CU_ASSERT_EQUAL(c->pages[2].q[0].qid, 104);
    CU_ASSERT_EQUAL(c->pages[2].q[0].nanswers, 0);
    corpus_free(&c);

    s_expect_error(CORPUS_JSONL, S_DIR "/bad.jsonl", NULL,
                   S_DIR "/bad.jsonl: line 3: answer: expected a string or a list of strings, got integer");
    s_expect_error(CORPUS_JSONL, S_DIR "/broken.jsonl", NULL, S_DIR "/broken.jsonl: line 2:");
    s_expect_error(CORPUS_JSONL, S_DIR "/negative.jsonl", NULL,
                   S_DIR "/negative.jsonl: line 2: id: must not be negative, got -5");
    s_expect_error(CORPUS_JSONL, S_DIR "/dup.jsonl", NULL, S_DIR "/dup.jsonl: line 2: questionId 1 repeats line 1");
    s_expect_error(CORPUS_JSONL, S_DIR "/docvqa_small.json", NULL, "docvqa_small.json: line 1: ");
}

/* ---------------------------------------------------------------- */
/* archives */

static int s_copy(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int rc = a && b ? 0 : -1;
    char buf[8192];
    size_t n;
    while (!rc && (n = fread(buf, 1, sizeof buf, a)) > 0)
        rc = fwrite(buf, 1, n, b) == n ? 0 : -1;
    if (a)
        fclose(a);
    if (b && fclose(b))
        rc = -1;
    return rc;
}

static int s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void s_rmtree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("\n  could not remove %s", dir);
}

/* A folder: top.png, sub/multi.tif (3 pages), sub/deeper/b.JPG,
 * broken.pdf (not a PDF: one page, the worker reports it), and what the
 * scan skips: notes.txt, .hidden.png, .git/x.png, an empty folder. */
static int s_make_archive(char *dir)
{
    char p[512];
    if (!mkdtemp(dir))
        return -1;
    int rc = 0;
    snprintf(p, sizeof p, "%s/sub", dir);
    rc |= mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/sub/deeper", dir);
    rc |= mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/.git", dir);
    rc |= mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/empty", dir);
    rc |= mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/top.png", dir);
    rc |= s_copy("data/images/rgb.png", p);
    snprintf(p, sizeof p, "%s/sub/multi.tif", dir);
    rc |= s_copy("data/images/multi.tif", p);
    snprintf(p, sizeof p, "%s/sub/deeper/b.JPG", dir);
    rc |= s_copy("data/images/grey.jpg", p);
    snprintf(p, sizeof p, "%s/broken.pdf", dir);
    rc |= s_write(p, "not a pdf");
    snprintf(p, sizeof p, "%s/notes.txt", dir);
    rc |= s_write(p, "notes");
    snprintf(p, sizeof p, "%s/.hidden.png", dir);
    rc |= s_copy("data/images/rgb.png", p);
    snprintf(p, sizeof p, "%s/.git/x.png", dir);
    rc |= s_copy("data/images/rgb.png", p);
    return rc;
}

static void t_archive_folder(void)
{
    char dir[] = "/tmp/docmint-archive-XXXXXX";
    CU_ASSERT_EQUAL_FATAL(s_make_archive(dir), 0);
    Corpus *c = s_load(CORPUS_ARCHIVE, dir, NULL, S_DIR "/questions.txt");
    CU_ASSERT_PTR_NOT_NULL(c);
    if (c) {
        /* sorted by relative path: broken.pdf, sub/deeper/b.JPG, sub/multi.tif x3, top.png */
        static const char *const ids[] = {"broken.pdf", "sub/deeper/b.JPG", "sub/multi.tif", "sub/multi.tif#p1",
                                          "sub/multi.tif#p2", "top.png"};
        CU_ASSERT_EQUAL(c->npages, 6);
        CU_ASSERT_EQUAL(c->nquestions, 18);
        for (int i = 0; i < 6 && i < c->npages; i++) {
            CU_ASSERT_STRING_EQUAL(c->pages[i].page_id, ids[i]);
            CU_ASSERT_EQUAL(c->pages[i].nq, 3);
        }
        CU_ASSERT_EQUAL(c->pages[4].page_no, 2);
        char want[600];
        snprintf(want, sizeof want, "%s/sub/multi.tif", dir);
        CU_ASSERT_STRING_EQUAL(c->pages[4].image_path, want);
        CU_ASSERT_STRING_EQUAL(c->pages[0].q[1].text, "Who is the sender?"); /* CRLF and blank line */
        CU_ASSERT_STRING_EQUAL(c->pages[0].q[2].text, "What is the total amount?");
        /* ids: deterministic, positive, the same for the JSON questions file */
        Corpus *d = s_load(CORPUS_ARCHIVE, dir, NULL, S_DIR "/questions.json");
        CU_ASSERT_PTR_NOT_NULL_FATAL(d);
        CU_ASSERT_EQUAL(d->npages, c->npages);
        for (int i = 0; i < c->npages && i < d->npages; i++)
            for (int j = 0; j < c->pages[i].nq && j < d->pages[i].nq; j++) {
                CU_ASSERT_EQUAL(c->pages[i].q[j].qid, d->pages[i].q[j].qid);
                CU_ASSERT(c->pages[i].q[j].qid > 0);
                CU_ASSERT_EQUAL(c->pages[i].q[j].nanswers, 0);
            }
        corpus_free(&d);
        /* a document added to the archive leaves the other ids alone */
        char p[600];
        snprintf(p, sizeof p, "%s/aaa.png", dir);
        CU_ASSERT_EQUAL(s_copy("data/images/rgb.png", p), 0);
        d = s_load(CORPUS_ARCHIVE, dir, NULL, S_DIR "/questions.txt");
        CU_ASSERT_PTR_NOT_NULL_FATAL(d);
        CU_ASSERT_EQUAL(d->npages, 7);
        CU_ASSERT_STRING_EQUAL(d->pages[0].page_id, "aaa.png");
        for (int i = 0; i < c->npages && i + 1 < d->npages; i++)
            CU_ASSERT_EQUAL(c->pages[i].q[0].qid, d->pages[i + 1].q[0].qid);
        corpus_free(&d);
        corpus_free(&c);
    }
    /* a folder without documents */
    char p[600];
    snprintf(p, sizeof p, "%s/empty", dir);
    s_expect_error(CORPUS_ARCHIVE, p, S_DIR "/questions.txt", "empty: no documents (.png .jpg");
    s_rmtree(dir);
}

static void t_archive_list(void)
{
    Corpus *c = s_load(CORPUS_ARCHIVE, S_DIR "/archive_list.txt", NULL, S_DIR "/questions.json");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    /* list order kept: multi.tif (3 pages), rgb.png, and the missing file
     * as one page (the worker records it as an item error) */
    CU_ASSERT_EQUAL_FATAL(c->npages, 5);
    CU_ASSERT_STRING_EQUAL(c->pages[0].page_id, "../images/multi.tif");
    CU_ASSERT_STRING_EQUAL(c->pages[2].page_id, "../images/multi.tif#p2");
    CU_ASSERT_STRING_EQUAL(c->pages[2].image_path, S_DIR "/../images/multi.tif");
    CU_ASSERT_STRING_EQUAL(c->pages[3].page_id, "../images/rgb.png");
    CU_ASSERT_STRING_EQUAL(c->pages[4].page_id, "missing/nothere.png");
    CU_ASSERT_EQUAL(c->nquestions, 15);
    corpus_free(&c);

    /* image_root applies to a list file's lines */
    c = s_load(CORPUS_ARCHIVE, S_DIR "/archive_list.txt", "data/corpus", S_DIR "/questions.txt");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(c->npages, 5);
    CU_ASSERT_STRING_EQUAL(c->pages[3].image_path, "data/corpus/../images/rgb.png");
    corpus_free(&c);

    s_expect_error(CORPUS_ARCHIVE, S_DIR "/archive_list.txt", S_DIR "/questions_dup.txt",
                   "questions_dup.txt: line 3: repeats line 1");
    s_expect_error(CORPUS_ARCHIVE, S_DIR "/archive_list.txt", NULL, "needs a questions file");
    s_expect_error(CORPUS_ARCHIVE, S_DIR "/archive_list.txt", S_DIR "/nope.txt", "nope.txt: No such file");
    s_expect_error(CORPUS_ARCHIVE, S_DIR "/no-such-folder", S_DIR "/questions.txt", "no-such-folder: No such file");
}

/* Archive ids: 53-bit, and with legacy_ids the 63-bit ids that stores
 * made before hold (the two numbers below were read from such a store). */
static void t_archive_ids(void)
{
    char dir[] = "/tmp/docmint-ids-XXXXXX", p[600], q[600];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(p, sizeof p, "%s/a.png", dir);
    snprintf(q, sizeof q, "%s/q.txt", dir);
    CU_ASSERT_EQUAL_FATAL(s_copy("data/images/rgb.png", p), 0);
    CU_ASSERT_EQUAL_FATAL(s_write(q, "What is the date?\nWho is the vendor?\n"), 0);
    CorpusSpec spec = {CORPUS_ARCHIVE, dir, NULL, q, 200};
    spec.legacy_ids = 1;
    Corpus *old = NULL, *c = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(corpus_load(&spec, &old, &err), 0);
    spec.legacy_ids = 0;
    CU_ASSERT_EQUAL_FATAL(corpus_load(&spec, &c, &err), 0);
    CU_ASSERT_EQUAL_FATAL(old->npages, 1);
    CU_ASSERT_EQUAL_FATAL(c->npages, 1);
    CU_ASSERT_EQUAL(old->pages[0].q[0].qid, 4372367986747441736LL);
    CU_ASSERT_EQUAL(old->pages[0].q[1].qid, 708569154950182299LL);
    for (int j = 0; j < 2; j++) {
        int64_t id = c->pages[0].q[j].qid;
        /* the low 53 bits of the same hash; exact as a double */
        CU_ASSERT_EQUAL(id, old->pages[0].q[j].qid & CORPUS_MAX_QID);
        CU_ASSERT(id > 0 && id <= CORPUS_MAX_QID);
        CU_ASSERT_EQUAL((int64_t)(double)id, id);
    }
    CU_ASSERT_STRING_EQUAL(c->pages[0].document, "a.png");
    corpus_free(&old);
    corpus_free(&c);
    /* a JSON-lines id above 2^53 - 1 is refused, 2^53 - 1 itself is not */
    snprintf(p, sizeof p, "%s/big.jsonl", dir);
    CU_ASSERT_EQUAL(s_write(p, "{\"id\": 9007199254740991, \"question\": \"q?\", \"image\": \"a.png\"}\n"
                               "{\"id\": 9007199254740992, \"question\": \"q?\", \"image\": \"a.png\"}\n"), 0);
    s_expect_error(CORPUS_JSONL, p, NULL,
                   "big.jsonl: line 2: id: 9007199254740992 is above 2^53-1 = 9007199254740991");
    s_rmtree(dir);
}

/* The scan kept for the next load: unchanged documents keep their page
 * count without being opened, a changed one is counted again. */
static void t_archive_scan(void)
{
    char dir[] = "/tmp/docmint-scan-XXXXXX", p[600];
    CU_ASSERT_EQUAL_FATAL(s_make_archive(dir), 0);
    FILE *log = tmpfile(); /* progress lines, if the scan is slow enough for any */
    CU_ASSERT_PTR_NOT_NULL_FATAL(log);
    CorpusSpec spec = {CORPUS_ARCHIVE, dir, NULL, S_DIR "/questions.txt", 200};
    spec.progress = log;
    Corpus *c = NULL, *d = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(corpus_load(&spec, &c, &err), 0);
    /* broken.pdf is counted (and fails) but not kept */
    CU_ASSERT_EQUAL(c->scan_counted, 4);
    CU_ASSERT_EQUAL(c->scan_reused, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c->scan);
    CU_ASSERT_PTR_NULL(strstr(c->scan, "broken.pdf"));
    CU_ASSERT_PTR_NOT_NULL(strstr(c->scan, "\"sub/multi.tif\":[6768,"));
    fclose(log);
    /* document and page as separate fields */
    CU_ASSERT_STRING_EQUAL(c->pages[3].document, "sub/multi.tif");
    CU_ASSERT_EQUAL(c->pages[3].page_no, 1);
    CU_ASSERT_STRING_EQUAL(c->pages[0].document, "broken.pdf");

    spec.progress = NULL;
    spec.scan_cache = c->scan;
    CU_ASSERT_EQUAL_FATAL(corpus_load(&spec, &d, &err), 0);
    CU_ASSERT_EQUAL(d->scan_counted, 1);
    CU_ASSERT_EQUAL(d->scan_reused, 3);
    CU_ASSERT_EQUAL(d->npages, 6);
    CU_ASSERT_STRING_EQUAL(d->scan, c->scan);
    corpus_free(&d);
    /* the kept count is trusted while size and time match: a scan that
     * says 2 pages gives 2 pages (the file is not opened) */
    char *edited = strdup(c->scan), *at = strstr(edited, "\"sub/multi.tif\":[");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    at = strchr(at, ']');
    CU_ASSERT_EQUAL_FATAL(at[-1], '3');
    at[-1] = '2';
    spec.scan_cache = edited;
    CU_ASSERT_EQUAL_FATAL(corpus_load(&spec, &d, &err), 0);
    CU_ASSERT_EQUAL(d->npages, 5);
    corpus_free(&d);
    /* a new modification time: counted again */
    snprintf(p, sizeof p, "%s/sub/multi.tif", dir);
    struct timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
    CU_ASSERT_EQUAL(utimensat(AT_FDCWD, p, ts, 0), 0);
    CU_ASSERT_EQUAL_FATAL(corpus_load(&spec, &d, &err), 0);
    CU_ASSERT_EQUAL(d->npages, 6);
    CU_ASSERT_EQUAL(d->scan_counted, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(d->scan, "\"sub/multi.tif\":[6768,1000000000,0,3]"));
    corpus_free(&d);
    free(edited);
    corpus_free(&c);
    s_rmtree(dir);
}

static void t_format_parse(void)
{
    CorpusFormat f;
    CU_ASSERT(corpus_format_parse("docvqa", &f) == 0 && f == CORPUS_DOCVQA);
    CU_ASSERT(corpus_format_parse("jsonl", &f) == 0 && f == CORPUS_JSONL);
    CU_ASSERT(corpus_format_parse("archive", &f) == 0 && f == CORPUS_ARCHIVE);
    CU_ASSERT_EQUAL(corpus_format_parse("xml", &f), -1);
}

/* A synthetic corpus reads back: every split, every page, every question. */
static void t_synth_corpus(void)
{
    char dir[] = "/tmp/docmint-synthc-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char out[600], path[700];
    snprintf(out, sizeof out, "%s/s", dir);
    char *argv[] = {"synth", out, "--docs", "3", "--seed", "5", "--pages-per-doc", "2",
                    "--questions-per-page", "2", "--width", "240", "--height", "320", "--quiet", NULL};
    CU_ASSERT_EQUAL_FATAL(cmd_synth(15, argv), 0);
    static const char *const files[] = {"train_v1.0_withQT.json", "val_v1.0_withQT.json", "test_v1.0.json"};
    for (int s = 0; s < 3; s++) {
        snprintf(path, sizeof path, "%s/%s", out, files[s]);
        Corpus *c = s_load(CORPUS_DOCVQA, path, NULL, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        CU_ASSERT_EQUAL(c->npages, 2); /* one document of two pages per split */
        CU_ASSERT_EQUAL(c->nquestions, 4);
        for (int p = 0; p < c->npages; p++) {
            struct stat st;
            CU_ASSERT_EQUAL(stat(c->pages[p].image_path, &st), 0);
            for (int q = 0; q < c->pages[p].nq; q++)
                CU_ASSERT_EQUAL(c->pages[p].q[q].nanswers, s == 2 ? 0 : 1);
        }
        corpus_free(&c);
    }
    /* the documents folder as an archive: six single-page PNGs */
    snprintf(path, sizeof path, "%s/documents", out);
    Corpus *c = s_load(CORPUS_ARCHIVE, path, NULL, S_DIR "/questions.txt");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(c->npages, 6);
    CU_ASSERT_STRING_EQUAL(c->pages[1].page_id, "syn00000_2.png");
    corpus_free(&c);
    s_rmtree(dir);
}

void tests_corpus(void)
{
    TU_SUITE("corpus", {"DocVQA annotation file", t_docvqa}, {"DocVQA errors name file, entry, key", t_docvqa_errors},
             {"JSON lines with aliases", t_jsonl}, {"archive folder", t_archive_folder},
             {"archive list file", t_archive_list}, {"archive ids: 53-bit, legacy 63-bit", t_archive_ids},
             {"archive scan kept and reused", t_archive_scan}, {"format names", t_format_parse},
             {"synthetic corpus reads back", t_synth_corpus});
}
