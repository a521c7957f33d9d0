/*
 * pool.c: the creating process's side of the pool: submission, dispatch to
 * per-worker queues, and the result thread.
 *
 * Every task has a record here until its result is in: the record keeps the
 * serialised task, so that a task whose worker died before starting it can be
 * sent to another worker. Dispatch keeps at most `window` tasks queued on a
 * worker; the window adapts to the measured task time (about 2 ms of work
 * queued per worker), so that tiny tasks stream and long ones stay balanced.
 *
 * All state below is guarded by pool->lock, taken by submitting threads and
 * by the result thread. Callbacks run in the result thread without the lock.
 */
#define _GNU_SOURCE
#include "pool_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define POOL_MAGIC      0x6d70706cu /* "mppl" */
#define MIN_WINDOW      1
#define MAX_WINDOW      1024
#define QUEUED_WORK_NS  2000000.0
#define RESULT_BATCH    64
#define RESULT_ROUNDS   4
#define RECEIVE_BUFFER  ((size_t)512 * 1024)
#define HOUSEKEEPING_MS 100
#define TASK_RING       (1 << 20)
/*
 * Teardown bound: the fork server gets this long to stop its workers and
 * exit (its own grace for them is 1 s), then it is killed; its workers die
 * with it (PR_SET_PDEATHSIG).
 */
#define SERVER_EXIT_MS 3000
/* A worker that cannot be started is tried again after 10 ms, doubling up to 1 s. */
#define SPAWN_BACKOFF_MS     10
#define SPAWN_BACKOFF_MAX_MS 1000
/* With no worker up, this many failed starts in a row of every slot break the pool. */
#define SPAWN_ATTEMPTS 5
/*
 * A task message this large streams through its worker's ring in parts, so
 * it can only be sent whole to a worker that is reading: an idle one.
 */
#define STREAMED_TASK (TASK_RING / 4)
/*
 * Task records are recycled with their small messages in them: submitting
 * threads allocate them and the result thread frees them, and malloc's
 * arenas handle that hand-over badly (arena lock contention, fresh pages).
 */
#define TASK_SMALL  96
#define SPARE_TASKS 4096

enum pool_state { POOL_RUNNING, POOL_CLOSED, POOL_TERMINATED, POOL_BROKEN };

struct task {
    uint64_t id;
    mproc_result *result;
    size_t chunk; /* which chunk of result this task fills */
    size_t nitems;
    unsigned char *msg; /* serialised: struct pool_task_msg + body */
    size_t msg_len;
    int *fds;
    size_t nfds;
    int worker; /* -1 while pending */
    bool retried;
    bool timed_out;
    struct task *prev, *next; /* pending list, or the worker's in-flight list, or spares */
    struct task *hash_next;
    struct map_input *input;                     /* holds msg, for a large map's chunks */
    _Alignas(8) unsigned char small[TASK_SMALL]; /* msg, when it fits */
};

struct task_list {
    struct task *head, *tail;
    size_t count;
};

struct worker_state {
    bool up;
    bool spawning;
    bool stop_sent;
    bool lost;              /* an MPI rank that failed: never asked back */
    unsigned failed_starts; /* in a row: fork failed or the initializer did */
    int64_t respawn_at;     /* when to ask again after a failed start; 0: not waiting */
    pid_t pid;
    uint32_t generation;
    unsigned dispatched; /* since it started, for max_tasks_per_child */
    struct task_list inflight;
};

struct callback_job {
    mproc_result *result;
};

struct mproc_pool {
    uint32_t magic;
    unsigned owner_generation; /* mproc__fork_generation() of the creating process */
    int workers;
    int max_started; /* on demand: slots that may be started (mproc_pool_set_max_workers) */
    mproc_pool_options options;
    mproc_queue *result_q;
    mproc_queue **task_q;
    int *parent_socks; /* per worker: the end for sending descriptors */
    int *worker_socks; /* the other ends, kept only in the fork server's lineage */
    int server_sock;
    pid_t server_pid;
    struct mproc__region slots_region;
    struct pool_slot *slots;
    pthread_t thread;
    bool thread_started;
    int event_fd;

    pthread_mutex_t lock;
    enum pool_state state;
    bool quit;
    uint64_t next_id;
    struct task_list pending;
    struct worker_state *ws;
    struct task **table; /* id -> task, chained */
    struct task *spare;  /* records to reuse, linked by next */
    size_t nspare;
    struct mproc__result_slabs result_slabs;
    size_t table_size;
    size_t ntasks;
    double avg_task_ns;
    size_t window;
    _Atomic uint32_t all_down; /* futex word for join() */
    const char *broken_reason;
    char broken_text[256];        /* broken_reason when it is built here */
    struct mproc__mpi_proxy *mpi; /* stands in for the fork server over MPI */
    int proxy_sock;               /* the proxy's end of server_sock */
};

/* Joins the MPI proxy after server_sock was closed (which tells it to stop the ranks). */
static void stop_proxy(mproc_pool *pool)
{
#ifdef MPROC_HAVE_MPI
    if (pool->mpi)
        mproc__mpi_proxy_stop(&pool->mpi);
#endif
    mproc__close(pool->proxy_sock);
    pool->proxy_sock = -1;
}

static bool valid(const mproc_pool *pool)
{
    return pool && pool->magic == POOL_MAGIC;
}

/* ---- task lists and table ---- */

static void list_push(struct task_list *list, struct task *t, bool front)
{
    t->prev = t->next = NULL;
    if (!list->head) {
        list->head = list->tail = t;
    } else if (front) {
        t->next = list->head;
        list->head->prev = t;
        list->head = t;
    } else {
        t->prev = list->tail;
        list->tail->next = t;
        list->tail = t;
    }
    list->count++;
}

static void list_remove(struct task_list *list, struct task *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        list->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        list->tail = t->prev;
    t->prev = t->next = NULL;
    list->count--;
}

static size_t bucket(const mproc_pool *pool, uint64_t id)
{
    return (size_t)(id * 0x9e3779b97f4a7c15ull >> 20) & (pool->table_size - 1);
}

static int table_grow(mproc_pool *pool)
{
    size_t size = pool->table_size ? pool->table_size * 2 : 1024;
    struct task **table = calloc(size, sizeof(struct task *));
    if (!table)
        return -ENOMEM;
    struct task **old = pool->table;
    size_t old_size = pool->table_size;
    pool->table = table;
    pool->table_size = size;
    for (size_t i = 0; i < old_size; i++) {
        for (struct task *t = old[i], *next; t; t = next) {
            next = t->hash_next;
            size_t b = bucket(pool, t->id);
            t->hash_next = table[b];
            table[b] = t;
        }
    }
    free(old);
    return 0;
}

static int table_add(mproc_pool *pool, struct task *t)
{
    if (pool->ntasks >= pool->table_size) {
        int rc = table_grow(pool);
        if (rc < 0)
            return rc;
    }
    size_t b = bucket(pool, t->id);
    t->hash_next = pool->table[b];
    pool->table[b] = t;
    pool->ntasks++;
    return 0;
}

static struct task *table_find(const mproc_pool *pool, uint64_t id)
{
    if (!pool->table_size)
        return NULL;
    for (struct task *t = pool->table[bucket(pool, id)]; t; t = t->hash_next) {
        if (t->id == id)
            return t;
    }
    return NULL;
}

static void table_remove(mproc_pool *pool, struct task *t)
{
    struct task **link = &pool->table[bucket(pool, t->id)];
    while (*link && *link != t)
        link = &(*link)->hash_next;
    if (*link)
        *link = t->hash_next;
    pool->ntasks--;
}

/*
 * The chunk messages of a large map, serialised into one block of huge pages
 * rather than a malloc each: 4 M items are 64 MB of messages, which malloc
 * takes from the system and gives back every time, a page fault per 4 KiB.
 * Its tasks share it; guarded by pool->lock.
 */
struct map_input {
    size_t refs;
    size_t size;
};

#define MAP_INPUT_MIN   MPROC__HUGE_PAGE
#define MAP_INPUT_START ((sizeof(struct map_input) + 63) & ~(size_t)63)

static void map_input_unref(struct map_input *input)
{
    if (--input->refs == 0)
        (void)munmap(input, input->size);
}

/* Frees t, or keeps it for the next task (lock held). */
static void free_task(mproc_pool *pool, struct task *t)
{
    for (size_t i = 0; i < t->nfds; i++)
        mproc__close(t->fds[i]);
    free(t->fds);
    if (t->input)
        map_input_unref(t->input);
    else if (t->msg != t->small)
        free(t->msg);
    if (pool->nspare >= SPARE_TASKS) {
        free(t);
        return;
    }
    t->next = pool->spare;
    pool->spare = t;
    pool->nspare++;
}

/* ---- talking to the fork server ---- */

static void server_request(mproc_pool *pool, uint32_t op, int worker, int signo)
{
    struct server_request req = {.op = op, .worker = worker, .signo = signo};
    if (worker >= 0)
        req.generation = pool->ws[worker].generation;
    /* A dead server is noticed by the housekeeping: nothing to do here. */
    (void)send(pool->server_sock, &req, sizeof(req), MSG_NOSIGNAL);
}

static void request_spawn(mproc_pool *pool, int w)
{
    if (pool->ws[w].spawning || pool->ws[w].up)
        return;
    pool->ws[w].spawning = true;
    server_request(pool, OP_SPAWN, w, 0);
}

/* ---- dispatch ---- */

static size_t outstanding(const mproc_pool *pool)
{
    size_t n = pool->pending.count;
    for (int w = 0; w < pool->workers; w++)
        n += pool->ws[w].inflight.count;
    return n;
}

static bool can_take(const mproc_pool *pool, int w)
{
    const struct worker_state *ws = &pool->ws[w];
    if (!ws->up || ws->stop_sent || ws->inflight.count >= pool->window)
        return false;
    /* A worker about to retire must not be given tasks it will not run. */
    unsigned max = pool->options.max_tasks_per_child;
    return !max || ws->dispatched < max;
}

static int pick_worker(const mproc_pool *pool, const struct task *t)
{
    int best = -1;
    bool streamed = t->msg_len > STREAMED_TASK;
    for (int w = 0; w < pool->workers; w++) {
        if (can_take(pool, w) && (!streamed || pool->ws[w].inflight.count == 0) &&
            (best < 0 || pool->ws[w].inflight.count < pool->ws[best].inflight.count))
            best = w;
    }
    return best;
}

/* Sends t to worker w; false if its queue is full (t stays pending). */
static bool send_task(mproc_pool *pool, struct task *t, int w)
{
    /* An idle worker takes a streamed task as fast as it is written: wait for it. */
    int timeout_ms = t->msg_len > STREAMED_TASK ? MPROC_WAIT_FOREVER : 0;
    if (mproc_queue_put(pool->task_q[w], t->msg, t->msg_len, timeout_ms) != 0)
        return false;
    if (t->nfds) {
        /* The worker matches descriptors to the task by this tag. */
        (void)mproc__send_fds(pool->parent_socks[w], &t->id, sizeof(t->id), t->fds, t->nfds, 0);
    }
    t->worker = w;
    list_push(&pool->ws[w].inflight, t, false);
    pool->ws[w].dispatched++;
    return true;
}

/* A slot on demand not started yet (or stopped after the work ran out). */
static bool dormant(const struct worker_state *ws)
{
    return !ws->up && !ws->spawning && !ws->lost && !ws->respawn_at;
}

/*
 * Workers on demand: a task waits while no started worker is idle, so start
 * one more per such task, unless a start is failing (fork refused: more
 * slots would fail alike; the backoff retries the failing one).
 */
static void start_on_demand(mproc_pool *pool)
{
    if (!pool->options.workers_on_demand || pool->state == POOL_TERMINATED ||
        pool->state == POOL_BROKEN)
        return;
    size_t ready = 0;
    int started = 0;
    for (int w = 0; w < pool->workers; w++) {
        const struct worker_state *ws = &pool->ws[w];
        if (ws->respawn_at)
            return;
        if (ws->spawning || (ws->up && !ws->stop_sent && ws->inflight.count == 0))
            ready++;
        started += !dormant(ws);
    }
    for (int w = 0; w < pool->workers && ready < pool->pending.count && started < pool->max_started;
         w++) {
        if (dormant(&pool->ws[w])) {
            request_spawn(pool, w);
            ready++;
            started++;
        }
    }
}

/*
 * On demand, a task waits for a worker being started rather than queue
 * behind a busy one: it may run for long (a round trip per file on slow
 * storage), a start takes a fork.
 */
static bool wait_for_start(const mproc_pool *pool, int w)
{
    if (!pool->options.workers_on_demand || pool->ws[w].inflight.count == 0)
        return false;
    for (int i = 0; i < pool->workers; i++) {
        if (pool->ws[i].spawning)
            return true;
    }
    return false;
}

static void dispatch(mproc_pool *pool)
{
    start_on_demand(pool);
    while (pool->pending.head) {
        struct task *t = pool->pending.head;
        int w = pick_worker(pool, t);
        if (w < 0 || wait_for_start(pool, w))
            return;
        list_remove(&pool->pending, t);
        if (!send_task(pool, t, w)) {
            list_push(&pool->pending, t, true);
            return;
        }
    }
}

/* When closed and every task is done, tell the workers to exit. */
static void maybe_stop_workers(mproc_pool *pool)
{
    if (pool->state != POOL_CLOSED || outstanding(pool))
        return;
    struct pool_task_msg stop = {.kind = MSG_STOP};
    for (int w = 0; w < pool->workers; w++) {
        struct worker_state *ws = &pool->ws[w];
        if (ws->up && !ws->stop_sent &&
            mproc_queue_put(pool->task_q[w], &stop, sizeof(stop), 0) == 0)
            ws->stop_sent = true;
    }
}

/* ---- completing tasks ---- */

/*
 * Completed results whose callbacks must run: collected under the lock,
 * run after it is released.
 */
struct done_list {
    mproc_result **items;
    size_t count;
    size_t cap;
};

static void done_add(struct done_list *done, mproc_result *result)
{
    if (done->count == done->cap) {
        size_t cap = done->cap ? done->cap * 2 : 64;
        mproc_result **grown = realloc(done->items, cap * sizeof(mproc_result *));
        if (!grown) {
            /* No memory for the callback list: skip the callbacks, not the result. */
            mproc__result_unref(result);
            return;
        }
        done->items = grown;
        done->cap = cap;
    }
    done->items[done->count++] = result;
}

/* Removes t from the pool's books and frees it. */
static void retire_task(mproc_pool *pool, struct task *t)
{
    if (t->worker >= 0)
        list_remove(&pool->ws[t->worker].inflight, t);
    else
        list_remove(&pool->pending, t);
    table_remove(pool, t);
    free_task(pool, t);
}

static void finish_result_if_done(mproc_result *result, struct done_list *done)
{
    if (result->remaining == 0) {
        mproc__result_complete(result);
        done_add(done, result);
    }
}

/* Fails every item of t with status and message. */
static void fail_task(mproc_pool *pool, struct task *t, int status, const char *message,
                      struct done_list *done)
{
    mproc_result *result = t->result;
    mproc__result_fail_chunk(result, t->chunk, status, message);
    retire_task(pool, t);
    finish_result_if_done(result, done);
}

static void note_elapsed(mproc_pool *pool, uint64_t ns, size_t nitems)
{
    double per_task = (double)ns / (double)(nitems ? nitems : 1);
    pool->avg_task_ns =
        pool->avg_task_ns == 0 ? per_task : pool->avg_task_ns * 0.9 + per_task * 0.1;
    double want = QUEUED_WORK_NS / (pool->avg_task_ns > 1 ? pool->avg_task_ns : 1);
    pool->window = want < MIN_WINDOW ? MIN_WINDOW : want > MAX_WINDOW ? MAX_WINDOW : (size_t)want;
}

/*
 * Keeps the body of a result message with its result, since the result's
 * chunks point into it: owned (the whole message, from a get of its own) as
 * it is, a small one inside the result, others copied.
 */
static const unsigned char *keep_body(mproc_result *result, const unsigned char *msg, size_t len,
                                      void *owned)
{
    const unsigned char *body = msg + sizeof(struct pool_res_msg);
    size_t body_len = len - sizeof(struct pool_res_msg);
    if (owned)
        return mproc__result_keep_buffer(result, owned) == 0 ? body : NULL;
    if (result->nchunks == 1 && body_len <= RESULT_SMALL) {
        if (body_len)
            memcpy(result->small, body, body_len);
        return result->small;
    }
    return mproc__result_keep_copy(result, body, body_len);
}

/* A task's result arrived (msg, len); owned is msg when it is an allocation to take over. */
static void handle_done(mproc_pool *pool, const unsigned char *msg_bytes, size_t len, void *owned,
                        struct done_list *done)
{
    struct pool_res_msg msg;
    memcpy(&msg, msg_bytes, sizeof(msg));
    struct task *t = table_find(pool, msg.id);
    /* Item lengths are worked out from the table: it must be whole, and the chunk's. */
    if (t && msg.kind == RES_CHUNK &&
        (msg.nitems != t->nitems ||
         len - sizeof(msg) < (size_t)msg.nitems * sizeof(struct pool_item_res))) {
        free(owned);
        fail_task(pool, t, -EBADMSG, "malformed result message", done);
        return;
    }
    const unsigned char *body = t ? keep_body(t->result, msg_bytes, len, owned) : NULL;
    if (!body) {
        free(owned); /* cancelled, terminated, or no memory to keep it */
        return;
    }
    note_elapsed(pool, msg.elapsed_ns, msg.kind == RES_CHUNK ? msg.nitems : 1);
    mproc_result *result = t->result;
    size_t table_len = (size_t)msg.nitems * sizeof(struct pool_item_res);
    if (msg.kind == RES_DONE)
        mproc__result_set_single(result, t->chunk, msg.status, body, len - sizeof(msg));
    else
        mproc__result_set_table(result, t->chunk, body, body + table_len,
                                len - sizeof(msg) - table_len);
    retire_task(pool, t);
    finish_result_if_done(result, done);
}

/* Why a worker ended, for the error message. */
static void describe_death(char *out, size_t cap, pid_t pid, int wstatus, int status,
                           bool timed_out, int timeout_ms)
{
    if (timed_out) {
        snprintf(out, cap, "task timed out after %d ms; its worker %d was killed", timeout_ms,
                 (int)pid);
    } else if (wstatus >= 0 && WIFSIGNALED(wstatus)) {
        int sig = WTERMSIG(wstatus);
        const char *name = sigdescr_np(sig);
        snprintf(out, cap, "worker %d died: killed by signal %d (%s)", (int)pid, sig,
                 name ? name : "unknown");
    } else if (wstatus >= 0) {
        snprintf(out, cap, "worker %d died: exited with status %d", (int)pid, WEXITSTATUS(wstatus));
    } else {
        snprintf(out, cap, "worker could not be started: %s", mproc_strerror(status));
    }
}

static void fail_everything(mproc_pool *pool, int status, const char *why, struct done_list *done);

/* Over MPI a failed rank does not come back: with none left, the pool cannot go on. */
static void break_if_all_lost(mproc_pool *pool, struct done_list *done)
{
    for (int w = 0; w < pool->workers; w++) {
        if (!pool->ws[w].lost)
            return;
    }
    if (pool->state == POOL_BROKEN)
        return;
    pool->state = POOL_BROKEN;
    pool->broken_reason = "every MPI worker rank has failed";
    fail_everything(pool, MPROC_EBROKEN, pool->broken_reason, done);
}

/*
 * Whether a death was a start that failed: fork() failed (EAGAIN under
 * RLIMIT_NPROC, ENOMEM), or the initializer did, before any task was sent.
 */
static bool failed_start(const struct worker_state *ws, const struct pool_res_msg *msg)
{
    if (msg->wstatus == -1)
        return true;
    return ws->dispatched == 0 && WIFEXITED(msg->wstatus) && WEXITSTATUS(msg->wstatus) == 3;
}

static bool any_worker_up(const mproc_pool *pool)
{
    for (int w = 0; w < pool->workers; w++) {
        if (pool->ws[w].up)
            return true;
    }
    return false;
}

/*
 * A slot could not start a worker: ask again later, with a growing delay,
 * rather than at once and forever. When no worker is up and every slot has
 * failed SPAWN_ATTEMPTS times in a row, the pool cannot run anything: it
 * breaks, and every task fails with why.
 */
static void note_failed_start(mproc_pool *pool, int w, const struct pool_res_msg *msg,
                              struct done_list *done)
{
    struct worker_state *ws = &pool->ws[w];
    ws->failed_starts++;
    unsigned shift = ws->failed_starts < 8 ? ws->failed_starts - 1 : 7;
    int delay = SPAWN_BACKOFF_MS << shift;
    ws->respawn_at =
        mproc__now_ms() + (delay < SPAWN_BACKOFF_MAX_MS ? delay : SPAWN_BACKOFF_MAX_MS);
    if (any_worker_up(pool) || pool->state == POOL_BROKEN)
        return;
    for (int i = 0; i < pool->workers; i++) {
        /* A slot on demand never asked is no evidence either way. */
        bool asked = !dormant(&pool->ws[i]) || pool->ws[i].failed_starts > 0;
        if (asked && pool->ws[i].failed_starts < SPAWN_ATTEMPTS)
            return;
    }
    if (msg->wstatus == -1)
        snprintf(pool->broken_text, sizeof(pool->broken_text), "no worker can be started: fork: %s",
                 mproc_strerror(msg->status));
    else
        snprintf(pool->broken_text, sizeof(pool->broken_text),
                 "no worker can be started: the initializer failed");
    pool->state = POOL_BROKEN;
    pool->broken_reason = pool->broken_text;
    fail_everything(pool, MPROC_EBROKEN, pool->broken_reason, done);
}

/* Slots whose failed start has waited long enough are asked again. */
static void respawn_due(mproc_pool *pool)
{
    int64_t now = mproc__now_ms();
    for (int w = 0; w < pool->workers; w++) {
        struct worker_state *ws = &pool->ws[w];
        if (!ws->respawn_at || now < ws->respawn_at)
            continue;
        ws->respawn_at = 0;
        bool work_left = outstanding(pool) > 0;
        if (pool->state == POOL_RUNNING || (pool->state == POOL_CLOSED && work_left))
            request_spawn(pool, w);
    }
}

/* Puts t back at the front of the pending list, to run on another worker. */
static void requeue(mproc_pool *pool, struct task *t)
{
    list_remove(&pool->ws[t->worker].inflight, t);
    t->worker = -1;
    list_push(&pool->pending, t, true);
}

/*
 * A worker ended. The task it was running fails (or runs again once); the
 * tasks queued on it never started, so they go back to pending, in order.
 */
static void handle_death(mproc_pool *pool, const struct pool_res_msg *msg, const char *text,
                         struct done_list *done)
{
    int w = msg->worker;
    if (w < 0 || w >= pool->workers || pool->ws[w].lost)
        return;
    struct worker_state *ws = &pool->ws[w];
    ws->up = false;
    ws->spawning = false;
    ws->lost = msg->wstatus == WORKER_LOST;
    uint64_t running = atomic_exchange(&pool->slots[w].current, 0);
    /* Whatever is still in its queue never started: empty it, the records are here. */
    size_t len;
    void *stale;
    while (mproc_queue_get(pool->task_q[w], &stale, &len, 0) == 0)
        free(stale);
    /* Oldest first at the front: walk the in-flight list backwards. */
    for (struct task *t = ws->inflight.tail, *prev; t; t = prev) {
        prev = t->prev;
        if (t->id != running) {
            requeue(pool, t);
            continue;
        }
        bool retry = pool->options.retry_on_worker_death && !t->retried && !t->timed_out;
        if (retry) {
            t->retried = true;
            requeue(pool, t);
            continue;
        }
        char why[256];
        describe_death(why, sizeof(why), msg->pid, msg->wstatus, msg->status, t->timed_out,
                       pool->options.task_timeout_ms);
        fail_task(pool, t, t->timed_out ? -ETIMEDOUT : MPROC_EWORKERDIED, text ? text : why, done);
    }
    ws->stop_sent = false;
    if (ws->lost) {
        break_if_all_lost(pool, done);
        return;
    }
    if (failed_start(ws, msg)) {
        note_failed_start(pool, w, msg, done);
        return;
    }
    ws->failed_starts = 0;
    bool work_left = outstanding(pool) > 0;
    if (pool->state == POOL_RUNNING || (pool->state == POOL_CLOSED && work_left))
        request_spawn(pool, w);
}

static void handle_up(mproc_pool *pool, const struct pool_res_msg *msg)
{
    int w = msg->worker;
    if (w < 0 || w >= pool->workers)
        return;
    struct worker_state *ws = &pool->ws[w];
    ws->up = true;
    ws->spawning = false;
    ws->stop_sent = false;
    ws->pid = msg->pid;
    ws->generation = atomic_load(&pool->slots[w].generation);
    ws->dispatched = 0;
    ws->failed_starts = 0;
    if (pool->state == POOL_TERMINATED || pool->state == POOL_BROKEN)
        server_request(pool, OP_KILL, w, SIGKILL);
}

/* One message from the result queue; owned is buf when it is an allocation to take over. */
static void handle_message(mproc_pool *pool, const unsigned char *buf, size_t len, void *owned,
                           struct done_list *done)
{
    struct pool_res_msg msg;
    if (len < sizeof(msg)) {
        free(owned);
        return;
    }
    memcpy(&msg, buf, sizeof(msg));
    switch (msg.kind) {
    case RES_DONE:
    case RES_CHUNK:
        handle_done(pool, buf, len, owned, done);
        return;
    case RES_WORKER_DIED: {
        /* Over MPI the proxy explains the death in text after the header. */
        char text[513];
        size_t n = len - sizeof(msg) < sizeof(text) - 1 ? len - sizeof(msg) : sizeof(text) - 1;
        memcpy(text, buf + sizeof(msg), n);
        text[n] = '\0';
        handle_death(pool, &msg, n ? text : NULL, done);
        break;
    }
    case RES_WORKER_UP:
        handle_up(pool, &msg);
        break;
    default:
        break;
    }
    free(owned);
}

/* ---- housekeeping: timeouts, the fork server, joins ---- */

static void check_timeouts(mproc_pool *pool)
{
    int limit = pool->options.task_timeout_ms;
    if (limit <= 0)
        return;
    int64_t now = mproc__now_ms();
    for (int w = 0; w < pool->workers; w++) {
        uint64_t id = atomic_load(&pool->slots[w].current);
        if (!id || !pool->ws[w].up || now - atomic_load(&pool->slots[w].started_ms) < limit)
            continue;
        struct task *t = table_find(pool, id);
        if (!t || t->timed_out)
            continue;
        t->timed_out = true;
        server_request(pool, OP_KILL, w, SIGKILL);
    }
}

/* Fails every task not done with status; used by terminate and when the pool breaks. */
static void fail_everything(mproc_pool *pool, int status, const char *why, struct done_list *done)
{
    while (pool->pending.head)
        fail_task(pool, pool->pending.head, status, why, done);
    for (int w = 0; w < pool->workers; w++) {
        while (pool->ws[w].inflight.head)
            fail_task(pool, pool->ws[w].inflight.head, status, why, done);
    }
}

#ifdef MPROC_HAVE_MPI
static void check_proxy(mproc_pool *pool, struct done_list *done)
{
    const char *failure = mproc__mpi_proxy_failure(pool->mpi);
    if (!failure || pool->state == POOL_BROKEN)
        return;
    pool->state = POOL_BROKEN;
    pool->broken_reason = failure;
    fail_everything(pool, MPROC_EBROKEN, pool->broken_reason, done);
    for (int w = 0; w < pool->workers; w++)
        pool->ws[w].up = pool->ws[w].spawning = false;
}
#endif

/* "fork server 1234 died: killed by signal 9 (Killed)", into the pool's broken_text. */
static void describe_server_death(mproc_pool *pool, const siginfo_t *info, bool reaped_elsewhere)
{
    char *out = pool->broken_text;
    size_t cap = sizeof(pool->broken_text);
    int pid = (int)pool->server_pid;
    if (reaped_elsewhere) {
        snprintf(out, cap, "fork server %d is gone (reaped by someone else)", pid);
    } else if (info->si_code == CLD_KILLED || info->si_code == CLD_DUMPED) {
        const char *name = sigdescr_np(info->si_status);
        snprintf(out, cap, "fork server %d died: killed by signal %d (%s)", pid, info->si_status,
                 name ? name : "unknown");
    } else {
        snprintf(out, cap, "fork server %d died: exited with status %d", pid, info->si_status);
    }
    pool->broken_reason = out;
}

static void drain_results(mproc_pool *pool, struct done_list *done);

/*
 * The fork server is gone, and its workers with it (PR_SET_PDEATHSIG): no
 * worker can be replaced, so the pool breaks. Results the workers put before
 * they died still count; every other task fails with the reason.
 */
static void check_server(mproc_pool *pool, struct done_list *done)
{
#ifdef MPROC_HAVE_MPI
    if (pool->mpi) {
        check_proxy(pool, done);
        return;
    }
#endif
    if (pool->server_pid <= 0 || pool->state == POOL_BROKEN)
        return;
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    int rc = waitid(P_PID, (id_t)pool->server_pid, &info, WEXITED | WNOHANG);
    bool reaped_elsewhere = rc < 0 && errno == ECHILD;
    if ((rc < 0 && !reaped_elsewhere) || (rc == 0 && info.si_pid == 0))
        return;
    describe_server_death(pool, &info, reaped_elsewhere);
    pool->server_pid = 0;
    drain_results(pool, done);
    pool->state = POOL_BROKEN;
    fail_everything(pool, MPROC_EBROKEN, pool->broken_reason, done);
    for (int w = 0; w < pool->workers; w++)
        pool->ws[w].up = pool->ws[w].spawning = false;
}

static void update_all_down(mproc_pool *pool)
{
    bool down = pool->state != POOL_RUNNING;
    for (int w = 0; w < pool->workers && down; w++)
        down = pool->ws[w].lost || (!pool->ws[w].up && !pool->ws[w].spawning);
    if (down && !atomic_exchange(&pool->all_down, 1))
        mproc__futex_wake(&pool->all_down, INT32_MAX);
}

/* ---- the result thread ---- */

static int next_wait_ms(const mproc_pool *pool)
{
    int limit = pool->options.task_timeout_ms;
    if (limit > 0 && limit / 4 < HOUSEKEEPING_MS)
        return limit / 4 > 0 ? limit / 4 : 1;
    return HOUSEKEEPING_MS;
}

static void run_callbacks(mproc_pool *pool, struct done_list *done)
{
    for (size_t i = 0; i < done->count; i++) {
        mproc_result *result = done->items[i];
        mproc_result_callback cb = result->status == 0 ? result->callback : result->error_callback;
        if (cb)
            cb(result, result->callback_arg);
        mproc__result_unref(result);
    }
    if (done->count) {
        uint64_t one = 1;
        (void)!write(pool->event_fd, &one, sizeof(one));
    }
    done->count = 0;
}

/*
 * Takes a batch of result messages: into rx (one lock and one copy for up to
 * RESULT_BATCH of them, no allocation), or, for one larger than rx, into an
 * allocation of its own in *owned.
 */
static int receive(mproc_pool *pool, unsigned char *rx, size_t rx_cap, struct iovec *msgs,
                   size_t *count, void **owned, int timeout_ms)
{
    *owned = NULL;
    *count = 0;
    int rc =
        mproc_queue_get_many(pool->result_q, rx, rx_cap, msgs, RESULT_BATCH, count, timeout_ms);
    if (rc != -EMSGSIZE)
        return rc;
    size_t len = 0;
    rc = mproc_queue_get(pool->result_q, owned, &len, 0);
    if (rc == 0) {
        msgs[0] = (struct iovec){.iov_base = *owned, .iov_len = len};
        *count = 1;
    }
    return rc;
}

/* Handles every result message already queued, without waiting. */
static void drain_results(mproc_pool *pool, struct done_list *done)
{
    for (;;) {
        void *msg = NULL;
        size_t len = 0;
        if (mproc_queue_get(pool->result_q, &msg, &len, 0) < 0)
            return;
        handle_message(pool, msg, len, msg, done);
    }
}

static _Thread_local const mproc_pool *result_thread_of;

bool mproc__pool_is_result_thread(const mproc_pool *pool)
{
    return pool && result_thread_of == pool;
}

static void *result_thread(void *arg)
{
    mproc_pool *pool = arg;
    result_thread_of = pool;
    struct done_list done = {0};
    struct iovec msgs[RESULT_BATCH];
    /* Without it every message takes the allocating path: slower, not wrong. */
    unsigned char *rx = malloc(RECEIVE_BUFFER);
    size_t rx_cap = rx ? RECEIVE_BUFFER : 0;
    for (;;) {
        size_t count = 0;
        void *owned = NULL;
        int rc = receive(pool, rx, rx_cap, msgs, &count, &owned, next_wait_ms(pool));
        pthread_mutex_lock(&pool->lock);
        /* What came meanwhile too: the rest of a round (syscalls) is paid once for all. */
        for (int round = 0; rc == 0 && round < RESULT_ROUNDS; round++) {
            for (size_t i = 0; i < count; i++)
                handle_message(pool, msgs[i].iov_base, msgs[i].iov_len, owned, &done);
            rc = receive(pool, rx, rx_cap, msgs, &count, &owned, 0);
        }
        for (size_t i = 0; rc == 0 && i < count; i++)
            handle_message(pool, msgs[i].iov_base, msgs[i].iov_len, owned, &done);
        check_timeouts(pool);
        check_server(pool, &done);
        respawn_due(pool);
        dispatch(pool);
        maybe_stop_workers(pool);
        update_all_down(pool);
        bool quit = pool->quit;
        pthread_mutex_unlock(&pool->lock);
        run_callbacks(pool, &done);
        if (quit)
            break;
    }
    free(done.items);
    free(rx);
    return NULL;
}

/* Nudges the result thread (it sleeps on the result queue). */
static void wake_thread(mproc_pool *pool)
{
    struct pool_res_msg msg = {.kind = RES_WAKE};
    (void)mproc_queue_put(pool->result_q, &msg, sizeof(msg), 1000);
}

/* ---- creation ---- */

/*
 * Reaps the fork server: it gets SERVER_EXIT_MS to exit on its own (its
 * socket end was closed), then it is killed. Never waits without a bound on
 * a process that does not answer. Only our own child is waited for.
 */
static void reap_server(pid_t pid)
{
    int64_t deadline = mproc__now_ms() + SERVER_EXIT_MS;
    int delay_ms = 1;
    for (;;) {
        pid_t got = waitpid(pid, NULL, WNOHANG);
        if (got == pid || (got < 0 && errno != EINTR))
            return; /* reaped, or someone else reaped it (ECHILD) */
        if (mproc__now_ms() >= deadline)
            break;
        (void)poll(NULL, 0, delay_ms);
        delay_ms = delay_ms < 32 ? delay_ms * 2 : delay_ms;
    }
    (void)kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

/* The tag of the descriptors only this pool's fork server and workers keep (fd_registry.c). */
static uintptr_t fd_owner(const mproc_pool *pool)
{
    return (uintptr_t)pool;
}

static int record_queue(mproc_queue *queue, uintptr_t owner)
{
    int fd = -1;
    int rc = mproc_queue_fd(queue, &fd);
    return rc < 0 ? rc : mproc__fd_record(fd, owner);
}

/* With the descriptor lock held: every descriptor is recorded before anyone forks. */
static int make_channels_locked(mproc_pool *pool)
{
    uintptr_t owner = fd_owner(pool);
    int rc = mproc_queue_create(&pool->result_q, 0, 0);
    if (rc == 0)
        rc = record_queue(pool->result_q, owner);
    for (int w = 0; w < pool->workers && rc == 0; w++) {
        rc = mproc_queue_create(&pool->task_q[w], 0, TASK_RING);
        if (rc == 0)
            rc = record_queue(pool->task_q[w], owner);
        int pair[2];
        if (rc == 0 && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
            rc = -errno;
        if (rc == 0) {
            pool->parent_socks[w] = pair[0];
            pool->worker_socks[w] = pair[1];
            rc = mproc__fd_record(pair[0], MPROC__FD_PRIVATE);
        }
        if (rc == 0)
            rc = mproc__fd_record(pair[1], owner);
    }
    if (rc == 0)
        rc = mproc__region_create(&pool->slots_region,
                                  (size_t)pool->workers * sizeof(struct pool_slot), "mproc-pool");
    if (rc == 0)
        rc = mproc__fd_record(pool->slots_region.fd, owner);
    if (rc == 0)
        pool->slots = pool->slots_region.addr;
    if (rc == 0) {
        pool->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        rc = pool->event_fd < 0 ? -errno : mproc__fd_record(pool->event_fd, MPROC__FD_PRIVATE);
    }
    return rc;
}

static int make_channels(mproc_pool *pool)
{
    mproc__fd_lock();
    int rc = make_channels_locked(pool);
    mproc__fd_unlock();
    return rc;
}

/* A socket pair: *ours recorded as this process's only, *theirs as owner's. */
static int make_pair(int *ours, int *theirs, uintptr_t owner)
{
    int pair[2];
    mproc__fd_lock();
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        int err = errno;
        mproc__fd_unlock();
        return -err;
    }
    int rc = mproc__fd_record(pair[0], MPROC__FD_PRIVATE);
    if (rc == 0)
        rc = mproc__fd_record(pair[1], owner);
    mproc__fd_unlock();
    if (rc < 0) {
        mproc__close(pair[0]);
        mproc__close(pair[1]);
        return rc;
    }
    *ours = pair[0];
    *theirs = pair[1];
    return 0;
}

/* Slots whose worker starts with the pool; the others wait for tasks (on demand). */
static int start_workers(const mproc_pool *pool)
{
    return pool->options.workers_on_demand ? 1 : pool->workers;
}

/* What the fork server (or the MPI proxy) needs to serve the pool, answering on server_sock. */
static struct pool_process_config process_config(const mproc_pool *pool, int server_sock)
{
    struct pool_process_config config = {
        .workers = pool->workers,
        .start_workers = start_workers(pool),
        .task_q = pool->task_q,
        .result_q = pool->result_q,
        .slots = pool->slots,
        .worker_socks = pool->worker_socks,
        .server_sock = server_sock,
        .initializer = pool->options.initializer,
        .initializer_arg = pool->options.initializer_arg,
        .max_tasks_per_child = pool->options.max_tasks_per_child,
        .fd_owner = fd_owner(pool),
    };
    return config;
}

/* Forks the fork server; it never returns in the child. */
static int start_server(mproc_pool *pool)
{
    int pair[2] = {-1, -1};
    int rc = make_pair(&pair[0], &pair[1], fd_owner(pool));
    if (rc < 0)
        return rc;
    struct pool_process_config config = process_config(pool, pair[1]);
    (void)fflush(stdout);
    (void)fflush(stderr);
    /* The child keeps this pool's descriptors only: never another pool's, nor our ends. */
    pid_t pid = mproc__fork_keeping(fd_owner(pool));
    if (pid == 0)
        mproc__pool_server_main(&config);
    int err = errno;
    mproc__close(pair[1]);
    if (pid < 0) {
        mproc__close(pair[0]);
        return -err;
    }
    pool->server_pid = pid;
    pool->server_sock = pair[0];
    /* Only the fork server's lineage needs the workers' socket ends. */
    for (int w = 0; w < pool->workers; w++) {
        mproc__close(pool->worker_socks[w]);
        pool->worker_socks[w] = -1;
    }
    return 0;
}

static void release_pool(mproc_pool *pool)
{
    for (int w = 0; w < pool->workers; w++) {
        if (pool->task_q && pool->task_q[w])
            mproc_queue_destroy(&pool->task_q[w]);
        if (pool->parent_socks)
            mproc__close(pool->parent_socks[w]);
        if (pool->worker_socks)
            mproc__close(pool->worker_socks[w]);
    }
    if (pool->result_q)
        mproc_queue_destroy(&pool->result_q);
    mproc__region_release(&pool->slots_region);
    mproc__close(pool->server_sock);
    mproc__close(pool->event_fd);
    for (size_t i = 0; i < pool->table_size; i++) {
        for (struct task *t = pool->table[i], *next; t; t = next) {
            next = t->hash_next;
            free_task(pool, t);
        }
    }
    free(pool->table);
    for (struct task *t = pool->spare, *next; t; t = next) {
        next = t->next;
        free(t);
    }
    free(pool->task_q);
    free(pool->parent_socks);
    free(pool->worker_socks);
    free(pool->ws);
    mproc__result_slabs_release(&pool->result_slabs);
    pthread_mutex_destroy(&pool->result_slabs.lock);
    pthread_mutex_destroy(&pool->lock);
    pool->magic = 0;
    free(pool);
}

static int alloc_pool(mproc_pool **out, const mproc_pool_options *options)
{
    mproc_pool *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return -ENOMEM;
    if (options)
        pool->options = *options;
    int workers = pool->options.workers;
    if (workers <= 0)
        mproc_cpu_count(&workers);
    pool->magic = POOL_MAGIC;
    pool->owner_generation = mproc__fork_generation();
    pool->workers = workers;
    pool->max_started = workers;
    pool->server_sock = -1;
    pool->proxy_sock = -1;
    pool->event_fd = -1;
    pool->slots_region.fd = -1;
    pool->window = MIN_WINDOW;
    pool->next_id = 1;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_mutex_init(&pool->result_slabs.lock, NULL);
    pool->task_q = calloc((size_t)workers, sizeof(mproc_queue *));
    pool->parent_socks = malloc((size_t)workers * sizeof(int));
    pool->worker_socks = malloc((size_t)workers * sizeof(int));
    pool->ws = calloc((size_t)workers, sizeof(*pool->ws));
    if (!pool->task_q || !pool->parent_socks || !pool->worker_socks || !pool->ws) {
        release_pool(pool);
        return -ENOMEM;
    }
    for (int w = 0; w < workers; w++)
        pool->parent_socks[w] = pool->worker_socks[w] = -1;
    *out = pool;
    return 0;
}

int mproc_pool_launched_ranks(void)
{
    /* Open MPI, then PMI-1/2 (MPICH's Hydra, Slurm's srun --mpi=pmi2), then PMIx. */
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0)
            return atoi(v);
    }
    return 1;
}

mproc_pool_backend mproc_pool_auto_backend(void)
{
    const char *env = getenv("MPROC_POOL_BACKEND");
    if (env && strcmp(env, "mpi") == 0)
        return MPROC_POOL_MPI;
    if (env && strcmp(env, "local") == 0)
        return MPROC_POOL_LOCAL;
    return mproc_pool_mpi_available() && mproc_pool_launched_ranks() > 1 ? MPROC_POOL_MPI
                                                                         : MPROC_POOL_LOCAL;
}

static mproc_pool_backend choose_backend(const mproc_pool_options *options)
{
    mproc_pool_backend backend = options ? options->backend : MPROC_POOL_AUTO;
    return backend != MPROC_POOL_AUTO ? backend : mproc_pool_auto_backend();
}

bool mproc_pool_mpi_available(void)
{
#ifdef MPROC_HAVE_MPI
    return true;
#else
    return false;
#endif
}

static void release_comm(void *comm)
{
#ifdef MPROC_HAVE_MPI
    mproc__mpi_release(comm);
#else
    (void)comm;
#endif
}

/* Starts the proxy thread in place of the fork server (see mpi/pool_mpi.c); takes comm. */
static int start_proxy(mproc_pool *pool, void *comm)
{
#ifdef MPROC_HAVE_MPI
    int pair[2] = {-1, -1};
    /* Both ends stay in this process (the proxy is a thread): no child keeps either. */
    int made = make_pair(&pair[0], &pair[1], MPROC__FD_PRIVATE);
    if (made < 0) {
        mproc__mpi_release(comm);
        return made;
    }
    struct pool_process_config config = process_config(pool, pair[1]);
    int rc = mproc__mpi_proxy_start(&pool->mpi, comm, &config, pool->options.task_timeout_ms);
    if (rc < 0) {
        mproc__close(pair[0]);
        mproc__close(pair[1]);
        mproc__mpi_release(comm);
        return rc;
    }
    pool->server_sock = pair[0];
    pool->proxy_sock = pair[1];
    return 0;
#else
    (void)pool;
    release_comm(comm);
    return -ENOTSUP;
#endif
}

/*
 * Over MPI: ranks other than 0 serve here and the pool is made on rank 0
 * with a worker per other rank. Sets *comm on rank 0, *served elsewhere.
 */
static int join_ranks(const mproc_pool_options *options, void **comm, int *workers, bool *served)
{
    *served = false;
    *comm = NULL;
#ifdef MPROC_HAVE_MPI
    int rank, size;
    int rc = mproc__mpi_setup(comm, &rank, &size);
    if (rc < 0)
        return rc;
    if (size < 2) {
        mproc__mpi_release(*comm);
        return -EINVAL;
    }
    if (rank != 0) {
        *served = true;
        return mproc__mpi_serve(*comm, rank, options);
    }
    *workers = size - 1;
    return 0;
#else
    (void)options;
    *workers = 0;
    return -ENOTSUP;
#endif
}

int mproc_pool_create(mproc_pool **out, const mproc_pool_options *options)
{
    if (!out || (options &&
                 (options->workers < 0 || options->workers > 4096 || options->task_timeout_ms < 0 ||
                  options->backend < MPROC_POOL_AUTO || options->backend > MPROC_POOL_MPI)))
        return -EINVAL;
    mproc_pool_options opts = {0};
    if (options)
        opts = *options;
    opts.backend = choose_backend(options);
    void *comm = NULL;
    if (opts.backend == MPROC_POOL_MPI) {
        bool served = false;
        int rc = join_ranks(options, &comm, &opts.workers, &served);
        if (rc < 0 || served) {
            *out = NULL;
            return rc;
        }
        opts.max_tasks_per_child = 0;   /* a rank is not replaced */
        opts.workers_on_demand = false; /* every rank is there already */
    }
    mproc_pool *pool;
    int rc = alloc_pool(&pool, &opts);
    if (rc < 0) {
        if (comm)
            release_comm(comm);
        return rc;
    }
    rc = make_channels(pool);
    /* The fork server must be forked before the result thread exists. */
    if (rc == 0)
        rc = comm ? start_proxy(pool, comm) : start_server(pool);
    else if (comm)
        release_comm(comm);
    if (rc == 0) {
        for (int w = 0; w < start_workers(pool); w++)
            pool->ws[w].spawning = true;
        /* Signals are for the program's threads: a Ctrl-C handler must interrupt them. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = -pthread_create(&pool->thread, NULL, result_thread, pool);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pool->thread_started = rc == 0;
    }
    if (rc < 0) {
        mproc__close(pool->server_sock);
        pool->server_sock = -1;
        if (pool->server_pid > 0)
            reap_server(pool->server_pid);
        stop_proxy(pool);
        release_pool(pool);
        return rc;
    }
    *out = pool;
    return 0;
}

int mproc_pool_workers(const mproc_pool *pool)
{
    return valid(pool) ? pool->workers : -EINVAL;
}

int mproc_pool_backend_of(const mproc_pool *pool)
{
    return valid(pool) ? (int)pool->options.backend : -EINVAL;
}

/* ---- submission ---- */

/* Only the creating process may use the pool (no getpid() per task: a fork changes the generation).
 */
static int check_submit(const mproc_pool *pool)
{
    if (!valid(pool))
        return -EINVAL;
    if (pool->owner_generation != mproc__fork_generation())
        return -ECHILD;
    return 0;
}

int mproc_pool_set_max_workers(mproc_pool *pool, int n)
{
    int rc = check_submit(pool);
    if (rc < 0)
        return rc;
    if (!pool->options.workers_on_demand || n < 1 || n > pool->workers)
        return -EINVAL;
    pthread_mutex_lock(&pool->lock);
    pool->max_started = n;
    if (pool->state == POOL_RUNNING || pool->state == POOL_CLOSED)
        dispatch(pool); /* raised: the tasks waiting may start workers now */
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

/*
 * Builds a task record around a serialised message (lock held): takes msg
 * (malloc'd) if owned, else copies it into the record (msg_len <= TASK_SMALL).
 */
static struct task *new_task(mproc_pool *pool, mproc_result *result, size_t chunk, size_t nitems,
                             unsigned char *msg, size_t msg_len, bool owned)
{
    struct task *t = pool->spare;
    if (t) {
        pool->spare = t->next;
        pool->nspare--;
    } else {
        t = malloc(sizeof(*t));
        if (!t)
            return NULL;
    }
    memset(t, 0, offsetof(struct task, small));
    if (!owned) {
        memcpy(t->small, msg, msg_len);
        msg = t->small;
    }
    t->id = pool->next_id++;
    t->result = result;
    t->chunk = chunk;
    t->nitems = nitems;
    t->msg = msg;
    t->msg_len = msg_len;
    t->worker = -1;
    struct pool_task_msg header;
    memcpy(&header, msg, sizeof(header));
    header.id = t->id;
    memcpy(msg, &header, sizeof(header));
    return t;
}

/* Queues t (lock held): it goes to a worker now if one has room. */
static int submit_locked(mproc_pool *pool, struct task *t)
{
    if (pool->state != POOL_RUNNING)
        return pool->state == POOL_BROKEN ? MPROC_EBROKEN : MPROC_ECLOSED;
    int rc = table_add(pool, t);
    if (rc < 0)
        return rc;
    list_push(&pool->pending, t, false);
    dispatch(pool);
    return 0;
}

/* Into buf when it fits (TASK_SMALL bytes), else into a new allocation. */
static unsigned char *serialise_single(mproc_task_fn fn, const void *arg, size_t len, size_t nfds,
                                       unsigned char *buf, size_t *msg_len)
{
    struct pool_task_msg header = {
        .fn = (uint64_t)(uintptr_t)fn, .kind = MSG_TASK, .nitems = 1, .nfds = (uint32_t)nfds};
    *msg_len = sizeof(header) + len;
    unsigned char *msg = *msg_len <= TASK_SMALL ? buf : malloc(*msg_len);
    if (!msg)
        return NULL;
    memcpy(msg, &header, sizeof(header));
    if (len)
        memcpy(msg + sizeof(header), arg, len);
    return msg;
}

/* Frees a result nobody has seen yet. */
static void discard_result(mproc_result *result)
{
    if (!result)
        return;
    atomic_store(&result->refs, 1);
    mproc__result_unref(result);
}

static int dup_fds(const int *fds, size_t nfds, int **out)
{
    *out = NULL;
    if (!nfds)
        return 0;
    if (nfds > MPROC__MAX_FDS)
        return -EINVAL;
    int *copy = malloc(nfds * sizeof(int));
    if (!copy)
        return -ENOMEM;
    /* The copies wait here for their task: no child of ours may keep the caller's pipe open. */
    for (size_t i = 0; i < nfds; i++)
        copy[i] = -1;
    mproc__fd_lock();
    int rc = 0;
    for (size_t i = 0; i < nfds && rc == 0; i++) {
        copy[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
        rc = copy[i] < 0 ? -errno : mproc__fd_record(copy[i], MPROC__FD_PRIVATE);
    }
    mproc__fd_unlock();
    if (rc < 0) {
        for (size_t i = 0; i < nfds; i++)
            mproc__close(copy[i]);
        free(copy);
        return rc;
    }
    *out = copy;
    return 0;
}

/* Over MPI a task travels by its registered name, and descriptors cannot travel. */
static int check_fn(const mproc_pool *pool, mproc_task_fn fn, size_t nfds)
{
    if (!fn)
        return -EINVAL;
    if (pool->options.backend != MPROC_POOL_MPI)
        return 0;
    if (nfds)
        return -ENOTSUP;
    return mproc__task_name(fn) ? 0 : -ENOENT;
}

static int apply_common(mproc_pool *pool, mproc_task_fn fn, const void *arg, size_t len,
                        const int *fds, size_t nfds, mproc_result_callback callback,
                        mproc_result_callback error_callback, void *callback_arg,
                        mproc_result **out)
{
    int rc = check_submit(pool);
    if (rc < 0)
        return rc;
    if ((!arg && len) || (!fds && nfds))
        return -EINVAL;
    rc = check_fn(pool, fn, nfds);
    if (rc < 0)
        return rc;
    mproc_result *result = mproc__result_new(pool, &pool->result_slabs, 1, 1, false, out != NULL);
    size_t msg_len;
    unsigned char buf[TASK_SMALL];
    unsigned char *msg = result ? serialise_single(fn, arg, len, nfds, buf, &msg_len) : NULL;
    bool owned = msg != buf;
    int *copies = NULL;
    rc = msg ? dup_fds(fds, nfds, &copies) : -ENOMEM;
    if (rc < 0) {
        if (owned)
            free(msg);
        discard_result(result);
        return rc;
    }
    result->callback = callback;
    result->error_callback = error_callback;
    result->callback_arg = callback_arg;
    pthread_mutex_lock(&pool->lock);
    struct task *t = new_task(pool, result, 0, 1, msg, msg_len, owned);
    rc = t ? 0 : -ENOMEM;
    if (t) {
        t->fds = copies;
        t->nfds = nfds;
        rc = submit_locked(pool, t);
        if (rc < 0)
            free_task(pool, t);
    }
    pthread_mutex_unlock(&pool->lock);
    if (rc < 0) {
        if (!t) {
            if (owned)
                free(msg);
            for (size_t i = 0; copies && i < nfds; i++)
                mproc__close(copies[i]);
            free(copies);
        }
        discard_result(result);
        return rc;
    }
    if (out)
        *out = result;
    return 0;
}

int mproc_pool_apply_async(mproc_pool *pool, mproc_task_fn fn, const void *arg, size_t len,
                           mproc_result_callback callback, mproc_result_callback error_callback,
                           void *callback_arg, mproc_result **result)
{
    return apply_common(pool, fn, arg, len, NULL, 0, callback, error_callback, callback_arg,
                        result);
}

int mproc_pool_apply_async_fds(mproc_pool *pool, mproc_task_fn fn, const void *arg, size_t len,
                               const int *fds, size_t nfds, mproc_result **result)
{
    return apply_common(pool, fn, arg, len, fds, nfds, NULL, NULL, NULL, result);
}

int mproc_pool_apply_async_named(mproc_pool *pool, const char *name, const void *arg, size_t len,
                                 mproc_result **result)
{
    mproc_task_fn fn;
    int rc = mproc_task_lookup(name, &fn);
    if (rc < 0)
        return rc;
    return mproc_pool_apply_async(pool, fn, arg, len, NULL, NULL, NULL, result);
}

int mproc_pool_apply(mproc_pool *pool, mproc_task_fn fn, const void *arg, size_t len, void **out,
                     size_t *out_len)
{
    mproc_result *result;
    int rc = mproc_pool_apply_async(pool, fn, arg, len, NULL, NULL, NULL, &result);
    if (rc < 0)
        return rc;
    const void *data;
    size_t n;
    rc = mproc_result_get(result, &data, &n, MPROC_WAIT_FOREVER);
    if (rc == 0 && out) {
        *out = malloc(n ? n : 1);
        if (*out && n)
            memcpy(*out, data, n);
        rc = *out ? 0 : -ENOMEM;
    }
    if (rc == 0 && out_len)
        *out_len = n;
    mproc_result_destroy(&result);
    return rc;
}

static size_t chunk_msg_len(const struct iovec *items, size_t count)
{
    size_t bytes = sizeof(struct pool_task_msg) + count * sizeof(uint64_t);
    for (size_t i = 0; i < count; i++)
        bytes += items[i].iov_len;
    return bytes;
}

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static void write_chunk(unsigned char *msg, mproc_task_fn fn, const struct iovec *items,
                        size_t count)
{
    struct pool_task_msg header = {
        .fn = (uint64_t)(uintptr_t)fn, .kind = MSG_CHUNK, .nitems = (uint32_t)count};
    memcpy(msg, &header, sizeof(header));
    unsigned char *lens = msg + sizeof(header);
    unsigned char *data = lens + count * sizeof(uint64_t);
    for (size_t i = 0; i < count; i++) {
        uint64_t n = items[i].iov_len;
        memcpy(lens + i * sizeof(n), &n, sizeof(n));
        if (n)
            memcpy(data, items[i].iov_base, n);
        data += n;
    }
}

static unsigned char *serialise_chunk(mproc_task_fn fn, const struct iovec *items, size_t count,
                                      size_t *msg_len)
{
    *msg_len = chunk_msg_len(items, count);
    unsigned char *msg = malloc(*msg_len);
    if (msg)
        write_chunk(msg, fn, items, count);
    return msg;
}

/*
 * Every chunk message of a large map, one after the other (8-byte aligned),
 * with a reference for the caller; NULL for a small map (or without memory:
 * then each chunk gets its malloc).
 */
static struct map_input *map_input_new(mproc_task_fn fn, const struct iovec *items, size_t count,
                                       size_t chunksize)
{
    size_t total = MAP_INPUT_START;
    for (size_t first = 0; first < count; first += chunksize) {
        size_t n = count - first < chunksize ? count - first : chunksize;
        total += align8(chunk_msg_len(items + first, n));
    }
    if (total < MAP_INPUT_MIN)
        return NULL;
    size_t size = (total + MPROC__HUGE_PAGE - 1) & ~(MPROC__HUGE_PAGE - 1);
    struct map_input *input = mproc__huge_alloc(size);
    if (!input)
        return NULL;
    input->refs = 1;
    input->size = size;
    unsigned char *next = (unsigned char *)input + MAP_INPUT_START;
    for (size_t first = 0; first < count; first += chunksize) {
        size_t n = count - first < chunksize ? count - first : chunksize;
        write_chunk(next, fn, items + first, n);
        next += align8(chunk_msg_len(items + first, n));
    }
    return input;
}

/*
 * Python's default is about four chunks per worker. Cap it too: a chunk of
 * about 64 KiB of input (at most 4,096 items) streams through the queues
 * without a message larger than the ring, and its buffers come back from
 * malloc's free lists instead of fresh pages (a page fault each 4 KiB).
 */
static size_t default_chunksize(const mproc_pool *pool, const struct iovec *items, size_t count)
{
    size_t parts = (size_t)pool->workers * 4;
    size_t chunk = (count + parts - 1) / parts;
    size_t sample = count < 64 ? count : 64, bytes = 0;
    for (size_t i = 0; i < sample; i++)
        bytes += items[i].iov_len + sizeof(uint64_t);
    size_t per_item = sample ? bytes / sample : 1;
    size_t by_bytes = ((size_t)64 * 1024) / (per_item ? per_item : 1);
    if (by_bytes > 4096)
        by_bytes = 4096;
    if (chunk > by_bytes)
        chunk = by_bytes;
    return chunk ? chunk : 1;
}

int mproc_pool_map_async(mproc_pool *pool, mproc_task_fn fn, const struct iovec *items,
                         size_t count, size_t chunksize, mproc_result **out)
{
    int rc = check_submit(pool);
    if (rc < 0)
        return rc;
    if (!out || (!items && count))
        return -EINVAL;
    rc = check_fn(pool, fn, 0);
    if (rc < 0)
        return rc;
    if (!chunksize)
        chunksize = default_chunksize(pool, items, count);
    if (chunksize > UINT32_MAX)
        chunksize = UINT32_MAX;
    mproc_result *result =
        mproc__result_new(pool, &pool->result_slabs, count, chunksize, true, true);
    if (!result)
        return -ENOMEM;
    if (count == 0) {
        mproc__result_complete(result);
        mproc__result_unref(result);
        *out = result;
        return 0;
    }
    /* Serialised before taking the lock, which the result thread needs meanwhile. */
    struct map_input *input = map_input_new(fn, items, count, chunksize);
    unsigned char *next = input ? (unsigned char *)input + MAP_INPUT_START : NULL;
    pthread_mutex_lock(&pool->lock);
    size_t first = 0;
    for (; first < count && rc == 0; first += chunksize) {
        size_t n = count - first < chunksize ? count - first : chunksize;
        size_t msg_len = chunk_msg_len(items + first, n);
        unsigned char *msg = next;
        if (input)
            next += align8(msg_len);
        else
            msg = serialise_chunk(fn, items + first, n, &msg_len);
        struct task *t =
            msg ? new_task(pool, result, first / chunksize, n, msg, msg_len, true) : NULL;
        if (!t) {
            if (!input)
                free(msg);
            rc = -ENOMEM;
            break;
        }
        if (input) {
            t->input = input;
            input->refs++;
        }
        rc = submit_locked(pool, t);
        if (rc < 0) {
            free_task(pool, t);
            break;
        }
    }
    if (rc < 0) {
        /* The items not submitted fail with the reason; the others complete as they run. */
        char why[128];
        snprintf(why, sizeof(why), "map could not be submitted: %s", mproc_strerror(rc));
        for (size_t c = first / chunksize; c < result->nchunks; c++)
            mproc__result_fail_chunk(result, c, rc, why);
        if (result->remaining == 0) {
            mproc__result_complete(result);
            mproc__result_unref(result); /* the pool's reference: no task holds it */
        }
    }
    if (input)
        map_input_unref(input);
    pthread_mutex_unlock(&pool->lock);
    *out = result;
    return 0;
}

int mproc_pool_map(mproc_pool *pool, mproc_task_fn fn, const struct iovec *items, size_t count,
                   size_t chunksize, mproc_result **result)
{
    int rc = mproc_pool_map_async(pool, fn, items, count, chunksize, result);
    if (rc < 0)
        return rc;
    return mproc_result_get(*result, NULL, NULL, MPROC_WAIT_FOREVER);
}

/* ---- cancel ---- */

int mproc__pool_cancel(mproc_pool *pool, mproc_result *result)
{
    if (!valid(pool))
        return -EBUSY;
    struct done_list done = {0};
    int rc = 0;
    pthread_mutex_lock(&pool->lock);
    /* Only if none of its tasks has gone to a worker. */
    for (int w = 0; w < pool->workers && rc == 0; w++) {
        for (struct task *t = pool->ws[w].inflight.head; t && rc == 0; t = t->next)
            rc = t->result == result ? -EBUSY : 0;
    }
    bool found = false;
    for (struct task *t = pool->pending.head, *next; t && rc == 0; t = next) {
        next = t->next;
        if (t->result == result) {
            found = true;
            fail_task(pool, t, MPROC_ECANCELLED, "task was cancelled", &done);
        }
    }
    pthread_mutex_unlock(&pool->lock);
    if (rc == 0 && !found)
        rc = -EBUSY;
    run_callbacks(pool, &done);
    free(done.items);
    return rc;
}

/* ---- shutting down ---- */

int mproc_pool_close(mproc_pool *pool)
{
    int rc = check_submit(pool);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&pool->lock);
    if (pool->state == POOL_RUNNING)
        pool->state = POOL_CLOSED;
    pthread_mutex_unlock(&pool->lock);
    wake_thread(pool);
    return 0;
}

int mproc_pool_join(mproc_pool *pool, int timeout_ms)
{
    int rc = check_submit(pool);
    if (rc < 0)
        return rc;
    /* A callback: the thread that would see the workers go is this one. */
    if (mproc__pool_is_result_thread(pool))
        return -EDEADLK;
    /* The result thread changes the state (a broken pool): read it under the lock. */
    pthread_mutex_lock(&pool->lock);
    bool running = pool->state == POOL_RUNNING;
    pthread_mutex_unlock(&pool->lock);
    if (running)
        return -EINVAL;
    int64_t deadline = mproc__deadline(timeout_ms);
    while (!atomic_load(&pool->all_down)) {
        if (timeout_ms == 0)
            return -ETIMEDOUT;
        rc = mproc__futex_wait(&pool->all_down, 0, deadline);
        if (rc == -EINTR || rc == -ETIMEDOUT)
            return atomic_load(&pool->all_down) ? 0 : rc;
    }
    return 0;
}

int mproc_pool_terminate(mproc_pool *pool)
{
    int rc = check_submit(pool);
    if (rc < 0)
        return rc;
    struct done_list done = {0};
    pthread_mutex_lock(&pool->lock);
    if (pool->state == POOL_RUNNING || pool->state == POOL_CLOSED) {
        pool->state = POOL_TERMINATED;
        fail_everything(pool, MPROC_EBROKEN, "the pool was terminated", &done);
        server_request(pool, OP_TERMINATE, -1, 0);
    }
    pthread_mutex_unlock(&pool->lock);
    run_callbacks(pool, &done);
    free(done.items);
    wake_thread(pool);
    return 0;
}

int mproc_pool_destroy(mproc_pool **poolp)
{
    if (!poolp || !valid(*poolp))
        return -EINVAL;
    mproc_pool *pool = *poolp;
    if (check_submit(pool) < 0)
        return -ECHILD;
    if (mproc__pool_is_result_thread(pool))
        return -EDEADLK;
    pthread_mutex_lock(&pool->lock);
    bool live = pool->state == POOL_RUNNING ||
                (pool->state == POOL_CLOSED && !atomic_load(&pool->all_down));
    pthread_mutex_unlock(&pool->lock);
    if (live)
        mproc_pool_terminate(pool);
    pthread_mutex_lock(&pool->lock);
    pool->quit = true;
    pthread_mutex_unlock(&pool->lock);
    wake_thread(pool);
    if (pool->thread_started)
        pthread_join(pool->thread, NULL);
    /* Closing our end tells the fork server (or the MPI proxy) to stop what is left and exit. */
    mproc__close(pool->server_sock);
    pool->server_sock = -1;
    if (pool->server_pid > 0)
        reap_server(pool->server_pid);
    stop_proxy(pool);
    release_pool(pool);
    *poolp = NULL;
    return 0;
}

int mproc_pool_fd(const mproc_pool *pool, int *fd)
{
    if (!valid(pool) || !fd)
        return -EINVAL;
    *fd = pool->event_fd;
    return 0;
}

int mproc_pool_drain_ready(mproc_pool *pool)
{
    if (!valid(pool))
        return -EINVAL;
    uint64_t count;
    (void)!read(pool->event_fd, &count, sizeof(count));
    return 0;
}

/* ---- imap: lazily fed, bounded ---- */

/*
 * The iterator keeps a FIFO of chunk results, each an internal map result of
 * up to `chunk` items. It pulls items from the source only while fewer than
 * `window` items are in flight, so memory stays bounded by the window
 * whatever the length of the input.
 */
struct imap_chunk {
    mproc_result *result;
    size_t first_index; /* position of its first item in the input */
    size_t next;        /* next item of it to hand out */
    struct imap_chunk *next_chunk;
};

struct mproc_imap {
    uint32_t magic;
    mproc_pool *pool;
    mproc_task_fn fn;
    mproc_item_source source;
    void *source_arg;
    size_t chunk;
    size_t window;
    bool ordered;
    bool source_done;
    int source_error;
    size_t in_flight; /* items pulled and not yet handed out */
    size_t pulled;
    struct imap_chunk *head, *tail;
    struct imap_chunk *current; /* the chunk items are being handed out from */
};

#define IMAP_MAGIC 0x6d70696du /* "mpim" */

int mproc_pool_imap(mproc_pool *pool, mproc_task_fn fn, mproc_item_source source, void *source_arg,
                    size_t chunksize, size_t window, bool ordered, mproc_imap **out)
{
    int rc = check_submit(pool);
    if (rc < 0)
        return rc;
    if (!source || !out)
        return -EINVAL;
    rc = check_fn(pool, fn, 0);
    if (rc < 0)
        return rc;
    mproc_imap *it = calloc(1, sizeof(*it));
    if (!it)
        return -ENOMEM;
    it->magic = IMAP_MAGIC;
    it->pool = pool;
    it->fn = fn;
    it->source = source;
    it->source_arg = source_arg;
    it->chunk = chunksize ? chunksize : 1;
    it->window = window ? window : (size_t)pool->workers * 4 * it->chunk;
    if (it->window < it->chunk)
        it->window = it->chunk;
    it->ordered = ordered;
    *out = it;
    return 0;
}

/* Pulls one chunk of items from the source and submits it; 0 when nothing was left. */
static int imap_submit_chunk(mproc_imap *it)
{
    struct iovec *items = calloc(it->chunk, sizeof(*items));
    void **copies = calloc(it->chunk, sizeof(*copies));
    int rc = items && copies ? 0 : -ENOMEM;
    size_t n = 0;
    while (rc == 0 && n < it->chunk) {
        const void *item;
        size_t len;
        int got = it->source(it->source_arg, &item, &len);
        if (got <= 0) {
            it->source_done = true;
            it->source_error = got;
            break;
        }
        /* The source's item is valid only until its next call: copy it. */
        copies[n] = malloc(len ? len : 1);
        if (!copies[n]) {
            rc = -ENOMEM;
            break;
        }
        if (len)
            memcpy(copies[n], item, len);
        items[n] = (struct iovec){.iov_base = copies[n], .iov_len = len};
        n++;
    }
    struct imap_chunk *chunk = NULL;
    if (rc == 0 && n > 0) {
        chunk = calloc(1, sizeof(*chunk));
        rc = chunk ? mproc_pool_map_async(it->pool, it->fn, items, n, n, &chunk->result) : -ENOMEM;
    }
    for (size_t i = 0; copies && i < n; i++)
        free(copies[i]);
    free(copies);
    free(items);
    if (rc < 0) {
        free(chunk);
        return rc;
    }
    if (!chunk)
        return 0;
    chunk->first_index = it->pulled;
    it->pulled += n;
    it->in_flight += n;
    if (it->tail)
        it->tail->next_chunk = chunk;
    else
        it->head = chunk;
    it->tail = chunk;
    return 1;
}

static int imap_refill(mproc_imap *it)
{
    while (!it->source_done && it->in_flight + it->chunk <= it->window) {
        int rc = imap_submit_chunk(it);
        if (rc <= 0)
            return rc;
    }
    return 0;
}

static void imap_drop(mproc_imap *it, struct imap_chunk *chunk)
{
    struct imap_chunk **link = &it->head;
    while (*link != chunk)
        link = &(*link)->next_chunk;
    *link = chunk->next_chunk;
    if (it->tail == chunk) {
        it->tail = NULL;
        for (struct imap_chunk *c = it->head; c; c = c->next_chunk)
            it->tail = c;
    }
    mproc_result_destroy(&chunk->result);
    free(chunk);
}

/* The chunk to hand items out from next: the oldest, or any ready one. */
static int imap_pick(mproc_imap *it, int timeout_ms, struct imap_chunk **out)
{
    if (it->ordered) {
        int rc = mproc_result_wait(it->head->result, timeout_ms);
        if (rc < 0)
            return rc == -EAGAIN ? -ETIMEDOUT : rc;
        *out = it->head;
        return 0;
    }
    size_t n = 0;
    for (struct imap_chunk *c = it->head; c; c = c->next_chunk)
        n++;
    mproc_result **results = malloc(n * sizeof(mproc_result *));
    if (!results)
        return -ENOMEM;
    size_t i = 0;
    for (struct imap_chunk *c = it->head; c; c = c->next_chunk)
        results[i++] = c->result;
    size_t ready;
    int rc = mproc_result_wait_many(results, n, false, &ready, timeout_ms);
    free(results);
    if (rc < 0)
        return rc == -EAGAIN ? -ETIMEDOUT : rc;
    for (struct imap_chunk *c = it->head; c; c = c->next_chunk) {
        if (mproc_result_ready(c->result)) {
            *out = c;
            return 0;
        }
    }
    return -ETIMEDOUT;
}

int mproc_imap_next(mproc_imap *it, const void **data, size_t *len, size_t *index, int timeout_ms)
{
    if (!it || it->magic != IMAP_MAGIC)
        return -EINVAL;
    /* Finished with the current chunk: free it and its window share. */
    if (it->current && it->current->next >= mproc_result_count(it->current->result)) {
        imap_drop(it, it->current);
        it->current = NULL;
    }
    int rc = imap_refill(it);
    if (rc < 0)
        return rc;
    if (!it->current) {
        if (!it->head)
            return it->source_error < 0 ? it->source_error : MPROC_ECLOSED;
        rc = imap_pick(it, timeout_ms, &it->current);
        if (rc < 0)
            return rc;
    }
    struct imap_chunk *chunk = it->current;
    size_t i = chunk->next++;
    it->in_flight--;
    if (index)
        *index = chunk->first_index + i;
    return mproc_result_item(chunk->result, i, data, len);
}

int mproc_imap_destroy(mproc_imap **itp)
{
    if (!itp || !*itp || (*itp)->magic != IMAP_MAGIC)
        return -EINVAL;
    mproc_imap *it = *itp;
    while (it->head)
        imap_drop(it, it->head);
    it->magic = 0;
    free(it);
    *itp = NULL;
    return 0;
}
