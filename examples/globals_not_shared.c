/*
 * globals_not_shared: the tutorial's demonstration that a global variable is
 * not shared between processes. demo1 adds 1 to `a` in its own copy of the
 * memory; demo2, started after demo1 has finished, and the parent still see 1.
 */
#include <mproc.h>

#include <stdio.h>

static int a = 1;

static int demo1(void *arg)
{
    a += 1;
    printf("demo1 (child %s): a = %d\n", mproc_current_name(), a);
    return 0;
}

static int demo2(void *arg)
{
    printf("demo2 (child %s): a = %d\n", mproc_current_name(), a);
    return 0;
}

static int run_to_end(mproc_target_fn target)
{
    mproc_process *proc;
    int rc = mproc_process_create(&proc, target, NULL);
    if (rc < 0)
        return rc;
    rc = mproc_process_start(proc);
    if (rc == 0)
        rc = mproc_process_join(proc, MPROC_WAIT_FOREVER);
    mproc_process_destroy(&proc);
    return rc;
}

int main(void)
{
    int rc = run_to_end(demo1);
    if (rc == 0)
        rc = run_to_end(demo2);
    if (rc < 0) {
        fprintf(stderr, "globals_not_shared: %s\n", mproc_strerror(rc));
        return 1;
    }
    printf("main (%s): a = %d\n", mproc_current_name(), a);
    printf("The global is not shared: each process changed only its own copy.\n");
    return 0;
}
