/*
 * mpcp on slow storage: bench/slowfs (a FUSE passthrough that waits before
 * each request) is mounted for each test. Copies onto it and off it with the
 * default options, where mpcp sees a FUSE filesystem and keeps an adaptive
 * number of tasks in flight, give cp -a's tree (modes, times to the
 * nanosecond, owners, hard links, symlinks, fifos, xattrs); a worker killed
 * mid-copy is retried and the copy still completes; the processes and the
 * memory stay under the bounds mpcp.1 documents.
 *
 * Skipped, saying why, where /dev/fuse or libfuse3 (at build time) is missing.
 * The mount is undone by the test, and, should the test process die first,
 * by a guard process that waits for it (see mount_slowfs).
 */
#include "mpcp_tree.h"

#include <dirent.h>
#include <signal.h>
#include <sys/statfs.h>

#ifndef MPROC_SLOWFS_PATH
#define MPROC_SLOWFS_PATH ""
#endif

#define FUSE_MAGIC 0x65735546L
#define DELAY_US   "500"
/* mpcp.1: on slow storage, MPCP_MAX_JOBS workers (256) beside mpcp and its fork server. */
#define MAX_WORKERS      256
#define MAX_WORKERS_TEXT "256"

static char work[256], back[300], mnt[300];
static int wfd = -1;
static pid_t fs_pid = -1, guard_pid = -1;
static int guard_fd = -1;

static void skip_without_fuse(void)
{
    if (MPROC_SLOWFS_PATH[0] == '\0')
        cr_skip_test("libfuse3 was not found at build time: bench/slowfs is not built "
                     "(scripts/install-deps installs libfuse3-dev)");
    if (access("/dev/fuse", R_OK | W_OK) != 0)
        cr_skip_test("/dev/fuse is missing or not usable here: %s", strerror(errno));
}

static bool mounted(void)
{
    struct statfs fs;
    return statfs(mnt, &fs) == 0 && fs.f_type == FUSE_MAGIC;
}

/*
 * A guard in its own session waits for the end of a pipe whose other end
 * only this process holds: when the test process ends, however it ends
 * (a failed assertion, a crash, Criterion's timeout), the guard unmounts.
 */
static void start_guard(void)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    fflush(NULL);
    guard_pid = fork();
    cr_assert_geq(guard_pid, 0);
    if (guard_pid == 0) {
        setsid();
        close(p[1]);
        char c;
        while (read(p[0], &c, 1) < 0 && errno == EINTR) {
        }
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("fusermount3", "fusermount3", "-u", "-z", mnt, (char *)NULL);
        _exit(127);
    }
    close(p[0]);
    guard_fd = p[1];
}

static void mount_slowfs(void)
{
    skip_without_fuse();
    wfd = make_work_dir(work, sizeof work, "slowfs");
    snprintf(back, sizeof back, "%s/back", work);
    snprintf(mnt, sizeof mnt, "%s/mnt", work);
    must(mkdir(back, 0755), "mkdir", back);
    must(mkdir(mnt, 0755), "mkdir", mnt);
    start_guard();
    fs_pid = fork();
    cr_assert_geq(fs_pid, 0);
    if (fs_pid == 0) {
        execl(MPROC_SLOWFS_PATH, "slowfs", back, mnt, "-f", "--delay-us=" DELAY_US, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 2000 && !mounted(); i++) {
        int st;
        cr_assert_eq(waitpid(fs_pid, &st, WNOHANG), 0, "slowfs exited (status 0x%x)", st);
        usleep(10000);
    }
    cr_assert(mounted(), "slowfs did not mount %s within 20 s", mnt);
}

static void unmount_slowfs(void)
{
    if (fs_pid > 0) {
        pid_t um = fork();
        if (um == 0) {
            execlp("fusermount3", "fusermount3", "-u", mnt, (char *)NULL);
            _exit(127);
        }
        if (um > 0)
            waitpid(um, NULL, 0);
        int st;
        for (int i = 0; i < 500 && waitpid(fs_pid, &st, WNOHANG) == 0; i++)
            usleep(10000);
        if (kill(fs_pid, 0) == 0) {
            kill(fs_pid, SIGKILL);
            waitpid(fs_pid, NULL, 0);
        }
        fs_pid = -1;
    }
    if (guard_fd >= 0) {
        close(guard_fd); /* the guard's lazy unmount finds nothing mounted */
        waitpid(guard_pid, NULL, 0);
        guard_fd = -1;
    }
    if (wfd >= 0) {
        close(wfd);
        wfd = -1;
        remove_tree_at(AT_FDCWD, work);
    }
}

static void write_sized(int dir, const char *name, size_t size, mode_t mode)
{
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    must(fd, "create", name);
    char block[4096];
    for (size_t off = 0; off < size;) {
        size_t n = size - off < sizeof block ? size - off : sizeof block;
        for (size_t i = 0; i < n; i++)
            block[i] = (char)((off + i) * 7 + size);
        cr_assert_eq(write(fd, block, n), (ssize_t)n);
        off += n;
    }
    must(fchmod(fd, mode), "chmod", name);
    close(fd);
}

/*
 * The tree, on local storage (the work folder): folders of files of 0 to
 * 64 KiB with odd modes, hard links within and across folders, symlinks
 * (one dangling), a fifo, a user xattr, a read-only folder, owners other
 * than root, nanosecond times.
 */
static void make_tree(int files_per_dir)
{
    int s = sub_dir(wfd, "s", 0755);
    for (int d = 0; d < 6; d++) {
        char name[32];
        snprintf(name, sizeof name, "d%d", d);
        int sub = sub_dir(s, name, 0755);
        for (int f = 0; f < files_per_dir; f++) {
            snprintf(name, sizeof name, "f%03d", f);
            write_sized(sub, name, (size_t)(f % 17) * 3900, f % 5 ? 0644 : 0600);
        }
        must(symlinkat("f001", sub, "sym"), "symlink", "sym");
        must(symlinkat("nowhere", sub, "dangling"), "symlink", "dangling");
        close(sub);
    }
    must(linkat(s, "d0/f002", s, "d0/hl-within", 0), "link", "hl-within");
    must(linkat(s, "d0/f003", s, "d5/hl-across", 0), "link", "hl-across");
    must(mkfifoat(s, "d1/fifo", 0640), "mkfifo", "fifo");
    int x = openat(s, "d2/f004", O_RDONLY | O_CLOEXEC);
    must(x, "open", "d2/f004");
    must(fsetxattr(x, "user.note", "slow", 4, 0), "setxattr", "d2/f004");
    close(x);
    must(fchownat(s, "d3/f005", 1000, 1000, AT_SYMLINK_NOFOLLOW), "chown", "d3/f005");
    stamp_tree(s, 1400000000);
    must(fchmodat(s, "d4", 0555, 0), "chmod", "d4");
    close(s);
}

static int open_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    return fd;
}

static void compare_paths(const char *a, const char *b)
{
    int fa = open_dir(a), fb = open_dir(b);
    compare_trees(fa, fb, CMP_MTIME | CMP_OWNER);
    close(fa);
    close(fb);
}

static void run_mpcp(const char *env, const char *src, const char *dst, struct run_result *r)
{
    if (env)
        putenv((char *)env);
    run_in(work, false, (const char *const[]){MPROC_MPCP_PATH, "-a", "--json", src, dst, NULL}, r);
}

Test(mpcp_slowfs, copies_onto_and_off_slow_storage_are_exact, .init = mount_slowfs,
     .fini = unmount_slowfs, .timeout = 240)
{
    make_tree(60);
    char s[300], onto[320], off[320], back_onto[320];
    snprintf(s, sizeof s, "%s/s", work);
    snprintf(onto, sizeof onto, "%s/o", mnt);
    snprintf(back_onto, sizeof back_onto, "%s/o", back);
    snprintf(off, sizeof off, "%s/o2", work);
    static struct run_result r;
    run_mpcp("MPCP_ADAPT_TRACE=1", s, onto, &r);
    cr_assert_eq(r.status, 0, "onto slowfs: %s", r.err);
    /* A FUSE destination: the pool of the slow-storage default, not one per CPU. */
    cr_assert(strstr(r.out, "\"jobs\":" MAX_WORKERS_TEXT) != NULL, "not the slow-storage pool: %s",
              r.out);
    compare_paths(s, back_onto);
    run_mpcp(NULL, onto, off, &r);
    cr_assert_eq(r.status, 0, "off slowfs: %s", r.err);
    cr_assert(strstr(r.out, "\"jobs\":" MAX_WORKERS_TEXT) != NULL, "not the slow-storage pool: %s",
              r.out);
    compare_paths(s, off);
}

/* A worker writing a temporary in one of back/o's folders: its pid is in the name. */
static pid_t busy_worker(void)
{
    for (int d = 0; d < 6; d++) {
        char path[400];
        snprintf(path, sizeof path, "%s/o/d%d", back, d);
        DIR *dir = opendir(path);
        if (!dir)
            continue;
        pid_t pid = 0;
        for (struct dirent *de = readdir(dir); de && !pid; de = readdir(dir))
            if (!strncmp(de->d_name, ".mpcp-", 6))
                pid = (pid_t)strtol(de->d_name + 6, NULL, 10);
        closedir(dir);
        if (pid > 0)
            return pid;
    }
    return 0;
}

static int wait_exit(pid_t pid, int timeout_ms)
{
    int st = 0;
    for (int i = 0; i < timeout_ms / 10; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return st;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    cr_assert_fail("mpcp did not finish within %d ms", timeout_ms);
    return st;
}

/* Removes what a killed worker may leave (one temporary), and counts it. */
static int sweep_temporaries(void)
{
    int n = 0;
    for (int d = 0; d < 6; d++) {
        char path[400];
        snprintf(path, sizeof path, "%s/o/d%d", back, d);
        int fd = open_dir(path);
        size_t count;
        char **names = list_names(fd, &count);
        int before = n;
        for (size_t i = 0; i < count; i++) {
            if (!strncmp(names[i], ".mpcp-", 6) && unlinkat(fd, names[i], 0) == 0)
                n++;
            free(names[i]);
        }
        free(names);
        close(fd);
        if (n > before) {
            /* The removal touched the folder's times: back to the source's, as mpcp left them. */
            struct stat st;
            snprintf(path, sizeof path, "%s/s/d%d", work, d);
            must(stat(path, &st), "stat", path);
            struct timespec ts[2] = {st.st_atim, st.st_mtim};
            snprintf(path, sizeof path, "%s/o/d%d", back, d);
            must(utimensat(AT_FDCWD, path, ts, 0), "utimensat", path);
        }
    }
    return n;
}

Test(mpcp_slowfs, worker_killed_mid_copy_is_retried, .init = mount_slowfs, .fini = unmount_slowfs,
     .timeout = 240)
{
    make_tree(150);
    pid_t pid = start_mpcp_quiet(work, (const char *const[]){"-a", "s", "mnt/o", NULL});
    pid_t victim = 0;
    for (int i = 0; i < 20000 && !victim; i++) {
        victim = busy_worker();
        if (!victim)
            usleep(500);
    }
    cr_assert_gt(victim, 0, "no worker was seen writing a temporary");
    cr_assert_neq(victim, pid, "the temporary is mpcp's own, not a worker's");
    must(kill(victim, SIGKILL), "kill", "worker");
    int st = wait_exit(pid, 180000);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x after a worker's death", st);
    /* The retried task wrote its entries again; at most the dead one's temporary is left. */
    cr_assert_leq(sweep_temporaries(), 1);
    char s[300], o[320];
    snprintf(s, sizeof s, "%s/s", work);
    snprintf(o, sizeof o, "%s/o", back);
    compare_paths(s, o);
}

/* The largest number of mpcp's descendants seen while it runs; its status. */
static size_t peak_family(const char *env, int *status, struct rusage *ru)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (env)
            putenv((char *)env);
        if (chdir(work) < 0)
            _exit(126);
        execl(MPROC_MPCP_PATH, MPROC_MPCP_PATH, "-a", "s", "mnt/o", (char *)NULL);
        _exit(127);
    }
    size_t peak = 0;
    pid_t fam[4096];
    for (;;) {
        size_t n = test_family_of(pid, fam, sizeof fam / sizeof fam[0]);
        if (n > peak)
            peak = n;
        pid_t got = wait4(pid, status, WNOHANG, ru);
        cr_assert_geq(got, 0);
        if (got == pid)
            return peak;
        usleep(2000);
    }
}

Test(mpcp_slowfs, processes_and_memory_stay_under_the_bounds, .init = mount_slowfs,
     .fini = unmount_slowfs, .timeout = 240)
{
    make_tree(60);
    int st;
    struct rusage ru;
    size_t peak = peak_family(NULL, &st, &ru);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x", st);
    /* The fork server and MAX_WORKERS workers; more workers than CPUs were used. */
    cr_assert_leq(peak, (size_t)MAX_WORKERS + 1, "%zu processes", peak);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_assert_gt(peak, (size_t)cpus + 1, "only %zu processes: the pool followed the CPUs", peak);
    /* mpcp.1: no process of the run grows past 64 MiB (ru_maxrss is in KiB). */
    cr_assert_lt(ru.ru_maxrss, 64 * 1024, "a process of the run peaked at %ld KiB", ru.ru_maxrss);
    char o[320];
    snprintf(o, sizeof o, "%s/o", back);
    remove_tree_at(AT_FDCWD, o);
    /* MPCP_MAX_JOBS bounds the pool. */
    peak = peak_family("MPCP_MAX_JOBS=6", &st, &ru);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x", st);
    cr_assert_leq(peak, (size_t)6 + 1, "%zu processes with MPCP_MAX_JOBS=6", peak);
}

/* Workers start as tasks wait for them: a copy of 57 entries has no use for 256. */
Test(mpcp_slowfs, a_small_copy_starts_only_the_workers_it_needs, .init = mount_slowfs,
     .fini = unmount_slowfs, .timeout = 120)
{
    make_tree(6); /* 6 folders of 6 files and 2 symlinks, 2 links, a fifo: 57 entries */
    int st;
    struct rusage ru;
    size_t peak = peak_family(NULL, &st, &ru);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x", st);
    cr_assert_leq(peak, (size_t)1 + 57, "%zu processes for a copy of 57 entries", peak);
}

/*
 * The window's largest size in MPCP_ADAPT_TRACE's lines so far ("... window
 * N"), at least start; false while no decision has been printed yet.
 */
static bool largest_window(const char *trace, size_t start, size_t *largest)
{
    *largest = start;
    bool decided = false;
    for (const char *at = strstr(trace, "window "); at; at = strstr(at + 1, "window ")) {
        size_t n = (size_t)strtoul(at + 7, NULL, 10);
        if (n > *largest)
            *largest = n;
        decided = true;
    }
    return decided;
}

/*
 * The pool starts workers for the window, not for every task in flight
 * (four per worker): until the first measurement the window is a quarter
 * of MPCP_MAX_JOBS, and afterwards no more workers run than the window
 * has been at its largest.
 */
Test(mpcp_slowfs, the_workers_follow_the_window_not_the_tasks, .init = mount_slowfs,
     .fini = unmount_slowfs, .timeout = 240)
{
    make_tree(60);
    int err[2];
    must(pipe2(err, O_CLOEXEC), "pipe2", "");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(err[1], 2);
        putenv("MPCP_MAX_JOBS=16");
        putenv("MPCP_ADAPT_TRACE=1");
        if (chdir(work) < 0)
            _exit(126);
        execl(MPROC_MPCP_PATH, MPROC_MPCP_PATH, "-a", "s", "mnt/o", (char *)NULL);
        _exit(127);
    }
    close(err[1]);
    must(fcntl(err[0], F_SETFL, O_NONBLOCK), "fcntl", "");
    static char trace[1 << 16];
    size_t len = 0, start = 4, peak_before = 0, peak_after = 0, largest = start;
    size_t over = 0, over_window = 0; /* the first count past the window, and that window */
    pid_t fam[4096];
    int st = 0;
    for (;;) {
        /* Counted before the trace is read: mpcp prints a window before it starts workers for it.
         */
        size_t n = test_family_of(pid, fam, sizeof fam / sizeof fam[0]);
        ssize_t got = read(err[0], trace + len, sizeof trace - 1 - len);
        if (got > 0)
            len += (size_t)got;
        trace[len] = '\0';
        bool decided = largest_window(trace, start, &largest);
        size_t *peak = decided ? &peak_after : &peak_before;
        if (n > *peak)
            *peak = n;
        /* The fork server and the workers, no more than the window allows. */
        if (n > largest + 1 && !over) {
            over = n;
            over_window = largest;
        }
        if (waitpid(pid, &st, WNOHANG) == pid)
            break;
        usleep(1000);
    }
    close(err[0]);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x:\n%s", st, trace);
    cr_assert_eq(over, 0, "%zu processes with a window of at most %zu:\n%s", over, over_window,
                 trace);
    cr_assert_gt(peak_before, 1, "no worker seen before the first measurement");
    /* The fill is judged once, before any period: the window stays or steps to 4x (adapt.c). */
    const char *fill = strstr(trace, "% idle: window "), *period = strstr(trace, "work/s");
    cr_assert(fill && (!period || fill < period), "no judgement of the fill first:\n%s", trace);
    size_t filled = (size_t)strtoul(fill + strlen("% idle: window "), NULL, 10);
    cr_assert(filled == start || filled == 4 * start, "the fill gave a window of %zu:\n%s", filled,
              trace);
    const char *again = strstr(fill + 1, "% idle: window ");
    cr_assert(!again || (period && again > period), "the fill judged twice:\n%s", trace);
    cr_log_info("peak %zu processes before the first measurement, %zu after; window up to %zu",
                peak_before, peak_after, largest);
}
