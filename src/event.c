/*
 * event.c: Event on one futex word. The low bit is the flag; the other bits
 * count the times it was set. A waiter that slept on the word returns
 * success when the count moved, even if the flag was cleared again before it
 * ran: that set() was meant for it (Python's Event.wait() returns True then).
 * set() wakes all sleepers, and only when the waiter count says there are
 * any. Nothing is owned, so a process dying anywhere leaves nothing to repair;
 * a dead waiter leaves the waiter count high, which costs a needless wake.
 */
#define _GNU_SOURCE
#include "sync_internal.h"

#include <errno.h>
#include <stdlib.h>

#define EVENT_MAGIC 0x6d706576u /* "mpev" */
#define FLAG        1u

struct event_block {
    struct mproc__object_header header;
    _Atomic uint32_t word;
    _Atomic uint32_t waiters;
};

struct mproc_event {
    uint32_t magic;
    struct mproc__region region;
    struct event_block *block;
};

static bool valid(const mproc_event *event)
{
    return event && event->magic == EVENT_MAGIC;
}

int mproc_event_create(mproc_event **out)
{
    if (!out)
        return -EINVAL;
    mproc_event *event = calloc(1, sizeof(*event));
    if (!event)
        return -ENOMEM;
    int rc = mproc__object_create(&event->region, sizeof(struct event_block), MPROC__KIND_EVENT,
                                  "mproc-event");
    if (rc < 0) {
        free(event);
        return rc;
    }
    event->block = event->region.addr;
    event->magic = EVENT_MAGIC;
    *out = event;
    return 0;
}

int mproc_event_set(mproc_event *event)
{
    if (!valid(event))
        return -EINVAL;
    struct event_block *block = event->block;
    uint32_t word = atomic_load(&block->word);
    do {
        if (word & FLAG)
            return 0;
    } while (!atomic_compare_exchange_weak(&block->word, &word, (word + 2) | FLAG));
    if (atomic_load(&block->waiters) > 0)
        mproc__futex_wake(&block->word, INT32_MAX);
    return 0;
}

int mproc_event_clear(mproc_event *event)
{
    if (!valid(event))
        return -EINVAL;
    atomic_fetch_and(&event->block->word, ~FLAG);
    return 0;
}

int mproc_event_is_set(mproc_event *event, bool *set)
{
    if (!valid(event) || !set)
        return -EINVAL;
    *set = atomic_load(&event->block->word) & FLAG;
    return 0;
}

/* True once the flag is up or was raised since the word read `seen`. */
static bool signalled(uint32_t now, uint32_t seen)
{
    return (now & FLAG) || (now >> 1) != (seen >> 1);
}

int mproc_event_wait(mproc_event *event, int timeout_ms)
{
    if (!valid(event))
        return -EINVAL;
    struct event_block *block = event->block;
    uint32_t seen = atomic_load(&block->word);
    for (int i = 0; i < MPROC__SPIN_ROUNDS; i++) {
        if (signalled(atomic_load(&block->word), seen))
            return 0;
        mproc__cpu_relax();
    }
    if (timeout_ms == 0)
        return -ETIMEDOUT;
    int64_t deadline = mproc__deadline(timeout_ms);
    atomic_fetch_add(&block->waiters, 1);
    int rc = 0;
    for (;;) {
        uint32_t now = atomic_load(&block->word);
        if (signalled(now, seen)) {
            rc = 0;
            break;
        }
        /* Sleep on the current value: a clear() in between is no reason to wake. */
        rc = mproc__futex_wait(&block->word, now, deadline);
        if (rc < 0) {
            rc = signalled(atomic_load(&block->word), seen) ? 0 : rc;
            break;
        }
    }
    atomic_fetch_sub(&block->waiters, 1);
    return rc;
}

int mproc_event_fd(const mproc_event *event, int *fd)
{
    if (!valid(event) || !fd)
        return -EINVAL;
    *fd = event->region.fd;
    return 0;
}

int mproc_event_attach(mproc_event **out, int fd)
{
    if (!out)
        return -EINVAL;
    mproc_event *event = calloc(1, sizeof(*event));
    if (!event)
        return -ENOMEM;
    int rc =
        mproc__object_attach(&event->region, fd, MPROC__KIND_EVENT, sizeof(struct event_block));
    if (rc < 0) {
        free(event);
        return rc;
    }
    event->block = event->region.addr;
    event->magic = EVENT_MAGIC;
    *out = event;
    return 0;
}

int mproc_event_destroy(mproc_event **event)
{
    if (!event || !valid(*event))
        return -EINVAL;
    mproc__region_release(&(*event)->region);
    (*event)->magic = 0;
    free(*event);
    *event = NULL;
    return 0;
}
