/*
 * globals_not_shared: the tutorial's demonstration that a global variable is
 * not shared between processes. demo1 adds 1 to `a` in its own copy of the
 * memory; demo2, started after demo1 has finished, and the parent still see 1.
 * Then the right way: a shared Value, which every process sees and updates
 * under its lock.
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

/* The right way: a Value in shared memory, incremented under its own lock. */
static int demo_shared(void *arg)
{
    mproc_value *shared = arg;
    int64_t v;
    mproc_value_lock(shared, MPROC_WAIT_FOREVER);
    mproc_value_get_i64(shared, &v);
    mproc_value_set_i64(shared, v + 1);
    mproc_value_unlock(shared);
    return 0;
}

static int run_to_end(mproc_target_fn target, void *arg)
{
    mproc_process *proc;
    int rc = mproc_process_create(&proc, target, arg);
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
    int rc = run_to_end(demo1, NULL);
    if (rc == 0)
        rc = run_to_end(demo2, NULL);
    if (rc < 0) {
        fprintf(stderr, "globals_not_shared: %s\n", mproc_strerror(rc));
        return 1;
    }
    printf("main (%s): a = %d\n", mproc_current_name(), a);
    printf("The global is not shared: each process changed only its own copy.\n");

    mproc_value *shared = NULL;
    rc = mproc_value_create(&shared, MPROC_TYPE_INT64, true);
    if (rc == 0)
        rc = mproc_value_set_i64(shared, 1);
    for (int i = 0; i < 2 && rc == 0; i++)
        rc = run_to_end(demo_shared, shared);
    int64_t value = 0;
    if (rc == 0)
        rc = mproc_value_get_i64(shared, &value);
    mproc_value_destroy(&shared);
    if (rc < 0) {
        fprintf(stderr, "globals_not_shared: %s\n", mproc_strerror(rc));
        return 1;
    }
    printf("main (%s): shared a = %lld after two children added 1\n", mproc_current_name(),
           (long long)value);
    return 0;
}
