/*
 * Queue accounting under SIGKILL storms: 4 producers and 4 consumers, messages
 * of up to 64 KiB (streamed through small rings), one of the eight killed and
 * restarted every 2-6 ms. After each round the consumers drain to
 * MPROC_ECLOSED and the test checks what queue.h promises: no duplicate, no
 * corruption, per-producer order, no confirmed message lost but with a killed
 * taker, size/empty/full exact, and the joinable queue's unfinished count
 * exact (join() neither waits for tasks nobody holds nor misses one).
 *
 * Randomized: the seed is printed; MPROC_TEST_SEED=<n> replays it (the kill
 * timing still depends on the scheduler). MPROC_TEST_ROUNDS=<n> runs more.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <mproc.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PRODUCERS      4
#define CONSUMERS      4
#define MAX_MESSAGE    (64 * 1024)
#define SEQ_LIMIT      (1u << 20) /* per producer slot and round */
#define ROUND_MS       1500
#define DEFAULT_ROUNDS 8

/* States of one (producer, seq), in shared memory. */
enum { S_ATTEMPTED = 1, S_CONFIRMED = 2 };

struct stamp {
    uint32_t producer;
    uint32_t length; /* payload bytes after the stamp */
    uint64_t seq;
    uint64_t checksum;
};

/* What every process of a round sees, in one shared mapping. */
struct board {
    _Atomic uint32_t stop;                /* producers: finish the current put, exit 0 */
    _Atomic uint64_t next_seq[PRODUCERS]; /* where a restarted producer goes on */
    _Atomic uint64_t done_logged;         /* task_done() calls that returned 0 */
    _Atomic uint32_t failure;             /* first failure a child saw (exit code too) */
    _Atomic int32_t failure_rc;           /* the call's return code with it */
    _Atomic uint8_t state[PRODUCERS][SEQ_LIMIT];
    _Atomic uint8_t seen[PRODUCERS][SEQ_LIMIT];
};

struct role {
    struct board *board;
    mproc_queue *queue;
    bool joinable;
    unsigned index;
    uint64_t seed;
};

static uint64_t mix(uint64_t *s)
{
    /* splitmix64: a reproducible stream from the seed. */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Mostly small messages, some of a few KiB, some up to 64 KiB (streamed in small rings). */
static size_t pick_payload(uint64_t *rng)
{
    uint64_t r = mix(rng);
    size_t room = MAX_MESSAGE - sizeof(struct stamp);
    switch (r % 4) {
    case 0:
    case 1:
        return (size_t)(r >> 8) % 256;
    case 2:
        return (size_t)(r >> 8) % 4096;
    default:
        return (size_t)(r >> 8) % (room + 1);
    }
}

static size_t make_message(unsigned char *buf, uint32_t producer, uint64_t seq, size_t payload)
{
    struct stamp s = {.producer = producer, .length = (uint32_t)payload, .seq = seq};
    for (size_t i = 0; i < payload; i++)
        buf[sizeof(s) + i] = (unsigned char)(seq * 131 + i * 7 + producer);
    s.checksum = fnv1a(buf + sizeof(s), payload);
    memcpy(buf, &s, sizeof(s));
    return sizeof(s) + payload;
}

static int fail_rc(struct board *board, uint32_t code, int rc)
{
    uint32_t none = 0;
    if (atomic_compare_exchange_strong(&board->failure, &none, code))
        atomic_store(&board->failure_rc, rc);
    return (int)code;
}

static int fail(struct board *board, uint32_t code)
{
    return fail_rc(board, code, 0);
}

static int produce(void *arg)
{
    const struct role *r = arg;
    struct board *b = r->board;
    static unsigned char buf[MAX_MESSAGE];
    uint64_t rng = r->seed;
    while (!atomic_load(&b->stop)) {
        uint64_t seq = atomic_load(&b->next_seq[r->index]);
        if (seq >= SEQ_LIMIT)
            return fail(b, 10);
        /* A kill from here on may leave seq committed but unconfirmed: never reuse it. */
        atomic_store(&b->state[r->index][seq], S_ATTEMPTED);
        atomic_store(&b->next_seq[r->index], seq + 1);
        size_t len = make_message(buf, r->index, seq, pick_payload(&rng));
        int rc = mproc_queue_put(r->queue, buf, len, 20000);
        if (rc != 0)
            return fail_rc(b, 11, rc);
        atomic_store(&b->state[r->index][seq], S_ATTEMPTED | S_CONFIRMED);
    }
    return 0;
}

static int consume(void *arg)
{
    const struct role *r = arg;
    struct board *b = r->board;
    static unsigned char buf[MAX_MESSAGE];
    uint64_t last[PRODUCERS];
    bool any[PRODUCERS] = {false};
    for (;;) {
        size_t len;
        int rc = mproc_queue_get_into(r->queue, buf, sizeof(buf), &len, 20000);
        if (rc == MPROC_ECLOSED)
            return 0;
        /* queue.h: every producer gone (they stop before the close); more may come. */
        if (rc == -EPIPE)
            continue;
        if (rc != 0)
            return fail_rc(b, 20, rc);
        struct stamp s;
        if (len < sizeof(s))
            return fail(b, 21);
        memcpy(&s, buf, sizeof(s));
        if (s.producer >= PRODUCERS || s.seq >= SEQ_LIMIT || len != sizeof(s) + s.length ||
            fnv1a(buf + sizeof(s), s.length) != s.checksum)
            return fail(b, 22); /* corrupt */
        if (any[s.producer] && s.seq <= last[s.producer])
            return fail(b, 23); /* one producer's messages out of order */
        any[s.producer] = true;
        last[s.producer] = s.seq;
        atomic_fetch_add(&b->seen[s.producer][s.seq], 1);
        if (r->joinable) {
            if (mproc_queue_task_done(r->queue) != 0)
                return fail(b, 24);
            atomic_fetch_add(&b->done_logged, 1);
        }
    }
}

/*
 * Shared memory objects in /dev/shm (regular files), but for Criterion's own
 * arenas: other users of the machine make folders there (test file systems)
 * for minutes, which are no shared memory segments.
 */
static int count_shm_objects(void)
{
    DIR *dir = opendir("/dev/shm");
    cr_assert_not_null(dir);
    int n = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)))
        n += entry->d_type == DT_REG && strncmp(entry->d_name, "bxf", 3) != 0;
    closedir(dir);
    return n;
}

static uint64_t env_number(const char *name, uint64_t fallback)
{
    const char *text = getenv(name);
    return text && *text ? strtoull(text, NULL, 0) : fallback;
}

struct round_stats {
    unsigned producer_kills;
    unsigned consumer_kills;
};

/* Kills one of the eight every 2-6 ms and starts it again, for ROUND_MS. */
static void storm(struct role *roles, mproc_process **procs, uint64_t *rng,
                  struct round_stats *stats)
{
    int64_t end = test_now_ms() + ROUND_MS;
    while (test_now_ms() < end) {
        usleep((useconds_t)(2000 + mix(rng) % 4001));
        unsigned victim = (unsigned)(mix(rng) % (PRODUCERS + CONSUMERS));
        mproc_process_kill(procs[victim]);
        int code = test_join_code(procs[victim]);
        cr_assert(code == -SIGKILL, "process %u ended with %d before its kill (failure %u)", victim,
                  code, atomic_load(&roles[0].board->failure));
        if (victim < PRODUCERS)
            stats->producer_kills++;
        else
            stats->consumer_kills++;
        roles[victim].seed = mix(rng);
        procs[victim] = test_start(victim < PRODUCERS ? produce : consume, &roles[victim]);
    }
}

/* Every message at most once; every confirmed one exactly once but for killed takers. */
static uint64_t check_delivery(struct board *b, unsigned round, const struct round_stats *stats)
{
    uint64_t missing = 0, received = 0;
    for (unsigned p = 0; p < PRODUCERS; p++) {
        uint64_t end = atomic_load(&b->next_seq[p]);
        for (uint64_t seq = 0; seq < SEQ_LIMIT; seq++) {
            uint8_t times = atomic_load(&b->seen[p][seq]);
            uint8_t state = atomic_load(&b->state[p][seq]);
            cr_assert_leq(times, 1, "round %u: producer %u seq %llu received %u times", round, p,
                          (unsigned long long)seq, times);
            cr_assert(!times || (state & S_ATTEMPTED),
                      "round %u: producer %u seq %llu received but never put", round, p,
                      (unsigned long long)seq);
            if ((state & S_CONFIRMED) && !times)
                missing++;
            received += times;
            if (seq >= end && !times)
                break;
        }
    }
    /* queue.h: a message is lost only with a process that died after taking it. */
    cr_assert_leq(missing, stats->consumer_kills,
                  "round %u: %llu confirmed messages lost, %u consumers killed", round,
                  (unsigned long long)missing, stats->consumer_kills);
    return received;
}

/* After the drain the queue holds nothing: size, empty and full must say so. */
static void check_counts(mproc_queue *queue, unsigned round)
{
    size_t size = 99;
    bool empty = false, full = true;
    cr_assert_eq(mproc_queue_size(queue, &size), 0);
    cr_assert_eq(mproc_queue_empty(queue, &empty), 0);
    cr_assert_eq(mproc_queue_full(queue, &full), 0);
    cr_assert_eq(size, 0, "round %u: size %zu after every consumer drained to ECLOSED", round,
                 size);
    cr_assert(empty, "round %u: not empty after the drain", round);
    cr_assert(!full, "round %u: full after the drain", round);
}

/*
 * The joinable count after the drain: what is unfinished is exactly what
 * killed consumers took and never marked done. join() says -EPIPE for that
 * (never "wait": nothing can finish any more), and 0 once the rest is marked
 * done here; the number this process marks done stays within what the kills
 * can explain.
 */
static void check_joinable(mproc_queue *queue, const struct board *b, uint64_t received,
                           unsigned round, const struct round_stats *stats)
{
    int rc = mproc_queue_join(queue, 0);
    cr_assert(rc == 0 || rc == -EPIPE, "round %u: join() after the drain gave %d", round, rc);
    if (stats->consumer_kills == 0)
        cr_assert_eq(rc, 0, "round %u: join() %d with no consumer killed", round, rc);
    uint64_t extra = 0;
    while (mproc_queue_task_done(queue) == 0)
        extra++;
    uint64_t logged = atomic_load(&b->done_logged);
    /* received - logged: recorded but killed before task_done() returned (or after). */
    uint64_t low =
        received > logged + stats->consumer_kills ? received - logged - stats->consumer_kills : 0;
    uint64_t high = received - logged + stats->consumer_kills;
    cr_assert(extra >= low && extra <= high,
              "round %u: %llu tasks left unfinished, expected %llu to %llu", round,
              (unsigned long long)extra, (unsigned long long)low, (unsigned long long)high);
    cr_assert_eq(mproc_queue_join(queue, 0), 0, "round %u: join() after marking all done", round);
}

static void run_round(struct board *b, unsigned round, uint64_t *rng)
{
    memset((void *)b, 0, sizeof(*b));
    bool joinable = round % 2 == 1;
    static const size_t rings[] = {16384, 65536, 262144};
    size_t capacity = rings[mix(rng) % 3];
    size_t max_messages = mix(rng) % 3 == 0 ? 32 : 0;
    mproc_queue *queue;
    int rc = joinable ? mproc_joinable_queue_create(&queue, max_messages, capacity)
                      : mproc_queue_create(&queue, max_messages, capacity);
    cr_assert_eq(rc, 0);

    struct role roles[PRODUCERS + CONSUMERS];
    mproc_process *procs[PRODUCERS + CONSUMERS];
    for (unsigned i = 0; i < PRODUCERS + CONSUMERS; i++) {
        roles[i] = (struct role){.board = b,
                                 .queue = queue,
                                 .joinable = joinable,
                                 .index = i < PRODUCERS ? i : i - PRODUCERS,
                                 .seed = mix(rng)};
        procs[i] = test_start(i < PRODUCERS ? produce : consume, &roles[i]);
    }
    struct round_stats stats = {0};
    storm(roles, procs, rng, &stats);

    /* Producers finish, then the consumers drain to MPROC_ECLOSED. */
    atomic_store(&b->stop, 1);
    for (unsigned i = 0; i < PRODUCERS; i++)
        cr_assert_eq(test_join_code(procs[i]), 0,
                     "round %u: producer %u failed (failure %u, rc %d)", round, i,
                     atomic_load(&b->failure), atomic_load(&b->failure_rc));
    cr_assert_eq(mproc_queue_close(queue), 0);
    for (unsigned i = PRODUCERS; i < PRODUCERS + CONSUMERS; i++)
        cr_assert_eq(test_join_code(procs[i]), 0,
                     "round %u: consumer %u failed (failure %u, rc %d)", round, i - PRODUCERS,
                     atomic_load(&b->failure), atomic_load(&b->failure_rc));

    uint64_t received = check_delivery(b, round, &stats);
    check_counts(queue, round);
    if (joinable)
        check_joinable(queue, b, received, round, &stats);
    cr_log_info("round %u (%s, ring %zu, max %zu): %llu received, %u producer and %u consumer "
                "kills",
                round, joinable ? "joinable" : "plain", capacity, max_messages,
                (unsigned long long)received, stats.producer_kills, stats.consumer_kills);
    cr_assert_eq(mproc_queue_destroy(&queue), 0);
}

Test(queue_kill, four_by_four_killed_every_few_ms_counts_exact, .timeout = 240)
{
    uint64_t seed = env_number("MPROC_TEST_SEED", (uint64_t)time(NULL) ^ (uint64_t)getpid());
    unsigned rounds = (unsigned)env_number("MPROC_TEST_ROUNDS", DEFAULT_ROUNDS);
    fprintf(stderr, "queue_kill: seed %llu (replay: MPROC_TEST_SEED=%llu), %u rounds\n",
            (unsigned long long)seed, (unsigned long long)seed, rounds);
    int fds = test_count_fds();
    int shm = count_shm_objects();
    struct board *b =
        mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(b, MAP_FAILED);
    for (unsigned round = 0; round < rounds; round++) {
        /* Each round its own stream: its queue's shape replays whatever the kills did before. */
        uint64_t rng = seed ^ (0x9e3779b97f4a7c15ull * (round + 1));
        run_round(b, round, &rng);
    }
    munmap(b, sizeof(*b));
    /* Nothing left: no process, zombie, descriptor or /dev/shm entry. */
    cr_assert_eq(test_count_children(), 0);
    cr_assert_eq(test_count_zombie_children(), 0);
    cr_assert_eq(test_count_fds(), fds);
    /* Other suites (and other users of the machine) may hold an entry for a moment. */
    int64_t until = test_now_ms() + 5000;
    while (count_shm_objects() != shm && test_now_ms() < until)
        usleep(50000);
    cr_assert_eq(count_shm_objects(), shm);
}

/* ---- a consumer killed part way through a streamed message ---- */

#define BIG_MESSAGE (1024 * 1024)

static int put_big(void *arg)
{
    static unsigned char buf[BIG_MESSAGE];
    memset(buf, 0x5a, sizeof(buf));
    return mproc_queue_put(arg, buf, sizeof(buf), 60000) == 0 ? 0 : 1;
}

/* Takes messages (and marks them done) until the queue is closed. */
static int take_all(void *arg)
{
    for (;;) {
        void *data;
        size_t len;
        int rc = mproc_queue_get(arg, &data, &len, 60000);
        if (rc == MPROC_ECLOSED)
            return 0;
        if (rc != 0)
            return 1;
        free(data);
        if (mproc_queue_task_done(arg) != 0)
            return 2;
    }
}

static void wait_state(pid_t pid, char want)
{
    /* Seen once is enough: a sleeper wakes now and then to look at its peers (R for a moment). */
    int64_t until = test_now_ms() + 10000;
    char state;
    while ((state = test_process_state(pid)) != want && test_now_ms() < until)
        usleep(10000);
    cr_assert_eq(state, want, "pid %d never reached state %c (last seen: %c)", (int)pid, want,
                 state ? state : '-');
}

/*
 * The message the dead consumer had started is skipped by the next one: it
 * was counted as put and can never be marked done, so join() must say
 * -EPIPE, not wait (before the fix: -ETIMEDOUT with a 0 timeout, a hang
 * without one). A producer stopped mid-message holds the stream open while
 * the first consumer, holding part of it, is killed.
 */
Test(queue_kill, consumer_killed_mid_stream_makes_join_say_epipe, .timeout = 120)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_joinable_queue_create(&queue, 0, 16384), 0);
    mproc_process *producer = test_start(put_big, queue);
    pid_t producer_pid = mproc_process_pid(producer);
    /* The ring fills long before 1 MiB: the producer sleeps mid-message. */
    usleep(300000);
    wait_state(producer_pid, 'S');
    cr_assert_eq(mproc_process_signal(producer, SIGSTOP), 0);
    wait_state(producer_pid, 'T');

    mproc_process *first = test_start(take_all, queue);
    pid_t first_pid = mproc_process_pid(first);
    /* It takes what is in the ring, then waits for the rest of the message. */
    usleep(300000);
    wait_state(first_pid, 'S');
    cr_assert_eq(mproc_process_kill(first), 0);
    cr_assert_eq(test_join_code(first), -SIGKILL);

    cr_assert_eq(mproc_process_signal(producer, SIGCONT), 0);
    mproc_process *second = test_start(take_all, queue);
    cr_assert_eq(test_join_code(producer), 0);
    cr_assert_eq(mproc_queue_close(queue), 0);
    cr_assert_eq(test_join_code(second), 0);

    size_t size = 99;
    cr_assert_eq(mproc_queue_size(queue, &size), 0);
    cr_assert_eq(size, 0);
    cr_assert_eq(mproc_queue_join(queue, 0), -EPIPE);
    /* Marked done by someone else, the count comes back to zero. */
    cr_assert_eq(mproc_queue_task_done(queue), 0);
    cr_assert_eq(mproc_queue_join(queue, 0), 0);
    cr_assert_eq(mproc_queue_destroy(&queue), 0);
}

static int get_expect_closed(void *arg)
{
    void *data;
    size_t len;
    return mproc_queue_get(arg, &data, &len, 60000) == MPROC_ECLOSED ? 0 : 1;
}

/*
 * The queue closed while a consumer waits for the rest of a streamed
 * message, then its producer killed: the consumer must find the stream
 * abandoned and return MPROC_ECLOSED (before the fix it spun forever on the
 * closed queue's waits, holding get_lock, and never looked at the producer).
 */
Test(queue_kill, producer_killed_mid_stream_after_close_ends_the_get, .timeout = 120)
{
    mproc_queue *queue;
    cr_assert_eq(mproc_queue_create(&queue, 0, 16384), 0);
    mproc_process *producer = test_start(put_big, queue);
    usleep(300000);
    wait_state(mproc_process_pid(producer), 'S');
    cr_assert_eq(mproc_process_signal(producer, SIGSTOP), 0);
    wait_state(mproc_process_pid(producer), 'T');

    mproc_process *consumer = test_start(get_expect_closed, queue);
    usleep(300000);
    wait_state(mproc_process_pid(consumer), 'S');
    cr_assert_eq(mproc_queue_close(queue), 0);
    cr_assert_eq(mproc_process_kill(producer), 0);
    cr_assert_eq(test_join_code(producer), -SIGKILL);

    int rc = mproc_process_join(consumer, 15000);
    if (rc == -ETIMEDOUT)
        mproc_process_kill(consumer);
    cr_assert_eq(rc, 0, "the consumer still waits 15 s after the close and the kill");
    cr_assert_eq(test_join_code(consumer), 0);
    cr_assert_eq(mproc_queue_destroy(&queue), 0);
}
