/*
 * bench_pool: what the pool costs per task, with tasks that do nothing.
 *   apply_async: submit N tasks, then get every result (throughput)
 *   apply+get:   one task at a time, waiting for each (round-trip latency)
 *   map:         N tiny items with the default chunks (items/s)
 * Two workers (the machine's CPUs), as the Python reference uses.
 * Median of rounds; one JSON line per figure.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <mproc.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int empty_task(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return 0;
}

static int echo_task(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return mproc_task_return(ctx, arg, len);
}

static double apply_async_round(mproc_pool *pool, size_t n)
{
    mproc_result **results = malloc(n * sizeof(mproc_result *));
    if (!results)
        bench_die("out of memory");
    double t0 = bench_now_s();
    for (size_t i = 0; i < n; i++) {
        if (mproc_pool_apply_async(pool, empty_task, &i, sizeof(i), NULL, NULL, NULL, &results[i]) <
            0)
            bench_die("apply_async failed");
    }
    for (size_t i = 0; i < n; i++) {
        if (mproc_result_get(results[i], NULL, NULL, MPROC_WAIT_FOREVER) != 0)
            bench_die("a task failed");
        mproc_result_destroy(&results[i]);
    }
    double t = bench_now_s() - t0;
    free(results);
    return t;
}

static double apply_get_round(mproc_pool *pool, size_t n)
{
    double t0 = bench_now_s();
    for (size_t i = 0; i < n; i++) {
        if (mproc_pool_apply(pool, empty_task, &i, sizeof(i), NULL, NULL) != 0)
            bench_die("apply failed");
    }
    return bench_now_s() - t0;
}

static double map_round(mproc_pool *pool, const struct iovec *items, size_t n)
{
    mproc_result *result;
    double t0 = bench_now_s();
    if (mproc_pool_map(pool, echo_task, items, n, 0, &result) != 0)
        bench_die("map failed");
    double t = bench_now_s() - t0;
    mproc_result_destroy(&result);
    return t;
}

int main(int argc, char **argv)
{
    int rounds = bench_arg_int(argc, argv, "--rounds", 5);
    double scale = bench_arg_int(argc, argv, "--scale", 100) / 100.0;
    if (rounds > BENCH_MAX_ROUNDS)
        rounds = BENCH_MAX_ROUNDS;
    size_t n_async = (size_t)(400000 * scale), n_sync = (size_t)(20000 * scale),
           n_map = (size_t)(4000000 * scale);
    mproc_pool *pool;
    mproc_pool_options options = {.workers = 2};
    if (mproc_pool_create(&pool, &options) < 0)
        bench_die("cannot create the pool");
    uint64_t *values = malloc(n_map * sizeof(uint64_t));
    struct iovec *items = malloc(n_map * sizeof(struct iovec));
    if (!values || !items)
        bench_die("out of memory");
    for (size_t i = 0; i < n_map; i++) {
        values[i] = i;
        items[i] = (struct iovec){.iov_base = &values[i], .iov_len = sizeof(values[i])};
    }
    double async_s[BENCH_MAX_ROUNDS], sync_s[BENCH_MAX_ROUNDS], map_s[BENCH_MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
        async_s[r] = apply_async_round(pool, n_async);
        sync_s[r] = apply_get_round(pool, n_sync);
        map_s[r] = map_round(pool, items, n_map);
    }
    bench_report("pool", "apply_async+get, empty tasks",
                 (double)n_async / bench_median(async_s, rounds), "tasks/s", NULL, 0);
    bench_report("pool", "apply then get, one at a time",
                 bench_median(sync_s, rounds) / (double)n_sync * 1e6, "us", NULL, 0);
    bench_report("pool", "map, 8-byte items, default chunks",
                 (double)n_map / bench_median(map_s, rounds), "items/s", NULL, 0);
    mproc_pool_destroy(&pool);
    free(items);
    free(values);
    return 0;
}
