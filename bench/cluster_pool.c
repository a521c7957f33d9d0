/*
 * cluster_pool: empty-task throughput of a pool, for bench/cluster.py.
 * Under mpirun the pool's workers are the other ranks (libmproc_mpi's
 * AUTO backend); started directly, they are local processes. Prints one
 * JSON line on rank 0: tasks per second for apply_async + get of N tasks.
 *   cluster_pool TASKS [WORKERS]   (WORKERS: for the local pool)
 */
#define _GNU_SOURCE
#include <mproc.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int echo(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return mproc_task_return(ctx, arg, len);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000;
    mproc_task_register("echo", echo);
    mproc_pool_options options = {.workers = argc > 2 ? atoi(argv[2]) : 0};
    mproc_pool *pool = NULL;
    int rc = mproc_pool_create(&pool, &options);
    if (rc < 0) {
        fprintf(stderr, "cluster_pool: %s\n", mproc_strerror(rc));
        return 1;
    }
    if (!pool)
        return 0; /* a worker rank */
    mproc_result **results = calloc((size_t)n, sizeof(*results));
    if (!results)
        return 1;
    double t0 = now_s();
    for (long i = 0; i < n && rc == 0; i++) {
        uint64_t x = (uint64_t)i;
        rc = mproc_pool_apply_async(pool, echo, &x, sizeof(x), NULL, NULL, NULL, &results[i]);
    }
    for (long i = 0; i < n && rc == 0; i++) {
        rc = mproc_result_get(results[i], NULL, NULL, MPROC_WAIT_FOREVER);
        mproc_result_destroy(&results[i]);
    }
    double seconds = now_s() - t0;
    printf("{\"backend\": \"%s\", \"workers\": %d, \"tasks\": %ld, \"tasks_per_s\": %.0f}\n",
           mproc_pool_backend_of(pool) == MPROC_POOL_MPI ? "mpi" : "local",
           mproc_pool_workers(pool), n, (double)n / seconds);
    free(results);
    mproc_pool_close(pool);
    mproc_pool_join(pool, MPROC_WAIT_FOREVER);
    mproc_pool_destroy(&pool);
    return rc == 0 ? 0 : 1;
}
