/* dm_fs.h - file-system chores shared by the commands that write model
 * folders (prune, the distill checkpoints). */
#ifndef DM_FS_H
#define DM_FS_H

#include <stdio.h>

#include "common/dm_error.h"

/* Copy the file src to dst (created or truncated). */
int dm_copy_file(const char *src, const char *dst, DmErr *err);

/* Remove path and everything below it (no links followed); a missing path
 * is fine.  0 or -1 (errno set). */
int dm_rm_tree(const char *path);

/* Create path and any missing parent folders (mode 0755); existing ones
 * are fine. */
int dm_mkdirs(const char *path, DmErr *err);

/* Open path for reading only when it is a regular file (after links): a
 * FIFO, device or socket is an error naming the file and what it is, never
 * a read that blocks.  The open itself does not block (O_NONBLOCK, cleared
 * once the file is known to be regular).  Returns the descriptor or -1. */
int dm_open_regular(const char *path, DmErr *err);
/* The same as a stdio stream ("rb"); NULL with err on failure. */
FILE *dm_fopen_regular(const char *path, DmErr *err);
/* Only the check: 0 when path is a regular file, else -1 with err. */
int dm_check_regular(const char *path, DmErr *err);

#endif
