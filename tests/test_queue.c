/*
 * Queue: FIFO across processes, no loss or duplication under MPMC load,
 * huge messages, timeouts, and survival of processes SIGKILLed at random
 * points while they put or take.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A message that checks itself: who sent it, its number, a checksum of the payload. */
struct stamped {
    uint32_t producer;
    uint32_t length; /* payload bytes after the header */
    uint64_t seq;
    uint64_t checksum;
};

static uint64_t fnv1a(const unsigned char *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Builds message seq of producer into buf (cap >= sizeof(struct stamped) + payload). */
static size_t make_message(unsigned char *buf, uint32_t producer, uint64_t seq, size_t payload)
{
    struct stamped head = {.producer = producer, .length = (uint32_t)payload, .seq = seq};
    unsigned char *body = buf + sizeof(head);
    for (size_t i = 0; i < payload; i++)
        body[i] = (unsigned char)(seq * 31 + i * 7 + producer);
    head.checksum = fnv1a(body, payload, 14695981039346656037ull);
    memcpy(buf, &head, sizeof(head));
    return sizeof(head) + payload;
}

/* Checks a received message; returns its header. */
static struct stamped check_message(const void *data, size_t len)
{
    struct stamped head;
    cr_assert_geq(len, sizeof(head), "message of %zu bytes is too short", len);
    memcpy(&head, data, sizeof(head));
    cr_assert_eq(len, sizeof(head) + head.length, "length %zu, header says %u", len, head.length);
    uint64_t sum =
        fnv1a((const unsigned char *)data + sizeof(head), head.length, 14695981039346656037ull);
    cr_assert_eq(sum, head.checksum, "corrupt payload: producer %u seq %llu", head.producer,
                 (unsigned long long)head.seq);
    return head;
}

static void *shared_pages(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED);
    return p;
}

Test(queue, fifo_across_processes, .timeout = 20)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    for (uint64_t i = 0; i < 1000; i++)
        cr_assert_eq(mproc_queue_put(queue, &i, sizeof(i), 0), 0);
    size_t count;
    cr_assert_eq(mproc_queue_size(queue, &count), 0);
    cr_assert_eq(count, 1000);
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t value;
        size_t len;
        cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 0), 0);
        cr_assert_eq(len, sizeof(value));
        cr_assert_eq(value, i);
    }
    bool empty;
    cr_assert_eq(mproc_queue_empty(queue, &empty), 0);
    cr_assert(empty);
    cr_assert_eq(mproc_queue_destroy(&queue), 0);
}

/* Puts the values 0 .. count-1, as ints, on a queue. */
struct counted_puts {
    mproc_queue *queue;
    int count;
};

static int put_counted(void *arg)
{
    const struct counted_puts *job = arg;
    for (int i = 0; i < job->count; i++) {
        if (mproc_queue_put(job->queue, &i, sizeof(i), 5000) < 0)
            return 1;
    }
    return 0;
}

Test(queue, child_to_parent, .timeout = 20)
{
    mproc_queue *queue;
    /* A small ring: the producer must wait for room, and be woken. */
    cr_assert_eq(mproc_queue_create(&queue, 0, 4096), 0);
    struct counted_puts job = {.queue = queue, .count = 1000};
    mproc_process *child = test_start(put_counted, &job);
    for (int i = 0; i < 1000; i++) {
        void *data;
        size_t len;
        cr_assert_eq(mproc_queue_get(queue, &data, &len, 5000), 0);
        cr_assert_eq(len, sizeof(int));
        cr_assert_eq(*(int *)data, i);
        free(data);
    }
    cr_assert_eq(test_join_code(child), 0);
    mproc_queue_destroy(&queue);
}

/* ---- MPMC stress ---- */

#define STRESS_PRODUCERS 3
#define STRESS_CONSUMERS 3

struct stress {
    mproc_queue *queue;
    uint64_t per_producer;
    uint32_t producer;
    int report_fd;
};

/* What a consumer saw of each producer. */
struct stress_report {
    uint64_t count[STRESS_PRODUCERS];
    uint64_t seq_sum[STRESS_PRODUCERS];
    uint64_t out_of_order;
};

static int stress_produce(void *arg)
{
    const struct stress *s = arg;
    unsigned char buf[256];
    for (uint64_t seq = 0; seq < s->per_producer; seq++) {
        size_t len = make_message(buf, s->producer, seq, (size_t)(seq % 48));
        if (mproc_queue_put(s->queue, buf, len, 60000) < 0)
            return 1;
    }
    return 0;
}

static int stress_consume(void *arg)
{
    const struct stress *s = arg;
    struct stress_report report = {0};
    int64_t last[STRESS_PRODUCERS] = {-1, -1, -1};
    unsigned char buf[64 * 1024];
    struct iovec msgs[256];
    for (;;) {
        size_t count;
        int rc = mproc_queue_get_many(s->queue, buf, sizeof(buf), msgs, 256, &count, 60000);
        /* The end: the parent closed the queue, or saw every producer end first. */
        if (rc == MPROC_ECLOSED || rc == -EPIPE)
            break;
        if (rc < 0) {
            fprintf(stderr, "consumer: get_many: %s\n", mproc_strerror(rc));
            return 2;
        }
        for (size_t i = 0; i < count; i++) {
            struct stamped head;
            memcpy(&head, msgs[i].iov_base, sizeof(head));
            uint64_t sum = fnv1a((unsigned char *)msgs[i].iov_base + sizeof(head), head.length,
                                 14695981039346656037ull);
            if (head.producer >= STRESS_PRODUCERS || sum != head.checksum ||
                msgs[i].iov_len != sizeof(head) + head.length)
                return 3;
            /* Each producer's messages reach any one consumer in the order they were put. */
            if ((int64_t)head.seq <= last[head.producer])
                report.out_of_order++;
            last[head.producer] = (int64_t)head.seq;
            report.count[head.producer]++;
            report.seq_sum[head.producer] += head.seq;
        }
    }
    return write(s->report_fd, &report, sizeof(report)) == (ssize_t)sizeof(report) ? 0 : 4;
}

Test(queue, mpmc_3x3_million_each, .timeout = 240)
{
    const uint64_t per_producer = 1000000;
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 1 << 20), 0);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    struct stress producers[STRESS_PRODUCERS], consumers[STRESS_CONSUMERS];
    mproc_process *procs[STRESS_PRODUCERS + STRESS_CONSUMERS];
    for (int i = 0; i < STRESS_CONSUMERS; i++) {
        consumers[i] = (struct stress){.queue = queue, .report_fd = fds[1]};
        procs[STRESS_PRODUCERS + i] = test_start(stress_consume, &consumers[i]);
    }
    for (uint32_t i = 0; i < STRESS_PRODUCERS; i++) {
        producers[i] = (struct stress){.queue = queue, .per_producer = per_producer, .producer = i};
        procs[i] = test_start(stress_produce, &producers[i]);
    }
    for (int i = 0; i < STRESS_PRODUCERS; i++)
        cr_assert_eq(test_join_code(procs[i]), 0, "producer %d failed", i);
    /* Every message is in; closing lets the consumers drain and stop. */
    mproc_queue_close(queue);
    for (int i = 0; i < STRESS_CONSUMERS; i++) {
        int code = test_join_code(procs[STRESS_PRODUCERS + i]);
        cr_assert_eq(code, 0, "consumer %d failed with %d", i, code);
    }

    struct stress_report total = {0};
    for (int i = 0; i < STRESS_CONSUMERS; i++) {
        struct stress_report r;
        cr_assert_eq(read(fds[0], &r, sizeof(r)), (ssize_t)sizeof(r));
        total.out_of_order += r.out_of_order;
        for (int p = 0; p < STRESS_PRODUCERS; p++) {
            total.count[p] += r.count[p];
            total.seq_sum[p] += r.seq_sum[p];
        }
    }
    cr_assert_eq(total.out_of_order, 0, "%llu messages out of per-producer order",
                 (unsigned long long)total.out_of_order);
    for (int p = 0; p < STRESS_PRODUCERS; p++) {
        /* Right count and right sum of sequence numbers: none lost, none twice. */
        cr_assert_eq(total.count[p], per_producer, "producer %d: %llu of %llu delivered", p,
                     (unsigned long long)total.count[p], (unsigned long long)per_producer);
        cr_assert_eq(total.seq_sum[p], per_producer * (per_producer - 1) / 2);
    }
    close(fds[0]);
    close(fds[1]);
    mproc_queue_destroy(&queue);
}

/* ---- huge messages ---- */

static int put_huge(void *arg)
{
    mproc_queue *queue = arg;
    size_t len = (size_t)1 << 30;
    unsigned char *buf = malloc(len);
    if (!buf)
        return 1;
    for (size_t i = 0; i < len; i += 4096)
        memset(buf + i, (int)((i / 4096) * 13 + 1), 4096);
    int rc = mproc_queue_put(queue, buf, len, 120000);
    free(buf);
    return rc == 0 ? 0 : 2;
}

Test(queue, one_gib_message_round_trip, .timeout = 180)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    mproc_process *child = test_start(put_huge, queue);
    void *data;
    size_t len;
    cr_assert_eq(mproc_queue_get(queue, &data, &len, 120000), 0);
    cr_assert_eq(len, (size_t)1 << 30);
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i += 4096) {
        unsigned char expected = (unsigned char)((i / 4096) * 13 + 1);
        cr_assert(p[i] == expected && p[i + 4095] == expected, "wrong byte at %zu", i);
    }
    free(data);
    cr_assert_eq(test_join_code(child), 0);
    mproc_queue_destroy(&queue);
}

static const size_t mixed_sizes[] = {10, 3000, 100000, 0, 2047, 50000, 7, 2048, 1 << 20, 1};
#define MIXED_COUNT (sizeof(mixed_sizes) / sizeof(mixed_sizes[0]))

static int put_mixed(void *arg)
{
    static unsigned char buf[(1 << 20) + 64];
    for (size_t i = 0; i < MIXED_COUNT; i++) {
        size_t n = make_message(buf, 0, i, mixed_sizes[i]);
        if (mproc_queue_put(arg, buf, n, 30000) < 0)
            return 1;
    }
    return 0;
}

Test(queue, streamed_and_small_messages_interleave, .timeout = 60)
{
    /* With a 4 KiB ring, messages over 2 KiB stream through it in parts. */
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 4096), 0);
    mproc_process *child = test_start(put_mixed, queue);
    for (size_t i = 0; i < MIXED_COUNT; i++) {
        void *data;
        size_t len;
        cr_assert_eq(mproc_queue_get(queue, &data, &len, 30000), 0, "message %zu", i);
        struct stamped head = check_message(data, len);
        cr_assert_eq(head.seq, i);
        cr_assert_eq(head.length, mixed_sizes[i]);
        free(data);
    }
    cr_assert_eq(test_join_code(child), 0);
    mproc_queue_destroy(&queue);
}

Test(queue, get_into_too_small_keeps_message, .timeout = 10)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    char text[] = "a message of some length";
    cr_assert_eq(mproc_queue_put(queue, text, sizeof(text), 0), 0);
    char small[4], large[64];
    size_t len = 0;
    cr_assert_eq(mproc_queue_get_into(queue, small, sizeof(small), &len, 0), -EMSGSIZE);
    cr_assert_eq(len, sizeof(text), "the error must say how large the message is");
    cr_assert_eq(mproc_queue_get_into(queue, large, sizeof(large), &len, 0), 0);
    cr_assert_str_eq(large, text);
    /* A zero-byte message is a message. */
    cr_assert_eq(mproc_queue_put(queue, "", 0, 0), 0);
    void *data = NULL;
    cr_assert_eq(mproc_queue_get(queue, &data, &len, 0), 0);
    cr_assert_not_null(data);
    cr_assert_eq(len, 0);
    free(data);
    mproc_queue_destroy(&queue);
}

Test(queue, batches, .timeout = 10)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    uint64_t values[100];
    struct iovec in[100];
    for (int i = 0; i < 100; i++) {
        values[i] = (uint64_t)i * 3;
        in[i] = (struct iovec){.iov_base = &values[i], .iov_len = sizeof(values[i])};
    }
    size_t done = 0;
    cr_assert_eq(mproc_queue_put_many(queue, in, 100, &done, 0), 0);
    cr_assert_eq(done, 100);
    unsigned char buf[1024];
    struct iovec out[64];
    size_t got = 0, count;
    while (got < 100) {
        cr_assert_eq(mproc_queue_get_many(queue, buf, sizeof(buf), out, 64, &count, 0), 0);
        for (size_t i = 0; i < count; i++) {
            cr_assert_eq(out[i].iov_len, sizeof(uint64_t));
            cr_assert_eq(*(uint64_t *)out[i].iov_base, (got + i) * 3);
        }
        got += count;
    }
    cr_assert_eq(got, 100);
    cr_assert_eq(mproc_queue_get_many(queue, buf, sizeof(buf), out, 64, &count, 0), -EAGAIN);
    mproc_queue_destroy(&queue);
}

Test(queue, bounded_size_full_and_timeouts, .timeout = 10)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 2, 0), 0);
    int value = 1;
    bool full;
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), 0);
    cr_assert_eq(mproc_queue_full(queue, &full), 0);
    cr_assert_not(full);
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), 0);
    cr_assert_eq(mproc_queue_full(queue, &full), 0);
    cr_assert(full);
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), -EAGAIN, "put_nowait on full");

    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 200), -ETIMEDOUT);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert(elapsed >= 200 && elapsed < 700, "put(200 ms) took %lld ms", (long long)elapsed);

    size_t len;
    cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 0), 0);
    cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 0), 0);
    cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 0), -EAGAIN);
    t0 = test_now_ms();
    cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 200), -ETIMEDOUT);
    elapsed = test_now_ms() - t0;
    cr_assert(elapsed >= 200 && elapsed < 700, "get(200 ms) took %lld ms", (long long)elapsed);
    mproc_queue_destroy(&queue);
}

static void on_alarm(int signo)
{
}

Test(queue, blocked_get_interrupted_by_handler, .timeout = 10)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    alarm(1);
    void *data;
    size_t len;
    cr_assert_eq(mproc_queue_get(queue, &data, &len, 5000), -EINTR);
    mproc_queue_destroy(&queue);
}

Test(queue, close_drains_then_reports_closed, .timeout = 10)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    int value = 7;
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), 0);
    cr_assert_eq(mproc_queue_close(queue), 0);
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), MPROC_ECLOSED);
    size_t len;
    cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 1000), 0);
    cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 5000), MPROC_ECLOSED);
    mproc_queue_destroy(&queue);
}

static int get_until_closed(void *arg)
{
    int value;
    size_t len;
    int rc = mproc_queue_get_into(arg, &value, sizeof(value), &len, 30000);
    return rc == MPROC_ECLOSED ? 0 : 1;
}

Test(queue, close_wakes_waiters_in_other_processes, .timeout = 20)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    mproc_process *a = test_start(get_until_closed, queue);
    mproc_process *b = test_start(get_until_closed, queue);
    usleep(100000);
    int64_t t0 = test_now_ms();
    mproc_queue_close(queue);
    cr_assert_eq(test_join_code(a), 0);
    cr_assert_eq(test_join_code(b), 0);
    cr_assert_lt(test_now_ms() - t0, 2000);
    mproc_queue_destroy(&queue);
}

/* ---- dead peers ---- */

Test(queue, get_fails_when_producers_are_gone, .timeout = 20)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    struct counted_puts job = {.queue = queue, .count = 5};
    mproc_process *child = test_start(put_counted, &job);
    int value;
    size_t len;
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 5000), 0);
        cr_assert_eq(value, i);
    }
    /* The producer is done; wait for it to die but do not reap it: a zombie is gone too. */
    pid_t pid = mproc_process_pid(child);
    cr_assert(test_wait_pid_dead(pid, 5000));
    int64_t t0 = test_now_ms();
    int rc = mproc_queue_get_into(queue, &value, sizeof(value), &len, MPROC_WAIT_FOREVER);
    cr_assert_eq(rc, -EPIPE, "get: %s", mproc_strerror(rc));
    cr_assert_lt(test_now_ms() - t0, 2000);
    cr_assert_eq(test_join_code(child), 0);
    mproc_queue_destroy(&queue);
}

static int take_one_and_die(void *arg)
{
    int value;
    size_t len;
    if (mproc_queue_get_into(arg, &value, sizeof(value), &len, 5000) < 0)
        return 1;
    raise(SIGKILL);
    return 0;
}

Test(queue, put_fails_when_consumers_are_gone, .timeout = 20)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 1, 0), 0);
    int value = 1;
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), 0);
    mproc_process *child = test_start(take_one_and_die, queue);
    cr_assert_eq(test_join_code(child), -SIGKILL);
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), 0);
    int rc = mproc_queue_put(queue, &value, sizeof(value), MPROC_WAIT_FOREVER);
    cr_assert_eq(rc, -EPIPE, "put: %s", mproc_strerror(rc));
    mproc_queue_destroy(&queue);
}

/* ---- kill -9 at random points ---- */

struct victim {
    mproc_queue *queue;
    _Atomic uint64_t *confirmed; /* producer: messages whose put() returned */
    _Atomic uint8_t *seen;       /* consumer: per seq, taken and recorded */
    uint64_t limit;
};

static int produce_until_killed(void *arg)
{
    struct victim *v = arg;
    static unsigned char buf[64 * 1024];
    for (uint64_t seq = 0; seq < v->limit; seq++) {
        /* Some messages are larger than half the ring: they stream in parts. */
        size_t payload = seq % 7 == 3 ? 20000 : (size_t)(seq % 200);
        size_t len = make_message(buf, 1, seq, payload);
        if (mproc_queue_put(v->queue, buf, len, 10000) < 0)
            return 1;
        atomic_store(v->confirmed, seq + 1);
    }
    for (;;)
        pause();
}

static int consume_until_killed(void *arg)
{
    struct victim *v = arg;
    static unsigned char buf[64 * 1024];
    for (;;) {
        size_t len;
        if (mproc_queue_get_into(v->queue, buf, sizeof(buf), &len, 10000) < 0)
            return 1;
        struct stamped head;
        memcpy(&head, buf, sizeof(head));
        if (head.seq < v->limit)
            atomic_fetch_add(&v->seen[head.seq], 1);
    }
}

/* Drains what is left; every message must be whole, in order, and new. */
static uint64_t drain_checking(mproc_queue *queue, _Atomic uint8_t *seen, uint64_t limit)
{
    static unsigned char buf[64 * 1024];
    uint64_t last = UINT64_MAX, count = 0;
    size_t len;
    while (mproc_queue_get_into(queue, buf, sizeof(buf), &len, 0) == 0) {
        struct stamped head = check_message(buf, len);
        cr_assert(last == UINT64_MAX || head.seq > last, "order broken: %llu after %llu",
                  (unsigned long long)head.seq, (unsigned long long)last);
        cr_assert_lt(head.seq, limit);
        last = head.seq;
        atomic_fetch_add(&seen[head.seq], 1);
        count++;
    }
    return count;
}

Test(queue, producer_killed_mid_message_200_times, .timeout = 240)
{
    const uint64_t limit = 4096;
    _Atomic uint8_t *seen = shared_pages(limit);
    _Atomic uint64_t *confirmed = shared_pages(4096);
    srand(12345);
    for (int round = 0; round < 200; round++) {
        mproc_queue *queue;
        cr_assert_eq(mproc_queue_create(&queue, 0, 32768), 0);
        memset((void *)seen, 0, limit);
        atomic_store(confirmed, 0);
        struct victim v = {.queue = queue, .confirmed = confirmed, .seen = seen, .limit = limit};
        mproc_process *producer = test_start(produce_until_killed, &v);
        /* A consumer runs meanwhile, so that the producer keeps streaming and waiting. */
        mproc_process *consumer = test_start(consume_until_killed, &v);
        usleep((useconds_t)(rand() % 3000));
        mproc_process_kill(producer);
        cr_assert_eq(test_join_code(producer), -SIGKILL);
        usleep(2000);
        mproc_process_kill(consumer);
        cr_assert_eq(test_join_code(consumer), -SIGKILL);

        drain_checking(queue, seen, limit);
        /* Everything confirmed arrived exactly once; the one being put may have too. */
        uint64_t n = atomic_load(confirmed);
        uint64_t missing = 0;
        for (uint64_t seq = 0; seq < limit; seq++) {
            uint8_t times = atomic_load(&seen[seq]);
            cr_assert_leq(times, 1, "round %d: seq %llu delivered %u times", round,
                          (unsigned long long)seq, times);
            if (seq < n && times == 0)
                missing++;
            if (seq > n)
                cr_assert_eq(times, 0, "round %d: seq %llu was never put", round,
                             (unsigned long long)seq);
        }
        /* The killed consumer may have taken one message and died before recording it. */
        cr_assert_leq(missing, 1, "round %d: %llu confirmed messages lost", round,
                      (unsigned long long)missing);
        /* The queue still works. */
        int value = 42;
        size_t len;
        cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 1000), 0);
        cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 1000), 0);
        cr_assert_eq(value, 42);
        mproc_queue_destroy(&queue);
    }
}

Test(queue, consumer_killed_while_holding_lock_200_times, .timeout = 240)
{
    const uint64_t limit = 4096;
    _Atomic uint8_t *seen = shared_pages(limit);
    _Atomic uint64_t *confirmed = shared_pages(4096);
    srand(777);
    for (int round = 0; round < 200; round++) {
        mproc_queue *queue;
        cr_assert_eq(mproc_queue_create(&queue, 0, 32768), 0);
        memset((void *)seen, 0, limit);
        /* Fill the queue first, then let a consumer take from it until it is killed. */
        static unsigned char buf[64 * 1024];
        uint64_t put = 0;
        for (; put < 300; put++) {
            size_t len = make_message(buf, 1, put, put % 5 == 0 ? 5000 : put % 100);
            if (mproc_queue_put(queue, buf, len, 0) != 0)
                break;
        }
        struct victim v = {.queue = queue, .confirmed = confirmed, .seen = seen, .limit = limit};
        mproc_process *consumer = test_start(consume_until_killed, &v);
        usleep((useconds_t)(rand() % 2000));
        mproc_process_kill(consumer);
        cr_assert_eq(test_join_code(consumer), -SIGKILL);

        drain_checking(queue, seen, limit);
        uint64_t missing = 0;
        for (uint64_t seq = 0; seq < put; seq++) {
            uint8_t times = atomic_load(&seen[seq]);
            cr_assert_leq(times, 1, "round %d: seq %llu delivered twice", round,
                          (unsigned long long)seq);
            missing += times == 0;
        }
        cr_assert_leq(missing, 1, "round %d: %llu messages lost", round,
                      (unsigned long long)missing);
        mproc_queue_destroy(&queue);
    }
}

/* ---- JoinableQueue ---- */

static int take_and_mark_done(void *arg)
{
    int value;
    size_t len;
    for (int i = 0; i < 10; i++) {
        if (mproc_queue_get_into(arg, &value, sizeof(value), &len, 5000) < 0)
            return 1;
        if (mproc_queue_task_done(arg) < 0)
            return 2;
    }
    return 0;
}

Test(queue, joinable_join_waits_for_task_done, .timeout = 20)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_joinable_queue_create(&queue, 0, 0), 0);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(mproc_queue_put(queue, &i, sizeof(i), 0), 0);
    cr_assert_eq(mproc_queue_join(queue, 0), -ETIMEDOUT);
    mproc_process *child = test_start(take_and_mark_done, queue);
    cr_assert_eq(mproc_queue_join(queue, 10000), 0);
    cr_assert_eq(test_join_code(child), 0);
    cr_assert_eq(mproc_queue_task_done(queue), -EOVERFLOW);
    mproc_queue_destroy(&queue);

    mproc_queue *plain;
    cr_assert_eq(mproc_queue_create(&plain, 0, 0), 0);
    cr_assert_eq(mproc_queue_task_done(plain), -EINVAL);
    cr_assert_eq(mproc_queue_join(plain, 0), -EINVAL);
    mproc_queue_destroy(&plain);
}

Test(queue, joinable_join_reports_dead_taker, .timeout = 20)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_joinable_queue_create(&queue, 0, 0), 0);
    int value = 1;
    cr_assert_eq(mproc_queue_put(queue, &value, sizeof(value), 0), 0);
    mproc_process *child = test_start(take_one_and_die, queue);
    cr_assert_eq(test_join_code(child), -SIGKILL);
    cr_assert_eq(mproc_queue_join(queue, 5000), -EPIPE);
    mproc_queue_destroy(&queue);
}

/* ---- sharing with a process started earlier ---- */

struct late_attach {
    int sock;
};

static int attach_and_put(void *arg)
{
    const struct late_attach *la = arg;
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    if (recvmsg(la->sock, &msg, 0) != 1)
        return 1;
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(fd));
    mproc_queue *queue;
    if (mproc_queue_attach(&queue, fd) < 0)
        return 2;
    close(fd);
    int value = 99;
    int rc = mproc_queue_put(queue, &value, sizeof(value), 5000);
    mproc_queue_destroy(&queue);
    return rc == 0 ? 0 : 3;
}

Test(queue, attach_by_descriptor_in_process_started_earlier, .timeout = 20)
{
    int pair[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    struct late_attach la = {.sock = pair[1]};
    mproc_process *child = test_start(attach_and_put, &la);
    /* The queue is made after the child started: it can only get it by descriptor. */
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    int fd;
    cr_assert_eq(mproc_queue_fd(queue, &fd), 0);
    char byte = 'q';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(fd));
    cr_assert_eq(sendmsg(pair[0], &msg, 0), 1);
    int value;
    size_t len;
    cr_assert_eq(mproc_queue_get_into(queue, &value, sizeof(value), &len, 5000), 0);
    cr_assert_eq(value, 99);
    cr_assert_eq(test_join_code(child), 0);
    close(pair[0]);
    close(pair[1]);
    mproc_queue_destroy(&queue);

    int not_a_queue[2];
    cr_assert_eq(pipe(not_a_queue), 0);
    cr_assert_eq(mproc_queue_attach(&queue, not_a_queue[0]), -EINVAL);
    close(not_a_queue[0]);
    close(not_a_queue[1]);
}

Test(queue, no_descriptor_or_shm_leak, .timeout = 30)
{
    int fds = test_count_fds();
    int shm = test_count_dev_shm();
    for (int i = 0; i < 500; i++) {
        mproc_queue *queue, *again;
        cr_assert_eq(mproc_queue_create(&queue, 0, 65536), 0);
        int fd;
        cr_assert_eq(mproc_queue_fd(queue, &fd), 0);
        cr_assert_eq(mproc_queue_attach(&again, fd), 0);
        cr_assert_eq(mproc_queue_put(again, &i, sizeof(i), 0), 0);
        cr_assert_eq(mproc_queue_destroy(&again), 0);
        cr_assert_eq(mproc_queue_destroy(&queue), 0);
        cr_assert_null(queue);
    }
    cr_assert_eq(test_count_fds(), fds);
    cr_assert_eq(test_count_dev_shm(), shm);
}

Test(queue, bad_input, .timeout = 10)
{
    mproc_queue *queue = NULL;
    void *data;
    size_t len, count;
    int fd;
    bool flag;
    cr_assert_eq(mproc_queue_create(NULL, 0, 0), -EINVAL);
    cr_assert_eq(mproc_queue_create(&queue, 0, (size_t)1 << 62), -EINVAL);
    cr_assert_eq(mproc_queue_put(NULL, "x", 1, 0), -EINVAL);
    cr_assert_eq(mproc_queue_get(NULL, &data, &len, 0), -EINVAL);
    cr_assert_eq(mproc_queue_size(NULL, &count), -EINVAL);
    cr_assert_eq(mproc_queue_empty(NULL, &flag), -EINVAL);
    cr_assert_eq(mproc_queue_fd(NULL, &fd), -EINVAL);
    cr_assert_eq(mproc_queue_close(NULL), -EINVAL);
    cr_assert_eq(mproc_queue_destroy(NULL), -EINVAL);
    cr_assert_eq(mproc_queue_destroy(&queue), -EINVAL);
    cr_assert_eq(mproc_queue_attach(&queue, -1), -EINVAL);
    cr_assert_eq(mproc_queue_create(&queue, 0, 0), 0);
    cr_assert_eq(mproc_queue_put(queue, NULL, 5, 0), -EINVAL);
    cr_assert_eq(mproc_queue_get(queue, NULL, &len, 0), -EINVAL);
    cr_assert_eq(mproc_queue_get_into(queue, NULL, 5, &len, 0), -EINVAL);
    cr_assert_eq(mproc_queue_destroy(&queue), 0);
    cr_assert_eq(mproc_queue_put(queue, "x", 1, 0), -EINVAL, "destroyed handle");
}
