/* util.c: small system helpers used across the library. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t mproc__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mproc__deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    return mproc__now_ms() + timeout_ms;
}

int mproc__remaining_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - mproc__now_ms();
    if (left <= 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

int mproc__wait_readable(int fd, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n = poll(&pfd, 1, timeout_ms);
    if (n < 0)
        return -errno;
    return n > 0 ? 1 : 0;
}

static atomic_uint fork_generation;
static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;

/* Runs in the child right after fork(): an atomic increment is async-signal-safe. */
static void on_fork_child(void)
{
    atomic_fetch_add(&fork_generation, 1);
}

static void install_fork_hook(void)
{
    (void)pthread_atfork(NULL, NULL, on_fork_child);
}

unsigned mproc__fork_generation(void)
{
    pthread_once(&fork_hook_once, install_fork_hook);
    return atomic_load_explicit(&fork_generation, memory_order_relaxed);
}

/* Reads state and start time from /proc/<pid>/stat; false if it is gone. */
static bool read_pid_stat(pid_t pid, char *state, uint64_t *start_time)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    /* No fork may copy this descriptor into a child that would keep it (fd_registry.c). */
    mproc__fd_lock();
    FILE *f = fopen(path, "re");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    mproc__fd_unlock();
    if (!f)
        return false;
    buf[n] = '\0';
    /* The name may hold spaces and parentheses: fields restart after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return false;
    p += 2;
    *state = *p;
    /* Field 3 is the state; the start time is field 22. */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (!p)
        return false;
    *start_time = strtoull(p, NULL, 10);
    return true;
}

uint64_t mproc__pid_start_time(pid_t pid)
{
    char state;
    uint64_t start_time = 0;
    return read_pid_stat(pid, &state, &start_time) ? start_time : 0;
}

bool mproc__pid_alive(pid_t pid, uint64_t start_time)
{
    char state;
    uint64_t actual = 0;
    if (pid <= 0 || !read_pid_stat(pid, &state, &actual))
        return false;
    if (state == 'Z' || state == 'X')
        return false;
    return start_time == 0 || actual == start_time;
}
