/*
 * pipe.c: Pipe and Connection: framed messages over a socket pair or a pipe.
 *
 * A frame is an 8-byte little-endian length followed by that many bytes.
 * Descriptors (SCM_RIGHTS) ride on the first byte of their frame's header.
 *
 * Descriptors are non-blocking: every wait is a poll(), which a signal
 * handler interrupts even when it was installed with SA_RESTART, so that a
 * blocked call can return -EINTR. A receive keeps a partly read frame in the
 * handle (header, bytes so far, descriptors), so a timeout or a signal in the
 * middle of a frame loses nothing and the next call resumes it. A send keeps
 * no such state: once the first byte of a frame has gone it finishes the
 * frame, because stopping halfway would leave the stream unreadable.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <mproc/pipe.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CONN_MAGIC  0x6d70636eu /* "mpcn" */
#define HEADER_SIZE 8
/* Bytes per system call: Linux moves under 2 GiB per call whatever is asked. */
#define CHUNK_MAX ((size_t)1 << 30)

_Static_assert(MPROC_CONN_MAX_FDS == MPROC__MAX_FDS, "one limit for public and internal API");

enum conn_kind { KIND_DUPLEX, KIND_READER, KIND_WRITER };

/* The frame being received. */
struct frame {
    unsigned char header[HEADER_SIZE];
    size_t header_got;
    size_t len;          /* valid once header_got == HEADER_SIZE */
    unsigned char *body; /* the bytes so far when the handle keeps them, else NULL */
    size_t body_got;     /* 0 while body is NULL */
    size_t nfds;
    int fds[MPROC_CONN_MAX_FDS];
};

struct mproc_conn {
    uint32_t magic;
    enum conn_kind kind;
    int fd;           /* -1 once closed */
    bool send_broken; /* a send failed halfway through a frame */
    bool recv_broken; /* bytes of a frame were lost: the stream is out of step */
    /* pid of the process whose thread is inside a send or a receive, or 0 */
    atomic_int send_busy;
    atomic_int recv_busy;
    struct frame in;
};

/* ---- descriptor passing ---- */

union fd_control {
    struct cmsghdr align;
    unsigned char buf[CMSG_SPACE(sizeof(int) * MPROC__MAX_FDS)];
};

static ssize_t sendmsg_fds(int sock, struct iovec *iov, size_t iovcnt, const int *fds, size_t nfds,
                           int flags)
{
    if (nfds > MPROC__MAX_FDS || (nfds > 0 && !fds))
        return -EINVAL;
    union fd_control control;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = iovcnt};
    if (nfds > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    /* MSG_NOSIGNAL: a dead peer is an -EPIPE for the caller, not a SIGPIPE. */
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL | flags);
    return n < 0 ? -errno : n;
}

ssize_t mproc__send_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds,
                        int flags)
{
    if (!buf || len == 0)
        return -EINVAL;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return sendmsg_fds(sock, &iov, 1, fds, nfds, flags);
}

/* Keeps the first max_fds of the descriptors in one SCM_RIGHTS message, closes the rest. */
static void take_fds(const struct cmsghdr *cmsg, int *fds, size_t max_fds, size_t *nfds)
{
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char *data = CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; i++) {
        int fd;
        memcpy(&fd, data + i * sizeof(int), sizeof(fd));
        if (*nfds < max_fds)
            fds[*nfds] = fd;
        else
            mproc__close(fd);
        (*nfds)++;
    }
}

ssize_t mproc__recv_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds,
                        int flags)
{
    if (!buf || len == 0 || !nfds || (!fds && max_fds > 0))
        return -EINVAL;
    *nfds = 0;
    /*
     * Room for the most one sendmsg() can attach, whatever max_fds is: with
     * less, the kernel would drop the excess itself (MSG_CTRUNC) and the
     * caller could not even learn how many there were.
     */
    union fd_control control;
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof(control.buf),
    };
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS)
            take_fds(cmsg, fds, max_fds, nfds);
    }
    return n;
}

/* ---- handles ---- */

static bool valid(const mproc_conn *conn)
{
    return conn && conn->magic == CONN_MAGIC;
}

/*
 * Marks one direction as used by the calling thread. The mark is the pid of
 * the process whose thread set it: a mark that fork() copied from a parent
 * that was inside a call names a process none of whose threads exist here,
 * so it is taken over rather than reported busy forever.
 */
static int enter(atomic_int *busy)
{
    int self = (int)getpid();
    int holder = 0;
    if (atomic_compare_exchange_strong(busy, &holder, self))
        return 0;
    if (holder == self)
        return -EBUSY;
    return atomic_compare_exchange_strong(busy, &holder, self) ? 0 : -EBUSY;
}

static void leave(atomic_int *busy)
{
    atomic_store(busy, 0);
}

/* Forgets the frame being received; its descriptors are closed unless handed out. */
static void frame_reset(struct frame *in)
{
    free(in->body);
    for (size_t i = 0; i < in->nfds; i++)
        mproc__close(in->fds[i]);
    in->header_got = 0;
    in->len = 0;
    in->body = NULL;
    in->body_got = 0;
    in->nfds = 0;
}

static int conn_new(mproc_conn **out, enum conn_kind kind, int fd)
{
    mproc_conn *conn = calloc(1, sizeof(*conn));
    if (!conn)
        return -ENOMEM;
    conn->magic = CONN_MAGIC;
    conn->kind = kind;
    conn->fd = fd;
    atomic_init(&conn->send_busy, 0);
    atomic_init(&conn->recv_busy, 0);
    *out = conn;
    return 0;
}

int mproc_pipe_create(mproc_conn **a, mproc_conn **b, bool duplex)
{
    if (!a || !b)
        return -EINVAL;
    int fds[2];
    /* Non-blocking, because poll() is the one wait a signal always interrupts. */
    int rc = duplex ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds)
                    : pipe2(fds, O_CLOEXEC | O_NONBLOCK);
    if (rc < 0)
        return -errno;
    mproc_conn *first = NULL;
    mproc_conn *second = NULL;
    rc = conn_new(&first, duplex ? KIND_DUPLEX : KIND_READER, fds[0]);
    if (rc == 0)
        rc = conn_new(&second, duplex ? KIND_DUPLEX : KIND_WRITER, fds[1]);
    if (rc < 0) {
        free(first);
        mproc__close(fds[0]);
        mproc__close(fds[1]);
        return rc;
    }
    *a = first;
    *b = second;
    return 0;
}

int mproc_conn_fileno(const mproc_conn *conn, int *fd)
{
    if (!valid(conn) || !fd)
        return -EINVAL;
    if (conn->fd < 0)
        return MPROC_ECLOSED;
    *fd = conn->fd;
    return 0;
}

/* Takes both directions, so that no other thread is inside a call. */
static int enter_both(mproc_conn *conn)
{
    int rc = enter(&conn->recv_busy);
    if (rc < 0)
        return rc;
    rc = enter(&conn->send_busy);
    if (rc < 0)
        leave(&conn->recv_busy);
    return rc;
}

int mproc_conn_close(mproc_conn *conn)
{
    if (!valid(conn))
        return -EINVAL;
    int rc = enter_both(conn);
    if (rc < 0)
        return rc;
    if (conn->fd < 0) {
        rc = MPROC_ECLOSED;
    } else {
        frame_reset(&conn->in);
        mproc__close(conn->fd);
        conn->fd = -1;
    }
    leave(&conn->send_busy);
    leave(&conn->recv_busy);
    return rc;
}

int mproc_conn_destroy(mproc_conn **connp)
{
    if (!connp || !valid(*connp))
        return -EINVAL;
    mproc_conn *conn = *connp;
    int rc = enter_both(conn);
    if (rc < 0)
        return rc;
    frame_reset(&conn->in);
    mproc__close(conn->fd);
    conn->magic = 0;
    free(conn);
    *connp = NULL;
    return 0;
}

/* ---- receiving ---- */

static uint64_t decode_length(const unsigned char *header)
{
    uint64_t value = 0;
    for (int i = HEADER_SIZE - 1; i >= 0; i--)
        value = value << 8 | header[i];
    return value;
}

/* One non-blocking read; descriptors that come with the bytes join the frame. */
static ssize_t read_once(mproc_conn *conn, void *dst, size_t want)
{
    if (conn->kind == KIND_READER) {
        ssize_t n = read(conn->fd, dst, want);
        return n < 0 ? -errno : n;
    }
    struct frame *in = &conn->in;
    size_t room = MPROC_CONN_MAX_FDS - in->nfds;
    size_t came = 0;
    ssize_t n = mproc__recv_fds(conn->fd, dst, want, in->fds + in->nfds, room, &came, MSG_DONTWAIT);
    /* More than fit can come only from a sender other than libmproc: those were closed. */
    in->nfds += came < room ? came : room;
    return n;
}

/*
 * Reads what has arrived, up to want bytes, waiting until the deadline for
 * at least one. Returns the count, or -EPIPE (end of stream or reset),
 * -ETIMEDOUT, -EINTR, another -errno.
 */
static ssize_t read_some(mproc_conn *conn, void *dst, size_t want, int64_t deadline)
{
    if (want > CHUNK_MAX)
        want = CHUNK_MAX;
    for (;;) {
        ssize_t n = read_once(conn, dst, want);
        if (n > 0)
            return n;
        if (n == 0 || n == -ECONNRESET)
            return -EPIPE;
        if (n != -EAGAIN)
            return n;
        int rc = mproc__wait_readable(conn->fd, mproc__remaining_ms(deadline));
        if (rc < 0)
            return rc;
        if (rc == 0)
            return -ETIMEDOUT;
    }
}

/*
 * A read failed. The end of the stream in the middle of a frame means the
 * sender died while writing it: that frame is dropped. Anything else (a
 * timeout, a signal, a transient error) consumed nothing, so the partial
 * frame stays for the next call.
 */
static int read_failed(mproc_conn *conn, ssize_t rc)
{
    if (rc == -EPIPE)
        frame_reset(&conn->in);
    return (int)rc;
}

static int read_header(mproc_conn *conn, int64_t deadline)
{
    struct frame *in = &conn->in;
    while (in->header_got < HEADER_SIZE) {
        ssize_t n =
            read_some(conn, in->header + in->header_got, HEADER_SIZE - in->header_got, deadline);
        if (n < 0)
            return read_failed(conn, n);
        in->header_got += (size_t)n;
        if (in->header_got == HEADER_SIZE) {
            uint64_t len = decode_length(in->header);
#if SIZE_MAX < UINT64_MAX
            if (len > SIZE_MAX)
                return -EOVERFLOW;
#endif
            in->len = (size_t)len;
        }
    }
    return 0;
}

/* Reads the whole frame into the handle's own buffer. */
static int read_frame_kept(mproc_conn *conn, int64_t deadline)
{
    int rc = read_header(conn, deadline);
    if (rc < 0)
        return rc;
    struct frame *in = &conn->in;
    if (!in->body) {
        /* One byte at least, so that a 0-byte message is still a pointer to free(). */
        in->body = malloc(in->len ? in->len : 1);
        if (!in->body)
            return -ENOMEM;
    }
    while (in->body_got < in->len) {
        ssize_t n = read_some(conn, in->body + in->body_got, in->len - in->body_got, deadline);
        if (n < 0)
            return read_failed(conn, n);
        in->body_got += (size_t)n;
    }
    return 0;
}

/* Hands the completed frame's bytes to the caller and readies the handle for the next. */
static void take_body(struct frame *in, void **buf, size_t *len)
{
    *buf = in->body;
    *len = in->len;
    in->body = NULL;
    frame_reset(in);
}

/*
 * Keeps the got bytes read so far into the caller's buffer in the handle,
 * because the caller may pass another buffer next time.
 */
static int keep_partial(struct frame *in, const unsigned char *buf, size_t got)
{
    if (got == 0)
        return 0;
    in->body = malloc(in->len);
    if (!in->body)
        return -ENOMEM;
    memcpy(in->body, buf, got);
    in->body_got = got;
    return 0;
}

static int read_frame_into(mproc_conn *conn, unsigned char *buf, size_t cap, size_t *len,
                           int64_t deadline)
{
    int rc = read_header(conn, deadline);
    if (rc < 0)
        return rc;
    struct frame *in = &conn->in;
    if (in->len > cap) {
        *len = in->len;
        return -EMSGSIZE;
    }
    /*
     * A 0-byte message writes nothing, and buf may be NULL then. (A NULL buf
     * with len > 0 cannot come here: len <= cap, and the caller refused a NULL
     * buf with cap > 0; the test keeps the analyzer aware of that.)
     */
    if (in->len == 0 || !buf) {
        *len = in->len;
        frame_reset(in);
        return 0;
    }
    size_t got = in->body_got;
    if (in->body) {
        if (got > 0)
            memcpy(buf, in->body, got);
        free(in->body);
        in->body = NULL;
        in->body_got = 0;
    }
    while (got < in->len) {
        ssize_t n = read_some(conn, buf + got, in->len - got, deadline);
        if (n == -EPIPE)
            return read_failed(conn, n);
        if (n < 0) {
            /* Without memory to keep what came, the rest of the stream is unreadable. */
            if (keep_partial(in, buf, got) < 0)
                conn->recv_broken = true;
            return (int)n;
        }
        got += (size_t)n;
    }
    *len = in->len;
    frame_reset(in);
    return 0;
}

static int begin_recv(mproc_conn *conn, bool with_fds)
{
    if (!valid(conn))
        return -EINVAL;
    if (with_fds && conn->kind != KIND_DUPLEX)
        return -EOPNOTSUPP;
    if (conn->kind == KIND_WRITER)
        return -EBADF;
    int rc = enter(&conn->recv_busy);
    if (rc < 0)
        return rc;
    if (conn->fd < 0 || conn->recv_broken) {
        leave(&conn->recv_busy);
        return conn->fd < 0 ? MPROC_ECLOSED : MPROC_EBROKEN;
    }
    return 0;
}

int mproc_conn_recv(mproc_conn *conn, void **buf, size_t *len, int timeout_ms)
{
    if (!buf || !len)
        return -EINVAL;
    int64_t deadline = mproc__deadline(timeout_ms);
    int rc = begin_recv(conn, false);
    if (rc < 0)
        return rc;
    rc = read_frame_kept(conn, deadline);
    if (rc == 0)
        take_body(&conn->in, buf, len);
    leave(&conn->recv_busy);
    return rc;
}

int mproc_conn_recv_into(mproc_conn *conn, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    if (!len || (!buf && cap > 0))
        return -EINVAL;
    int64_t deadline = mproc__deadline(timeout_ms);
    int rc = begin_recv(conn, false);
    if (rc < 0)
        return rc;
    rc = read_frame_into(conn, buf, cap, len, deadline);
    leave(&conn->recv_busy);
    return rc;
}

int mproc_conn_recv_fds(mproc_conn *conn, void **buf, size_t *len, int *fds, size_t max_fds,
                        size_t *nfds, int timeout_ms)
{
    if (!buf || !len || !nfds || (!fds && max_fds > 0))
        return -EINVAL;
    int64_t deadline = mproc__deadline(timeout_ms);
    int rc = begin_recv(conn, true);
    if (rc < 0)
        return rc;
    rc = read_frame_kept(conn, deadline);
    struct frame *in = &conn->in;
    if (rc == 0 && in->nfds > max_fds) {
        /* Like a short buffer: the whole frame stays pending for a bigger array. */
        *nfds = in->nfds;
        *len = in->len;
        rc = -EMSGSIZE;
    } else if (rc == 0) {
        if (in->nfds > 0)
            memcpy(fds, in->fds, in->nfds * sizeof(int));
        *nfds = in->nfds;
        in->nfds = 0; /* handed out: frame_reset() must not close them */
        take_body(in, buf, len);
    }
    leave(&conn->recv_busy);
    return rc;
}

static bool frame_complete(const struct frame *in)
{
    return in->header_got == HEADER_SIZE && in->body_got == in->len && (in->body || in->len == 0);
}

int mproc_conn_poll(mproc_conn *conn, int timeout_ms, bool *ready)
{
    if (!ready)
        return -EINVAL;
    int rc = begin_recv(conn, false);
    if (rc < 0)
        return rc;
    if (frame_complete(&conn->in)) {
        *ready = true;
    } else {
        rc = mproc__wait_readable(conn->fd, timeout_ms);
        if (rc >= 0)
            *ready = rc > 0;
        rc = rc < 0 ? rc : 0;
    }
    leave(&conn->recv_busy);
    return rc;
}

/* ---- sending ---- */

static void encode_length(unsigned char *header, uint64_t value)
{
    for (int i = 0; i < HEADER_SIZE; i++)
        header[i] = (unsigned char)(value >> (8 * i));
}

/*
 * A write to a pipe whose reader is gone raises SIGPIPE in the writing
 * thread, and pipes have no MSG_NOSIGNAL. Changing the disposition would be
 * process-wide, so instead (as libpq does) SIGPIPE is blocked in this thread
 * around the write, and a SIGPIPE the write made pending is consumed with
 * sigtimedwait() before the old mask comes back. One that was pending before
 * belongs to the program and is left alone: signals do not queue, so ours
 * merged into it.
 */
struct sigpipe_guard {
    sigset_t old_mask;
    bool was_pending;
};

static void sigpipe_block(struct sigpipe_guard *guard)
{
    sigset_t block;
    sigset_t pending;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &guard->old_mask);
    guard->was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

static void sigpipe_restore(const struct sigpipe_guard *guard, bool raised)
{
    if (raised && !guard->was_pending) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        const struct timespec zero = {0, 0};
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            continue;
    }
    pthread_sigmask(SIG_SETMASK, &guard->old_mask, NULL);
}

/* One non-blocking write of the frame from offset done; fds only with its first byte. */
static ssize_t write_once(mproc_conn *conn, const unsigned char *header, const unsigned char *body,
                          size_t len, size_t done, const int *fds, size_t nfds)
{
    struct iovec iov[2];
    size_t iovcnt = 0;
    size_t budget = CHUNK_MAX;
    if (done < HEADER_SIZE) {
        iov[iovcnt++] = (struct iovec){(void *)(header + done), HEADER_SIZE - done};
        budget -= HEADER_SIZE - done;
    }
    size_t body_done = done < HEADER_SIZE ? 0 : done - HEADER_SIZE;
    size_t body_left = len - body_done;
    if (body_left > 0) {
        size_t part = body_left < budget ? body_left : budget;
        iov[iovcnt++] = (struct iovec){(void *)(body + body_done), part};
    }
    if (conn->kind == KIND_DUPLEX)
        return sendmsg_fds(conn->fd, iov, iovcnt, done == 0 ? fds : NULL, done == 0 ? nfds : 0,
                           MSG_DONTWAIT);
    ssize_t n = writev(conn->fd, iov, (int)iovcnt);
    return n < 0 ? -errno : n;
}

static int wait_writable(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    return poll(&pfd, 1, -1) < 0 ? -errno : 0;
}

static int write_frame(mproc_conn *conn, const unsigned char *body, size_t len, const int *fds,
                       size_t nfds)
{
    unsigned char header[HEADER_SIZE];
    encode_length(header, len);
    size_t total = HEADER_SIZE + len;
    size_t done = 0;
    while (done < total) {
        ssize_t n = write_once(conn, header, body, len, done, fds, nfds);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n == -EAGAIN)
            n = wait_writable(conn->fd);
        if (n == -EINTR && done == 0)
            return -EINTR;
        /* Past the first byte a signal must not cut the frame short: go on. */
        if (n == 0 || n == -EINTR)
            continue;
        if (n == -ECONNRESET)
            n = -EPIPE;
        /* A frame cut short by anything but the reader's death ruins the stream. */
        if (done > 0 && n != -EPIPE)
            conn->send_broken = true;
        return (int)n;
    }
    return 0;
}

static int send_frame(mproc_conn *conn, const void *buf, size_t len, const int *fds, size_t nfds)
{
    if ((!buf && len > 0) || len > SIZE_MAX - HEADER_SIZE)
        return -EINVAL;
    int rc = enter(&conn->send_busy);
    if (rc < 0)
        return rc;
    if (conn->fd < 0)
        rc = MPROC_ECLOSED;
    else if (conn->send_broken)
        rc = MPROC_EBROKEN;
    if (rc < 0) {
        leave(&conn->send_busy);
        return rc;
    }
    struct sigpipe_guard guard;
    bool is_pipe = conn->kind == KIND_WRITER;
    if (is_pipe)
        sigpipe_block(&guard);
    rc = write_frame(conn, buf, len, fds, nfds);
    if (is_pipe)
        sigpipe_restore(&guard, rc == -EPIPE);
    leave(&conn->send_busy);
    return rc;
}

int mproc_conn_send(mproc_conn *conn, const void *buf, size_t len)
{
    if (!valid(conn))
        return -EINVAL;
    if (conn->kind == KIND_READER)
        return -EBADF;
    return send_frame(conn, buf, len, NULL, 0);
}

int mproc_conn_send_fds(mproc_conn *conn, const void *buf, size_t len, const int *fds, size_t nfds)
{
    if (!valid(conn) || nfds > MPROC_CONN_MAX_FDS || (!fds && nfds > 0))
        return -EINVAL;
    if (conn->kind != KIND_DUPLEX)
        return -EOPNOTSUPP;
    for (size_t i = 0; i < nfds; i++) {
        if (fds[i] < 0)
            return -EBADF;
    }
    return send_frame(conn, buf, len, fds, nfds);
}
