/*
 * mproc/sync.h: Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition
 * and Barrier shared between processes, as in Python's multiprocessing, but
 * safe when a process dies at any instruction.
 *
 * Where they live: each object is a small block of shared memory (a memfd,
 * with no name in /dev/shm) made by mproc_X_create(). Children started
 * afterwards with mproc_process_start() inherit it: they use the same handle.
 * A process started another way attaches with mproc_X_attach(&x, fd), where
 * fd comes from mproc_X_fd() in a process that has the object (pass it with
 * SCM_RIGHTS, or clear FD_CLOEXEC on a dup of it before exec: it is
 * close-on-exec).
 *
 * Ownership: a handle belongs to the process that made, inherited or attached
 * it; mproc_X_destroy(&x) unmaps that process's view, frees the handle and
 * sets x to NULL. The shared object lives while any process still maps it or
 * holds its descriptor, and the kernel frees it when the last one goes, crash
 * or not: no destroy in one process can pull it from under another.
 *
 * Waits take int timeout_ms: MPROC_WAIT_FOREVER (-1) blocks, 0 only polls.
 * Waits that sleep on a futex (Semaphore, Event, Condition's wait, Barrier)
 * return -EINTR when a signal handler runs; the lock of a Lock or RLock is a
 * robust pthread mutex, which cannot be interrupted, so acquiring one never
 * returns -EINTR (use a timeout).
 *
 * When a process dies:
 *  - holding a Lock or RLock: the next acquirer gets it with -EOWNERDEAD.
 *    It holds the lock then (the lock itself is usable again), but the data
 *    it guards may be half-updated: repair or discard it, then release.
 *  - a Semaphore's count taken by a dead process is lost (nothing says
 *    who took what); waiters are not stuck on a wake-up given to a process
 *    that died, because sleepers re-check the count at least every 200 ms.
 *  - Event: nothing is owned; nothing to recover.
 *  - Condition: its lock behaves as above (wait() may return -EOWNERDEAD);
 *    a notify() given to a waiter that dies before returning is lost, so use
 *    a timeout or mproc_condition_wait_for() when waiters can die.
 *  - Barrier: a party that dies makes the barrier broken; the others get
 *    MPROC_EBROKEN within about 50 ms (see mproc_barrier_wait()).
 */
#ifndef MPROC_SYNC_H
#define MPROC_SYNC_H

#include <mproc/common.h>

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Lock and RLock ---- */

/*
 * One handle type for both: a Lock (mproc_lock_create) is taken once; an
 * RLock (mproc_rlock_create) may be taken again by the thread that holds it,
 * and is free once released as many times. Both are owned by a thread:
 * another thread or process cannot release them (-EPERM), unlike Python's
 * Lock. Ownership is what lets the kernel hand a dead holder's lock to the
 * next acquirer instead of leaving it held for ever (Python's gh-88304).
 */
typedef struct mproc_lock mproc_lock;

/*
 * Creates a free Lock (or RLock) in new shared memory. The caller owns the
 * handle. Returns 0 and sets *out, or -EINVAL (NULL out), -ENOMEM, -EMFILE.
 */
MPROC_API int mproc_lock_create(mproc_lock **out);
MPROC_API int mproc_rlock_create(mproc_lock **out);

/*
 * Takes the lock, waiting up to timeout_ms. Any process that has the handle
 * may call it. Returns 0 when taken; -EOWNERDEAD when taken from a holder
 * that died (you hold it now; the data it guards may be inconsistent);
 * -ETIMEDOUT; -EDEADLK when the calling thread already holds a (non-recursive)
 * Lock; -EINVAL. Never -EINTR: a robust mutex wait is not interruptible.
 */
MPROC_API int mproc_lock_acquire(mproc_lock *lock, int timeout_ms);

/*
 * Releases the lock (one level of an RLock). Only the holding thread may.
 * Returns 0, -EPERM (not held by the calling thread), -EINVAL.
 */
MPROC_API int mproc_lock_release(mproc_lock *lock);

/*
 * Sets *held to whether any thread of any process holds the lock now (a
 * snapshot). A lock whose holder died reads as held until someone acquires
 * it. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_lock_locked(mproc_lock *lock, bool *held);

/*
 * Sets *fd to the descriptor of the lock's shared memory, for
 * mproc_lock_attach() in another process. The handle owns it: do not close
 * it; valid until destroy. Returns 0, -EINVAL (NULL, or the lock belongs to
 * a Condition or Value: attach those instead).
 */
MPROC_API int mproc_lock_fd(const mproc_lock *lock, int *fd);

/*
 * Maps the lock (or RLock) behind fd, which the caller keeps (it is
 * duplicated). Returns 0 and sets *out, or -EINVAL (not a lock), errno.
 */
MPROC_API int mproc_lock_attach(mproc_lock **out, int fd);

/*
 * Unmaps this process's view and frees the handle; sets *lock to NULL.
 * Returns 0, -EINVAL, or -EBUSY when the calling thread still holds the lock
 * (the kernel's dead-holder list points into the mapping while it is held).
 */
MPROC_API int mproc_lock_destroy(mproc_lock **lock);

/* ---- Semaphore and BoundedSemaphore ---- */

typedef struct mproc_semaphore mproc_semaphore;

/* Largest count a semaphore holds. */
#define MPROC_SEMAPHORE_MAX 0x7fffffffu

/*
 * Creates a semaphore with an initial count (<= MPROC_SEMAPHORE_MAX). A
 * bounded one refuses a release that would raise the count above its
 * initial value. The caller owns the handle. Returns 0, -EINVAL, -ENOMEM.
 */
MPROC_API int mproc_semaphore_create(mproc_semaphore **out, unsigned value);
MPROC_API int mproc_bounded_semaphore_create(mproc_semaphore **out, unsigned value);

/*
 * Decrements the count, waiting up to timeout_ms for it to be positive.
 * Returns 0, -ETIMEDOUT, -EINTR, -EINVAL.
 */
MPROC_API int mproc_semaphore_acquire(mproc_semaphore *sem, int timeout_ms);

/*
 * Increments the count and wakes one waiter. Any process may call it.
 * Returns 0; -EOVERFLOW when a bounded semaphore is already at its initial
 * value, or a count at MPROC_SEMAPHORE_MAX (the count is unchanged); -EINVAL.
 */
MPROC_API int mproc_semaphore_release(mproc_semaphore *sem);

/* Sets *value to the current count (a snapshot). Returns 0 or -EINVAL. */
MPROC_API int mproc_semaphore_get_value(mproc_semaphore *sem, unsigned *value);

/* As mproc_lock_fd() and mproc_lock_attach(), for semaphores. */
MPROC_API int mproc_semaphore_fd(const mproc_semaphore *sem, int *fd);
MPROC_API int mproc_semaphore_attach(mproc_semaphore **out, int fd);

/* Unmaps this process's view, frees the handle, sets *sem to NULL. 0 or -EINVAL. */
MPROC_API int mproc_semaphore_destroy(mproc_semaphore **sem);

/* ---- Event ---- */

typedef struct mproc_event mproc_event;

/* Creates a clear event. The caller owns the handle. Returns 0, -EINVAL, -ENOMEM. */
MPROC_API int mproc_event_create(mproc_event **out);

/* Sets the flag and wakes every waiter. Returns 0 or -EINVAL. */
MPROC_API int mproc_event_set(mproc_event *event);

/* Clears the flag. Returns 0 or -EINVAL. */
MPROC_API int mproc_event_clear(mproc_event *event);

/* Sets *set to the flag. Returns 0 or -EINVAL. */
MPROC_API int mproc_event_is_set(mproc_event *event, bool *set);

/*
 * Waits up to timeout_ms for the flag to be set. Returns 0 when it is set,
 * or was set while waiting even if cleared again since (as Python's wait()
 * returns True); -ETIMEDOUT; -EINTR; -EINVAL.
 */
MPROC_API int mproc_event_wait(mproc_event *event, int timeout_ms);

/* As mproc_lock_fd() and mproc_lock_attach(), for events. */
MPROC_API int mproc_event_fd(const mproc_event *event, int *fd);
MPROC_API int mproc_event_attach(mproc_event **out, int fd);

/* Unmaps this process's view, frees the handle, sets *event to NULL. 0 or -EINVAL. */
MPROC_API int mproc_event_destroy(mproc_event **event);

/* ---- Condition ---- */

typedef struct mproc_condition mproc_condition;

/* A predicate for mproc_condition_wait_for(), called with the lock held. */
typedef bool (*mproc_predicate_fn)(void *arg);

/*
 * Creates a condition variable on lock (a Lock or an RLock), or on an RLock
 * of its own when lock is NULL (Python's default). A lock passed in stays
 * the caller's and must outlive the condition. Returns 0, -EINVAL, -ENOMEM.
 */
MPROC_API int mproc_condition_create(mproc_condition **out, mproc_lock *lock);

/* Takes and releases the condition's lock: as mproc_lock_acquire/release. */
MPROC_API int mproc_condition_acquire(mproc_condition *cond, int timeout_ms);
MPROC_API int mproc_condition_release(mproc_condition *cond);

/*
 * Releases the lock (all levels of an RLock), sleeps until notified or for
 * timeout_ms, then takes the lock again (without limit) before returning,
 * whatever the result. The calling thread must hold the lock. Like POSIX
 * condition variables, it may return 0 without a matching notify: check the
 * state (or use wait_for). Returns 0 (notified), -ETIMEDOUT, -EINTR,
 * -EOWNERDEAD (the lock was taken back from a dead holder: the guarded data
 * may be inconsistent), -EPERM (lock not held), -EINVAL.
 */
MPROC_API int mproc_condition_wait(mproc_condition *cond, int timeout_ms);

/*
 * Waits until pred(arg) is true, up to timeout_ms in total; pred runs with
 * the lock held, in the caller. Returns 0 once pred is true (at once if it
 * already is), -ETIMEDOUT if it is still false at the end, -EINTR,
 * -EOWNERDEAD, -EPERM, -EINVAL as mproc_condition_wait().
 */
MPROC_API int mproc_condition_wait_for(mproc_condition *cond, mproc_predicate_fn pred, void *arg,
                                       int timeout_ms);

/*
 * Wakes at least min(n, waiters) of the threads waiting, possibly more (as
 * POSIX allows). The caller must hold the lock. Returns 0, -EPERM, -EINVAL.
 */
MPROC_API int mproc_condition_notify(mproc_condition *cond, int n);
MPROC_API int mproc_condition_notify_all(mproc_condition *cond);

/*
 * As mproc_lock_fd(). A condition attached with mproc_condition_attach()
 * needs its lock: pass the attached Lock/RLock it was created with, or NULL
 * if it made its own (that lock lives in the condition's memory). Returns
 * -EINVAL when the lock is not the condition's.
 */
MPROC_API int mproc_condition_fd(const mproc_condition *cond, int *fd);
MPROC_API int mproc_condition_attach(mproc_condition **out, int fd, mproc_lock *lock);

/*
 * Unmaps this process's view, frees the handle (not a lock passed in), sets
 * *cond to NULL. Returns 0, -EINVAL, -EBUSY (the caller holds its own lock).
 */
MPROC_API int mproc_condition_destroy(mproc_condition **cond);

/* ---- Barrier ---- */

typedef struct mproc_barrier mproc_barrier;

/*
 * Runs once per generation, in the last process to arrive, before the others
 * are released. Nonzero breaks the barrier (every waiter gets MPROC_EBROKEN).
 * It runs with the barrier's internal lock held: it must not call mproc_barrier_
 * functions on the same barrier.
 */
typedef int (*mproc_barrier_action_fn)(void *arg);

/*
 * Creates a barrier for parties (>= 1) arrivals per generation. action (may
 * be NULL) and arg are this handle's, passed on to children by fork; a
 * process that attaches gives its own. timeout_ms is the default wait for
 * mproc_barrier_wait() (MPROC_WAIT_FOREVER: none). Returns 0, -EINVAL,
 * -ENOMEM.
 */
MPROC_API int mproc_barrier_create(mproc_barrier **out, unsigned parties,
                                   mproc_barrier_action_fn action, void *arg, int timeout_ms);

/*
 * Waits until parties processes (or threads) have called it, then all return
 * 0 together and the barrier is ready for the next generation. *index (may be
 * NULL) gets the arrival order, 0 to parties - 1. timeout_ms < -1 uses the
 * barrier's default (MPROC_BARRIER_DEFAULT_TIMEOUT).
 *
 * Returns MPROC_EBROKEN when the barrier is or becomes broken: abort(), the
 * action failed, another waiter timed out, or a party died. The first wait of
 * each process registers it as a party (up to parties processes): while
 * someone waits, a registered process that is dead (or a zombie; recycled
 * pids are recognised by start time) and has not arrived in this generation
 * breaks the barrier within about 50 ms. A party that is done with the
 * barrier must call mproc_barrier_destroy() (or not exit until the others
 * are done with it too), or it counts as dead.
 * Returns -ETIMEDOUT to the waiter whose timeout expired (and breaks the
 * barrier, as Python does); -EINTR when a signal handler ran (the caller
 * leaves the barrier, which stays whole); -EINVAL.
 */
MPROC_API int mproc_barrier_wait(mproc_barrier *barrier, int timeout_ms, unsigned *index);

#define MPROC_BARRIER_DEFAULT_TIMEOUT (-2)

/* Breaks the barrier: current and future waiters get MPROC_EBROKEN until reset. */
MPROC_API int mproc_barrier_abort(mproc_barrier *barrier);

/*
 * Makes the barrier whole and empty again; threads waiting now get
 * MPROC_EBROKEN, and registered parties that have died are forgotten.
 */
MPROC_API int mproc_barrier_reset(mproc_barrier *barrier);

/* Read the number of parties, of waiters now, and whether it is broken. */
MPROC_API int mproc_barrier_parties(mproc_barrier *barrier, unsigned *parties);
MPROC_API int mproc_barrier_n_waiting(mproc_barrier *barrier, unsigned *n_waiting);
MPROC_API int mproc_barrier_broken(mproc_barrier *barrier, bool *broken);

/* As mproc_lock_fd(); attach takes this process's action, arg and default timeout. */
MPROC_API int mproc_barrier_fd(const mproc_barrier *barrier, int *fd);
MPROC_API int mproc_barrier_attach(mproc_barrier **out, int fd, mproc_barrier_action_fn action,
                                   void *arg, int timeout_ms);

/*
 * Unregisters the calling process as a party (so that its exit does not
 * break the barrier), unmaps its view, frees the handle, sets *barrier to
 * NULL. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_barrier_destroy(mproc_barrier **barrier);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_SYNC_H */
