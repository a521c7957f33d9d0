/*
 * Shared data across processes: Value, Array and SharedMemory blocks,
 * anonymous and named. Shows that updates are seen across fork, that the
 * built-in lock makes += exact and survives a killed holder, and that nothing
 * is left in /dev/shm or among the descriptors after destroy.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Named blocks of this suite start with this; other suites may run at the same time. */
#define TEST_PREFIX "mproc-test-"

/* Whether /dev/shm holds name ("/x"). */
static bool dev_shm_has(const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    return access(path, F_OK) == 0;
}

/* Lines of /proc/self/maps that mention needle. */
static int count_mappings(const char *needle)
{
    FILE *f = fopen("/proc/self/maps", "re");
    cr_assert_not_null(f);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* ---- Value ---- */

static int add_under_lock(void *arg)
{
    mproc_value *value = arg;
    for (int i = 0; i < 10000; i++) {
        if (mproc_value_lock(value, 10000) != 0)
            return 1;
        int64_t v;
        mproc_value_get_i64(value, &v);
        mproc_value_set_i64(value, v + 1); /* += in two steps: only the lock makes it exact */
        if (mproc_value_unlock(value) != 0)
            return 2;
    }
    return 0;
}

static int add_atomically(void *arg)
{
    for (int i = 0; i < 10000; i++)
        mproc_value_add_i64(arg, 1, NULL);
    return 0;
}

Test(shm, value_lock_makes_increment_exact, .timeout = 60)
{
    mproc_value *value;
    cr_assert_eq(mproc_value_create(&value, MPROC_TYPE_INT64, true), 0);
    mproc_process *procs[4];
    for (int i = 0; i < 4; i++)
        procs[i] = test_start(add_under_lock, value);
    for (int i = 0; i < 4; i++)
        test_join_expect(procs[i], 0);
    int64_t v;
    cr_assert_eq(mproc_value_get_i64(value, &v), 0);
    cr_assert_eq(v, 40000);

    for (int i = 0; i < 4; i++)
        procs[i] = test_start(add_atomically, value);
    for (int i = 0; i < 4; i++)
        test_join_expect(procs[i], 0);
    int64_t result;
    cr_assert_eq(mproc_value_add_i64(value, -80000, &result), 0);
    cr_assert_eq(result, 0);
    cr_assert_eq(mproc_value_destroy(&value), 0);
    cr_assert_null(value);
}

static int set_to_seven(void *arg)
{
    return mproc_value_set_f64(arg, 7.5) == 0 ? 0 : 1;
}

Test(shm, value_types_and_access, .timeout = 10)
{
    mproc_value *value;
    cr_assert_eq(mproc_value_create(&value, MPROC_TYPE_DOUBLE, false), 0);
    test_join_expect(test_start(set_to_seven, value), 0);
    double d;
    cr_assert_eq(mproc_value_get_f64(value, &d), 0);
    cr_assert(d == 7.5);
    int64_t i64;
    cr_assert_eq(mproc_value_get_i64(value, &i64), -EINVAL, "wrong type");
    cr_assert_eq(mproc_value_add_i64(value, 1, NULL), -EINVAL);
    mproc_type type;
    cr_assert_eq(mproc_value_type(value, &type), 0);
    cr_assert_eq(type, MPROC_TYPE_DOUBLE);
    /* A raw value has no lock. */
    mproc_lock *lock;
    cr_assert_eq(mproc_value_lock(value, 0), -EINVAL);
    cr_assert_eq(mproc_value_unlock(value), -EINVAL);
    cr_assert_eq(mproc_value_get_lock(value, &lock), -EINVAL);
    void *ptr;
    cr_assert_eq(mproc_value_ptr(value, &ptr), 0);
    cr_assert_eq((uintptr_t)ptr % 8, 0);
    cr_assert(*(double *)ptr == 7.5);
    mproc_value_destroy(&value);

    cr_assert_eq(mproc_value_create(&value, MPROC_TYPE_INT32, true), 0);
    cr_assert_eq(mproc_value_set_i32(value, -5), 0);
    int32_t i32;
    cr_assert_eq(mproc_value_get_i32(value, &i32), 0);
    cr_assert_eq(i32, -5);
    cr_assert_eq(mproc_value_get_lock(value, &lock), 0);
    cr_assert_eq(mproc_lock_acquire(lock, 0), 0);
    cr_assert_eq(mproc_lock_acquire(lock, 0), 0, "Python's default lock is an RLock");
    cr_assert_eq(mproc_lock_destroy(&lock), -EINVAL, "the value owns its lock");
    cr_assert_eq(mproc_value_destroy(&value), -EBUSY);
    mproc_value_unlock(value);
    mproc_value_unlock(value);
    cr_assert_eq(mproc_value_destroy(&value), 0);

    cr_assert_eq(mproc_value_create(&value, MPROC_TYPE_UINT64, false), 0);
    cr_assert_eq(mproc_value_set_u64(value, UINT64_MAX), 0);
    uint64_t u64;
    cr_assert_eq(mproc_value_get_u64(value, &u64), 0);
    cr_assert_eq(u64, UINT64_MAX);
    mproc_value_destroy(&value);

    size_t size;
    cr_assert_eq(mproc_type_size(MPROC_TYPE_CHAR, &size), 0);
    cr_assert_eq(size, 1);
    cr_assert_eq(mproc_type_size(MPROC_TYPE_INT16, &size), 0);
    cr_assert_eq(size, 2);
    cr_assert_eq(mproc_type_size(MPROC_TYPE_DOUBLE, &size), 0);
    cr_assert_eq(size, 8);
    cr_assert_eq(mproc_type_size((mproc_type)0, &size), -EINVAL);
    cr_assert_eq(mproc_type_size((mproc_type)99, &size), -EINVAL);
}

struct holder_job {
    mproc_value *value;
    mproc_semaphore *ready;
};

static _Noreturn int lock_value_and_sleep(void *arg)
{
    struct holder_job *job = arg;
    if (mproc_value_lock(job->value, 10000) != 0)
        _exit(1);
    mproc_value_set_i64(job->value, -1); /* half-way through an update */
    mproc_semaphore_release(job->ready);
    for (;;)
        pause();
}

Test(shm, value_lock_recovered_from_killed_holder, .timeout = 30)
{
    struct holder_job job;
    cr_assert_eq(mproc_value_create(&job.value, MPROC_TYPE_INT64, true), 0);
    cr_assert_eq(mproc_semaphore_create(&job.ready, 0), 0);
    mproc_process *proc = test_start(lock_value_and_sleep, &job);
    cr_assert_eq(mproc_semaphore_acquire(job.ready, 10000), 0);
    cr_assert_eq(mproc_value_lock(job.value, 0), -ETIMEDOUT);
    mproc_process_kill(proc);
    test_join_expect(proc, -SIGKILL);
    cr_assert_eq(mproc_value_lock(job.value, 5000), -EOWNERDEAD);
    int64_t v;
    mproc_value_get_i64(job.value, &v);
    cr_assert_eq(v, -1);
    mproc_value_set_i64(job.value, 0);
    cr_assert_eq(mproc_value_unlock(job.value), 0);
    cr_assert_eq(mproc_value_lock(job.value, 0), 0);
    cr_assert_eq(mproc_value_unlock(job.value), 0);
    mproc_value_destroy(&job.value);
    mproc_semaphore_destroy(&job.ready);
}

/* ---- Array ---- */

struct fill_job {
    mproc_array *array;
    int part;
};

static int fill_part(void *arg)
{
    struct fill_job *job = arg;
    for (size_t i = 0; i < 250; i++) {
        int32_t v = job->part * 1000 + (int32_t)i;
        if (mproc_array_set(job->array, (size_t)job->part * 250 + i, &v, sizeof(v)) != 0)
            return 1;
    }
    return 0;
}

Test(shm, array_written_by_children, .timeout = 30)
{
    mproc_array *array;
    cr_assert_eq(mproc_array_create(&array, MPROC_TYPE_INT32, 1000, false), 0);
    struct fill_job jobs[4];
    mproc_process *procs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct fill_job){array, i};
        procs[i] = test_start(fill_part, &jobs[i]);
    }
    for (int i = 0; i < 4; i++)
        test_join_expect(procs[i], 0);
    int32_t *data;
    cr_assert_eq(mproc_array_ptr(array, (void **)&data), 0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(data[i], (i / 250) * 1000 + i % 250, "element %d", i);
    size_t length;
    cr_assert_eq(mproc_array_length(array, &length), 0);
    cr_assert_eq(length, 1000);
    mproc_type type;
    cr_assert_eq(mproc_array_type(array, &type), 0);
    cr_assert_eq(type, MPROC_TYPE_INT32);
    int32_t v;
    cr_assert_eq(mproc_array_get(array, 999, &v, sizeof(v)), 0);
    cr_assert_eq(v, 3249);
    cr_assert_eq(mproc_array_get(array, 1000, &v, sizeof(v)), -ERANGE);
    cr_assert_eq(mproc_array_set(array, 1000, &v, sizeof(v)), -ERANGE);
    int64_t wide = 0;
    cr_assert_eq(mproc_array_get(array, 0, &wide, sizeof(wide)), -EINVAL, "wrong size");
    cr_assert_eq(mproc_array_set(array, 0, &wide, sizeof(wide)), -EINVAL);
    cr_assert_eq(mproc_array_get(array, 0, NULL, sizeof(v)), -EINVAL);
    cr_assert_eq(mproc_array_lock(array, 0), -EINVAL, "a raw array has no lock");
    cr_assert_eq(mproc_array_destroy(&array), 0);
    cr_assert_null(array);
}

static int add_to_each(void *arg)
{
    mproc_array *array = arg;
    double *data;
    mproc_array_ptr(array, (void **)&data);
    for (int round = 0; round < 2000; round++) {
        if (mproc_array_lock(array, 10000) != 0)
            return 1;
        for (int i = 0; i < 4; i++)
            data[i] += 1.0;
        mproc_array_unlock(array);
    }
    return 0;
}

Test(shm, array_lock_guards_updates, .timeout = 60)
{
    mproc_array *array;
    cr_assert_eq(mproc_array_create(&array, MPROC_TYPE_DOUBLE, 4, true), 0);
    mproc_process *procs[3];
    for (int i = 0; i < 3; i++)
        procs[i] = test_start(add_to_each, array);
    for (int i = 0; i < 3; i++)
        test_join_expect(procs[i], 0);
    for (size_t i = 0; i < 4; i++) {
        double d;
        cr_assert_eq(mproc_array_get(array, i, &d, sizeof(d)), 0);
        cr_assert(d == 6000.0, "element %zu is %f", i, d);
    }
    mproc_lock *lock;
    cr_assert_eq(mproc_array_get_lock(array, &lock), 0);
    mproc_array_destroy(&array);
}

Test(shm, value_and_array_attach_by_fd, .timeout = 10)
{
    mproc_value *value, *value_view;
    mproc_array *array, *array_view;
    cr_assert_eq(mproc_value_create(&value, MPROC_TYPE_INT64, true), 0);
    cr_assert_eq(mproc_array_create(&array, MPROC_TYPE_CHAR, 16, true), 0);
    int value_fd, array_fd;
    cr_assert_eq(mproc_value_fd(value, &value_fd), 0);
    cr_assert_eq(mproc_array_fd(array, &array_fd), 0);
    cr_assert_eq(mproc_array_attach(&array_view, value_fd), -EINVAL, "a value is not an array");
    cr_assert_eq(mproc_value_attach(&value_view, array_fd), -EINVAL);
    cr_assert_eq(mproc_value_attach(&value_view, value_fd), 0);
    cr_assert_eq(mproc_array_attach(&array_view, array_fd), 0);
    mproc_value_set_i64(value, 42);
    int64_t v;
    mproc_value_get_i64(value_view, &v);
    cr_assert_eq(v, 42);
    /* One lock, seen through either handle. */
    cr_assert_eq(mproc_value_lock(value, 0), 0);
    mproc_lock *lock;
    cr_assert_eq(mproc_value_get_lock(value_view, &lock), 0);
    bool held;
    cr_assert_eq(mproc_lock_locked(lock, &held), 0);
    cr_assert(held);
    cr_assert_eq(mproc_value_unlock(value_view), 0, "same thread, same lock");
    char c = 'x';
    cr_assert_eq(mproc_array_set(array_view, 15, &c, 1), 0);
    char *chars;
    mproc_array_ptr(array, (void **)&chars);
    cr_assert_eq(chars[15], 'x');
    cr_assert_eq(mproc_value_destroy(&value), 0);
    cr_assert_eq(mproc_value_destroy(&value_view), 0);
    cr_assert_eq(mproc_array_destroy(&array), 0);
    cr_assert_eq(mproc_array_destroy(&array_view), 0);
}

Test(shm, value_array_bad_input, .timeout = 10)
{
    mproc_value *value = NULL;
    mproc_array *array = NULL;
    int64_t v;
    cr_assert_eq(mproc_value_create(NULL, MPROC_TYPE_INT64, true), -EINVAL);
    cr_assert_eq(mproc_value_create(&value, (mproc_type)0, true), -EINVAL);
    cr_assert_eq(mproc_value_create(&value, (mproc_type)1000, true), -EINVAL);
    cr_assert_eq(mproc_value_get_i64(NULL, &v), -EINVAL);
    cr_assert_eq(mproc_value_set_i64(NULL, 1), -EINVAL);
    cr_assert_eq(mproc_value_destroy(&value), -EINVAL);
    cr_assert_eq(mproc_value_destroy(NULL), -EINVAL);
    cr_assert_eq(mproc_array_create(&array, MPROC_TYPE_INT32, 0, false), -EINVAL);
    cr_assert_eq(mproc_array_create(&array, MPROC_TYPE_INT32, SIZE_MAX / 2, false), -EINVAL);
    cr_assert_eq(mproc_array_create(NULL, MPROC_TYPE_INT32, 1, false), -EINVAL);
    cr_assert_eq(mproc_array_destroy(&array), -EINVAL);
    cr_assert_eq(mproc_value_attach(&value, -1), -EINVAL);
    cr_assert_eq(mproc_array_attach(&array, 0), -EINVAL);
    cr_assert_eq(mproc_value_create(&value, MPROC_TYPE_INT64, false), 0);
    cr_assert_eq(mproc_value_get_i64(value, NULL), -EINVAL);
    cr_assert_eq(mproc_value_ptr(value, NULL), -EINVAL);
    mproc_value_destroy(&value);
}

/* ---- SharedMemory ---- */

static int write_hello(void *arg)
{
    void *buf;
    if (mproc_shared_memory_buf(arg, &buf) != 0)
        return 1;
    memcpy(buf, "hello", 6);
    return 0;
}

Test(shm, anonymous_block_shared_and_leaves_nothing, .timeout = 10)
{
    int fds = test_count_fds();
    int others = test_count_dev_shm();
    cr_assert_eq(count_mappings("memfd:mproc-shared-memory"), 0);
    mproc_shared_memory *shm, *view;
    cr_assert_eq(mproc_shared_memory_create(&shm, 10000), 0);
    cr_assert_null(mproc_shared_memory_name(shm));
    cr_assert_eq(mproc_shared_memory_unlink(shm), -EINVAL, "no name to remove");
    size_t size;
    cr_assert_eq(mproc_shared_memory_size(shm, &size), 0);
    cr_assert_eq(size, 10000);
    test_join_expect(test_start(write_hello, shm), 0);
    void *buf;
    cr_assert_eq(mproc_shared_memory_buf(shm, &buf), 0);
    cr_assert_str_eq(buf, "hello");
    int fd;
    cr_assert_eq(mproc_shared_memory_fd(shm, &fd), 0);
    /* A memfd, not a file in /dev/shm: nothing has a name to leak. */
    char link[64], target[256];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    cr_assert_gt(n, 0);
    target[n] = '\0';
    cr_assert(strncmp(target, "/memfd:mproc-shared-memory", 26) == 0, "fd is %s", target);
    cr_assert_eq(mproc_shared_memory_attach(&view, fd), 0);
    void *view_buf;
    mproc_shared_memory_buf(view, &view_buf);
    cr_assert_str_eq(view_buf, "hello");
    cr_assert_neq(view_buf, buf, "a second mapping");
    cr_assert_eq(count_mappings("memfd:mproc-shared-memory"), 2);
    cr_assert_eq(mproc_shared_memory_destroy(&shm), 0);
    cr_assert_null(shm);
    cr_assert_eq(mproc_shared_memory_destroy(&view), 0);
    cr_assert_eq(count_mappings("memfd:mproc-shared-memory"), 0);
    cr_assert_eq(test_count_fds(), fds);
    cr_assert_eq(test_count_dev_shm(), others);
}

static void unique_name(char *name, size_t size, const char *what)
{
    snprintf(name, size, "/" TEST_PREFIX "%s-%d", what, (int)getpid());
}

static int open_and_write(void *arg)
{
    mproc_shared_memory *shm;
    if (mproc_shared_memory_open(&shm, arg) != 0)
        return 1;
    void *buf;
    size_t size;
    mproc_shared_memory_buf(shm, &buf);
    mproc_shared_memory_size(shm, &size);
    if (size != 4096)
        return 2;
    memcpy(buf, "from child", 11);
    /* Not the creator: destroy here must not remove the name. */
    mproc_shared_memory_destroy(&shm);
    return 0;
}

Test(shm, named_block_exclusive_open_unlink, .timeout = 10)
{
    int fds = test_count_fds();
    char name[64];
    unique_name(name, sizeof(name), "named");
    mproc_shared_memory *shm, *again;
    cr_assert_eq(mproc_shared_memory_create_named(&shm, name, 4096), 0);
    cr_assert_str_eq(mproc_shared_memory_name(shm), name);
    cr_assert(dev_shm_has(name));
    cr_assert_eq(mproc_shared_memory_create_named(&again, name, 4096), -EEXIST);
    cr_assert_eq(mproc_shared_memory_create_named(&again, name + 1, 4096), -EEXIST,
                 "the same name without its slash");
    test_join_expect(test_start(open_and_write, name), 0);
    void *buf;
    mproc_shared_memory_buf(shm, &buf);
    cr_assert_str_eq(buf, "from child");
    cr_assert_eq(mproc_shared_memory_unlink(shm), 0);
    cr_assert(!dev_shm_has(name));
    cr_assert_eq(mproc_shared_memory_open(&again, name), -ENOENT);
    cr_assert_eq(mproc_shared_memory_unlink(shm), -ENOENT);
    /* The memory outlives its name. */
    cr_assert_str_eq(buf, "from child");
    cr_assert_eq(mproc_shared_memory_destroy(&shm), 0);
    cr_assert_eq(test_count_fds(), fds);
    cr_assert(!dev_shm_has(name));
}

Test(shm, creator_destroy_removes_name, .timeout = 10)
{
    char name[64];
    unique_name(name, sizeof(name), "destroy");
    mproc_shared_memory *shm, *opened;
    cr_assert_eq(mproc_shared_memory_create_named(&shm, name, 100), 0);
    cr_assert_eq(mproc_shared_memory_open(&opened, name), 0);
    cr_assert_eq(mproc_shared_memory_destroy(&opened), 0);
    cr_assert(dev_shm_has(name), "an opener does not remove the name");
    cr_assert_eq(mproc_shared_memory_destroy(&shm), 0);
    cr_assert(!dev_shm_has(name));
    cr_assert_eq(mproc_shared_memory_open(&opened, name), -ENOENT);
}

static _Noreturn int create_everything_and_die(void *arg)
{
    mproc_shared_memory *shm;
    mproc_value *value;
    mproc_array *array;
    mproc_lock *lock;
    mproc_shared_memory_create(&shm, 1 << 20);
    mproc_value_create(&value, MPROC_TYPE_INT64, true);
    mproc_array_create(&array, MPROC_TYPE_DOUBLE, 1000, true);
    mproc_lock_create(&lock);
    mproc_lock_acquire(lock, 0);
    raise(SIGKILL);
    for (;;)
        pause();
}

Test(shm, crash_of_creator_leaves_no_name, .timeout = 10)
{
    int others = test_count_dev_shm();
    test_join_expect(test_start(create_everything_and_die, NULL), -SIGKILL);
    cr_assert_eq(test_count_dev_shm(), others);
}

Test(shm, shared_memory_bad_input, .timeout = 10)
{
    mproc_shared_memory *shm = NULL;
    char long_name[NAME_MAX + 10];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    cr_assert_eq(mproc_shared_memory_create(NULL, 10), -EINVAL);
    cr_assert_eq(mproc_shared_memory_create(&shm, 0), -EINVAL);
    cr_assert_eq(mproc_shared_memory_create_named(&shm, NULL, 10), -EINVAL);
    cr_assert_eq(mproc_shared_memory_create_named(&shm, "", 10), -EINVAL);
    cr_assert_eq(mproc_shared_memory_create_named(&shm, "/", 10), -EINVAL);
    cr_assert_eq(mproc_shared_memory_create_named(&shm, "a/b", 10), -EINVAL);
    cr_assert_eq(mproc_shared_memory_create_named(&shm, long_name, 10), -EINVAL);
    cr_assert_eq(mproc_shared_memory_create_named(&shm, "/mproc-test-zero", 0), -EINVAL);
    cr_assert_eq(mproc_shared_memory_open(&shm, NULL), -EINVAL);
    cr_assert_eq(mproc_shared_memory_open(NULL, "x"), -EINVAL);
    cr_assert_eq(mproc_shared_memory_attach(&shm, -1), -EINVAL);
    cr_assert_eq(mproc_shared_memory_destroy(&shm), -EINVAL);
    cr_assert_eq(mproc_shared_memory_destroy(NULL), -EINVAL);
    cr_assert_null(mproc_shared_memory_name(NULL));
    void *buf;
    size_t size;
    cr_assert_eq(mproc_shared_memory_buf(NULL, &buf), -EINVAL);
    cr_assert_eq(mproc_shared_memory_size(NULL, &size), -EINVAL);
    cr_assert_eq(mproc_shared_memory_unlink(NULL), -EINVAL);
}
