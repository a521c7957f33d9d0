/*
 * result.c: the handles through which a submitter gets a task's outcome:
 * Python's AsyncResult and concurrent.futures.Future. The pool's result
 * thread fills a result in and then publishes it with one store to `ready`;
 * everyone else only reads it after seeing `ready` set.
 */
#define _GNU_SOURCE
#include "pool_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RESULT_MAGIC 0x6d707273u /* "mprs" */

/* Every completion bumps this, for waits on several results at once. */
static _Atomic uint32_t completions;
static _Atomic uint32_t completions_waiting;

static bool valid(const mproc_result *result)
{
    return result && result->magic == RESULT_MAGIC;
}

mproc_result *mproc__result_new(mproc_pool *pool, size_t count, size_t chunksize, bool is_map,
                                bool owned)
{
    if (!chunksize)
        chunksize = 1;
    size_t nchunks = count ? (count + chunksize - 1) / chunksize : 0;
    mproc_result *result = calloc(1, sizeof(*result));
    if (!result)
        return NULL;
    result->chunks = calloc(nchunks ? nchunks : 1, sizeof(*result->chunks));
    if (!result->chunks) {
        free(result);
        return NULL;
    }
    result->magic = RESULT_MAGIC;
    result->count = count;
    result->chunksize = chunksize;
    result->nchunks = nchunks;
    result->remaining = nchunks;
    result->is_map = is_map;
    atomic_store(&result->pool, pool);
    atomic_store(&result->refs, owned ? 2 : 1);
    return result;
}

int mproc__result_keep_buffer(mproc_result *result, void *buf)
{
    if (result->nbuffers == result->buffers_cap) {
        size_t cap = result->buffers_cap ? result->buffers_cap * 2 : 4;
        void **grown = realloc(result->buffers, cap * sizeof(void *));
        if (!grown)
            return -ENOMEM;
        result->buffers = grown;
        result->buffers_cap = cap;
    }
    result->buffers[result->nbuffers++] = buf;
    return 0;
}

static char *copy_text(const void *text, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy) {
        if (len)
            memcpy(copy, text, len);
        copy[len] = '\0';
    }
    return copy;
}

void mproc__result_set_single(mproc_result *result, size_t index, int status, const void *data,
                              size_t len)
{
    struct result_chunk *chunk = &result->chunks[index];
    chunk->set = true;
    chunk->single_status = status;
    chunk->data = data;
    chunk->len = len;
    if (status != 0)
        chunk->error = copy_text(data, len);
    result->remaining--;
}

void mproc__result_set_table(mproc_result *result, size_t index, const void *table,
                             const void *data)
{
    struct result_chunk *chunk = &result->chunks[index];
    chunk->set = true;
    chunk->table = table;
    chunk->data = data;
    result->remaining--;
}

void mproc__result_fail_chunk(mproc_result *result, size_t index, int status, const char *message)
{
    struct result_chunk *chunk = &result->chunks[index];
    if (chunk->set)
        return;
    chunk->set = true;
    chunk->status = status;
    chunk->error = copy_text(message, strlen(message));
    result->remaining--;
}

static size_t chunk_items(const mproc_result *result, size_t index)
{
    size_t first = index * result->chunksize;
    size_t left = result->count - first;
    return left < result->chunksize ? left : result->chunksize;
}

/* Item i: its status, and its bytes (the message when it failed). */
static int item_at(const mproc_result *result, size_t i, const void **data, size_t *len)
{
    const struct result_chunk *chunk = &result->chunks[i / result->chunksize];
    if (!chunk->table) {
        int status = chunk->status ? chunk->status : chunk->single_status;
        *data = chunk->status ? (const void *)chunk->error : chunk->data;
        *len = chunk->status ? strlen(chunk->error ? chunk->error : "") : chunk->len;
        return status;
    }
    struct pool_item_res entry;
    memcpy(&entry, chunk->table + (i % result->chunksize) * sizeof(entry), sizeof(entry));
    *data = chunk->data + entry.offset;
    *len = (size_t)entry.len;
    return entry.status;
}

/* The first failed item's status and message, or 0. */
static int first_failure(mproc_result *result, const char **error)
{
    for (size_t c = 0; c < result->nchunks; c++) {
        const struct result_chunk *chunk = &result->chunks[c];
        if (!chunk->table) {
            int status = chunk->status ? chunk->status : chunk->single_status;
            if (status) {
                *error = chunk->error;
                return status;
            }
            continue;
        }
        for (size_t j = 0; j < chunk_items(result, c); j++) {
            struct pool_item_res entry;
            memcpy(&entry, chunk->table + j * sizeof(entry), sizeof(entry));
            if (entry.status) {
                *error = (const char *)chunk->data + entry.offset;
                return entry.status;
            }
        }
    }
    *error = NULL;
    return 0;
}

void mproc__result_complete(mproc_result *result)
{
    result->status = first_failure(result, &result->error);
    /* Store then load, against the waiter's flag then check (Dekker): no lost wake-up. */
    atomic_store(&result->ready, 1);
    if (atomic_load(&result->waiting))
        mproc__futex_wake(&result->ready, INT32_MAX);
    atomic_fetch_add(&completions, 1);
    if (atomic_load(&completions_waiting))
        mproc__futex_wake(&completions, INT32_MAX);
}

static void free_result(mproc_result *result)
{
    for (size_t i = 0; i < result->nchunks; i++)
        free(result->chunks[i].error);
    for (size_t i = 0; i < result->nbuffers; i++)
        free(result->buffers[i]);
    free(result->buffers);
    free(result->chunks);
    result->magic = 0;
    free(result);
}

void mproc__result_unref(mproc_result *result)
{
    if (atomic_fetch_sub(&result->refs, 1) == 1)
        free_result(result);
}

/* Waits for ready: 0, -EAGAIN on timeout, -EINTR. */
static int wait_ready(mproc_result *result, int timeout_ms)
{
    int64_t deadline = mproc__deadline(timeout_ms);
    while (!atomic_load_explicit(&result->ready, memory_order_acquire)) {
        if (timeout_ms == 0)
            return -EAGAIN;
        atomic_store(&result->waiting, 1);
        if (atomic_load(&result->ready))
            break;
        int rc = mproc__futex_wait(&result->ready, 0, deadline);
        if (rc == -ETIMEDOUT)
            return atomic_load(&result->ready) ? 0 : -EAGAIN;
        if (rc == -EINTR)
            return -EINTR;
    }
    return 0;
}

int mproc_result_wait(mproc_result *result, int timeout_ms)
{
    if (!valid(result))
        return -EINVAL;
    return wait_ready(result, timeout_ms);
}

int mproc_result_get(mproc_result *result, const void **data, size_t *len, int timeout_ms)
{
    if (!valid(result))
        return -EINVAL;
    int rc = wait_ready(result, timeout_ms);
    if (rc < 0)
        return rc;
    const void *item = NULL;
    size_t n = result->count;
    if (!result->is_map && result->count == 1 && item_at(result, 0, &item, &n) != 0)
        item = NULL;
    if (data)
        *data = item;
    if (len)
        *len = item ? n : (result->is_map ? result->count : 0);
    return result->status;
}

bool mproc_result_ready(const mproc_result *result)
{
    return valid(result) && atomic_load_explicit(&result->ready, memory_order_acquire);
}

bool mproc_result_successful(const mproc_result *result)
{
    return mproc_result_ready(result) && result->status == 0;
}

const char *mproc_result_error(const mproc_result *result)
{
    return mproc_result_ready(result) ? result->error : NULL;
}

size_t mproc_result_count(const mproc_result *result)
{
    return valid(result) ? result->count : 0;
}

int mproc_result_item(const mproc_result *result, size_t index, const void **data, size_t *len)
{
    if (!mproc_result_ready(result) || index >= result->count)
        return -EINVAL;
    const void *bytes;
    size_t n;
    int status = item_at(result, index, &bytes, &n);
    if (data)
        *data = status == 0 ? bytes : NULL;
    if (len)
        *len = status == 0 ? n : 0;
    return status;
}

const char *mproc_result_item_error(const mproc_result *result, size_t index)
{
    if (!mproc_result_ready(result) || index >= result->count)
        return NULL;
    const struct result_chunk *chunk = &result->chunks[index / result->chunksize];
    if (!chunk->table)
        return chunk->error;
    const void *bytes;
    size_t n;
    return item_at(result, index, &bytes, &n) != 0 ? (const char *)bytes : NULL;
}

int mproc_result_cancel(mproc_result *result)
{
    if (!valid(result))
        return -EINVAL;
    mproc_pool *pool = atomic_load(&result->pool);
    if (mproc_result_ready(result) || !pool)
        return -EBUSY;
    return mproc__pool_cancel(pool, result);
}

static size_t count_ready(mproc_result *const *results, size_t count)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        n += mproc_result_ready(results[i]);
    return n;
}

int mproc_result_wait_many(mproc_result *const *results, size_t count, bool all,
                           size_t *ready_count, int timeout_ms)
{
    if (!ready_count || (!results && count))
        return -EINVAL;
    for (size_t i = 0; i < count; i++) {
        if (!valid(results[i]))
            return -EINVAL;
    }
    int64_t deadline = mproc__deadline(timeout_ms);
    for (;;) {
        uint32_t ticket = atomic_load(&completions);
        atomic_store(&completions_waiting, 1);
        size_t n = count_ready(results, count);
        *ready_count = n;
        if (all ? n == count : (n > 0 || count == 0))
            return 0;
        if (timeout_ms == 0)
            return -EAGAIN;
        int rc = mproc__futex_wait(&completions, ticket, deadline);
        if (rc == -EINTR)
            return rc;
        if (rc == -ETIMEDOUT) {
            *ready_count = count_ready(results, count);
            return -EAGAIN;
        }
    }
}

int mproc_result_destroy(mproc_result **resultp)
{
    if (!resultp || !valid(*resultp))
        return -EINVAL;
    mproc__result_unref(*resultp);
    *resultp = NULL;
    return 0;
}
