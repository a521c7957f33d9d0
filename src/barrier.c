/*
 * barrier.c: Barrier for processes, which notices dead parties.
 *
 * State lives under a robust mutex: the arrival count, the generation, the
 * broken flag, and a table of the processes that have waited on it (pid and
 * start time, so a recycled pid is not mistaken for the party). Waiters sleep
 * on a futex sequence word that moves on every change (a generation passes,
 * the barrier breaks or is reset), so any change wakes them; and they wake
 * every POLL_MS to look for parties that died without arriving, since no
 * dead process will ever wake them.
 *
 * How a sleeper learns what happened to its generation: the generation
 * number moves on when one completes (or is reset), and a 64-bit history
 * records, for the last 64 generations, whether each ended broken. A waiter
 * that has not run for 64 whole generations could misread it; that needs
 * more processes than parties, each racing ahead 64 times.
 *
 * The action runs in the last arrival with the mutex held, so a waiter's
 * timeout can be exceeded by the action's duration; if the action's process
 * dies, the next locker gets EOWNERDEAD and breaks the barrier.
 */
#define _GNU_SOURCE
#include "sync_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define BARRIER_MAGIC 0x6d706272u /* "mpbr" */
#define POLL_MS       50

struct party {
    int32_t pid; /* 0: free slot */
    uint32_t reserved;
    uint64_t start_time;
    uint64_t arrived; /* generation + 1 of its latest arrival; 0: none */
};

struct barrier_block {
    struct mproc__object_header header;
    pthread_mutex_t mutex;
    uint32_t parties;
    uint32_t count; /* arrivals in this generation */
    uint32_t generation;
    uint32_t broken;
    uint64_t broken_history; /* bit g % 64: generation g ended broken */
    _Atomic uint32_t seq;    /* futex word: moves on every change */
    uint32_t reserved;
    struct party party[]; /* parties entries */
};

struct mproc_barrier {
    uint32_t magic;
    struct mproc__region region;
    struct barrier_block *block;
    mproc_barrier_action_fn action;
    void *arg;
    int timeout_ms;
    unsigned fork_generation; /* identity below is for this process */
    pid_t pid;
    uint64_t start_time;
};

static bool valid(const mproc_barrier *barrier)
{
    return barrier && barrier->magic == BARRIER_MAGIC;
}

static size_t block_size(uint32_t parties)
{
    return sizeof(struct barrier_block) + (size_t)parties * sizeof(struct party);
}

/* Wakes every sleeper: the state changed. */
static void announce(struct barrier_block *block)
{
    atomic_fetch_add(&block->seq, 1);
    mproc__futex_wake(&block->seq, INT32_MAX);
}

static void break_locked(struct barrier_block *block)
{
    block->broken = 1;
    announce(block);
}

/* Locks the state. A holder that died may have left it half-changed: break. */
static void lock_block(struct barrier_block *block)
{
    int rc = mproc__mutex_lock(&block->mutex, -1);
    if (rc == -EOWNERDEAD) {
        pthread_mutex_consistent(&block->mutex);
        break_locked(block);
    }
}

static void unlock_block(struct barrier_block *block)
{
    pthread_mutex_unlock(&block->mutex);
}

/* pid and start time of the calling process, refreshed after fork. */
static void refresh_identity(mproc_barrier *barrier)
{
    unsigned generation = mproc__fork_generation();
    if (barrier->pid != 0 && barrier->fork_generation == generation)
        return;
    barrier->fork_generation = generation;
    barrier->pid = getpid();
    barrier->start_time = mproc__pid_start_time(barrier->pid);
}

/* The caller's entry in the party table, taking a free one; NULL when full. */
static struct party *register_party(mproc_barrier *barrier)
{
    struct barrier_block *block = barrier->block;
    struct party *free_slot = NULL;
    for (uint32_t i = 0; i < block->parties; i++) {
        struct party *p = &block->party[i];
        if (p->pid == barrier->pid && p->start_time == barrier->start_time)
            return p;
        if (p->pid == 0 && !free_slot)
            free_slot = p;
    }
    if (free_slot) {
        free_slot->pid = barrier->pid;
        free_slot->start_time = barrier->start_time;
        free_slot->arrived = 0;
    }
    return free_slot;
}

/* Whether a registered party is dead without having arrived in this generation. */
static bool party_missing(const struct barrier_block *block)
{
    uint64_t current = (uint64_t)block->generation + 1;
    for (uint32_t i = 0; i < block->parties; i++) {
        const struct party *p = &block->party[i];
        if (p->pid != 0 && p->arrived != current && !mproc__pid_alive(p->pid, p->start_time))
            return true;
    }
    return false;
}

static void end_generation(struct barrier_block *block, bool broken)
{
    uint64_t bit = (uint64_t)1 << (block->generation % 64);
    if (broken)
        block->broken_history |= bit;
    else
        block->broken_history &= ~bit;
    block->generation++;
    block->count = 0;
    announce(block);
}

/* The last arrival: runs the action and releases (or breaks) the generation. */
static int complete(mproc_barrier *barrier)
{
    struct barrier_block *block = barrier->block;
    if (barrier->action && barrier->action(barrier->arg) != 0) {
        break_locked(block);
        return MPROC_EBROKEN;
    }
    end_generation(block, false);
    return 0;
}

/* Sleeps until this generation ends, breaks, times out or a party is found dead. */
static int sleep_in(mproc_barrier *barrier, uint32_t generation, struct party *self,
                    int64_t deadline)
{
    struct barrier_block *block = barrier->block;
    for (;;) {
        uint32_t seen = atomic_load(&block->seq);
        unlock_block(block);
        int64_t until = mproc__now_ms() + POLL_MS;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        int rc = mproc__futex_wait(&block->seq, seen, until);
        lock_block(block);
        if (block->generation != generation) {
            bool broken = block->broken_history & ((uint64_t)1 << (generation % 64));
            return broken ? MPROC_EBROKEN : 0;
        }
        if (block->broken)
            return MPROC_EBROKEN;
        if (rc == -EINTR) {
            /* Leave the generation: the barrier stays whole without us. */
            block->count--;
            if (self)
                self->arrived = 0;
            return -EINTR;
        }
        if (deadline >= 0 && mproc__now_ms() >= deadline) {
            break_locked(block);
            return -ETIMEDOUT;
        }
        if (rc == -ETIMEDOUT && party_missing(block)) {
            break_locked(block);
            return MPROC_EBROKEN;
        }
    }
}

int mproc_barrier_wait(mproc_barrier *barrier, int timeout_ms, unsigned *index)
{
    if (!valid(barrier))
        return -EINVAL;
    if (timeout_ms < MPROC_WAIT_FOREVER)
        timeout_ms = barrier->timeout_ms;
    int64_t deadline = mproc__deadline(timeout_ms);
    refresh_identity(barrier);
    struct barrier_block *block = barrier->block;
    lock_block(block);
    if (block->broken) {
        unlock_block(block);
        return MPROC_EBROKEN;
    }
    struct party *self = register_party(barrier);
    uint32_t generation = block->generation;
    unsigned arrival = block->count++;
    if (self)
        self->arrived = (uint64_t)generation + 1;
    if (index)
        *index = arrival;
    int rc;
    if (block->count == block->parties)
        rc = complete(barrier);
    else
        rc = sleep_in(barrier, generation, self, deadline);
    unlock_block(block);
    return rc;
}

int mproc_barrier_abort(mproc_barrier *barrier)
{
    if (!valid(barrier))
        return -EINVAL;
    lock_block(barrier->block);
    break_locked(barrier->block);
    unlock_block(barrier->block);
    return 0;
}

int mproc_barrier_reset(mproc_barrier *barrier)
{
    if (!valid(barrier))
        return -EINVAL;
    struct barrier_block *block = barrier->block;
    lock_block(block);
    for (uint32_t i = 0; i < block->parties; i++) {
        struct party *p = &block->party[i];
        if (p->pid != 0 && !mproc__pid_alive(p->pid, p->start_time))
            p->pid = 0;
    }
    /* Whoever waits now belongs to a generation that ends broken. */
    if (block->count > 0)
        end_generation(block, true);
    block->broken = 0;
    announce(block);
    unlock_block(block);
    return 0;
}

int mproc_barrier_parties(mproc_barrier *barrier, unsigned *parties)
{
    if (!valid(barrier) || !parties)
        return -EINVAL;
    *parties = barrier->block->parties;
    return 0;
}

int mproc_barrier_n_waiting(mproc_barrier *barrier, unsigned *n_waiting)
{
    if (!valid(barrier) || !n_waiting)
        return -EINVAL;
    lock_block(barrier->block);
    *n_waiting = barrier->block->broken ? 0 : barrier->block->count;
    unlock_block(barrier->block);
    return 0;
}

int mproc_barrier_broken(mproc_barrier *barrier, bool *broken)
{
    if (!valid(barrier) || !broken)
        return -EINVAL;
    lock_block(barrier->block);
    *broken = barrier->block->broken;
    unlock_block(barrier->block);
    return 0;
}

static mproc_barrier *new_handle(mproc_barrier_action_fn action, void *arg, int timeout_ms)
{
    mproc_barrier *barrier = calloc(1, sizeof(*barrier));
    if (!barrier)
        return NULL;
    barrier->action = action;
    barrier->arg = arg;
    barrier->timeout_ms = timeout_ms < 0 ? MPROC_WAIT_FOREVER : timeout_ms;
    return barrier;
}

int mproc_barrier_create(mproc_barrier **out, unsigned parties, mproc_barrier_action_fn action,
                         void *arg, int timeout_ms)
{
    if (!out || parties == 0 || parties > 65536)
        return -EINVAL;
    mproc_barrier *barrier = new_handle(action, arg, timeout_ms);
    if (!barrier)
        return -ENOMEM;
    int rc = mproc__object_create(&barrier->region, block_size(parties), MPROC__KIND_BARRIER,
                                  "mproc-barrier");
    if (rc < 0) {
        free(barrier);
        return rc;
    }
    struct barrier_block *block = barrier->region.addr;
    block->parties = parties;
    rc = mproc__mutex_init(&block->mutex);
    if (rc < 0) {
        mproc__region_release(&barrier->region);
        free(barrier);
        return rc;
    }
    barrier->block = block;
    barrier->magic = BARRIER_MAGIC;
    *out = barrier;
    return 0;
}

int mproc_barrier_fd(const mproc_barrier *barrier, int *fd)
{
    if (!valid(barrier) || !fd)
        return -EINVAL;
    *fd = barrier->region.fd;
    return 0;
}

int mproc_barrier_attach(mproc_barrier **out, int fd, mproc_barrier_action_fn action, void *arg,
                         int timeout_ms)
{
    if (!out)
        return -EINVAL;
    mproc_barrier *barrier = new_handle(action, arg, timeout_ms);
    if (!barrier)
        return -ENOMEM;
    int rc = mproc__object_attach(&barrier->region, fd, MPROC__KIND_BARRIER,
                                  sizeof(struct barrier_block));
    struct barrier_block *block = barrier->region.addr;
    if (rc == 0 && barrier->region.size < block_size(block->parties)) {
        mproc__region_release(&barrier->region);
        rc = -EINVAL;
    }
    if (rc < 0) {
        free(barrier);
        return rc;
    }
    barrier->block = block;
    barrier->magic = BARRIER_MAGIC;
    *out = barrier;
    return 0;
}

int mproc_barrier_destroy(mproc_barrier **barrier)
{
    if (!barrier || !valid(*barrier))
        return -EINVAL;
    mproc_barrier *b = *barrier;
    struct barrier_block *block = b->block;
    refresh_identity(b);
    lock_block(block);
    for (uint32_t i = 0; i < block->parties; i++) {
        if (block->party[i].pid == b->pid && block->party[i].start_time == b->start_time)
            block->party[i].pid = 0;
    }
    unlock_block(block);
    mproc__region_release(&b->region);
    b->magic = 0;
    free(b);
    *barrier = NULL;
    return 0;
}
