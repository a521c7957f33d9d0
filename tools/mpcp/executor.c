/*
 * executor.c: copies one task, a batch of non-directory entries of one
 * folder, and says what happened to each entry as result bytes. It needs
 * nothing from the planner but the task bytes and the root fds, so that a
 * pool worker can run it: folders are reached from the roots with openat()
 * one component at a time (no path is ever longer than a name, so trees
 * deeper than PATH_MAX work) and the last folders are cached.
 *
 * Every file is written under a temporary name in its destination folder,
 * owner-only, gets its metadata on the descriptor, and is renamed onto its
 * final name only when complete: a killed run leaves no torn file behind.
 * In a folder the run made, the temporary is an O_TMPFILE linked in when
 * complete (as root), and may have its final mode from the start when
 * nobody else can reach the folder yet (create_mode).
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <errno.h>
#include <mproc.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/openat2.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

static struct root {
    int src, dst;
} * roots;
static uint32_t n_roots, cap_roots;
static const struct mpcp_opts *options;

/* The last folder resolved on each side, so that a run of tasks of one folder opens it once. */
struct dir_cache {
    uint32_t root;
    char *path;
    int fd;
    dev_t dev;
};
static struct dir_cache src_cache = {0, NULL, -1, 0}, dst_cache = {0, NULL, -1, 0};

int mpcp_exec_add_root(int src_fd, int dst_fd, uint32_t *id)
{
    /* Operands from one folder into one target share a root. */
    if (n_roots && roots[n_roots - 1].src == src_fd && roots[n_roots - 1].dst == dst_fd) {
        *id = n_roots - 1;
        return 0;
    }
    if (n_roots == cap_roots) {
        uint32_t cap = cap_roots ? cap_roots * 2 : 16;
        struct root *r = realloc(roots, cap * sizeof *r);
        if (!r)
            return -ENOMEM;
        roots = r;
        cap_roots = cap;
    }
    roots[n_roots].src = src_fd;
    roots[n_roots].dst = dst_fd;
    *id = n_roots++;
    return 0;
}

int mpcp_exec_root(uint32_t id, int *src_fd, int *dst_fd)
{
    if (id >= n_roots || roots[id].src < 0)
        return -ENOENT;
    *src_fd = roots[id].src;
    *dst_fd = roots[id].dst;
    return 0;
}

uint32_t mpcp_exec_root_count(void)
{
    return n_roots;
}

int mpcp_exec_put_root(uint32_t id, int src_fd, int dst_fd)
{
    if (id >= cap_roots) {
        uint32_t cap = cap_roots ? cap_roots : 16;
        while (cap <= id)
            cap *= 2;
        struct root *r = realloc(roots, cap * sizeof *r);
        if (!r)
            return -ENOMEM;
        roots = r;
        cap_roots = cap;
    }
    /* Roots not sent yet stay unknown: a task naming one is malformed. */
    for (; n_roots <= id; n_roots++)
        roots[n_roots].src = roots[n_roots].dst = -1;
    roots[id].src = src_fd;
    roots[id].dst = dst_fd;
    return 0;
}

void mpcp_exec_set_options(const struct mpcp_opts *opt)
{
    options = opt;
}

static void cache_drop(struct dir_cache *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->path);
    c->path = NULL;
    c->fd = -1;
}

void mpcp_exec_reset(void)
{
    cache_drop(&src_cache);
    cache_drop(&dst_cache);
    free(roots);
    roots = NULL;
    n_roots = cap_roots = 0;
}

static unsigned long temp_counter;
/* Our pid for temporary names, cached (one syscall per file saved); a fork resets it. */
static pid_t my_pid;

static void forget_pid(void)
{
    my_pid = 0;
}

static pid_t cached_pid(void)
{
    static bool registered;
    if (!registered) {
        pthread_atfork(NULL, NULL, forget_pid);
        registered = true;
    }
    if (my_pid == 0)
        my_pid = getpid();
    return my_pid;
}

void mpcp_temp_name(char *buf, size_t size, const char *name)
{
    char head[64];
    int n = snprintf(head, sizeof head, ".mpcp-%ld-%lu~", (long)cached_pid(), ++temp_counter);
    size_t room = NAME_MAX - (size_t)n;
    snprintf(buf, size, "%s%.*s", head, (int)room, name);
}

static bool process_is_zombie(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

bool mpcp_is_stale_temp(const char *name)
{
    if (strncmp(name, ".mpcp-", 6) != 0)
        return false;
    char *end = NULL;
    long pid = strtol(name + 6, &end, 10);
    if (pid <= 0 || !end || *end != '-')
        return false;
    strtoul(end + 1, &end, 10);
    if (!end || *end != '~')
        return false;
    if (pid == (long)cached_pid())
        return false;
    if (kill((pid_t)pid, 0) < 0)
        return errno == ESRCH;
    /* A worker orphaned by a dead fork server may wait as a zombie for a reaper. */
    return process_is_zombie((pid_t)pid);
}

/* Opens path below root_fd one component at a time. */
static int open_below(int root_fd, const char *path, bool follow, int *out)
{
    int fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    const char *p = path;
    char comp[NAME_MAX + 1];
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n > NAME_MAX) {
            close(fd);
            return -ENAMETOOLONG;
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        p += n;
        while (*p == '/')
            p++;
        if (n == 0)
            continue;
        int flags = O_PATH | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW);
        int next = openat(fd, comp, flags);
        int err = errno;
        close(fd);
        if (next < 0)
            return -err;
        fd = next;
    }
    *out = fd;
    return 0;
}

int mpcp_exec_open_src(uint32_t id, const char *path, bool follow, int *fd)
{
    if (id >= n_roots || roots[id].src < 0)
        return -ENOENT;
    return open_below(roots[id].src, path, follow, fd);
}

/*
 * The whole path in one openat2(): RESOLVE_NO_SYMLINKS refuses a symlink in
 * any component, as open_below's walk with O_NOFOLLOW does, in one system
 * call instead of two per component. Any failure (an older kernel, a path
 * longer than PATH_MAX, a symlink) leaves the answer and its error to
 * open_below.
 */
static bool open_below_at_once(int root_fd, const char *path, int *out)
{
    if (!*path)
        return false;
    struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_NO_SYMLINKS};
    long fd = syscall(SYS_openat2, root_fd, path, &how, sizeof how);
    if (fd < 0)
        return false;
    *out = (int)fd;
    return true;
}

/*
 * What a task learns about its destination folder, when first needed and
 * at most once per task (never a syscall per file): its owner and mode, which
 * give a new file's group, and whether it has a default ACL.
 */
struct task_dir {
    bool stated;
    bool o_path; /* the fd is O_PATH: no fgetxattr on it */
    struct stat st;
    signed char default_acl; /* -1: not asked yet */
};

static void task_dir_stated(struct task_dir *td, const struct stat *st)
{
    td->st = *st;
    td->stated = true;
}

/* A folder's fd from the cache, or opened now: then td (if given) keeps its stat. */
static int cached_dir(struct dir_cache *c, uint32_t root, int root_fd, const char *path,
                      bool follow, int *fd, dev_t *dev, struct task_dir *td)
{
    if (c->fd >= 0 && c->root == root && strcmp(c->path, path) == 0) {
        *fd = c->fd;
        *dev = c->dev;
        return 0;
    }
    cache_drop(c);
    int nfd = -1;
    int rc = 0;
    if (follow || !open_below_at_once(root_fd, path, &nfd))
        rc = open_below(root_fd, path, follow, &nfd);
    if (rc || nfd < 0)
        return rc ? rc : -EBADF;
    struct stat st;
    if (fstat(nfd, &st) < 0) {
        rc = -errno;
        close(nfd);
        return rc;
    }
    c->path = strdup(path);
    if (!c->path) {
        close(nfd);
        return -ENOMEM;
    }
    c->root = root;
    c->fd = nfd;
    c->dev = st.st_dev;
    *fd = nfd;
    *dev = st.st_dev;
    if (td)
        task_dir_stated(td, &st);
    return 0;
}

/* ---- one entry ---- */

struct ectx {
    const struct mpcp_opts *opt;
    const struct mpcp_task *task;
    const struct mpcp_entry *e;
    int sfd, dfd;
    dev_t ddev;
    struct task_dir *dir;
    bool made_here;     /* this process created the destination file just now */
    bool anon;          /* ...as an O_TMPFILE, linked in by commit_anon() */
    mode_t made_mode;   /* ...with this final mode; 0: owner-only, metadata to come */
    signed char xattrs; /* the source's: -1 unknown, 0 none (already listed) */
    bool backup_due;    /* -b: the existing destination is backed up as the new one goes in */
    char backup[NAME_MAX + 1];
    char through[PATH_MAX]; /* the text of the destination symlink written through */
    bool special_dest;      /* the destination is an existing fifo or device, written into */
    bool through_new;       /* ...a dangling symlink: the new file is made through it */
    struct mpcp_result_entry *r;
    char src_q[PATH_MAX * 2], dst_q[PATH_MAX * 2];
    char msg[PATH_MAX * 5];
};

/* An entry's name as cp has it: its folder's as typed joined with its own (snprintf's return). */
static int join_name(char *path, size_t size, const char *dir, const char *name, bool top)
{
    if (top)
        return snprintf(path, size, "%s", dir);
    if (!*dir)
        return snprintf(path, size, "%s", name);
    return snprintf(path, size, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", name);
}

static void display(char *out, size_t size, const char *dir, const char *name, bool top)
{
    char path[PATH_MAX * 2];
    join_name(path, sizeof path, dir, name, top);
    mpcp_quote(out, size, path);
}

static const char *src_q(struct ectx *x)
{
    if (!x->src_q[0])
        display(x->src_q, sizeof x->src_q, x->task->src_disp, x->e->name,
                x->task->flags & MPCP_TASK_TOP);
    return x->src_q;
}

static const char *dst_q(struct ectx *x)
{
    if (!x->dst_q[0])
        display(x->dst_q, sizeof x->dst_q, x->task->dst_disp, x->e->dst_name,
                x->task->flags & MPCP_TASK_TOP);
    return x->dst_q;
}

static bool stops_run(int err)
{
    return err == ENOSPC || err == EDQUOT || (err == EINTR && mpcp_interrupted);
}

/* Records a failure: tmpl's %s are filled with the (quoted) names a and b. */
static void fail(struct ectx *x, int err, const char *tmpl, const char *a, const char *b)
{
    mpcp_format(x->msg, sizeof x->msg, tmpl, a, b);
    x->r->status = MPCP_FAILED;
    x->r->err = err;
    x->r->msg = x->msg;
    if (stops_run(err))
        x->r->flags |= MPCP_R_STOP;
}

static void skip(struct ectx *x)
{
    x->r->status = MPCP_SKIPPED;
}

static bool dst_newer_or_same(const struct mpcp_entry *e, const struct stat *d)
{
    if (d->st_mtim.tv_sec != e->mtime_sec)
        return d->st_mtim.tv_sec > e->mtime_sec;
    return d->st_mtim.tv_nsec >= (long)e->mtime_nsec;
}

/* GONE: the destination was removed (a new file takes the name). */
enum { GO, STOP_HERE, THROUGH_LINK, GONE };

static bool same_name(struct ectx *x);

/* -b and --remove-destination replace the name: a symlink there is not written through. */
static bool replaces_name(const struct mpcp_opts *opt)
{
    return opt->backup != MPCP_BACKUP_NONE || opt->remove_dest;
}

/*
 * cp lets -b and --remove-destination replace another name of the source
 * (a hard link of it): that name is moved aside or removed and the source
 * stays. Not the source's own name, and not, following symlinks, the file
 * a source symlink points to: the symlink would be left dangling.
 */
static bool other_name_ok(struct ectx *x)
{
    if (!replaces_name(x->opt) || same_name(x))
        return false;
    if (!(x->e->flags & MPCP_E_FOLLOW))
        return true;
    struct stat s;
    return fstatat(x->sfd, x->e->name, &s, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISLNK(s.st_mode);
}

/* -n and --update=none(-fail) leave an existing destination: skipped, or failed. */
static bool refused_by_update(struct ectx *x)
{
    if (x->opt->update == MPCP_UPDATE_NONE) {
        skip(x);
        return true;
    }
    if (x->opt->update == MPCP_UPDATE_NONE_FAIL) {
        fail(x, 0, "not replacing %s", dst_q(x), NULL);
        return true;
    }
    return false;
}

static int pin_link(struct ectx *x);

/*
 * -i: cp's question on stderr, the answer a line on stdin (y or Y, or the
 * locale's yes). No is a skip, not an error. Only with -j 1: the planner's
 * process owns the terminal.
 */
static bool refused_by_user(struct ectx *x, const struct stat *d)
{
    if (!x->opt->interactive)
        return false;
    if (!S_ISLNK(d->st_mode) && faccessat(x->dfd, x->e->dst_name, W_OK, AT_EACCESS) < 0) {
        char perms[10];
        static const char rwx[] = "rwxrwxrwx";
        for (int i = 0; i < 9; i++)
            perms[i] = (d->st_mode & (0400u >> i)) ? rwx[i] : '-';
        perms[9] = '\0';
        /* cp's wording says what yes does: with -f or --remove-destination the file goes. */
        unsigned mode = (unsigned)(d->st_mode & 07777);
        if (x->opt->force || x->opt->remove_dest)
            fprintf(stderr, "%s: replace %s, overriding mode %04o (%s)? ", mpcp_program, dst_q(x),
                    mode, perms);
        else
            fprintf(stderr, "%s: unwritable %s (mode %04o, %s); try anyway? ", mpcp_program,
                    dst_q(x), mode, perms);
    } else {
        fprintf(stderr, "%s: overwrite %s? ", mpcp_program, dst_q(x));
    }
    fflush(stderr);
    char *line = NULL;
    size_t cap = 0;
    bool yes = getline(&line, &cap, stdin) > 0 && rpmatch(line) == 1;
    free(line);
    if (yes)
        return false;
    skip(x);
    return true;
}

/*
 * What to do with an existing destination, as cp decides it. Returns GO,
 * STOP_HERE (failed or skipped, already recorded) or THROUGH_LINK (the
 * destination is a symlink to a regular file that cp would write through).
 */
static bool is_special(mode_t mode)
{
    return S_ISFIFO(mode) || S_ISCHR(mode) || S_ISBLK(mode) || S_ISSOCK(mode);
}

static bool source_points_to(struct ectx *x, const struct stat *d);

/*
 * cp's -P for this entry: -P itself, or below an operand under -H (cp
 * copies the operand's children with -P).
 */
static bool deref_never(const struct ectx *x)
{
    return x->opt->deref == MPCP_DEREF_NEVER ||
           (x->opt->deref == MPCP_DEREF_CMDLINE && !(x->e->flags & MPCP_E_FOLLOW));
}

/*
 * -P: a symlink copied onto the file it points to would replace that file
 * with a link to itself, and cp refuses, as "the same file", before it
 * asks or checks anything else (-n skips the check). A backup keeps the
 * file, so -b goes ahead; so does a destination that is a symlink itself,
 * which is replaced. An -H operand is followed: it is not a symlink here.
 */
static bool symlink_onto_target(struct ectx *x, const struct stat *d)
{
    const struct mpcp_opts *opt = x->opt;
    if (x->e->type != MPCP_T_LNK || !deref_never(x))
        return false;
    if (opt->backup != MPCP_BACKUP_NONE || S_ISLNK(d->st_mode))
        return false;
    return source_points_to(x, d);
}

/*
 * A destination symlink that cp would write through but whose target
 * cannot be stated (err). Dangling: where the new file would land is
 * decided by a resolution that a swap can race, so cp refuses, -f or not;
 * POSIXLY_CORRECT asks for the old behaviour, a new file made through the
 * link. A loop is a file that cannot be opened: -f removes it and a new
 * file takes the name. Anything else is cp's "cannot stat". Returns
 * STOP_HERE (recorded), GONE or THROUGH_LINK (x->through_new).
 */
static int unresolved_link(struct ectx *x, int err)
{
    if (err == ELOOP && x->opt->force) {
        if (unlinkat(x->dfd, x->e->dst_name, 0) < 0 && errno != ENOENT) {
            fail(x, errno, "cannot remove %s", dst_q(x), NULL);
            return STOP_HERE;
        }
        x->r->flags |= MPCP_R_REPLACED;
        return GONE;
    }
    if (err != ENOENT) {
        fail(x, err, "cannot stat %s", dst_q(x), NULL);
        return STOP_HERE;
    }
    if (!getenv("POSIXLY_CORRECT")) {
        x->r->flags |= MPCP_R_ATTEMPTED;
        fail(x, 0, "not writing through dangling symlink %s", dst_q(x), NULL);
        return STOP_HERE;
    }
    if (pin_link(x) < 0)
        return STOP_HERE;
    x->through_new = true;
    return THROUGH_LINK;
}

/* -n: cp leaves an existing destination before it checks anything else. */
static bool no_clobber(const struct mpcp_opts *opt)
{
    return opt->update == MPCP_UPDATE_NONE || opt->update == MPCP_UPDATE_NONE_FAIL;
}

/* cp's "are the same file", v being the destination as cp looks at it. */
static bool same_file(struct ectx *x, const struct stat *v)
{
    if (no_clobber(x->opt))
        return false;
    if (symlink_onto_target(x, v))
        return true;
    return x->e->type == MPCP_T_REG && v->st_dev == x->e->dev && v->st_ino == x->e->ino &&
           !other_name_ok(x);
}

static int check_existing(struct ectx *x, const struct stat *d)
{
    const struct mpcp_entry *e = x->e;
    const struct mpcp_opts *opt = x->opt;
    /*
     * A regular file is written through a destination symlink, and cp
     * judges what the link points to (-u compares with its time): when
     * that cannot be stated, nothing else is checked.
     */
    bool through = e->type == MPCP_T_REG && S_ISLNK(d->st_mode) && !replaces_name(opt);
    struct stat t;
    if (through && fstatat(x->dfd, e->dst_name, &t, 0) < 0)
        return unresolved_link(x, errno);
    const struct stat *v = through ? &t : d;
    if (same_file(x, v)) {
        fail(x, 0, "%s and %s are the same file", src_q(x), dst_q(x));
        return STOP_HERE;
    }
    /*
     * cp's order: -u before -i (a newer destination is never asked about).
     * -u keeps a newer destination, but not in place of a hard link to an
     * earlier copy of the same source: cp links that name whatever its age.
     */
    if (opt->update == MPCP_UPDATE_OLDER && e->type != MPCP_T_HARDLINK && dst_newer_or_same(e, v)) {
        skip(x);
        x->r->flags |= MPCP_R_KEPT;
        return STOP_HERE;
    }
    if (refused_by_user(x, v))
        return STOP_HERE;
    if (S_ISDIR(v->st_mode)) {
        fail(x, 0, "cannot overwrite directory %s with non-directory", dst_q(x), NULL);
        return STOP_HERE;
    }
    if (refused_by_update(x))
        return STOP_HERE;
    if (e->type != MPCP_T_REG)
        return GO;
    if (is_special(d->st_mode) && !replaces_name(opt)) {
        /* cp opens an existing fifo or device and writes into it: a reader may wait there. */
        x->special_dest = true;
        return THROUGH_LINK;
    }
    if (!through)
        return GO;
    return pin_link(x) < 0 ? STOP_HERE : THROUGH_LINK;
}

/*
 * An existing destination about to be replaced: -b backs it up when the
 * new file goes in (back_up); --remove-destination replaces it, and cp -v
 * says "removed" then.
 */
static void note_replacement(struct ectx *x)
{
    if (x->opt->backup != MPCP_BACKUP_NONE)
        x->backup_due = true;
    else if (x->opt->remove_dest)
        x->r->flags |= MPCP_R_REPLACED;
}

static bool is_root(void);
static uid_t my_uid(void);
static const struct stat *dir_stat(struct ectx *x);

/*
 * -b and --remove-destination: cp moves the old file away or unlinks it
 * before anything else, so where the folder forbids that (not writable, or
 * sticky and neither the file nor the folder ours) it fails with "cannot
 * backup" or "cannot remove" and copies nothing. The renames here need the
 * same rights: they are checked first, so that the failure is cp's.
 * Records it.
 */
static bool removable(struct ectx *x, const struct stat *d)
{
    if (is_root())
        return true;
    int err = 0;
    const struct stat *dir = dir_stat(x);
    if (faccessat(x->dfd, ".", W_OK | X_OK, AT_EACCESS) < 0)
        err = errno;
    else if (dir && (dir->st_mode & S_ISVTX) && d->st_uid != my_uid() && dir->st_uid != my_uid())
        err = EPERM;
    if (!err)
        return true;
    bool backup = x->opt->backup != MPCP_BACKUP_NONE;
    fail(x, err, backup ? "cannot backup %s" : "cannot remove %s", dst_q(x), NULL);
    return false;
}

/*
 * A simple backup of the destination that would take the source's own
 * name (cp --backup=simple a~ a): backing up would replace the source, so
 * cp refuses to copy. Numbered backups cannot clash so; a source named
 * "." or ".." is never a backup's name. Records the refusal.
 */
static bool backup_is_source(struct ectx *x)
{
    const struct mpcp_opts *opt = x->opt;
    if (opt->backup == MPCP_BACKUP_NONE || opt->backup == MPCP_BACKUP_NUMBERED)
        return false;
    const char *src = x->e->name, *dst = x->e->dst_name;
    size_t n = strlen(dst);
    if (!strcmp(src, ".") || !strcmp(src, "..") || strncmp(src, dst, n) != 0 ||
        strcmp(src + n, opt->suffix) != 0)
        return false;
    char name[NAME_MAX + 2];
    struct stat b;
    if ((size_t)snprintf(name, sizeof name, "%s%s", dst, opt->suffix) >= sizeof name ||
        fstatat(x->dfd, name, &b, 0) < 0 || b.st_dev != x->e->dev || b.st_ino != x->e->ino)
        return false;
    fail(x, 0, "backing up %s might destroy source;  %s not copied", dst_q(x), src_q(x));
    return true;
}

/* Stats the destination unless its folder is new. *exists tells. Returns GO or STOP_HERE. */
static int look_at_dest(struct ectx *x, struct stat *d, bool *exists, bool *through)
{
    *exists = false;
    *through = false;
    x->r->flags |= MPCP_R_ATTEMPTED;
    if (x->e->flags & MPCP_E_DEST_NEW)
        return GO;
    if (fstatat(x->dfd, x->e->dst_name, d, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return GO;
        x->r->flags &= ~MPCP_R_ATTEMPTED;
        fail(x, errno, "cannot stat %s", dst_q(x), NULL);
        return STOP_HERE;
    }
    *exists = true;
    x->r->flags &= ~MPCP_R_ATTEMPTED;
    int rc = check_existing(x, d);
    if (rc == THROUGH_LINK) {
        *through = true;
        *exists = !x->through_new;
        rc = GO;
    }
    if (rc == GONE) {
        *exists = false;
        return GO;
    }
    if (rc == GO && backup_is_source(x))
        return STOP_HERE;
    if (rc == GO && replaces_name(x->opt) && !removable(x, d))
        return STOP_HERE;
    if (rc == GO) {
        x->r->flags |= MPCP_R_ATTEMPTED;
        note_replacement(x);
    }
    return rc;
}

/* Puts the temporary in place; a no-clobber run never replaces what appeared meanwhile. */
static int commit(struct ectx *x, const char *tmp)
{
    const char *name = x->e->dst_name;
    bool noreplace = x->opt->update == MPCP_UPDATE_NONE || x->opt->update == MPCP_UPDATE_NONE_FAIL;
    if (!noreplace) {
        if (renameat(x->dfd, tmp, x->dfd, name) == 0)
            return 0;
        return -errno;
    }
    if (renameat2(x->dfd, tmp, x->dfd, name, RENAME_NOREPLACE) == 0)
        return 0;
    int err = errno;
    if (err == EINVAL || err == ENOSYS) {
        /* No RENAME_NOREPLACE here: link() also refuses to replace. */
        if (linkat(x->dfd, tmp, x->dfd, name, 0) < 0)
            return -errno;
        unlinkat(x->dfd, tmp, 0);
        return 0;
    }
    return -err;
}

/* Where the old file cannot get a second name (no hard links there, a full link count, the
 * protected_hardlinks rule for a file not ours), it is renamed. */
static bool no_link_here(int rc)
{
    return rc == -EPERM || rc == -EMLINK || rc == -EOPNOTSUPP;
}

/* The old destination gets the backup's name too; a simple backup replaces an older one. */
static int link_aside(struct ectx *x, unsigned how)
{
    const char *name = x->e->dst_name;
    if (how & MPCP_BACKUP_NOREPLACE)
        return linkat(x->dfd, name, x->dfd, x->backup, 0) < 0 ? -errno : 0;
    char tmp[NAME_MAX + 1];
    mpcp_temp_name(tmp, sizeof tmp, x->backup);
    if (linkat(x->dfd, name, x->dfd, tmp, 0) < 0)
        return -errno;
    int rc = renameat(x->dfd, tmp, x->dfd, x->backup) < 0 ? -errno : 0;
    /* Also after a rename onto another name of the same file, which leaves tmp. */
    unlinkat(x->dfd, tmp, 0);
    return rc;
}

static int move_aside(struct ectx *x, unsigned how)
{
    unsigned flags = (how & MPCP_BACKUP_NOREPLACE) ? RENAME_NOREPLACE : 0;
    return renameat2(x->dfd, x->e->dst_name, x->dfd, x->backup, flags) < 0 ? -errno : 0;
}

/*
 * Backs the existing destination up as cp -b does, but its name is never
 * missing: cp renames the old file away and then creates the new one; here
 * the old file gets the backup's name as a hard link just before the
 * complete new file is renamed over its name, so that at every moment the
 * name holds the old file or the new one, whole, and a copy that fails
 * leaves the old file and no backup. The tree is cp's: the backup is the
 * old inode (other hard links to it stay with it), the name a new file.
 * Where no hard link can be made the old file is renamed (a moment
 * without the name); so it is for --inplace (by_rename), which writes the
 * name itself. A numbered backup never replaces a file: if another took
 * its number meanwhile, the folder is scanned again, as cp does. Returns 0
 * or -1 (recorded: cp's "cannot backup").
 */
static int back_up(struct ectx *x, bool by_rename)
{
    x->backup_due = false;
    int rc = -EEXIST;
    for (int tries = 0; tries < 100 && rc == -EEXIST; tries++) {
        unsigned how = 0;
        rc = mpcp_backup_name(x->dfd, x->e->dst_name, x->opt, x->backup, sizeof x->backup, &how);
        /* A suffix may end in '/' (-S 'x/'): no file but a folder goes by such a name. */
        if (rc == 0 && strchr(x->backup, '/'))
            rc = -ENOTDIR;
        if (rc == 0 && !by_rename)
            rc = link_aside(x, how);
        if (rc == 0 && !by_rename)
            break;
        if (by_rename || no_link_here(rc))
            rc = move_aside(x, how);
        if (rc == -EEXIST && !(how & MPCP_BACKUP_RESCAN))
            break;
    }
    if (rc == 0) {
        x->r->backup = x->backup;
        x->r->flags &= ~MPCP_R_REPLACED; /* cp -v names the backup instead */
        return 0;
    }
    if (rc == -ENOENT)
        return 0; /* gone meanwhile: nothing to back up, as with cp */
    x->r->flags &= ~MPCP_R_ATTEMPTED;
    fail(x, -rc, "cannot backup %s", dst_q(x), NULL);
    return -1;
}

static void commit_or_fail(struct ectx *x, const char *tmp, const char *what)
{
    if (x->backup_due && back_up(x, false) < 0) {
        unlinkat(x->dfd, tmp, 0);
        return;
    }
    int rc = commit(x, tmp);
    if (rc == 0)
        return;
    unlinkat(x->dfd, tmp, 0);
    if (rc == -EEXIST) {
        if (x->opt->update == MPCP_UPDATE_NONE_FAIL)
            fail(x, 0, "not replacing %s", dst_q(x), NULL);
        else
            skip(x);
        return;
    }
    fail(x, -rc, what, dst_q(x), NULL);
}

static bool is_root(void)
{
    static int root = -1;
    if (root < 0)
        root = geteuid() == 0;
    return root;
}

/* Credentials of this process (a fork keeps them), for the owner a new file gets. */
static uid_t my_uid(void)
{
    static uid_t uid = (uid_t)-1;
    if (uid == (uid_t)-1)
        uid = geteuid();
    return uid;
}

static gid_t my_gid(void)
{
    static gid_t gid = (gid_t)-1;
    if (gid == (gid_t)-1)
        gid = getegid();
    return gid;
}

/*
 * The umask this process creates files under. Read from the process, not
 * from the options: under MPI a worker is another program's child. The
 * umask() pair is safe: nothing else in a worker creates files meanwhile.
 */
static mode_t my_umask(void)
{
    static int mask = -1;
    if (mask < 0) {
        mode_t old = umask(0);
        umask(old);
        mask = (int)old;
    }
    return (mode_t)mask;
}

static const struct stat *dir_stat(struct ectx *x)
{
    struct task_dir *td = x->dir;
    if (!td->stated && fstat(x->dfd, &td->st) < 0)
        return NULL;
    td->stated = true;
    return &td->st;
}

/*
 * Whether cp's write through the destination symlink ls (the link's own
 * stat) is safe: the kernel's protected_symlinks rule (fs/namei.c,
 * may_follow_link) lets a process follow a link that it owns, or any link
 * in a folder that is not both sticky and world-writable, or one owned by
 * the folder's owner. That leaves open a folder of another user: its owner
 * plants a link to a file of ours and we write into that file. So mpcp
 * follows only a link that is ours (our euid, as the kernel's fsuid), or any
 * link in a folder that is ours and that nobody else may write to (no group
 * or other write bit; an ACL's named entries show in the group bits), where
 * no one else can have put it. Returns NULL, or the reason for a refusal.
 */
static const char *unsafe_link(struct ectx *x, const struct stat *ls)
{
    if (x->opt->through_links == MPCP_THROUGH_ALWAYS)
        return NULL;
    if (x->opt->through_links == MPCP_THROUGH_NEVER)
        return "not writing through symlink %s (--write-through-symlinks=never)";
    if (ls->st_uid == my_uid())
        return NULL;
    const struct stat *dir = dir_stat(x);
    if (!dir || dir->st_uid != my_uid())
        return "not writing through symlink %s: neither it nor its folder is this user's";
    if (dir->st_mode & (S_IWGRP | S_IWOTH))
        return "not writing through symlink %s: it is another user's, in a folder others can "
               "write to";
    return NULL;
}

/*
 * Pins the destination symlink that cp would write through, in one step
 * that a swap cannot win: the link itself is opened (O_PATH|O_NOFOLLOW,
 * relative to the folder's fd), its owner judged from that fd, and its text
 * read from it; the write then opens that text relative to the folder, as
 * the kernel would resolve the link. A link swapped for another after this
 * changes nothing: the text is the judged link's. Returns 0, or -1 (recorded).
 */
static int pin_link(struct ectx *x)
{
    int fd = openat(x->dfd, x->e->dst_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        fail(x, errno, "cannot stat %s", dst_q(x), NULL);
        return -1;
    }
    struct stat ls;
    const char *why = NULL;
    ssize_t n = -1;
    if (fstatat(fd, "", &ls, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
        fail(x, errno, "cannot stat %s", dst_q(x), NULL);
    } else if (!S_ISLNK(ls.st_mode)) {
        why = "not writing through %s: it stopped being a symlink while being checked";
    } else {
        why = unsafe_link(x, &ls);
        if (!why)
            n = readlinkat(fd, "", x->through, sizeof x->through);
        if (!why && (n < 0 || (size_t)n >= sizeof x->through))
            fail(x, n < 0 ? errno : ENAMETOOLONG, "cannot read symbolic link %s", dst_q(x), NULL);
    }
    close(fd);
    if (why)
        fail(x, 0, why, dst_q(x), NULL);
    if (why || n < 0 || (size_t)n >= sizeof x->through)
        return -1;
    x->through[n] = '\0';
    return 0;
}

/*
 * Whether a file this process created in the destination folder already
 * has the owner e wants, so that fchown can be skipped: it gets our euid,
 * and our egid unless the folder is set-group-ID (or the filesystem is
 * mounted grpid): then the folder's group. Where the two rules could
 * disagree (a folder of another group, not set-group-ID) we do not guess.
 */
static bool owner_given(struct ectx *x)
{
    const struct mpcp_entry *e = x->e;
    if (!x->made_here || e->uid != my_uid())
        return false;
    const struct stat *d = dir_stat(x);
    if (!d)
        return false;
    if (d->st_mode & S_ISGID)
        return e->gid == d->st_gid;
    return e->gid == my_gid() && d->st_gid == my_gid();
}

/*
 * A default ACL in the folder replaces the umask at creation and ANDs the
 * mode into its entries, which fchmod does not: a file created with its final
 * mode there would not end up as cp -p leaves it.
 */
static bool folder_default_acl(struct ectx *x)
{
    struct task_dir *td = x->dir;
    if (td->default_acl >= 0)
        return td->default_acl;
    ssize_t n = -1;
    errno = EBADF;
    if (!td->o_path)
        n = fgetxattr(x->dfd, "system.posix_acl_default", NULL, 0);
    if (n < 0 && errno == EBADF) {
        /* fgetxattr refuses O_PATH fds (the workers' cache): the folder's /proc link does not. */
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", x->dfd);
        n = getxattr(path, "system.posix_acl_default", NULL, 0);
    }
    bool none = n == 0 || (n < 0 && (errno == ENODATA || errno == ENOTSUP));
    td->default_acl = !none;
    return td->default_acl;
}

/* Lists the source's xattrs once; x->xattrs = 0 when it has none, so none are copied later. */
static bool source_without_xattrs(struct ectx *x, int sfd)
{
    if (flistxattr(sfd, NULL, 0) != 0)
        return false; /* some, or an error: mpcp_copy_xattrs looks again and decides */
    x->xattrs = 0;
    return true;
}

/*
 * The mode to create a new file with: owner-only while its data and
 * metadata are incomplete, as a rule. But with -a or -p a folder this run
 * made stays owner-only until its children are in (make_dest_dir), so no one
 * else can reach a file in it meanwhile: such a file may be created with its
 * final mode, which spares the fchmod, where nothing after the data changes
 * the mode: it gets our owner and group, has no set-id or sticky bit, no bit
 * our umask would clear, no xattrs, and no default ACL is in the folder.
 */
static mode_t create_mode(struct ectx *x, int sfd)
{
    const struct mpcp_opts *opt = x->opt;
    if (!(x->e->flags & MPCP_E_DEST_NEW) || !opt->p_owner)
        return 0600;
    mode_t mode = mpcp_new_file_mode(opt, x->e->mode, false);
    if (mode == 0600 || (mode & ~0777) || (mode & my_umask()))
        return 0600;
    if (!owner_given(x))
        return 0600;
    if (opt->p_xattr && !source_without_xattrs(x, sfd))
        return 0600;
    if (folder_default_acl(x))
        return 0600;
    return mode;
}

/* The mode, as cp leaves it: a new file's, or with -p the source's. Returns 0 or -1 (recorded). */
static int file_mode(struct ectx *x, int fd, bool exists, const struct stat *d, bool created,
                     bool owner_failed)
{
    const struct mpcp_opts *opt = x->opt;
    mode_t mode;
    if (!created && !opt->p_mode)
        return 0; /* written in place: the file keeps its mode, as with cp */
    if (exists && created && !opt->p_mode)
        mode = d->st_mode & 07777;
    else
        mode = mpcp_new_file_mode(opt, x->e->mode, owner_failed);
    if (created && mode == (0600 & ~opt->umask) && !(mode & ~0777))
        return 0;
    if (x->made_mode && mode == x->made_mode)
        return 0; /* created with it (create_mode) */
    if (fchmod(fd, mode) < 0) {
        fail(x, errno, "setting permissions for %s", dst_q(x), NULL);
        return -1;
    }
    return 0;
}

/*
 * cp -p keeps the mode as the source's ACL has it: its extra entries too,
 * and none where the source has none, though the file was written in
 * place or a default ACL gave it some. (-a copies the ACL with the other
 * xattrs.) After the chmod, which would otherwise rewrite the ACL's mask.
 * Returns 0 or -1 (recorded).
 */
static int keep_acl(struct ectx *x, int sfd, int fd, bool created)
{
    if (!x->opt->p_mode || x->opt->p_xattr || sfd < 0 || x->xattrs == 0)
        return 0;
    int rc = mpcp_copy_acl(sfd, fd, false, !created || folder_default_acl(x));
    if (rc == 0)
        return 0;
    fail(x, -rc, "preserving permissions for %s", dst_q(x), NULL);
    return -1;
}

/* Times, owner, xattrs, mode on the new file's descriptor, in cp's order. */
static int file_metadata(struct ectx *x, int sfd, int fd, bool exists, const struct stat *d,
                         bool created)
{
    const struct mpcp_opts *opt = x->opt;
    const struct mpcp_entry *e = x->e;
    if (opt->p_time) {
        struct timespec ts[2] = {{e->atime_sec, e->atime_nsec}, {e->mtime_sec, e->mtime_nsec}};
        if (futimens(fd, ts) < 0) {
            fail(x, errno, "preserving times for %s", dst_q(x), NULL);
            return -1;
        }
    }
    bool owner_failed = false;
    if (opt->p_owner && !owner_given(x) && fchown(fd, e->uid, e->gid) < 0) {
        if (is_root() || (errno != EPERM && errno != EINVAL)) {
            fail(x, errno, "failed to preserve ownership for %s", dst_q(x), NULL);
            return -1;
        }
        /* Not ours to give away: the group alone may do, as cp tries. */
        int saved = errno;
        if (fchown(fd, (uid_t)-1, e->gid) < 0)
            errno = saved;
        owner_failed = true;
    } else if (!opt->p_owner && exists && created && is_root() &&
               (d->st_uid != 0 || d->st_gid != getegid())) {
        /* cp rewrites an existing file in place: it keeps its owner. So does our replacement. */
        if (fchown(fd, d->st_uid, d->st_gid) < 0) {
            fail(x, errno, "failed to preserve ownership for %s", dst_q(x), NULL);
            return -1;
        }
    }
    if (opt->p_xattr && sfd >= 0 && x->xattrs != 0) {
        int rc = mpcp_copy_xattrs(sfd, fd, opt->p_xattr_quiet);
        if (rc < 0) {
            fail(x, -rc, "setting attributes for %s", dst_q(x), NULL);
            return -1;
        }
    }
    if (file_mode(x, fd, exists, d, created, owner_failed) < 0)
        return -1;
    return keep_acl(x, sfd, fd, created);
}

/*
 * Source descriptors of a task are closed in groups: one close_range() per
 * run of consecutive fd numbers saves a system call per file (a new fd takes
 * the lowest free number, so the sources of successive files mostly line
 * up). Each run holds only fds of ours: a number belongs to one open file at
 * a time, so close_range() closes nobody else's.
 */
#define HELD_MAX 32
static int held[HELD_MAX];
static unsigned n_held;

static void close_run(int lo, int hi)
{
    if (lo == hi || close_range((unsigned)lo, (unsigned)hi, 0) < 0)
        for (int fd = lo; fd <= hi; fd++)
            close(fd);
}

static void close_held(void)
{
    for (unsigned i = 1; i < n_held; i++) /* a few dozen, nearly sorted */
        for (unsigned j = i; j > 0 && held[j - 1] > held[j]; j--) {
            int t = held[j];
            held[j] = held[j - 1];
            held[j - 1] = t;
        }
    unsigned start = 0;
    for (unsigned i = 1; i <= n_held; i++) {
        if (i < n_held && held[i] == held[i - 1] + 1)
            continue;
        close_run(held[start], held[i - 1]);
        start = i;
    }
    n_held = 0;
}

/* At most HELD_MAX, and an eighth of the fd limit: a low limit (ulimit -n) stays usable. */
static unsigned held_max(void)
{
    static unsigned max;
    if (max == 0) {
        struct rlimit rl;
        max = HELD_MAX;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)8 * HELD_MAX)
            max = rl.rlim_cur >= 8 ? (unsigned)rl.rlim_cur / 8 : 1;
    }
    return max;
}

static void close_source(int fd)
{
    if (n_held >= held_max())
        close_held();
    held[n_held++] = fd;
}

/* After an open failed: true when closing the held fds may let it succeed (EMFILE). */
static bool released_for_emfile(void)
{
    if (errno != EMFILE || n_held == 0)
        return false;
    close_held();
    return true;
}

static int open_source(struct ectx *x)
{
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY;
    if (!(x->e->flags & MPCP_E_FOLLOW))
        flags |= O_NOFOLLOW;
    int fd = openat(x->sfd, x->e->name, flags);
    if (fd < 0 && released_for_emfile())
        fd = openat(x->sfd, x->e->name, flags);
    if (fd < 0)
        fail(x, errno, "cannot open %s for reading", src_q(x), NULL);
    return fd;
}

/*
 * Filesystems where O_TMPFILE or linking one in failed in this process:
 * the named temporary is used there, without trying again for every file
 * (and everywhere once the table is full).
 */
static struct mpcp_dev_set no_anon;

/*
 * In a folder this run made, a new file's temporary is an O_TMPFILE that
 * linkat() puts in place when complete: cheaper than a named temporary and
 * its rename, and nothing is left behind by a kill. linkat() of an fd
 * (AT_EMPTY_PATH) takes CAP_DAC_READ_SEARCH: root only.
 */
static int open_anon(struct ectx *x, mode_t mode)
{
    if (!(x->e->flags & MPCP_E_DEST_NEW) || x->opt->inplace || !is_root() ||
        mpcp_dev_set_has(&no_anon, x->ddev))
        return -1;
    int fd = openat(x->dfd, ".", O_WRONLY | O_TMPFILE | O_CLOEXEC, mode);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL))
        mpcp_dev_set_add(&no_anon, x->ddev);
    x->anon = fd >= 0;
    return fd;
}

/*
 * Opens the file to write: a new temporary, or the file itself (in place).
 * A new file gets create_mode's mode (x->made_mode says which).
 */
static int open_dest_once(struct ectx *x, int sfd, bool exists, bool through, char *tmp,
                          size_t tmp_size)
{
    int fd;
    tmp[0] = '\0';
    bool in_place = (x->opt->inplace || x->opt->attributes_only) && exists;
    x->made_here = !through && !in_place;
    mode_t mode = x->made_here && !exists ? create_mode(x, sfd) : 0600;
    x->made_mode = mode == 0600 ? 0 : mode;
    if (x->opt->attributes_only && exists) {
        /* cp --attributes-only keeps an existing file's data: opened, not truncated */
        fd = through ? openat(x->dfd, x->through, O_WRONLY | O_CLOEXEC | O_NOCTTY)
                     : openat(x->dfd, x->e->dst_name, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
    } else if (through && x->special_dest) {
        fd = openat(x->dfd, x->e->dst_name, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
    } else if (through && x->through_new) {
        fd = openat(x->dfd, x->through, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0600);
    } else if (through) {
        fd = openat(x->dfd, x->through, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
    } else if (x->opt->inplace && exists) {
        fd = openat(x->dfd, x->e->dst_name, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
    } else if (x->opt->inplace) {
        fd = openat(x->dfd, x->e->dst_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    } else if ((fd = open_anon(x, mode)) < 0) {
        mpcp_temp_name(tmp, tmp_size, x->e->dst_name);
        fd = openat(x->dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    }
    return fd;
}

static int open_dest(struct ectx *x, int sfd, bool exists, bool through, char *tmp, size_t tmp_size)
{
    int fd = open_dest_once(x, sfd, exists, through, tmp, tmp_size);
    if (fd < 0 && released_for_emfile())
        fd = open_dest_once(x, sfd, exists, through, tmp, tmp_size);
    if (fd < 0) {
        fail(x, errno, "cannot create regular file %s", dst_q(x), NULL);
        tmp[0] = '\0';
    }
    return fd;
}

static void data_failed(struct ectx *x, int err, int side)
{
    if (side == MPCP_SIDE_CLONE)
        fail(x, err, "failed to clone %s from %s", dst_q(x), src_q(x));
    else if (side == MPCP_SIDE_WRITE)
        fail(x, err, "error writing %s", dst_q(x), NULL);
    else
        fail(x, err, "error reading %s", src_q(x), NULL);
}

/*
 * cp refuses to replace a file it may not write, unless -f: then it removes
 * it and makes a new one (*forced_new: it gets a new file's mode and owner).
 */
static int writable_check(struct ectx *x, bool exists, const struct stat *d, bool *forced_new)
{
    *forced_new = false;
    /* A name that is backed up or removed first needs no write permission on its file. */
    if (!exists || is_root() || S_ISLNK(d->st_mode) || x->backup_due || x->opt->remove_dest)
        return GO;
    if (faccessat(x->dfd, x->e->dst_name, W_OK, AT_EACCESS) == 0)
        return GO;
    if (x->opt->force) {
        *forced_new = true;
        return GO;
    }
    fail(x, errno, "cannot create regular file %s", dst_q(x), NULL);
    return STOP_HERE;
}

/* Links a linkable temporary in under the name tmp, for a rename onto the final name. */
static bool link_anon_as(struct ectx *x, int fd, char *tmp, size_t size)
{
    mpcp_temp_name(tmp, size, x->e->dst_name);
    if (linkat(fd, "", x->dfd, tmp, AT_EMPTY_PATH) == 0)
        return true;
    fail(x, errno, "cannot create regular file %s", dst_q(x), NULL);
    return false;
}

/*
 * Puts a complete O_TMPFILE in place (rc: the copy's result so far) and
 * closes it; a failure leaves nothing behind. The name is new (the folder
 * is), unless a task runs again after its worker died: then, as a rename
 * would, the file replaces what is there; -n keeps it.
 */
static void commit_anon(struct ectx *x, int fd, int rc)
{
    if (rc == 0 && linkat(fd, "", x->dfd, x->e->dst_name, AT_EMPTY_PATH) < 0) {
        int err = errno;
        char tmp[NAME_MAX + 1];
        bool noreplace =
            x->opt->update == MPCP_UPDATE_NONE || x->opt->update == MPCP_UPDATE_NONE_FAIL;
        if (err == EEXIST && noreplace) {
            if (x->opt->update == MPCP_UPDATE_NONE_FAIL)
                fail(x, 0, "not replacing %s", dst_q(x), NULL);
            else
                skip(x);
        } else if (err == EEXIST) {
            if (link_anon_as(x, fd, tmp, sizeof tmp))
                commit_or_fail(x, tmp, "cannot create regular file %s");
        } else {
            /* No right to link an fd (no CAP_DAC_READ_SEARCH): named temporaries from now on. */
            mpcp_dev_set_add(&no_anon, x->ddev);
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            if (linkat(AT_FDCWD, path, x->dfd, x->e->dst_name, AT_SYMLINK_FOLLOW) < 0)
                fail(x, err, "cannot create regular file %s", dst_q(x), NULL);
        }
    }
    if (close(fd) < 0 && x->r->status == MPCP_OK)
        fail(x, errno, "failed to close %s", dst_q(x), NULL);
}

/* --inplace writes the name itself: the old file leaves it first (backed up, or removed). */
static int clear_in_place(struct ectx *x)
{
    if (x->backup_due)
        return back_up(x, true);
    if (unlinkat(x->dfd, x->e->dst_name, 0) == 0)
        return 0;
    fail(x, errno, "cannot remove %s", dst_q(x), NULL);
    return -1;
}

static void exec_reg(struct ectx *x)
{
    struct stat d;
    bool exists, through, forced_new;
    if (look_at_dest(x, &d, &exists, &through) != GO)
        return;
    /* cp opens the source before the destination: an unreadable source is what it reports. */
    int sfd = open_source(x);
    if (sfd < 0)
        return;
    if (writable_check(x, exists, &d, &forced_new) != GO) {
        close_source(sfd);
        return;
    }
    /* Backed up or removed first, the old file leaves: the new one is a new file, as with cp. */
    bool renew = forced_new || (exists && (x->backup_due || x->opt->remove_dest));
    if (renew && x->opt->inplace && clear_in_place(x) < 0) {
        close_source(sfd);
        return;
    }
    if (renew)
        exists = false;
    if (forced_new)
        x->r->flags |= MPCP_R_REPLACED; /* cp -f removed it: -v says so */
    if (exists && !through && x->opt->p_links && d.st_nlink > 1)
        x->r->flags |= MPCP_R_REPLACED;
    char tmp[NAME_MAX + 1];
    int fd = open_dest(x, sfd, exists, through, tmp, sizeof tmp);
    if (fd < 0) {
        close(sfd);
        return;
    }
    uint64_t copied = 0;
    int side = MPCP_SIDE_READ;
    int rc = 0;
    if (x->special_dest)
        rc = mpcp_copy_stream(sfd, fd, &copied, &side);
    else if (!x->opt->attributes_only)
        rc = mpcp_copy_data(x->opt, sfd, fd, x->ddev, (off_t)x->e->size, (blkcnt_t)x->e->blocks,
                            &copied, &side);
    x->r->bytes = copied;
    bool created = tmp[0] || x->anon || (x->opt->inplace && !exists) || x->through_new;
    if (rc < 0)
        data_failed(x, -rc, side);
    else
        rc = file_metadata(x, sfd, fd, exists, &d, created);
    close_source(sfd);
    if (x->anon) {
        commit_anon(x, fd, rc);
        return;
    }
    if (close(fd) < 0 && rc == 0) {
        fail(x, errno, "failed to close %s", dst_q(x), NULL);
        rc = -1;
    }
    if (!tmp[0])
        return;
    if (rc != 0) {
        unlinkat(x->dfd, tmp, 0);
        return;
    }
    commit_or_fail(x, tmp, "cannot create regular file %s");
}

/*
 * One range of a large file, copied by offset into the temporary the
 * planner made: other workers write the other ranges meanwhile. A failure
 * is reported as the whole file's; the planner removes the temporary.
 */
static void exec_chunk(struct ectx *x)
{
    x->r->flags |= MPCP_R_ATTEMPTED;
    int sfd = open_source(x);
    if (sfd < 0)
        return;
    int fd = openat(x->dfd, x->e->link_target, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        fail(x, errno, "cannot create regular file %s", dst_q(x), NULL);
        close(sfd);
        return;
    }
    uint64_t copied = 0;
    int side = MPCP_SIDE_READ;
    int rc = mpcp_copy_range_at(sfd, fd, (off_t)x->e->rdev, (off_t)x->e->blocks, &copied, &side);
    x->r->bytes = copied;
    close(sfd);
    if (rc < 0)
        data_failed(x, -rc, side);
    if (close(fd) < 0 && rc == 0)
        fail(x, errno, "failed to close %s", dst_q(x), NULL);
}

/* Every range of a large file is in: its metadata, then the rename, as for any file. */
static void exec_commit(struct ectx *x)
{
    x->r->flags |= MPCP_R_ATTEMPTED;
    const char *tmp = x->e->link_target;
    int rc = -1;
    int sfd = open_source(x);
    if (sfd >= 0) {
        int fd = openat(x->dfd, tmp, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        struct stat none = {0};
        if (fd < 0)
            fail(x, errno, "cannot create regular file %s", dst_q(x), NULL);
        else
            rc = file_metadata(x, sfd, fd, false, &none, true);
        close(sfd);
        if (fd >= 0 && close(fd) < 0 && rc == 0) {
            fail(x, errno, "failed to close %s", dst_q(x), NULL);
            rc = -1;
        }
    }
    if (rc != 0) {
        unlinkat(x->dfd, tmp, 0);
        return;
    }
    x->r->bytes = x->e->size;
    commit_or_fail(x, tmp, "cannot create regular file %s");
}

/* Metadata for what has no useful descriptor (symlinks, device nodes), by name. */
static int node_metadata(struct ectx *x, const char *tmp, bool is_link)
{
    const struct mpcp_opts *opt = x->opt;
    const struct mpcp_entry *e = x->e;
    if (opt->p_time) {
        struct timespec ts[2] = {{e->atime_sec, e->atime_nsec}, {e->mtime_sec, e->mtime_nsec}};
        if (utimensat(x->dfd, tmp, ts, AT_SYMLINK_NOFOLLOW) < 0) {
            fail(x, errno, "preserving times for %s", dst_q(x), NULL);
            return -1;
        }
    }
    bool owner_failed = false;
    if (opt->p_owner && fchownat(x->dfd, tmp, e->uid, e->gid, AT_SYMLINK_NOFOLLOW) < 0) {
        if (is_root() || (errno != EPERM && errno != EINVAL)) {
            fail(x, errno, "failed to preserve ownership for %s", dst_q(x), NULL);
            return -1;
        }
        owner_failed = true;
    }
    if (is_link)
        return 0;
    mode_t mode = mpcp_new_file_mode(opt, e->mode, owner_failed);
    if (fchmodat(x->dfd, tmp, mode, 0) < 0) {
        fail(x, errno, "setting permissions for %s", dst_q(x), NULL);
        return -1;
    }
    return 0;
}

static char *read_link(struct ectx *x)
{
    size_t cap = x->e->size ? (size_t)x->e->size + 1 : PATH_MAX;
    for (;;) {
        char *buf = malloc(cap);
        if (!buf) {
            fail(x, ENOMEM, "cannot read symbolic link %s", src_q(x), NULL);
            return NULL;
        }
        ssize_t n = readlinkat(x->sfd, x->e->name, buf, cap);
        if (n < 0) {
            fail(x, errno, "cannot read symbolic link %s", src_q(x), NULL);
            free(buf);
            return NULL;
        }
        if ((size_t)n < cap) {
            buf[n] = '\0';
            return buf;
        }
        free(buf);
        cap *= 2;
    }
}

/*
 * --attributes-only copies no data, so cp removes no existing destination
 * to make room for a symlink, fifo or device (a hard-linked or regular file
 * there keeps its data): making the node fails with EEXIST, as it does
 * with cp, unless -f lets a symlink replace it. --remove-destination and
 * -b move the old file aside first. Records the failure (what: cp's
 * message).
 */
static bool kept_by_attributes_only(struct ectx *x, bool exists, const char *what)
{
    const struct mpcp_opts *opt = x->opt;
    if (!exists || !opt->attributes_only || replaces_name(opt))
        return false;
    if (x->e->type == MPCP_T_LNK && opt->force)
        return false;
    fail(x, EEXIST, what, dst_q(x), NULL);
    return true;
}

static void exec_symlink(struct ectx *x)
{
    struct stat d;
    bool exists, through;
    if (look_at_dest(x, &d, &exists, &through) != GO ||
        kept_by_attributes_only(x, exists, "cannot create symbolic link %s"))
        return;
    char *target = read_link(x);
    if (!target)
        return;
    /* cp removes the old file first (-v says so), but under --attributes-only -f replaces it. */
    if (exists && deref_never(x) && (!x->opt->attributes_only || replaces_name(x->opt)))
        x->r->flags |= MPCP_R_REPLACED;
    char tmp[NAME_MAX + 1];
    mpcp_temp_name(tmp, sizeof tmp, x->e->dst_name);
    int rc = symlinkat(target, x->dfd, tmp);
    x->r->bytes = 0;
    free(target);
    if (rc < 0) {
        fail(x, errno, "cannot create symbolic link %s", dst_q(x), NULL);
        return;
    }
    if (node_metadata(x, tmp, true) < 0) {
        unlinkat(x->dfd, tmp, 0);
        return;
    }
    commit_or_fail(x, tmp, "cannot create symbolic link %s");
}

static void exec_special(struct ectx *x)
{
    struct stat d;
    bool exists, through;
    const char *what =
        x->e->type == MPCP_T_FIFO ? "cannot create fifo %s" : "cannot create special file %s";
    if (look_at_dest(x, &d, &exists, &through) != GO || kept_by_attributes_only(x, exists, what))
        return;
    /*
     * cp removes an existing file for a fifo or device only where it did
     * not follow a symlink to reach the source (-P, or below the operands
     * with -H), or with --remove-destination, -b or a linked destination
     * under --preserve=links; otherwise mknod finds the name taken.
     */
    bool followed = x->e->flags & MPCP_E_FOLLOW;
    if (exists && followed && !x->backup_due && !x->opt->remove_dest &&
        !(x->opt->p_links && d.st_nlink > 1)) {
        fail(x, EEXIST, what, dst_q(x), NULL);
        return;
    }
    if (exists && !followed)
        x->r->flags |= MPCP_R_REPLACED;
    char tmp[NAME_MAX + 1];
    mpcp_temp_name(tmp, sizeof tmp, x->e->dst_name);
    mode_t type = x->e->mode & S_IFMT;
    if (mknodat(x->dfd, tmp, type | 0600, (dev_t)x->e->rdev) < 0) {
        fail(x, errno, what, dst_q(x), NULL);
        return;
    }
    if (node_metadata(x, tmp, false) < 0) {
        unlinkat(x->dfd, tmp, 0);
        return;
    }
    commit_or_fail(x, tmp, what);
}

/* ---- -l and -s: links instead of copies ---- */

static bool same_inode(const struct mpcp_entry *e, const struct stat *d)
{
    return d->st_dev == e->dev && d->st_ino == e->ino;
}

/* Whether the source, a symlink (-P), points to the inode d. */
static bool source_points_to(struct ectx *x, const struct stat *d)
{
    struct stat t;
    return fstatat(x->sfd, x->e->name, &t, 0) == 0 && t.st_dev == d->st_dev &&
           t.st_ino == d->st_ino;
}

/* Whether the destination is the source's own name (same folder, same name). */
static bool same_name(struct ectx *x)
{
    const struct stat *d = dir_stat(x);
    struct stat s;
    return d && strcmp(x->e->name, x->e->dst_name) == 0 && fstat(x->sfd, &s) == 0 &&
           s.st_dev == d->st_dev && s.st_ino == d->st_ino;
}

/*
 * cp's same-file rules when it links onto an existing d. -l: a name of the
 * source already (or, with -P, of what the source symlink points to) is
 * left as it is, silently. -s: a symlink onto the file it would point to
 * is refused; a symlink that is already another name of the source symlink
 * (-P) is left as it is. Returns GO or STOP_HERE.
 */
static int link_same_file(struct ectx *x, const struct stat *d)
{
    const struct mpcp_entry *e = x->e;
    bool never = deref_never(x);
    bool src_link = S_ISLNK(e->mode), dst_link = S_ISLNK(d->st_mode);
    bool same;
    if (x->opt->hard_link) {
        same = same_inode(e, d) || (never && src_link && !dst_link && source_points_to(x, d));
        if (same)
            skip(x);
        return same ? STOP_HERE : GO;
    }
    if (dst_link && never && src_link && same_name(x)) {
        fail(x, 0, "%s and %s are the same file", src_q(x), dst_q(x));
        return STOP_HERE;
    }
    if (dst_link) {
        same = never && src_link && same_inode(e, d);
        if (same)
            skip(x);
        return same ? STOP_HERE : GO;
    }
    same = never && src_link ? source_points_to(x, d) : same_inode(e, d);
    if (!same || other_name_ok(x))
        return GO;
    fail(x, 0, "%s and %s are the same file", src_q(x), dst_q(x));
    return STOP_HERE;
}

/* cp's checks of an existing destination before it links, in its order. */
static int check_link_dest(struct ectx *x, const struct stat *d)
{
    const struct mpcp_opts *opt = x->opt;
    if (refused_by_update(x))
        return STOP_HERE;
    if (link_same_file(x, d) != GO)
        return STOP_HERE;
    if (opt->update == MPCP_UPDATE_OLDER && dst_newer_or_same(x->e, d)) {
        skip(x);
        x->r->flags |= MPCP_R_KEPT;
        return STOP_HERE;
    }
    if (refused_by_user(x, d))
        return STOP_HERE;
    if (S_ISDIR(d->st_mode)) {
        fail(x, 0, "cannot overwrite directory %s with non-directory", dst_q(x), NULL);
        return STOP_HERE;
    }
    return GO;
}

/* Stats the destination, not through a symlink (a link replaces one), unless its folder is new. */
static int look_at_link_dest(struct ectx *x, struct stat *d, bool *exists)
{
    *exists = false;
    if (!(x->e->flags & MPCP_E_DEST_NEW)) {
        if (fstatat(x->dfd, x->e->dst_name, d, AT_SYMLINK_NOFOLLOW) == 0) {
            *exists = true;
        } else if (errno != ENOENT) {
            fail(x, errno, "cannot stat %s", dst_q(x), NULL);
            return STOP_HERE;
        }
    }
    if (*exists && (check_link_dest(x, d) != GO || backup_is_source(x)))
        return STOP_HERE;
    x->r->flags |= MPCP_R_ATTEMPTED;
    return GO;
}

/*
 * Where cp removes an existing destination before it links, and -v says
 * "removed": another name of a linked file (--preserve=links), or under -P
 * a source that is not a regular file.
 */
static bool removed_first(const struct ectx *x, const struct stat *d)
{
    return (x->opt->p_links && d->st_nlink > 1) || (deref_never(x) && !S_ISREG(x->e->mode));
}

static const char *link_failure(const struct ectx *x)
{
    return x->opt->symbolic_link ? "cannot create symbolic link %s to %s"
                                 : "cannot create hard link %s to %s";
}

/*
 * -s: the symlink's text, the source's name as typed, joined as cp joins
 * it. A relative one means something else from any folder but the working
 * one, which cp refuses; the planner tells which folders those are
 * (MPCP_TASK_AWAY), so the answer does not depend on a worker's own
 * working folder. Returns 0 or -1 (recorded).
 */
static int link_text(struct ectx *x, char *buf, size_t size)
{
    const struct mpcp_task *t = x->task;
    bool top = t->flags & MPCP_TASK_TOP;
    int n = join_name(buf, size, t->src_disp, x->e->name, top);
    if (n < 0 || (size_t)n >= size) {
        fail(x, ENAMETOOLONG, link_failure(x), dst_q(x), src_q(x));
        return -1;
    }
    if (buf[0] == '/' || !(t->flags & MPCP_TASK_AWAY))
        return 0;
    char path[PATH_MAX * 2], q[PATH_MAX * 2];
    join_name(path, sizeof path, t->dst_disp, x->e->dst_name, top);
    mpcp_quote_if_needed(q, sizeof q, path);
    fail(x, 0, "%s: can make relative symbolic links only in current directory", q, NULL);
    return -1;
}

/* Makes name a hard link to the source (text NULL) or a symlink to text. Returns 0 or -errno. */
static int make_link(struct ectx *x, const char *text, const char *name)
{
    int rc;
    if (text)
        rc = symlinkat(text, x->dfd, name);
    else
        rc = linkat(x->sfd, x->e->name, x->dfd, name,
                    (x->e->flags & MPCP_E_FOLLOW) ? AT_SYMLINK_FOLLOW : 0);
    return rc < 0 ? -errno : 0;
}

/* cp -as gives the symlinks their source's times (never an owner: cp leaves that as made). */
static int link_times(struct ectx *x, const char *text, const char *name)
{
    if (!text || !x->opt->p_time)
        return 0;
    const struct mpcp_entry *e = x->e;
    struct timespec ts[2] = {{e->atime_sec, e->atime_nsec}, {e->mtime_sec, e->mtime_nsec}};
    if (utimensat(x->dfd, name, ts, AT_SYMLINK_NOFOLLOW) == 0)
        return 0;
    fail(x, errno, "preserving times for %s", dst_q(x), NULL);
    return -1;
}

/* A task run again after its worker died finds the links it made before. */
static bool made_before(struct ectx *x, const char *text)
{
    if (!(x->e->flags & MPCP_E_DEST_NEW))
        return false;
    struct stat d;
    if (!text)
        return fstatat(x->dfd, x->e->dst_name, &d, AT_SYMLINK_NOFOLLOW) == 0 &&
               same_inode(x->e, &d);
    char now[PATH_MAX * 2];
    ssize_t n = readlinkat(x->dfd, x->e->dst_name, now, sizeof now);
    return n >= 0 && (size_t)n == strlen(text) && memcmp(now, text, (size_t)n) == 0;
}

/*
 * Replaces the existing destination as cp's force_linkat does: the link
 * under a temporary name, renamed over the old file, which stays whole
 * until then (and on any failure).
 */
static void replace_with_link(struct ectx *x, const char *text)
{
    char tmp[NAME_MAX + 1];
    mpcp_temp_name(tmp, sizeof tmp, x->e->dst_name);
    int rc = make_link(x, text, tmp);
    if (rc < 0) {
        fail(x, -rc, link_failure(x), dst_q(x), src_q(x));
        return;
    }
    if (link_times(x, text, tmp) < 0 || (x->backup_due && back_up(x, false) < 0)) {
        unlinkat(x->dfd, tmp, 0);
        return;
    }
    if (renameat(x->dfd, tmp, x->dfd, x->e->dst_name) < 0) {
        fail(x, errno, link_failure(x), dst_q(x), src_q(x));
        unlinkat(x->dfd, tmp, 0);
        return;
    }
    /* A rename between two names of one inode does nothing and leaves tmp. */
    if (!text)
        unlinkat(x->dfd, tmp, 0);
}

/*
 * -l and -s: the entry becomes a hard link to its source, or a symlink to
 * the source's name as typed, made here (a worker) as a copy would be. A
 * new name needs no temporary: one call makes it whole. Nothing else is
 * set on a hard link (it is the source); a symlink gets only its times.
 */
static void exec_link(struct ectx *x)
{
    struct stat d;
    bool exists;
    if (look_at_link_dest(x, &d, &exists) != GO)
        return;
    /* -b backs the old file up; else cp removes it first where removed_first() says. */
    x->backup_due = exists && x->opt->backup != MPCP_BACKUP_NONE;
    bool removed = exists && !x->backup_due && (x->opt->remove_dest || removed_first(x, &d));
    if (removed)
        x->r->flags |= MPCP_R_REPLACED;
    char buf[PATH_MAX * 2];
    const char *text = x->opt->symbolic_link ? buf : NULL;
    if (text && link_text(x, buf, sizeof buf) < 0) {
        /*
         * cp removed it before it found that it could not link: so does
         * the tree. (A backup cp puts back: the old file stays.)
         */
        if (removed)
            unlinkat(x->dfd, x->e->dst_name, 0);
        return;
    }
    /* A yes to -i's question replaces it, as -f does. */
    if (exists && (removed || x->backup_due || x->opt->force || x->opt->interactive)) {
        replace_with_link(x, text);
        return;
    }
    int rc = make_link(x, text, x->e->dst_name);
    bool noreplace = x->opt->update == MPCP_UPDATE_NONE || x->opt->update == MPCP_UPDATE_NONE_FAIL;
    if (rc == -EEXIST && made_before(x, text))
        return;
    if (rc == -EEXIST && noreplace) {
        skip(x); /* it appeared meanwhile: a no-clobber run leaves it */
        return;
    }
    if (rc < 0) {
        fail(x, -rc, link_failure(x), dst_q(x), src_q(x));
        return;
    }
    link_times(x, text, x->e->dst_name);
}

static int open_link_dir(struct ectx *x, const char **base)
{
    const char *path = x->e->link_target;
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    size_t n = slash ? (size_t)(slash - path) : 0;
    char *dir = strndup(path, n);
    if (!dir)
        return -ENOMEM;
    int fd = -1;
    /* rdev carries the root of the first copy: a link group may span operands. */
    uint64_t root = x->e->rdev;
    int rc = root < n_roots ? open_below(roots[root].dst, dir, false, &fd) : -EBADMSG;
    free(dir);
    return rc ? rc : fd;
}

static void exec_reg_copy(struct ectx *x);

/*
 * cp fails where the link count is full; mpcp copies the data instead, so
 * the tree is complete but that name no longer shares its inode: the user
 * must hear it even though the exit status stays 0. The errno text is in
 * the message, err stays 0: an OK entry's message is a warning.
 */
static void warn_unlinked(struct ectx *x, const char *link_q)
{
    mpcp_format(x->msg, sizeof x->msg, "warning: cannot create hard link %s to %s", dst_q(x),
                link_q);
    size_t n = strlen(x->msg);
    snprintf(x->msg + n, sizeof x->msg - n, ": %s; copied the data instead",
             mproc_strerror(-EMLINK));
    x->r->msg = x->msg;
}

/* Whether -u keeps the existing destination d (judged through a symlink, as check_existing). */
static bool kept_by_update(struct ectx *x, const struct stat *d)
{
    struct stat t;
    if (S_ISLNK(d->st_mode) && !replaces_name(x->opt))
        return fstatat(x->dfd, x->e->dst_name, &t, 0) == 0 && dst_newer_or_same(x->e, &t);
    return dst_newer_or_same(x->e, d);
}

/*
 * First copies of hard-link groups that failed in this task: a later name
 * of the group in the same task is copied by itself (cp forgets a failed
 * first copy), not linked to what the destination held. Later tasks are
 * rewritten by the planner, which waits for the first copies (walk.c).
 * Under update_links a copy that -u keeps becomes the group's first copy
 * (kept_path, kept_disp: owned here, freed when the next task starts), and
 * the planner learns it from the result.
 */
#define MAX_FAILED_LEADERS 64
struct failed_leader {
    uint64_t dev, ino;
    char *kept_path, *kept_disp;
};
static struct failed_leader failed_leaders[MAX_FAILED_LEADERS];
static size_t n_failed_leaders;

static void remember_failed_leader(const struct mpcp_entry *e)
{
    if (n_failed_leaders < MAX_FAILED_LEADERS)
        failed_leaders[n_failed_leaders++] = (struct failed_leader){e->dev, e->ino, NULL, NULL};
}

static struct failed_leader *leader_failed_here(const struct mpcp_entry *e)
{
    for (size_t i = 0; i < n_failed_leaders; i++)
        if (failed_leaders[i].dev == e->dev && failed_leaders[i].ino == e->ino)
            return &failed_leaders[i];
    return NULL;
}

static void forget_failed_leaders(void)
{
    for (size_t i = 0; i < n_failed_leaders; i++) {
        free(failed_leaders[i].kept_path);
        free(failed_leaders[i].kept_disp);
    }
    n_failed_leaders = 0;
}

/* x's name from the destination root, as the planner names a first copy (walk.c). */
static void keep_as_leader(struct ectx *x, struct failed_leader *f)
{
    const struct mpcp_task *t = x->task;
    bool top = t->flags & MPCP_TASK_TOP;
    char buf[PATH_MAX * 2];
    /* top: the operand's name in its root, and its destination as typed. */
    join_name(buf, sizeof buf, t->dst_dir, x->e->dst_name, false);
    char *path = strdup(top ? x->e->dst_name : buf);
    join_name(buf, sizeof buf, t->dst_disp, x->e->dst_name, top);
    char *disp = strdup(buf);
    if (!path || !disp) {
        /* Out of memory: the later names are copied by themselves, none is lost. */
        free(path);
        free(disp);
        return;
    }
    f->kept_path = path;
    f->kept_disp = disp;
}

static void link_to_first(struct ectx *x);

/*
 * A name whose first copy failed in this task: copied by itself, or under
 * update_links linked to the name -u kept since (which the link checks).
 */
static void exec_after_failed_leader(struct ectx *x, struct failed_leader *f)
{
    if (!x->opt->update_links || !f->kept_path) {
        exec_reg_copy(x);
        if (x->opt->update_links && x->r->status == MPCP_SKIPPED && (x->r->flags & MPCP_R_KEPT))
            keep_as_leader(x, f);
        return;
    }
    const struct mpcp_entry *orig = x->e;
    struct mpcp_entry link = *orig;
    link.type = MPCP_T_HARDLINK;
    link.link_target = f->kept_path;
    link.link_disp = f->kept_disp;
    link.rdev = x->task->dst_root;
    x->e = &link;
    link_to_first(x);
    x->e = orig; /* link dies here */
}

static void exec_hardlink(struct ectx *x)
{
    struct failed_leader *f = x->e->mode && S_ISREG(x->e->mode) ? leader_failed_here(x->e) : NULL;
    if (f) {
        exec_after_failed_leader(x, f);
        return;
    }
    link_to_first(x);
}

static void link_to_first(struct ectx *x)
{
    const char *base;
    int tdir = open_link_dir(x, &base);
    char link_q[PATH_MAX * 2];
    mpcp_quote(link_q, sizeof link_q, x->e->link_disp);
    if (tdir < 0) {
        fail(x, -tdir, "cannot create hard link %s to %s", dst_q(x), link_q);
        return;
    }
    struct stat d, t;
    bool exists = false;
    if (!(x->e->flags & MPCP_E_DEST_NEW) &&
        fstatat(x->dfd, x->e->dst_name, &d, AT_SYMLINK_NOFOLLOW) == 0) {
        exists = true;
        /* A rerun: the link is already there (rename would silently do nothing). */
        if (fstatat(tdir, base, &t, AT_SYMLINK_NOFOLLOW) == 0 && t.st_dev == d.st_dev &&
            t.st_ino == d.st_ino) {
            close(tdir);
            return;
        }
    }
    /*
     * A name whose newer destination -u keeps: cp replaces it with the link
     * at once, before its other checks and without a backup. Without
     * --preserve=links only such a name is linked; any other is copied.
     */
    bool keeps = exists && x->opt->update == MPCP_UPDATE_OLDER && !S_ISDIR(d.st_mode) &&
                 kept_by_update(x, &d);
    if (x->opt->update_links && !keeps) {
        close(tdir);
        exec_reg_copy(x);
        return;
    }
    if (exists && !keeps && check_existing(x, &d) == STOP_HERE) {
        close(tdir);
        return;
    }
    /* cp links over an existing name by removing it first, and -v says so; -b keeps it. */
    if (keeps)
        x->r->flags |= MPCP_R_REPLACED | MPCP_R_KEPT_LINK;
    else if (exists && x->opt->backup != MPCP_BACKUP_NONE)
        x->backup_due = true;
    else if (exists)
        x->r->flags |= MPCP_R_REPLACED | MPCP_R_LINKED;
    if (!keeps)
        x->r->flags |= MPCP_R_ATTEMPTED;
    char tmp[NAME_MAX + 1];
    mpcp_temp_name(tmp, sizeof tmp, x->e->dst_name);
    int rc = linkat(tdir, base, x->dfd, tmp, 0);
    int err = errno;
    close(tdir);
    if (rc < 0 && err == EMLINK && x->e->mode && S_ISREG(x->e->mode)) {
        /* The link count is full: a copy of the data is the next best thing. */
        exec_reg_copy(x);
        if (x->r->status == MPCP_OK)
            warn_unlinked(x, link_q);
        return;
    }
    if (rc < 0 && err == ENOENT && x->e->mode && S_ISREG(x->e->mode)) {
        /*
         * The first copy of the group failed (cp forgets it then): this name
         * is copied by itself, and says why if it fails too ("cannot open").
         */
        exec_reg_copy(x);
        return;
    }
    if (rc < 0) {
        fail(x, err, "cannot create hard link %s to %s", dst_q(x), link_q);
        return;
    }
    commit_or_fail(x, tmp, "cannot create hard link %s");
    /*
     * A task run again after its worker died may find the link made: rename
     * onto another name of the same inode does nothing and keeps tmp.
     */
    if ((x->e->flags & MPCP_E_DEST_NEW) && x->r->status == MPCP_OK)
        unlinkat(x->dfd, tmp, 0);
}

static void exec_reg_copy(struct ectx *x)
{
    const struct mpcp_entry *link = x->e;
    struct mpcp_entry copy = *link;
    copy.type = MPCP_T_REG;
    x->e = &copy;
    exec_reg(x);
    x->e = link; /* copy dies here */
}

static void exec_entry(struct ectx *x)
{
    /*
     * -l, -s: every kind of file is linked, none copied. Under -s a link
     * group's later members stay HARDLINK entries: links to the group's
     * first symlink, as cp -as makes them.
     */
    if ((x->opt->hard_link || x->opt->symbolic_link) && x->e->type != MPCP_T_HARDLINK) {
        exec_link(x);
        return;
    }
    /* What opens other descriptors (link folders, ranges) gets the held ones back first. */
    if (x->e->type == MPCP_T_HARDLINK || x->e->type == MPCP_T_CHUNK || x->e->type == MPCP_T_COMMIT)
        close_held();
    switch (x->e->type) {
    case MPCP_T_REG:
        exec_reg(x);
        break;
    case MPCP_T_LNK:
        exec_symlink(x);
        break;
    case MPCP_T_HARDLINK:
        exec_hardlink(x);
        break;
    case MPCP_T_CHUNK:
        exec_chunk(x);
        break;
    case MPCP_T_COMMIT:
        exec_commit(x);
        break;
    default:
        exec_special(x);
        break;
    }
}

static int resolve_dirs(const struct mpcp_task *t, int hint_src, int hint_dst, int *sfd, int *dfd,
                        dev_t *ddev, int *failed_side, struct task_dir *td)
{
    if (t->src_root >= n_roots || t->dst_root >= n_roots)
        return -EBADMSG;
    if (hint_src >= 0 && hint_dst >= 0) {
        struct stat st;
        if (fstat(hint_dst, &st) < 0)
            return -errno;
        task_dir_stated(td, &st);
        *sfd = hint_src;
        *dfd = hint_dst;
        *ddev = st.st_dev;
        return 0;
    }
    dev_t sdev;
    *failed_side = 0;
    int rc = cached_dir(&src_cache, t->src_root, roots[t->src_root].src, t->src_dir,
                        t->flags & MPCP_TASK_FOLLOW, sfd, &sdev, NULL);
    if (rc)
        return rc;
    *failed_side = 1;
    /* A folder found in the cache is stated again if needed: its owner may have changed. */
    td->o_path = true;
    return cached_dir(&dst_cache, t->dst_root, roots[t->dst_root].dst, t->dst_dir, false, dfd, ddev,
                      td);
}

int mpcp_exec_run(const unsigned char *task, size_t len, int hint_src, int hint_dst,
                  struct mpcp_buf *result)
{
    struct mpcp_task t;
    size_t pos;
    int rc = mpcp_task_decode_header(task, len, &t, &pos);
    if (rc)
        return rc;
    rc = mpcp_result_begin(result);
    if (rc)
        return rc;
    int sfd = -1, dfd = -1, side = 0;
    dev_t ddev = 0;
    struct task_dir td = {.stated = false, .o_path = false, .default_acl = -1};
    int dir_rc = resolve_dirs(&t, hint_src, hint_dst, &sfd, &dfd, &ddev, &side, &td);
    if (dir_rc == -EBADMSG)
        return dir_rc;
    struct ectx *x = malloc(sizeof *x);
    if (!x)
        return -ENOMEM;
    forget_failed_leaders();
    bool stop = false;
    for (uint32_t i = 0; i < t.count && !stop; i++) {
        struct mpcp_entry e;
        rc = mpcp_task_decode_entry(task, len, &pos, &e);
        if (rc)
            break;
        struct mpcp_result_entry r = {MPCP_OK, 0, 0, 0, "", ""};
        x->opt = options;
        x->task = &t;
        x->e = &e;
        x->sfd = sfd;
        x->dfd = dfd;
        x->ddev = ddev;
        x->dir = &td;
        x->made_here = false;
        x->anon = false;
        x->made_mode = 0;
        x->xattrs = -1;
        x->backup_due = false;
        x->special_dest = false;
        x->through_new = false;
        x->backup[0] = '\0';
        x->r = &r;
        x->src_q[0] = x->dst_q[0] = '\0';
        if (mpcp_interrupted) {
            r.status = MPCP_FAILED;
            r.err = EINTR;
            r.flags = MPCP_R_STOP;
        } else if (dir_rc) {
            char q[PATH_MAX * 2];
            mpcp_quote(q, sizeof q, side ? t.dst_disp : t.src_disp);
            fail(x, -dir_rc, "cannot access %s", q, NULL);
        } else if (options->dry_run) {
            /* nothing is written */
        } else {
            exec_entry(x);
        }
        /*
         * -n and -i keep what is there, which is not a copy; -u keeps it as
         * the copy, and without --preserve=links only that (update_links).
         */
        bool lost = r.status == MPCP_FAILED ||
                    (r.status == MPCP_SKIPPED && !(r.flags & MPCP_R_KEPT)) ||
                    (r.status == MPCP_OK && options->update_links);
        if ((e.flags & MPCP_E_LEADER) && lost)
            remember_failed_leader(&e);
        stop = r.flags & MPCP_R_STOP;
        rc = mpcp_result_add(result, &r);
        if (rc)
            break;
    }
    close_held(); /* a task leaves no descriptor behind */
    forget_failed_leaders();
    free(x);
    return rc;
}
