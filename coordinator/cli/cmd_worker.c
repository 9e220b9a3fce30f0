/* cmd_worker.c - `docmint worker --keys FILE [--connect ENDPOINT]`: join a
 * running job from outside mpirun.  FILE is the job's OUTPUT/worker.keys
 * (written by `docmint run`, mode 0600): the coordinator's endpoint, its
 * CURVE public key, the job's client keypair and the model.  The worker
 * computes shards until the coordinator says there is no more work, or
 * gives up when the coordinator has been silent for --give-up seconds.
 * With --key NAME.key it connects with its own keypair instead (a job with
 * an allow-list, job key "worker_keys"; its keys file has no client key).
 *
 * `docmint worker-key FILE --name NAME`: make such a keypair (FILE, mode
 * 0600) and print the allow-list line "NAME PUBLIC_KEY". */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "kernels/cpu/kern.h"
#include "worker/stages/worker_loop.h"
#include "worker/analyze/stage_analyze.h"


/* The stages of worker/analyze, which worker_run cannot name itself. */
static const WorkerStageOps *const s_more_stages[] = {&analyze_stage_ops, NULL};
#define PREFIX "docmint worker"

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static int s_should_stop(void *ctx)
{
    (void)ctx;
    return s_stop;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint worker --keys FILE [--connect ENDPOINT] [options]\n"
               "  joins a running `docmint run` job as one more worker\n"
               "  --keys FILE         the job's OUTPUT/worker.keys (required)\n"
               "  --key FILE          this worker's own keypair (docmint worker-key), for a job\n"
               "                      with an allow-list of keys (job key worker_keys)\n"
               "  --connect ENDPOINT  coordinator address, e.g. tcp://host:port\n"
               "                      (default: the endpoint in the keys file)\n"
               "  --threads N         compute threads (default: the job's \"threads\", else the CPUs\n"
               "                      this process may use)\n"
               "  --give-up S         exit after S seconds without word from the coordinator\n"
               "                      (default 60)\n"
               "  --name NAME         how the coordinator's messages call this worker\n"
               "                      (default host:pid)\n"
               "  --verbose           a line per shard on stderr\n");
}

static int s_num(const char *flag, const char *s, double min, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || !(v >= min) || v > 1e9) {
        fprintf(stderr, "%s: %s %s: expected a number >= %g (see --help)\n", PREFIX, flag, s, min);
        return -1;
    }
    *out = v;
    return 0;
}

int cmd_worker_key(int argc, char **argv)
{
    const char *path = NULL, *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: docmint worker-key FILE --name NAME\n"
                   "  makes a CURVE keypair for one outside worker in FILE (mode 0600; an existing\n"
                   "  file is not overwritten) and prints the line \"NAME PUBLIC_KEY\" for the job's\n"
                   "  worker_keys allow-list; the worker joins with\n"
                   "  docmint worker --keys OUTPUT/worker.keys --key FILE\n"
                   "  --name NAME   how the coordinator names this key: 1 to 64 of [A-Za-z0-9._-]\n"
                   "                (required)\n");
            return 0;
        } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
            name = argv[++i];
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            fprintf(stderr, "docmint worker-key: unknown or incomplete option %s (see --help)\n",
                    argv[i]);
            return 2;
        }
    }
    if (!path || !name) {
        fprintf(stderr, "docmint worker-key: needs FILE and --name NAME (see --help)\n");
        return 2;
    }
    char pub[WIRE_KEY_CHARS + 1];
    DmErr err = {{0}};
    if (wire_key_file_new(path, name, pub, &err)) {
        fprintf(stderr, "docmint worker-key: %s\n", err.msg);
        return 1;
    }
    printf("%s %s\n", name, pub);
    return 0;
}

int cmd_worker(int argc, char **argv)
{
    const char *keys = NULL, *endpoint = NULL, *name = NULL, *key = NULL;
    double threads = 0, give_up = 60;
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--keys") && i + 1 < argc) {
            keys = argv[++i];
        } else if (!strcmp(argv[i], "--key") && i + 1 < argc) {
            key = argv[++i];
        } else if (!strcmp(argv[i], "--connect") && i + 1 < argc) {
            endpoint = argv[++i];
        } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
            name = argv[++i];
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            if (s_num("--threads", argv[++i], 1, &threads))
                return 2;
        } else if (!strcmp(argv[i], "--give-up") && i + 1 < argc) {
            if (s_num("--give-up", argv[++i], 0.1, &give_up))
                return 2;
        } else if (!strcmp(argv[i], "--verbose")) {
            verbose = 1;
        } else {
            fprintf(stderr, "%s: unknown or incomplete option %s (see --help)\n", PREFIX, argv[i]);
            return 2;
        }
    }
    if (!keys) {
        fprintf(stderr, "%s: needs --keys FILE (the job's OUTPUT/worker.keys; see --help)\n",
                PREFIX);
        return 2;
    }
    if (endpoint && strncmp(endpoint, "tcp://", 6) && strncmp(endpoint, "ipc://", 6)) {
        fprintf(stderr, "%s: --connect %s: expected tcp://HOST:PORT or ipc://PATH\n", PREFIX,
                endpoint);
        return 2;
    }
    DmErr err = {{0}};
    WireJoin join;
    if (wire_join_read(keys, &join, &err)) {
        fprintf(stderr, "%s: %s\n", PREFIX, err.msg);
        return 1;
    }
    if (key) {
        char kname[65];
        if (wire_key_file_read(key, kname, join.client_public, join.client_secret, &err)) {
            fprintf(stderr, "%s: %s\n", PREFIX, err.msg);
            return 1;
        }
    } else if (!join.client_public[0]) {
        fprintf(stderr, "%s: %s: this job admits outside workers by their own keys: pass --key "
                        "FILE (made by docmint worker-key, listed in the job's worker_keys)\n",
                PREFIX, keys);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char host[192];
    wire_process_name(host, sizeof host);
    WorkerStats st = {0};
    WorkerOpts o = {0};
    o.stages = s_more_stages;
    o.join = &join;
    o.endpoint = endpoint;
    o.name = name ? name : host;
    o.log_prefix = PREFIX;
    o.threads = threads > 0 ? (int)threads : join.threads > 0 ? join.threads : kern_cpu_count();
    o.give_up_seconds = give_up;
    o.verbose = verbose;
    o.should_stop = s_should_stop;
    o.stats = &st;
    int rc = worker_run(&o, &err);
    memset(&join, 0, sizeof join);
    if (rc) {
        fprintf(stderr, "%s: %s\n", PREFIX, err.msg);
        return 1;
    }
    if (verbose)
        fprintf(stderr, "%s: done: %llu shards, %llu answers, %llu errors\n", PREFIX,
                (unsigned long long)st.shards, (unsigned long long)st.answers,
                (unsigned long long)st.errors);
    return s_stop ? 130 : 0;
}
