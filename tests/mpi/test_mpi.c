/*
 * test_mpi: the pool over MPI, run with mpirun on this machine (2 to 4
 * ranks, oversubscribed). Each case starts tests/mpi/pool_prog under mpirun
 * inside coreutils' timeout, so that a hang shows as exit status 124.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct run {
    int status; /* the shell's: 124 when timeout had to stop it */
    double seconds;
    char out[16384];
};

/* Runs program (pool_prog if NULL) under mpirun; stdout and stderr together into r->out. */
static void run_program(const char *program, int ranks, const char *env, const char *args,
                        int limit_s, struct run *r)
{
    char command[2048];
    snprintf(command, sizeof(command),
             /*
              * Under ASan: Open MPI's own allocations kept until exit are
              * suppressed by library name, which needs its plugins left
              * loaded and the full unwinder (its libraries have no frame
              * pointers).
              */
             "env ASAN_OPTIONS=handle_segv=0:detect_leaks=1:fast_unwind_on_malloc=0 "
             "LSAN_OPTIONS=suppressions=%s OMPI_MCA_mca_base_component_disable_dlclose=1 "
             "%s timeout -k 5 %d %s --oversubscribe "
             "--allow-run-as-root -n %d %s %s 2>&1",
             MPROC_LSAN_SUPP, env ? env : "", limit_s, MPROC_MPIEXEC, ranks,
             program ? program : MPROC_MPI_POOL_PROG, args);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe);
    size_t used = fread(r->out, 1, sizeof(r->out) - 1, pipe);
    r->out[used] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof(sink), pipe) > 0) {
    }
    int status = pclose(pipe);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

static void run_mpi(int ranks, const char *env, const char *args, int limit_s, struct run *r)
{
    run_program(NULL, ranks, env, args, limit_s, r);
}

static void expect_ok(const struct run *r, const char *line)
{
    cr_expect_eq(r->status, 0, "exit status %d after %.1f s; output:\n%s", r->status, r->seconds,
                 r->out);
    cr_expect_not_null(strstr(r->out, line), "no '%s' in:\n%s", line, r->out);
    cr_expect_null(strstr(r->out, "FAIL"), "output:\n%s", r->out);
}

/* Runs a pool_prog scenario that ends by printing ok_line. */
static void expect_scenario(int ranks, const char *env, const char *args, const char *ok_line)
{
    struct run r;
    run_mpi(ranks, env, args, 240, &r);
    expect_ok(&r, ok_line);
}

/* Every rank other than 0 serves: results right, in order for map, on every rank. */
Test(mpi, tasks_complete_on_every_rank, .timeout = 300)
{
    for (int ranks = 2; ranks <= 4; ranks++) {
        struct run r;
        run_mpi(ranks, NULL, "tasks 20000", 240, &r);
        char want[64];
        snprintf(want, sizeof(want), "ok tasks=20000 workers=%d ranks_used=%d", ranks - 1,
                 ranks - 1);
        expect_ok(&r, want);
    }
}

/* imap over 100,000 lazily made items in order, callbacks once each, wait_many. */
Test(mpi, iterators_and_callbacks, .timeout = 300)
{
    expect_scenario(3, NULL, "iterators 100000", "ok iterators=100000");
}

/* Messages in many parts (1 MiB here): the path a payload over 2 GiB takes. */
Test(mpi, payload_in_parts, .timeout = 300)
{
    expect_scenario(2, "MPROC_MPI_PART_MAX=1048576", "big 10000000", "ok big=10000000");
}

/*
 * A real argument over 2 GiB: MPI's int counts would refuse it in one
 * message. (Results go the same way in parts: payload_in_parts.)
 */
Test(mpi, payload_over_2_gib, .timeout = 600)
{
#ifdef MPROC_TEST_SANITIZED
    cr_skip_test("ASan's shadow memory would need another 10 GiB here: run in the other builds");
#endif
    struct run r;
    run_mpi(2, NULL, "big 2150000000", 540, &r);
    expect_ok(&r, "ok big=2150000000");
}

/* A task over the timeout fails with a message; its rank comes back after it. */
Test(mpi, timeout_sets_rank_aside_then_back, .timeout = 300)
{
    expect_scenario(4, NULL, "timeout", "ok timeout");
}

/* A failing task, an unregistered function, descriptors, a task by name. */
Test(mpi, task_errors, .timeout = 300)
{
    expect_scenario(3, NULL, "errors", "ok errors");
}

/* A rank whose initializer fails is left out; the others do the work. */
Test(mpi, initializer_failure_on_one_rank, .timeout = 300)
{
    expect_scenario(4, NULL, "initfail", "ok initfail");
}

/* terminate() fails what is not done at once and every rank still shuts down. */
Test(mpi, terminate_with_busy_ranks, .timeout = 300)
{
    struct run r;
    run_mpi(3, NULL, "terminate", 240, &r);
    expect_ok(&r, "ok terminate");
    cr_expect_lt(r.seconds, 60.0);
}

/* A rank killed (SIGKILL) in a task: the job ends, it does not hang. */
Test(mpi, killed_rank_ends_the_job, .timeout = 300)
{
    struct run r;
    run_mpi(3, NULL, "crash", 120, &r);
    cr_expect_neq(r.status, 0, "output:\n%s", r.out);
    cr_expect_neq(r.status, 124, "hung until the timeout; output:\n%s", r.out);
    cr_expect_lt(r.seconds, 60.0, "took %.1f s", r.seconds);
}

/* ---- mpcp under mpirun: the plain mpcp, which runs mpcp-mpi ---- */

static char work[128];

static void shell(const char *command)
{
    int status = system(command);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "failed: %s", command);
}

static void make_work_tree(int files)
{
    snprintf(work, sizeof(work), "/tmp/mproc-test-mpi-%d", (int)getpid());
    char command[1024];
    snprintf(command, sizeof(command),
             "rm -rf %s && mkdir -p %s && python3 %s/scripts/make-tree %s/src --files %d "
             "--dirs %d --big 2 >/dev/null",
             work, work, MPROC_SOURCE_DIR, work, files, files / 100 + 1);
    shell(command);
}

static void remove_work_tree(void)
{
    char command[600];
    snprintf(command, sizeof(command), "chmod -R u+rwX %s; rm -rf %s", work, work);
    (void)!system(command);
}

static int check_copy(void)
{
    char command[1024];
    snprintf(command, sizeof(command), "python3 %s/scripts/check-copy %s/src %s/dst >/dev/null",
             MPROC_SOURCE_DIR, work, work);
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Every ranks count copies the tree as cp -a would, with the ranks as workers. */
Test(mpi, mpcp_copies_identically, .timeout = 300)
{
    make_work_tree(2000);
    for (int ranks = 2; ranks <= 4; ranks++) {
        char args[1024];
        snprintf(args, sizeof(args), "-a --json %s/src %s/dst", work, work);
        struct run r;
        /* The walk shared out, as on several nodes or a network filesystem. */
        run_program(MPROC_MPCP_PATH, ranks, "MPCP_WALK=workers", args, 240, &r);
        cr_expect_eq(r.status, 0, "%d ranks: status %d:\n%s", ranks, r.status, r.out);
        char jobs[32];
        snprintf(jobs, sizeof(jobs), "\"jobs\":%d", ranks - 1 > 2 ? ranks - 1 : 2);
        cr_expect_not_null(strstr(r.out, jobs), "%d ranks: no %s in:\n%s", ranks, jobs, r.out);
        /* The walk is shared out: the ranks listed every folder but the top one. */
        const char *dirs = strstr(r.out, "\"directories\":");
        const char *listed = strstr(r.out, "\"folders_listed_by_workers\":");
        long n_dirs = dirs ? strtol(dirs + 14, NULL, 10) : -1;
        long n_listed = listed ? strtol(listed + 28, NULL, 10) : -2;
        cr_expect(n_dirs > 10 && n_listed == n_dirs - 1, "%d ranks: %ld folders, %ld listed:\n%s",
                  ranks, n_dirs, n_listed, r.out);
        cr_expect_eq(check_copy(), 0, "%d ranks: the copy differs", ranks);
        char command[512];
        snprintf(command, sizeof(command), "rm -rf %s/dst", work);
        shell(command);
    }
    /* By default, on one node's own disk, rank 0 reads the folders (it costs less). */
    char args[1024];
    snprintf(args, sizeof(args), "-a --json %s/src %s/dst", work, work);
    struct run r;
    run_program(MPROC_MPCP_PATH, 3, NULL, args, 240, &r);
    cr_expect_eq(r.status, 0, "status %d:\n%s", r.status, r.out);
    cr_expect_not_null(strstr(r.out, "\"folders_listed_by_workers\":0}"), "%s", r.out);
    cr_expect_eq(check_copy(), 0, "the copy differs");
    remove_work_tree();
}

/* An error is reported once, by rank 0, with the path, and the exit status says so. */
Test(mpi, mpcp_errors_once_with_status, .timeout = 300)
{
    make_work_tree(300);
    char args[1024];
    snprintf(args, sizeof(args), "mkdir %s/dst", work);
    shell(args);
    snprintf(args, sizeof(args), "-a %s/src %s/missing %s/dst", work, work, work);
    struct run r;
    run_program(MPROC_MPCP_PATH, 3, NULL, args, 240, &r);
    cr_expect_eq(r.status, 1, "status %d:\n%s", r.status, r.out);
    const char *first = strstr(r.out, "missing");
    cr_expect_not_null(first, "no error naming the path:\n%s", r.out);
    cr_expect(first && !strstr(first + 1, "missing"), "reported more than once:\n%s", r.out);
    char src[600], dst[600];
    snprintf(src, sizeof(src), "%s/src", work);
    snprintf(dst, sizeof(dst), "%s/dst/src", work);
    char command[1400];
    snprintf(command, sizeof(command), "python3 %s/scripts/check-copy %s %s >/dev/null",
             MPROC_SOURCE_DIR, src, dst);
    cr_expect_eq(system(command), 0, "the readable operand was not copied whole");
    remove_work_tree();
}

static char torn_src[600];
static int torn_count, temp_count;

static bool same_bytes(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa && fb;
    while (same) {
        char ba[65536], bb[65536];
        size_t na = fread(ba, 1, sizeof(ba), fa), nb = fread(bb, 1, sizeof(bb), fb);
        same = na == nb && memcmp(ba, bb, na) == 0;
        if (na == 0)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

/* A file under its final name must be whole: the same bytes as its source. */
static int check_whole(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    if (flag != FTW_F || !S_ISREG(st->st_mode))
        return 0;
    const char *base = path + ftw->base;
    if (strncmp(base, ".mpcp-", 6) == 0) {
        temp_count++;
        return 0;
    }
    char other[1200];
    snprintf(other, sizeof(other), "%s/%s", torn_src, path + strlen(work) + strlen("/dst/"));
    if (!same_bytes(path, other))
        torn_count++;
    return 0;
}

/* Ctrl-C to mpirun mid-copy: no torn file under a final name; a rerun with -u completes. */
Test(mpi, mpcp_interrupted_then_rerun, .timeout = 300)
{
    make_work_tree(20000);
    char command[1400];
    /*
     * Interrupted once the copy is under way (files are appearing). A copy
     * that was quicker than the shell is tried again: only an interrupted
     * one tests anything.
     */
    snprintf(command, sizeof(command),
             "rm -rf %s/dst; %s --oversubscribe --allow-run-as-root -n 3 %s -a -T %s/src %s/dst "
             ">/dev/null 2>&1 & pid=$!; "
             "while [ $(find %s/dst -type f 2>/dev/null | head -20 | wc -l) -lt 20 ]; do "
             "sleep 0.01; done; kill -INT $pid; wait $pid; exit 0",
             work, MPROC_MPIEXEC, MPROC_MPCP_PATH, work, work, work);
    bool interrupted = false;
    for (int attempt = 0; attempt < 5 && !interrupted; attempt++) {
        shell(command);
        interrupted = check_copy() != 0;
    }
    cr_expect(interrupted, "the copy ended before the interrupt five times: nothing was tested");
    snprintf(torn_src, sizeof(torn_src), "%s/src", work);
    char dst[600];
    snprintf(dst, sizeof(dst), "%s/dst", work);
    torn_count = temp_count = 0;
    if (access(dst, F_OK) == 0)
        nftw(dst, check_whole, 32, FTW_PHYS);
    cr_expect_eq(torn_count, 0, "%d files under their final names differ from the source",
                 torn_count);
    char args[1024];
    snprintf(args, sizeof(args), "-a -u -T %s/src %s/dst", work, work);
    struct run r;
    run_program(MPROC_MPCP_PATH, 3, NULL, args, 240, &r);
    cr_expect_eq(r.status, 0, "rerun: status %d:\n%s", r.status, r.out);
    cr_expect_eq(check_copy(), 0, "the rerun did not complete the copy");
    temp_count = 0;
    nftw(dst, check_whole, 32, FTW_PHYS);
    cr_expect_eq(temp_count, 0, "%d temporaries left after the rerun", temp_count);
    remove_work_tree();
}
