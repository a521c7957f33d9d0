/*
 * parallel.c: mpcp's worker processes, libmproc's pool. A worker runs the
 * executor on a task's bytes and hands the result bytes back. Workers are
 * forks of the pool's fork server, made when the pool is created: the
 * executor's options and root fds must be set by then, as they are inherited.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* Set while a worker runs a task: a stop signal then lets the executor clean up. */
static volatile sig_atomic_t in_task;

static void die_by(int sig)
{
    signal(sig, SIG_DFL);
    raise(sig);
}

/*
 * mproc_pool_terminate() sends SIGTERM. A worker inside a task stops at the
 * executor's next step (it removes its temporary) and dies after the task;
 * an idle worker has nothing to clean and dies at once, instead of waiting
 * for the pool's SIGKILL a second later.
 */
static void on_worker_signal(int sig)
{
    mpcp_interrupted = sig;
    if (!in_task)
        die_by(sig);
}

/* Runs in each worker before its first task. SIGINT stays ignored (the pool's rule). */
static int worker_init(void *arg)
{
    (void)arg;
    /* No progress display lives in a worker: copy big files in the big steps. */
    mpcp_set_data_progress(NULL);
    static const int sigs[] = {SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_worker_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
    return 0;
}

static int copy_task(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    struct mpcp_buf out = {0};
    in_task = 1;
    int rc = mpcp_exec_run(arg, len, -1, -1, &out);
    in_task = 0;
    if (mpcp_interrupted) {
        mpcp_buf_free(&out);
        die_by(mpcp_interrupted);
    }
    if (rc == 0)
        rc = mproc_task_return(ctx, out.data, out.len);
    mpcp_buf_free(&out);
    if (rc == -EBADMSG)
        return mproc_task_fail(ctx, "malformed task");
    if (rc < 0)
        return mproc_task_fail(ctx, "out of memory in the worker");
    return 0;
}

int mpcp_workers_start(mproc_pool **out, int jobs)
{
    mproc_pool_options po;
    memset(&po, 0, sizeof po);
    po.workers = jobs;
    po.initializer = worker_init;
    /*
     * A task whose worker dies runs once more on a fresh worker: entries the
     * dead worker finished are copied again (renames replace them whole), and
     * its temporary is removed by the sweep or the next run.
     */
    po.retry_on_worker_death = getenv("MPCP_NO_RETRY") == NULL;
    return mproc_pool_create(out, &po);
}

int mpcp_workers_submit(mproc_pool *pool, const struct mpcp_buf *task, mproc_result **r)
{
    return mproc_pool_apply_async(pool, copy_task, task->data, task->len, NULL, NULL, NULL, r);
}
