/* torchbin.c - placeholder until the PyTorch zip reader lands. */
#include "tensorfile.h"

int torchbin_open(const char *path, TensorFile **out, DmErr *err)
{
    *out = NULL;
    return dm_err(err, "%s: PyTorch checkpoints are not readable yet", path);
}
