/*
 * helpers.h: what the tests need to observe processes from outside: open
 * descriptors, zombies, whether a pid is still running, elapsed time.
 */
#ifndef MPROC_TEST_HELPERS_H
#define MPROC_TEST_HELPERS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Number of open descriptors of the calling process (/proc/self/fd). */
int test_count_fds(void);

/* Number of zombie children of the calling process, from /proc. */
int test_count_zombie_children(void);

/* Process state letter from /proc/<pid>/stat ('R', 'S', 'Z', ...), or 0 if gone. */
char test_process_state(pid_t pid);

/* True when pid is gone or a zombie, polling up to timeout_ms. */
bool test_wait_pid_dead(pid_t pid, int timeout_ms);

/* Monotonic milliseconds. */
int64_t test_now_ms(void);

/* Number of entries in /dev/shm (to show that nothing named was left there). */
int test_count_dev_shm(void);

#endif
