/* dm_fs.c - file copies and tree removal (dm_fs.h). */
#define _GNU_SOURCE /* nftw */
#include "common/dm_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int dm_copy_file(const char *src, const char *dst, DmErr *err)
{
    FILE *in = fopen(src, "rb");
    if (!in)
        return dm_err_errno(err, "%s: cannot open", src);
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return dm_err_errno(err, "%s: cannot create", dst);
    }
    char buf[1 << 16];
    size_t n;
    int bad = 0;
    while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0)
        bad = fwrite(buf, 1, n, out) != n;
    bad |= ferror(in);
    fclose(in);
    if (fclose(out) != 0)
        bad = 1;
    return bad ? dm_err_errno(err, "%s: copy to %s failed", src, dst) : 0;
}

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path) != 0 && errno != ENOENT;
}

int dm_rm_tree(const char *path)
{
    if (access(path, F_OK) != 0)
        return 0;
    return nftw(path, s_rm, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

int dm_mkdirs(const char *path, DmErr *err)
{
    char buf[4200];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return dm_err(err, "%.80s...: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return dm_err_errno(err, "%s: cannot create", buf);
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return dm_err_errno(err, "%s: cannot create", buf);
    return 0;
}

static const char *s_kind(mode_t m)
{
    if (S_ISFIFO(m))
        return "a named pipe (FIFO)";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    if (S_ISSOCK(m))
        return "a socket";
    if (S_ISDIR(m))
        return "a directory";
    return "not a plain file";
}

int dm_open_regular(const char *path, DmErr *err)
{
    if (!path || !*path)
        return dm_err(err, "empty file name");
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return dm_err_errno(err, "%s", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        dm_err_errno(err, "%s: cannot stat", path);
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return dm_err(err, "%s: %s, not a regular file (refused: reading it could block for ever)", path,
                      s_kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

FILE *dm_fopen_regular(const char *path, DmErr *err)
{
    int fd = dm_open_regular(path, err);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        dm_err_errno(err, "%s", path);
        close(fd);
    }
    return f;
}

int dm_check_regular(const char *path, DmErr *err)
{
    int fd = dm_open_regular(path, err);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}
