/*
 * mproc/shm.h: data shared between processes: typed Value and Array (Python's
 * multiprocessing.Value/Array/RawValue/RawArray), and SharedMemory blocks
 * (multiprocessing.shared_memory).
 *
 * Value and Array live in shared memory (a memfd, nameless) made by create():
 * children started afterwards inherit them, and other processes attach with
 * mproc_X_attach(&x, fd), fd from mproc_X_fd(), as for the objects of
 * <mproc/sync.h>. A handle belongs to the process that made, inherited or
 * attached it; destroy() unmaps that process's view and frees the handle.
 * The memory goes when the last process unmaps it, even after a crash.
 *
 * Created with lock = true, a Value or Array carries an RLock in the same
 * memory (Python's default); mproc_X_lock/unlock take it, get_lock() lends it.
 * Like any mproc lock it is robust: if its holder dies, the next taker gets
 * -EOWNERDEAD and should check the data. Typed get/set are single atomic
 * loads and stores and need no lock; a read-modify-write (x = x + 1) does,
 * unless it is one of the atomic helpers (mproc_value_add_i64).
 */
#ifndef MPROC_SHM_H
#define MPROC_SHM_H

#include <mproc/common.h>
#include <mproc/sync.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types, with the C type each stands for (Python's typecodes). */
typedef enum mproc_type {
    MPROC_TYPE_CHAR = 1, /* char, 'c' */
    MPROC_TYPE_BOOL,     /* bool, '?' */
    MPROC_TYPE_INT8,     /* int8_t, 'b' */
    MPROC_TYPE_UINT8,    /* uint8_t, 'B' */
    MPROC_TYPE_INT16,    /* int16_t, 'h' */
    MPROC_TYPE_UINT16,   /* uint16_t, 'H' */
    MPROC_TYPE_INT32,    /* int32_t, 'i' */
    MPROC_TYPE_UINT32,   /* uint32_t, 'I' */
    MPROC_TYPE_INT64,    /* int64_t, 'q' */
    MPROC_TYPE_UINT64,   /* uint64_t, 'Q' */
    MPROC_TYPE_FLOAT,    /* float, 'f' */
    MPROC_TYPE_DOUBLE,   /* double, 'd' */
} mproc_type;

/* Sets *size to the size in bytes of one element of type. 0 or -EINVAL. */
MPROC_API int mproc_type_size(mproc_type type, size_t *size);

/* ---- Value ---- */

typedef struct mproc_value mproc_value;

/*
 * Creates a zeroed value of type, with its own RLock if lock is true (a raw
 * value otherwise). The caller owns the handle. Returns 0, -EINVAL (NULL out,
 * unknown type), -ENOMEM, -EMFILE.
 */
MPROC_API int mproc_value_create(mproc_value **out, mproc_type type, bool lock);

/* Sets *type to the value's type. 0 or -EINVAL. */
MPROC_API int mproc_value_type(const mproc_value *value, mproc_type *type);

/*
 * Sets *ptr to the value's memory (for any type; suitably aligned). Valid
 * until destroy, in this process. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_value_ptr(mproc_value *value, void **ptr);

/*
 * Atomic typed access. The type must be the value's (-EINVAL otherwise).
 * The f64 pair is for MPROC_TYPE_DOUBLE.
 */
MPROC_API int mproc_value_get_i32(const mproc_value *value, int32_t *out);
MPROC_API int mproc_value_set_i32(mproc_value *value, int32_t in);
MPROC_API int mproc_value_get_i64(const mproc_value *value, int64_t *out);
MPROC_API int mproc_value_set_i64(mproc_value *value, int64_t in);
MPROC_API int mproc_value_get_u64(const mproc_value *value, uint64_t *out);
MPROC_API int mproc_value_set_u64(mproc_value *value, uint64_t in);
MPROC_API int mproc_value_get_f64(const mproc_value *value, double *out);
MPROC_API int mproc_value_set_f64(mproc_value *value, double in);

/*
 * Adds delta to an MPROC_TYPE_INT64 value atomically (no lock needed) and
 * stores the new value in *result (may be NULL). Wraps around like unsigned
 * arithmetic. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_value_add_i64(mproc_value *value, int64_t delta, int64_t *result);

/*
 * Take and release the value's lock: as mproc_lock_acquire/release (so
 * -EOWNERDEAD, -ETIMEDOUT, -EPERM). -EINVAL when it was made without one.
 */
MPROC_API int mproc_value_lock(mproc_value *value, int timeout_ms);
MPROC_API int mproc_value_unlock(mproc_value *value);

/*
 * Lends the value's lock (for a Condition, say). The value owns it: do not
 * destroy it; valid until the value's destroy. -EINVAL without a lock.
 */
MPROC_API int mproc_value_get_lock(mproc_value *value, mproc_lock **lock);

/* As mproc_lock_fd()/attach(): the descriptor stays the handle's. */
MPROC_API int mproc_value_fd(const mproc_value *value, int *fd);
MPROC_API int mproc_value_attach(mproc_value **out, int fd);

/*
 * Unmaps this process's view, frees the handle, sets *value to NULL.
 * Returns 0, -EINVAL, -EBUSY (the calling thread holds the value's lock).
 */
MPROC_API int mproc_value_destroy(mproc_value **value);

/* ---- Array ---- */

typedef struct mproc_array mproc_array;

/*
 * Creates a zeroed array of length (>= 1) elements of type, with an RLock if
 * lock is true. Returns 0, -EINVAL (NULL out, unknown type, length 0 or too
 * large), -ENOMEM, -EMFILE.
 */
MPROC_API int mproc_array_create(mproc_array **out, mproc_type type, size_t length, bool lock);

/* Read the element type and the number of elements. 0 or -EINVAL. */
MPROC_API int mproc_array_type(const mproc_array *array, mproc_type *type);
MPROC_API int mproc_array_length(const mproc_array *array, size_t *length);

/* Sets *ptr to the first element (aligned for any type); valid until destroy. */
MPROC_API int mproc_array_ptr(mproc_array *array, void **ptr);

/*
 * Copy element index out of or into the array; size must be the element size
 * (a check that caller and array agree on the type). Each element is read or
 * written atomically. Returns 0, -EINVAL (NULL, wrong size), -ERANGE (index).
 */
MPROC_API int mproc_array_get(const mproc_array *array, size_t index, void *out, size_t size);
MPROC_API int mproc_array_set(mproc_array *array, size_t index, const void *in, size_t size);

/* As the mproc_value_ lock functions. */
MPROC_API int mproc_array_lock(mproc_array *array, int timeout_ms);
MPROC_API int mproc_array_unlock(mproc_array *array);
MPROC_API int mproc_array_get_lock(mproc_array *array, mproc_lock **lock);

/* As mproc_value_fd/attach/destroy. */
MPROC_API int mproc_array_fd(const mproc_array *array, int *fd);
MPROC_API int mproc_array_attach(mproc_array **out, int fd);
MPROC_API int mproc_array_destroy(mproc_array **array);

/* ---- SharedMemory ---- */

typedef struct mproc_shared_memory mproc_shared_memory;

/*
 * Creates a zeroed anonymous block of size bytes (a memfd: no name, nothing
 * in /dev/shm; freed by the kernel when the last process unmaps it and
 * closes its descriptor, crash or not). Inherited by children started
 * afterwards; others attach through mproc_shared_memory_fd(). The caller owns
 * the handle. Returns 0, -EINVAL (NULL out, size 0), -ENOMEM, -EMFILE.
 */
MPROC_API int mproc_shared_memory_create(mproc_shared_memory **out, size_t size);

/*
 * Creates a named block, for unrelated processes to open by name: name is
 * "/x" or "x" (a '/' is prepended), at most NAME_MAX bytes, no other '/'.
 * Exclusive: -EEXIST if the name exists. The name is this handle's to
 * remove: mproc_shared_memory_unlink() removes it as soon as every process
 * has opened the block, and destroy() in the creating process removes it if
 * still there. A name outlives a crash of its creator: prefer anonymous
 * blocks. Returns 0, -EINVAL, -EEXIST, -EACCES, -ENOMEM, -EMFILE.
 */
MPROC_API int mproc_shared_memory_create_named(mproc_shared_memory **out, const char *name,
                                               size_t size);

/*
 * Opens a named block made by another process; the size is the block's.
 * The name stays its creator's to remove. Returns 0, -EINVAL, -ENOENT.
 */
MPROC_API int mproc_shared_memory_open(mproc_shared_memory **out, const char *name);

/*
 * Maps the block behind fd (an anonymous block's, from
 * mproc_shared_memory_fd() in another process); fd stays the caller's.
 * Returns 0, -EINVAL, errno.
 */
MPROC_API int mproc_shared_memory_attach(mproc_shared_memory **out, int fd);

/* Read the start of the mapping, its size, and the descriptor (the handle's). */
MPROC_API int mproc_shared_memory_buf(mproc_shared_memory *shm, void **buf);
MPROC_API int mproc_shared_memory_size(const mproc_shared_memory *shm, size_t *size);
MPROC_API int mproc_shared_memory_fd(const mproc_shared_memory *shm, int *fd);

/* Returns the name ("/x") of a named block, NULL for an anonymous one. */
MPROC_API const char *mproc_shared_memory_name(const mproc_shared_memory *shm);

/*
 * Removes the name (shm_unlink); the memory stays mapped wherever it is.
 * Any process with the handle may call it. Returns 0, -EINVAL (anonymous),
 * -ENOENT (already removed).
 */
MPROC_API int mproc_shared_memory_unlink(mproc_shared_memory *shm);

/*
 * Unmaps, closes, frees the handle and sets *shm to NULL (Python's close());
 * in the creating process of a named block, also removes the name if it is
 * still there. Returns 0 or -EINVAL.
 */
MPROC_API int mproc_shared_memory_destroy(mproc_shared_memory **shm);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_SHM_H */
