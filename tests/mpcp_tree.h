/*
 * mpcp_tree.h: what the mpcp suites share: running a program (optionally as
 * nobody) with its stderr captured, building trees fd-relatively, and
 * comparing two trees entry by entry (type, mode, size, content, symlink
 * text, mtime to the nanosecond, owner, user xattrs, hard-link structure).
 * Header-only (static functions) because each test_*.c is its own binary.
 */
#ifndef MPCP_TREE_H
#define MPCP_TREE_H

#define _GNU_SOURCE
#include "helpers.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#ifndef MPROC_MPCP_PATH
#define MPROC_MPCP_PATH "mpcp"
#endif

/* ---- running programs ---- */

struct run_result {
    int status; /* exit status, or 128 + signal */
    char err[65536];
    char out[65536];
};

static inline void read_all(int fd, char *buf, size_t size)
{
    size_t len = 0;
    for (;;) {
        char tmp[4096];
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size_t take = (size_t)n;
        if (len + take >= size)
            take = size - 1 - len;
        memcpy(buf + len, tmp, take);
        len += take;
    }
    buf[len] = '\0';
}

/*
 * Runs argv in cwd with stdin from /dev/null (cp -i reads its answers
 * there: end of input is "no"); as_nobody drops to uid/gid 65534 first.
 */
static inline void run_in(const char *cwd, bool as_nobody, const char *const *argv,
                          struct run_result *r)
{
    int errp[2], outp[2];
    cr_assert_eq(pipe2(errp, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(outp, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(errp[1], 2);
        dup2(outp[1], 1);
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0)
            _exit(126);
        if (chdir(cwd) < 0)
            _exit(126);
        if (as_nobody && (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0))
            _exit(125);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(errp[1]);
    close(outp[1]);
    /* stdout is small in these tests: read stderr fully, then stdout. */
    read_all(errp[0], r->err, sizeof r->err);
    read_all(outp[0], r->out, sizeof r->out);
    close(errp[0]);
    close(outp[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- building trees ---- */

/*
 * Starts mpcp with args (NULL-terminated) in folder cwd, its stderr to
 * /dev/null, and returns its pid without waiting: for the tests that stop
 * or kill it midway. The caller reaps it.
 */
static inline pid_t start_mpcp_quiet(const char *cwd, const char *const *args)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(cwd) < 0)
            _exit(126);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        const char *argv[32] = {MPROC_MPCP_PATH};
        for (int i = 0; args[i] && i < 30; i++)
            argv[i + 1] = args[i];
        execv(MPROC_MPCP_PATH, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/*
 * Runs "mpcp -a s o" in folder cwd and waits for it: its wait status in
 * *status, and in *ru its resource use (ru_maxrss: the peak of its largest
 * process, mpcp or a worker).
 */
static inline void run_mpcp_measured(const char *cwd, int *status, struct rusage *ru)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(cwd) < 0)
            _exit(126);
        execl(MPROC_MPCP_PATH, MPROC_MPCP_PATH, "-a", "s", "o", (char *)NULL);
        _exit(127);
    }
    cr_assert_eq(wait4(pid, status, 0, ru), pid);
}

static inline void must(int rc, const char *what, const char *name)
{
    cr_assert(rc >= 0, "%s %s: %s", what, name, strerror(errno));
}

static inline void put_file(int dir, const char *name, const char *data, mode_t mode)
{
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    must(fd, "create", name);
    size_t len = strlen(data);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    must(fchmod(fd, mode), "chmod", name);
    close(fd);
}

static inline int sub_dir(int dir, const char *name, mode_t mode)
{
    if (mkdirat(dir, name, 0700) < 0 && errno != EEXIST)
        must(-1, "mkdir", name);
    int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    must(fd, "open", name);
    must(fchmod(fd, mode), "chmod", name);
    return fd;
}

static inline void set_mtime(int dir, const char *name, time_t sec, long nsec)
{
    struct timespec ts[2] = {{sec - 1000, nsec / 2}, {sec, nsec}};
    must(utimensat(dir, name, ts, AT_SYMLINK_NOFOLLOW), "utimensat", name);
}

/* Gives every entry below dir a fixed mtime, children first (so folders keep theirs). */
static inline void stamp_tree(int dir, time_t sec)
{
    DIR *d = fdopendir(dup(dir));
    cr_assert_not_null(d);
    long n = 1;
    for (struct dirent *de = readdir(d); de; de = readdir(d)) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat st;
        must(fstatat(dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW), "stat", de->d_name);
        if (S_ISDIR(st.st_mode) && (st.st_mode & 0500) == 0500) {
            int sub = openat(dir, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub >= 0) {
                stamp_tree(sub, sec + n);
                close(sub);
            }
        }
        set_mtime(dir, de->d_name, sec + n * 3, 123456789 + n);
        n++;
    }
    closedir(d);
}

static inline void chown_tree(int dir, uid_t uid, gid_t gid)
{
    DIR *d = fdopendir(dup(dir));
    cr_assert_not_null(d);
    for (struct dirent *de = readdir(d); de; de = readdir(d)) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat st;
        must(fstatat(dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW), "stat", de->d_name);
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dir, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub >= 0) {
                chown_tree(sub, uid, gid);
                close(sub);
            }
        }
        fchownat(dir, de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW);
    }
    closedir(d);
}

/* Removes a tree fd-relatively (works below PATH_MAX and on mode-000 folders as root). */
static inline void remove_tree_at(int dir, const char *name)
{
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        fchmodat(dir, name, 0700, 0);
        int sub = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0) {
            DIR *d = fdopendir(sub);
            if (d) {
                for (struct dirent *de = readdir(d); de; de = readdir(d))
                    if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                        remove_tree_at(dirfd(d), de->d_name);
                closedir(d);
            } else {
                close(sub);
            }
        }
        unlinkat(dir, name, AT_REMOVEDIR);
        return;
    }
    unlinkat(dir, name, 0);
}

/* A fresh folder under /tmp for one test; its path goes to buf. */
static inline int make_work_dir(char *buf, size_t size, const char *tag)
{
    snprintf(buf, size, "/tmp/mpcp-test-%s-%ld", tag, (long)getpid());
    remove_tree_at(AT_FDCWD, buf);
    cr_assert_eq(mkdir(buf, 0777), 0, "mkdir %s: %s", buf, strerror(errno));
    chmod(buf, 0777);
    int fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    return fd;
}

/* ---- comparing trees ---- */

#define CMP_MTIME 0x1u /* compare mtimes (cp preserved them) */
#define CMP_OWNER 0x2u /* compare uid/gid */

struct inode_map {
    struct {
        dev_t dev;
        ino_t ino;
        char *path;
    } * v;
    size_t n, cap;
    /*
     * The side's folder, or NULL: a symlink text naming a path inside it
     * compares as the rest of that path, so that two trees whose links
     * point into each side's own folder (cp -s by absolute path) compare.
     */
    const char *root;
};

/* A symlink text, less the side's folder it starts with (see inode_map.root). */
static inline const char *link_in_side(const char *text, const char *root)
{
    size_t n = root ? strlen(root) : 0;
    if (n && strncmp(text, root, n) == 0 && (text[n] == '/' || text[n] == '\0'))
        return text + n;
    return text;
}

/* The first path seen for an inode: two trees link alike when these agree. */
static inline const char *inode_first(struct inode_map *m, const struct stat *st, const char *path)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->v[i].dev == st->st_dev && m->v[i].ino == st->st_ino)
            return m->v[i].path;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->v = realloc(m->v, m->cap * sizeof *m->v);
        cr_assert_not_null(m->v);
    }
    m->v[m->n].dev = st->st_dev;
    m->v[m->n].ino = st->st_ino;
    m->v[m->n].path = strdup(path);
    return m->v[m->n++].path;
}

static inline int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of a folder (NULL-terminated). */
static inline char **list_names(int dir, size_t *count)
{
    int fd = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    cr_assert_not_null(d, "opendir: %s", strerror(errno));
    size_t n = 0, cap = 16;
    char **v = malloc(cap * sizeof *v);
    for (struct dirent *de = readdir(d); de; de = readdir(d)) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (n + 1 >= cap)
            v = realloc(v, (cap *= 2) * sizeof *v);
        v[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(v, n, sizeof *v, name_cmp);
    v[n] = NULL;
    *count = n;
    return v;
}

static inline void compare_content(int da, int db, const char *name, const char *path)
{
    int fa = openat(da, name, O_RDONLY | O_CLOEXEC), fb = openat(db, name, O_RDONLY | O_CLOEXEC);
    if (fa < 0 || fb < 0) {
        /* Unreadable on one side (mode 000 as nobody) must be unreadable on both. */
        cr_assert_eq(fa < 0, fb < 0, "%s readable on one side only", path);
        if (fa >= 0)
            close(fa);
        if (fb >= 0)
            close(fb);
        return;
    }
    static char ba[65536], bb[65536];
    for (;;) {
        ssize_t na = read(fa, ba, sizeof ba), nb = read(fb, bb, sizeof bb);
        cr_assert_eq(na, nb, "%s: contents differ in length", path);
        if (na <= 0)
            break;
        cr_assert(memcmp(ba, bb, (size_t)na) == 0, "%s: contents differ", path);
    }
    close(fa);
    close(fb);
}

static inline void compare_xattrs(int da, int db, const char *name, const char *path)
{
    char la[4096] = "", lb[4096] = "";
    char pa[64], pb[64];
    int fa = openat(da, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    int fb = openat(db, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fa < 0 || fb < 0) {
        if (fa >= 0)
            close(fa);
        if (fb >= 0)
            close(fb);
        return;
    }
    snprintf(pa, sizeof pa, "/proc/self/fd/%d", fa);
    snprintf(pb, sizeof pb, "/proc/self/fd/%d", fb);
    ssize_t na = listxattr(pa, la, sizeof la), nb = listxattr(pb, lb, sizeof lb);
    /* Only user.* are compared: security.* depends on the machine. */
    for (int side = 0; side < 2; side++) {
        const char *list = side ? lb : la;
        ssize_t n = side ? nb : na;
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1) {
            if (strncmp(list + i, "user.", 5))
                continue;
            char va[1024], vb[1024];
            ssize_t a = getxattr(pa, list + i, va, sizeof va);
            ssize_t b = getxattr(pb, list + i, vb, sizeof vb);
            cr_assert_eq(a, b, "%s: xattr %s differs", path, list + i);
            cr_assert(a < 0 || memcmp(va, vb, (size_t)a) == 0, "%s: xattr %s", path, list + i);
        }
    }
    close(fa);
    close(fb);
}

static inline void compare_entry(int da, int db, const char *name, const char *path, unsigned flags,
                                 struct inode_map *ma, struct inode_map *mb);

static inline void compare_dirs(int da, int db, const char *path, unsigned flags,
                                struct inode_map *ma, struct inode_map *mb)
{
    size_t na, nb;
    char **a = list_names(da, &na), **b = list_names(db, &nb);
    for (size_t i = 0; i < nb; i++)
        cr_assert(strncmp(b[i], ".mpcp-", 6) != 0, "temporary left: %s/%s", path, b[i]);
    cr_assert_eq(na, nb, "%s: %zu entries vs %zu (first: %s vs %s)", path, na, nb, na ? a[0] : "-",
                 nb ? b[0] : "-");
    for (size_t i = 0; i < na; i++) {
        cr_assert_str_eq(a[i], b[i], "%s: entry names differ", path);
        char sub[8192];
        snprintf(sub, sizeof sub, "%s/%s", path, a[i]);
        compare_entry(da, db, a[i], sub, flags, ma, mb);
    }
    for (size_t i = 0; i < na; i++)
        free(a[i]);
    for (size_t i = 0; i < nb; i++)
        free(b[i]);
    free(a);
    free(b);
}

static inline void compare_entry(int da, int db, const char *name, const char *path, unsigned flags,
                                 struct inode_map *ma, struct inode_map *mb)
{
    struct stat sa, sb;
    cr_assert_eq(fstatat(da, name, &sa, AT_SYMLINK_NOFOLLOW), 0, "%s", path);
    cr_assert_eq(fstatat(db, name, &sb, AT_SYMLINK_NOFOLLOW), 0, "%s", path);
    cr_assert_eq(sa.st_mode & S_IFMT, sb.st_mode & S_IFMT, "%s: type differs", path);
    cr_assert_eq(sa.st_mode, sb.st_mode, "%s: mode %o vs %o", path, sa.st_mode, sb.st_mode);
    if (flags & CMP_OWNER) {
        cr_assert_eq(sa.st_uid, sb.st_uid, "%s: uid", path);
        cr_assert_eq(sa.st_gid, sb.st_gid, "%s: gid", path);
    }
    /*
     * Setups date everything before 2017; a folder the run itself changed
     * (a target directory) has today's mtime on both sides, never equal.
     */
    bool dated = sa.st_mtim.tv_sec < 1500000000 || sb.st_mtim.tv_sec < 1500000000;
    if ((flags & CMP_MTIME) && dated) {
        cr_assert(sa.st_mtim.tv_sec == sb.st_mtim.tv_sec &&
                      sa.st_mtim.tv_nsec == sb.st_mtim.tv_nsec,
                  "%s: mtime %ld.%09ld vs %ld.%09ld", path, (long)sa.st_mtim.tv_sec,
                  sa.st_mtim.tv_nsec, (long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec);
    }
    if (S_ISDIR(sa.st_mode)) {
        int ca = openat(da, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int cb = openat(db, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_eq(ca < 0, cb < 0, "%s: readable on one side only", path);
        if (ca >= 0) {
            compare_xattrs(da, db, name, path);
            compare_dirs(ca, cb, path, flags, ma, mb);
            close(ca);
            close(cb);
        }
        return;
    }
    cr_assert_eq(sa.st_nlink, sb.st_nlink, "%s: nlink %lu vs %lu", path, (unsigned long)sa.st_nlink,
                 (unsigned long)sb.st_nlink);
    if (sa.st_nlink > 1)
        cr_assert_str_eq(inode_first(ma, &sa, path), inode_first(mb, &sb, path),
                         "%s: hard links differ", path);
    if (S_ISLNK(sa.st_mode)) {
        char ta[PATH_MAX], tb[PATH_MAX];
        ssize_t la = readlinkat(da, name, ta, sizeof ta - 1);
        ssize_t lb = readlinkat(db, name, tb, sizeof tb - 1);
        cr_assert(la >= 0 && lb >= 0, "%s: readlink", path);
        ta[la] = tb[lb] = '\0';
        cr_assert_str_eq(link_in_side(ta, ma->root), link_in_side(tb, mb->root),
                         "%s: link text %s vs %s", path, ta, tb);
        return;
    }
    if (S_ISCHR(sa.st_mode) || S_ISBLK(sa.st_mode))
        cr_assert_eq(sa.st_rdev, sb.st_rdev, "%s: rdev", path);
    if (!S_ISREG(sa.st_mode))
        return;
    cr_assert_eq(sa.st_size, sb.st_size, "%s: size %ld vs %ld", path, (long)sa.st_size,
                 (long)sb.st_size);
    compare_content(da, db, name, path);
    compare_xattrs(da, db, name, path);
}

/*
 * Asserts that the trees below a and b (folders) are alike; root_a and
 * root_b (or NULL) are their paths, for symlinks that point into them.
 */
static inline void compare_trees_at(int a, int b, unsigned flags, const char *root_a,
                                    const char *root_b)
{
    struct inode_map ma = {.root = root_a}, mb = {.root = root_b};
    compare_dirs(a, b, ".", flags, &ma, &mb);
    for (size_t i = 0; i < ma.n; i++)
        free(ma.v[i].path);
    for (size_t i = 0; i < mb.n; i++)
        free(mb.v[i].path);
    free(ma.v);
    free(mb.v);
}

static inline void compare_trees(int a, int b, unsigned flags)
{
    compare_trees_at(a, b, flags, NULL, NULL);
}

/* mpcp's temporaries (".mpcp-<pid>-<n>~name") left in a folder. */
static inline int count_temporaries(int dir)
{
    size_t n;
    char **names = list_names(dir, &n);
    int temps = 0;
    for (size_t i = 0; i < n; i++) {
        temps += strncmp(names[i], ".mpcp-", 6) == 0;
        free(names[i]);
    }
    free(names);
    return temps;
}

#endif
