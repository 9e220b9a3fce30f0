/* main.c - the docmint entry point: dispatch to a subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cli/commands.h"

/* From the file VERSION, through the Makefile. */
#ifndef DOCMINT_VERSION
#error "DOCMINT_VERSION is not defined: build with make (it reads the file VERSION)"
#endif

/* OpenMP threads waiting at a barrier spin before they sleep: libgomp's
 * default is 300,000 turns when OMP_WAIT_POLICY is unset, about a
 * millisecond per wait.  On a node whose cores other processes also use, a
 * spinning thread holds the core the thread it waits for needs: a run with
 * the default threads went 4-6x slower than with one thread
 * (docs/running.md, `make bench`).  Passive waiting (sleep at once) keeps
 * the speed on a busy node and costs a quiet one little (the work between
 * barriers is long).  libgomp reads its environment when it is loaded,
 * before main, and a setenv from .preinit_array does not survive libc's
 * own start-up, so docmint sets the variable and executes itself again
 * (same process id: mpirun sees no difference).  The user's own
 * OMP_WAIT_POLICY or GOMP_SPINCOUNT wins. */
#define DM_OMP_WAIT_POLICY "passive"

static void s_omp_defaults(int argc, char **argv)
{
    /* the commands whose compute runs in OpenMP threads (the others need
     * not pay for a second start) */
    static const char *const computing[] = {"run", "worker", "ask", "bench", "forward",
                                            "cache-check", NULL};
    int hit = 0;
    for (int i = 0; argc > 1 && computing[i]; i++)
        hit |= !strcmp(argv[1], computing[i]);
    if (!hit || getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT"))
        return;
    /* the program's own path, not /proc/self/exe: the process keeps its
     * name ("docmint" in ps and /proc/PID/comm) */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0 || n >= (ssize_t)sizeof self - 1)
        return; /* no /proc: go on with the library's defaults */
    self[n] = '\0';
    if (setenv("OMP_WAIT_POLICY", DM_OMP_WAIT_POLICY, 0) != 0)
        return;
    execv(self, argv);
    unsetenv("OMP_WAIT_POLICY"); /* not executed: as if never set */
}

typedef struct Command {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} Command;

/* Weak references let a build leave a command out. */
#pragma weak cmd_ask
#pragma weak cmd_forward
#pragma weak cmd_analyze_item
#pragma weak cmd_tokenize
#pragma weak cmd_detokenize
#pragma weak cmd_init
#pragma weak cmd_bench
#pragma weak cmd_bench_dispatch
#pragma weak cmd_preprocess
#pragma weak cmd_run
#pragma weak cmd_worker
#pragma weak cmd_worker_key
#pragma weak cmd_synth
#pragma weak cmd_validate
#pragma weak cmd_export
#pragma weak cmd_eval
#pragma weak cmd_store
#pragma weak cmd_cache_check
#pragma weak cmd_prune
#pragma weak cmd_params
#pragma weak cmd_plan
#pragma weak cmd_compare

static const Command s_commands[] = {
    {"ask", cmd_ask, "MODEL_DIR IMAGE... -- QUESTION...   answer questions about pages (--json)"},
    {"forward", cmd_forward, "MODEL_DIR --in IN --out OUT   run the model on tensors, write every intermediate"},
    {"analyze-item", cmd_analyze_item, "MODEL_DIR --in IN --answer-start A --out OUT   every analysis of one item"},
    {"tokenize", cmd_tokenize, "DIR [--no-special]   JSON lines {\"text\"} on stdin -> {\"ids\",\"pieces\"}"},
    {"detokenize", cmd_detokenize, "DIR [--skip-special]   JSON lines {\"ids\"} on stdin -> {\"text\"}"},
    {"preprocess", cmd_preprocess, "MODEL_DIR IMAGE -o OUT.safetensors   image -> pixel_values"},
    {"run", cmd_run, "JOB.json [--quiet] [--retry-errors] [--force-new]   run a job (under mpirun: rank 0 coordinates, the others compute)"},
    {"worker", cmd_worker, "--keys OUTPUT/worker.keys [--connect ENDPOINT]   join a running job"},
    {"worker-key", cmd_worker_key, "FILE --name NAME   a worker's own keypair; prints its allow-list line"},
    {"init", cmd_init, "OUT_DIR --config CONFIG.json [--seed N]   write a random-weight checkpoint"},
    {"export", cmd_export, "STORE -o FILE [--format jsonl|csv|json]   results table (or --annotations: DocVQA submission)"},
    {"eval", cmd_eval, "--predictions FILE --annotations FILE   ANLS, overall and by question type"},
    {"synth", cmd_synth, "OUT_DIR [--docs N] [--seed S] [--kind K] [--corrupt] [--augment SPEC]   a synthetic DocVQA corpus"},
    {"validate", cmd_validate, "JOB.json [--corpus] [--print]   check a job file (--schema prints the schema)"},
    {"bench", cmd_bench, "MODEL_DIR   encoder/decoder timings against measured machine bounds"},
    {"bench-dispatch", cmd_bench_dispatch, "[--questions N] [--workers W]   coordinator overhead with no-op workers"},
    {"cache-check", cmd_cache_check, "TEACHER_DIR STORE [--student DIR] [--T X]   a logit store against the live teacher"},
    {"prune", cmd_prune, "MODEL_DIR --plan PLAN.json -o OUT_DIR   write a pruned student checkpoint"},
    {"params", cmd_params, "MODEL_DIR [--json]   parameters per module, as shares of the teacher's decoder"},
    {"plan", cmd_plan, "ANALYSIS_STORE --budget B [--method mint|enumerate] -o PLAN_DIR   a pruning plan from analyses"},
    {"compare", cmd_compare, "SPEC.json -o OUT_DIR   methods x budgets: plan or mask, distill, score; table and Pareto figure"},
    {"store", cmd_store, "stat|get|dump|import STORE [KEY]   look inside an output store"},
};
#define NCOMMANDS (int)(sizeof s_commands / sizeof *s_commands)

static void s_usage(FILE *f)
{
    fprintf(f, "docmint %s: Donut document question answering\n\n"
               "usage: docmint <command> [args]   (docmint <command> --help for its flags)\n"
               "       docmint --version\n\ncommands:\n",
            DOCMINT_VERSION);
    for (int i = 0; i < NCOMMANDS; i++)
        if (s_commands[i].fn)
            fprintf(f, "  %-14s %s\n", s_commands[i].name, s_commands[i].summary);
}

int main(int argc, char **argv)
{
    s_omp_defaults(argc, argv);
    if (argc < 2) {
        s_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        s_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V") || !strcmp(argv[1], "version")) {
        printf("docmint %s\n", DOCMINT_VERSION);
        return 0;
    }
    for (int i = 0; i < NCOMMANDS; i++)
        if (s_commands[i].fn && strcmp(argv[1], s_commands[i].name) == 0)
            return s_commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "docmint: unknown command '%s' (docmint --help lists them)\n", argv[1]);
    return 2;
}
