/*
 * Pool under faults: several pools alive at once and destroyed in any order,
 * the fork server killed, pools made inside a task and in a forked child,
 * callbacks that submit or try to join, SIGINT to the process group during
 * a map, low RLIMIT_NOFILE and RLIMIT_NPROC. After each case: every result
 * completed exactly once with the right code, and nothing left behind (no
 * process, zombie, descriptor or /dev/shm entry).
 *
 * The randomized case also has tasks put into a queue made before the pools
 * while their workers are killed: no message twice, none torn, every put a
 * task confirmed (it returned) received, and the count exact afterwards.
 * It prints its seed; MPROC_TEST_SEED=<n> replays the
 * choices (the timing of kills still depends on the scheduler), and
 * MPROC_TEST_ROUNDS=<n> runs more rounds.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_ROUNDS 12
#define MAX_PIDS       64

/* ---- tasks ---- */

/* Sleeps the microseconds it is given, then returns them plus one. */
static int nap(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    uint32_t us = 0;
    if (len != sizeof(us))
        return mproc_task_fail(ctx, "bad argument of %zu bytes", len);
    memcpy(&us, arg, sizeof(us));
    if (us)
        usleep(us);
    uint32_t out = us + 1;
    return mproc_task_return(ctx, &out, sizeof(out));
}

/* Makes a pool of one worker inside the task, runs nap on it, destroys it. */
static int nested(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    mproc_pool_options options = {.workers = 1};
    mproc_pool *inner = NULL;
    int rc = mproc_pool_create(&inner, &options);
    if (rc < 0)
        return mproc_task_fail(ctx, "inner create: %s", mproc_strerror(rc));
    void *out = NULL;
    size_t out_len = 0;
    rc = mproc_pool_apply(inner, nap, arg, len, &out, &out_len);
    int destroyed = mproc_pool_destroy(&inner);
    if (rc < 0 || destroyed < 0) {
        free(out);
        return mproc_task_fail(ctx, "inner apply %d destroy %d", rc, destroyed);
    }
    rc = mproc_task_return(ctx, out, out_len);
    free(out);
    return rc;
}

static uint64_t mix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t env_number(const char *name, uint64_t fallback)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : fallback;
}

/* The processes a pool made since `before` was listed: fork server first, then its workers. */
static size_t new_children(const pid_t *before, size_t nbefore, pid_t *out, size_t max)
{
    pid_t now[MAX_PIDS];
    size_t n = test_children_of(getpid(), now, MAX_PIDS), found = 0;
    for (size_t i = 0; i < n && found < max; i++) {
        bool old = false;
        for (size_t j = 0; j < nbefore; j++)
            old = old || before[j] == now[i];
        if (!old)
            out[found++] = now[i];
    }
    return found;
}

/* Waits (bounded) until the pool's workers are up, so that kills hit something. */
static void wait_workers_up(pid_t server, int workers)
{
    pid_t kids[MAX_PIDS];
    int64_t deadline = test_now_ms() + 10000;
    while ((int)test_children_of(server, kids, MAX_PIDS) < workers && test_now_ms() < deadline)
        usleep(1000);
}

static void expect_nothing_left(int fds, int shm)
{
    int64_t deadline = test_now_ms() + 5000;
    while (test_count_children() > 0 && test_now_ms() < deadline)
        usleep(2000);
    cr_expect_eq(test_count_children(), 0, "processes left behind");
    cr_expect_eq(test_count_zombie_children(), 0, "zombies left behind");
    cr_expect_eq(test_count_fds(), fds, "descriptors: %d, expected %d", test_count_fds(), fds);
    cr_expect_eq(test_count_dev_shm(), shm, "/dev/shm entries left behind");
}

/* ---- the three failures found by users ---- */

Test(pool_faults, destroying_one_of_three_busy_pools_returns, .timeout = 60)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    mproc_pool *pools[3];
    mproc_pool_options options = {.workers = 2};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(mproc_pool_create(&pools[i], &options), 0);
    uint32_t us = 20000;
    for (int i = 0; i < 3; i++) {
        for (int t = 0; t < 100; t++)
            cr_assert_eq(
                mproc_pool_apply_async(pools[i], nap, &us, sizeof(us), NULL, NULL, NULL, NULL), 0);
    }
    int64_t start = test_now_ms();
    cr_assert_eq(mproc_pool_destroy(&pools[1]), 0);
    int64_t took = test_now_ms() - start;
    cr_expect_lt(took, 5000, "destroy of the middle pool took %lld ms", (long long)took);
    cr_assert_eq(mproc_pool_destroy(&pools[2]), 0);
    cr_assert_eq(mproc_pool_destroy(&pools[0]), 0);
    expect_nothing_left(fds, shm);
}

Test(pool_faults, killed_fork_server_fails_every_result_naming_it, .timeout = 60)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    pid_t before[MAX_PIDS];
    size_t nbefore = test_children_of(getpid(), before, MAX_PIDS);
    mproc_pool *pool = NULL;
    mproc_pool_options options = {.workers = 2};
    cr_assert_eq(mproc_pool_create(&pool, &options), 0);
    pid_t server;
    cr_assert_eq(new_children(before, nbefore, &server, 1), 1, "no fork server found");
    wait_workers_up(server, 2);
    pid_t workers[MAX_PIDS];
    size_t nworkers = test_children_of(server, workers, MAX_PIDS);

    enum { TASKS = 40 };
    mproc_result *results[TASKS];
    uint32_t us = 50000;
    for (int i = 0; i < TASKS; i++)
        cr_assert_eq(
            mproc_pool_apply_async(pool, nap, &us, sizeof(us), NULL, NULL, NULL, &results[i]), 0);
    usleep(120000);
    cr_assert_eq(kill(server, SIGKILL), 0);

    char expected[96];
    snprintf(expected, sizeof expected, "fork server %d died: killed by signal 9", (int)server);
    int ok = 0, broken = 0;
    for (int i = 0; i < TASKS; i++) {
        int rc = mproc_result_get(results[i], NULL, NULL, 10000);
        cr_assert_neq(rc, -EAGAIN, "result %d never completed", i);
        if (rc == 0) {
            ok++;
        } else {
            broken++;
            cr_expect_eq(rc, MPROC_EBROKEN, "result %d: %s", i, mproc_strerror(rc));
            const char *why = mproc_result_error(results[i]);
            cr_expect(why && strstr(why, expected), "message '%s', expected '%s'",
                      why ? why : "(none)", expected);
        }
        mproc_result_destroy(&results[i]);
    }
    cr_expect_gt(ok, 0, "tasks done before the kill must keep their results");
    cr_expect_gt(broken, 0);
    cr_expect_eq(mproc_pool_apply_async(pool, nap, &us, sizeof(us), NULL, NULL, NULL, NULL),
                 MPROC_EBROKEN);
    void *out = NULL;
    size_t out_len = 0;
    cr_expect_eq(mproc_pool_apply(pool, nap, &us, sizeof(us), &out, &out_len), MPROC_EBROKEN);
    cr_expect_eq(mproc_pool_close(pool), 0);
    cr_expect_eq(mproc_pool_join(pool, 5000), 0);
    for (size_t i = 0; i < nworkers; i++)
        cr_expect(test_wait_pid_dead(workers[i], 5000), "worker %d outlived its server",
                  (int)workers[i]);
    int64_t start = test_now_ms();
    cr_assert_eq(mproc_pool_destroy(&pool), 0);
    cr_expect_lt(test_now_ms() - start, 5000);
    expect_nothing_left(fds, shm);
}

/* ---- descriptors: no child keeps a pool's ---- */

/*
 * Open descriptors, counted without malloc (opendir would): these children
 * are forks of a process with threads, where only async-signal-safe calls
 * are sure to work (AddressSanitizer's allocator is not fork-safe).
 */
static int count_fds_raw(void)
{
    int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    char buf[4096];
    int n = 0;
    long got;
    while ((got = syscall(SYS_getdents64, dir, buf, sizeof buf)) > 0) {
        for (long off = 0; off < got;) {
            const struct dirent64 *de = (const struct dirent64 *)(buf + off);
            n += de->d_name[0] != '.';
            off += de->d_reclen;
        }
    }
    close(dir);
    return n - 1; /* not counting dir itself */
}

static int extra_fds(void *arg)
{
    return count_fds_raw() - *(const int *)arg;
}

Test(pool_faults, children_keep_no_descriptor_of_a_pool, .timeout = 60)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    mproc_pool *a = NULL, *b = NULL;
    cr_assert_eq(mproc_pool_create(&a, NULL), 0);
    cr_assert_eq(mproc_pool_create(&b, NULL), 0);
    cr_assert_gt(test_count_fds(), fds + 4, "the pools hold descriptors");
    /* A process of ours: it has the descriptors we had before the pools, no more. */
    mproc_process *child = test_start(extra_fds, &fds);
    test_join_expect(child, 0);
    /* The program's own fork() too. */
    pid_t pid = fork();
    if (pid == 0)
        _exit(count_fds_raw() - fds);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a plain fork kept %d of them",
              WEXITSTATUS(status));
    /* And each fork server and its workers keep their own pool's only: both destroy at once. */
    int64_t start = test_now_ms();
    cr_assert_eq(mproc_pool_destroy(&a), 0);
    cr_assert_eq(mproc_pool_destroy(&b), 0);
    cr_expect_lt(test_now_ms() - start, 2000);
    expect_nothing_left(fds, shm);
}

/* ---- callbacks ---- */

struct callback_probe {
    mproc_pool *pool;
    _Atomic int join_rc;
    _Atomic int destroy_rc;
    _Atomic int get_rc;
    _Atomic int wait_many_rc;
    _Atomic int submitted;
    _Atomic int called;
    _Atomic(mproc_result *) pending; /* stored by the test once apply_async() returned */
};

static void from_callback(mproc_result *result, void *arg)
{
    struct callback_probe *probe = arg;
    mproc_pool *pool = probe->pool;
    /* The first callback runs while pending still waits behind it; the chain's run later. */
    if (probe->called == 0) {
        probe->join_rc = mproc_pool_join(pool, 1000);
        probe->destroy_rc = mproc_pool_destroy(&pool);
        mproc_result *pending = NULL;
        for (int i = 0; i < 5000 && !(pending = atomic_load(&probe->pending)); i++)
            usleep(1000);
        probe->get_rc = mproc_result_get(pending, NULL, NULL, 1000);
        size_t ready = 0;
        probe->wait_many_rc = mproc_result_wait_many(&pending, 1, true, &ready, 1000);
    }
    /* Submitting from a callback is allowed: a chain of three more. */
    if (atomic_fetch_add(&probe->submitted, 1) < 3) {
        uint32_t us = 0;
        (void)mproc_pool_apply_async(probe->pool, nap, &us, sizeof(us), from_callback, NULL, probe,
                                     NULL);
    }
    probe->called++;
}

Test(pool_faults, join_destroy_and_waits_from_a_callback_are_refused, .timeout = 60)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    struct callback_probe probe = {0};
    mproc_pool_options options = {.workers = 1};
    cr_assert_eq(mproc_pool_create(&probe.pool, &options), 0);
    /*
     * Queued behind the callback's task on the only worker: not ready when
     * the callback runs (100 ms later, with the pointer long stored).
     */
    uint32_t slow = 300000, quick = 100000;
    cr_assert_eq(mproc_pool_apply_async(probe.pool, nap, &quick, sizeof(quick), from_callback, NULL,
                                        &probe, NULL),
                 0);
    mproc_result *pending = NULL;
    cr_assert_eq(
        mproc_pool_apply_async(probe.pool, nap, &slow, sizeof(slow), NULL, NULL, NULL, &pending),
        0);
    atomic_store(&probe.pending, pending);
    int64_t deadline = test_now_ms() + 20000;
    while (probe.called < 4 && test_now_ms() < deadline)
        usleep(1000);
    cr_expect_eq(probe.called, 4, "callbacks that submit must keep the chain going");
    cr_expect_eq(probe.join_rc, -EDEADLK);
    cr_expect_eq(probe.destroy_rc, -EDEADLK);
    cr_expect_eq(probe.get_rc, -EDEADLK);
    cr_expect_eq(probe.wait_many_rc, -EDEADLK);
    cr_expect_eq(mproc_result_get(pending, NULL, NULL, 10000), 0);
    mproc_result_destroy(&pending);
    cr_assert_eq(mproc_pool_destroy(&probe.pool), 0);
    expect_nothing_left(fds, shm);
}

/* ---- where pools are made ---- */

static int pool_in_child(void *arg)
{
    /* Started before the parent's pool, whose threads a fork would copy mid-malloc. */
    char go;
    if (read(*(const int *)arg, &go, 1) != 1)
        return 1;
    mproc_pool *pool = NULL;
    mproc_pool_options options = {.workers = 2};
    if (mproc_pool_create(&pool, &options) < 0)
        return 2;
    int bad = 0;
    for (uint32_t i = 0; i < 20; i++) {
        void *out = NULL;
        size_t len = 0;
        uint32_t us = i;
        int rc = mproc_pool_apply(pool, nested, &us, sizeof(us), &out, &len);
        bad += rc != 0 || len != sizeof(uint32_t) || *(uint32_t *)out != i + 1;
        free(out);
    }
    return mproc_pool_destroy(&pool) == 0 && bad == 0 ? 0 : 3;
}

Test(pool_faults, pool_in_a_forked_child_with_nested_pools_in_its_tasks, .timeout = 120)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    /* A pool of ours alive meanwhile, busy: neither may keep the other's going. */
    int go[2];
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    mproc_process *child = test_start(pool_in_child, &go[0]);
    mproc_pool *outer = NULL;
    cr_assert_eq(mproc_pool_create(&outer, NULL), 0);
    uint32_t us = 1000;
    for (int i = 0; i < 50; i++)
        cr_assert_eq(mproc_pool_apply_async(outer, nap, &us, sizeof(us), NULL, NULL, NULL, NULL),
                     0);
    cr_assert_eq(write(go[1], "g", 1), 1);
    test_join_expect(child, 0);
    cr_assert_eq(mproc_pool_destroy(&outer), 0);
    close(go[0]);
    close(go[1]);
    expect_nothing_left(fds, shm);
}

/* ---- SIGINT to the process group during a map ---- */

static volatile sig_atomic_t interrupted;

static void on_sigint(int signo)
{
    (void)signo;
    interrupted = 1;
}

/* The group leader: two pools, a long map; SIGINT comes to the whole group. */
static int map_until_sigint(void *arg)
{
    bool handle = *(const bool *)arg;
    if (setpgid(0, 0) < 0)
        return 2;
    if (handle) {
        struct sigaction sa = {.sa_handler = on_sigint};
        sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: the wait returns -EINTR */
    }
    mproc_pool *a = NULL, *b = NULL;
    if (mproc_pool_create(&a, NULL) < 0 || mproc_pool_create(&b, NULL) < 0)
        return 3;
    enum { ITEMS = 400 };
    static uint32_t us[ITEMS];
    static struct iovec items[ITEMS];
    for (int i = 0; i < ITEMS; i++) {
        us[i] = 20000;
        items[i] = (struct iovec){.iov_base = &us[i], .iov_len = sizeof(us[i])};
    }
    mproc_result *other = NULL;
    (void)mproc_pool_map_async(b, nap, items, ITEMS, 1, &other);
    mproc_result *result = NULL;
    int rc = mproc_pool_map(a, nap, items, ITEMS, 1, &result);
    /* Only a handled SIGINT comes back here. */
    int code = rc == -EINTR && interrupted ? 0 : 4;
    mproc_result_destroy(&result);
    mproc_result_destroy(&other);
    if (mproc_pool_destroy(&a) < 0 || mproc_pool_destroy(&b) < 0)
        code = 5;
    return code;
}

static void sigint_group_case(bool handle, int expected_code)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    mproc_process *child = test_start(map_until_sigint, &handle);
    pid_t pid = mproc_process_pid(child);
    /* Wait for its pools: a fork server with its workers under each. */
    int64_t deadline = test_now_ms() + 10000;
    pid_t kids[MAX_PIDS];
    while (test_family_of(pid, kids, MAX_PIDS) < 4 && test_now_ms() < deadline)
        usleep(2000);
    usleep(100000);
    cr_assert_eq(getpgid(pid), pid, "the child leads its own group");
    cr_assert_eq(kill(-pid, SIGINT), 0);
    int64_t start = test_now_ms();
    int code = test_join_code(child);
    cr_expect_eq(code, expected_code, "exit code %d", code);
    cr_expect_lt(test_now_ms() - start, 10000);
    deadline = test_now_ms() + 5000;
    while (kill(-pid, 0) == 0 && test_now_ms() < deadline)
        usleep(5000);
    cr_expect_eq(kill(-pid, 0), -1, "processes of the group outlived it");
    expect_nothing_left(fds, shm);
}

Test(pool_faults, sigint_to_the_group_during_map_is_handled, .timeout = 60)
{
    sigint_group_case(true, 0);
}

Test(pool_faults, sigint_to_the_group_during_map_kills_cleanly, .timeout = 60)
{
    sigint_group_case(false, -SIGINT);
}

/* ---- low limits ---- */

static int pools_until_emfile(void *arg)
{
    struct rlimit lim = {64, 64};
    if (setrlimit(RLIMIT_NOFILE, &lim) < 0)
        return 2;
    int fds = test_count_fds();
    mproc_pool *pools[64];
    int n = 0, rc = 0;
    mproc_pool_options options = {.workers = 2};
    while (n < 64 && (rc = mproc_pool_create(&pools[n], &options)) == 0)
        n++;
    if (rc != -EMFILE || n == 0)
        return 3;
    /* The pools that did start work. */
    for (int i = 0; i < n; i++) {
        void *out = NULL;
        size_t len = 0;
        uint32_t us = 7;
        int got = mproc_pool_apply(pools[i], nap, &us, sizeof(us), &out, &len);
        free(out);
        if (got != 0)
            return 4;
    }
    for (int i = 0; i < n; i++)
        mproc_pool_destroy(&pools[i]);
    if (test_count_fds() == fds)
        return 0;
    fprintf(stderr, "pools_until_emfile: %d descriptors before, %d after:\n", fds,
            test_count_fds());
    for (int fd = 0; fd < 64; fd++) {
        char path[64], target[256] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        if (readlink(path, target, sizeof target - 1) > 0)
            fprintf(stderr, "  %d -> %s\n", fd, target);
    }
    return 5;
}

Test(pool_faults, rlimit_nofile_64_gives_emfile_and_leaks_nothing, .timeout = 60)
{
    mproc_process *child = test_start(pools_until_emfile, NULL);
    test_join_expect(child, 0);
}

/*
 * RLIMIT_NPROC counts the processes (and threads) of a real user, and root
 * ignores it: as root, the child becomes a user of its own first, so that
 * the count is of this case's processes only.
 */
#define NPROC_UID 54321

static int become_counted_user(void)
{
    if (geteuid() != 0)
        return 0;
    return setgid(NPROC_UID) == 0 && setuid(NPROC_UID) == 0 ? 0 : -1;
}

static int set_nproc(pid_t pid, rlim_t n)
{
    struct rlimit lim = {n, n};
    return prlimit(pid, RLIMIT_NPROC, &lim, NULL);
}

/* No room for the fork server: create says -EAGAIN and leaves nothing. */
static int nproc_at_create(void *arg)
{
    if (become_counted_user() < 0 || set_nproc(0, 1) < 0)
        return 2;
    int fds = test_count_fds();
    mproc_pool *pool = NULL;
    int rc = mproc_pool_create(&pool, NULL);
    if (rc != -EAGAIN || pool)
        return 3;
    return test_count_fds() == fds && test_count_children() == 0 ? 0 : 4;
}

Test(pool_faults, rlimit_nproc_at_create_gives_eagain, .timeout = 60)
{
    mproc_process *child = test_start(nproc_at_create, NULL);
    test_join_expect(child, 0);
}

/* Runs ten naps; returns how many did not end with expected. */
static int naps_not(mproc_pool *pool, int expected, char *why, size_t why_cap)
{
    int bad = 0;
    for (uint32_t i = 0; i < 10; i++) {
        mproc_result *r = NULL;
        int rc = mproc_pool_apply_async(pool, nap, &i, sizeof(i), NULL, NULL, NULL, &r);
        if (rc == 0)
            rc = mproc_result_get(r, NULL, NULL, 20000);
        if (r && mproc_result_error(r) && why[0] == '\0')
            snprintf(why, why_cap, "%s", mproc_result_error(r));
        mproc_result_destroy(&r);
        bad += rc != expected && !(expected == MPROC_EBROKEN && rc == MPROC_EBROKEN);
    }
    return bad;
}

/*
 * Workers killed while the fork server may not fork another: with one
 * worker left the pool goes on with it; with none, every task fails with
 * MPROC_EBROKEN saying that fork failed, and nothing hangs.
 */
static int nproc_at_replacement(void *arg)
{
    bool none_left = *(const bool *)arg;
    if (become_counted_user() < 0)
        return 2;
    pid_t before[MAX_PIDS];
    size_t nbefore = test_children_of(getpid(), before, MAX_PIDS);
    mproc_pool *pool = NULL;
    mproc_pool_options options = {.workers = 2};
    if (mproc_pool_create(&pool, &options) < 0)
        return 3;
    pid_t server = 0, workers[MAX_PIDS];
    if (new_children(before, nbefore, &server, 1) != 1)
        return 4;
    wait_workers_up(server, 2);
    if (test_children_of(server, workers, MAX_PIDS) != 2 || set_nproc(server, 1) < 0)
        return 5;
    (void)kill(workers[0], SIGKILL);
    if (none_left)
        (void)kill(workers[1], SIGKILL);
    char why[256] = "";
    int bad = naps_not(pool, none_left ? MPROC_EBROKEN : 0, why, sizeof why);
    if (none_left && !strstr(why, "no worker can be started: fork: "))
        bad += 100;
    int64_t start = test_now_ms();
    mproc_pool_destroy(&pool);
    if (test_now_ms() - start > 5000)
        bad += 1000;
    if (bad)
        fprintf(stderr, "nproc_at_replacement: bad %d, message '%s'\n", bad, why);
    return bad ? 10 : 0;
}

Test(pool_faults, rlimit_nproc_at_replacement_goes_on_with_the_worker_left, .timeout = 60)
{
    bool none_left = false;
    int fds = test_count_fds(), shm = test_count_dev_shm();
    mproc_process *child = test_start(nproc_at_replacement, &none_left);
    test_join_expect(child, 0);
    expect_nothing_left(fds, shm);
}

Test(pool_faults, rlimit_nproc_with_no_worker_left_breaks_the_pool_saying_why, .timeout = 60)
{
    bool none_left = true;
    int fds = test_count_fds(), shm = test_count_dev_shm();
    mproc_process *child = test_start(nproc_at_replacement, &none_left);
    test_join_expect(child, 0);
    expect_nothing_left(fds, shm);
}

/* ---- workers on demand ---- */

static int nap_pid(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    uint32_t us = 0;
    if (len == sizeof(us))
        memcpy(&us, arg, sizeof(us));
    if (us)
        usleep(us);
    pid_t pid = getpid();
    return mproc_task_return(ctx, &pid, sizeof(pid));
}

/* Runs n naps of us at once; returns how many distinct workers ran them (-1: a failure). */
static int naps_at_once(mproc_pool *pool, int n, uint32_t us)
{
    mproc_result *r[16] = {0};
    pid_t pids[16];
    int distinct = 0;
    for (int i = 0; i < n; i++)
        cr_assert_eq(
            mproc_pool_apply_async(pool, nap_pid, &us, sizeof(us), NULL, NULL, NULL, &r[i]), 0);
    for (int i = 0; i < n; i++) {
        const void *data = NULL;
        size_t len = 0;
        int rc = mproc_result_get(r[i], &data, &len, 20000);
        if (rc != 0 || len != sizeof(pid_t))
            distinct = -1000;
        else
            memcpy(&pids[i], data, sizeof(pid_t));
        mproc_result_destroy(&r[i]);
        bool seen = false;
        for (int j = 0; j < i && rc == 0; j++)
            seen = seen || pids[j] == pids[i];
        distinct += rc == 0 && !seen;
    }
    return distinct;
}

static size_t workers_now(pid_t server)
{
    pid_t kids[MAX_PIDS];
    return test_children_of(server, kids, MAX_PIDS);
}

static bool still_a_child(pid_t server, pid_t pid)
{
    pid_t kids[MAX_PIDS];
    size_t n = test_children_of(server, kids, MAX_PIDS);
    for (size_t i = 0; i < n; i++)
        if (kids[i] == pid)
            return true;
    return false;
}

/* SIGKILLs worker pid, then waits until it is reaped and the server has n workers again. */
static void kill_until_replaced(pid_t server, pid_t pid, size_t n)
{
    cr_assert_eq(kill(pid, SIGKILL), 0);
    int64_t deadline = test_now_ms() + 10000;
    while ((still_a_child(server, pid) || workers_now(server) != n) && test_now_ms() < deadline)
        usleep(2000);
}

/*
 * A pool of 16 on demand: one worker at create, still one after tasks run
 * one at a time, one per task that waits (six naps at once: six workers),
 * no more when the same load comes again, and a killed one is replaced.
 */
Test(pool_faults, workers_on_demand_follow_the_tasks_waiting, .timeout = 60)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    pid_t before[MAX_PIDS], server = 0;
    size_t nbefore = test_children_of(getpid(), before, MAX_PIDS);
    mproc_pool *pool = NULL;
    mproc_pool_options options = {.workers = 16, .workers_on_demand = true};
    cr_assert_eq(mproc_pool_create(&pool, &options), 0);
    cr_assert_eq(mproc_pool_workers(pool), 16);
    cr_assert_eq(new_children(before, nbefore, &server, 1), 1);
    wait_workers_up(server, 1);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(naps_at_once(pool, 1, 0), 1);
    cr_expect_eq(workers_now(server), 1, "%zu workers for tasks one at a time",
                 workers_now(server));
    cr_expect_eq(naps_at_once(pool, 6, 400000), 6, "six naps at once did not run side by side");
    cr_expect_eq(workers_now(server), 6, "%zu workers for six tasks", workers_now(server));
    cr_expect_eq(naps_at_once(pool, 6, 400000), 6);
    cr_expect_eq(workers_now(server), 6, "%zu workers for the same load again",
                 workers_now(server));
    pid_t kids[MAX_PIDS];
    cr_assert_eq(test_children_of(server, kids, MAX_PIDS), 6);
    kill_until_replaced(server, kids[0], 6);
    cr_expect_eq(naps_at_once(pool, 6, 400000), 6);
    cr_expect_eq(workers_now(server), 6, "%zu workers after a kill", workers_now(server));
    cr_assert_eq(mproc_pool_close(pool), 0);
    cr_assert_eq(mproc_pool_join(pool, 10000), 0);
    cr_assert_eq(mproc_pool_destroy(&pool), 0);
    expect_nothing_left(fds, shm);
}

/* n naps submitted at once, the bound raised to raise_to once they are all waiting or running. */
static int naps_raised(mproc_pool *pool, int n, uint32_t us, int raise_to, int64_t *took_ms)
{
    mproc_result *r[16] = {0};
    int64_t start = test_now_ms();
    for (int i = 0; i < n; i++)
        cr_assert_eq(
            mproc_pool_apply_async(pool, nap_pid, &us, sizeof(us), NULL, NULL, NULL, &r[i]), 0);
    cr_assert_eq(mproc_pool_set_max_workers(pool, raise_to), 0);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        ok += mproc_result_wait(r[i], 20000) == 0 && mproc_result_successful(r[i]);
        mproc_result_destroy(&r[i]);
    }
    *took_ms = test_now_ms() - start;
    return ok;
}

Test(pool_faults, max_workers_bound_the_starts_and_move_while_the_pool_runs, .timeout = 60)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    pid_t before[MAX_PIDS], server = 0;
    size_t nbefore = test_children_of(getpid(), before, MAX_PIDS);
    mproc_pool *pool = NULL, *fixed = NULL;
    mproc_pool_options options = {.workers = 16, .workers_on_demand = true};
    cr_assert_eq(mproc_pool_create(&pool, &options), 0);
    cr_assert_eq(new_children(before, nbefore, &server, 1), 1);
    wait_workers_up(server, 1);
    cr_expect_eq(mproc_pool_set_max_workers(NULL, 4), -EINVAL);
    cr_expect_eq(mproc_pool_set_max_workers(pool, 0), -EINVAL);
    cr_expect_eq(mproc_pool_set_max_workers(pool, 17), -EINVAL);
    mproc_pool_options whole = {.workers = 2};
    cr_assert_eq(mproc_pool_create(&fixed, &whole), 0);
    cr_expect_eq(mproc_pool_set_max_workers(fixed, 1), -EINVAL, "a pool not on demand");
    cr_assert_eq(mproc_pool_destroy(&fixed), 0);

    cr_assert_eq(mproc_pool_set_max_workers(pool, 4), 0);
    cr_expect_eq(naps_at_once(pool, 8, 200000), 4, "eight naps under a bound of 4");
    cr_expect_eq(workers_now(server), 4, "%zu workers under a bound of 4", workers_now(server));

    /* Raised while 8 naps wait or run: the 4 waiting start their workers at once. */
    cr_assert_eq(mproc_pool_set_max_workers(pool, 4), 0);
    int64_t took = 0;
    cr_expect_eq(naps_raised(pool, 8, 400000, 8, &took), 8);
    cr_expect_lt(took, 780, "eight naps of 400 ms took %lld ms: not side by side", (long long)took);
    cr_expect_eq(workers_now(server), 8, "%zu workers once raised to 8", workers_now(server));

    /* Lowered: none stops, none starts, and the 8 there are all take tasks. */
    cr_assert_eq(mproc_pool_set_max_workers(pool, 2), 0);
    cr_expect_eq(naps_at_once(pool, 8, 400000), 8, "the workers above the bound took no task");
    cr_expect_eq(workers_now(server), 8, "%zu workers once lowered to 2", workers_now(server));
    pid_t kids[MAX_PIDS];
    cr_assert_eq(test_children_of(server, kids, MAX_PIDS), 8);
    kill_until_replaced(server, kids[3], 8);
    cr_expect(!still_a_child(server, kids[3]), "the killed worker is still there");
    cr_expect_eq(workers_now(server), 8,
                 "%zu workers: a dead worker above the bound is not replaced", workers_now(server));
    cr_expect_eq(naps_at_once(pool, 8, 200000), 8);
    cr_assert_eq(mproc_pool_close(pool), 0);
    cr_assert_eq(mproc_pool_join(pool, 10000), 0);
    cr_assert_eq(mproc_pool_destroy(&pool), 0);
    expect_nothing_left(fds, shm);
}

/* On demand, where the fork server may fork no more: the tasks run on the one worker it has. */
static int nproc_on_demand(void *arg)
{
    (void)arg;
    if (become_counted_user() < 0)
        return 2;
    pid_t before[MAX_PIDS], server = 0;
    size_t nbefore = test_children_of(getpid(), before, MAX_PIDS);
    mproc_pool *pool = NULL;
    mproc_pool_options options = {.workers = 8, .workers_on_demand = true};
    if (mproc_pool_create(&pool, &options) < 0)
        return 3;
    if (new_children(before, nbefore, &server, 1) != 1)
        return 4;
    wait_workers_up(server, 1);
    if (workers_now(server) != 1 || set_nproc(server, 1) < 0)
        return 5;
    int bad = 0;
    for (int round = 0; round < 3; round++)
        bad += naps_at_once(pool, 8, 20000) != 1;
    int64_t start = test_now_ms();
    mproc_pool_destroy(&pool);
    if (test_now_ms() - start > 5000)
        bad += 1000;
    if (bad)
        fprintf(stderr, "nproc_on_demand: bad %d\n", bad);
    return bad ? 10 : 0;
}

Test(pool_faults, rlimit_nproc_on_demand_runs_on_the_worker_there_is, .timeout = 60)
{
    int fds = test_count_fds(), shm = test_count_dev_shm();
    mproc_process *child = test_start(nproc_on_demand, NULL);
    test_join_expect(child, 0);
    expect_nothing_left(fds, shm);
}

/* ---- randomized: pools alive together, kills, destroys in any order ---- */

#define MAX_POOLS 3
#define MAX_TASKS 60

/* The round's queue, made before its pools: their workers inherit it. */
static mproc_queue *round_queue;

#define PAD_MAX 8192 /* a put long enough for a kill to land in the middle of it */

struct put_arg {
    uint32_t us;
    uint16_t pool, task;
};

/* Who put a message: unique per put, also when a retried task puts again. */
struct stamp {
    uint16_t pool, task;
    pid_t pid;
    uint32_t seq;
};

static unsigned char pad_byte(const struct stamp *s, size_t i)
{
    return (unsigned char)(s->seq * 31u + (uint32_t)s->pid + i);
}

/* Puts a stamped message of a varying length, then naps as nap() does. */
static int put_then_nap(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    static uint32_t seq; /* per worker process */
    static unsigned char msg[sizeof(struct stamp) + PAD_MAX];
    struct put_arg a;
    if (len != sizeof(a))
        return mproc_task_fail(ctx, "bad argument of %zu bytes", len);
    memcpy(&a, arg, sizeof(a));
    struct stamp s = {.pool = a.pool, .task = a.task, .pid = getpid(), .seq = ++seq};
    size_t pad = (s.seq * 7919u + a.us) % PAD_MAX;
    memcpy(msg, &s, sizeof(s));
    for (size_t i = 0; i < pad; i++)
        msg[sizeof(s) + i] = pad_byte(&s, i);
    int rc = mproc_queue_put(round_queue, msg, sizeof(s) + pad, 5000);
    if (rc < 0)
        return mproc_task_fail(ctx, "put: %s", mproc_strerror(rc));
    if (a.us)
        usleep(a.us);
    uint32_t out = a.us + 1;
    return mproc_task_return(ctx, &out, sizeof(out));
}

struct tracked_pool {
    mproc_pool *pool;
    pid_t server;
    bool server_killed;
    bool destroyed;
    int workers;
    bool retry;
    int ntasks;
    mproc_result *results[MAX_TASKS];
    uint32_t args[MAX_TASKS];
    struct put_arg put_args[MAX_TASKS];
    mproc_task_fn fns[MAX_TASKS];
    int codes[MAX_TASKS]; /* each result's code, kept for the queue's check */
    _Atomic int callbacks[MAX_TASKS];
};

struct callback_ref {
    struct tracked_pool *tp;
    int index;
};

static struct callback_ref refs[MAX_POOLS][MAX_TASKS];

static void count_callback(mproc_result *result, void *arg)
{
    struct callback_ref *ref = arg;
    atomic_fetch_add(&ref->tp->callbacks[ref->index], 1);
}

/* Kills a random process of a random live pool: a worker, or (rarely) its fork server. */
static void kill_something(struct tracked_pool *tps, int npools, uint64_t *rng)
{
    int i = (int)(mix(rng) % (uint64_t)npools);
    struct tracked_pool *tp = &tps[i];
    if (tp->destroyed || tp->server_killed)
        return;
    if (mix(rng) % 6 == 0) {
        tp->server_killed = kill(tp->server, SIGKILL) == 0;
        return;
    }
    pid_t workers[MAX_PIDS];
    size_t n = test_children_of(tp->server, workers, MAX_PIDS);
    if (n)
        (void)kill(workers[mix(rng) % n], SIGKILL);
}

/* Each result once, with a code its pool's history explains. */
static void check_results(struct tracked_pool *tp, int p, unsigned round)
{
    for (int t = 0; t < tp->ntasks; t++) {
        int rc = mproc_result_get(tp->results[t], NULL, NULL, 10000);
        cr_assert_neq(rc, -EAGAIN, "round %u pool %d task %d never completed", round, p, t);
        const void *data = NULL;
        size_t len = 0;
        rc = mproc_result_get(tp->results[t], &data, &len, 0);
        tp->codes[t] = rc;
        const char *why = mproc_result_error(tp->results[t]);
        if (rc == 0) {
            cr_expect_eq(len, sizeof(uint32_t));
            uint32_t got;
            memcpy(&got, data, sizeof(got));
            cr_expect_eq(got, tp->args[t] + 1, "round %u pool %d task %d: wrong result", round, p,
                         t);
        } else if (rc == MPROC_EWORKERDIED) {
            cr_expect(why && strstr(why, "worker "), "round %u: '%s'", round, why ? why : "");
        } else if (rc == MPROC_EBROKEN) {
            bool said = why && (strstr(why, "fork server") || strstr(why, "terminated"));
            cr_expect(said, "round %u pool %d: broken with '%s'", round, p, why ? why : "");
            if (why && strstr(why, "fork server"))
                cr_expect(tp->server_killed, "round %u: the fork server died unasked", round);
        } else {
            cr_expect(false, "round %u pool %d task %d: %s (%s)", round, p, t, mproc_strerror(rc),
                      why ? why : "");
        }
        /* The callbacks ran by the time destroy() returned: exactly once. */
        cr_expect_eq(tp->callbacks[t], 1, "round %u pool %d task %d: %d callbacks", round, p, t,
                     tp->callbacks[t]);
        mproc_result_destroy(&tp->results[t]);
    }
}

static void start_pool(struct tracked_pool *tp, int p, uint64_t *rng)
{
    pid_t before[MAX_PIDS];
    size_t nbefore = test_children_of(getpid(), before, MAX_PIDS);
    tp->workers = 1 + (int)(mix(rng) % 3);
    tp->retry = mix(rng) % 2;
    /* On demand: one worker at first, more as tasks wait (and as kills take them). */
    bool on_demand = mix(rng) % 2;
    mproc_pool_options options = {
        .workers = tp->workers, .retry_on_worker_death = tp->retry, .workers_on_demand = on_demand};
    cr_assert_eq(mproc_pool_create(&tp->pool, &options), 0);
    cr_assert_eq(new_children(before, nbefore, &tp->server, 1), 1);
    wait_workers_up(tp->server, on_demand ? 1 : tp->workers);
    tp->ntasks = 20 + (int)(mix(rng) % (MAX_TASKS - 20));
    for (int t = 0; t < tp->ntasks; t++) {
        tp->args[t] = (uint32_t)(mix(rng) % 4000);
        uint64_t kind = mix(rng) % 10;
        tp->fns[t] = kind == 0 ? nested : kind < 4 ? put_then_nap : nap;
        tp->put_args[t] = (struct put_arg){tp->args[t], (uint16_t)p, (uint16_t)t};
        const void *arg = &tp->args[t];
        size_t len = sizeof(tp->args[t]);
        if (tp->fns[t] == put_then_nap) {
            arg = &tp->put_args[t];
            len = sizeof(tp->put_args[t]);
        }
        refs[p][t] = (struct callback_ref){tp, t};
        cr_assert_eq(mproc_pool_apply_async(tp->pool, tp->fns[t], arg, len, count_callback,
                                            count_callback, &refs[p][t], &tp->results[t]),
                     0);
        /* The bound moves under load, as mpcp's window moves it. */
        if (on_demand && mix(rng) % 8 == 0)
            cr_assert_eq(mproc_pool_set_max_workers(tp->pool, 1 + (int)(mix(rng) % tp->workers)),
                         0);
    }
}

/* Checks one message taken from the round's queue; returns false when it is torn. */
static bool message_whole(const void *data, size_t len, struct stamp *s)
{
    if (len < sizeof(*s))
        return false;
    memcpy(s, data, sizeof(*s));
    const unsigned char *pad = (const unsigned char *)data + sizeof(*s);
    for (size_t i = 0; i < len - sizeof(*s); i++)
        if (pad[i] != pad_byte(s, i))
            return false;
    return true;
}

/*
 * After every pool is gone: the count is exact, no put arrived twice or torn,
 * and every task that returned had its put (done before it returned) received.
 */
static void check_queue(struct tracked_pool *tps, int npools, unsigned round)
{
    static struct stamp seen[MAX_POOLS * MAX_TASKS * 4];
    static bool put_of[MAX_POOLS][MAX_TASKS];
    size_t before = 0, taken = 0;
    memset(put_of, 0, sizeof(put_of));
    cr_assert_eq(mproc_queue_size(round_queue, &before), 0);
    for (;;) {
        void *data = NULL;
        size_t len = 0;
        int rc = mproc_queue_get(round_queue, &data, &len, 0);
        if (rc == -EAGAIN || rc == -EPIPE)
            break;
        cr_assert_eq(rc, 0, "round %u: get: %s", round, mproc_strerror(rc));
        struct stamp s;
        bool whole = message_whole(data, len, &s);
        free(data);
        cr_assert(whole, "round %u: a torn message of %zu bytes", round, len);
        cr_assert(s.pool < npools && s.task < tps[s.pool].ntasks, "round %u: a stray message",
                  round);
        for (size_t i = 0; i < taken; i++)
            cr_assert(seen[i].pid != s.pid || seen[i].seq != s.seq,
                      "round %u: the put %d/%u received twice", round, (int)s.pid, s.seq);
        cr_assert_lt(taken, sizeof(seen) / sizeof(seen[0]), "round %u: too many messages", round);
        seen[taken++] = s;
        put_of[s.pool][s.task] = true;
    }
    cr_expect_eq(taken, before, "round %u: size said %zu, %zu taken", round, before, taken);
    size_t after = 1;
    bool empty = false;
    cr_expect_eq(mproc_queue_size(round_queue, &after), 0);
    cr_expect_eq(after, 0, "round %u: size %zu after draining", round, after);
    cr_expect_eq(mproc_queue_empty(round_queue, &empty), 0);
    cr_expect(empty, "round %u: not empty after draining", round);
    for (int p = 0; p < npools; p++)
        for (int t = 0; t < tps[p].ntasks; t++)
            if (tps[p].fns[t] == put_then_nap && tps[p].codes[t] == 0)
                cr_expect(put_of[p][t], "round %u: pool %d task %d returned, its put is lost",
                          round, p, t);
}

static void one_round(unsigned round, uint64_t rng)
{
    static struct tracked_pool tps[MAX_POOLS];
    int npools = 2 + (int)(mix(&rng) % 2);
    memset(tps, 0, sizeof(tps));
    cr_assert_eq(mproc_queue_create(&round_queue, 0, 0), 0);
    for (int p = 0; p < npools; p++)
        start_pool(&tps[p], p, &rng);
    int kills = (int)(mix(&rng) % 6);
    for (int k = 0; k < kills; k++) {
        usleep((useconds_t)(mix(&rng) % 20000));
        kill_something(tps, npools, &rng);
    }
    /* Destroyed in a random order, some while busy, some after their work. */
    int order[MAX_POOLS] = {0, 1, 2};
    for (int i = npools - 1; i > 0; i--) {
        int j = (int)(mix(&rng) % (uint64_t)(i + 1));
        int tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    for (int i = 0; i < npools; i++) {
        struct tracked_pool *tp = &tps[order[i]];
        if (mix(&rng) % 2) {
            cr_expect_eq(mproc_pool_close(tp->pool), 0);
            int rc = mproc_pool_join(tp->pool, 20000);
            cr_expect_eq(rc, 0, "round %u: join: %s", round, mproc_strerror(rc));
        }
        int64_t start = test_now_ms();
        cr_assert_eq(mproc_pool_destroy(&tp->pool), 0);
        int64_t took = test_now_ms() - start;
        cr_expect_lt(took, 6000, "round %u: destroy took %lld ms", round, (long long)took);
        tp->destroyed = true;
        check_results(tp, order[i], round);
    }
    check_queue(tps, npools, round);
    mproc_queue_destroy(&round_queue);
}

Test(pool_faults, random_pools_kills_and_destroys_lose_nothing, .timeout = 600)
{
    uint64_t seed = env_number("MPROC_TEST_SEED", (uint64_t)time(NULL) ^ (uint64_t)getpid());
    unsigned rounds = (unsigned)env_number("MPROC_TEST_ROUNDS", DEFAULT_ROUNDS);
    fprintf(stderr, "pool_faults: seed %llu (replay: MPROC_TEST_SEED=%llu), %u rounds\n",
            (unsigned long long)seed, (unsigned long long)seed, rounds);
    int fds = test_count_fds(), shm = test_count_dev_shm();
    for (unsigned round = 0; round < rounds; round++) {
        uint64_t rng = seed ^ (0x9e3779b97f4a7c15ull * (round + 1));
        one_round(round, rng);
        expect_nothing_left(fds, shm);
    }
}
