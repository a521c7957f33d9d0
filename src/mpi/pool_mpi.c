/*
 * pool_mpi.c: the pool over MPI. Rank 0 runs the program; every other rank
 * is one worker that serves tasks until rank 0 stops it.
 *
 * On rank 0 the pool is the local pool with its fork server replaced by a
 * proxy thread that speaks the same protocols: it takes task messages from
 * the per-worker queues and sends them to the ranks, puts the ranks' result
 * messages on the result queue, and answers the pool's spawn, kill and
 * terminate requests. The proxy is the only thread that calls MPI while the
 * pool runs (MPI_THREAD_SERIALIZED is enough).
 *
 * Wire: every logical message is a first part (struct wire_prefix, a header,
 * and the body when it is small) followed by the body in parts of at most
 * part_max bytes, all with one tag per direction, so MPI's non-overtaking
 * rule keeps them in order and a payload has no 2 GiB limit. Rank 0 never
 * blocks in a send (MPI_Isend, tested in its loop) while it always drains
 * what the ranks send, so the blocking sends of the ranks cannot deadlock.
 *
 * A task that runs over the pool's timeout cannot be killed (that would end
 * the job): its rank is set aside, the tasks queued behind it go to other
 * ranks, and it rejoins when it has finished and confirmed a new generation
 * number, below which it drops what it was sent before.
 */
#define _GNU_SOURCE
#include "../pool_internal.h"

#include <mpi.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TAG_DOWN      0x6d70 /* rank 0 -> a worker rank */
#define TAG_UP        0x6d71 /* a worker rank -> rank 0 */
#define PART_MAX      ((size_t)1 << 30)
#define INLINE_MAX    ((size_t)64 * 1024)
#define STOP_GRACE_MS 5000
#define FORWARD_BATCH 64
#define WIRE_INLINE   1u

enum wire_kind {
    K_TASK = 1,    /* head: struct pool_task_msg + the task's registered name */
    K_CONTROL = 2, /* a new generation: drop tasks sent under older ones */
    K_STOP = 3,    /* finish, say goodbye and return */
    K_HELLO = 11,  /* head: struct hello */
    K_RESULT = 12, /* head: struct pool_res_msg */
    K_ACK = 13,    /* the generation in the prefix is now the rank's */
    K_BYE = 14,
};

struct wire_prefix {
    uint64_t body_len;
    uint32_t kind;
    uint32_t head_len;
    uint32_t generation;
    uint32_t flags;
};

struct hello {
    int32_t pid;
    int32_t status; /* the initializer's return */
    char host[64];
};

/* A logical message received whole. */
struct wire_msg {
    struct wire_prefix prefix;
    unsigned char *head; /* head_len bytes, then body_len bytes, in one allocation */
    unsigned char *body;
    struct wire_msg *next;
};

/* ---- MPI set-up ---- */

static bool initialised_by_us;

static size_t part_max(void)
{
    /* Smaller parts only to exercise the multi-part path in tests. */
    const char *env = getenv("MPROC_MPI_PART_MAX");
    long long v = env ? atoll(env) : 0;
    return v > 0 && (size_t)v < PART_MAX ? (size_t)v : PART_MAX;
}

int mproc__mpi_setup(void **comm_out, int *rank, int *size)
{
    int flag = 0;
    MPI_Finalized(&flag);
    if (flag)
        return -ENOTSUP; /* MPI cannot start twice in one process */
    int provided = 0;
    MPI_Initialized(&flag);
    if (!flag) {
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
            return -EIO;
        initialised_by_us = true;
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED)
        return -ENOTSUP;
    MPI_Comm *comm = malloc(sizeof(MPI_Comm));
    if (!comm)
        return -ENOMEM;
    /* A communicator of our own: the program's messages never match ours. */
    if (MPI_Comm_dup(MPI_COMM_WORLD, comm) != MPI_SUCCESS) {
        free(comm);
        return -EIO;
    }
    MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(*comm, rank);
    MPI_Comm_size(*comm, size);
    *comm_out = comm;
    return 0;
}

/* Frees our communicator and ends MPI if we started it; not when a rank is stuck. */
static void mpi_teardown(MPI_Comm *comm, bool clean)
{
    if (!clean) {
        free(comm);
        return;
    }
    MPI_Comm_free(comm);
    free(comm);
    if (initialised_by_us) {
        MPI_Finalize();
        initialised_by_us = false;
    }
}

/* ---- the wire ---- */

/* Receives the rest of a message whose first part is waiting (status from a probe). */
static int recv_message(MPI_Comm comm, const MPI_Status *probed, struct wire_msg **out)
{
    int count = 0;
    MPI_Get_count(probed, MPI_BYTE, &count);
    int src = probed->MPI_SOURCE, tag = probed->MPI_TAG;
    unsigned char *first = malloc(count > 0 ? (size_t)count : 1);
    if (!first)
        return -ENOMEM;
    if (MPI_Recv(first, count, MPI_BYTE, src, tag, comm, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        free(first);
        return -EIO;
    }
    struct wire_prefix prefix;
    if ((size_t)count < sizeof(prefix)) {
        free(first);
        return -EBADMSG;
    }
    memcpy(&prefix, first, sizeof(prefix));
    bool inline_body = prefix.flags & WIRE_INLINE;
    size_t expect = sizeof(prefix) + prefix.head_len + (inline_body ? prefix.body_len : 0);
    struct wire_msg *m = calloc(1, sizeof(*m));
    unsigned char *data = malloc(prefix.head_len + prefix.body_len + 1);
    if (expect != (size_t)count || !m || !data) {
        free(first);
        free(m);
        free(data);
        return expect != (size_t)count ? -EBADMSG : -ENOMEM;
    }
    m->prefix = prefix;
    m->head = data;
    m->body = data + prefix.head_len;
    memcpy(data, first + sizeof(prefix), (size_t)count - sizeof(prefix));
    free(first);
    size_t parts = part_max();
    for (size_t done = 0; !inline_body && done < prefix.body_len;) {
        size_t n = prefix.body_len - done < parts ? prefix.body_len - done : parts;
        if (MPI_Recv(m->body + done, (int)n, MPI_BYTE, src, tag, comm, MPI_STATUS_IGNORE) !=
            MPI_SUCCESS) {
            free(data);
            free(m);
            return -EIO;
        }
        done += n;
    }
    *out = m;
    return 0;
}

static void free_message(struct wire_msg *m)
{
    if (m)
        free(m->head);
    free(m);
}

/* The first part of a message: prefix, head, and the body when it is small. */
static unsigned char *first_part(const struct wire_prefix *prefix, const void *head,
                                 const void *body, size_t *len)
{
    bool inline_body = prefix->flags & WIRE_INLINE;
    *len = sizeof(*prefix) + prefix->head_len + (inline_body ? prefix->body_len : 0);
    unsigned char *buf = malloc(*len);
    if (!buf)
        return NULL;
    memcpy(buf, prefix, sizeof(*prefix));
    if (prefix->head_len)
        memcpy(buf + sizeof(*prefix), head, prefix->head_len);
    if (inline_body && prefix->body_len)
        memcpy(buf + sizeof(*prefix) + prefix->head_len, body, prefix->body_len);
    return buf;
}

static void backoff(unsigned *idle)
{
    /* Spin a little for latency, then sleep up to 1 ms so idle ranks leave the CPUs. */
    if (*idle < 32) {
        sched_yield();
    } else {
        unsigned shift = *idle - 32 < 7 ? *idle - 32 : 7;
        struct timespec ts = {0, (long)(8000u << shift)};
        nanosleep(&ts, NULL);
    }
    (*idle)++;
}

/* ---- a worker rank ---- */

struct server_rank {
    MPI_Comm comm;
    int rank;
    uint32_t generation;    /* the newest generation seen, CONTROL or STOP */
    struct wire_msg *inbox; /* received, not handled yet, in order */
    struct wire_msg *inbox_last;
    struct mproc__task_exec exec;
    size_t parts;
};

/* Blocking send of a whole message to rank 0 (see the deadlock note at the top). */
static int send_up(struct server_rank *s, uint32_t kind, uint32_t generation, const void *head,
                   size_t head_len, const void *body, size_t body_len)
{
    struct wire_prefix prefix = {.body_len = body_len,
                                 .kind = kind,
                                 .head_len = (uint32_t)head_len,
                                 .generation = generation,
                                 .flags = body_len <= INLINE_MAX ? WIRE_INLINE : 0};
    size_t len;
    unsigned char *first = first_part(&prefix, head, body, &len);
    if (!first)
        return -ENOMEM;
    int rc = MPI_Send(first, (int)len, MPI_BYTE, 0, TAG_UP, s->comm);
    free(first);
    const unsigned char *bytes = body;
    for (size_t done = 0; rc == MPI_SUCCESS && !(prefix.flags & WIRE_INLINE) && done < body_len;) {
        size_t n = body_len - done < s->parts ? body_len - done : s->parts;
        rc = MPI_Send(bytes + done, (int)n, MPI_BYTE, 0, TAG_UP, s->comm);
        done += n;
    }
    return rc == MPI_SUCCESS ? 0 : -EIO;
}

/* Takes in everything rank 0 has sent so far, so CONTROL and STOP are seen ahead of tasks. */
static int drain_inbox(struct server_rank *s)
{
    for (;;) {
        int flag = 0;
        MPI_Status status;
        if (MPI_Iprobe(0, TAG_DOWN, s->comm, &flag, &status) != MPI_SUCCESS)
            return -EIO;
        if (!flag)
            return 0;
        struct wire_msg *m;
        int rc = recv_message(s->comm, &status, &m);
        if (rc < 0)
            return rc;
        if (m->prefix.kind != K_TASK && m->prefix.generation > s->generation)
            s->generation = m->prefix.generation;
        if (s->inbox_last)
            s->inbox_last->next = m;
        else
            s->inbox = m;
        s->inbox_last = m;
    }
}

static struct wire_msg *next_message(struct server_rank *s)
{
    struct wire_msg *m = s->inbox;
    if (!m)
        return NULL;
    s->inbox = m->next;
    if (s->inbox_last == m)
        s->inbox_last = NULL;
    m->next = NULL;
    return m;
}

static int run_task(struct server_rank *s, const struct wire_msg *m)
{
    struct pool_task_msg msg;
    if (m->prefix.head_len <= sizeof(msg) || m->head[m->prefix.head_len - 1] != '\0')
        return -EBADMSG;
    memcpy(&msg, m->head, sizeof(msg));
    const char *name = (const char *)m->head + sizeof(msg);
    struct pool_res_msg res = {.id = msg.id, .worker = s->rank - 1, .pid = getpid()};
    mproc_task_fn fn;
    int rc;
    if (mproc_task_lookup(name, &fn) == 0) {
        rc = mproc__task_exec_run(&s->exec, &msg, fn, m->body, m->prefix.body_len, &res);
    } else {
        /* Another binary, or one that registers its tasks later than rank 0. */
        char why[320];
        int n = snprintf(why, sizeof(why), "no task is registered as '%s' on MPI rank %d", name,
                         s->rank);
        res.kind = RES_DONE;
        res.status = MPROC_ETASKFAILED;
        return send_up(s, K_RESULT, m->prefix.generation, &res, sizeof(res), why,
                       n > 0 ? (size_t)n : 0);
    }
    if (rc < 0)
        return rc;
    return send_up(s, K_RESULT, m->prefix.generation, s->exec.out, sizeof(res),
                   s->exec.out + sizeof(res), s->exec.out_len - sizeof(res));
}

/* Handles one message; 1 when the rank must stop. */
static int serve_message(struct server_rank *s, const struct wire_msg *m)
{
    switch (m->prefix.kind) {
    case K_TASK:
        /* Sent before a generation we have seen: rank 0 gave it to another rank. */
        if (m->prefix.generation < s->generation)
            return 0;
        return run_task(s, m);
    case K_CONTROL:
        return m->prefix.generation == s->generation
                   ? send_up(s, K_ACK, s->generation, NULL, 0, NULL, 0)
                   : 0;
    case K_STOP:
        return send_up(s, K_BYE, s->generation, NULL, 0, NULL, 0) < 0 ? -EIO : 1;
    default:
        return -EBADMSG;
    }
}

static int serve_loop(struct server_rank *s)
{
    unsigned idle = 0;
    for (;;) {
        int rc = drain_inbox(s);
        if (rc < 0)
            return rc;
        struct wire_msg *m = next_message(s);
        if (!m) {
            backoff(&idle);
            continue;
        }
        idle = 0;
        rc = serve_message(s, m);
        free_message(m);
        if (rc != 0)
            return rc > 0 ? 0 : rc;
    }
}

int mproc__mpi_serve(void *comm_arg, int rank, const mproc_pool_options *options)
{
    MPI_Comm *comm = comm_arg;
    struct server_rank s = {.comm = *comm, .rank = rank, .parts = part_max()};
    s.exec.ctx.worker = rank - 1;
    struct hello hello = {.pid = getpid()};
    (void)gethostname(hello.host, sizeof(hello.host) - 1);
    if (options && options->initializer)
        hello.status = options->initializer(options->initializer_arg);
    int rc = send_up(&s, K_HELLO, 0, &hello, sizeof(hello), NULL, 0);
    if (rc == 0)
        rc = serve_loop(&s);
    for (struct wire_msg *m; (m = next_message(&s));)
        free_message(m);
    mproc__task_exec_free(&s.exec);
    (void)fflush(stdout);
    (void)fflush(stderr);
    mpi_teardown(comm, rc == 0);
    return rc < 0 ? MPROC_EBROKEN : 0;
}

/* ---- rank 0: the proxy ---- */

enum link_state {
    L_STARTING, /* waiting for its hello */
    L_UP,       /* takes tasks */
    L_ASIDE,    /* its task timed out: the pool has not asked for it back yet */
    L_WAIT_ACK, /* asked back: waiting for it to confirm the new generation */
    L_ACKED,    /* confirmed before the pool asked for it back */
    L_STOPPING, /* sent STOP, waiting for its goodbye */
    L_GONE,     /* said goodbye */
    L_LOST,     /* failed: never used again */
};

/* What rank 0 knows of one worker rank. */
struct rank_link {
    enum link_state state;
    uint32_t generation;
    pid_t pid;
    uint64_t *sent; /* ids of the tasks it has, oldest first (a ring) */
    size_t sent_head, sent_count, sent_cap;
};

struct outgoing {
    MPI_Request request;
    void *to_free; /* freed when the send completes */
};

struct mproc__mpi_proxy {
    int workers;
    mproc_queue **task_q;
    mproc_queue *result_q;
    struct pool_slot *slots;
    int sock;
    int timeout_ms;
    MPI_Comm *comm;
    size_t parts;
    struct rank_link *links;
    struct outgoing *out;
    size_t nout, out_cap;
    bool closing;
    int64_t close_deadline;
    bool clean; /* every rank said goodbye and every send completed */
    pthread_t thread;
    _Atomic(const char *) failure;
};

/*
 * Puts a message on the pool's result queue, waiting while it is full (the
 * pool's result thread is behind), but not once the pool has shut its end of
 * the server socket: its result thread is gone then and nobody would read.
 */
static void put_for_pool(struct mproc__mpi_proxy *p, const void *msg, size_t len)
{
    for (;;) {
        int rc = mproc_queue_put(p->result_q, msg, len, 100);
        if (rc != -ETIMEDOUT && rc != -EAGAIN && rc != -EINTR)
            return;
        struct pollfd pfd = {.fd = p->sock, .events = POLLIN};
        if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR)))
            return;
    }
}

static void post(struct mproc__mpi_proxy *p, const struct pool_res_msg *msg, const char *text)
{
    size_t text_len = text ? strlen(text) : 0;
    unsigned char buf[sizeof(*msg) + 512];
    if (text_len > sizeof(buf) - sizeof(*msg))
        text_len = sizeof(buf) - sizeof(*msg);
    memcpy(buf, msg, sizeof(*msg));
    /* The text goes without its NUL: the message's length says where it ends. */
    if (text_len)
        memcpy(buf + sizeof(*msg), text, text_len); // NOLINT(bugprone-not-null-terminated-result)
    put_for_pool(p, buf, sizeof(*msg) + text_len);
}

static void post_up(struct mproc__mpi_proxy *p, int w)
{
    atomic_fetch_add(&p->slots[w].generation, 1);
    atomic_store(&p->slots[w].pid, (int32_t)p->links[w].pid);
    struct pool_res_msg msg = {.kind = RES_WORKER_UP, .worker = w, .pid = p->links[w].pid};
    p->links[w].state = L_UP;
    post(p, &msg, NULL);
}

static void post_died(struct mproc__mpi_proxy *p, int w, int wstatus, const char *text)
{
    struct pool_res_msg msg = {
        .kind = RES_WORKER_DIED, .worker = w, .pid = p->links[w].pid, .wstatus = wstatus};
    post(p, &msg, text);
}

/* ---- the ring of ids a rank holds, which tells the pool what it runs ---- */

static void set_current(struct mproc__mpi_proxy *p, int w)
{
    struct rank_link *l = &p->links[w];
    uint64_t id = l->sent_count ? l->sent[l->sent_head] : 0;
    atomic_store(&p->slots[w].started_ms, mproc__now_ms());
    atomic_store(&p->slots[w].current, id);
}

static int remember_sent(struct mproc__mpi_proxy *p, int w, uint64_t id)
{
    struct rank_link *l = &p->links[w];
    if (l->sent_count == l->sent_cap) {
        size_t cap = l->sent_cap ? l->sent_cap * 2 : 64;
        uint64_t *grown = malloc(cap * sizeof(uint64_t));
        if (!grown)
            return -ENOMEM;
        for (size_t i = 0; i < l->sent_count; i++)
            grown[i] = l->sent[(l->sent_head + i) % l->sent_cap];
        free(l->sent);
        l->sent = grown;
        l->sent_cap = cap;
        l->sent_head = 0;
    }
    l->sent[(l->sent_head + l->sent_count) % l->sent_cap] = id;
    if (l->sent_count++ == 0)
        set_current(p, w);
    return 0;
}

/* A result for id came back: the rank has moved on to the next one. */
static void forget_sent(struct mproc__mpi_proxy *p, int w, uint64_t id)
{
    struct rank_link *l = &p->links[w];
    while (l->sent_count) {
        uint64_t head = l->sent[l->sent_head];
        l->sent_head = (l->sent_head + 1) % l->sent_cap;
        l->sent_count--;
        if (head == id)
            break;
    }
    set_current(p, w);
}

/* ---- sending ---- */

static int track(struct mproc__mpi_proxy *p, MPI_Request request, void *to_free)
{
    if (p->nout == p->out_cap) {
        size_t cap = p->out_cap ? p->out_cap * 2 : 64;
        struct outgoing *grown = realloc(p->out, cap * sizeof(*grown));
        if (!grown) {
            /* Nowhere to keep it: finish the send now rather than lose it. */
            MPI_Wait(&request, MPI_STATUS_IGNORE);
            free(to_free);
            return 0;
        }
        p->out = grown;
        p->out_cap = cap;
    }
    p->out[p->nout].request = request;
    p->out[p->nout].to_free = to_free;
    p->nout++;
    return 0;
}

/* Sends a message to worker w without blocking; owned (may be NULL) is freed when sent. */
static int send_down(struct mproc__mpi_proxy *p, int w, uint32_t kind, const void *head,
                     size_t head_len, const unsigned char *body, size_t body_len, void *owned)
{
    struct wire_prefix prefix = {.body_len = body_len,
                                 .kind = kind,
                                 .head_len = (uint32_t)head_len,
                                 .generation = p->links[w].generation,
                                 .flags = body_len <= INLINE_MAX ? WIRE_INLINE : 0};
    size_t len;
    unsigned char *first = first_part(&prefix, head, body, &len);
    if (!first) {
        free(owned);
        return -ENOMEM;
    }
    MPI_Request request;
    int rc = MPI_Isend(first, (int)len, MPI_BYTE, w + 1, TAG_DOWN, *p->comm, &request);
    if (rc == MPI_SUCCESS)
        track(p, request, first);
    else
        free(first);
    for (size_t done = 0; rc == MPI_SUCCESS && !(prefix.flags & WIRE_INLINE) && done < body_len;) {
        size_t n = body_len - done < p->parts ? body_len - done : p->parts;
        rc = MPI_Isend(body + done, (int)n, MPI_BYTE, w + 1, TAG_DOWN, *p->comm, &request);
        done += n;
        /* The last part frees the message all the parts point into. */
        if (rc == MPI_SUCCESS)
            track(p, request, done == body_len ? owned : NULL);
        if (rc == MPI_SUCCESS && done == body_len)
            owned = NULL;
    }
    /*
     * An inline body was copied into the first part. After a failed part the
     * earlier ones may still read the body: it is left allocated (the rank
     * is lost, this happens once per rank at most).
     */
    if (prefix.flags & WIRE_INLINE)
        free(owned);
    return rc == MPI_SUCCESS ? 0 : -EIO;
}

static void lose(struct mproc__mpi_proxy *p, int w, const char *what, int mpi_rc)
{
    struct rank_link *l = &p->links[w];
    if (l->state == L_LOST || l->state == L_GONE)
        return;
    char why[400];
    char mpi_text[MPI_MAX_ERROR_STRING] = "";
    int n = 0;
    if (mpi_rc != MPI_SUCCESS)
        MPI_Error_string(mpi_rc, mpi_text, &n);
    snprintf(why, sizeof(why), "MPI rank %d (pid %d) failed: %s%s%s", w + 1, (int)l->pid, what,
             n ? ": " : "", mpi_text);
    l->state = L_LOST;
    post_died(p, w, WORKER_LOST, why);
}

/* Forwards a task message from the pool to worker w: its function goes by name. */
static void forward_task(struct mproc__mpi_proxy *p, int w, unsigned char *msg, size_t len)
{
    struct pool_task_msg header;
    memcpy(&header, msg, sizeof(header));
    if (header.kind == MSG_STOP) {
        free(msg);
        p->links[w].state = L_STOPPING;
        if (send_down(p, w, K_STOP, NULL, 0, NULL, 0, NULL) < 0)
            lose(p, w, "sending the stop", MPI_SUCCESS);
        return;
    }
    /* The pool refuses tasks without a name before they get here. */
    const char *name = mproc__task_name((mproc_task_fn)(uintptr_t)header.fn); // NOLINT
    size_t name_len = name ? strlen(name) + 1 : 1;
    unsigned char head[sizeof(header) + 256 + 1];
    if (name_len > sizeof(head) - sizeof(header))
        name_len = sizeof(head) - sizeof(header);
    memcpy(head, &header, sizeof(header));
    memcpy(head + sizeof(header), name ? name : "", name_len);
    head[sizeof(header) + name_len - 1] = '\0';
    if (remember_sent(p, w, header.id) < 0 ||
        send_down(p, w, K_TASK, head, sizeof(header) + name_len, msg + sizeof(header),
                  len - sizeof(header), msg) < 0)
        lose(p, w, "sending a task", MPI_SUCCESS);
}

static bool forward_tasks(struct mproc__mpi_proxy *p)
{
    bool busy = false;
    for (int w = 0; w < p->workers; w++) {
        for (int n = 0; n < FORWARD_BATCH && p->links[w].state == L_UP; n++) {
            void *msg;
            size_t len;
            if (mproc_queue_get(p->task_q[w], &msg, &len, 0) != 0)
                break;
            busy = true;
            if (len < sizeof(struct pool_task_msg))
                free(msg);
            else
                forward_task(p, w, msg, len);
        }
    }
    return busy;
}

static bool test_sends(struct mproc__mpi_proxy *p)
{
    size_t kept = 0;
    bool busy = false;
    for (size_t i = 0; i < p->nout; i++) {
        int flag = 0;
        int rc = MPI_Test(&p->out[i].request, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS || flag) {
            free(p->out[i].to_free);
            busy = true;
            continue;
        }
        p->out[kept++] = p->out[i];
    }
    p->nout = kept;
    return busy;
}

/* ---- receiving ---- */

static void on_result(struct mproc__mpi_proxy *p, int w, struct wire_msg *m)
{
    struct rank_link *l = &p->links[w];
    struct pool_res_msg res;
    /* Results of tasks sent under an older generation were handed to other ranks. */
    if (m->prefix.generation != l->generation || m->prefix.head_len != sizeof(res) ||
        (l->state != L_UP && l->state != L_STOPPING))
        return;
    memcpy(&res, m->head, sizeof(res));
    res.worker = w;
    memcpy(m->head, &res, sizeof(res));
    forget_sent(p, w, res.id);
    /* head and body are one allocation: the pool's result message as a worker makes it. */
    put_for_pool(p, m->head, sizeof(res) + m->prefix.body_len);
}

static void on_hello(struct mproc__mpi_proxy *p, int w, const struct wire_msg *m)
{
    struct rank_link *l = &p->links[w];
    struct hello hello;
    if (l->state != L_STARTING || m->prefix.head_len != sizeof(hello))
        return;
    memcpy(&hello, m->head, sizeof(hello));
    hello.host[sizeof(hello.host) - 1] = '\0';
    l->pid = hello.pid;
    if (hello.status == 0) {
        post_up(p, w);
        return;
    }
    char why[200];
    snprintf(why, sizeof(why), "the initializer failed with %d on MPI rank %d (host %s)",
             hello.status, w + 1, hello.host);
    l->state = L_LOST;
    post_died(p, w, WORKER_LOST, why);
}

static void on_message(struct mproc__mpi_proxy *p, int w, struct wire_msg *m)
{
    struct rank_link *l = &p->links[w];
    switch (m->prefix.kind) {
    case K_RESULT:
        on_result(p, w, m);
        break;
    case K_HELLO:
        on_hello(p, w, m);
        break;
    case K_ACK:
        if (m->prefix.generation != l->generation)
            break;
        if (l->state == L_WAIT_ACK)
            post_up(p, w);
        else if (l->state == L_ASIDE)
            l->state = L_ACKED;
        break;
    case K_BYE:
        if (l->state != L_LOST)
            post_died(p, w, 0, NULL);
        l->state = L_GONE;
        l->sent_count = 0;
        set_current(p, w);
        break;
    default:
        break;
    }
}

static bool receive_up(struct mproc__mpi_proxy *p)
{
    bool busy = false;
    for (int n = 0; n < FORWARD_BATCH; n++) {
        int flag = 0;
        MPI_Status status;
        int rc = MPI_Iprobe(MPI_ANY_SOURCE, TAG_UP, *p->comm, &flag, &status);
        if (rc != MPI_SUCCESS) {
            atomic_store(&p->failure, "MPI failed while waiting for results");
            return false;
        }
        if (!flag)
            break;
        busy = true;
        int w = status.MPI_SOURCE - 1;
        struct wire_msg *m = NULL;
        rc = recv_message(*p->comm, &status, &m);
        if (w < 0 || w >= p->workers) {
            free_message(m);
            continue;
        }
        if (rc < 0) {
            lose(p, w, rc == -EBADMSG ? "sent a malformed message" : "receiving from it",
                 MPI_SUCCESS);
            continue;
        }
        on_message(p, w, m);
        free_message(m);
    }
    return busy;
}

/* ---- the pool's requests: what the fork server does for a local pool ---- */

static void stop_rank(struct mproc__mpi_proxy *p, int w, bool discard_queued)
{
    struct rank_link *l = &p->links[w];
    if (l->state == L_STOPPING || l->state == L_GONE)
        return;
    /* A lost rank may still be alive (its initializer failed): it must be let go too. */
    if (discard_queued)
        l->generation++;
    if (send_down(p, w, K_STOP, NULL, 0, NULL, 0, NULL) < 0) {
        lose(p, w, "sending the stop", MPI_SUCCESS);
        l->state = L_GONE;
        return;
    }
    l->state = L_STOPPING;
}

/* A task ran over the timeout: set its rank aside (see the top of the file). */
static void set_aside(struct mproc__mpi_proxy *p, int w)
{
    struct rank_link *l = &p->links[w];
    if (l->state != L_UP)
        return;
    char why[200];
    snprintf(why, sizeof(why),
             "task timed out after %d ms on MPI rank %d (pid %d); the rank is set aside "
             "until the task returns",
             p->timeout_ms, w + 1, (int)l->pid);
    l->state = L_ASIDE;
    /* The pool learns which task ran from the slot: post first, then forget the rest. */
    post_died(p, w, W_EXITCODE(0, SIGKILL), why);
    l->generation++;
    l->sent_count = 0;
    if (send_down(p, w, K_CONTROL, NULL, 0, NULL, 0, NULL) < 0)
        lose(p, w, "sending a new generation", MPI_SUCCESS);
}

static void handle_request(struct mproc__mpi_proxy *p, const struct server_request *req)
{
    int w = req->worker;
    bool valid = w >= 0 && w < p->workers;
    switch (req->op) {
    case OP_SPAWN:
        if (valid && p->links[w].state == L_ASIDE)
            p->links[w].state = L_WAIT_ACK;
        else if (valid && p->links[w].state == L_ACKED)
            post_up(p, w);
        break;
    case OP_KILL:
        if (valid && req->generation == atomic_load(&p->slots[w].generation))
            set_aside(p, w);
        break;
    case OP_TERMINATE:
        for (int i = 0; i < p->workers; i++)
            stop_rank(p, i, true);
        break;
    default:
        break;
    }
}

static void begin_close(struct mproc__mpi_proxy *p)
{
    p->closing = true;
    p->close_deadline = mproc__now_ms() + STOP_GRACE_MS;
    for (int w = 0; w < p->workers; w++)
        stop_rank(p, w, true);
}

static bool serve_requests(struct mproc__mpi_proxy *p)
{
    bool busy = false;
    while (!p->closing) {
        struct server_request req;
        ssize_t n = recv(p->sock, &req, sizeof(req), MSG_DONTWAIT);
        if (n == (ssize_t)sizeof(req)) {
            handle_request(p, &req);
            busy = true;
            continue;
        }
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            begin_close(p); /* the pool is being destroyed */
        break;
    }
    return busy;
}

static bool all_gone(const struct mproc__mpi_proxy *p)
{
    for (int w = 0; w < p->workers; w++) {
        if (p->links[w].state != L_GONE)
            return false;
    }
    return true;
}

static void *proxy_main(void *arg)
{
    struct mproc__mpi_proxy *p = arg;
    unsigned idle = 0;
    for (;;) {
        bool busy = serve_requests(p);
        busy |= forward_tasks(p);
        busy |= receive_up(p);
        busy |= test_sends(p);
        if (p->closing && all_gone(p) && p->nout == 0) {
            p->clean = true;
            break;
        }
        if (atomic_load(&p->failure) || (p->closing && mproc__now_ms() > p->close_deadline))
            break;
        if (busy)
            idle = 0;
        else
            backoff(&idle);
    }
    return NULL;
}

/* ---- the pool's side ---- */

int mproc__mpi_proxy_start(struct mproc__mpi_proxy **out, void *comm,
                           const struct pool_process_config *config, int timeout_ms)
{
    struct mproc__mpi_proxy *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->links = calloc((size_t)config->workers, sizeof(*p->links));
    if (!p->links) {
        free(p);
        return -ENOMEM;
    }
    p->workers = config->workers;
    p->task_q = config->task_q;
    p->result_q = config->result_q;
    p->slots = config->slots;
    p->sock = config->server_sock;
    p->timeout_ms = timeout_ms;
    p->comm = comm;
    p->parts = part_max();
    /* Signals are for the program's threads, as with the result thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = -pthread_create(&p->thread, NULL, proxy_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc < 0) {
        free(p->links);
        free(p);
        return rc;
    }
    *out = p;
    return 0;
}

const char *mproc__mpi_proxy_failure(struct mproc__mpi_proxy *p)
{
    return atomic_load(&p->failure);
}

void mproc__mpi_proxy_stop(struct mproc__mpi_proxy **pp)
{
    struct mproc__mpi_proxy *p = *pp;
    if (!p)
        return;
    pthread_join(p->thread, NULL);
    bool clean = p->clean;
    /* Sends still pending (a stuck or failed rank) may be read by MPI: leave their buffers. */
    for (size_t i = 0; clean && i < p->nout; i++)
        free(p->out[i].to_free);
    for (int w = 0; w < p->workers; w++)
        free(p->links[w].sent);
    mpi_teardown(p->comm, clean);
    free(p->out);
    free(p->links);
    free(p);
    *pp = NULL;
}

/* Rank 0 with no pool (a setup error after MPI started): undoes mproc__mpi_setup(). */
void mproc__mpi_release(void *comm)
{
    mpi_teardown(comm, true);
}
