/*
 * mproc/queue.h: a multi-producer, multi-consumer FIFO of byte messages in
 * shared memory, as Python's multiprocessing.Queue, SimpleQueue and
 * JoinableQueue, without their hangs.
 *
 * The queue lives in a memfd-backed shared mapping: children started after
 * create() inherit it, and a process started earlier or independently (a
 * pool worker) attaches through its descriptor (mproc_queue_fd() /
 * mproc_queue_attach()). Nothing is ever named in /dev/shm: the memory goes
 * away with the last process that maps it.
 *
 * Messages are bytes of any length, 0 to SIZE_MAX: one larger than half the
 * ring streams through it in parts. Every message put is delivered whole to
 * exactly one get, in the order each producer put them.
 *
 * A process may be killed at any instruction: a message it was half-way
 * through putting is dropped, one it was taking stays for the others, and
 * the locks it held are recovered. A get on an empty queue whose producers
 * have all died returns -EPIPE instead of waiting forever (and a put on a
 * full queue whose consumers have all died, likewise).
 *
 * put() copies the message into the queue before it returns and reports
 * every error itself: there is no feeder thread, and a process that has put
 * data can always exit.
 *
 * Handles: every process uses its own handle (inherited, or attached);
 * one handle may be used by several threads of its process at once.
 */
#ifndef MPROC_QUEUE_H
#define MPROC_QUEUE_H

#include <mproc/common.h>

#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mproc_queue mproc_queue;

/* The ring size used when create() is given 0: 4 MiB. */
#define MPROC_QUEUE_DEFAULT_CAPACITY ((size_t)4 << 20)

/*
 * Creates a queue. max_messages bounds how many messages it holds (0: no
 * bound but the ring, Python's maxsize=0); capacity is the ring size in bytes
 * (0: MPROC_QUEUE_DEFAULT_CAPACITY; rounded up to a power of two, at least
 * 4 KiB), which also bounds the bytes it holds. The ring's pages are touched
 * only as they are used.
 * Returns 0 and sets *out, or -EINVAL, -ENOMEM, -EMFILE.
 */
MPROC_API int mproc_queue_create(mproc_queue **out, size_t max_messages, size_t capacity);

/* Python's SimpleQueue: create(out, 0, 0). */
MPROC_API int mproc_simple_queue_create(mproc_queue **out);

/*
 * Python's JoinableQueue: a queue that also counts unfinished messages
 * (see mproc_queue_task_done() and mproc_queue_join()).
 */
MPROC_API int mproc_joinable_queue_create(mproc_queue **out, size_t max_messages, size_t capacity);

/*
 * Sets *fd to the queue's descriptor, to hand to another process (for
 * example with mproc_conn_send_fds()). The handle keeps ownership; the
 * descriptor is close-on-exec and valid until destroy.
 */
MPROC_API int mproc_queue_fd(const mproc_queue *queue, int *fd);

/*
 * Makes a handle for the queue behind fd, a descriptor from mproc_queue_fd()
 * received from another process. fd is duplicated: the caller still owns it.
 * Returns 0, -EINVAL (not a queue), or a negated errno.
 */
MPROC_API int mproc_queue_attach(mproc_queue **out, int fd);

/*
 * Puts a copy of len bytes. Waits up to timeout_ms (MPROC_WAIT_FOREVER: no
 * limit; 0: Python's put_nowait) while the queue is full.
 * Returns 0; -EAGAIN (full, timeout 0); -ETIMEDOUT; -EINTR (a signal handler
 * ran while waiting: nothing was put); MPROC_ECLOSED (the queue was closed);
 * -EPIPE (full, and every process that took from it has ended); -EINVAL.
 * A message larger than half the ring that times out half-way is withdrawn:
 * consumers never see it.
 */
MPROC_API int mproc_queue_put(mproc_queue *queue, const void *data, size_t len, int timeout_ms);

/*
 * Puts count messages, in order, under one lock, publishing them together.
 * Waits as put() does for room for the next one. Sets *done to how many were
 * put, also on error. Returns what put() would for the first one not put.
 */
MPROC_API int mproc_queue_put_many(mproc_queue *queue, const struct iovec *messages, size_t count,
                                   size_t *done, int timeout_ms);

/*
 * Takes the oldest message into a fresh allocation: *data (free it with
 * free(); a 0-byte message gives a non-NULL pointer) and *len. Waits up to
 * timeout_ms while the queue is empty.
 * Returns 0; -EAGAIN (empty, timeout 0); -ETIMEDOUT; -EINTR; -ENOMEM (the
 * message stays in the queue); MPROC_ECLOSED (closed and drained); -EPIPE
 * (empty, and every process that put into it has ended); -EINVAL.
 * Once the first part of a streamed message is taken, get() waits for the
 * rest whatever the timeout, unless its producer dies or withdraws it.
 */
MPROC_API int mproc_queue_get(mproc_queue *queue, void **data, size_t *len, int timeout_ms);

/*
 * As get(), into the caller's buffer of cap bytes. When the message is larger
 * than cap, returns -EMSGSIZE with its length in *len and leaves it in the
 * queue, so that a retry with a larger buffer gets it.
 */
MPROC_API int mproc_queue_get_into(mproc_queue *queue, void *buf, size_t cap, size_t *len,
                                   int timeout_ms);

/*
 * Takes up to max messages that are already there, at least one (waiting as
 * get() does for it), copied one after the other into buf (cap bytes, each
 * message aligned to 8 bytes). messages[i] is set to point into buf. Sets
 * *count. Returns as get_into() does for the first message; later messages
 * that do not fit are left for the next call.
 */
MPROC_API int mproc_queue_get_many(mproc_queue *queue, void *buf, size_t cap,
                                   struct iovec *messages, size_t max, size_t *count,
                                   int timeout_ms);

/*
 * Sets *count to the number of messages in the queue: exact when no put or
 * get is under way, as Python's qsize() is not, also after processes were
 * killed in the middle of one (their half-done step is repaired first).
 * Returns 0 or -EINVAL.
 */
MPROC_API int mproc_queue_size(mproc_queue *queue, size_t *count);

/* Sets *empty (no message) or *full (a put would wait). Returns 0 or -EINVAL. */
MPROC_API int mproc_queue_empty(mproc_queue *queue, bool *empty);
MPROC_API int mproc_queue_full(mproc_queue *queue, bool *full);

/*
 * Closes the queue for every process: puts fail with MPROC_ECLOSED, gets
 * take what is left and then return MPROC_ECLOSED instead of waiting, and
 * every waiter wakes up. Use it to tell consumers that the stream has ended.
 * Returns 0 or -EINVAL.
 */
MPROC_API int mproc_queue_close(mproc_queue *queue);

/*
 * JoinableQueue: marks one message taken by this process as done. Returns 0,
 * -EINVAL (not joinable), -EOVERFLOW (more task_done() than messages put).
 */
MPROC_API int mproc_queue_task_done(mproc_queue *queue);

/*
 * JoinableQueue: waits until every message put has been marked done.
 * Returns 0, -ETIMEDOUT, -EINTR, -EINVAL (not joinable), or -EPIPE when a
 * process that had taken messages (or part of one) died before marking them
 * done: they will never be (the count stays as it is; task_done() from
 * another process can still bring it to zero).
 */
MPROC_API int mproc_queue_join(mproc_queue *queue, int timeout_ms);

/*
 * Releases this process's handle and sets *queue to NULL. The queue itself
 * lives on in the other processes that map it. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_queue_destroy(mproc_queue **queue);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_QUEUE_H */
