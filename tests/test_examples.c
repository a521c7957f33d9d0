/*
 * The tutorial's examples: each is run as a program and its output checked,
 * so that the examples in examples/ stay true.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define MAX_LINES 64

struct output {
    char lines[MAX_LINES][128];
    int count;
    int status;
};

/* Runs an example with stdin from /dev/null; collects its lines and exit status. */
static void run_example(const char *name, struct output *out)
{
    char command[512];
    snprintf(command, sizeof(command), "%s/%s </dev/null", MPROC_EXAMPLES_DIR, name);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "cannot run %s", command);
    out->count = 0;
    char line[128];
    while (fgets(line, sizeof(line), pipe)) {
        cr_assert_lt(out->count, MAX_LINES, "%s printed too much", name);
        line[strcspn(line, "\n")] = '\0';
        snprintf(out->lines[out->count++], sizeof(out->lines[0]), "%s", line);
    }
    out->status = pclose(pipe);
    cr_assert(WIFEXITED(out->status) && WEXITSTATUS(out->status) == 0, "%s failed: status %d", name,
              out->status);
}

static int count_lines(const struct output *out, const char *line)
{
    int n = 0;
    for (int i = 0; i < out->count; i++)
        n += strcmp(out->lines[i], line) == 0;
    return n;
}

Test(examples, process_basic, .timeout = 30)
{
    struct output out;
    run_example("process_basic", &out);
    cr_assert_eq(out.count, 5, "expected 5 lines, got %d", out.count);
    for (int i = 0; i < 5; i++) {
        char expected[32];
        snprintf(expected, sizeof(expected), "Process: %d", i);
        cr_assert_eq(count_lines(&out, expected), 1, "missing or repeated: %s", expected);
    }
}

Test(examples, process_subclass, .timeout = 30)
{
    struct output out;
    run_example("process_subclass", &out);
    /* MyProcess(2), (3) and (4): 2 + 3 + 4 lines, each count once per pid. */
    cr_assert_eq(out.count, 9, "expected 9 lines, got %d", out.count);
    int per_count[4] = {0};
    int pids[3] = {0};
    int npids = 0;
    for (int i = 0; i < out.count; i++) {
        int pid, count;
        cr_assert_eq(sscanf(out.lines[i], "Pid:%d LoopCount: %d", &pid, &count), 2,
                     "unexpected line: %s", out.lines[i]);
        cr_assert(count >= 0 && count < 4);
        per_count[count]++;
        int known = 0;
        for (int j = 0; j < npids; j++)
            known |= pids[j] == pid;
        if (!known && npids < 3)
            pids[npids++] = pid;
    }
    cr_assert_eq(npids, 3, "expected 3 distinct pids");
    cr_assert_eq(per_count[0], 3);
    cr_assert_eq(per_count[1], 3);
    cr_assert_eq(per_count[2], 2);
    cr_assert_eq(per_count[3], 1);
}

Test(examples, globals_not_shared, .timeout = 30)
{
    struct output out;
    run_example("globals_not_shared", &out);
    cr_assert_geq(out.count, 3);
    cr_assert(strstr(out.lines[0], "demo1") && strstr(out.lines[0], "a = 2"), "%s", out.lines[0]);
    cr_assert(strstr(out.lines[1], "demo2") && strstr(out.lines[1], "a = 1"), "%s", out.lines[1]);
    cr_assert(strstr(out.lines[2], "main") && strstr(out.lines[2], "a = 1"), "%s", out.lines[2]);
    /* The right way, with a shared Value: both children's increments are seen. */
    const char *shared = "main (MainProcess): shared a = 3 after two children added 1";
    cr_assert_eq(count_lines(&out, shared), 1, "missing: %s", shared);
}

Test(examples, queue_download_save, .timeout = 30)
{
    struct output out;
    run_example("queue_download_save", &out);
    cr_assert_eq(out.count, 2, "expected 2 lines, got %d", out.count);
    cr_assert_eq(count_lines(&out, "The data has been downloaded successfully...."), 1);
    cr_assert_eq(count_lines(&out, "[11, 22, 33, 44]"), 1);
}

Test(examples, pool_apply_async, .timeout = 60)
{
    struct output out;
    run_example("pool_apply_async", &out);
    int starts = 0, completes = 0, npids = 0;
    int pids[16];
    for (int i = 0; i < out.count; i++) {
        int task, pid;
        double secs;
        if (sscanf(out.lines[i], "%d Start execution,Process number is %d", &task, &pid) == 2) {
            starts++;
            int known = 0;
            for (int j = 0; j < npids; j++)
                known |= pids[j] == pid;
            if (!known && npids < 16)
                pids[npids++] = pid;
        } else if (sscanf(out.lines[i], "%d Execution complete,time consuming %lf", &task, &secs) ==
                   2) {
            completes++;
            cr_assert(secs >= 0 && secs < 2.5, "task %d took %f s", task, secs);
        }
    }
    cr_assert_eq(starts, 10);
    cr_assert_eq(completes, 10);
    /* Pool(3): ten tasks, at most three worker processes. */
    cr_assert(npids >= 1 && npids <= 3, "%d worker processes", npids);
}

/* ---- batch_copy (appended: its headers here) ---- */
#include <sys/stat.h>
#include <unistd.h>

/*
 * Runs an example in cwd with input on its stdin (the /dev/null of
 * run_example() would not answer its question); its whole output to out.
 */
static void run_example_with_input(const char *name, const char *cwd, const char *input, char *out,
                                   size_t size)
{
    char command[1024];
    snprintf(command, sizeof(command), "cd '%s' && printf '%%s\\n' '%s' | %s/%s", cwd, input,
             MPROC_EXAMPLES_DIR, name);
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "cannot run %s", command);
    size_t len = fread(out, 1, size - 1, pipe);
    out[len] = '\0';
    int status = pclose(pipe);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed: status %d: %s", name,
              status, out);
}

static void write_random_file(const char *path, size_t size, unsigned seed)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    for (size_t i = 0; i < size; i++)
        fputc((int)(rand_r(&seed) & 0xff), f);
    fclose(f);
}

static void assert_same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    cr_assert(fa && fb, "%s or %s missing", a, b);
    int ca, cb;
    long at = 0;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        cr_assert_eq(ca, cb, "%s and %s differ at byte %ld", a, b, at);
        at++;
    } while (ca != EOF);
    fclose(fa);
    fclose(fb);
}

Test(examples, batch_copy, .timeout = 60)
{
    char dir[128], src[192], path[256], copy[256];
    snprintf(dir, sizeof(dir), "/tmp/mproc-batch-copy-%d", (int)getpid());
    snprintf(src, sizeof(src), "%s/photos", dir);
    cr_assert_eq(mkdir(dir, 0755), 0, "%s", dir);
    cr_assert_eq(mkdir(src, 0755), 0, "%s", src);
    enum { FILES = 37 };
    for (int i = 0; i < FILES; i++) {
        snprintf(path, sizeof(path), "%s/file%02d.bin", src, i);
        write_random_file(path, (size_t)i * 7001 + (i == 5 ? 300000 : 0), (unsigned)i);
    }
    static char out[65536];
    run_example_with_input("batch_copy", dir, "photos", out, sizeof(out));
    cr_assert(strstr(out, "Please enter the name of the folder to copy:") == out, "%s", out);
    for (int i = 0; i < FILES; i++) {
        snprintf(path, sizeof(path), "%s/file%02d.bin", src, i);
        snprintf(copy, sizeof(copy), "%s/photosCopy/file%02d.bin", dir, i);
        assert_same_file(path, copy);
    }
    /* One progress report per file, rising, the last at 100.00 %. */
    int reports = 0;
    double last = -1, pct;
    for (const char *p = strstr(out, "\r Copy progress "); p;
         p = strstr(p + 1, "\r Copy progress ")) {
        cr_assert_eq(sscanf(p, "\r Copy progress %lf %%", &pct), 1, "%s", p);
        cr_assert_gt(pct, last, "progress went from %.2f to %.2f", last, pct);
        last = pct;
        reports++;
    }
    cr_assert_eq(reports, FILES, "%d progress reports for %d files", reports, FILES);
    cr_assert(strstr(out, "\r Copy progress 100.00 %\n") != NULL, "does not end at 100.00 %%: %s",
              out);
    char command[256];
    snprintf(command, sizeof(command), "rm -rf '%s'", dir);
    cr_assert_eq(system(command), 0);
}
