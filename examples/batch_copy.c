/*
 * batch_copy: the tutorial's case study. Asks for a folder name, copies its
 * files into "<name>Copy" with a Pool of 5 workers, and prints the progress
 * as the workers put the names of the files they copied on a queue. The
 * queue is made after the pool (the tutorial's Manager().Queue()), so it
 * reaches each task as a descriptor that the task attaches to.
 */
#define _GNU_SOURCE
#include <mproc.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int copy_file(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    static char buf[1 << 16];
    ssize_t n = 0;
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n)
            n = -1;
    int rc = in < 0 || out < 0 || n < 0 ? -1 : 0;
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) < 0)
        rc = -1;
    return rc;
}

/* One task: copies arg = "name\0old\0new\0" and puts the name on the queue. */
static int copy_task(mproc_task_ctx *ctx, const void *arg, size_t len)
{
    (void)len;
    const char *name = arg, *old = name + strlen(name) + 1, *new = old + strlen(old) + 1;
    char src[PATH_MAX], dst[PATH_MAX];
    snprintf(src, sizeof src, "%s/%s", old, name);
    snprintf(dst, sizeof dst, "%s/%s", new, name);
    int rc = copy_file(src, dst);
    int fd;
    mproc_queue *q = NULL;
    if (mproc_task_fd(ctx, 0, &fd) == 0 && mproc_queue_attach(&q, fd) == 0) {
        mproc_queue_put(q, name, strlen(name), MPROC_WAIT_FOREVER);
        mproc_queue_destroy(&q);
    }
    return rc < 0 ? mproc_task_fail(ctx, "cannot copy %s", name) : 0;
}

/* Regular files of the folder, as os.listdir() lists them (folders skipped). */
static char **list_files(const char *dir, size_t *count)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    *count = 0;
    for (struct dirent *de = d ? readdir(d) : NULL; de; de = readdir(d)) {
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
            continue;
        char **grown = realloc(names, (*count + 1) * sizeof(char *));
        if (!grown)
            break;
        names = grown;
        names[(*count)++] = strdup(de->d_name);
    }
    if (d)
        closedir(d);
    return names;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int main(void)
{
    char old[PATH_MAX / 2] = "", new[PATH_MAX];
    printf("Please enter the name of the folder to copy:");
    fflush(stdout);
    if (!fgets(old, sizeof old, stdin))
        return 1;
    old[strcspn(old, "\n")] = '\0';
    snprintf(new, sizeof new, "%sCopy", old);
    if (mkdir(new, 0777) < 0 && errno != EEXIST) {
        perror(new);
        return 1;
    }
    size_t n;
    char **names = list_files(old, &n);
    mproc_pool *po = NULL;
    mproc_queue *queue = NULL;
    mproc_pool_options options = {.workers = 5}; /* Pool(5) */
    int fd, rc = mproc_pool_create(&po, &options);
    if (rc == 0)
        rc = mproc_queue_create(&queue, 0, 0);
    if (rc == 0)
        rc = mproc_queue_fd(queue, &fd);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char arg[PATH_MAX * 2];
        int len = snprintf(arg, sizeof arg, "%s%c%s%c%s", names[i], 0, old, 0, new);
        rc = mproc_pool_apply_async_fds(po, copy_task, arg, (size_t)len + 1, &fd, 1, NULL);
    }
    if (rc < 0) {
        fprintf(stderr, "batch_copy: %s\n", mproc_strerror(rc));
        free_names(names, n);
        return 1;
    }
    mproc_pool_close(po);
    for (size_t num = 0; num < n;) {
        void *name;
        size_t len;
        if (mproc_queue_get(queue, &name, &len, MPROC_WAIT_FOREVER) < 0)
            break;
        free(name);
        num++;
        printf("\r Copy progress %.2f %%", (double)num * 100 / (double)n);
        fflush(stdout);
    }
    printf("\n");
    mproc_pool_join(po, MPROC_WAIT_FOREVER);
    mproc_pool_destroy(&po);
    mproc_queue_destroy(&queue);
    free_names(names, n);
    return 0;
}
