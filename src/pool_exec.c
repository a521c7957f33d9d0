/*
 * pool_exec.c: runs one task message and builds its result message. Shared
 * by the local workers (pool_server.c) and the MPI worker ranks
 * (mpi/pool_mpi.c), so that both answer in the same wire format.
 */
#define _GNU_SOURCE
#include "pool_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int out_append(struct mproc__task_exec *x, const void *data, size_t len)
{
    if (x->out_len + len > x->out_cap) {
        size_t cap = x->out_cap ? x->out_cap : 4096;
        while (cap < x->out_len + len)
            cap *= 2;
        unsigned char *grown = realloc(x->out, cap);
        if (!grown)
            return -ENOMEM;
        x->out = grown;
        x->out_cap = cap;
    }
    if (len)
        memcpy(x->out + x->out_len, data, len);
    x->out_len += len;
    return 0;
}

/* The outcome of the last call: its result bytes, or its error text. */
static void outcome(const struct mproc__task_exec *x, int status, const void **data, size_t *len)
{
    if (status == 0) {
        *data = x->ctx.result;
        *len = x->ctx.result_len;
    } else {
        *data = x->ctx.error;
        *len = x->ctx.error ? strlen(x->ctx.error) : 0;
    }
}

static int run_single(struct mproc__task_exec *x, mproc_task_fn fn, const void *arg, size_t len,
                      struct pool_res_msg *res)
{
    res->status = mproc__task_run(&x->ctx, fn, arg, len);
    res->kind = RES_DONE;
    const void *data;
    size_t n;
    outcome(x, res->status, &data, &n);
    return out_append(x, data, n);
}

/* Checks that a chunk's item lengths fit in its body: an MPI peer is not a fork of ours. */
static bool chunk_fits(size_t nitems, const unsigned char *body, size_t body_len)
{
    if (body_len / sizeof(uint64_t) < nitems)
        return false;
    size_t left = body_len - nitems * sizeof(uint64_t);
    for (size_t i = 0; i < nitems; i++) {
        uint64_t n;
        memcpy(&n, body + i * sizeof(n), sizeof(n));
        if (n > left)
            return false;
        left -= (size_t)n;
    }
    return true;
}

static int run_chunk(struct mproc__task_exec *x, mproc_task_fn fn, size_t n,
                     const unsigned char *body, struct pool_res_msg *res)
{
    const unsigned char *item = body + n * sizeof(uint64_t);
    size_t table = x->out_len;
    struct pool_item_res blank = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = out_append(x, &blank, sizeof(blank));
    size_t data_start = x->out_len;
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint64_t item_len;
        memcpy(&item_len, body + i * sizeof(item_len), sizeof(item_len));
        mproc__task_ctx_reset(&x->ctx);
        int status = mproc__task_run(&x->ctx, fn, item, (size_t)item_len);
        item += item_len;
        const void *data;
        size_t len;
        outcome(x, status, &data, &len);
        struct pool_item_res entry = {.offset = x->out_len - data_start, .status = status};
        rc = out_append(x, data, len);
        if (rc == 0 && status != 0)
            rc = out_append(x, "", 1); /* messages are read as C strings */
        if (rc == 0)
            memcpy(x->out + table + i * sizeof(entry), &entry, sizeof(entry));
    }
    res->kind = RES_CHUNK;
    res->nitems = (uint32_t)n;
    return rc;
}

int mproc__task_exec_run(struct mproc__task_exec *x, const struct pool_task_msg *msg,
                         mproc_task_fn fn, const unsigned char *body, size_t body_len,
                         struct pool_res_msg *res)
{
    uint64_t t0 = now_ns();
    x->out_len = 0;
    int rc = out_append(x, res, sizeof(*res));
    if (rc < 0)
        return rc;
    mproc__task_ctx_reset(&x->ctx);
    x->ctx.fds = x->fds;
    x->ctx.nfds = x->nfds;
    if (msg->kind == MSG_CHUNK) {
        if (!chunk_fits(msg->nitems, body, body_len))
            return -EBADMSG;
        rc = run_chunk(x, fn, msg->nitems, body, res);
    } else {
        rc = run_single(x, fn, body, body_len, res);
    }
    res->elapsed_ns = now_ns() - t0;
    memcpy(x->out, res, sizeof(*res));
    return rc;
}

void mproc__task_exec_free(struct mproc__task_exec *x)
{
    mproc__task_ctx_free(&x->ctx);
    free(x->out);
    x->out = NULL;
    x->out_len = x->out_cap = 0;
}
