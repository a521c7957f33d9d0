/*
 * mpcp against GNU cp: each case builds the same tree twice, runs cp in one
 * copy and mpcp in the other with the same arguments, and requires the same
 * exit status, the same error lines (with "cp:" read as "mpcp:") and alike
 * trees (types, modes, sizes, contents, symlink texts, hard-link structure,
 * owners, user xattrs, and mtimes to the nanosecond where cp keeps them).
 */
#include "mpcp_tree.h"

#include <limits.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/un.h>

/* ---- running both ---- */

static char **split_lines(char *text, size_t *n)
{
    size_t cap = 16;
    char **v = malloc(cap * sizeof *v);
    *n = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (*n == cap)
            v = realloc(v, (cap *= 2) * sizeof *v);
        v[(*n)++] = line;
        if (!nl)
            break;
        line = nl + 1;
    }
    return v;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Writes "cp: " for each "mpcp: " in text, in place (-i's prompts share one line). */
static void as_cp(char *text)
{
    char *w = text;
    for (const char *r = text; *r;) {
        if (!strncmp(r, "mpcp: ", 6)) {
            memcpy(w, "cp: ", 4);
            w += 4;
            r += 6;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* -i's prompts end without a newline (the answer would follow): one line each, to sort. */
static void split_prompts(char *text)
{
    for (char *q = strstr(text, "? "); q; q = strstr(q + 1, "? "))
        if (q[2] == '\0' || !strncmp(q + 2, "cp: ", 4))
            q[1] = '\n';
}

/* Same error lines, in any order: "cp: X" must match "mpcp: X". */
static void compare_stderr(char *cp_err, char *mp_err)
{
    as_cp(mp_err);
    split_prompts(cp_err);
    split_prompts(mp_err);
    size_t nc, nm;
    char **c = split_lines(cp_err, &nc), **m = split_lines(mp_err, &nm);
    cr_assert_eq(nc, nm, "error lines: cp %zu, mpcp %zu\ncp:\n%s\nmpcp:\n%s", nc, nm, cp_err,
                 mp_err);
    for (size_t i = 0; i < nc; i++) {
        if (!strncmp(c[i], "cp: ", 4))
            c[i] += 4;
        if (!strcmp(c[i], "Try 'cp --help' for more information."))
            c[i] = "Try 'mpcp --help' for more information.";
        if (!strncmp(m[i], "cp: ", 4))
            m[i] += 4;
    }
    qsort(c, nc, sizeof *c, str_cmp);
    qsort(m, nm, sizeof *m, str_cmp);
    for (size_t i = 0; i < nc; i++)
        cr_expect_str_eq(c[i], m[i], "error line differs:\ncp:   %s\nmpcp: %s", c[i], m[i]);
    free(c);
    free(m);
}

/* Same -v lines, in any order (cp lists a folder in inode order, mpcp in readdir order). */
static void compare_stdout(char *cp_out, char *mp_out)
{
    static char cp_copy[65536], mp_copy[65536];
    snprintf(cp_copy, sizeof cp_copy, "%s", cp_out);
    snprintf(mp_copy, sizeof mp_copy, "%s", mp_out);
    size_t nc, nm;
    char **c = split_lines(cp_out, &nc), **m = split_lines(mp_out, &nm);
    cr_assert_eq(nc, nm, "output lines: cp %zu, mpcp %zu\ncp:\n%s\nmpcp:\n%s", nc, nm, cp_copy,
                 mp_copy);
    qsort(c, nc, sizeof *c, str_cmp);
    qsort(m, nm, sizeof *m, str_cmp);
    for (size_t i = 0; i < nc; i++)
        cr_expect_str_eq(c[i], m[i], "output line differs:\ncp:   %s\nmpcp: %s", c[i], m[i]);
    free(c);
    free(m);
}

typedef void (*setup_fn)(int dir);

struct diff {
    const char *tag;
    setup_fn setup;
    setup_fn cleanup;        /* undoes what compare and removal cannot (mounts) */
    const char *args[16];    /* after the program name */
    const char *mp_args[16]; /* mpcp's, when they differ from cp's (9.1 lacks --update=WHEN) */
    unsigned flags;
    bool nobody;
    /*
     * cp 9.1 copies a folder into itself once before it notices; mpcp
     * refuses before creating anything. Only status and messages compare.
     */
    bool no_tree;
    bool resolve;     /* mpcp's executor reaches folders from the roots, as a worker does */
    const char *jobs; /* mpcp's -j N, when set (else the default: one worker per CPU) */
    /*
     * Absolute paths (cp -s links by the name as typed): an argument "@/x"
     * is x in each side's own folder, and outputs and symlink texts name
     * that folder "@" on both sides.
     */
    bool abs;
    /*
     * "NAME=value" in the environment of both runs (VERSION_CONTROL,
     * SIMPLE_BACKUP_SUFFIX, POSIXLY_CORRECT); those are unset otherwise, so
     * that the caller's own do not change a case.
     */
    const char *env;
};

/* The case's work folder, removed by fini even when an assertion ended the case. */
static char work[256];
static const struct diff *running;

static void remove_work(void)
{
    /* MPCP_TEST_KEEP=1 leaves the folders of a failed case to look at. */
    if (!work[0] || getenv("MPCP_TEST_KEEP"))
        return;
    if (running && running->cleanup) {
        int a = openat(AT_FDCWD, work, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (a >= 0) {
            int c = openat(a, "cp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            int m = openat(a, "mp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (c >= 0)
                running->cleanup(c);
            if (m >= 0)
                running->cleanup(m);
            close(c);
            close(m);
            close(a);
        }
    }
    remove_tree_at(AT_FDCWD, work);
}

/* "@/x" (see diff.abs): x by absolute path in the side's folder, in buf. */
static const char *side_arg(const char *arg, const char *side, char *buf, size_t size)
{
    if (strncmp(arg, "@/", 2) != 0)
        return arg;
    snprintf(buf, size, "%s%s", side, arg + 1);
    return buf;
}

/* Writes "@" for each occurrence of the side's folder in text (in place). */
static void name_side(char *text, const char *side)
{
    size_t n = strlen(side);
    char *w = text;
    for (const char *r = text; *r;) {
        if (strncmp(r, side, n) == 0) {
            *w++ = '@';
            r += n;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* The variables cp reads come from the case alone (see diff.env). */
static void set_case_env(const char *env)
{
    unsetenv("VERSION_CONTROL");
    unsetenv("SIMPLE_BACKUP_SUFFIX");
    unsetenv("POSIXLY_CORRECT");
    if (!env)
        return;
    char name[64];
    const char *eq = strchr(env, '=');
    cr_assert(eq && (size_t)(eq - env) < sizeof name, "bad env %s", env);
    memcpy(name, env, (size_t)(eq - env));
    name[eq - env] = '\0';
    setenv(name, eq + 1, 1);
}

static void differential(const struct diff *d)
{
    char path[300], cp_dir[300], mp_dir[300];
    static char cp_abs[16][600], mp_abs[16][600];
    running = d;
    int w = make_work_dir(work, sizeof work, d->tag);
    int a = sub_dir(w, "cp", 0777), b = sub_dir(w, "mp", 0777);
    d->setup(a);
    d->setup(b);
    if (d->nobody) {
        chown_tree(a, 65534, 65534);
        chown_tree(b, 65534, 65534);
    }
    const char *cp_argv[20] = {"cp"}, *mp_argv[20] = {MPROC_MPCP_PATH};
    const char *const *margs = d->mp_args[0] ? d->mp_args : d->args;
    snprintf(cp_dir, sizeof cp_dir, "%s/cp", work);
    snprintf(mp_dir, sizeof mp_dir, "%s/mp", work);
    for (int i = 0; d->args[i]; i++)
        cp_argv[i + 1] = side_arg(d->args[i], cp_dir, cp_abs[i], sizeof cp_abs[i]);
    int m = 1;
    if (d->jobs) {
        mp_argv[m++] = "-j";
        mp_argv[m++] = d->jobs;
    }
    for (int i = 0; margs[i]; i++)
        mp_argv[m++] = side_arg(margs[i], mp_dir, mp_abs[i], sizeof mp_abs[i]);
    static struct run_result rc, rm;
    set_case_env(d->env);
    snprintf(path, sizeof path, "%s/cp", work);
    run_in(path, d->nobody, cp_argv, &rc);
    snprintf(path, sizeof path, "%s/mp", work);
    if (d->resolve)
        setenv("MPCP_TASK_RESOLVE", "1", 1);
    run_in(path, d->nobody, mp_argv, &rm);
    unsetenv("MPCP_TASK_RESOLVE");
    if (d->abs) {
        name_side(rc.out, cp_dir);
        name_side(rc.err, cp_dir);
        name_side(rm.out, mp_dir);
        name_side(rm.err, mp_dir);
    }
    cr_assert_eq(rc.status, rm.status, "exit status: cp %d, mpcp %d\ncp: %s\nmpcp: %s", rc.status,
                 rm.status, rc.err, rm.err);
    compare_stderr(rc.err, rm.err);
    compare_stdout(rc.out, rm.out);
    if (!d->no_tree)
        compare_trees_at(a, b, d->flags | CMP_OWNER, d->abs ? cp_dir : NULL,
                         d->abs ? mp_dir : NULL);
    close(a);
    close(b);
    close(w);
}

/* ---- trees ---- */

static void setup_basic(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "alpha\n", 0644);
    put_file(s, "b", "", 0600);
    int sub = sub_dir(s, "sub", 0750);
    put_file(sub, "c", "gamma\n", 0640);
    close(sub);
    close(sub_dir(s, "empty", 0700));
    /* Bigger than one read/write buffer. */
    int fd = openat(s, "big", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    static char block[300 * 1024];
    for (size_t i = 0; i < sizeof block; i++)
        block[i] = (char)(i * 7 + 1);
    cr_assert_eq(write(fd, block, sizeof block), (ssize_t)sizeof block);
    close(fd);
    /* More entries than one batch. */
    int many = sub_dir(s, "many", 0755);
    for (int i = 0; i < 600; i++) {
        char name[32], data[32];
        snprintf(name, sizeof name, "f%03d", i);
        snprintf(data, sizeof data, "%d\n", i * i);
        put_file(many, name, data, 0644);
    }
    close(many);
    stamp_tree(s, 1000000000);
    close(s);
}

static void make_socket(int dir, const char *name)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/%s", dir, name);
    cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0, "bind: %s", strerror(errno));
    close(fd);
}

static void setup_types(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "alpha\n", 0644);
    put_file(s, "suid", "#!/bin/sh\n", 04755);
    put_file(s, "sgid", "x\n", 02755);
    put_file(s, "none", "secret\n", 0);
    put_file(s, "ro", "read only\n", 0444);
    must(mkfifoat(s, "fifo", 0640), "mkfifo", "fifo");
    make_socket(s, "sock");
    if (geteuid() == 0)
        must(mknodat(s, "null", S_IFCHR | 0666, makedev(1, 3)), "mknod", "null");
    must(symlinkat("/nonexistent/abs", s, "abs"), "symlink", "abs");
    must(symlinkat("a", s, "rel"), "symlink", "rel");
    must(symlinkat("nowhere", s, "dangling"), "symlink", "dangling");
    must(symlinkat("loop", s, "loop"), "symlink", "loop");
    must(symlinkat("sub", s, "dirlink"), "symlink", "dirlink");
    int sub = sub_dir(s, "sub", 0755);
    must(linkat(s, "a", sub, "a-link", 0), "link", "a-link");
    put_file(sub, "h1", "linked\n", 0600);
    must(linkat(sub, "h1", sub, "h2", 0), "link", "h2");
    must(linkat(sub, "h1", s, "h3", 0), "link", "h3");
    close(sub);
    int sticky = sub_dir(s, "sticky", 01777);
    put_file(sticky, "t", "t\n", 0666);
    close(sticky);
    int rod = sub_dir(s, "rodir", 0555);
    put_file(rod, "inside", "in\n", 0644);
    close(rod);
    close(sub_dir(s, "empty", 0755));
    put_file(s, "x", "xattr\n", 0644);
    fsetxattr(openat(s, "x", O_RDONLY | O_CLOEXEC), "user.mpcp", "v1", 2, 0);
    /* Sparse: data, a 3 MiB hole, data, a hole at the end. */
    int fd = openat(s, "sparse", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert_eq(pwrite(fd, "head", 4, 0), 4);
    cr_assert_eq(pwrite(fd, "tail", 4, 3 << 20), 4);
    cr_assert_eq(ftruncate(fd, 5 << 20), 0);
    close(fd);
    if (geteuid() == 0) {
        /* Other owners: kept by -a, not by -r; set-id bits follow cp's rules. */
        must(fchownat(s, "suid", 1234, 1234, 0), "chown", "suid");
        must(fchmodat(s, "suid", 04755, 0), "chmod", "suid");
        must(fchownat(s, "sgid", 0, 4321, 0), "chown", "sgid");
        must(fchmodat(s, "sgid", 02755, 0), "chmod", "sgid");
        must(fchownat(s, "rel", 1234, 4321, AT_SYMLINK_NOFOLLOW), "chown", "rel");
        must(fchownat(s, "sticky", 1234, 1234, 0), "chown", "sticky");
        must(fchmodat(s, "sticky", 01777, 0), "chmod", "sticky");
    }
    stamp_tree(s, 1100000000);
    close(s);
}

static void setup_names(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    static const char *const names[] = {"with space", "new\nline", "-dash",   "\xff\xfe",
                                        "quote'd",    "tab\tx",    "$dollar", "\xc3\xa9t\xc3\xa9"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        put_file(s, names[i], names[i], 0644);
    char longname[256];
    memset(longname, 'n', 255);
    longname[255] = '\0';
    put_file(s, longname, "long\n", 0644);
    longname[254] = '\0';
    int sub = sub_dir(s, longname, 0755);
    put_file(sub, "x y", "deep\n", 0644);
    close(sub);
    stamp_tree(s, 1200000000);
    close(s);
}

/* An existing destination: some files older, some newer, one extra. */
static void setup_existing(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "new a\n", 0644);
    put_file(s, "b", "new b\n", 0644);
    put_file(s, "c", "new c\n", 0755);
    int sub = sub_dir(s, "sub", 0755);
    put_file(sub, "d", "new d\n", 0644);
    close(sub);
    stamp_tree(s, 1300000000);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "a", "old a, longer than the new one\n", 0600);
    set_mtime(o, "a", 1000000000, 5);
    put_file(o, "b", "newer b\n", 0640);
    set_mtime(o, "b", 1400000000, 5);
    put_file(o, "extra", "keep\n", 0644);
    close(sub_dir(o, "sub", 0700));
    close(o);
    close(s);
}

static void setup_files(int dir)
{
    put_file(dir, "f", "file\n", 0640);
    must(linkat(dir, "f", dir, "h", 0), "link", "h");
    must(symlinkat("nowhere", dir, "dangling"), "symlink", "dangling");
    put_file(dir, "t", "target\n", 0600);
    must(symlinkat("t", dir, "tlink"), "symlink", "tlink");
    int d = sub_dir(dir, "d", 0755);
    put_file(d, "in", "in\n", 0644);
    close(d);
    close(sub_dir(dir, "o", 0755));
    stamp_tree(dir, 1300000000);
}

/* A file and its simple backup. */
static void setup_with_backup(int dir)
{
    put_file(dir, "a", "a\n", 0644);
    put_file(dir, "a~", "a-tilde\n", 0644);
    put_file(dir, "a.bak", "a-bak\n", 0644);
    stamp_tree(dir, 1300000000);
}

/* A source older than the file a destination symlink points to, but newer than the link. */
static void setup_update_through(int dir)
{
    put_file(dir, "n", "new\n", 0644);
    set_mtime(dir, "n", 1200000000, 0);
    put_file(dir, "t", "target\n", 0644);
    set_mtime(dir, "t", 1300000000, 0);
    must(symlinkat("t", dir, "tlink"), "symlink", "tlink");
    struct timespec ts[2] = {{1100000000, 0}, {1100000000, 0}};
    must(utimensat(dir, "tlink", ts, AT_SYMLINK_NOFOLLOW), "utimensat", "tlink");
}

/*
 * A destination folder of ours (root's, 0755) holding a symlink of another
 * user: no one else can have put it there, so mpcp writes through it as cp.
 */
static void setup_foreign_link(int dir)
{
    put_file(dir, "t", "target\n", 0644);
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "f", "new\n", 0644);
    close(s);
    int o = sub_dir(dir, "o", 0755);
    must(symlinkat("../t", o, "f"), "symlink", "o/f");
    must(fchownat(o, "f", 65534, 65534, AT_SYMLINK_NOFOLLOW), "chown", "o/f");
    close(o);
    stamp_tree(dir, 1300000000);
}

/* For a case as nobody: chown_tree gives it all, the symlink too, to nobody. */
static void setup_own_link(int dir)
{
    put_file(dir, "f", "new\n", 0644);
    put_file(dir, "t", "target\n", 0644);
    must(symlinkat("t", dir, "tlink"), "symlink", "tlink");
}

static void setup_unreadable(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "ok", "fine\n", 0644);
    put_file(s, "secret", "hidden\n", 0);
    int d = sub_dir(s, "closed", 0755);
    put_file(d, "inside", "x\n", 0644);
    must(fchmod(d, 0), "chmod", "closed");
    close(d);
    int r = sub_dir(s, "rodir", 0500);
    close(r);
    put_file(s, "zz", "last\n", 0644);
    close(s);
}

/* A source of every type, a file, and a folder nobody can search. */
static void setup_blocked_dest(int dir)
{
    setup_types(dir);
    put_file(dir, "file", "in the way\n", 0644);
    close(sub_dir(dir, "locked", 0));
}

/*
 * Folders met twice: a command-line folder inside another, and a symlink to
 * an ancestor. (Through a symlink to the folder that holds the destination,
 * cp 9.1 may copy until names are too long: mpcp stops, test_mpcp_beyond.)
 */
static void setup_met_twice(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    int a = sub_dir(s, "a", 0755);
    int b = sub_dir(a, "b", 0755);
    put_file(b, "f", "in b\n", 0644);
    close(b);
    put_file(a, "g", "in a\n", 0644);
    close(a);
    int d = sub_dir(s, "d", 0755);
    must(symlinkat("..", d, "up"), "symlink", "up");
    close(d);
    close(s);
    close(sub_dir(dir, "o", 0755));
}

/*
 * Symlinks to their own folder (cycles with -L) whose destination is a
 * file: cp says what is in the way before it says the cycle (found by the
 * random rounds, seed 1796604737).
 */
static void setup_cycle_onto_file(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    must(symlinkat(".", s, "a"), "symlink", "a");
    must(symlinkat(".", s, "g"), "symlink", "g");
    int d = sub_dir(s, "d", 0755);
    must(symlinkat("..", d, "up"), "symlink", "up");
    close(d);
    close(s);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "g", "a file where the cycle would go\n", 0644);
    int od = sub_dir(o, "d", 0755);
    put_file(od, "up", "a file where the folder met before would go\n", 0644);
    close(od);
    close(o);
}

/*
 * Below an -H operand cp copies with -P: a symlink or a fifo onto an
 * existing file removes it first ("removed" with -v), and -l links them in
 * its place (found by the random rounds, seeds 1796623471, 1796623342,
 * 1796627742).
 */
static void setup_specials_onto_files(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "f", "a file\n", 0644);
    must(symlinkat("f", s, "l"), "symlink", "l");
    must(mkfifoat(s, "p", 0644), "mkfifo", "p");
    close(s);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "l", "in the way of a symlink\n", 0644);
    put_file(o, "p", "in the way of a fifo\n", 0644);
    close(o);
}

/* Names that reach one inode through symlinks, and a link group whose first name cannot be read. */
static void setup_links_via_symlinks(int dir)
{
    put_file(dir, "f", "one inode\n", 0644);
    must(symlinkat("f", dir, "l1"), "symlink", "l1");
    must(symlinkat("f", dir, "l2"), "symlink", "l2");
    int s = sub_dir(dir, "s", 0755);
    must(symlinkat("../f", s, "a"), "symlink", "a");
    must(symlinkat("../f", s, "b"), "symlink", "b");
    put_file(s, "closed", "no one reads this\n", 0);
    must(linkat(s, "closed", s, "closed2", 0), "link", "closed2");
    must(linkat(s, "closed", s, "closed3", 0), "link", "closed3");
    close(s);
    close(sub_dir(dir, "d", 0755));
}

/* Fifos reached directly and through symlinks, onto existing files. */
static void setup_fifo_onto_files(int dir)
{
    must(mkfifoat(dir, "ff", 0640), "mkfifo", "ff");
    must(symlinkat("ff", dir, "lf"), "symlink", "lf");
    int s = sub_dir(dir, "s", 0755);
    must(mkfifoat(s, "ff", 0640), "mkfifo", "ff");
    must(symlinkat("ff", s, "lf"), "symlink", "lf");
    close(s);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "ff", "old\n", 0644);
    put_file(o, "lf", "old\n", 0644);
    int os = sub_dir(o, "s", 0755);
    put_file(os, "ff", "old\n", 0644);
    put_file(os, "lf", "old\n", 0644);
    close(os);
    close(o);
}

static void setup_loop(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "a\n", 0644);
    int sub = sub_dir(s, "sub", 0755);
    must(symlinkat("..", sub, "up"), "symlink", "up");
    must(symlinkat("../a", sub, "toa"), "symlink", "toa");
    close(sub);
    close(s);
}

static void setup_deref(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "a\n", 0644);
    must(symlinkat("a", s, "la"), "symlink", "la");
    int sub = sub_dir(s, "sub", 0755);
    put_file(sub, "b", "b\n", 0644);
    close(sub);
    must(symlinkat("sub", s, "lsub"), "symlink", "lsub");
    must(symlinkat("s", dir, "sl"), "symlink", "sl");
    stamp_tree(s, 1300000000);
    close(s);
}

/* The same, with a target folder for operands. */
static void setup_deref_into(int dir)
{
    setup_deref(dir);
    close(sub_dir(dir, "o", 0755));
}

static void setup_clash(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    int x = sub_dir(s, "x", 0755);
    put_file(x, "in", "in\n", 0644);
    close(x);
    put_file(s, "y", "y\n", 0644);
    put_file(s, "z", "z\n", 0644);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "x", "file\n", 0644);
    close(sub_dir(o, "y", 0755));
    close(o);
    close(s);
}

/* Existing destinations of every kind where the source has other kinds. */
static void setup_replace(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "a\n", 0644);
    must(symlinkat("a", s, "l"), "symlink", "l");
    must(mkfifoat(s, "fifo", 0644), "mkfifo", "fifo");
    put_file(s, "h", "new h\n", 0644);
    int sub = sub_dir(s, "sub", 0755);
    put_file(sub, "in", "in\n", 0644);
    close(sub);
    stamp_tree(s, 1300000000);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "l", "a file where s has a link\n", 0644);
    put_file(o, "fifo", "a file where s has a fifo\n", 0644);
    must(symlinkat("nowhere", o, "a"), "symlink", "a");
    put_file(o, "h", "old h, linked\n", 0644);
    must(linkat(o, "h", dir, "h-outside", 0), "link", "h-outside");
    int elsewhere = sub_dir(dir, "elsewhere", 0755);
    close(elsewhere);
    must(symlinkat("../elsewhere", o, "sub"), "symlink", "sub");
    close(o);
    close(s);
}

static void setup_twice(int dir)
{
    int s1 = sub_dir(dir, "s1", 0755), s2 = sub_dir(dir, "s2", 0755);
    put_file(s1, "x", "1\n", 0644);
    put_file(s2, "x", "2\n", 0644);
    int d1 = sub_dir(s1, "d", 0755), d2 = sub_dir(s2, "d", 0755);
    put_file(d1, "one", "1\n", 0644);
    put_file(d2, "two", "2\n", 0644);
    close(d1);
    close(d2);
    close(sub_dir(dir, "o", 0755));
    close(s1);
    close(s2);
}

/* A symlink and a file of one name in two folders (coreutils' tests/cp/abuse.sh); t is made by
 * setup_abuse_target. */
static void setup_abuse(int dir)
{
    int a = sub_dir(dir, "a", 0755), b = sub_dir(dir, "b", 0755);
    must(symlinkat("../t", a, "1"), "symlink", "a/1");
    put_file(b, "1", "payload\n", 0644);
    close(sub_dir(dir, "c", 0755));
    close(a);
    close(b);
}

static void setup_abuse_target(int dir)
{
    setup_abuse(dir);
    put_file(dir, "t", "i\n", 0644);
}

/* A symlink into a folder its user may not search (coreutils' tests/cp/fail-perm.sh). */
static void setup_unsearchable_link(int dir)
{
    put_file(dir, "F", "f\n", 0644);
    int d = sub_dir(dir, "D", 0755);
    close(sub_dir(d, "D", 0755));
    must(fchmod(d, 0), "chmod", "D");
    close(d);
    must(symlinkat("D/D", dir, "symlink"), "symlink", "symlink");
}

/* coreutils' tests/cp/attr-existing.sh: an existing file (hard-linked) and other kinds of sources.
 */
static void setup_attr_existing(int dir)
{
    put_file(dir, "file1", "1", 0644);
    put_file(dir, "file2", "2", 0640);
    must(linkat(dir, "file2", dir, "link2", 0), "link", "link2");
    must(symlinkat("file1", dir, "sym1"), "symlink", "sym1");
    must(mkfifoat(dir, "ff", 0600), "mkfifo", "ff");
    stamp_tree(dir, 1300000000);
}

/*
 * coreutils' tests/cp/preserve-link.sh: five names of one file, copied
 * with -au onto a tree holding some of them, older, as old and linked.
 * Whichever name either walk meets first, the result is the same.
 */
static void setup_update_links(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "f", "", 0644);
    static const char *const names[] = {"linkm", "linke", "fileo", "fileu"};
    for (int i = 0; i < 4; i++)
        must(linkat(s, "f", s, names[i], 0), "link", names[i]);
    set_mtime(s, "f", 1300000000, 0);
    int t = sub_dir(dir, "t", 0755), ts = sub_dir(t, "s", 0755);
    put_file(ts, "f", "", 0644);
    must(linkat(ts, "f", ts, "linke", 0), "link", "linke");
    set_mtime(ts, "f", 1300000000, 0);
    put_file(ts, "fileo", "", 0644);
    set_mtime(ts, "fileo", 1200000000, 0);
    put_file(ts, "fileu", "", 0644);
    set_mtime(ts, "fileu", 1300000000, 0);
    close(ts);
    close(t);
    close(s);
}

/*
 * Four names of one file onto a destination where two are newer and two
 * older: cp -u keeps the newer ones and, even without --preserve=links,
 * links a later kept name to the first it kept (its newer file goes).
 */
static void setup_update_kept_links(int dir)
{
    static const char *const names[] = {"a", "b", "c", "d"};
    static const time_t ages[] = {1400000000, 1200000000, 1200000000, 1400000000};
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "source\n", 0644);
    for (int i = 1; i < 4; i++)
        must(linkat(s, "a", s, names[i], 0), "link", names[i]);
    set_mtime(s, "a", 1300000000, 0);
    int o = sub_dir(dir, "o", 0755);
    for (int i = 0; i < 4; i++) {
        char text[32];
        snprintf(text, sizeof text, "old %s\n", names[i]);
        put_file(o, names[i], text, 0644);
        set_mtime(o, names[i], ages[i], 0);
    }
    close(o);
    close(s);
}

static void setup_readonly_dest(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "new\n", 0644);
    put_file(s, "b", "new b\n", 0644);
    close(s);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "a", "old, read-only\n", 0444);
    close(o);
}

/* One file with a name in s, two in s/sub and one in s/sub/deep; s's name is already in o. */
static void setup_group_across_folders(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "the group\n", 0644);
    int sub = sub_dir(s, "sub", 0755);
    must(linkat(s, "a", sub, "b", 0), "link", "b");
    must(linkat(s, "a", sub, "c", 0), "link", "c");
    int deep = sub_dir(sub, "deep", 0755);
    must(linkat(s, "a", deep, "d", 0), "link", "d");
    close(deep);
    close(sub);
    close(s);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "a", "kept by -n\n", 0644);
    close(o);
}

static void setup_mount(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "a\n", 0644);
    int m = sub_dir(s, "mnt", 0755);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", m);
    if (mount("tmpfs", path, "tmpfs", 0, "size=64k,mode=0750") < 0) {
        int err = errno;
        remove_work(); /* Criterion does not run .fini after a skip */
        cr_skip_test("cannot mount a tmpfs here (%s): needs root", strerror(err));
    }
    close(m);
    m = openat(s, "mnt", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    put_file(m, "inside", "other fs\n", 0644);
    close(m);
    close(s);
}

static void unmount(int dir)
{
    char path[64];
    int m = openat(dir, "s/mnt", O_PATH | O_DIRECTORY | O_CLOEXEC);
    snprintf(path, sizeof path, "/proc/self/fd/%d", m);
    char real[PATH_MAX];
    ssize_t n = readlink(path, real, sizeof real - 1);
    close(m);
    if (n > 0) {
        real[n] = '\0';
        umount2(real, MNT_DETACH);
    }
}

/* A hard-link group spread over two operands. */
static void setup_links_across(int dir)
{
    int s1 = sub_dir(dir, "s1", 0755), s2 = sub_dir(dir, "s2", 0755);
    put_file(s1, "a", "shared\n", 0644);
    must(linkat(s1, "a", s2, "b", 0), "link", "b");
    int deep = sub_dir(s2, "deep", 0755);
    must(linkat(s1, "a", deep, "c", 0), "link", "c");
    close(deep);
    put_file(dir, "loose", "loose\n", 0644);
    must(linkat(dir, "loose", s2, "loose-link", 0), "link", "loose-link");
    close(sub_dir(dir, "o", 0755));
    stamp_tree(s1, 1300000000);
    stamp_tree(s2, 1300000000);
    close(s1);
    close(s2);
}

/*
 * Files of several owners copied into a set-group-ID folder of another
 * group: a new file takes that group, so mpcp may skip fchown only where
 * it already is the one wanted. As root: -a keeps every owner; -r gives
 * the folder's group to all. The source folders are set-group-ID too
 * (plain ones under a set-group-ID parent: setup_setgid_parent).
 */
static void setup_setgid_dest(int dir)
{
    int s = sub_dir(dir, "s", 02755);
    put_file(s, "root", "root\n", 0644);
    put_file(s, "group", "group of o\n", 0640);
    put_file(s, "other", "another owner\n", 0644);
    put_file(s, "both", "both\n", 0444);
    put_file(s, "sgid", "set-gid\n", 02755);
    int sub = sub_dir(s, "sub", 02750);
    put_file(sub, "deep", "deep\n", 0640);
    put_file(sub, "deep-root", "deep, root's\n", 0755);
    if (geteuid() == 0) {
        must(fchownat(s, "group", 0, 4321, 0), "chown", "group");
        must(fchownat(s, "other", 1234, 1234, 0), "chown", "other");
        must(fchownat(s, "both", 1234, 4321, 0), "chown", "both");
        must(fchownat(s, "sgid", 0, 4321, 0), "chown", "sgid");
        must(fchmodat(s, "sgid", 02755, 0), "chmod", "sgid");
        must(fchownat(sub, "deep", 0, 4321, 0), "chown", "deep");
        must(fchown(sub, 0, 4321), "chown", "sub");
        must(fchmod(sub, 02750), "chmod", "sub");
        must(fchown(s, 0, 4321), "chown", "s");
        must(fchmod(s, 02755), "chmod", "s");
    }
    close(sub);
    stamp_tree(s, 1400000000);
    close(s);
    int o = sub_dir(dir, "o", 0775);
    if (geteuid() == 0)
        must(fchown(o, 0, 4321), "chown", "o");
    must(fchmod(o, 02775), "chmod", "o");
    close(o);
}

/*
 * Plain folders (and one set-user-ID folder) copied into a set-group-ID
 * folder: the new folders inherit the bit from mkdir, and cp -p keeps it
 * where the source mode has no set-id or sticky bit (it sets only the rwx
 * bits then), but applies a source mode that has one.
 */
static void setup_setgid_parent(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    int sub = sub_dir(s, "sub", 0750);
    put_file(sub, "f", "f\n", 0644);
    close(sub);
    close(sub_dir(s, "suid", 04755));
    stamp_tree(s, 1400000000);
    close(s);
    int o = sub_dir(dir, "o", 0775);
    must(fchmod(o, 02775), "chmod", "o");
    close(o);
}

/*
 * A default ACL on the target folder (user::rwx group::r-x other::---):
 * it replaces the umask for what is created below, so a file created with
 * its final mode ends up otherwise than one chmod'ed to it, as cp -a and
 * cp -p do. Skipped where the filesystem has no ACLs.
 */
static void setup_default_acl(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "a\n", 0644);
    put_file(s, "x", "x\n", 0755);
    put_file(s, "own", "own\n", 0600);
    int sub = sub_dir(s, "sub", 0755);
    put_file(sub, "b", "b\n", 0664);
    close(sub);
    stamp_tree(s, 1400000000);
    close(s);
    int o = sub_dir(dir, "o", 0755);
    struct {
        uint32_t version;
        struct {
            uint16_t tag, perm;
            uint32_t id;
        } e[3];
    } acl = {2, {{0x01, 7, UINT32_MAX}, {0x04, 5, UINT32_MAX}, {0x20, 0, UINT32_MAX}}};
    if (fsetxattr(o, "system.posix_acl_default", &acl, sizeof acl, 0) < 0) {
        int err = errno;
        close(o);
        remove_work(); /* Criterion does not run .fini after a skip */
        cr_skip_test("no default ACL here: %s", strerror(err));
    }
    close(o);
}

/* A POSIX ACL xattr: user::rw- user:bin:rw- group::r-- mask::rw- other::r-- (4 if default). */
struct acl5 {
    uint32_t version;
    struct {
        uint16_t tag, perm;
        uint32_t id;
    } e[5];
};

static void set_acl(int fd, const char *name, uint16_t user_perm)
{
    struct acl5 acl = {2,
                       {{0x01, 6, UINT32_MAX},
                        {0x02, user_perm, 2},
                        {0x04, 4, UINT32_MAX},
                        {0x10, 6, UINT32_MAX},
                        {0x20, 4, UINT32_MAX}}};
    if (fsetxattr(fd, name, &acl, sizeof acl, 0) < 0) {
        int err = errno;
        remove_work(); /* Criterion does not run .fini after a skip */
        cr_skip_test("no ACLs here: %s", strerror(err));
    }
}

/* coreutils' tests/cp/acl.sh: a file and a folder with ACLs, and a copy of the file to update. */
static void setup_acls(int dir)
{
    int a = sub_dir(dir, "a", 0755);
    put_file(a, "file", "data\n", 0644);
    int fd = openat(a, "file", O_RDONLY | O_CLOEXEC);
    set_acl(fd, "system.posix_acl_access", 6);
    close(fd);
    int d = sub_dir(a, "d", 0755);
    set_acl(d, "system.posix_acl_access", 7);
    set_acl(d, "system.posix_acl_default", 5);
    close(d);
    close(a);
    int b = sub_dir(dir, "b", 0755);
    put_file(b, "file", "", 0600);
    close(b);
}

/* A tree without ACLs, to copy into a folder whose default ACL names a user. */
static void setup_named_default_acl(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    int sub = sub_dir(s, "sub", 0750);
    put_file(sub, "f", "f\n", 0640);
    close(sub);
    put_file(s, "g", "g\n", 0604);
    close(s);
    int o = sub_dir(dir, "o", 0755);
    set_acl(o, "system.posix_acl_default", 5);
    close(o);
}

/* The ACL xattr name of path (below the side's folder) into buf: its length, 0 if none. */
static ssize_t acl_of(const char *side, const char *path, const char *name, char *buf, size_t size)
{
    char full[600];
    snprintf(full, sizeof full, "%s/%s/%s", work, side, path);
    ssize_t n = getxattr(full, name, buf, size);
    return n < 0 && errno == ENODATA ? 0 : n;
}

static void same_acl(const char *path, const char *name)
{
    char a[256], b[256];
    ssize_t na = acl_of("cp", path, name, a, sizeof a), nb = acl_of("mp", path, name, b, sizeof b);
    cr_assert_geq(na, 0, "%s: %s", path, strerror(errno));
    cr_assert(na == nb && memcmp(a, b, (size_t)na) == 0, "%s: %s differs (%zd vs %zd bytes)", path,
              name, na, nb);
}

/* cp -p keeps ACLs (the mode alone would not show the difference: it is the mask's). */
Test(mpcp_diff, preserve_mode_keeps_acls, .fini = remove_work, .timeout = 60)
{
    static const struct diff d = {.tag = "preserve_mode_keeps_acls",
                                  .setup = setup_acls,
                                  .args = {"-rp", "a", "c"},
                                  .flags = CMP_MTIME};
    differential(&d);
    same_acl("c/file", "system.posix_acl_access");
    same_acl("c/d", "system.posix_acl_access");
    same_acl("c/d", "system.posix_acl_default");
}

Test(mpcp_diff, preserve_mode_attributes_only_keeps_acl, .fini = remove_work, .timeout = 60)
{
    static const struct diff d = {.tag = "preserve_mode_attributes_only_keeps_acl",
                                  .setup = setup_acls,
                                  .args = {"-p", "--attributes-only", "a/file", "b/"}};
    differential(&d);
    same_acl("b/file", "system.posix_acl_access");
}

/* What a default ACL gave the copies: cp -p takes it away (the source has none), cp -r keeps it. */
static void same_acls_below_o(void)
{
    static const char *const paths[] = {"o/s", "o/s/sub", "o/s/sub/f", "o/s/g"};
    for (int i = 0; i < 4; i++) {
        same_acl(paths[i], "system.posix_acl_access");
        if (i < 2)
            same_acl(paths[i], "system.posix_acl_default");
    }
}

Test(mpcp_diff, preserve_mode_drops_inherited_acls, .fini = remove_work, .timeout = 60)
{
    static const struct diff d = {
        .tag = "preserve_mode_drops_inherited_acls",
        .setup = setup_named_default_acl,
        .args = {"-rp", "s", "o"},
    };
    differential(&d);
    same_acls_below_o();
}

Test(mpcp_diff, recursive_keeps_inherited_acls, .fini = remove_work, .timeout = 60)
{
    static const struct diff d = {
        .tag = "recursive_keeps_inherited_acls",
        .setup = setup_named_default_acl,
        .args = {"-r", "s", "o"},
    };
    differential(&d);
    same_acls_below_o();
}

Test(mpcp_diff, no_preserve_no_acl, .fini = remove_work, .timeout = 60)
{
    static const struct diff d = {
        .tag = "no_preserve_no_acl", .setup = setup_acls, .args = {"-r", "a", "c"}};
    differential(&d);
    same_acl("c/file", "system.posix_acl_access");
    same_acl("c/d", "system.posix_acl_default");
}

/*
 * --parents: folders of several modes on the way (one read-only), a target
 * folder, one where a file stands in a folder's place, a symlink to a folder.
 */
static void setup_parents(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    int a = sub_dir(s, "a", 0750);
    int b = sub_dir(a, "b", 0705);
    put_file(b, "f", "deep\n", 0640);
    put_file(a, "y", "why\n", 0600);
    int c = sub_dir(s, "c", 0755);
    put_file(c, "z", "zed\n", 0644);
    stamp_tree(s, 1000000000);
    cr_assert_eq(fchmod(c, 0555), 0);
    close(b);
    close(a);
    close(c);
    close(s);
    close(sub_dir(dir, "o", 0755));
    int clash = sub_dir(dir, "oclash", 0755);
    put_file(clash, "s", "a file\n", 0644);
    close(clash);
    cr_assert_eq(symlinkat("s/a", dir, "sl"), 0);
}

/*
 * An existing destination for -b: files, a symlink where s has one, a file
 * where s has a fifo, a hard-link group, a file linked from outside o (its
 * backup must stay that inode); numbered backups already there for some
 * names (a: 1 and 2; b: 9, so the next is 10; sub/c: only names that are
 * no numbered backup of c), none for the others. No name in s is another's
 * backup name: cp and mpcp take a folder's files in different orders.
 */
static void setup_backups(int dir)
{
    int s = sub_dir(dir, "s", 0755);
    put_file(s, "a", "new a\n", 0644);
    put_file(s, "b", "new b\n", 0600);
    put_file(s, "h1", "new linked\n", 0644);
    must(linkat(s, "h1", s, "h2", 0), "link", "h2");
    must(symlinkat("a", s, "l"), "symlink", "l");
    must(mkfifoat(s, "p", 0644), "mkfifo", "p");
    put_file(s, "new", "only in s\n", 0644);
    int sub = sub_dir(s, "sub", 0755);
    put_file(sub, "c", "new c\n", 0644);
    close(sub);
    stamp_tree(s, 1300000000);
    int o = sub_dir(dir, "o", 0755);
    put_file(o, "a", "old a\n", 0640);
    put_file(o, "a.~1~", "first a\n", 0644);
    put_file(o, "a.~2~", "second a\n", 0644);
    put_file(o, "b", "old b\n", 0644);
    put_file(o, "b.~9~", "ninth b\n", 0644);
    put_file(o, "h1", "old h1\n", 0644);
    put_file(o, "h2", "old h2, linked outside\n", 0644);
    must(linkat(o, "h2", dir, "h2-outside", 0), "link", "h2-outside");
    must(symlinkat("nowhere", o, "l"), "symlink", "l");
    put_file(o, "p", "a file where s has a fifo\n", 0644);
    int osub = sub_dir(o, "sub", 0755);
    put_file(osub, "c", "old c\n", 0644);
    put_file(osub, "c.~07~", "not a numbered backup\n", 0644);
    put_file(osub, "c.~1", "nor this\n", 0644);
    put_file(osub, "cc.~1~", "another name's\n", 0644);
    close(osub);
    stamp_tree(o, 1200000000);
    close(o);
    close(s);
}

/*
 * Names near NAME_MAX: a backup name longer than the folder takes is cut
 * as cp cuts it (the name and "~"); a numbered one cut onto an existing
 * name fails ("cannot backup ...: File exists").
 */
static void setup_backup_long_names(int dir)
{
    static const size_t lengths[] = {250, 251, 254, 255};
    int s = sub_dir(dir, "s", 0755), o = sub_dir(dir, "o", 0755);
    char name[NAME_MAX + 2];
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        memset(name, (int)('w' + i), lengths[i]);
        name[lengths[i]] = '\0';
        put_file(s, name, "new\n", 0644);
        put_file(o, name, "old\n", 0644);
    }
    memset(name, 'x', 251);
    strcpy(name + 251, "~");
    put_file(o, name, "taken\n", 0644);
    close(o);
    close(s);
}

/* Where a backup cannot go: its name is a folder. */
static void setup_backup_blocked(int dir)
{
    put_file(dir, "f", "f\n", 0644);
    put_file(dir, "t", "t\n", 0644);
    close(sub_dir(dir, "t~", 0755));
    close(sub_dir(dir, "t.~1~", 0755));
}

/* ---- cases ---- */

#define CASE(name, ...)                                                                            \
    Test(mpcp_diff, name, .fini = remove_work, .timeout = 60)                                      \
    {                                                                                              \
        static const struct diff d = {.tag = #name, __VA_ARGS__};                                  \
        differential(&d);                                                                          \
    }

CASE(recursive_basic, .setup = setup_basic, .args = {"-r", "s", "o"})
CASE(archive_basic, .setup = setup_basic, .args = {"-a", "s", "o"}, .flags = CMP_MTIME)
CASE(archive_all_types, .setup = setup_types, .args = {"-a", "s", "o"}, .flags = CMP_MTIME)
CASE(recursive_all_types, .setup = setup_types, .args = {"-r", "s", "o"})
CASE(preserve_mode_only, .setup = setup_types, .args = {"-r", "--preserve=mode", "s", "o"})
CASE(preserve_p, .setup = setup_types, .args = {"-rp", "s", "o"}, .flags = CMP_MTIME)
CASE(archive_no_preserve_mode, .setup = setup_types, .args = {"-a", "--no-preserve=mode", "s", "o"},
     .flags = CMP_MTIME)
CASE(d_keeps_links, .setup = setup_types, .args = {"-rd", "s", "o"})
CASE(archive_no_links, .setup = setup_types, .args = {"-a", "--no-preserve=links", "s", "o"},
     .flags = CMP_MTIME)
CASE(archive_names, .setup = setup_names, .args = {"-av", "s", "o"}, .flags = CMP_MTIME)
CASE(trailing_slash, .setup = setup_basic, .args = {"-r", "s/", "o2/"})
CASE(into_existing_dir, .setup = setup_existing, .args = {"-r", "s", "o"})
CASE(overwrite_T, .setup = setup_existing, .args = {"-rT", "s", "o"})
CASE(archive_overwrite_T, .setup = setup_existing, .args = {"-aT", "s", "o"}, .flags = CMP_MTIME)
CASE(no_clobber, .setup = setup_existing, .args = {"-rnT", "s", "o"})
CASE(update_older, .setup = setup_existing, .args = {"-ruT", "s", "o"})
CASE(update_skips_before_asking, .setup = setup_existing, .args = {"-riuT", "s", "o"})
CASE(no_clobber_wins_over_update_after, .setup = setup_existing, .args = {"-rnuT", "s", "o"})
CASE(no_clobber_wins_over_update_before, .setup = setup_existing, .args = {"-ruT", "-n", "s", "o"})
/* -u does not keep a newer file in place of a hard link to the copy of its source. */
CASE(update_links_to_the_copy, .setup = setup_update_links, .args = {"-au", "s", "t"},
     .flags = CMP_MTIME)
CASE(update_links_kept_names, .setup = setup_update_kept_links, .args = {"-ruvT", "s", "o"})
CASE(update_links_kept_names_j1, .setup = setup_update_kept_links, .args = {"-ruvT", "s", "o"},
     .jobs = "1")
CASE(update_links_kept_names_j4, .setup = setup_update_kept_links, .args = {"-ruvT", "s", "o"},
     .jobs = "4")
CASE(update_links_kept_names_preserved, .setup = setup_update_kept_links,
     .args = {"-rduvT", "s", "o"}, .jobs = "4")
CASE(update_links_kept_names_backup, .setup = setup_update_kept_links, .args = {"-rubvT", "s", "o"},
     .jobs = "4")
CASE(update_none_is_n, .setup = setup_existing, .args = {"-rnT", "s", "o"},
     .mp_args = {"-rT", "--update=none", "s", "o"})
CASE(update_older_is_u, .setup = setup_existing, .args = {"-a", "-uT", "s", "o"},
     .mp_args = {"-a", "--update=older", "-T", "s", "o"}, .flags = CMP_MTIME)
CASE(target_directory, .setup = setup_existing, .args = {"-t", "o", "s/a", "s/b", "s/c"})
CASE(many_into_dir, .setup = setup_existing, .args = {"-r", "s/a", "s/sub", "o"})
CASE(into_itself, .setup = setup_basic, .args = {"-r", "s", "s/x"}, .no_tree = true)
CASE(into_itself_dir, .setup = setup_basic, .args = {"-r", "s", "s"}, .no_tree = true)
CASE(same_file, .setup = setup_files, .args = {"f", "f"})
CASE(same_file_hardlink, .setup = setup_files, .args = {"f", "h"})
CASE(same_file_via_symlink, .setup = setup_files, .args = {"t", "tlink"})
CASE(dangling_dest, .setup = setup_files, .args = {"f", "dangling"})
/* cp judges a destination symlink by what it points to, before -u and -n. */
CASE(update_same_file, .setup = setup_files, .args = {"-u", "f", "h"})
CASE(update_same_file_via_symlink, .setup = setup_files, .args = {"-u", "t", "tlink"})
CASE(update_through_symlink, .setup = setup_update_through, .args = {"-uv", "n", "tlink"},
     .flags = CMP_MTIME)
CASE(update_dangling_dest, .setup = setup_files, .args = {"-u", "f", "dangling"})
CASE(no_clobber_dangling_dest, .setup = setup_files, .args = {"-n", "f", "dangling"})
CASE(no_clobber_same_file, .setup = setup_files, .args = {"-n", "f", "h"})
/* cp will not write through a dangling symlink, -f or not, unless POSIXLY_CORRECT. */
CASE(dangling_dest_force, .setup = setup_files, .args = {"-fv", "f", "dangling"})
CASE(dangling_dest_posix, .setup = setup_files, .args = {"-v", "f", "dangling"},
     .env = "POSIXLY_CORRECT=1")
/* A symlink loop cannot be stated: -f removes it and a new file (its own mode) takes the name. */
CASE(loop_dest, .setup = setup_types, .args = {"s/a", "s/loop"})
CASE(loop_dest_force, .setup = setup_types, .args = {"-fv", "s/a", "s/loop"})
/* -d: a symlink onto the file it points to is refused, unless a backup keeps the file. */
CASE(symlink_onto_its_target, .setup = setup_files, .args = {"-d", "tlink", "t"})
CASE(symlink_onto_its_target_force, .setup = setup_files, .args = {"-df", "tlink", "t"})
CASE(symlink_onto_its_target_remove, .setup = setup_files,
     .args = {"-d", "--remove-destination", "tlink", "t"})
CASE(symlink_onto_its_target_backup, .setup = setup_files, .args = {"-bdv", "tlink", "t"})
CASE(symlink_onto_its_target_no_clobber, .setup = setup_files, .args = {"-dn", "tlink", "t"})
CASE(write_through_symlink, .setup = setup_files, .args = {"f", "tlink"})
CASE(write_through_symlink_as_nobody, .setup = setup_own_link, .args = {"f", "tlink"},
     .nobody = true)
CASE(write_through_foreign_link_in_our_folder, .setup = setup_foreign_link, .args = {"s/f", "o/f"})
CASE(write_through_foreign_link_workers, .setup = setup_foreign_link, .args = {"-r", "s/.", "o"},
     .jobs = "4")
CASE(write_through_foreign_link_one_job, .setup = setup_foreign_link, .args = {"-a", "s/.", "o"},
     .jobs = "1", .flags = CMP_MTIME)
/* "" names nothing: cp's "cannot stat ''" and the like, whatever the position. */
CASE(empty_source, .setup = setup_files, .args = {"", "o"})
CASE(empty_source_recursive, .setup = setup_files, .args = {"-r", "", "o"})
CASE(empty_source_among_others, .setup = setup_files, .args = {"-r", "f", "", "d", "o"},
     .jobs = "4")
CASE(empty_source_one_job, .setup = setup_files, .args = {"-a", "", "d", "o"}, .jobs = "1",
     .flags = CMP_MTIME)
CASE(empty_source_T, .setup = setup_files, .args = {"-rT", "", "o"})
CASE(empty_source_parents, .setup = setup_files, .args = {"-r", "--parents", "", "o"})
CASE(empty_source_target_option, .setup = setup_files, .args = {"-r", "-t", "o", ""})
CASE(empty_dest, .setup = setup_files, .args = {"f", ""})
CASE(empty_dest_T, .setup = setup_files, .args = {"-T", "f", ""})
CASE(empty_dest_recursive, .setup = setup_files, .args = {"-r", "d", ""})
CASE(empty_dest_link, .setup = setup_files, .args = {"-l", "f", ""})
CASE(empty_dest_symlink, .setup = setup_files, .args = {"-s", "f", ""})
CASE(empty_dest_backup, .setup = setup_files, .args = {"-b", "f", ""})
CASE(empty_dest_many, .setup = setup_files, .args = {"f", "t", ""})
CASE(empty_target_option, .setup = setup_files, .args = {"-t", "", "f"})
CASE(empty_both, .setup = setup_files, .args = {"", ""})
CASE(missing_source, .setup = setup_basic, .args = {"-r", "nope", "s", "o"})
CASE(omit_directory, .setup = setup_files, .args = {"f", "d", "o"})
CASE(file_to_file, .setup = setup_files, .args = {"-p", "f", "o/g"}, .flags = CMP_MTIME)
CASE(follow_operand_symlink, .setup = setup_files, .args = {"tlink", "o/copy"})
CASE(dir_onto_file_and_back, .setup = setup_clash, .args = {"-rT", "s", "o"})
CASE(deref_L, .setup = setup_deref, .args = {"-rL", "s", "o"})
CASE(deref_H, .setup = setup_deref, .args = {"-rH", "sl", "o"})
CASE(no_deref_P, .setup = setup_deref, .args = {"-rP", "sl", "o"})
CASE(folder_operand_inside_another, .setup = setup_met_twice, .args = {"-r", "s/a/b", "s/a", "o"})
CASE(folder_operand_inside_another_L, .setup = setup_met_twice,
     .args = {"-rL", "s/a/b", "s/a", "o"})
CASE(cyclic_symlink_with_L, .setup = setup_met_twice, .args = {"-rL", "s", "o/new"})
CASE(cycle_onto_a_file_L, .setup = setup_cycle_onto_file, .args = {"-rL", "-T", "s", "o"})
CASE(cycle_onto_a_file_L_one_job, .setup = setup_cycle_onto_file, .args = {"-rL", "-T", "s", "o"},
     .jobs = "1")
CASE(cycle_links_as_links_onto_files, .setup = setup_cycle_onto_file,
     .args = {"-r", "-T", "s", "o"})
CASE(specials_below_H_onto_files, .setup = setup_specials_onto_files,
     .args = {"-rH", "-v", "-T", "s", "o"})
CASE(specials_below_H_linked_onto_files, .setup = setup_specials_onto_files,
     .args = {"-rH", "-l", "-T", "s", "o"})
CASE(specials_below_H_onto_files_one_job, .setup = setup_specials_onto_files,
     .args = {"-rHv", "-T", "s", "o"}, .jobs = "1")
CASE(links_through_H_operands, .setup = setup_links_via_symlinks,
     .args = {"-H", "--preserve=links", "l1", "l2", "f", "d"})
CASE(links_through_L, .setup = setup_links_via_symlinks,
     .args = {"-rL", "--preserve=links", "s", "d/s"})
CASE(link_group_whose_first_name_fails, .setup = setup_links_via_symlinks,
     .args = {"-rd", "s", "d/s"}, .nobody = true)
CASE(fifo_through_H_onto_a_file, .setup = setup_fifo_onto_files, .args = {"-rH", "lf", "ff", "o"})
CASE(fifo_through_L_onto_files, .setup = setup_fifo_onto_files, .args = {"-rLv", "s", "o"})
CASE(fifo_onto_files_P, .setup = setup_fifo_onto_files, .args = {"-rv", "s", "o"})
CASE(fifo_through_L_removing_first, .setup = setup_fifo_onto_files,
     .args = {"-rLv", "--remove-destination", "s", "o"})
CASE(loop_with_L, .setup = setup_loop, .args = {"-rL", "s", "o"})
/* The destination's folder cannot be opened: cp's message names the first step that fails. */
CASE(dest_folder_missing_dir, .setup = setup_blocked_dest, .args = {"-r", "s/sub", "nodir/o"})
CASE(dest_folder_missing_file, .setup = setup_blocked_dest, .args = {"s/a", "nodir/o"})
CASE(dest_folder_missing_omits_dir, .setup = setup_blocked_dest, .args = {"s/sub", "nodir/o"})
CASE(dest_folder_missing_symlink, .setup = setup_blocked_dest, .args = {"-rP", "s/rel", "nodir/o"})
CASE(dest_folder_missing_fifo, .setup = setup_blocked_dest, .args = {"-r", "s/fifo", "nodir/o"})
CASE(dest_folder_missing_source_too, .setup = setup_blocked_dest, .args = {"-r", "s/no", "nodir/o"})
CASE(dest_folder_is_a_file, .setup = setup_blocked_dest, .args = {"-r", "s/sub", "file/o"})
CASE(dest_folder_unsearchable_dir, .setup = setup_blocked_dest, .args = {"-r", "s/sub", "locked/o"},
     .nobody = true)
CASE(dest_folder_unsearchable_into, .setup = setup_blocked_dest,
     .args = {"-r", "s/a", "s/sub", "s/rel", "locked/"}, .nobody = true)
CASE(dest_folder_unsearchable_deeper, .setup = setup_blocked_dest,
     .args = {"-r", "s/sub", "locked/x/o"}, .nobody = true)
/* --preserve=links: names reached through symlinks (-L, -H operands) that lead to one file. */
CASE(deref_L_preserve_links, .setup = setup_deref, .args = {"-rL", "--preserve=links", "s", "o"})
CASE(deref_L_archive, .setup = setup_deref, .args = {"-aL", "s", "o"}, .flags = CMP_MTIME)
CASE(deref_L_preserve_links_j1, .setup = setup_deref, .args = {"-rL", "--preserve=links", "s", "o"},
     .jobs = "1")
CASE(deref_H_operands_preserve_links, .setup = setup_deref_into,
     .args = {"-RH", "--preserve=links", "s/a", "s/la", "o"})
CASE(deref_H_inside_preserve_links, .setup = setup_deref,
     .args = {"-RH", "--preserve=links", "sl", "o"})
CASE(unreadable_as_nobody, .setup = setup_unreadable, .args = {"-r", "s", "o"}, .nobody = true)
CASE(archive_unreadable_as_nobody, .setup = setup_unreadable, .args = {"-a", "s", "o"},
     .nobody = true, .flags = CMP_MTIME)
/* o/h has a second link: cp rewrites it in place, which mpcp does with --inplace. */
CASE(verbose_replace_kinds, .setup = setup_replace, .args = {"-rvT", "s", "o"},
     .mp_args = {"--inplace", "-rvT", "s", "o"})
CASE(archive_verbose_replace_kinds, .setup = setup_replace, .args = {"-avT", "s", "o"},
     .flags = CMP_MTIME)
CASE(inplace_like_cp_with_linked_dest, .setup = setup_replace, .args = {"-T", "s/h", "o/h"},
     .mp_args = {"--inplace", "-T", "s/h", "o/h"})
CASE(same_source_twice, .setup = setup_twice, .args = {"-rv", "s1/x", "s1/x", "s1/d", "s1/d", "o"})
CASE(same_basename_twice, .setup = setup_twice,
     .args = {"-rv", "s1/x", "s2/x", "s1/d", "s2/d", "o"})
/* No copy through a symlink an earlier operand made, where it leads nowhere or elsewhere. */
CASE(through_made_symlink_dangling, .setup = setup_abuse, .args = {"-dR", "a/1", "b/1", "c"})
CASE(through_made_symlink_existing, .setup = setup_abuse_target,
     .args = {"-dRv", "a/1", "b/1", "c"})
CASE(through_made_symlink_no_clobber, .setup = setup_abuse_target,
     .args = {"-dRn", "a/1", "b/1", "c"})
CASE(through_made_symlink_backup, .setup = setup_abuse_target, .args = {"-dRbv", "a/1", "b/1", "c"})
/* Numbered backups keep both; the same source again is backed up, not warned about. */
CASE(same_basename_twice_numbered, .setup = setup_twice,
     .args = {"-v", "--backup=numbered", "s1/x", "s2/x", "o"})
CASE(same_source_twice_backup, .setup = setup_twice, .args = {"-bv", "s1/x", "s1/x", "o"})
CASE(same_source_twice_numbered, .setup = setup_twice,
     .args = {"-v", "--backup=numbered", "s1/x", "s1/x", "o"})
CASE(readonly_dest_as_nobody, .setup = setup_readonly_dest, .args = {"-rT", "s", "o"},
     .nobody = true)
/* A destination symlink whose target cannot be stated is no dangling one: "cannot stat". */
CASE(unsearchable_link_dest_as_nobody, .setup = setup_unsearchable_link, .args = {"F", "symlink"},
     .nobody = true)
CASE(unsearchable_link_dest_T_as_nobody, .setup = setup_unsearchable_link,
     .args = {"-T", "F", "symlink"}, .nobody = true)
CASE(unsearchable_link_target_dir_as_nobody, .setup = setup_unsearchable_link,
     .args = {"-t", "symlink", "F"}, .nobody = true)
CASE(readonly_dest_force_as_nobody, .setup = setup_readonly_dest, .args = {"-rfT", "s", "o"},
     .nobody = true)
/* -i onto a file nobody may write: "unwritable ... try anyway?", "replace ... overriding" with -f.
 */
CASE(readonly_dest_interactive_as_nobody, .setup = setup_readonly_dest, .args = {"-riT", "s", "o"},
     .nobody = true)
CASE(readonly_dest_interactive_force_as_nobody, .setup = setup_readonly_dest,
     .args = {"-rifT", "s", "o"}, .nobody = true)
/* -i -l asks before it links over a file (no answer: kept). */
CASE(interactive_link_onto_a_file, .setup = setup_readonly_dest, .args = {"-rilT", "s", "o"})
/*
 * A link group's first copy that -n keeps is no copy: cp copies the next
 * name and links the rest to it, in this task or in later ones.
 */
CASE(no_clobber_keeps_a_group_s_first_name, .setup = setup_group_across_folders,
     .args = {"-rn", "--preserve=links", "-T", "s", "o"})
CASE(no_clobber_keeps_a_group_s_first_name_one_job, .setup = setup_group_across_folders,
     .args = {"-rn", "--preserve=links", "-T", "s", "o"}, .jobs = "1")
CASE(no_clobber_keeps_a_group_s_first_name_four_jobs, .setup = setup_group_across_folders,
     .args = {"-rn", "--preserve=links", "-T", "s", "o"}, .jobs = "4")
CASE(one_file_system, .setup = setup_mount, .cleanup = unmount, .args = {"-ax", "s", "o"},
     .flags = CMP_MTIME)
CASE(links_across_operands, .setup = setup_links_across, .args = {"-a", "s1", "s2", "loose", "o"},
     .flags = CMP_MTIME)
CASE(links_from_file_operands, .setup = setup_links_across,
     .args = {"-av", "loose", "s1/a", "s2/b", "s2", "o"}, .flags = CMP_MTIME)
CASE(links_from_file_operands_j1, .setup = setup_links_across,
     .args = {"-av", "loose", "s1/a", "s2/b", "s2", "o"}, .flags = CMP_MTIME, .jobs = "1")
CASE(links_from_file_operands_worker_path, .setup = setup_links_across,
     .args = {"-av", "loose", "s1/a", "s2/b", "s2", "o"}, .flags = CMP_MTIME, .resolve = true)
CASE(links_across_operands_worker_path, .setup = setup_links_across,
     .args = {"-a", "s1", "s2", "loose", "o"}, .flags = CMP_MTIME, .resolve = true)
CASE(dest_slash_not_a_folder, .setup = setup_files, .args = {"f", "nodir/"})
CASE(dest_slash_symlink, .setup = setup_files, .args = {"-P", "tlink", "nodir/"})
CASE(dest_slash_new_folder, .setup = setup_basic, .args = {"-r", "s", "new/"})
CASE(deref_L_all_types, .setup = setup_types, .args = {"-rL", "s", "o"})
CASE(archive_deref_L_all_types, .setup = setup_types, .args = {"-aL", "s", "o"}, .flags = CMP_MTIME)
CASE(copy_device_without_r, .setup = setup_types, .args = {"s/null", "nullcopy"})
CASE(copy_symlink_without_r, .setup = setup_types, .args = {"s/rel", "relcopy"})
CASE(preserve_context_refused, .setup = setup_files, .args = {"--preserve=context", "f", "o/g"})
CASE(archive_then_context_refused, .setup = setup_files,
     .args = {"-a", "--preserve=context", "f", "o/g"})
CASE(no_preserve_context_is_fine, .setup = setup_files,
     .args = {"-a", "--no-preserve=context", "f", "o/g"}, .flags = CMP_MTIME)
CASE(usage_no_operand, .setup = setup_files, .args = {"-r"})
CASE(usage_one_operand, .setup = setup_files, .args = {"f"})
CASE(usage_extra_operand, .setup = setup_files, .args = {"-T", "f", "h", "o"})
CASE(usage_bad_target, .setup = setup_files, .args = {"f", "h", "nodir"})

CASE(archive_into_setgid_folder, .setup = setup_setgid_dest, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME)
CASE(recursive_into_setgid_folder, .setup = setup_setgid_dest, .args = {"-r", "s", "o"})
CASE(preserve_ownership_into_setgid_folder, .setup = setup_setgid_dest,
     .args = {"-r", "--preserve=ownership", "s", "o"})
CASE(archive_under_setgid_parent, .setup = setup_setgid_parent, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME)
CASE(preserve_mode_under_setgid_parent, .setup = setup_setgid_parent,
     .args = {"-r", "--preserve=mode", "s", "o"})
CASE(recursive_under_setgid_parent, .setup = setup_setgid_parent, .args = {"-r", "s", "o"})
CASE(archive_into_default_acl, .setup = setup_default_acl, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME)
CASE(preserve_mode_into_default_acl, .setup = setup_default_acl,
     .args = {"-r", "--preserve=mode", "s", "o"})

/*
 * -l and -s. The trees compared hold the sources too, so a hard link made
 * by -l must join its source's inode as cp's does (link counts and the
 * first name of every inode across s and o agree), and a copy in its place
 * fails the case.
 */
CASE(link_recursive_basic, .setup = setup_basic, .args = {"-rl", "s", "o"})
CASE(link_archive_basic, .setup = setup_basic, .args = {"-al", "s", "o"}, .flags = CMP_MTIME)
/* -rl follows symlinks as -L does (dangling and looping ones cannot be stated); -al links them. */
CASE(link_recursive_all_types, .setup = setup_types, .args = {"-rlv", "s", "o"})
CASE(link_archive_all_types, .setup = setup_types, .args = {"-alv", "s", "o"}, .flags = CMP_MTIME)
CASE(link_no_deref_all_types, .setup = setup_types, .args = {"-rlP", "s", "o"})
CASE(link_follow_operand_H, .setup = setup_deref, .args = {"-rlHv", "sl", "o"})
CASE(link_into_existing, .setup = setup_existing, .args = {"-rlvT", "s", "o"})
CASE(link_into_existing_force, .setup = setup_existing, .args = {"-rlfvT", "s", "o"})
CASE(link_into_existing_no_clobber, .setup = setup_existing, .args = {"-rlnvT", "s", "o"})
CASE(link_into_existing_update, .setup = setup_existing, .args = {"-rluvT", "s", "o"})
/* Under -P cp removes a destination first where the source is no regular file. */
CASE(link_archive_replace_kinds, .setup = setup_replace, .args = {"-alvT", "s", "o"},
     .flags = CMP_MTIME)
CASE(link_recursive_replace_kinds_force, .setup = setup_replace, .args = {"-rlfvT", "s", "o"})
CASE(link_backup, .setup = setup_replace, .args = {"-rlbvT", "s", "o"})
CASE(symlink_remove_destination, .setup = setup_replace,
     .args = {"-rsv", "--remove-destination", "-T", "@/s", "o"}, .abs = true)
CASE(link_file_operand, .setup = setup_files, .args = {"-lv", "f", "t", "o"})
CASE(link_symlink_operand, .setup = setup_files, .args = {"-l", "tlink", "o/deref"})
CASE(link_symlink_operand_P, .setup = setup_files, .args = {"-lP", "tlink", "o/itself"})
/* Already a name of the source: nothing to do, silently, even with -v. */
CASE(link_same_file, .setup = setup_files, .args = {"-lv", "f", "h"})
CASE(link_same_name, .setup = setup_files, .args = {"-l", "f", "f"})
CASE(link_dest_slash, .setup = setup_files, .args = {"-l", "f", "nodir/"})
CASE(symlink_dest_slash, .setup = setup_files, .args = {"-s", "@/f", "nodir/"}, .abs = true)
CASE(link_and_symlink_refused, .setup = setup_files, .args = {"-ls", "f", "x"})
/* -s links to the source's name as typed: absolute, or relative in the working folder only. */
CASE(symlink_recursive_abs, .setup = setup_types, .args = {"-rsv", "@/s", "o"}, .abs = true)
/*
 * A link group becomes hard links to one symlink, to the name of the group
 * reached first: cp's walk and mpcp's meet names in other orders (see
 * MPCP.md), so the groups compared lie where both meet the same name first.
 */
CASE(symlink_archive_abs, .setup = setup_types, .args = {"-asv", "--no-preserve=links", "@/s", "o"},
     .flags = CMP_MTIME, .abs = true)
CASE(symlink_archive_link_groups, .setup = setup_links_across,
     .args = {"-asv", "@/s1", "@/s2", "@/loose", "o"}, .flags = CMP_MTIME, .abs = true)
CASE(symlink_basic_abs, .setup = setup_basic, .args = {"-rs", "@/s", "o"}, .abs = true)
CASE(symlink_abs_unnormalized, .setup = setup_basic, .args = {"-rsv", "@/./s//sub/", "o"},
     .abs = true)
CASE(symlink_into_existing, .setup = setup_existing, .args = {"-rsvT", "@/s", "o"}, .abs = true)
CASE(symlink_into_existing_force, .setup = setup_existing, .args = {"-rsfvT", "@/s", "o"},
     .abs = true)
CASE(symlink_replace_kinds, .setup = setup_replace, .args = {"-asvT", "@/s", "o"},
     .flags = CMP_MTIME, .abs = true)
CASE(symlink_same_file, .setup = setup_files, .args = {"-s", "@/f", "@/h"}, .abs = true)
CASE(symlink_relative_here, .setup = setup_files, .args = {"-sv", "f", "t", "./x"})
CASE(symlink_relative_elsewhere, .setup = setup_files, .args = {"-sv", "f", "o/x"})
/* The refusal names the destination as cp's quotef() does: quoted only where a shell needs it. */
CASE(symlink_relative_names, .setup = setup_names, .args = {"-rs", "s", "o"})
CASE(symlink_relative_tree, .setup = setup_types, .args = {"-asv", "s", "o"}, .flags = CMP_MTIME)
CASE(symlink_relative_replace_kinds, .setup = setup_replace, .args = {"-asvT", "s", "o"},
     .flags = CMP_MTIME)
/* With four workers, in one process, and with the executor resolving folders as a worker. */
CASE(link_archive_all_types_j4, .setup = setup_types, .args = {"-alv", "s", "o"},
     .flags = CMP_MTIME, .jobs = "4")
CASE(link_recursive_basic_j4, .setup = setup_basic, .args = {"-rl", "s", "o"}, .jobs = "4")
CASE(link_archive_replace_kinds_j4, .setup = setup_replace, .args = {"-alvT", "s", "o"},
     .flags = CMP_MTIME, .jobs = "4")
CASE(symlink_archive_abs_j4, .setup = setup_types,
     .args = {"-asv", "--no-preserve=links", "@/s", "o"}, .flags = CMP_MTIME, .abs = true,
     .jobs = "4")
CASE(symlink_relative_tree_j4, .setup = setup_types, .args = {"-asv", "s", "o"}, .flags = CMP_MTIME,
     .jobs = "4")
CASE(link_archive_all_types_j1, .setup = setup_types, .args = {"-alv", "s", "o"},
     .flags = CMP_MTIME, .jobs = "1")
CASE(link_into_existing_force_j1, .setup = setup_existing, .args = {"-rlfvT", "s", "o"},
     .jobs = "1")
CASE(symlink_archive_abs_j1, .setup = setup_types,
     .args = {"-asv", "--no-preserve=links", "@/s", "o"}, .flags = CMP_MTIME, .abs = true,
     .jobs = "1")
CASE(link_archive_all_types_worker_path, .setup = setup_types, .args = {"-alv", "s", "o"},
     .flags = CMP_MTIME, .resolve = true)
CASE(symlink_archive_abs_worker_path, .setup = setup_types,
     .args = {"-asv", "--no-preserve=links", "@/s", "o"}, .flags = CMP_MTIME, .abs = true,
     .resolve = true)

/* --attributes-only onto an existing file: no data copied, so nothing removed to make room. */
CASE(attributes_only_existing, .setup = setup_attr_existing,
     .args = {"--attributes-only", "file1", "file2"})
CASE(attributes_only_existing_linked, .setup = setup_attr_existing,
     .args = {"-a", "--attributes-only", "file1", "file2"}, .flags = CMP_MTIME)
CASE(attributes_only_symlink_onto_file, .setup = setup_attr_existing,
     .args = {"-av", "--attributes-only", "sym1", "file2"}, .flags = CMP_MTIME)
CASE(attributes_only_symlink_onto_file_force, .setup = setup_attr_existing,
     .args = {"-afv", "--attributes-only", "sym1", "file2"}, .flags = CMP_MTIME)
CASE(attributes_only_symlink_remove_destination, .setup = setup_attr_existing,
     .args = {"-av", "--remove-destination", "--attributes-only", "sym1", "file2"},
     .flags = CMP_MTIME)
CASE(attributes_only_symlink_backup, .setup = setup_attr_existing,
     .args = {"-abv", "--attributes-only", "sym1", "file2"}, .flags = CMP_MTIME)
CASE(attributes_only_fifo_onto_file, .setup = setup_attr_existing,
     .args = {"-afv", "--attributes-only", "ff", "file2"}, .flags = CMP_MTIME)

/* -b, --backup, -S, --remove-destination. */
CASE(backup_recursive, .setup = setup_backups, .args = {"-rbvT", "s", "o"})
CASE(backup_archive_numbered, .setup = setup_backups,
     .args = {"-avT", "--backup=numbered", "s", "o"}, .flags = CMP_MTIME)
CASE(backup_existing, .setup = setup_backups, .args = {"-rvT", "--backup=existing", "s", "o"})
CASE(backup_abbreviated_control, .setup = setup_backups, .args = {"-rvT", "--backup=nu", "s", "o"})
/* No backups: o/h2 has a second link, which cp rewrites in place (mpcp's --inplace). */
CASE(backup_none_control, .setup = setup_backups, .args = {"-rvT", "--backup=off", "s", "o"},
     .mp_args = {"--inplace", "-rvT", "--backup=off", "s", "o"})
CASE(backup_suffix, .setup = setup_backups, .args = {"-rvT", "-S", ".bak", "s", "o"})
CASE(backup_suffix_env, .setup = setup_backups, .args = {"-rbvT", "s", "o"},
     .env = "SIMPLE_BACKUP_SUFFIX=.orig")
CASE(backup_version_control_env, .setup = setup_backups, .args = {"-rbvT", "s", "o"},
     .env = "VERSION_CONTROL=t")
CASE(backup_option_beats_env, .setup = setup_backups,
     .args = {"-rvT", "--backup=numbered", "s", "o"}, .env = "VERSION_CONTROL=never")
CASE(backup_simple_two_operands, .setup = setup_files, .args = {"-v", "--backup=simple", "f", "t"})
CASE(backup_suffix_with_slash, .setup = setup_files, .args = {"-v", "-S", "x/", "f", "t"})
CASE(backup_suffix_not_a_name, .setup = setup_files, .args = {"-v", "-S", "/x", "f", "t"})
CASE(backup_of_a_symlink_not_through, .setup = setup_files, .args = {"-bv", "f", "tlink"})
CASE(backup_of_a_dangling_symlink, .setup = setup_files, .args = {"-bv", "f", "dangling"})
CASE(backup_other_name_of_source, .setup = setup_files, .args = {"-bv", "f", "h"})
CASE(backup_same_name_refused, .setup = setup_files, .args = {"-bv", "f", "f"})
CASE(backup_force_same_name_copies, .setup = setup_files, .args = {"-fbv", "f", "f"})
/* A simple backup that would take the source's name is refused; a numbered one is not. */
CASE(backup_would_destroy_source, .setup = setup_with_backup,
     .args = {"--backup=simple", "a~", "a"})
CASE(backup_existing_would_destroy_source, .setup = setup_with_backup, .args = {"-bv", "a~", "a"})
CASE(backup_suffix_would_destroy_source, .setup = setup_with_backup,
     .args = {"-v", "-S", ".bak", "a.bak", "a"})
CASE(backup_link_would_destroy_source, .setup = setup_with_backup, .args = {"-blv", "a~", "a"})
CASE(backup_numbered_keeps_source, .setup = setup_with_backup,
     .args = {"-v", "--backup=numbered", "a~", "a"})
CASE(backup_force_same_name_numbered, .setup = setup_files,
     .args = {"-fv", "--backup=t", "tlink", "tlink"})
CASE(backup_long_names, .setup = setup_backup_long_names,
     .args = {"-rvT", "--backup=numbered", "s", "o"})
CASE(backup_long_names_suffix, .setup = setup_backup_long_names,
     .args = {"-rvT", "-S", ".original", "s", "o"})
CASE(backup_onto_a_folder, .setup = setup_backup_blocked, .args = {"-bv", "f", "t"})
CASE(backup_numbered_onto_a_folder, .setup = setup_backup_blocked,
     .args = {"-v", "--backup=t", "f", "t"})
CASE(backup_update, .setup = setup_existing, .args = {"-rbuvT", "s", "o"})
CASE(backup_readonly_dest_as_nobody, .setup = setup_readonly_dest, .args = {"-rbvT", "s", "o"},
     .nobody = true)
CASE(backup_no_clobber_refused, .setup = setup_existing, .args = {"-rbnT", "s", "o"})
CASE(backup_no_clobber_refused_even_none, .setup = setup_existing,
     .args = {"-rnT", "--backup=none", "s", "o"})
CASE(backup_invalid_control, .setup = setup_existing, .args = {"--backup=nope", "s/a", "o"})
CASE(backup_ambiguous_control, .setup = setup_existing, .args = {"--backup=n", "s/a", "o"})
CASE(backup_invalid_env, .setup = setup_existing, .args = {"-b", "s/a", "o"},
     .env = "VERSION_CONTROL=sometimes")
CASE(remove_destination_symlink, .setup = setup_files,
     .args = {"-v", "--remove-destination", "f", "tlink"})
CASE(remove_destination_other_name_of_source, .setup = setup_files,
     .args = {"-v", "--remove-destination", "f", "h"})
CASE(remove_destination_same_name_refused, .setup = setup_files,
     .args = {"--remove-destination", "f", "f"})
CASE(remove_destination_kinds, .setup = setup_replace,
     .args = {"-rvT", "--remove-destination", "s", "o"})
CASE(remove_destination_archive, .setup = setup_backups,
     .args = {"-avT", "--remove-destination", "s", "o"}, .flags = CMP_MTIME)
CASE(remove_destination_readonly_as_nobody, .setup = setup_readonly_dest,
     .args = {"-rvT", "--remove-destination", "s", "o"}, .nobody = true)
CASE(remove_destination_with_backup, .setup = setup_backups,
     .args = {"-rvT", "--remove-destination", "--backup=t", "s", "o"})
CASE(backup_recursive_j4, .setup = setup_backups, .args = {"-rbvT", "s", "o"}, .jobs = "4")
CASE(backup_recursive_j1, .setup = setup_backups, .args = {"-rbvT", "s", "o"}, .jobs = "1")
CASE(backup_archive_numbered_j4, .setup = setup_backups,
     .args = {"-avT", "--backup=numbered", "s", "o"}, .flags = CMP_MTIME, .jobs = "4")
CASE(backup_archive_numbered_j1, .setup = setup_backups,
     .args = {"-avT", "--backup=numbered", "s", "o"}, .flags = CMP_MTIME, .jobs = "1")
CASE(backup_archive_numbered_worker_path, .setup = setup_backups,
     .args = {"-avT", "--backup=numbered", "s", "o"}, .flags = CMP_MTIME, .resolve = true)
CASE(remove_destination_kinds_j4, .setup = setup_replace,
     .args = {"-rvT", "--remove-destination", "s", "o"}, .jobs = "4")
CASE(remove_destination_kinds_j1, .setup = setup_replace,
     .args = {"-rvT", "--remove-destination", "s", "o"}, .jobs = "1")
CASE(remove_destination_archive_j4, .setup = setup_backups,
     .args = {"-avT", "--remove-destination", "s", "o"}, .flags = CMP_MTIME, .jobs = "4")

/* The executor resolving folders from the roots, as a pool worker does. */
CASE(archive_all_types_worker_path, .setup = setup_types, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME, .resolve = true)
CASE(archive_names_worker_path, .setup = setup_names, .args = {"-av", "s", "o"}, .flags = CMP_MTIME,
     .resolve = true)
CASE(overwrite_worker_path, .setup = setup_existing, .args = {"-rvT", "s", "o"}, .resolve = true)
CASE(archive_into_setgid_folder_worker_path, .setup = setup_setgid_dest, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME, .resolve = true)
CASE(archive_into_default_acl_worker_path, .setup = setup_default_acl, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME, .resolve = true)

/* A subset again with four workers (the default here is one per CPU: two). */
CASE(archive_basic_j4, .setup = setup_basic, .args = {"-a", "s", "o"}, .flags = CMP_MTIME,
     .jobs = "4")
CASE(archive_all_types_j4, .setup = setup_types, .args = {"-a", "s", "o"}, .flags = CMP_MTIME,
     .jobs = "4")
CASE(archive_names_j4, .setup = setup_names, .args = {"-av", "s", "o"}, .flags = CMP_MTIME,
     .jobs = "4")
CASE(many_into_dir_j4, .setup = setup_existing, .args = {"-r", "s/a", "s/sub", "o"}, .jobs = "4")
CASE(links_across_operands_j4, .setup = setup_links_across,
     .args = {"-a", "s1", "s2", "loose", "o"}, .flags = CMP_MTIME, .jobs = "4")
CASE(archive_unreadable_as_nobody_j4, .setup = setup_unreadable, .args = {"-a", "s", "o"},
     .nobody = true, .flags = CMP_MTIME, .jobs = "4")
CASE(same_source_twice_j4, .setup = setup_twice,
     .args = {"-rv", "s1/x", "s1/x", "s1/d", "s1/d", "o"}, .jobs = "4")
CASE(update_older_j4, .setup = setup_existing, .args = {"-ruT", "s", "o"}, .jobs = "4")
CASE(no_clobber_j4, .setup = setup_existing, .args = {"-rnT", "s", "o"}, .jobs = "4")
CASE(verbose_replace_kinds_j4, .setup = setup_replace, .args = {"-rvT", "s", "o"},
     .mp_args = {"--inplace", "-rvT", "s", "o"}, .jobs = "4")
CASE(missing_source_j4, .setup = setup_basic, .args = {"-r", "nope", "s", "o"}, .jobs = "4")

/* And in one process, the lean path of -j 1. */
CASE(archive_all_types_j1, .setup = setup_types, .args = {"-a", "s", "o"}, .flags = CMP_MTIME,
     .jobs = "1")
CASE(archive_into_setgid_folder_j1, .setup = setup_setgid_dest, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME, .jobs = "1")
CASE(archive_into_default_acl_j1, .setup = setup_default_acl, .args = {"-a", "s", "o"},
     .flags = CMP_MTIME, .jobs = "1")
CASE(links_across_operands_j1, .setup = setup_links_across,
     .args = {"-a", "s1", "s2", "loose", "o"}, .flags = CMP_MTIME, .jobs = "1")
CASE(archive_unreadable_as_nobody_j1, .setup = setup_unreadable, .args = {"-a", "s", "o"},
     .nobody = true, .flags = CMP_MTIME, .jobs = "1")
CASE(same_source_twice_j1, .setup = setup_twice,
     .args = {"-rv", "s1/x", "s1/x", "s1/d", "s1/d", "o"}, .jobs = "1")

/* --parents and --strip-trailing-slashes. */
CASE(parents_files, .setup = setup_parents,
     .args = {"--parents", "-v", "s/a/b/f", "s/a/y", "s/c/z", "o"})
CASE(parents_preserve, .setup = setup_parents,
     .args = {"-p", "--parents", "-v", "s/a/b/f", "s/a/y", "s/c/z", "o"}, .flags = CMP_MTIME)
CASE(parents_archive_mixed, .setup = setup_parents,
     .args = {"-a", "--parents", "s/c", "s/a/b/f", "s/a/y", "o"}, .flags = CMP_MTIME)
CASE(parents_archive_mixed_j1, .setup = setup_parents,
     .args = {"-a", "--parents", "s/c", "s/a/b/f", "s/a/y", "o"}, .flags = CMP_MTIME, .jobs = "1")
CASE(parents_archive_mixed_j4, .setup = setup_parents,
     .args = {"-a", "--parents", "s/c", "s/a/b/f", "s/a/y", "o"}, .flags = CMP_MTIME, .jobs = "4")
CASE(parents_archive_mixed_worker_path, .setup = setup_parents,
     .args = {"-a", "--parents", "s/c", "s/a/b/f", "s/a/y", "o"}, .flags = CMP_MTIME,
     .resolve = true)
CASE(parents_recursive, .setup = setup_parents, .args = {"-r", "--parents", "-v", "s/a", "o"})
CASE(parents_no_preserve_mode, .setup = setup_parents,
     .args = {"-r", "--parents", "--no-preserve=mode", "s/a/b", "s/c", "o"})
CASE(parents_odd_slashes, .setup = setup_parents, .args = {"--parents", "-v", "./s//a/b/f", "o/"})
CASE(parents_target_option, .setup = setup_parents,
     .args = {"--parents", "-t", "o", "s/a/y", "s/c/z"})
CASE(parents_needs_a_folder, .setup = setup_parents, .args = {"--parents", "s/a/y", "newfile"})
CASE(parents_missing_source, .setup = setup_parents,
     .args = {"--parents", "nope/x", "s/a/nope", "s/a/y", "o"})
CASE(parents_file_in_the_way, .setup = setup_parents, .args = {"--parents", "s/a/y", "oclash"})
CASE(strip_trailing_slashes, .setup = setup_parents,
     .args = {"-r", "--strip-trailing-slashes", "-v", "sl/", "s/c/", "o"})
CASE(trailing_slash_follows_symlink, .setup = setup_parents, .args = {"-r", "-v", "sl/", "o"})

/* ---- random trees, destinations and options ---- */

/*
 * Trees and command lines no case above has: each round draws a source tree
 * (files of several sizes and modes, sparse files, hard links, symlinks
 * that resolve, dangle or loop, fifos, folders of several modes), maybe an
 * existing destination that overlaps it, an operand form and options, and
 * runs the round as any case. Prints its seed: MPCP_DIFF_SEED=<n> replays
 * the rounds (each prints its command line), MPCP_DIFF_ROUNDS=<n> sets how
 * many.
 */
static uint64_t rnd_state;

static uint64_t rnd(void)
{
    uint64_t z = (rnd_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned pick(unsigned n)
{
    return (unsigned)(rnd() % n);
}

static const char *const rnd_names[] = {"a",  "b",     "c d", "-e", "f.txt",
                                        "g~", "h.~1~", "sub", "x",  "y"};
#define N_RND_NAMES (sizeof rnd_names / sizeof rnd_names[0])

static void rnd_data(int fd)
{
    static char blob[70000];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (char)('a' + (i * 7 + i / 97) % 26);
    switch (pick(5)) {
    case 0:
        break;
    case 1:
        cr_assert_eq(write(fd, "some text\n", 10), 10);
        break;
    case 2:
        cr_assert_eq(write(fd, blob, sizeof blob), (ssize_t)sizeof blob);
        break;
    case 3: /* data, a hole of 1 MiB, data, a hole at the end */
        cr_assert_eq(pwrite(fd, blob, 4096, 0), 4096);
        cr_assert_eq(pwrite(fd, blob, 4096, 1 << 20), 4096);
        cr_assert_eq(ftruncate(fd, 2 << 20), 0);
        break;
    default:
        cr_assert_eq(write(fd, blob, 4096), 4096);
    }
}

/*
 * setid: set-ID modes too. Not in a destination: cp -p onto an existing
 * set-user-ID file keeps that bit with the source's permissions (rwSr--r--),
 * mpcp gives the source's mode (MPCP.md's known differences).
 */
static void rnd_file(int dir, const char *name, bool setid)
{
    static const mode_t modes[] = {0644, 0600, 0755, 0444, 0640, 0, 04755, 02755};
    size_t nmodes = sizeof modes / sizeof modes[0] - (setid ? 0 : 2);
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    rnd_data(fd);
    must(fchmod(fd, modes[pick((unsigned)nmodes)]), "chmod", name);
    close(fd);
}

/* What the round builds in each side (the same, from the same draws). */
static struct {
    uint64_t seed;
    unsigned dest; /* 0: none, 1: an overlapping folder, 2: a file */
} rnd_round;

/*
 * Paths below the source's root that name a file the source also reaches
 * by another path (hard links; symlinks followed under -L and -H). Which
 * of them cp meets first (inode order, into a subfolder as it meets it)
 * and which mpcp meets first (a folder's files first, readdir order) can
 * differ, and onto an existing destination of that name the first one
 * decides what the group becomes (its mode kept, a fifo that cannot be
 * made, -u's kept file): MPCP.md's known differences. So an overlapping
 * destination holds no entry at these paths.
 */
static struct {
    char path[512][128];
    uint64_t dev[512], ino[512];
    bool shared[512];
    int n;
} reach;

static void reach_dir(int dir, const char *path, int depth)
{
    for (unsigned i = 0; i < N_RND_NAMES && reach.n < 512; i++) {
        struct stat st;
        if (fstatat(dir, rnd_names[i], &st, 0) != 0)
            continue; /* absent, dangling, a loop */
        int k = reach.n++;
        snprintf(reach.path[k], sizeof reach.path[k], "%s%s%s", path, *path ? "/" : "",
                 rnd_names[i]);
        reach.dev[k] = st.st_dev;
        reach.ino[k] = st.st_ino;
        reach.shared[k] = false;
        for (int j = 0; j < k; j++)
            if (reach.dev[j] == st.st_dev && reach.ino[j] == st.st_ino)
                reach.shared[j] = reach.shared[k] = true;
        if (!S_ISDIR(st.st_mode) || depth >= 5)
            continue;
        int sub = openat(dir, rnd_names[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (sub >= 0) {
            reach_dir(sub, reach.path[k], depth + 1);
            close(sub);
        }
    }
}

static bool reached_twice(const char *path)
{
    for (int i = 0; i < reach.n; i++)
        if (reach.shared[i] && !strcmp(reach.path[i], path))
            return true;
    return false;
}

/*
 * A folder of 0-6 entries; top is the tree's root, seen (paths below top)
 * its files so far, for hard links; NULL in a destination, which has no
 * hard links (a file with a second link is replaced, not rewritten as cp
 * does: MPCP.md's known differences, the case
 * inplace_like_cp_with_linked_dest) and no fifos (cp and mpcp open one and
 * write into it: both would wait for a reader).
 */
static void rnd_dir(int top, int dir, const char *path, int depth, char (*seen)[256], int *nseen)
{
    static const mode_t dir_modes[] = {0755, 0700, 0555, 01777, 0750};
    int n = (int)pick(7);
    for (int i = 0; i < n; i++) {
        const char *name = rnd_names[pick(N_RND_NAMES)];
        char rel[256];
        snprintf(rel, sizeof rel, "%s%s%s", path, *path ? "/" : "", name);
        struct stat st;
        if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        unsigned kind = pick(12);
        if (!seen && reached_twice(rel))
            continue;
        if (kind < 4 || (kind == 4 && depth >= 3) || (kind <= 10 && !seen)) {
            rnd_file(dir, name, seen != NULL);
            if (seen && *nseen < 64)
                snprintf(seen[(*nseen)++], 256, "%s", rel);
        } else if (kind <= 5) {
            int sub = sub_dir(dir, name, 0755);
            rnd_dir(top, sub, rel, depth + 1, seen, nseen);
            must(fchmod(sub, dir_modes[pick(sizeof dir_modes / sizeof dir_modes[0])]), "chmod",
                 name);
            close(sub);
        } else if (kind == 6) {
            must(symlinkat(rnd_names[pick(N_RND_NAMES)], dir, name), "symlink", name);
        } else if (kind == 7) {
            static const char *const targets[] = {"../sub", "/nonexistent/x", ".", "../sub/a"};
            must(symlinkat(targets[pick(4)], dir, name), "symlink", name);
        } else if (kind == 8) {
            must(symlinkat(name, dir, name), "symlink", name); /* a loop */
        } else if (kind <= 10 && *nseen > 0) {
            must(linkat(top, seen[pick((unsigned)*nseen)], dir, name, 0), "link", name);
        } else if (seen) {
            must(mkfifoat(dir, name, 0644), "mkfifo", name);
        } else {
            rnd_file(dir, name, false); /* cp and mpcp write into a fifo: both would wait */
        }
    }
}

static void setup_random(int dir)
{
    static char seen[64][256];
    int nseen = 0;
    rnd_state = rnd_round.seed;
    int s = sub_dir(dir, "s", 0755);
    rnd_dir(s, s, "", 0, seen, &nseen);
    stamp_tree(s, 1100000000 + (time_t)pick(1000));
    if (rnd_round.dest == 1) {
        reach.n = 0;
        reach_dir(s, "", 0);
    }
    close(s);
    if (rnd_round.dest == 1) {
        int o = sub_dir(dir, "o", 0755);
        rnd_dir(o, o, "", 1, NULL, &nseen);
        stamp_tree(o, 1100000000 + (time_t)pick(1000));
        close(o);
    } else if (rnd_round.dest == 2) {
        put_file(dir, "o", "a file\n", 0644);
    }
}

static const char *const rnd_bases[][2] = {
    {"-r", NULL},
    {"-a", NULL},
    {"-rd", NULL},
    {"-rL", NULL},
    {"-rH", NULL},
    {"-rp", NULL},
    {"-R", "--preserve=mode,timestamps"},
};
static const char *const rnd_extras[] = {
    "-n",
    "-u",
    "-f",
    "--remove-destination",
    "-b",
    "--backup=numbered",
    "-v",
    "-v",
    "--sparse=always",
    "--sparse=never",
    "-l",
    "--preserve=links",
    "-x",
    "--no-preserve=mode",
    "--strip-trailing-slashes",
    "-i",
};

/*
 * One round's command line into args (static strings or names of s). As
 * nobody some sources cannot be read: there cp --remove-destination removes
 * the destination before it fails to open the source, mpcp leaves it
 * (MPCP.md's known differences), so those rounds take -f instead.
 */
static bool rnd_args(const char **args, int max, char (*names)[64], int nnames, bool nobody)
{
    int n = 0;
    unsigned base = pick(sizeof rnd_bases / sizeof rnd_bases[0]);
    bool times = base == 1 || base == 5 || base == 6;
    args[n++] = rnd_bases[base][0];
    if (rnd_bases[base][1])
        args[n++] = rnd_bases[base][1];
    unsigned extras = pick(3);
    for (unsigned i = 0; i < extras; i++) {
        args[n] = rnd_extras[pick(sizeof rnd_extras / sizeof rnd_extras[0])];
        if (nobody && !strcmp(args[n], "--remove-destination"))
            args[n] = "-f";
        n++;
    }
    switch (pick(5)) {
    case 0:
        args[n++] = "s";
        args[n++] = "o";
        break;
    case 1:
        args[n++] = "s/";
        args[n++] = "o";
        break;
    case 2:
        args[n++] = "-T";
        args[n++] = "s";
        args[n++] = "o";
        break;
    case 3: /* every entry of s into o */
        for (int i = 0; i < nnames && n < max - 2; i++)
            args[n++] = names[i];
        args[n++] = "o";
        break;
    default: /* one entry of s to a new name */
        args[n++] = nnames ? names[pick((unsigned)nnames)] : "s";
        args[n++] = "o2";
    }
    args[n] = NULL;
    return times;
}

Test(mpcp_diff, random_trees_and_options_as_cp, .fini = remove_work, .timeout = 600)
{
    const char *v = getenv("MPCP_DIFF_SEED");
    uint64_t seed = v && *v ? strtoull(v, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)getpid();
    v = getenv("MPCP_DIFF_ROUNDS");
    unsigned rounds = v && *v ? (unsigned)strtoul(v, NULL, 10) : 40;
    fprintf(stderr, "mpcp_diff random: seed %llu (replay: MPCP_DIFF_SEED=%llu), %u rounds\n",
            (unsigned long long)seed, (unsigned long long)seed, rounds);
    /* MPCP_DIFF_ONLY=<round>: that round alone (with MPCP_TEST_KEEP=1, its folders stay). */
    v = getenv("MPCP_DIFF_ONLY");
    unsigned only = v && *v ? (unsigned)strtoul(v, NULL, 10) : UINT_MAX;
    if (only != UINT_MAX)
        rounds = only + 1;
    for (unsigned round = only == UINT_MAX ? 0 : only; round < rounds; round++) {
        rnd_state = seed ^ (0x9e3779b97f4a7c15ull * (round + 1));
        rnd_round.seed = rnd();
        rnd_round.dest = pick(4) == 0 ? 0 : pick(6) == 0 ? 2 : 1;
        bool nobody = pick(4) == 0;
        unsigned form_draw = (unsigned)rnd();
        /* The operands name what the source holds: build it once to list it. */
        char probe[300];
        int w = make_work_dir(probe, sizeof probe, "random-probe");
        setup_random(w);
        int s = openat(w, "s", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        size_t count = 0;
        char **names = list_names(s, &count);
        static char operands[16][64];
        int nnames = 0;
        for (size_t i = 0; i < count && nnames < 12; i++)
            snprintf(operands[nnames++], 64, "s/%s", names[i]);
        for (size_t i = 0; i < count; i++)
            free(names[i]);
        free(names);
        close(s);
        close(w);
        remove_tree_at(AT_FDCWD, probe);
        static struct diff d;
        memset(&d, 0, sizeof d);
        d.tag = "random";
        d.setup = setup_random;
        d.nobody = nobody;
        rnd_state = form_draw;
        d.flags = rnd_args(d.args, 15, operands, nnames, nobody) ? CMP_MTIME : 0;
        fprintf(stderr, "round %u:%s", round, nobody ? " (as nobody)" : "");
        for (int i = 0; d.args[i]; i++)
            fprintf(stderr, " '%s'", d.args[i]);
        fprintf(stderr, " (destination: %s)\n",
                rnd_round.dest == 0   ? "none"
                : rnd_round.dest == 1 ? "a folder"
                                      : "a file");
        differential(&d);
        remove_work();
    }
}
