/*
 * parallel.c: mpcp's worker processes, libmproc's pool. A worker runs the
 * executor on a task's bytes and hands the result bytes back. Workers are
 * forks of the pool's fork server, made when the pool is created: the
 * executor's options and root fds must be set by then, as they are inherited.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/*
 * Over MPI a worker rank is not a fork of the planner: a task comes with the
 * paths of its roots, which the rank opens once. The prefix:
 *   u32 ROOTS_MAGIC | u32 count | count x {u32 id | u32 src_len | u32 dst_len | src | dst}
 */
#define ROOTS_MAGIC    0x3154524du /* "MRT1" */
#define ROOTS_SENT_ALL 64          /* up to this many roots, every task carries all */
#define TASK_ROOTS_AT  8           /* offset of the task's u32 src_root, then dst_root */

static mproc_pool *cluster_pool; /* rank 0: the pool of ranks, until the planner takes it */
static bool cluster_pool_taken;

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static int open_root_dir(const unsigned char *path, uint32_t len)
{
    char buf[PATH_MAX];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, path, len);
    buf[len] = '\0';
    return open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Opens the roots a task names that this rank has not opened yet; skips the prefix. */
static int take_roots(mproc_task_ctx *ctx, const unsigned char **arg, size_t *len)
{
    const unsigned char *p = *arg, *end = *arg + *len;
    if (*len < 8 || get_u32(p) != ROOTS_MAGIC)
        return 0; /* a task from a forked planner: the roots are inherited */
    uint32_t count = get_u32(p + 4);
    p += 8;
    for (uint32_t i = 0; i < count; i++) {
        if (end - p < 12)
            return mproc_task_fail(ctx, "malformed task");
        uint32_t id = get_u32(p), slen = get_u32(p + 4), dlen = get_u32(p + 8);
        p += 12;
        if ((size_t)(end - p) < (size_t)slen + dlen)
            return mproc_task_fail(ctx, "malformed task");
        int sfd, dfd;
        if (mpcp_exec_root(id, &sfd, &dfd) != 0) {
            sfd = open_root_dir(p, slen);
            int serr = errno;
            dfd = open_root_dir(p + slen, dlen);
            if (sfd < 0 || dfd < 0) {
                int err = sfd < 0 ? serr : errno;
                return mproc_task_fail(ctx, "cannot open the folder %.*s on this node: %s",
                                       (int)(sfd < 0 ? slen : dlen), sfd < 0 ? p : p + slen,
                                       mproc_strerror(-err));
            }
            if (mpcp_exec_put_root(id, sfd, dfd) < 0)
                return mproc_task_fail(ctx, "out of memory in the worker");
        }
        p += slen + dlen;
    }
    *len -= (size_t)(p - *arg);
    *arg = p;
    return 0;
}

static int exec_bytes(const unsigned char *task, size_t len, struct mpcp_buf *out)
{
    return mpcp_exec_run(task, len, -1, -1, out);
}

/* Runs a task's bytes with run, which fills the result bytes; SIGTERM meanwhile ends the worker. */
static int run_task(mproc_task_ctx *ctx, const void *arg_in, size_t len,
                    int (*run)(const unsigned char *, size_t, struct mpcp_buf *))
{
    const unsigned char *arg = arg_in;
    int taken = take_roots(ctx, &arg, &len);
    if (taken != 0)
        return taken;
    struct mpcp_buf out = {0};
    in_task = 1;
    int rc = run(arg, len, &out);
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

static int copy_task(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return run_task(ctx, arg, len, exec_bytes);
}

static int list_task(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    return run_task(ctx, arg, len, mpcp_list_run);
}

/* Whether the launcher spread the ranks over several nodes (Open MPI, MPICH, Slurm). */
static bool ranks_on_several_nodes(void)
{
    static const char *const local[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"};
    int world = mproc_pool_launched_ranks();
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
        const char *v = getenv(local[i]);
        if (v && atoi(v) > 0)
            return atoi(v) < world;
    }
    const char *nodes = getenv("SLURM_JOB_NUM_NODES");
    return nodes && atoi(nodes) > 1;
}

bool mpcp_workers_walk(const mproc_pool *pool, int src_fd)
{
    const char *walk = getenv("MPCP_WALK");
    if (!pool || (walk && strcmp(walk, "planner") == 0))
        return false;
    if (walk && strcmp(walk, "workers") == 0)
        return true;
    /*
     * On one node's own disk a stat costs a microsecond, and asking a
     * worker costs more than it saves (measured: docs/CLUSTER.md).
     */
    if (mpcp_slow_fs(src_fd))
        return true; /* a round trip per stat: listings overlap (docs/BENCHMARKS.md) */
    return pool == cluster_pool && ranks_on_several_nodes();
}

int mpcp_workers_start(mproc_pool **out, int jobs, bool on_demand)
{
    if (cluster_pool) {
        cluster_pool_taken = true;
        *out = cluster_pool;
        return 0;
    }
    mproc_pool_options po;
    memset(&po, 0, sizeof po);
    po.workers = jobs;
    po.workers_on_demand = on_demand;
    po.initializer = worker_init;
    /*
     * A task whose worker dies runs once more on a fresh worker: entries the
     * dead worker finished are copied again (renames replace them whole), and
     * its temporary is removed by the sweep or the next run.
     */
    po.retry_on_worker_death = getenv("MPCP_NO_RETRY") == NULL;
    return mproc_pool_create(out, &po);
}

/* The path of a root folder as rank 0 sees it, for the ranks to open (a shared filesystem). */
static int root_path(int fd, char *buf, size_t size, uint32_t *len)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, size);
    if (n <= 0 || (size_t)n >= size)
        return -ENAMETOOLONG;
    *len = (uint32_t)n;
    return 0;
}

static int add_root(struct mpcp_buf *b, uint32_t id)
{
    int sfd, dfd;
    if (mpcp_exec_root(id, &sfd, &dfd) != 0)
        return 0; /* a malformed task: the worker says so */
    char src[PATH_MAX], dst[PATH_MAX];
    uint32_t slen = 0, dlen = 0;
    int rc = root_path(sfd, src, sizeof src, &slen);
    rc = rc ? rc : root_path(dfd, dst, sizeof dst, &dlen);
    uint32_t head[3] = {id, slen, dlen};
    rc = rc ? rc : mpcp_buf_put(b, head, sizeof head);
    rc = rc ? rc : mpcp_buf_put(b, src, slen);
    return rc ? rc : mpcp_buf_put(b, dst, dlen);
}

/* The task with its roots in front, for a rank that is not a fork of ours. */
static int with_roots(const struct mpcp_buf *task, struct mpcp_buf *out)
{
    uint32_t n = mpcp_exec_root_count(), ids[2] = {0, 0}, count = 0;
    if (n > ROOTS_SENT_ALL && task->len >= TASK_ROOTS_AT + 8) {
        /* Many operands: only the task's own two (a hard link to another root then fails). */
        ids[0] = get_u32(task->data + TASK_ROOTS_AT);
        ids[1] = get_u32(task->data + TASK_ROOTS_AT + 4);
        count = ids[0] == ids[1] ? 1 : 2;
    }
    uint32_t head[2] = {ROOTS_MAGIC, n > ROOTS_SENT_ALL ? count : n};
    int rc = mpcp_buf_put(out, head, sizeof head);
    for (uint32_t i = 0; rc == 0 && i < head[1]; i++)
        rc = add_root(out, n > ROOTS_SENT_ALL ? ids[i] : i);
    return rc ? rc : mpcp_buf_put(out, task->data, task->len);
}

int mpcp_workers_submit(mproc_pool *pool, const struct mpcp_buf *task, mproc_result **r)
{
    mproc_task_fn fn = mpcp_list_is_request(task->data, task->len) ? list_task : copy_task;
    if (pool != cluster_pool)
        return mproc_pool_apply_async(pool, fn, task->data, task->len, NULL, NULL, NULL, r);
    struct mpcp_buf wrapped = {0};
    int rc = with_roots(task, &wrapped);
    if (rc == 0)
        rc = mproc_pool_apply_async(pool, fn, wrapped.data, wrapped.len, NULL, NULL, NULL, r);
    mpcp_buf_free(&wrapped);
    return rc;
}

int mpcp_cluster_start(struct mpcp_opts *opt)
{
    if (mproc_pool_auto_backend() != MPROC_POOL_MPI)
        return -1;
    /* The ranks find the copy task by name, and run it with this run's options. */
    mproc_task_register("mpcp.copy", copy_task);
    mproc_task_register("mpcp.list", list_task);
    mpcp_exec_set_options(opt);
    mproc_pool_options po;
    memset(&po, 0, sizeof po);
    po.backend = MPROC_POOL_MPI;
    po.initializer = worker_init;
    /* A rank cannot be replaced, and a task whose rank died ended the job. */
    mproc_pool *pool = NULL;
    int rc = mproc_pool_create(&pool, &po);
    if (rc < 0) {
        char msg[256];
        mpcp_format(msg, sizeof msg, "cannot start the MPI workers: %s", mproc_strerror(rc), NULL);
        mpcp_error(0, msg);
        return 1;
    }
    if (!pool)
        return 0; /* a worker rank: it has served until rank 0 was done */
    cluster_pool = pool;
    int ranks = mproc_pool_workers(pool);
    /* Two at least, so that the planner hands work to the ranks rather than copy itself. */
    opt->jobs = ranks > 2 ? ranks : 2;
    return -1;
}

void mpcp_cluster_end(void)
{
    if (!cluster_pool || cluster_pool_taken)
        return;
    mproc_pool_close(cluster_pool);
    mproc_pool_join(cluster_pool, MPROC_WAIT_FOREVER);
    mproc_pool_destroy(&cluster_pool);
}

int mpcp_cluster_exec(char **argv)
{
    int ranks = mproc_pool_launched_ranks();
    if (ranks <= 1 || mproc_pool_mpi_available())
        return -1;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 16);
    char *slash = n > 0 ? memrchr(self, '/', (size_t)n) : NULL;
    if (slash) {
        memcpy(slash + 1, "mpcp-mpi", sizeof "mpcp-mpi");
        execv(self, argv);
    }
    /* Each rank copying the whole tree on its own would be worse than failing. */
    mpcp_error(errno, "started by an MPI launcher, but cannot run mpcp-mpi beside mpcp");
    return 1;
}
