/* cmd_tokenize.c - `docmint tokenize` and `docmint detokenize`: JSON lines
 * in, JSON lines out, one output line per input line, for checking the C
 * tokenizer against Hugging Face from scripts. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/stages/qa.h"
#include "worker/text/tokenizer.h"

static void s_tokenize_help(FILE *f)
{
    fprintf(f,
            "usage: docmint tokenize DIR [--no-special | --prompt] < IN.jsonl > OUT.jsonl\n"
            "  DIR           tokenizer folder (reads DIR/tokenizer.json) or a tokenizer .json file\n"
            "  --no-special  do not add the post-processor's special tokens (default: add <s> ... </s>)\n"
            "  --prompt      each text is a question: the ids of the DocVQA prompt every stage\n"
            "                builds for it with model folder DIR (lowercased when DIR/prompt.json\n"
            "                says \"lowercase_questions\": true; no <s>); default: off\n"
            "  -h, --help    this help\n"
            "stdin:  one JSON object per line, {\"text\": \"...\"}; an optional \"text_pair\" encodes a pair\n"
            "stdout: one line per input line, {\"ids\": [...], \"pieces\": [...]} (pieces = vocabulary\n"
            "        strings of the ids, as transformers' convert_ids_to_tokens); blank lines are skipped\n");
}

static void s_detokenize_help(FILE *f)
{
    fprintf(f,
            "usage: docmint detokenize DIR [--skip-special] [--no-cleanup] < IN.jsonl > OUT.jsonl\n"
            "  DIR             tokenizer folder (reads DIR/tokenizer.json) or a tokenizer .json file\n"
            "  --skip-special  drop special tokens (<s>, </s>, <unk>, task tokens...) (default: keep them)\n"
            "  --no-cleanup    do not apply clean_up_tokenization_spaces (default: apply it, unless\n"
            "                  DIR/tokenizer_config.json sets clean_up_tokenization_spaces to false)\n"
            "  -h, --help      this help\n"
            "stdin:  one JSON object per line, {\"ids\": [...]}\n"
            "stdout: one line per input line, {\"text\": \"...\"}; blank lines are skipped\n");
}

/* Shared argument scan: DIR plus the flags in names[]; returns 0, or the
 * exit status (0 for --help, 2 for a usage error) through *exit_code. */
static int s_args(int argc, char **argv, const char *cmd, const char *const *names, int *flags,
                  int nflags, const char **dir, void (*help)(FILE *), int *exit_code)
{
    *dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help(stdout);
            *exit_code = 0;
            return -1;
        }
        int k;
        for (k = 0; k < nflags && strcmp(a, names[k]); k++)
            ;
        if (k < nflags) {
            flags[k] = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "docmint %s: unknown flag '%s'\n", cmd, a);
            help(stderr);
            *exit_code = 2;
            return -1;
        } else if (*dir) {
            fprintf(stderr, "docmint %s: more than one DIR ('%s' and '%s')\n", cmd, *dir, a);
            *exit_code = 2;
            return -1;
        } else {
            *dir = a;
        }
    }
    if (!*dir) {
        fprintf(stderr, "docmint %s: missing DIR\n", cmd);
        help(stderr);
        *exit_code = 2;
        return -1;
    }
    return 0;
}

/* Read the next non-blank line; NULL at end of input. */
static char *s_next_line(char **line, size_t *cap, long *lineno, size_t *len)
{
    ssize_t n;
    while ((n = getline(line, cap, stdin)) >= 0) {
        (*lineno)++;
        while (n > 0 && ((*line)[n - 1] == '\n' || (*line)[n - 1] == '\r'))
            n--;
        (*line)[n] = '\0';
        size_t i = 0;
        while (i < (size_t)n && ((*line)[i] == ' ' || (*line)[i] == '\t'))
            i++;
        if (i < (size_t)n) {
            *len = (size_t)n;
            return *line;
        }
    }
    return NULL;
}

static int s_print(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return -1;
    int ok = fputs(s, stdout) >= 0 && fputc('\n', stdout) != EOF;
    free(s);
    return ok ? 0 : -1;
}

int cmd_tokenize(int argc, char **argv)
{
    static const char *const names[] = {"--no-special", "--prompt"};
    int flags[2] = {0, 0}, code;
    const char *dir;
    if (s_args(argc, argv, "tokenize", names, flags, 2, &dir, s_tokenize_help, &code) < 0)
        return code;
    DmErr err = {{0}};
    Tokenizer *t;
    if (tokenizer_load(dir, &t, &err) < 0) {
        fprintf(stderr, "docmint tokenize: %s\n", err.msg);
        return 1;
    }
    QaModel qa;
    if (flags[1] && qa_prompt_only(t, dir, &qa, &err) < 0) {
        fprintf(stderr, "docmint tokenize: %s\n", err.msg);
        tokenizer_free(&t);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0, len;
    long lineno = 0;
    int rc = 0;
    while (s_next_line(&line, &cap, &lineno, &len)) {
        json_error_t je;
        json_t *in = json_loadb(line, len, JSON_ALLOW_NUL, &je);
        json_t *text = json_object_get(in, "text"), *pair = json_object_get(in, "text_pair");
        if (!in || !json_is_string(text) || (pair && !json_is_string(pair))) {
            if (!in)
                fprintf(stderr, "docmint tokenize: stdin line %ld: malformed JSON: %s\n", lineno, je.text);
            else
                fprintf(stderr, "docmint tokenize: stdin line %ld: expected {\"text\": string} "
                                "(optional \"text_pair\": string)\n", lineno);
            json_decref(in);
            rc = 1;
            break;
        }
        int32_t *ids = NULL;
        int n = 0;
        int e = flags[1] ? (pair ? dm_err(&err, "--prompt takes no text_pair")
                                 : qa_prompt(&qa, json_string_value(text), &ids, &n, &err))
              : pair ? tokenizer_encode_pair_n(t, json_string_value(text), json_string_length(text),
                                               json_string_value(pair), json_string_length(pair),
                                               !flags[0], &ids, &n, &err)
                     : tokenizer_encode_n(t, json_string_value(text), json_string_length(text),
                                          !flags[0], &ids, &n, &err);
        json_decref(in);
        if (e < 0) {
            fprintf(stderr, "docmint tokenize: stdin line %ld: %s\n", lineno, err.msg);
            rc = 1;
            break;
        }
        json_t *jids = json_array(), *jp = json_array();
        for (int i = 0; i < n; i++) {
            const char *p = tokenizer_id_to_piece(t, ids[i]);
            json_array_append_new(jids, json_integer(ids[i]));
            json_array_append_new(jp, p ? json_string(p) : json_null());
        }
        free(ids);
        if (s_print(json_pack("{s:o s:o}", "ids", jids, "pieces", jp)) < 0) {
            fprintf(stderr, "docmint tokenize: cannot write stdout\n");
            rc = 1;
            break;
        }
    }
    free(line);
    tokenizer_free(&t);
    if (fflush(stdout) != 0 && !rc) {
        fprintf(stderr, "docmint tokenize: cannot write stdout\n");
        rc = 1;
    }
    return rc;
}

int cmd_detokenize(int argc, char **argv)
{
    static const char *const names[] = {"--skip-special", "--no-cleanup"};
    int flags[2] = {0, 0}, code;
    const char *dir;
    if (s_args(argc, argv, "detokenize", names, flags, 2, &dir, s_detokenize_help, &code) < 0)
        return code;
    DmErr err = {{0}};
    Tokenizer *t;
    if (tokenizer_load(dir, &t, &err) < 0) {
        fprintf(stderr, "docmint detokenize: %s\n", err.msg);
        return 1;
    }
    int cleanup = flags[1] ? 0 : tokenizer_default_cleanup(t);
    char *line = NULL;
    size_t cap = 0, len;
    long lineno = 0;
    int rc = 0;
    int32_t *ids = NULL;
    while (s_next_line(&line, &cap, &lineno, &len)) {
        json_error_t je;
        json_t *in = json_loadb(line, len, 0, &je);
        json_t *arr = json_object_get(in, "ids");
        const char *bad = !in ? "malformed JSON" : !json_is_array(arr) ? "expected {\"ids\": [...]}" : NULL;
        size_t n = json_array_size(arr);
        free(ids);
        ids = malloc(sizeof *ids * (n ? n : 1));
        for (size_t i = 0; !bad && i < n; i++) {
            json_t *v = json_array_get(arr, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
                bad = "ids must be non-negative integers";
            else if (ids)
                ids[i] = (int32_t)json_integer_value(v);
        }
        if (!ids)
            bad = "out of memory";
        if (bad) {
            fprintf(stderr, "docmint detokenize: stdin line %ld: %s%s%s\n", lineno, bad,
                    in ? "" : ": ", in ? "" : je.text);
            json_decref(in);
            rc = 1;
            break;
        }
        json_decref(in);
        char *text;
        if (tokenizer_decode(t, ids, (int)n, flags[0], cleanup, &text, &err) < 0) {
            fprintf(stderr, "docmint detokenize: stdin line %ld: %s\n", lineno, err.msg);
            rc = 1;
            break;
        }
        int e = s_print(json_pack("{s:s}", "text", text));
        free(text);
        if (e < 0) {
            fprintf(stderr, "docmint detokenize: cannot write stdout\n");
            rc = 1;
            break;
        }
    }
    free(ids);
    free(line);
    tokenizer_free(&t);
    if (fflush(stdout) != 0 && !rc) {
        fprintf(stderr, "docmint detokenize: cannot write stdout\n");
        rc = 1;
    }
    return rc;
}
