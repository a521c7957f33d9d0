/*
 * pool_prog: a program run under mpirun by test_mpi.c, one scenario per run.
 * Rank 0 checks every result itself and prints "ok ..." last; any failure
 * prints "FAIL ..." and exits 1. The other ranks only serve.
 */
#define _GNU_SOURCE
#include <mproc.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL line %d: ", __LINE__);                                                    \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t get_u64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Squares a uint64 and says which rank (pid) did it. */
static int square(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    if (len != sizeof(uint64_t))
        return mproc_task_fail(ctx, "bad length %zu", len);
    uint64_t out[2] = {get_u64(arg) * get_u64(arg), (uint64_t)getpid()};
    return mproc_task_return(ctx, out, sizeof(out));
}

/* Returns the bytes reversed, with a checksum of the input in front. */
static int reverse(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    const unsigned char *in = arg;
    unsigned char *out = malloc(len + 8);
    if (!out)
        return mproc_task_fail(ctx, "no memory for %zu bytes", len);
    uint64_t sum = 0;
    for (size_t i = 0; i < len; i++) {
        sum = sum * 31 + in[i];
        out[8 + len - 1 - i] = in[i];
    }
    memcpy(out, &sum, 8);
    int rc = mproc_task_return(ctx, out, len + 8);
    free(out);
    return rc;
}

/* The checksum and length of the bytes: a huge argument without a huge answer. */
static int digest(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    const unsigned char *in = arg;
    uint64_t out[2] = {0, (uint64_t)len};
    for (size_t i = 0; i < len; i++)
        out[0] = out[0] * 31 + in[i];
    return mproc_task_return(ctx, out, sizeof(out));
}

static int sleep_ms(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    uint64_t ms = get_u64(arg);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    uint64_t pid = (uint64_t)getpid();
    return mproc_task_return(ctx, &pid, sizeof(pid));
}

static int fail_task(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return mproc_task_fail(ctx, "refused item %llu", (unsigned long long)get_u64(arg));
}

static int crash(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    raise(SIGKILL);
    return 0;
}

static int not_registered(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return 0;
}

static int init_rank(void *arg)
{
    /* The "initfail" scenario: rank 2's initializer fails. */
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    return arg && rank && strcmp(rank, "2") == 0 ? 7 : 0;
}

/* Adds pid to the n distinct ones in pids (room for cap) if it is new there. */
static void note_pid(uint64_t *pids, int *n, int cap, uint64_t pid)
{
    for (int k = 0; k < *n; k++) {
        if (pids[k] == pid)
            return;
    }
    if (*n < cap)
        pids[(*n)++] = pid;
}

static mproc_pool *start(const mproc_pool_options *options)
{
    mproc_pool *pool = NULL;
    int rc = mproc_pool_create(&pool, options);
    CHECK(rc == 0, "create: %s", mproc_strerror(rc));
    if (!pool)
        exit(0); /* a worker rank: it has served */
    CHECK(mproc_pool_backend_of(pool) == MPROC_POOL_MPI, "backend %d", mproc_pool_backend_of(pool));
    return pool;
}

static void finish(mproc_pool *pool)
{
    CHECK(mproc_pool_close(pool) == 0, "close");
    int rc = mproc_pool_join(pool, 30000);
    CHECK(rc == 0, "join: %s", mproc_strerror(rc));
    CHECK(mproc_pool_destroy(&pool) == 0, "destroy");
}

static int scenario_tasks(long n)
{
    mproc_pool *pool = start(NULL);
    int workers = mproc_pool_workers(pool);
    mproc_result **results = calloc((size_t)n, sizeof(*results));
    CHECK(results, "calloc");
    for (long i = 0; i < n; i++) {
        uint64_t x = (uint64_t)i;
        int rc = mproc_pool_apply_async(pool, square, &x, sizeof(x), NULL, NULL, NULL, &results[i]);
        CHECK(rc == 0, "apply_async %ld: %s", i, mproc_strerror(rc));
    }
    uint64_t pids[64] = {0};
    int distinct = 0;
    for (long i = 0; i < n; i++) {
        const void *data;
        size_t len;
        int rc = mproc_result_get(results[i], &data, &len, 60000);
        CHECK(rc == 0 && len == 16, "result %ld: %s", i, mproc_strerror(rc));
        CHECK(get_u64(data) == (uint64_t)i * (uint64_t)i, "wrong square for %ld", i);
        uint64_t pid = get_u64((const char *)data + 8);
        CHECK(pid != (uint64_t)getpid(), "task ran on rank 0");
        note_pid(pids, &distinct, 64, pid);
        mproc_result_destroy(&results[i]);
    }
    free(results);
    /* map, in order, with chunks. */
    size_t count = 10000;
    uint64_t *items = malloc(count * sizeof(uint64_t));
    struct iovec *iov = malloc(count * sizeof(*iov));
    CHECK(items && iov, "malloc");
    for (size_t i = 0; i < count; i++) {
        items[i] = i + 1;
        iov[i].iov_base = &items[i];
        iov[i].iov_len = sizeof(uint64_t);
    }
    mproc_result *map;
    int rc = mproc_pool_map(pool, square, iov, count, 0, &map);
    CHECK(rc == 0, "map: %s", mproc_strerror(rc));
    for (size_t i = 0; i < count; i++) {
        const void *data;
        size_t len;
        rc = mproc_result_item(map, i, &data, &len);
        CHECK(rc == 0 && len == 16 && get_u64(data) == (i + 1) * (i + 1), "map item %zu", i);
    }
    mproc_result_destroy(&map);
    free(items);
    free(iov);
    finish(pool);
    printf("ok tasks=%ld workers=%d ranks_used=%d\n", n, workers, distinct);
    return 0;
}

static int scenario_big(size_t size)
{
    mproc_pool *pool = start(NULL);
    unsigned char *arg = malloc(size);
    CHECK(arg, "malloc %zu", size);
    uint64_t sum = 0;
    for (size_t i = 0; i < size; i++) {
        arg[i] = (unsigned char)(i * 7 + (i >> 12));
        sum = sum * 31 + arg[i];
    }
    /*
     * Up to 64 MiB the bytes come back reversed; beyond, only their digest
     * (a result takes the same path in parts as an argument, and each
     * fresh GiB costs seconds of page faults on a small VM).
     */
    bool whole = size <= ((size_t)64 << 20);
    mproc_result *r;
    int rc =
        mproc_pool_apply_async(pool, whole ? reverse : digest, arg, size, NULL, NULL, NULL, &r);
    CHECK(rc == 0, "apply_async: %s", mproc_strerror(rc));
    const void *data;
    size_t len;
    rc = mproc_result_get(r, &data, &len, MPROC_WAIT_FOREVER);
    CHECK(rc == 0, "get: %s (%s)", mproc_strerror(rc), mproc_result_error(r));
    CHECK(len == (whole ? size + 8 : 16), "length %zu", len);
    CHECK(get_u64(data) == sum, "the worker saw other bytes");
    const unsigned char *out = (const unsigned char *)data + 8;
    if (!whole)
        CHECK(get_u64(out) == size, "the worker saw %llu bytes", (unsigned long long)get_u64(out));
    for (size_t i = 0; whole && i < size; i++)
        CHECK(out[size - 1 - i] == arg[i], "byte %zu came back wrong", i);
    mproc_result_destroy(&r);
    free(arg);
    finish(pool);
    printf("ok big=%zu\n", size);
    return 0;
}

/* A task over the timeout fails, the tasks behind it run elsewhere, once, and the rank returns. */
static int scenario_timeout(void)
{
    mproc_pool_options o = {.task_timeout_ms = 300};
    mproc_pool *pool = start(&o);
    uint64_t long_ms = 2000, short_ms = 20;
    mproc_result *slow;
    CHECK(mproc_pool_apply_async(pool, sleep_ms, &long_ms, 8, NULL, NULL, NULL, &slow) == 0, "s");
    enum { N = 40 };
    mproc_result *quick[N];
    for (int i = 0; i < N; i++)
        CHECK(mproc_pool_apply_async(pool, sleep_ms, &short_ms, 8, NULL, NULL, NULL, &quick[i]) ==
                  0,
              "q");
    int rc = mproc_result_get(slow, NULL, NULL, 10000);
    CHECK(rc == -ETIMEDOUT, "slow task: %s", mproc_strerror(rc));
    const char *why = mproc_result_error(slow);
    CHECK(why && strstr(why, "timed out") && strstr(why, "MPI rank"), "message: %s",
          why ? why : "(none)");
    for (int i = 0; i < N; i++) {
        rc = mproc_result_get(quick[i], NULL, NULL, 30000);
        CHECK(rc == 0, "quick %d: %s (%s)", i, mproc_strerror(rc), mproc_result_error(quick[i]));
        mproc_result_destroy(&quick[i]);
    }
    /* Once its long task is over, the rank set aside takes work again: every rank is used. */
    struct timespec wait = {2, 0};
    nanosleep(&wait, NULL);
    int workers = mproc_pool_workers(pool);
    uint64_t pause_ms = 100;
    enum { M = 24 };
    mproc_result *again[M];
    for (int i = 0; i < M; i++)
        CHECK(mproc_pool_apply_async(pool, sleep_ms, &pause_ms, 8, NULL, NULL, NULL, &again[i]) ==
                  0,
              "again");
    uint64_t pids[M] = {0};
    int distinct = 0;
    for (int i = 0; i < M; i++) {
        const void *data;
        size_t len;
        CHECK(mproc_result_get(again[i], &data, &len, 30000) == 0, "again %d", i);
        note_pid(pids, &distinct, M, get_u64(data));
        mproc_result_destroy(&again[i]);
    }
    CHECK(distinct == workers, "%d of %d ranks took tasks after the timeout", distinct, workers);
    mproc_result_destroy(&slow);
    finish(pool);
    printf("ok timeout\n");
    return 0;
}

static int scenario_errors(void)
{
    mproc_pool *pool = start(NULL);
    uint64_t x = 42;
    mproc_result *r;
    CHECK(mproc_pool_apply_async(pool, fail_task, &x, 8, NULL, NULL, NULL, &r) == 0, "submit");
    int rc = mproc_result_get(r, NULL, NULL, 30000);
    CHECK(rc == MPROC_ETASKFAILED, "failed task: %s", mproc_strerror(rc));
    CHECK(strcmp(mproc_result_error(r), "refused item 42") == 0, "message %s",
          mproc_result_error(r));
    mproc_result_destroy(&r);
    rc = mproc_pool_apply_async(pool, not_registered, &x, 8, NULL, NULL, NULL, &r);
    CHECK(rc == -ENOENT, "unregistered: %s", mproc_strerror(rc));
    int fd = 0;
    rc = mproc_pool_apply_async_fds(pool, square, &x, 8, &fd, 1, &r);
    CHECK(rc == -ENOTSUP, "fds: %s", mproc_strerror(rc));
    CHECK(mproc_pool_apply_async_named(pool, "square", &x, 8, &r) == 0, "named");
    const void *data;
    size_t len;
    CHECK(mproc_result_get(r, &data, &len, 30000) == 0 && get_u64(data) == 42 * 42, "named");
    mproc_result_destroy(&r);
    finish(pool);
    printf("ok errors\n");
    return 0;
}

/* Rank 2's initializer fails: the pool goes on with the others. */
static int scenario_initfail(void)
{
    mproc_pool_options o = {.initializer = init_rank, .initializer_arg = (void *)1};
    mproc_pool *pool = start(&o);
    for (uint64_t i = 0; i < 200; i++) {
        void *out;
        size_t len;
        int rc = mproc_pool_apply(pool, square, &i, 8, &out, &len);
        CHECK(rc == 0 && get_u64(out) == i * i, "task %llu: %s", (unsigned long long)i,
              mproc_strerror(rc));
        free(out);
    }
    finish(pool);
    printf("ok initfail\n");
    return 0;
}

/* terminate while ranks run long tasks: results fail at once, destroy returns. */
static int scenario_terminate(void)
{
    mproc_pool *pool = start(NULL);
    uint64_t ms = 1500;
    mproc_result *r[8];
    for (int i = 0; i < 8; i++)
        CHECK(mproc_pool_apply_async(pool, sleep_ms, &ms, 8, NULL, NULL, NULL, &r[i]) == 0, "a");
    struct timespec ts = {0, 300 * 1000000L};
    nanosleep(&ts, NULL);
    CHECK(mproc_pool_terminate(pool) == 0, "terminate");
    for (int i = 0; i < 8; i++) {
        int rc = mproc_result_get(r[i], NULL, NULL, 0);
        CHECK(rc == MPROC_EBROKEN, "result %d: %s", i, mproc_strerror(rc));
        mproc_result_destroy(&r[i]);
    }
    CHECK(mproc_pool_join(pool, 30000) == 0, "join");
    CHECK(mproc_pool_destroy(&pool) == 0, "destroy");
    printf("ok terminate\n");
    return 0;
}

/* A task kills its own rank: MPI ends the job; the test checks nothing hangs. */
static int scenario_crash(void)
{
    mproc_pool *pool = start(NULL);
    uint64_t x = 1;
    mproc_result *r;
    CHECK(mproc_pool_apply_async(pool, crash, &x, 8, NULL, NULL, NULL, &r) == 0, "submit");
    int rc = mproc_result_get(r, NULL, NULL, 60000);
    printf("crash result: %s\n", mproc_strerror(rc));
    return 2;
}

struct counter {
    uint64_t next, end, item;
};

static int count_source(void *arg, const void **item, size_t *len)
{
    struct counter *c = arg;
    if (c->next == c->end)
        return 0;
    c->item = c->next++;
    *item = &c->item;
    *len = sizeof(c->item);
    return 1;
}

static int callbacks_run;

static void on_done(mproc_result *result, void *arg)
{
    callbacks_run++;
}

/* imap over lazily made items, callbacks, cancel and wait_many, as on one machine. */
static int scenario_iterators(long n)
{
    mproc_pool *pool = start(NULL);
    struct counter c = {0, (uint64_t)n, 0};
    mproc_imap *it;
    CHECK(mproc_pool_imap(pool, square, count_source, &c, 64, 0, true, &it) == 0, "imap");
    for (long i = 0; i < n; i++) {
        const void *data;
        size_t len, index;
        int rc = mproc_imap_next(it, &data, &len, &index, 60000);
        CHECK(rc == 0 && index == (size_t)i && get_u64(data) == (uint64_t)i * (uint64_t)i,
              "imap item %ld: %s", i, mproc_strerror(rc));
    }
    const void *data;
    size_t len, index;
    CHECK(mproc_imap_next(it, &data, &len, &index, 1000) == MPROC_ECLOSED, "imap end");
    mproc_imap_destroy(&it);
    enum { K = 200 };
    mproc_result *r[K];
    for (int i = 0; i < K; i++) {
        uint64_t x = (uint64_t)i;
        CHECK(mproc_pool_apply_async(pool, square, &x, 8, on_done, on_done, NULL, &r[i]) == 0, "a");
    }
    size_t ready = 0;
    CHECK(mproc_result_wait_many(r, K, true, &ready, 60000) == 0 && ready == K, "wait_many");
    for (int i = 0; i < K; i++)
        mproc_result_destroy(&r[i]);
    finish(pool);
    CHECK(callbacks_run == K, "%d callbacks for %d results", callbacks_run, K);
    printf("ok iterators=%ld\n", n);
    return 0;
}

/* Tasks/s for docs/CLUSTER.md: empty tasks, apply_async then get in a window. */
static int scenario_rate(long n)
{
    mproc_pool *pool = start(NULL);
    mproc_result **results = calloc((size_t)n, sizeof(*results));
    CHECK(results, "calloc");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        uint64_t x = (uint64_t)i;
        CHECK(mproc_pool_apply_async(pool, square, &x, 8, NULL, NULL, NULL, &results[i]) == 0, "a");
    }
    for (long i = 0; i < n; i++) {
        CHECK(mproc_result_get(results[i], NULL, NULL, MPROC_WAIT_FOREVER) == 0, "get");
        mproc_result_destroy(&results[i]);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("{\"workers\": %d, \"tasks\": %ld, \"seconds\": %.6f, \"tasks_per_s\": %.0f}\n",
           mproc_pool_workers(pool), n, s, (double)n / s);
    free(results);
    finish(pool);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const struct {
        const char *name;
        mproc_task_fn fn;
    } tasks[] = {{"square", square},     {"reverse", reverse}, {"digest", digest},
                 {"sleep_ms", sleep_ms}, {"fail", fail_task},  {"crash", crash}};
    for (size_t i = 0; i < sizeof(tasks) / sizeof(tasks[0]); i++)
        mproc_task_register(tasks[i].name, tasks[i].fn);
    const char *what = argc > 1 ? argv[1] : "tasks";
    long n = argc > 2 ? atol(argv[2]) : 10000;
    if (strcmp(what, "tasks") == 0)
        return scenario_tasks(n);
    if (strcmp(what, "big") == 0)
        return scenario_big((size_t)strtoull(argv[2], NULL, 10));
    if (strcmp(what, "timeout") == 0)
        return scenario_timeout();
    if (strcmp(what, "errors") == 0)
        return scenario_errors();
    if (strcmp(what, "initfail") == 0)
        return scenario_initfail();
    if (strcmp(what, "terminate") == 0)
        return scenario_terminate();
    if (strcmp(what, "crash") == 0)
        return scenario_crash();
    if (strcmp(what, "iterators") == 0)
        return scenario_iterators(n);
    if (strcmp(what, "rate") == 0)
        return scenario_rate(n);
    fprintf(stderr, "pool_prog: unknown scenario '%s'\n", what);
    return 2;
}
