/*
 * pool_server.c: the pool's fork server and its workers.
 *
 * The fork server is forked once, by mproc_pool_create(), before the pool's
 * result thread exists. It stays single-threaded and does three things:
 * forks workers (at start and whenever the creating process asks for a
 * replacement), sends signals to them (it is their parent: it alone knows
 * that a pid is still theirs, unreaped), and reaps them, reporting each death
 * with its wait status on the result queue. It ends, killing its workers,
 * when the creating process goes away, whatever killed it.
 *
 * A worker takes tasks from its own queue, publishes the one it runs in its
 * slot, runs it and puts the result on the shared result queue. It dies with
 * the fork server (PR_SET_PDEATHSIG: the server has a single thread, so the
 * thread caveat does not apply), and ignores SIGINT: Ctrl-C reaches the whole
 * foreground process group, and it is the creating process that decides.
 */
#define _GNU_SOURCE
#include "pool_internal.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SERVER_POLL_MS     100
#define TERMINATE_GRACE_MS 1000

/* ---- worker ---- */

struct worker {
    const struct pool_process_config *config;
    int index;
    pid_t pid;
    struct pool_slot *slot;
    struct mproc__task_exec exec;
    unsigned char *in;
    size_t in_cap;
    int fds[MPROC__MAX_FDS];
    size_t nfds;
};

/* Receives the descriptors sent for task id; ones left over for a dead predecessor go. */
static int receive_fds(struct worker *w, uint64_t id)
{
    int sock = w->config->worker_socks[w->index];
    for (;;) {
        uint64_t tag = 0;
        size_t n = 0;
        ssize_t got = mproc__recv_fds(sock, &tag, sizeof(tag), w->fds, MPROC__MAX_FDS, &n, 0);
        if (got <= 0)
            return got == 0 ? -EPIPE : (int)got;
        w->nfds = n < MPROC__MAX_FDS ? n : MPROC__MAX_FDS;
        if (tag == id)
            return 0;
        for (size_t i = 0; i < w->nfds; i++)
            mproc__close(w->fds[i]);
        w->nfds = 0;
    }
}

static void close_task_fds(struct worker *w)
{
    for (size_t i = 0; i < w->nfds; i++)
        mproc__close(w->fds[i]);
    w->nfds = 0;
}

/* Runs one task message and puts its result; false when the worker must stop. */
static bool serve_one(struct worker *w, size_t len)
{
    struct pool_task_msg msg;
    memcpy(&msg, w->in, sizeof(msg));
    if (msg.kind == MSG_STOP)
        return false;
    atomic_store(&w->slot->started_ms, mproc__now_ms());
    atomic_store(&w->slot->current, msg.id);
    if (msg.nfds && receive_fds(w, msg.id) < 0)
        _exit(13);
    w->exec.fds = w->fds;
    w->exec.nfds = w->nfds;
    struct pool_res_msg res = {.id = msg.id, .worker = w->index, .pid = w->pid};
    /* Workers are forks of the program that sent it: the address means the same here. */
    mproc_task_fn fn = (mproc_task_fn)(uintptr_t)msg.fn; // NOLINT(performance-no-int-to-ptr)
    if (mproc__task_exec_run(&w->exec, &msg, fn, w->in + sizeof(msg), len - sizeof(msg), &res) < 0)
        _exit(12); /* out of memory: the death is reported, with the task */
    close_task_fds(w);
    int rc = mproc_queue_put(w->config->result_q, w->exec.out, w->exec.out_len, MPROC_WAIT_FOREVER);
    atomic_store(&w->slot->current, 0);
    return rc == 0;
}

static _Noreturn void worker_main(const struct pool_process_config *config, int index, pid_t server)
{
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != server)
        _exit(1);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    for (int i = 0; i < config->workers; i++) {
        if (i != index)
            mproc__close(config->worker_socks[i]);
    }
    mproc__close(config->server_sock);

    struct worker w = {
        .config = config, .index = index, .pid = getpid(), .slot = &config->slots[index]};
    w.exec.ctx.worker = index;
    w.in_cap = (size_t)64 * 1024;
    w.in = malloc(w.in_cap);
    if (!w.in)
        _exit(12);
    atomic_store(&w.slot->current, 0);
    if (config->initializer && config->initializer(config->initializer_arg) != 0)
        _exit(3);
    unsigned done = 0;
    for (;;) {
        size_t len = 0;
        int rc =
            mproc_queue_get_into(config->task_q[index], w.in, w.in_cap, &len, MPROC_WAIT_FOREVER);
        if (rc == -EMSGSIZE) {
            unsigned char *grown = realloc(w.in, len);
            if (!grown)
                _exit(12);
            w.in = grown;
            w.in_cap = len;
            continue;
        }
        if (rc == -EINTR)
            continue;
        /* -EPIPE: the creating process is gone; MPROC_ECLOSED: the pool is shutting. */
        if (rc < 0 || len < sizeof(struct pool_task_msg) || !serve_one(&w, len))
            break;
        if (config->max_tasks_per_child && ++done >= config->max_tasks_per_child)
            break;
    }
    (void)fflush(stdout);
    (void)fflush(stderr);
    _exit(0);
}

/* ---- fork server ---- */

struct server {
    const struct pool_process_config *config;
    pid_t self;
    pid_t parent;
    pid_t *pids;
    uint32_t *generations;
};

static void post(const struct server *s, const struct pool_res_msg *msg)
{
    /* A full result queue means a stuck creating process: give up rather than hang. */
    (void)mproc_queue_put(s->config->result_q, msg, sizeof(*msg), 5000);
}

static void spawn(struct server *s, int index)
{
    if (index < 0 || index >= s->config->workers || s->pids[index] > 0)
        return;
    pid_t pid = mproc__fork_keeping(s->config->fd_owner);
    if (pid == 0)
        worker_main(s->config, index, s->self);
    if (pid < 0) {
        struct pool_res_msg msg = {
            .kind = RES_WORKER_DIED, .worker = index, .wstatus = -1, .status = -errno};
        post(s, &msg);
        return;
    }
    s->pids[index] = pid;
    s->generations[index]++;
    atomic_store(&s->config->slots[index].pid, pid);
    atomic_store(&s->config->slots[index].generation, s->generations[index]);
    struct pool_res_msg up = {.kind = RES_WORKER_UP, .worker = index, .pid = pid};
    post(s, &up);
}

static void reap(struct server *s, int flags)
{
    int wstatus;
    pid_t pid;
    while ((pid = waitpid(-1, &wstatus, flags)) > 0) {
        for (int i = 0; i < s->config->workers; i++) {
            if (s->pids[i] != pid)
                continue;
            s->pids[i] = 0;
            atomic_store(&s->config->slots[i].pid, 0);
            struct pool_res_msg msg = {
                .kind = RES_WORKER_DIED, .worker = i, .pid = pid, .wstatus = wstatus};
            post(s, &msg);
        }
    }
}

static int live_workers(const struct server *s)
{
    int n = 0;
    for (int i = 0; i < s->config->workers; i++)
        n += s->pids[i] > 0;
    return n;
}

static void signal_all(const struct server *s, int signo)
{
    for (int i = 0; i < s->config->workers; i++) {
        if (s->pids[i] > 0)
            kill(s->pids[i], signo);
    }
}

/* SIGTERM, a grace period, then SIGKILL; every worker reaped. */
static void terminate_all(struct server *s)
{
    signal_all(s, SIGTERM);
    int64_t deadline = mproc__now_ms() + TERMINATE_GRACE_MS;
    while (live_workers(s) && mproc__now_ms() < deadline) {
        reap(s, WNOHANG);
        if (live_workers(s))
            (void)poll(NULL, 0, 10);
    }
    signal_all(s, SIGKILL);
    while (live_workers(s))
        reap(s, 0);
}

static _Noreturn void server_exit(struct server *s)
{
    signal_all(s, SIGKILL);
    while (live_workers(s))
        reap(s, 0);
    _exit(0);
}

static void handle_request(struct server *s, const struct server_request *req)
{
    switch (req->op) {
    case OP_SPAWN:
        spawn(s, req->worker);
        break;
    case OP_KILL:
        /* Only the worker the request was about: a replacement is left alone. */
        if (req->worker >= 0 && req->worker < s->config->workers && s->pids[req->worker] > 0 &&
            s->generations[req->worker] == req->generation)
            kill(s->pids[req->worker], req->signo);
        break;
    case OP_TERMINATE:
        terminate_all(s);
        break;
    default:
        break;
    }
}

_Noreturn void mproc__pool_server_main(const struct pool_process_config *config)
{
    /* Ctrl-C is for the creating process to handle; it tells us what to do. */
    signal(SIGINT, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_SETMASK, &chld, NULL);
    mproc__fd_lock();
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    /* Ours alone: a worker forked from here must not keep it. */
    if (sfd >= 0 && mproc__fd_record(sfd, MPROC__FD_PRIVATE) < 0)
        sfd = -1;
    mproc__fd_unlock();

    pid_t *pids = calloc((size_t)config->workers, sizeof(pid_t));
    uint32_t *generations = calloc((size_t)config->workers, sizeof(uint32_t));
    if (sfd < 0 || !pids || !generations)
        _exit(12);
    struct server s = {.config = config,
                       .self = getpid(),
                       .parent = getppid(),
                       .pids = pids,
                       .generations = generations};
    for (int i = 0; i < config->start_workers; i++)
        spawn(&s, i);

    for (;;) {
        struct pollfd pfd[2] = {{.fd = config->server_sock, .events = POLLIN},
                                {.fd = sfd, .events = POLLIN}};
        (void)poll(pfd, 2, SERVER_POLL_MS);
        /* The creating process is gone if its socket end closed or we were re-parented. */
        if (getppid() != s.parent)
            server_exit(&s);
        if (pfd[1].revents & POLLIN) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof(info)) == (ssize_t)sizeof(info)) {
            }
            reap(&s, WNOHANG);
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            struct server_request req;
            ssize_t n = read(config->server_sock, &req, sizeof(req));
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
                server_exit(&s);
            if (n == (ssize_t)sizeof(req))
                handle_request(&s, &req);
        }
    }
}
