/*
 * condition.c: Condition on a Lock or RLock, with a futex sequence word.
 *
 * A waiter reads the sequence while it holds the lock, releases the lock and
 * sleeps while the sequence is unchanged. notify() holds the lock, bumps the
 * sequence and wakes n sleepers. A waiter between its release and its sleep
 * sees the new sequence and returns at once: it was waiting when notify()
 * ran, so it is a fair receiver, and this is why notify(n) may wake more than
 * n (POSIX allows it). No wake-up is lost, because the sequence is read under
 * the lock that notify() needs.
 *
 * Death: the lock is robust (see lock.c). A waiter killed after a notify()
 * woke it takes that notification with it; the others stay asleep until the
 * next notify or their timeout. That is why the header advises timeouts or
 * wait_for() where waiters can die.
 */
#define _GNU_SOURCE
#include "sync_internal.h"

#include <errno.h>
#include <stdlib.h>

#define CONDITION_MAGIC 0x6d70636eu /* "mpcn" */

struct condition_block {
    struct mproc__object_header header;
    uint64_t lock_id; /* the lock it was created with */
    _Atomic uint32_t seq;
    _Atomic uint32_t waiters;
    uint32_t own_lock;
    struct mproc__lock_shared lock; /* used when own_lock */
};

struct mproc_condition {
    uint32_t magic;
    struct mproc__region region;
    struct condition_block *block;
    mproc_lock *lock;
    bool own_lock; /* lock is a wrapper of block->lock, freed with the condition */
};

static bool valid(const mproc_condition *cond)
{
    return cond && cond->magic == CONDITION_MAGIC;
}

static void free_condition(mproc_condition *cond)
{
    if (cond->own_lock)
        mproc__lock_free(cond->lock);
    mproc__region_release(&cond->region);
    cond->magic = 0;
    free(cond);
}

int mproc_condition_create(mproc_condition **out, mproc_lock *lock)
{
    if (!out || (lock && !mproc__lock_valid(lock)))
        return -EINVAL;
    mproc_condition *cond = calloc(1, sizeof(*cond));
    if (!cond)
        return -ENOMEM;
    int rc = mproc__object_create(&cond->region, sizeof(struct condition_block),
                                  MPROC__KIND_CONDITION, "mproc-condition");
    if (rc < 0) {
        free(cond);
        return rc;
    }
    struct condition_block *block = cond->region.addr;
    cond->block = block;
    cond->magic = CONDITION_MAGIC;
    if (lock) {
        block->lock_id = mproc__lock_id(lock);
        cond->lock = lock;
        *out = cond;
        return 0;
    }
    block->own_lock = 1;
    block->lock_id = block->header.id;
    rc = mproc__lock_init_shared(&block->lock, true, block->header.id);
    if (rc == 0)
        rc = mproc__lock_wrap(&cond->lock, &block->lock);
    if (rc < 0) {
        free_condition(cond);
        return rc;
    }
    cond->own_lock = true;
    *out = cond;
    return 0;
}

int mproc_condition_acquire(mproc_condition *cond, int timeout_ms)
{
    if (!valid(cond))
        return -EINVAL;
    return mproc_lock_acquire(cond->lock, timeout_ms);
}

int mproc_condition_release(mproc_condition *cond)
{
    if (!valid(cond))
        return -EINVAL;
    return mproc_lock_release(cond->lock);
}

/* Sleeps until the sequence moves on from seen, the deadline or a signal handler. */
static int sleep_on(struct condition_block *block, uint32_t seen, int64_t deadline)
{
    for (;;) {
        int rc = mproc__futex_wait(&block->seq, seen, deadline);
        if (atomic_load(&block->seq) != seen)
            return 0;
        if (rc < 0)
            return rc;
    }
}

static int wait_until(mproc_condition *cond, int64_t deadline)
{
    struct condition_block *block = cond->block;
    if (!mproc__lock_held(cond->lock))
        return -EPERM;
    uint32_t seen = atomic_load(&block->seq);
    atomic_fetch_add(&block->waiters, 1);
    uint32_t depth;
    mproc__lock_release_save(cond->lock, &depth);
    int rc = sleep_on(block, seen, deadline);
    atomic_fetch_sub(&block->waiters, 1);
    int relock = mproc__lock_acquire_restore(cond->lock, depth);
    return relock < 0 ? relock : rc;
}

int mproc_condition_wait(mproc_condition *cond, int timeout_ms)
{
    if (!valid(cond))
        return -EINVAL;
    return wait_until(cond, mproc__deadline(timeout_ms));
}

int mproc_condition_wait_for(mproc_condition *cond, mproc_predicate_fn pred, void *arg,
                             int timeout_ms)
{
    if (!valid(cond) || !pred)
        return -EINVAL;
    if (!mproc__lock_held(cond->lock))
        return -EPERM;
    int64_t deadline = mproc__deadline(timeout_ms);
    while (!pred(arg)) {
        if (deadline >= 0 && mproc__now_ms() >= deadline)
            return -ETIMEDOUT;
        int rc = wait_until(cond, deadline);
        if (rc == -ETIMEDOUT)
            return pred(arg) ? 0 : -ETIMEDOUT;
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int notify(mproc_condition *cond, int n)
{
    if (!valid(cond) || n < 0)
        return -EINVAL;
    if (!mproc__lock_held(cond->lock))
        return -EPERM;
    struct condition_block *block = cond->block;
    if (n == 0 || atomic_load(&block->waiters) == 0)
        return 0;
    atomic_fetch_add(&block->seq, 1);
    mproc__futex_wake(&block->seq, n);
    return 0;
}

int mproc_condition_notify(mproc_condition *cond, int n)
{
    return notify(cond, n);
}

int mproc_condition_notify_all(mproc_condition *cond)
{
    return notify(cond, INT32_MAX);
}

int mproc_condition_fd(const mproc_condition *cond, int *fd)
{
    if (!valid(cond) || !fd)
        return -EINVAL;
    *fd = cond->region.fd;
    return 0;
}

int mproc_condition_attach(mproc_condition **out, int fd, mproc_lock *lock)
{
    if (!out || (lock && !mproc__lock_valid(lock)))
        return -EINVAL;
    mproc_condition *cond = calloc(1, sizeof(*cond));
    if (!cond)
        return -ENOMEM;
    int rc = mproc__object_attach(&cond->region, fd, MPROC__KIND_CONDITION,
                                  sizeof(struct condition_block));
    if (rc < 0) {
        free(cond);
        return rc;
    }
    struct condition_block *block = cond->region.addr;
    cond->block = block;
    cond->magic = CONDITION_MAGIC;
    /* The lock must be the very one the condition was made with. */
    bool match = block->own_lock ? !lock : (lock && mproc__lock_id(lock) == block->lock_id);
    if (!match) {
        free_condition(cond);
        return -EINVAL;
    }
    if (lock) {
        cond->lock = lock;
    } else {
        rc = mproc__lock_wrap(&cond->lock, &block->lock);
        if (rc < 0) {
            free_condition(cond);
            return rc;
        }
        cond->own_lock = true;
    }
    *out = cond;
    return 0;
}

int mproc_condition_destroy(mproc_condition **cond)
{
    if (!cond || !valid(*cond))
        return -EINVAL;
    if ((*cond)->own_lock && mproc__lock_held((*cond)->lock))
        return -EBUSY;
    free_condition(*cond);
    *cond = NULL;
    return 0;
}
