/*
 * floor_copy [-P N] [-U] SRC DST: the floor that mpcp's small-file figures are
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
 *
 * -U (built with liburing) is the same copy with the system calls batched
 * through io_uring: a folder's files go RING_FILES at a time, one statx
 * each in one submission, then for each small file a linked chain open,
 * create, read, write, close, close on direct descriptors (no fd table) in a
 * second, and a utimensat each (io_uring has no operation that sets times).
 * Seven system calls a file become one, and two per batch: what batching
 * could save a copier that makes one system call per operation.
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
#ifdef HAVE_LIBURING
#include <liburing.h>
#endif

struct ring_batch; /* -U's batch (built with liburing) */

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

/* One entry that is not a folder, as its type asks. */
static int copy_one(int sdir, int ddir, const char *name)
{
    struct stat st;
    if (fstatat(sdir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return fail("stat", name);
    if (S_ISREG(st.st_mode))
        return copy_reg(sdir, ddir, name, &st);
    if (S_ISLNK(st.st_mode))
        return copy_link(sdir, ddir, name, &st);
    return copy_node(ddir, name, &st);
}

static int copy_entries(const struct folder *f, struct ring_batch *b);

#ifdef HAVE_LIBURING
/* For calls that return their error rather than set errno (liburing's). */
static int fail_with(int err, const char *what, const char *name)
{
    errno = err;
    return fail(what, name);
}

#define RING_FILES 64          /* files in one batch */
#define RING_SMALL (64u << 10) /* files up to this size go through the ring */
#define RING_OPS   6           /* open, create, read, write, close, close */

struct ring_batch {
    struct io_uring ring;
    size_t n;
    char names[RING_FILES][NAME_MAX + 1];
    struct statx stx[RING_FILES];
    char *buf; /* RING_FILES x RING_SMALL */
};

static bool ring_small(const struct statx *x)
{
    return S_ISREG(x->stx_mode) && x->stx_size <= RING_SMALL &&
           x->stx_blocks * 512 >= x->stx_size; /* sparse ones keep their holes below */
}

/* Submits what is queued and checks each of the want completions. */
static int ring_wait(struct ring_batch *b, unsigned want)
{
    if (io_uring_submit_and_wait(&b->ring, want) < 0)
        return fail("io_uring_enter", "batch");
    for (unsigned seen = 0; seen < want; seen++) {
        struct io_uring_cqe *cqe;
        int rc = io_uring_wait_cqe(&b->ring, &cqe);
        if (rc < 0)
            return fail_with(-rc, "io_uring_wait_cqe", "batch");
        size_t i = (size_t)(cqe->user_data >> 3), op = cqe->user_data & 7;
        int res = cqe->res;
        io_uring_cqe_seen(&b->ring, cqe);
        bool data = op == 2 || op == 3; /* read, write: the whole file or a failure */
        if (res < 0 || (data && (uint64_t)res != b->stx[i].stx_size))
            return fail_with(res < 0 ? -res : EIO, "io_uring op on", b->names[i]);
    }
    return 0;
}

static struct io_uring_sqe *ring_sqe(struct ring_batch *b)
{
    return io_uring_get_sqe(&b->ring); /* the ring holds a whole batch */
}

/* After the prep (which clears both): what the completion names, and the link. */
static void ring_mark(struct io_uring_sqe *sqe, size_t i, unsigned op, unsigned flags)
{
    sqe->user_data = ((uint64_t)i << 3) | op;
    sqe->flags |= (unsigned char)flags;
}

static void ring_chain(struct ring_batch *b, size_t i, int sdir, int ddir)
{
    unsigned in = (unsigned)(2 * i), out = in + 1, size = (unsigned)b->stx[i].stx_size;
    char *buf = b->buf + i * RING_SMALL;
    struct io_uring_sqe *sqe = ring_sqe(b);
    io_uring_prep_openat_direct(sqe, sdir, b->names[i], O_RDONLY | O_NOFOLLOW, 0, in);
    ring_mark(sqe, i, 0, IOSQE_IO_LINK);
    sqe = ring_sqe(b);
    io_uring_prep_openat_direct(sqe, ddir, b->names[i], O_WRONLY | O_CREAT | O_EXCL,
                                b->stx[i].stx_mode & 07777, out);
    ring_mark(sqe, i, 1, IOSQE_IO_LINK);
    if (size > 0) {
        sqe = ring_sqe(b);
        io_uring_prep_read(sqe, (int)in, buf, size, 0);
        ring_mark(sqe, i, 2, IOSQE_IO_LINK | IOSQE_FIXED_FILE);
        sqe = ring_sqe(b);
        io_uring_prep_write(sqe, (int)out, buf, size, 0);
        ring_mark(sqe, i, 3, IOSQE_IO_LINK | IOSQE_FIXED_FILE);
    }
    sqe = ring_sqe(b);
    io_uring_prep_close_direct(sqe, in);
    ring_mark(sqe, i, 4, IOSQE_IO_LINK);
    sqe = ring_sqe(b);
    io_uring_prep_close_direct(sqe, out);
    ring_mark(sqe, i, 5, 0);
}

static unsigned ring_ops(const struct ring_batch *b, size_t i)
{
    return b->stx[i].stx_size > 0 ? RING_OPS : RING_OPS - 2;
}

static int ring_times(int ddir, const char *name, const struct statx *x)
{
    struct timespec t[2] = {{x->stx_atime.tv_sec, x->stx_atime.tv_nsec},
                            {x->stx_mtime.tv_sec, x->stx_mtime.tv_nsec}};
    return utimensat(ddir, name, t, AT_SYMLINK_NOFOLLOW) < 0 ? fail("utimensat", name) : 0;
}

/* The batch's files: small ones through the ring, the rest as without -U. */
static int ring_flush(struct ring_batch *b, int sdir, int ddir)
{
    if (b->n == 0)
        return 0;
    for (size_t i = 0; i < b->n; i++) {
        struct io_uring_sqe *sqe = ring_sqe(b);
        io_uring_prep_statx(sqe, sdir, b->names[i], AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS,
                            &b->stx[i]);
        ring_mark(sqe, i, 6, 0);
    }
    if (ring_wait(b, (unsigned)b->n) < 0)
        return -1;
    unsigned want = 0;
    for (size_t i = 0; i < b->n; i++)
        if (ring_small(&b->stx[i])) {
            ring_chain(b, i, sdir, ddir);
            want += ring_ops(b, i);
        }
    if (want > 0 && ring_wait(b, want) < 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < b->n && rc == 0; i++)
        rc = ring_small(&b->stx[i]) ? ring_times(ddir, b->names[i], &b->stx[i])
                                    : copy_one(sdir, ddir, b->names[i]);
    b->n = 0;
    return rc;
}

static int ring_share(size_t k, size_t n)
{
    static struct ring_batch b; /* one per process: each worker is a fork */
    /* The cheapest completions one issuer can ask for (6.1+); plain where refused. */
    unsigned flags =
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int rc = io_uring_queue_init(RING_FILES * RING_OPS, &b.ring, flags);
    if (rc == -EINVAL)
        rc = io_uring_queue_init(RING_FILES * RING_OPS, &b.ring, 0);
    if (rc == 0)
        rc = io_uring_register_files_sparse(&b.ring, 2 * RING_FILES);
    b.buf = malloc((size_t)RING_FILES * RING_SMALL);
    if (rc < 0 || !b.buf) {
        fail_with(rc < 0 ? -rc : ENOMEM, "io_uring", "setup");
        return 1;
    }
    for (size_t i = k; i < n_folders; i += n)
        if (copy_entries(&folders[i], &b) < 0)
            return 1;
    return 0;
}
#endif

static bool use_ring;

/* A folder's entries but folders: each at once, or (-U) in batches through b. */
static int copy_entries(const struct folder *f, struct ring_batch *b)
{
    int sdir = open_rel(src_top, f->rel), ddir = open_rel(dst_top, f->rel);
    DIR *d = sdir < 0 ? NULL : fdopendir(sdir);
    if (!d || ddir < 0)
        return fail("open", f->rel);
    int rc = 0;
    for (struct dirent *de = readdir(d); de && rc == 0; de = readdir(d)) {
        if (de->d_type == DT_DIR)
            continue;
#ifdef HAVE_LIBURING
        if (b) {
            snprintf(b->names[b->n++], sizeof b->names[0], "%s", de->d_name);
            rc = b->n == RING_FILES ? ring_flush(b, sdir, ddir) : 0;
            continue;
        }
#endif
        rc = copy_one(sdir, ddir, de->d_name);
    }
#ifdef HAVE_LIBURING
    if (b && rc == 0)
        rc = ring_flush(b, sdir, ddir);
#else
    (void)b;
#endif
    closedir(d);
    close(ddir);
    return rc;
}

/* Worker k of n: folders k, k + n, k + 2n... */
static int copy_share(size_t k, size_t n)
{
#ifdef HAVE_LIBURING
    if (use_ring)
        return ring_share(k, n);
#endif
    for (size_t i = k; i < n_folders; i += n)
        if (copy_entries(&folders[i], NULL) < 0)
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
    while ((opt = getopt(argc, argv, "P:U")) != -1) {
        if (opt == 'U') {
#ifndef HAVE_LIBURING
            fprintf(stderr, "floor_copy: -U: built without liburing\n");
            return 2;
#endif
            use_ring = true;
            continue;
        }
        long v = opt == 'P' ? strtol(optarg, NULL, 10) : 0;
        if (v < 1 || v > 64) {
            fprintf(stderr, "usage: floor_copy [-P 1..64] [-U] SRC DST\n");
            return 2;
        }
        n = (size_t)v;
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: floor_copy [-P 1..64] [-U] SRC DST\n");
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
