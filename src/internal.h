/*
 * internal.h: helpers shared by the library's source files. Nothing here is
 * part of the public API; symbols shared across files carry the mproc__
 * prefix and are hidden from the shared library.
 */
#ifndef MPROC_INTERNAL_H
#define MPROC_INTERNAL_H

#include <mproc/common.h>

#include <stdint.h>

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

/* close() that keeps errno and ignores fd < 0. */
void mproc__close(int fd);

#endif /* MPROC_INTERNAL_H */
