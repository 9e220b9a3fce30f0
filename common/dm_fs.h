/* dm_fs.h - file-system chores shared by the commands that write model
 * folders (prune, the distill checkpoints). */
#ifndef DM_FS_H
#define DM_FS_H

#include "common/dm_error.h"

/* Copy the file src to dst (created or truncated). */
int dm_copy_file(const char *src, const char *dst, DmErr *err);

/* Remove path and everything below it (no links followed); a missing path
 * is fine.  0 or -1 (errno set). */
int dm_rm_tree(const char *path);

/* Create path and any missing parent folders (mode 0755); existing ones
 * are fine. */
int dm_mkdirs(const char *path, DmErr *err);

#endif
