/*
 * mproc/common.h: conventions shared by every part of libmproc.
 *
 * Every function returns an int: 0 on success, or a negative error code.
 * Error codes are negative errno values (-EINVAL, -ETIMEDOUT, ...) plus the
 * few library codes below, which lie far outside the errno range. Values come
 * back through out-parameters. mproc_strerror() turns a code into text.
 * The library keeps no global error state: the return value is the error.
 */
#ifndef MPROC_COMMON_H
#define MPROC_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MPROC_VERSION_MAJOR  0
#define MPROC_VERSION_MINOR  1
#define MPROC_VERSION_PATCH  0
#define MPROC_VERSION_STRING "0.1.0"
/* 0xMMmmpp: compare with mproc_version() to check header and library agree. */
#define MPROC_VERSION_HEX                                                                          \
    ((MPROC_VERSION_MAJOR << 16) | (MPROC_VERSION_MINOR << 8) | MPROC_VERSION_PATCH)

/* Marks the public API; everything else in the shared library is hidden. */
#if defined(__GNUC__)
#define MPROC_API __attribute__((visibility("default")))
#else
#define MPROC_API
#endif

/* Timeouts are in milliseconds: MPROC_WAIT_FOREVER blocks, 0 only polls. */
#define MPROC_WAIT_FOREVER (-1)

/*
 * Library error codes. Anything else a function returns is a negated errno.
 * The errno values the library uses with a fixed meaning:
 *   -EINVAL   bad argument (NULL handle, out-of-range value)
 *   -ETIMEDOUT the timeout expired
 *   -EINTR    a signal handler ran while the call was blocked (retry if wanted)
 *   -EALREADY the operation was done already (start twice)
 *   -ECHILD   not started, or not a child of the calling process
 *   -EDEADLK  the call would wait on the caller itself
 *   -EBUSY    the object is still in use (destroying a running process)
 *   -EPIPE    the peer on the other side is gone
 *   -EOWNERDEAD a lock's holder died; the caller now holds it (see sync.h)
 */
enum mproc_error {
    MPROC_ERROR_BASE = -20000,
    /* A worker process died (signal or exit) while it ran the task. */
    MPROC_EWORKERDIED = -20001,
    /* The object is broken for good: a barrier with a dead party, a pool torn down. */
    MPROC_EBROKEN = -20002,
    /* The task ran and reported an error; its message is in the result. */
    MPROC_ETASKFAILED = -20003,
    /* The object was closed: no more puts or submissions. */
    MPROC_ECLOSED = -20004,
    /* The task was cancelled before it started. */
    MPROC_ECANCELLED = -20005,
};

/*
 * Returns a description of an error code: a library code, or a negated errno.
 * The string is static and never NULL; unknown codes give "unknown error".
 * Thread-safe; callable from any process.
 */
MPROC_API const char *mproc_strerror(int code);

/*
 * Returns the symbolic name of an error code ("ETIMEDOUT", "MPROC_EBROKEN"),
 * or "UNKNOWN". Static, never NULL, thread-safe.
 */
MPROC_API const char *mproc_errname(int code);

/* Returns MPROC_VERSION_HEX of the library actually linked. */
MPROC_API unsigned mproc_version(void);

/* Returns MPROC_VERSION_STRING of the library actually linked. Static. */
MPROC_API const char *mproc_version_string(void);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_COMMON_H */
