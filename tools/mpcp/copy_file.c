/*
 * copy_file.c: moving a file's bytes by the fastest path the kernel offers:
 * FICLONE (a reflink, O(extents)), then copy_file_range in steps of at most
 * 1 GiB (glibc 2.41/2.42 mishandle bigger ranges), then read/write with a
 * 256 KiB buffer. Holes are kept with SEEK_DATA/SEEK_HOLE as cp does.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define CFR_STEP ((size_t)1 << 30)
/* With a progress display, big files move in smaller steps so the bar moves. */
#define CFR_STEP_PROGRESS ((size_t)64 << 20)

volatile sig_atomic_t mpcp_interrupted;
static void (*data_progress)(uint64_t bytes);

void mpcp_set_data_progress(void (*fn)(uint64_t bytes))
{
    data_progress = fn;
}

static void progressed(uint64_t bytes)
{
    if (data_progress)
        data_progress(bytes);
}
#define BUF_SIZE ((size_t)256 * 1024)

bool mpcp_dev_set_has(const struct mpcp_dev_set *s, dev_t dev)
{
    for (unsigned i = 0; i < s->n; i++)
        if (s->dev[i] == dev)
            return true;
    return s->n == sizeof s->dev / sizeof s->dev[0];
}

void mpcp_dev_set_add(struct mpcp_dev_set *s, dev_t dev)
{
    if (!mpcp_dev_set_has(s, dev))
        s->dev[s->n++] = dev;
}

/*
 * Filesystems where FICLONE failed in this process. A failure is a property
 * of the filesystem, so trying again for every file only costs a syscall.
 */
static struct mpcp_dev_set no_clone;

static unsigned char *io_buffer(void)
{
    static unsigned char *buf;
    if (!buf)
        buf = malloc(BUF_SIZE);
    return buf;
}

/* Errors after which coreutils quietly falls back from copy_file_range to read/write. */
static bool cfr_fallback_errno(int err)
{
    switch (err) {
    case ENOSYS:
    case ENOTTY:
    case EOPNOTSUPP:
    case EINVAL:
    case EBADF:
    case EXDEV:
    case ETXTBSY:
    case EPERM:
    case EACCES:
    case ENOENT:
        return true;
    default:
        return false;
    }
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static bool all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* The length of the block of buf[i..n) that starts at i: hole bytes, or what is left. */
static size_t block_at(size_t i, size_t n, size_t hole)
{
    return n - i < hole ? n - i : hole;
}

/*
 * Writes buf's n bytes, seeking over each run of blocks of hole bytes that
 * are all zero: --sparse=always makes holes of them, block by block as cp
 * does (a buffer holds many blocks; one byte must not keep the others).
 */
static int write_holey(int dst, const unsigned char *buf, size_t n, size_t hole)
{
    for (size_t i = 0; i < n;) {
        size_t run = block_at(i, n, hole);
        bool zero = all_zero(buf + i, run);
        while (i + run < n && all_zero(buf + i + run, block_at(i + run, n, hole)) == zero)
            run += block_at(i + run, n, hole);
        if (zero && lseek(dst, (off_t)run, SEEK_CUR) < 0)
            return -errno;
        if (!zero) {
            int rc = write_all(dst, buf + i, run);
            if (rc)
                return rc;
        }
        i += run;
    }
    return 0;
}

/*
 * read/write from the current offsets, at most limit bytes (or to EOF when
 * limit < 0). With a hole size, zero blocks of that size become holes
 * (--sparse=always).
 */
static int rw_copy(int src, int dst, off_t limit, size_t hole, uint64_t *copied, int *side)
{
    unsigned char *buf = io_buffer();
    if (!buf) {
        *side = MPCP_SIDE_READ;
        return -ENOMEM;
    }
    while (limit != 0) {
        if (mpcp_interrupted) {
            *side = MPCP_SIDE_WRITE;
            return -EINTR;
        }
        size_t want = BUF_SIZE;
        if (limit > 0 && (off_t)want > limit)
            want = (size_t)limit;
        ssize_t n = read(src, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *side = MPCP_SIDE_READ;
            return -errno;
        }
        if (n == 0)
            break;
        int rc = hole ? write_holey(dst, buf, (size_t)n, hole) : write_all(dst, buf, (size_t)n);
        if (rc) {
            *side = MPCP_SIDE_WRITE;
            return rc;
        }
        *copied += (uint64_t)n;
        progressed((uint64_t)n);
        if (limit > 0)
            limit -= n;
    }
    return 0;
}

/*
 * copy_file_range of len bytes from the current offsets. Returns 1 when the
 * caller should fall back to read/write for what is left.
 */
static int cfr_copy(int src, int dst, off_t len, uint64_t *copied, int *side)
{
    bool first = true;
    size_t max_step = data_progress ? CFR_STEP_PROGRESS : CFR_STEP;
    while (len > 0) {
        if (mpcp_interrupted) {
            *side = MPCP_SIDE_WRITE;
            return -EINTR;
        }
        size_t step = (size_t)len < max_step ? (size_t)len : max_step;
        ssize_t n = copy_file_range(src, NULL, dst, NULL, step, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (cfr_fallback_errno(errno))
                return 1;
            *side = (errno == ENOSPC || errno == EDQUOT || errno == EFBIG) ? MPCP_SIDE_WRITE
                                                                           : MPCP_SIDE_READ;
            return -errno;
        }
        /* 0 before any byte: procfs and friends; the data is only readable. */
        if (n == 0)
            return first ? 1 : 0;
        first = false;
        *copied += (uint64_t)n;
        progressed((uint64_t)n);
        len -= n;
    }
    return 0;
}

static int copy_range(int src, int dst, off_t len, size_t hole, uint64_t *copied, int *side)
{
    uint64_t before = *copied;
    if (!hole) {
        int rc = cfr_copy(src, dst, len, copied, side);
        if (rc <= 0)
            return rc;
        /* The offsets moved with what copy_file_range did copy. */
        len -= (off_t)*copied - (off_t)before;
    }
    return rw_copy(src, dst, len, hole, copied, side);
}

/*
 * Copies data extents only; holes stay holes, and with punch zero blocks
 * of the destination's block size become holes too. The size is set at
 * the end.
 */
static int sparse_copy(int src, int dst, off_t size, bool punch, uint64_t *copied, int *side)
{
    size_t hole = 0;
    struct stat st;
    if (punch)
        hole = fstat(dst, &st) == 0 && st.st_blksize > 0 ? (size_t)st.st_blksize : 4096;
    off_t pos = 0;
    while (pos < size) {
        off_t data = lseek(src, pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO)
                break; /* only a hole is left */
            *side = MPCP_SIDE_READ;
            return -errno;
        }
        off_t end = lseek(src, data, SEEK_HOLE);
        if (end < 0) {
            *side = MPCP_SIDE_READ;
            return -errno;
        }
        if (end > size)
            end = size;
        if (lseek(src, data, SEEK_SET) < 0 || lseek(dst, data, SEEK_SET) < 0) {
            *side = MPCP_SIDE_WRITE;
            return -errno;
        }
        int rc = copy_range(src, dst, end - data, hole, copied, side);
        if (rc)
            return rc;
        pos = end;
    }
    if (ftruncate(dst, size) < 0) {
        *side = MPCP_SIDE_WRITE;
        return -errno;
    }
    return 0;
}

static int try_clone(const struct mpcp_opts *opt, int src, int dst, dev_t dst_dev, int *side)
{
    if (opt->reflink == MPCP_REFLINK_NEVER)
        return 1;
    if (opt->reflink == MPCP_REFLINK_AUTO && mpcp_dev_set_has(&no_clone, dst_dev))
        return 1;
    if (ioctl(dst, FICLONE, src) == 0)
        return 0;
    int err = errno;
    if (opt->reflink == MPCP_REFLINK_ALWAYS) {
        *side = MPCP_SIDE_CLONE;
        return -err;
    }
    mpcp_dev_set_add(&no_clone, dst_dev);
    return 1;
}

int mpcp_try_clone(const struct mpcp_opts *opt, int src, int dst, dev_t dst_dev)
{
    int side;
    return opt->reflink == MPCP_REFLINK_ALWAYS ? 1 : try_clone(opt, src, dst, dst_dev, &side);
}

/* pread/pwrite of [off, off + len): what is left when copy_file_range cannot. */
static int rw_copy_at(int src, int dst, off_t off, off_t len, uint64_t *copied, int *side)
{
    unsigned char *buf = io_buffer();
    if (!buf) {
        *side = MPCP_SIDE_READ;
        return -ENOMEM;
    }
    while (len > 0) {
        if (mpcp_interrupted) {
            *side = MPCP_SIDE_WRITE;
            return -EINTR;
        }
        size_t want = (off_t)BUF_SIZE < len ? BUF_SIZE : (size_t)len;
        ssize_t n = pread(src, buf, want, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *side = MPCP_SIDE_READ;
            return -errno;
        }
        if (n == 0)
            return 0; /* the file shrank since it was listed */
        for (ssize_t done = 0; done < n;) {
            ssize_t w = pwrite(dst, buf + done, (size_t)(n - done), off + done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                *side = MPCP_SIDE_WRITE;
                return -errno;
            }
            done += w;
        }
        *copied += (uint64_t)n;
        off += n;
        len -= n;
    }
    return 0;
}

int mpcp_copy_range_at(int src, int dst, off_t off, off_t len, uint64_t *copied, int *side)
{
    *copied = 0;
    /* Explicit offsets: other workers write other ranges of the same file meanwhile. */
    loff_t in = off, out = off;
    while (len > 0) {
        if (mpcp_interrupted) {
            *side = MPCP_SIDE_WRITE;
            return -EINTR;
        }
        size_t step = (size_t)len < CFR_STEP ? (size_t)len : CFR_STEP;
        ssize_t n = copy_file_range(src, &in, dst, &out, step, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && cfr_fallback_errno(errno))
            break;
        if (n < 0) {
            *side = (errno == ENOSPC || errno == EDQUOT || errno == EFBIG) ? MPCP_SIDE_WRITE
                                                                           : MPCP_SIDE_READ;
            return -errno;
        }
        if (n == 0)
            break; /* EOF, or procfs-like: read/write decides */
        *copied += (uint64_t)n;
        len -= n;
    }
    uint64_t more = 0;
    int rc = rw_copy_at(src, dst, (off_t)in, len, &more, side);
    *copied += more;
    return rc;
}

/*
 * A file of size 0 by stat may still have data (procfs): one read decides,
 * so that empty files cost a single syscall.
 */
static int copy_unsized(int src, int dst, uint64_t *copied, int *side)
{
    return rw_copy(src, dst, -1, 0, copied, side);
}

/* Whether the copy keeps holes: what sparse_copy() is used for. */
static bool copies_sparse(const struct mpcp_opts *opt, off_t size, blkcnt_t blocks)
{
    bool holey = blocks * 512 < size;
    return opt->sparse == MPCP_SPARSE_ALWAYS || (opt->sparse == MPCP_SPARSE_AUTO && holey);
}

/* The bytes of fd's data extents below size: what sparse_copy() moves. */
static uint64_t data_extents(int fd, off_t size)
{
    uint64_t sum = 0;
    off_t pos = 0;
    while (pos < size) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        if (data < 0)
            return errno == ENXIO ? sum : (uint64_t)size;
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0)
            return (uint64_t)size;
        if (hole > size)
            hole = size;
        sum += (uint64_t)(hole - data);
        pos = hole;
    }
    return sum;
}

uint64_t mpcp_copy_bytes(const struct mpcp_opts *opt, int dfd, const char *name,
                         const struct stat *st)
{
    if (st->st_size <= 0)
        return 0;
    /* A file without holes is all data extents: no need to open it. */
    if (!copies_sparse(opt, st->st_size, st->st_blocks) || st->st_blocks * 512 >= st->st_size)
        return (uint64_t)st->st_size;
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return (uint64_t)st->st_size;
    uint64_t n = data_extents(fd, st->st_size);
    close(fd);
    return n;
}

int mpcp_copy_stream(int src, int dst, uint64_t *copied, int *side)
{
    *copied = 0;
    return copy_unsized(src, dst, copied, side);
}

int mpcp_copy_data(const struct mpcp_opts *opt, int src, int dst, dev_t dst_dev, off_t size,
                   blkcnt_t blocks, uint64_t *copied, int *side)
{
    *copied = 0;
    if (size == 0)
        return copy_unsized(src, dst, copied, side);
    int rc = try_clone(opt, src, dst, dst_dev, side);
    if (rc <= 0) {
        if (rc == 0) {
            /* A clone of a sparse file counts its data, as the copy would. */
            *copied = copies_sparse(opt, size, blocks) ? data_extents(src, size) : (uint64_t)size;
            progressed(*copied);
        }
        return rc;
    }
    bool holey = blocks * 512 < size;
    if (opt->sparse == MPCP_SPARSE_ALWAYS)
        return sparse_copy(src, dst, size, true, copied, side);
    if (opt->sparse == MPCP_SPARSE_AUTO && holey)
        return sparse_copy(src, dst, size, false, copied, side);
    /*
     * Up to the size the walk saw, without a second call that only finds
     * EOF: a file that grows meanwhile is copied as it was when listed.
     */
    return copy_range(src, dst, size, 0, copied, side);
}
