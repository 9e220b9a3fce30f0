/* tensorfile.h - read-only view of a file of named tensors.
 *
 * Two on-disk formats open into the same view: safetensors (mmap, zero copy)
 * and PyTorch's zip checkpoint (`pytorch_model.bin`, read without Python).
 * Tensor data pointers stay valid until tensorfile_close. */
#ifndef DM_TENSORFILE_H
#define DM_TENSORFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"

typedef enum DmDtype {
    DM_F32, DM_F16, DM_BF16, DM_F64,
    DM_I64, DM_I32, DM_I16, DM_I8,
    DM_U8, DM_U16, DM_U32, DM_U64, DM_BOOL,
    DM_DTYPE_COUNT
} DmDtype;

#define DM_MAX_DIMS 8

typedef struct DmTensor {
    char *name;
    DmDtype dtype;
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    size_t nbytes;
    const void *data; /* little-endian, packed, row-major */
} DmTensor;

typedef struct TensorFile {
    char *path;
    int n;
    DmTensor *t;
    void *map;        /* whole file mapped read-only */
    size_t map_len;
    void *priv;       /* format-specific owned data */
} TensorFile;

size_t dm_dtype_size(DmDtype dt);
const char *dm_dtype_name(DmDtype dt);           /* safetensors spelling: "F32" */
int dm_dtype_parse(const char *s, DmDtype *out);  /* 0 or -1 */
int64_t dm_tensor_numel(const DmTensor *t);

/* Open by content: a zip file is read as a PyTorch checkpoint, anything else
 * as safetensors. */
int tensorfile_open(const char *path, TensorFile **out, DmErr *err);
int safetensors_open(const char *path, TensorFile **out, DmErr *err);
int torchbin_open(const char *path, TensorFile **out, DmErr *err);

const DmTensor *tensorfile_find(const TensorFile *tf, const char *name);
void tensorfile_close(TensorFile **tf);

/* Convert a floating tensor (F32, F16, BF16, F64) to float32 in dst
 * (numel floats).  Returns -1 for a non-float dtype. */
int dm_tensor_to_f32(const DmTensor *t, float *dst, DmErr *err);
/* Convert an integer tensor (I64, I32, I16, I8, U8, U16, U32) to int64. */
int dm_tensor_to_i64(const DmTensor *t, int64_t *dst, DmErr *err);

float dm_f16_to_f32(uint16_t h);
uint16_t dm_f32_to_f16(float f);     /* round to nearest even */
float dm_bf16_to_f32(uint16_t h);
uint16_t dm_f32_to_bf16(float f);    /* round to nearest even */

/* safetensors writer: collect tensors (data copied), then save once. */
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
void st_writer_add(StWriter *w, const char *name, DmDtype dt, int ndim, const int64_t *shape,
                   const void *data);
/* Convenience for float32. */
void st_writer_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape,
                       const float *data);
/* Optional "__metadata__" string entries. */
void st_writer_meta(StWriter *w, const char *key, const char *value);
/* Writes to path.tmp then renames, so a crash never leaves a half file. */
int st_writer_save(StWriter *w, const char *path, DmErr *err);
void st_writer_free(StWriter **w);

#endif
