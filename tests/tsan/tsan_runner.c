/*
 * tsan_runner.c: runs the tests that tsan/criterion/criterion.h registered,
 * each in a forked process with its timeout (a test forks and kills
 * processes, installs signal handlers and counts its children: it must have
 * a process of its own, as under Criterion). Options as Criterion's:
 * --filter=GLOB[,GLOB...] on "suite/name", --verbose; --exclude=GLOB[,...]
 * leaves tests out (those TSan cannot judge, see CMakeLists.txt); --jobs and
 * --short-filename are accepted and ignored. TSAN_TIMEOUT_SCALE multiplies
 * the timeouts (TSan slows code 5-15x). Exit status 1 if a test failed.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <fnmatch.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct tsan_test *tests;
static bool verbose;

void tsan_register(struct tsan_test *test)
{
    test->next = tests;
    tests = test;
}

void tsan_fail(const char *file, int line, const char *expr, const char *format, ...)
{
    fprintf(stderr, "[----] %s:%d: Assertion Failed: %s\n[----]  ", file, line, expr);
    va_list ap;
    va_start(ap, format);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    _exit(1);
}

void tsan_log(const char *format, ...)
{
    if (!verbose)
        return;
    va_list ap;
    va_start(ap, format);
    fputs("[----] ", stderr);
    vfprintf(stderr, format, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static bool matches(const struct tsan_test *t, const char *filter)
{
    char full[256];
    snprintf(full, sizeof(full), "%s/%s", t->suite, t->name);
    char *list = strdup(filter);
    bool match = false;
    for (char *save, *glob = strtok_r(list, ",", &save); glob && !match;
         glob = strtok_r(NULL, ",", &save))
        match = fnmatch(glob, full, 0) == 0;
    free(list);
    return match;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs one test in its own process: true if it passed. */
static bool run(const struct tsan_test *t, double scale)
{
    fprintf(stderr, "[RUN ] %s::%s\n", t->suite, t->name);
    double start = now_s();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return false;
    }
    if (pid == 0) {
        /* Its own process group: a timeout kills what it started too. */
        setpgid(0, 0);
        t->fn();
        fflush(NULL);
        _exit(0);
    }
    double limit = (t->timeout > 0 ? t->timeout : 60) * scale;
    int status = 0;
    bool timed_out = false;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_s() - start > limit) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            timed_out = true;
            break;
        }
        usleep(10000);
    }
    bool pass = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    const char *why = timed_out ? " (timed out)" : "";
    char code[64] = "";
    if (!pass && !timed_out)
        snprintf(code, sizeof(code), WIFSIGNALED(status) ? " (signal %d)" : " (exit %d)",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    fprintf(stderr, "[%s] %s::%s: (%.2fs)%s%s\n", pass ? "PASS" : "FAIL", t->suite, t->name,
            now_s() - start, why, code);
    return pass;
}

int main(int argc, char **argv)
{
    const char *filter = NULL, *exclude = NULL;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--filter=", 9) == 0)
            filter = argv[i] + 9;
        else if (strncmp(argv[i], "--exclude=", 10) == 0)
            exclude = argv[i] + 10;
        else if (strcmp(argv[i], "--verbose") == 0)
            verbose = true;
    }
    const char *scale_text = getenv("TSAN_TIMEOUT_SCALE");
    double scale = scale_text ? atof(scale_text) : 1;
    if (scale <= 0)
        scale = 1;
    /* Registered last first: run them in the file's order. */
    struct tsan_test *ordered = NULL;
    while (tests) {
        struct tsan_test *t = tests;
        tests = t->next;
        t->next = ordered;
        ordered = t;
    }
    int total = 0, failed = 0;
    for (struct tsan_test *t = ordered; t; t = t->next) {
        if ((filter && !matches(t, filter)) || (exclude && matches(t, exclude)))
            continue;
        total++;
        failed += !run(t, scale);
    }
    fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d\n", total,
            total - failed, failed);
    return failed ? 1 : 0;
}
