/* cmd_init.c - `docmint init`: a random-weight checkpoint of any Donut
 * config, with a working tokenizer and image processor settings, so the
 * demo and the benchmarks need no download. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "coordinator/cli/commands.h"
#include "worker/model/donut.h"
#include "worker/text/tokenizer.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint init OUT_DIR --config CONFIG.json [--seed N]\n"
               "  --config FILE   a Donut config.json (VisionEncoderDecoder: donut-swin + mbart);\n"
               "                  jobs/configs/ has the full-size and a tiny one\n"
               "  --seed N        random seed of the weights and the tokenizer (default 1)\n");
}

static int s_write_preprocessor(const char *dir, const DonutConfig *c, DmErr *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return dm_err_errno(err, "%s: cannot create", path);
    /* The DocVQA processor's settings, sized to the encoder's input. */
    fprintf(f,
            "{\n  \"do_align_long_axis\": false,\n  \"do_normalize\": true,\n"
            "  \"do_pad\": true,\n  \"do_rescale\": true,\n  \"do_resize\": true,\n"
            "  \"do_thumbnail\": true,\n  \"image_mean\": [0.5, 0.5, 0.5],\n"
            "  \"image_processor_type\": \"DonutImageProcessor\",\n"
            "  \"image_std\": [0.5, 0.5, 0.5],\n  \"processor_class\": \"DonutProcessor\",\n"
            "  \"resample\": 2,\n  \"rescale_factor\": 0.00392156862745098,\n"
            "  \"size\": {\"height\": %d, \"width\": %d}\n}\n",
            c->enc.image_h, c->enc.image_w);
    if (fclose(f) != 0)
        return dm_err_errno(err, "%s: write failed", path);
    return 0;
}

int cmd_init(int argc, char **argv)
{
    const char *dir = NULL, *config = NULL;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            config = argv[++i];
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            char *end;
            seed = strtoull(argv[++i], &end, 10);
            if (*end) {
                fprintf(stderr, "docmint init: --seed %s: expected an integer\n", argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint init: unknown or incomplete option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "docmint init: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir || !config) {
        fprintf(stderr, "docmint init: needs OUT_DIR and --config (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        dm_err_errno(&err, "%s: cannot create folder", dir);
        goto fail;
    }
    if (donut_write_random(config, dir, seed, &err))
        goto fail;
    DonutModel *m = NULL;
    if (donut_load(dir, &m, &err))
        goto fail;
    int rc = tokenizer_write_synthetic(dir, m->cfg.dec.vocab, seed, &err) ||
             s_write_preprocessor(dir, &m->cfg, &err);
    donut_free(&m);
    if (rc)
        goto fail;
    printf("%s: random-weight Donut checkpoint written (seed %llu)\n", dir, seed);
    return 0;
fail:
    fprintf(stderr, "docmint init: %s\n", err.msg);
    return 1;
}
