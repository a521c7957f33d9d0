/*
 * helpers.h: what the tests need to observe processes from outside: open
 * descriptors, zombies, whether a pid is still running, elapsed time.
 */
#ifndef MPROC_TEST_HELPERS_H
#define MPROC_TEST_HELPERS_H

#include <mproc.h>

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Creates and starts a child running target(arg); fails the test if it cannot. */
mproc_process *test_start(mproc_target_fn target, void *arg);

/* Joins (60 s at most), destroys, and returns the child's exit code. */
int test_join_code(mproc_process *proc);

/* Joins, checks the exit code, destroys; fails the test otherwise. */
void test_join_expect(mproc_process *proc, int expected);

/* Number of open descriptors of the calling process (/proc/self/fd). */
int test_count_fds(void);

/* Number of zombie children of the calling process, from /proc. */
int test_count_zombie_children(void);

/* Number of children of the calling process, running or not, from /proc. */
int test_count_children(void);

/* Up to max pids of pid's children (from /proc); returns how many. */
size_t test_children_of(pid_t pid, pid_t *out, size_t max);

/* pid's children and grandchildren, up to max; returns how many. */
size_t test_family_of(pid_t pid, pid_t *out, size_t max);

/* Process state letter from /proc/<pid>/stat ('R', 'S', 'Z', ...), or 0 if gone. */
char test_process_state(pid_t pid);

/* True when pid is gone or a zombie, polling up to timeout_ms. */
bool test_wait_pid_dead(pid_t pid, int timeout_ms);

/* Monotonic milliseconds. */
int64_t test_now_ms(void);

/*
 * Number of entries in /dev/shm (to show that nothing named was left there),
 * not counting those other suites running at the same time make.
 */
int test_count_dev_shm(void);

#endif
