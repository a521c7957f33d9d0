/*
 * region.c: shared memory that leaves nothing behind. A memfd has no name in
 * /dev/shm: the memory lives as long as some process maps it or holds the
 * descriptor, and the kernel frees it when the last one goes, crash or not.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int map_fd(struct mproc__region *region, int fd, size_t size)
{
    void *addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED)
        return -errno;
    region->addr = addr;
    region->size = size;
    region->fd = fd;
    return 0;
}

int mproc__region_create(struct mproc__region *region, size_t size, const char *name)
{
    /* Released on failure by callers: a zeroed region would close descriptor 0. */
    *region = (struct mproc__region){.fd = -1};
    if (size == 0)
        return -EINVAL;
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        int err = errno;
        mproc__close(fd);
        return -err;
    }
    int rc = map_fd(region, fd, size);
    if (rc < 0)
        mproc__close(fd);
    return rc;
}

int mproc__region_attach(struct mproc__region *region, int fd)
{
    *region = (struct mproc__region){.fd = -1};
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size <= 0)
        return -EINVAL;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0)
        return -errno;
    int rc = map_fd(region, own, (size_t)st.st_size);
    if (rc < 0)
        mproc__close(own);
    return rc;
}

void mproc__region_release(struct mproc__region *region)
{
    if (region->addr)
        munmap(region->addr, region->size);
    mproc__close(region->fd);
    region->addr = NULL;
    region->size = 0;
    region->fd = -1;
}
