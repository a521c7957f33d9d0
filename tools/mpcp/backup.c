/*
 * backup.c: the name GNU cp gives the backup of an existing destination
 * (-b, --backup=CONTROL, -S): the name and the suffix ("f~"), or the name
 * and a number one above the highest numbered backup in the folder
 * ("f.~3~"), cut to the folder's name limit the way cp 9.1 cuts it. The
 * executor makes the backup (executor.c: back_up); the planner needs the
 * name alone for "cp -fb f f" (walk.c).
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* What the folder scan found, as gnulib's numbered_backup() tells it. */
enum scan { SCAN_NONE, SCAN_SAME_LENGTH, SCAN_LONGER };

/*
 * The version of entry if it is a numbered backup of name (len bytes):
 * "name.~N~" with N a decimal number without leading zero. Returns its
 * digits (*vlen of them) or NULL.
 */
static const char *version_of(const char *entry, const char *name, size_t len, size_t *vlen)
{
    if (strncmp(entry, name, len) != 0 || entry[len] != '.' || entry[len + 1] != '~')
        return NULL;
    const char *v = entry + len + 2;
    if (*v < '1' || *v > '9')
        return NULL;
    size_t n = 1;
    while (v[n] >= '0' && v[n] <= '9')
        n++;
    if (v[n] != '~' || v[n + 1] != '\0')
        return NULL;
    *vlen = n;
    return v;
}

/*
 * Writes the successor of the n digits of v to out (n + 2 bytes at least):
 * decimal strings, so that no version overflows. Returns whether it grew
 * (all nines: the new name is longer than any existing one).
 */
static bool next_version(const char *v, size_t n, char *out)
{
    bool nines = strspn(v, "9") >= n;
    char *q = out + nines;
    out[0] = '0';
    memcpy(q, v, n);
    q[n] = '\0';
    char *d = q + n;
    while (*--d == '9')
        *d = '0';
    ++*d;
    return nines;
}

/*
 * The highest numbered backup of name in the folder dfd, plus one, into
 * ver (digits). A folder that cannot be read counts as holding none, as
 * with cp. The scan is per file, as cp's: a backup made meanwhile by
 * another worker (of another name) does not matter.
 */
static enum scan scan_versions(int dfd, const char *name, char *ver, size_t size)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return SCAN_NONE;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return SCAN_NONE;
    }
    enum scan found = SCAN_NONE;
    size_t len = strlen(name), best = 0;
    char top[NAME_MAX + 1] = "";
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n;
        const char *v = version_of(de->d_name, name, len, &n);
        if (!v || n + 2 > size || n < best || (n == best && memcmp(v, top, n) <= 0))
            continue;
        memcpy(top, v, n);
        top[n] = '\0';
        best = n;
        found = next_version(top, n, ver) ? SCAN_LONGER : SCAN_SAME_LENGTH;
    }
    closedir(d);
    if (found == SCAN_NONE)
        snprintf(ver, size, "1");
    return found;
}

/*
 * The longest backup name the folder takes. cp 9.1 (gnulib's
 * check_extension) asks only for names above 14 bytes, and takes one off
 * what the filesystem says (its "name_max -= !errno"): 254 on most
 * filesystems. Mirrored so that the same names come out.
 */
static size_t name_limit(int dfd)
{
    errno = 0;
    long max = fpathconf(dfd, _PC_NAME_MAX);
    max -= errno == 0;
    if (max >= 0)
        return (size_t)max;
    return max < -1 ? 14 : SIZE_MAX;
}

/* A name above the limit becomes the name (cut if need be) and "~", as with cp. */
static bool fits(int dfd, char *buf, size_t name_len)
{
    size_t len = strlen(buf);
    if (len <= 14)
        return true;
    size_t max = name_limit(dfd);
    if (len <= max || max < 2)
        return true;
    size_t keep = name_len < max ? name_len : max - 1;
    buf[keep] = '~';
    buf[keep + 1] = '\0';
    return false;
}

int mpcp_backup_name(int dfd, const char *name, const struct mpcp_opts *opt, char *out, size_t size,
                     unsigned *how)
{
    char ver[NAME_MAX + 2];
    char buf[2 * NAME_MAX + 64];
    size_t len = strlen(name);
    int type = opt->backup;
    enum scan found = SCAN_NONE;
    if (type != MPCP_BACKUP_SIMPLE)
        found = scan_versions(dfd, name, ver, sizeof ver);
    if (type == MPCP_BACKUP_EXISTING && found == SCAN_NONE)
        type = MPCP_BACKUP_SIMPLE;
    int n;
    if (type == MPCP_BACKUP_SIMPLE)
        n = snprintf(buf, sizeof buf, "%s%s", name, opt->suffix);
    else
        n = snprintf(buf, sizeof buf, "%s.~%s~", name, ver);
    /* A name as long as an existing backup's fits: cp does not ask. */
    bool whole = found == SCAN_SAME_LENGTH || fits(dfd, buf, len);
    if (whole && (size_t)n >= sizeof buf)
        return -ENAMETOOLONG;
    if (strlen(buf) >= size)
        return -ENAMETOOLONG;
    memcpy(out, buf, strlen(buf) + 1);
    *how = 0;
    if (type != MPCP_BACKUP_SIMPLE)
        *how |= MPCP_BACKUP_NOREPLACE;
    if (type != MPCP_BACKUP_SIMPLE && whole)
        *how |= MPCP_BACKUP_RESCAN;
    return 0;
}
