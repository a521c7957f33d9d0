/*
 * Pipes: messages between processes over both kinds of pipe, lengths from 0
 * bytes to past 4 GiB, short buffers, timeouts, signals, a peer that closes
 * or is killed in the middle of a message, descriptor passing, leaks and
 * misuse. Children report failure through their exit code (a distinct number
 * per check), since Criterion's assertions belong to the test's own process.
 */
#define _GNU_SOURCE
#include "helpers.h"
/* The internal descriptor-passing helpers are tested here too (the pool uses them). */
#include "../src/internal.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

/* ---- helpers ---- */

struct ends {
    mproc_conn *a; /* the parent's end (one-way: the receiving end) */
    mproc_conn *b; /* the child's end (one-way: the sending end) */
};

static struct ends make_pipe(bool duplex)
{
    struct ends e = {NULL, NULL};
    int rc = mproc_pipe_create(&e.a, &e.b, duplex);
    cr_assert_eq(rc, 0, "pipe_create: %s", mproc_strerror(rc));
    return e;
}

/* A byte that depends on its position, so that lost, repeated or shifted bytes show. */
static unsigned char pattern(uint64_t i)
{
    return (unsigned char)(((uint32_t)i * 2654435761u) >> 24 ^ (uint32_t)(i >> 32));
}

static void fill(unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pattern(i);
}

/* Index of the first byte that differs from the pattern, or len. */
static size_t first_mismatch(const unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != pattern(i))
            return i;
    }
    return len;
}

/* Writes all of buf to a non-blocking descriptor, bypassing the framing. */
static int raw_write(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, -1);
            continue;
        }
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void header_for(unsigned char header[8], uint64_t len)
{
    for (int i = 0; i < 8; i++)
        header[i] = (unsigned char)(len >> (8 * i));
}

static volatile sig_atomic_t handler_ran;

static void on_alarm(int signo)
{
    (void)signo;
    handler_ran = 1;
}

/* A SIGALRM handler (test code may install one) and a timer that fires once. */
static void alarm_in_ms(int ms, bool restart)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
    handler_ran = 0;
    struct itimerval timer = {.it_value = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000}};
    cr_assert_eq(setitimer(ITIMER_REAL, &timer, NULL), 0);
}

static bool sigpipe_pending(void)
{
    sigset_t pending;
    sigpending(&pending);
    return sigismember(&pending, SIGPIPE) == 1;
}

/* ---- children ---- */

/* Echoes every message on b until "quit"; 0 on success. */
static int echo_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a); /* the parent's end: ours is a copy, and EOF needs it closed */
    for (;;) {
        void *buf;
        size_t len;
        int rc = mproc_conn_recv(e->b, &buf, &len, 10000);
        if (rc < 0)
            return 10;
        bool quit = len == 4 && memcmp(buf, "quit", 4) == 0;
        rc = mproc_conn_send(e->b, buf, len);
        free(buf);
        if (rc < 0)
            return 11;
        if (quit)
            return 0;
    }
}

/* Sends a message and expects its echo on the parent's end. */
static void check_echo(mproc_conn *conn, const void *msg, size_t len)
{
    cr_assert_eq(mproc_conn_send(conn, msg, len), 0);
    void *back = NULL;
    size_t got = 99;
    int rc = mproc_conn_recv(conn, &back, &got, 10000);
    cr_assert_eq(rc, 0, "recv: %s", mproc_strerror(rc));
    cr_assert_not_null(back, "a 0-byte message still comes as a pointer to free()");
    cr_assert_eq(got, len);
    cr_assert(len == 0 || memcmp(back, msg, len) == 0);
    free(back);
}

Test(pipe, round_trip_duplex, .timeout = 20)
{
    struct ends e = make_pipe(true);
    mproc_process *child = test_start(echo_child, &e);
    cr_assert_eq(mproc_conn_destroy(&e.b), 0);

    check_echo(e.a, "hello", 5);
    check_echo(e.a, "", 0);
    size_t big = 300000;
    unsigned char *msg = malloc(big);
    fill(msg, big);
    check_echo(e.a, msg, big);
    free(msg);
    check_echo(e.a, "quit", 4);
    test_join_expect(child, 0);

    /* The child has exited, so its end is closed everywhere. */
    void *buf;
    size_t len;
    cr_assert_eq(mproc_conn_recv(e.a, &buf, &len, 5000), -EPIPE);
    mproc_conn_destroy(&e.a);
}

struct two_way {
    struct ends down; /* parent -> child: down.a receives (child), down.b sends (parent) */
    struct ends up;   /* child -> parent: up.a receives (parent), up.b sends (child) */
};

static int one_way_echo_child(void *arg)
{
    struct two_way *t = arg;
    mproc_conn_destroy(&t->down.b);
    mproc_conn_destroy(&t->up.a);
    for (;;) {
        void *buf;
        size_t len;
        if (mproc_conn_recv(t->down.a, &buf, &len, 10000) < 0)
            return 10;
        bool quit = len == 4 && memcmp(buf, "quit", 4) == 0;
        int rc = mproc_conn_send(t->up.b, buf, len);
        free(buf);
        if (rc < 0)
            return 11;
        if (quit)
            return 0;
    }
}

Test(pipe, round_trip_one_way, .timeout = 20)
{
    struct two_way t = {make_pipe(false), make_pipe(false)};
    mproc_process *child = test_start(one_way_echo_child, &t);
    mproc_conn_destroy(&t.down.a);
    mproc_conn_destroy(&t.up.b);

    const char *msgs[] = {"hello", "", "a somewhat longer message", "quit"};
    for (size_t i = 0; i < 4; i++) {
        size_t len = strlen(msgs[i]);
        cr_assert_eq(mproc_conn_send(t.down.b, msgs[i], len), 0);
        char buf[64];
        size_t got;
        int rc = mproc_conn_recv_into(t.up.a, buf, sizeof(buf), &got, 10000);
        cr_assert_eq(rc, 0, "recv_into: %s", mproc_strerror(rc));
        cr_assert_eq(got, len);
        cr_assert(memcmp(buf, msgs[i], len) == 0);
    }
    test_join_expect(child, 0);
    size_t got;
    char c;
    cr_assert_eq(mproc_conn_recv_into(t.up.a, &c, 1, &got, 5000), -EPIPE);
    cr_assert_eq(mproc_conn_send(t.down.b, "x", 1), -EPIPE);
    mproc_conn_destroy(&t.down.b);
    mproc_conn_destroy(&t.up.a);
}

/* ---- many messages, large messages ---- */

#define MANY 20000

static size_t many_len(uint32_t seq)
{
    return sizeof(seq) + seq % 300;
}

static int send_many_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    unsigned char buf[sizeof(uint32_t) + 300];
    for (uint32_t seq = 0; seq < MANY; seq++) {
        memcpy(buf, &seq, sizeof(seq));
        memset(buf + sizeof(seq), (int)(seq & 0xff), seq % 300);
        if (mproc_conn_send(e->b, buf, many_len(seq)) < 0)
            return 10;
    }
    return 0;
}

static void many_messages_in_order(bool duplex)
{
    struct ends e = make_pipe(duplex);
    mproc_process *child = test_start(send_many_child, &e);
    mproc_conn_destroy(&e.b);
    unsigned char buf[512];
    for (uint32_t seq = 0; seq < MANY; seq++) {
        size_t len;
        int rc = mproc_conn_recv_into(e.a, buf, sizeof(buf), &len, 10000);
        cr_assert_eq(rc, 0, "message %u: %s", seq, mproc_strerror(rc));
        cr_assert_eq(len, many_len(seq), "message %u has length %zu", seq, len);
        uint32_t got;
        memcpy(&got, buf, sizeof(got));
        cr_assert_eq(got, seq, "message %u arrived as %u", seq, got);
        for (size_t i = sizeof(seq); i < len; i++)
            cr_assert_eq(buf[i], seq & 0xff);
    }
    test_join_expect(child, 0);
    size_t len;
    cr_assert_eq(mproc_conn_recv_into(e.a, buf, sizeof(buf), &len, 5000), -EPIPE);
    mproc_conn_destroy(&e.a);
}

Test(pipe, many_messages_in_order_duplex, .timeout = 30)
{
    many_messages_in_order(true);
}

Test(pipe, many_messages_in_order_one_way, .timeout = 30)
{
    many_messages_in_order(false);
}

#define LARGE (256 * MIB + 7)

static int send_large_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    unsigned char *buf = malloc(LARGE);
    if (!buf)
        return 10;
    fill(buf, LARGE);
    int rc = mproc_conn_send(e->b, buf, LARGE);
    free(buf);
    return rc == 0 ? 0 : 11;
}

static void large_message(bool duplex)
{
    struct ends e = make_pipe(duplex);
    mproc_process *child = test_start(send_large_child, &e);
    mproc_conn_destroy(&e.b);
    void *buf;
    size_t len;
    int rc = mproc_conn_recv(e.a, &buf, &len, 60000);
    cr_assert_eq(rc, 0, "recv: %s", mproc_strerror(rc));
    cr_assert_eq(len, LARGE);
    size_t bad = first_mismatch(buf, len);
    cr_assert_eq(bad, len, "byte %zu differs", bad);
    free(buf);
    test_join_expect(child, 0);
    mproc_conn_destroy(&e.a);
}

Test(pipe, large_message_256mib_duplex, .timeout = 60)
{
    large_message(true);
}

Test(pipe, large_message_256mib_one_way, .timeout = 60)
{
    large_message(false);
}

/*
 * Past 4 GiB, a 32-bit length would wrap (bpo-17560). The sender's buffer is
 * one block of a memfd mapped over and over, so that it costs one block of
 * memory; the receiver holds the whole message and checks every block.
 */
#define HUGE_BLOCK (MIB + 4096)
#define HUGE_LEN   (((size_t)4 << 30) + MIB + 123)

static int send_huge_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    int fd = memfd_create("pipe-test-block", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, HUGE_BLOCK) < 0)
        return 10;
    size_t span = (HUGE_LEN + HUGE_BLOCK - 1) / HUGE_BLOCK * HUGE_BLOCK;
    unsigned char *base = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return 11;
    for (size_t off = 0; off < span; off += HUGE_BLOCK) {
        void *at =
            mmap(base + off, HUGE_BLOCK, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        if (at == MAP_FAILED)
            return 12;
    }
    fill(base, HUGE_BLOCK); /* writes the block that every mapping shows */
    if (mproc_conn_send(e->b, base, HUGE_LEN) < 0)
        return 13;
    /* A small message after it: the stream must still be in step. */
    if (mproc_conn_send(e->b, "after", 5) < 0)
        return 14;
    return 0;
}

static long long mem_available_mib(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return 0;
    char line[256];
    long long kib = 0;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "MemAvailable: %lld kB", &kib) == 1)
            break;
    }
    fclose(f);
    return kib / 1024;
}

Test(pipe, message_over_4gib, .timeout = 120)
{
    if (mem_available_mib() < 8 * 1024)
        cr_skip_test("needs 8 GiB of available memory");
    struct ends e = make_pipe(true);
    int64_t t0 = test_now_ms();
    mproc_process *child = test_start(send_huge_child, &e);
    mproc_conn_destroy(&e.b);
    /* Ask the size first, as with Python's BufferTooShort, then receive in place. */
    size_t len = 0;
    int rc = mproc_conn_recv_into(e.a, NULL, 0, &len, 100000);
    cr_assert_eq(rc, -EMSGSIZE, "recv_into: %s", mproc_strerror(rc));
    cr_assert_eq(len, HUGE_LEN, "length %zu, expected %zu", len, HUGE_LEN);
    /* Huge pages: first touches of memory are slow on some VMs (~4 s/GiB in 4 KiB pages). */
    void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(buf, MAP_FAILED);
    madvise(buf, len, MADV_HUGEPAGE);
    size_t got = 0;
    rc = mproc_conn_recv_into(e.a, buf, len, &got, 100000);
    cr_assert_eq(rc, 0, "recv_into: %s", mproc_strerror(rc));
    cr_assert_eq(got, HUGE_LEN);
    unsigned char *block = malloc(HUGE_BLOCK);
    fill(block, HUGE_BLOCK);
    const unsigned char *p = buf;
    for (size_t off = 0; off < len; off += HUGE_BLOCK) {
        size_t n = len - off < HUGE_BLOCK ? len - off : HUGE_BLOCK;
        cr_assert(memcmp(p + off, block, n) == 0, "block at %zu differs", off);
    }
    free(block);
    munmap(buf, len);
    char after[8];
    cr_assert_eq(mproc_conn_recv_into(e.a, after, sizeof(after), &len, 10000), 0);
    cr_assert_eq(len, 5);
    cr_assert(memcmp(after, "after", 5) == 0);
    test_join_expect(child, 0);
    mproc_conn_destroy(&e.a);
    cr_log_info("4 GiB+ message in %lld ms", (long long)(test_now_ms() - t0));
}

/* The length field itself, without moving gigabytes: 8 bytes, little-endian. */
Test(pipe, length_header_is_64_bit_little_endian, .timeout = 10)
{
    struct ends e = make_pipe(true);
    int fd_a, fd_b;
    cr_assert_eq(mproc_conn_fileno(e.a, &fd_a), 0);
    cr_assert_eq(mproc_conn_fileno(e.b, &fd_b), 0);

    /* What send() writes. */
    cr_assert_eq(mproc_conn_send(e.a, "xyz", 3), 0);
    unsigned char raw[11];
    cr_assert_eq(read(fd_b, raw, sizeof(raw)), 11);
    unsigned char expected[8];
    header_for(expected, 3);
    cr_assert(memcmp(raw, expected, 8) == 0);
    cr_assert(memcmp(raw + 8, "xyz", 3) == 0);

    /* What recv() reads: lengths past 32 bits come through whole. */
    uint64_t lengths[] = {((uint64_t)1 << 32) + 5, (uint64_t)1 << 40, UINT64_MAX >> 1};
    for (size_t i = 0; i < 3; i++) {
        struct ends f = make_pipe(true);
        int fd;
        cr_assert_eq(mproc_conn_fileno(f.a, &fd), 0);
        header_for(expected, lengths[i]);
        cr_assert_eq(raw_write(fd, expected, 8), 0);
        char small[16];
        size_t len = 0;
        cr_assert_eq(mproc_conn_recv_into(f.b, small, sizeof(small), &len, 1000), -EMSGSIZE);
        cr_assert_eq((uint64_t)len, lengths[i]);
        mproc_conn_destroy(&f.a);
        mproc_conn_destroy(&f.b);
    }
    mproc_conn_destroy(&e.a);
    mproc_conn_destroy(&e.b);
}

/* ---- short buffers ---- */

struct sender {
    struct ends e;
    const char *msgs[4];
    size_t count;
};

static int send_list_child(void *arg)
{
    struct sender *s = arg;
    mproc_conn_destroy(&s->e.a);
    for (size_t i = 0; i < s->count; i++) {
        if (mproc_conn_send(s->e.b, s->msgs[i], strlen(s->msgs[i])) < 0)
            return 10;
    }
    return 0;
}

Test(pipe, recv_into_too_small_keeps_the_message, .timeout = 10)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        struct sender s = {make_pipe(duplex), {"0123456789", "next", "third one"}, 3};
        mproc_process *child = test_start(send_list_child, &s);
        mproc_conn_destroy(&s.e.b);
        char buf[64];
        size_t len = 0;
        cr_assert_eq(mproc_conn_recv_into(s.e.a, buf, 4, &len, 5000), -EMSGSIZE);
        cr_assert_eq(len, 10, "the size needed is reported");
        len = 0;
        cr_assert_eq(mproc_conn_recv_into(s.e.a, buf, 9, &len, 5000), -EMSGSIZE);
        cr_assert_eq(len, 10);
        bool ready = false;
        cr_assert_eq(mproc_conn_poll(s.e.a, 0, &ready), 0);
        cr_assert(ready, "the pending message makes poll() ready");
        cr_assert_eq(mproc_conn_recv_into(s.e.a, buf, 10, &len, 5000), 0);
        cr_assert_eq(len, 10);
        cr_assert(memcmp(buf, "0123456789", 10) == 0);
        /* Then a short buffer followed by recv(): also whole. */
        cr_assert_eq(mproc_conn_recv_into(s.e.a, NULL, 0, &len, 5000), -EMSGSIZE);
        cr_assert_eq(len, 4);
        void *p;
        cr_assert_eq(mproc_conn_recv(s.e.a, &p, &len, 5000), 0);
        cr_assert_eq(len, 4);
        cr_assert(memcmp(p, "next", 4) == 0);
        free(p);
        cr_assert_eq(mproc_conn_recv_into(s.e.a, buf, sizeof(buf), &len, 5000), 0);
        cr_assert_eq(len, 9);
        cr_assert(memcmp(buf, "third one", 9) == 0);
        test_join_expect(child, 0);
        mproc_conn_destroy(&s.e.a);
    }
}

/* ---- timeouts and signals ---- */

Test(pipe, timeouts_within_tolerance, .timeout = 10)
{
    struct ends e = make_pipe(true);
    void *buf;
    size_t len;
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_conn_recv(e.a, &buf, &len, 200), -ETIMEDOUT);
    int64_t elapsed = test_now_ms() - t0;
    cr_assert_geq(elapsed, 199);
    cr_assert_lt(elapsed, 800, "recv(200) took %lld ms", (long long)elapsed);

    t0 = test_now_ms();
    cr_assert_eq(mproc_conn_recv(e.a, &buf, &len, 0), -ETIMEDOUT);
    char c;
    cr_assert_eq(mproc_conn_recv_into(e.a, &c, 1, &len, 0), -ETIMEDOUT);
    cr_assert_lt(test_now_ms() - t0, 100);

    bool ready = true;
    t0 = test_now_ms();
    cr_assert_eq(mproc_conn_poll(e.a, 200, &ready), 0);
    elapsed = test_now_ms() - t0;
    cr_assert_not(ready);
    cr_assert_geq(elapsed, 199);
    cr_assert_lt(elapsed, 800, "poll(200) took %lld ms", (long long)elapsed);

    cr_assert_eq(mproc_conn_send(e.b, "x", 1), 0);
    cr_assert_eq(mproc_conn_poll(e.a, 0, &ready), 0);
    cr_assert(ready);
    cr_assert_eq(mproc_conn_recv(e.a, &buf, &len, 0), 0);
    free(buf);
    mproc_conn_destroy(&e.a);
    mproc_conn_destroy(&e.b);
}

static int delayed_send_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    usleep(150 * 1000);
    return mproc_conn_send(e->b, "late", 4) == 0 ? 0 : 10;
}

Test(pipe, poll_wakes_when_a_message_comes, .timeout = 10)
{
    struct ends e = make_pipe(false);
    mproc_process *child = test_start(delayed_send_child, &e);
    mproc_conn_destroy(&e.b);
    bool ready = false;
    int64_t t0 = test_now_ms();
    cr_assert_eq(mproc_conn_poll(e.a, 5000, &ready), 0);
    cr_assert(ready);
    cr_assert_lt(test_now_ms() - t0, 3000);
    char buf[8];
    size_t len;
    cr_assert_eq(mproc_conn_recv_into(e.a, buf, sizeof(buf), &len, 0), 0);
    cr_assert_eq(len, 4);
    test_join_expect(child, 0);
    /* The writer is gone: poll is ready, and recv says why. */
    cr_assert_eq(mproc_conn_poll(e.a, 5000, &ready), 0);
    cr_assert(ready);
    cr_assert_eq(mproc_conn_recv_into(e.a, buf, sizeof(buf), &len, 0), -EPIPE);
    mproc_conn_destroy(&e.a);
}

Test(pipe, signal_handler_interrupts_recv_and_poll, .timeout = 10)
{
    struct ends e = make_pipe(true);
    void *buf;
    size_t len;
    bool ready;
    /* SA_RESTART or not: a blocked receive returns so that the program can react. */
    for (int restart = 0; restart < 2; restart++) {
        alarm_in_ms(100, restart);
        int64_t t0 = test_now_ms();
        cr_assert_eq(mproc_conn_recv(e.a, &buf, &len, MPROC_WAIT_FOREVER), -EINTR);
        cr_assert(handler_ran);
        cr_assert_lt(test_now_ms() - t0, 3000);

        alarm_in_ms(100, restart);
        cr_assert_eq(mproc_conn_poll(e.a, MPROC_WAIT_FOREVER, &ready), -EINTR);
        cr_assert(handler_ran);
    }
    /* The connection still works afterwards. */
    cr_assert_eq(mproc_conn_send(e.b, "ok", 2), 0);
    cr_assert_eq(mproc_conn_recv(e.a, &buf, &len, 1000), 0);
    cr_assert_eq(len, 2);
    free(buf);
    mproc_conn_destroy(&e.a);
    mproc_conn_destroy(&e.b);
}

/* Fills a pipe's buffer with raw bytes; returns how many went in. */
static size_t fill_buffer(int fd)
{
    static unsigned char junk[65536];
    size_t total = 0;
    /* Big writes first, then single bytes: a big one may fail where a small one fits. */
    for (size_t chunk = sizeof(junk); chunk > 0; chunk /= 16) {
        ssize_t n;
        while ((n = write(fd, junk, chunk)) > 0)
            total += (size_t)n;
    }
    return total;
}

static size_t drain(int fd)
{
    static unsigned char sink[65536];
    size_t total = 0;
    for (;;) {
        ssize_t n = read(fd, sink, sizeof(sink));
        if (n <= 0)
            return total;
        total += (size_t)n;
    }
}

Test(pipe, signal_interrupts_a_send_that_has_not_started, .timeout = 10)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        struct ends e = make_pipe(duplex);
        int wfd, rfd;
        mproc_conn_fileno(e.b, &wfd);
        mproc_conn_fileno(e.a, &rfd);
        size_t filled = fill_buffer(wfd);
        alarm_in_ms(100, true);
        cr_assert_eq(mproc_conn_send(e.b, "blocked", 7), -EINTR);
        cr_assert(handler_ran);
        cr_assert_eq(drain(rfd), filled, "nothing of the interrupted message was sent");
        mproc_conn_destroy(&e.a);
        mproc_conn_destroy(&e.b);
    }
}

#define SLOW_LEN (8 * MIB)

static int slow_reader_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->b);
    usleep(300 * 1000);
    void *buf;
    size_t len;
    if (mproc_conn_recv(e->a, &buf, &len, 20000) < 0)
        return 10;
    int rc = len == SLOW_LEN && first_mismatch(buf, len) == len ? 0 : 11;
    free(buf);
    return rc;
}

Test(pipe, signal_does_not_cut_a_message_short, .timeout = 20)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        struct ends e = make_pipe(duplex);
        mproc_process *child = test_start(slow_reader_child, &e);
        mproc_conn_destroy(&e.a);
        unsigned char *msg = malloc(SLOW_LEN);
        fill(msg, SLOW_LEN);
        alarm_in_ms(100, false);
        cr_assert_eq(mproc_conn_send(e.b, msg, SLOW_LEN), 0);
        cr_assert(handler_ran, "the signal came while the message was half sent");
        free(msg);
        test_join_expect(child, 0);
        mproc_conn_destroy(&e.b);
    }
}

/* Writes half a frame, waits for "go" on its own pipe, writes the rest. */
struct halves {
    struct ends e;
    struct ends go; /* one-way: go.a receives in the child, go.b sends in the parent */
};

#define HALF_LEN 100000

static int halves_child(void *arg)
{
    struct halves *h = arg;
    mproc_conn_destroy(&h->e.a);
    mproc_conn_destroy(&h->go.b);
    unsigned char *msg = malloc(HALF_LEN);
    fill(msg, HALF_LEN);
    int fd;
    mproc_conn_fileno(h->e.b, &fd);
    unsigned char header[8];
    header_for(header, HALF_LEN);
    for (int round = 0; round < 3; round++) {
        if (raw_write(fd, header, 8) < 0 || raw_write(fd, msg, HALF_LEN / 2) < 0)
            return 10;
        void *go;
        size_t len;
        if (mproc_conn_recv(h->go.a, &go, &len, 20000) < 0)
            return 11;
        free(go);
        if (raw_write(fd, msg + HALF_LEN / 2, HALF_LEN - HALF_LEN / 2) < 0)
            return 12;
    }
    free(msg);
    return 0;
}

Test(pipe, half_received_message_survives_timeout_and_signal, .timeout = 20)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        struct halves h = {make_pipe(duplex), make_pipe(false)};
        mproc_process *child = test_start(halves_child, &h);
        mproc_conn_destroy(&h.e.b);
        mproc_conn_destroy(&h.go.a);
        unsigned char *buf = malloc(HALF_LEN);
        unsigned char *other = malloc(HALF_LEN);
        size_t len;
        void *p;

        /* Round 1: a timeout in recv_into(), then recv() picks the message up. */
        cr_assert_eq(mproc_conn_recv_into(h.e.a, buf, HALF_LEN, &len, 300), -ETIMEDOUT);
        cr_assert_eq(mproc_conn_recv(h.e.a, &p, &len, 100), -ETIMEDOUT);
        cr_assert_eq(mproc_conn_send(h.go.b, "go", 2), 0);
        cr_assert_eq(mproc_conn_recv(h.e.a, &p, &len, 10000), 0);
        cr_assert_eq(len, HALF_LEN);
        cr_assert_eq(first_mismatch(p, len), len);
        free(p);

        /* Round 2: a signal in recv_into(), then recv_into() into another buffer. */
        alarm_in_ms(300, false);
        cr_assert_eq(mproc_conn_recv_into(h.e.a, buf, HALF_LEN, &len, -1), -EINTR);
        cr_assert_eq(mproc_conn_send(h.go.b, "go", 2), 0);
        memset(other, 0, HALF_LEN);
        cr_assert_eq(mproc_conn_recv_into(h.e.a, other, HALF_LEN, &len, 10000), 0);
        cr_assert_eq(len, HALF_LEN);
        cr_assert_eq(first_mismatch(other, len), len);

        /* Round 3: a timeout in recv(), then recv_into(). */
        cr_assert_eq(mproc_conn_recv(h.e.a, &p, &len, 300), -ETIMEDOUT);
        cr_assert_eq(mproc_conn_send(h.go.b, "go", 2), 0);
        memset(buf, 0, HALF_LEN);
        cr_assert_eq(mproc_conn_recv_into(h.e.a, buf, HALF_LEN, &len, 10000), 0);
        cr_assert_eq(len, HALF_LEN);
        cr_assert_eq(first_mismatch(buf, len), len);

        free(buf);
        free(other);
        test_join_expect(child, 0);
        mproc_conn_destroy(&h.e.a);
        mproc_conn_destroy(&h.go.b);
    }
}

/* ---- a peer that is gone ---- */

static int close_and_exit_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    mproc_conn_destroy(&e->b);
    return 0;
}

Test(pipe, peer_closed_gives_epipe_and_no_sigpipe, .timeout = 10)
{
    signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would kill this test */
    sigset_t before, after;
    pthread_sigmask(SIG_SETMASK, NULL, &before);
    for (int duplex = 0; duplex < 2; duplex++) {
        /* Duplex: both directions. One-way: the parent sends to a dead reader. */
        struct ends e = make_pipe(duplex);
        mproc_process *child = test_start(close_and_exit_child, &e);
        test_join_expect(child, 0);
        mproc_conn_destroy(duplex ? &e.b : &e.a);
        mproc_conn *mine = duplex ? e.a : e.b;
        for (int i = 0; i < 3; i++)
            cr_assert_eq(mproc_conn_send(mine, "anyone?", 7), -EPIPE);
        size_t big = 4 * MIB;
        unsigned char *msg = calloc(1, big);
        cr_assert_eq(mproc_conn_send(mine, msg, big), -EPIPE);
        free(msg);
        if (duplex) {
            void *p;
            size_t len;
            cr_assert_eq(mproc_conn_recv(mine, &p, &len, 1000), -EPIPE);
            cr_assert_eq(mproc_conn_recv(mine, &p, &len, 1000), -EPIPE, "and it stays so");
        }
        cr_assert_not(sigpipe_pending(), "no SIGPIPE left pending");
        mproc_conn_destroy(&mine);
    }
    /* The one-way reading end, after the writer is gone. */
    struct ends e = make_pipe(false);
    mproc_conn_destroy(&e.b);
    char c;
    size_t len;
    cr_assert_eq(mproc_conn_recv_into(e.a, &c, 1, &len, 1000), -EPIPE);
    mproc_conn_destroy(&e.a);
    pthread_sigmask(SIG_SETMASK, NULL, &after);
    cr_assert_eq(sigismember(&after, SIGPIPE), sigismember(&before, SIGPIPE),
                 "the signal mask is as it was");
}

Test(pipe, callers_own_pending_sigpipe_is_left_alone, .timeout = 10)
{
    struct ends e = make_pipe(false);
    mproc_conn_destroy(&e.a);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    raise(SIGPIPE);
    cr_assert(sigpipe_pending());
    cr_assert_eq(mproc_conn_send(e.b, "x", 1), -EPIPE);
    cr_assert(sigpipe_pending(), "the program's own SIGPIPE is still there");
    struct timespec zero = {0, 0};
    cr_assert_eq(sigtimedwait(&set, NULL, &zero), SIGPIPE);
    cr_assert_eq(mproc_conn_send(e.b, "x", 1), -EPIPE);
    cr_assert_not(sigpipe_pending(), "ours was consumed");
    sigset_t mask;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    cr_assert(sigismember(&mask, SIGPIPE), "the caller's mask is kept");
    mproc_conn_destroy(&e.b);
}

#define STUCK_LEN (64 * MIB)

/* Starts a big message nobody reads, and stays blocked in send until killed. */
static int stuck_sender_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    unsigned char *msg = calloc(1, STUCK_LEN);
    if (!msg)
        return 10;
    mproc_conn_send(e->b, msg, STUCK_LEN);
    return 11;
}

Test(pipe, peer_killed_mid_message_gives_epipe, .timeout = 20)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        struct ends e = make_pipe(duplex);
        mproc_process *child = test_start(stuck_sender_child, &e);
        mproc_conn_destroy(&e.b);
        /* The child is blocked in send() with part of the message in the kernel. */
        usleep(200 * 1000);
        cr_assert_eq(mproc_process_kill(child), 0);
        test_join_expect(child, -SIGKILL);
        void *p;
        size_t len;
        int64_t t0 = test_now_ms();
        cr_assert_eq(mproc_conn_recv(e.a, &p, &len, MPROC_WAIT_FOREVER), -EPIPE);
        cr_assert_lt(test_now_ms() - t0, 5000);
        cr_assert_eq(mproc_conn_recv(e.a, &p, &len, 1000), -EPIPE);
        mproc_conn_destroy(&e.a);
    }
}

/* Writes a header and part of the body, then dies: the reader is blocked meanwhile. */
static int die_mid_frame_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    int fd;
    mproc_conn_fileno(e->b, &fd);
    unsigned char header[8];
    header_for(header, 1000);
    usleep(200 * 1000);
    raw_write(fd, header, 8);
    raw_write(fd, "partial", 7);
    usleep(100 * 1000);
    raise(SIGKILL);
    return 10;
}

Test(pipe, blocked_reader_sees_writer_die_mid_frame, .timeout = 20)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        struct ends e = make_pipe(duplex);
        mproc_process *child = test_start(die_mid_frame_child, &e);
        mproc_conn_destroy(&e.b);
        char buf[2000];
        size_t len;
        cr_assert_eq(mproc_conn_recv_into(e.a, buf, sizeof(buf), &len, MPROC_WAIT_FOREVER), -EPIPE);
        test_join_expect(child, -SIGKILL);
        mproc_conn_destroy(&e.a);
    }
}

/* Waits 200 ms, then dies by SIGKILL without reading: the parent is blocked sending. */
static int die_without_reading_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->b);
    usleep(200 * 1000);
    raise(SIGKILL);
    return 10;
}

Test(pipe, blocked_sender_sees_reader_die, .timeout = 20)
{
    signal(SIGPIPE, SIG_DFL);
    for (int duplex = 0; duplex < 2; duplex++) {
        struct ends e = make_pipe(duplex);
        mproc_process *child = test_start(die_without_reading_child, &e);
        mproc_conn_destroy(&e.a);
        unsigned char *msg = calloc(1, STUCK_LEN);
        cr_assert_eq(mproc_conn_send(e.b, msg, STUCK_LEN), -EPIPE);
        free(msg);
        cr_assert_not(sigpipe_pending());
        test_join_expect(child, -SIGKILL);
        mproc_conn_destroy(&e.b);
    }
}

/* ---- descriptor passing ---- */

static int use_fds_child(void *arg)
{
    struct ends *e = arg;
    mproc_conn_destroy(&e->a);
    void *msg;
    size_t len, nfds;
    int fds[4];
    if (mproc_conn_recv_fds(e->b, &msg, &len, fds, 4, &nfds, 10000) < 0)
        return 10;
    bool ok = len == 9 && memcmp(msg, "take them", 9) == 0;
    free(msg);
    if (!ok || nfds != 2)
        return 11;
    for (size_t i = 0; i < nfds; i++) {
        int flags = fcntl(fds[i], F_GETFD);
        if (flags < 0 || !(flags & FD_CLOEXEC))
            return 12;
    }
    if (write(fds[0], "through the pipe", 16) != 16)
        return 13;
    if (pwrite(fds[1], "into the memfd", 14, 0) != 14)
        return 14;
    close(fds[0]);
    close(fds[1]);
    return 0;
}

Test(pipe, descriptors_reach_a_child, .timeout = 10)
{
    struct ends e = make_pipe(true);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    int memfd = memfd_create("pipe-test", MFD_CLOEXEC);
    cr_assert_geq(memfd, 0);
    mproc_process *child = test_start(use_fds_child, &e);
    mproc_conn_destroy(&e.b);
    int fds[2] = {p[1], memfd};
    cr_assert_eq(mproc_conn_send_fds(e.a, "take them", 9, fds, 2), 0);
    close(p[1]); /* the child got its own copy */
    test_join_expect(child, 0);
    char buf[32] = {0};
    cr_assert_eq(read(p[0], buf, sizeof(buf)), 16);
    cr_assert_str_eq(buf, "through the pipe");
    memset(buf, 0, sizeof(buf));
    cr_assert_eq(pread(memfd, buf, sizeof(buf), 0), 14);
    cr_assert_str_eq(buf, "into the memfd");
    close(p[0]);
    close(memfd);
    mproc_conn_destroy(&e.a);
}

static void open_three(int fds[3])
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    fds[0] = p[0];
    fds[1] = p[1];
    fds[2] = memfd_create("three", MFD_CLOEXEC);
    cr_assert_geq(fds[2], 0);
}

Test(pipe, too_many_descriptors_are_kept_or_closed_never_leaked, .timeout = 10)
{
    struct ends e = make_pipe(true);
    int three[3];
    open_three(three);
    int base = test_count_fds();

    /* Too small an array: -EMSGSIZE, the count needed, and nothing lost. */
    cr_assert_eq(mproc_conn_send_fds(e.a, "abc", 3, three, 3), 0);
    void *p;
    size_t len = 0, nfds = 0;
    int got[3];
    cr_assert_eq(mproc_conn_recv_fds(e.b, &p, &len, got, 1, &nfds, 1000), -EMSGSIZE);
    cr_assert_eq(nfds, 3);
    cr_assert_eq(len, 3);
    bool ready = false;
    cr_assert_eq(mproc_conn_poll(e.b, 0, &ready), 0);
    cr_assert(ready);
    cr_assert_eq(mproc_conn_recv_fds(e.b, &p, &len, got, 3, &nfds, 1000), 0);
    cr_assert_eq(nfds, 3);
    cr_assert_eq(len, 3);
    cr_assert(memcmp(p, "abc", 3) == 0);
    free(p);
    cr_assert_eq(test_count_fds(), base + 3);
    for (int i = 0; i < 3; i++)
        close(got[i]);
    cr_assert_eq(test_count_fds(), base);

    /* Plain receives take the bytes and close the descriptors. */
    cr_assert_eq(mproc_conn_send_fds(e.a, "abc", 3, three, 3), 0);
    cr_assert_eq(mproc_conn_recv(e.b, &p, &len, 1000), 0);
    free(p);
    cr_assert_eq(test_count_fds(), base);
    cr_assert_eq(mproc_conn_send_fds(e.a, "abc", 3, three, 3), 0);
    char buf[8];
    cr_assert_eq(mproc_conn_recv_into(e.b, buf, sizeof(buf), &len, 1000), 0);
    cr_assert_eq(test_count_fds(), base);

    /* A 0-byte message can carry descriptors too. */
    cr_assert_eq(mproc_conn_send_fds(e.a, NULL, 0, three, 1), 0);
    cr_assert_eq(mproc_conn_recv_fds(e.b, &p, &len, got, 3, &nfds, 1000), 0);
    cr_assert_eq(len, 0);
    cr_assert_eq(nfds, 1);
    free(p);
    close(got[0]);

    /* Pending descriptors go with the handle. */
    cr_assert_eq(mproc_conn_send_fds(e.a, "abc", 3, three, 3), 0);
    cr_assert_eq(mproc_conn_recv_fds(e.b, &p, &len, NULL, 0, &nfds, 1000), -EMSGSIZE);
    cr_assert_eq(test_count_fds(), base + 3);
    cr_assert_eq(mproc_conn_destroy(&e.b), 0);
    cr_assert_eq(test_count_fds(), base - 1);
    mproc_conn_destroy(&e.a);
    for (int i = 0; i < 3; i++)
        close(three[i]);
}

Test(pipe, internal_helpers_pass_and_close_descriptors, .timeout = 10)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int three[3];
    open_three(three);
    int base = test_count_fds();
    cr_assert_eq(mproc__send_fds(sv[0], "m", 1, three, 3, 0), 1);
    char c;
    int got[1];
    size_t nfds = 0;
    cr_assert_eq(mproc__recv_fds(sv[1], &c, 1, got, 1, &nfds, 0), 1);
    cr_assert_eq(c, 'm');
    cr_assert_eq(nfds, 3, "the count of what came, beyond max_fds");
    cr_assert_eq(test_count_fds(), base + 1, "the two that did not fit were closed");
    cr_assert(fcntl(got[0], F_GETFD) & FD_CLOEXEC);
    close(got[0]);
    /* Without descriptors, and at end of stream. */
    cr_assert_eq(mproc__send_fds(sv[0], "n", 1, NULL, 0, 0), 1);
    cr_assert_eq(mproc__recv_fds(sv[1], &c, 1, NULL, 0, &nfds, 0), 1);
    cr_assert_eq(nfds, 0);
    cr_assert_eq(mproc__recv_fds(sv[1], &c, 1, NULL, 0, &nfds, MSG_DONTWAIT), -EAGAIN);
    int bad = -1;
    cr_assert_eq(mproc__send_fds(sv[0], "o", 1, &bad, 1, 0), -EBADF);
    close(sv[0]);
    cr_assert_eq(mproc__recv_fds(sv[1], &c, 1, NULL, 0, &nfds, 0), 0);
    close(sv[1]);
    for (int i = 0; i < 3; i++)
        close(three[i]);
}

/* ---- lifetimes, threads, misuse ---- */

Test(pipe, no_descriptor_leak_after_1000_pipes, .timeout = 30)
{
    int base = test_count_fds();
    for (int i = 0; i < 1000; i++) {
        struct ends e = make_pipe(i % 2 == 0);
        if (i % 10 == 0) {
            /* Leave something pending in the handle: a message too big for the buffer. */
            mproc_conn *w = i % 2 == 0 ? e.a : e.b;
            mproc_conn *r = i % 2 == 0 ? e.b : e.a;
            cr_assert_eq(mproc_conn_send(w, "pending", 7), 0);
            size_t len;
            cr_assert_eq(mproc_conn_recv_into(r, NULL, 0, &len, 0), -EMSGSIZE);
        }
        if (i % 3 == 0)
            cr_assert_eq(mproc_conn_close(e.a), 0);
        cr_assert_eq(mproc_conn_destroy(&e.a), 0);
        cr_assert_eq(mproc_conn_destroy(&e.b), 0);
        cr_assert_null(e.a);
        cr_assert_null(e.b);
    }
    cr_assert_eq(test_count_fds(), base);
}

static void *blocked_receiver(void *arg)
{
    mproc_conn *conn = arg;
    void *buf = NULL;
    size_t len;
    intptr_t rc = mproc_conn_recv(conn, &buf, &len, 10000);
    free(buf);
    return (void *)rc;
}

Test(pipe, second_thread_on_the_same_direction_gets_ebusy, .timeout = 10)
{
    struct ends e = make_pipe(true);
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, blocked_receiver, e.a), 0);
    usleep(100 * 1000); /* let it block in recv */
    void *buf;
    size_t len;
    cr_assert_eq(mproc_conn_recv(e.a, &buf, &len, 0), -EBUSY);
    cr_assert_eq(mproc_conn_destroy(&e.a), -EBUSY);
    cr_assert_not_null(e.a);
    cr_assert_eq(mproc_conn_close(e.a), -EBUSY);
    /* The other direction is free. */
    cr_assert_eq(mproc_conn_send(e.a, "to b", 4), 0);
    cr_assert_eq(mproc_conn_send(e.b, "wake", 4), 0);
    void *rc;
    pthread_join(thread, &rc);
    cr_assert_eq((intptr_t)rc, 0);
    cr_assert_eq(mproc_conn_recv(e.b, &buf, &len, 0), 0);
    free(buf);
    mproc_conn_destroy(&e.a);
    mproc_conn_destroy(&e.b);
}

static int poll_copy_child(void *arg)
{
    mproc_conn *conn = arg;
    bool ready;
    /* The parent's thread was inside recv at fork: the copy must not stay busy. */
    return mproc_conn_poll(conn, 0, &ready) == 0 ? 0 : 10;
}

Test(pipe, a_forked_copy_is_usable_while_the_parent_is_inside_a_call, .timeout = 10)
{
    struct ends e = make_pipe(true);
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, blocked_receiver, e.a), 0);
    usleep(100 * 1000);
    mproc_process *child = test_start(poll_copy_child, e.a);
    test_join_expect(child, 0);
    cr_assert_eq(mproc_conn_send(e.b, "wake", 4), 0);
    void *rc;
    pthread_join(thread, &rc);
    cr_assert_eq((intptr_t)rc, 0);
    mproc_conn_destroy(&e.a);
    mproc_conn_destroy(&e.b);
}

Test(pipe, bad_input, .timeout = 10)
{
    mproc_conn *a = NULL, *b = NULL;
    cr_assert_eq(mproc_pipe_create(NULL, &b, true), -EINVAL);
    cr_assert_eq(mproc_pipe_create(&a, NULL, true), -EINVAL);
    void *p;
    size_t len, nfds;
    bool ready;
    int fd;
    char c;
    /* NULL handles */
    cr_assert_eq(mproc_conn_send(NULL, "x", 1), -EINVAL);
    cr_assert_eq(mproc_conn_recv(NULL, &p, &len, 0), -EINVAL);
    cr_assert_eq(mproc_conn_recv_into(NULL, &c, 1, &len, 0), -EINVAL);
    cr_assert_eq(mproc_conn_poll(NULL, 0, &ready), -EINVAL);
    cr_assert_eq(mproc_conn_fileno(NULL, &fd), -EINVAL);
    cr_assert_eq(mproc_conn_send_fds(NULL, "x", 1, NULL, 0), -EINVAL);
    cr_assert_eq(mproc_conn_recv_fds(NULL, &p, &len, NULL, 0, &nfds, 0), -EINVAL);
    cr_assert_eq(mproc_conn_close(NULL), -EINVAL);
    cr_assert_eq(mproc_conn_destroy(NULL), -EINVAL);
    cr_assert_eq(mproc_conn_destroy(&a), -EINVAL);

    /* NULL out-parameters and buffers */
    cr_assert_eq(mproc_pipe_create(&a, &b, true), 0);
    cr_assert_eq(mproc_conn_send(a, NULL, 1), -EINVAL);
    cr_assert_eq(mproc_conn_send(a, NULL, 0), 0, "an empty message needs no buffer");
    cr_assert_eq(mproc_conn_recv(b, NULL, &len, 0), -EINVAL);
    cr_assert_eq(mproc_conn_recv(b, &p, NULL, 0), -EINVAL);
    cr_assert_eq(mproc_conn_recv_into(b, NULL, 1, &len, 0), -EINVAL);
    cr_assert_eq(mproc_conn_recv_into(b, &c, 1, NULL, 0), -EINVAL);
    cr_assert_eq(mproc_conn_poll(b, 0, NULL), -EINVAL);
    cr_assert_eq(mproc_conn_fileno(b, NULL), -EINVAL);
    cr_assert_eq(mproc_conn_send_fds(a, "x", 1, NULL, 1), -EINVAL);
    int fds[MPROC_CONN_MAX_FDS + 1] = {0};
    cr_assert_eq(mproc_conn_send_fds(a, "x", 1, fds, MPROC_CONN_MAX_FDS + 1), -EINVAL);
    int negative = -1;
    cr_assert_eq(mproc_conn_send_fds(a, "x", 1, &negative, 1), -EBADF);
    int closed_fd = dup(0);
    close(closed_fd);
    cr_assert_eq(mproc_conn_send_fds(a, "x", 1, &closed_fd, 1), -EBADF);
    cr_assert_eq(mproc_conn_recv_fds(b, &p, &len, NULL, 1, &nfds, 0), -EINVAL);
    cr_assert_eq(mproc_conn_recv_fds(b, &p, &len, NULL, 0, NULL, 0), -EINVAL);
    /* Nothing of the refused sends went out: only the empty message is there. */
    cr_assert_eq(mproc_conn_recv_into(b, NULL, 0, &len, 0), 0);
    cr_assert_eq(len, 0);
    cr_assert_eq(mproc_conn_recv_into(b, NULL, 0, &len, 0), -ETIMEDOUT);

    /* Closed, then destroyed */
    cr_assert_eq(mproc_conn_close(a), 0);
    cr_assert_eq(mproc_conn_close(a), MPROC_ECLOSED);
    cr_assert_eq(mproc_conn_send(a, "x", 1), MPROC_ECLOSED);
    cr_assert_eq(mproc_conn_recv(a, &p, &len, 0), MPROC_ECLOSED);
    cr_assert_eq(mproc_conn_poll(a, 0, &ready), MPROC_ECLOSED);
    cr_assert_eq(mproc_conn_fileno(a, &fd), MPROC_ECLOSED);
    cr_assert_eq(mproc_conn_destroy(&a), 0);
    cr_assert_null(a);
    cr_assert_eq(mproc_conn_destroy(&a), -EINVAL);
    cr_assert_eq(mproc_conn_recv(b, &p, &len, 0), -EPIPE);
    cr_assert_eq(mproc_conn_destroy(&b), 0);

    /* One-way: each end has one direction, and no descriptor passing. */
    cr_assert_eq(mproc_pipe_create(&a, &b, false), 0);
    cr_assert_eq(mproc_conn_send(a, "x", 1), -EBADF);
    cr_assert_eq(mproc_conn_recv(b, &p, &len, 0), -EBADF);
    cr_assert_eq(mproc_conn_recv_into(b, &c, 1, &len, 0), -EBADF);
    cr_assert_eq(mproc_conn_poll(b, 0, &ready), -EBADF);
    cr_assert_eq(mproc_conn_send_fds(b, "x", 1, NULL, 0), -EOPNOTSUPP);
    cr_assert_eq(mproc_conn_recv_fds(a, &p, &len, NULL, 0, &nfds, 0), -EOPNOTSUPP);
    cr_assert_eq(mproc_conn_fileno(a, &fd), 0);
    cr_assert_geq(fd, 0);
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    cr_assert_eq(mproc_conn_destroy(&a), 0);
    cr_assert_eq(mproc_conn_destroy(&b), 0);
}
