/*
 * queue_download_save: the tutorial's producer/consumer. download() puts
 * 11, 22, 33, 44 on a queue and closes it; savedata() takes items off until
 * the queue says it is closed and drained, then prints the list.
 */
#include <mproc.h>

#include <stdint.h>
#include <stdio.h>

static int download(void *arg)
{
    mproc_queue *queue = arg;
    const int64_t items[] = {11, 22, 33, 44};
    for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
        int rc = mproc_queue_put(queue, &items[i], sizeof(items[i]), MPROC_WAIT_FOREVER);
        if (rc < 0) {
            fprintf(stderr, "download: put: %s\n", mproc_strerror(rc));
            return 1;
        }
    }
    /* No more data: savedata() stops once it has taken what is there. */
    mproc_queue_close(queue);
    printf("The data has been downloaded successfully....\n");
    return 0;
}

static int savedata(void *arg)
{
    mproc_queue *queue = arg;
    int64_t list[16];
    size_t count = 0;
    for (;;) {
        size_t len;
        int rc =
            mproc_queue_get_into(queue, &list[count], sizeof(list[0]), &len, MPROC_WAIT_FOREVER);
        if (rc == MPROC_ECLOSED)
            break;
        if (rc < 0) {
            fprintf(stderr, "savedata: get: %s\n", mproc_strerror(rc));
            return 1;
        }
        if (++count == sizeof(list) / sizeof(list[0]))
            break;
    }
    printf("[");
    for (size_t i = 0; i < count; i++)
        printf("%s%lld", i ? ", " : "", (long long)list[i]);
    printf("]\n");
    return 0;
}

int main(void)
{
    mproc_queue *queue = NULL;
    mproc_process *producer = NULL, *consumer = NULL;
    int rc = mproc_queue_create(&queue, 0, 0);
    if (rc == 0)
        rc = mproc_process_create(&producer, download, queue);
    if (rc == 0)
        rc = mproc_process_create(&consumer, savedata, queue);
    if (rc == 0)
        rc = mproc_process_start(producer);
    if (rc == 0)
        rc = mproc_process_start(consumer);
    if (rc < 0) {
        fprintf(stderr, "queue_download_save: %s\n", mproc_strerror(rc));
        return 1;
    }
    int failures = 0;
    mproc_process *procs[] = {producer, consumer};
    for (int i = 0; i < 2; i++) {
        int code = 0;
        mproc_process_join(procs[i], MPROC_WAIT_FOREVER);
        mproc_process_exitcode(procs[i], &code);
        failures += code != 0;
        mproc_process_destroy(&procs[i]);
    }
    mproc_queue_destroy(&queue);
    return failures ? 1 : 0;
}
