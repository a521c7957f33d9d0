/* Built against an installed libmproc: checks header and library agree, runs a child. */
#include <mproc.h>

#include <stdio.h>

static int child(void *arg)
{
    return 42;
}

int main(void)
{
    if (mproc_version() != MPROC_VERSION_HEX) {
        fprintf(stderr, "header %s, library %s\n", MPROC_VERSION_STRING, mproc_version_string());
        return 1;
    }
    mproc_process *proc;
    int code = -1;
    if (mproc_process_create(&proc, child, NULL) < 0 || mproc_process_start(proc) < 0)
        return 1;
    mproc_process_join(proc, MPROC_WAIT_FOREVER);
    mproc_process_exitcode(proc, &code);
    mproc_process_destroy(&proc);
    printf("consumer: child exit code %d\n", code);
    return code == 42 ? 0 : 1;
}
