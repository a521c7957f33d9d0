/*
 * cfr_copy SRC DST: the floor that mpcp's large-file path is measured
 * against in bench/copy.py: one process, folders made with mkdir, each
 * regular file copied with copy_file_range in steps of 1 GiB (mpcp's step)
 * until it reports EOF. No metadata, no temporaries, no fallback: anything
 * unexpected (another file type, an error) ends it with status 1, so that a
 * figure is never taken from a partial copy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STEP ((size_t)1 << 30)

static const char *src_root, *dst_root;

static int fail(const char *what, const char *name)
{
    fprintf(stderr, "cfr_copy: %s %s: %m\n", what, name); /* %m: errno's text */
    return -1;
}

static int copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0)
        return fail("open", from);
    int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return fail("create", to);
    }
    ssize_t n;
    do
        n = copy_file_range(in, NULL, out, NULL, STEP, 0);
    while (n > 0);
    int rc = n < 0 ? fail("copy_file_range", from) : 0;
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = fail("close", to);
    return rc;
}

/* nftw's callback, parents before children: the same path below DST. */
static int copy_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)ftw;
    char to[PATH_MAX];
    if (snprintf(to, sizeof to, "%s%s", dst_root, path + strlen(src_root)) >= (int)sizeof to) {
        errno = ENAMETOOLONG;
        return fail("copy", path);
    }
    if (type == FTW_D)
        return mkdir(to, 0755) < 0 ? fail("mkdir", to) : 0;
    if (type == FTW_F && S_ISREG(st->st_mode))
        return copy_file(path, to);
    errno = ENOTSUP;
    return fail("copy", path);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: cfr_copy SRC DST\n");
        return 2;
    }
    src_root = argv[1];
    dst_root = argv[2];
    return nftw(src_root, copy_entry, 64, FTW_PHYS) == 0 ? 0 : 1;
}
