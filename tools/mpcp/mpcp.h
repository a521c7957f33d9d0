/*
 * mpcp.h: what the parts of mpcp share. The planner (walk.c) walks the
 * source tree and makes directories; it hands batches of non-directory
 * entries of one directory to the executor (executor.c) as flat byte buffers
 * (task.c), so that the same batches can later be shipped to pool workers.
 */
#ifndef MPCP_H
#define MPCP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/* ---- options (options.c) ---- */

enum mpcp_deref { MPCP_DEREF_UNSET, MPCP_DEREF_NEVER, MPCP_DEREF_ALWAYS, MPCP_DEREF_CMDLINE };
/* --write-through-symlinks: an existing destination symlink, where cp writes through it. */
enum mpcp_through { MPCP_THROUGH_SAFE, MPCP_THROUGH_NEVER, MPCP_THROUGH_ALWAYS };
enum mpcp_update { MPCP_UPDATE_ALL, MPCP_UPDATE_NONE, MPCP_UPDATE_NONE_FAIL, MPCP_UPDATE_OLDER };
enum mpcp_reflink { MPCP_REFLINK_AUTO, MPCP_REFLINK_ALWAYS, MPCP_REFLINK_NEVER };
enum mpcp_sparse { MPCP_SPARSE_AUTO, MPCP_SPARSE_ALWAYS, MPCP_SPARSE_NEVER };
enum mpcp_progress_mode { MPCP_PROGRESS_AUTO, MPCP_PROGRESS_ON, MPCP_PROGRESS_OFF };
/* cp's version control: none/off, simple/never, existing/nil, numbered/t. */
enum mpcp_backup {
    MPCP_BACKUP_NONE,
    MPCP_BACKUP_SIMPLE,
    MPCP_BACKUP_EXISTING,
    MPCP_BACKUP_NUMBERED
};

struct mpcp_opts {
    bool hard_link;     /* -l: every non-folder becomes a hard link to its source */
    bool symbolic_link; /* -s: every non-folder becomes a symlink to its source's name */
    bool recursive;
    int deref; /* enum mpcp_deref, resolved by options_parse() */
    bool p_mode, p_owner, p_time, p_links, p_xattr;
    bool no_p_mode;     /* --no-preserve=mode given: new files get 0666 & ~umask */
    bool p_xattr_quiet; /* xattr asked by -a/all: unsupported targets are not errors */
    bool p_context;     /* --preserve=context: refused, there is no SELinux support */
    bool no_target_dir;
    const char *target_dir;
    int update; /* enum mpcp_update; -n maps to NONE */
    /*
     * -u without --preserve=links: cp still remembers a file it keeps (a
     * newer destination) and links a later name of that file that it also
     * keeps to it, replacing that name's own newer destination. Set by
     * options_parse().
     */
    bool update_links;
    bool force, verbose, one_fs, stats, json, dry_run, quiet, inplace;
    bool parents;         /* --parents: DIRECTORY/SOURCE as typed, missing folders made */
    bool strip_slashes;   /* --strip-trailing-slashes, on the sources copied into a folder */
    int backup;           /* enum mpcp_backup: -b, --backup[=CONTROL], -S */
    const char *suffix;   /* of simple backups: -S, SIMPLE_BACKUP_SUFFIX, else "~" */
    bool remove_dest;     /* --remove-destination: existing files are replaced, never written */
    bool interactive;     /* -i: ask before replacing an existing destination (one process) */
    bool attributes_only; /* --attributes-only: metadata only; an existing file keeps its data */
    bool copy_contents;   /* --copy-contents: with -R, fifos and devices are read as files */
    int through_links;    /* enum mpcp_through: --write-through-symlinks=WHEN */
    int reflink, sparse, progress;
    int jobs;
    bool jobs_auto; /* no -j: one per CPU, or as many as pay on slow storage */
    char **operands;
    int n_operands;
    mode_t umask; /* the process umask, read once */
};

/* Parses argv. Returns -1 to continue, or an exit status (help, version, usage error). */
int mpcp_options_parse(struct mpcp_opts *opt, int argc, char **argv);

/* ---- messages (report.c) ---- */

/* Appends cp's shell-escape-always quoting of name to buf (at most size-1 bytes). */
size_t mpcp_quote(char *buf, size_t size, const char *name);
/* The same, but a name that the shell would read as it is stays bare (cp's quotef). */
size_t mpcp_quote_if_needed(char *buf, size_t size, const char *name);

/*
 * Writes tmpl to out with its first and second "%s" replaced by a and b (no
 * other conversions): messages are built from fixed templates this way, so
 * that no format string is ever variable.
 */
void mpcp_format(char *out, size_t size, const char *tmpl, const char *a, const char *b);

/* The name messages start with: "mpcp", or "cp" when run under that name. */
extern const char *mpcp_program;

/* Prints "mpcp: " + msg (+ ": " + the text of errno err, if err) + newline to stderr. */
void mpcp_error(int err, const char *msg);

/* Counters of a run, for --stats and --json. */
struct mpcp_stats {
    uint64_t files, dirs, symlinks, hardlinks, specials, skipped, errors;
    uint64_t bytes;
    uint64_t files_total, bytes_total;
    uint64_t listed; /* folders read from a worker's listing (the distributed walk) */
    double seconds;
};

void mpcp_report_summary(const struct mpcp_opts *opt, const struct mpcp_stats *st);

/* ---- progress (progress.c) ---- */

struct mpcp_progress;

/* An operand as the planner resolved it: its source and destination names in open folders. */
struct mpcp_count_root {
    int sparent, dparent;
    const char *sbase, *dbase;
};

/*
 * Starts the progress display if wanted; *out is NULL when there is none.
 * A thread counts what the copy of roots (the caller's, valid until
 * mpcp_progress_stop) will write meanwhile: the total grows as it finds
 * more and is final when it is done.
 */
void mpcp_progress_start(struct mpcp_progress **out, const struct mpcp_opts *opt,
                         const struct mpcp_count_root *roots, size_t n_roots);
/*
 * Waits until the count is done (the bar keeps drawing). Under -n and
 * --update the count looks at the destination as it was before the copy,
 * so the copy starts after it. Returns early on Ctrl-C.
 */
void mpcp_progress_wait_count(struct mpcp_progress *p);
void mpcp_progress_add(struct mpcp_progress *p, uint64_t files, uint64_t bytes);
/* Called before anything else writes to stderr: erases the bar. */
void mpcp_progress_clear(struct mpcp_progress *p);
void mpcp_progress_stop(struct mpcp_progress **p);

/* ---- metadata (metadata.c) ---- */

/* Copies extended attributes from src to dst (fds). Returns 0 or -errno. */
int mpcp_copy_xattrs(int src_fd, int dst_fd, bool quiet_unsupported);

/*
 * Copies src's POSIX ACL to dst (fds), and a folder's default ACL (dir):
 * what cp -p keeps with the mode (a file has an ACL xattr only where it
 * says more than the mode). Where src has none, clear removes dst's, as cp
 * -p does (one inherited from a folder's default ACL, an existing file's);
 * without clear the caller knows dst has none. Returns 0 or -errno.
 */
int mpcp_copy_acl(int src_fd, int dst_fd, bool dir, bool clear);

/*
 * The mode a new file or folder gets under cp's rules, given the source mode
 * and whether keeping the owner was asked for and failed. Existing
 * destinations keep their mode unless --preserve=mode.
 */
mode_t mpcp_new_file_mode(const struct mpcp_opts *opt, mode_t src_mode, bool owner_failed);

/* ---- file data (copy_file.c) ---- */

#include <signal.h>

/*
 * Set by main's SIGINT/SIGTERM/SIGHUP handler to the signal's number: the
 * copy loops and the executor stop at the next step, unlinking the
 * temporary they were writing, and main re-raises the signal.
 */
extern volatile sig_atomic_t mpcp_interrupted;

/* Optional: called with each chunk of bytes written (in-process progress of big files). */
void mpcp_set_data_progress(void (*fn)(uint64_t bytes));

enum mpcp_data_side { MPCP_SIDE_READ, MPCP_SIDE_WRITE, MPCP_SIDE_CLONE };

/*
 * Filesystems (devices) where a fast path failed once in this process, so
 * that it is not tried again for every file. Once full, every device counts
 * as one: the slow path is always correct.
 */
struct mpcp_dev_set {
    dev_t dev[16];
    unsigned n;
};
bool mpcp_dev_set_has(const struct mpcp_dev_set *s, dev_t dev);
void mpcp_dev_set_add(struct mpcp_dev_set *s, dev_t dev);

/*
 * The bytes mpcp_copy_data() reports for a file with stat st (name in
 * folder dfd): its size, or for a sparse copy its data extents (the file is
 * opened only then). What the progress bar's total counts.
 */
uint64_t mpcp_copy_bytes(const struct mpcp_opts *opt, int dfd, const char *name,
                         const struct stat *st);

/*
 * Copies the data of src_fd (size and blocks from the walk's stat) to dst_fd
 * (empty, freshly created or truncated). On failure returns -errno and sets
 * *side. *copied gets the bytes written.
 */
int mpcp_copy_data(const struct mpcp_opts *opt, int src_fd, int dst_fd, dev_t dst_dev, off_t size,
                   blkcnt_t blocks, uint64_t *copied, int *side);

/*
 * Copies src_fd to dst_fd, a fifo or device (an existing destination that
 * cp writes into), by read and write to the source's end: no clone, no
 * copy_file_range, no holes. Returns 0 or -errno and sets *side.
 */
int mpcp_copy_stream(int src_fd, int dst_fd, uint64_t *copied, int *side);

/*
 * Copies the range [off, off + len) of src_fd to the same range of dst_fd
 * with explicit offsets (other processes may write other ranges of dst_fd
 * meanwhile): copy_file_range, then pread/pwrite for what it cannot do. A
 * source that ends early ends the copy. Returns 0 or -errno and sets *side.
 */
int mpcp_copy_range_at(int src_fd, int dst_fd, off_t off, off_t len, uint64_t *copied, int *side);

/*
 * --reflink=auto: clones src_fd into dst_fd if the filesystem can (a
 * failure is remembered per destination device). Returns 0 when cloned, 1
 * when the data must be copied.
 */
int mpcp_try_clone(const struct mpcp_opts *opt, int src_fd, int dst_fd, dev_t dst_dev);

/* ---- tasks (task.c): the byte format between planner and executor ---- */

enum mpcp_entry_type {
    MPCP_T_REG = 1,
    MPCP_T_LNK = 2,
    MPCP_T_FIFO = 3,
    MPCP_T_SOCK = 4,
    MPCP_T_CHR = 5,
    MPCP_T_BLK = 6,
    MPCP_T_HARDLINK = 7, /* link to an earlier copy; link_target set */
    MPCP_T_CHUNK = 8,    /* a range of a large file into the temporary named by link_target */
    MPCP_T_COMMIT = 9,   /* all ranges are in: metadata on link_target, rename onto dst_name */
};

/* Entry flags. */
#define MPCP_E_DEST_NEW 0x1u /* the destination folder is new: skip the existence check */
#define MPCP_E_FOLLOW   0x2u /* open the source following a symlink (-L, -H operand) */
#define MPCP_E_LEADER   0x4u /* first of a hard-link group: its result matters to later links */

/* Task flags. */
#define MPCP_TASK_TOP    0x1u /* the entry is an operand: display paths are the dir strings */
#define MPCP_TASK_FOLLOW 0x2u /* resolve src_dir following symlinks (-L, -H) */
#define MPCP_TASK_AWAY   0x4u /* -s: dst_dir is not the working folder (relative links refused) */

struct mpcp_entry {
    uint8_t type;
    uint8_t flags;
    const char *name;     /* source name in the source folder */
    const char *dst_name; /* destination name; equals name unless renamed */
    uint32_t mode, uid, gid;
    uint64_t size, dev, ino;
    uint64_t blocks; /* MPCP_T_CHUNK: the length of the range */
    uint64_t rdev;   /* devices: the device; HARDLINK: the root of link_target; CHUNK: offset */
    int64_t atime_sec, mtime_sec;
    uint32_t atime_nsec, mtime_nsec;
    const char *link_target; /* HARDLINK: path from the destination root; CHUNK, COMMIT: temp */
    const char *link_disp;   /* MPCP_T_HARDLINK: how messages name that path */
};

struct mpcp_task {
    uint32_t flags;
    uint32_t src_root, dst_root;     /* indexes into the executor's root table */
    const char *src_dir, *dst_dir;   /* "" or relative paths from the roots */
    const char *src_disp, *dst_disp; /* how messages name the folders */
    uint32_t count;
};

/* Growing byte buffer. */
struct mpcp_buf {
    unsigned char *data;
    size_t len, cap;
};
int mpcp_buf_put(struct mpcp_buf *b, const void *p, size_t n);
void mpcp_buf_free(struct mpcp_buf *b);

/* Starts a task buffer (header); entries are appended with mpcp_task_add(). */
int mpcp_task_begin(struct mpcp_buf *b, const struct mpcp_task *t);
int mpcp_task_add(struct mpcp_buf *b, const struct mpcp_entry *e);
/* Drops the entries of a task buffer, keeping its header (header_len bytes). */
void mpcp_task_truncate(struct mpcp_buf *b, size_t header_len);
/* Entry count of a task buffer being built. */
uint32_t mpcp_task_count(const struct mpcp_buf *b);

/*
 * Decoding. The pointers in *t and *e point into the buffer. Returns 0 or
 * -EBADMSG. *pos is the cursor after the header/entry.
 */
int mpcp_task_decode_header(const unsigned char *p, size_t len, struct mpcp_task *t, size_t *pos);
int mpcp_task_decode_entry(const unsigned char *p, size_t len, size_t *pos, struct mpcp_entry *e);

/* Per-entry outcome. */
enum mpcp_status { MPCP_OK = 0, MPCP_SKIPPED = 1, MPCP_FAILED = 2 };
#define MPCP_R_STOP      0x1u  /* out of space or quota: the run must stop */
#define MPCP_R_REPLACED  0x2u  /* an existing destination was removed first (cp -v says so) */
#define MPCP_R_ATTEMPTED 0x4u  /* past cp's checks: cp -v names it even if it then failed */
#define MPCP_R_KEPT      0x8u  /* skipped by -u: cp links a group's later names to it */
#define MPCP_R_LINKED    0x10u /* a hard link replaced a name: cp -v names it, then "removed" */
#define MPCP_R_KEPT_LINK 0x20u /* a name -u keeps became a link: cp -v says only "removed" */

struct mpcp_result_entry {
    uint8_t status;
    uint8_t flags;
    int32_t err; /* errno of the failure, 0 if none */
    uint64_t bytes;
    const char *msg;    /* full diagnostic line without the "mpcp: " prefix; "" if none */
    const char *backup; /* the old destination's backup, a name in its folder; "" or NULL if none */
};

int mpcp_result_begin(struct mpcp_buf *b);
int mpcp_result_add(struct mpcp_buf *b, const struct mpcp_result_entry *r);
int mpcp_result_decode_header(const unsigned char *p, size_t len, uint32_t *count, size_t *pos);
int mpcp_result_decode_entry(const unsigned char *p, size_t len, size_t *pos,
                             struct mpcp_result_entry *r);

/* ---- executor (executor.c) ---- */

/*
 * The roots every task is relative to: inherited directory fds, the same
 * numbers in the planner and in every worker.
 */
int mpcp_exec_add_root(int src_fd, int dst_fd, uint32_t *id);
void mpcp_exec_set_options(const struct mpcp_opts *opt);

/* Root id's fds (the executor keeps them), or -ENOENT. */
int mpcp_exec_root(uint32_t id, int *src_fd, int *dst_fd);

/* How many roots there are. */
uint32_t mpcp_exec_root_count(void);

/*
 * Installs root id from fds opened by path: an MPI worker rank, which is not
 * a fork of the planner, learns the roots from its tasks. Takes the fds.
 * Returns 0 or -ENOMEM.
 */
int mpcp_exec_put_root(uint32_t id, int src_fd, int dst_fd);

/*
 * Runs one task: copies every entry of task (bytes) and appends one result
 * per entry, in order, to result (a fresh buffer). hint_src/hint_dst are
 * open fds of the task's folders when the caller has them, or -1 to resolve
 * them from the roots component by component (what a worker does).
 * Returns 0, or -EBADMSG/-ENOMEM when the task could not be run at all.
 */
int mpcp_exec_run(const unsigned char *task, size_t len, int hint_src, int hint_dst,
                  struct mpcp_buf *result);

/* Closes the executor's cached folder fds. */
void mpcp_exec_reset(void);

/* The temporary name for a final name: ".mpcp-<pid>-<n>~name", cut to NAME_MAX. */
void mpcp_temp_name(char *buf, size_t size, const char *name);
/* True if name is one of our temporaries left by a process that is gone. */
bool mpcp_is_stale_temp(const char *name);

/*
 * Opens the folder path below root id's source (O_PATH), one component at a
 * time, following symlinks only if follow. Returns 0 or -errno.
 */
int mpcp_exec_open_src(uint32_t id, const char *path, bool follow, int *fd);

/* ---- folder listings (listing.c): the walk's reading, done by a worker ---- */

/* A folder with more entries is read by the planner itself (memory per listing). */
#define MPCP_LIST_MAX  16384u
#define MPCP_LIST_WIDE 1 /* a listing's status: the folder has more than MPCP_LIST_MAX entries */

/* Request flags. */
#define MPCP_LIST_FOLLOW_DIR 0x1u /* resolve the path through symlinks (-H, -L) */
#define MPCP_LIST_FOLLOW     0x2u /* stat entries and enter folders through symlinks (-L) */
#define MPCP_LIST_ONE_FS     0x4u /* -x: do not list folders of another filesystem */

/* One folder's listing in a result (a section). */
struct mpcp_list_info {
    const char *rel; /* the folder, from the requested one ("" for itself) */
    int status;      /* 0, -errno of the folder, or MPCP_LIST_WIDE */
    uint32_t count;
    dev_t dir_dev; /* the folder's device and inode as the worker saw them */
    ino_t dir_ino;
    size_t start, entries, end; /* offsets: the section, its first entry, its end */
};

struct mpcp_listed {
    const char *name; /* points into the result */
    int err;          /* the stat's errno; st is unset then */
    struct stat st;
};

/* Builds the request to list path below root's source and some folders below it. */
int mpcp_list_request(struct mpcp_buf *b, uint32_t root, const char *path, unsigned flags);
bool mpcp_list_is_request(const unsigned char *p, size_t len);

/* Runs a request (a worker): out gets the result. Returns 0, -EBADMSG or -ENOMEM. */
int mpcp_list_run(const unsigned char *req, size_t len, struct mpcp_buf *out);

/*
 * Decoding; the names point into the result. A result holds sections, one
 * per folder listed, the requested one first; a section's entries are
 * decoded from info.entries up to info.end. Each returns 0 or -EBADMSG.
 */
int mpcp_list_decode_result(const unsigned char *p, size_t len, uint32_t *sections, size_t *pos);
int mpcp_list_decode_section(const unsigned char *p, size_t len, size_t *pos,
                             struct mpcp_list_info *info);
int mpcp_list_decode_entry(const unsigned char *p, size_t end, size_t *pos, struct mpcp_listed *e);

/* ---- concurrency on slow storage (adapt.c) ---- */

/* The pool's size on slow storage without -j: MPCP_MAX_JOBS, up to the limit. */
#define MPCP_MAX_JOBS_DEFAULT 256
#define MPCP_MAX_JOBS_LIMIT   1024

/*
 * Whether fd is on storage where every operation waits for a round trip
 * (network filesystems and FUSE, by statfs type); MPCP_SLOW=1 or 0 decides
 * instead. On such storage, without -j, mpcp starts mpcp_slow_max_jobs()
 * workers and keeps as many tasks in flight as pays (struct mpcp_adapt).
 */
bool mpcp_slow_fs(int fd);
int mpcp_slow_max_jobs(void);

/*
 * The window, found while copying: limit is how many workers the planner
 * keeps busy now, between 1 and cap. The planner calls mpcp_adapt_done()
 * as each task completes, with the work it did (entries and bytes, in one
 * unit), and mpcp_adapt_tick() when it wakes from a wait (at most
 * mpcp_adapt_tick_ms() apart). The window steps to 4x at once when the CPUs
 * idled 40% of the fill, then grows while the CPUs wait or the work done
 * per second grows, and falls back when a step halves it (adapt.c). Not
 * thread-safe: the planner's alone.
 */
struct mpcp_adapt {
    size_t limit, cap;
    size_t good;                            /* the largest size whose step up paid */
    double best;                            /* work per second at good */
    double t0;                              /* start of this measurement */
    uint64_t work;                          /* done since t0 */
    size_t tasks;                           /* completed since t0 */
    int hold;                               /* measurements left before the next probe */
    bool probed;                            /* a step did not pay once: later probes are smaller */
    bool started;                           /* a task has completed */
    bool fill_judged;                       /* the fill's idle share has been read */
    unsigned long long cpu_idle, cpu_total; /* /proc/stat at t0 */
};
void mpcp_adapt_init(struct mpcp_adapt *a, size_t start, size_t cap);
/* A task completed with work done: true if the window moved. */
bool mpcp_adapt_done(struct mpcp_adapt *a, uint64_t work);
/* The caller waits for tasks: true if the window moved (the fill is judged). */
bool mpcp_adapt_tick(struct mpcp_adapt *a);
/* How soon the next tick is wanted, in ms; -1: ticks are not needed. */
int mpcp_adapt_tick_ms(const struct mpcp_adapt *a);

/* ---- workers (parallel.c) ---- */

#include <mproc/pool.h>

/*
 * Creates the pool of jobs workers that run tasks. Everything the workers
 * need (executor options, roots, signal handlers) must be set before: they
 * are forks of this moment. MPCP_NO_RETRY in the environment turns off the
 * retry of a task whose worker died (for tests). on_demand: jobs is a bound,
 * workers start as tasks wait for them (the adaptive window on slow
 * storage). Returns 0 or a pool error.
 */
int mpcp_workers_start(mproc_pool **out, int jobs, bool on_demand);

/*
 * Whether the workers should read the folders of the tree in src_fd (the
 * walk shared out): under MPI when the ranks span several nodes or the
 * source is on a network filesystem; MPCP_WALK=workers or planner chooses.
 */
bool mpcp_workers_walk(const mproc_pool *pool, int src_fd);

/* Submits one task or listing request (its bytes are copied); *r is the caller's to destroy. */
int mpcp_workers_submit(mproc_pool *pool, const struct mpcp_buf *task, mproc_result **r);

/*
 * Under an MPI launcher (mpirun -n N, N > 1), after the options are parsed:
 * every rank but 0 serves copy tasks here and gets its exit status back;
 * rank 0 makes the pool of ranks that mpcp_workers_start() will hand out
 * and gets -1, as does a run without MPI: then copy as usual.
 */
int mpcp_cluster_start(struct mpcp_opts *opt);

/* At the end of main(): lets the ranks go if the planner never took the pool. */
void mpcp_cluster_end(void);

/*
 * A plain mpcp started by an MPI launcher runs mpcp-mpi from its own folder
 * instead (exec, same arguments); returns only when that is not the case,
 * or with an exit status when it cannot.
 */
int mpcp_cluster_exec(char **argv);

/* ---- --parents (parents.c) ---- */

/* Where the planner's messages go: fail() is an error (the run fails), made() a -v line. */
struct mpcp_reporter {
    void (*fail)(void *arg, int err, const char *tmpl, const char *name);
    void (*made)(void *arg, const char *src, const char *dst);
    void *arg;
};

struct mpcp_parents;
int mpcp_parents_new(struct mpcp_parents **out, const struct mpcp_opts *opt);
void mpcp_parents_free(struct mpcp_parents *ps);

/*
 * DIRECTORY/SOURCE as cp builds it (a malloc'd string, the caller's):
 * DIRECTORY without trailing slashes, then SOURCE without them; *arg_off is
 * where SOURCE starts in it.
 */
char *mpcp_parents_dest(const char *target, const char *arg, size_t *arg_off);

/*
 * Makes the missing folders on the way to dst (cp's modes, a -v line each;
 * under --dry-run only the lines) and remembers them for
 * mpcp_parents_protect(). Returns 0, or -1 when the operand must not be
 * copied (reported through r).
 */
int mpcp_parents_make(struct mpcp_parents *ps, const char *dst, size_t arg_off,
                      const struct mpcp_reporter *r);

/* After every copy is complete: the folders' owners, modes and times, as cp leaves them. */
void mpcp_parents_protect(struct mpcp_parents *ps, const struct mpcp_reporter *r);

/* ---- backups (backup.c) ---- */

#define MPCP_BACKUP_NOREPLACE 0x1u /* numbered: an existing file of that name is not replaced */
#define MPCP_BACKUP_RESCAN    0x2u /* ...and if one appeared meanwhile, the next number will do */

/*
 * The name (in folder dfd) that opt's backup of name gets, as cp 9.1
 * chooses it, into out; *how gets MPCP_BACKUP_* flags. Numbered backups
 * scan the folder (each call: cp does so too). Returns 0 or -ENAMETOOLONG.
 */
int mpcp_backup_name(int dfd, const char *name, const struct mpcp_opts *opt, char *out, size_t size,
                     unsigned *how);

/* ---- folders met before (dir_record.c) ---- */

/* A folder cp would remember: dst names it; made: the run made it (a destination). */
struct mpcp_dir_record {
    dev_t dev;
    ino_t ino;
    char *dst; /* owned by the table; NULL in an empty slot */
    bool made;
};

struct mpcp_dir_records {
    struct mpcp_dir_record *v;
    size_t n, cap; /* cap: 0 or a power of two */
};

/* The record of folder (dev, ino), or NULL. Valid until the next add. */
const struct mpcp_dir_record *mpcp_dirs_find(const struct mpcp_dir_records *t, dev_t dev,
                                             ino_t ino);
/* Records it under a copy of dst, unless it is there already. Returns 0 or -ENOMEM. */
int mpcp_dirs_add(struct mpcp_dir_records *t, dev_t dev, ino_t ino, const char *dst, bool made);
void mpcp_dirs_free(struct mpcp_dir_records *t);

/* ---- planner (walk.c) ---- */

/* Copies every operand; returns the exit status. */
int mpcp_run(struct mpcp_opts *opt);

#endif
