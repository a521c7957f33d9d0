/*
 * Processes: exit codes, joins with timeouts, signals, sentinels, reaping,
 * daemon children, names, misuse. Each case runs in its own process
 * (Criterion), so its children cannot disturb another case.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int return_arg(void *arg)
{
    return (int)(intptr_t)arg;
}

static int exit_arg(void *arg)
{
    _exit((int)(intptr_t)arg);
}

static int sleep_ms(void *arg)
{
    usleep((useconds_t)(intptr_t)arg * 1000);
    return 0;
}

static _Noreturn int sleep_forever(void *arg)
{
    for (;;)
        pause();
}

/*
 * A real crash: a store to a page with no access. (A NULL store would be
 * caught by UBSan before the kernel sees it in the sanitizer build.)
 */
static int crash(void *arg)
{
    volatile int *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    *page = 1;
    return 0;
}

Test(process, exit_code_from_return, .timeout = 10)
{
    test_join_expect(test_start(return_arg, (void *)7), 7);
    test_join_expect(test_start(return_arg, (void *)0), 0);
    /* Only the low 8 bits survive, as with exit(). */
    test_join_expect(test_start(return_arg, (void *)258), 2);
}

Test(process, exit_code_from_exit, .timeout = 10)
{
    test_join_expect(test_start(exit_arg, (void *)3), 3);
}

Test(process, exit_code_from_crash_is_minus_11, .timeout = 10)
{
    test_join_expect(test_start(crash, NULL), -SIGSEGV);
}

Test(process, kill_terminate_interrupt, .timeout = 10)
{
    mproc_process *proc = test_start(sleep_forever, NULL);
    cr_assert_eq(mproc_process_kill(proc), 0);
    test_join_expect(proc, -SIGKILL);

    proc = test_start(sleep_forever, NULL);
    cr_assert_eq(mproc_process_terminate(proc), 0);
    test_join_expect(proc, -SIGTERM);

    proc = test_start(sleep_forever, NULL);
    cr_assert_eq(mproc_process_interrupt(proc), 0);
    test_join_expect(proc, -SIGINT);
}

Test(process, signal_after_end_is_harmless, .timeout = 10)
{
    mproc_process *proc = test_start(return_arg, (void *)1);
    cr_assert_eq(mproc_process_join(proc, 5000), 0);
    /* Reaped: the pid may belong to someone else now, so nothing is sent. */
    cr_assert_eq(mproc_process_kill(proc), 0);
    test_join_expect(proc, 1);
}

Test(process, join_timeout_within_tolerance, .timeout = 10)
{
    mproc_process *proc = test_start(sleep_forever, NULL);
    int64_t t0 = test_now_ms();
    int rc = mproc_process_join(proc, 200);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert_eq(rc, -ETIMEDOUT, "join: %s", mproc_strerror(rc));
    cr_assert_geq(elapsed, 200);
    cr_assert_lt(elapsed, 600, "join(200) took %lld ms", (long long)elapsed);

    t0 = test_now_ms();
    cr_assert_eq(mproc_process_join(proc, 0), -ETIMEDOUT);
    cr_assert_lt(test_now_ms() - t0, 100);

    bool alive;
    cr_assert_eq(mproc_process_is_alive(proc, &alive), 0);
    cr_assert(alive);
    mproc_process_kill(proc);
    test_join_expect(proc, -SIGKILL);
}

Test(process, join_returns_when_child_ends, .timeout = 10)
{
    mproc_process *proc = test_start(sleep_ms, (void *)100);
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_process_join(proc, MPROC_WAIT_FOREVER), 0);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert_geq(elapsed, 90);
    cr_assert_lt(elapsed, 500, "join took %lld ms for a 100 ms child", (long long)elapsed);
    test_join_expect(proc, 0);
}

Test(process, states_before_during_after, .timeout = 10)
{
    mproc_process *proc;
    cr_assert_eq(mproc_process_create(&proc, sleep_forever, NULL), 0);
    bool alive = true;
    int code = 0;
    cr_assert_eq(mproc_process_pid(proc), 0);
    cr_assert_eq(mproc_process_is_alive(proc, &alive), 0);
    cr_assert_not(alive);
    cr_assert_eq(mproc_process_exitcode(proc, &code), 0);
    cr_assert_eq(code, MPROC_EXITCODE_NONE);

    cr_assert_eq(mproc_process_start(proc), 0);
    cr_assert_gt(mproc_process_pid(proc), 0);
    cr_assert_eq(mproc_process_is_alive(proc, &alive), 0);
    cr_assert(alive);
    cr_assert_eq(mproc_process_exitcode(proc, &code), 0);
    cr_assert_eq(code, MPROC_EXITCODE_NONE);

    mproc_process_kill(proc);
    cr_assert_eq(mproc_process_join(proc, 5000), 0);
    cr_assert_eq(mproc_process_is_alive(proc, &alive), 0);
    cr_assert_not(alive);
    test_join_expect(proc, -SIGKILL);
}

Test(process, no_zombie_after_join_or_destroy, .timeout = 10)
{
    mproc_process *proc = test_start(return_arg, NULL);
    pid_t pid = mproc_process_pid(proc);
    cr_assert_eq(mproc_process_join(proc, 5000), 0);
    cr_assert_eq(test_process_state(pid), 0, "child %d still in /proc after join", (int)pid);
    cr_assert_eq(mproc_process_destroy(&proc), 0);

    /* Ended but never joined: destroy reaps it. */
    proc = test_start(return_arg, NULL);
    pid = mproc_process_pid(proc);
    cr_assert(test_wait_pid_dead(pid, 5000));
    cr_assert_eq(test_process_state(pid), 'Z');
    cr_assert_eq(mproc_process_destroy(&proc), 0);
    cr_assert_eq(test_process_state(pid), 0);
    cr_assert_eq(test_count_zombie_children(), 0);
}

Test(process, destroy_running_is_refused, .timeout = 10)
{
    mproc_process *proc = test_start(sleep_forever, NULL);
    cr_assert_eq(mproc_process_destroy(&proc), -EBUSY);
    cr_assert_not_null(proc, "a refused destroy must leave the handle usable");
    mproc_process_kill(proc);
    test_join_expect(proc, -SIGKILL);
}

Test(process, sentinel_is_pollable, .timeout = 10)
{
    mproc_process *proc = test_start(sleep_ms, (void *)150);
    int fd = -1;
    cr_assert_eq(mproc_process_sentinel(proc, &fd), 0);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 0), 0, "sentinel ready while the child runs");
    cr_assert_eq(poll(&pfd, 1, 5000), 1, "sentinel not ready after the child ended");
    test_join_expect(proc, 0);

    /* The kind of descriptor follows the mode: a pidfd, or the exit pipe. */
    proc = test_start(return_arg, NULL);
    cr_assert_eq(mproc_process_sentinel(proc, &fd), 0);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    const char *disable = getenv("MPROC_DISABLE_PIDFD");
    bool fallback = disable && strcmp(disable, "1") == 0;
    cr_assert_eq(S_ISFIFO(st.st_mode), fallback, "sentinel kind does not match the mode");
    test_join_expect(proc, 0);
}

Test(process, thousand_cycles_leak_no_fd, .timeout = 60)
{
    int before = test_count_fds();
    for (int i = 0; i < 1000; i++) {
        mproc_process *proc = test_start(return_arg, (void *)(intptr_t)(i & 0x7f));
        cr_assert_eq(mproc_process_join(proc, 5000), 0);
        cr_assert_eq(mproc_process_destroy(&proc), 0);
    }
    cr_assert_eq(test_count_fds(), before, "fds before %d, after %d", before, test_count_fds());
    cr_assert_eq(test_count_zombie_children(), 0);
}

/* Reports the pid of a child it starts, then waits to be killed. */
struct family_args {
    int pipe_wr;
    bool daemon;
};

static _Noreturn int start_grandchild_or_die(const struct family_args *args);

static int start_grandchild(void *arg)
{
    start_grandchild_or_die(arg);
}

static _Noreturn int start_grandchild_or_die(const struct family_args *args)
{
    mproc_process *grandchild;
    if (mproc_process_create(&grandchild, sleep_forever, NULL) < 0 ||
        mproc_process_set_daemon(grandchild, args->daemon) < 0 ||
        mproc_process_start(grandchild) < 0)
        _exit(1);
    pid_t pid = mproc_process_pid(grandchild);
    if (write(args->pipe_wr, &pid, sizeof(pid)) != (ssize_t)sizeof(pid))
        _exit(1);
    for (;;)
        pause();
}

/* Starts a child that starts a grandchild, SIGKILLs the child, returns the grandchild. */
static pid_t orphan_grandchild(bool daemon)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    struct family_args args = {.pipe_wr = fds[1], .daemon = daemon};
    mproc_process *child = test_start(start_grandchild, &args);
    pid_t grandchild = 0;
    cr_assert_eq(read(fds[0], &grandchild, sizeof(grandchild)), (ssize_t)sizeof(grandchild));
    close(fds[0]);
    close(fds[1]);
    cr_assert_eq(mproc_process_kill(child), 0);
    test_join_expect(child, -SIGKILL);
    return grandchild;
}

Test(process, daemon_dies_with_killed_parent, .timeout = 20)
{
    pid_t grandchild = orphan_grandchild(true);
    cr_assert(test_wait_pid_dead(grandchild, 5000),
              "daemon grandchild %d outlived its SIGKILLed parent", (int)grandchild);

    /* The contrast: a non-daemon child is orphaned and keeps running. */
    grandchild = orphan_grandchild(false);
    usleep(200000);
    cr_assert_not(test_wait_pid_dead(grandchild, 0), "non-daemon child died with its parent");
    kill(grandchild, SIGKILL);
    cr_assert(test_wait_pid_dead(grandchild, 5000));
}

Test(process, bad_input, .timeout = 10)
{
    mproc_process *proc = NULL;
    cr_assert_eq(mproc_process_create(&proc, NULL, NULL), -EINVAL);
    cr_assert_eq(mproc_process_create(NULL, return_arg, NULL), -EINVAL);
    cr_assert_eq(mproc_process_create_class(&proc, NULL, 0), -EINVAL);
    mproc_process_class no_run = {.name = "NoRun"};
    cr_assert_eq(mproc_process_create_class(&proc, &no_run, 0), -EINVAL);

    cr_assert_eq(mproc_process_create(&proc, return_arg, NULL), 0);
    int fd, code;
    bool alive;
    cr_assert_eq(mproc_process_join(proc, 0), -ECHILD, "join before start");
    cr_assert_eq(mproc_process_kill(proc), -ECHILD, "kill before start");
    cr_assert_eq(mproc_process_sentinel(proc, &fd), -ECHILD, "sentinel before start");
    cr_assert_eq(mproc_process_set_name(proc, ""), -EINVAL);
    cr_assert_eq(mproc_process_set_name(proc, NULL), -EINVAL);
    cr_assert_eq(mproc_process_signal(proc, -1), -EINVAL);
    cr_assert_eq(mproc_process_start(proc), 0);
    cr_assert_eq(mproc_process_start(proc), -EALREADY, "start twice");
    cr_assert_eq(mproc_process_set_daemon(proc, true), -EALREADY, "daemon after start");
    cr_assert_eq(mproc_process_join(proc, 5000), 0);
    cr_assert_eq(mproc_process_destroy(&proc), 0);
    cr_assert_null(proc);

    /* A destroyed handle is NULL: every call says so instead of crashing. */
    cr_assert_eq(mproc_process_destroy(&proc), -EINVAL);
    cr_assert_eq(mproc_process_start(proc), -EINVAL);
    cr_assert_eq(mproc_process_join(proc, 0), -EINVAL);
    cr_assert_eq(mproc_process_is_alive(proc, &alive), -EINVAL);
    cr_assert_eq(mproc_process_exitcode(proc, &code), -EINVAL);
    cr_assert_eq(mproc_process_kill(proc), -EINVAL);
    cr_assert_eq(mproc_process_sentinel(proc, &fd), -EINVAL);
    cr_assert_eq(mproc_process_pid(proc), 0);
    cr_assert_null(mproc_process_name(proc));
    cr_assert_eq(mproc_process_destroy(NULL), -EINVAL);
}

/* In the child: joining itself, and using a sibling's inherited handle. */
static mproc_process *sibling;

static int misuse_from_child(void *arg)
{
    if (mproc_process_join(mproc_current_process(), 0) != -EDEADLK)
        return 1;
    if (mproc_process_join(sibling, 0) != -ECHILD)
        return 2;
    if (mproc_process_kill(sibling) != -ECHILD)
        return 3;
    bool alive = false;
    if (mproc_process_is_alive(mproc_current_process(), &alive) != 0 || !alive)
        return 4;
    return 0;
}

Test(process, join_itself_and_sibling_from_child, .timeout = 10)
{
    sibling = test_start(sleep_forever, NULL);
    test_join_expect(test_start(misuse_from_child, NULL), 0);
    mproc_process_kill(sibling);
    test_join_expect(sibling, -SIGKILL);
}

/* Writes what the child sees of itself to a pipe. */
struct identity_report {
    char name[64];
    char grandchild_name[64];
    pid_t parent;
    pid_t pid;
};

static int report_identity(void *arg)
{
    int fd = *(const int *)arg;
    struct identity_report report = {0};
    snprintf(report.name, sizeof(report.name), "%s", mproc_current_name());
    report.parent = mproc_parent_pid();
    report.pid = mproc_process_pid(mproc_current_process());
    mproc_process *grandchild;
    if (mproc_process_create(&grandchild, return_arg, NULL) == 0) {
        snprintf(report.grandchild_name, sizeof(report.grandchild_name), "%s",
                 mproc_process_name(grandchild));
        mproc_process_destroy(&grandchild);
    }
    return write(fd, &report, sizeof(report)) == (ssize_t)sizeof(report) ? 0 : 1;
}

Test(process, names_and_identity, .timeout = 10)
{
    cr_assert_str_eq(mproc_current_name(), "MainProcess");
    cr_assert_null(mproc_current_process());
    cr_assert_eq(mproc_parent_pid(), 0);

    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    mproc_process *proc;
    cr_assert_eq(mproc_process_create(&proc, report_identity, &fds[1]), 0);
    const char *name = mproc_process_name(proc);
    cr_assert(strncmp(name, "Process-", 8) == 0, "default name %s", name);
    cr_assert_eq(mproc_process_set_name(proc, "reporter"), 0);
    cr_assert_eq(mproc_process_start(proc), 0);
    struct identity_report report;
    cr_assert_eq(read(fds[0], &report, sizeof(report)), (ssize_t)sizeof(report));
    cr_assert_str_eq(report.name, "reporter");
    cr_assert_eq(report.parent, getpid());
    cr_assert_eq(report.pid, mproc_process_pid(proc));
    /* The first child of a child is numbered under its parent: "Process-N:1". */
    cr_assert(strstr(report.grandchild_name, ":1") != NULL, "grandchild name %s",
              report.grandchild_name);
    close(fds[0]);
    close(fds[1]);
    test_join_expect(proc, 0);
}

struct counter {
    int loop;
};

static int counter_run(mproc_process *self)
{
    const struct counter *me = mproc_process_data(self);
    return me->loop * 2;
}

static int finalized;

static void counter_finalize(mproc_process *self)
{
    finalized++;
}

static const mproc_process_class counter_class = {
    .name = "Counter", .run = counter_run, .finalize = counter_finalize};

Test(process, class_with_instance_fields, .timeout = 10)
{
    mproc_process *proc;
    cr_assert_eq(mproc_process_create_class(&proc, &counter_class, sizeof(struct counter)), 0);
    cr_assert(strncmp(mproc_process_name(proc), "Counter-", 8) == 0);
    struct counter *me = mproc_process_data(proc);
    cr_assert_not_null(me);
    cr_assert_eq(me->loop, 0, "instance fields start zeroed");
    me->loop = 21;
    cr_assert_eq(mproc_process_start(proc), 0);
    test_join_expect(proc, 42);
    cr_assert_eq(finalized, 1);
}

Test(process, active_children_reaps_finished, .timeout = 10)
{
    mproc_process *procs[3];
    for (int i = 0; i < 3; i++)
        procs[i] = test_start(sleep_forever, NULL);
    mproc_process *live[8];
    size_t count = 0;
    cr_assert_eq(mproc_active_children(live, 8, &count), 0);
    cr_assert_eq(count, 3);

    pid_t victim = mproc_process_pid(procs[1]);
    mproc_process_kill(procs[1]);
    cr_assert(test_wait_pid_dead(victim, 5000));
    cr_assert_eq(mproc_active_children(live, 8, &count), 0);
    cr_assert_eq(count, 2);
    cr_assert_eq(test_process_state(victim), 0, "active_children left a zombie");
    cr_assert_eq(mproc_active_children(NULL, 0, &count), 0);
    cr_assert_eq(count, 2);

    for (int i = 0; i < 3; i++) {
        mproc_process_kill(procs[i]);
        test_join_expect(procs[i], -SIGKILL);
    }
    cr_assert_eq(mproc_active_children(live, 8, &count), 0);
    cr_assert_eq(count, 0);
}

static int report_cpu_count(void *arg)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (sched_setaffinity(0, sizeof(one), &one) < 0)
        return 100;
    int count = 0;
    mproc_cpu_count(&count);
    return count;
}

Test(process, cpu_count_respects_affinity, .timeout = 10)
{
    int count = 0;
    cr_assert_eq(mproc_cpu_count(&count), 0);
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
    cr_assert_geq(count, 1);
    cr_assert_leq(count, CPU_COUNT(&set));
    test_join_expect(test_start(report_cpu_count, NULL), 1);
    cr_assert_eq(mproc_cpu_count(NULL), -EINVAL);
}

/* Buffered output of the parent must not be written again by the child. */
Test(process, parent_buffer_not_duplicated, .timeout = 10)
{
    char path[] = "/tmp/mproc-test-stdout-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(fd, STDOUT_FILENO);
    setvbuf(stdout, NULL, _IOFBF, 4096);
    printf("parent-line\n"); /* sits in the buffer: the file is not a terminal */
    mproc_process *proc = test_start(return_arg, NULL);
    cr_assert_eq(mproc_process_join(proc, 5000), 0);
    mproc_process_destroy(&proc);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);

    char buf[256] = {0};
    cr_assert_gt(pread(fd, buf, sizeof(buf) - 1, 0), 0);
    close(fd);
    unlink(path);
    cr_assert_str_eq(buf, "parent-line\n");
}

/* Starting from several threads at once keeps every handle and the registry right. */
#define THREADS    4
#define PER_THREAD 50

static void *start_many(void *arg)
{
    intptr_t base = (intptr_t)arg;
    for (intptr_t i = 0; i < PER_THREAD; i++) {
        mproc_process *proc;
        int code = -1;
        if (mproc_process_create(&proc, return_arg, (void *)(base + i)) < 0 ||
            mproc_process_start(proc) < 0 || mproc_process_join(proc, 10000) < 0 ||
            mproc_process_exitcode(proc, &code) < 0 || mproc_process_destroy(&proc) < 0)
            return (void *)1;
        if (code != (int)(base + i))
            return (void *)2;
    }
    return NULL;
}

Test(process, start_from_threads, .timeout = 60)
{
    pthread_t threads[THREADS];
    for (intptr_t t = 0; t < THREADS; t++)
        cr_assert_eq(pthread_create(&threads[t], NULL, start_many, (void *)(t * PER_THREAD)), 0);
    for (int t = 0; t < THREADS; t++) {
        void *result;
        pthread_join(threads[t], &result);
        cr_assert_null(result, "thread %d failed with %p", t, result);
    }
    size_t count = 1;
    cr_assert_eq(mproc_active_children(NULL, 0, &count), 0);
    cr_assert_eq(count, 0);
    cr_assert_eq(test_count_zombie_children(), 0);
}

/* The caller's signal mask is back after start, and the child gets it too. */
static int report_mask(void *arg)
{
    sigset_t mask;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    return sigismember(&mask, SIGUSR1) && !sigismember(&mask, SIGUSR2) ? 0 : 1;
}

Test(process, signal_mask_preserved, .timeout = 10)
{
    sigset_t block, before, after;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &before);
    mproc_process *proc = test_start(report_mask, NULL);
    pthread_sigmask(SIG_SETMASK, NULL, &after);
    cr_assert(sigismember(&after, SIGUSR1));
    cr_assert_not(sigismember(&after, SIGUSR2));
    test_join_expect(proc, 0);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
}

static void on_alarm(int signo)
{
}

Test(process, join_interrupted_by_signal_handler, .timeout = 10)
{
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    mproc_process *proc = test_start(sleep_forever, NULL);
    alarm(1);
    int rc = mproc_process_join(proc, 5000);
    cr_assert_eq(rc, -EINTR, "join: %s", mproc_strerror(rc));
    mproc_process_kill(proc);
    test_join_expect(proc, -SIGKILL);
}

Test(process, errors_have_text_and_names)
{
    cr_assert_str_eq(mproc_strerror(-ETIMEDOUT), "Connection timed out");
    cr_assert_str_eq(mproc_errname(-ETIMEDOUT), "ETIMEDOUT");
    cr_assert_str_eq(mproc_errname(MPROC_EWORKERDIED), "MPROC_EWORKERDIED");
    cr_assert_str_eq(mproc_strerror(0), "success");
    cr_assert_str_eq(mproc_strerror(-999999), "unknown error");
    cr_assert_str_eq(mproc_errname(12345), "UNKNOWN");
    cr_assert_eq(mproc_version(), MPROC_VERSION_HEX);
    cr_assert_str_eq(mproc_version_string(), MPROC_VERSION_STRING);
}
