/*
 * process.c: child processes with Python's Process semantics.
 *
 * A child is a plain fork() running a target. The parent watches it through
 * a pidfd (pollable, and it never refers to another process) or, on kernels
 * without pidfd_open(), through a pipe whose write end only the child holds.
 * Reaping is waitid(P_PID, pid, WNOHANG) under the handle's lock: the pid
 * stays ours until that call succeeds, so signalling while holding the same
 * lock can never hit a recycled pid.
 *
 * Lock order: registry_lock before a handle's lock, without exception:
 * start() adds its handle to the registry before it takes the handle's lock
 * (ThreadSanitizer reported the inversion against destroy()); fork_lock
 * before registry_lock.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <mproc/process.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROCESS_MAGIC 0x6d707072u /* "mppr" */
#define IDENTITY_MAX  64
/* Without a pidfd, grandchildren may hold the exit pipe open: re-check this often. */
#define FALLBACK_POLL_MS 20

enum process_state { STATE_CREATED, STATE_STARTED, STATE_REAPED };

struct mproc_process {
    uint32_t magic;
    enum process_state state;
    const mproc_process_class *cls;
    mproc_target_fn target;
    void *arg;
    char *name;
    bool daemon;
    unsigned serial; /* n in "Process-n": order of creation in the owner */
    pid_t owner;     /* the process that created the handle */
    pid_t pid;
    int pidfd;     /* -1 without pidfd support */
    int exit_pipe; /* read end of the exit pipe without pidfd support, else -1 */
    int exitcode;
    pthread_mutex_t lock;       /* guards state, pid and exitcode */
    mproc_process *prev, *next; /* registry of started children */
    bool registered;            /* in the registry (guarded by registry_lock) */
    alignas(max_align_t) unsigned char data[];
};

/*
 * What this process knows of itself and of its children, in one small block:
 * the child resets it right after fork, and every page a fresh child writes
 * costs a copy-on-write fault (tens of microseconds on some VMs).
 */
struct process_globals {
    pthread_mutex_t registry_lock; /* guards the registry links of every handle */
    mproc_process *registry_head;  /* started children, until destroyed */
    pthread_mutex_t fork_lock;     /* exit-pipe mode: one pipe in flight at a time */
    atomic_uint name_counter;      /* numbering of default names */
    mproc_process *current;        /* in a child: its own handle */
    pid_t parent_pid;              /* in a child: who started it */
    int own_exit_pipe;             /* in a child in exit-pipe mode: the write end held */
    char identity[IDENTITY_MAX];   /* "" in the main process, "1:2" two levels down */
};

static alignas(256) struct process_globals globals = {
    .registry_lock = PTHREAD_MUTEX_INITIALIZER,
    .fork_lock = PTHREAD_MUTEX_INITIALIZER,
    .own_exit_pipe = -1,
};

/* 1: pidfd_open works; -1: use the exit pipe; 0: not probed yet. */
static atomic_int pidfd_support;

static int run_target(mproc_process *self)
{
    return self->target(self->arg);
}

static const mproc_process_class function_class = {.name = "Process", .run = run_target};

static bool use_pidfd(void)
{
    int known = atomic_load(&pidfd_support);
    if (known != 0)
        return known > 0;
    /* MPROC_DISABLE_PIDFD exercises the old-kernel path on a new kernel. */
    const char *disable = getenv("MPROC_DISABLE_PIDFD");
    int fd = -1;
    if (!disable || !*disable || strcmp(disable, "0") == 0)
        fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    known = fd >= 0 ? 1 : -1;
    mproc__close(fd);
    atomic_store(&pidfd_support, known);
    return known > 0;
}

static int make_default_name(mproc_process *proc)
{
    const char *prefix = proc->cls->name ? proc->cls->name : "Process";
    const char *identity = globals.identity;
    const char *sep = identity[0] ? ":" : "";
    int len = snprintf(NULL, 0, "%s-%s%s%u", prefix, identity, sep, proc->serial);
    char *name = malloc((size_t)len + 1);
    if (!name)
        return -ENOMEM;
    snprintf(name, (size_t)len + 1, "%s-%s%s%u", prefix, identity, sep, proc->serial);
    proc->name = name;
    return 0;
}

int mproc_process_create_class(mproc_process **out, const mproc_process_class *cls,
                               size_t data_size)
{
    if (!out || !cls || !cls->run)
        return -EINVAL;
    if (data_size > SIZE_MAX - sizeof(mproc_process))
        return -EINVAL;
    mproc_process *proc = calloc(1, sizeof(*proc) + data_size);
    if (!proc)
        return -ENOMEM;
    proc->magic = PROCESS_MAGIC;
    proc->state = STATE_CREATED;
    proc->cls = cls;
    proc->serial = atomic_fetch_add(&globals.name_counter, 1) + 1;
    proc->owner = getpid();
    proc->pidfd = -1;
    proc->exit_pipe = -1;
    proc->exitcode = MPROC_EXITCODE_NONE;
    pthread_mutex_init(&proc->lock, NULL);
    int rc = make_default_name(proc);
    if (rc < 0) {
        pthread_mutex_destroy(&proc->lock);
        free(proc);
        return rc;
    }
    *out = proc;
    return 0;
}

int mproc_process_create(mproc_process **out, mproc_target_fn target, void *arg)
{
    if (!target)
        return -EINVAL;
    int rc = mproc_process_create_class(out, &function_class, 0);
    if (rc < 0)
        return rc;
    (*out)->target = target;
    (*out)->arg = arg;
    return 0;
}

static bool valid(const mproc_process *proc)
{
    return proc && proc->magic == PROCESS_MAGIC;
}

void *mproc_process_data(mproc_process *proc)
{
    if (!valid(proc) || proc->cls == &function_class)
        return NULL;
    return proc->data;
}

int mproc_process_set_name(mproc_process *proc, const char *name)
{
    if (!valid(proc) || !name || !*name)
        return -EINVAL;
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    free(proc->name);
    proc->name = copy;
    return 0;
}

const char *mproc_process_name(const mproc_process *proc)
{
    return valid(proc) ? proc->name : NULL;
}

int mproc_process_set_daemon(mproc_process *proc, bool daemon)
{
    if (!valid(proc))
        return -EINVAL;
    if (proc->state != STATE_CREATED)
        return -EALREADY;
    proc->daemon = daemon;
    return 0;
}

bool mproc_process_daemon(const mproc_process *proc)
{
    return valid(proc) && proc->daemon;
}

pid_t mproc_process_pid(const mproc_process *proc)
{
    if (!valid(proc))
        return 0;
    /* A child's copy of its own handle was made before the parent learnt the pid. */
    return proc == globals.current ? getpid() : proc->pid;
}

/* Flushes a stream only if it holds data: an idle flush still writes its lock. */
static void flush_pending(FILE *stream)
{
    if (__fpending(stream) > 0)
        (void)fflush(stream);
}

/*
 * The child's side of start(): only async-signal-safe calls until the
 * target runs, because another thread of the parent may have held any lock
 * (malloc's, stdio's) at the instant of fork. It writes to the globals and
 * to nothing else, so that starting costs as few page copies as possible.
 */
static _Noreturn void run_child(mproc_process *proc, const sigset_t *mask, pid_t parent,
                                const int exit_pipe[2], const char *child_identity)
{
    if (proc->daemon) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* The parent may have died before prctl() took effect: die as it would have. */
        if (getppid() != parent)
            (void)kill(getpid(), SIGKILL);
    }
    /*
     * Our parent's exit pipe must not be kept open by us, its grandchild.
     * (Its read end, and every pidfd, went with the fork: fd_registry.c.)
     */
    if (globals.own_exit_pipe >= 0)
        (void)close(globals.own_exit_pipe);
    globals.own_exit_pipe = exit_pipe[1];
    /* The parent's children are not ours: forget them (their descriptors are inherited). */
    globals.registry_head = NULL;
    globals.registry_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    globals.fork_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    memcpy(globals.identity, child_identity, IDENTITY_MAX);
    atomic_store(&globals.name_counter, 0);
    globals.parent_pid = parent;
    globals.current = proc;
    (void)pthread_sigmask(SIG_SETMASK, mask, NULL);

    int code = proc->cls->run(proc);
    /* _exit() skips the parent's atexit handlers; flush what Python flushes. */
    flush_pending(stdout);
    flush_pending(stderr);
    _exit(code & 0xff);
}

static void format_child_identity(const mproc_process *proc, char *out)
{
    const char *sep = globals.identity[0] ? ":" : "";
    int len = snprintf(out, IDENTITY_MAX, "%s%s%u", globals.identity, sep, proc->serial);
    if (len >= IDENTITY_MAX)
        out[IDENTITY_MAX - 1] = '\0'; /* very deep trees just lose the tail */
}

static void registry_add(mproc_process *proc)
{
    pthread_mutex_lock(&globals.registry_lock);
    if (proc->registered) {
        pthread_mutex_unlock(&globals.registry_lock);
        return;
    }
    proc->registered = true;
    proc->prev = NULL;
    proc->next = globals.registry_head;
    if (globals.registry_head)
        globals.registry_head->prev = proc;
    globals.registry_head = proc;
    pthread_mutex_unlock(&globals.registry_lock);
}

/* Called with registry_lock held. */
static void registry_remove_locked(mproc_process *proc)
{
    if (!proc->registered)
        return;
    proc->registered = false;
    if (proc->prev)
        proc->prev->next = proc->next;
    else
        globals.registry_head = proc->next;
    if (proc->next)
        proc->next->prev = proc->prev;
    proc->prev = proc->next = NULL;
}

static void registry_remove(mproc_process *proc)
{
    pthread_mutex_lock(&globals.registry_lock);
    registry_remove_locked(proc);
    pthread_mutex_unlock(&globals.registry_lock);
}

/* A pidfd for pid, recorded as ours alone (other children must not keep it); -1 and *err. */
static int open_pidfd(pid_t pid, int *err)
{
    mproc__fd_lock();
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    int rc = fd < 0 ? -errno : mproc__fd_record(fd, MPROC__FD_PRIVATE);
    mproc__fd_unlock();
    if (rc == 0)
        return fd;
    if (fd >= 0)
        (void)close(fd);
    *err = -rc;
    return -1;
}

/*
 * Forks with every signal blocked. Called with proc->lock held on a handle
 * in STATE_CREATED, already registered; the handle is marked started before
 * the fork, so that the parent writes as little as possible after it. On
 * failure the handle is back in STATE_CREATED but still registered: the
 * caller unregisters it once it has dropped proc->lock (lock order).
 */
static int fork_child(mproc_process *proc, bool pidfd)
{
    int pipe_fds[2] = {-1, -1};
    if (!pidfd) {
        /* A sibling forked while our write end is open would hold it: one at a time. */
        pthread_mutex_lock(&globals.fork_lock);
        mproc__fd_lock();
        int rc = pipe2(pipe_fds, O_CLOEXEC) < 0 ? -errno : 0;
        /* Our read end only: the child keeps the write end, no other child the read end. */
        if (rc == 0)
            rc = mproc__fd_record(pipe_fds[0], MPROC__FD_PRIVATE);
        mproc__fd_unlock();
        if (rc < 0) {
            mproc__close(pipe_fds[0]);
            mproc__close(pipe_fds[1]);
            pthread_mutex_unlock(&globals.fork_lock);
            return rc;
        }
    }
    char child_identity[IDENTITY_MAX];
    format_child_identity(proc, child_identity);
    flush_pending(stdout);
    flush_pending(stderr);
    proc->state = STATE_STARTED;

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0)
        run_child(proc, &old, parent, pipe_fds, child_identity);
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!pidfd) {
        mproc__close(pipe_fds[1]);
        pthread_mutex_unlock(&globals.fork_lock);
    }
    if (pid > 0 && pidfd) {
        proc->pidfd = open_pidfd(pid, &fork_errno);
        if (proc->pidfd < 0) {
            /* Without a way to watch it the child cannot be managed: undo it. */
            kill(pid, SIGKILL);
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
            }
            pid = -1;
        }
    }
    if (pid < 0) {
        mproc__close(pipe_fds[0]);
        proc->state = STATE_CREATED;
        return -fork_errno;
    }
    proc->exit_pipe = pipe_fds[0];
    proc->pid = pid;
    return 0;
}

int mproc_process_start(mproc_process *proc)
{
    if (!valid(proc))
        return -EINVAL;
    if (proc->owner != getpid())
        return -ECHILD;
    bool pidfd = use_pidfd();
    /* Registered first (lock order); until the fork it counts as a child being started. */
    registry_add(proc);
    pthread_mutex_lock(&proc->lock);
    int rc = proc->state == STATE_CREATED ? fork_child(proc, pidfd) : -EALREADY;
    pthread_mutex_unlock(&proc->lock);
    if (rc < 0 && rc != -EALREADY)
        registry_remove(proc);
    return rc;
}

/*
 * Reaps the child if it has ended. Called with proc->lock held on a started
 * handle. Sets *ended. -ECHILD means something else reaped our child (a
 * SIGCHLD set to SIG_IGN, or a waitpid(-1) elsewhere in the program).
 */
static int reap_locked(mproc_process *proc, bool *ended)
{
    *ended = proc->state == STATE_REAPED;
    if (proc->state != STATE_STARTED)
        return 0;
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    while (waitid(P_PID, (id_t)proc->pid, &info, WEXITED | WNOHANG) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    if (info.si_pid == 0)
        return 0;
    proc->exitcode = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    proc->state = STATE_REAPED;
    *ended = true;
    return 0;
}

/* Polls a started handle: reaps it if it has ended. */
static int poll_child(mproc_process *proc, bool *ended)
{
    pthread_mutex_lock(&proc->lock);
    int rc = reap_locked(proc, ended);
    pthread_mutex_unlock(&proc->lock);
    return rc;
}

/* Common checks: a live handle, used by the process that started it. */
static int check_owner(const mproc_process *proc)
{
    if (!valid(proc))
        return -EINVAL;
    return proc->owner == getpid() ? 0 : -ECHILD;
}

int mproc_process_join(mproc_process *proc, int timeout_ms)
{
    if (valid(proc) && proc == globals.current)
        return -EDEADLK;
    int rc = check_owner(proc);
    if (rc < 0)
        return rc;
    if (proc->state == STATE_CREATED)
        return -ECHILD;
    int64_t deadline = mproc__deadline(timeout_ms);
    for (;;) {
        bool ended;
        rc = poll_child(proc, &ended);
        if (rc < 0 || ended)
            return rc;
        int wait_ms = mproc__remaining_ms(deadline);
        if (wait_ms == 0)
            return -ETIMEDOUT;
        int fd = proc->pidfd >= 0 ? proc->pidfd : proc->exit_pipe;
        if (proc->pidfd < 0 && (wait_ms < 0 || wait_ms > FALLBACK_POLL_MS))
            wait_ms = FALLBACK_POLL_MS;
        rc = mproc__wait_readable(fd, wait_ms);
        if (rc < 0)
            return rc;
        if (rc > 0 && proc->pidfd < 0) {
            /* The pipe closes a moment before the child is waitable: do not spin. */
            poll_child(proc, &ended);
            if (!ended)
                (void)mproc__wait_readable(-1, 1);
        }
    }
}

int mproc_process_is_alive(mproc_process *proc, bool *alive)
{
    if (!alive)
        return -EINVAL;
    *alive = false;
    if (valid(proc) && proc == globals.current) {
        *alive = true;
        return 0;
    }
    int rc = check_owner(proc);
    if (rc < 0 || proc->state == STATE_CREATED)
        return rc;
    bool ended;
    rc = poll_child(proc, &ended);
    *alive = rc == 0 && !ended;
    return rc;
}

int mproc_process_exitcode(mproc_process *proc, int *exitcode)
{
    if (!exitcode)
        return -EINVAL;
    *exitcode = MPROC_EXITCODE_NONE;
    if (valid(proc) && proc == globals.current)
        return 0;
    int rc = check_owner(proc);
    if (rc < 0 || proc->state == STATE_CREATED)
        return rc;
    bool ended;
    rc = poll_child(proc, &ended);
    if (rc == 0 && ended)
        *exitcode = proc->exitcode;
    return rc;
}

int mproc_process_signal(mproc_process *proc, int signo)
{
    int rc = check_owner(proc);
    if (rc < 0)
        return rc;
    if (signo < 0 || signo >= NSIG)
        return -EINVAL;
    pthread_mutex_lock(&proc->lock);
    if (proc->state == STATE_CREATED)
        rc = -ECHILD;
    else if (proc->state == STATE_STARTED && kill(proc->pid, signo) < 0)
        rc = -errno;
    pthread_mutex_unlock(&proc->lock);
    return rc;
}

int mproc_process_terminate(mproc_process *proc)
{
    return mproc_process_signal(proc, SIGTERM);
}

int mproc_process_kill(mproc_process *proc)
{
    return mproc_process_signal(proc, SIGKILL);
}

int mproc_process_interrupt(mproc_process *proc)
{
    return mproc_process_signal(proc, SIGINT);
}

int mproc_process_sentinel(const mproc_process *proc, int *fd)
{
    if (!fd)
        return -EINVAL;
    int rc = check_owner(proc);
    if (rc < 0)
        return rc;
    if (proc->state == STATE_CREATED)
        return -ECHILD;
    *fd = proc->pidfd >= 0 ? proc->pidfd : proc->exit_pipe;
    return 0;
}

static void free_handle(mproc_process *proc)
{
    if (proc->cls->finalize)
        proc->cls->finalize(proc);
    mproc__close(proc->pidfd);
    mproc__close(proc->exit_pipe);
    if (proc == globals.current)
        globals.current = NULL;
    free(proc->name);
    proc->magic = 0;
    free(proc);
}

int mproc_process_destroy(mproc_process **procp)
{
    if (!procp || !valid(*procp))
        return -EINVAL;
    mproc_process *proc = *procp;
    if (proc->owner != getpid() || proc->state == STATE_CREATED) {
        /* Never started, or a copy inherited from our parent: nothing to reap. */
        if (proc->owner == getpid())
            registry_remove(proc);
        free_handle(proc);
        *procp = NULL;
        return 0;
    }
    pthread_mutex_lock(&globals.registry_lock);
    pthread_mutex_lock(&proc->lock);
    bool ended;
    int rc = reap_locked(proc, &ended);
    if (rc == 0 && !ended)
        rc = -EBUSY;
    if (rc == -ECHILD)
        rc = 0; /* reaped by someone else: nothing left to wait for */
    if (rc == 0)
        registry_remove_locked(proc);
    pthread_mutex_unlock(&proc->lock);
    pthread_mutex_unlock(&globals.registry_lock);
    if (rc < 0)
        return rc;
    pthread_mutex_destroy(&proc->lock);
    free_handle(proc);
    *procp = NULL;
    return 0;
}

mproc_process *mproc_current_process(void)
{
    return globals.current;
}

const char *mproc_current_name(void)
{
    return globals.current ? globals.current->name : "MainProcess";
}

pid_t mproc_parent_pid(void)
{
    return globals.parent_pid;
}

int mproc_active_children(mproc_process **out, size_t cap, size_t *count)
{
    if (!count || (cap > 0 && !out))
        return -EINVAL;
    size_t live = 0;
    pthread_mutex_lock(&globals.registry_lock);
    for (mproc_process *proc = globals.registry_head; proc; proc = proc->next) {
        bool ended;
        if (poll_child(proc, &ended) < 0 || ended)
            continue;
        if (live < cap)
            out[live] = proc;
        live++;
    }
    pthread_mutex_unlock(&globals.registry_lock);
    *count = live;
    return 0;
}
