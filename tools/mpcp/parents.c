/*
 * parents.c: --parents, cp's DIRECTORY/SOURCE. Before an operand is copied
 * the folders on its way are made (cp's make_dir_parents_private); after
 * every copy they get their attributes back (cp's re_protect). cp fixes
 * them after each operand; mpcp copies operands in parallel, so it fixes
 * them all at the end and replays cp's order for the one thing order
 * changes: a folder's times, which a later operand writing into it resets.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What happened to a destination folder, in cp's order. */
struct parents_event {
    bool protect; /* re_protect of dirs[dir]; else something was made in (dev, ino) */
    size_t dir;   /* protect: index into dirs */
    dev_t dev;    /* the destination folder */
    ino_t ino;
};

struct parents_dir {
    char *path;      /* DIRECTORY/ + the source's leading folders, as cp names it */
    struct stat src; /* the source folder's attributes; st_mode is what a restore sets */
    bool restore_mode;
};

struct mpcp_parents {
    const struct mpcp_opts *opt;
    struct mpcp_buf dirs;   /* struct parents_dir, in the order they are met */
    struct mpcp_buf events; /* struct parents_event, in cp's order */
};

static size_t n_dirs(const struct mpcp_parents *ps)
{
    return ps->dirs.len / sizeof(struct parents_dir);
}

static struct parents_dir *dir_at(const struct mpcp_parents *ps, size_t i)
{
    return (struct parents_dir *)(void *)ps->dirs.data + i;
}

static size_t n_events(const struct mpcp_parents *ps)
{
    return ps->events.len / sizeof(struct parents_event);
}

static const struct parents_event *event_at(const struct mpcp_parents *ps, size_t k)
{
    return (const struct parents_event *)(const void *)ps->events.data + k;
}

int mpcp_parents_new(struct mpcp_parents **out, const struct mpcp_opts *opt)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return -ENOMEM;
    (*out)->opt = opt;
    return 0;
}

void mpcp_parents_free(struct mpcp_parents *ps)
{
    if (!ps)
        return;
    for (size_t i = 0; i < n_dirs(ps); i++)
        free(dir_at(ps, i)->path);
    mpcp_buf_free(&ps->dirs);
    mpcp_buf_free(&ps->events);
    free(ps);
}

static int add_event(struct mpcp_parents *ps, const struct parents_event *ev)
{
    return mpcp_buf_put(&ps->events, ev, sizeof *ev);
}

/* Something is made in the folder at path (a folder of ours, or the operand itself). */
static int note_made_in(struct mpcp_parents *ps, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return 0; /* a folder that is not there cannot have its times reset */
    return add_event(ps, &(struct parents_event){false, 0, st.st_dev, st.st_ino});
}

static int add_dir(struct mpcp_parents *ps, const char *path, const struct stat *src, size_t *i)
{
    struct parents_dir d = {strdup(path), *src, false};
    if (!d.path || mpcp_buf_put(&ps->dirs, &d, sizeof d) < 0) {
        free(d.path);
        return -ENOMEM;
    }
    *i = n_dirs(ps) - 1;
    return 0;
}

/*
 * Makes one missing folder as cp does: the source's mode less what must
 * wait for the owner or mode to be set, and owner-writable meanwhile.
 */
static int make_one(struct mpcp_parents *ps, struct parents_dir *d, const struct mpcp_reporter *r)
{
    const struct mpcp_opts *opt = ps->opt;
    mode_t src_mode = d->src.st_mode;
    mode_t omitted = src_mode & (opt->p_owner ? 077 : opt->p_mode ? 022 : 0);
    mode_t mode = (opt->no_p_mode ? 0777 : src_mode) & 07777 & ~omitted;
    if (mkdir(d->path, mode) < 0) {
        r->fail(r->arg, errno, "cannot make directory %s", d->path);
        return -1;
    }
    struct stat st;
    if (lstat(d->path, &st) < 0) {
        r->fail(r->arg, errno, "failed to get attributes of %s", d->path);
        return -1;
    }
    if (!opt->p_mode) {
        if (omitted & ~st.st_mode)
            omitted &= ~opt->umask;
        if ((omitted & ~st.st_mode) || (st.st_mode & 0700) != 0700) {
            d->src.st_mode = st.st_mode | omitted;
            d->restore_mode = true;
        }
    }
    if ((st.st_mode & 0700) != 0700 && chmod(d->path, (st.st_mode | 0700) & 07777) < 0) {
        r->fail(r->arg, errno, "setting permissions for %s", d->path);
        return -1;
    }
    return 0;
}

/* The folder dir (cut at a slash of the destination path) on the way. */
static int one_level(struct mpcp_parents *ps, char *dir, const char *src, bool *missing,
                     const struct mpcp_reporter *r)
{
    const struct mpcp_opts *opt = ps->opt;
    struct stat dst;
    if (!*missing)
        *missing = stat(dir, &dst) != 0;
    if (!*missing && !S_ISDIR(dst.st_mode)) {
        r->fail(r->arg, 0, "%s exists but is not a directory", dir);
        return -1;
    }
    if (!*missing && !opt->p_owner && !opt->p_mode && !opt->p_time)
        return 0;
    struct stat sst;
    int err = stat(src, &sst) < 0 ? errno : S_ISDIR(sst.st_mode) ? 0 : ENOTDIR;
    if (err) {
        r->fail(r->arg, err, "failed to get attributes of %s", src);
        return -1;
    }
    size_t i;
    if (add_dir(ps, dir, &sst, &i) < 0) {
        r->fail(r->arg, ENOMEM, "cannot make directory %s", dir);
        return -1;
    }
    if (!*missing)
        return 0;
    if (opt->dry_run) {
        r->made(r->arg, src, dir);
        return 0;
    }
    if (make_one(ps, dir_at(ps, i), r) < 0)
        return -1;
    r->made(r->arg, src, dir);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    int rc = note_made_in(ps, *dir ? dir : "/");
    *slash = '/';
    return rc;
}

/* cp's first look: when the folder the operand lands in is there, nothing is made or fixed. */
static int check_parent(char *dir, char *last_slash, bool *exists, const struct mpcp_reporter *r)
{
    struct stat st;
    *last_slash = '\0';
    *exists = stat(dir, &st) == 0;
    int rc = 0;
    if (*exists && !S_ISDIR(st.st_mode)) {
        r->fail(r->arg, 0, "%s exists but is not a directory", dir);
        rc = -1;
    }
    *last_slash = '/';
    return rc;
}

int mpcp_parents_make(struct mpcp_parents *ps, const char *dst, size_t arg_off,
                      const struct mpcp_reporter *r)
{
    char *dir = strdup(dst);
    if (!dir) {
        r->fail(r->arg, ENOMEM, "cannot make directory %s", dst);
        return -1;
    }
    char *last = strrchr(dir + arg_off, '/');
    size_t first = n_dirs(ps);
    bool exists = true, missing = false;
    int rc = last ? check_parent(dir, last, &exists, r) : 0;
    char *slash = dir + arg_off + strspn(dir + arg_off, "/");
    while (!exists && rc == 0 && (slash = strchr(slash, '/')) != NULL) {
        *slash = '\0';
        rc = one_level(ps, dir, dir + arg_off, &missing, r);
        *slash = '/';
        slash += strspn(slash, "/");
    }
    /* In cp's order: what this operand makes, its own copy, then the fixes. */
    if (rc == 0 && !ps->opt->dry_run) {
        char *cut = last ? last : dir + arg_off - 1; /* the slash before the operand's name */
        *cut = '\0';
        rc = note_made_in(ps, *dir ? dir : "/");
    }
    free(dir);
    for (size_t i = first; rc == 0 && i < n_dirs(ps); i++)
        rc = add_event(ps, &(struct parents_event){true, i, 0, 0});
    if (rc < -1)
        r->fail(r->arg, -rc, "cannot make directory %s", dst);
    return rc < 0 ? -1 : 0;
}

/* Ownership and mode, as cp's re_protect sets them (its times come later). */
static void protect_owner_mode(struct mpcp_parents *ps, struct parents_dir *d,
                               const struct mpcp_reporter *r)
{
    const struct mpcp_opts *opt = ps->opt;
    if (opt->p_owner && lchown(d->path, d->src.st_uid, d->src.st_gid) < 0) {
        if (errno != EPERM && errno != EINVAL) {
            r->fail(r->arg, errno, "failed to preserve ownership for %s", d->path);
            return;
        }
        (void)!lchown(d->path, (uid_t)-1, d->src.st_gid);
    }
    if ((opt->p_mode || d->restore_mode) && chmod(d->path, d->src.st_mode & 07777) < 0)
        r->fail(r->arg, errno,
                opt->p_mode ? "preserving permissions for %s"
                            : "failed to preserve permissions for %s",
                d->path);
}

/* Open addressing over (dev, ino): the folders a backward pass has seen. */
struct seen {
    dev_t *dev;
    ino_t *ino;
    unsigned char *flags; /* 1: used, 2: made in after, 4: protected after */
    size_t cap;
};

static unsigned char *seen_slot(struct seen *s, dev_t dev, ino_t ino)
{
    size_t h = ((size_t)ino * 0x9E3779B97F4A7C15u ^ (size_t)dev) & (s->cap - 1);
    while ((s->flags[h] & 1) && (s->dev[h] != dev || s->ino[h] != ino))
        h = (h + 1) & (s->cap - 1);
    s->flags[h] |= 1;
    s->dev[h] = dev;
    s->ino[h] = ino;
    return &s->flags[h];
}

/*
 * A folder's times are the last protect's, unless something was made in
 * it after that protect (cp would then leave the time of that write).
 */
static void protect_times(struct mpcp_parents *ps, struct seen *s, const struct mpcp_reporter *r)
{
    for (size_t k = n_events(ps); k-- > 0;) {
        const struct parents_event *ev = event_at(ps, k);
        if (!ev->protect) {
            *seen_slot(s, ev->dev, ev->ino) |= 2;
            continue;
        }
        struct parents_dir *d = dir_at(ps, ev->dir);
        struct stat st;
        if (stat(d->path, &st) < 0)
            continue;
        unsigned char *f = seen_slot(s, st.st_dev, st.st_ino);
        if (*f & 4)
            continue;
        *f |= 4;
        struct timespec t[2] = {d->src.st_atim, d->src.st_mtim};
        if (*f & 2)
            t[1].tv_nsec = UTIME_OMIT;
        if (utimensat(AT_FDCWD, d->path, t, 0) < 0)
            r->fail(r->arg, errno, "failed to preserve times for %s", d->path);
    }
}

void mpcp_parents_protect(struct mpcp_parents *ps, const struct mpcp_reporter *r)
{
    if (!ps || n_dirs(ps) == 0 || ps->opt->dry_run)
        return;
    for (size_t k = 0; k < n_events(ps); k++)
        if (event_at(ps, k)->protect)
            protect_owner_mode(ps, dir_at(ps, event_at(ps, k)->dir), r);
    if (!ps->opt->p_time)
        return;
    struct seen s = {NULL, NULL, NULL, 16};
    while (s.cap < n_events(ps) * 2)
        s.cap *= 2;
    s.dev = calloc(s.cap, sizeof *s.dev);
    s.ino = calloc(s.cap, sizeof *s.ino);
    s.flags = calloc(s.cap, 1);
    if (s.dev && s.ino && s.flags)
        protect_times(ps, &s, r);
    else
        r->fail(r->arg, ENOMEM, "failed to preserve times for %s", dir_at(ps, 0)->path);
    free(s.dev);
    free(s.ino);
    free(s.flags);
}

char *mpcp_parents_dest(const char *target, const char *arg, size_t *arg_off)
{
    size_t t = strlen(target), a = strlen(arg);
    while (t > 1 && target[t - 1] == '/')
        t--;
    while (a > 1 && arg[a - 1] == '/')
        a--;
    bool sep = target[t - 1] != '/' && arg[0] != '/';
    char *dst = malloc(t + sep + a + 1);
    if (!dst)
        return NULL;
    memcpy(dst, target, t);
    if (sep)
        dst[t] = '/';
    memcpy(dst + t + sep, arg, a);
    dst[t + sep + a] = '\0';
    *arg_off = t + sep;
    return dst;
}
