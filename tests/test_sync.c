/*
 * Synchronization across processes: Lock, RLock, Semaphore, Event, Condition
 * and Barrier, shared by fork and attached by descriptor. Children report
 * through exit codes; holders are killed with a real SIGKILL to show that
 * nobody is left waiting for a dead process.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ---- */

static void kill_and_join(mproc_process *proc)
{
    cr_assert_eq(mproc_process_kill(proc), 0);
    test_join_expect(proc, -SIGKILL);
}

/* Exit code for a child reporting an mproc result: 0 ok, else a small code. */
static int code_of(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case -EOWNERDEAD:
        return 10;
    case -ETIMEDOUT:
        return 11;
    case -EINTR:
        return 12;
    case -EPERM:
        return 13;
    case MPROC_EBROKEN:
        return 14;
    default:
        return 99;
    }
}

static void on_signal(int signo)
{
    (void)signo;
}

/* What an EINTR child blocks on, and how it says that its handler is in place. */
struct eintr_job {
    void *object;
    mproc_semaphore *ready;
};

/*
 * In the child: a SIGUSR1 handler without SA_RESTART, so that blocking calls
 * see EINTR; then tells the parent it may signal. Returns the object.
 */
static void *catch_sigusr1(void *arg)
{
    struct eintr_job *job = arg;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    mproc_semaphore_release(job->ready);
    return job->object;
}

/*
 * Starts target with an eintr_job for object, waits for its handler, then
 * signals it every 20 ms until it exits: the first signal may land before it
 * is asleep, so one signal alone could be missed.
 */
static void signal_until_exit(mproc_target_fn target, void *object, int expected)
{
    struct eintr_job job = {.object = object};
    cr_assert_eq(mproc_semaphore_create(&job.ready, 0), 0);
    mproc_process *proc = test_start(target, &job);
    cr_assert_eq(mproc_semaphore_acquire(job.ready, 10000), 0);
    mproc_semaphore_destroy(&job.ready);
    for (int i = 0; i < 500; i++) {
        mproc_process_signal(proc, SIGUSR1);
        if (mproc_process_join(proc, 20) == 0)
            break;
    }
    test_join_expect(proc, expected);
}

static int barrier_wait_once(void *arg);

/* ---- Lock ---- */

struct counter_job {
    mproc_lock *lock;
    volatile int64_t *counter;
    int rounds;
};

static int count_under_lock(void *arg)
{
    struct counter_job *job = arg;
    for (int i = 0; i < job->rounds; i++) {
        if (mproc_lock_acquire(job->lock, 10000) != 0)
            return 1;
        int64_t v = *job->counter; /* a deliberately split read-modify-write */
        *job->counter = v + 1;
        if (mproc_lock_release(job->lock) != 0)
            return 2;
    }
    return 0;
}

Test(sync, lock_counter_exact_across_processes, .timeout = 60)
{
    mproc_lock *lock;
    mproc_shared_memory *shm;
    cr_assert_eq(mproc_lock_create(&lock), 0);
    cr_assert_eq(mproc_shared_memory_create(&shm, sizeof(int64_t)), 0);
    void *buf;
    mproc_shared_memory_buf(shm, &buf);
    struct counter_job job = {.lock = lock, .counter = buf, .rounds = 20000};
    mproc_process *procs[4];
    for (int i = 0; i < 4; i++)
        procs[i] = test_start(count_under_lock, &job);
    for (int i = 0; i < 4; i++)
        test_join_expect(procs[i], 0);
    cr_assert_eq(*job.counter, 80000, "counter %lld", (long long)*job.counter);
    cr_assert_eq(mproc_lock_destroy(&lock), 0);
    cr_assert_null(lock);
    mproc_shared_memory_destroy(&shm);
}

/* Shared record that a lock guards: a holder marks it dirty while updating. */
struct guarded {
    int dirty;
    int repairs;
};

struct holder_job {
    mproc_lock *lock;
    struct guarded *data;
    mproc_semaphore *ready;
};

static _Noreturn int hold_and_sleep(void *arg)
{
    struct holder_job *job = arg;
    int rc = mproc_lock_acquire(job->lock, 10000);
    if (rc != 0 && rc != -EOWNERDEAD)
        _exit(1);
    job->data->dirty = 1;
    mproc_semaphore_release(job->ready);
    for (;;)
        pause();
}

Test(sync, lock_holder_killed_200_times, .timeout = 120)
{
    mproc_lock *lock;
    mproc_semaphore *ready;
    mproc_shared_memory *shm;
    cr_assert_eq(mproc_lock_create(&lock), 0);
    cr_assert_eq(mproc_semaphore_create(&ready, 0), 0);
    cr_assert_eq(mproc_shared_memory_create(&shm, sizeof(struct guarded)), 0);
    void *buf;
    mproc_shared_memory_buf(shm, &buf);
    struct holder_job job = {.lock = lock, .data = buf, .ready = ready};
    for (int i = 0; i < 200; i++) {
        mproc_process *proc = test_start(hold_and_sleep, &job);
        cr_assert_eq(mproc_semaphore_acquire(ready, 10000), 0, "iteration %d", i);
        kill_and_join(proc);
        int rc = mproc_lock_acquire(lock, 5000);
        cr_assert_eq(rc, -EOWNERDEAD, "iteration %d: %s", i, mproc_strerror(rc));
        cr_assert_eq(job.data->dirty, 1);
        job.data->dirty = 0; /* the repair */
        job.data->repairs++;
        cr_assert_eq(mproc_lock_release(lock), 0);
        /* Repaired: the next taker sees a healthy lock. */
        cr_assert_eq(mproc_lock_acquire(lock, 0), 0);
        cr_assert_eq(mproc_lock_release(lock), 0);
    }
    cr_assert_eq(job.data->repairs, 200);
    mproc_lock_destroy(&lock);
    mproc_semaphore_destroy(&ready);
    mproc_shared_memory_destroy(&shm);
}

static int acquire_and_report(void *arg)
{
    struct holder_job *job = arg;
    int rc = mproc_lock_acquire(job->lock, 10000);
    if (rc == 0 || rc == -EOWNERDEAD)
        mproc_lock_release(job->lock);
    return code_of(rc);
}

Test(sync, lock_waiter_in_other_process_gets_ownerdead, .timeout = 30)
{
    mproc_lock *lock;
    mproc_semaphore *ready;
    mproc_shared_memory *shm;
    cr_assert_eq(mproc_rlock_create(&lock), 0);
    cr_assert_eq(mproc_semaphore_create(&ready, 0), 0);
    cr_assert_eq(mproc_shared_memory_create(&shm, sizeof(struct guarded)), 0);
    void *buf;
    mproc_shared_memory_buf(shm, &buf);
    struct holder_job job = {.lock = lock, .data = buf, .ready = ready};
    mproc_process *holder = test_start(hold_and_sleep, &job);
    cr_assert_eq(mproc_semaphore_acquire(ready, 10000), 0);
    mproc_process *waiter = test_start(acquire_and_report, &job);
    usleep(100 * 1000); /* give the waiter time to block: either way it must see the death */
    kill_and_join(holder);
    test_join_expect(waiter, code_of(-EOWNERDEAD));
    mproc_lock_destroy(&lock);
    mproc_semaphore_destroy(&ready);
    mproc_shared_memory_destroy(&shm);
}

static int release_foreign(void *arg)
{
    return code_of(mproc_lock_release(arg));
}

static void *release_in_thread(void *arg)
{
    return (void *)(intptr_t)mproc_lock_release(arg);
}

Test(sync, lock_owner_rules_and_timeouts, .timeout = 30)
{
    mproc_lock *lock;
    cr_assert_eq(mproc_lock_create(&lock), 0);
    bool held;
    cr_assert_eq(mproc_lock_locked(lock, &held), 0);
    cr_assert(!held);
    cr_assert_eq(mproc_lock_release(lock), -EPERM);
    cr_assert_eq(mproc_lock_acquire(lock, MPROC_WAIT_FOREVER), 0);
    cr_assert_eq(mproc_lock_locked(lock, &held), 0);
    cr_assert(held);
    /* A Lock is not recursive: waiting on ourselves would hang. */
    cr_assert_eq(mproc_lock_acquire(lock, 1000), -EDEADLK);
    /* Another process or thread may not release it (unlike Python's Lock). */
    test_join_expect(test_start(release_foreign, lock), code_of(-EPERM));
    pthread_t thread;
    void *result;
    pthread_create(&thread, NULL, release_in_thread, lock);
    pthread_join(thread, &result);
    cr_assert_eq((int)(intptr_t)result, -EPERM);
    cr_assert_eq(mproc_lock_destroy(&lock), -EBUSY);

    /* Held by a child: timeouts in the parent. */
    cr_assert_eq(mproc_lock_release(lock), 0);
    mproc_semaphore *ready;
    mproc_shared_memory *shm;
    cr_assert_eq(mproc_semaphore_create(&ready, 0), 0);
    cr_assert_eq(mproc_shared_memory_create(&shm, sizeof(struct guarded)), 0);
    void *buf;
    mproc_shared_memory_buf(shm, &buf);
    struct holder_job job = {.lock = lock, .data = buf, .ready = ready};
    mproc_process *holder = test_start(hold_and_sleep, &job);
    cr_assert_eq(mproc_semaphore_acquire(ready, 10000), 0);
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_lock_acquire(lock, 0), -ETIMEDOUT);
    cr_assert_lt(test_now_ms() - t0, 100);
    t0 = test_now_ms();
    cr_assert_eq(mproc_lock_acquire(lock, 200), -ETIMEDOUT);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert_geq(elapsed, 195);
    cr_assert_lt(elapsed, 1000, "acquire(200) took %lld ms", (long long)elapsed);
    kill_and_join(holder);
    /* Asking does not take the owner-died notice away from the next acquirer. */
    cr_assert_eq(mproc_lock_locked(lock, &held), 0);
    cr_assert(held, "a dead holder's lock reads as held");
    cr_assert_eq(mproc_lock_acquire(lock, 1000), -EOWNERDEAD);
    cr_assert_eq(mproc_lock_release(lock), 0);
    mproc_lock_destroy(&lock);
    mproc_semaphore_destroy(&ready);
    mproc_shared_memory_destroy(&shm);
}

static int try_take_once(void *arg)
{
    int rc = mproc_lock_acquire(arg, 0);
    if (rc == 0)
        mproc_lock_release(arg);
    return code_of(rc);
}

Test(sync, rlock_recursion_and_owner, .timeout = 30)
{
    mproc_lock *rlock;
    cr_assert_eq(mproc_rlock_create(&rlock), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(mproc_lock_acquire(rlock, 0), 0);
    test_join_expect(test_start(try_take_once, rlock), code_of(-ETIMEDOUT));
    test_join_expect(test_start(release_foreign, rlock), code_of(-EPERM));
    cr_assert_eq(mproc_lock_release(rlock), 0);
    cr_assert_eq(mproc_lock_release(rlock), 0);
    /* Still held once: others still wait. */
    test_join_expect(test_start(try_take_once, rlock), code_of(-ETIMEDOUT));
    cr_assert_eq(mproc_lock_release(rlock), 0);
    cr_assert_eq(mproc_lock_release(rlock), -EPERM);
    test_join_expect(test_start(try_take_once, rlock), 0);
    cr_assert_eq(mproc_lock_destroy(&rlock), 0);
}

Test(sync, lock_attach_by_fd, .timeout = 30)
{
    mproc_lock *lock, *view;
    mproc_semaphore *sem;
    cr_assert_eq(mproc_lock_create(&lock), 0);
    cr_assert_eq(mproc_semaphore_create(&sem, 0), 0);
    int fd, sem_fd;
    cr_assert_eq(mproc_lock_fd(lock, &fd), 0);
    cr_assert_eq(mproc_semaphore_fd(sem, &sem_fd), 0);
    cr_assert_eq(mproc_lock_attach(&view, sem_fd), -EINVAL, "a semaphore is not a lock");
    cr_assert_eq(mproc_lock_attach(&view, -1), -EINVAL);
    cr_assert_eq(mproc_lock_attach(&view, fd), 0);
    /* The creator's handle may go: the attached view keeps the lock alive. */
    cr_assert_eq(mproc_lock_destroy(&lock), 0);
    cr_assert_eq(mproc_lock_acquire(view, 0), 0);
    test_join_expect(test_start(try_take_once, view), code_of(-ETIMEDOUT));
    cr_assert_eq(mproc_lock_release(view), 0);
    test_join_expect(test_start(try_take_once, view), 0);
    cr_assert_eq(mproc_lock_destroy(&view), 0);
    mproc_semaphore_destroy(&sem);
}

static _Noreturn int rlock_deep_and_sleep(void *arg)
{
    struct holder_job *job = arg;
    for (int i = 0; i < 3; i++)
        mproc_lock_acquire(job->lock, 10000);
    mproc_semaphore_release(job->ready);
    for (;;)
        pause();
}

Test(sync, rlock_holder_killed_at_depth_three, .timeout = 30)
{
    struct holder_job job = {0};
    cr_assert_eq(mproc_rlock_create(&job.lock), 0);
    cr_assert_eq(mproc_semaphore_create(&job.ready, 0), 0);
    mproc_process *proc = test_start(rlock_deep_and_sleep, &job);
    cr_assert_eq(mproc_semaphore_acquire(job.ready, 10000), 0);
    kill_and_join(proc);
    cr_assert_eq(mproc_lock_acquire(job.lock, 5000), -EOWNERDEAD);
    /* The dead holder's depth is gone: one release frees it. */
    cr_assert_eq(mproc_lock_release(job.lock), 0);
    cr_assert_eq(mproc_lock_release(job.lock), -EPERM);
    test_join_expect(test_start(try_take_once, job.lock), 0);
    mproc_lock_destroy(&job.lock);
    mproc_semaphore_destroy(&job.ready);
}

static int release_semaphore_and_set_event(void *arg)
{
    int *fds = arg;
    mproc_semaphore *sem;
    mproc_event *event;
    if (mproc_semaphore_attach(&sem, fds[0]) != 0 || mproc_event_attach(&event, fds[1]) != 0)
        return 1;
    mproc_semaphore_release(sem);
    mproc_event_set(event);
    mproc_semaphore_destroy(&sem);
    mproc_event_destroy(&event);
    return 0;
}

Test(sync, semaphore_event_barrier_attach_by_fd, .timeout = 30)
{
    mproc_semaphore *sem;
    mproc_event *event;
    mproc_barrier *barrier, *view;
    cr_assert_eq(mproc_semaphore_create(&sem, 0), 0);
    cr_assert_eq(mproc_event_create(&event), 0);
    int fds[2];
    cr_assert_eq(mproc_semaphore_fd(sem, &fds[0]), 0);
    cr_assert_eq(mproc_event_fd(event, &fds[1]), 0);
    /* The child maps them from the descriptors, as an unrelated process would. */
    test_join_expect(test_start(release_semaphore_and_set_event, fds), 0);
    cr_assert_eq(mproc_semaphore_acquire(sem, 0), 0);
    cr_assert_eq(mproc_event_wait(event, 0), 0);

    cr_assert_eq(mproc_barrier_create(&barrier, 2, NULL, NULL, MPROC_WAIT_FOREVER), 0);
    int fd;
    cr_assert_eq(mproc_barrier_fd(barrier, &fd), 0);
    cr_assert_eq(mproc_barrier_attach(&view, fd, NULL, NULL, MPROC_WAIT_FOREVER), 0);
    unsigned parties;
    cr_assert_eq(mproc_barrier_parties(view, &parties), 0);
    cr_assert_eq(parties, 2);
    mproc_process *child = test_start(barrier_wait_once, view);
    cr_assert_eq(mproc_barrier_wait(barrier, 10000, NULL), 0);
    test_join_expect(child, 0);
    mproc_barrier_destroy(&view);
    mproc_barrier_destroy(&barrier);
    mproc_semaphore_destroy(&sem);
    mproc_event_destroy(&event);
}

/* ---- Semaphore ---- */

struct sem_job {
    mproc_semaphore *sem;
    mproc_value *inside;
    mproc_value *most;
};

static int use_limited_resource(void *arg)
{
    struct sem_job *job = arg;
    for (int i = 0; i < 50; i++) {
        if (mproc_semaphore_acquire(job->sem, 10000) != 0)
            return 1;
        int64_t now;
        mproc_value_add_i64(job->inside, 1, &now);
        mproc_value_lock(job->most, MPROC_WAIT_FOREVER);
        int64_t most;
        mproc_value_get_i64(job->most, &most);
        if (now > most)
            mproc_value_set_i64(job->most, now);
        mproc_value_unlock(job->most);
        usleep(200);
        mproc_value_add_i64(job->inside, -1, NULL);
        if (mproc_semaphore_release(job->sem) != 0)
            return 2;
    }
    return 0;
}

Test(sync, semaphore_limits_processes, .timeout = 60)
{
    struct sem_job job;
    cr_assert_eq(mproc_semaphore_create(&job.sem, 2), 0);
    cr_assert_eq(mproc_value_create(&job.inside, MPROC_TYPE_INT64, false), 0);
    cr_assert_eq(mproc_value_create(&job.most, MPROC_TYPE_INT64, true), 0);
    mproc_process *procs[5];
    for (int i = 0; i < 5; i++)
        procs[i] = test_start(use_limited_resource, &job);
    for (int i = 0; i < 5; i++)
        test_join_expect(procs[i], 0);
    int64_t most;
    mproc_value_get_i64(job.most, &most);
    cr_assert(most >= 1 && most <= 2, "%lld inside at once", (long long)most);
    unsigned value;
    cr_assert_eq(mproc_semaphore_get_value(job.sem, &value), 0);
    cr_assert_eq(value, 2);
    mproc_semaphore_destroy(&job.sem);
    mproc_value_destroy(&job.inside);
    mproc_value_destroy(&job.most);
}

static int take_semaphore(void *arg)
{
    return code_of(mproc_semaphore_acquire(arg, 10000));
}

Test(sync, semaphore_counts_and_timeouts, .timeout = 30)
{
    mproc_semaphore *sem;
    cr_assert_eq(mproc_semaphore_create(&sem, 2), 0);
    cr_assert_eq(mproc_semaphore_acquire(sem, 0), 0);
    cr_assert_eq(mproc_semaphore_acquire(sem, MPROC_WAIT_FOREVER), 0);
    cr_assert_eq(mproc_semaphore_acquire(sem, 0), -ETIMEDOUT);
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_semaphore_acquire(sem, 200), -ETIMEDOUT);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert(elapsed >= 195 && elapsed < 1000, "acquire(200) took %lld ms", (long long)elapsed);
    /* Unbounded: releasing past the initial value is fine. */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(mproc_semaphore_release(sem), 0);
    unsigned value;
    mproc_semaphore_get_value(sem, &value);
    cr_assert_eq(value, 3);
    cr_assert_eq(mproc_semaphore_destroy(&sem), 0);
    cr_assert_null(sem);
    cr_assert_eq(mproc_semaphore_create(&sem, MPROC_SEMAPHORE_MAX + 1u), -EINVAL);
}

Test(sync, semaphore_wakes_other_process_despite_dead_waiter, .timeout = 30)
{
    mproc_semaphore *sem;
    cr_assert_eq(mproc_semaphore_create(&sem, 0), 0);
    mproc_process *doomed = test_start(take_semaphore, sem);
    mproc_process *waiter = test_start(take_semaphore, sem);
    usleep(100 * 1000); /* let both fall asleep */
    kill_and_join(doomed);
    cr_assert_eq(mproc_semaphore_release(sem), 0);
    test_join_expect(waiter, 0);
    unsigned value;
    mproc_semaphore_get_value(sem, &value);
    cr_assert_eq(value, 0);
    mproc_semaphore_destroy(&sem);
}

Test(sync, bounded_semaphore_over_release, .timeout = 10)
{
    mproc_semaphore *sem;
    cr_assert_eq(mproc_bounded_semaphore_create(&sem, 1), 0);
    cr_assert_eq(mproc_semaphore_release(sem), -EOVERFLOW);
    cr_assert_eq(mproc_semaphore_acquire(sem, 0), 0);
    cr_assert_eq(mproc_semaphore_release(sem), 0);
    cr_assert_eq(mproc_semaphore_release(sem), -EOVERFLOW);
    unsigned value;
    mproc_semaphore_get_value(sem, &value);
    cr_assert_eq(value, 1);
    mproc_semaphore_destroy(&sem);
}

static int take_semaphore_with_handler(void *arg)
{
    return code_of(mproc_semaphore_acquire(catch_sigusr1(arg), 20000));
}

Test(sync, semaphore_eintr, .timeout = 30)
{
    mproc_semaphore *sem;
    cr_assert_eq(mproc_semaphore_create(&sem, 0), 0);
    signal_until_exit(take_semaphore_with_handler, sem, code_of(-EINTR));
    mproc_semaphore_destroy(&sem);
}

/* ---- Event ---- */

struct event_job {
    mproc_event *event;
    mproc_semaphore *ready;
};

static int wait_event(void *arg)
{
    struct event_job *job = arg;
    mproc_semaphore_release(job->ready);
    return code_of(mproc_event_wait(job->event, 10000));
}

Test(sync, event_wakes_waiters_in_other_processes, .timeout = 30)
{
    struct event_job job;
    cr_assert_eq(mproc_event_create(&job.event), 0);
    cr_assert_eq(mproc_semaphore_create(&job.ready, 0), 0);
    mproc_process *procs[3];
    for (int i = 0; i < 3; i++)
        procs[i] = test_start(wait_event, &job);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(mproc_semaphore_acquire(job.ready, 10000), 0);
    usleep(50 * 1000); /* most likely asleep now; correct either way */
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_event_set(job.event), 0);
    for (int i = 0; i < 3; i++)
        test_join_expect(procs[i], 0);
    cr_assert_lt(test_now_ms() - t0, 2000);
    bool set;
    cr_assert_eq(mproc_event_is_set(job.event, &set), 0);
    cr_assert(set);
    cr_assert_eq(mproc_event_wait(job.event, 0), 0);
    cr_assert_eq(mproc_event_clear(job.event), 0);
    cr_assert_eq(mproc_event_is_set(job.event, &set), 0);
    cr_assert(!set);
    cr_assert_eq(mproc_event_wait(job.event, 0), -ETIMEDOUT);
    t0 = test_now_ms();
    cr_assert_eq(mproc_event_wait(job.event, 200), -ETIMEDOUT);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert(elapsed >= 195 && elapsed < 1000, "wait(200) took %lld ms", (long long)elapsed);
    mproc_event_destroy(&job.event);
    mproc_semaphore_destroy(&job.ready);
}

static int wait_event_with_handler(void *arg)
{
    return code_of(mproc_event_wait(catch_sigusr1(arg), 20000));
}

Test(sync, event_eintr, .timeout = 30)
{
    mproc_event *event;
    cr_assert_eq(mproc_event_create(&event), 0);
    signal_until_exit(wait_event_with_handler, event, code_of(-EINTR));
    mproc_event_destroy(&event);
}

/* ---- Condition ---- */

struct cond_state {
    int waiting;
    int go;
    int tokens;
    int woken;
};

struct cond_job {
    mproc_condition *cond;
    struct cond_state *state;
};

static bool go_is_set(void *arg)
{
    return ((struct cond_state *)arg)->go != 0;
}

static bool three_waiting(void *arg)
{
    return ((struct cond_state *)arg)->waiting == 3;
}

static int wait_for_go(void *arg)
{
    struct cond_job *job = arg;
    if (mproc_condition_acquire(job->cond, 10000) != 0)
        return 1;
    job->state->waiting++;
    mproc_condition_notify_all(job->cond);
    int rc = mproc_condition_wait_for(job->cond, go_is_set, job->state, 10000);
    mproc_condition_release(job->cond);
    return code_of(rc);
}

static struct cond_job make_cond_job(mproc_shared_memory **shm, mproc_lock *lock)
{
    struct cond_job job;
    cr_assert_eq(mproc_condition_create(&job.cond, lock), 0);
    cr_assert_eq(mproc_shared_memory_create(shm, sizeof(struct cond_state)), 0);
    void *buf;
    mproc_shared_memory_buf(*shm, &buf);
    job.state = buf;
    return job;
}

Test(sync, condition_notify_all_and_wait_for, .timeout = 30)
{
    mproc_shared_memory *shm;
    struct cond_job job = make_cond_job(&shm, NULL);
    mproc_process *procs[3];
    for (int i = 0; i < 3; i++)
        procs[i] = test_start(wait_for_go, &job);
    cr_assert_eq(mproc_condition_acquire(job.cond, 10000), 0);
    cr_assert_eq(mproc_condition_wait_for(job.cond, three_waiting, job.state, 10000), 0);
    job.state->go = 1;
    cr_assert_eq(mproc_condition_notify_all(job.cond), 0);
    cr_assert_eq(mproc_condition_release(job.cond), 0);
    for (int i = 0; i < 3; i++)
        test_join_expect(procs[i], 0);
    cr_assert_eq(mproc_condition_destroy(&job.cond), 0);
    mproc_shared_memory_destroy(&shm);
}

static int take_token(void *arg)
{
    struct cond_job *job = arg;
    if (mproc_condition_acquire(job->cond, 10000) != 0)
        return 1;
    job->state->waiting++;
    mproc_condition_notify_all(job->cond);
    int rc = 0;
    while (job->state->tokens == 0 && rc == 0)
        rc = mproc_condition_wait(job->cond, 10000);
    if (rc == 0) {
        job->state->tokens--;
        job->state->woken++;
        mproc_condition_notify_all(job->cond);
    }
    mproc_condition_release(job->cond);
    return code_of(rc);
}

struct woken_at_least {
    struct cond_state *state;
    int n;
};

static bool enough_woken(void *arg)
{
    struct woken_at_least *w = arg;
    return w->state->woken >= w->n;
}

Test(sync, condition_notify_one_at_a_time, .timeout = 30)
{
    mproc_lock *lock;
    cr_assert_eq(mproc_lock_create(&lock), 0); /* a plain Lock this time */
    mproc_shared_memory *shm;
    struct cond_job job = make_cond_job(&shm, lock);
    mproc_process *procs[3];
    for (int i = 0; i < 3; i++)
        procs[i] = test_start(take_token, &job);
    cr_assert_eq(mproc_condition_acquire(job.cond, 10000), 0);
    cr_assert_eq(mproc_condition_wait_for(job.cond, three_waiting, job.state, 10000), 0);
    for (int i = 1; i <= 3; i++) {
        job.state->tokens++;
        cr_assert_eq(mproc_condition_notify(job.cond, 1), 0);
        struct woken_at_least w = {job.state, i};
        cr_assert_eq(mproc_condition_wait_for(job.cond, enough_woken, &w, 10000), 0, "token %d", i);
        cr_assert_eq(job.state->woken, i);
    }
    cr_assert_eq(mproc_condition_release(job.cond), 0);
    for (int i = 0; i < 3; i++)
        test_join_expect(procs[i], 0);
    mproc_condition_destroy(&job.cond);
    mproc_lock_destroy(&lock);
    mproc_shared_memory_destroy(&shm);
}

static bool never(void *arg)
{
    return false;
}

Test(sync, condition_rules_and_timeouts, .timeout = 30)
{
    mproc_condition *cond;
    cr_assert_eq(mproc_condition_create(&cond, NULL), 0);
    cr_assert_eq(mproc_condition_wait(cond, 10), -EPERM);
    cr_assert_eq(mproc_condition_notify(cond, 1), -EPERM);
    cr_assert_eq(mproc_condition_wait_for(cond, never, NULL, 10), -EPERM);
    cr_assert_eq(mproc_condition_acquire(cond, 0), 0);
    cr_assert_eq(mproc_condition_acquire(cond, 0), 0); /* its own lock is an RLock */
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_condition_wait(cond, 200), -ETIMEDOUT);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert(elapsed >= 195 && elapsed < 1000, "wait(200) took %lld ms", (long long)elapsed);
    t0 = test_now_ms();
    cr_assert_eq(mproc_condition_wait_for(cond, never, NULL, 200), -ETIMEDOUT);
    elapsed = test_now_ms() - t0;
    cr_assert(elapsed >= 195 && elapsed < 1000, "wait_for(200) took %lld ms", (long long)elapsed);
    cr_assert_eq(mproc_condition_notify(cond, -1), -EINVAL);
    cr_assert_eq(mproc_condition_wait_for(cond, NULL, NULL, 10), -EINVAL);
    /* Both levels are held again after the waits. */
    cr_assert_eq(mproc_condition_destroy(&cond), -EBUSY);
    cr_assert_eq(mproc_condition_release(cond), 0);
    cr_assert_eq(mproc_condition_release(cond), 0);
    cr_assert_eq(mproc_condition_release(cond), -EPERM);
    cr_assert_eq(mproc_condition_destroy(&cond), 0);
    cr_assert_null(cond);
}

static int condition_wait_with_handler(void *arg)
{
    mproc_condition *cond = catch_sigusr1(arg);
    mproc_condition_acquire(cond, 10000);
    int rc = mproc_condition_wait(cond, 20000);
    /* Whatever the result, the lock is held again. */
    if (mproc_condition_release(cond) != 0)
        return 50;
    return code_of(rc);
}

Test(sync, condition_eintr, .timeout = 30)
{
    mproc_condition *cond;
    cr_assert_eq(mproc_condition_create(&cond, NULL), 0);
    signal_until_exit(condition_wait_with_handler, cond, code_of(-EINTR));
    mproc_condition_destroy(&cond);
}

Test(sync, condition_attach_needs_its_lock, .timeout = 10)
{
    mproc_lock *lock, *other, *lock_view;
    mproc_condition *cond, *view;
    cr_assert_eq(mproc_lock_create(&lock), 0);
    cr_assert_eq(mproc_lock_create(&other), 0);
    cr_assert_eq(mproc_condition_create(&cond, lock), 0);
    int fd, lock_fd;
    cr_assert_eq(mproc_condition_fd(cond, &fd), 0);
    cr_assert_eq(mproc_lock_fd(lock, &lock_fd), 0);
    cr_assert_eq(mproc_condition_attach(&view, fd, NULL), -EINVAL);
    cr_assert_eq(mproc_condition_attach(&view, fd, other), -EINVAL);
    cr_assert_eq(mproc_lock_attach(&lock_view, lock_fd), 0);
    cr_assert_eq(mproc_condition_attach(&view, fd, lock_view), 0);
    cr_assert_eq(mproc_condition_acquire(view, 0), 0);
    cr_assert_eq(mproc_lock_acquire(lock, 0), -EDEADLK, "the same lock, seen twice");
    cr_assert_eq(mproc_condition_release(view), 0);
    mproc_condition_destroy(&view);
    mproc_condition_destroy(&cond);
    mproc_lock_destroy(&lock_view);
    mproc_lock_destroy(&lock);
    mproc_lock_destroy(&other);
}

struct dying_notifier {
    mproc_condition *cond;
    mproc_semaphore *ready;
    mproc_process *proc;
};

/* Takes the lock (once the waiter has let go of it), notifies, and dies holding it. */
static _Noreturn int notify_and_stall(void *arg)
{
    struct dying_notifier *job = arg;
    if (mproc_condition_acquire(job->cond, 10000) != 0)
        _exit(1);
    mproc_condition_notify_all(job->cond);
    mproc_semaphore_release(job->ready);
    for (;;)
        pause();
}

static void *kill_when_ready(void *arg)
{
    struct dying_notifier *job = arg;
    if (mproc_semaphore_acquire(job->ready, 10000) == 0)
        mproc_process_kill(job->proc);
    return NULL;
}

Test(sync, condition_wait_gets_ownerdead_from_dead_notifier, .timeout = 30)
{
    struct dying_notifier job;
    cr_assert_eq(mproc_condition_create(&job.cond, NULL), 0);
    cr_assert_eq(mproc_semaphore_create(&job.ready, 0), 0);
    cr_assert_eq(mproc_condition_acquire(job.cond, 0), 0);
    job.proc = test_start(notify_and_stall, &job);
    pthread_t killer;
    pthread_create(&killer, NULL, kill_when_ready, &job);
    /* Woken by the notify, then blocked on the lock until its holder is killed. */
    int rc = mproc_condition_wait(job.cond, 10000);
    cr_assert_eq(rc, -EOWNERDEAD, "wait: %s", mproc_strerror(rc));
    cr_assert_eq(mproc_condition_release(job.cond), 0);
    pthread_join(killer, NULL);
    test_join_expect(job.proc, -SIGKILL);
    mproc_condition_destroy(&job.cond);
    mproc_semaphore_destroy(&job.ready);
}

/* ---- Barrier ---- */

struct barrier_job {
    mproc_barrier *barrier;
    mproc_value *actions;
    int rounds;
};

static int count_action(void *arg)
{
    struct barrier_job *job = arg;
    mproc_value_add_i64(job->actions, 1, NULL);
    return 0;
}

static int barrier_rounds(void *arg)
{
    struct barrier_job *job = arg;
    for (int i = 0; i < job->rounds; i++) {
        unsigned index;
        int rc = mproc_barrier_wait(job->barrier, 10000, &index);
        if (rc != 0)
            return code_of(rc);
        if (index > 2)
            return 30;
        /* Every party of this round has arrived: the action ran once per round. */
        int64_t actions;
        mproc_value_get_i64(job->actions, &actions);
        if (actions < i + 1)
            return 31;
    }
    mproc_barrier_destroy(&job->barrier);
    return 0;
}

Test(sync, barrier_action_once_per_generation, .timeout = 60)
{
    struct barrier_job job = {.rounds = 50};
    cr_assert_eq(mproc_value_create(&job.actions, MPROC_TYPE_INT64, false), 0);
    cr_assert_eq(mproc_barrier_create(&job.barrier, 3, count_action, &job, MPROC_WAIT_FOREVER), 0);
    mproc_process *procs[3];
    for (int i = 0; i < 3; i++)
        procs[i] = test_start(barrier_rounds, &job);
    for (int i = 0; i < 3; i++)
        test_join_expect(procs[i], 0);
    int64_t actions;
    mproc_value_get_i64(job.actions, &actions);
    cr_assert_eq(actions, 50);
    unsigned parties, waiting;
    cr_assert_eq(mproc_barrier_parties(job.barrier, &parties), 0);
    cr_assert_eq(parties, 3);
    cr_assert_eq(mproc_barrier_n_waiting(job.barrier, &waiting), 0);
    cr_assert_eq(waiting, 0);
    mproc_barrier_destroy(&job.barrier);
    mproc_value_destroy(&job.actions);
}

static int failing_action(void *arg)
{
    return -1;
}

Test(sync, barrier_failing_action_breaks, .timeout = 10)
{
    mproc_barrier *barrier;
    cr_assert_eq(mproc_barrier_create(&barrier, 1, failing_action, NULL, MPROC_WAIT_FOREVER), 0);
    cr_assert_eq(mproc_barrier_wait(barrier, 1000, NULL), MPROC_EBROKEN);
    bool broken;
    cr_assert_eq(mproc_barrier_broken(barrier, &broken), 0);
    cr_assert(broken);
    mproc_barrier_destroy(&barrier);
}

static int barrier_wait_once(void *arg)
{
    mproc_barrier *barrier = arg;
    int rc = mproc_barrier_wait(barrier, 10000, NULL);
    mproc_barrier_destroy(&barrier);
    return code_of(rc);
}

Test(sync, barrier_timeout_breaks_and_reset_repairs, .timeout = 30)
{
    mproc_barrier *barrier;
    cr_assert_eq(mproc_barrier_create(&barrier, 2, NULL, NULL, 200), 0);
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_barrier_wait(barrier, MPROC_BARRIER_DEFAULT_TIMEOUT, NULL), -ETIMEDOUT);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert(elapsed >= 195 && elapsed < 1000, "default timeout 200 took %lld ms",
              (long long)elapsed);
    bool broken;
    mproc_barrier_broken(barrier, &broken);
    cr_assert(broken);
    cr_assert_eq(mproc_barrier_wait(barrier, 1000, NULL), MPROC_EBROKEN);
    cr_assert_eq(mproc_barrier_reset(barrier), 0);
    mproc_barrier_broken(barrier, &broken);
    cr_assert(!broken);
    mproc_process *child = test_start(barrier_wait_once, barrier);
    cr_assert_eq(mproc_barrier_wait(barrier, 10000, NULL), 0);
    test_join_expect(child, 0);
    mproc_barrier_destroy(&barrier);
}

static void wait_for_n_waiting(mproc_barrier *barrier, unsigned n)
{
    for (int i = 0; i < 1000; i++) {
        unsigned waiting;
        cr_assert_eq(mproc_barrier_n_waiting(barrier, &waiting), 0);
        if (waiting == n)
            return;
        usleep(5000);
    }
    cr_assert_fail("never saw %u waiting", n);
}

Test(sync, barrier_abort_and_reset_break_waiters, .timeout = 30)
{
    mproc_barrier *barrier;
    cr_assert_eq(mproc_barrier_create(&barrier, 3, NULL, NULL, MPROC_WAIT_FOREVER), 0);
    mproc_process *child = test_start(barrier_wait_once, barrier);
    wait_for_n_waiting(barrier, 1);
    cr_assert_eq(mproc_barrier_abort(barrier), 0);
    test_join_expect(child, code_of(MPROC_EBROKEN));
    cr_assert_eq(mproc_barrier_reset(barrier), 0);

    child = test_start(barrier_wait_once, barrier);
    wait_for_n_waiting(barrier, 1);
    cr_assert_eq(mproc_barrier_reset(barrier), 0);
    test_join_expect(child, code_of(MPROC_EBROKEN));
    bool broken;
    mproc_barrier_broken(barrier, &broken);
    cr_assert(!broken, "reset leaves the barrier whole");
    mproc_process *a = test_start(barrier_wait_once, barrier);
    mproc_process *b = test_start(barrier_wait_once, barrier);
    cr_assert_eq(mproc_barrier_wait(barrier, 10000, NULL), 0);
    test_join_expect(a, 0);
    test_join_expect(b, 0);
    mproc_barrier_destroy(&barrier);
}

static int barrier_then_stall(void *arg)
{
    mproc_barrier *barrier = arg;
    if (mproc_barrier_wait(barrier, 10000, NULL) != 0)
        return 1;
    for (;;)
        pause();
}

static int barrier_twice(void *arg)
{
    mproc_barrier *barrier = arg;
    int rc = mproc_barrier_wait(barrier, 10000, NULL);
    if (rc == 0)
        rc = mproc_barrier_wait(barrier, MPROC_WAIT_FOREVER, NULL);
    return code_of(rc);
}

Test(sync, barrier_broken_by_killed_party, .timeout = 30)
{
    mproc_barrier *barrier;
    cr_assert_eq(mproc_barrier_create(&barrier, 3, NULL, NULL, MPROC_WAIT_FOREVER), 0);
    mproc_process *doomed = test_start(barrier_then_stall, barrier);
    mproc_process *other = test_start(barrier_twice, barrier);
    /* Generation 0: all three arrive; the doomed party is now registered. */
    cr_assert_eq(mproc_barrier_wait(barrier, 10000, NULL), 0);
    wait_for_n_waiting(barrier, 1); /* the other party waits in generation 1 */
    cr_assert_eq(mproc_process_kill(doomed), 0);
    int64_t t0 = test_now_ms();
    /* No timeout: only the death detection can end this wait. */
    cr_assert_eq(mproc_barrier_wait(barrier, MPROC_WAIT_FOREVER, NULL), MPROC_EBROKEN);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert_lt(elapsed, 2000, "noticed the death after %lld ms", (long long)elapsed);
    test_join_expect(other, code_of(MPROC_EBROKEN));
    test_join_expect(doomed, -SIGKILL);
    mproc_barrier_destroy(&barrier);
}

static int barrier_wait_with_handler(void *arg)
{
    return code_of(mproc_barrier_wait(catch_sigusr1(arg), 20000, NULL));
}

Test(sync, barrier_eintr_leaves_it_whole, .timeout = 30)
{
    mproc_barrier *barrier;
    cr_assert_eq(mproc_barrier_create(&barrier, 2, NULL, NULL, MPROC_WAIT_FOREVER), 0);
    signal_until_exit(barrier_wait_with_handler, barrier, code_of(-EINTR));
    bool broken;
    unsigned waiting;
    mproc_barrier_broken(barrier, &broken);
    mproc_barrier_n_waiting(barrier, &waiting);
    cr_assert(!broken);
    cr_assert_eq(waiting, 0);
    mproc_barrier_destroy(&barrier);
}

/* ---- misuse and leaks ---- */

Test(sync, bad_input, .timeout = 10)
{
    mproc_lock *lock = NULL;
    mproc_semaphore *sem = NULL;
    mproc_event *event = NULL;
    mproc_condition *cond = NULL;
    mproc_barrier *barrier = NULL;
    int fd;
    bool flag;
    unsigned u;
    cr_assert_eq(mproc_lock_create(NULL), -EINVAL);
    cr_assert_eq(mproc_rlock_create(NULL), -EINVAL);
    cr_assert_eq(mproc_lock_acquire(NULL, 0), -EINVAL);
    cr_assert_eq(mproc_lock_release(NULL), -EINVAL);
    cr_assert_eq(mproc_lock_locked(NULL, &flag), -EINVAL);
    cr_assert_eq(mproc_lock_fd(NULL, &fd), -EINVAL);
    cr_assert_eq(mproc_lock_attach(NULL, 0), -EINVAL);
    cr_assert_eq(mproc_lock_destroy(NULL), -EINVAL);
    cr_assert_eq(mproc_lock_destroy(&lock), -EINVAL);
    cr_assert_eq(mproc_semaphore_create(NULL, 1), -EINVAL);
    cr_assert_eq(mproc_semaphore_acquire(NULL, 0), -EINVAL);
    cr_assert_eq(mproc_semaphore_release(NULL), -EINVAL);
    cr_assert_eq(mproc_semaphore_get_value(NULL, &u), -EINVAL);
    cr_assert_eq(mproc_semaphore_destroy(&sem), -EINVAL);
    cr_assert_eq(mproc_event_create(NULL), -EINVAL);
    cr_assert_eq(mproc_event_set(NULL), -EINVAL);
    cr_assert_eq(mproc_event_wait(NULL, 0), -EINVAL);
    cr_assert_eq(mproc_event_is_set(NULL, &flag), -EINVAL);
    cr_assert_eq(mproc_event_destroy(&event), -EINVAL);
    cr_assert_eq(mproc_condition_create(NULL, NULL), -EINVAL);
    cr_assert_eq(mproc_condition_wait(NULL, 0), -EINVAL);
    cr_assert_eq(mproc_condition_notify_all(NULL), -EINVAL);
    cr_assert_eq(mproc_condition_destroy(&cond), -EINVAL);
    cr_assert_eq(mproc_barrier_create(&barrier, 0, NULL, NULL, -1), -EINVAL);
    cr_assert_eq(mproc_barrier_create(NULL, 2, NULL, NULL, -1), -EINVAL);
    cr_assert_eq(mproc_barrier_wait(NULL, 0, NULL), -EINVAL);
    cr_assert_eq(mproc_barrier_destroy(&barrier), -EINVAL);

    /* A destroyed handle is NULL, and NULL is refused. */
    cr_assert_eq(mproc_event_create(&event), 0);
    cr_assert_eq(mproc_event_destroy(&event), 0);
    cr_assert_null(event);
    cr_assert_eq(mproc_event_destroy(&event), -EINVAL);
    /* A descriptor of the wrong kind is refused by every attach. */
    cr_assert_eq(mproc_event_create(&event), 0);
    cr_assert_eq(mproc_event_fd(event, &fd), 0);
    cr_assert_eq(mproc_semaphore_attach(&sem, fd), -EINVAL);
    cr_assert_eq(mproc_barrier_attach(&barrier, fd, NULL, NULL, -1), -EINVAL);
    cr_assert_eq(mproc_condition_attach(&cond, fd, NULL), -EINVAL);
    cr_assert_eq(mproc_event_attach(&event, 0), -EINVAL, "stdin is not an event");
    mproc_event_destroy(&event);
}

Test(sync, no_descriptor_left_after_destroy, .timeout = 10)
{
    int before = test_count_fds();
    int shm_before = test_count_dev_shm();
    for (int round = 0; round < 3; round++) {
        mproc_lock *lock, *rlock, *view;
        mproc_semaphore *sem;
        mproc_event *event;
        mproc_condition *cond, *cond2;
        mproc_barrier *barrier;
        int fd;
        cr_assert_eq(mproc_lock_create(&lock), 0);
        cr_assert_eq(mproc_rlock_create(&rlock), 0);
        cr_assert_eq(mproc_lock_fd(lock, &fd), 0);
        cr_assert_eq(mproc_lock_attach(&view, fd), 0);
        cr_assert_eq(mproc_semaphore_create(&sem, 1), 0);
        cr_assert_eq(mproc_event_create(&event), 0);
        cr_assert_eq(mproc_condition_create(&cond, NULL), 0);
        cr_assert_eq(mproc_condition_create(&cond2, rlock), 0);
        cr_assert_eq(mproc_barrier_create(&barrier, 2, NULL, NULL, -1), 0);
        cr_assert_gt(test_count_fds(), before);
        cr_assert_eq(mproc_barrier_destroy(&barrier), 0);
        cr_assert_eq(mproc_condition_destroy(&cond2), 0);
        cr_assert_eq(mproc_condition_destroy(&cond), 0);
        cr_assert_eq(mproc_event_destroy(&event), 0);
        cr_assert_eq(mproc_semaphore_destroy(&sem), 0);
        cr_assert_eq(mproc_lock_destroy(&view), 0);
        cr_assert_eq(mproc_lock_destroy(&rlock), 0);
        cr_assert_eq(mproc_lock_destroy(&lock), 0);
    }
    cr_assert_eq(test_count_fds(), before);
    cr_assert_eq(test_count_dev_shm(), shm_before);
}
