/*
 * adapt.c: how many tasks mpcp keeps in flight on slow storage. Where every
 * file operation waits for a round trip (NFS, SMB, FUSE), the copy is bound
 * by latency, not by the CPUs: N operations in flight go about N times as
 * fast, until the server or the link saturates. The number is found while
 * the copy runs, by hill climbing on the measured throughput: the window
 * doubles while each doubling brings at least GAIN more work done per
 * second, goes back to the last size that paid when one does not, holds
 * there a while, and probes again one step up (the load of the server may
 * change). Bounded by the pool's size, which the caller chooses.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <time.h>

#define PERIOD_S 0.2 /* a measurement lasts at least this long ... */
/* ... and sees as many tasks complete as half the workers it keeps busy. */
#define GAIN             1.12 /* a step up must pay this much to be kept */
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

void mpcp_adapt_init(struct mpcp_adapt *a, size_t start, size_t cap)
{
    memset(a, 0, sizeof *a);
    a->cap = cap;
    a->limit = start < cap ? start : cap;
    a->good = a->limit;
    a->t0 = now_s();
}

static size_t step_up(const struct mpcp_adapt *a, size_t from, bool big)
{
    size_t next = big ? from * 2 : from + (from + 1) / 2;
    return next > a->cap ? a->cap : next;
}

/* One measurement ended at rate: keep, grow or go back. */
static void decide(struct mpcp_adapt *a, double rate)
{
    if (a->hold > 0) {
        if (--a->hold == 0) {
            a->best = rate; /* the settled size's rate now, as the server is now */
            a->good = a->limit;
            a->limit = step_up(a, a->limit, false);
        }
        return;
    }
    if (a->best == 0 || rate >= a->best * GAIN) {
        a->best = rate;
        a->good = a->limit;
        if (a->limit < a->cap) {
            a->limit = step_up(a, a->limit, !a->probed);
            return;
        }
    } else {
        a->limit = a->good; /* the step did not pay */
        a->probed = true;
    }
    a->hold = HOLD_PERIODS;
}

void mpcp_adapt_done(struct mpcp_adapt *a, uint64_t work)
{
    a->work += work;
    a->tasks++;
    double t = now_s(), dt = t - a->t0;
    if (dt < PERIOD_S || a->tasks * 2 < a->limit)
        return;
    decide(a, (double)a->work / dt);
    if (getenv("MPCP_ADAPT_TRACE"))
        fprintf(stderr, "mpcp: %.0f work/s over %.2f s, %zu tasks: window %zu\n",
                (double)a->work / dt, dt, a->tasks, a->limit);
    a->t0 = t;
    a->work = 0;
    a->tasks = 0;
}
