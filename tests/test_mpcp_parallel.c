/*
 * mpcp -j N on libmproc's pool: any number of workers gives cp's tree
 * (hard links across folders and batches, read-only folders, nanosecond
 * times), a worker SIGKILLed mid-copy is retried or reported per entry and
 * never hangs the run, Ctrl-C stops workers and fork server and leaves no
 * temporary, and the progress bar still ends at 100% without going back.
 */
#include "mpcp_tree.h"

#include <dirent.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <time.h>

static char work[256];
static int wfd = -1;

static void setup_work(void)
{
    wfd = make_work_dir(work, sizeof work, "parallel");
}

static void teardown_work(void)
{
    if (wfd >= 0)
        close(wfd);
    wfd = -1;
    remove_tree_at(AT_FDCWD, work);
}

static void run(struct run_result *r, const char *const *args)
{
    const char *argv[32] = {MPROC_MPCP_PATH};
    for (int i = 0; args[i]; i++)
        argv[i + 1] = args[i];
    run_in(work, false, argv, r);
}

static void write_sized(int dir, const char *name, size_t size, mode_t mode)
{
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    must(fd, "create", name);
    char block[4096];
    for (size_t off = 0; off < size;) {
        size_t n = size - off < sizeof block ? size - off : sizeof block;
        for (size_t i = 0; i < n; i++)
            block[i] = (char)((off + i) * 13 + size);
        cr_assert_eq(write(fd, block, n), (ssize_t)n);
        off += n;
    }
    must(fchmod(fd, mode), "chmod", name);
    close(fd);
}

/*
 * The tree: a wide folder of 700 files (three batches, a hard link from the
 * first batch to the third), hard links across folders and levels,
 * symlinks (one dangling), read-only nested folders, odd modes, and
 * nanosecond times on everything.
 */
static void make_tree(void)
{
    int s = sub_dir(wfd, "s", 0755);
    int wide = sub_dir(s, "wide", 0755);
    for (int i = 0; i < 700; i++) {
        char name[32];
        snprintf(name, sizeof name, "f%03d", i);
        write_sized(wide, name, (size_t)(i % 7) * 1500, i % 5 ? 0644 : 0600);
    }
    must(linkat(wide, "f010", wide, "zz-link-to-f010", 0), "link", "zz");
    for (int d = 0; d < 6; d++) {
        char name[32];
        snprintf(name, sizeof name, "d%d", d);
        int sub = sub_dir(s, name, 0755);
        int deep = sub_dir(sub, "deep", 0755);
        for (int f = 0; f < 40; f++) {
            snprintf(name, sizeof name, "g%d", f);
            write_sized(f % 2 ? sub : deep, name, (size_t)f * 331, 0640);
        }
        snprintf(name, sizeof name, "hl%d", d);
        must(linkat(wide, "f001", deep, name, 0), "link", name);
        must(linkat(s, "wide/f002", sub, "to-f002", 0), "link", "to-f002");
        must(symlinkat("../wide/f003", sub, "sym"), "symlink", "sym");
        must(symlinkat("nowhere", deep, "dangling"), "symlink", "dangling");
        must(mkfifoat(deep, "fifo", 0640), "mkfifo", "fifo");
        close(deep);
        close(sub);
    }
    stamp_tree(s, 1400000000); /* before 2017: compare_trees checks the times */
    /* Read-only folders, inner and outer: written into before they get their mode. */
    for (int d = 0; d < 6; d += 2) {
        char name[32];
        snprintf(name, sizeof name, "d%d/deep", d);
        must(fchmodat(s, name, 0555, 0), "chmod", name);
        snprintf(name, sizeof name, "d%d", d);
        must(fchmodat(s, name, 0500, 0), "chmod", name);
    }
    close(wide);
    close(s);
}

static void compare_with(const char *a_name, const char *b_name)
{
    int a = openat(wfd, a_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int b = openat(wfd, b_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(a, 0, "%s", a_name);
    cr_assert_geq(b, 0, "%s", b_name);
    compare_trees(a, b, CMP_MTIME | CMP_OWNER);
    close(a);
    close(b);
}

Test(mpcp_parallel, jobs_1_2_4_8_give_cps_tree, .init = setup_work, .fini = teardown_work,
     .timeout = 120)
{
    make_tree();
    struct run_result r;
    const char *cp_argv[] = {"cp", "-a", "s", "cp", NULL};
    run_in(work, false, cp_argv, &r);
    cr_assert_eq(r.status, 0, "cp: %s", r.err);
    static const char *const jobs[] = {"1", "2", "4", "8"};
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++) {
        char out[16];
        snprintf(out, sizeof out, "o%s", jobs[i]);
        run(&r, (const char *const[]){"-a", "-j", jobs[i], "s", out, NULL});
        cr_assert_eq(r.status, 0, "-j %s: %s", jobs[i], r.err);
        cr_assert_str_empty(r.err, "-j %s: %s", jobs[i], r.err);
        compare_with("cp", out);
    }
}

/* Each run several times: an ordering bug would show up as a flaky difference. */
Test(mpcp_parallel, repeated_runs_with_many_workers_agree, .init = setup_work,
     .fini = teardown_work, .timeout = 120)
{
    make_tree();
    struct run_result r;
    run(&r, (const char *const[]){"-a", "-j", "1", "s", "ref", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    for (int i = 0; i < 4; i++) {
        run(&r, (const char *const[]){"-a", "-j", "6", "s", "o", NULL});
        cr_assert_eq(r.status, 0, "%s", r.err);
        compare_with("ref", "o");
        remove_tree_at(wfd, "o");
    }
}

/*
 * A low descriptor limit (ulimit -n 40): folders stay open while their tasks
 * are in flight, so the planner runs out; it then waits for those tasks and
 * goes on, and the copy is whole.
 */
Test(mpcp_parallel, low_descriptor_limit_still_copies_everything, .init = setup_work,
     .fini = teardown_work, .timeout = 120)
{
    int s = sub_dir(wfd, "s", 0755);
    for (int d = 0; d < 50; d++) {
        char name[32];
        snprintf(name, sizeof name, "d%02d", d);
        int a = sub_dir(s, name, 0755);
        int b = sub_dir(a, "b", 0755);
        int c = sub_dir(b, "c", 0755);
        for (int f = 0; f < 4; f++) {
            snprintf(name, sizeof name, "f%d", f);
            write_sized(a, name, 100, 0644);
            write_sized(b, name, 200, 0644);
            write_sized(c, name, 300, 0644);
        }
        close(c);
        close(b);
        close(a);
    }
    stamp_tree(s, 1400000000);
    close(s);
    struct run_result r;
    run(&r, (const char *const[]){"-a", "-j", "1", "s", "ref", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    struct rlimit old;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    struct rlimit low = {40, old.rlim_max};
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    run(&r, (const char *const[]){"-a", "-j", "2", "s", "o", NULL});
    setrlimit(RLIMIT_NOFILE, &old);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_empty(r.err);
    compare_with("ref", "o");
}

/* Operands copied by workers: several sources into a folder, links across operands. */
Test(mpcp_parallel, operands_into_a_folder_with_links_across_them, .init = setup_work,
     .fini = teardown_work, .timeout = 60)
{
    int a = sub_dir(wfd, "a", 0755), b = sub_dir(wfd, "b", 0755);
    for (int i = 0; i < 300; i++) {
        char name[32];
        snprintf(name, sizeof name, "x%d", i);
        write_sized(a, name, 100 + (size_t)i, 0644);
    }
    must(linkat(a, "x5", b, "y", 0), "link", "y");
    must(linkat(a, "x7", wfd, "top", 0), "link", "top");
    put_file(wfd, "same", "s\n", 0644);
    close(a);
    close(b);
    close(sub_dir(wfd, "cp", 0755));
    close(sub_dir(wfd, "mp", 0755));
    struct run_result rc, rm;
    const char *cp_argv[] = {"cp", "-a", "a", "b", "top", "same", "same", "cp", NULL};
    run_in(work, false, cp_argv, &rc);
    run(&rm, (const char *const[]){"-a", "-j", "4", "a", "b", "top", "same", "same", "mp", NULL});
    cr_assert_eq(rm.status, rc.status, "cp %d: %s\nmpcp %d: %s", rc.status, rc.err, rm.status,
                 rm.err);
    cr_assert(strstr(rm.err, "specified more than once") != NULL, "%s", rm.err);
    compare_with("cp", "mp");
}

/*
 * A shell glob: 600 file operands of two folders (more than two batches of
 * operands), hard links among them and to a later folder operand; -v lines,
 * tree and status are cp's.
 */
Test(mpcp_parallel, many_file_operands_like_a_glob, .init = setup_work, .fini = teardown_work,
     .timeout = 60)
{
    int a = sub_dir(wfd, "a", 0755), b = sub_dir(wfd, "b", 0755);
    static char names[600][16];
    for (int i = 0; i < 599; i++) {
        snprintf(names[i], sizeof names[i], "%s/f%03d", i < 400 ? "a" : "b", i);
        write_sized(i < 400 ? a : b, names[i] + 2, 10 + (size_t)i, i % 2 ? 0644 : 0600);
    }
    snprintf(names[599], sizeof names[599], "b/f599");
    must(linkat(a, "f003", b, "f599", 0), "link", "f599");
    close(a);
    close(b);
    int d = sub_dir(wfd, "d", 0755);
    must(linkat(wfd, "a/f010", d, "inner", 0), "link", "inner");
    close(d);
    close(sub_dir(wfd, "cp", 0755));
    close(sub_dir(wfd, "mp", 0755));
    static const char *cp_argv[620], *mp_argv[620];
    int n = 0, m = 0;
    cp_argv[n++] = "cp";
    cp_argv[n++] = "-av";
    mp_argv[m++] = MPROC_MPCP_PATH;
    mp_argv[m++] = "-av";
    mp_argv[m++] = "-j";
    mp_argv[m++] = "4";
    for (int i = 0; i < 600; i++)
        cp_argv[n++] = mp_argv[m++] = names[i];
    cp_argv[n++] = mp_argv[m++] = "d";
    cp_argv[n++] = "cp";
    mp_argv[m++] = "mp";
    static struct run_result rc, rm;
    run_in(work, false, cp_argv, &rc);
    run_in(work, false, mp_argv, &rm);
    cr_assert_eq(rm.status, rc.status, "cp %d: %s\nmpcp %d: %s", rc.status, rc.err, rm.status,
                 rm.err);
    cr_assert_str_eq(rm.err, rc.err);
    size_t lines_cp = 0, lines_mp = 0;
    for (const char *c = rc.out; *c; c++)
        lines_cp += *c == '\n';
    for (const char *c = rm.out; *c; c++)
        lines_mp += *c == '\n';
    cr_assert_eq(lines_mp, lines_cp, "-v lines: cp %zu, mpcp %zu", lines_cp, lines_mp);
    cr_assert(strstr(rm.out, "'b/f599' -> 'mp/f599'\n") != NULL, "%s", rm.out);
    compare_with("cp", "mp");
}

/* ---- processes ---- */

static bool gone_within(pid_t pid, int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        if (kill(pid, 0) < 0 && errno == ESRCH)
            return true;
        usleep(10000);
    }
    return false;
}

/* Starts mpcp with args in work, stdout and stderr into the file "log". */
static pid_t start_mpcp(const char *const *args, bool no_retry)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(work) < 0)
            _exit(126);
        int log = open("log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        dup2(log, 1);
        dup2(log, 2);
        if (no_retry)
            setenv("MPCP_NO_RETRY", "1", 1);
        const char *argv[32] = {MPROC_MPCP_PATH};
        for (int i = 0; args[i]; i++)
            argv[i + 1] = args[i];
        execv(MPROC_MPCP_PATH, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static const char *read_log(void)
{
    static char buf[65536];
    int fd = openat(wfd, "log", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    read_all(fd, buf, sizeof buf);
    close(fd);
    return buf;
}

/*
 * Waits until a temporary with data appears in dir: a worker is copying
 * (the fifo "slow" stands for a large file, and holds the copy midway).
 * Returns the pid in its name: the worker's.
 */
static pid_t writing_worker(int dir)
{
    for (int i = 0; i < 10000; i++) {
        size_t n;
        char **names = list_names(dir, &n);
        pid_t pid = 0;
        for (size_t k = 0; k < n; k++) {
            struct stat st;
            if (!pid && !strncmp(names[k], ".mpcp-", 6) && fstatat(dir, names[k], &st, 0) == 0 &&
                st.st_size > 0)
                pid = (pid_t)strtol(names[k] + 6, NULL, 10);
            free(names[k]);
        }
        free(names);
        if (pid > 0)
            return pid;
        usleep(1000);
    }
    cr_assert_fail("no temporary with data appeared");
    return -1;
}

static int wait_status(pid_t pid, int timeout_ms, const char *what)
{
    int st = 0;
    for (int i = 0; i < timeout_ms / 10; i++) {
        pid_t got = waitpid(pid, &st, WNOHANG);
        if (got == pid)
            return st;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    cr_assert_fail("mpcp hung after %s", what);
    return st;
}

static void feed(int fd, size_t bytes)
{
    static char chunk[1 << 16];
    memset(chunk, 'x', sizeof chunk);
    for (size_t done = 0; done < bytes; done += sizeof chunk)
        cr_assert_eq(write(fd, chunk, sizeof chunk), (ssize_t)sizeof chunk);
}

/*
 * The copy of "slow" (a fifo read as a file) and "other/a" into o, by
 * workers: operands of two folders, so two tasks (file operands of one
 * folder share one).
 */
static pid_t start_slow_copy(int *writer, const char *jobs, bool no_retry)
{
    must(mkfifoat(wfd, "slow", 0644), "mkfifo", "slow");
    int other = sub_dir(wfd, "other", 0755);
    write_sized(other, "a", 5000, 0644);
    close(other);
    close(sub_dir(wfd, "o", 0755));
    pid_t pid =
        start_mpcp((const char *const[]){"-j", jobs, "slow", "other/a", "o", NULL}, no_retry);
    *writer = openat(wfd, "slow", O_WRONLY | O_CLOEXEC);
    must(*writer, "open", "slow");
    feed(*writer, 1 << 20);
    return pid;
}

static void rerun_finishes(int o)
{
    struct run_result r;
    run(&r, (const char *const[]){"-u", "other/a", "o", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(count_temporaries(o), 0, "the rerun left a temporary");
}

Test(mpcp_parallel, killed_worker_is_reported_per_entry, .init = setup_work, .fini = teardown_work,
     .timeout = 60)
{
    int w;
    pid_t pid = start_slow_copy(&w, "2", true);
    int o = openat(wfd, "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    pid_t worker = writing_worker(o);
    cr_assert_neq(worker, pid, "the temporary is mpcp's own, not a worker's");
    must(kill(worker, SIGKILL), "kill", "worker");
    int st = wait_status(pid, 20000, "a worker's death");
    close(w);
    const char *log = read_log();
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status 0x%x: %s", st, log);
    cr_assert(strstr(log, "mpcp: cannot copy 'slow': worker ") != NULL, "%s", log);
    cr_assert(strstr(log, "killed by signal 9") != NULL, "%s", log);
    struct stat fst;
    cr_assert_neq(fstatat(o, "slow", &fst, AT_SYMLINK_NOFOLLOW), 0, "a torn o/slow exists");
    cr_assert_eq(fstatat(o, "a", &fst, 0), 0, "the other operand was not copied: %s", log);
    /* The dead worker's temporary was swept when its task was reported. */
    cr_assert_eq(count_temporaries(o), 0);
    rerun_finishes(o);
    close(o);
}

Test(mpcp_parallel, killed_worker_is_retried_and_rerun_cleans, .init = setup_work,
     .fini = teardown_work, .timeout = 60)
{
    int w;
    pid_t pid = start_slow_copy(&w, "2", false);
    int o = openat(wfd, "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    pid_t worker = writing_worker(o);
    must(kill(worker, SIGKILL), "kill", "worker");
    /* The retry reopens the fifo; until then a write has no reader (EPIPE). */
    cr_assert(gone_within(worker, 5000));
    signal(SIGPIPE, SIG_IGN);
    static char chunk[4096];
    ssize_t put = -1;
    for (int i = 0; i < 1000 && put < 0; i++) {
        put = write(w, chunk, sizeof chunk);
        if (put < 0)
            usleep(10000);
    }
    cr_assert_eq(put, (ssize_t)sizeof chunk, "the retry never opened the fifo");
    close(w);
    int st = wait_status(pid, 20000, "a retried task");
    const char *log = read_log();
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x: %s", st, log);
    struct stat fst;
    cr_assert_eq(fstatat(o, "slow", &fst, AT_SYMLINK_NOFOLLOW), 0, "o/slow missing: %s", log);
    cr_assert(S_ISREG(fst.st_mode));
    /* At most the killed worker's temporary is left, and a rerun removes it. */
    cr_assert_leq(count_temporaries(o), 1);
    rerun_finishes(o);
    close(o);
}

/*
 * The pool's fork server killed mid-copy: its workers die with it, the pool
 * breaks, and mpcp says so, naming the fork server and the signal, copies
 * what was lost in its own process, and exits 1.
 */
Test(mpcp_parallel, killed_fork_server_is_said_and_the_rest_copied_here, .init = setup_work,
     .fini = teardown_work, .timeout = 60)
{
    int w;
    pid_t pid = start_slow_copy(&w, "2", false);
    int o = openat(wfd, "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    pid_t worker = writing_worker(o);
    pid_t server = 0;
    cr_assert_eq(test_children_of(pid, &server, 1), 1, "mpcp has no fork server");
    must(kill(server, SIGKILL), "kill", "fork server");
    cr_assert(gone_within(worker, 5000), "the worker outlived its fork server");
    /* The copy starts again here, reopening the fifo; until then a write has no reader. */
    signal(SIGPIPE, SIG_IGN);
    static char chunk[4096];
    ssize_t put = -1;
    for (int i = 0; i < 1000 && put < 0; i++) {
        put = write(w, chunk, sizeof chunk);
        if (put < 0)
            usleep(10000);
    }
    cr_assert_eq(put, (ssize_t)sizeof chunk, "the lost copy was never run again");
    close(w);
    int st = wait_status(pid, 20000, "its fork server's death");
    const char *log = read_log();
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status 0x%x: %s", st, log);
    char said[160];
    snprintf(said, sizeof said,
             "mpcp: the worker pool broke (fork server %d died: killed by signal 9", (int)server);
    cr_assert(strstr(log, said) != NULL, "expected '%s' in: %s", said, log);
    struct stat fst;
    cr_assert_eq(fstatat(o, "slow", &fst, AT_SYMLINK_NOFOLLOW), 0, "o/slow missing: %s", log);
    cr_assert(S_ISREG(fst.st_mode));
    cr_assert_eq(fstatat(o, "a", &fst, 0), 0, "o/a missing: %s", log);
    cr_assert_eq(count_temporaries(o), 0, "a temporary was left");
    close(o);
}

Test(mpcp_parallel, sigint_stops_workers_and_fork_server, .init = setup_work, .fini = teardown_work,
     .timeout = 60)
{
    int w;
    pid_t pid = start_slow_copy(&w, "4", false);
    int o = openat(wfd, "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    writing_worker(o);
    pid_t family[64];
    size_t n = test_family_of(pid, family, 64);
    /* The fork server starts its workers on its own time: wait for all of them. */
    for (int i = 0; i < 500 && n < 5; i++) {
        usleep(10000);
        n = test_family_of(pid, family, 64);
    }
    cr_assert_geq(n, 5, "expected a fork server and 4 workers, found %zu processes", n);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kill(pid, SIGINT);
    int st = wait_status(pid, 10000, "SIGINT");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(w);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT, "status 0x%x: %s", st, read_log());
    cr_assert_lt(secs, 5.0, "took %.1f s to stop", secs);
    for (size_t i = 0; i < n; i++)
        cr_assert(gone_within(family[i], 2000), "process %d outlived mpcp", (int)family[i]);
    struct stat fst;
    cr_assert_neq(fstatat(o, "slow", &fst, AT_SYMLINK_NOFOLLOW), 0, "a torn o/slow exists");
    cr_assert_eq(count_temporaries(o), 0, "a temporary was left behind");
    close(o);
}

/* ---- large files in ranges ---- */

/* A stream in which every 8 bytes differ: a range written at the wrong offset shows. */
static void write_random(int dir, const char *name, size_t size)
{
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    must(fd, "create", name);
    static uint64_t block[1 << 15];
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (size_t off = 0; off < size;) {
        for (size_t i = 0; i < sizeof block / sizeof block[0]; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block[i] = x;
        }
        size_t n = size - off < sizeof block ? size - off : sizeof block;
        cr_assert_eq(write(fd, block, n), (ssize_t)n);
        off += n;
    }
    close(fd);
}

/* The distinct source offsets of copy_file_range calls with explicit offsets, from strace. */
static size_t ranged_offsets(const char *trace)
{
    long long seen[64];
    size_t n = 0;
    for (const char *p = trace; (p = strstr(p, "copy_file_range(")) != NULL; p++) {
        long long off;
        if (sscanf(p, "copy_file_range(%*d, [%lld]", &off) != 1)
            continue;
        bool dup = false;
        for (size_t i = 0; i < n; i++)
            dup = dup || seen[i] == off;
        if (!dup && n < sizeof seen / sizeof seen[0])
            seen[n++] = off;
    }
    return n;
}

/*
 * A file above 64 MiB is copied in ranges by several workers into one
 * temporary, renamed with its metadata when every range is in: the copy is
 * the same, byte for byte (the size is no multiple of a range, and every
 * 8 bytes differ), with its mode and times, and no temporary is left.
 * strace, when installed, shows the ranges (copy_file_range at offsets).
 */
Test(mpcp_parallel, large_file_in_ranges_is_identical, .init = setup_work, .fini = teardown_work,
     .timeout = 120)
{
    int s = sub_dir(wfd, "s", 0755);
    write_random(s, "big", ((size_t)100 << 20) + 12345);
    write_sized(s, "small", 1000, 0644);
    stamp_tree(s, 1400000000);
    close(s);
    bool traced = system("command -v strace >/dev/null 2>&1") == 0;
    struct run_result r;
    if (traced) {
        /* LeakSanitizer cannot run under ptrace: the sanitizer build would fail at exit. */
        char asan[512];
        const char *was = getenv("ASAN_OPTIONS");
        snprintf(asan, sizeof asan, "%s%sdetect_leaks=0", was ? was : "", was ? ":" : "");
        setenv("ASAN_OPTIONS", asan, 1);
        const char *argv[] = {"strace",
                              "-f",
                              "-qq",
                              "-e",
                              "trace=copy_file_range",
                              "-o",
                              "trace",
                              MPROC_MPCP_PATH,
                              "-a",
                              "-j",
                              "4",
                              "s",
                              "o",
                              NULL};
        run_in(work, false, argv, &r);
    } else {
        run(&r, (const char *const[]){"-a", "-j", "4", "s", "o", NULL});
    }
    cr_assert_eq(r.status, 0, "%s", r.err);
    compare_with("s", "o");
    int o = openat(wfd, "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_eq(count_temporaries(o), 0);
    close(o);
    if (!traced)
        return;
    static char trace[1 << 16];
    int fd = openat(wfd, "trace", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    read_all(fd, trace, sizeof trace);
    close(fd);
    cr_assert_geq(ranged_offsets(trace), 3, "big was not copied in ranges:\n%s", trace);
}

/* A worker with the ranges' temporary open (named with mpcp's pid, not its own), or 0. */
static pid_t range_writer(pid_t mpcp)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "/.mpcp-%d-", (int)mpcp);
    pid_t family[64];
    size_t n = test_family_of(mpcp, family, 64);
    for (size_t i = 0; i < n; i++) {
        char dir[64];
        snprintf(dir, sizeof dir, "/proc/%d/fd", (int)family[i]);
        DIR *d = opendir(dir);
        if (!d)
            continue;
        bool writing = false;
        for (struct dirent *de = readdir(d); de && !writing; de = readdir(d)) {
            char link[PATH_MAX] = "";
            ssize_t len = readlinkat(dirfd(d), de->d_name, link, sizeof link - 1);
            writing = len > 0 && strstr(link, tmp) != NULL;
        }
        closedir(d);
        if (writing)
            return family[i];
    }
    return 0;
}

/* Copies a 512 MiB file in ranges with -j 2 and SIGKILLs a worker in the middle of one. */
static int kill_a_range_writer(bool no_retry)
{
    int s = sub_dir(wfd, "s", 0755);
    int fd = openat(s, "big", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    must(fd, "create", "big");
    /* Allocated, so not sparse (not copied in order for its holes), and made at once. */
    must(posix_fallocate(fd, 0, (off_t)512 << 20) == 0 ? 0 : -1, "fallocate", "big");
    close(fd);
    close(s);
    pid_t pid = start_mpcp((const char *const[]){"-a", "-j", "2", "s", "o", NULL}, no_retry);
    pid_t worker = 0;
    for (int i = 0; i < 20000 && !worker; i++) {
        worker = range_writer(pid);
        if (!worker)
            usleep(200);
    }
    cr_assert_gt(worker, 0, "no worker was seen writing a range: %s", read_log());
    cr_assert_neq(worker, pid, "the planner itself writes a range");
    must(kill(worker, SIGKILL), "kill", "worker");
    return wait_status(pid, 30000, "a range's worker died");
}

Test(mpcp_parallel, killed_range_worker_is_retried, .init = setup_work, .fini = teardown_work,
     .timeout = 120)
{
    int st = kill_a_range_writer(false);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x: %s", st, read_log());
    compare_with("s", "o");
    int o = openat(wfd, "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_eq(count_temporaries(o), 0);
    close(o);
}

Test(mpcp_parallel, killed_range_worker_fails_the_file_cleanly, .init = setup_work,
     .fini = teardown_work, .timeout = 120)
{
    int st = kill_a_range_writer(true);
    const char *log = read_log();
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status 0x%x: %s", st, log);
    cr_assert(strstr(log, "mpcp: cannot copy 's/big': worker ") == log, "%s", log);
    cr_assert(strstr(log, "killed by signal 9") != NULL, "%s", log);
    cr_assert_null(strchr(log, '\n') ? strchr(strchr(log, '\n') + 1, '\n') : NULL,
                   "more than one line: %s", log);
    int o = openat(wfd, "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat fst;
    cr_assert_neq(fstatat(o, "big", &fst, AT_SYMLINK_NOFOLLOW), 0, "a torn o/big exists");
    cr_assert_eq(count_temporaries(o), 0, "the ranges' temporary was left behind");
    close(o);
}

/* ---- progress ---- */

/* Every "NN.N%" of the output, in order; returns how many. */
static size_t percentages(const char *out, double *v, size_t max)
{
    size_t n = 0;
    for (const char *p = strchr(out, '%'); p && n < max; p = strchr(p + 1, '%')) {
        const char *q = p;
        while (q > out && (q[-1] == '.' || (q[-1] >= '0' && q[-1] <= '9')))
            q--;
        if (q < p)
            v[n++] = strtod(q, NULL);
    }
    return n;
}

Test(mpcp_parallel, progress_with_workers_ends_at_100_and_never_goes_back, .init = setup_work,
     .fini = teardown_work, .timeout = 60)
{
    must(mkfifoat(wfd, "slow", 0644), "mkfifo", "slow");
    close(sub_dir(wfd, "o", 0755));
    const char *argv[260] = {MPROC_MPCP_PATH, "-j", "4", "slow"};
    static char names[200][16];
    size_t argc = 4;
    for (int i = 0; i < 200; i++) {
        snprintf(names[i], sizeof names[i], "f%d", i);
        write_sized(wfd, names[i], 20000, 0644);
        argv[argc++] = names[i];
    }
    argv[argc++] = "o";
    argv[argc] = NULL;
    int master = -1;
    struct winsize ws = {.ws_row = 24, .ws_col = 120};
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(work) < 0)
            _exit(126);
        execv(MPROC_MPCP_PATH, (char *const *)argv);
        _exit(127);
    }
    int w = openat(wfd, "slow", O_WRONLY | O_CLOEXEC);
    must(w, "open", "slow");
    feed(w, 1 << 16);
    usleep(1500 * 1000); /* the bar appears after about a second */
    feed(w, 1 << 16);
    close(w);
    static char out[1 << 18];
    size_t len = 0;
    for (;;) {
        struct pollfd pfd = {master, POLLIN, 0};
        if (poll(&pfd, 1, 10000) <= 0 || len + 1 >= sizeof out)
            break;
        ssize_t n = read(master, out + len, sizeof out - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    out[len] = '\0';
    close(master);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x: %s", st, out);
    static double v[8192];
    size_t n = percentages(out, v, 8192);
    cr_assert_geq(n, 2, "too few progress lines: %s", out);
    for (size_t i = 1; i < n; i++)
        cr_assert_geq(v[i], v[i - 1], "the bar went back from %.1f to %.1f", v[i - 1], v[i]);
    cr_assert_float_eq(v[n - 1], 100.0, 0.01, "the bar ends at %.1f%%", v[n - 1]);
}
