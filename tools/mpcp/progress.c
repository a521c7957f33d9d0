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
    uint64_t files_done, bytes_done, bytes_skipped, files_skipped;
    _Atomic uint64_t files_total, bytes_total;
    atomic_bool counted, quit;
    pthread_t counter;
    bool have_thread, shown;
    double best_fraction;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the counting thread ---- */

static void count_file(struct mpcp_progress *p, const struct stat *st)
{
    atomic_fetch_add(&p->files_total, 1);
    /* Links (-l, -s) move no data: the bar counts files then. */
    if (S_ISREG(st->st_mode) && !p->opt->hard_link && !p->opt->symbolic_link)
        atomic_fetch_add(&p->bytes_total, (uint64_t)st->st_size);
}

struct count_level {
    DIR *d;
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

/* Opens a folder onto the stack (unless it would loop, as with -L and a link to ..). */
static bool push_level(struct count_level **v, size_t *n, size_t *cap, int parent, const char *name,
                       bool follow, const struct stat *st)
{
    if (on_stack(*v, *n, st))
        return false;
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
    (*v)[*n].d = d;
    (*v)[*n].dev = st->st_dev;
    (*v)[*n].ino = st->st_ino;
    (*n)++;
    return true;
}

/* Counts the files and bytes below one operand, with a stack of open folders. */
static void count_tree(struct mpcp_progress *p, const char *operand, bool follow)
{
    struct stat st;
    if (fstatat(AT_FDCWD, operand, &st, follow ? 0 : AT_SYMLINK_NOFOLLOW) < 0)
        return;
    if (!S_ISDIR(st.st_mode) || !p->opt->recursive) {
        if (!S_ISDIR(st.st_mode))
            count_file(p, &st);
        return;
    }
    bool deeper = p->opt->deref == MPCP_DEREF_ALWAYS;
    struct count_level *v = NULL;
    size_t n = 0, cap = 0;
    push_level(&v, &n, &cap, AT_FDCWD, operand, follow, &st);
    while (n > 0 && !atomic_load(&p->quit)) {
        struct dirent *de = readdir(v[n - 1].d);
        if (!de) {
            closedir(v[--n].d);
            continue;
        }
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
            continue;
        int parent = dirfd(v[n - 1].d);
        if (fstatat(parent, name, &st, deeper ? 0 : AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (S_ISDIR(st.st_mode))
            push_level(&v, &n, &cap, parent, name, deeper, &st);
        else
            count_file(p, &st);
    }
    while (n > 0)
        closedir(v[--n].d);
    free(v);
}

static void *counter_main(void *arg)
{
    struct mpcp_progress *p = arg;
    const struct mpcp_opts *opt = p->opt;
    int n = opt->n_operands;
    int first = 0;
    if (!opt->target_dir)
        n--; /* the last operand is the destination */
    bool follow = opt->deref != MPCP_DEREF_NEVER;
    for (int i = first; i < n && !atomic_load(&p->quit); i++)
        count_tree(p, opt->operands[i], follow);
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
    if (!atomic_load(&p->counted)) {
        snprintf(line, size, "%s, %llu files, %s/s (counting...)", done,
                 (unsigned long long)p->files_done, speed);
        return;
    }
    uint64_t bt = atomic_load(&p->bytes_total), ft = atomic_load(&p->files_total);
    bt = bt > p->bytes_skipped ? bt - p->bytes_skipped : 0;
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
    if (t - p->start < 1.0)
        return;
    double period = p->tty ? 0.1 : 5.0;
    if (t - p->last_draw < period)
        return;
    p->last_draw = t;
    draw(p);
}

void mpcp_progress_start(struct mpcp_progress **out, const struct mpcp_opts *opt)
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
    if (!p->have_thread)
        atomic_store(&p->counted, true);
    *out = p;
}

void mpcp_progress_add(struct mpcp_progress *p, uint64_t files, uint64_t bytes)
{
    if (!p)
        return;
    p->files_done += files;
    p->bytes_done += bytes;
    maybe_draw(p);
}

void mpcp_progress_skip(struct mpcp_progress *p, uint64_t bytes)
{
    if (p)
        p->bytes_skipped += bytes;
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
        /* The final state, then a newline: the last line stays on screen. */
        atomic_store(&p->bytes_total, p->bytes_done + p->bytes_skipped);
        atomic_store(&p->files_total, p->files_done);
        atomic_store(&p->counted, true);
        draw(p);
        if (p->tty)
            fputc('\n', stderr);
    }
    free(p);
    *pp = NULL;
}
