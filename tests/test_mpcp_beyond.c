/*
 * mpcp beyond cp: atomic writes under SIGKILL and the rerun that finishes
 * the job, trees deeper than PATH_MAX, the progress bar on a terminal and
 * its absence in a pipe, --reflink=always failing cleanly, ENOSPC on a small
 * tmpfs, sparse files, summaries, --dry-run, and the task byte format that
 * pool workers will receive.
 */
#include "mpcp_tree.h"

#include <mproc.h>

#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <linux/fiemap.h>
#include <linux/fs.h>

/* The task format, compiled in: the pool integration relies on it. */
#include "../tools/mpcp/task.c"

static char work[256];
static int wfd = -1;

/* work + "/" + name, in a static buffer. */
static const char *work_path(const char *dir, const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static void setup_work(void)
{
    wfd = make_work_dir(work, sizeof work, "beyond");
}

static void teardown_work(void)
{
    char mnt[300];
    snprintf(mnt, sizeof mnt, "%s/mnt", work);
    umount2(mnt, MNT_DETACH); /* the ENOSPC case's tmpfs, if an assertion left it */
    if (wfd >= 0)
        close(wfd);
    wfd = -1;
    remove_tree_at(AT_FDCWD, work);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* Criterion does not run .fini after a skip: clean up first. */
#define SKIP(...)                                                                                  \
    do {                                                                                           \
        teardown_work();                                                                           \
        cr_skip_test(__VA_ARGS__);                                                                 \
    } while (0)

static void mpcp(struct run_result *r, const char *const *args)
{
    const char *argv[32] = {MPROC_MPCP_PATH};
    for (int i = 0; args[i]; i++)
        argv[i + 1] = args[i];
    run_in(work, false, argv, r);
}

static void write_pattern(int dir, const char *name, size_t size)
{
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    must(fd, "create", name);
    static char block[1 << 16];
    for (size_t off = 0; off < size;) {
        size_t n = size - off < sizeof block ? size - off : sizeof block;
        for (size_t i = 0; i < n; i++)
            block[i] = (char)((off + i) * 31 + 7);
        cr_assert_eq(write(fd, block, n), (ssize_t)n);
        off += n;
    }
    close(fd);
}

static void same_file_content(int da, const char *a, int db, const char *b)
{
    struct stat sa, sb;
    cr_assert_eq(fstatat(da, a, &sa, 0), 0, "%s", a);
    cr_assert_eq(fstatat(db, b, &sb, 0), 0, "%s missing", b);
    cr_assert_eq(sa.st_size, sb.st_size, "%s: size %ld, expected %ld", b, (long)sb.st_size,
                 (long)sa.st_size);
    compare_content(da, db, a, b);
}

/* ---- atomic writes ---- */

Test(mpcp_beyond, sigkill_leaves_no_torn_file_and_rerun_finishes, .init = setup_work,
     .fini = teardown_work, .timeout = 60)
{
    int s = sub_dir(wfd, "s", 0755);
    write_pattern(s, "big", 8 << 20);
    write_pattern(s, "a", 1000);
    int o = sub_dir(wfd, "o", 0755);
    must(mkfifoat(wfd, "slow", 0644), "mkfifo", "slow");
    /* A fifo source (read as a file without -r) lets the test stop the copy midway. */
    pid_t pid = start_mpcp_quiet(work, (const char *const[]){"slow", "o/big", NULL});
    int w = openat(wfd, "slow", O_WRONLY | O_CLOEXEC);
    must(w, "open", "slow");
    static char chunk[1 << 20];
    memset(chunk, 'x', sizeof chunk);
    cr_assert_eq(write(w, chunk, sizeof chunk), (ssize_t)sizeof chunk);
    /* Wait until the temporary holds data, then kill mid-copy. */
    bool seen = false;
    for (int i = 0; i < 5000 && !seen; i++) {
        size_t n;
        char **names = list_names(o, &n);
        for (size_t k = 0; k < n; k++) {
            struct stat st;
            if (!strncmp(names[k], ".mpcp-", 6) && fstatat(o, names[k], &st, 0) == 0 &&
                st.st_size > 0)
                seen = true;
            free(names[k]);
        }
        free(names);
        if (!seen)
            usleep(1000);
    }
    cr_assert(seen, "no temporary with data appeared");
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    close(w);
    cr_assert(WIFSIGNALED(st));
    struct stat fst;
    cr_assert_neq(fstatat(o, "big", &fst, AT_SYMLINK_NOFOLLOW), 0, "a torn o/big exists");
    cr_assert_eq(count_temporaries(o), 1);

    /* The rerun with -u copies what is missing and removes the dead run's temporary. */
    struct run_result r;
    mpcp(&r, (const char *const[]){"-rTu", "s", "o", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    same_file_content(s, "big", o, "big");
    same_file_content(s, "a", o, "a");
    cr_assert_eq(count_temporaries(o), 0);
    close(s);
    close(o);
}

Test(mpcp_beyond, rerun_with_u_cleans_dead_runs_temporaries, .init = setup_work,
     .fini = teardown_work, .timeout = 30)
{
    put_file(wfd, "f", "data\n", 0644);
    int o = sub_dir(wfd, "o", 0755);
    /* pid 1 is alive: its temporary is not ours to remove; 999999 is gone. */
    put_file(o, ".mpcp-999999-7~f", "partial", 0600);
    put_file(o, ".mpcp-1-7~f", "not ours", 0600);
    struct run_result r;
    mpcp(&r, (const char *const[]){"-u", "f", "o", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    struct stat st;
    cr_assert_neq(fstatat(o, ".mpcp-999999-7~f", &st, 0), 0, "dead run's temporary left");
    cr_assert_eq(fstatat(o, ".mpcp-1-7~f", &st, 0), 0, "a live process's temporary was removed");
    same_file_content(wfd, "f", o, "f");
    close(o);
}

Test(mpcp_beyond, sigint_removes_the_temporary, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    int o = sub_dir(wfd, "o", 0755);
    must(mkfifoat(wfd, "slow", 0644), "mkfifo", "slow");
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(work) < 0)
            _exit(126);
        execl(MPROC_MPCP_PATH, MPROC_MPCP_PATH, "slow", "o/big", (char *)NULL);
        _exit(127);
    }
    int w = openat(wfd, "slow", O_WRONLY | O_CLOEXEC);
    must(w, "open", "slow");
    cr_assert_eq(write(w, "some data\n", 10), 10);
    for (int i = 0; i < 5000 && count_temporaries(o) == 0; i++)
        usleep(1000);
    cr_assert_eq(count_temporaries(o), 1, "no temporary appeared");
    /* While it is written, the new file is the owner's only (cp's rule too). */
    size_t n;
    char **names = list_names(o, &n);
    struct stat tst;
    cr_assert_eq(fstatat(o, names[0], &tst, AT_SYMLINK_NOFOLLOW), 0);
    cr_assert_eq(tst.st_mode & 077, 0, "temporary mode %o", tst.st_mode & 07777);
    free(names[0]);
    free(names);
    /* mpcp is blocked reading the fifo: SIGINT must get it out and clean up. */
    kill(pid, SIGINT);
    int st;
    waitpid(pid, &st, 0);
    close(w);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT, "status 0x%x", st);
    struct stat fst;
    cr_assert_neq(fstatat(o, "big", &fst, AT_SYMLINK_NOFOLLOW), 0, "a torn o/big exists");
    cr_assert_eq(count_temporaries(o), 0, "the temporary was left behind");
    close(o);
}

Test(mpcp_beyond, replacement_is_atomic_for_readers, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    put_file(wfd, "new", "new content\n", 0644);
    put_file(wfd, "dst", "old content\n", 0640);
    int reader = openat(wfd, "dst", O_RDONLY | O_CLOEXEC);
    struct run_result r;
    mpcp(&r, (const char *const[]){"new", "dst", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    char buf[64] = "";
    cr_assert_gt(read(reader, buf, sizeof buf - 1), 0);
    /* The old inode was never truncated: a reader sees the old file whole. */
    cr_assert_str_eq(buf, "old content\n");
    close(reader);
    same_file_content(wfd, "new", wfd, "dst");
    struct stat st;
    fstatat(wfd, "dst", &st, 0);
    cr_assert_eq(st.st_mode & 07777, 0640, "an existing file keeps its mode, as with cp");
}

Test(mpcp_beyond, inplace_writes_the_same_inode, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    put_file(wfd, "new", "new\n", 0644);
    put_file(wfd, "dst", "old old old\n", 0644);
    struct stat before, after;
    fstatat(wfd, "dst", &before, 0);
    struct run_result r;
    mpcp(&r, (const char *const[]){"--inplace", "new", "dst", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    fstatat(wfd, "dst", &after, 0);
    cr_assert_eq(before.st_ino, after.st_ino);
    same_file_content(wfd, "new", wfd, "dst");
}

/* ---- deep trees ---- */

static void check_deep(int root, const char *top, int depth, const char *comp)
{
    int fd = openat(root, top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", top, strerror(errno));
    for (int i = 0; i < depth; i++) {
        int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(next, 0, "level %d: %s", i, strerror(errno));
        close(fd);
        fd = next;
    }
    char buf[16] = "";
    int leaf = openat(fd, "leaf", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(leaf, 0, "leaf missing");
    cr_assert_eq(read(leaf, buf, sizeof buf - 1), 5);
    cr_assert_str_eq(buf, "deep\n");
    close(leaf);
    close(fd);
}

Test(mpcp_beyond, tree_deeper_than_path_max, .init = setup_work, .fini = teardown_work,
     .timeout = 60)
{
    char comp[201];
    memset(comp, 'd', 200);
    comp[200] = '\0';
    int depth = 40; /* 40 x 201 bytes: about twice PATH_MAX */
    int fd = sub_dir(wfd, "deep", 0755);
    for (int i = 0; i < depth; i++) {
        int next = sub_dir(fd, comp, 0755);
        close(fd);
        fd = next;
    }
    put_file(fd, "leaf", "deep\n", 0644);
    close(fd);
    struct run_result r;
    mpcp(&r, (const char *const[]){"-a", "deep", "out", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    check_deep(wfd, "out", depth, comp);
    /* The same through the worker path: folders resolved from the roots by name. */
    setenv("MPCP_TASK_RESOLVE", "1", 1);
    mpcp(&r, (const char *const[]){"-a", "deep", "out2", NULL});
    unsetenv("MPCP_TASK_RESOLVE");
    cr_assert_eq(r.status, 0, "%s", r.err);
    check_deep(wfd, "out2", depth, comp);
}

/* ---- --version ---- */

/* GNU style: "NAME (PACKAGE) VERSION", copyright, license, free software, no warranty. */
Test(mpcp_beyond, version_is_gnu_style_with_the_project_version, .init = setup_work,
     .fini = teardown_work, .timeout = 30)
{
    static struct run_result r;
    mpcp(&r, (const char *const[]){"--version", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_empty(r.err);
    cr_assert_str_eq(MPROC_PROJECT_VERSION, MPROC_VERSION_STRING,
                     "project() says %s, the header %s", MPROC_PROJECT_VERSION,
                     MPROC_VERSION_STRING);
    const char *lines[] = {"mpcp (mproc) " MPROC_PROJECT_VERSION "\n", "Copyright (C) ", "License ",
                           ("This is free software: you are free to change and "
                            "redistribute it.\n"),
                           "There is NO WARRANTY, to the extent permitted by law.\n"};
    const char *at = r.out;
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        cr_assert(strncmp(at, lines[i], strlen(lines[i])) == 0, "line %zu is not '%s' in:\n%s",
                  i + 1, lines[i], r.out);
        at = strchr(at, '\n');
        cr_assert_not_null(at);
        at++;
    }
    cr_assert_str_empty(at, "more after the warranty line: %s", at);
}

/* ---- progress ---- */

/* Runs mpcp with a fifo source held open ~1.3 s so that the bar has time to show. */
static void slow_run(bool pty, const char *extra, char *out, size_t size, int *status)
{
    must(mkfifoat(wfd, "slow", 0644), "mkfifo", "slow");
    put_file(wfd, "f1", "one\n", 0644);
    close(sub_dir(wfd, "o", 0755));
    int master = -1, errp[2] = {-1, -1};
    pid_t pid;
    if (pty) {
        struct winsize ws = {.ws_row = 24, .ws_col = 120};
        pid = forkpty(&master, NULL, NULL, &ws);
    } else {
        cr_assert_eq(pipe2(errp, O_CLOEXEC), 0);
        pid = fork();
    }
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (!pty)
            dup2(errp[1], 2);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        if (chdir(work) < 0)
            _exit(126);
        if (extra)
            execl(MPROC_MPCP_PATH, MPROC_MPCP_PATH, extra, "slow", "f1", "o", (char *)NULL);
        execl(MPROC_MPCP_PATH, MPROC_MPCP_PATH, "slow", "f1", "o", (char *)NULL);
        _exit(127);
    }
    int rfd = pty ? master : errp[0];
    if (!pty)
        close(errp[1]);
    int w = openat(wfd, "slow", O_WRONLY | O_CLOEXEC);
    cr_assert_geq(w, 0);
    cr_assert_eq(write(w, "data\n", 5), 5);
    usleep(1300 * 1000);
    close(w);
    size_t len = 0;
    for (;;) {
        struct pollfd pfd = {rfd, POLLIN, 0};
        if (poll(&pfd, 1, 10000) <= 0)
            break;
        ssize_t n = read(rfd, out + len, size - 1 - len);
        if (n <= 0)
            break; /* EIO on the pty master once the child is gone */
        len += (size_t)n;
    }
    out[len] = '\0';
    close(rfd);
    int st;
    waitpid(pid, &st, 0);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

Test(mpcp_beyond, progress_bar_on_a_terminal, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    static char out[65536];
    int status;
    slow_run(true, NULL, out, sizeof out, &status);
    cr_assert_eq(status, 0, "%s", out);
    cr_assert(strchr(out, '%') != NULL, "no percentage in: %s", out);
    cr_assert(strstr(out, "ETA") != NULL, "no ETA in: %s", out);
    cr_assert(strstr(out, "/s") != NULL, "no rate in: %s", out);
    cr_assert(strstr(out, "100.0%") != NULL, "the bar does not end at 100%%: %s", out);
}

static void assert_no_controls(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        cr_assert(*p == '\n' || (*p >= 0x20 && *p != 0x7f), "control byte 0x%02x in: %s", *p, s);
}

Test(mpcp_beyond, no_progress_into_a_pipe, .init = setup_work, .fini = teardown_work, .timeout = 30)
{
    static char out[65536];
    int status;
    slow_run(false, NULL, out, sizeof out, &status);
    cr_assert_eq(status, 0, "%s", out);
    cr_assert_str_empty(out, "stderr should be empty: %s", out);
}

Test(mpcp_beyond, forced_progress_into_a_pipe_is_plain_lines, .init = setup_work,
     .fini = teardown_work, .timeout = 30)
{
    static char out[65536];
    int status;
    slow_run(false, "--progress", out, sizeof out, &status);
    cr_assert_eq(status, 0, "%s", out);
    assert_no_controls(out);
}

/*
 * The demo's kind of tree (scripts/make-tree): files in folders, hard links
 * across folders, a sparse file, symlinks (relative, dangling, to a folder),
 * a fifo. The sparse file holds 64 KiB of data in 48 MiB: counted by its
 * size, the total was 48 MiB too large until the end.
 */
static void make_demo_tree(int dir)
{
    int top = sub_dir(dir, "src", 0755);
    static char data[20000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (char)('a' + i % 23);
    for (int d = 0; d < 4; d++) {
        char name[16];
        snprintf(name, sizeof name, "dir%d", d);
        int sub = sub_dir(top, name, 0755);
        for (int f = 0; f < 40; f++) {
            char fname[16];
            snprintf(fname, sizeof fname, "file%02d", f);
            int fd = openat(sub, fname, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            must(fd, "create", fname);
            size_t len = 1000 + (size_t)(d * 40 + f) * 97;
            cr_assert_eq(write(fd, data, len), (ssize_t)len);
            close(fd);
        }
        close(sub);
    }
    /* Hard links: the second folder's files under other names in the third. */
    for (int f = 0; f < 10; f++) {
        char from[32], to[32];
        snprintf(from, sizeof from, "dir1/file%02d", f);
        snprintf(to, sizeof to, "dir2/hardlink%02d", f);
        must(linkat(top, from, top, to, 0), "link", to);
    }
    int sp = openat(top, "sparse.img", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    must(sp, "create", "sparse.img");
    static char block[65536];
    memset(block, 'z', sizeof block);
    cr_assert_eq(pwrite(sp, block, sizeof block, (off_t)48 << 20), (ssize_t)sizeof block);
    close(sp);
    must(symlinkat("dir0/file00", top, "link-relative"), "symlink", "link-relative");
    must(symlinkat("no/such/file", top, "link-dangling"), "symlink", "link-dangling");
    must(symlinkat("dir1", top, "link-to-dir"), "symlink", "link-to-dir");
    must(mkfifoat(top, "fifo", 0644), "mkfifo", "fifo");
    close(top);
}

/* Runs mpcp with args in work on a terminal, every step drawn; out gets what it showed. */
static int pty_run(const char *const *args, char *out, size_t size)
{
    const char *argv[16] = {MPROC_MPCP_PATH};
    size_t argc = 1;
    for (; args[argc - 1] && argc < 15; argc++)
        argv[argc] = args[argc - 1];
    argv[argc] = NULL;
    int master = -1;
    struct winsize ws = {.ws_row = 24, .ws_col = 200};
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(work) < 0)
            _exit(126);
        setenv("MPCP_PROGRESS_EVERY_STEP", "1", 1);
        execv(MPROC_MPCP_PATH, (char *const *)argv);
        _exit(127);
    }
    size_t len = 0;
    for (;;) {
        struct pollfd pfd = {master, POLLIN, 0};
        if (poll(&pfd, 1, 20000) <= 0)
            break;
        char tmp[4096];
        ssize_t n = read(master, tmp, sizeof tmp);
        if (n <= 0)
            break; /* EIO once the child is gone */
        size_t take = (size_t)n < size - 1 - len ? (size_t)n : size - 1 - len;
        memcpy(out + len, tmp, take);
        len += take;
    }
    out[len] = '\0';
    close(master);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A bar's totals: "[...] 42.0% DONE/TOTAL F/FT files ..." or "DONE/TOTAL+ F/FT+ files ...
 * (counting...)". */
struct bar {
    bool counting;
    char done[32], total[32];
    unsigned long long files, files_total;
};

static bool parse_bar(const char *line, struct bar *b)
{
    memset(b, 0, sizeof *b);
    b->counting = strstr(line, "(counting...)") != NULL;
    const char *p = line;
    if (line[0] == '[') {
        p = strstr(line, "% ");
        if (!p)
            return false;
        p += 2;
    }
    const char *slash = strchr(p, '/');
    const char *files = strstr(p, " files");
    if (!slash || !files || slash > files)
        return false;
    const char *fpart = files;
    while (fpart > p && fpart[-1] != ' ')
        fpart--;
    if (fpart <= slash + 1)
        return false;
    snprintf(b->done, sizeof b->done, "%.*s", (int)(slash - p), p);
    snprintf(b->total, sizeof b->total, "%.*s", (int)(fpart - 1 - slash - 1), slash + 1);
    size_t tl = strlen(b->total);
    if (tl && b->total[tl - 1] == '+')
        b->total[tl - 1] = '\0';
    return sscanf(fpart, "%llu/%llu", &b->files, &b->files_total) == 2;
}

/*
 * The property: while the count runs its total only grows; the first bar
 * after the count has the final total (bytes and files), and the last bar
 * reaches it.
 */
static void check_bars(char *out, size_t min_files)
{
    static struct bar bars[8192];
    size_t n = 0;
    for (char *line = strtok(out, "\r\n"); line && n < 8192; line = strtok(NULL, "\r\n")) {
        char *esc;
        while ((esc = strstr(line, "\033[K")) != NULL)
            memmove(esc, esc + 3, strlen(esc + 3) + 1);
        if (line[0] && parse_bar(line, &bars[n]))
            n++;
    }
    cr_assert_geq(n, 2, "too few bars");
    size_t first = n;
    for (size_t i = 0; i < n; i++) {
        if (!bars[i].counting) {
            first = i;
            break;
        }
        if (i > 0)
            cr_assert_geq(bars[i].files_total, bars[i - 1].files_total,
                          "the total went back while counting");
    }
    cr_assert_lt(first, n, "no bar after the count");
    const struct bar *f = &bars[first], *last = &bars[n - 1];
    cr_assert_str_eq(f->total, last->total, "total %s after the count, %s at the end", f->total,
                     last->total);
    cr_assert_eq(f->files_total, last->files_total, "%llu files after the count, %llu at the end",
                 f->files_total, last->files_total);
    for (size_t i = first; i < n; i++) {
        cr_assert(!bars[i].counting, "counting again after the count");
        cr_assert_str_eq(bars[i].total, last->total, "bar %zu's total %s, the end's %s", i,
                         bars[i].total, last->total);
    }
    cr_assert_str_eq(last->done, last->total, "ends at %s of %s", last->done, last->total);
    cr_assert_eq(last->files, last->files_total);
    cr_assert_geq(last->files_total, min_files);
}

Test(mpcp_beyond, progress_total_is_final_once_counted, .init = setup_work, .fini = teardown_work,
     .timeout = 120)
{
    make_demo_tree(wfd);
    static char out[1 << 21];
    int status =
        pty_run((const char *const[]){"-a", "-j", "2", "src", "dst", NULL}, out, sizeof out);
    cr_assert_eq(status, 0, "%s", out);
    /* 160 files, 10 hard links, the sparse file, 3 symlinks, a fifo. */
    check_bars(out, 175);
}

Test(mpcp_beyond, progress_total_leaves_out_what_no_clobber_keeps, .init = setup_work,
     .fini = teardown_work, .timeout = 120)
{
    make_demo_tree(wfd);
    /* The destination has dir0 and dir1 already: -n keeps them, their bytes are not written. */
    int status = pty_run((const char *const[]){"-a", "src", "dst", NULL}, (char[65536]){0}, 65536);
    cr_assert_eq(status, 0);
    remove_tree_at(wfd, "dst/dir2");
    remove_tree_at(wfd, "dst/dir3");
    must(unlinkat(wfd, "dst/sparse.img", 0), "unlink", "dst/sparse.img");
    static char out[1 << 21];
    status =
        pty_run((const char *const[]){"-a", "-n", "-j", "2", "src", "dst", NULL}, out, sizeof out);
    cr_assert_eq(status, 0, "%s", out);
    check_bars(out, 80);
}

/* ---- data paths ---- */

static bool fs_can_clone(int dir)
{
    int a = openat(dir, ".clone-a", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int b = openat(dir, ".clone-b", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert_eq(write(a, "x", 1), 1);
    bool ok = ioctl(b, FICLONE, a) == 0;
    close(a);
    close(b);
    unlinkat(dir, ".clone-a", 0);
    unlinkat(dir, ".clone-b", 0);
    return ok;
}

Test(mpcp_beyond, reflink_always_fails_cleanly, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    if (fs_can_clone(wfd))
        SKIP("this filesystem supports FICLONE");
    put_file(wfd, "f", "data\n", 0644);
    struct run_result r;
    mpcp(&r, (const char *const[]){"--reflink=always", "f", "g", NULL});
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "mpcp: failed to clone 'g' from 'f': ") == r.err, "%s", r.err);
    struct stat st;
    cr_assert_neq(fstatat(wfd, "g", &st, 0), 0, "a destination was left behind");
    cr_assert_eq(count_temporaries(wfd), 0);
}

/* True when the first extent of the file is shared with another file (a reflink). */
static bool first_extent_shared(int dir, const char *name)
{
    int fd = openat(dir, name, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    struct fiemap *map = calloc(1, sizeof *map + sizeof(struct fiemap_extent));
    cr_assert_not_null(map);
    map->fm_length = FIEMAP_MAX_OFFSET;
    map->fm_flags = FIEMAP_FLAG_SYNC;
    map->fm_extent_count = 1;
    int rc = ioctl(fd, FS_IOC_FIEMAP, map);
    close(fd);
    bool shared = rc == 0 && map->fm_mapped_extents == 1 &&
                  (map->fm_extents[0].fe_flags & FIEMAP_EXTENT_SHARED);
    free(map);
    return shared;
}

/* Where the machine allows it: a loop-mounted btrfs, where clones work. */
Test(mpcp_beyond, reflink_on_a_btrfs_image, .init = setup_work, .fini = teardown_work,
     .timeout = 120)
{
    if (system("command -v mkfs.btrfs >/dev/null 2>&1") != 0)
        SKIP("mkfs.btrfs is not installed (btrfs-progs)");
    close(sub_dir(wfd, "mnt", 0755));
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cd %s && truncate -s 200M img && mkfs.btrfs -q img >/dev/null 2>&1 && "
             "mount -o loop img mnt 2>/dev/null",
             work);
    if (system(cmd) != 0)
        SKIP("cannot make and loop-mount a btrfs image here");
    int m = openat(wfd, "mnt", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    write_pattern(m, "f", 3 << 20);
    struct run_result r;
    mpcp(&r, (const char *const[]){"--reflink=always", "mnt/f", "mnt/always", NULL});
    cr_expect_eq(r.status, 0, "%s", r.err);
    mpcp(&r, (const char *const[]){"-a", "mnt/f", "mnt/auto", NULL});
    cr_expect_eq(r.status, 0, "%s", r.err);
    mpcp(&r, (const char *const[]){"--reflink=never", "mnt/f", "mnt/never", NULL});
    cr_expect_eq(r.status, 0, "%s", r.err);
    bool always = first_extent_shared(m, "always"), autom = first_extent_shared(m, "auto");
    same_file_content(m, "f", m, "always");
    same_file_content(m, "f", m, "auto");
    same_file_content(m, "f", m, "never");
    close(m);
    snprintf(cmd, sizeof cmd, "umount %s/mnt", work);
    cr_expect_eq(system(cmd), 0);
    cr_assert(always, "--reflink=always did not clone");
    cr_assert(autom, "--reflink=auto did not clone");
}

Test(mpcp_beyond, enospc_stops_promptly_and_leaves_no_partial_file, .init = setup_work,
     .fini = teardown_work, .timeout = 60)
{
    int s = sub_dir(wfd, "s", 0755);
    write_pattern(s, "a-small", 10000);
    write_pattern(s, "b-big", 3 << 20);
    for (int i = 0; i < 50; i++) {
        char name[32];
        snprintf(name, sizeof name, "c-%02d", i);
        write_pattern(s, name, 1000);
    }
    close(s);
    close(sub_dir(wfd, "mnt", 0755));
    char mnt[300];
    snprintf(mnt, sizeof mnt, "%s/mnt", work);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") < 0)
        SKIP("cannot mount a tmpfs here (%s): needs root and CAP_SYS_ADMIN", strerror(errno));
    int64_t t0 = time(NULL);
    struct run_result r;
    mpcp(&r, (const char *const[]){"-r", "s", "mnt/o", NULL});
    int64_t took = time(NULL) - t0;
    int o = openat(wfd, "mnt/o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    bool partial = false;
    struct stat st;
    if (o >= 0) {
        partial = fstatat(o, "b-big", &st, 0) == 0;
        cr_expect_eq(count_temporaries(o), 0);
        close(o);
    }
    umount2(mnt, MNT_DETACH);
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_assert(strstr(r.err, "No space left on device") != NULL, "%s", r.err);
    cr_assert(strstr(r.err, "'mnt/o/b-big'") != NULL, "the message names the file: %s", r.err);
    cr_assert(!partial, "a partial b-big exists");
    cr_assert_lt(took, 10);
}

/* Makes mnt/s/f and then names for it until it has count names in all. */
static void many_links(int count)
{
    int s = sub_dir(wfd, "mnt/s", 0755);
    put_file(s, "f", "data\n", 0644);
    for (int i = 1; i < count; i++) {
        char name[32];
        snprintf(name, sizeof name, "l%06d", i);
        if (linkat(s, "f", s, name, 0) == 0)
            continue;
        int err = errno;
        close(s);
        SKIP("a tmpfs here caps links too (%s after %d)", strerror(err), i);
    }
    close(s);
}

/* Checks dir's names: one inode holding limit of them, one name with its own copy (returned). */
static char *check_one_unlinked(const char *dir, long limit)
{
    int d = openat(wfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(d, 0);
    size_t n = 0;
    char **names = list_names(d, &n);
    cr_assert_eq(n, (size_t)limit + 1, "%zu names", n);
    char *single = NULL;
    size_t linked = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        cr_assert_eq(fstatat(d, names[i], &st, AT_SYMLINK_NOFOLLOW), 0);
        if (st.st_nlink == 1 && !single)
            single = strdup(names[i]);
        else
            linked += st.st_nlink == (nlink_t)limit;
        free(names[i]);
    }
    free(names);
    cr_assert_not_null(single, "no name was copied apart");
    cr_assert_eq(linked, (size_t)limit, "the other names do not share one full inode");
    int fd = openat(d, single, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    char data[16];
    read_all(fd, data, sizeof data);
    close(fd);
    cr_assert_str_eq(data, "data\n");
    cr_assert_eq(count_temporaries(d), 0);
    close(d);
    return single;
}

/*
 * A hard-link group larger than the destination's link limit: cp fails on
 * the name that does not fit; mpcp copies its data and warns, exit 0. The
 * group lives on a tmpfs (no link limit), the copy goes to the work folder's
 * filesystem (ext4: 65,000), in one process and with workers.
 */
Test(mpcp_beyond, full_link_count_copies_the_data_with_a_warning, .init = setup_work,
     .fini = teardown_work, .timeout = 180)
{
    errno = 0;
    long limit = fpathconf(wfd, _PC_LINK_MAX);
    if (limit <= 0 || limit > 100000)
        SKIP("the work folder's filesystem has no small link limit (%ld)", limit);
    close(sub_dir(wfd, "mnt", 0755));
    char mnt[300];
    snprintf(mnt, sizeof mnt, "%s/mnt", work);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") < 0)
        SKIP("cannot mount a tmpfs here (%s): needs root and CAP_SYS_ADMIN", strerror(errno));
    many_links((int)limit + 1);
    const char *jobs[] = {"-j1", "-j4"}, *dirs[] = {"d1", "d4"};
    for (int i = 0; i < 2; i++) {
        struct run_result r;
        mpcp(&r, (const char *const[]){"-a", jobs[i], "mnt/s", dirs[i], NULL});
        cr_assert_eq(r.status, 0, "%s: %s", jobs[i], r.err);
        char *single = check_one_unlinked(dirs[i], limit);
        char want[256];
        snprintf(want, sizeof want, "mpcp: warning: cannot create hard link '%s/%s' to '%s/",
                 dirs[i], single, dirs[i]);
        cr_assert(strncmp(r.err, want, strlen(want)) == 0, "%s: %s", jobs[i], r.err);
        const char *tail = "': Too many links; copied the data instead\n";
        const char *end = strchr(r.err, '\n');
        cr_assert(end && strlen(end + 1) == 0, "%s: more than one line: %s", jobs[i], r.err);
        cr_assert(end + 1 - strlen(tail) == strstr(r.err, tail), "%s: %s", jobs[i], r.err);
        free(single);
    }
}

Test(mpcp_beyond, sparse_file_keeps_its_holes, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    int fd = openat(wfd, "huge", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    cr_assert_eq(pwrite(fd, "start", 5, 0), 5);
    cr_assert_eq(pwrite(fd, "end", 3, ((off_t)1 << 40) - 3), 3);
    close(fd);
    struct run_result r;
    int64_t t0 = time(NULL);
    mpcp(&r, (const char *const[]){"--reflink=never", "huge", "copy", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_lt(time(NULL) - t0, 10);
    struct stat a, b;
    fstatat(wfd, "huge", &a, 0);
    fstatat(wfd, "copy", &b, 0);
    cr_assert_eq(a.st_size, b.st_size);
    cr_assert_leq(b.st_blocks, a.st_blocks + 16);
    char buf[8] = "";
    fd = openat(wfd, "copy", O_RDONLY | O_CLOEXEC);
    cr_assert_eq(pread(fd, buf, 3, ((off_t)1 << 40) - 3), 3);
    cr_assert_str_eq(buf, "end");
    close(fd);
}

Test(mpcp_beyond, sparse_always_punches_zeros_never_fills, .init = setup_work,
     .fini = teardown_work, .timeout = 30)
{
    int fd = openat(wfd, "zeros", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    static char zero[1 << 20];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(write(fd, zero, sizeof zero), (ssize_t)sizeof zero);
    cr_assert_eq(write(fd, "x", 1), 1);
    close(fd);
    struct run_result r;
    mpcp(&r, (const char *const[]){"--sparse=always", "zeros", "punched", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    mpcp(&r, (const char *const[]){"--sparse=never", "punched", "dense", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    struct stat z, p, d;
    fstatat(wfd, "zeros", &z, 0);
    fstatat(wfd, "punched", &p, 0);
    fstatat(wfd, "dense", &d, 0);
    cr_assert_eq(p.st_size, z.st_size);
    cr_assert_lt(p.st_blocks, z.st_blocks / 4, "zero runs were not punched");
    cr_assert_geq(d.st_blocks, z.st_blocks - 8, "--sparse=never left holes");
    same_file_content(wfd, "zeros", wfd, "punched");
    same_file_content(wfd, "zeros", wfd, "dense");
}

/*
 * coreutils' tests/cp/sparse-2.sh: one byte, then 256 KiB - 1 of zeros. A
 * read buffer holds it all, but the holes are made block by block, as cp
 * makes them: only the first block keeps data.
 */
Test(mpcp_beyond, sparse_always_punches_blocks_of_a_buffer, .init = setup_work,
     .fini = teardown_work, .timeout = 30)
{
    int fd = openat(wfd, "k", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    static char zero[256 * 1024];
    cr_assert_eq(write(fd, "x", 1), 1);
    cr_assert_eq(write(fd, zero, sizeof zero - 1), (ssize_t)sizeof zero - 1);
    close(fd);
    struct run_result r;
    mpcp(&r, (const char *const[]){"--reflink=never", "--sparse=always", "k", "k2", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    struct stat k, k2;
    fstatat(wfd, "k", &k, 0);
    fstatat(wfd, "k2", &k2, 0);
    cr_assert_eq(k2.st_size, k.st_size);
    cr_assert_leq(k2.st_blocks * 512, 2 * (blkcnt_t)k2.st_blksize, "blocks %lld of %lld",
                  (long long)k2.st_blocks, (long long)k.st_blocks);
    same_file_content(wfd, "k", wfd, "k2");
}

Test(mpcp_beyond, proc_file_with_size_zero_is_read, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    struct run_result r;
    mpcp(&r, (const char *const[]){"/proc/self/status", "status", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    struct stat st;
    cr_assert_eq(fstatat(wfd, "status", &st, 0), 0);
    cr_assert_gt(st.st_size, 0);
}

/* The total of strace -c's summary, and the count for one syscall. */
static long strace_count(const char *summary, const char *name)
{
    char needle[64];
    snprintf(needle, sizeof needle, " %s\n", name);
    const char *line = strstr(summary, needle);
    if (!line)
        return 0;
    while (line > summary && line[-1] != '\n')
        line--;
    double pct, secs;
    long usecs, calls;
    if (sscanf(line, "%lf %lf %ld %ld", &pct, &secs, &usecs, &calls) == 4)
        return calls;
    if (sscanf(line, "%lf %lf %ld", &pct, &secs, &calls) == 3) /* "total": no usecs/call */
        return calls;
    return 0;
}

/*
 * The lean path: about 8 syscalls per small file (stat from the walk, two
 * openat, copy_file_range, fchmod, two close, renameat), and FICLONE tried
 * once per filesystem, not once per file.
 */
Test(mpcp_beyond, lean_syscalls_per_small_file, .init = setup_work, .fini = teardown_work,
     .timeout = 60)
{
#ifdef UNDER_ASAN
    SKIP("AddressSanitizer adds its own system calls");
#endif
    if (system("strace -V >/dev/null 2>&1") != 0)
        SKIP("strace is not installed");
    int s = sub_dir(wfd, "s", 0755);
    for (int i = 0; i < 500; i++) {
        char name[32];
        snprintf(name, sizeof name, "f%d", i);
        put_file(s, name, "a small file\n", 0644);
    }
    close(s);
    struct run_result r;
    const char *argv[] = {"strace",        "-f", "-c", "-o", "summary",
                          MPROC_MPCP_PATH, "-r", "s",  "o",  NULL};
    run_in(work, false, argv, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    FILE *f = fopen(work_path(work, "summary"), "r");
    cr_assert_not_null(f);
    static char summary[65536];
    summary[fread(summary, 1, sizeof summary - 1, f)] = '\0';
    fclose(f);
    long total = strace_count(summary, "total");
    long ioctls = strace_count(summary, "ioctl");
    cr_assert_gt(total, 0, "%s", summary);
    /*
     * Per file: leave out the calls that start, wait for and wake processes
     * and threads, whose number follows the machine's load, not the files.
     */
    static const char *const not_per_file[] = {
        "futex",  "poll",     "wait4", "waitid",         "clone",   "clone3", "mmap",
        "munmap", "mprotect", "brk",   "rt_sigprocmask", "getppid", "getpid", "sched_yield"};
    long per_file = total;
    for (size_t i = 0; i < sizeof not_per_file / sizeof not_per_file[0]; i++)
        per_file -= strace_count(summary, not_per_file[i]);
    cr_assert_lt(per_file, 9 * 500, "%ld syscalls for 500 files:\n%s", per_file, summary);
    cr_assert_leq(ioctls, 3, "FICLONE retried per file:\n%s", summary);
}

/* ---- summaries and options beyond cp ---- */

/* s: files a (100 bytes) and b (200), symlink l -> a. */
static void make_two_files_and_a_link(void)
{
    int s = sub_dir(wfd, "s", 0755);
    write_pattern(s, "a", 100);
    write_pattern(s, "b", 200);
    must(symlinkat("a", s, "l"), "symlink", "l");
    close(s);
}

Test(mpcp_beyond, json_and_stats, .init = setup_work, .fini = teardown_work, .timeout = 30)
{
    make_two_files_and_a_link();
    struct run_result r;
    mpcp(&r, (const char *const[]){"-r", "--json", "--stats", "s", "o", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"files\":2,") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\"symlinks\":1,") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\"bytes\":300,") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\"errors\":0,") != NULL, "%s", r.out);
    cr_assert(strstr(r.err, "mpcp: 2 files, 1 directories, 1 symlinks") == r.err, "%s", r.err);
}

Test(mpcp_beyond, dry_run_changes_nothing, .init = setup_work, .fini = teardown_work, .timeout = 30)
{
    int s = sub_dir(wfd, "s", 0755);
    write_pattern(s, "a", 100);
    close(sub_dir(s, "sub", 0755));
    close(s);
    struct run_result r;
    mpcp(&r, (const char *const[]){"-r", "--dry-run", "s", "o", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    struct stat st;
    cr_assert_neq(fstatat(wfd, "o", &st, 0), 0, "--dry-run created the destination");
    cr_assert(strstr(r.out, "'s/a' -> 'o/a'") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "'s/sub' -> 'o/sub'") != NULL, "%s", r.out);
}

/* -l and -s: the summaries count links, no bytes; --dry-run makes none. */
Test(mpcp_beyond, links_in_summaries_and_dry_run, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    make_two_files_and_a_link();
    struct run_result r;
    mpcp(&r, (const char *const[]){"-rl", "--json", "--stats", "s", "o", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"files\":0,") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\"hardlinks\":3,") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\"bytes\":0,") != NULL, "%s", r.out);
    cr_assert(strstr(r.err, "mpcp: 0 files, 1 directories, 0 symlinks, 3 hard links") == r.err,
              "%s", r.err);
    struct stat src, dst;
    cr_assert_eq(fstatat(wfd, "s/a", &src, 0), 0);
    cr_assert_eq(fstatat(wfd, "o/l", &dst, AT_SYMLINK_NOFOLLOW), 0);
    cr_assert(src.st_ino == dst.st_ino, "-rl links what a symlink points to");
    char abs[512];
    snprintf(abs, sizeof abs, "%s/s", work);
    mpcp(&r, (const char *const[]){"-rs", "-j", "3", "--json", abs, "o2", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"symlinks\":3,\"hardlinks\":0,") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\"bytes\":0,") != NULL, "%s", r.out);
    mpcp(&r, (const char *const[]){"-rlv", "--dry-run", "s", "o3", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_neq(fstatat(wfd, "o3", &dst, 0), 0, "--dry-run created the destination");
    cr_assert(strstr(r.out, "'s/a' -> 'o3/a'") != NULL, "%s", r.out);
}

/* The --update forms of coreutils 9.3/9.5, which cp 9.1 here cannot be compared with. */
Test(mpcp_beyond, update_when_forms, .init = setup_work, .fini = teardown_work, .timeout = 30)
{
    put_file(wfd, "src", "new\n", 0644);
    put_file(wfd, "dst", "old\n", 0644);
    struct run_result r;
    mpcp(&r, (const char *const[]){"--update=none", "src", "dst", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_empty(r.err);
    mpcp(&r, (const char *const[]){"--update=none-fail", "src", "dst", NULL});
    cr_assert_eq(r.status, 1);
    cr_assert_str_eq(r.err, "mpcp: not replacing 'dst'\n");
    char buf[16] = "";
    int fd = openat(wfd, "dst", O_RDONLY | O_CLOEXEC);
    cr_assert_eq(read(fd, buf, sizeof buf - 1), 4);
    close(fd);
    cr_assert_str_eq(buf, "old\n");
    /* dst is newer than src now: older skips it, all does not. */
    set_mtime(wfd, "src", 1000000000, 0);
    mpcp(&r, (const char *const[]){"--update=older", "src", "dst", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    fd = openat(wfd, "dst", O_RDONLY | O_CLOEXEC);
    cr_assert_eq(read(fd, buf, sizeof buf - 1), 4);
    close(fd);
    cr_assert_str_eq(buf, "old\n");
    mpcp(&r, (const char *const[]){"--update=all", "src", "dst", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    same_file_content(wfd, "src", wfd, "dst");
}

Test(mpcp_beyond, quiet_never_hides_errors, .init = setup_work, .fini = teardown_work,
     .timeout = 30)
{
    struct run_result r;
    mpcp(&r, (const char *const[]){"-q", "-v", "missing", "o", NULL});
    cr_assert_eq(r.status, 1);
    cr_assert_str_eq(r.err, "mpcp: cannot stat 'missing': No such file or directory\n");
    cr_assert_str_empty(r.out);
}

/*
 * -L through a symlink to the folder that holds the destination: the walk
 * comes to the destination it is filling. cp 9.1 copies until names are too
 * long (o/new/d/to_o/new/d/to_o/...); mpcp stops at the folder it made, with
 * cp's message for it, and copies the rest.
 */
Test(mpcp_beyond, symlink_to_the_destinations_folder_ends_the_walk, .init = setup_work,
     .fini = teardown_work, .timeout = 30)
{
    int s = sub_dir(wfd, "s", 0755);
    int d = sub_dir(s, "d", 0755);
    must(symlinkat("../../o", d, "to_o"), "symlink", "to_o");
    close(d);
    put_file(s, "f", "data\n", 0644);
    close(s);
    struct run_result r;
    for (int j = 1; j <= 2; j++) {
        const char *jobs = j == 1 ? "1" : "4";
        close(sub_dir(wfd, "o", 0755));
        mpcp(&r, (const char *const[]){"-rL", "-j", jobs, "s", "o/new", NULL});
        cr_assert_eq(r.status, 1, "-j %s: %s", jobs, r.err);
        cr_assert_str_eq(r.err, "mpcp: cannot copy a directory, 's', into itself, 'o/new'\n",
                         "-j %s", jobs);
        struct stat st;
        cr_assert_eq(fstatat(wfd, "o/new/f", &st, 0), 0, "-j %s: the file beside the link", jobs);
        cr_assert_neq(fstatat(wfd, "o/new/d/to_o/new/d", &st, AT_SYMLINK_NOFOLLOW), 0,
                      "-j %s: the walk went on through its own destination", jobs);
        remove_tree_at(wfd, "o");
    }
}

/*
 * A hard-link group whose first copy fails (its destination cannot be
 * written): the other names are copied by themselves, never linked to the
 * old file that stayed there, in the same task (a and b) or a later one (c). (Beside cp, the
 * outcome depends on which name it meets first, by inode number: not comparable on every disk.)
 */
Test(mpcp_beyond, link_group_whose_first_copy_fails_links_nothing_to_it, .init = setup_work,
     .fini = teardown_work, .timeout = 30)
{
    int s = sub_dir(wfd, "s", 0755);
    put_file(s, "a", "the group's data\n", 0644);
    int sub = sub_dir(s, "sub", 0755);
    must(linkat(s, "a", sub, "c", 0), "link", "c");
    must(linkat(s, "a", s, "b", 0), "link", "b");
    close(sub);
    close(s);
    const char *jobs[] = {"1", "4"}, *dests[] = {"o1", "o4"};
    for (int j = 0; j < 2; j++) {
        int o = sub_dir(wfd, dests[j], 0755);
        put_file(o, "a", "old a\n", 0444);
        put_file(o, "b", "old b\n", 0444);
        close(o);
    }
    chown_tree(wfd, 65534, 65534);
    for (int j = 0; j < 2; j++) {
        struct run_result r;
        const char *argv[] = {MPROC_MPCP_PATH, "-rp", "--preserve=links", "-j", jobs[j], "-T", "s",
                              dests[j],        NULL};
        run_in(work, true, argv, &r);
        cr_assert_eq(r.status, 1, "-j %s: %s", jobs[j], r.err);
        /* Whichever of a and b comes first fails; the other is not linked to its old file. */
        char want[64];
        snprintf(want, sizeof want, "cannot create regular file '%s/a'", dests[j]);
        cr_assert(strstr(r.err, want), "-j %s: %s", jobs[j], r.err);
        snprintf(want, sizeof want, "cannot create regular file '%s/b'", dests[j]);
        cr_assert(strstr(r.err, want), "-j %s: %s", jobs[j], r.err);
        char path[64], got[64] = "";
        snprintf(path, sizeof path, "%s/sub/c", dests[j]);
        int fd = openat(wfd, path, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0, "-j %s: %s was not made: %s", jobs[j], path, r.err);
        cr_assert_gt(read(fd, got, sizeof got - 1), 0);
        close(fd);
        cr_assert_str_eq(got, "the group's data\n", "-j %s: %s holds an old file", jobs[j], path);
    }
}

Test(mpcp_beyond, jobs_are_validated, .init = setup_work, .fini = teardown_work, .timeout = 30)
{
    put_file(wfd, "f", "f\n", 0644);
    struct run_result r;
    mpcp(&r, (const char *const[]){"-j", "0", "f", "g", NULL});
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "mpcp: invalid number of jobs: ") == r.err, "%s", r.err);
    cr_assert(strstr(r.err, "Try 'mpcp --help' for more information.") != NULL, "%s", r.err);
    mpcp(&r, (const char *const[]){"-j", "abc", "f", "g", NULL});
    cr_assert_eq(r.status, 1);
    mpcp(&r, (const char *const[]){"--jobs=3", "f", "g", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    same_file_content(wfd, "f", wfd, "g");
}

/* Every option --help lists is in the man page, and the other way round. */
Test(mpcp_beyond, help_and_man_page_agree, .init = setup_work, .fini = teardown_work, .timeout = 30)
{
    struct run_result r;
    mpcp(&r, (const char *const[]){"--help", NULL});
    cr_assert_eq(r.status, 0);
    FILE *f = fopen(MPROC_MPCP_MAN, "r");
    cr_assert_not_null(f, "%s", MPROC_MPCP_MAN);
    static char man[65536];
    size_t n = fread(man, 1, sizeof man - 1, f);
    man[n] = '\0';
    fclose(f);
    int checked = 0;
    for (const char *p = r.out; (p = strstr(p, "--")) != NULL; p += 2) {
        char opt[48];
        size_t len = 0;
        while (len + 1 < sizeof opt && (p[len] == '-' || (p[len] >= 'a' && p[len] <= 'z')))
            opt[len] = p[len], len++;
        opt[len] = '\0';
        if (len <= 2)
            continue;
        /* In roff, a dash in an option is written \- */
        char roff[96];
        size_t k = 0;
        for (size_t i = 0; i < len && k + 2 < sizeof roff; i++) {
            if (opt[i] == '-')
                roff[k++] = '\\';
            roff[k++] = opt[i];
        }
        roff[k] = '\0';
        cr_expect(strstr(man, roff) != NULL, "%s is in --help but not in mpcp.1", opt);
        checked++;
    }
    cr_assert_gt(checked, 25);
    /* The variables mpcp reads (parallel.c, walk.c) are documented too. */
    const char *env = strstr(man, ".SH ENVIRONMENT");
    cr_assert_not_null(env, "mpcp.1 has no ENVIRONMENT section");
    cr_expect(strstr(env, ".B MPCP_NO_RETRY\n") != NULL, "MPCP_NO_RETRY is not in mpcp.1");
    cr_expect(strstr(env, ".B MPCP_TASK_RESOLVE\n") != NULL, "MPCP_TASK_RESOLVE is not in mpcp.1");
    cr_expect(strstr(env, ".B MPCP_WALK\n") != NULL, "MPCP_WALK is not in mpcp.1");
}

Test(mpcp_beyond, jobs_1_and_8_give_identical_trees, .init = setup_work, .fini = teardown_work,
     .timeout = 60)
{
    int s = sub_dir(wfd, "s", 0755);
    for (int d = 0; d < 10; d++) {
        char name[32];
        snprintf(name, sizeof name, "d%d", d);
        int sub = sub_dir(s, name, 0750);
        for (int f = 0; f < 30; f++) {
            snprintf(name, sizeof name, "f%d", f);
            write_pattern(sub, name, (size_t)(f * 997));
        }
        snprintf(name, sizeof name, "link%d", d);
        must(linkat(sub, "f1", s, name, 0), "link", name);
        close(sub);
    }
    close(s);
    struct run_result r;
    mpcp(&r, (const char *const[]){"-a", "-j", "1", "s", "o1", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    mpcp(&r, (const char *const[]){"-a", "--jobs=8", "s", "o8", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    int a = openat(wfd, "o1", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int b = openat(wfd, "o8", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    compare_trees(a, b, CMP_MTIME | CMP_OWNER);
    close(a);
    close(b);
}

/* s/d0..d9/e0..e4 with files, links across folders, an empty folder and a wide one. */
static int make_walk_tree(int wide_entries, bool links)
{
    int s = sub_dir(wfd, "s", 0755);
    int folders = 0;
    for (int d = 0; d < 10; d++) {
        char name[32];
        snprintf(name, sizeof name, "d%d", d);
        int sub = sub_dir(s, name, 0750);
        folders++;
        for (int e = 0; e < 5; e++) {
            snprintf(name, sizeof name, "e%d", e);
            int leaf = sub_dir(sub, name, 0755);
            folders++;
            for (int f = 0; f < 8; f++) {
                snprintf(name, sizeof name, "f%d", f);
                write_pattern(leaf, name, (size_t)(f * 331));
            }
            must(symlinkat("f1", leaf, "l"), "symlink", "l");
            close(leaf);
        }
        snprintf(name, sizeof name, "link%d", d);
        if (links)
            must(linkat(sub, "e0/f1", s, name, 0), "link", name);
        close(sub);
    }
    close(sub_dir(s, "empty", 0700));
    int wide = sub_dir(s, "wide", 0755);
    folders += 2;
    for (int i = 0; i < wide_entries; i++) {
        char name[32];
        snprintf(name, sizeof name, "w%d", i);
        int fd = openat(wide, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        must(fd, "create", name);
        close(fd);
    }
    close(wide);
    stamp_tree(s, 1600000000);
    close(s);
    return folders;
}

static void compare_with_source(const char *copy)
{
    int a = openat(wfd, "s", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int b = openat(wfd, copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert(a >= 0 && b >= 0, "cannot open the trees");
    compare_trees(a, b, CMP_MTIME | CMP_OWNER);
    cr_assert_eq(count_temporaries(b), 0);
    close(a);
    close(b);
}

/*
 * The walk shared out (as under MPI): workers list every folder but the top
 * one and the wide one, which the planner reads itself, and the copy is
 * the planner's own walk's.
 */
Test(mpcp_beyond, workers_walk_copies_as_the_planner_walk, .init = setup_work,
     .fini = teardown_work, .timeout = 120)
{
    int folders = make_walk_tree(16385, true);
    struct run_result r;
    setenv("MPCP_WALK", "workers", 1);
    mpcp(&r, (const char *const[]){"-a", "-j", "3", "--json", "s", "o", NULL});
    unsetenv("MPCP_WALK");
    cr_assert_eq(r.status, 0, "%s", r.err);
    char want[64];
    snprintf(want, sizeof want, "\"folders_listed_by_workers\":%d}", folders - 1);
    cr_assert(strstr(r.out, want) != NULL, "want %s in %s", want, r.out);
    cr_assert(strstr(r.out, "\"hardlinks\":10,") != NULL, "%s", r.out);
    compare_with_source("o");
    /* And by default on one machine the planner reads every folder. */
    mpcp(&r, (const char *const[]){"-a", "-j", "3", "--json", "s", "o2", NULL});
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"folders_listed_by_workers\":0}") != NULL, "%s", r.out);
}

/* Kills every grandchild of pid (the pool's workers, under its fork server). */
static int kill_grandchildren(pid_t pid)
{
    int killed = 0;
    DIR *d = opendir("/proc");
    for (struct dirent *de = d ? readdir(d) : NULL; de; de = readdir(d)) {
        pid_t child = (pid_t)atoi(de->d_name);
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%d/stat", child);
        FILE *f = child > 0 ? fopen(path, "re") : NULL;
        if (!f)
            continue;
        int ppid = 0;
        if (fgets(line, sizeof line, f)) {
            const char *rp = strrchr(line, ')');
            if (rp)
                sscanf(rp + 2, "%*c %d", &ppid);
        }
        fclose(f);
        snprintf(path, sizeof path, "/proc/%d/stat", ppid);
        f = ppid > 1 ? fopen(path, "re") : NULL;
        int gpid = 0;
        if (f && fgets(line, sizeof line, f)) {
            const char *rp = strrchr(line, ')');
            if (rp)
                sscanf(rp + 2, "%*c %d", &gpid);
        }
        if (f)
            fclose(f);
        if (gpid == pid && kill(child, SIGKILL) == 0)
            killed++;
    }
    if (d)
        closedir(d);
    return killed;
}

/*
 * Workers SIGKILLed again and again while they list folders and copy: the
 * run ends (no hang), names what it lost, and a rerun with -u completes.
 * (No hard links here: -u keeps what the first run made, as cp -u does, so
 * a link made in the rerun to a member already there depends on the order.)
 */
Test(mpcp_beyond, workers_walk_survives_killed_workers, .init = setup_work, .fini = teardown_work,
     .timeout = 120)
{
    make_walk_tree(3000, false);
    setenv("MPCP_WALK", "workers", 1);
    pid_t pid = start_mpcp_quiet(work, (const char *const[]){"-a", "-j", "2", "s", "o", NULL});
    unsetenv("MPCP_WALK");
    int killed = 0, st = 0;
    for (int round = 0; round < 200 && waitpid(pid, &st, WNOHANG) == 0; round++) {
        if (killed < 6)
            killed += kill_grandchildren(pid);
        usleep(5000);
    }
    if (killed < 6 || waitpid(pid, &st, WNOHANG) == 0) {
        /* Ended before six kills (a fast machine), or still busy: wait, bounded by the timeout. */
        waitpid(pid, &st, 0);
    }
    cr_assert_gt(killed, 0, "no worker was killed: the run ended first");
    cr_assert(WIFEXITED(st), "mpcp died: %d", st);
    cr_assert(WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 1, "status %d", WEXITSTATUS(st));
    cr_log_info("%d workers killed; first run's status %d", killed, WEXITSTATUS(st));
    struct run_result r;
    setenv("MPCP_WALK", "workers", 1);
    mpcp(&r, (const char *const[]){"-auT", "-j", "2", "s", "o", NULL});
    unsetenv("MPCP_WALK");
    cr_assert_eq(r.status, 0, "%s", r.err);
    compare_with_source("o");
}

/* Memory follows the work in flight, not the tree: 20,000 files stay in a few MiB. */
Test(mpcp_beyond, memory_does_not_grow_with_the_tree, .init = setup_work, .fini = teardown_work,
     .timeout = 120)
{
#ifdef UNDER_ASAN
    SKIP("resident memory is not meaningful under AddressSanitizer");
#endif
    int s = sub_dir(wfd, "s", 0755);
    for (int d = 0; d < 200; d++) {
        char name[32];
        snprintf(name, sizeof name, "dir%03d", d);
        int sub = sub_dir(s, name, 0755);
        for (int f = 0; f < 100; f++) {
            snprintf(name, sizeof name, "file-with-a-longish-name-%03d", f);
            int fd = openat(sub, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            must(fd, "create", name);
            close(fd);
        }
        close(sub);
    }
    close(s);
    int st;
    struct rusage ru;
    run_mpcp_measured(work, &st, &ru);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cr_assert_lt(ru.ru_maxrss, 16 * 1024, "peak resident memory %ld KiB", ru.ru_maxrss);
}

/* ---- the task format ---- */

Test(mpcp_beyond, task_bytes_round_trip, .timeout = 10)
{
    struct mpcp_buf b = {0};
    struct mpcp_task t = {MPCP_TASK_FOLLOW, 1, 2, "a/b", "c", "src/a/b", "dst/c", 0};
    cr_assert_eq(mpcp_task_begin(&b, &t), 0);
    size_t header = b.len;
    struct mpcp_entry e = {.type = MPCP_T_REG,
                           .flags = MPCP_E_DEST_NEW,
                           .name = "file\nname",
                           .dst_name = "file\nname",
                           .mode = S_IFREG | 0644,
                           .size = 1ull << 40,
                           .mtime_sec = -5,
                           .mtime_nsec = 999999999,
                           .link_target = "",
                           .link_disp = ""};
    cr_assert_eq(mpcp_task_add(&b, &e), 0);
    e.type = MPCP_T_HARDLINK;
    e.dst_name = "other";
    e.link_target = "c/first";
    e.link_disp = "dst/c/first";
    cr_assert_eq(mpcp_task_add(&b, &e), 0);
    cr_assert_eq(mpcp_task_count(&b), 2);

    struct mpcp_task d;
    size_t pos;
    cr_assert_eq(mpcp_task_decode_header(b.data, b.len, &d, &pos), 0);
    cr_assert_eq(d.count, 2);
    cr_assert_eq(d.src_root, 1);
    cr_assert_eq(d.dst_root, 2);
    cr_assert_str_eq(d.src_dir, "a/b");
    cr_assert_str_eq(d.dst_disp, "dst/c");
    struct mpcp_entry x;
    cr_assert_eq(mpcp_task_decode_entry(b.data, b.len, &pos, &x), 0);
    cr_assert_str_eq(x.name, "file\nname");
    cr_assert_str_eq(x.dst_name, "file\nname");
    cr_assert_eq(x.size, 1ull << 40);
    cr_assert_eq(x.mtime_sec, -5);
    cr_assert_eq(x.mtime_nsec, 999999999u);
    cr_assert_eq(mpcp_task_decode_entry(b.data, b.len, &pos, &x), 0);
    cr_assert_eq(x.type, MPCP_T_HARDLINK);
    cr_assert_str_eq(x.dst_name, "other");
    cr_assert_str_eq(x.link_target, "c/first");
    cr_assert_eq(pos, b.len);

    /* Every truncation is refused, never read past the end. */
    for (size_t cut = 0; cut < b.len; cut++) {
        size_t p2 = 0;
        struct mpcp_task d2;
        if (mpcp_task_decode_header(b.data, cut, &d2, &p2) != 0)
            continue;
        int bad = 0;
        for (uint32_t i = 0; i < d2.count && !bad; i++)
            bad = mpcp_task_decode_entry(b.data, cut, &p2, &x) != 0;
        cr_assert(bad, "a task cut at %zu bytes decoded", cut);
    }
    mpcp_task_truncate(&b, header);
    cr_assert_eq(mpcp_task_count(&b), 0);
    cr_assert_eq(b.len, header);

    struct mpcp_buf res = {0};
    cr_assert_eq(mpcp_result_begin(&res), 0);
    struct mpcp_result_entry re = {.status = MPCP_FAILED,
                                   .flags = MPCP_R_STOP,
                                   .err = ENOSPC,
                                   .bytes = 123,
                                   .msg = "error writing 'x'",
                                   .backup = "x~"};
    cr_assert_eq(mpcp_result_add(&res, &re), 0);
    uint32_t count;
    cr_assert_eq(mpcp_result_decode_header(res.data, res.len, &count, &pos), 0);
    cr_assert_eq(count, 1);
    struct mpcp_result_entry ro;
    cr_assert_eq(mpcp_result_decode_entry(res.data, res.len, &pos, &ro), 0);
    cr_assert_eq(ro.status, MPCP_FAILED);
    cr_assert_eq(ro.err, ENOSPC);
    cr_assert_eq(ro.bytes, 123);
    cr_assert_str_eq(ro.msg, "error writing 'x'");
    cr_assert_str_eq(ro.backup, "x~");
    mpcp_buf_free(&b);
    mpcp_buf_free(&res);
}
