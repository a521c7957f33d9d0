/*
 * robust.c: process-shared robust mutexes. A process can be killed at any
 * instruction, including while it holds a lock in shared memory. With a
 * robust mutex the kernel marks the lock when its holder dies and the next
 * locker gets EOWNERDEAD: it holds the lock and must repair the data, instead
 * of every process waiting forever (Python's gh-88304, gh-96062).
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <pthread.h>

int mproc__mutex_init(pthread_mutex_t *mutex)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc != 0)
        return -rc;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    return -rc;
}

struct timespec mproc__deadline_timespec(int64_t deadline)
{
    struct timespec ts = {.tv_sec = deadline / 1000, .tv_nsec = (deadline % 1000) * 1000000};
    return ts;
}

#if defined(__SANITIZE_THREAD__)
#define MPROC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MPROC_TSAN 1
#endif
#endif

#ifdef MPROC_TSAN
#include <sanitizer/tsan_interface.h>

/*
 * ThreadSanitizer intercepts pthread_mutex_lock() and timedlock(), not
 * clocklock(): without these annotations it sees every unlock after a
 * clocklock() as an unlock of an unlocked mutex and misses the ordering the
 * lock gives. They tell it what the call did, nothing more.
 */
static int clocklock(pthread_mutex_t *mutex, const struct timespec *abs_time)
{
    /* A lock with a deadline may fail, as a trylock may: say so up front. */
    __tsan_mutex_pre_lock(mutex, __tsan_mutex_try_lock);
    int rc = pthread_mutex_clocklock(mutex, CLOCK_MONOTONIC, abs_time);
    bool locked = rc == 0 || rc == EOWNERDEAD;
    __tsan_mutex_post_lock(mutex,
                           __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
    return rc;
}
#else
static int clocklock(pthread_mutex_t *mutex, const struct timespec *abs_time)
{
    return pthread_mutex_clocklock(mutex, CLOCK_MONOTONIC, abs_time);
}
#endif

/*
 * Why in slices: when a robust mutex is unlocked, or its holder dies, the
 * kernel wakes one waiter. A waiter SIGKILLed right after that wake-up takes
 * it with it, and the others sleep on a free lock until their own deadline
 * (seen as a 20 s stall in the queue_kill storm). Each waiter looks again
 * after LOCK_SLICE_MS, so a lost wake-up costs that much at most.
 */
#define LOCK_SLICE_MS 100

int mproc__mutex_lock(pthread_mutex_t *mutex, int64_t deadline)
{
    for (;;) {
        int64_t slice = mproc__now_ms() + LOCK_SLICE_MS;
        bool last = deadline >= 0 && deadline <= slice;
        struct timespec abs_time = mproc__deadline_timespec(last ? deadline : slice);
        int rc = clocklock(mutex, &abs_time);
        if (rc != ETIMEDOUT || last)
            return -rc;
    }
}
