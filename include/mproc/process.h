/*
 * mproc/process.h: start, watch and stop child processes, as Python's
 * multiprocessing.Process does, with the fork start method.
 *
 * A child is a fork() of the caller that runs a target function and then
 * ends with _exit(): it sees a copy of the caller's memory at start(), and
 * what it changes stays in the child (see mproc/shm.h to share data).
 *
 * Ownership: the caller owns every mproc_process it creates and frees it
 * with mproc_process_destroy(). A handle belongs to the process that created
 * it; in a child, inherited handles of siblings answer -ECHILD. Calls on one
 * handle may come from several threads of its owner.
 *
 * Reaping: the library waits only for the children it started, each by its
 * own pid (never waitpid(-1)), and installs no signal handler. A child is
 * reaped by join(), by is_alive()/exitcode() once it has ended, or by
 * mproc_active_children(); after that no zombie remains.
 */
#ifndef MPROC_PROCESS_H
#define MPROC_PROCESS_H

#include <mproc/common.h>

#include <limits.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mproc_process mproc_process;

/*
 * A target: runs in the child with the argument given at creation. Its
 * return value becomes the child's exit status (only the low 8 bits survive,
 * as with exit()).
 */
typedef int (*mproc_target_fn)(void *arg);

/*
 * The C counterpart of subclassing Process and overriding run(): a class is a
 * static table of operations, and each process made from it carries
 * data_size bytes of per-instance fields (see mproc_process_data()).
 */
typedef struct mproc_process_class {
    /* Prefix of default names ("MyProcess" gives "MyProcess-3"). NULL: "Process". */
    const char *name;
    /* Required. Runs in the child; its return value is the exit status. */
    int (*run)(mproc_process *self);
    /*
     * Optional. Called in the creating process by mproc_process_destroy()
     * to release what the instance fields own; must not free the fields.
     */
    void (*finalize)(mproc_process *self);
} mproc_process_class;

/* exitcode() reports this while the child has not ended (Python's None). */
#define MPROC_EXITCODE_NONE INT_MIN

/*
 * Creates a process that will run target(arg). Nothing is started yet.
 * arg is passed as is: the child sees the memory it points to as it was at
 * start(); the caller keeps ownership.
 * Returns 0 and sets *out, or -EINVAL (NULL out or target), -ENOMEM.
 */
MPROC_API int mproc_process_create(mproc_process **out, mproc_target_fn target, void *arg);

/*
 * Creates a process of class cls with data_size bytes of zeroed instance
 * fields, suitably aligned for any type. cls must stay valid until destroy.
 * Returns 0 and sets *out, or -EINVAL (NULL out, cls or cls->run), -ENOMEM.
 */
MPROC_API int mproc_process_create_class(mproc_process **out, const mproc_process_class *cls,
                                         size_t data_size);

/*
 * Returns the instance fields of a class-made process (NULL when it has
 * none). Valid until destroy; in the child it is the child's own copy.
 */
MPROC_API void *mproc_process_data(mproc_process *proc);

/*
 * Sets the name (copied). Any time, as in Python. Names are for people: they
 * need not be unique. Returns 0, -EINVAL (NULL or empty name), -ENOMEM.
 */
MPROC_API int mproc_process_set_name(mproc_process *proc, const char *name);

/*
 * Returns the name; valid until the next set_name() or destroy. The default
 * is "<class>-<n>", numbered per creating process ("Process-1", and
 * "Process-1:2" for the second child made by that child).
 */
MPROC_API const char *mproc_process_name(const mproc_process *proc);

/*
 * Marks the process as a daemon (before start only). A daemon child is
 * killed (SIGKILL) when its creator dies, even by SIGKILL. The kernel ties
 * this to the creating *thread*: if the thread that called start() exits
 * first, the daemon child is killed then. Returns 0, -EINVAL, -EALREADY.
 */
MPROC_API int mproc_process_set_daemon(mproc_process *proc, bool daemon);

/* Returns whether the process is a daemon (false for NULL). */
MPROC_API bool mproc_process_daemon(const mproc_process *proc);

/*
 * Starts the child. At most once per handle. The caller's stdout and stderr
 * are flushed first so that buffered output is not written twice. Between
 * fork and the target the child makes only async-signal-safe calls; all
 * signals are blocked in the caller for the few instructions around fork.
 * In a multithreaded caller, only the calling thread exists in the child:
 * the target must not rely on locks other threads may have held (see
 * docs/PROCESS.md).
 * Returns 0, -EINVAL, -EALREADY (started before), -EAGAIN or -ENOMEM (fork).
 */
MPROC_API int mproc_process_start(mproc_process *proc);

/*
 * Waits up to timeout_ms (MPROC_WAIT_FOREVER: no limit) for the child to end,
 * then reaps it. Returns 0 when it has ended (see exitcode()), -ETIMEDOUT,
 * -EINTR if a signal handler ran, -ECHILD (not started, or not our child),
 * -EDEADLK (a process joining itself), -EINVAL.
 */
MPROC_API int mproc_process_join(mproc_process *proc, int timeout_ms);

/*
 * Sets *alive to whether the child has started and not yet ended, reaping it
 * if it has ended. Returns 0, -EINVAL, -ECHILD (not our child).
 */
MPROC_API int mproc_process_is_alive(mproc_process *proc, bool *alive);

/*
 * Sets *exitcode to Python's exitcode: MPROC_EXITCODE_NONE while not started
 * or running; n when it ended with exit(n) or the target returned n; -N when
 * signal N killed it (-11 for a crash by SIGSEGV). Reaps an ended child.
 * Returns 0, -EINVAL, -ECHILD (not our child).
 */
MPROC_API int mproc_process_exitcode(mproc_process *proc, int *exitcode);

/* Returns the child's pid, or 0 before start (and for NULL). */
MPROC_API pid_t mproc_process_pid(const mproc_process *proc);

/*
 * Send SIGTERM, SIGKILL or SIGINT to the child. Nothing happens if it has
 * already been reaped (no other process can be hit by a recycled pid).
 * Return 0, -EINVAL, -ECHILD (not started, or not our child).
 */
MPROC_API int mproc_process_terminate(mproc_process *proc);
MPROC_API int mproc_process_kill(mproc_process *proc);
MPROC_API int mproc_process_interrupt(mproc_process *proc);

/* Sends any signal, with the same rules. */
MPROC_API int mproc_process_signal(mproc_process *proc, int signo);

/*
 * Sets *fd to a descriptor that becomes readable (POLLIN) when the child
 * ends, for poll/epoll/libuv loops. The handle owns it: do not read from or
 * close it; it stays valid until destroy. Call join() or exitcode() once it
 * is readable to collect the status. Returns 0, -EINVAL, -ECHILD (not
 * started).
 */
MPROC_API int mproc_process_sentinel(const mproc_process *proc, int *fd);

/*
 * Frees the handle and sets *proc to NULL, so a later call with it gets
 * -EINVAL. A child that has ended is reaped first; a running child is left
 * alone and -EBUSY returned with nothing freed (join or kill it first).
 * Handles never started, or inherited from the parent, are simply freed.
 * Returns 0, -EINVAL (NULL or already destroyed), -EBUSY.
 */
MPROC_API int mproc_process_destroy(mproc_process **proc);

/*
 * The calling process as libmproc sees it. In a child started by
 * mproc_process_start(), current_process() is the child's copy of its own
 * handle; in any other process it is NULL.
 */
MPROC_API mproc_process *mproc_current_process(void);

/* Name of the calling process: its handle's name, or "MainProcess". Static. */
MPROC_API const char *mproc_current_name(void);

/* pid of the process that started the caller, or 0 in the main process. */
MPROC_API pid_t mproc_parent_pid(void);

/*
 * Lists the children started by the calling process that are still running,
 * reaping those that have ended (Python's active_children()). Stores up to
 * cap handles in out (which may be NULL when cap is 0) and the number of
 * live children in *count, which may exceed cap. The handles stay owned by
 * their creators. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_active_children(mproc_process **out, size_t cap, size_t *count);

/*
 * Sets *count to the number of CPUs this process may use: the CPUs in its
 * affinity mask, lowered by a cgroup (v1 or v2) CPU quota when one is set,
 * and at least 1. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_cpu_count(int *count);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_PROCESS_H */
