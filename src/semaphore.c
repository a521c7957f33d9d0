/*
 * semaphore.c: Semaphore and BoundedSemaphore on a futex word.
 *
 * The count itself is the futex word: acquire decrements it with a CAS when
 * positive and otherwise sleeps while it is 0; release increments it and
 * wakes one sleeper, but only when the waiter count says someone may sleep.
 * Waiter and releaser each write their own word and then read the other's
 * (both sequentially consistent), so at least one of them sees the other:
 * no wake-up is lost.
 *
 * A semaphore has no owner, so a dead process's share of the count cannot be
 * given back. What must not happen is waiters sleeping while the count is
 * positive: a release wakes one sleeper, and if that one is killed before it
 * takes the count, no one else is woken. Sleepers therefore wake every
 * RECHECK_MS to look at the count again. A dead waiter also leaves the waiter
 * count too high, which only costs releases a needless wake call.
 */
#define _GNU_SOURCE
#include "sync_internal.h"

#include <errno.h>
#include <stdlib.h>

#define SEMAPHORE_MAGIC 0x6d707365u /* "mpse" */
#define RECHECK_MS      200

struct semaphore_block {
    struct mproc__object_header header;
    _Atomic uint32_t value;
    _Atomic uint32_t waiters;
    uint32_t max;
};

struct mproc_semaphore {
    uint32_t magic;
    struct mproc__region region;
    struct semaphore_block *block;
};

static bool valid(const mproc_semaphore *sem)
{
    return sem && sem->magic == SEMAPHORE_MAGIC;
}

static int create(mproc_semaphore **out, unsigned value, uint32_t max)
{
    if (!out || value > MPROC_SEMAPHORE_MAX)
        return -EINVAL;
    mproc_semaphore *sem = calloc(1, sizeof(*sem));
    if (!sem)
        return -ENOMEM;
    int rc = mproc__object_create(&sem->region, sizeof(struct semaphore_block),
                                  MPROC__KIND_SEMAPHORE, "mproc-semaphore");
    if (rc < 0) {
        free(sem);
        return rc;
    }
    sem->block = sem->region.addr;
    sem->block->max = max;
    atomic_store(&sem->block->value, value);
    sem->magic = SEMAPHORE_MAGIC;
    *out = sem;
    return 0;
}

int mproc_semaphore_create(mproc_semaphore **out, unsigned value)
{
    return create(out, value, MPROC_SEMAPHORE_MAX);
}

int mproc_bounded_semaphore_create(mproc_semaphore **out, unsigned value)
{
    return create(out, value, value);
}

static bool try_take(struct semaphore_block *block)
{
    uint32_t value = atomic_load(&block->value);
    while (value > 0) {
        if (atomic_compare_exchange_weak(&block->value, &value, value - 1))
            return true;
    }
    return false;
}

static bool spin_take(struct semaphore_block *block)
{
    for (int i = 0; i < MPROC__SPIN_ROUNDS; i++) {
        if (try_take(block))
            return true;
        mproc__cpu_relax();
    }
    return false;
}

/* Sleeps until the count is taken, the deadline passes or a signal handler runs. */
static int sleep_take(struct semaphore_block *block, int64_t deadline)
{
    atomic_fetch_add(&block->waiters, 1);
    int rc = 0;
    while (!try_take(block)) {
        int64_t until = mproc__now_ms() + RECHECK_MS;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        rc = mproc__futex_wait(&block->value, 0, until);
        if (rc == -EINTR)
            break;
        if (rc == -ETIMEDOUT && deadline >= 0 && mproc__now_ms() >= deadline) {
            rc = try_take(block) ? 0 : -ETIMEDOUT;
            break;
        }
        rc = 0;
    }
    atomic_fetch_sub(&block->waiters, 1);
    return rc;
}

int mproc_semaphore_acquire(mproc_semaphore *sem, int timeout_ms)
{
    if (!valid(sem))
        return -EINVAL;
    if (spin_take(sem->block))
        return 0;
    if (timeout_ms == 0)
        return -ETIMEDOUT;
    return sleep_take(sem->block, mproc__deadline(timeout_ms));
}

int mproc_semaphore_release(mproc_semaphore *sem)
{
    if (!valid(sem))
        return -EINVAL;
    struct semaphore_block *block = sem->block;
    uint32_t value = atomic_load(&block->value);
    do {
        if (value >= block->max)
            return -EOVERFLOW;
    } while (!atomic_compare_exchange_weak(&block->value, &value, value + 1));
    if (atomic_load(&block->waiters) > 0)
        mproc__futex_wake(&block->value, 1);
    return 0;
}

int mproc_semaphore_get_value(mproc_semaphore *sem, unsigned *value)
{
    if (!valid(sem) || !value)
        return -EINVAL;
    *value = atomic_load(&sem->block->value);
    return 0;
}

int mproc_semaphore_fd(const mproc_semaphore *sem, int *fd)
{
    if (!valid(sem) || !fd)
        return -EINVAL;
    *fd = sem->region.fd;
    return 0;
}

int mproc_semaphore_attach(mproc_semaphore **out, int fd)
{
    if (!out)
        return -EINVAL;
    mproc_semaphore *sem = calloc(1, sizeof(*sem));
    if (!sem)
        return -ENOMEM;
    int rc = mproc__object_attach(&sem->region, fd, MPROC__KIND_SEMAPHORE,
                                  sizeof(struct semaphore_block));
    if (rc < 0) {
        free(sem);
        return rc;
    }
    sem->block = sem->region.addr;
    sem->magic = SEMAPHORE_MAGIC;
    *out = sem;
    return 0;
}

int mproc_semaphore_destroy(mproc_semaphore **sem)
{
    if (!sem || !valid(*sem))
        return -EINVAL;
    mproc__region_release(&(*sem)->region);
    (*sem)->magic = 0;
    free(*sem);
    *sem = NULL;
    return 0;
}
