/* augment.h - seeded, deterministic augmentation of page images: a small
 * rotation and scaling about the page centre (white comes in at the
 * edges), a Gaussian blur, and JPEG compression noise.  For synthetic
 * pages (`docmint synth --augment`) and for training on any page.
 *
 * Each call draws its parameters from its seed alone: the angle uniformly
 * in [-rotate, rotate] degrees, the scale in [1 - scale, 1 + scale], the
 * blur sigma in [0, blur] pixels (none below 0.3), the JPEG quality in
 * [jpeg, 95] (no JPEG when jpeg is 0).  The same image, spec and seed give
 * the same bytes; the page keeps its size.  Rotation, scaling (bilinear)
 * and blur (separable Gaussian, edges clamped) are plain C; JPEG goes
 * through libvips. */
#ifndef DM_AUGMENT_H
#define DM_AUGMENT_H

#include <stdint.h>

#include "common/dm_error.h"
#include "worker/image/image.h"

typedef struct ImageAugment {
    double rotate; /* largest |angle|, degrees, 0..45 */
    double scale;  /* largest relative change of size, 0..0.5 */
    double blur;   /* largest Gaussian sigma, pixels, 0..10 */
    int jpeg;      /* lowest JPEG quality 1..95, 0: no JPEG */
} ImageAugment;

/* The parameters one seed draws. */
typedef struct ImageAugmentDraw {
    double angle, scale, sigma;
    int quality; /* 0: none */
} ImageAugmentDraw;

/* "default" (rotate=1.5,scale=0.04,blur=0.8,jpeg=50), "none", or a comma
 * list of rotate=DEG, scale=F, blur=SIGMA, jpeg=Q (missing ones are 0).
 * Errors name the bad item. */
int image_augment_parse(const char *spec, ImageAugment *a, DmErr *err);

/* Whether any augmentation is asked for. */
int image_augment_active(const ImageAugment *a);

/* The parameters seed gives. */
void image_augment_draw(const ImageAugment *a, uint64_t seed, ImageAugmentDraw *d);

/* Augment img in place. */
int image_augment(DmImage *img, const ImageAugment *a, uint64_t seed, DmErr *err);

/* The same on h rows of w pixels of 1 (grey) or 3 (RGB) interleaved bytes. */
int image_augment_pixels(uint8_t *px, int w, int h, int bands, const ImageAugment *a, uint64_t seed, DmErr *err);

#endif
