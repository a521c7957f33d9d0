/*
 * fd_registry.c: which of the library's descriptors a child it forks may keep.
 *
 * fork() copies every descriptor. A pool's fork server that kept another
 * pool's socket end kept that pool's fork server waiting for an end of file
 * that never came, and destroy() hung. So the descriptors that belong to one
 * pool (its queues, sockets and slot table) or to the creating process alone
 * (its ends of those sockets, pidfds) are recorded here, and a child the
 * library forks closes the ones that are not its own right after fork().
 * Descriptors of the user's objects (queues, pipes, locks the program made)
 * are not recorded: children inherit them, as Python's fork children do.
 *
 * The lock (reentrant through a per-thread depth: a queue made under it
 * closes descriptors on failure) is held from the creation of a recorded descriptor until it is
 * recorded, and across every fork() of the process (pthread_atfork handlers,
 * so the program's own forks too), so that no child is forked between the
 * two. In the child, the handler closes what is not the child's: a fork the
 * library makes for a pool's fork server keeps that pool's descriptors, any
 * other fork keeps none. The table is a fixed array: it is read in the child
 * right after fork(), where only async-signal-safe calls may run (no malloc).
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <unistd.h>

/* More recorded descriptors than this and recording fails with -EMFILE. */
#define FD_REGISTRY_MAX 16384

struct fd_entry {
    int fd;
    uintptr_t owner;
};

static struct {
    pthread_mutex_t lock;
    size_t count;
    struct fd_entry entries[FD_REGISTRY_MAX];
} registry = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* How many times this thread holds the lock: the mutex is taken at the first only. */
static _Thread_local unsigned held;

/* The owner whose descriptors a child of this thread's next fork() keeps. */
static _Thread_local uintptr_t fork_keep = MPROC__FD_PRIVATE;

static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;

static void before_fork(void)
{
    pthread_mutex_lock(&registry.lock);
}

static void after_fork_parent(void)
{
    pthread_mutex_unlock(&registry.lock);
}

/* Only close() runs here: the child of a multithreaded process is async-signal-safe land. */
static void after_fork_child(void)
{
    size_t kept = 0;
    for (size_t i = 0; i < registry.count; i++) {
        struct fd_entry e = registry.entries[i];
        if (e.owner == fork_keep && fork_keep != MPROC__FD_PRIVATE)
            registry.entries[kept++] = e;
        else
            (void)close(e.fd);
    }
    registry.count = kept;
    fork_keep = MPROC__FD_PRIVATE;
    /* Taken by before_fork() in this thread, the one the child goes on with. */
    pthread_mutex_unlock(&registry.lock);
}

static void install_handlers(void)
{
    (void)pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

void mproc__fd_lock(void)
{
    pthread_once(&handlers_once, install_handlers);
    if (held++ == 0)
        pthread_mutex_lock(&registry.lock);
}

void mproc__fd_unlock(void)
{
    if (--held == 0)
        pthread_mutex_unlock(&registry.lock);
}

int mproc__fd_record(int fd, uintptr_t owner)
{
    if (fd < 0 || owner == MPROC__FD_SHARED)
        return fd < 0 ? -EBADF : 0;
    if (registry.count == FD_REGISTRY_MAX)
        return -EMFILE;
    registry.entries[registry.count++] = (struct fd_entry){.fd = fd, .owner = owner};
    return 0;
}

/* Drops fd's entry, if any; with the lock held. */
static void forget(int fd)
{
    for (size_t i = 0; i < registry.count; i++) {
        if (registry.entries[i].fd == fd) {
            registry.entries[i] = registry.entries[--registry.count];
            return;
        }
    }
}

void mproc__close(int fd)
{
    if (fd < 0)
        return;
    int saved = errno;
    /* Forgotten and closed under the lock: the number is not reused before it is forgotten. */
    mproc__fd_lock();
    forget(fd);
    /* Linux frees the descriptor even when close() fails: never retry it. */
    (void)close(fd);
    mproc__fd_unlock();
    errno = saved;
}

pid_t mproc__fork_keeping(uintptr_t owner)
{
    pthread_once(&handlers_once, install_handlers);
    fork_keep = owner;
    pid_t pid = fork();
    if (pid != 0)
        fork_keep = MPROC__FD_PRIVATE;
    return pid;
}
