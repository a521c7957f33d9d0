/*
 * bench_queue: messages/s and GB/s through mproc_queue for 64 B, 4 KiB and
 * 1 MiB messages, with 1 producer -> 1 consumer and 2 -> 2 processes, and
 * the same through a plain pipe (the OS floor: one write() and one read()
 * per message, 1 -> 1). Children wait for a go signal so that only the
 * transfer is timed. Median of rounds; one JSON line per figure.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <mproc.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct job {
    mproc_queue *queue;
    int go_fd;
    int pipe_fd;
    size_t size;
    uint64_t count;
    bool batch;
};

static void wait_go(int fd)
{
    char byte;
    if (read(fd, &byte, 1) != 1)
        _exit(3);
}

static int produce(void *arg)
{
    const struct job *job = arg;
    unsigned char *buf = calloc(1, job->size);
    wait_go(job->go_fd);
    if (job->batch) {
        struct iovec msgs[256];
        for (int i = 0; i < 256; i++)
            msgs[i] = (struct iovec){.iov_base = buf, .iov_len = job->size};
        for (uint64_t sent = 0; sent < job->count;) {
            size_t n = job->count - sent < 256 ? (size_t)(job->count - sent) : 256, done;
            int rc = mproc_queue_put_many(job->queue, msgs, n, &done, MPROC_WAIT_FOREVER);
            if (rc < 0) {
                fprintf(stderr, "bench_queue: put_many: %s\n", mproc_strerror(rc));
                return 1;
            }
            sent += done;
        }
    } else {
        for (uint64_t i = 0; i < job->count; i++) {
            int rc = mproc_queue_put(job->queue, buf, job->size, MPROC_WAIT_FOREVER);
            if (rc < 0) {
                fprintf(stderr, "bench_queue: put: %s\n", mproc_strerror(rc));
                return 1;
            }
        }
    }
    free(buf);
    return 0;
}

static int consume(void *arg)
{
    const struct job *job = arg;
    size_t cap = job->batch ? 64 * 1024 : job->size;
    unsigned char *buf = malloc(cap);
    wait_go(job->go_fd);
    uint64_t got = 0;
    while (got < job->count) {
        size_t len, n = 1;
        int rc;
        if (job->batch) {
            struct iovec msgs[1024];
            size_t max = job->count - got < 1024 ? (size_t)(job->count - got) : 1024;
            rc = mproc_queue_get_many(job->queue, buf, cap, msgs, max, &n, MPROC_WAIT_FOREVER);
        } else {
            rc = mproc_queue_get_into(job->queue, buf, cap, &len, MPROC_WAIT_FOREVER);
        }
        if (rc < 0) {
            fprintf(stderr, "bench_queue: get: %s\n", mproc_strerror(rc));
            return 1;
        }
        got += n;
    }
    free(buf);
    return 0;
}

static int pipe_write(void *arg)
{
    const struct job *job = arg;
    unsigned char *buf = calloc(1, job->size);
    wait_go(job->go_fd);
    for (uint64_t i = 0; i < job->count; i++) {
        for (size_t off = 0; off < job->size;) {
            ssize_t n = write(job->pipe_fd, buf + off, job->size - off);
            if (n <= 0)
                return 1;
            off += (size_t)n;
        }
    }
    free(buf);
    return 0;
}

static int pipe_read(void *arg)
{
    const struct job *job = arg;
    unsigned char *buf = malloc(job->size);
    wait_go(job->go_fd);
    for (uint64_t i = 0; i < job->count; i++) {
        for (size_t off = 0; off < job->size;) {
            ssize_t n = read(job->pipe_fd, buf + off, job->size - off);
            if (n <= 0)
                return 1;
            off += (size_t)n;
        }
    }
    free(buf);
    return 0;
}

/* Starts the children, lets them go together, returns the seconds until all have ended. */
static double run_children(mproc_target_fn *targets, struct job *jobs, int n, int go_wr)
{
    mproc_process *procs[8];
    for (int i = 0; i < n; i++) {
        if (mproc_process_create(&procs[i], targets[i], &jobs[i]) < 0 ||
            mproc_process_start(procs[i]) < 0)
            bench_die("cannot start a child");
    }
    double t0 = bench_now_s();
    char go[8] = {0};
    if (n < 1 || n > 8 || write(go_wr, go, (size_t)n) != (ssize_t)n)
        bench_die("cannot start the clock");
    for (int i = 0; i < n; i++) {
        int code = -1;
        mproc_process_join(procs[i], MPROC_WAIT_FOREVER);
        mproc_process_exitcode(procs[i], &code);
        mproc_process_destroy(&procs[i]);
        if (code != 0)
            bench_die("a child failed");
    }
    return bench_now_s() - t0;
}

static double queue_round(size_t size, int pairs, uint64_t total, bool batch)
{
    int go[2];
    mproc_queue *queue;
    if (pipe(go) < 0 || mproc_queue_create(&queue, 0, 0) < 0)
        bench_die("setup failed");
    struct job jobs[8];
    mproc_target_fn targets[8];
    for (int i = 0; i < 2 * pairs; i++) {
        jobs[i] = (struct job){.queue = queue,
                               .go_fd = go[0],
                               .size = size,
                               .count = total / (uint64_t)pairs,
                               .batch = batch};
        targets[i] = i < pairs ? consume : produce;
    }
    double t = run_children(targets, jobs, 2 * pairs, go[1]);
    mproc_queue_destroy(&queue);
    close(go[0]);
    close(go[1]);
    return t;
}

static double pipe_round(size_t size, uint64_t total)
{
    int go[2], data[2];
    if (pipe(go) < 0 || pipe(data) < 0)
        bench_die("setup failed");
    struct job jobs[2] = {
        {.go_fd = go[0], .pipe_fd = data[0], .size = size, .count = total},
        {.go_fd = go[0], .pipe_fd = data[1], .size = size, .count = total},
    };
    mproc_target_fn targets[2] = {pipe_read, pipe_write};
    double t = run_children(targets, jobs, 2, go[1]);
    close(go[0]);
    close(go[1]);
    close(data[0]);
    close(data[1]);
    return t;
}

static void report(const char *name, size_t size, uint64_t total, double *secs, int rounds,
                   double pipe_secs)
{
    double t = bench_median(secs, rounds);
    bench_report("queue", name, (double)total / t, "msg/s", "pipe 1->1 (OS floor)",
                 (double)total / pipe_secs);
    char gb_name[80];
    snprintf(gb_name, sizeof(gb_name), "%s GB/s", name);
    bench_report("queue", gb_name, (double)total * (double)size / t / 1e9, "GB/s",
                 "pipe 1->1 (OS floor)", (double)total * (double)size / pipe_secs / 1e9);
}

int main(int argc, char **argv)
{
    int rounds = bench_arg_int(argc, argv, "--rounds", 5);
    double scale = bench_arg_int(argc, argv, "--scale", 100) / 100.0;
    if (rounds > BENCH_MAX_ROUNDS)
        rounds = BENCH_MAX_ROUNDS;
    static const struct {
        const char *label;
        size_t size;
        uint64_t total;
    } sizes[] = {
        {"64B", 64, 4000000},
        {"4KiB", 4096, 400000},
        {"1MiB", 1 << 20, 4000},
    };
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        uint64_t total = (uint64_t)((double)sizes[s].total * scale) & ~(uint64_t)1;
        double pipe_secs[BENCH_MAX_ROUNDS], one[BENCH_MAX_ROUNDS], two[BENCH_MAX_ROUNDS],
            batch[BENCH_MAX_ROUNDS];
        bool small = sizes[s].size <= 4096;
        for (int r = 0; r < rounds; r++) {
            pipe_secs[r] = pipe_round(sizes[s].size, total);
            one[r] = queue_round(sizes[s].size, 1, total, false);
            two[r] = queue_round(sizes[s].size, 2, total, false);
            if (small)
                batch[r] = queue_round(sizes[s].size, 1, total, true);
        }
        double floor = bench_median(pipe_secs, rounds);
        char name[64];
        snprintf(name, sizeof(name), "%s 1->1", sizes[s].label);
        report(name, sizes[s].size, total, one, rounds, floor);
        snprintf(name, sizeof(name), "%s 2->2", sizes[s].label);
        report(name, sizes[s].size, total, two, rounds, floor);
        if (small) {
            snprintf(name, sizeof(name), "%s 1->1 batches", sizes[s].label);
            report(name, sizes[s].size, total, batch, rounds, floor);
        }
    }
    return 0;
}
