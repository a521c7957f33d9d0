/*
 * cpu.c: how many CPUs this process may really use. The affinity mask bounds
 * it (taskset, cpusets), and so does a cgroup CPU quota (containers, systemd
 * CPUQuota=): a quota of 1.5 CPUs on a 64-core host means 2 useful workers,
 * not 64.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <mproc/process.h>

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int affinity_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        return CPU_COUNT(&set);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

/* Reads the first line of a small file; false when it cannot be read. */
static bool read_line(const char *path, char *buf, size_t len)
{
    /* No fork may copy this descriptor into a child that would keep it (fd_registry.c). */
    mproc__fd_lock();
    FILE *f = fopen(path, "re");
    bool ok = f && fgets(buf, (int)len, f) != NULL;
    if (f)
        fclose(f);
    mproc__fd_unlock();
    return ok;
}

/* CPUs allowed by quota/period, rounded up; 0 when there is no quota. */
static int quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    return (int)((quota + period - 1) / period);
}

/*
 * cgroup v2: "max 100000" or "150000 100000" in cpu.max. Every ancestor's
 * limit applies too, so take the smallest along the path to the root.
 */
static int cgroup2_limit(const char *cgroup_path)
{
    char dir[4096];
    int limit = 0;
    snprintf(dir, sizeof(dir), "/sys/fs/cgroup%s", cgroup_path);
    for (;;) {
        char file[4200], line[128];
        snprintf(file, sizeof(file), "%s/cpu.max", dir);
        long long quota = 0, period = 0;
        if (read_line(file, line, sizeof(line)) &&
            sscanf(line, "%lld %lld", &quota, &period) == 2) {
            int cpus = quota_cpus(quota, period);
            if (cpus > 0 && (limit == 0 || cpus < limit))
                limit = cpus;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || strcmp(dir, "/sys/fs/cgroup") == 0)
            break;
        *slash = '\0';
    }
    return limit;
}

/* cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us of our cpu controller group. */
static int cgroup1_limit(const char *cgroup_path)
{
    static const char *mounts[] = {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"};
    for (size_t i = 0; i < sizeof(mounts) / sizeof(mounts[0]); i++) {
        char file[4200], line[64];
        long long quota = 0, period = 0;
        snprintf(file, sizeof(file), "%s%s/cpu.cfs_quota_us", mounts[i], cgroup_path);
        if (!read_line(file, line, sizeof(line)))
            continue;
        quota = strtoll(line, NULL, 10);
        snprintf(file, sizeof(file), "%s%s/cpu.cfs_period_us", mounts[i], cgroup_path);
        if (read_line(file, line, sizeof(line)))
            period = strtoll(line, NULL, 10);
        return quota_cpus(quota, period);
    }
    return 0;
}

/* Whether a comma-separated controller list ("cpu,cpuacct") names controller. */
static bool has_controller(const char *list, const char *controller)
{
    size_t len = strlen(controller);
    for (const char *p = list; p; p = strchr(p, ',')) {
        if (*p == ',')
            p++;
        if (strncmp(p, controller, len) == 0 && (p[len] == ',' || p[len] == '\0'))
            return true;
    }
    return false;
}

/* The tightest quota of the groups in /proc/self/cgroup, or 0 for none. */
static int cgroup_cpus_locked(void)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f)
        return 0;
    char line[4096];
    int limit = 0;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        /* hierarchy-id:controllers:path */
        char *controllers = strchr(line, ':');
        char *path = controllers ? strchr(controllers + 1, ':') : NULL;
        if (!path)
            continue;
        *path++ = '\0';
        controllers++;
        int cpus = 0;
        if (*controllers == '\0')
            cpus = cgroup2_limit(path);
        else if (has_controller(controllers, "cpu"))
            cpus = cgroup1_limit(path);
        if (cpus > 0 && (limit == 0 || cpus < limit))
            limit = cpus;
    }
    fclose(f);
    return limit;
}

static int cgroup_cpus(void)
{
    mproc__fd_lock(); /* as in read_line() */
    int limit = cgroup_cpus_locked();
    mproc__fd_unlock();
    return limit;
}

int mproc_cpu_count(int *count)
{
    if (!count)
        return -EINVAL;
    int cpus = affinity_cpus();
    int quota = cgroup_cpus();
    if (quota > 0 && quota < cpus)
        cpus = quota;
    *count = cpus > 0 ? cpus : 1;
    return 0;
}
