/*
 * process_basic: the tutorial's first example. Five children each run
 * process(index) with their own index, like
 *     multiprocessing.Process(target=process, args=(i,)).start()
 */
#include <mproc.h>

#include <stdio.h>

static int process(void *arg)
{
    /* The child sees the parent's memory as it was at start(): the index is there. */
    int index = *(const int *)arg;
    printf("Process: %d\n", index);
    return 0;
}

int main(void)
{
    enum { COUNT = 5 };
    int indexes[COUNT];
    mproc_process *procs[COUNT];
    int failures = 0;

    for (int i = 0; i < COUNT; i++) {
        indexes[i] = i;
        int rc = mproc_process_create(&procs[i], process, &indexes[i]);
        if (rc == 0)
            rc = mproc_process_start(procs[i]);
        if (rc < 0) {
            fprintf(stderr, "process_basic: cannot start process %d: %s\n", i, mproc_strerror(rc));
            return 1;
        }
    }
    for (int i = 0; i < COUNT; i++) {
        int code = 0;
        mproc_process_join(procs[i], MPROC_WAIT_FOREVER);
        mproc_process_exitcode(procs[i], &code);
        failures += code != 0;
        mproc_process_destroy(&procs[i]);
    }
    return failures ? 1 : 0;
}
