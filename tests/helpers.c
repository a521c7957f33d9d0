/* helpers.c: see helpers.h. */
#define _GNU_SOURCE
#include "helpers.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Entries of a folder, but for names starting with one of the ignored prefixes. */
static int count_entries(const char *path, const char *const *ignored)
{
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        bool skip = entry->d_name[0] == '.';
        for (const char *const *prefix = ignored; !skip && *prefix; prefix++)
            skip = strncmp(entry->d_name, *prefix, strlen(*prefix)) == 0;
        n += !skip;
    }
    closedir(dir);
    return n;
}

int test_count_fds(void)
{
    static const char *const none[] = {NULL};
    /* opendir() holds one descriptor while counting. */
    return count_entries("/proc/self/fd", none) - 1;
}

int test_count_dev_shm(void)
{
    /*
     * Suites run in parallel: bxfi_<pid> are Criterion's own arenas, and
     * mproc-test-* the shm suite's named blocks, made and removed meanwhile.
     */
    static const char *const others[] = {"bxfi_", "mproc-test-", NULL};
    return count_entries("/dev/shm", others);
}

/* Reads state and parent pid from /proc/<pid>/stat; false if it is gone. */
static bool read_stat(pid_t pid, char *state, pid_t *ppid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: parse after the last ')'. */
    char *close = strrchr(buf, ')');
    int parent = 0;
    if (!close || sscanf(close + 1, " %c %d", state, &parent) != 2)
        return false;
    *ppid = parent;
    return true;
}

/* Children of the calling process in /proc; only zombies if zombies_only. */
static int count_children(bool zombies_only)
{
    DIR *dir = opendir("/proc");
    if (!dir)
        return -1;
    int n = 0;
    pid_t self = getpid();
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        pid_t pid = (pid_t)atoi(entry->d_name);
        char state;
        pid_t ppid;
        if (pid > 0 && read_stat(pid, &state, &ppid) && ppid == self &&
            (!zombies_only || state == 'Z'))
            n++;
    }
    closedir(dir);
    return n;
}

int test_count_zombie_children(void)
{
    return count_children(true);
}

int test_count_children(void)
{
    return count_children(false);
}

char test_process_state(pid_t pid)
{
    char state;
    pid_t ppid;
    return read_stat(pid, &state, &ppid) ? state : 0;
}

int64_t test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool test_wait_pid_dead(pid_t pid, int timeout_ms)
{
    int64_t deadline = test_now_ms() + timeout_ms;
    for (;;) {
        char state = test_process_state(pid);
        if (state == 0 || state == 'Z' || state == 'X')
            return true;
        if (test_now_ms() >= deadline)
            return false;
        usleep(5000);
    }
}

mproc_process *test_start(mproc_target_fn target, void *arg)
{
    mproc_process *proc = NULL;
    int rc = mproc_process_create(&proc, target, arg);
    cr_assert_eq(rc, 0, "create: %s", mproc_strerror(rc));
    rc = mproc_process_start(proc);
    cr_assert_eq(rc, 0, "start: %s", mproc_strerror(rc));
    return proc;
}

int test_join_code(mproc_process *proc)
{
    int rc = mproc_process_join(proc, 60000);
    cr_assert_eq(rc, 0, "join: %s", mproc_strerror(rc));
    int code;
    cr_assert_eq(mproc_process_exitcode(proc, &code), 0);
    cr_assert_eq(mproc_process_destroy(&proc), 0);
    return code;
}

void test_join_expect(mproc_process *proc, int expected)
{
    int code = test_join_code(proc);
    cr_assert_eq(code, expected, "exit code %d, expected %d", code, expected);
}

/* The pids whose parent is pid, from /proc (at most max of them). */
size_t test_children_of(pid_t pid, pid_t *out, size_t max)
{
    size_t n = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    for (struct dirent *de = readdir(d); de; de = readdir(d)) {
        long p = strtol(de->d_name, NULL, 10);
        if (p <= 0)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", p);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        const char *paren = strrchr(buf, ')');
        char state;
        long ppid;
        if (paren && sscanf(paren + 1, " %c %ld", &state, &ppid) == 2 && ppid == pid && n < max)
            out[n++] = (pid_t)p;
    }
    closedir(d);
    return n;
}

/* mpcp's descendants: its fork server and that one's workers. */
size_t test_family_of(pid_t pid, pid_t *out, size_t max)
{
    size_t n = test_children_of(pid, out, max);
    size_t direct = n;
    for (size_t i = 0; i < direct; i++)
        n += test_children_of(out[i], out + n, max - n);
    return n;
}
