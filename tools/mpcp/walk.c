/*
 * walk.c: the planner. It resolves the operands as cp does, walks each
 * source tree depth-first with descriptors (openat O_NOFOLLOW|O_DIRECTORY,
 * fstatat, readdir on fdopendir), creates the destination folders, and
 * hands the other entries of each folder to the executor in batches (task
 * bytes). A folder's metadata is applied after all its children, as cp
 * does, so that a read-only or dated folder is written into first.
 *
 * Memory follows the work in flight: one batch, the names of the subfolders
 * of the folders on the current path, and the hard-link table (only files
 * with more than one link, as cp keeps it).
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH_ENTRIES 256
#define BATCH_BYTES   ((uint64_t)64 << 20)
/*
 * On slow storage a batch takes a round trip per operation: small batches
 * share a folder among many workers (256 entries of 8 operations at 1 ms
 * would be 2 s on one worker).
 */
#define SLOW_BATCH_ENTRIES 8
#define SLOW_BATCH_BYTES   ((uint64_t)8 << 20)
/* Work units for the window's throughput: a round trip or so each. */
#define WORK_PER_ENTRY 8
#define WORK_BYTES     ((uint64_t)128 << 10)
/* Tasks in flight per worker: each worker finds its next tasks waiting. */
#define FLY_PER_WORKER 4
/* Larger files are copied in ranges of at least CHUNK_MIN by several workers. */
#define CHUNK_ABOVE ((uint64_t)64 << 20)
#define CHUNK_MIN   ((uint64_t)32 << 20)

struct str {
    char *s;
    size_t len, cap;
};

/* A hard-link group's first copy: where it went. */
struct link_slot {
    dev_t dev;
    ino_t ino;
    uint32_t root;
    char *path; /* from the destination root; NULL: empty slot */
    char *disp;
    uint64_t seq; /* the task holding the first copy */
};

struct dir_state {
    int sfd, dfd;
    bool new_dst, restore;
    mode_t made_mode; /* the new folder's mode as mkdir made it */
    mode_t omitted;
};

/*
 * A destination folder whose metadata is still to apply: after its walk,
 * every task of its own and every subfolder's metadata (cp's order, and a
 * read-only folder stays writable and searchable while workers use it).
 */
struct folder {
    struct folder *parent;
    unsigned pending; /* 1 while walked + tasks in flight + subfolders not finished */
    struct stat sst;
    struct dir_state ds;
    char *dst_disp;
};

/*
 * A large file copied in ranges by several workers into one temporary that
 * the planner made (named with its pid: a sweep never takes it from under
 * the workers). The rename and the metadata come when every range has
 * reported, like a folder's after its children; any failure removes it.
 */
struct chunked {
    struct mpcp_buf commit; /* header + the MPCP_T_COMMIT entry: finishes and names the file */
    char *tmp;
    int sfd, dfd;  /* its folders, kept open until it is finished */
    unsigned left; /* ranges in flight */
    bool planned;  /* every range was handed out (or the run stopped) */
    bool failed, quiet;
    struct mpcp_result_entry first; /* the first failure, said once for the file */
    uint64_t bytes;
};

/* A task in a worker: its bytes are kept to name the entries of its result. */
struct flight {
    struct mpcp_buf task;
    struct folder *folder; /* NULL for an operand's own task */
    int dfd;               /* its destination folder, swept of temporaries if it dies */
    uint64_t seq;
    struct chunked *chunk; /* a range of this large file, or NULL */
};

struct planner {
    struct mpcp_opts *opt;
    struct mpcp_stats st;
    struct mpcp_progress *prog;
    dev_t root_dev;
    struct str src_rel, dst_rel, src_disp, dst_disp;
    struct mpcp_buf task, result;
    size_t task_header; /* bytes of the current batch's header */
    uint64_t batch_bytes;
    struct {
        dev_t dev;
        ino_t ino;
    } * anc;
    size_t n_anc, cap_anc;
    struct link_slot *links;
    size_t n_links, cap_links;
    struct mpcp_dir_records dirs;  /* folders met before (dir_record.c) */
    const char *top_src, *top_dst; /* the operand being copied, as typed (for "into itself") */
    /* Top-level destinations this run made in a target folder (cp's "just-created" check). */
    struct made {
        dev_t ddev, sdev;
        ino_t dino, sino;
    } * made;
    size_t n_made, cap_made;
    uint64_t bytes_seen;  /* of the batch being copied here, already shown by the progress */
    mproc_pool *pool;     /* NULL: tasks run in this process (-j 1) */
    struct flight *fly;   /* tasks in flight, max_fly at most */
    mproc_result **fly_r; /* their results, side by side for wait_many */
    size_t n_fly, max_fly;
    struct mpcp_adapt adapt;  /* the window, when adaptive */
    uint64_t batch_max_bytes; /* a batch is flushed at this many bytes (or batch_entries) */
    uint64_t batch_seq;       /* number of the batch being built */
    uint64_t batch_dep;       /* its hard links need tasks up to this one reported; 0: none */
    struct folder *cur_folder, *batch_folder;
    struct str ops_src; /* with ops_open: the operands' names as typed start with these */
    struct str ops_dst;
    struct listing *pre;
    size_t n_pre, cap_pre;
    size_t n_asked, max_asked; /* requests not answered yet */
    int status;
    uint32_t root;
    int batch_sfd, batch_dfd;
    uint32_t batch_entries; /* a batch is flushed at this many entries */
    uint32_t ops_root;      /* with ops_open: the operands' root */
    bool stop;
    bool into_self;      /* the walk met the operand's own destination: the rest is skipped */
    bool first_dir_made; /* the operand's first new folder is recorded */
    bool track_made;
    bool slow;       /* slow storage (mpcp_slow_fs): small batches */
    bool adaptive;   /* slow and no -j: the window follows the throughput */
    bool batch_away; /* -s: its folder refuses relative symlinks (MPCP_TASK_AWAY) */
    bool batch_top;  /* the batch is one operand (MPCP_TASK_TOP) */
    bool ops_open;   /* the batch holds file operands (join_operands) */
    /* Listings of the folders the walk comes to next, made by the workers (MPCP_WALK). */
    bool walk_workers;
    bool pool_broke_said; /* the pool broke by itself: said once, the rest runs here */
};

/* A worker's answer to one listing request, shared by the folders it lists. */
struct list_batch {
    mproc_result *r;
    const unsigned char *data;
    size_t len;
    unsigned refs; /* listings that point into it */
};

struct listing {
    char *rel; /* the folder, from the root */
    struct list_batch *batch;
    size_t start; /* its section in the batch */
    bool pending; /* this folder's own request, not answered yet */
};

/* The planner of this process, for the data-progress callback. */
static struct planner *current;

static void on_data(uint64_t bytes)
{
    current->bytes_seen += bytes;
    mpcp_progress_add(current->prog, 0, bytes);
}

/* ---- small strings ---- */

static int str_reserve(struct str *s, size_t need)
{
    if (need <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(s->s, cap);
    if (!p)
        return -ENOMEM;
    s->s = p;
    s->cap = cap;
    return 0;
}

static int str_set(struct str *s, const char *v)
{
    size_t n = strlen(v);
    if (str_reserve(s, n + 1) < 0)
        return -ENOMEM;
    snprintf(s->s, n + 1, "%s", v);
    s->len = n;
    return 0;
}

/* Appends "/name" (no slash after an empty string or one ending in '/'). Returns the old length. */
static size_t str_push(struct str *s, const char *name)
{
    size_t old = s->len;
    size_t n = strlen(name);
    bool slash = s->len > 0 && s->s[s->len - 1] != '/';
    if (str_reserve(s, s->len + n + 2) < 0)
        return old;
    snprintf(s->s + s->len, n + 2, "%s%s", slash ? "/" : "", name);
    s->len += n + (slash ? 1 : 0);
    return old;
}

static void str_pop(struct str *s, size_t old)
{
    s->len = old;
    s->s[old] = '\0';
}

/* Reports an error: tmpl's %s are the names a and b, quoted as cp quotes them. */
static void say(struct planner *p, int err, const char *tmpl, const char *a, const char *b)
{
    char qa[PATH_MAX * 2] = "", qb[PATH_MAX * 2] = "";
    if (a)
        mpcp_quote(qa, sizeof qa, a);
    if (b)
        mpcp_quote(qb, sizeof qb, b);
    char line[PATH_MAX * 5];
    mpcp_format(line, sizeof line, tmpl, qa, qb);
    mpcp_progress_clear(p->prog);
    mpcp_error(err, line);
    p->status = 1;
    p->st.errors++;
    if (err == ENOSPC || err == EDQUOT)
        p->stop = true;
}

static void warn(struct planner *p, const char *tmpl, const char *a)
{
    char qa[PATH_MAX * 2], line[PATH_MAX * 3];
    mpcp_quote(qa, sizeof qa, a);
    mpcp_format(line, sizeof line, tmpl, qa, NULL);
    mpcp_progress_clear(p->prog);
    mpcp_error(0, line);
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), size = a + strlen(name) + 2;
    char *s = malloc(size);
    if (!s)
        return NULL;
    bool slash = a && dir[a - 1] != '/';
    snprintf(s, size, "%s%s%s", dir, slash ? "/" : "", name);
    return s;
}

/* ---- hard links ---- */

static size_t link_hash(dev_t dev, ino_t ino, size_t cap)
{
    uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev * 0xC2B2AE3D27D4EB4Full;
    return (size_t)(h >> 17) & (cap - 1);
}

static struct link_slot *link_find(struct planner *p, dev_t dev, ino_t ino)
{
    if (!p->cap_links)
        return NULL;
    for (size_t i = link_hash(dev, ino, p->cap_links);; i = (i + 1) & (p->cap_links - 1)) {
        struct link_slot *s = &p->links[i];
        if (!s->path && !s->disp)
            return NULL;
        if (s->dev == dev && s->ino == ino)
            return s;
    }
}

static int link_grow(struct planner *p)
{
    size_t cap = p->cap_links ? p->cap_links * 2 : 1024;
    struct link_slot *old = p->links;
    size_t old_cap = p->cap_links;
    p->links = calloc(cap, sizeof *p->links);
    if (!p->links) {
        p->links = old;
        return -ENOMEM;
    }
    p->cap_links = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].path && !old[i].disp)
            continue;
        size_t j = link_hash(old[i].dev, old[i].ino, cap);
        while (p->links[j].path || p->links[j].disp)
            j = (j + 1) & (cap - 1);
        p->links[j] = old[i];
    }
    free(old);
    return 0;
}

static void link_add(struct planner *p, dev_t dev, ino_t ino, const char *path, const char *disp)
{
    if ((p->n_links + 1) * 2 > p->cap_links && link_grow(p) < 0)
        return;
    size_t i = link_hash(dev, ino, p->cap_links);
    while (p->links[i].path || p->links[i].disp)
        i = (i + 1) & (p->cap_links - 1);
    struct link_slot *s = &p->links[i];
    s->dev = dev;
    s->ino = ino;
    s->root = p->root;
    s->path = strdup(path);
    s->disp = strdup(disp);
    s->seq = p->batch_seq;
    p->n_links++;
}

/* ---- batches ---- */

static uint8_t entry_type(mode_t mode, const struct mpcp_opts *opt)
{
    if (S_ISLNK(mode))
        return MPCP_T_LNK;
    /* cp without -R, or with --copy-contents, reads devices and fifos as files */
    if (S_ISREG(mode) || !opt->recursive || (opt->copy_contents && !S_ISSOCK(mode)))
        return MPCP_T_REG;
    if (S_ISFIFO(mode))
        return MPCP_T_FIFO;
    if (S_ISSOCK(mode))
        return MPCP_T_SOCK;
    if (S_ISCHR(mode))
        return MPCP_T_CHR;
    return MPCP_T_BLK;
}

/*
 * -s with a relative source: whether the destination folder dfd is not the
 * working folder, where cp refuses the symlinks (they would point
 * elsewhere). Decided here once per batch, for workers wherever they run;
 * as with cp, a stat that fails lets it be.
 */
static bool away_from_cwd(const struct planner *p, int dfd)
{
    if (!p->opt->symbolic_link || !p->src_disp.s || p->src_disp.s[0] == '/')
        return false;
    struct stat dot, d;
    if (stat(".", &dot) < 0 || fstat(dfd, &d) < 0)
        return false;
    return dot.st_dev != d.st_dev || dot.st_ino != d.st_ino;
}

static void begin_batch(struct planner *p, uint32_t flags, int sfd, int dfd)
{
    struct mpcp_task t = {0};
    t.flags = flags;
    if (p->opt->deref != MPCP_DEREF_NEVER)
        t.flags |= MPCP_TASK_FOLLOW;
    p->batch_away = away_from_cwd(p, dfd);
    if (p->batch_away)
        t.flags |= MPCP_TASK_AWAY;
    t.src_root = t.dst_root = p->root;
    bool top = flags & MPCP_TASK_TOP;
    t.src_dir = top ? "" : p->src_rel.s;
    t.dst_dir = top ? "" : p->dst_rel.s;
    t.src_disp = p->src_disp.s;
    t.dst_disp = p->dst_disp.s;
    mpcp_task_begin(&p->task, &t);
    p->task_header = p->task.len;
    p->batch_bytes = 0;
    p->batch_sfd = sfd;
    p->batch_dfd = dfd;
    p->batch_folder = top ? NULL : p->cur_folder;
    p->batch_top = top;
    p->batch_dep = 0;
    p->batch_seq++;
}

/* Whether the entry's data is copied: -l and -s link every kind of file instead. */
static bool copies_data(const struct planner *p, const struct mpcp_entry *e)
{
    return e->type == MPCP_T_REG && !p->opt->hard_link && !p->opt->symbolic_link;
}

/* What the entry became: -l makes hard links, -s symlinks (and links to a group's first). */
static uint8_t made_type(const struct planner *p, const struct mpcp_entry *e)
{
    if (e->type == MPCP_T_HARDLINK || p->opt->hard_link)
        return MPCP_T_HARDLINK;
    return p->opt->symbolic_link ? MPCP_T_LNK : e->type;
}

static void count_ok(struct planner *p, const struct mpcp_entry *e, uint64_t bytes)
{
    switch (made_type(p, e)) {
    case MPCP_T_REG:
        p->st.files++;
        break;
    case MPCP_T_LNK:
        p->st.symlinks++;
        break;
    case MPCP_T_HARDLINK:
        p->st.hardlinks++;
        break;
    default:
        p->st.specials++;
        break;
    }
    p->st.bytes += bytes;
}

static void entry_paths(const struct mpcp_task *t, const struct mpcp_entry *e, char **src,
                        char **dst)
{
    if (t->flags & MPCP_TASK_TOP) {
        *src = strdup(t->src_disp);
        *dst = strdup(t->dst_disp);
        return;
    }
    *src = join(t->src_disp, e->name);
    *dst = join(t->dst_disp, e->dst_name);
}

static void print_verbose(struct planner *p, const char *src, const char *dst)
{
    char qs[PATH_MAX * 2], qd[PATH_MAX * 2];
    mpcp_quote(qs, sizeof qs, src);
    mpcp_quote(qd, sizeof qd, dst);
    mpcp_progress_clear(p->prog);
    printf("%s -> %s\n", qs, qd);
}

/* cp -v names the backup the old destination became, in dst's folder: " (backup: 'o/f~')". */
static void print_backed_up(struct planner *p, const char *src, const char *dst, const char *backup)
{
    const char *slash = strrchr(dst, '/');
    int dir_len = slash ? (int)(slash - dst) + 1 : 0;
    char path[PATH_MAX * 2], qs[PATH_MAX * 2], qd[PATH_MAX * 2], qb[PATH_MAX * 2];
    snprintf(path, sizeof path, "%.*s%s", dir_len, dst, backup);
    mpcp_quote(qs, sizeof qs, src);
    mpcp_quote(qd, sizeof qd, dst);
    mpcp_quote(qb, sizeof qb, path);
    mpcp_progress_clear(p->prog);
    printf("%s -> %s (backup: %s)\n", qs, qd, qb);
}

/* s becomes the group's first copy: path and disp (owned from now on) in this batch. */
static void take_slot(struct planner *p, struct link_slot *s, char *path, char *disp, uint32_t root)
{
    s->path = path;
    free(s->disp);
    s->disp = disp;
    s->root = root;
    s->seq = p->batch_seq;
}

/* s becomes the group's first copy: e of task t, in this batch. Returns -1 when out of memory. */
static int lead_from(struct planner *p, struct link_slot *s, const struct mpcp_task *t,
                     const struct mpcp_entry *e)
{
    bool top = t->flags & MPCP_TASK_TOP;
    char *path = top ? strdup(e->dst_name) : join(t->dst_dir, e->dst_name);
    char *disp = top ? strdup(t->dst_disp) : join(t->dst_disp, e->dst_name);
    if (!path || !disp) {
        free(path);
        free(disp);
        return -1;
    }
    take_slot(p, s, path, disp, t->dst_root);
    return 0;
}

static void forget_leader(struct planner *p, const struct mpcp_entry *e)
{
    struct link_slot *s = link_find(p, (dev_t)e->dev, (ino_t)e->ino);
    if (s && s->path) {
        free(s->path);
        s->path = NULL; /* a tombstone: disp stays non-NULL so probing goes on */
    }
}

/*
 * update_links: a name -u kept after its group's first copy was lost (the
 * executor copied it by itself) is the group's first copy from now on, as
 * cp remembers it. Its task has reported: later names need not wait (seq 0).
 */
static void lead_if_lost(struct planner *p, const struct mpcp_task *t, const struct mpcp_entry *e)
{
    struct link_slot *s = p->opt->update_links ? link_find(p, (dev_t)e->dev, (ino_t)e->ino) : NULL;
    /* Out of memory: later names are copied by themselves. */
    if (s && !s->path && lead_from(p, s, t, e) == 0)
        s->seq = 0;
}

static void print_removed(struct planner *p, const char *dst)
{
    char q[PATH_MAX * 2];
    mpcp_quote(q, sizeof q, dst);
    mpcp_progress_clear(p->prog);
    printf("removed %s\n", q);
}

static void print_entry(struct planner *p, const struct mpcp_task *t, const struct mpcp_entry *e,
                        const struct mpcp_result_entry *r)
{
    char *src, *dst;
    entry_paths(t, e, &src, &dst);
    /* cp removes a name before it copies onto it, but after it names a link it makes there. */
    bool linked = r->flags & (MPCP_R_LINKED | MPCP_R_KEPT_LINK);
    if (dst && (r->flags & MPCP_R_REPLACED) && !linked)
        print_removed(p, dst);
    if (src && dst && r->backup && r->backup[0])
        print_backed_up(p, src, dst, r->backup);
    else if (src && dst && !(r->flags & MPCP_R_KEPT_LINK))
        print_verbose(p, src, dst);
    if (dst && (r->flags & MPCP_R_REPLACED) && linked && r->status == MPCP_OK)
        print_removed(p, dst);
    free(src);
    free(dst);
}

/* A copied entry with a message is a warning (a full link count): said, but not an error. */
static void warn_result(struct planner *p, bool talk, const char *msg)
{
    if (talk)
        fflush(stdout); /* after its -v line, as errors are */
    mpcp_progress_clear(p->prog);
    mpcp_error(0, msg);
}

static void handle_result(struct planner *p, const struct mpcp_task *t, const struct mpcp_entry *e,
                          const struct mpcp_result_entry *r)
{
    bool talk = (p->opt->verbose || p->opt->dry_run) && !p->opt->quiet;
    /* cp -v names what it attempts, before it knows whether it works. */
    if (talk && (r->status == MPCP_OK || (r->flags & MPCP_R_ATTEMPTED)))
        print_entry(p, t, e, r);
    /*
     * In this process, bytes were counted as they were written (on_data), for
     * the whole batch: each entry takes its share of them, in order, and adds
     * only the rest, so that no byte is counted twice.
     */
    uint64_t seen = r->bytes < p->bytes_seen ? r->bytes : p->bytes_seen;
    p->bytes_seen -= seen;
    uint64_t unseen = r->bytes - seen;
    if (r->status == MPCP_OK) {
        count_ok(p, e, r->bytes);
        /* -u without --preserve=links: cp remembers only what it keeps. */
        if ((e->flags & MPCP_E_LEADER) && p->opt->update_links)
            forget_leader(p, e);
        mpcp_progress_add(p->prog, 1, unseen);
        if (r->msg[0])
            warn_result(p, talk, r->msg);
        return;
    }
    if (r->status == MPCP_SKIPPED) {
        /* The count left it out (the destination keeps it): not a file of the bar. */
        p->st.skipped++;
        /* What -n or -i keeps is not a copy: cp links no later name to it (-u's it does). */
        if ((e->flags & MPCP_E_LEADER) && !(r->flags & MPCP_R_KEPT))
            forget_leader(p, e);
        else if (!(e->flags & MPCP_E_LEADER) && (r->flags & MPCP_R_KEPT))
            lead_if_lost(p, t, e);
        return;
    }
    mpcp_progress_add(p->prog, 1, 0);
    if (e->flags & MPCP_E_LEADER)
        forget_leader(p, e);
    if (r->err == EINTR && mpcp_interrupted) {
        /* Interrupted: the temporary is gone; main re-raises the signal. */
        p->status = 1;
        p->stop = true;
        return;
    }
    if (talk)
        fflush(stdout); /* the arrow line comes before its error, as with cp */
    mpcp_progress_clear(p->prog);
    mpcp_error(r->err, r->msg);
    p->status = 1;
    p->st.errors++;
    if (r->flags & MPCP_R_STOP)
        p->stop = true;
}

/* Empties the batch but keeps its header: the folder's next entries follow. */
static void batch_reset(struct planner *p)
{
    mpcp_task_truncate(&p->task, p->task_header);
    p->batch_bytes = 0;
    p->batch_dep = 0;
    p->batch_seq++;
}

/* --dry-run: every planned entry is reported as if it had been copied. */
static void flush_dry(struct planner *p)
{
    struct mpcp_task t;
    size_t pos;
    if (mpcp_task_decode_header(p->task.data, p->task.len, &t, &pos) == 0) {
        for (uint32_t i = 0; i < t.count; i++) {
            struct mpcp_entry e;
            if (mpcp_task_decode_entry(p->task.data, p->task.len, &pos, &e))
                break;
            struct mpcp_result_entry r = {MPCP_OK, 0, 0, copies_data(p, &e) ? e.size : 0, "", ""};
            handle_result(p, &t, &e, &r);
        }
    }
    batch_reset(p);
}

/* Reports every entry of a task from its result bytes. */
static void report_result(struct planner *p, const struct mpcp_buf *task, const unsigned char *res,
                          size_t res_len)
{
    struct mpcp_task t;
    size_t tpos, rpos;
    uint32_t rcount = 0;
    if (mpcp_task_decode_header(task->data, task->len, &t, &tpos) ||
        mpcp_result_decode_header(res, res_len, &rcount, &rpos)) {
        say(p, EBADMSG, "internal error running a task", NULL, NULL);
        return;
    }
    for (uint32_t i = 0; i < rcount; i++) {
        struct mpcp_entry e;
        struct mpcp_result_entry r;
        if (mpcp_task_decode_entry(task->data, task->len, &tpos, &e) ||
            mpcp_result_decode_entry(res, res_len, &rpos, &r))
            break;
        handle_result(p, &t, &e, &r);
    }
    /* What a failed entry wrote before failing was shown; it is not carried over. */
    p->bytes_seen = 0;
}

static void run_here(struct planner *p)
{
    /* Workers reach folders from the roots; here the planner's fds save the lookups. */
    static int resolve = -1;
    if (resolve < 0)
        resolve = getenv("MPCP_TASK_RESOLVE") != NULL;
    int rc = mpcp_exec_run(p->task.data, p->task.len, resolve ? -1 : p->batch_sfd,
                           resolve ? -1 : p->batch_dfd, &p->result);
    if (rc)
        say(p, -rc, "internal error running a task", NULL, NULL);
    else
        report_result(p, &p->task, p->result.data, p->result.len);
    batch_reset(p);
}

/* ---- tasks in workers ---- */

static void folder_release(struct planner *p, struct folder *fo);
static void remove_stale(int dfd);
static void range_done(struct planner *p, struct chunked *c, const void *res, size_t res_len,
                       mproc_result *r, int rc);

/*
 * A task that did not run to its end: its worker died (twice, with the
 * retry), or the pool was stopped. Every entry is named with the cause, so
 * that nothing is lost silently; after Ctrl-C or a stop the run has already
 * failed and says nothing more.
 */
static void report_lost(struct planner *p, const struct flight *f, mproc_result *r, int rc)
{
    p->status = 1;
    if (mpcp_interrupted || p->stop || rc == MPROC_ECANCELLED || rc == MPROC_EBROKEN)
        return;
    const char *why = mproc_result_error(r);
    if (!why)
        why = mproc_strerror(rc);
    remove_stale(f->dfd); /* the dead worker's temporary */
    struct mpcp_task t;
    size_t pos;
    if (mpcp_task_decode_header(f->task.data, f->task.len, &t, &pos))
        return;
    for (uint32_t i = 0; i < t.count; i++) {
        struct mpcp_entry e;
        if (mpcp_task_decode_entry(f->task.data, f->task.len, &pos, &e))
            break;
        char *src, *dst;
        entry_paths(&t, &e, &src, &dst);
        char q[PATH_MAX * 2] = "", line[PATH_MAX * 3];
        mpcp_quote(q, sizeof q, src ? src : e.name);
        mpcp_format(line, sizeof line, "cannot copy %s: %s", q, why);
        mpcp_progress_clear(p->prog);
        mpcp_error(0, line);
        p->st.errors++;
        mpcp_progress_add(p->prog, 1, 0);
        if (e.flags & MPCP_E_LEADER)
            forget_leader(p, &e);
        free(src);
        free(dst);
    }
}

/* Cancels the tasks that have not started: the run stops (out of space). */
static void cancel_waiting(struct planner *p)
{
    for (size_t i = 0; i < p->n_fly; i++)
        mproc_result_cancel(p->fly_r[i]);
}

/* What the run has done so far, in about round trips (the window's measure). */
static uint64_t work_done(const struct mpcp_stats *st)
{
    uint64_t entries = st->files + st->dirs + st->symlinks + st->hardlinks + st->specials +
                       st->skipped + st->errors;
    return entries * WORK_PER_ENTRY + st->bytes / WORK_BYTES;
}

/*
 * Whether a task failed because the pool broke by itself (its fork server
 * died): mpcp terminates its pool only after a stop or Ctrl-C. Says so
 * once, naming the cause; the rest of the run is copied in this process.
 */
static bool pool_broke(struct planner *p, mproc_result *r, int rc)
{
    if (rc != MPROC_EBROKEN || mpcp_interrupted || p->stop)
        return false;
    if (!p->pool_broke_said) {
        const char *why = mproc_result_error(r);
        char line[512];
        mpcp_format(line, sizeof line,
                    "the worker pool broke (%s): copying the rest in this process", why, NULL);
        mpcp_progress_clear(p->prog);
        mpcp_error(0, line);
        p->pool_broke_said = true;
    }
    p->status = 1; /* the run did not go as planned, though nothing is lost */
    return true;
}

/* A task the broken pool lost is run here instead: nothing is left uncopied. */
static void rerun_here(struct planner *p, struct flight *f)
{
    if (f->chunk) {
        struct chunked *c = f->chunk;
        int rc = mpcp_exec_run(f->task.data, f->task.len, c->sfd, c->dfd, &p->result);
        range_done(p, c, rc ? NULL : p->result.data, p->result.len, NULL, rc);
        return;
    }
    remove_stale(f->dfd); /* the dead worker's temporary */
    int rc = mpcp_exec_run(f->task.data, f->task.len, -1, -1, &p->result);
    /* Once more: the worker, killed with its fork server, may not have been gone yet. */
    remove_stale(f->dfd);
    if (rc)
        say(p, -rc, "internal error running a task", NULL, NULL);
    else
        report_result(p, &f->task, p->result.data, p->result.len);
}

/*
 * The window moved: the pool starts workers for the window's size, not for
 * every task in flight (FLY_PER_WORKER times as many, so that each worker
 * finds its next tasks waiting). Over MPI the ranks are all there and the pool says so.
 */
static void follow_window(struct planner *p)
{
    (void)mproc_pool_set_max_workers(p->pool, (int)p->adapt.limit);
}

/* Called as the planner waits for tasks: the fill is judged when the window is full (adapt.c). */
static void tick_window(struct planner *p)
{
    if (p->adaptive && mpcp_adapt_tick(&p->adapt))
        follow_window(p);
}

/* Handles the i-th task in flight, which has completed, and forgets it. */
static void complete(struct planner *p, size_t i)
{
    struct flight f = p->fly[i];
    mproc_result *r = p->fly_r[i];
    p->n_fly--;
    p->fly[i] = p->fly[p->n_fly];
    p->fly_r[i] = p->fly_r[p->n_fly];
    const void *data;
    size_t len;
    int rc = mproc_result_get(r, &data, &len, 0);
    bool was_stopped = p->stop;
    uint64_t work0 = work_done(&p->st);
    if (rc != 0 && pool_broke(p, r, rc))
        rerun_here(p, &f);
    else if (f.chunk)
        range_done(p, f.chunk, rc == 0 ? data : NULL, len, r, rc);
    else if (rc == 0)
        report_result(p, &f.task, data, len);
    else
        report_lost(p, &f, r, rc);
    if (p->stop && !was_stopped)
        cancel_waiting(p);
    if (p->adaptive && mpcp_adapt_done(&p->adapt, work_done(&p->st) - work0))
        follow_window(p);
    mproc_result_destroy(&r);
    mpcp_buf_free(&f.task);
    folder_release(p, f.folder);
}

/* Handles every completed task. */
static void complete_ready(struct planner *p)
{
    for (size_t i = p->n_fly; i-- > 0;)
        if (i < p->n_fly && mproc_result_ready(p->fly_r[i]))
            complete(p, i);
}

/*
 * Waits until some task in flight completes, then handles all that have.
 * A short timeout keeps Ctrl-C prompt even if it lands just before the wait.
 */
static void wait_some(struct planner *p)
{
    size_t ready = 0;
    int ms = p->adaptive ? mpcp_adapt_tick_ms(&p->adapt) : -1;
    int rc =
        mproc_result_wait_many(p->fly_r, p->n_fly, false, &ready, ms >= 0 && ms < 200 ? ms : 200);
    tick_window(p);
    mpcp_progress_add(p->prog, 0, 0); /* the bar moves on while a big file is copied */
    if (rc == -EINTR || mpcp_interrupted) {
        p->stop = true;
        p->status = 1;
        return;
    }
    complete_ready(p);
}

static bool in_flight_upto(const struct planner *p, uint64_t seq)
{
    for (size_t i = 0; i < p->n_fly; i++)
        if (p->fly[i].seq <= seq)
            return true;
    return false;
}

/*
 * How many tasks may be in flight now. Adaptive, the window is a number of
 * workers (the pool starts no more, mproc_pool_set_max_workers), with as
 * many tasks each as -j gives: the window at N is -j N.
 */
static size_t window(const struct planner *p)
{
    size_t w = p->adaptive ? p->adapt.limit * FLY_PER_WORKER : p->max_fly;
    return w < p->max_fly ? w : p->max_fly;
}

/* Waits for room in flight. False when the run stopped meanwhile (out of space, Ctrl-C). */
static bool wait_room(struct planner *p)
{
    while (p->n_fly >= window(p) && !mpcp_interrupted)
        wait_some(p);
    if (!mpcp_interrupted && !p->stop)
        return true;
    p->stop = true;
    p->status = 1;
    return false;
}

/* Records a task just submitted (its result is in fly_r[n_fly]); its bytes move along. */
static struct flight *take_off(struct planner *p, struct mpcp_buf *task, struct chunked *c)
{
    struct flight *f = &p->fly[p->n_fly++];
    f->folder = p->batch_folder;
    f->dfd = p->batch_dfd;
    f->seq = p->batch_seq;
    f->task = *task;
    f->chunk = c;
    if (f->folder)
        f->folder->pending++;
    memset(task, 0, sizeof *task);
    return f;
}

/* Whether e, a link to a first copy, lost it: that copy failed (forget_leader) or was replaced. */
static bool leader_lost(struct planner *p, const struct mpcp_entry *e)
{
    if (e->type != MPCP_T_HARDLINK)
        return false;
    const struct link_slot *s = link_find(p, (dev_t)e->dev, (ino_t)e->ino);
    return !s || !s->path || strcmp(s->path, e->link_target) != 0;
}

/*
 * A lost first copy's group in the held batch: the name links to the group's
 * newer first copy where the walk or an earlier batch made one (waiting for
 * its task), or else is copied by itself and becomes the first copy, as cp
 * remembers the next name it copies. Returns -1 when out of memory.
 */
static int relink_entry(struct planner *p, const struct mpcp_task *t, struct mpcp_entry *e)
{
    struct link_slot *s = link_find(p, (dev_t)e->dev, (ino_t)e->ino);
    if (s && s->path) {
        e->link_target = s->path;
        e->link_disp = s->disp;
        e->rdev = s->root;
        if (s->seq != p->batch_seq && s->seq > p->batch_dep)
            p->batch_dep = s->seq;
        return 0;
    }
    e->type = entry_type(e->mode, p->opt);
    e->rdev = 0;
    e->link_target = "";
    e->link_disp = "";
    if (!s)
        return 0;
    if (lead_from(p, s, t, e) < 0)
        return -1;
    e->flags |= MPCP_E_LEADER;
    return 0;
}

/*
 * Rule (2) held the batch until its first copies reported. Where one failed
 * or was skipped (an unreadable source, a destination that could not be
 * written or that -n keeps), the name there is not the copy: cp forgets it,
 * and links the later names to the next one it copies. Returns false when
 * the batch could not be rewritten (memory).
 */
static bool copy_where_leaders_failed(struct planner *p)
{
    struct mpcp_task t;
    size_t pos, scan;
    if (mpcp_task_decode_header(p->task.data, p->task.len, &t, &pos))
        return true;
    bool any = false;
    scan = pos;
    for (uint32_t i = 0; i < t.count && !any; i++) {
        struct mpcp_entry e;
        if (mpcp_task_decode_entry(p->task.data, p->task.len, &scan, &e))
            return true;
        any = leader_lost(p, &e);
    }
    if (!any)
        return true;
    struct mpcp_buf out = {0};
    int rc = mpcp_buf_put(&out, p->task.data, p->task_header);
    mpcp_task_truncate(&out, p->task_header);
    for (uint32_t i = 0; i < t.count && rc == 0; i++) {
        struct mpcp_entry e;
        rc = mpcp_task_decode_entry(p->task.data, p->task.len, &pos, &e);
        if (rc == 0 && leader_lost(p, &e) && relink_entry(p, &t, &e) < 0)
            rc = -ENOMEM;
        rc = rc ? rc : mpcp_task_add(&out, &e);
    }
    if (rc) {
        free(out.data);
        return false;
    }
    free(p->task.data);
    p->task = out;
    return true;
}

/* Hands the batch to a worker; its bytes move to the flight record. */
static void submit(struct planner *p)
{
    /* Rule (2): hard links wait for the tasks holding their first copies. */
    bool held = p->batch_dep != 0;
    for (;;) {
        while (p->batch_dep && in_flight_upto(p, p->batch_dep) && !mpcp_interrupted)
            wait_some(p);
        if (!held)
            break;
        uint64_t dep = p->batch_dep;
        if (!copy_where_leaders_failed(p)) {
            say(p, ENOMEM, "cannot copy %s", p->src_disp.s, NULL);
            batch_reset(p);
            return;
        }
        /* Linked anew to a first copy still in flight: wait for it, then look again. */
        if (p->batch_dep == dep || !in_flight_upto(p, p->batch_dep) || mpcp_interrupted)
            break;
    }
    if (!wait_room(p)) {
        batch_reset(p); /* this batch is not started */
        return;
    }
    if (mpcp_workers_submit(p->pool, &p->task, &p->fly_r[p->n_fly]) < 0) {
        run_here(p); /* no room to hand it over (memory): copy it here */
        return;
    }
    struct flight *f = take_off(p, &p->task, NULL);
    /* The folder's next batch starts from the same header. */
    if (mpcp_buf_put(&p->task, f->task.data, p->task_header) < 0)
        p->stop = true;
    batch_reset(p);
}

/* Waits for every task in flight (the end of the run, or a stop). */
static void drain(struct planner *p)
{
    while (p->n_fly > 0 && !mpcp_interrupted)
        wait_some(p);
}

static bool batch_full(const struct planner *p)
{
    return mpcp_task_count(&p->task) >= p->batch_entries || p->batch_bytes >= p->batch_max_bytes;
}

static void flush(struct planner *p)
{
    uint32_t n = mpcp_task_count(&p->task);
    if (n == 0)
        return;
    if (p->opt->dry_run)
        flush_dry(p);
    else if (p->pool)
        submit(p);
    else
        run_here(p);
}

static void fill_entry(struct mpcp_entry *e, const struct stat *st)
{
    e->mode = st->st_mode;
    e->uid = st->st_uid;
    e->gid = st->st_gid;
    e->size = (uint64_t)st->st_size;
    e->blocks = (uint64_t)st->st_blocks;
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->rdev = st->st_rdev;
    e->atime_sec = st->st_atim.tv_sec;
    e->atime_nsec = (uint32_t)st->st_atim.tv_nsec;
    e->mtime_sec = st->st_mtim.tv_sec;
    e->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
}

/*
 * Whether --preserve=links (or -u, for the names it keeps: update_links)
 * keeps track of a file met with flags: one with other names, and, as cp
 * does, every file reached through symlinks (-L, or an operand under -H),
 * where two names may lead to one file.
 */
static bool tracks_links(const struct planner *p, const struct stat *st, uint8_t flags)
{
    if (S_ISDIR(st->st_mode))
        return false;
    if (!p->opt->p_links && !(p->opt->update_links && S_ISREG(st->st_mode)))
        return false;
    return st->st_nlink > 1 || (flags & MPCP_E_FOLLOW);
}

/* Fills the hard-link fields: a later member links to the first copy. */
static void plan_links(struct planner *p, struct mpcp_entry *e, const struct stat *st,
                       char **to_free)
{
    *to_free = NULL;
    if (!tracks_links(p, st, e->flags))
        return;
    /*
     * cp -l links every name to the source itself; cp -s where it refuses
     * relative symlinks makes no first copy for the others to link to.
     */
    if (p->opt->hard_link || p->batch_away)
        return;
    struct link_slot *s = link_find(p, st->st_dev, st->st_ino);
    if (s && s->path) {
        /* Rule (2): the first copy must exist before the link is made. */
        if (s->seq != p->batch_seq && s->seq > p->batch_dep)
            p->batch_dep = s->seq;
        e->type = MPCP_T_HARDLINK;
        e->link_target = s->path;
        e->link_disp = s->disp;
        e->rdev = s->root;
        return;
    }
    /* From the root: an operand's destination is its name there. */
    char *path = p->batch_top ? strdup(e->dst_name) : join(p->dst_rel.s, e->dst_name);
    char *disp = p->batch_top ? strdup(p->dst_disp.s) : join(p->dst_disp.s, e->dst_name);
    if (path && disp) {
        if (s) {
            take_slot(p, s, path, disp, p->root);
            path = disp = NULL;
        } else {
            link_add(p, st->st_dev, st->st_ino, path, disp);
        }
        e->flags |= MPCP_E_LEADER;
    }
    free(path);
    *to_free = disp;
}

/*
 * -u without --preserve=links links a name to its group's first copy only
 * if that copy was kept, which its result tells: such a name waits for the
 * first copy's batch (rule 2), so it never goes into the same batch.
 */
static bool links_to_this_batch(struct planner *p, const struct stat *st, uint8_t flags)
{
    if (!p->opt->update_links || !tracks_links(p, st, flags) || p->batch_away)
        return false;
    const struct link_slot *s = link_find(p, st->st_dev, st->st_ino);
    return s && s->path && s->seq == p->batch_seq && mpcp_task_count(&p->task) > 0;
}

static void add_entry(struct planner *p, const char *name, const char *dst_name,
                      const struct stat *st, uint8_t flags)
{
    struct mpcp_entry e = {0};
    e.type = entry_type(st->st_mode, p->opt);
    e.flags = flags;
    e.name = name;
    e.dst_name = dst_name;
    e.link_target = "";
    e.link_disp = "";
    fill_entry(&e, st);
    if (links_to_this_batch(p, st, flags))
        flush(p);
    char *to_free;
    plan_links(p, &e, st, &to_free);
    if (mpcp_task_add(&p->task, &e) < 0)
        say(p, ENOMEM, "cannot plan %s", name, NULL);
    free(to_free);
    if (copies_data(p, &e))
        p->batch_bytes += e.size;
}

/* ---- large files in ranges ---- */

static bool chunkable(const struct planner *p, const struct stat *st, uint8_t flags)
{
    const struct mpcp_opts *o = p->opt;
    /*
     * A new folder: no existing destination, so none of cp's checks before
     * the copy. Links (-l, -s) have no data to share out.
     */
    if (!p->pool || !p->batch_folder || !(flags & MPCP_E_DEST_NEW) || o->inplace || o->hard_link ||
        o->symbolic_link)
        return false;
    if (!S_ISREG(st->st_mode) || (uint64_t)st->st_size <= CHUNK_ABOVE)
        return false;
    /*
     * Only when workers would otherwise wait: writers of one file take turns
     * on its inode's lock (tmpfs, ext4), so ranges of one file copied side by
     * side were 5-10% slower here than whole files copied side by side.
     */
    if (p->n_fly >= (size_t)p->opt->jobs)
        return false;
    /* Holes are found extent by extent, in order; --reflink=always clones whole or fails. */
    if ((uint64_t)st->st_blocks * 512 < (uint64_t)st->st_size || o->sparse == MPCP_SPARSE_ALWAYS ||
        o->reflink == MPCP_REFLINK_ALWAYS)
        return false;
    /* A hard-link group's first copy: its links wait for its batch, not for ranges. */
    return !tracks_links(p, st, flags);
}

static void free_chunked(struct chunked *c)
{
    if (c->sfd >= 0)
        close(c->sfd);
    if (c->dfd >= 0)
        close(c->dfd);
    mpcp_buf_free(&c->commit);
    free(c->tmp);
    free((char *)c->first.msg);
    free(c);
}

static bool decode_commit(const struct chunked *c, struct mpcp_task *t, struct mpcp_entry *e)
{
    size_t pos;
    return mpcp_task_decode_header(c->commit.data, c->commit.len, t, &pos) == 0 &&
           mpcp_task_decode_entry(c->commit.data, c->commit.len, &pos, e) == 0;
}

/* Runs the commit here, with the folders at hand; *r points into p->result. */
static void commit_here(struct planner *p, struct chunked *c, struct mpcp_result_entry *r)
{
    uint32_t n = 0;
    size_t pos;
    int rc = mpcp_exec_run(c->commit.data, c->commit.len, c->sfd, c->dfd, &p->result);
    if (rc == 0 && mpcp_result_decode_header(p->result.data, p->result.len, &n, &pos) == 0 &&
        n == 1 && mpcp_result_decode_entry(p->result.data, p->result.len, &pos, r) == 0)
        return;
    r->status = MPCP_FAILED;
    r->flags = 0;
    r->err = rc ? -rc : EBADMSG;
    r->msg = "internal error running a task";
}

/* Every range has reported: the file is renamed into place, or its temporary goes. */
static void finish_chunked(struct planner *p, struct chunked *c)
{
    struct mpcp_task t;
    struct mpcp_entry e;
    struct mpcp_result_entry r = c->first;
    if (!decode_commit(c, &t, &e)) {
        unlinkat(c->dfd, c->tmp, 0);
        say(p, EBADMSG, "internal error running a task", NULL, NULL);
    } else if (c->failed && c->quiet) {
        /* Stopped (Ctrl-C, out of space, worker lost while stopping): said already. */
        unlinkat(c->dfd, c->tmp, 0);
        p->status = 1;
        mpcp_progress_add(p->prog, 1, 0);
    } else {
        if (!c->failed)
            commit_here(p, c, &r);
        /* A failed range, or a commit that failed or did not run (Ctrl-C meanwhile). */
        if (r.status != MPCP_OK)
            unlinkat(c->dfd, c->tmp, 0);
        /* Its bytes were shown range by range: the file is counted, not its bytes again. */
        e.type = MPCP_T_REG;
        r.bytes = c->bytes;
        p->bytes_seen = c->bytes;
        handle_result(p, &t, &e, &r);
        p->bytes_seen = 0;
    }
    free_chunked(c);
}

/* The other ranges of a failed file would be copied for nothing. */
static void cancel_ranges(struct planner *p, const struct chunked *c)
{
    for (size_t i = 0; i < p->n_fly; i++)
        if (p->fly[i].chunk == c)
            mproc_result_cancel(p->fly_r[i]);
}

static void range_failed(struct planner *p, struct chunked *c, const struct mpcp_result_entry *r)
{
    if (r->flags & MPCP_R_STOP)
        p->stop = true;
    if (c->failed)
        return;
    c->failed = true;
    c->quiet = r->msg == NULL;
    c->first = *r;
    c->first.msg = strdup(r->msg ? r->msg : "");
    if (!c->first.msg)
        c->quiet = true; /* no memory to say it: the status still tells */
    cancel_ranges(p, c);
}

/* "cannot copy 'x': worker 1234 died: ...", as report_lost says it for a batch. */
static void lost_line(struct chunked *c, mproc_result *r, int rc, char *line, size_t size)
{
    const char *why = r ? mproc_result_error(r) : NULL;
    if (!why)
        why = mproc_strerror(rc);
    struct mpcp_task t;
    struct mpcp_entry e;
    char *src = NULL, *dst = NULL;
    if (decode_commit(c, &t, &e))
        entry_paths(&t, &e, &src, &dst);
    char q[PATH_MAX * 2] = "";
    mpcp_quote(q, sizeof q, src ? src : "");
    mpcp_format(line, size, "cannot copy %s: %s", q, why);
    free(src);
    free(dst);
}

/*
 * A range has reported (res: its result bytes; NULL: lost, rc and r say
 * why). Its bytes move the bar; the first failure is kept, to be said once,
 * for the file; the last range to report finishes the file.
 */
static void range_done(struct planner *p, struct chunked *c, const void *res, size_t res_len,
                       mproc_result *r, int rc)
{
    struct mpcp_result_entry e = {MPCP_FAILED, 0, EBADMSG, 0, "internal error running a task", ""};
    char line[PATH_MAX * 3];
    uint32_t n = 0;
    size_t pos;
    if (res) {
        if (mpcp_result_decode_header(res, res_len, &n, &pos) == 0 && n == 1)
            mpcp_result_decode_entry(res, res_len, &pos, &e);
    } else if (mpcp_interrupted || p->stop || rc == MPROC_ECANCELLED || rc == MPROC_EBROKEN) {
        e.msg = NULL; /* the run has failed already and says nothing more */
    } else {
        lost_line(c, r, rc, line, sizeof line);
        e.err = 0;
        e.msg = line;
    }
    if (e.status == MPCP_OK) {
        c->bytes += e.bytes;
        mpcp_progress_add(p->prog, 0, e.bytes);
    } else {
        range_failed(p, c, &e);
    }
    c->left--;
    if (c->planned && c->left == 0)
        finish_chunked(p, c);
}

static void submit_range(struct planner *p, struct chunked *c, struct mpcp_buf *task)
{
    if (!wait_room(p)) {
        const struct mpcp_result_entry quiet = {MPCP_FAILED, 0, EINTR, 0, NULL, NULL};
        range_failed(p, c, &quiet);
        mpcp_buf_free(task);
        return;
    }
    c->left++;
    if (mpcp_workers_submit(p->pool, task, &p->fly_r[p->n_fly]) == 0) {
        take_off(p, task, c);
        return;
    }
    /* No room to hand it over (memory): copy the range here. */
    int rc = mpcp_exec_run(task->data, task->len, c->sfd, c->dfd, &p->result);
    mpcp_buf_free(task);
    range_done(p, c, rc ? NULL : p->result.data, p->result.len, NULL, rc);
}

/* The task of one range: the commit's header and entry, as a chunk of [off, off + len). */
static int range_task(const struct chunked *c, size_t header, uint64_t off, uint64_t len,
                      struct mpcp_buf *task)
{
    struct mpcp_task t;
    struct mpcp_entry e;
    if (!decode_commit(c, &t, &e))
        return -EBADMSG;
    e.type = MPCP_T_CHUNK;
    e.rdev = off;
    e.blocks = len;
    int rc = mpcp_buf_put(task, c->commit.data, header);
    mpcp_task_truncate(task, header);
    return rc ? rc : mpcp_task_add(task, &e);
}

/* Ranges of at least CHUNK_MIN, two per worker at most, in whole MiB. */
static void plan_ranges(struct planner *p, struct chunked *c, uint64_t size)
{
    uint64_t n = size / CHUNK_MIN, most = (uint64_t)p->opt->jobs * 2;
    if (n > most)
        n = most;
    uint64_t mib = (uint64_t)1 << 20, step = (size + n - 1) / n;
    step = (step + mib - 1) / mib * mib;
    for (uint64_t off = 0; off < size && !c->failed; off += step) {
        struct mpcp_buf task = {0};
        if (range_task(c, p->task_header, off, size - off < step ? size - off : step, &task)) {
            mpcp_buf_free(&task);
            const struct mpcp_result_entry oom = {MPCP_FAILED,          0, ENOMEM, 0,
                                                  "cannot plan a copy", ""};
            range_failed(p, c, &oom);
            break;
        }
        submit_range(p, c, &task);
    }
}

/* --reflink=auto: a clone, made here, is the whole copy at once. */
static bool clone_here(struct planner *p, struct chunked *c, int fd, const char *name,
                       uint8_t flags)
{
    if (p->opt->reflink != MPCP_REFLINK_AUTO)
        return false;
    int sflags = O_RDONLY | O_CLOEXEC | O_NOCTTY | ((flags & MPCP_E_FOLLOW) ? 0 : O_NOFOLLOW);
    int src = openat(c->sfd, name, sflags);
    struct stat d;
    bool cloned = src >= 0 && fstat(fd, &d) == 0 && mpcp_try_clone(p->opt, src, fd, d.st_dev) == 0;
    if (src >= 0)
        close(src);
    return cloned;
}

/*
 * A large file: the planner makes its temporary, workers copy ranges into
 * it, and the last range to report has it renamed with its metadata. False
 * when it is not such a file, or when anything fails before a range is
 * handed out: the usual path then copies it (and says what fails).
 */
static bool copy_in_chunks(struct planner *p, const char *name, const struct stat *st,
                           uint8_t flags)
{
    if (!chunkable(p, st, flags))
        return false;
    struct chunked *c = calloc(1, sizeof *c);
    if (!c)
        return false;
    c->sfd = fcntl(p->batch_sfd, F_DUPFD_CLOEXEC, 0);
    c->dfd = fcntl(p->batch_dfd, F_DUPFD_CLOEXEC, 0);
    char tmp[NAME_MAX + 1];
    mpcp_temp_name(tmp, sizeof tmp, name);
    c->tmp = strdup(tmp);
    struct mpcp_entry e = {0};
    e.type = MPCP_T_COMMIT;
    e.flags = flags;
    e.name = e.dst_name = name;
    e.link_target = tmp;
    e.link_disp = "";
    fill_entry(&e, st);
    int rc = c->sfd < 0 || c->dfd < 0 || !c->tmp ? -1 : 0;
    rc = rc ? rc : mpcp_buf_put(&c->commit, p->task.data, p->task_header);
    mpcp_task_truncate(&c->commit, p->task_header);
    rc = rc ? rc : mpcp_task_add(&c->commit, &e);
    int fd = rc ? -1 : openat(c->dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        free_chunked(c);
        return false;
    }
    bool cloned = clone_here(p, c, fd, name, flags);
    close(fd);
    if (cloned)
        c->bytes = (uint64_t)st->st_size;
    else
        plan_ranges(p, c, (uint64_t)st->st_size);
    c->planned = true;
    if (c->left == 0)
        finish_chunked(p, c);
    return true;
}

/* ---- folders ---- */

static bool is_ancestor(struct planner *p, const struct stat *st)
{
    for (size_t i = 0; i < p->n_anc; i++)
        if (p->anc[i].dev == st->st_dev && p->anc[i].ino == st->st_ino)
            return true;
    return false;
}

static void push_ancestor(struct planner *p, const struct stat *st)
{
    if (p->n_anc == p->cap_anc) {
        size_t cap = p->cap_anc ? p->cap_anc * 2 : 64;
        void *a = realloc(p->anc, cap * sizeof *p->anc);
        if (!a)
            return;
        p->anc = a;
        p->cap_anc = cap;
    }
    p->anc[p->n_anc].dev = st->st_dev;
    p->anc[p->n_anc].ino = st->st_ino;
    p->n_anc++;
}

/* Removes temporaries that a killed run left in an existing destination folder. */
static void remove_stale(int dfd)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    for (struct dirent *de = readdir(d); de; de = readdir(d))
        if (de->d_name[0] == '.' && mpcp_is_stale_temp(de->d_name))
            unlinkat(dfd, de->d_name, 0);
    closedir(d);
}

static void close_dir_state(struct dir_state *ds)
{
    if (ds->sfd >= 0)
        close(ds->sfd);
    if (ds->dfd >= 0)
        close(ds->dfd);
    ds->sfd = ds->dfd = -1;
}

/*
 * Opens a folder of the walk (name "." for another descriptor of the open
 * folder at, for readdir). Folders stay open until their tasks report,
 * so a low descriptor limit (ulimit -n) can run out with tasks in flight:
 * then they are waited for, which lets their folders go, and the open is
 * tried again.
 */
static int open_folder(struct planner *p, int at, const char *name, int flags)
{
    flags |= O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    int fd = openat(at, name, flags);
    if (fd < 0 && errno == EMFILE && p->n_fly > 0) {
        drain(p);
        fd = openat(at, name, flags);
    }
    return fd;
}

static int make_dest_dir(struct planner *p, int dparent, const char *dname, const struct stat *sst,
                         struct dir_state *ds)
{
    const struct mpcp_opts *opt = p->opt;
    ds->omitted = sst->st_mode & (opt->p_owner ? 077 : opt->p_mode ? 022 : 0);
    ds->new_dst = false;
    ds->restore = false;
    /*
     * Made owner-writable and searchable from the start, so that the
     * children can go in; the mode cp would have made is restored after them.
     */
    mode_t want = sst->st_mode & 07777 & ~ds->omitted;
    if (mkdirat(dparent, dname, want | S_IRWXU) == 0) {
        ds->new_dst = true;
    } else if (errno == EEXIST) {
        struct stat d;
        if (fstatat(dparent, dname, &d, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(d.st_mode)) {
            say(p, 0, "cannot overwrite non-directory %s with directory %s", p->dst_disp.s,
                p->src_disp.s);
            return -1;
        }
    } else {
        /*
         * cp looks at the destination before it makes it: a parent it
         * cannot search is "cannot stat", one it cannot write "cannot create".
         */
        int err = errno;
        struct stat d;
        if (fstatat(dparent, dname, &d, AT_SYMLINK_NOFOLLOW) < 0 && errno != ENOENT)
            say(p, errno, "cannot stat %s", p->dst_disp.s, NULL);
        else
            say(p, err, "cannot create directory %s", p->dst_disp.s, NULL);
        return -1;
    }
    ds->dfd = open_folder(p, dparent, dname, O_NOFOLLOW);
    if (ds->dfd < 0) {
        say(p, errno, "cannot access %s", p->dst_disp.s, NULL);
        return -1;
    }
    if (!ds->new_dst)
        return 0;
    struct stat d;
    if (fstat(ds->dfd, &d) == 0) {
        mode_t user = want & ~p->opt->umask & S_IRWXU;
        ds->made_mode = (d.st_mode & 07777 & ~(mode_t)S_IRWXU) | user;
        ds->restore = user != S_IRWXU;
    }
    return 0;
}

/*
 * cp -p sets a folder's mode through its ACL, which holds only the rwx
 * bits, and calls chmod only for a source mode with set-id or sticky bits:
 * otherwise the folder keeps those it has, the set-group-ID bit mkdir
 * inherited from a set-group-ID parent among them.
 */
static mode_t kept_special_bits(const struct dir_state *ds)
{
    if (ds->new_dst)
        return ds->made_mode & 07000;
    struct stat d;
    return fstat(ds->dfd, &d) == 0 ? d.st_mode & 07000 : 0;
}

static void dir_metadata(struct planner *p, const struct stat *sst, struct dir_state *ds,
                         const char *disp)
{
    const struct mpcp_opts *opt = p->opt;
    if (opt->p_xattr && ds->sfd >= 0) {
        int rc = mpcp_copy_xattrs(ds->sfd, ds->dfd, opt->p_xattr_quiet);
        if (rc < 0)
            say(p, -rc, "setting attributes for %s", disp, NULL);
    }
    if (opt->p_time) {
        struct timespec ts[2] = {sst->st_atim, sst->st_mtim};
        if (futimens(ds->dfd, ts) < 0)
            say(p, errno, "preserving times for %s", disp, NULL);
    }
    bool owner_failed = false;
    if (opt->p_owner && fchown(ds->dfd, sst->st_uid, sst->st_gid) < 0) {
        if (geteuid() == 0 || (errno != EPERM && errno != EINVAL))
            say(p, errno, "failed to preserve ownership for %s", disp, NULL);
        owner_failed = true;
    }
    mode_t mode;
    if (opt->p_mode) {
        mode = mpcp_new_file_mode(opt, sst->st_mode, owner_failed);
        if (!(mode & 07000))
            mode |= kept_special_bits(ds);
    } else if (opt->no_p_mode && ds->new_dst) {
        /* What cp 9.1 leaves: default permissions, the special bits mkdir kept. */
        mode = (ds->made_mode & 07000) | (0777 & ~opt->umask);
    } else if (ds->new_dst) {
        mode_t omitted = ds->omitted & ~opt->umask;
        if (!omitted && !ds->restore)
            return;
        mode = ds->made_mode | omitted;
    } else {
        return;
    }
    if (fchmod(ds->dfd, mode) < 0)
        say(p, errno, "setting permissions for %s", disp, NULL);
    /* cp -p keeps the ACLs with the mode (-a copies them with the xattrs). */
    if (opt->p_mode && !opt->p_xattr && ds->sfd >= 0) {
        int rc = mpcp_copy_acl(ds->sfd, ds->dfd, true, true);
        if (rc < 0)
            say(p, -rc, "preserving permissions for %s", disp, NULL);
    }
}

static void stat_failed(struct planner *p, const char *name, int err)
{
    size_t old = str_push(&p->src_disp, name);
    say(p, err, "cannot stat %s", p->src_disp.s, NULL);
    str_pop(&p->src_disp, old);
}

static void walk_stated(struct planner *p, const char *name, const struct stat *st,
                        struct str *subdirs, uint8_t flags);

/* Copies one directory entry found during the walk. */
static void walk_entry(struct planner *p, int sfd, const char *name, struct str *subdirs,
                       uint8_t flags)
{
    int follow = p->opt->deref == MPCP_DEREF_ALWAYS ? 0 : AT_SYMLINK_NOFOLLOW;
    struct stat st;
    if (fstatat(sfd, name, &st, follow) < 0) {
        stat_failed(p, name, errno);
        return;
    }
    walk_stated(p, name, &st, subdirs, flags);
}

/* Copies one directory entry whose stat is known (here or from a worker's listing). */
static void walk_stated(struct planner *p, const char *name, const struct stat *st,
                        struct str *subdirs, uint8_t flags)
{
    int follow = p->opt->deref == MPCP_DEREF_ALWAYS ? 0 : AT_SYMLINK_NOFOLLOW;
    mpcp_progress_add(p->prog, 0, 0);
    if (S_ISDIR(st->st_mode)) {
        size_t n = strlen(name) + 1;
        if (subdirs->len + n + 1 > subdirs->cap) {
            size_t cap = subdirs->cap ? subdirs->cap * 2 : 1024;
            while (cap < subdirs->len + n + 1)
                cap *= 2;
            char *s = realloc(subdirs->s, cap);
            if (!s) {
                say(p, ENOMEM, "cannot copy %s", name, NULL);
                return;
            }
            subdirs->s = s;
            subdirs->cap = cap;
        }
        memcpy(subdirs->s + subdirs->len, name, n);
        subdirs->len += n;
        return;
    }
    uint8_t eflags = flags | (follow ? 0 : MPCP_E_FOLLOW);
    if (copy_in_chunks(p, name, st, eflags))
        return;
    if (batch_full(p))
        flush(p);
    add_entry(p, name, name, st, eflags);
}

/* Reads the folder: files go into batches, subfolder names into *subdirs. */
static int read_dir(struct planner *p, struct dir_state *ds, struct str *subdirs)
{
    int fd = open_folder(p, ds->sfd, ".", 0);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return -errno;
    }
    begin_batch(p, 0, ds->sfd, ds->dfd);
    uint8_t flags = ds->new_dst ? MPCP_E_DEST_NEW : 0;
    errno = 0;
    for (struct dirent *de = readdir(d); de && !p->stop && !mpcp_interrupted; de = readdir(d)) {
        const char *n = de->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        walk_entry(p, ds->sfd, n, subdirs, flags);
        errno = 0;
    }
    int err = errno;
    closedir(d);
    flush(p);
    return err ? -err : 0;
}

/* ---- listings made by the workers (the distributed walk) ---- */

static void batch_unref(struct list_batch *b)
{
    if (--b->refs > 0)
        return;
    mproc_result_destroy(&b->r);
    free(b);
}

static void drop_listing(struct planner *p, size_t i)
{
    struct listing *l = &p->pre[i];
    if (l->pending) {
        mproc_result_cancel(l->batch->r);
        p->n_asked--;
    }
    batch_unref(l->batch);
    free(l->rel);
    p->pre[i] = p->pre[--p->n_pre];
}

static bool find_listing(const struct planner *p, const char *rel, size_t *i)
{
    for (*i = 0; *i < p->n_pre; (*i)++)
        if (strcmp(p->pre[*i].rel, rel) == 0)
            return true;
    return false;
}

/*
 * A folder whose listing is not wanted after all: one the walk does not
 * enter (and then not those below it either), or -x's mount point.
 */
static void forget_listing(struct planner *p, const char *rel, bool below)
{
    size_t n = strlen(rel);
    for (size_t i = p->n_pre; i-- > 0;) {
        const char *r = p->pre[i].rel;
        if (strncmp(r, rel, n) == 0 && (r[n] == '\0' || (below && r[n] == '/')))
            drop_listing(p, i);
    }
}

/* Records a listing (rel is taken). */
static bool add_listing(struct planner *p, char *rel, struct list_batch *b, size_t start,
                        bool pending)
{
    if (p->n_pre == p->cap_pre) {
        size_t cap = p->cap_pre ? p->cap_pre * 2 : 64;
        struct listing *a = realloc(p->pre, cap * sizeof *a);
        if (!a) {
            free(rel);
            return false;
        }
        p->pre = a;
        p->cap_pre = cap;
    }
    p->pre[p->n_pre++] = (struct listing){rel, b, start, pending};
    b->refs++;
    return true;
}

/* Asks a worker to list folder rel (taken) of the current root, and some below it. */
static bool ask_listing(struct planner *p, char *rel)
{
    const struct mpcp_opts *o = p->opt;
    unsigned flags = (o->deref != MPCP_DEREF_NEVER ? MPCP_LIST_FOLLOW_DIR : 0) |
                     (o->deref == MPCP_DEREF_ALWAYS ? MPCP_LIST_FOLLOW : 0) |
                     (o->one_fs ? MPCP_LIST_ONE_FS : 0);
    struct mpcp_buf req = {0};
    struct list_batch *b = calloc(1, sizeof *b);
    int rc = b ? mpcp_list_request(&req, p->root, rel, flags) : -ENOMEM;
    if (rc == 0)
        rc = mpcp_workers_submit(p->pool, &req, &b->r);
    mpcp_buf_free(&req);
    if (rc < 0) {
        free(b);
        free(rel); /* the planner reads that folder itself */
        return false;
    }
    if (!add_listing(p, rel, b, 0, true)) {
        mproc_result_destroy(&b->r);
        free(b);
        return false;
    }
    p->n_asked++;
    return true;
}

/* dir's first len bytes joined with name, as str_push() joins them. */
static char *join_prefix(const char *dir, size_t len, const char *name)
{
    size_t size = len + strlen(name) + 2;
    char *s = malloc(size);
    if (!s)
        return NULL;
    bool slash = len && dir[len - 1] != '/';
    snprintf(s, size, "%.*s%s%s", (int)len, dir, slash ? "/" : "", name);
    return s;
}

/*
 * Takes the answer to listing i's request: i gets the first section, and
 * every other section becomes the listing of a folder below it. False if
 * the request failed (its worker died twice): the planner reads it itself.
 */
static bool unpack(struct planner *p, size_t i)
{
    struct list_batch *b = p->pre[i].batch;
    const void *data = NULL;
    int rc;
    do
        rc = mproc_result_get(b->r, &data, &b->len, 200);
    while ((rc == -EAGAIN || rc == -EINTR) && !mpcp_interrupted);
    p->pre[i].pending = false;
    p->n_asked--;
    b->data = data;
    uint32_t sections;
    size_t pos;
    if (rc != 0 || mpcp_list_decode_result(b->data, b->len, &sections, &pos) || sections == 0)
        return false;
    p->pre[i].start = pos;
    struct mpcp_list_info info;
    for (uint32_t k = 0; k < sections; k++) {
        size_t start = pos;
        if (mpcp_list_decode_section(b->data, b->len, &pos, &info))
            return k > 0;
        if (k == 0)
            continue;
        size_t at = strlen(p->pre[i].rel);
        char *rel = join_prefix(p->pre[i].rel, at, info.rel);
        if (!rel || !add_listing(p, rel, b, start, false))
            return true; /* those folders are read here */
    }
    return true;
}

/*
 * Walks a folder from a worker's listing. False when the planner must read
 * the folder itself: the listing failed (the planner then meets the error
 * and says it), the folder is wide, or the worker found another folder.
 */
static bool walk_listing(struct planner *p, const struct list_batch *b, size_t start,
                         struct dir_state *ds, const struct stat *sst, struct str *subdirs)
{
    struct mpcp_list_info info;
    size_t pos = start;
    if (mpcp_list_decode_section(b->data, b->len, &pos, &info) || info.status != 0 ||
        info.dir_ino != sst->st_ino)
        return false;
    begin_batch(p, 0, ds->sfd, ds->dfd);
    uint8_t flags = ds->new_dst ? MPCP_E_DEST_NEW : 0;
    pos = info.entries;
    for (uint32_t k = 0; k < info.count && !p->stop && !mpcp_interrupted; k++) {
        struct mpcp_listed e;
        if (mpcp_list_decode_entry(b->data, info.end, &pos, &e)) {
            say(p, EBADMSG, "cannot read the listing of %s", p->src_disp.s, NULL);
            break;
        }
        if (e.err) {
            stat_failed(p, e.name, e.err);
            continue;
        }
        /* Another node may number the same filesystem otherwise: hard links go by ours. */
        if (e.st.st_dev == info.dir_dev)
            e.st.st_dev = sst->st_dev;
        walk_stated(p, e.name, &e.st, subdirs, flags);
    }
    flush(p);
    p->st.listed++;
    return true;
}

/* Reads the current folder from its listing if there is one; false: read it here. */
static bool read_listing(struct planner *p, struct dir_state *ds, const struct stat *sst,
                         struct str *subdirs)
{
    size_t i;
    if (!find_listing(p, p->src_rel.s, &i))
        return false;
    bool done = true;
    if (p->pre[i].pending)
        done = unpack(p, i);
    done = mpcp_interrupted ||
           (done && walk_listing(p, p->pre[i].batch, p->pre[i].start, ds, sst, subdirs));
    drop_listing(p, i);
    return done;
}

/* One folder on the walk's stack: open on both sides, its subfolders still to visit. */
struct frame {
    struct dir_state ds;
    struct folder *fo;
    struct stat sst;
    struct str subdirs; /* NUL-separated names */
    size_t next;        /* offset of the next name in subdirs */
    size_t asked;       /* offset of the first name whose listing is not asked yet */
    size_t saved[4];    /* path lengths to restore when the folder is done */
};

/*
 * Asks for the listings the walk will want next, in the order it will want
 * them: the top folder's next subfolders, then those of the folders below.
 * Idle workers take them while the planner works on the folders before.
 */
static void ask_ahead(struct planner *p, struct frame *stack, size_t n)
{
    for (size_t i = n; i-- > 0 && p->n_asked < p->max_asked;) {
        struct frame *f = &stack[i];
        size_t dir_len = i + 1 < n ? stack[i + 1].saved[0] : p->src_rel.len;
        if (f->asked < f->next)
            f->asked = f->next;
        while (f->asked < f->subdirs.len && p->n_asked < p->max_asked) {
            const char *name = f->subdirs.s + f->asked;
            f->asked += strlen(name) + 1;
            char *rel = join_prefix(p->src_rel.s, dir_len, name);
            size_t known;
            if (rel && find_listing(p, rel, &known)) {
                free(rel); /* listed with a folder above it */
                continue;
            }
            if (!rel || !ask_listing(p, rel))
                return;
        }
    }
}

/* Reads the folder's entries: its files are copied now, its subfolders listed. */
static void read_contents(struct planner *p, struct frame *f, bool top)
{
    if (p->opt->one_fs && !top && f->sst.st_dev != p->root_dev)
        return; /* -x: the mount point is made, its contents are not copied */
    if (f->ds.sfd < 0) {
        say(p, -f->ds.sfd, "cannot access %s", p->src_disp.s, NULL);
        f->ds.sfd = -1;
        return;
    }
    if (p->n_pre && read_listing(p, &f->ds, &f->sst, &f->subdirs))
        return;
    int rc = read_dir(p, &f->ds, &f->subdirs);
    if (rc < 0)
        say(p, -rc, "cannot access %s", p->src_disp.s, NULL);
}

/*
 * cp looks at the destination before it sees that a folder was met before
 * or is its own ancestor: a non-folder there is what it says then.
 */
static bool dest_is_not_dir(struct planner *p, int dparent, const char *dname)
{
    struct stat d;
    if (p->opt->dry_run || fstatat(dparent, dname, &d, AT_SYMLINK_NOFOLLOW) < 0 ||
        S_ISDIR(d.st_mode))
        return false;
    say(p, 0, "cannot overwrite non-directory %s with directory %s", p->dst_disp.s, p->src_disp.s);
    return true;
}

/* A folder that is its own ancestor (through a symlink with -L, or a bind mount), as cp says it. */
static bool cyclic(struct planner *p, const struct stat *sst, int dparent, const char *dname)
{
    if (!is_ancestor(p, sst))
        return false;
    if (!dest_is_not_dir(p, dparent, dname))
        say(p, 0, "cannot copy cyclic symbolic link %s", p->src_disp.s, NULL);
    return true;
}

/*
 * A folder below the top met before (dir_record.c): the operand's own new
 * destination reached through a symlink ends the operand, as in cp; a
 * source folder met again is copied again with -L, refused otherwise.
 */
static bool met_before(struct planner *p, const struct stat *sst, int dparent, const char *dname)
{
    const struct mpcp_dir_record *r = mpcp_dirs_find(&p->dirs, sst->st_dev, sst->st_ino);
    if (!r || (!r->made && p->opt->deref == MPCP_DEREF_ALWAYS))
        return false;
    if (dest_is_not_dir(p, dparent, dname))
        return true;
    if (r->made) {
        say(p, 0, "cannot copy a directory, %s, into itself, %s", p->top_src, p->top_dst);
        p->into_self = true;
        return true;
    }
    say(p, 0, "will not create hard link %s to directory %s", p->dst_disp.s, r->dst);
    return true;
}

/* cp remembers the first folder it makes for an operand, to see it if the walk comes to it. */
static void record_first_dir(struct planner *p, const struct dir_state *ds)
{
    struct stat d;
    if (p->first_dir_made || fstat(ds->dfd, &d) < 0)
        return;
    p->first_dir_made = true;
    if (mpcp_dirs_add(&p->dirs, d.st_dev, d.st_ino, p->dst_disp.s, true) < 0)
        say(p, ENOMEM, "cannot copy %s", p->src_disp.s, NULL);
}

/*
 * Starts a folder: makes the destination, copies the files, lists the
 * subfolders. Returns false when there is nothing more to do for it.
 */
static bool enter_dir(struct planner *p, int sparent, const char *sname, int dparent,
                      const char *dname, bool top, struct frame *f)
{
    if ((!top && met_before(p, &f->sst, dparent, dname)) || cyclic(p, &f->sst, dparent, dname))
        return false;
    struct dir_state ds = {-1, -1, true, false, 0, 0};
    bool dry = p->opt->dry_run;
    if (!dry && make_dest_dir(p, dparent, dname, &f->sst, &ds) < 0)
        return false;
    if (ds.new_dst && (p->opt->verbose || dry) && !p->opt->quiet)
        print_verbose(p, p->src_disp.s, p->dst_disp.s);
    if (ds.new_dst) {
        p->st.dirs++;
        record_first_dir(p, &ds);
    } else {
        remove_stale(ds.dfd);
    }
    bool follow = p->opt->deref == MPCP_DEREF_ALWAYS || (top && p->opt->deref != MPCP_DEREF_NEVER);
    ds.sfd = open_folder(p, sparent, sname, follow ? 0 : O_NOFOLLOW);
    if (ds.sfd < 0)
        ds.sfd = -errno;
    f->ds = ds;
    f->fo = calloc(1, sizeof *f->fo);
    if (!f->fo) {
        say(p, ENOMEM, "cannot copy %s", p->src_disp.s, NULL);
        close_dir_state(&f->ds);
        return false;
    }
    f->fo->parent = p->cur_folder;
    f->fo->pending = 1;
    if (f->fo->parent)
        f->fo->parent->pending++;
    p->cur_folder = f->fo;
    push_ancestor(p, &f->sst);
    read_contents(p, f, top);
    return true;
}

/*
 * Rule (1): a folder's metadata goes on when the folder is finished: walked,
 * every task of its own reported and every subfolder finished. Then the
 * parent may be finished in turn.
 */
static void folder_release(struct planner *p, struct folder *fo)
{
    while (fo && --fo->pending == 0) {
        if (!p->opt->dry_run && fo->ds.dfd >= 0)
            dir_metadata(p, &fo->sst, &fo->ds, fo->dst_disp ? fo->dst_disp : "");
        close_dir_state(&fo->ds);
        struct folder *parent = fo->parent;
        free(fo->dst_disp);
        free(fo);
        fo = parent;
    }
}

/* Ends a folder's walk: its metadata follows once its tasks have reported. */
static void leave_dir(struct planner *p, struct frame *f)
{
    p->n_anc--;
    struct folder *fo = f->fo;
    fo->sst = f->sst;
    fo->ds = f->ds;
    fo->dst_disp = strdup(p->dst_disp.s);
    p->cur_folder = fo->parent;
    free(f->subdirs.s);
    folder_release(p, fo);
}

static void restore_paths(struct planner *p, const size_t saved[4])
{
    str_pop(&p->src_rel, saved[0]);
    str_pop(&p->dst_rel, saved[1]);
    str_pop(&p->src_disp, saved[2]);
    str_pop(&p->dst_disp, saved[3]);
}

static bool push_frame(struct frame **stack, size_t n, size_t *cap)
{
    if (n < *cap)
        return true;
    size_t ncap = *cap ? *cap * 2 : 16;
    struct frame *s = realloc(*stack, ncap * sizeof **stack);
    if (!s)
        return false;
    *stack = s;
    *cap = ncap;
    return true;
}

/*
 * Visits the next subfolder of the top frame; pushes a frame for it. The
 * walk is a loop over an explicit stack, so depth costs heap, not C stack.
 */
static void descend(struct planner *p, struct frame **stack, size_t *n, size_t *cap)
{
    struct frame *f = &(*stack)[*n - 1];
    const char *name = f->subdirs.s + f->next;
    f->next += strlen(name) + 1;
    size_t saved[4] = {str_push(&p->src_rel, name), str_push(&p->dst_rel, name),
                       str_push(&p->src_disp, name), str_push(&p->dst_disp, name)};
    int follow = p->opt->deref == MPCP_DEREF_ALWAYS ? 0 : AT_SYMLINK_NOFOLLOW;
    struct stat st;
    if (fstatat(f->ds.sfd, name, &st, follow) < 0) {
        say(p, errno, "cannot stat %s", p->src_disp.s, NULL);
        forget_listing(p, p->src_rel.s, true);
        restore_paths(p, saved);
        return;
    }
    if (!S_ISDIR(st.st_mode) || !push_frame(stack, *n, cap)) {
        forget_listing(p, p->src_rel.s, true);
        restore_paths(p, saved);
        return;
    }
    f = &(*stack)[*n - 1];
    struct frame *child = &(*stack)[*n];
    memset(child, 0, sizeof *child);
    child->sst = st;
    memcpy(child->saved, saved, sizeof saved);
    bool entered = enter_dir(p, f->ds.sfd, name, f->ds.dfd, name, false, child);
    if (p->n_pre) /* not read: -x's mount point, or a folder that could not be made */
        forget_listing(p, p->src_rel.s, !entered);
    if (entered)
        (*n)++;
    else
        restore_paths(p, saved);
}

static void copy_tree(struct planner *p, int sparent, const char *sname, int dparent,
                      const char *dname, const struct stat *sst)
{
    p->walk_workers = mpcp_workers_walk(p->pool, sparent);
    size_t n = 0, cap = 0;
    struct frame *stack = NULL;
    if (!push_frame(&stack, n, &cap)) {
        say(p, ENOMEM, "cannot copy %s", p->src_disp.s, NULL);
        return;
    }
    memset(&stack[0], 0, sizeof stack[0]);
    stack[0].sst = *sst;
    stack[0].saved[0] = p->src_rel.len;
    stack[0].saved[1] = p->dst_rel.len;
    stack[0].saved[2] = p->src_disp.len;
    stack[0].saved[3] = p->dst_disp.len;
    if (enter_dir(p, sparent, sname, dparent, dname, true, &stack[0]))
        n = 1;
    while (n > 0) {
        struct frame *f = &stack[n - 1];
        if (p->stop || p->into_self || mpcp_interrupted || f->next >= f->subdirs.len) {
            leave_dir(p, f);
            restore_paths(p, f->saved);
            n--;
            continue;
        }
        if (p->walk_workers)
            ask_ahead(p, stack, n);
        descend(p, &stack, &n, &cap);
    }
    while (p->n_pre > 0) /* asked for folders the walk did not reach (a stop) */
        drop_listing(p, p->n_pre - 1);
    free(stack);
}

/* ---- operands ---- */

/* True when the folder dst_parent (or the destination itself) lies inside src. */
static bool dest_inside(int dst_parent, const char *dst_name, const struct stat *src)
{
    struct stat st;
    if (fstatat(dst_parent, dst_name, &st, 0) == 0 && st.st_dev == src->st_dev &&
        st.st_ino == src->st_ino)
        return true;
    int fd = fcntl(dst_parent, F_DUPFD_CLOEXEC, 0);
    for (int depth = 0; fd >= 0 && depth < 100000; depth++) {
        struct stat up;
        if (fstat(fd, &st) < 0 || fstatat(fd, "..", &up, 0) < 0)
            break;
        if (st.st_dev == src->st_dev && st.st_ino == src->st_ino) {
            close(fd);
            return true;
        }
        if (up.st_dev == st.st_dev && up.st_ino == st.st_ino)
            break;
        int next = openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        close(fd);
        fd = next;
    }
    if (fd >= 0)
        close(fd);
    return false;
}

struct operand {
    const char *src_arg;  /* as typed */
    bool dst_slash;       /* DEST was typed with a trailing slash: it must be a folder */
    char *dst_disp;       /* how messages name the destination */
    int sparent, dparent; /* the roots */
    char *sbase;
    const char *dbase;
    int err;         /* opening the parent failed: reported in its turn */
    uint32_t root;   /* the executor's root */
    bool dup_name;   /* an earlier operand lands on the same name in the target folder */
    bool made;       /* already_made() may look for it */
    bool reported;   /* --parents could not make its folders: said, not copied */
    char *link_name; /* "link/": the symlink's name, while sbase is "." in its target */
};

static void copy_top_file(struct planner *p, const struct operand *o, const struct stat *st)
{
    begin_batch(p, MPCP_TASK_TOP, o->sparent, o->dparent);
    uint8_t flags = p->opt->deref == MPCP_DEREF_NEVER ? 0 : MPCP_E_FOLLOW;
    add_entry(p, o->sbase, o->dbase, st, flags);
    flush(p);
}

/*
 * Two operands that land on the same name in the target folder: the same
 * source twice is a warning and copied once; another source would overwrite
 * what this run just made, which cp refuses (folders merge).
 */
/* What this run made at d, a top-level destination's lstat, or NULL. */
static const struct made *made_at(const struct planner *p, const struct stat *d)
{
    for (size_t i = 0; i < p->n_made; i++)
        if (p->made[i].ddev == d->st_dev && p->made[i].dino == d->st_ino)
            return &p->made[i];
    return NULL;
}

/*
 * Whether cp looks at an existing destination itself rather than through
 * a symlink there: it writes a regular file's data through one (and, but
 * under -R, a fifo's or device's, read as a file), and replaces it
 * otherwise.
 */
static bool dest_not_followed(const struct mpcp_opts *opt, const struct stat *src)
{
    bool as_file = S_ISREG(src->st_mode) || ((!opt->recursive || opt->copy_contents) &&
                                             !S_ISDIR(src->st_mode) && !S_ISLNK(src->st_mode));
    return !as_file || opt->symbolic_link || opt->hard_link || opt->backup != MPCP_BACKUP_NONE ||
           opt->remove_dest;
}

/*
 * A symlink this run made, where a later operand's data would be written
 * through it (a/1 -> ../t, then b/1, into c): cp refuses, so that an
 * operand cannot write where an earlier one pointed, unless the link leads
 * to a file this run made (then it is that file's "just-created").
 */
static bool through_made_link(struct planner *p, const struct operand *o)
{
    struct stat t;
    bool target = fstatat(o->dparent, o->dbase, &t, 0) == 0;
    if (target && made_at(p, &t)) {
        say(p, 0, "will not overwrite just-created %s with %s", o->dst_disp, o->src_arg);
        return true;
    }
    if (target && p->opt->update == MPCP_UPDATE_NONE)
        return false; /* cp -n leaves what is there before it looks at the link */
    say(p, 0, "will not copy %s through just-created symlink %s", o->src_arg, o->dst_disp);
    return true;
}

/*
 * cp's checks of an operand against what earlier operands made: the same
 * source again is a warning (a file's only with no backups: else it is
 * backed up), another onto a name made before an error, unless numbered
 * backups keep both.
 */
static bool already_made(struct planner *p, const struct operand *o, const struct stat *src)
{
    struct stat d;
    if (!p->track_made || fstatat(o->dparent, o->dbase, &d, AT_SYMLINK_NOFOLLOW) < 0)
        return false;
    const struct made *m = made_at(p, &d);
    if (!m)
        return false;
    bool warn_only = p->opt->backup == MPCP_BACKUP_NONE || S_ISDIR(src->st_mode);
    if (warn_only && m->sdev == src->st_dev && m->sino == src->st_ino) {
        warn(p,
             S_ISDIR(src->st_mode) ? "warning: source directory %s specified more than once"
                                   : "warning: source file %s specified more than once",
             o->src_arg);
        return true;
    }
    if (S_ISDIR(src->st_mode))
        return false;
    if (S_ISLNK(d.st_mode) && !dest_not_followed(p->opt, src))
        return through_made_link(p, o);
    if (p->opt->backup == MPCP_BACKUP_NUMBERED)
        return false;
    say(p, 0, "will not overwrite just-created %s with %s", o->dst_disp, o->src_arg);
    return true;
}

static void remember_made(struct planner *p, const struct operand *o, const struct stat *src)
{
    struct stat d;
    if (!p->track_made || fstatat(o->dparent, o->dbase, &d, AT_SYMLINK_NOFOLLOW) < 0)
        return;
    if (p->n_made == p->cap_made) {
        size_t cap = p->cap_made ? p->cap_made * 2 : 16;
        struct made *m = realloc(p->made, cap * sizeof *m);
        if (!m)
            return;
        p->made = m;
        p->cap_made = cap;
    }
    p->made[p->n_made++] = (struct made){d.st_dev, src->st_dev, d.st_ino, src->st_ino};
}

static void copy_operand_as(struct planner *p, const struct operand *o, const struct stat *st);

/* The length of path before its last name, name (false if path does not end so). */
static bool name_prefix(const char *path, const char *name, size_t *len)
{
    size_t a = strlen(path), b = strlen(name);
    if (a < b || strcmp(path + a - b, name) != 0 || (a > b && path[a - b - 1] != '/'))
        return false;
    *len = a - b;
    return true;
}

static bool same_prefix(const struct str *s, const char *path, size_t len)
{
    return s->len == len && strncmp(s->s, path, len) == 0;
}

/* Sends what file operands the batch holds. */
static void end_operands(struct planner *p)
{
    if (!p->ops_open)
        return;
    p->ops_open = false;
    flush(p);
}

/*
 * File operands from one folder into one (a shell glob: mpcp -a dir/\* dst)
 * share tasks as a folder's files do, instead of a task each: a batch from
 * their root, named by the folders as typed. Returns false for an operand
 * that cannot join (copied on its own).
 */
static bool join_operands(struct planner *p, const struct operand *o, const struct stat *st)
{
    size_t sl, dl;
    if (!p->track_made || !name_prefix(o->src_arg, o->sbase, &sl) ||
        !name_prefix(o->dst_disp, o->dbase, &dl))
        return false;
    bool same = p->ops_open && p->ops_root == o->root && same_prefix(&p->ops_src, o->src_arg, sl) &&
                same_prefix(&p->ops_dst, o->dst_disp, dl);
    if (!same) {
        end_operands(p);
        p->ops_src.len = p->ops_dst.len = 0;
        if (str_reserve(&p->ops_src, sl + 1) < 0 || str_reserve(&p->ops_dst, dl + 1) < 0)
            return false;
        memcpy(p->ops_src.s, o->src_arg, sl);
        memcpy(p->ops_dst.s, o->dst_disp, dl);
        p->ops_src.s[p->ops_src.len = sl] = '\0';
        p->ops_dst.s[p->ops_dst.len = dl] = '\0';
    }
    /* Paths from the root, names from the folders as typed: what begin_batch and add_entry read. */
    if (str_set(&p->src_rel, "") < 0 || str_set(&p->dst_rel, "") < 0 ||
        str_set(&p->src_disp, p->ops_src.s) < 0 || str_set(&p->dst_disp, p->ops_dst.s) < 0)
        return false;
    if (!same) {
        begin_batch(p, 0, o->sparent, o->dparent);
        p->batch_folder = NULL;
        p->ops_open = true;
        p->ops_root = o->root;
    } else if (batch_full(p)) {
        flush(p);
    }
    add_entry(p, o->sbase, o->dbase, st, p->opt->deref == MPCP_DEREF_NEVER ? 0 : MPCP_E_FOLLOW);
    return true;
}

static void copy_operand(struct planner *p, const struct operand *o)
{
    if (!o->sbase || !o->dbase) {
        say(p, ENOMEM, "cannot copy %s", o->src_arg, NULL);
        return;
    }
    p->root = o->root;
    int follow = p->opt->deref == MPCP_DEREF_NEVER ? AT_SYMLINK_NOFOLLOW : 0;
    struct stat st;
    if (fstatat(o->sparent, o->sbase, &st, follow) < 0) {
        say(p, errno, "cannot stat %s", o->src_arg, NULL);
        return;
    }
    if (already_made(p, o, &st))
        return;
    if (!S_ISDIR(st.st_mode) && join_operands(p, o, &st))
        return;
    end_operands(p);
    if (str_set(&p->src_rel, o->sbase) < 0 || str_set(&p->dst_rel, o->dbase) < 0 ||
        str_set(&p->src_disp, o->src_arg) < 0 || str_set(&p->dst_disp, o->dst_disp) < 0) {
        say(p, ENOMEM, "cannot copy %s", o->src_arg, NULL);
        return;
    }
    copy_operand_as(p, o, &st);
}

static void copy_operand_as(struct planner *p, const struct operand *o, const struct stat *sp)
{
    struct stat st = *sp;
    if (!S_ISDIR(st.st_mode) && o->dst_slash && (p->opt->hard_link || p->opt->symbolic_link)) {
        /* link() and symlink() of "dir/" find no such folder. */
        say(p, ENOENT,
            p->opt->hard_link ? "cannot create hard link %s to %s"
                              : "cannot create symbolic link %s to %s",
            o->dst_disp, o->src_arg);
        return;
    }
    if (!S_ISDIR(st.st_mode) && o->dst_slash) {
        /* cp would create "dir/" as a file; the kernel refuses, and cp says so. */
        bool link = S_ISLNK(st.st_mode);
        say(p, link ? ENOENT : ENOTDIR,
            link ? "cannot create symbolic link %s" : "cannot create regular file %s", o->dst_disp,
            NULL);
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        copy_top_file(p, o, &st);
        return;
    }
    if (!p->opt->recursive) {
        say(p, 0, "-r not specified; omitting directory %s", o->src_arg, NULL);
        return;
    }
    if (dest_inside(o->dparent, o->dbase, &st)) {
        say(p, 0, "cannot copy a directory, %s, into itself, %s", o->src_arg, o->dst_disp);
        return;
    }
    p->root_dev = st.st_dev;
    p->top_src = o->src_arg;
    p->top_dst = o->dst_disp;
    p->into_self = false;
    p->first_dir_made = false;
    if (mpcp_dirs_add(&p->dirs, st.st_dev, st.st_ino, o->dst_disp, false) < 0) {
        say(p, ENOMEM, "cannot copy %s", o->src_arg, NULL);
        return;
    }
    copy_tree(p, o->sparent, o->sbase, o->dparent, o->dbase, &st);
}

/*
 * The last opened parent folder: operands from one folder (a shell glob)
 * share one descriptor and one executor root, so any number of operands
 * costs no more descriptors than one.
 */
struct parent_cache {
    char *dir;
    int fd;
};

/* Splits a path into an opened parent folder and the last component. */
static int open_parent(struct parent_cache *c, const char *path, int *fd, char **base)
{
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/')
        start--;
    char *dir = start == 0 ? strdup(".") : strndup(path, start);
    /* "" names nothing (an unset variable, say): every use of it fails with ENOENT, as cp's. */
    if (len == 0)
        *base = strdup("");
    else if (path[start] == '/' || len == start)
        *base = strdup(".");
    else
        *base = strndup(path + start, len - start);
    if (!dir || !*base) {
        free(dir);
        free(*base);
        *base = NULL;
        return -ENOMEM;
    }
    if (c && c->dir && strcmp(c->dir, dir) == 0) {
        free(dir);
        *fd = c->fd;
        return 0;
    }
    *fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int err = errno;
    if (*fd < 0) {
        free(dir);
        free(*base);
        *base = NULL;
        return err ? -err : -EIO;
    }
    if (!c) {
        free(dir);
        return 0;
    }
    /* The previous fd stays open: an executor root may still refer to it. */
    free(c->dir);
    c->dir = dir;
    c->fd = *fd;
    return 0;
}

/*
 * A rerun with -u or -n is how an interrupted copy is finished: the target
 * folder of file operands is cleaned of dead runs' temporaries too (folders
 * inside a tree are cleaned when the walk enters them).
 */
static void clean_top_folder(struct planner *p, int dfd)
{
    if (p->opt->update != MPCP_UPDATE_ALL && !p->opt->dry_run)
        remove_stale(dfd);
}

static char *strip_slashes(const char *dir)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    return strndup(dir, len);
}

/*
 * The operands, opened before any copying: every root the workers need is
 * registered before the pool forks them (they inherit the root fds; passing
 * fds with every task would cost a sendmsg and two closes per task).
 */
struct plan {
    struct operand *ops;
    int n;
    char *clean;                  /* the target folder as typed, without trailing slashes */
    struct mpcp_parents *parents; /* --parents: the folders made on the way */
};

static void parents_fail(void *arg, int err, const char *tmpl, const char *name)
{
    say(arg, err, tmpl, name, NULL);
}

/* cp -v names the folders --parents makes without quotes. */
static void parents_made(void *arg, const char *src, const char *dst)
{
    struct planner *p = arg;
    p->st.dirs++;
    if ((!p->opt->verbose && !p->opt->dry_run) || p->opt->quiet)
        return;
    mpcp_progress_clear(p->prog);
    printf("%s -> %s\n", src, dst);
}

/* --strip-trailing-slashes: cp strips the sources it copies into a folder. */
static void strip_in_place(char *path)
{
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        path[--len] = '\0';
}

/* --parents: the operand lands on DIRECTORY/SOURCE, in folders made now. */
static void plan_parents(struct planner *p, struct plan *pl, struct operand *o, const char *tdir,
                         struct parent_cache *dcache)
{
    size_t off;
    o->dst_disp = mpcp_parents_dest(tdir, o->src_arg, &off);
    if (!o->dst_disp) {
        o->err = ENOMEM;
        return;
    }
    struct mpcp_reporter r = {parents_fail, parents_made, p};
    if (mpcp_parents_make(pl->parents, o->dst_disp, off, &r) < 0) {
        o->reported = true;
        return;
    }
    char *base = NULL;
    int rc = open_parent(dcache, o->dst_disp, &o->dparent, &base);
    free(base);
    if (rc == -ENOENT && p->opt->dry_run)
        o->dparent = -1; /* a folder the dry run did not make: everything in it is new */
    else if (rc < 0)
        o->err = -rc;
}

static int cmp_dbase(const void *a, const void *b)
{
    const struct operand *x = *(const struct operand *const *)a;
    const struct operand *y = *(const struct operand *const *)b;
    int c = strcmp(x->dbase ? x->dbase : "", y->dbase ? y->dbase : "");
    return c ? c : (x > y) - (x < y);
}

/*
 * Operands that land on one name need cp's "just-created" check, which looks
 * at what the earlier one made: those few wait for the tasks in flight.
 */
static void mark_dup_names(struct plan *pl)
{
    struct operand **v = malloc((size_t)pl->n * sizeof(struct operand *));
    if (!v)
        return;
    for (int i = 0; i < pl->n; i++)
        v[i] = &pl->ops[i];
    qsort(v, (size_t)pl->n, sizeof(struct operand *), cmp_dbase);
    for (int i = 1; i < pl->n; i++)
        if (v[i]->dbase && v[i - 1]->dbase && strcmp(v[i]->dbase, v[i - 1]->dbase) == 0)
            v[i]->dup_name = true;
    free(v);
}

/*
 * "link/" names the folder a symlink points to (the slash makes path
 * resolution follow it, as cp does): the source becomes that folder itself,
 * so the walk and the workers need not follow anything.
 */
static int follow_slash(struct operand *o)
{
    size_t len = strlen(o->src_arg);
    struct stat st;
    if (len < 2 || o->src_arg[len - 1] != '/' ||
        fstatat(o->sparent, o->sbase, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISLNK(st.st_mode))
        return 0;
    int fd = open(o->src_arg, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char *dot = strdup(".");
    if (!dot) {
        close(fd);
        return -ENOMEM;
    }
    o->link_name = o->sbase;
    o->sbase = dot;
    o->sparent = fd;
    return 0;
}

static void register_root(struct operand *o)
{
    if (!o->err && mpcp_exec_add_root(o->sparent, o->dparent, &o->root) < 0)
        o->err = EMFILE;
}

static void plan_into_dir(struct planner *p, struct plan *pl, const char *tdir, char **srcs, int n)
{
    int tfd = open(tdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (tfd < 0) {
        say(p, errno, "target directory %s", tdir, NULL);
        return;
    }
    pl->clean = strip_slashes(tdir);
    pl->ops = calloc((size_t)n, sizeof *pl->ops);
    if (!pl->clean || !pl->ops) {
        say(p, ENOMEM, "target directory %s", tdir, NULL);
        return;
    }
    if (p->opt->parents && mpcp_parents_new(&pl->parents, p->opt) < 0) {
        say(p, ENOMEM, "target directory %s", tdir, NULL);
        return;
    }
    p->track_made = n > 1;
    clean_top_folder(p, tfd);
    struct parent_cache cache = {NULL, -1}, dcache = {NULL, -1};
    for (int i = 0; i < n; i++) {
        struct operand *o = &pl->ops[i];
        *o = (struct operand){.src_arg = srcs[i], .sparent = -1, .dparent = tfd};
        if (p->opt->strip_slashes)
            strip_in_place(srcs[i]);
        if (pl->parents) {
            plan_parents(p, pl, o, tdir, &dcache);
            if (o->reported || o->err)
                continue;
        }
        int rc = open_parent(&cache, srcs[i], &o->sparent, &o->sbase);
        if (rc == 0)
            rc = follow_slash(o);
        if (rc < 0 || !o->sbase) {
            o->err = rc < 0 ? -rc : ENOMEM;
            continue;
        }
        o->dbase = o->link_name ? o->link_name : o->sbase;
        if (!o->dst_disp)
            o->dst_disp = join(pl->clean, o->dbase);
        if (!o->dst_disp)
            o->err = ENOMEM;
        register_root(o);
    }
    pl->n = n;
    free(cache.dir);
    free(dcache.dir);
    if (p->track_made)
        mark_dup_names(pl);
}

/* What cp would make of the source at the destination: the verb of its error. */
static const char *create_what(const struct mpcp_opts *opt, mode_t mode)
{
    bool special = opt->recursive && !opt->copy_contents;
    if (S_ISDIR(mode))
        return "cannot create directory %s";
    if (S_ISLNK(mode))
        return "cannot create symbolic link %s";
    if (special && S_ISFIFO(mode))
        return "cannot create fifo %s";
    if (special && (S_ISCHR(mode) || S_ISBLK(mode)))
        return "cannot create special file %s";
    return "cannot create regular file %s";
}

/*
 * The destination's folder cannot be opened (err). cp looks at the source,
 * then at the destination, then makes it: the message is the one of the
 * first step that fails, in that order.
 */
static void say_no_dest_folder(struct planner *p, const struct operand *o, const char *dst, int err)
{
    const char *src = o->src_arg;
    int follow = p->opt->deref == MPCP_DEREF_NEVER ? AT_SYMLINK_NOFOLLOW : 0;
    struct stat st;
    if (fstatat(o->sparent, o->sbase, &st, follow) < 0) {
        say(p, errno, "cannot stat %s", src, NULL);
        return;
    }
    if (S_ISDIR(st.st_mode) && !p->opt->recursive) {
        say(p, 0, "-r not specified; omitting directory %s", src, NULL);
        return;
    }
    if (err != ENOENT) {
        say(p, err, "cannot stat %s", dst, NULL);
        return;
    }
    say(p, err, create_what(p->opt, st.st_mode), dst, NULL);
}

static void plan_one(struct planner *p, struct plan *pl, const char *src, const char *dst)
{
    pl->ops = calloc(1, sizeof *pl->ops);
    if (!pl->ops) {
        say(p, ENOMEM, "cannot stat %s", src, NULL);
        return;
    }
    struct operand *o = &pl->ops[0];
    *o = (struct operand){.src_arg = src, .sparent = -1, .dparent = -1};
    o->dst_slash = *dst && dst[strlen(dst) - 1] == '/';
    char *dbase = NULL;
    int rc = open_parent(NULL, src, &o->sparent, &o->sbase);
    if (rc == 0)
        rc = follow_slash(o);
    /* Said and not copied; in the plan, so that free_plan() frees its names. */
    pl->n = 1;
    if (rc < 0) {
        say(p, -rc, "cannot stat %s", src, NULL);
        o->reported = true;
        return;
    }
    rc = open_parent(NULL, dst, &o->dparent, &dbase);
    if (rc < 0) {
        say_no_dest_folder(p, o, dst, -rc);
        o->reported = true;
        return;
    }
    /* The destination's base name lives as long as the plan, in clean. */
    pl->clean = dbase;
    o->dbase = dbase;
    o->dst_disp = strdup(dst);
    if (!o->dst_disp)
        o->err = ENOMEM;
    clean_top_folder(p, o->dparent);
    register_root(o);
}

/* Lets already_made() see what the earlier operands of this name made. */
static void settle_dup(struct planner *p, struct plan *pl, int i)
{
    drain(p);
    for (int j = 0; j < i; j++) {
        struct operand *o = &pl->ops[j];
        if (o->err || o->made || !o->dbase || strcmp(o->dbase, pl->ops[i].dbase) != 0)
            continue;
        int follow = p->opt->deref == MPCP_DEREF_NEVER ? AT_SYMLINK_NOFOLLOW : 0;
        struct stat st;
        if (fstatat(o->sparent, o->sbase, &st, follow) == 0)
            remember_made(p, o, &st);
        o->made = true;
    }
}

static void copy_plan(struct planner *p, struct plan *pl)
{
    for (int i = 0; i < pl->n && !p->stop && !mpcp_interrupted; i++) {
        struct operand *o = &pl->ops[i];
        if (o->reported)
            continue;
        if (o->err) {
            say(p, o->err, "cannot stat %s", o->src_arg, NULL);
            continue;
        }
        if (o->dup_name) {
            end_operands(p);
            settle_dup(p, pl, i);
        }
        copy_operand(p, o);
    }
    end_operands(p);
    if (pl->parents) {
        drain(p); /* the folders' times are set when nothing more is written in them */
        struct mpcp_reporter r = {parents_fail, parents_made, p};
        mpcp_parents_protect(pl->parents, &r);
    }
}

static void free_plan(struct plan *pl)
{
    for (int i = 0; i < pl->n; i++) {
        free(pl->ops[i].sbase);
        free(pl->ops[i].dst_disp);
        free(pl->ops[i].link_name);
    }
    free(pl->ops);
    free(pl->clean);
    mpcp_parents_free(pl->parents);
}

static bool is_dir(const char *path, int *err)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        *err = errno;
        return false;
    }
    *err = S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
    return *err == 0;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * cp's special case: with -f and a backup type, "cp -fb f f" (SOURCE and
 * DEST the same string, an existing regular file) copies f to the name its
 * backup would get, and makes no backup then. Returns that name (the
 * caller's to free) or NULL when the case does not apply.
 */
static char *backup_of_itself(struct planner *p, const char *src, const char *dst)
{
    struct mpcp_opts *opt = p->opt;
    struct stat st;
    if (!opt->force || opt->backup == MPCP_BACKUP_NONE || strcmp(src, dst) != 0 ||
        stat(dst, &st) < 0 || !S_ISREG(st.st_mode))
        return NULL;
    const char *slash = strrchr(dst, '/');
    size_t dir_len = slash ? (size_t)(slash - dst) + 1 : 0;
    char *dir = dir_len ? strndup(dst, dir_len) : strdup(".");
    int dfd = dir ? open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
    free(dir);
    if (dfd < 0)
        return NULL;
    char name[NAME_MAX + 1];
    unsigned how;
    int rc = mpcp_backup_name(dfd, dst + dir_len, opt, name, sizeof name, &how);
    close(dfd);
    char *out = rc == 0 ? malloc(dir_len + strlen(name) + 1) : NULL;
    if (!out)
        return NULL;
    memcpy(out, dst, dir_len);
    memcpy(out + dir_len, name, strlen(name) + 1);
    opt->backup = MPCP_BACKUP_NONE; /* the copy is the backup */
    return out;
}

static void plan_operands(struct planner *p, struct plan *pl)
{
    struct mpcp_opts *opt = p->opt;
    int n = opt->n_operands;
    if (opt->target_dir) {
        plan_into_dir(p, pl, opt->target_dir, opt->operands, n);
        return;
    }
    const char *last = opt->operands[n - 1];
    int err = 0;
    if (!opt->no_target_dir && (is_dir(last, &err) || n > 2)) {
        if (err) {
            say(p, err, "target %s", last, NULL);
            return;
        }
        plan_into_dir(p, pl, last, opt->operands, n - 1);
        return;
    }
    if (opt->parents) {
        say(p, 0, "with --parents, the destination must be a directory", NULL, NULL);
        fputs("Try 'mpcp --help' for more information.\n", stderr);
        return;
    }
    char *backup = backup_of_itself(p, opt->operands[0], last);
    plan_one(p, pl, opt->operands[0], backup ? backup : last);
    free(backup);
}

/*
 * What the progress count walks: the operands as planned (names in the
 * plan's open folders, valid until free_plan). Those that will not be
 * copied are left out.
 */
static struct mpcp_count_root *count_roots(const struct plan *pl, size_t *count)
{
    *count = 0;
    struct mpcp_count_root *v = calloc((size_t)pl->n + 1, sizeof *v);
    if (!v)
        return NULL;
    size_t n = 0;
    for (int i = 0; i < pl->n; i++) {
        const struct operand *o = &pl->ops[i];
        if (o->err || o->reported || !o->sbase || !o->dbase)
            continue;
        v[n++] = (struct mpcp_count_root){o->sparent, o->dparent, o->sbase, o->dbase};
    }
    *count = n;
    return v;
}

/* One file has nothing to share among workers: it is copied here. */
static bool worth_workers(const struct planner *p, const struct plan *pl)
{
    if (p->opt->jobs <= 1 || p->opt->dry_run || pl->n == 0)
        return false;
    if (pl->n > 1)
        return true;
    const struct operand *o = &pl->ops[0];
    int follow = p->opt->deref == MPCP_DEREF_NEVER ? AT_SYMLINK_NOFOLLOW : 0;
    struct stat st;
    return !o->err && !o->reported && o->sbase && p->opt->recursive &&
           fstatat(o->sparent, o->sbase, &st, follow) == 0 && S_ISDIR(st.st_mode);
}

static bool plan_on_slow_fs(const struct plan *pl)
{
    for (int i = 0; i < pl->n; i++)
        if (mpcp_slow_fs(pl->ops[i].sparent) || mpcp_slow_fs(pl->ops[i].dparent))
            return true;
    return false;
}

/*
 * A source or destination on slow storage: small batches, and without -j a
 * pool of up to mpcp_slow_max_jobs() workers, started as the window hands
 * them tasks (on demand), of which the window keeps busy as many as pay.
 * The window starts at a quarter of the bound: a latency-bound copy gains
 * most in its first second, and a doubling or two settles it. Measured
 * with bench/slowfs at 1 ms a request, 5k small files, medians of 6
 * interleaved cold copies: starting at 128, copies off slowfs (CPU-bound
 * here from 64 workers on) took 1.15 s against 0.89 s with -j 64; starting
 * at 64 they took 0.86 s, and copies onto it 2.75 s against 2.37 s with
 * -j 256 (starting at 128: 2.44 s). That gap was the climb: a fill whose
 * CPUs idle steps to 4x at once now (adapt.c); in the published table
 * (docs/BENCHMARKS.md, medians of 3) copies onto it took 2.34 s against
 * 2.27 s with -j 256, off it 0.86 s against 0.86 s with -j 128.
 */
static void use_slow_storage(struct planner *p, const struct plan *pl)
{
    p->slow = plan_on_slow_fs(pl);
    if (!p->slow)
        return;
    p->batch_entries = SLOW_BATCH_ENTRIES;
    p->batch_max_bytes = SLOW_BATCH_BYTES;
    if (!p->opt->jobs_auto)
        return;
    int cpus = p->opt->jobs, cap = mpcp_slow_max_jobs();
    if (cap < cpus)
        cap = cpus;
    p->opt->jobs = cap;
    p->adaptive = true;
    mpcp_adapt_init(&p->adapt, (size_t)(cap + 3) / 4, (size_t)cap);
}

/*
 * -j 1 copies in this process, the lean path. Otherwise the pool is made
 * now, after the roots and before the progress thread: workers are forks of
 * a process with no thread of ours.
 */
static void start_workers(struct planner *p, const struct plan *pl)
{
    p->batch_entries = BATCH_ENTRIES;
    p->batch_max_bytes = BATCH_BYTES;
    if (!worth_workers(p, pl))
        return;
    use_slow_storage(p, pl);
    p->max_fly = (size_t)p->opt->jobs * FLY_PER_WORKER;
    p->fly = calloc(p->max_fly, sizeof *p->fly);
    p->fly_r = calloc(p->max_fly, sizeof(mproc_result *));
    if (!p->fly || !p->fly_r || mpcp_workers_start(&p->pool, p->opt->jobs, p->adaptive) < 0) {
        p->pool = NULL; /* copy here, as with -j 1 */
        return;
    }
    if (p->adaptive)
        (void)mproc_pool_set_max_workers(p->pool, (int)p->adapt.limit);
    /* A request for every worker, and some to spare: each answer is bounded (listing.c). */
    size_t ahead = (size_t)p->opt->jobs * 2;
    p->max_asked = ahead < 4 ? 4 : ahead > 64 ? 64 : ahead;
}

/*
 * The end of the run. After Ctrl-C the workers are stopped at once (they
 * remove their temporaries on SIGTERM); what a SIGKILLed one left is swept
 * from the folders of the tasks in flight once every worker is reaped.
 */
static void stop_workers(struct planner *p)
{
    free(p->pre);
    if (!p->pool) {
        free(p->fly);
        free(p->fly_r);
        return;
    }
    drain(p);
    if (mpcp_interrupted) {
        mproc_pool_terminate(p->pool);
        mproc_pool_destroy(&p->pool);
        for (size_t i = 0; i < p->n_fly; i++)
            remove_stale(p->fly[i].dfd);
        while (p->n_fly > 0)
            complete(p, p->n_fly - 1);
    } else {
        mproc_pool_close(p->pool);
        mproc_pool_join(p->pool, MPROC_WAIT_FOREVER);
        mproc_pool_destroy(&p->pool);
    }
    free(p->fly);
    free(p->fly_r);
}

static void free_planner(struct planner *p)
{
    mpcp_exec_reset();
    for (size_t i = 0; i < p->cap_links; i++) {
        free(p->links[i].path);
        free(p->links[i].disp);
    }
    free(p->links);
    free(p->made);
    free(p->anc);
    mpcp_dirs_free(&p->dirs);
    free(p->src_rel.s);
    free(p->dst_rel.s);
    free(p->src_disp.s);
    free(p->dst_disp.s);
    free(p->ops_src.s);
    free(p->ops_dst.s);
    mpcp_buf_free(&p->task);
    mpcp_buf_free(&p->result);
    free(p);
}

int mpcp_run(struct mpcp_opts *opt)
{
    struct planner *p = calloc(1, sizeof *p);
    if (!p) {
        mpcp_error(ENOMEM, "cannot start");
        return 1;
    }
    p->opt = opt;
    mpcp_exec_set_options(opt);
    double t0 = now_seconds();
    struct plan pl = {NULL, 0, NULL, NULL};
    plan_operands(p, &pl);
    start_workers(p, &pl);
    size_t n_roots;
    struct mpcp_count_root *roots = count_roots(&pl, &n_roots);
    mpcp_progress_start(&p->prog, opt, roots, n_roots);
    current = p;
    if (p->prog)
        mpcp_set_data_progress(on_data);
    /* -n, --update: the count sees the destination before anything is written in it. */
    if (opt->update != MPCP_UPDATE_ALL)
        mpcp_progress_wait_count(p->prog);
    copy_plan(p, &pl);
    stop_workers(p);
    mpcp_set_data_progress(NULL);
    mpcp_progress_stop(&p->prog);
    free(roots);
    p->st.seconds = now_seconds() - t0;
    fflush(stdout);
    mpcp_report_summary(opt, &p->st);
    int status = p->status;
    free_plan(&pl);
    free_planner(p);
    return status;
}
