/*
 * internal.h: helpers shared by the library's source files. Nothing here is
 * part of the public API; symbols shared across files carry the mproc__
 * prefix and are hidden from the shared library.
 */
#ifndef MPROC_INTERNAL_H
#define MPROC_INTERNAL_H

#include <mproc/common.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Monotonic clock in milliseconds, for deadlines. */
int64_t mproc__now_ms(void);

/* Deadline for a timeout: -1 when timeout_ms is negative (no deadline). */
int64_t mproc__deadline(int timeout_ms);

/*
 * Milliseconds left before deadline, for poll(): -1 when there is no
 * deadline, 0 once it has passed.
 */
int mproc__remaining_ms(int64_t deadline);

/*
 * Waits up to timeout_ms for fd to be readable or hung up.
 * Returns 1 when ready, 0 on timeout, -EINTR when a signal handler ran,
 * another negated errno on failure.
 */
int mproc__wait_readable(int fd, int timeout_ms);

/* ---- which descriptors a forked child keeps (fd_registry.c) ---- */

/*
 * Owners of recorded descriptors. SHARED (never recorded): a user object's,
 * inherited by every child. PRIVATE: the process's own (a pool's ends in the
 * creating process, pidfds), closed in every child. Any other value: a pool's
 * tag (its address), kept only by the children forked for that pool.
 */
#define MPROC__FD_SHARED  ((uintptr_t)0)
#define MPROC__FD_PRIVATE ((uintptr_t)1)

/*
 * Held from the creation of descriptors to record until mproc__fd_record()
 * has recorded them, so that no fork() falls in between. Not across fork().
 */
void mproc__fd_lock(void);
void mproc__fd_unlock(void);

/* Records fd as owner's, with the lock held. Returns 0, -EBADF, -EMFILE (table full). */
int mproc__fd_record(int fd, uintptr_t owner);

/*
 * fork() whose child keeps the recorded descriptors of owner (a pool's tag)
 * and closes every other recorded one; a plain fork() (the program's own, or
 * owner PRIVATE) keeps none of them. Returns what fork() returns.
 */
pid_t mproc__fork_keeping(uintptr_t owner);

/* close() that keeps errno, ignores fd < 0 and forgets fd if it was recorded. */
void mproc__close(int fd);

/*
 * A number that changes in every child after fork() (any fork, not only
 * mproc's: a pthread_atfork handler bumps it). Handles inherited through fork
 * compare it with the value they cached, instead of calling getpid() on every
 * operation, to learn that they now live in another process.
 */
unsigned mproc__fork_generation(void);

/*
 * Whether pid is a live process that started at start_time (clock ticks since
 * boot, field 22 of /proc/<pid>/stat). A zombie counts as dead, and so does a
 * recycled pid. start_time 0 skips the recycling check.
 */
bool mproc__pid_alive(pid_t pid, uint64_t start_time);

/* Start time (field 22 of /proc/<pid>/stat) of a process, or 0 if unknown. */
uint64_t mproc__pid_start_time(pid_t pid);

/* ---- futex: sleeping on a 32-bit word in shared memory (futex.c) ---- */

/*
 * Sleeps while *word == expected, until woken, until the monotonic deadline
 * (ms, -1: none) or until a signal handler runs. Works across processes: the
 * word may live in MAP_SHARED memory. Returns 0 when woken or when the word
 * had already changed (callers re-check their condition: wake-ups can be
 * spurious), -ETIMEDOUT, -EINTR.
 */
int mproc__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline);

/* Wakes up to count sleepers on word (INT32_MAX: all). */
void mproc__futex_wake(_Atomic uint32_t *word, int count);

/* ---- robust process-shared mutexes (robust.c) ---- */

/*
 * Initialises a mutex in shared memory: process-shared and robust, so that
 * when its holder dies the next locker is told instead of waiting forever.
 * Returns 0 or a negated errno.
 */
int mproc__mutex_init(pthread_mutex_t *mutex);

/*
 * Locks until the monotonic deadline (ms, -1: none). Returns 0; or
 * -EOWNERDEAD when the previous holder died holding it: the caller now holds
 * it, must repair what it guards, then call pthread_mutex_consistent();
 * -ETIMEDOUT; -ENOTRECOVERABLE when a previous owner-died was never repaired.
 */
int mproc__mutex_lock(pthread_mutex_t *mutex, int64_t deadline);

/* Converts a monotonic deadline in ms into a timespec for pthread/futex calls. */
struct timespec mproc__deadline_timespec(int64_t deadline);

/* ---- shared memory regions backed by a memfd (region.c) ---- */

/*
 * A MAP_SHARED mapping of a memfd: inherited by fork(), and attachable by a
 * process started later through its descriptor (sent with SCM_RIGHTS). It has
 * no name in /dev/shm, so nothing outlives the last process that maps it.
 */
struct mproc__region {
    void *addr;
    size_t size;
    int fd; /* close-on-exec; -1 once released */
};

/* Creates a zero-filled region of size bytes; name shows in /proc/<pid>/maps. */
int mproc__region_create(struct mproc__region *region, size_t size, const char *name);

/*
 * Maps the region behind fd (its whole size). fd is duplicated: the caller
 * keeps its own. Returns 0, -EINVAL (not a regular file or memfd), or errno.
 */
int mproc__region_attach(struct mproc__region *region, int fd);

/* Unmaps and closes. Safe on a region already released. */
void mproc__region_release(struct mproc__region *region);

/* ---- descriptor passing over Unix sockets (pipe.c) ---- */

/* Most descriptors one message can carry (the kernel's SCM_MAX_FD). */
#define MPROC__MAX_FDS 253

/*
 * Sends len bytes from buf (len >= 1: a stream socket carries descriptors
 * only along with data) in one sendmsg(MSG_NOSIGNAL | flags), with nfds
 * descriptors (at most MPROC__MAX_FDS) attached as SCM_RIGHTS. Returns the
 * number of bytes sent: on a stream socket it may be fewer than len, and the
 * rest is to be sent without the descriptors, which went with the first byte.
 * Returns -errno with nothing sent: -EAGAIN (MSG_DONTWAIT or a non-blocking
 * socket), -EPIPE, -EBADF (a bad descriptor in fds), -EINVAL.
 */
ssize_t mproc__send_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds,
                        int flags);

/*
 * Receives up to len bytes (len >= 1) in one recvmsg(MSG_CMSG_CLOEXEC |
 * flags). The descriptors that came with them are close-on-exec: the first
 * max_fds are stored in fds (which may be NULL when max_fds is 0), the others
 * closed, and *nfds is set to how many came, which exceeds max_fds when some
 * were closed. Returns the number of bytes, 0 at end of stream, or -errno
 * (-EAGAIN, -EINTR, -ECONNRESET, ...).
 */
ssize_t mproc__recv_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds,
                        int flags);

#endif /* MPROC_INTERNAL_H */
