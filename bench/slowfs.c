/*
 * slowfs: a FUSE passthrough of a local folder that waits a fixed time
 * before it answers each request, as a network filesystem waits for a round
 * trip. Requests are served by many threads at once, so that parallel
 * requests overlap as they do over a network: one request costs the delay,
 * N requests in flight cost about the delay too.
 *
 *   slowfs SOURCE MOUNTPOINT [--delay-us=N] [FUSE options, e.g. -f]
 *
 * What the kernel may cache is chosen to look like NFS with short
 * attribute caching (actimeo=1): names and attributes are trusted for 1 s,
 * a missing name is not cached, file data is not kept across opens (each
 * open starts with an empty page cache for the file, as NFS's close-to-open
 * consistency asks for), and writes go straight to the daemon (no writeback
 * cache). So a copier that reads or writes a file pays a round trip per
 * request, and a stat right after a lookup is free, as on NFS.
 *
 * Used by bench/slowfs.py and tests/test_mpcp_slowfs.c; built only when
 * libfuse3 is found.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static int base_fd = -1;        /* the folder served */
static long delay_ns = 1000000; /* per request */

/* The round trip every request pays before it is served. */
static void round_trip(void)
{
    struct timespec ts = {delay_ns / 1000000000, delay_ns % 1000000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* FUSE paths start with '/': the same path from the served folder. */
static const char *rel(const char *path)
{
    return path[1] ? path + 1 : ".";
}

static int neg(int rc)
{
    return rc < 0 ? -errno : rc;
}

static void *sf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    cfg->use_ino = 1; /* inode numbers pass through: hard links stay visible */
    cfg->entry_timeout = 1.0;
    cfg->attr_timeout = 1.0;
    cfg->negative_timeout = 0;
    cfg->kernel_cache = 0;
    cfg->auto_cache = 0;
    cfg->nullpath_ok = 0;
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
    /* Readahead and releases are background requests: as many in flight as an NFS slot table. */
    conn->max_background = 128;
    conn->congestion_threshold = 96;
    return NULL;
}

static int sf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    round_trip();
    if (fi)
        return neg(fstat((int)fi->fh, st));
    return neg(fstatat(base_fd, rel(path), st, AT_SYMLINK_NOFOLLOW));
}

static int sf_readlink(const char *path, char *buf, size_t size)
{
    round_trip();
    ssize_t n = readlinkat(base_fd, rel(path), buf, size - 1);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    return 0;
}

static int sf_opendir(const char *path, struct fuse_file_info *fi)
{
    round_trip();
    int fd = openat(base_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int err = errno;
        close(fd);
        return -err;
    }
    fi->fh = (uint64_t)(uintptr_t)d;
    return 0;
}

/* One request answers the whole folder (a READDIR reply holds many names). */
static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)path;
    (void)flags;
    round_trip();
    DIR *d = (DIR *)(uintptr_t)fi->fh;
    if (off == 0)
        rewinddir(d);
    else
        seekdir(d, off);
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e)
            return errno ? -errno : 0;
        struct stat st;
        memset(&st, 0, sizeof st);
        st.st_ino = e->d_ino;
        st.st_mode = (mode_t)DTTOIF(e->d_type);
        if (fill(buf, e->d_name, &st, telldir(d), 0))
            return 0;
    }
}

static int sf_releasedir(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    closedir((DIR *)(uintptr_t)fi->fh);
    return 0;
}

static int sf_mknod(const char *path, mode_t mode, dev_t rdev)
{
    round_trip();
    return neg(mknodat(base_fd, rel(path), mode, rdev));
}

static int sf_mkdir(const char *path, mode_t mode)
{
    round_trip();
    return neg(mkdirat(base_fd, rel(path), mode));
}

static int sf_unlink(const char *path)
{
    round_trip();
    return neg(unlinkat(base_fd, rel(path), 0));
}

static int sf_rmdir(const char *path)
{
    round_trip();
    return neg(unlinkat(base_fd, rel(path), AT_REMOVEDIR));
}

static int sf_symlink(const char *target, const char *path)
{
    round_trip();
    return neg(symlinkat(target, base_fd, rel(path)));
}

static int sf_rename(const char *from, const char *to, unsigned int flags)
{
    round_trip();
    return neg(renameat2(base_fd, rel(from), base_fd, rel(to), flags));
}

static int sf_link(const char *from, const char *to)
{
    round_trip();
    return neg(linkat(base_fd, rel(from), base_fd, rel(to), 0));
}

static int sf_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    round_trip();
    if (fi)
        return neg(fchmod((int)fi->fh, mode));
    return neg(fchmodat(base_fd, rel(path), mode, 0));
}

static int sf_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    round_trip();
    if (fi)
        return neg(fchown((int)fi->fh, uid, gid));
    return neg(fchownat(base_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int sf_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    round_trip();
    if (fi)
        return neg(ftruncate((int)fi->fh, size));
    int fd = openat(base_fd, rel(path), O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = neg(ftruncate(fd, size));
    close(fd);
    return rc;
}

static int sf_utimens(const char *path, const struct timespec ts[2], struct fuse_file_info *fi)
{
    round_trip();
    if (fi)
        return neg(futimens((int)fi->fh, ts));
    return neg(utimensat(base_fd, rel(path), ts, AT_SYMLINK_NOFOLLOW));
}

static int sf_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    round_trip();
    int fd = openat(base_fd, rel(path), fi->flags | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi)
{
    round_trip();
    int fd = openat(base_fd, rel(path), fi->flags | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    round_trip();
    return neg((int)pread((int)fi->fh, buf, size, off));
}

static int sf_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)path;
    round_trip();
    return neg((int)pwrite((int)fi->fh, buf, size, off));
}

static int sf_statfs(const char *path, struct statvfs *st)
{
    round_trip();
    int fd = openat(base_fd, rel(path), O_RDONLY | O_CLOEXEC | O_PATH);
    if (fd < 0)
        return -errno;
    int rc = neg(fstatvfs(fd, st));
    close(fd);
    return rc;
}

static int sf_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    round_trip(); /* a close is a round trip on NFS too (it flushes) */
    close((int)fi->fh);
    return 0;
}

static int sf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    round_trip();
    return neg(datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh));
}

static int sf_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
    (void)path;
    round_trip();
    return neg(fallocate((int)fi->fh, mode, off, len));
}

static off_t sf_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
    (void)path;
    round_trip();
    off_t at = lseek((int)fi->fh, off, whence);
    return at < 0 ? -errno : at;
}

/* Extended attributes by a descriptor of the file itself (O_PATH cannot get them). */
static char *proc_path(const char *path, char *buf, size_t size)
{
    snprintf(buf, size, "/proc/self/fd/%d/%s", base_fd, rel(path));
    return buf;
}

static int sf_setxattr(const char *path, const char *name, const char *value, size_t size,
                       int flags)
{
    char p[4096];
    round_trip();
    return neg(lsetxattr(proc_path(path, p, sizeof p), name, value, size, flags));
}

static int sf_getxattr(const char *path, const char *name, char *value, size_t size)
{
    char p[4096];
    round_trip();
    return neg((int)lgetxattr(proc_path(path, p, sizeof p), name, value, size));
}

static int sf_listxattr(const char *path, char *list, size_t size)
{
    char p[4096];
    round_trip();
    return neg((int)llistxattr(proc_path(path, p, sizeof p), list, size));
}

static int sf_removexattr(const char *path, const char *name)
{
    char p[4096];
    round_trip();
    return neg(lremovexattr(proc_path(path, p, sizeof p), name));
}

static const struct fuse_operations ops = {
    .init = sf_init,
    .getattr = sf_getattr,
    .readlink = sf_readlink,
    .opendir = sf_opendir,
    .readdir = sf_readdir,
    .releasedir = sf_releasedir,
    .mknod = sf_mknod,
    .mkdir = sf_mkdir,
    .unlink = sf_unlink,
    .rmdir = sf_rmdir,
    .symlink = sf_symlink,
    .rename = sf_rename,
    .link = sf_link,
    .chmod = sf_chmod,
    .chown = sf_chown,
    .truncate = sf_truncate,
    .utimens = sf_utimens,
    .create = sf_create,
    .open = sf_open,
    .read = sf_read,
    .write = sf_write,
    .statfs = sf_statfs,
    .release = sf_release,
    .fsync = sf_fsync,
    .fallocate = sf_fallocate,
    .lseek = sf_lseek,
    .setxattr = sf_setxattr,
    .getxattr = sf_getxattr,
    .listxattr = sf_listxattr,
    .removexattr = sf_removexattr,
};

struct sf_args {
    char *source;
    long delay_us;
};

static const struct fuse_opt opt_spec[] = {
    {"--delay-us=%ld", offsetof(struct sf_args, delay_us), 0},
    FUSE_OPT_END,
};

/* The first free argument is the served folder; the mount point goes to FUSE. */
static int take_source(void *data, const char *arg, int key, struct fuse_args *out)
{
    (void)out;
    struct sf_args *a = data;
    if (key == FUSE_OPT_KEY_NONOPT && !a->source) {
        a->source = strdup(arg);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct sf_args a = {NULL, 1000};
    if (fuse_opt_parse(&args, &a, opt_spec, take_source) < 0)
        return 2;
    if (!a.source || a.delay_us < 0) {
        fprintf(stderr, "usage: slowfs SOURCE MOUNTPOINT [--delay-us=N] [FUSE options]\n");
        return 2;
    }
    base_fd = open(a.source, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (base_fd < 0) {
        fprintf(stderr, "slowfs: cannot open the folder %s: %s\n", a.source,
                strerrordesc_np(errno));
        return 1;
    }
    delay_ns = a.delay_us * 1000;
    /* Many threads: requests in flight overlap, as over a network. */
    fuse_opt_add_arg(&args, "-omax_threads=256,max_idle_threads=256");
    umask(0);
    int rc = fuse_main(args.argc, args.argv, &ops, NULL);
    fuse_opt_free_args(&args);
    free(a.source);
    close(base_fd);
    return rc;
}
