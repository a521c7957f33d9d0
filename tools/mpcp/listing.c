/*
 * listing.c: folder listings made by a worker, for the planner. Reading
 * folders and stat-ing their entries is the walk's share of the metadata
 * work; on a shared filesystem under MPI that work is spread over the ranks
 * this way, while the planner keeps the order, makes the folders and
 * decides everything else (hard links, batches, ranges).
 *
 * One request lists a folder and then, breadth first, the folders below it
 * until a budget of entries or folders is spent: a worker walks a piece of
 * the tree per task, so that a tree of many small folders costs few tasks.
 *
 * Request: u32 LIST_MAGIC | u32 flags | u32 root | u32 root | path NUL
 *   (the root twice: parallel.c reads a task's two roots at bytes 8 and 12)
 * Result:  u32 LIST_RESULT | u32 sections, then per folder a struct
 *   list_section + its path from the requested folder + NUL, then per entry
 *   a struct list_wire + name + NUL. Both ends are the same program, so the
 *   records are copied as they are.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LIST_MAGIC  0x3254534cu /* "LST2" */
#define LIST_RESULT 0x3252534cu /* "LSR2" */

/* A request's budget: beyond it, the planner asks again for the folders left. */
#define BUDGET_ENTRIES 4096u
#define BUDGET_FOLDERS 64u

struct list_section {
    uint64_t bytes; /* of the whole section, from this header on */
    uint64_t dir_dev, dir_ino;
    int32_t status; /* 0, -errno of the folder, or MPCP_LIST_WIDE */
    uint32_t count;
    uint32_t rel_len;
    uint32_t pad;
};

struct list_wire {
    uint64_t size, blocks, dev, ino, rdev, nlink;
    int64_t atime_sec, mtime_sec, ctime_sec;
    uint32_t atime_nsec, mtime_nsec, ctime_nsec;
    uint32_t mode, uid, gid;
    int32_t err; /* fstatat's errno; the fields are unset then */
    uint32_t name_len;
};

/* A folder opened, to be listed. */
struct queued {
    int fd;
    char *rel;
};

struct lister {
    struct mpcp_buf *out;
    unsigned flags;
    struct queued *q;
    size_t head, n; /* q[head..n) are waiting */
    uint32_t sections;
    uint32_t entries;
};

int mpcp_list_request(struct mpcp_buf *b, uint32_t root, const char *path, unsigned flags)
{
    uint32_t head[4] = {LIST_MAGIC, flags, root, root};
    b->len = 0;
    int rc = mpcp_buf_put(b, head, sizeof head);
    return rc ? rc : mpcp_buf_put(b, path, strlen(path) + 1);
}

bool mpcp_list_is_request(const unsigned char *p, size_t len)
{
    uint32_t magic;
    if (len < sizeof magic)
        return false;
    memcpy(&magic, p, sizeof magic);
    return magic == LIST_MAGIC;
}

static void wire_from_stat(struct list_wire *w, const struct stat *st)
{
    w->size = (uint64_t)st->st_size;
    w->blocks = (uint64_t)st->st_blocks;
    w->dev = st->st_dev;
    w->ino = st->st_ino;
    w->rdev = st->st_rdev;
    w->nlink = st->st_nlink;
    w->atime_sec = st->st_atim.tv_sec;
    w->atime_nsec = (uint32_t)st->st_atim.tv_nsec;
    w->mtime_sec = st->st_mtim.tv_sec;
    w->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
    w->ctime_sec = st->st_ctim.tv_sec;
    w->ctime_nsec = (uint32_t)st->st_ctim.tv_nsec;
    w->mode = st->st_mode;
    w->uid = st->st_uid;
    w->gid = st->st_gid;
}

static void stat_from_wire(struct stat *st, const struct list_wire *w)
{
    memset(st, 0, sizeof *st);
    st->st_size = (off_t)w->size;
    st->st_blocks = (blkcnt_t)w->blocks;
    st->st_dev = (dev_t)w->dev;
    st->st_ino = (ino_t)w->ino;
    st->st_rdev = (dev_t)w->rdev;
    st->st_nlink = (nlink_t)w->nlink;
    st->st_atim.tv_sec = w->atime_sec;
    st->st_atim.tv_nsec = w->atime_nsec;
    st->st_mtim.tv_sec = w->mtime_sec;
    st->st_mtim.tv_nsec = w->mtime_nsec;
    st->st_ctim.tv_sec = w->ctime_sec;
    st->st_ctim.tv_nsec = w->ctime_nsec;
    st->st_mode = w->mode;
    st->st_uid = w->uid;
    st->st_gid = w->gid;
}

static char *join_rel(const char *rel, const char *name)
{
    size_t size = strlen(rel) + strlen(name) + 2;
    char *s = malloc(size);
    if (s)
        snprintf(s, size, "%s%s%s", rel, *rel ? "/" : "", name);
    return s;
}

/*
 * Opens subfolder name of fd to be listed after this one, if the budget
 * allows: a -x run does not cross into another filesystem, and a folder
 * that cannot be opened is left to the planner, which then says why.
 */
static void queue_below(struct lister *l, int fd, const struct stat *dir, const char *name,
                        const struct stat *st)
{
    if (l->n >= BUDGET_FOLDERS || l->entries >= BUDGET_ENTRIES)
        return;
    if ((l->flags & MPCP_LIST_ONE_FS) && st->st_dev != dir->st_dev)
        return;
    int nofollow = (l->flags & MPCP_LIST_FOLLOW) ? 0 : O_NOFOLLOW;
    int sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | nofollow);
    if (sub < 0)
        return;
    char *rel = join_rel(l->q[l->head].rel, name); /* q[head]: the folder being listed */
    if (!rel) {
        close(sub);
        return;
    }
    l->q[l->n].fd = sub;
    l->q[l->n].rel = rel;
    l->n++;
}

static int put_entry(struct lister *l, int fd, const struct stat *dir, const char *name)
{
    struct list_wire w;
    memset(&w, 0, sizeof w);
    struct stat st;
    int follow = (l->flags & MPCP_LIST_FOLLOW) ? 0 : AT_SYMLINK_NOFOLLOW;
    if (fstatat(fd, name, &st, follow) == 0) {
        wire_from_stat(&w, &st);
        if (S_ISDIR(st.st_mode))
            queue_below(l, fd, dir, name, &st);
    } else {
        w.err = errno;
    }
    w.name_len = (uint32_t)strlen(name);
    int rc = mpcp_buf_put(l->out, &w, sizeof w);
    return rc ? rc : mpcp_buf_put(l->out, name, (size_t)w.name_len + 1);
}

/* Fills in the header of the section that starts at start. */
static void end_section(struct mpcp_buf *out, size_t start, int status, uint32_t count)
{
    struct list_section s;
    memcpy(&s, out->data + start, sizeof s);
    if (status) {
        out->len = start + sizeof s + s.rel_len + 1; /* no entries: the planner reads it */
        count = 0;
    }
    s.status = status;
    s.count = count;
    s.bytes = out->len - start;
    memcpy(out->data + start, &s, sizeof s);
}

static int read_entries(struct lister *l, DIR *d, const struct stat *dir, uint32_t *count,
                        int *status)
{
    errno = 0;
    for (struct dirent *de = readdir(d); de; de = readdir(d)) {
        const char *n = de->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        if (*count == MPCP_LIST_MAX || mpcp_interrupted) {
            *status = MPCP_LIST_WIDE; /* the planner reads this one itself */
            return 0;
        }
        int rc = put_entry(l, dirfd(d), dir, n);
        if (rc < 0)
            return rc;
        (*count)++;
        errno = 0;
    }
    if (errno)
        *status = -errno;
    return 0;
}

/* Lists the queued folder q (its fd is taken) as one section. */
static int list_one(struct lister *l, struct queued *q)
{
    size_t start = l->out->len;
    struct list_section s;
    memset(&s, 0, sizeof s);
    s.rel_len = (uint32_t)strlen(q->rel);
    int rc = mpcp_buf_put(l->out, &s, sizeof s);
    rc = rc ? rc : mpcp_buf_put(l->out, q->rel, (size_t)s.rel_len + 1);
    if (rc < 0) {
        close(q->fd);
        return rc;
    }
    l->sections++;
    struct stat dir;
    DIR *d = fstat(q->fd, &dir) == 0 ? fdopendir(q->fd) : NULL;
    if (!d) {
        int err = errno;
        close(q->fd);
        end_section(l->out, start, -err, 0);
        return 0;
    }
    s.dir_dev = dir.st_dev;
    s.dir_ino = dir.st_ino;
    memcpy(l->out->data + start, &s, sizeof s);
    uint32_t count = 0;
    int status = 0;
    rc = read_entries(l, d, &dir, &count, &status);
    closedir(d);
    l->entries += count;
    end_section(l->out, start, status, count);
    return rc;
}

static int open_first(uint32_t root, const char *path, unsigned flags, int *fd)
{
    int at = -1;
    int rc = mpcp_exec_open_src(root, path, flags & MPCP_LIST_FOLLOW_DIR, &at);
    if (rc < 0)
        return rc;
    *fd = openat(at, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    rc = *fd < 0 ? -errno : 0;
    close(at);
    return rc;
}

/* Lists the queue until it is empty (folders queued are opened: they are listed). */
static int run_queue(struct lister *l)
{
    int rc = 0;
    while (l->head < l->n) {
        struct queued *q = &l->q[l->head];
        if (rc == 0 && !mpcp_interrupted)
            rc = list_one(l, q);
        else
            close(q->fd);
        free(q->rel);
        l->head++;
    }
    return rc;
}

int mpcp_list_run(const unsigned char *req, size_t len, struct mpcp_buf *out)
{
    uint32_t head[4];
    if (len < sizeof head + 1 || req[len - 1] != '\0')
        return -EBADMSG;
    memcpy(head, req, sizeof head);
    if (head[0] != LIST_MAGIC)
        return -EBADMSG;
    uint32_t top[2] = {LIST_RESULT, 0};
    out->len = 0;
    int rc = mpcp_buf_put(out, top, sizeof top);
    struct queued q[BUDGET_FOLDERS + 1];
    struct lister l = {out, head[1], q, 0, 0, 0, 0};
    int fd = -1;
    int err = open_first(head[2], (const char *)req + sizeof head, head[1], &fd);
    q[0].fd = fd;
    q[0].rel = strdup("");
    if (rc == 0 && !q[0].rel)
        rc = -ENOMEM;
    if (rc < 0 || err < 0) {
        if (fd >= 0)
            close(fd);
        free(q[0].rel);
        if (rc < 0)
            return rc;
        struct list_section s = {sizeof s + 1, 0, 0, err, 0, 0, 0};
        rc = mpcp_buf_put(out, &s, sizeof s);
        rc = rc ? rc : mpcp_buf_put(out, "", 1);
        top[1] = 1;
        memcpy(out->data, top, sizeof top);
        return rc;
    }
    l.n = 1;
    rc = run_queue(&l);
    top[1] = l.sections;
    memcpy(out->data, top, sizeof top);
    return rc;
}

int mpcp_list_decode_result(const unsigned char *p, size_t len, uint32_t *sections, size_t *pos)
{
    uint32_t top[2];
    if (len < sizeof top)
        return -EBADMSG;
    memcpy(top, p, sizeof top);
    if (top[0] != LIST_RESULT)
        return -EBADMSG;
    *sections = top[1];
    *pos = sizeof top;
    return 0;
}

int mpcp_list_decode_section(const unsigned char *p, size_t len, size_t *pos,
                             struct mpcp_list_info *info)
{
    struct list_section s;
    if (*pos > len || len - *pos < sizeof s)
        return -EBADMSG;
    memcpy(&s, p + *pos, sizeof s);
    size_t rel_at = *pos + sizeof s;
    if (s.bytes > len - *pos || s.bytes < sizeof s + (uint64_t)s.rel_len + 1 ||
        p[rel_at + s.rel_len] != '\0')
        return -EBADMSG;
    info->rel = (const char *)p + rel_at;
    info->status = s.status;
    info->count = s.count;
    info->dir_dev = (dev_t)s.dir_dev;
    info->dir_ino = (ino_t)s.dir_ino;
    info->start = *pos;
    info->entries = rel_at + s.rel_len + 1;
    info->end = *pos + (size_t)s.bytes;
    *pos = info->end;
    return 0;
}

int mpcp_list_decode_entry(const unsigned char *p, size_t end, size_t *pos, struct mpcp_listed *e)
{
    struct list_wire w;
    if (*pos > end || end - *pos < sizeof w)
        return -EBADMSG;
    memcpy(&w, p + *pos, sizeof w);
    size_t at = *pos + sizeof w;
    if (end - at <= w.name_len || p[at + w.name_len] != '\0' || w.name_len == 0)
        return -EBADMSG;
    e->name = (const char *)p + at;
    e->err = w.err;
    if (!w.err)
        stat_from_wire(&e->st, &w);
    *pos = at + w.name_len + 1;
    return 0;
}
