/*
 * bench_process: start+join latency of mproc_process against the OS floor,
 * a raw fork()+_exit()+waitpid(). The two alternate within each round so that
 * both see the same machine noise; the figure is the median over rounds.
 * Prints one JSON line per figure (see bench/run).
 */
#define _GNU_SOURCE
#include "bench.h"

#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int empty_target(void *arg)
{
    return 0;
}

/* The whole life of a handle: create, start, join, destroy. */
static double mproc_lifecycle_round(int iterations)
{
    double t0 = bench_now_s();
    for (int i = 0; i < iterations; i++) {
        mproc_process *proc;
        if (mproc_process_create(&proc, empty_target, NULL) < 0 || mproc_process_start(proc) < 0)
            bench_die("mproc start failed");
        mproc_process_join(proc, MPROC_WAIT_FOREVER);
        mproc_process_destroy(&proc);
    }
    return (bench_now_s() - t0) / iterations;
}

/* start+join alone: the handles are made before and destroyed after the clock. */
static double mproc_start_join_round(mproc_process **procs, int iterations)
{
    for (int i = 0; i < iterations; i++) {
        if (mproc_process_create(&procs[i], empty_target, NULL) < 0)
            bench_die("mproc create failed");
    }
    double t0 = bench_now_s();
    for (int i = 0; i < iterations; i++) {
        if (mproc_process_start(procs[i]) < 0)
            bench_die("mproc start failed");
        mproc_process_join(procs[i], MPROC_WAIT_FOREVER);
    }
    double elapsed = bench_now_s() - t0;
    for (int i = 0; i < iterations; i++)
        mproc_process_destroy(&procs[i]);
    return elapsed / iterations;
}

static double fork_round(int iterations)
{
    double t0 = bench_now_s();
    for (int i = 0; i < iterations; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0)
            bench_die("fork failed");
        waitpid(pid, NULL, 0);
    }
    return (bench_now_s() - t0) / iterations;
}

int main(int argc, char **argv)
{
    int rounds = bench_arg_int(argc, argv, "--rounds", 7);
    int iterations = bench_arg_int(argc, argv, "--iterations", 1000);
    double start_join[BENCH_MAX_ROUNDS], lifecycle[BENCH_MAX_ROUNDS], floor_s[BENCH_MAX_ROUNDS];
    if (rounds > BENCH_MAX_ROUNDS)
        rounds = BENCH_MAX_ROUNDS;
    mproc_process **procs = calloc((size_t)iterations, sizeof(*procs));
    if (!procs)
        bench_die("out of memory");
    for (int r = 0; r < rounds; r++) {
        floor_s[r] = fork_round(iterations);
        start_join[r] = mproc_start_join_round(procs, iterations);
        lifecycle[r] = mproc_lifecycle_round(iterations);
    }
    double floor_us = bench_median(floor_s, rounds) * 1e6;
    bench_report("process", "start+join", bench_median(start_join, rounds) * 1e6, "us",
                 "fork+waitpid (OS floor)", floor_us);
    bench_report("process", "create+start+join+destroy", bench_median(lifecycle, rounds) * 1e6,
                 "us", "fork+waitpid (OS floor)", floor_us);
    free(procs);
    return 0;
}
