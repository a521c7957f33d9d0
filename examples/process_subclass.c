/*
 * process_subclass: the tutorial's MyProcess, a Process subclass whose run()
 * prints its pid and loop counter. In C a "class" is a static table of
 * operations and each instance carries its own fields.
 */
#include <mproc.h>

#include <stdio.h>
#include <unistd.h>

struct my_process {
    int loop;
};

static int my_process_run(mproc_process *self)
{
    const struct my_process *me = mproc_process_data(self);
    for (int count = 0; count < me->loop; count++)
        printf("Pid:%d LoopCount: %d\n", (int)getpid(), count);
    return 0;
}

static const mproc_process_class my_process_class = {.name = "MyProcess", .run = my_process_run};

/* MyProcess(loop): the constructor sets the instance's fields. */
static int my_process_create(mproc_process **out, int loop)
{
    int rc = mproc_process_create_class(out, &my_process_class, sizeof(struct my_process));
    if (rc == 0) {
        struct my_process *me = mproc_process_data(*out);
        me->loop = loop;
    }
    return rc;
}

int main(void)
{
    mproc_process *procs[3];
    for (int i = 2; i < 5; i++) {
        mproc_process **proc = &procs[i - 2];
        int rc = my_process_create(proc, i);
        if (rc == 0)
            rc = mproc_process_start(*proc);
        if (rc < 0) {
            fprintf(stderr, "process_subclass: cannot start MyProcess(%d): %s\n", i,
                    mproc_strerror(rc));
            return 1;
        }
    }
    for (int i = 0; i < 3; i++) {
        mproc_process_join(procs[i], MPROC_WAIT_FOREVER);
        mproc_process_destroy(&procs[i]);
    }
    return 0;
}
