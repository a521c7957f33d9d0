/*
 * Pool: results are right and complete exactly once; a worker killed under a
 * task fails (or retries) that task and is replaced; timeouts, recycling
 * under a backlog, Ctrl-C, terminate and the death of the creating process
 * leave no hang, no zombie and no orphan.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- tasks ---- */

static int square(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    int64_t x;
    if (len != sizeof(x))
        return mproc_task_fail(ctx, "bad argument of %zu bytes", len);
    memcpy(&x, arg, sizeof(x));
    int64_t y = x * x;
    return mproc_task_return(ctx, &y, sizeof(y));
}

static int report_pid(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    int ms = len == sizeof(int) ? *(const int *)arg : 0;
    if (ms > 0)
        usleep((useconds_t)ms * 1000);
    pid_t pid = getpid();
    return mproc_task_return(ctx, &pid, sizeof(pid));
}

static int kill_self(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    raise(SIGKILL);
    return 0;
}

static int crash(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    volatile int *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    *page = 1;
    return 0;
}

static int sleep_long(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    sleep(30);
    return 0;
}

static int fail_politely(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return mproc_task_fail(ctx, "no good: %d", 42);
}

static int return_seven(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return 7;
}

static mproc_pool *make_pool(int workers)
{
    mproc_pool *pool = NULL;
    mproc_pool_options options = {.workers = workers};
    int rc = mproc_pool_create(&pool, &options);
    cr_assert_eq(rc, 0, "pool: %s", mproc_strerror(rc));
    return pool;
}

static int64_t get_i64(mproc_result *result)
{
    const void *data;
    size_t len;
    int rc = mproc_result_get(result, &data, &len, 30000);
    cr_assert_eq(rc, 0, "result: %s (%s)", mproc_strerror(rc), mproc_result_error(result));
    cr_assert_eq(len, sizeof(int64_t));
    int64_t v;
    memcpy(&v, data, sizeof(v));
    return v;
}

/* ---- correctness ---- */

Test(pool, hundred_thousand_tasks_correct, .timeout = 120)
{
    mproc_pool *pool = make_pool(2);
    enum { N = 100000 };
    mproc_result **results = malloc(N * sizeof(*results));
    for (int64_t i = 0; i < N; i++)
        cr_assert_eq(
            mproc_pool_apply_async(pool, square, &i, sizeof(i), NULL, NULL, NULL, &results[i]), 0);
    for (int64_t i = 0; i < N; i++) {
        cr_assert_eq(get_i64(results[i]), i * i, "task %lld", (long long)i);
        mproc_result_destroy(&results[i]);
    }
    free(results);
    cr_assert_eq(mproc_pool_destroy(&pool), 0);
    cr_assert_null(pool);
    cr_assert_eq(test_count_children(), 0, "processes left after destroy");
    cr_assert_eq(test_count_zombie_children(), 0);
}

Test(pool, apply_and_errors, .timeout = 30)
{
    mproc_pool *pool = make_pool(2);
    int64_t x = 12;
    void *out;
    size_t len;
    cr_assert_eq(mproc_pool_apply(pool, square, &x, sizeof(x), &out, &len), 0);
    cr_assert_eq(len, sizeof(int64_t));
    cr_assert_eq(*(int64_t *)out, 144);
    free(out);

    mproc_result *r;
    cr_assert_eq(mproc_pool_apply_async(pool, fail_politely, NULL, 0, NULL, NULL, NULL, &r), 0);
    cr_assert_eq(mproc_result_get(r, NULL, NULL, 10000), MPROC_ETASKFAILED);
    cr_assert(mproc_result_ready(r));
    cr_assert_not(mproc_result_successful(r));
    cr_assert_str_eq(mproc_result_error(r), "no good: 42");
    mproc_result_destroy(&r);

    cr_assert_eq(mproc_pool_apply_async(pool, return_seven, NULL, 0, NULL, NULL, NULL, &r), 0);
    cr_assert_eq(mproc_result_get(r, NULL, NULL, 10000), MPROC_ETASKFAILED);
    cr_assert_str_eq(mproc_result_error(r), "task returned 7");
    mproc_result_destroy(&r);
    mproc_pool_destroy(&pool);
}

Test(pool, map_in_order_with_chunks, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    enum { N = 10000 };
    int64_t *xs = malloc(N * sizeof(*xs));
    struct iovec *items = malloc(N * sizeof(*items));
    for (int i = 0; i < N; i++) {
        xs[i] = i;
        items[i] = (struct iovec){.iov_base = &xs[i], .iov_len = sizeof(xs[i])};
    }
    size_t chunks[] = {0, 1, 7, 10000};
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        mproc_result *r;
        cr_assert_eq(mproc_pool_map(pool, square, items, N, chunks[c], &r), 0);
        cr_assert_eq(mproc_result_count(r), N);
        for (int i = 0; i < N; i++) {
            const void *data;
            size_t len;
            cr_assert_eq(mproc_result_item(r, (size_t)i, &data, &len), 0);
            cr_assert_eq(*(const int64_t *)data, (int64_t)i * i, "chunk %zu item %d", chunks[c], i);
        }
        mproc_result_destroy(&r);
    }
    /* One bad item fails the map, and says which. */
    int32_t bad = 1;
    items[5] = (struct iovec){.iov_base = &bad, .iov_len = sizeof(bad)};
    mproc_result *r;
    cr_assert_eq(mproc_pool_map(pool, square, items, 10, 3, &r), MPROC_ETASKFAILED);
    cr_assert_eq(mproc_result_item(r, 4, NULL, NULL), 0);
    cr_assert_eq(mproc_result_item(r, 5, NULL, NULL), MPROC_ETASKFAILED);
    cr_assert_str_eq(mproc_result_item_error(r, 5), "bad argument of 4 bytes");
    mproc_result_destroy(&r);
    /* An empty map is complete at once. */
    cr_assert_eq(mproc_pool_map(pool, square, NULL, 0, 0, &r), 0);
    cr_assert_eq(mproc_result_count(r), 0);
    mproc_result_destroy(&r);
    free(items);
    free(xs);
    mproc_pool_destroy(&pool);
}

/* Item x: x % 17 bytes of (x & 0xff), or a failure for every 1000th. */
static int ragged(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    int64_t x;
    memcpy(&x, arg, sizeof(x));
    if (x % 1000 == 999)
        return mproc_task_fail(ctx, "item %lld refused", (long long)x);
    unsigned char out[17];
    memset(out, (int)(x & 0xff), sizeof(out));
    return mproc_task_return(ctx, out, (size_t)(x % 17));
}

/* Large enough for the input and the results to take the huge-page paths; lengths vary. */
Test(pool, map_large_ragged_results, .timeout = 120)
{
    mproc_pool *pool = make_pool(2);
    enum { N = 300000 };
    int64_t *xs = malloc(N * sizeof(*xs));
    struct iovec *items = malloc(N * sizeof(*items));
    for (int i = 0; i < N; i++) {
        xs[i] = i;
        items[i] = (struct iovec){.iov_base = &xs[i], .iov_len = sizeof(xs[i])};
    }
    for (int round = 0; round < 2; round++) {
        mproc_result *r;
        cr_assert_eq(mproc_pool_map(pool, ragged, items, N, 0, &r), MPROC_ETASKFAILED);
        cr_assert_str_eq(mproc_result_error(r), "item 999 refused");
        for (int i = 0; i < N; i++) {
            const void *data;
            size_t len;
            int rc = mproc_result_item(r, (size_t)i, &data, &len);
            if (i % 1000 == 999) {
                cr_assert_eq(rc, MPROC_ETASKFAILED, "item %d", i);
                char want[64];
                snprintf(want, sizeof(want), "item %d refused", i);
                cr_assert_str_eq(mproc_result_item_error(r, (size_t)i), want);
                continue;
            }
            cr_assert_eq(rc, 0, "item %d", i);
            cr_assert_eq(len, (size_t)(i % 17), "item %d", i);
            for (size_t b = 0; b < len; b++)
                cr_assert_eq(((const unsigned char *)data)[b], (unsigned char)(i & 0xff));
        }
        mproc_result_destroy(&r);
    }
    free(items);
    free(xs);
    mproc_pool_destroy(&pool);
}

static _Atomic int callbacks_ok, callbacks_err;

static void on_ok(mproc_result *r, void *arg)
{
    atomic_fetch_add(&callbacks_ok, 1);
}

static void on_err(mproc_result *r, void *arg)
{
    atomic_fetch_add(&callbacks_err, 1);
}

Test(pool, every_callback_runs_exactly_once, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    enum { N = 20000 };
    for (int64_t i = 0; i < N; i++) {
        mproc_task_fn fn = i % 10 == 0 ? fail_politely : square;
        cr_assert_eq(mproc_pool_apply_async(pool, fn, &i, sizeof(i), on_ok, on_err, NULL, NULL), 0);
    }
    mproc_pool_close(pool);
    cr_assert_eq(mproc_pool_join(pool, 60000), 0);
    mproc_pool_destroy(&pool);
    cr_assert_eq(atomic_load(&callbacks_ok), N - N / 10);
    cr_assert_eq(atomic_load(&callbacks_err), N / 10);
}

#define THREADS    4
#define PER_THREAD 5000

static void *submit_many(void *arg)
{
    mproc_pool *pool = arg;
    for (int64_t i = 0; i < PER_THREAD; i++) {
        mproc_result *r;
        if (mproc_pool_apply_async(pool, square, &i, sizeof(i), NULL, NULL, NULL, &r) < 0)
            return (void *)1;
        const void *data;
        size_t len;
        if (i % 100 == 0 &&
            (mproc_result_get(r, &data, &len, 30000) != 0 || *(const int64_t *)data != i * i))
            return (void *)2;
        mproc_result_destroy(&r);
    }
    return NULL;
}

Test(pool, submissions_from_several_threads, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++)
        pthread_create(&threads[t], NULL, submit_many, pool);
    for (int t = 0; t < THREADS; t++) {
        void *rc;
        pthread_join(threads[t], &rc);
        cr_assert_null(rc, "thread %d failed", t);
    }
    mproc_pool_destroy(&pool);
}

/*
 * Four threads submit at once with callbacks, cancel some of their tasks,
 * and wait for batches with wait_many(): every result completes once, with
 * one callback, and a cancelled one (cancel() returned 0) never ran. Built
 * for ThreadSanitizer too (scripts/test --tsan).
 */
#define BATCH   16
#define BATCHES 40

struct thread_tally {
    _Atomic int ok;
    _Atomic int err;
};

static void tally_ok(mproc_result *r, void *arg)
{
    atomic_fetch_add(&((struct thread_tally *)arg)->ok, 1);
}

static void tally_err(mproc_result *r, void *arg)
{
    atomic_fetch_add(&((struct thread_tally *)arg)->err, 1);
}

struct submitter {
    mproc_pool *pool;
    struct thread_tally tally;
    int cancelled, failed, succeeded;
};

/* Checks one result of a batch: its value, or the error it must have. */
static int check_batch_result(struct submitter *s, mproc_result *r, int64_t x, bool cancelled)
{
    const void *data;
    size_t len;
    int rc = mproc_result_get(r, &data, &len, 0);
    if (cancelled)
        return rc == MPROC_ECANCELLED ? (s->cancelled++, 0) : 3;
    if (x % 5 == 0)
        return rc == MPROC_ETASKFAILED ? (s->failed++, 0) : 4;
    if (rc != 0 || len != sizeof(int64_t) || *(const int64_t *)data != x * x)
        return 5;
    s->succeeded++;
    return 0;
}

static void *submit_cancel_wait(void *arg)
{
    struct submitter *s = arg;
    for (int64_t b = 0; b < BATCHES; b++) {
        mproc_result *batch[BATCH];
        bool cancelled[BATCH] = {false};
        for (int i = 0; i < BATCH; i++) {
            int64_t x = b * BATCH + i;
            mproc_task_fn fn = x % 5 == 0 ? fail_politely : square;
            if (mproc_pool_apply_async(s->pool, fn, &x, sizeof(x), tally_ok, tally_err, &s->tally,
                                       &batch[i]) != 0)
                return (void *)1;
        }
        /* The last ones of a batch are most likely still waiting: cancel some. */
        for (int i = BATCH - 4; i < BATCH; i += 2)
            cancelled[i] = mproc_result_cancel(batch[i]) == 0;
        size_t ready = 0;
        if (mproc_result_wait_many(batch, BATCH, true, &ready, 30000) != 0 || ready != BATCH)
            return (void *)2;
        for (int i = 0; i < BATCH; i++) {
            int rc = check_batch_result(s, batch[i], b * BATCH + i, cancelled[i]);
            mproc_result_destroy(&batch[i]);
            if (rc)
                return (void *)(intptr_t)rc;
        }
    }
    return NULL;
}

Test(pool, threads_submit_with_callbacks_cancel_and_wait_many, .timeout = 120)
{
    mproc_pool *pool = make_pool(2);
    struct submitter subs[THREADS];
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        subs[t] = (struct submitter){.pool = pool};
        cr_assert_eq(pthread_create(&threads[t], NULL, submit_cancel_wait, &subs[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        void *rc;
        pthread_join(threads[t], &rc);
        cr_assert_null(rc, "thread %d failed: %d", t, (int)(intptr_t)rc);
    }
    mproc_pool_close(pool);
    cr_assert_eq(mproc_pool_join(pool, 60000), 0);
    mproc_pool_destroy(&pool);
    int cancelled = 0;
    for (int t = 0; t < THREADS; t++) {
        struct submitter *s = &subs[t];
        cr_assert_eq(s->cancelled + s->failed + s->succeeded, BATCH * BATCHES);
        /* One callback per result, whatever completed it, once the pool is gone. */
        cr_assert_eq(atomic_load(&s->tally.ok), s->succeeded, "thread %d", t);
        cr_assert_eq(atomic_load(&s->tally.err), s->failed + s->cancelled, "thread %d", t);
        cancelled += s->cancelled;
    }
    cr_log_info("%d of %d tasks cancelled", cancelled, THREADS * BATCH * BATCHES);
}

/* ---- dying workers ---- */

Test(pool, worker_killed_fails_its_task_and_is_replaced, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    for (int round = 0; round < 5; round++) {
        mproc_result *victim;
        cr_assert_eq(mproc_pool_apply_async(pool, kill_self, NULL, 0, NULL, NULL, NULL, &victim),
                     0);
        int rc = mproc_result_get(victim, NULL, NULL, 30000);
        cr_assert_eq(rc, MPROC_EWORKERDIED, "got %s", mproc_strerror(rc));
        const char *why = mproc_result_error(victim);
        cr_assert(why && strstr(why, "killed by signal 9"), "message: %s", why);
        cr_assert(strstr(why, "worker "), "message names no worker: %s", why);
        mproc_result_destroy(&victim);
        /* The pool goes on. */
        int64_t x = round;
        mproc_result *r;
        cr_assert_eq(mproc_pool_apply_async(pool, square, &x, sizeof(x), NULL, NULL, NULL, &r), 0);
        cr_assert_eq(get_i64(r), x * x);
        mproc_result_destroy(&r);
    }
    mproc_result *r;
    cr_assert_eq(mproc_pool_apply_async(pool, crash, NULL, 0, NULL, NULL, NULL, &r), 0);
    cr_assert_eq(mproc_result_get(r, NULL, NULL, 30000), MPROC_EWORKERDIED);
    cr_assert(strstr(mproc_result_error(r), "signal 11"), "%s", mproc_result_error(r));
    mproc_result_destroy(&r);
    mproc_pool_destroy(&pool);
    cr_assert_eq(test_count_children(), 0);
}

Test(pool, tasks_queued_behind_a_dead_worker_still_run, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    enum { N = 2000 };
    mproc_result *results[N];
    for (int64_t i = 0; i < N; i++) {
        mproc_task_fn fn = i % 500 == 250 ? kill_self : square;
        cr_assert_eq(mproc_pool_apply_async(pool, fn, &i, sizeof(i), NULL, NULL, NULL, &results[i]),
                     0);
    }
    for (int64_t i = 0; i < N; i++) {
        if (i % 500 == 250) {
            cr_assert_eq(mproc_result_get(results[i], NULL, NULL, 30000), MPROC_EWORKERDIED);
        } else {
            cr_assert_eq(get_i64(results[i]), i * i);
        }
        mproc_result_destroy(&results[i]);
    }
    mproc_pool_destroy(&pool);
}

/* Dies the first time it runs, succeeds the second: counts attempts in shared memory. */
static _Atomic int *attempts;

static int die_once(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    if (atomic_fetch_add(attempts, 1) == 0)
        raise(SIGKILL);
    int64_t ok = 1;
    return mproc_task_return(ctx, &ok, sizeof(ok));
}

Test(pool, retry_once_on_worker_death, .timeout = 60)
{
    attempts = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    mproc_pool *pool;
    mproc_pool_options options = {.workers = 2, .retry_on_worker_death = true};
    cr_assert_eq(mproc_pool_create(&pool, &options), 0);
    mproc_result *r;
    cr_assert_eq(mproc_pool_apply_async(pool, die_once, NULL, 0, NULL, NULL, NULL, &r), 0);
    cr_assert_eq(get_i64(r), 1);
    cr_assert_eq(atomic_load(attempts), 2);
    mproc_result_destroy(&r);
    /* Only once: a task that always kills its worker fails after two tries. */
    cr_assert_eq(mproc_pool_apply_async(pool, kill_self, NULL, 0, NULL, NULL, NULL, &r), 0);
    cr_assert_eq(mproc_result_get(r, NULL, NULL, 30000), MPROC_EWORKERDIED);
    mproc_result_destroy(&r);
    mproc_pool_destroy(&pool);
}

Test(pool, task_timeout_kills_and_replaces, .timeout = 60)
{
    mproc_pool *pool;
    mproc_pool_options options = {.workers = 2, .task_timeout_ms = 300};
    cr_assert_eq(mproc_pool_create(&pool, &options), 0);
    mproc_result *slow;
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_pool_apply_async(pool, sleep_long, NULL, 0, NULL, NULL, NULL, &slow), 0);
    int rc = mproc_result_get(slow, NULL, NULL, 30000);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert_eq(rc, -ETIMEDOUT, "got %s", mproc_strerror(rc));
    cr_assert(strstr(mproc_result_error(slow), "timed out"), "%s", mproc_result_error(slow));
    cr_assert(elapsed >= 300 && elapsed < 3000, "timed out after %lld ms", (long long)elapsed);
    mproc_result_destroy(&slow);
    int64_t x = 9;
    mproc_result *r;
    cr_assert_eq(mproc_pool_apply_async(pool, square, &x, sizeof(x), NULL, NULL, NULL, &r), 0);
    cr_assert_eq(get_i64(r), 81);
    mproc_result_destroy(&r);
    mproc_pool_destroy(&pool);
}

Test(pool, max_tasks_per_child_under_backlog, .timeout = 120)
{
    mproc_pool *pool;
    mproc_pool_options options = {.workers = 2, .max_tasks_per_child = 5};
    cr_assert_eq(mproc_pool_create(&pool, &options), 0);
    enum { N = 300 };
    mproc_result *results[N];
    for (int i = 0; i < N; i++)
        cr_assert_eq(
            mproc_pool_apply_async(pool, report_pid, NULL, 0, NULL, NULL, NULL, &results[i]), 0);
    pid_t pids[N];
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        const void *data;
        size_t len;
        cr_assert_eq(mproc_result_get(results[i], &data, &len, 60000), 0, "task %d", i);
        memcpy(&pids[i], data, sizeof(pid_t));
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen = pids[j] == pids[i];
        distinct += !seen;
        mproc_result_destroy(&results[i]);
    }
    /* 300 tasks, 5 per worker: at least 60 workers, never more than 5 tasks each. */
    cr_assert_geq(distinct, N / 5, "only %d workers ran %d tasks", distinct, N);
    for (int i = 0; i < N; i++) {
        int n = 0;
        for (int j = 0; j < N; j++)
            n += pids[j] == pids[i];
        cr_assert_leq(n, 5, "worker %d ran %d tasks", (int)pids[i], n);
    }
    mproc_pool_destroy(&pool);
    cr_assert_eq(test_count_zombie_children(), 0);
}

/* ---- shutting down ---- */

Test(pool, terminate_fails_pending_and_leaves_no_process, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    mproc_result *results[10];
    for (int i = 0; i < 10; i++)
        cr_assert_eq(
            mproc_pool_apply_async(pool, sleep_long, NULL, 0, NULL, NULL, NULL, &results[i]), 0);
    usleep(200000);
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_pool_terminate(pool), 0);
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(mproc_result_get(results[i], NULL, NULL, 10000), MPROC_EBROKEN);
        mproc_result_destroy(&results[i]);
    }
    cr_assert_eq(mproc_pool_join(pool, 10000), 0);
    cr_assert_lt(test_now_ms() - t0, 5000);
    int64_t x = 1;
    cr_assert_eq(mproc_pool_apply_async(pool, square, &x, sizeof(x), NULL, NULL, NULL, NULL),
                 MPROC_ECLOSED);
    mproc_pool_destroy(&pool);
    cr_assert_eq(test_count_children(), 0);
    cr_assert_eq(test_count_zombie_children(), 0);
}

Test(pool, close_then_join_finishes_the_work, .timeout = 60)
{
    mproc_pool *pool = make_pool(3);
    mproc_result *results[30];
    for (int64_t i = 0; i < 30; i++)
        cr_assert_eq(
            mproc_pool_apply_async(pool, square, &i, sizeof(i), NULL, NULL, NULL, &results[i]), 0);
    cr_assert_eq(mproc_pool_join(pool, 0), -EINVAL, "join before close");
    cr_assert_eq(mproc_pool_close(pool), 0);
    cr_assert_eq(mproc_pool_join(pool, 30000), 0);
    for (int64_t i = 0; i < 30; i++) {
        cr_assert_eq(get_i64(results[i]), i * i);
        mproc_result_destroy(&results[i]);
    }
    mproc_pool_destroy(&pool);
    cr_assert_eq(test_count_children(), 0);
}

/* In a child: makes a pool, reports its workers' pids, then waits to be killed. */
static int pool_then_wait(void *arg)
{
    int fd = *(const int *)arg;
    mproc_pool *pool;
    mproc_pool_options options = {.workers = 2};
    if (mproc_pool_create(&pool, &options) < 0)
        return 1;
    pid_t pids[2] = {0, 0};
    int ms = 300;
    mproc_result *r[2];
    for (int i = 0; i < 2; i++)
        mproc_pool_apply_async(pool, report_pid, &ms, sizeof(ms), NULL, NULL, NULL, &r[i]);
    for (int i = 0; i < 2; i++) {
        const void *data;
        if (mproc_result_get(r[i], &data, NULL, 10000) != 0)
            return 2;
        memcpy(&pids[i], data, sizeof(pid_t));
    }
    if (write(fd, pids, sizeof(pids)) != (ssize_t)sizeof(pids))
        return 3;
    for (;;)
        pause();
}

Test(pool, workers_die_with_a_killed_creator, .timeout = 60)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    mproc_process *child;
    cr_assert_eq(mproc_process_create(&child, pool_then_wait, &fds[1]), 0);
    cr_assert_eq(mproc_process_start(child), 0);
    pid_t pids[2];
    cr_assert_eq(read(fds[0], pids, sizeof(pids)), (ssize_t)sizeof(pids));
    cr_assert_eq(mproc_process_kill(child), 0);
    cr_assert_eq(mproc_process_join(child, 10000), 0);
    mproc_process_destroy(&child);
    for (int i = 0; i < 2; i++)
        cr_assert(test_wait_pid_dead(pids[i], 5000), "worker %d outlived its pool's creator",
                  (int)pids[i]);
}

static volatile sig_atomic_t interrupted;

static void on_sigint(int signo)
{
    interrupted = 1;
}

/* In its own process group: waits on a long task until Ctrl-C, then cleans up. */
static int ctrl_c_child(void *arg)
{
    int fd = *(const int *)arg;
    setpgid(0, 0);
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    mproc_pool *pool;
    mproc_pool_options options = {.workers = 2};
    if (mproc_pool_create(&pool, &options) < 0)
        return 1;
    mproc_result *r;
    mproc_pool_apply_async(pool, sleep_long, NULL, 0, NULL, NULL, NULL, &r);
    char ready = 'r';
    if (write(fd, &ready, 1) != 1)
        return 2;
    int rc = mproc_result_get(r, NULL, NULL, 20000);
    if (rc != -EINTR || !interrupted)
        return 3;
    mproc_pool_terminate(pool);
    if (mproc_result_get(r, NULL, NULL, 10000) != MPROC_EBROKEN)
        return 4;
    mproc_result_destroy(&r);
    mproc_pool_destroy(&pool);
    return test_count_children() == 0 ? 0 : 5;
}

Test(pool, ctrl_c_interrupts_the_wait_and_cleans_up, .timeout = 60)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    mproc_process *child;
    cr_assert_eq(mproc_process_create(&child, ctrl_c_child, &fds[1]), 0);
    cr_assert_eq(mproc_process_start(child), 0);
    char ready;
    cr_assert_eq(read(fds[0], &ready, 1), 1);
    usleep(200000);
    /* What the terminal does on Ctrl-C: SIGINT to the whole foreground group. */
    cr_assert_eq(kill(-mproc_process_pid(child), SIGINT), 0);
    cr_assert_eq(mproc_process_join(child, 30000), 0);
    int code;
    mproc_process_exitcode(child, &code);
    cr_assert_eq(code, 0, "the child's cleanup failed at step %d", code);
    mproc_process_destroy(&child);
}

/* ---- more of the API ---- */

static int put_on_queue(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    int fd;
    if (mproc_task_fd(ctx, 0, &fd) < 0)
        return mproc_task_fail(ctx, "no descriptor");
    mproc_queue *queue;
    int rc = mproc_queue_attach(&queue, fd);
    if (rc < 0)
        return mproc_task_fail(ctx, "attach: %s", mproc_strerror(rc));
    rc = mproc_queue_put(queue, arg, len, 5000);
    mproc_queue_destroy(&queue);
    return rc == 0 ? 0 : mproc_task_fail(ctx, "put: %s", mproc_strerror(rc));
}

Test(pool, queue_made_after_the_pool_reaches_tasks, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    /* Like the tutorial's Manager().Queue(): the workers exist before the queue. */
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    int fd;
    mproc_queue_fd(queue, &fd);
    for (int i = 0; i < 20; i++) {
        mproc_result *r;
        cr_assert_eq(mproc_pool_apply_async_fds(pool, put_on_queue, &i, sizeof(i), &fd, 1, &r), 0);
        cr_assert_eq(mproc_result_get(r, NULL, NULL, 10000), 0, "%s", mproc_result_error(r));
        mproc_result_destroy(&r);
    }
    int seen = 0;
    for (int i = 0; i < 20; i++) {
        int v;
        size_t len;
        cr_assert_eq(mproc_queue_get_into(queue, &v, sizeof(v), &len, 5000), 0);
        seen |= 1 << v;
    }
    cr_assert_eq(seen, (1 << 20) - 1);
    mproc_queue_destroy(&queue);
    mproc_pool_destroy(&pool);
}

Test(pool, wait_many_cancel_fd_and_names, .timeout = 60)
{
    mproc_pool *pool = make_pool(1);
    mproc_result *busy, *queued;
    cr_assert_eq(
        mproc_pool_apply_async(pool, report_pid, &(int){300}, sizeof(int), NULL, NULL, NULL, &busy),
        0);
    cr_assert_eq(mproc_pool_apply_async(pool, report_pid, &(int){300}, sizeof(int), NULL, NULL,
                                        NULL, &queued),
                 0);
    /* With one worker and a window of one task, the second waits: it can be cancelled. */
    usleep(50000);
    int rc = mproc_result_cancel(queued);
    cr_assert(rc == 0 || rc == -EBUSY, "cancel: %s", mproc_strerror(rc));
    if (rc == 0)
        cr_assert_eq(mproc_result_get(queued, NULL, NULL, 1000), MPROC_ECANCELLED);
    cr_assert_eq(mproc_result_cancel(busy), -EBUSY, "a running task cannot be cancelled");

    mproc_result *set[2] = {busy, queued};
    size_t ready;
    cr_assert_eq(mproc_result_wait_many(set, 2, true, &ready, 10000), 0);
    cr_assert_eq(ready, 2);
    int fd;
    cr_assert_eq(mproc_pool_fd(pool, &fd), 0);
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 1000), 1, "the pool's descriptor is not readable");
    mproc_pool_drain_ready(pool);
    mproc_result_destroy(&busy);
    mproc_result_destroy(&queued);

    cr_assert_eq(mproc_task_register("square", square), 0);
    cr_assert_eq(mproc_task_register("square", square), 0, "same name, same function");
    cr_assert_eq(mproc_task_register("square", report_pid), -EEXIST);
    int64_t x = 5;
    mproc_result *r;
    cr_assert_eq(mproc_pool_apply_async_named(pool, "square", &x, sizeof(x), &r), 0);
    cr_assert_eq(get_i64(r), 25);
    mproc_result_destroy(&r);
    cr_assert_eq(mproc_pool_apply_async_named(pool, "nope", &x, sizeof(x), &r), -ENOENT);
    mproc_pool_destroy(&pool);
}

/* ---- imap ---- */

struct counter_source {
    int64_t next;
    int64_t end;
    int64_t value;
};

static int count_up(void *arg, const void **item, size_t *len)
{
    struct counter_source *s = arg;
    if (s->next >= s->end)
        return 0;
    s->value = s->next++;
    *item = &s->value;
    *len = sizeof(s->value);
    return 1;
}

Test(pool, imap_ordered_and_unordered, .timeout = 60)
{
    mproc_pool *pool = make_pool(2);
    for (int ordered = 0; ordered < 2; ordered++) {
        struct counter_source src = {.next = 0, .end = 5000};
        mproc_imap *it;
        cr_assert_eq(mproc_pool_imap(pool, square, count_up, &src, 16, 0, ordered, &it), 0);
        uint64_t seen_sum = 0;
        size_t count = 0, index;
        const void *data;
        size_t len;
        int rc;
        while ((rc = mproc_imap_next(it, &data, &len, &index, 10000)) == 0) {
            if (ordered)
                cr_assert_eq(index, count, "imap out of order");
            cr_assert_eq(*(const int64_t *)data, (int64_t)index * (int64_t)index);
            seen_sum += index;
            count++;
        }
        cr_assert_eq(rc, MPROC_ECLOSED, "imap ended with %s", mproc_strerror(rc));
        cr_assert_eq(count, 5000);
        cr_assert_eq(seen_sum, 4999ull * 5000 / 2);
        mproc_imap_destroy(&it);
    }
    mproc_pool_destroy(&pool);
}

static long resident_kib(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    }
    if (f)
        fclose(f);
    return kib;
}

static int identity(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return mproc_task_return(ctx, arg, len);
}

Test(pool, imap_over_ten_million_items_keeps_memory_bounded, .timeout = 600)
{
    mproc_pool *pool = make_pool(2);
    struct counter_source src = {.next = 0, .end = 10000000};
    mproc_imap *it;
    cr_assert_eq(mproc_pool_imap(pool, identity, count_up, &src, 1000, 16000, true, &it), 0);
    long start_kib = 0, peak_kib = 0;
    size_t count = 0, index;
    const void *data;
    size_t len;
    int rc;
    while ((rc = mproc_imap_next(it, &data, &len, &index, 60000)) == 0) {
        cr_assert_eq(*(const int64_t *)data, (int64_t)count);
        if (++count == 100000)
            start_kib = resident_kib();
        if (count % 1000000 == 0) {
            long now = resident_kib();
            peak_kib = now > peak_kib ? now : peak_kib;
        }
    }
    cr_assert_eq(rc, MPROC_ECLOSED);
    cr_assert_eq(count, 10000000);
    /*
     * The input alone would be 80 MB; a window of 16,000 items is a few
     * hundred KB. (AddressSanitizer keeps freed memory in quarantine, so its
     * resident size says nothing about what the iterator holds.)
     */
#ifndef __SANITIZE_ADDRESS__
    cr_assert_lt(peak_kib - start_kib, 16 * 1024, "grew from %ld to %ld KiB", start_kib, peak_kib);
#else
    (void)start_kib;
    (void)peak_kib;
#endif
    mproc_imap_destroy(&it);
    mproc_pool_destroy(&pool);
}

Test(pool, bad_input, .timeout = 30)
{
    mproc_pool *pool = NULL;
    mproc_pool_options bad = {.workers = -1};
    cr_assert_eq(mproc_pool_create(&pool, &bad), -EINVAL);
    cr_assert_eq(mproc_pool_create(NULL, NULL), -EINVAL);
    pool = make_pool(1);
    cr_assert_eq(mproc_pool_apply_async(pool, NULL, NULL, 0, NULL, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(mproc_pool_apply_async(pool, square, NULL, 8, NULL, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(mproc_pool_map_async(pool, square, NULL, 3, 0, NULL), -EINVAL);
    cr_assert_eq(mproc_pool_destroy(&pool), 0);
    cr_assert_eq(mproc_pool_destroy(&pool), -EINVAL);
    cr_assert_eq(mproc_pool_apply_async(pool, square, NULL, 0, NULL, NULL, NULL, NULL), -EINVAL);
    cr_assert_eq(mproc_pool_workers(NULL), -EINVAL);
    cr_assert_eq(mproc_result_get(NULL, NULL, NULL, 0), -EINVAL);
}
