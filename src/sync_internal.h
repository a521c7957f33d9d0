/*
 * sync_internal.h: what the synchronization and shared-data files share.
 * Every sync object and sharedctypes object is a memfd region that starts
 * with a header naming its kind, so that attaching a descriptor of the wrong
 * kind fails with -EINVAL instead of misreading memory.
 */
#ifndef MPROC_SYNC_INTERNAL_H
#define MPROC_SYNC_INTERNAL_H

#include "internal.h"

#include <mproc/sync.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define MPROC__OBJECT_MAGIC 0x6d707368u /* "mpsh" */

/* Busy-wait rounds before sleeping: most critical sections are this short. */
#define MPROC__SPIN_ROUNDS 64

enum mproc__kind {
    MPROC__KIND_LOCK = 1,
    MPROC__KIND_SEMAPHORE,
    MPROC__KIND_EVENT,
    MPROC__KIND_CONDITION,
    MPROC__KIND_BARRIER,
    MPROC__KIND_SHAREDCTYPES,
};

/* First bytes of every shared object. Written once by its creator. */
struct mproc__object_header {
    uint32_t magic;
    uint32_t kind;
    uint64_t id; /* random: lets an attacher check that two objects belong together */
};

/*
 * Shared state of a Lock or RLock. The mutex is robust: when its holder dies
 * the kernel marks it and the next locker gets EOWNERDEAD. owner is the
 * holder's thread token (see mproc__thread_token()), 0 when free; only the
 * holder writes it, so "owner == my token" means "I hold it".
 */
struct mproc__lock_shared {
    uint64_t id;
    pthread_mutex_t mutex;
    _Atomic uint64_t owner;
    _Atomic int32_t owner_pid; /* for people and debuggers */
    uint32_t count;            /* recursion depth; guarded by the mutex */
    uint32_t recursive;
};

/* Process-local handle of a Lock; region.fd < 0 when it lives inside another object. */
struct mproc_lock {
    uint32_t magic;
    struct mproc__region region;
    struct mproc__lock_shared *shared;
};

/* A pause instruction for spin loops: lets the sibling hyperthread run. */
static inline void mproc__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/*
 * A 64-bit token naming the calling thread among all live threads of the
 * machine: its tid in the high half, a clock reading taken when the token was
 * made in the low half, so that a dead thread whose tid is recycled does not
 * look like the new one. Recomputed after fork (the child's thread is new).
 */
uint64_t mproc__thread_token(void);

/* getpid() of the calling process, cached with the token (no system call). */
pid_t mproc__thread_pid(void);

/*
 * Creates a zeroed memfd region of size bytes for an object of this kind and
 * fills its header. Returns 0 or a negated errno.
 */
int mproc__object_create(struct mproc__region *region, size_t size, enum mproc__kind kind,
                         const char *name);

/*
 * Maps the object behind fd and checks its header, kind and minimum size.
 * Returns 0, -EINVAL (not an object of this kind, or too small), or errno.
 */
int mproc__object_attach(struct mproc__region *region, int fd, enum mproc__kind kind,
                         size_t min_size);

/* ---- locks embedded in other objects (lock.c) ---- */

/* Initialises lock state inside shared memory. Returns 0 or a negated errno. */
int mproc__lock_init_shared(struct mproc__lock_shared *shared, bool recursive, uint64_t id);

/*
 * Makes a handle for lock state that lives inside another object's region;
 * the handle does not own the region. Returns 0 or -ENOMEM.
 */
int mproc__lock_wrap(mproc_lock **out, struct mproc__lock_shared *shared);

/* Frees a handle made by mproc__lock_wrap (or any lock handle), releasing its region. */
void mproc__lock_free(mproc_lock *lock);

/* Whether lock is a live lock handle. */
bool mproc__lock_valid(const mproc_lock *lock);

/* Whether the calling thread holds the lock. */
bool mproc__lock_held(const mproc_lock *lock);

/*
 * Releases the lock completely, however deep the recursion, and stores the
 * depth in *depth (Python's _release_save). The caller must hold it.
 */
void mproc__lock_release_save(mproc_lock *lock, uint32_t *depth);

/*
 * Takes the lock again, waiting without limit, and restores the depth
 * (Python's _acquire_restore). Returns 0 or -EOWNERDEAD (held, consistent).
 */
int mproc__lock_acquire_restore(mproc_lock *lock, uint32_t depth);

/* Id of the lock's shared state, to match a condition with its lock. */
uint64_t mproc__lock_id(const mproc_lock *lock);

#endif /* MPROC_SYNC_INTERNAL_H */
