/* analyze_plot.h - heat maps of the analyses (docs/analyze.md) as PNG files
 * drawn with libvips: a grid of cells coloured by value, the value (or a
 * given text, such as a token) written in each cell, labelled rows and
 * columns, a title and a line saying what the colour means. */
#ifndef DM_ANALYZE_PLOT_H
#define DM_ANALYZE_PLOT_H

#include <stdint.h>

#include "common/dm_error.h"

typedef struct HeatMap {
    const char *title;
    const char *legend;          /* what the colour and the numbers mean */
    int rows, cols;
    const char *const *row_labels; /* [rows] */
    const char *const *col_labels; /* [cols] */
    const double *values;        /* [rows, cols]; NaN: an empty (grey) cell */
    const char *const *cell_text; /* [rows, cols] or NULL: the value, as fmt */
    const char *fmt;             /* e.g. "%+.2f" */
    int diverging;               /* blue below 0, red above (scale symmetric);
                                  * else white to blue from the smallest value
                                  * to the largest */
} HeatMap;

/* Write png (via a temporary file and a rename). */
int analyze_heatmap(const HeatMap *h, const char *png, DmErr *err);

/* Results by name, as an item's analysis writes them (analyze.h's sink),
 * kept as doubles for the figures. */
typedef struct AnTensor {
    char name[96];
    int ndim;
    int64_t shape[3];
    double *v;
} AnTensor;

typedef struct AnTensors {
    AnTensor *t;
    int n, cap;
} AnTensors;

int an_tensors_add(AnTensors *ts, const char *name, int ndim, const int64_t *shape,
                   const float *f, const int64_t *i);
const AnTensor *an_tensors_find(const AnTensors *ts, const char *name);
void an_tensors_free(AnTensors *ts);

/* The figures of one item into dir (docs/analyze.md lists them):
 * skip.png, reproject.png, sa_entropy.png, ca_variance.png,
 * head_ablation.png, lens.png, and with a corrupted page patch_head.png
 * and atp_head.png.  ids / answer_start label the lens's positions; tok
 * (may be NULL: ids are written) names the tokens. */
struct Tokenizer;
int analyze_figures(const AnTensors *ts, const int32_t *ids, int T, int answer_start,
                    const struct Tokenizer *tok, const char *dir, DmErr *err);

/* Fig. 4 of the paper: the page (pixels [3, H, W] as the encoder saw them,
 * shown min-max scaled) with each encoder token's patch (a grid of gh x gw
 * tokens over the page) coloured when its transcription entropy is among
 * the lowest quarter of the page's, and its top token written on it. */
int analyze_transcribe_overlay(const float *pixels, int H, int W, int gh, int gw,
                               const int64_t *top1, const double *entropy,
                               const struct Tokenizer *tok, const char *png, DmErr *err);

#endif
