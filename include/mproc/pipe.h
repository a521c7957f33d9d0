/*
 * mproc/pipe.h: two connected endpoints that carry framed byte messages
 * between processes, as Python's multiprocessing.Pipe() does.
 *
 * A duplex pipe is a Unix socket pair: each end sends and receives, and can
 * also pass open descriptors (SCM_RIGHTS). A one-way pipe is a kernel pipe:
 * the first end only receives, the second only sends.
 *
 * Messages keep their boundaries: each send() is one recv() on the other
 * side, of any length from 0 bytes to several GiB (64-bit length header).
 *
 * Sharing: connections are inherited by children started with
 * mproc_process_start() (fork), and each process then holds its own copy of
 * the handle and of the descriptor. The other end sees the peer gone (-EPIPE)
 * only once every process has closed its copy of an end, so a process
 * should destroy the copies it does not use, as with Python's Pipe.
 * Two processes that send on the same end at once interleave their bytes and
 * corrupt the stream (Python documents the same); so do two receivers. Within
 * one process, a second thread that sends while another sends (or receives
 * while another receives) on the same handle gets -EBUSY instead.
 *
 * Errors specific to connections:
 *   -EPIPE        the other end is gone: every copy of it was closed, or its
 *                 process died. A frame cut short by the peer's death is
 *                 dropped. Sends never raise SIGPIPE.
 *   MPROC_ECLOSED this handle was closed with mproc_conn_close().
 *   -EBADF        the wrong direction: recv on the sending end of a one-way
 *                 pipe, or send on its receiving end.
 *   -EMSGSIZE     the caller's buffer (or descriptor array) is too small; the
 *                 message stays pending, nothing is lost.
 *   -EBUSY        another thread of this process is using the same direction.
 */
#ifndef MPROC_PIPE_H
#define MPROC_PIPE_H

#include <mproc/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mproc_conn mproc_conn;

/* Most descriptors one message can carry (the kernel's SCM_MAX_FD). */
#define MPROC_CONN_MAX_FDS 253

/*
 * Creates a pipe and sets *a and *b to its two ends, like Python's
 * Pipe(duplex). duplex: both ends send and receive. One-way: *a receives and
 * *b sends (r, w = Pipe(False)). The descriptors are close-on-exec and are
 * inherited by children started later. The caller owns both handles and
 * frees each with mproc_conn_destroy() (in every process that has a copy).
 * Returns 0, -EINVAL (NULL a or b), -ENOMEM, -EMFILE/-ENFILE.
 */
MPROC_API int mproc_pipe_create(mproc_conn **a, mproc_conn **b, bool duplex);

/*
 * Sends len bytes from buf as one message (buf may be NULL when len is 0).
 * Blocks until the whole message is in the kernel's buffer: the receiver
 * need not have read it yet. Any process holding a copy of the end may call
 * it; the caller keeps buf.
 * A signal handler that runs before the first byte is written makes it return
 * -EINTR with nothing sent; once bytes of the message have gone, it finishes
 * the message (or fails with -EPIPE) so that the stream stays well formed.
 * Returns 0; -EPIPE when the receiving end is gone (no SIGPIPE is raised and
 * no signal handler installed); -EINTR; MPROC_EBROKEN when an earlier send
 * failed halfway through a message, which leaves the stream unusable;
 * -EINVAL, -EBADF (receive-only end), MPROC_ECLOSED, -EBUSY.
 */
MPROC_API int mproc_conn_send(mproc_conn *conn, const void *buf, size_t len);

/*
 * Receives the next message into a fresh allocation: sets *buf (never NULL,
 * even for a 0-byte message) and *len. The caller owns *buf and releases it
 * with free(). Descriptors the message carried (see mproc_conn_send_fds) are
 * closed. timeout_ms: MPROC_WAIT_FOREVER, 0 to poll, or a limit.
 * A timeout or signal that arrives in the middle of a message loses nothing:
 * the bytes already read are kept in the handle and the next receive call
 * resumes the same message.
 * Returns 0; -ETIMEDOUT; -EINTR when a signal handler ran; -EPIPE when the
 * sending end is gone (after the last complete message); -ENOMEM (the
 * message stays pending); -EINVAL, -EBADF (send-only end), MPROC_ECLOSED,
 * -EBUSY; MPROC_EBROKEN after a recv_into() that could not keep a partial
 * message (no memory), which leaves the stream unreadable.
 * *buf and *len are set only on success.
 */
MPROC_API int mproc_conn_recv(mproc_conn *conn, void **buf, size_t *len, int timeout_ms);

/*
 * Receives the next message into the caller's buffer of cap bytes (buf may
 * be NULL when cap is 0) and sets *len to its length. When the message is
 * longer than cap, returns -EMSGSIZE, sets *len to the length needed and
 * leaves the message pending: the next receive call (with a big enough
 * buffer, or mproc_conn_recv) gets it. Python raises BufferTooShort there.
 * Timeouts, signals, failures and descriptors as for mproc_conn_recv(); on
 * -ETIMEDOUT or -EINTR in the middle of a message, what had arrived is
 * copied into the handle (the caller's buffer may have been written to);
 * when that copy finds no memory, the call returns its error as usual but
 * the receiving side is broken for good (MPROC_EBROKEN from then on).
 */
MPROC_API int mproc_conn_recv_into(mproc_conn *conn, void *buf, size_t cap, size_t *len,
                                   int timeout_ms);

/*
 * Sets *ready to whether a receive call would not have to wait: data has
 * arrived, a message is pending in the handle, or the sending end is gone (the
 * receive then reports -EPIPE). Part of a message may be all that has
 * arrived, so a receive with timeout 0 can still answer -ETIMEDOUT.
 * Waits up to timeout_ms for that. Returns 0 (also when the time ran out,
 * with *ready false), -EINTR, -EINVAL, -EBADF (send-only end), MPROC_ECLOSED.
 */
MPROC_API int mproc_conn_poll(mproc_conn *conn, int timeout_ms, bool *ready);

/*
 * Sets *fd to the connection's descriptor, for poll/epoll/libuv loops: wait
 * for POLLIN (readable) on it, then call a receive function. Both directions
 * of a duplex end use this one descriptor; a one-way end has only the one for
 * its direction. The handle owns it: do not read, write or close it, nor
 * change its flags (it is non-blocking). Valid until close or destroy.
 * A message already pending in the handle (after -EMSGSIZE) does not make the
 * descriptor readable: call mproc_conn_poll(conn, 0, ...) to see it.
 * Returns 0, -EINVAL, MPROC_ECLOSED.
 */
MPROC_API int mproc_conn_fileno(const mproc_conn *conn, int *fd);

/*
 * Sends a message with nfds open descriptors attached (duplex pipes only).
 * The receiver gets duplicates of them, as dup() would make, with
 * close-on-exec set; the caller's descriptors stay open and the caller's.
 * nfds may be 0 (a plain message) and at most MPROC_CONN_MAX_FDS.
 * Returns what mproc_conn_send() returns, plus -EOPNOTSUPP on a one-way
 * pipe, -EBADF when one of fds is not open (nothing is sent then), -EINVAL
 * for nfds > MPROC_CONN_MAX_FDS or a NULL fds with nfds > 0.
 */
MPROC_API int mproc_conn_send_fds(mproc_conn *conn, const void *buf, size_t len, const int *fds,
                                  size_t nfds);

/*
 * Receives a message and the descriptors that came with it (duplex pipes
 * only): *buf and *len as mproc_conn_recv() sets them (the caller frees *buf),
 * the descriptors in fds[0 .. *nfds-1]. The caller owns them (close-on-exec
 * set) and closes them. When more than max_fds came, returns -EMSGSIZE, sets
 * *nfds to the number needed and *len to the message's length, and keeps the
 * whole message and its descriptors pending in the handle: call again with a
 * bigger array, or call mproc_conn_recv() to take the bytes and close the
 * descriptors. fds may be NULL when max_fds is 0.
 * Timeouts and failures as for mproc_conn_recv(), plus -EOPNOTSUPP on a
 * one-way pipe.
 */
MPROC_API int mproc_conn_recv_fds(mproc_conn *conn, void **buf, size_t *len, int *fds,
                                  size_t max_fds, size_t *nfds, int timeout_ms);

/*
 * Closes this process's copy of the end: its descriptor, and any message or
 * descriptors pending in the handle. Later calls return MPROC_ECLOSED; the
 * handle stays allocated until destroy. The peer sees -EPIPE once every copy
 * of this end is closed. Returns 0, -EINVAL, MPROC_ECLOSED (closed before),
 * -EBUSY (another thread is inside a call on it).
 */
MPROC_API int mproc_conn_close(mproc_conn *conn);

/*
 * Closes the end if still open, frees the handle and sets *conn to NULL, so a
 * later call with it gets -EINVAL. Affects only the calling process's copy.
 * Returns 0, -EINVAL (NULL or destroyed), -EBUSY (another thread is inside a
 * call on it: nothing is freed).
 */
MPROC_API int mproc_conn_destroy(mproc_conn **conn);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_PIPE_H */
