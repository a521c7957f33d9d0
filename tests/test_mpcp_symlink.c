/*
 * A destination owned by another user, who plants and races symlinks in
 * it while root copies into it: no file outside the destination may
 * change. A forked child (setuid nobody) owns the destination tree and,
 * while root runs mpcp, swaps its files for symlinks to a root-owned
 * victim tree and back, and swaps its folders for symlinks to the
 * victim's folder and back. Symlinks planted before the run (no race) in
 * a folder the child leaves alone must be refused and reported. Rounds
 * are seeded: MPCP_RACE_SEED replays one, MPCP_RACE_ROUNDS sets how many.
 */
#include "mpcp_tree.h"

#include <signal.h>
#include <stdint.h>

#define N_DIRS  4 /* d0 (planted before the run, never raced) .. d3 */
#define N_FILES 8 /* f0 .. f7 in each, and in the victim folder */

struct victim_file {
    ino_t ino;
    off_t size;
    struct timespec mtime;
    mode_t mode;
    uid_t uid;
    uint64_t hash;
};

struct victim {
    struct victim_file f[N_FILES];
    size_t n_names;
    struct timespec dir_mtime;
    ino_t dir_ino;
};

static char work[256];

static void remove_work(void)
{
    if (work[0])
        remove_tree_at(AT_FDCWD, work);
}

static uint64_t hash_file(int dir, const char *name)
{
    int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open victim %s: %s", name, strerror(errno));
    uint64_t h = 1469598103934665603ull;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < n; i++)
            h = (h ^ (unsigned char)buf[i]) * 1099511628211ull;
    close(fd);
    return h;
}

static void look_at_victim(int vdir, struct victim *v)
{
    for (int j = 0; j < N_FILES; j++) {
        char name[16];
        snprintf(name, sizeof name, "f%d", j);
        struct stat st;
        must(fstatat(vdir, name, &st, AT_SYMLINK_NOFOLLOW), "stat victim", name);
        v->f[j] = (struct victim_file){st.st_ino,  st.st_size, st.st_mtim,
                                       st.st_mode, st.st_uid,  hash_file(vdir, name)};
    }
    size_t n = 0;
    char **names = list_names(vdir, &n);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    v->n_names = n;
    struct stat st;
    cr_assert_eq(fstat(vdir, &st), 0);
    v->dir_mtime = st.st_mtim;
    v->dir_ino = st.st_ino;
}

static void expect_victim_unchanged(const struct victim *a, const struct victim *b,
                                    unsigned long seed, const char *err)
{
    for (int j = 0; j < N_FILES; j++) {
        const struct victim_file *x = &a->f[j], *y = &b->f[j];
        cr_assert(
            x->ino == y->ino && x->size == y->size && x->hash == y->hash && x->mode == y->mode &&
                x->uid == y->uid && x->mtime.tv_sec == y->mtime.tv_sec &&
                x->mtime.tv_nsec == y->mtime.tv_nsec,
            "seed %lu: victim f%d changed (inode %lu -> %lu, size %ld -> %ld)\nmpcp said:\n%s",
            seed, j, (unsigned long)x->ino, (unsigned long)y->ino, (long)x->size, (long)y->size,
            err);
    }
    cr_assert(a->n_names == b->n_names && a->dir_ino == b->dir_ino &&
                  a->dir_mtime.tv_sec == b->dir_mtime.tv_sec &&
                  a->dir_mtime.tv_nsec == b->dir_mtime.tv_nsec,
              "seed %lu: the victim folder changed (%zu -> %zu names)\nmpcp said:\n%s", seed,
              a->n_names, b->n_names, err);
}

/* The source tree: d0..d3 with f0..f7 each, root's. */
static void make_source(int w)
{
    int s = sub_dir(w, "src", 0755);
    for (int i = 0; i < N_DIRS; i++) {
        char dn[16];
        snprintf(dn, sizeof dn, "d%d", i);
        int d = sub_dir(s, dn, 0755);
        for (int j = 0; j < N_FILES; j++) {
            char fn[16];
            snprintf(fn, sizeof fn, "f%d", j);
            put_file(d, fn, "the new contents of a copied file\n", 0644);
        }
        close(d);
    }
    close(s);
}

static void make_victim(int w)
{
    int v = sub_dir(w, "victim", 0755);
    for (int j = 0; j < N_FILES; j++) {
        char fn[16], text[64];
        snprintf(fn, sizeof fn, "f%d", j);
        snprintf(text, sizeof text, "root's own file number %d\n", j);
        put_file(v, fn, text, 0644);
    }
    stamp_tree(v, 1300000000);
    close(v);
}

/*
 * The destination, all nobody's: d0..d3 with old files, except in d0
 * where every file is a symlink into the victim folder (planted before the
 * run: each must be refused and reported).
 */
static void make_dest(int w, const char *victim)
{
    remove_tree_at(w, "dst");
    int o = sub_dir(w, "dst", 0755);
    for (int i = 0; i < N_DIRS; i++) {
        char dn[16];
        snprintf(dn, sizeof dn, "d%d", i);
        int d = sub_dir(o, dn, 0755);
        for (int j = 0; j < N_FILES; j++) {
            char fn[16], target[400];
            snprintf(fn, sizeof fn, "f%d", j);
            if (i == 0) {
                snprintf(target, sizeof target, "%s/%s", victim, fn);
                must(symlinkat(target, d, fn), "symlink", fn);
            } else {
                put_file(d, fn, "old\n", 0644);
            }
        }
        close(d);
    }
    chown_tree(o, 65534, 65534);
    cr_assert_eq(fchown(o, 65534, 65534), 0);
    close(o);
}

/* xorshift64*: the rounds replay from their seed. */
static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/*
 * The other user: swaps files of d1..d3 for symlinks into the victim
 * folder and back, and the folders themselves for a symlink to the victim
 * folder and back, each swap one rename (atomic), until killed.
 */
static void attacker(const char *dst, const char *victim, uint64_t seed)
{
    if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
        _exit(125);
    int o = open(dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (o < 0)
        _exit(126);
    uint64_t s = seed | 1;
    for (;;) {
        uint64_t r = next_rand(&s);
        int i = 1 + (int)(r % (N_DIRS - 1)), j = (int)((r >> 8) % N_FILES);
        char dn[16], fn[32], aside[32], target[400];
        snprintf(dn, sizeof dn, "d%d", i);
        snprintf(aside, sizeof aside, "d%d.aside", i);
        unsigned what = (unsigned)((r >> 16) % 8);
        if (what == 0) {
            /* The folder swapped for a symlink to the victim folder. */
            if (renameat(o, dn, o, aside) == 0)
                (void)!symlinkat(victim, o, dn);
            continue;
        }
        if (what == 1) {
            /* ...and back (the symlink goes first: a folder cannot replace it). */
            struct stat st;
            if (fstatat(o, dn, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
                unlinkat(o, dn, 0);
            (void)!renameat(o, aside, o, dn);
            continue;
        }
        int d = openat(o, dn, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (d < 0)
            continue;
        snprintf(fn, sizeof fn, "f%d", j);
        if (what < 6) {
            snprintf(target, sizeof target, "%s/%s", victim, fn);
            if (symlinkat(target, d, ".swap") == 0)
                (void)!renameat(d, ".swap", d, fn);
        } else {
            int fd = openat(d, ".swap", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd >= 0) {
                (void)!write(fd, "plain\n", 6);
                close(fd);
                (void)!renameat(d, ".swap", d, fn);
            }
        }
        unlinkat(d, ".swap", 0);
        close(d);
    }
}

static unsigned long env_number(const char *name, unsigned long fallback)
{
    const char *v = getenv(name);
    return v && *v ? strtoul(v, NULL, 0) : fallback;
}

/* Every planted symlink of d0 is named in a refusal, as "dst/./d0/fN". */
static void expect_refusals(const char *err, unsigned long seed)
{
    for (int j = 0; j < N_FILES; j++) {
        char want[128];
        snprintf(want, sizeof want,
                 "mpcp: not writing through symlink 'dst/./d0/f%d': neither it nor its folder "
                 "is this user's\n",
                 j);
        cr_assert_not_null(strstr(err, want), "seed %lu: no refusal of d0/f%d; mpcp said:\n%s",
                           seed, j, err);
    }
}

/*
 * Rounds of: a fresh destination, the attacker started, root's mpcp with
 * these options and -j jobs, the attacker killed, the victim compared.
 */
static void race_rounds(const char *tag, const char *const *opts, const char *jobs, bool refuses)
{
    if (geteuid() != 0)
        cr_skip_test("needs root: root's copy raced by another user (setuid nobody)");
    int w = make_work_dir(work, sizeof work, tag);
    cr_assert_eq(fchmod(w, 0755), 0);
    make_source(w);
    make_victim(w);
    char victim[300], dst[300];
    snprintf(victim, sizeof victim, "%s/victim", work);
    snprintf(dst, sizeof dst, "%s/dst", work);
    int vdir = open(victim, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert_geq(vdir, 0);
    struct victim before;
    look_at_victim(vdir, &before);
    unsigned long rounds = env_number("MPCP_RACE_ROUNDS", 20), raced = 0;
    unsigned long first = env_number("MPCP_RACE_SEED", (unsigned long)time(NULL) ^ getpid());
    if (getenv("MPCP_RACE_SEED") && *getenv("MPCP_RACE_SEED"))
        rounds = 1;
    static struct run_result res;
    for (unsigned long k = 0; k < rounds; k++) {
        unsigned long seed = first + k;
        fprintf(stderr, "%s: round %lu, seed %lu (MPCP_RACE_SEED=%lu replays it)\n", tag, k, seed,
                seed);
        make_dest(w, victim);
        fflush(NULL);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0)
            attacker(dst, victim, seed);
        const char *argv[24] = {MPROC_MPCP_PATH, "-j", jobs};
        int n = 3;
        for (int i = 0; opts[i]; i++)
            argv[n++] = opts[i];
        argv[n++] = "src/.";
        argv[n++] = "dst";
        argv[n] = NULL;
        run_in(work, false, argv, &res);
        kill(pid, SIGKILL);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        struct victim after;
        look_at_victim(vdir, &after);
        expect_victim_unchanged(&before, &after, seed, res.err);
        if (strstr(res.err, "/d1") || strstr(res.err, "/d2") || strstr(res.err, "/d3"))
            raced++;
        if (!refuses) {
            cr_assert(res.status == 0 || res.status == 1, "seed %lu: exit status %d\n%s", seed,
                      res.status, res.err);
            continue;
        }
        cr_assert_eq(res.status, 1, "seed %lu: exit status %d (the refusals make it 1)\n%s", seed,
                     res.status, res.err);
        expect_refusals(res.err, seed);
    }
    /* How often the swaps met the copy (an entry of d1..d3 reported), to see the race is run. */
    fprintf(stderr, "%s: %lu of %lu rounds reported a raced entry\n", tag, raced, rounds);
    close(vdir);
    close(w);
}

static const char *const archive[] = {"-a", NULL};
static const char *const recursive[] = {"-r", NULL};

Test(mpcp_symlink, archive_one_job, .fini = remove_work, .timeout = 240)
{
    race_rounds("sym-a-j1", archive, "1", true);
}

Test(mpcp_symlink, archive_workers, .fini = remove_work, .timeout = 240)
{
    race_rounds("sym-a-j4", archive, "4", true);
}

Test(mpcp_symlink, recursive_one_job, .fini = remove_work, .timeout = 240)
{
    race_rounds("sym-r-j1", recursive, "1", true);
}

Test(mpcp_symlink, recursive_workers, .fini = remove_work, .timeout = 240)
{
    race_rounds("sym-r-j4", recursive, "4", true);
}

/* The other write paths: in place (and O_TMPFILE as root), -u, backups, removal, links. */
static const char *const inplace[] = {"-a", "--inplace", NULL};
static const char *const update[] = {"-r", "-u", NULL};
static const char *const backup[] = {"-a", "-b", NULL};
static const char *const remove_first[] = {"-r", "--remove-destination", NULL};
static const char *const no_clobber[] = {"-a", "-n", NULL};
static const char *const hard_links[] = {"-a", "-l", NULL};
static const char *const forced[] = {"-rf", NULL};

Test(mpcp_symlink, inplace, .fini = remove_work, .timeout = 240)
{
    race_rounds("sym-inplace-j1", inplace, "1", true);
    race_rounds("sym-inplace-j4", inplace, "4", true);
}

Test(mpcp_symlink, update_and_force, .fini = remove_work, .timeout = 240)
{
    race_rounds("sym-u-j4", update, "4", false);
    race_rounds("sym-f-j1", forced, "1", true);
}

Test(mpcp_symlink, backup_remove_no_clobber_links, .fini = remove_work, .timeout = 240)
{
    race_rounds("sym-b-j4", backup, "4", false);
    race_rounds("sym-rd-j1", remove_first, "1", false);
    race_rounds("sym-n-j4", no_clobber, "4", false);
    race_rounds("sym-l-j1", hard_links, "1", false);
    race_rounds("sym-l-j4", hard_links, "4", false);
}

/* ---- the empty operand names nothing, as with cp ---- */

/* stderr with the program's name taken out, so that cp's and mpcp's compare. */
static void strip_program(const char *in, const char *name, char *out, size_t size)
{
    size_t n = strlen(name), o = 0;
    for (const char *p = in; *p && o + 5 < size;) {
        if (strncmp(p, name, n) == 0) {
            memcpy(out + o, "PROG", 4);
            o += 4;
            p += n;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = 0;
}

/*
 * "" as a source, a destination or -t's folder, alone or with other
 * operands: the status and message are cp's, and nothing of the working
 * folder (which holds a file and a folder) is copied anywhere.
 */
Test(mpcp_symlink, empty_operand_as_cp, .fini = remove_work, .timeout = 120)
{
    int w = make_work_dir(work, sizeof work, "empty");
    put_file(w, "f", "a file\n", 0644);
    int d = sub_dir(w, "d", 0755);
    close(d);
    put_file(w, "marker", "in the working folder\n", 0644);
    static const char *const cases[][6] = {
        {""},
        {"", "d"},
        {"-r", "", "d"},
        {"f", ""},
        {"-r", "d", ""},
        {"-t", "", "f"},
        {"-t", "d", ""},
        {"f", "", "d"},
        {"-r", "", ""},
        {"-a", "", "d/"},
    };
    static struct run_result cp, mp;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *cp_argv[8] = {"cp"}, *mp_argv[8] = {MPROC_MPCP_PATH};
        int n = 1;
        for (; n < 7 && cases[c][n - 1]; n++)
            cp_argv[n] = mp_argv[n] = cases[c][n - 1];
        /* {""} ends at its first word: the empty string. */
        if (n == 1)
            cp_argv[n] = mp_argv[n] = "", n++;
        run_in(work, false, cp_argv, &cp);
        run_in(work, false, mp_argv, &mp);
        char cp_err[4096], mp_err[4096];
        strip_program(cp.err, "cp", cp_err, sizeof cp_err);
        strip_program(mp.err, "mpcp", mp_err, sizeof mp_err);
        cr_assert_eq(mp.status, cp.status, "case %zu: status %d, cp's %d\n%s", c, mp.status,
                     cp.status, mp.err);
        cr_expect_str_eq(mp_err, cp_err, "case %zu: mpcp said\n%s\ncp said\n%s", c, mp.err, cp.err);
        /* Nothing of the working folder landed in d (cp's own copies are undone each time). */
        struct stat st;
        cr_assert_neq(fstatat(w, "d/marker", &st, AT_SYMLINK_NOFOLLOW), 0, "case %zu", c);
        cr_assert_neq(fstatat(w, "d/d", &st, AT_SYMLINK_NOFOLLOW), 0, "case %zu", c);
        unlinkat(w, "d/f", 0);
    }
    close(w);
}
