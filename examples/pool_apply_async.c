/*
 * pool_apply_async: the tutorial's Pool(3) running ten tasks with
 * apply_async(), then close() and join(). Each task sleeps a random time and
 * reports which worker process ran it and how long it took.
 */
#define _POSIX_C_SOURCE 200809L
#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int worker(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    int a = *(const int *)arg;
    double t_start = now_s();
    printf("%d Start execution,Process number is %d\n", a, (int)getpid());
    fflush(stdout);
    /* random.random() * 2 in the tutorial: up to two seconds. */
    unsigned seed = (unsigned)(a * 7919 + getpid());
    long ms = rand_r(&seed) % 2000;
    struct timespec pause = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&pause, NULL);
    double t_stop = now_s();
    printf("%d Execution complete,time consuming %0.2f\n", a, t_stop - t_start);
    fflush(stdout);
    return 0;
}

int main(void)
{
    mproc_pool *po;
    mproc_pool_options options = {.workers = 3}; /* Pool(3) */
    int rc = mproc_pool_create(&po, &options);
    if (rc < 0) {
        fprintf(stderr, "pool_apply_async: %s\n", mproc_strerror(rc));
        return 1;
    }
    for (int i = 0; i < 10; i++) {
        rc = mproc_pool_apply_async(po, worker, &i, sizeof(i), NULL, NULL, NULL, NULL);
        if (rc < 0) {
            fprintf(stderr, "pool_apply_async: task %d: %s\n", i, mproc_strerror(rc));
            return 1;
        }
    }
    printf("----start----\n");
    fflush(stdout);
    mproc_pool_close(po);
    mproc_pool_join(po, MPROC_WAIT_FOREVER);
    printf("-----end-----\n");
    mproc_pool_destroy(&po);
    return 0;
}
