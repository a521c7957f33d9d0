/*
 * progress.c: one line on stderr with bytes and files done of the total,
 * rate and ETA. The total comes from a thread that walks the sources while
 * the copy runs (so the copy does not wait for a full scan); until it has
 * finished, no percentage is shown, and a percentage never goes backwards.
 * The bar appears only after a second (quick copies stay silent) and only on
 * a terminal; --progress on anything else prints plain lines, never control
 * characters.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct mpcp_progress {
    const struct mpcp_opts *opt;
    bool tty;
    double start, last_draw;
    uint64_t files_done, bytes_done;
    _Atomic uint64_t files_total, bytes_total;
    atomic_bool counted, quit;
    pthread_t counter;
    const struct mpcp_count_root *roots; /* the plan's operands; the caller's */
    size_t n_roots;
    bool have_thread, shown, every_step;
    double best_fraction;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the counting thread ---- */

/*
 * The count must end where the copy ends: the bytes mpcp will write, not the
 * bytes the sources hold. So a hard-link group's data counts once (-a links
 * the other names to the first copy), a sparse file counts its data extents
 * (what sparse_copy moves), a folder of another filesystem under -x counts
 * nothing, and under -n or --update a file the destination keeps counts
 * nothing either (the copy waits for this count then: see
 * mpcp_progress_wait_count()).
 */

/* (dev, ino) of the hard-link groups counted, an open-addressing set. */
struct inode_set {
    struct inode_key {
        dev_t dev;
        ino_t ino;
        bool used;
    } * v;
    size_t n, cap;
};

static size_t inode_slot(const struct inode_set *s, dev_t dev, ino_t ino)
{
    size_t i = (size_t)((ino * 0x9E3779B97F4A7C15ull) ^ dev) & (s->cap - 1);
    while (s->v[i].used && (s->v[i].dev != dev || s->v[i].ino != ino))
        i = (i + 1) & (s->cap - 1);
    return i;
}

/* Adds (dev, ino); false when it was there already. Without memory every name counts. */
static bool inode_add(struct inode_set *s, dev_t dev, ino_t ino)
{
    if ((s->n + 1) * 2 > s->cap) {
        struct inode_set g = {NULL, 0, s->cap ? s->cap * 2 : 256};
        g.v = calloc(g.cap, sizeof *g.v);
        if (!g.v)
            return true;
        for (size_t i = 0; i < s->cap; i++)
            if (s->v[i].used)
                g.v[inode_slot(&g, s->v[i].dev, s->v[i].ino)] = s->v[i];
        g.n = s->n;
        free(s->v);
        *s = g;
    }
    size_t i = inode_slot(s, dev, ino);
    if (s->v[i].used)
        return false;
    s->v[i] = (struct inode_key){dev, ino, true};
    s->n++;
    return true;
}

/* What the walk of one operand shares with its folders. */
struct count_walk {
    struct mpcp_progress *p;
    struct inode_set links;
    dev_t root_dev;
    bool follow; /* stat through symlinks below the operand (-L) */
    bool check_dst;
};

static bool dst_keeps(const struct mpcp_opts *opt, const struct stat *src, const struct stat *dst)
{
    if (opt->update == MPCP_UPDATE_NONE || opt->update == MPCP_UPDATE_NONE_FAIL)
        return true;
    if (dst->st_mtim.tv_sec != src->st_mtim.tv_sec)
        return dst->st_mtim.tv_sec > src->st_mtim.tv_sec;
    return dst->st_mtim.tv_nsec >= src->st_mtim.tv_nsec;
}

/* Counts one non-folder: name in sfd, its destination name in dfd (-1: a new folder). */
static void count_file(struct count_walk *w, int sfd, const char *name, int dfd, const char *dname,
                       const struct stat *st)
{
    const struct mpcp_opts *opt = w->p->opt;
    /* Links (-l, -s) move no data: the bar counts files then. */
    bool data = S_ISREG(st->st_mode) && !opt->hard_link && !opt->symbolic_link;
    /* A later name of a group becomes a link to the first copy, even a kept one. */
    if (data && opt->p_links && st->st_nlink > 1 && !inode_add(&w->links, st->st_dev, st->st_ino))
        data = false;
    struct stat d;
    if (w->check_dst && dfd >= 0 && fstatat(dfd, dname, &d, AT_SYMLINK_NOFOLLOW) == 0 &&
        !S_ISDIR(d.st_mode) && dst_keeps(opt, st, &d))
        return; /* skipped: neither a file nor a byte to write */
    atomic_fetch_add(&w->p->files_total, 1);
    if (data)
        atomic_fetch_add(&w->p->bytes_total, mpcp_copy_bytes(opt, sfd, name, st));
}

struct count_level {
    DIR *d;
    int dfd; /* the destination folder, or -1 (new, or not checked) */
    dev_t dev;
    ino_t ino;
};

static bool on_stack(const struct count_level *v, size_t n, const struct stat *st)
{
    for (size_t i = 0; i < n; i++)
        if (v[i].dev == st->st_dev && v[i].ino == st->st_ino)
            return true;
    return false;
}

/*
 * Opens a folder onto the stack (unless it would loop, as with -L and a link
 * to ..), with its destination when skips are checked.
 */
static bool push_level(struct count_walk *w, struct count_level **v, size_t *n, size_t *cap,
                       int parent, const char *name, int dparent, const char *dname, bool follow,
                       const struct stat *st)
{
    if (on_stack(*v, *n, st))
        return false;
    if (w->p->opt->one_fs && *n > 0 && st->st_dev != w->root_dev)
        return false; /* -x: the mount point is made, its contents are not copied */
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 32;
        struct count_level *nv = realloc(*v, ncap * sizeof *nv);
        if (!nv)
            return false;
        *v = nv;
        *cap = ncap;
    }
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return false;
    }
    int dfd = -1;
    if (w->check_dst && dparent >= 0)
        dfd = openat(dparent, dname, O_PATH | O_DIRECTORY | O_CLOEXEC);
    (*v)[*n] = (struct count_level){d, dfd, st->st_dev, st->st_ino};
    (*n)++;
    return true;
}

static void pop_level(struct count_level *v, size_t *n)
{
    (*n)--;
    closedir(v[*n].d);
    if (v[*n].dfd >= 0)
        close(v[*n].dfd);
}

/* Counts the files and bytes below one operand, with a stack of open folders. */
static void count_tree(struct count_walk *w, const struct mpcp_count_root *r)
{
    const struct mpcp_opts *opt = w->p->opt;
    bool top_follow = opt->deref != MPCP_DEREF_NEVER;
    struct stat st;
    if (fstatat(r->sparent, r->sbase, &st, top_follow ? 0 : AT_SYMLINK_NOFOLLOW) < 0)
        return;
    if (!S_ISDIR(st.st_mode)) {
        count_file(w, r->sparent, r->sbase, r->dparent, r->dbase, &st);
        return;
    }
    if (!opt->recursive)
        return; /* omitted, as cp says */
    w->root_dev = st.st_dev;
    struct count_level *v = NULL;
    size_t n = 0, cap = 0;
    push_level(w, &v, &n, &cap, r->sparent, r->sbase, r->dparent, r->dbase, top_follow, &st);
    while (n > 0 && !atomic_load(&w->p->quit)) {
        struct dirent *de = readdir(v[n - 1].d);
        if (!de) {
            pop_level(v, &n);
            continue;
        }
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
            continue;
        int parent = dirfd(v[n - 1].d), dparent = v[n - 1].dfd;
        if (fstatat(parent, name, &st, w->follow ? 0 : AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (S_ISDIR(st.st_mode))
            push_level(w, &v, &n, &cap, parent, name, dparent, name, w->follow, &st);
        else
            count_file(w, parent, name, dparent, name, &st);
    }
    while (n > 0)
        pop_level(v, &n);
    free(v);
}

static void *counter_main(void *arg)
{
    struct mpcp_progress *p = arg;
    struct count_walk w = {
        p, {NULL, 0, 0}, 0, p->opt->deref == MPCP_DEREF_ALWAYS, p->opt->update != MPCP_UPDATE_ALL};
    for (size_t i = 0; i < p->n_roots && !atomic_load(&p->quit); i++)
        count_tree(&w, &p->roots[i]);
    free(w.links.v);
    /* Stopped before the end (the run did): the total is not known, the bar says so. */
    if (!atomic_load(&p->quit))
        atomic_store(&p->counted, true);
    return NULL;
}

/* ---- drawing ---- */

static void human(char *buf, size_t size, double v)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static void clock_text(char *buf, size_t size, double secs)
{
    long s = secs > 0 && secs < 360000 * 24.0 ? (long)(secs + 0.5) : 0;
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

static void render(struct mpcp_progress *p, char *line, size_t size)
{
    double elapsed = now() - p->start;
    double rate = elapsed > 0 ? (double)p->bytes_done / elapsed : 0;
    char done[32], total[32], speed[32], eta[32];
    human(done, sizeof done, (double)p->bytes_done);
    human(speed, sizeof speed, rate);
    uint64_t bt = atomic_load(&p->bytes_total), ft = atomic_load(&p->files_total);
    if (!atomic_load(&p->counted)) {
        /* The total so far: it grows as the count finds more, no percentage yet. */
        human(total, sizeof total, (double)bt);
        snprintf(line, size, "%s/%s+ %llu/%llu+ files %s/s (counting...)", done, total,
                 (unsigned long long)p->files_done, (unsigned long long)ft, speed);
        return;
    }
    double frac =
        bt ? (double)p->bytes_done / (double)bt : (ft ? (double)p->files_done / (double)ft : 1);
    if (frac > 1)
        frac = 1;
    if (frac < p->best_fraction)
        frac = p->best_fraction; /* never backwards */
    p->best_fraction = frac;
    double left = bt > p->bytes_done ? (double)(bt - p->bytes_done) : 0;
    clock_text(eta, sizeof eta, rate > 0 ? left / rate : 0);
    human(total, sizeof total, (double)bt);
    int width = 20, fill = (int)(frac * width);
    char bar[24];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '-';
    bar[width] = '\0';
    snprintf(line, size, "[%s] %5.1f%% %s/%s %llu/%llu files %s/s ETA %s", bar, frac * 100, done,
             total, (unsigned long long)p->files_done, (unsigned long long)ft, speed, eta);
}

static void draw(struct mpcp_progress *p)
{
    char line[256];
    render(p, line, sizeof line);
    if (p->tty)
        fprintf(stderr, "\r%s\033[K", line);
    else
        fprintf(stderr, "%s: %s\n", mpcp_program, line);
    fflush(stderr);
    p->shown = true;
}

static void maybe_draw(struct mpcp_progress *p)
{
    double t = now();
    if (p->every_step) {
        draw(p);
        return;
    }
    if (t - p->start < 1.0)
        return;
    double period = p->tty ? 0.1 : 5.0;
    if (t - p->last_draw < period)
        return;
    p->last_draw = t;
    draw(p);
}

void mpcp_progress_start(struct mpcp_progress **out, const struct mpcp_opts *opt,
                         const struct mpcp_count_root *roots, size_t n_roots)
{
    *out = NULL;
    bool tty = isatty(STDERR_FILENO);
    if (opt->quiet || opt->dry_run || opt->progress == MPCP_PROGRESS_OFF)
        return;
    if (opt->progress == MPCP_PROGRESS_AUTO && !tty)
        return;
    struct mpcp_progress *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->opt = opt;
    p->tty = tty;
    p->start = now();
    p->roots = roots;
    p->n_roots = n_roots;
    /* For tests: every step draws, from the start (MPCP_PROGRESS_EVERY_STEP=1). */
    const char *every = getenv("MPCP_PROGRESS_EVERY_STEP");
    p->every_step = every && strcmp(every, "1") == 0;
    atomic_init(&p->files_total, 0);
    atomic_init(&p->bytes_total, 0);
    atomic_init(&p->counted, false);
    atomic_init(&p->quit, false);
    /* Signals go to the main thread, whose system calls they must interrupt. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    p->have_thread = pthread_create(&p->counter, NULL, counter_main, p) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    *out = p;
}

void mpcp_progress_wait_count(struct mpcp_progress *p)
{
    if (!p || !p->have_thread)
        return;
    while (!atomic_load(&p->counted) && !mpcp_interrupted) {
        struct timespec ts = {0, 50000000L};
        nanosleep(&ts, NULL);
        maybe_draw(p);
    }
}

void mpcp_progress_add(struct mpcp_progress *p, uint64_t files, uint64_t bytes)
{
    if (!p)
        return;
    p->files_done += files;
    p->bytes_done += bytes;
    maybe_draw(p);
}

void mpcp_progress_clear(struct mpcp_progress *p)
{
    if (!p || !p->shown || !p->tty)
        return;
    fputs("\r\033[K", stderr);
    fflush(stderr);
    p->shown = false;
    p->last_draw = 0; /* redraw at the next step */
}

void mpcp_progress_stop(struct mpcp_progress **pp)
{
    struct mpcp_progress *p = *pp;
    if (!p)
        return;
    atomic_store(&p->quit, true);
    if (p->have_thread)
        pthread_join(p->counter, NULL);
    if (p->shown) {
        /*
         * The final state, then a newline: the last line stays on screen. A
         * finished count stays the total (a failed file leaves the bar short
         * of 100%); one that never finished (no thread, Ctrl-C) is replaced
         * by what was done, and so is one the copy outgrew (files that grew
         * while copied).
         */
        if (!atomic_load(&p->counted) || p->bytes_done > atomic_load(&p->bytes_total) ||
            p->files_done > atomic_load(&p->files_total)) {
            atomic_store(&p->bytes_total, p->bytes_done);
            atomic_store(&p->files_total, p->files_done);
        }
        atomic_store(&p->counted, true);
        draw(p);
        if (p->tty)
            fputc('\n', stderr);
    }
    free(p);
    *pp = NULL;
}
