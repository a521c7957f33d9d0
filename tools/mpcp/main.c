/*
 * mpcp: copies files and folders as GNU cp does, atomically per file, with
 * the fast kernel paths, a progress bar and summaries. See mpcp.1.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <locale.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <sys/resource.h>

/*
 * The planner holds two descriptors per level of the tree: raise the soft
 * limit to the hard one so that deep trees do not run out.
 */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void on_signal(int sig)
{
    mpcp_interrupted = sig;
}

/*
 * Ctrl-C and friends stop the copy at the next step instead of killing it
 * mid-write: the temporary being written is removed, then the signal is
 * raised again so that the exit status says what happened.
 */
static void catch_signals(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal; /* no SA_RESTART: blocking reads return EINTR */
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
}

static void reraise(void)
{
    int sig = mpcp_interrupted;
    if (!sig)
        return;
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(int argc, char **argv)
{
    /* Names are quoted as printable or escaped by the user's locale, as cp does. */
    setlocale(LC_ALL, "");
    int rc = mpcp_cluster_exec(argv);
    if (rc >= 0)
        return rc;
    struct mpcp_opts opt;
    rc = mpcp_options_parse(&opt, argc, argv);
    if (rc >= 0)
        return rc;
    raise_fd_limit();
    catch_signals();
    rc = mpcp_cluster_start(&opt);
    if (rc >= 0)
        return rc; /* an MPI worker rank, done */
    rc = mpcp_run(&opt);
    mpcp_cluster_end();
    if (fflush(stdout) != 0 || ferror(stdout)) {
        mpcp_error(0, "write error");
        rc = 1;
    }
    reraise();
    return rc;
}
