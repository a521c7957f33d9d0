/*
 * task.c: what a task sees of the pool (its context), and the registry that
 * names task functions so that a process which is not a fork of this one
 * (an MPI rank) can find them.
 */
#define _GNU_SOURCE
#include "pool_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ERROR_MAX    4096
#define REGISTRY_MAX 256

int mproc_task_return(mproc_task_ctx *ctx, const void *data, size_t len)
{
    if (!ctx || (!data && len))
        return -EINVAL;
    if (len > ctx->result_cap) {
        void *grown = realloc(ctx->result, len);
        if (!grown)
            return -ENOMEM;
        ctx->result = grown;
        ctx->result_cap = len;
    }
    if (len)
        memcpy(ctx->result, data, len);
    ctx->result_len = len;
    return 0;
}

int mproc_task_fail(mproc_task_ctx *ctx, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    if (ctx && format && !ctx->error)
        ctx->error = malloc(ERROR_MAX);
    /* clang-analyzer 14 misreads va_start() here as not having run. */
    if (ctx && format && ctx->error)
        // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized)
        (void)vsnprintf(ctx->error, ERROR_MAX, format, args);
    va_end(args);
    return MPROC_ETASKFAILED;
}

int mproc_task_fd(mproc_task_ctx *ctx, size_t index, int *fd)
{
    if (!ctx || !fd || index >= ctx->nfds)
        return -EINVAL;
    *fd = ctx->fds[index];
    return 0;
}

int mproc_task_worker_index(const mproc_task_ctx *ctx)
{
    return ctx ? ctx->worker : -1;
}

void mproc__task_ctx_reset(mproc_task_ctx *ctx)
{
    ctx->result_len = 0;
    if (ctx->error)
        ctx->error[0] = '\0';
    ctx->fds = NULL;
    ctx->nfds = 0;
}

void mproc__task_ctx_free(mproc_task_ctx *ctx)
{
    free(ctx->result);
    free(ctx->error);
    memset(ctx, 0, sizeof(*ctx));
}

int mproc__task_run(mproc_task_ctx *ctx, mproc_task_fn fn, const void *arg, size_t len)
{
    int rc = fn(ctx, arg, len);
    if (rc == 0)
        return 0;
    /* A failure always carries a message, so that whoever gets it can say why. */
    if (!ctx->error || !ctx->error[0])
        (void)mproc_task_fail(ctx, "task returned %d", rc);
    return rc < 0 && rc != MPROC_ETASKFAILED ? rc : MPROC_ETASKFAILED;
}

/* ---- registry ---- */

struct registry_entry {
    char *name;
    mproc_task_fn fn;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct registry_entry registry[REGISTRY_MAX];
static size_t registry_count;

int mproc_task_register(const char *name, mproc_task_fn fn)
{
    if (!name || !*name || !fn)
        return -EINVAL;
    pthread_mutex_lock(&registry_lock);
    int rc = 0;
    for (size_t i = 0; i < registry_count && rc == 0; i++) {
        if (strcmp(registry[i].name, name) == 0)
            rc = registry[i].fn == fn ? 1 : -EEXIST;
    }
    if (rc == 0 && registry_count == REGISTRY_MAX)
        rc = -ENOSPC;
    if (rc == 0) {
        registry[registry_count].name = strdup(name);
        registry[registry_count].fn = fn;
        rc = registry[registry_count].name ? 0 : -ENOMEM;
        registry_count += rc == 0;
    }
    pthread_mutex_unlock(&registry_lock);
    return rc > 0 ? 0 : rc;
}

const char *mproc__task_name(mproc_task_fn fn)
{
    const char *name = NULL;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < registry_count && !name; i++) {
        if (registry[i].fn == fn)
            name = registry[i].name;
    }
    pthread_mutex_unlock(&registry_lock);
    return name;
}

int mproc_task_lookup(const char *name, mproc_task_fn *fn)
{
    if (!name || !fn)
        return -EINVAL;
    int rc = -ENOENT;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < registry_count; i++) {
        if (strcmp(registry[i].name, name) == 0) {
            *fn = registry[i].fn;
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return rc;
}
