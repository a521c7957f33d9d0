/*
 * mproc/pool.h: a pool of worker processes that runs tasks, as Python's
 * multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor, without
 * their hangs when a worker dies.
 *
 * A task is a C function of this program that receives argument bytes and
 * returns result bytes, or fails with a message. Arguments and results are
 * copied between processes and may be of any size.
 *
 * Workers are forked from a small single-threaded fork server that the pool
 * starts when it is created, before the pool's own thread exists: a worker
 * replaced later is never a fork of a multithreaded process. Create the pool
 * early, before your program starts threads that hold locks the tasks need.
 *
 * In the creating process the pool runs one thread of its own, the result
 * thread: it collects results, runs callbacks, replaces dead workers and
 * enforces timeouts. Tasks may be submitted from any thread of the creating
 * process; the pool belongs to that process (children get -ECHILD).
 *
 * When a worker dies while it runs a task (SIGKILL, a crash, the OOM killer),
 * the task's result completes with MPROC_EWORKERDIED and a message naming
 * the worker's pid and signal (or the task runs again once on a fresh worker,
 * if the pool was told to retry); the worker is replaced and the pool goes on.
 * Tasks queued behind it on that worker never ran: they go to other workers.
 *
 * When the fork server dies, its workers die with it and the pool breaks:
 * every result not complete fails with MPROC_EBROKEN and a message naming it
 * ("fork server 1234 died: killed by signal 9 (Killed)"), and later calls
 * return MPROC_EBROKEN. Several pools may live at once: each one's fork
 * server and workers keep only that pool's descriptors (docs/POOL.md).
 */
#ifndef MPROC_POOL_H
#define MPROC_POOL_H

#include <mproc/common.h>

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mproc_pool mproc_pool;
typedef struct mproc_result mproc_result;
typedef struct mproc_imap mproc_imap;
typedef struct mproc_task_ctx mproc_task_ctx;

/*
 * A task: runs in a worker with the argument bytes (valid during the call).
 * It returns 0 and may set result bytes with mproc_task_return(), or returns
 * non-zero and may explain why with mproc_task_fail(); a non-zero return
 * without a message fails with "task returned N".
 */
typedef int (*mproc_task_fn)(mproc_task_ctx *ctx, const void *arg, size_t len);

/* Runs once in each worker when it starts; non-zero makes the worker exit. */
typedef int (*mproc_initializer_fn)(void *arg);

/*
 * Called in the pool's result thread when a result completes, successfully
 * (callback) or not (error callback). It must not block for long: every other
 * result waits behind it. The result stays owned by whoever owns it.
 */
typedef void (*mproc_result_callback)(mproc_result *result, void *arg);

/*
 * Where the workers run. MPROC_POOL_AUTO (the default) is MPI when libmproc
 * was built with MPI (libmproc_mpi) and the program was started by an MPI
 * launcher with more than one rank, or when the environment variable
 * MPROC_POOL_BACKEND says "mpi"; otherwise local ("local" forces it).
 *
 * Over MPI, rank 0 runs the program and every other rank is one worker (the
 * workers and max_tasks_per_child options are ignored). On those ranks
 * mproc_pool_create() runs the initializer, serves tasks until rank 0 closes
 * or destroys its pool, and returns 0 with *out set to NULL: the program
 * should then end, as in `if (!pool) return 0;`. Tasks travel by their
 * registered name (mproc_task_register(), in every rank, before creating
 * the pool): submitting an unregistered function gives -ENOENT, and
 * descriptors cannot travel (-ENOTSUP). See docs/CLUSTER.md.
 */
typedef enum mproc_pool_backend {
    MPROC_POOL_AUTO = 0,
    MPROC_POOL_LOCAL = 1,
    MPROC_POOL_MPI = 2,
} mproc_pool_backend;

/* Options for mproc_pool_create(); zero means the default for each field. */
typedef struct mproc_pool_options {
    int workers;                      /* default: mproc_cpu_count() */
    mproc_initializer_fn initializer; /* run in each worker before its first task */
    void *initializer_arg;            /* passed as is (workers are forks) */
    unsigned max_tasks_per_child;     /* replace a worker after this many tasks; 0: never */
    int task_timeout_ms;              /* kill a task's worker after this long; 0: no limit */
    bool retry_on_worker_death;       /* run a task again once if its worker dies under it */
    mproc_pool_backend backend;       /* local processes or MPI ranks; default: AUTO */
    /*
     * Start workers as tasks wait for them, as concurrent.futures'
     * ProcessPoolExecutor does: one at create, then one more each time a
     * task is submitted while no started worker is idle, up to workers. A
     * started worker stays until the pool ends (or is replaced, as any).
     * For a large workers bound that the load may not need: a pool of 256
     * whose tasks keep 20 busy forks 20. The bound may change while the
     * pool runs (mproc_pool_set_max_workers). Ignored over MPI (ranks exist).
     */
    bool workers_on_demand;
} mproc_pool_options;

/* ---- task side: called inside a task ---- */

/* Sets the task's result to a copy of len bytes. Returns 0, -ENOMEM, -EINVAL. */
MPROC_API int mproc_task_return(mproc_task_ctx *ctx, const void *data, size_t len);

/*
 * Fails the task with a message (printf format, truncated to 4 KiB) and
 * returns MPROC_ETASKFAILED, so that a task can end with
 * `return mproc_task_fail(ctx, "cannot open %s: %s", path, why);`.
 */
MPROC_API int mproc_task_fail(mproc_task_ctx *ctx, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * The descriptors sent with the task (mproc_pool_apply_async_fds()): sets
 * *fd to the index-th, which the task may use until it returns (the worker
 * closes it then). Returns 0, or -EINVAL when there is no such descriptor.
 */
MPROC_API int mproc_task_fd(mproc_task_ctx *ctx, size_t index, int *fd);

/* Index of the worker running the task (0 to workers-1), for logs and stats. */
MPROC_API int mproc_task_worker_index(const mproc_task_ctx *ctx);

/*
 * Gives a task function a name, so that it can be found in a process that is
 * not a fork of this one (the MPI pool). Register before creating pools.
 * Returns 0, -EINVAL, -EEXIST (name taken by another function), -ENOSPC.
 */
MPROC_API int mproc_task_register(const char *name, mproc_task_fn fn);

/* Finds a registered task by name. Returns 0, -ENOENT. */
MPROC_API int mproc_task_lookup(const char *name, mproc_task_fn *fn);

/* ---- the pool ---- */

/*
 * Starts a pool: the fork server, the workers (one, with workers_on_demand)
 * and the result thread.
 * options may be NULL for all defaults. Returns 0 and sets *out, -EINVAL,
 * -ENOMEM, -EAGAIN (fork: RLIMIT_NPROC), -EMFILE (RLIMIT_NOFILE), or
 * another negated errno. Over MPI: 0 with *out NULL on the worker ranks once
 * they have served (see mproc_pool_backend), -ENOTSUP when libmproc was
 * built without MPI or MPI cannot start (again) with threads, -EINVAL with
 * MPROC_POOL_MPI and a single rank.
 */
MPROC_API int mproc_pool_create(mproc_pool **out, const mproc_pool_options *options);

/* Number of workers: with workers_on_demand the bound, started or not. */
MPROC_API int mproc_pool_workers(const mproc_pool *pool);

/*
 * With workers_on_demand: from now on, start workers only while fewer than
 * n are started (1 to mproc_pool_workers(), which is the default). For a
 * caller that finds how many workers pay while it runs, and keeps more
 * tasks submitted than that so that each worker finds its next one
 * waiting. Raised, the tasks waiting start workers at once; lowered below
 * the workers started, none is stopped: they all go on taking tasks, and a
 * dead one is still replaced. Returns 0, -EINVAL for a bad pool, an n out
 * of range or a pool not on demand (as every pool over MPI), -ECHILD in a
 * forked child.
 */
MPROC_API int mproc_pool_set_max_workers(mproc_pool *pool, int n);

/* The pool's backend: MPROC_POOL_LOCAL or MPROC_POOL_MPI (-EINVAL for a bad pool). */
MPROC_API int mproc_pool_backend_of(const mproc_pool *pool);

/* Whether this libmproc was built with the MPI backend. */
MPROC_API bool mproc_pool_mpi_available(void);

/*
 * How many ranks an MPI launcher (mpirun, mpiexec, srun) started this
 * program with, read from its environment: 1 when none did.
 */
MPROC_API int mproc_pool_launched_ranks(void);

/* The backend MPROC_POOL_AUTO stands for in this process (see mproc_pool_backend). */
MPROC_API mproc_pool_backend mproc_pool_auto_backend(void);

/*
 * Submits fn(arg) and returns at once. arg is copied before the call returns.
 * *result (if result is not NULL) receives a handle the caller owns and
 * frees with mproc_result_destroy(); with result NULL the pool frees it after
 * the callbacks ran. callback or error_callback may be NULL.
 * Returns 0, MPROC_ECLOSED (after close or terminate), -EINVAL, -ENOMEM,
 * -ECHILD (not the creating process).
 */
MPROC_API int mproc_pool_apply_async(mproc_pool *pool, mproc_task_fn fn, const void *arg,
                                     size_t len, mproc_result_callback callback,
                                     mproc_result_callback error_callback, void *callback_arg,
                                     mproc_result **result);

/*
 * As apply_async(), and sends nfds descriptors along (duplicated: the caller
 * keeps its own), for example a queue made after the pool started
 * (mproc_queue_fd()): the task gets them with mproc_task_fd().
 */
MPROC_API int mproc_pool_apply_async_fds(mproc_pool *pool, mproc_task_fn fn, const void *arg,
                                         size_t len, const int *fds, size_t nfds,
                                         mproc_result **result);

/* Submits a task by its registered name. -ENOENT if no task has that name. */
MPROC_API int mproc_pool_apply_async_named(mproc_pool *pool, const char *name, const void *arg,
                                           size_t len, mproc_result **result);

/*
 * Runs fn(arg) on a worker and waits for it: Python's apply(). On success
 * *out (free() it) and *out_len receive the result bytes. Returns 0, or the
 * task's error (MPROC_ETASKFAILED, MPROC_EWORKERDIED, -ETIMEDOUT), or -EINTR
 * if a signal handler interrupted the wait (the task goes on).
 */
MPROC_API int mproc_pool_apply(mproc_pool *pool, mproc_task_fn fn, const void *arg, size_t len,
                               void **out, size_t *out_len);

/*
 * Python's map_async()/starmap_async(): runs fn on each of count items,
 * sending chunksize items per task (0: about four chunks per worker, but no
 * more than about 64 KiB of input or 4,096 items per chunk), and returns one
 * result that completes when all have. Item i's result bytes
 * come from mproc_result_item(). The items are copied before it returns.
 */
MPROC_API int mproc_pool_map_async(mproc_pool *pool, mproc_task_fn fn, const struct iovec *items,
                                   size_t count, size_t chunksize, mproc_result **result);

/* map_async() then wait: Python's map(). Returns what mproc_result_get() would. */
MPROC_API int mproc_pool_map(mproc_pool *pool, mproc_task_fn fn, const struct iovec *items,
                             size_t count, size_t chunksize, mproc_result **result);

/*
 * Where imap() pulls its input from, one item at a time, as it needs it:
 * returns 1 and sets *item and *len (valid until the next call), 0 at the end,
 * or a negative error that ends the iteration with that error.
 */
typedef int (*mproc_item_source)(void *source_arg, const void **item, size_t *len);

/*
 * Python's imap()/imap_unordered(): an iterator over fn's results for the
 * items that source yields, pulling items only as room frees up: at most
 * window items (0: 4 x workers x chunksize) are read ahead and not yet
 * returned, whatever the input's length. ordered: results in input order
 * (imap) or as they complete (imap_unordered). chunksize 0 means 1: pass a
 * larger one for tiny tasks (Python's imap() has the same default).
 */
MPROC_API int mproc_pool_imap(mproc_pool *pool, mproc_task_fn fn, mproc_item_source source,
                              void *source_arg, size_t chunksize, size_t window, bool ordered,
                              mproc_imap **out);

/*
 * Next result: *data and *len are valid until the next call or destroy, *index
 * is the item's position in the input. Returns 0; MPROC_ECLOSED at the end;
 * the item's error (MPROC_ETASKFAILED ... : the iteration goes on after it,
 * as Python's raises and lets you continue); -ETIMEDOUT; -EINTR.
 */
MPROC_API int mproc_imap_next(mproc_imap *it, const void **data, size_t *len, size_t *index,
                              int timeout_ms);

/* Frees the iterator; tasks still running finish and are dropped. */
MPROC_API int mproc_imap_destroy(mproc_imap **it);

/* No more submissions; workers exit when the work is done (Python's close()). */
MPROC_API int mproc_pool_close(mproc_pool *pool);

/*
 * Waits until every worker has exited after close() (Python's join()).
 * Returns 0, -EINVAL if the pool was not closed or terminated first,
 * -ETIMEDOUT, -EINTR, -EDEADLK from a callback of this pool.
 */
MPROC_API int mproc_pool_join(mproc_pool *pool, int timeout_ms);

/*
 * Stops now: workers are killed (SIGTERM, then SIGKILL after a grace
 * period), and every result not complete fails with MPROC_EBROKEN. Returns 0.
 */
MPROC_API int mproc_pool_terminate(mproc_pool *pool);

/*
 * Terminates if needed, stops the result thread, reaps every process and
 * frees the pool; *pool becomes NULL. Results the caller still owns stay
 * valid (completed with MPROC_EBROKEN if they were not done). Bounded: the
 * fork server gets 3 s to stop its workers and exit, then it is killed.
 * Returns 0, -EINVAL, -ECHILD (not the creating process), -EDEADLK from a
 * callback of this pool (the pool is left as it was).
 */
MPROC_API int mproc_pool_destroy(mproc_pool **pool);

/*
 * A descriptor that becomes readable when results have completed since it was
 * last drained (an eventfd): poll it, then call mproc_pool_drain_ready() and
 * look at the results you own. Owned by the pool.
 */
MPROC_API int mproc_pool_fd(const mproc_pool *pool, int *fd);

/* Resets the readiness descriptor. Returns 0. */
MPROC_API int mproc_pool_drain_ready(mproc_pool *pool);

/* ---- results ---- */

/*
 * Waits up to timeout_ms for the result. On success sets *data and *len to the
 * result bytes, owned by the result (valid until destroy); either may be
 * NULL. Returns 0; the task's error: MPROC_ETASKFAILED (see
 * mproc_result_error()), MPROC_EWORKERDIED, -ETIMEDOUT (the task ran over
 * the pool's task timeout), MPROC_ECANCELLED, MPROC_EBROKEN (terminated);
 * or, for the wait itself, -EAGAIN when not ready within timeout_ms, -EINTR,
 * -EDEADLK when a callback of the result's own pool would wait for it.
 */
MPROC_API int mproc_result_get(mproc_result *result, const void **data, size_t *len,
                               int timeout_ms);

/* Waits without fetching: 0 when ready, -EAGAIN, -EINTR, -EDEADLK (as get()). */
MPROC_API int mproc_result_wait(mproc_result *result, int timeout_ms);

/* Whether the result is complete, successfully or not. */
MPROC_API bool mproc_result_ready(const mproc_result *result);

/* Whether it completed successfully (false while not ready, as Python raises). */
MPROC_API bool mproc_result_successful(const mproc_result *result);

/*
 * The error message of a failed result ("worker 1234 died: killed by signal
 * 9 (Killed)"), or NULL. Owned by the result.
 */
MPROC_API const char *mproc_result_error(const mproc_result *result);

/*
 * For a map result: item index's result bytes, or its error code
 * (mproc_result_item_error() gives the message). Valid once the map result
 * is ready and until destroy.
 */
MPROC_API int mproc_result_item(const mproc_result *result, size_t index, const void **data,
                                size_t *len);
MPROC_API const char *mproc_result_item_error(const mproc_result *result, size_t index);

/* Number of items of a map result (1 for apply). */
MPROC_API size_t mproc_result_count(const mproc_result *result);

/*
 * Cancels a task that has not started: returns 0 and the result completes
 * with MPROC_ECANCELLED; -EBUSY if it is running or done.
 */
MPROC_API int mproc_result_cancel(mproc_result *result);

/*
 * concurrent.futures.wait(): waits until all (all = true) or any of the
 * count results are ready, or the timeout. Sets *ready_count. Returns 0,
 * -EAGAIN (timeout), -EINTR, -EDEADLK (from a callback, waiting on its pool).
 */
MPROC_API int mproc_result_wait_many(mproc_result *const *results, size_t count, bool all,
                                     size_t *ready_count, int timeout_ms);

/* Frees a result handle (a running task finishes and its result is dropped). */
MPROC_API int mproc_result_destroy(mproc_result **result);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_POOL_H */
