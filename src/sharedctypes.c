/*
 * sharedctypes.c: Value and Array, typed data in a memfd region, with an
 * optional RLock in the same region (so one descriptor carries both).
 *
 * Layout: object header, then the description (type, element size, length),
 * the lock state, and the data at a cache-line boundary so that a value does
 * not share its line with the lock word that other processes spin on.
 * Elements are read and written with atomic loads and stores of their size,
 * so a reader never sees half of a concurrent write.
 */
#define _GNU_SOURCE
#include "sync_internal.h"

#include <mproc/shm.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DATA_MAGIC     0x6d706474u /* "mpdt" */
#define DATA_ALIGN     64
#define MAX_BLOCK_SIZE ((size_t)1 << 40)

struct data_block {
    struct mproc__object_header header;
    uint32_t type;
    uint32_t elem_size;
    uint64_t length;
    uint32_t has_lock;
    uint32_t is_array;
    struct mproc__lock_shared lock;
    _Alignas(DATA_ALIGN) unsigned char data[];
};

/* What a Value and an Array handle both are. */
struct shared_data {
    uint32_t magic;
    struct mproc__region region;
    struct data_block *block;
    mproc_lock *lock; /* wraps block->lock; NULL for raw data */
};

struct mproc_value {
    struct shared_data d;
};

struct mproc_array {
    struct shared_data d;
};

int mproc_type_size(mproc_type type, size_t *size)
{
    static const size_t sizes[] = {
        [MPROC_TYPE_CHAR] = sizeof(char),
        [MPROC_TYPE_BOOL] = sizeof(bool),
        [MPROC_TYPE_INT8] = 1,
        [MPROC_TYPE_UINT8] = 1,
        [MPROC_TYPE_INT16] = 2,
        [MPROC_TYPE_UINT16] = 2,
        [MPROC_TYPE_INT32] = 4,
        [MPROC_TYPE_UINT32] = 4,
        [MPROC_TYPE_INT64] = 8,
        [MPROC_TYPE_UINT64] = 8,
        [MPROC_TYPE_FLOAT] = sizeof(float),
        [MPROC_TYPE_DOUBLE] = sizeof(double),
    };
    if (!size || type < MPROC_TYPE_CHAR || type > MPROC_TYPE_DOUBLE)
        return -EINVAL;
    *size = sizes[type];
    return 0;
}

static bool valid(const struct shared_data *d, bool is_array)
{
    return d && d->magic == DATA_MAGIC && d->block->is_array == is_array;
}

static void free_data(struct shared_data *d)
{
    mproc__lock_free(d->lock);
    mproc__region_release(&d->region);
    d->magic = 0;
    free(d);
}

/* Wraps the lock state of a mapped block, if it has one. */
static int finish_handle(struct shared_data *d)
{
    d->block = d->region.addr;
    d->magic = DATA_MAGIC;
    if (!d->block->has_lock)
        return 0;
    return mproc__lock_wrap(&d->lock, &d->block->lock);
}

static int create(struct shared_data **out, mproc_type type, size_t length, bool lock,
                  bool is_array)
{
    size_t elem_size;
    if (!out || mproc_type_size(type, &elem_size) < 0 || length == 0 ||
        length > MAX_BLOCK_SIZE / elem_size)
        return -EINVAL;
    struct shared_data *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    int rc =
        mproc__object_create(&d->region, sizeof(struct data_block) + length * elem_size,
                             MPROC__KIND_SHAREDCTYPES, is_array ? "mproc-array" : "mproc-value");
    if (rc < 0) {
        free(d);
        return rc;
    }
    struct data_block *block = d->region.addr;
    block->type = (uint32_t)type;
    block->elem_size = (uint32_t)elem_size;
    block->length = length;
    block->has_lock = lock;
    block->is_array = is_array;
    if (lock)
        rc = mproc__lock_init_shared(&block->lock, true, block->header.id);
    if (rc == 0)
        rc = finish_handle(d);
    if (rc < 0) {
        free_data(d);
        return rc;
    }
    *out = d;
    return 0;
}

static int attach(struct shared_data **out, int fd, bool is_array)
{
    if (!out)
        return -EINVAL;
    struct shared_data *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    int rc =
        mproc__object_attach(&d->region, fd, MPROC__KIND_SHAREDCTYPES, sizeof(struct data_block));
    if (rc < 0) {
        free(d);
        return rc;
    }
    const struct data_block *block = d->region.addr;
    size_t elem_size = 0;
    bool ok = block->is_array == is_array &&
              mproc_type_size((mproc_type)block->type, &elem_size) == 0 &&
              elem_size == block->elem_size && block->length > 0 &&
              block->length <= (d->region.size - sizeof(struct data_block)) / elem_size;
    if (!ok) {
        mproc__region_release(&d->region);
        free(d);
        return -EINVAL;
    }
    rc = finish_handle(d);
    if (rc < 0) {
        free_data(d);
        return rc;
    }
    *out = d;
    return 0;
}

/* Frees a handle unless its lock is held by the caller. */
static int destroy(struct shared_data *d, bool is_array)
{
    if (!valid(d, is_array))
        return -EINVAL;
    if (d->lock && mproc__lock_held(d->lock))
        return -EBUSY;
    free_data(d);
    return 0;
}

static void *element(const struct shared_data *d, size_t index)
{
    return d->block->data + index * d->block->elem_size;
}

/* Atomic copy of one element of 1, 2, 4 or 8 bytes. */
static void load(const void *src, void *dst, size_t size)
{
    switch (size) {
    case 1: {
        uint8_t v = __atomic_load_n((const uint8_t *)src, __ATOMIC_SEQ_CST);
        memcpy(dst, &v, 1);
        break;
    }
    case 2: {
        uint16_t v = __atomic_load_n((const uint16_t *)src, __ATOMIC_SEQ_CST);
        memcpy(dst, &v, 2);
        break;
    }
    case 4: {
        uint32_t v = __atomic_load_n((const uint32_t *)src, __ATOMIC_SEQ_CST);
        memcpy(dst, &v, 4);
        break;
    }
    default: {
        uint64_t v = __atomic_load_n((const uint64_t *)src, __ATOMIC_SEQ_CST);
        memcpy(dst, &v, 8);
        break;
    }
    }
}

static void store(void *dst, const void *src, size_t size)
{
    switch (size) {
    case 1: {
        uint8_t v;
        memcpy(&v, src, 1);
        __atomic_store_n((uint8_t *)dst, v, __ATOMIC_SEQ_CST);
        break;
    }
    case 2: {
        uint16_t v;
        memcpy(&v, src, 2);
        __atomic_store_n((uint16_t *)dst, v, __ATOMIC_SEQ_CST);
        break;
    }
    case 4: {
        uint32_t v;
        memcpy(&v, src, 4);
        __atomic_store_n((uint32_t *)dst, v, __ATOMIC_SEQ_CST);
        break;
    }
    default: {
        uint64_t v;
        memcpy(&v, src, 8);
        __atomic_store_n((uint64_t *)dst, v, __ATOMIC_SEQ_CST);
        break;
    }
    }
}

static int lock_data(struct shared_data *d, int timeout_ms)
{
    if (!d->lock)
        return -EINVAL;
    return mproc_lock_acquire(d->lock, timeout_ms);
}

static int unlock_data(struct shared_data *d)
{
    if (!d->lock)
        return -EINVAL;
    return mproc_lock_release(d->lock);
}

static int get_lock(struct shared_data *d, mproc_lock **lock)
{
    if (!lock || !d->lock)
        return -EINVAL;
    *lock = d->lock;
    return 0;
}

/* ---- Value ---- */

int mproc_value_create(mproc_value **out, mproc_type type, bool lock)
{
    struct shared_data *d = NULL;
    int rc = out ? create(&d, type, 1, lock, false) : -EINVAL;
    if (rc == 0)
        *out = (mproc_value *)d;
    return rc;
}

int mproc_value_attach(mproc_value **out, int fd)
{
    struct shared_data *d = NULL;
    int rc = out ? attach(&d, fd, false) : -EINVAL;
    if (rc == 0)
        *out = (mproc_value *)d;
    return rc;
}

int mproc_value_destroy(mproc_value **value)
{
    if (!value || !*value)
        return -EINVAL;
    int rc = destroy(&(*value)->d, false);
    if (rc == 0)
        *value = NULL;
    return rc;
}

int mproc_value_type(const mproc_value *value, mproc_type *type)
{
    if (!value || !valid(&value->d, false) || !type)
        return -EINVAL;
    *type = (mproc_type)value->d.block->type;
    return 0;
}

int mproc_value_ptr(mproc_value *value, void **ptr)
{
    if (!value || !valid(&value->d, false) || !ptr)
        return -EINVAL;
    *ptr = element(&value->d, 0);
    return 0;
}

/* The element of a value of exactly this type, or NULL. */
static void *typed(const mproc_value *value, mproc_type type)
{
    if (!value || !valid(&value->d, false) || value->d.block->type != (uint32_t)type)
        return NULL;
    return element(&value->d, 0);
}

/* Typed atomic read and write; the type must be the value's. */
static int get_typed(const mproc_value *value, mproc_type type, void *out, size_t size)
{
    void *p = typed(value, type);
    if (!p || !out)
        return -EINVAL;
    load(p, out, size);
    return 0;
}

static int set_typed(mproc_value *value, mproc_type type, const void *in, size_t size)
{
    void *p = typed(value, type);
    if (!p)
        return -EINVAL;
    store(p, in, size);
    return 0;
}

int mproc_value_get_i32(const mproc_value *value, int32_t *out)
{
    return get_typed(value, MPROC_TYPE_INT32, out, sizeof(*out));
}

int mproc_value_set_i32(mproc_value *value, int32_t in)
{
    return set_typed(value, MPROC_TYPE_INT32, &in, sizeof(in));
}

int mproc_value_get_i64(const mproc_value *value, int64_t *out)
{
    return get_typed(value, MPROC_TYPE_INT64, out, sizeof(*out));
}

int mproc_value_set_i64(mproc_value *value, int64_t in)
{
    return set_typed(value, MPROC_TYPE_INT64, &in, sizeof(in));
}

int mproc_value_get_u64(const mproc_value *value, uint64_t *out)
{
    return get_typed(value, MPROC_TYPE_UINT64, out, sizeof(*out));
}

int mproc_value_set_u64(mproc_value *value, uint64_t in)
{
    return set_typed(value, MPROC_TYPE_UINT64, &in, sizeof(in));
}

int mproc_value_get_f64(const mproc_value *value, double *out)
{
    return get_typed(value, MPROC_TYPE_DOUBLE, out, sizeof(*out));
}

int mproc_value_set_f64(mproc_value *value, double in)
{
    return set_typed(value, MPROC_TYPE_DOUBLE, &in, sizeof(in));
}

int mproc_value_add_i64(mproc_value *value, int64_t delta, int64_t *result)
{
    uint64_t *p = typed(value, MPROC_TYPE_INT64);
    if (!p)
        return -EINVAL;
    /* Unsigned arithmetic: wrapping is defined, as the header promises. */
    uint64_t now = __atomic_add_fetch(p, (uint64_t)delta, __ATOMIC_SEQ_CST);
    if (result)
        memcpy(result, &now, sizeof(now));
    return 0;
}

int mproc_value_lock(mproc_value *value, int timeout_ms)
{
    if (!value || !valid(&value->d, false))
        return -EINVAL;
    return lock_data(&value->d, timeout_ms);
}

int mproc_value_unlock(mproc_value *value)
{
    if (!value || !valid(&value->d, false))
        return -EINVAL;
    return unlock_data(&value->d);
}

int mproc_value_get_lock(mproc_value *value, mproc_lock **lock)
{
    if (!value || !valid(&value->d, false))
        return -EINVAL;
    return get_lock(&value->d, lock);
}

int mproc_value_fd(const mproc_value *value, int *fd)
{
    if (!value || !valid(&value->d, false) || !fd)
        return -EINVAL;
    *fd = value->d.region.fd;
    return 0;
}

/* ---- Array ---- */

int mproc_array_create(mproc_array **out, mproc_type type, size_t length, bool lock)
{
    struct shared_data *d = NULL;
    int rc = out ? create(&d, type, length, lock, true) : -EINVAL;
    if (rc == 0)
        *out = (mproc_array *)d;
    return rc;
}

int mproc_array_attach(mproc_array **out, int fd)
{
    struct shared_data *d = NULL;
    int rc = out ? attach(&d, fd, true) : -EINVAL;
    if (rc == 0)
        *out = (mproc_array *)d;
    return rc;
}

int mproc_array_destroy(mproc_array **array)
{
    if (!array || !*array)
        return -EINVAL;
    int rc = destroy(&(*array)->d, true);
    if (rc == 0)
        *array = NULL;
    return rc;
}

int mproc_array_type(const mproc_array *array, mproc_type *type)
{
    if (!array || !valid(&array->d, true) || !type)
        return -EINVAL;
    *type = (mproc_type)array->d.block->type;
    return 0;
}

int mproc_array_length(const mproc_array *array, size_t *length)
{
    if (!array || !valid(&array->d, true) || !length)
        return -EINVAL;
    *length = (size_t)array->d.block->length;
    return 0;
}

int mproc_array_ptr(mproc_array *array, void **ptr)
{
    if (!array || !valid(&array->d, true) || !ptr)
        return -EINVAL;
    *ptr = element(&array->d, 0);
    return 0;
}

/* Checks an element access: 0, -EINVAL or -ERANGE. */
static int check_access(const mproc_array *array, size_t index, const void *buf, size_t size)
{
    if (!array || !valid(&array->d, true) || !buf || size != array->d.block->elem_size)
        return -EINVAL;
    return index < array->d.block->length ? 0 : -ERANGE;
}

int mproc_array_get(const mproc_array *array, size_t index, void *out, size_t size)
{
    int rc = check_access(array, index, out, size);
    if (rc == 0)
        load(element(&array->d, index), out, size);
    return rc;
}

int mproc_array_set(mproc_array *array, size_t index, const void *in, size_t size)
{
    int rc = check_access(array, index, in, size);
    if (rc == 0)
        store(element(&array->d, index), in, size);
    return rc;
}

int mproc_array_lock(mproc_array *array, int timeout_ms)
{
    if (!array || !valid(&array->d, true))
        return -EINVAL;
    return lock_data(&array->d, timeout_ms);
}

int mproc_array_unlock(mproc_array *array)
{
    if (!array || !valid(&array->d, true))
        return -EINVAL;
    return unlock_data(&array->d);
}

int mproc_array_get_lock(mproc_array *array, mproc_lock **lock)
{
    if (!array || !valid(&array->d, true))
        return -EINVAL;
    return get_lock(&array->d, lock);
}

int mproc_array_fd(const mproc_array *array, int *fd)
{
    if (!array || !valid(&array->d, true) || !fd)
        return -EINVAL;
    *fd = array->d.region.fd;
    return 0;
}
