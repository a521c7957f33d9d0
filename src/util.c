/* util.c: small system helpers used across the library. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

int64_t mproc__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mproc__deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    return mproc__now_ms() + timeout_ms;
}

int mproc__remaining_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - mproc__now_ms();
    if (left <= 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

int mproc__wait_readable(int fd, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n = poll(&pfd, 1, timeout_ms);
    if (n < 0)
        return -errno;
    return n > 0 ? 1 : 0;
}

void mproc__close(int fd)
{
    if (fd < 0)
        return;
    int saved = errno;
    /* Linux frees the descriptor even when close() fails: never retry it. */
    (void)close(fd);
    errno = saved;
}
