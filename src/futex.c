/*
 * futex.c: sleep and wake on a word of shared memory. Shared (not
 * FUTEX_PRIVATE) futexes, because sleepers and wakers are different processes
 * mapping the same page. The absolute deadline uses FUTEX_WAIT_BITSET so that
 * a wait retried after a spurious wake-up does not stretch the timeout.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int mproc__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline)
{
    struct timespec abs_time;
    struct timespec *timeout = NULL;
    if (deadline >= 0) {
        abs_time = mproc__deadline_timespec(deadline);
        timeout = &abs_time;
    }
    long rc = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, timeout, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    return -errno;
}

void mproc__futex_wake(_Atomic uint32_t *word, int count)
{
    (void)syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
}
