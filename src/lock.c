/*
 * lock.c: Lock and RLock, on a robust process-shared pthread mutex.
 *
 * Why a robust mutex and not a futex word of our own: only the kernel knows
 * for certain that a thread died, and it releases robust mutexes (marking
 * them "owner died") as part of the thread's exit, whatever killed it. A
 * futex design would have to record the owner's pid and poll its liveness,
 * racing with pid reuse. The price: a pthread mutex wait cannot be
 * interrupted (no -EINTR), and the lock belongs to a thread, so only that
 * thread may release it.
 *
 * The shared state also records the holder's thread token. Only the holder
 * writes it, so comparing it with our own token answers "do I hold it?"
 * without a system call: that is how an RLock recurses, how a Lock reports
 * -EDEADLK instead of sleeping on itself, and how release by another thread
 * is refused before the mutex is touched.
 */
#define _GNU_SOURCE
#include "sync_internal.h"

#include <errno.h>
#include <stdlib.h>

#define LOCK_MAGIC 0x6d706c6bu /* "mplk" */

/* A Lock's region: the object header, then the lock state. */
struct lock_block {
    struct mproc__object_header header;
    struct mproc__lock_shared lock;
};

static bool valid(const mproc_lock *lock)
{
    return lock && lock->magic == LOCK_MAGIC;
}

int mproc__lock_init_shared(struct mproc__lock_shared *shared, bool recursive, uint64_t id)
{
    shared->id = id;
    shared->recursive = recursive;
    shared->count = 0;
    atomic_store(&shared->owner, 0);
    atomic_store(&shared->owner_pid, 0);
    return mproc__mutex_init(&shared->mutex);
}

int mproc__lock_wrap(mproc_lock **out, struct mproc__lock_shared *shared)
{
    mproc_lock *lock = calloc(1, sizeof(*lock));
    if (!lock)
        return -ENOMEM;
    lock->magic = LOCK_MAGIC;
    lock->region.fd = -1;
    lock->shared = shared;
    *out = lock;
    return 0;
}

void mproc__lock_free(mproc_lock *lock)
{
    if (!lock)
        return;
    if (lock->region.fd >= 0)
        mproc__region_release(&lock->region);
    lock->magic = 0;
    free(lock);
}

bool mproc__lock_valid(const mproc_lock *lock)
{
    return valid(lock);
}

bool mproc__lock_held(const mproc_lock *lock)
{
    return atomic_load(&lock->shared->owner) == mproc__thread_token();
}

uint64_t mproc__lock_id(const mproc_lock *lock)
{
    return lock->shared->id;
}

static int create(mproc_lock **out, bool recursive)
{
    if (!out)
        return -EINVAL;
    mproc_lock *lock = calloc(1, sizeof(*lock));
    if (!lock)
        return -ENOMEM;
    int rc = mproc__object_create(&lock->region, sizeof(struct lock_block), MPROC__KIND_LOCK,
                                  recursive ? "mproc-rlock" : "mproc-lock");
    if (rc < 0) {
        free(lock);
        return rc;
    }
    struct lock_block *block = lock->region.addr;
    rc = mproc__lock_init_shared(&block->lock, recursive, block->header.id);
    if (rc < 0) {
        mproc__region_release(&lock->region);
        free(lock);
        return rc;
    }
    lock->magic = LOCK_MAGIC;
    lock->shared = &block->lock;
    *out = lock;
    return 0;
}

int mproc_lock_create(mproc_lock **out)
{
    return create(out, false);
}

int mproc_rlock_create(mproc_lock **out)
{
    return create(out, true);
}

/* Spins on trylock for a while: a holder usually lets go within microseconds. */
static int spin_trylock(pthread_mutex_t *mutex)
{
    for (int i = 0; i < MPROC__SPIN_ROUNDS; i++) {
        int rc = pthread_mutex_trylock(mutex);
        if (rc != EBUSY)
            return -rc;
        mproc__cpu_relax();
    }
    return -EBUSY;
}

/* Takes the mutex itself; turns "owner died" into a held, consistent mutex. */
static int take_mutex(struct mproc__lock_shared *shared, int timeout_ms)
{
    int rc = spin_trylock(&shared->mutex);
    if (rc == -EBUSY && timeout_ms == 0)
        return -ETIMEDOUT;
    if (rc == -EBUSY)
        rc = mproc__mutex_lock(&shared->mutex, mproc__deadline(timeout_ms));
    if (rc == -EOWNERDEAD) {
        /*
         * The lock works again from here; only the caller can judge the data
         * it guards, which is what -EOWNERDEAD tells it. Marking it consistent
         * now means a caller that ignores the code does not turn the lock
         * into ENOTRECOVERABLE for every process.
         */
        pthread_mutex_consistent(&shared->mutex);
    }
    return rc;
}

static void set_owner(struct mproc__lock_shared *shared, uint64_t token, uint32_t depth)
{
    shared->count = depth;
    atomic_store(&shared->owner_pid, (int32_t)mproc__thread_pid());
    atomic_store(&shared->owner, token);
}

int mproc_lock_acquire(mproc_lock *lock, int timeout_ms)
{
    if (!valid(lock))
        return -EINVAL;
    struct mproc__lock_shared *shared = lock->shared;
    uint64_t token = mproc__thread_token();
    if (atomic_load(&shared->owner) == token) {
        if (!shared->recursive)
            return -EDEADLK;
        if (shared->count == UINT32_MAX)
            return -EOVERFLOW;
        shared->count++;
        return 0;
    }
    int rc = take_mutex(shared, timeout_ms);
    if (rc < 0 && rc != -EOWNERDEAD)
        return rc;
    set_owner(shared, token, 1);
    return rc;
}

/* Clears the owner, then unlocks: the order keeps "owner == me" true only while held. */
static int unlock_fully(struct mproc__lock_shared *shared)
{
    shared->count = 0;
    atomic_store(&shared->owner_pid, 0);
    atomic_store(&shared->owner, 0);
    return -pthread_mutex_unlock(&shared->mutex);
}

int mproc_lock_release(mproc_lock *lock)
{
    if (!valid(lock))
        return -EINVAL;
    struct mproc__lock_shared *shared = lock->shared;
    if (atomic_load(&shared->owner) != mproc__thread_token())
        return -EPERM;
    if (shared->count > 1) {
        shared->count--;
        return 0;
    }
    return unlock_fully(shared);
}

int mproc_lock_locked(mproc_lock *lock, bool *held)
{
    if (!valid(lock) || !held)
        return -EINVAL;
    /*
     * A snapshot from the owner word, not a trylock: taking and dropping a
     * mutex whose holder died would swallow the owner-died notice that the
     * next real acquirer must get. A dead holder's word stays set, so such a
     * lock reads as held until someone takes it over.
     */
    *held = atomic_load(&lock->shared->owner) != 0;
    return 0;
}

void mproc__lock_release_save(mproc_lock *lock, uint32_t *depth)
{
    *depth = lock->shared->count;
    (void)unlock_fully(lock->shared);
}

int mproc__lock_acquire_restore(mproc_lock *lock, uint32_t depth)
{
    int rc = take_mutex(lock->shared, MPROC_WAIT_FOREVER);
    if (rc < 0 && rc != -EOWNERDEAD)
        return rc;
    set_owner(lock->shared, mproc__thread_token(), depth);
    return rc;
}

int mproc_lock_fd(const mproc_lock *lock, int *fd)
{
    if (!valid(lock) || !fd || lock->region.fd < 0)
        return -EINVAL;
    *fd = lock->region.fd;
    return 0;
}

int mproc_lock_attach(mproc_lock **out, int fd)
{
    if (!out)
        return -EINVAL;
    mproc_lock *lock = calloc(1, sizeof(*lock));
    if (!lock)
        return -ENOMEM;
    int rc = mproc__object_attach(&lock->region, fd, MPROC__KIND_LOCK, sizeof(struct lock_block));
    if (rc < 0) {
        free(lock);
        return rc;
    }
    struct lock_block *block = lock->region.addr;
    lock->magic = LOCK_MAGIC;
    lock->shared = &block->lock;
    *out = lock;
    return 0;
}

int mproc_lock_destroy(mproc_lock **lock)
{
    if (!lock || !valid(*lock) || (*lock)->region.fd < 0)
        return -EINVAL;
    if (mproc__lock_held(*lock))
        return -EBUSY;
    mproc__lock_free(*lock);
    *lock = NULL;
    return 0;
}
