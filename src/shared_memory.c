/*
 * shared_memory.c: SharedMemory blocks. Anonymous by default (a memfd: the
 * kernel frees it with the last mapping or descriptor, so a crash leaks
 * nothing). A name in /dev/shm only when asked, created exclusively, so two
 * programs never silently share a stale block; the creator removes it.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <mproc/shm.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SHM_MAGIC 0x6d70736du /* "mpsm" */

struct mproc_shared_memory {
    uint32_t magic;
    struct mproc__region region;
    char *name;    /* "/x", or NULL when anonymous */
    pid_t creator; /* the process that created the name, else 0 */
    bool unlinked; /* the name was removed through this handle */
};

static bool valid(const mproc_shared_memory *shm)
{
    return shm && shm->magic == SHM_MAGIC;
}

/* "/x" from "x" or "/x"; NULL (and *rc) when the name is not acceptable. */
static char *normalise_name(const char *name, int *rc)
{
    *rc = -EINVAL;
    if (!name)
        return NULL;
    const char *base = name[0] == '/' ? name + 1 : name;
    size_t len = strlen(base);
    if (len == 0 || len >= NAME_MAX || strchr(base, '/'))
        return NULL;
    char *full = malloc(len + 2);
    if (!full) {
        *rc = -ENOMEM;
        return NULL;
    }
    full[0] = '/';
    memcpy(full + 1, base, len + 1);
    *rc = 0;
    return full;
}

static mproc_shared_memory *new_handle(void)
{
    mproc_shared_memory *shm = calloc(1, sizeof(*shm));
    if (shm)
        shm->region.fd = -1;
    return shm;
}

static void free_handle(mproc_shared_memory *shm)
{
    mproc__region_release(&shm->region);
    free(shm->name);
    shm->magic = 0;
    free(shm);
}

int mproc_shared_memory_create(mproc_shared_memory **out, size_t size)
{
    if (!out || size == 0)
        return -EINVAL;
    mproc_shared_memory *shm = new_handle();
    if (!shm)
        return -ENOMEM;
    int rc = mproc__region_create(&shm->region, size, "mproc-shared-memory");
    if (rc < 0) {
        free(shm);
        return rc;
    }
    shm->magic = SHM_MAGIC;
    *out = shm;
    return 0;
}

/*
 * Creates the name exclusively, sizes and maps it. Once the name exists it is
 * ours: on a later failure remove it, so that nothing is left in /dev/shm.
 */
static int map_new_name(mproc_shared_memory *shm, size_t size)
{
    int fd = shm_open(shm->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (ftruncate(fd, (off_t)size) < 0)
        rc = -errno;
    if (rc == 0)
        rc = mproc__region_attach(&shm->region, fd);
    mproc__close(fd);
    if (rc < 0)
        shm_unlink(shm->name);
    return rc;
}

int mproc_shared_memory_create_named(mproc_shared_memory **out, const char *name, size_t size)
{
    if (!out || size == 0)
        return -EINVAL;
    mproc_shared_memory *shm = new_handle();
    if (!shm)
        return -ENOMEM;
    int rc;
    shm->name = normalise_name(name, &rc);
    if (rc == 0)
        rc = map_new_name(shm, size);
    if (rc < 0) {
        free_handle(shm);
        return rc;
    }
    shm->creator = getpid();
    shm->magic = SHM_MAGIC;
    *out = shm;
    return 0;
}

int mproc_shared_memory_open(mproc_shared_memory **out, const char *name)
{
    if (!out)
        return -EINVAL;
    mproc_shared_memory *shm = new_handle();
    if (!shm)
        return -ENOMEM;
    int rc;
    shm->name = normalise_name(name, &rc);
    int fd = rc == 0 ? shm_open(shm->name, O_RDWR | O_CLOEXEC, 0) : -1;
    if (rc == 0 && fd < 0)
        rc = -errno;
    if (rc == 0)
        rc = mproc__region_attach(&shm->region, fd);
    mproc__close(fd);
    if (rc < 0) {
        free_handle(shm);
        return rc;
    }
    shm->magic = SHM_MAGIC;
    *out = shm;
    return 0;
}

int mproc_shared_memory_attach(mproc_shared_memory **out, int fd)
{
    if (!out || fd < 0)
        return -EINVAL;
    mproc_shared_memory *shm = new_handle();
    if (!shm)
        return -ENOMEM;
    int rc = mproc__region_attach(&shm->region, fd);
    if (rc < 0) {
        free(shm);
        return rc;
    }
    shm->magic = SHM_MAGIC;
    *out = shm;
    return 0;
}

int mproc_shared_memory_buf(mproc_shared_memory *shm, void **buf)
{
    if (!valid(shm) || !buf)
        return -EINVAL;
    *buf = shm->region.addr;
    return 0;
}

int mproc_shared_memory_size(const mproc_shared_memory *shm, size_t *size)
{
    if (!valid(shm) || !size)
        return -EINVAL;
    *size = shm->region.size;
    return 0;
}

int mproc_shared_memory_fd(const mproc_shared_memory *shm, int *fd)
{
    if (!valid(shm) || !fd)
        return -EINVAL;
    *fd = shm->region.fd;
    return 0;
}

const char *mproc_shared_memory_name(const mproc_shared_memory *shm)
{
    return valid(shm) ? shm->name : NULL;
}

int mproc_shared_memory_unlink(mproc_shared_memory *shm)
{
    if (!valid(shm) || !shm->name)
        return -EINVAL;
    if (shm_unlink(shm->name) < 0)
        return -errno;
    shm->unlinked = true;
    return 0;
}

int mproc_shared_memory_destroy(mproc_shared_memory **shm)
{
    if (!shm || !valid(*shm))
        return -EINVAL;
    mproc_shared_memory *s = *shm;
    /* Only the creating process removes the name; an inherited copy does not. */
    if (s->name && s->creator == getpid() && !s->unlinked)
        shm_unlink(s->name);
    free_handle(s);
    *shm = NULL;
    return 0;
}
