/*
 * pool_internal.h: what the pool's three kinds of process share: the
 * creating process (pool.c, result.c), the fork server and the workers
 * (pool_server.c).
 *
 *   creating process                fork server              workers
 *   ----------------                -----------              -------
 *   apply_async() --task_q[w]-------------------------------> worker w
 *   result thread <--result_q------------------------------- (results)
 *                 <--result_q------- (worker w died: status)
 *                 --server socket--> spawn / kill / stop
 *                 --fd socket[w]--------------------------> (descriptors)
 *
 * task_q[w] and result_q are mproc_queues: they survive a worker killed at
 * any point. Each worker also publishes what it is running in its slot of a
 * small shared table, so that the creating process knows which task a dead
 * worker took with it and how long the current task has been running.
 */
#ifndef MPROC_POOL_INTERNAL_H
#define MPROC_POOL_INTERNAL_H

#include "internal.h"

#include <mproc/pool.h>
#include <mproc/process.h>
#include <mproc/queue.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

enum pool_msg_kind {
    MSG_TASK = 1,  /* one call: the argument follows */
    MSG_CHUNK = 2, /* several calls: item lengths (uint64 each), then the items */
    MSG_STOP = 3,  /* the worker exits */
};

/* Creating process -> worker, on task_q[w]. */
struct pool_task_msg {
    uint64_t id;
    uint64_t fn; /* the function's address: workers are forks of this program */
    uint32_t kind;
    uint32_t nitems;
    uint32_t nfds;
    uint32_t pad;
};

enum pool_res_kind {
    RES_DONE = 1,        /* a task's result (MSG_TASK) */
    RES_CHUNK = 2,       /* a chunk's results: per item {status, len}, then the bytes */
    RES_WORKER_DIED = 3, /* from the fork server: a worker ended */
    RES_WORKER_UP = 4,   /* from the fork server: a worker started */
    RES_WAKE = 5,        /* from the creating process itself: look at your state */
};

/* Worker or fork server -> creating process, on result_q. */
struct pool_res_msg {
    uint64_t id;
    int32_t status; /* 0, or the task's error code */
    uint32_t kind;
    int32_t worker;      /* slot */
    int32_t pid;         /* RES_WORKER_*: the worker's pid */
    int32_t wstatus;     /* RES_WORKER_DIED: as from waitpid(); -1: fork failed (status: -errno) */
    uint32_t nitems;     /* RES_CHUNK */
    uint64_t elapsed_ns; /* time the task took in the worker */
};

/*
 * One item of a RES_CHUNK payload: the table of nitems entries comes first,
 * then the bytes; offset is from the start of the bytes. An item's bytes end
 * where the next one's start (the last one's, at the end of the message). A
 * failed item's bytes are its message, NUL-terminated (the NUL is not part
 * of its length). No length field: a map keeps every chunk's message, and
 * 8 bytes less an item is a quarter of a map of 8-byte results.
 */
struct pool_item_res {
    uint64_t offset;
    int32_t status;
    uint32_t pad;
};

/* What a worker is doing, in shared memory. */
struct pool_slot {
    _Atomic int32_t pid;
    _Atomic uint32_t generation; /* bumped by the fork server at each spawn */
    _Atomic uint64_t current;    /* id of the task running, 0 when idle */
    _Atomic int64_t started_ms;  /* when it started (monotonic) */
};

enum server_op { OP_SPAWN = 1, OP_KILL = 2, OP_TERMINATE = 3 };

/* Creating process -> fork server, on the server socket. */
struct server_request {
    uint32_t op;
    int32_t worker;
    int32_t signo;
    uint32_t generation;
};

/* The state the fork server and workers need, inherited through fork. */
struct pool_process_config {
    int workers;
    int start_workers; /* slots 0 to start_workers - 1 start with the server */
    mproc_queue **task_q;
    mproc_queue *result_q;
    struct pool_slot *slots;
    int *worker_socks; /* per slot, the worker's end */
    int server_sock;   /* the fork server's end */
    mproc_initializer_fn initializer;
    void *initializer_arg;
    unsigned max_tasks_per_child;
    uintptr_t fd_owner; /* the pool's descriptors' tag (fd_registry.c) */
};

/*
 * Runs the fork server in the child just forked by mproc_pool_create() (the
 * descriptors of the creating process alone already closed); never returns.
 */
_Noreturn void mproc__pool_server_main(const struct pool_process_config *config);

/*
 * The MPI backend (mpi/pool_mpi.c, built into libmproc_mpi only). The
 * communicator is an MPI_Comm * kept opaque here, so that the rest of the
 * pool compiles without MPI's headers.
 */
struct mproc__mpi_proxy;

/* wstatus of RES_WORKER_DIED for an MPI rank that failed and will not come back. */
#define WORKER_LOST (-2)

/* Starts MPI if the program has not, with threads; a communicator of our own. */
int mproc__mpi_setup(void **comm, int *rank, int *size);

/* A worker rank: serves until rank 0 stops it, then frees comm (and ends MPI if it started it). */
int mproc__mpi_serve(void *comm, int rank, const mproc_pool_options *options);

/* Rank 0: starts the proxy thread that stands in for the fork server; it takes comm. */
int mproc__mpi_proxy_start(struct mproc__mpi_proxy **out, void *comm,
                           const struct pool_process_config *config, int timeout_ms);

/* Why the proxy gave up on MPI, or NULL while it works. */
const char *mproc__mpi_proxy_failure(struct mproc__mpi_proxy *proxy);

/* After the pool closed its end of the server socket: joins and frees the proxy. */
void mproc__mpi_proxy_stop(struct mproc__mpi_proxy **proxy);

/* Undoes mproc__mpi_setup() when the pool could not start. */
void mproc__mpi_release(void *comm);

/* Task context, filled by the worker for each call (task.c). */
struct mproc_task_ctx {
    void *result;
    size_t result_len;
    size_t result_cap;
    char *error;
    const int *fds;
    size_t nfds;
    int worker;
};

/* Resets ctx for the next call, keeping its buffers. */
void mproc__task_ctx_reset(mproc_task_ctx *ctx);

/* Frees ctx's buffers. */
void mproc__task_ctx_free(mproc_task_ctx *ctx);

/* Runs one call of fn and leaves its outcome in ctx; returns the status code. */
int mproc__task_run(mproc_task_ctx *ctx, mproc_task_fn fn, const void *arg, size_t len);

/* The registered name of fn (stable for the life of the process), or NULL. */
const char *mproc__task_name(mproc_task_fn fn);

/* Runs task messages in a worker (pool_exec.c), keeping its buffers between them. */
struct mproc__task_exec {
    mproc_task_ctx ctx;
    unsigned char *out; /* the result message: struct pool_res_msg + body */
    size_t out_len;
    size_t out_cap;
    const int *fds; /* descriptors that came with the task */
    size_t nfds;
};

/*
 * Runs the task message msg (body: what follows its header) with fn and
 * leaves the result message in x->out, its header a copy of *res with the
 * kind, status, item count and time filled in. Returns 0, -ENOMEM (no room
 * for the result), -EBADMSG (a chunk whose item lengths overrun its body).
 */
int mproc__task_exec_run(struct mproc__task_exec *x, const struct pool_task_msg *msg,
                         mproc_task_fn fn, const unsigned char *body, size_t body_len,
                         struct pool_res_msg *res);

/* Frees x's buffers. */
void mproc__task_exec_free(struct mproc__task_exec *x);

#endif /* MPROC_POOL_INTERNAL_H */

/* ---- results (result.c), filled in by the pool's result thread ---- */

/*
 * A result is made of chunks: one for apply, one per task for map. A chunk
 * points into the result message it came in (kept whole), so that a map of
 * millions of items costs no per-item memory in the creating process.
 */
struct result_chunk {
    bool set;
    int32_t status;             /* for the whole chunk, when it never ran (table NULL) */
    char *error;                /* its message then (owned) */
    const unsigned char *table; /* RES_CHUNK: nitems entries of struct pool_item_res */
    const unsigned char *data;  /* RES_CHUNK: the bytes; RES_DONE: the result or message */
    size_t len;                 /* length of data */
    int32_t single_status;      /* RES_DONE: the task's status */
};

/* Result bytes up to this size are copied into the result itself. */
#define RESULT_SMALL 32

struct result_block;
struct result_slab;

/*
 * Where a pool's result records come from: slabs of one huge page each. A
 * round of 400,000 outstanding results is about 100 MB; from malloc, it went
 * back to the system when they were destroyed and cost a page fault per
 * 4 KiB when the next round took it again. The price: a slab is unmapped
 * only when all its records (about 8,000) are destroyed, so a few results
 * kept for long keep their slabs' 2 MiB each.
 */
struct mproc__result_slabs {
    pthread_mutex_t lock;
    struct result_slab *current;
};

/*
 * size bytes (a multiple of MPROC__HUGE_PAGE) of zeroed memory at a huge-page
 * boundary, advised for transparent huge pages: fresh memory then costs one
 * page fault per 2 MiB instead of one per 4 KiB. NULL without memory; give it
 * back with munmap().
 */
#define MPROC__HUGE_PAGE ((size_t)2 << 20)
void *mproc__huge_alloc(size_t size);

/* Releases the current slab (its records stay valid until destroyed). */
void mproc__result_slabs_release(struct mproc__result_slabs *slabs);

struct mproc_result {
    uint32_t magic;
    _Atomic uint32_t ready;   /* 0 until complete; a futex word */
    _Atomic uint32_t waiting; /* someone may sleep on ready: wake them */
    _Atomic int refs;         /* the owner's and the pool's, until the callbacks ran */
    _Atomic(mproc_pool *) pool;
    int status;
    const char *error;
    char *error_copy; /* NUL-terminated copy of a RES_DONE failure's message */
    size_t count;     /* items */
    size_t chunksize; /* items per chunk (the last one may have fewer) */
    size_t nchunks;
    size_t remaining; /* chunks not complete yet (result thread only) */
    struct result_chunk *chunks;
    void **buffers; /* messages the chunks point into */
    size_t nbuffers;
    size_t buffers_cap;
    struct result_block *blocks; /* where a large map's messages are copied */
    size_t kept_bytes;           /* bytes of messages kept so far */
    mproc_result_callback callback;
    mproc_result_callback error_callback;
    void *callback_arg;
    bool is_map;
    struct result_slab *slab; /* the record's, or NULL: malloc'd */
    /* An apply's one chunk and small result live here: no allocation but the result's. */
    struct result_chunk one_chunk;
    _Alignas(16) unsigned char small[RESULT_SMALL];
};

/*
 * A new result for count items in chunks of chunksize, with one reference for
 * the pool and, if owned, one for the caller.
 */
mproc_result *mproc__result_new(mproc_pool *pool, struct mproc__result_slabs *slabs, size_t count,
                                size_t chunksize, bool is_map, bool owned);

/* Takes ownership of buf (free()), which chunks of this result point into. */
int mproc__result_keep_buffer(mproc_result *result, void *buf);

/*
 * Keeps a copy of the len bytes at data for the life of result; returns it
 * (16-byte aligned), or NULL without memory.
 */
unsigned char *mproc__result_keep_copy(mproc_result *result, const void *data, size_t len);

/* Records chunk index from a result message kept with keep_buffer() or keep_copy(). */
void mproc__result_set_single(mproc_result *result, size_t index, int status, const void *data,
                              size_t len);
void mproc__result_set_table(mproc_result *result, size_t index, const void *table,
                             const void *data, size_t data_len);

/* Fails chunk index as a whole (its worker died, the pool was terminated...). */
void mproc__result_fail_chunk(mproc_result *result, size_t index, int status, const char *message);

/* Marks the result complete (status from its first failed item) and wakes waiters. */
void mproc__result_complete(mproc_result *result);

/* Drops a reference; the last one frees the result. */
void mproc__result_unref(mproc_result *result);

/* Whether the calling thread is pool's result thread (a callback of pool runs). */
bool mproc__pool_is_result_thread(const mproc_pool *pool);

/* Asks the pool to cancel result's tasks that have not started (pool.c). */
int mproc__pool_cancel(mproc_pool *pool, mproc_result *result);
