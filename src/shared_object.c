/*
 * shared_object.c: the common skeleton of sync and sharedctypes objects: a
 * memfd region with a typed header, and the identity of the calling thread
 * that locks record as their owner.
 */
#define _GNU_SOURCE
#include "sync_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct thread_identity {
    unsigned fork_generation;
    uint64_t token;
    pid_t pid;
};

static _Thread_local struct thread_identity self_identity;

static uint64_t clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The calling thread's identity, made again in a child after fork. */
static const struct thread_identity *identity(void)
{
    /*
     * The fork generation changes in every child, so a thread inherited by
     * fork (the child's only thread) makes a new token: the parent's thread
     * may still hold locks under the old one.
     */
    unsigned generation = mproc__fork_generation();
    if (self_identity.token != 0 && self_identity.fork_generation == generation)
        return &self_identity;
    uint64_t ns = clock_ns();
    uint64_t tid = (uint64_t)(uint32_t)gettid();
    self_identity.token = (tid << 32) | (uint32_t)(ns ^ (ns >> 32));
    self_identity.pid = getpid();
    self_identity.fork_generation = generation;
    return &self_identity;
}

uint64_t mproc__thread_token(void)
{
    return identity()->token;
}

pid_t mproc__thread_pid(void)
{
    return identity()->pid;
}

static uint64_t random_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof(id), GRND_NONBLOCK) != (ssize_t)sizeof(id))
        id = clock_ns() ^ ((uint64_t)(uint32_t)getpid() << 40);
    return id | 1; /* never 0, which means "none" */
}

int mproc__object_create(struct mproc__region *region, size_t size, enum mproc__kind kind,
                         const char *name)
{
    int rc = mproc__region_create(region, size, name);
    if (rc < 0)
        return rc;
    struct mproc__object_header *header = region->addr;
    header->magic = MPROC__OBJECT_MAGIC;
    header->kind = (uint32_t)kind;
    header->id = random_id();
    return 0;
}

int mproc__object_attach(struct mproc__region *region, int fd, enum mproc__kind kind,
                         size_t min_size)
{
    if (fd < 0)
        return -EINVAL;
    int rc = mproc__region_attach(region, fd);
    if (rc < 0)
        return rc;
    const struct mproc__object_header *header = region->addr;
    if (region->size < min_size || header->magic != MPROC__OBJECT_MAGIC ||
        header->kind != (uint32_t)kind) {
        mproc__region_release(region);
        return -EINVAL;
    }
    return 0;
}
