/*
 * floor_copy [-P N] SRC DST: the floor that mpcp's small-file figures are
 * measured against in bench/copy.py. The least a copier does for cp -a's
 * result on plain trees: one process lists SRC and makes every folder, then
 * N processes (default 1) take the folders in turns, fixed in advance (no
 * coordination at all), and copy each entry with the fewest system calls:
 * fstatat, openat, openat(O_CREAT|O_EXCL, final mode), copy_file_range up to
 * the size, futimens, close, close (symlinks: readlinkat, symlinkat,
 * utimensat; other nodes: mknodat, utimensat; holes kept with SEEK_DATA).
 * No temporaries, no xattrs, no owners, hard links copied as
 * files; folders' modes and times at the end. Anything unexpected ends it
 * with status 1, so that a figure is never taken from a partial copy.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct folder {
    char *rel; /* "" for the top */
    struct stat st;
};

static struct folder *folders;
static size_t n_folders, cap_folders;
static int src_top, dst_top;

static int fail(const char *what, const char *name)
{
    fprintf(stderr, "floor_copy: %s %s: %m\n", what, name); /* %m: errno's text */
    return -1;
}

static int add_folder(const char *rel, const struct stat *st)
{
    if (n_folders == cap_folders) {
        cap_folders = cap_folders ? cap_folders * 2 : 256;
        folders = realloc(folders, cap_folders * sizeof *folders);
        if (!folders)
            return fail("list", rel);
    }
    folders[n_folders].rel = strdup(rel);
    folders[n_folders].st = *st;
    return folders[n_folders++].rel ? 0 : fail("list", rel);
}

static int open_rel(int top, const char *rel)
{
    return openat(top, *rel ? rel : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Lists the folders below rel (breadth first: folders appends as it goes) and makes them. */
static int list_folders(void)
{
    for (size_t i = 0; i < n_folders; i++) {
        int fd = open_rel(src_top, folders[i].rel);
        DIR *d = fd < 0 ? NULL : fdopendir(fd);
        if (!d)
            return fail("open", folders[i].rel);
        for (struct dirent *de = readdir(d); de; de = readdir(d)) {
            if (de->d_type != DT_DIR || !strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            char rel[PATH_MAX];
            snprintf(rel, sizeof rel, "%s%s%s", folders[i].rel, *folders[i].rel ? "/" : "",
                     de->d_name);
            struct stat st;
            if (fstatat(src_top, rel, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return fail("stat", rel);
            if (mkdirat(dst_top, rel, 0700) < 0 || add_folder(rel, &st) < 0)
                return fail("mkdir", rel);
        }
        closedir(d);
    }
    return 0;
}

/* Copies the data: holes stay holes (SEEK_DATA/SEEK_HOLE) where the file has any. */
static int copy_data(int in, int out, const struct stat *st, const char *name)
{
    bool sparse = st->st_blocks * 512 < st->st_size;
    if (sparse && ftruncate(out, st->st_size) < 0)
        return fail("ftruncate", name);
    off_t off = 0;
    while (off < st->st_size) {
        off_t end = st->st_size;
        if (sparse) {
            off = lseek(in, off, SEEK_DATA);
            if (off < 0)
                return errno == ENXIO ? 0 : fail("lseek", name);
            end = lseek(in, off, SEEK_HOLE);
        }
        for (off_t at = off; at < end;) {
            loff_t from = at, to = at;
            ssize_t n = copy_file_range(in, &from, out, &to, (size_t)(end - at), 0);
            if (n <= 0)
                return fail("copy_file_range", name);
            at += n;
        }
        off = end;
    }
    return 0;
}

static int copy_reg(int sdir, int ddir, const char *name, const struct stat *st)
{
    int in = openat(sdir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0)
        return fail("open", name);
    int out = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st->st_mode & 07777);
    if (out < 0) {
        close(in);
        return fail("create", name);
    }
    int rc = copy_data(in, out, st, name);
    struct timespec t[2] = {st->st_atim, st->st_mtim};
    if (rc == 0 && futimens(out, t) < 0)
        rc = fail("futimens", name);
    close(in);
    close(out);
    return rc;
}

/* Fifos, sockets and devices. */
static int copy_node(int ddir, const char *name, const struct stat *st)
{
    struct timespec t[2] = {st->st_atim, st->st_mtim};
    if (mknodat(ddir, name, st->st_mode, st->st_rdev) < 0 ||
        utimensat(ddir, name, t, AT_SYMLINK_NOFOLLOW) < 0)
        return fail("mknod", name);
    return 0;
}

static int copy_link(int sdir, int ddir, const char *name, const struct stat *st)
{
    char target[PATH_MAX];
    ssize_t n = readlinkat(sdir, name, target, sizeof target - 1);
    if (n < 0)
        return fail("readlink", name);
    target[n] = '\0';
    struct timespec t[2] = {st->st_atim, st->st_mtim};
    if (symlinkat(target, ddir, name) < 0 || utimensat(ddir, name, t, AT_SYMLINK_NOFOLLOW) < 0)
        return fail("symlink", name);
    return 0;
}

static int copy_entries(const struct folder *f)
{
    int sdir = open_rel(src_top, f->rel), ddir = open_rel(dst_top, f->rel);
    DIR *d = sdir < 0 ? NULL : fdopendir(sdir);
    if (!d || ddir < 0)
        return fail("open", f->rel);
    int rc = 0;
    for (struct dirent *de = readdir(d); de && rc == 0; de = readdir(d)) {
        if (de->d_type == DT_DIR)
            continue;
        struct stat st;
        if (fstatat(sdir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            rc = fail("stat", de->d_name);
        else if (S_ISREG(st.st_mode))
            rc = copy_reg(sdir, ddir, de->d_name, &st);
        else if (S_ISLNK(st.st_mode))
            rc = copy_link(sdir, ddir, de->d_name, &st);
        else
            rc = copy_node(ddir, de->d_name, &st);
    }
    closedir(d);
    close(ddir);
    return rc;
}

/* Worker k of n: folders k, k + n, k + 2n... */
static int copy_share(size_t k, size_t n)
{
    for (size_t i = k; i < n_folders; i += n)
        if (copy_entries(&folders[i]) < 0)
            return 1;
    return 0;
}

static int run_workers(size_t n)
{
    if (n == 1)
        return copy_share(0, 1);
    pid_t pids[64];
    for (size_t k = 0; k < n; k++) {
        pids[k] = fork();
        if (pids[k] < 0)
            return fail("fork", "worker");
        if (pids[k] == 0)
            _exit(copy_share(k, n));
    }
    int rc = 0;
    for (size_t k = 0; k < n; k++) {
        int status;
        if (waitpid(pids[k], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
            rc = 1;
    }
    return rc;
}

/* Deepest first, so that no folder's times change after they are set. */
static int folder_metadata(void)
{
    for (size_t i = n_folders; i-- > 0;) {
        const char *rel = *folders[i].rel ? folders[i].rel : ".";
        struct timespec t[2] = {folders[i].st.st_atim, folders[i].st.st_mtim};
        if (fchmodat(dst_top, rel, folders[i].st.st_mode & 07777, 0) < 0 ||
            utimensat(dst_top, rel, t, 0) < 0)
            return fail("metadata", rel);
    }
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = 1;
    int opt;
    while ((opt = getopt(argc, argv, "P:")) != -1) {
        long v = opt == 'P' ? strtol(optarg, NULL, 10) : 0;
        if (v < 1 || v > 64) {
            fprintf(stderr, "usage: floor_copy [-P 1..64] SRC DST\n");
            return 2;
        }
        n = (size_t)v;
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: floor_copy [-P 1..64] SRC DST\n");
        return 2;
    }
    struct stat st;
    src_top = open(argv[optind], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (src_top < 0 || fstat(src_top, &st) < 0) {
        fail("open", argv[optind]);
        return 1;
    }
    if (mkdir(argv[optind + 1], 0700) < 0) {
        fail("mkdir", argv[optind + 1]);
        return 1;
    }
    dst_top = open(argv[optind + 1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dst_top < 0 || add_folder("", &st) < 0 || list_folders() < 0)
        return 1;
    if (run_workers(n) != 0)
        return 1;
    return folder_metadata() < 0 ? 1 : 0;
}
