/*
 * metadata.c: cp's rules for the permissions of what it creates, and
 * extended attributes. Everything is applied on descriptors, before the
 * rename, so that a file appears under its final name complete.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

mode_t mpcp_new_file_mode(const struct mpcp_opts *opt, mode_t src_mode, bool owner_failed)
{
    if (opt->p_mode) {
        /*
         * Set-id and sticky bits on a file whose owner could not be kept
         * would hand out someone else's rights: cp drops them then.
         */
        if (owner_failed)
            return src_mode & 0777;
        return src_mode & 07777;
    }
    if (opt->no_p_mode)
        return (S_ISSOCK(src_mode) ? 0777 : 0666) & ~opt->umask;
    return src_mode & 0777 & ~opt->umask;
}

/* SELinux labels belong to the target's policy, not the source's (cp without --preserve=context).
 */
static bool skip_xattr(const char *name)
{
    return strcmp(name, "security.selinux") == 0;
}

static ssize_t list_xattrs(int fd, char **out)
{
    ssize_t size = flistxattr(fd, NULL, 0);
    if (size <= 0)
        return size;
    for (;;) {
        char *list = malloc((size_t)size);
        if (!list)
            return -1;
        ssize_t n = flistxattr(fd, list, (size_t)size);
        if (n >= 0) {
            *out = list;
            return n;
        }
        free(list);
        if (errno != ERANGE)
            return -1;
        size = flistxattr(fd, NULL, 0);
        if (size <= 0)
            return size;
    }
}

static int copy_one_xattr(int src, int dst, const char *name, bool quiet)
{
    char small[4096];
    ssize_t n = fgetxattr(src, name, small, sizeof small);
    char *value = small;
    if (n < 0 && errno == ERANGE) {
        ssize_t size = fgetxattr(src, name, NULL, 0);
        if (size < 0)
            return -errno;
        value = malloc((size_t)size + 1);
        if (!value)
            return -ENOMEM;
        n = fgetxattr(src, name, value, (size_t)size);
    }
    int rc = 0;
    if (n < 0 || fsetxattr(dst, name, value, (size_t)n, 0) < 0)
        rc = -errno;
    if (value != small)
        free(value);
    /* Namespaces the target or our privileges do not allow: cp -a is silent about them. */
    bool unsupported = rc == -ENOTSUP || rc == -EPERM || rc == -EACCES;
    if (unsupported && (quiet || strncmp(name, "user.", 5) != 0))
        return 0;
    return rc;
}

int mpcp_copy_xattrs(int src_fd, int dst_fd, bool quiet_unsupported)
{
    char *list = NULL;
    ssize_t n = list_xattrs(src_fd, &list);
    if (n < 0) {
        int err = errno;
        if (err == ENOTSUP || quiet_unsupported)
            return 0;
        return -err;
    }
    int rc = 0;
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1) {
        const char *name = list + i;
        if (skip_xattr(name))
            continue;
        int r = copy_one_xattr(src_fd, dst_fd, name, quiet_unsupported);
        if (r && !rc)
            rc = r;
    }
    free(list);
    return rc;
}

/*
 * One ACL xattr of src onto dst. Where src has none, one that dst may have
 * (clear) is removed: cp -p leaves the mode alone then.
 */
static int copy_acl_xattr(int src, int dst, const char *name, bool clear)
{
    ssize_t size = fgetxattr(src, name, NULL, 0);
    if (size < 0 && errno == ENODATA && clear && fremovexattr(dst, name) < 0 && errno != ENODATA &&
        errno != ENOTSUP)
        return -errno;
    if (size < 0)
        return errno == ENODATA || errno == ENOTSUP ? 0 : -errno;
    char *value = malloc(size > 0 ? (size_t)size : 1);
    if (!value)
        return -ENOMEM;
    int rc = 0;
    ssize_t n = fgetxattr(src, name, value, (size_t)size);
    if (n < 0)
        rc = errno == ENODATA ? 0 : -errno;
    else if (fsetxattr(dst, name, value, (size_t)n, 0) < 0)
        rc = -errno;
    free(value);
    return rc;
}

int mpcp_copy_acl(int src_fd, int dst_fd, bool dir, bool clear)
{
    int rc = copy_acl_xattr(src_fd, dst_fd, "system.posix_acl_access", clear);
    if (rc == 0 && dir)
        rc = copy_acl_xattr(src_fd, dst_fd, "system.posix_acl_default", clear);
    return rc;
}
