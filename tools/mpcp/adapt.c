/*
 * adapt.c: how many tasks mpcp keeps in flight on slow storage. Where every
 * file operation waits for a round trip (NFS, SMB, FUSE), the copy is bound
 * by latency, not by the CPUs: N operations in flight go about N times as
 * fast, until the server, the link or this machine's CPUs saturate. The
 * number is found while the copy runs, one measurement period at a time.
 *
 * The throughput of one period is a poor guide alone: over a fraction of a
 * second it swings by 2x at the same window (tasks complete in bursts, as
 * folders fill), so a rule of "keep a step that pays 12%" climbs or falls
 * on noise. The share of CPU time left idle is steady, and says what a
 * step up can buy: while the CPUs wait, more operations in flight overlap
 * more round trips; once they are busy, more processes only share them.
 * So the window doubles while at least IDLE_GROW of the CPU time is idle
 * or the last doubling paid GAIN more throughput, and a step up is kept
 * unless the throughput fell below KEEP of the size before (the server or
 * the link saturated and suffers from more). A step that lost goes back,
 * holds there a while, and probes again a smaller step up (the load of the
 * server may change). Where /proc/stat cannot be read, a step must pay
 * GAIN more throughput to be kept. Bounded by the pool's size, which the
 * caller chooses.
 *
 * The fill, before the first task completes, is a latency and gives no
 * rate, but its idle share already tells a copy that waits on round trips
 * from one that keeps the CPUs busy. On bench/slowfs with 2 CPUs, read when
 * the window first waits for a task: 45-76% idle copying small files onto
 * it, 17-28% off it, 5-26% for large files either way. Doubling from the
 * first periods on cost a copy of small files onto slowfs a fifth of its
 * time (the window reached 256 after 0.57 s of 2.6), so a fill idle at
 * least IDLE_RUSH steps to 4x at once. It is judged once: at the
 * planner's first wait past FILL_S, or at the first completion.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <time.h>

#define PERIOD_S 0.2 /* a measurement lasts at least this long ... */
/* ... and sees as many tasks complete as a quarter of the window's workers. */
#define FILL_S           0.1  /* the fill is judged from this far in (or at the first completion) */
#define IDLE_RUSH        0.4  /* a fill this idle steps to 4x at once */
#define IDLE_GROW        0.25 /* the CPUs idle this share of the time: a step up may pay */
#define KEEP             0.5  /* a step up is undone below this share of the rate before */
#define GAIN             1.12 /* without /proc/stat, a step up must pay this much */
#define HOLD_PERIODS     8    /* periods at a settled size before the next probe */

#define FUSE_SUPER_MAGIC 0x65735546ul

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

bool mpcp_slow_fs(int fd)
{
    /* A round trip per stat: network filesystems, and FUSE (sshfs, s3fs, rclone, gcsfuse). */
    static const unsigned long magic[] = {
        0x6969,     /* NFS */
        0xFF534D42, /* CIFS */
        0xFE534D42, /* SMB2 */
        0x00C36400, /* CephFS */
        0x0BD00BD0, /* Lustre */
        0x47504653, /* GPFS (Spectrum Scale) */
        0x19830326, /* BeeGFS */
        0xAAD7AAEA, /* PanFS */
        0x01021997, /* 9p */
        0x6B414653, /* AFS */
        FUSE_SUPER_MAGIC,
    };
    const char *force = getenv("MPCP_SLOW");
    if (force)
        return strcmp(force, "1") == 0;
    struct statfs fs;
    if (fd < 0 || fstatfs(fd, &fs) < 0)
        return false;
    for (size_t i = 0; i < sizeof magic / sizeof magic[0]; i++)
        if ((unsigned long)fs.f_type == magic[i])
            return true;
    return false;
}

int mpcp_slow_max_jobs(void)
{
    const char *v = getenv("MPCP_MAX_JOBS");
    long n = v ? strtol(v, NULL, 10) : 0;
    if (n >= 1 && n <= MPCP_MAX_JOBS_LIMIT)
        return (int)n;
    return MPCP_MAX_JOBS_DEFAULT;
}

/* The CPU time all CPUs spent idle and in all, from /proc/stat; false where it cannot be read. */
static bool cpu_times(unsigned long long *idle, unsigned long long *total)
{
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return false;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 5)
        return false;
    *idle = v[3] + v[4];
    *total = 0;
    for (int i = 0; i < 8; i++)
        *total += v[i];
    return true;
}

/* The share of CPU time idle since the last call, or -1 where it is not known. */
static double idle_share(struct mpcp_adapt *a)
{
    unsigned long long idle, total;
    if (!cpu_times(&idle, &total))
        return -1;
    double share = -1;
    if (a->cpu_total && total > a->cpu_total)
        share = (double)(idle - a->cpu_idle) / (double)(total - a->cpu_total);
    a->cpu_idle = idle;
    a->cpu_total = total;
    return share;
}

void mpcp_adapt_init(struct mpcp_adapt *a, size_t start, size_t cap)
{
    memset(a, 0, sizeof *a);
    a->cap = cap;
    a->limit = start < cap ? start : cap;
    a->good = a->limit;
    a->t0 = now_s();
    idle_share(a); /* the fill's idle share is from here */
}

static size_t capped(const struct mpcp_adapt *a, size_t n)
{
    return n > a->cap ? a->cap : n;
}

static size_t step_up(const struct mpcp_adapt *a)
{
    return capped(a, a->probed ? a->limit + (a->limit + 1) / 2 : a->limit * 2);
}

/*
 * One measurement ended with rate work per second and idle of the CPU
 * time idle (-1: not known): keep the size, grow, or go back.
 */
static void decide(struct mpcp_adapt *a, double rate, double idle)
{
    bool known = idle >= 0, paid = false;
    if (a->limit > a->good) { /* a step up was on trial */
        if (rate < a->best * (known ? KEEP : GAIN)) {
            a->limit = a->good;
            a->probed = true;
            a->hold = HOLD_PERIODS;
            return;
        }
        paid = rate >= a->best * GAIN;
        a->good = a->limit;
    } else if (a->hold > 0) {
        a->hold--;
    }
    a->best = rate; /* as the server is now */
    bool waiting = !known || idle >= IDLE_GROW;
    if (a->hold == 0 && a->limit < a->cap && (waiting || paid))
        a->limit = step_up(a);
}

/* The fill is judged once: a fill idle IDLE_RUSH of the time waits on round trips, and steps to 4x.
 */
static bool judge_fill(struct mpcp_adapt *a, double t, const char *when)
{
    a->fill_judged = true;
    size_t was = a->limit;
    double idle = idle_share(a);
    if (idle >= IDLE_RUSH) {
        a->limit = capped(a, a->limit * 4);
        a->good = a->limit;
    }
    if (getenv("MPCP_ADAPT_TRACE"))
        fprintf(stderr, "mpcp: %s %.2f s, %.0f%% idle: window %zu\n", when, t - a->t0, 100 * idle,
                a->limit);
    return a->limit != was;
}

int mpcp_adapt_tick_ms(const struct mpcp_adapt *a)
{
    return a->fill_judged ? -1 : (int)(FILL_S * 1000 / 2);
}

bool mpcp_adapt_tick(struct mpcp_adapt *a)
{
    double t = now_s();
    if (a->fill_judged || t - a->t0 < FILL_S)
        return false;
    return judge_fill(a, t, "filling for");
}

bool mpcp_adapt_done(struct mpcp_adapt *a, uint64_t work)
{
    double t = now_s();
    if (!a->started) {
        /* The first completion ends the fill: the time before it is a latency, not a rate. */
        a->started = true;
        bool judged = a->fill_judged;
        bool moved = !judged && judge_fill(a, t, "the first task took");
        if (getenv("MPCP_ADAPT_TRACE") && judged)
            fprintf(stderr, "mpcp: the first task took %.2f s\n", t - a->t0);
        a->t0 = t;
        idle_share(a);
        return moved;
    }
    double dt = t - a->t0;
    a->work += work;
    a->tasks++;
    if (dt < PERIOD_S || a->tasks * 4 < a->limit)
        return false;
    size_t was = a->limit;
    double idle = idle_share(a);
    decide(a, (double)a->work / dt, idle);
    if (getenv("MPCP_ADAPT_TRACE"))
        fprintf(stderr, "mpcp: %.0f work/s over %.2f s, %zu tasks, %.0f%% idle: window %zu\n",
                (double)a->work / dt, dt, a->tasks, 100 * idle, a->limit);
    a->t0 = t;
    a->work = 0;
    a->tasks = 0;
    return a->limit != was;
}
