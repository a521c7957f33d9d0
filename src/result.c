/*
 * result.c: the handles through which a submitter gets a task's outcome:
 * Python's AsyncResult and concurrent.futures.Future. The pool's result
 * thread fills a result in and then publishes it with one store to `ready`;
 * everyone else only reads it after seeing `ready` set.
 */
#define _GNU_SOURCE
#include "pool_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define RESULT_MAGIC 0x6d707273u /* "mprs" */
#define HUGE_PAGE    MPROC__HUGE_PAGE
#define BLOCK_SIZE   ((size_t)4 << 20)
#define BLOCKS_AFTER ((size_t)1 << 20)

/*
 * Message copies of a large result (a map of millions of items keeps every
 * chunk's result message) are packed into blocks aligned to huge pages.
 * Fresh memory costs a page fault per 4 KiB, and on this kind of VM a fault
 * is tens of microseconds: 128 MB of map results took over a second in
 * malloc'd buffers, and a few hundredths of one in huge pages.
 */
struct result_block {
    struct result_block *next;
    size_t size;
    size_t used;
};

/* Every completion bumps this, for waits on several results at once. */
static _Atomic uint32_t completions;
static _Atomic uint32_t completions_waiting;

static bool valid(const mproc_result *result)
{
    return result && result->magic == RESULT_MAGIC;
}

/* A slab is a huge page of records; its header takes the first record's place. */
struct result_slab {
    _Atomic size_t live; /* records not destroyed, plus one while it is a pool's current */
    size_t used;         /* records handed out (under the pool's slab lock) */
};

#define RECORD_SIZE  ((sizeof(mproc_result) + 63) & ~(size_t)63)
#define SLAB_RECORDS (HUGE_PAGE / RECORD_SIZE - 1)

static void slab_unref(struct result_slab *slab)
{
    if (atomic_fetch_sub(&slab->live, 1) == 1)
        (void)munmap(slab, HUGE_PAGE);
}

static void free_record(mproc_result *result)
{
    if (result->slab)
        slab_unref(result->slab);
    else
        free(result);
}

void mproc__result_slabs_release(struct mproc__result_slabs *slabs)
{
    pthread_mutex_lock(&slabs->lock);
    if (slabs->current)
        slab_unref(slabs->current);
    slabs->current = NULL;
    pthread_mutex_unlock(&slabs->lock);
}

/* A zeroed record from the pool's current slab, or NULL (then malloc is used). */
static mproc_result *slab_alloc(struct mproc__result_slabs *slabs)
{
    pthread_mutex_lock(&slabs->lock);
    struct result_slab *slab = slabs->current;
    /* Only our reference left: every record is gone, start again from the warm top. */
    if (slab && atomic_load(&slab->live) == 1)
        slab->used = 0;
    if (slab && slab->used == SLAB_RECORDS) {
        slab_unref(slab);
        slab = NULL;
    }
    if (!slab) {
        slab = mproc__huge_alloc(HUGE_PAGE);
        if (slab)
            atomic_store(&slab->live, 1);
    }
    slabs->current = slab;
    mproc_result *result = NULL;
    if (slab) {
        result = (mproc_result *)((unsigned char *)slab + RECORD_SIZE * ++slab->used);
        atomic_fetch_add(&slab->live, 1);
    }
    pthread_mutex_unlock(&slabs->lock);
    if (result) {
        memset(result, 0, sizeof(*result));
        result->slab = slab;
    }
    return result;
}

mproc_result *mproc__result_new(mproc_pool *pool, struct mproc__result_slabs *slabs, size_t count,
                                size_t chunksize, bool is_map, bool owned)
{
    if (!chunksize)
        chunksize = 1;
    size_t nchunks = count ? (count + chunksize - 1) / chunksize : 0;
    mproc_result *result = slabs ? slab_alloc(slabs) : NULL;
    if (!result)
        result = calloc(1, sizeof(*result));
    if (!result)
        return NULL;
    result->chunks = &result->one_chunk;
    if (nchunks > 1)
        result->chunks = calloc(nchunks, sizeof(*result->chunks));
    if (!result->chunks) {
        free_record(result);
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

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

void *mproc__huge_alloc(size_t size)
{
    size_t span = size + HUGE_PAGE;
    unsigned char *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    uintptr_t start = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    size_t head = start - (uintptr_t)p;
    if (head)
        (void)munmap(p, head);
    if (span - head > size)
        (void)munmap(p + head + size, span - head - size);
    (void)madvise(p + head, size, MADV_HUGEPAGE);
    return p + head;
}

static struct result_block *block_new(size_t size)
{
    struct result_block *block = mproc__huge_alloc(size);
    if (!block)
        return NULL;
    block->next = NULL;
    block->size = size;
    block->used = align16(sizeof(*block));
    return block;
}

/* Room for len bytes in result's blocks, or NULL to use malloc instead. */
static unsigned char *block_alloc(mproc_result *result, size_t len)
{
    /* A small result would waste most of a huge page. */
    if (result->kept_bytes < BLOCKS_AFTER || len > BLOCK_SIZE / 4)
        return NULL;
    struct result_block *block = result->blocks;
    if (!block || block->size - block->used < align16(len)) {
        block = block_new(BLOCK_SIZE);
        if (!block)
            return NULL;
        block->next = result->blocks;
        result->blocks = block;
    }
    unsigned char *at = (unsigned char *)block + block->used;
    block->used += align16(len);
    return at;
}

unsigned char *mproc__result_keep_copy(mproc_result *result, const void *data, size_t len)
{
    unsigned char *copy = block_alloc(result, len);
    if (!copy) {
        copy = malloc(len ? len : 1);
        if (!copy || mproc__result_keep_buffer(result, copy) < 0) {
            free(copy);
            return NULL;
        }
    }
    if (len)
        memcpy(copy, data, len);
    result->kept_bytes += len;
    return copy;
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
                             const void *data, size_t data_len)
{
    struct result_chunk *chunk = &result->chunks[index];
    chunk->set = true;
    chunk->table = table;
    chunk->data = data;
    chunk->len = data_len;
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
    size_t j = i % result->chunksize;
    struct pool_item_res entry, next;
    memcpy(&entry, chunk->table + j * sizeof(entry), sizeof(entry));
    uint64_t end = chunk->len;
    if (j + 1 < chunk_items(result, i / result->chunksize)) {
        memcpy(&next, chunk->table + (j + 1) * sizeof(next), sizeof(next));
        end = next.offset;
    }
    *data = chunk->data + entry.offset;
    *len = (size_t)(end - entry.offset) - (entry.status ? 1 : 0);
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
    for (struct result_block *block = result->blocks, *next; block; block = next) {
        next = block->next;
        (void)munmap(block, block->size);
    }
    if (result->chunks != &result->one_chunk)
        free(result->chunks);
    result->magic = 0;
    free_record(result);
}

void mproc__result_unref(mproc_result *result)
{
    if (atomic_fetch_sub(&result->refs, 1) == 1)
        free_result(result);
}

/* Waits for ready: 0, -EAGAIN on timeout, -EINTR. */
static int wait_ready(mproc_result *result, int timeout_ms)
{
    /* From a callback of its own pool: the thread that would complete it is this one. */
    if (timeout_ms != 0 && !atomic_load_explicit(&result->ready, memory_order_acquire) &&
        mproc__pool_is_result_thread(atomic_load(&result->pool)))
        return -EDEADLK;
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

/* Whether one of the results not ready is completed by the calling thread (a callback). */
static bool waits_on_own_thread(mproc_result *const *results, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (!atomic_load(&results[i]->ready) &&
            mproc__pool_is_result_thread(atomic_load(&results[i]->pool)))
            return true;
    }
    return false;
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
        if (waits_on_own_thread(results, count))
            return -EDEADLK;
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
