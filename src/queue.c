/*
 * queue.c: a multi-producer, multi-consumer byte-message FIFO in shared
 * memory that survives the death of any process using it.
 *
 * Layout (one memfd mapping):
 *
 *   +------------------------------+  offset 0
 *   | struct queue_shared          |  locks, counters, wake words, peer table
 *   +------------------------------+  ring_offset (page aligned)
 *   | ring: capacity bytes         |  records, each 16-byte aligned:
 *   |  [word|total][payload][pad]  |    word  = flags << 56 | fragment length
 *   |  ...                         |    total = length of the whole message
 *   +------------------------------+
 *
 * head and tail are monotonic byte counters; the ring index is counter &
 * mask. Producers serialise on put_lock and consumers on get_lock (a
 * two-lock queue: a producer and a consumer never wait for each other's
 * lock). Both are robust mutexes.
 *
 * Crash safety comes from committing with one store: a producer writes a
 * record past tail and then publishes it by advancing tail; a consumer
 * copies a record out and then releases it by advancing head. A process
 * killed before its store leaves nothing visible (a half-written record is
 * overwritten by the next producer; a half-read one is read again by the next
 * consumer), and the next locker of its mutex gets EOWNERDEAD, for which
 * there is nothing to repair.
 *
 * A record never wraps: when it does not fit before the end of the ring the
 * producer fills the rest with a PAD record. A message larger than half the
 * ring is streamed as FIRST, middle and LAST fragments while its producer
 * keeps put_lock, and its consumer keeps get_lock. If the producer dies or
 * gives up mid-stream, the consumer sees put_lock free (or owner-dead) with
 * no LAST coming, or a new FIRST, and drops the partial message; fragments
 * without an open message are skipped.
 *
 * Wake protocol: a waiter spins briefly, then raises a *_waiting flag,
 * re-checks, and sleeps on a sequence word with a futex. The other side
 * wakes sleepers only if it finds the flag raised, and clears it, so the fast
 * path makes no system call and a sleep costs one wake-up. Store-then-load
 * on both sides is sequentially consistent (Dekker), so no wake-up is lost.
 * A producer that waits for room sleeps until a quarter of the ring is free
 * (rechecking its own need every 10 ms), so that a full queue does not
 * ping-pong a wake-up per message.
 *
 * Dead peers: each process registers in a small table (pid + start time) as
 * producer or consumer on its first put or get. A waiter checks every
 * LIVENESS_SLICE_MS whether any producer (or consumer) is still alive, and
 * returns -EPIPE when none is and nothing is left to wait for.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <mproc/queue.h>

#include <errno.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUEUE_MAGIC          0x6d707175u /* "mpqu" */
#define QUEUE_LAYOUT_VERSION 3
#define MAX_PEERS            128
#define RECORD_ALIGN         16
#define RECORD_HEADER        16
#define MIN_CAPACITY         ((uint64_t)4096)
#define MAX_CAPACITY         ((uint64_t)1 << 40)
#define FLAG_SHIFT           56
#define LENGTH_MASK          (((uint64_t)1 << FLAG_SHIFT) - 1)
/* About 50 us of pause instructions: longer than a wake-up across CPUs costs. */
#define SPIN_LIMIT        2048
#define LIVENESS_SLICE_MS 100

enum record_flag { F_FIRST = 1, F_LAST = 2, F_PAD = 4 };
enum peer_role { ROLE_PRODUCER = 1, ROLE_CONSUMER = 2 };

/*
 * A slot's taken word (joinable): messages taken and not yet marked done, and
 * TAKING while a get that has added to it is not yet committed. One atomic
 * operation sets both, so a repairer knows whether to undo the addition.
 */
#define TAKING     ((uint64_t)1 << 63)
#define TAKEN_MASK (TAKING - 1)

struct peer_slot {
    _Atomic int32_t pid;
    _Atomic uint32_t roles;
    _Atomic uint64_t start_time;
    _Atomic uint64_t taken;
};

/* Padded on purpose: each side's fields own their cache line. */
struct queue_shared { // NOLINT(clang-analyzer-optin.performance.Padding)
    _Atomic uint32_t magic;
    uint32_t version;
    uint64_t capacity;
    uint64_t max_messages;
    uint64_t ring_offset;
    uint32_t joinable;
    _Atomic uint32_t closed;
    _Atomic uint32_t had_producer;
    _Atomic uint32_t had_consumer;

    /*
     * Producers' line: written under put_lock. put_count runs ahead of tail
     * while a put is under way; the journal (what the put will commit, and
     * put_count before it) lets the next locker undo that if the producer
     * died before its commit.
     */
    alignas(64) pthread_mutex_t put_lock;
    _Atomic uint64_t tail;
    _Atomic uint64_t put_count;
    uint64_t seen_head; /* head as producers last read it: room is at least that */
    _Atomic uint64_t journal_tail;
    _Atomic uint64_t journal_put_count;

    /* Consumers' line: written under get_lock, journalled as the producers' is. */
    alignas(64) pthread_mutex_t get_lock;
    _Atomic uint64_t head;
    _Atomic uint64_t get_count;
    uint64_t seen_tail; /* tail as consumers last read it: data is at least that */
    _Atomic uint64_t journal_head;
    _Atomic uint64_t journal_get_count;
    _Atomic uint64_t journal_taken; /* messages added to the taker's slot */
    _Atomic int32_t journal_slot;   /* the taker's slot, -1: none */

    alignas(64) _Atomic uint32_t data_seq;
    _Atomic uint32_t consumers_waiting; /* flag: a consumer may sleep on data_seq */

    alignas(64) _Atomic uint32_t space_seq;
    _Atomic uint32_t producers_waiting; /* flag: a producer may sleep on space_seq */
    _Atomic uint64_t space_wanted;      /* bytes the latest sleeping producer waits for */

    /* Joinable: unfinished = put_count - done_count, so it follows put_count's repairs. */
    alignas(64) _Atomic uint64_t done_count;
    _Atomic uint32_t done_seq;
    _Atomic uint32_t joiners_waiting;
    /*
     * Flag: a consumer died part way through a streamed message, which the
     * next one skipped. It was counted as put and no one holds it: it can
     * never be marked done, as one a dead taker held.
     */
    _Atomic uint32_t lost_with_taker;

    alignas(64) struct peer_slot peers[MAX_PEERS];
};

struct mproc_queue {
    uint32_t magic;
    struct mproc__region region;
    struct queue_shared *shared;
    unsigned char *ring;
    uint64_t capacity;
    uint64_t mask;
    /*
     * Registration of the process using this handle, reset after fork: fork
     * generation << 32 | roles << 16 | slot + 1, in one word because several
     * threads may register through the same handle at once.
     */
    _Atomic uint64_t registration;
};

struct record {
    uint64_t word;
    uint64_t total;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static uint64_t align_record(uint64_t n)
{
    return (n + RECORD_ALIGN - 1) & ~(uint64_t)(RECORD_ALIGN - 1);
}

static uint64_t record_size(uint64_t payload)
{
    return align_record(RECORD_HEADER + payload);
}

static uint64_t round_up_pow2(uint64_t n)
{
    uint64_t p = MIN_CAPACITY;
    while (p < n)
        p <<= 1;
    return p;
}

static bool valid(const mproc_queue *queue)
{
    return queue && queue->magic == QUEUE_MAGIC;
}

/* ---- setup ---- */

static void bind_handle(mproc_queue *queue)
{
    queue->magic = QUEUE_MAGIC;
    queue->shared = queue->region.addr;
    queue->capacity = queue->shared->capacity;
    queue->mask = queue->capacity - 1;
    queue->ring = (unsigned char *)queue->region.addr + queue->shared->ring_offset;
    atomic_store(&queue->registration, (uint64_t)mproc__fork_generation() << 32);
}

static int init_shared(struct queue_shared *shared, uint64_t capacity, uint64_t max_messages,
                       uint64_t ring_offset, bool joinable)
{
    shared->capacity = capacity;
    shared->max_messages = max_messages;
    shared->ring_offset = ring_offset;
    shared->joinable = joinable;
    atomic_store(&shared->journal_slot, -1);
    int rc = mproc__mutex_init(&shared->put_lock);
    if (rc == 0)
        rc = mproc__mutex_init(&shared->get_lock);
    shared->version = QUEUE_LAYOUT_VERSION;
    /* Last: a queue that attaches sees the magic only once the rest is set. */
    atomic_store_explicit(&shared->magic, QUEUE_MAGIC, memory_order_release);
    return rc;
}

static int create_queue(mproc_queue **out, size_t max_messages, size_t capacity, bool joinable)
{
    if (!out)
        return -EINVAL;
    uint64_t ring = round_up_pow2(capacity ? capacity : MPROC_QUEUE_DEFAULT_CAPACITY);
    if (ring > MAX_CAPACITY)
        return -EINVAL;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t ring_offset =
        (sizeof(struct queue_shared) + (uint64_t)page - 1) & ~(uint64_t)(page - 1);
    mproc_queue *queue = calloc(1, sizeof(*queue));
    if (!queue)
        return -ENOMEM;
    int rc = mproc__region_create(&queue->region, ring_offset + ring, "mproc-queue");
    if (rc == 0)
        rc = init_shared(queue->region.addr, ring, max_messages, ring_offset, joinable);
    if (rc < 0) {
        mproc__region_release(&queue->region);
        free(queue);
        return rc;
    }
    bind_handle(queue);
    *out = queue;
    return 0;
}

int mproc_queue_create(mproc_queue **out, size_t max_messages, size_t capacity)
{
    return create_queue(out, max_messages, capacity, false);
}

int mproc_simple_queue_create(mproc_queue **out)
{
    return create_queue(out, 0, 0, false);
}

int mproc_joinable_queue_create(mproc_queue **out, size_t max_messages, size_t capacity)
{
    return create_queue(out, max_messages, capacity, true);
}

int mproc_queue_fd(const mproc_queue *queue, int *fd)
{
    if (!valid(queue) || !fd)
        return -EINVAL;
    *fd = queue->region.fd;
    return 0;
}

int mproc_queue_attach(mproc_queue **out, int fd)
{
    if (!out || fd < 0)
        return -EINVAL;
    mproc_queue *queue = calloc(1, sizeof(*queue));
    if (!queue)
        return -ENOMEM;
    int rc = mproc__region_attach(&queue->region, fd);
    if (rc == 0) {
        const struct queue_shared *shared = queue->region.addr;
        bool fits = queue->region.size >= sizeof(*shared) &&
                    atomic_load_explicit(&shared->magic, memory_order_acquire) == QUEUE_MAGIC &&
                    shared->version == QUEUE_LAYOUT_VERSION &&
                    shared->ring_offset + shared->capacity == queue->region.size;
        rc = fits ? 0 : -EINVAL;
    }
    if (rc < 0) {
        mproc__region_release(&queue->region);
        free(queue);
        return rc;
    }
    bind_handle(queue);
    *out = queue;
    return 0;
}

int mproc_queue_destroy(mproc_queue **queuep)
{
    if (!queuep || !valid(*queuep))
        return -EINVAL;
    mproc_queue *queue = *queuep;
    mproc__region_release(&queue->region);
    queue->magic = 0;
    free(queue);
    *queuep = NULL;
    return 0;
}

/* ---- peers ---- */

static bool slot_alive(const struct peer_slot *slot)
{
    pid_t pid = atomic_load(&slot->pid);
    return pid > 0 && mproc__pid_alive(pid, atomic_load(&slot->start_time));
}

/* Finds this process's slot, or claims a free or dead one; -1 if the table is full. */
static int claim_slot(struct queue_shared *shared, pid_t self, uint64_t start_time)
{
    for (int i = 0; i < MAX_PEERS; i++) {
        if (atomic_load(&shared->peers[i].pid) == self &&
            atomic_load(&shared->peers[i].start_time) == start_time)
            return i;
    }
    for (int i = 0; i < MAX_PEERS; i++) {
        struct peer_slot *slot = &shared->peers[i];
        int32_t pid = atomic_load(&slot->pid);
        if (pid != 0 && (slot_alive(slot) || atomic_load(&slot->taken) != 0))
            continue; /* a dead process's unfinished messages keep its slot for join() */
        if (!atomic_compare_exchange_strong(&slot->pid, &pid, self))
            continue;
        atomic_store(&slot->roles, 0);
        atomic_store(&slot->taken, 0);
        atomic_store(&slot->start_time, start_time);
        return i;
    }
    return -1;
}

static uint64_t pack_registration(unsigned generation, unsigned roles, int slot)
{
    return (uint64_t)generation << 32 | (uint64_t)(roles & 0xffff) << 16 |
           (uint64_t)(uint16_t)(slot + 1);
}

/* This process's slot in the peer table, -1 if it has none (yet, or since fork). */
static int handle_slot(const mproc_queue *queue)
{
    uint64_t word = atomic_load(&queue->registration);
    if ((unsigned)(word >> 32) != mproc__fork_generation())
        return -1;
    return (int)(word & 0xffff) - 1;
}

/*
 * Records that this process puts (or takes). Cheap after the first call in a
 * process: the handle caches it, and forgets it in a child after fork.
 */
static void register_role(mproc_queue *queue, unsigned role)
{
    unsigned generation = mproc__fork_generation();
    uint64_t word = atomic_load(&queue->registration);
    bool current = (unsigned)(word >> 32) == generation;
    unsigned roles = current ? (unsigned)(word >> 16) & 0xffff : 0;
    if (roles & role)
        return;
    struct queue_shared *shared = queue->shared;
    int slot = current ? (int)(word & 0xffff) - 1 : -1;
    if (slot < 0) {
        pid_t self = getpid();
        /* Another thread claiming at once finds this process's slot, or a second one. */
        slot = claim_slot(shared, self, mproc__pid_start_time(self));
    }
    /* With a full table this process is not watched: waiters may wait longer, never less. */
    if (slot >= 0)
        atomic_fetch_or(&shared->peers[slot].roles, role);
    atomic_store(role == ROLE_PRODUCER ? &shared->had_producer : &shared->had_consumer, 1);
    /* Merge with what other threads registered meanwhile; keep the slot one of them set. */
    for (;;) {
        current = (unsigned)(word >> 32) == generation;
        unsigned have = current ? (unsigned)(word >> 16) & 0xffff : 0;
        int have_slot = current ? (int)(word & 0xffff) - 1 : -1;
        uint64_t next =
            pack_registration(generation, have | role, have_slot >= 0 ? have_slot : slot);
        if (have_slot >= 0 && slot >= 0 && have_slot != slot)
            atomic_fetch_or(&shared->peers[have_slot].roles, role);
        if (atomic_compare_exchange_weak(&queue->registration, &word, next))
            return;
    }
}

/* Whether some process that registered in role may still act: false only when all have died. */
static bool role_alive(const struct queue_shared *shared, unsigned role)
{
    for (int i = 0; i < MAX_PEERS; i++) {
        const struct peer_slot *slot = &shared->peers[i];
        if ((atomic_load(&slot->roles) & role) && slot_alive(slot))
            return true;
    }
    return false;
}

/* Whether some process has ever registered in role: only then can they all be gone. */
static bool watched(const struct queue_shared *shared, unsigned role)
{
    return atomic_load(role == ROLE_PRODUCER ? &shared->had_producer : &shared->had_consumer);
}

static bool role_gone(const struct queue_shared *shared, unsigned role)
{
    return watched(shared, role) && !role_alive(shared, role);
}

/* ---- locking and waking ---- */

/*
 * A producer died holding put_lock. tail is what it committed; put_count may
 * count a message whose tail store never happened: set it back.
 */
static void repair_puts(struct queue_shared *shared)
{
    if (atomic_load(&shared->tail) != atomic_load(&shared->journal_tail))
        atomic_store(&shared->put_count, atomic_load(&shared->journal_put_count));
}

/*
 * A consumer died holding get_lock: the same for get_count, and for what it
 * added to its slot's taken count (kept if its head store happened, undone if
 * not). A journal it did not finish still names the head already committed,
 * and then nothing was changed yet: its TAKING bit is not set.
 */
static void repair_gets(struct queue_shared *shared)
{
    bool committed = atomic_load(&shared->head) == atomic_load(&shared->journal_head);
    if (!committed)
        atomic_store(&shared->get_count, atomic_load(&shared->journal_get_count));
    int32_t slot = atomic_load(&shared->journal_slot);
    if (slot < 0 || slot >= MAX_PEERS || !(atomic_load(&shared->peers[slot].taken) & TAKING))
        return;
    uint64_t undo = TAKING + (committed ? 0 : atomic_load(&shared->journal_taken));
    atomic_fetch_sub(&shared->peers[slot].taken, undo);
}

typedef void (*repair_fn)(struct queue_shared *shared);

static int lock_side(struct queue_shared *shared, pthread_mutex_t *mutex, repair_fn repair,
                     int64_t deadline)
{
    int rc = mproc__mutex_lock(mutex, deadline);
    if (rc == -EOWNERDEAD) {
        repair(shared);
        pthread_mutex_consistent(mutex);
        rc = 0;
    }
    return rc;
}

/* Repairs a side whose lock a dead process holds; a live holder is left alone. */
static void recover_side(struct queue_shared *shared, pthread_mutex_t *mutex, repair_fn repair)
{
    int rc = pthread_mutex_trylock(mutex);
    if (rc == EOWNERDEAD) {
        repair(shared);
        pthread_mutex_consistent(mutex);
    }
    if (rc == 0 || rc == EOWNERDEAD)
        pthread_mutex_unlock(mutex);
}

/* Makes the counts exact before they are reported: no dead process's half-done step in them. */
static void recover(struct queue_shared *shared)
{
    recover_side(shared, &shared->put_lock, repair_puts);
    recover_side(shared, &shared->get_lock, repair_gets);
}

/*
 * *waiting is a flag, "someone may be asleep on seq": a waiter sets it before
 * each sleep, and the waker that finds it set clears it and wakes them all.
 * So a sleep costs one wake-up, however many messages are put before the
 * sleeper is back on a CPU.
 */
static void wake(_Atomic uint32_t *waiting, _Atomic uint32_t *seq)
{
    if (atomic_load(waiting) == 0 || atomic_exchange(waiting, 0) == 0)
        return;
    atomic_fetch_add(seq, 1);
    mproc__futex_wake(seq, INT32_MAX);
}

static void wake_consumers(struct queue_shared *shared)
{
    wake(&shared->consumers_waiting, &shared->data_seq);
}

/*
 * Wakes sleeping producers once there is room worth waking for (what the
 * latest sleeper wants: a quarter of the ring or more), or a free message
 * slot. Waking on every message would make a full queue ping-pong one system
 * call per message; sleepers recheck on their own for smaller room.
 */
static void wake_producers(struct queue_shared *shared)
{
    if (atomic_load(&shared->producers_waiting) == 0)
        return;
    uint64_t used = atomic_load(&shared->tail) - atomic_load(&shared->head);
    uint64_t free_bytes = shared->capacity - used;
    uint64_t enough = atomic_load(&shared->space_wanted);
    bool slot_freed =
        shared->max_messages &&
        atomic_load(&shared->put_count) - atomic_load(&shared->get_count) < shared->max_messages;
    if (free_bytes >= enough || slot_freed)
        wake(&shared->producers_waiting, &shared->space_seq);
}

/* What a waiter waits for: the condition is checked before every sleep. */
typedef bool (*ready_fn)(const struct queue_shared *shared, uint64_t arg);

static bool data_arrived(const struct queue_shared *shared, uint64_t seen_tail)
{
    return atomic_load(&shared->tail) != seen_tail;
}

static bool room_for(const struct queue_shared *shared, uint64_t wanted)
{
    uint64_t used = atomic_load(&shared->tail) - atomic_load(&shared->head);
    bool slot_free =
        !shared->max_messages ||
        atomic_load(&shared->put_count) - atomic_load(&shared->get_count) < shared->max_messages;
    return slot_free && shared->capacity - used >= wanted;
}

/*
 * A wait: sleep until ready(want) (the other side wakes us for that), but
 * accept ready(need) whenever a recheck_ms slice runs out. Producers want a
 * quarter of the ring and need only their record: without that hysteresis a
 * full queue would cost a wake-up per message.
 */
struct wait_spec {
    ready_fn ready;
    uint64_t want;
    uint64_t need;
    _Atomic uint32_t *waiting;
    _Atomic uint32_t *seq;
    unsigned gone_role; /* give up with -EPIPE when every process of it died; 0: never */
    int recheck_ms;     /* 0: sleep until woken (but for liveness checks) */
};

/* The end of the next sleep: the deadline, or sooner to recheck or look for dead peers. */
static int64_t next_slice(const struct queue_shared *shared, const struct wait_spec *w,
                          int64_t deadline)
{
    int slice_ms = w->recheck_ms;
    /*
     * Only wake up to look for dead peers when there are peers to watch: a
     * signal that lands between two slices is not reported as -EINTR, so
     * sleep in one piece when possible.
     */
    if (w->gone_role && watched(shared, w->gone_role) &&
        (!slice_ms || slice_ms > LIVENESS_SLICE_MS))
        slice_ms = LIVENESS_SLICE_MS;
    if (!slice_ms)
        return deadline;
    int64_t slice = mproc__now_ms() + slice_ms;
    return deadline >= 0 && deadline < slice ? deadline : slice;
}

/*
 * Waits as w says, or until the queue closes (0), the deadline passes
 * (-ETIMEDOUT), a signal handler runs (-EINTR), or every process of
 * w->gone_role has died (-EPIPE).
 */
static int wait_until(struct queue_shared *shared, const struct wait_spec *w, int64_t deadline)
{
    for (int i = 0; i < SPIN_LIMIT; i++) {
        if (w->ready(shared, w->want) || atomic_load(&shared->closed))
            return 0;
        cpu_relax();
    }
    int64_t next_liveness = mproc__now_ms() + LIVENESS_SLICE_MS;
    int rc = 0;
    for (;;) {
        uint32_t ticket = atomic_load(w->seq);
        /* Flag, then check: a waker publishes, then looks at the flag (Dekker). */
        atomic_store(w->waiting, 1);
        if (w->ready(shared, w->want) || atomic_load(&shared->closed))
            break;
        rc = mproc__futex_wait(w->seq, ticket, next_slice(shared, w, deadline));
        if (rc == -EINTR)
            break;
        int64_t now = mproc__now_ms();
        if (rc == -ETIMEDOUT && deadline >= 0 && now >= deadline)
            break;
        bool slice_expired = rc == -ETIMEDOUT;
        rc = 0;
        if (slice_expired && w->ready(shared, w->need))
            break;
        /* Only a slice that ran out looks at /proc: a wake-up means someone acted. */
        if (slice_expired && w->gone_role && now >= next_liveness) {
            next_liveness = now + LIVENESS_SLICE_MS;
            if (role_gone(shared, w->gone_role) && !w->ready(shared, w->need)) {
                rc = -EPIPE;
                break;
            }
        }
    }
    /* The flag may stay set: at worst the next waker makes one needless system call. */
    return rc;
}

static int wait_for_data(struct queue_shared *shared, uint64_t tail, unsigned gone_role,
                         int64_t deadline)
{
    struct wait_spec w = {.ready = data_arrived,
                          .want = tail,
                          .need = tail,
                          .waiting = &shared->consumers_waiting,
                          .seq = &shared->data_seq,
                          .gone_role = gone_role};
    return wait_until(shared, &w, deadline);
}

/* Waits for wanted free bytes (and a free message slot in a bounded queue). */
static int wait_for_space(struct queue_shared *shared, uint64_t wanted, int64_t deadline)
{
    uint64_t quarter = shared->capacity / 4;
    struct wait_spec w = {.ready = room_for,
                          .want = wanted > quarter ? wanted : quarter,
                          .need = wanted,
                          .waiting = &shared->producers_waiting,
                          .seq = &shared->space_seq,
                          .gone_role = ROLE_CONSUMER,
                          .recheck_ms = 10};
    atomic_store(&shared->space_wanted, w.want);
    return wait_until(shared, &w, deadline);
}

/* ---- producing ---- */

/* Bytes a record of size rec takes at position tail, with the PAD before it if needed. */
static uint64_t bytes_needed(const mproc_queue *queue, uint64_t tail, uint64_t rec)
{
    uint64_t room = queue->capacity - (tail & queue->mask);
    return rec <= room ? rec : room + rec;
}

static bool has_room(const mproc_queue *queue, uint64_t tail, uint64_t rec)
{
    const struct queue_shared *shared = queue->shared;
    uint64_t head = atomic_load_explicit(&shared->head, memory_order_acquire);
    return queue->capacity - (tail - head) >= bytes_needed(queue, tail, rec);
}

/*
 * has_room() for a holder of put_lock: head only grows, so the last head seen
 * is a safe lower bound, and the consumers' cache line is read again only
 * when that bound says the record does not fit.
 */
static bool has_room_locked(mproc_queue *queue, uint64_t tail, uint64_t rec)
{
    struct queue_shared *shared = queue->shared;
    uint64_t need = bytes_needed(queue, tail, rec);
    if (queue->capacity - (tail - shared->seen_head) >= need)
        return true;
    shared->seen_head = atomic_load_explicit(&shared->head, memory_order_acquire);
    return queue->capacity - (tail - shared->seen_head) >= need;
}

static bool message_slots_full(const struct queue_shared *shared)
{
    return shared->max_messages &&
           atomic_load(&shared->put_count) - atomic_load(&shared->get_count) >=
               shared->max_messages;
}

/* Writes a record at tail (and a PAD before it if needed); returns the new tail. */
static uint64_t write_record(mproc_queue *queue, uint64_t tail, unsigned flags, const void *data,
                             uint64_t len, uint64_t total)
{
    uint64_t pos = tail & queue->mask;
    uint64_t room = queue->capacity - pos;
    uint64_t rec = record_size(len);
    if (rec > room) {
        struct record pad = {.word = (uint64_t)F_PAD << FLAG_SHIFT | (room - RECORD_HEADER)};
        memcpy(queue->ring + pos, &pad, sizeof(pad));
        tail += room;
        pos = 0;
    }
    struct record header = {.word = (uint64_t)flags << FLAG_SHIFT | len, .total = total};
    memcpy(queue->ring + pos, &header, sizeof(header));
    if (len)
        memcpy(queue->ring + pos + RECORD_HEADER, data, len);
    return tail + rec;
}

/*
 * Makes records up to new_tail visible, counting `messages` whole messages.
 * The tail store commits; the journal before it lets repair_puts() undo the
 * count of a producer killed before that store.
 */
static void publish(struct queue_shared *shared, uint64_t new_tail, uint64_t messages)
{
    /* Only holders of put_lock write these: no read-modify-write needed. */
    uint64_t put = atomic_load_explicit(&shared->put_count, memory_order_relaxed);
    atomic_store_explicit(&shared->journal_put_count, put, memory_order_relaxed);
    atomic_store_explicit(&shared->journal_tail, new_tail, memory_order_release);
    if (messages)
        atomic_store_explicit(&shared->put_count, put + messages, memory_order_release);
    atomic_store(&shared->tail, new_tail);
    wake_consumers(shared);
}

static bool fits_in_one_record(const mproc_queue *queue, size_t len)
{
    return len <= queue->capacity / 2 - RECORD_HEADER;
}

/*
 * Waits for room for a record of size rec (and for a free message slot when
 * counting_message), holding put_lock only while it checks. Returns 0 with
 * put_lock held, or an error with it released.
 */
static int lock_with_room(mproc_queue *queue, uint64_t rec, bool counting_message, int timeout_ms,
                          int64_t deadline)
{
    struct queue_shared *shared = queue->shared;
    for (;;) {
        int rc = lock_side(shared, &shared->put_lock, repair_puts, deadline);
        if (rc < 0)
            return rc;
        if (atomic_load(&shared->closed)) {
            pthread_mutex_unlock(&shared->put_lock);
            return MPROC_ECLOSED;
        }
        uint64_t tail = atomic_load(&shared->tail);
        bool full =
            (counting_message && message_slots_full(shared)) || !has_room_locked(queue, tail, rec);
        if (!full)
            return 0;
        uint64_t wanted = bytes_needed(queue, tail, rec);
        pthread_mutex_unlock(&shared->put_lock);
        if (timeout_ms == 0)
            return -EAGAIN;
        rc = wait_for_space(shared, wanted, deadline);
        if (rc < 0)
            return rc;
    }
}

/*
 * Streams a message larger than half the ring as fragments, holding put_lock
 * throughout. If it must give up half-way, it just lets go of put_lock: the
 * consumer sees the stream end without LAST and drops it.
 */
static int put_stream(mproc_queue *queue, const unsigned char *data, size_t len, int timeout_ms,
                      int64_t deadline)
{
    struct queue_shared *shared = queue->shared;
    uint64_t frag_max = queue->capacity / 4 - RECORD_HEADER;
    int rc = lock_with_room(queue, record_size(frag_max), true, timeout_ms, deadline);
    if (rc < 0)
        return rc;
    size_t off = 0;
    while (rc == 0 && off < len) {
        uint64_t chunk = len - off < frag_max ? len - off : frag_max;
        uint64_t tail = atomic_load(&shared->tail);
        if (!has_room_locked(queue, tail, record_size(chunk))) {
            rc = wait_for_space(shared, bytes_needed(queue, tail, record_size(chunk)), deadline);
            if (rc == 0 && atomic_load(&shared->closed))
                rc = MPROC_ECLOSED;
            continue;
        }
        unsigned flags = (off == 0 ? F_FIRST : 0) | (off + chunk == len ? F_LAST : 0);
        tail = write_record(queue, tail, flags, data + off, chunk, len);
        off += chunk;
        publish(shared, tail, flags & F_LAST ? 1 : 0);
    }
    pthread_mutex_unlock(&shared->put_lock);
    return rc;
}

int mproc_queue_put(mproc_queue *queue, const void *data, size_t len, int timeout_ms)
{
    if (!valid(queue) || (!data && len))
        return -EINVAL;
    register_role(queue, ROLE_PRODUCER);
    int64_t deadline = mproc__deadline(timeout_ms);
    if (!fits_in_one_record(queue, len))
        return put_stream(queue, data, len, timeout_ms, deadline);
    struct queue_shared *shared = queue->shared;
    int rc = lock_with_room(queue, record_size(len), true, timeout_ms, deadline);
    if (rc < 0)
        return rc;
    uint64_t tail =
        write_record(queue, atomic_load(&shared->tail), F_FIRST | F_LAST, data, len, len);
    publish(shared, tail, 1);
    pthread_mutex_unlock(&shared->put_lock);
    return 0;
}

int mproc_queue_put_many(mproc_queue *queue, const struct iovec *messages, size_t count,
                         size_t *done, int timeout_ms)
{
    if (!done)
        return -EINVAL;
    *done = 0;
    if (!valid(queue) || (!messages && count))
        return -EINVAL;
    register_role(queue, ROLE_PRODUCER);
    struct queue_shared *shared = queue->shared;
    int64_t deadline = mproc__deadline(timeout_ms);
    while (*done < count) {
        const struct iovec *first = &messages[*done];
        if (!fits_in_one_record(queue, first->iov_len)) {
            int rc = put_stream(queue, first->iov_base, first->iov_len, timeout_ms, deadline);
            if (rc < 0)
                return rc;
            ++*done;
            continue;
        }
        int rc = lock_with_room(queue, record_size(first->iov_len), true, timeout_ms, deadline);
        if (rc < 0)
            return rc;
        /* Write all that fits now, then publish them with one store and one wake-up. */
        uint64_t tail = atomic_load(&shared->tail);
        uint64_t written = 0;
        uint64_t in_queue = atomic_load(&shared->put_count) - atomic_load(&shared->get_count);
        for (size_t i = *done; i < count; i++) {
            const struct iovec *msg = &messages[i];
            bool slot_free = !shared->max_messages || in_queue + written < shared->max_messages;
            if (!fits_in_one_record(queue, msg->iov_len) || !slot_free ||
                !has_room_locked(queue, tail, record_size(msg->iov_len)))
                break;
            tail = write_record(queue, tail, F_FIRST | F_LAST, msg->iov_base, msg->iov_len,
                                msg->iov_len);
            written++;
        }
        publish(shared, tail, written);
        pthread_mutex_unlock(&shared->put_lock);
        *done += written;
    }
    return 0;
}

/* ---- consuming ---- */

/* Where a taken message goes: a fresh allocation, or the caller's buffer. */
struct sink {
    void *buf;
    size_t cap;
    bool allocate;
};

static const struct record *record_at(const mproc_queue *queue, uint64_t head)
{
    return (const struct record *)(queue->ring + (head & queue->mask));
}

static unsigned record_flags(const struct record *rec)
{
    return (unsigned)(rec->word >> FLAG_SHIFT);
}

static uint64_t record_length(const struct record *rec)
{
    return rec->word & LENGTH_MASK;
}

/*
 * Consumes records up to new_head, holding `messages` whole messages (ends of
 * messages, taken or skipped), and wakes producers that wait for room. The
 * head store commits; get_count and the taker's slot (joinable) change just
 * before it, journalled so that repair_gets() can undo them for a consumer
 * killed before that store, or finish them for one killed after.
 */
static void release(mproc_queue *queue, uint64_t new_head, uint64_t messages, bool taken)
{
    struct queue_shared *shared = queue->shared;
    int32_t slot = shared->joinable && taken && messages ? handle_slot(queue) : -1;
    /* Only holders of get_lock write these: no read-modify-write needed. */
    uint64_t got = atomic_load_explicit(&shared->get_count, memory_order_relaxed);
    atomic_store_explicit(&shared->journal_get_count, got, memory_order_relaxed);
    atomic_store_explicit(&shared->journal_taken, messages, memory_order_relaxed);
    atomic_store_explicit(&shared->journal_slot, slot, memory_order_relaxed);
    atomic_store_explicit(&shared->journal_head, new_head, memory_order_release);
    if (messages)
        atomic_store_explicit(&shared->get_count, got + messages, memory_order_release);
    if (slot >= 0)
        atomic_fetch_add(&shared->peers[slot].taken, TAKING + messages);
    atomic_store(&shared->head, new_head);
    if (slot >= 0)
        atomic_fetch_sub(&shared->peers[slot].taken, TAKING);
    wake_producers(shared);
}

/*
 * Skips PAD records and fragments that belong to no open message (left by a
 * producer that died or gave up, or by a consumer that died mid-message).
 * Returns the head of the next FIRST record, or tail if there is none yet.
 */
static uint64_t skip_to_message(mproc_queue *queue, uint64_t head, uint64_t tail)
{
    uint64_t start = head;
    /* A LAST skipped ends a message that was counted as put (its taker died): count it out. */
    uint64_t ends = 0;
    while (head != tail) {
        const struct record *rec = record_at(queue, head);
        unsigned flags = record_flags(rec);
        if (flags & F_FIRST)
            break;
        if (flags & F_PAD) {
            head += RECORD_HEADER + record_length(rec);
            continue;
        }
        ends += (flags & F_LAST) != 0;
        head += record_size(record_length(rec));
    }
    if (ends && queue->shared->joinable)
        atomic_store(&queue->shared->lost_with_taker, 1);
    if (head != start)
        release(queue, head, ends, false);
    return head;
}

static int prepare_sink(struct sink *sink, uint64_t total, size_t *len)
{
    *len = total;
    if (!sink->allocate)
        return total <= sink->cap ? 0 : -EMSGSIZE;
    if (total > SIZE_MAX)
        return -ENOMEM;
    sink->buf = malloc(total ? total : 1);
    return sink->buf ? 0 : -ENOMEM;
}

static void drop_sink(struct sink *sink)
{
    if (sink->allocate) {
        free(sink->buf);
        sink->buf = NULL;
    }
}

/*
 * While a stream is open and nothing new has come: is its producer still at
 * it? It holds put_lock for the whole message, so a free or owner-dead lock,
 * with still nothing new in the ring, means the rest will never come.
 */
static bool stream_abandoned(struct queue_shared *shared, uint64_t tail)
{
    int rc = pthread_mutex_trylock(&shared->put_lock);
    if (rc == EBUSY)
        return false;
    if (rc == EOWNERDEAD) {
        repair_puts(shared);
        pthread_mutex_consistent(&shared->put_lock);
    }
    pthread_mutex_unlock(&shared->put_lock);
    return atomic_load(&shared->tail) == tail;
}

/* A closed queue's waits return at once: a millisecond between looks instead of a spin. */
static void pause_briefly(void)
{
    struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000};
    nanosleep(&ms, NULL);
}

/*
 * Takes a streamed message whose FIRST record is at head, holding get_lock.
 * Returns 0 when complete, 1 when the stream was abandoned (the partial
 * message is dropped; the caller looks for the next one), or an error.
 */
static int take_stream(mproc_queue *queue, uint64_t head, struct sink *sink, size_t *len)
{
    struct queue_shared *shared = queue->shared;
    int rc = prepare_sink(sink, record_at(queue, head)->total, len);
    if (rc < 0)
        return rc;
    unsigned char *dest = sink->buf;
    uint64_t copied = 0;
    bool first = true;
    for (;;) {
        uint64_t tail = atomic_load_explicit(&shared->tail, memory_order_acquire);
        if (head == tail) {
            /* No deadline and no EINTR here: the parts already taken must not be lost. */
            rc = wait_for_data(shared, tail, 0, mproc__now_ms() + LIVENESS_SLICE_MS);
            /* Closed, the wait returns at once: look for the producer every time then. */
            bool closed = atomic_load(&shared->closed);
            if ((rc == -ETIMEDOUT || closed) && stream_abandoned(shared, tail))
                break;
            if (closed)
                pause_briefly();
            continue;
        }
        const struct record *rec = record_at(queue, head);
        unsigned flags = record_flags(rec);
        if (flags & F_PAD) {
            head += RECORD_HEADER + record_length(rec);
            continue;
        }
        if ((flags & F_FIRST) && !first)
            break; /* a new message: ours was abandoned */
        uint64_t frag = record_length(rec);
        if (copied + frag > *len)
            break; /* corrupt: cannot happen with a well-behaved producer */
        memcpy(dest + copied, (const unsigned char *)rec + RECORD_HEADER, frag);
        copied += frag;
        first = false;
        head += record_size(frag);
        release(queue, head, flags & F_LAST ? 1 : 0, true);
        if (flags & F_LAST)
            return 0;
    }
    release(queue, head, 0, false);
    drop_sink(sink);
    return 1;
}

/* Copies the single-record message at head into the sink and consumes it. */
static int take_record(mproc_queue *queue, uint64_t head, struct sink *sink, size_t *len)
{
    const struct record *rec = record_at(queue, head);
    uint64_t n = record_length(rec);
    int rc = prepare_sink(sink, n, len);
    if (rc < 0)
        return rc;
    if (n)
        memcpy(sink->buf, (const unsigned char *)rec + RECORD_HEADER, n);
    release(queue, head + record_size(n), 1, true);
    return 0;
}

/*
 * Locks get_lock with a message at head; returns 0 with the lock held and
 * *head_out set, or an error with it released.
 */
static int lock_with_message(mproc_queue *queue, int timeout_ms, int64_t deadline,
                             uint64_t *head_out)
{
    struct queue_shared *shared = queue->shared;
    for (;;) {
        int rc = lock_side(shared, &shared->get_lock, repair_gets, deadline);
        if (rc < 0)
            return rc;
        /* Read the producers' line only when what was seen of it is used up. */
        uint64_t head = atomic_load_explicit(&shared->head, memory_order_relaxed);
        if (head >= shared->seen_tail)
            shared->seen_tail = atomic_load_explicit(&shared->tail, memory_order_acquire);
        uint64_t tail = shared->seen_tail;
        head = skip_to_message(queue, head, tail);
        if (head != tail) {
            *head_out = head;
            return 0;
        }
        pthread_mutex_unlock(&shared->get_lock);
        if (atomic_load(&shared->closed))
            return MPROC_ECLOSED;
        if (timeout_ms == 0)
            return -EAGAIN;
        rc = wait_for_data(shared, tail, ROLE_PRODUCER, deadline);
        if (rc < 0)
            return rc;
    }
}

static int take(mproc_queue *queue, struct sink *sink, size_t *len, int timeout_ms)
{
    register_role(queue, ROLE_CONSUMER);
    struct queue_shared *shared = queue->shared;
    int64_t deadline = mproc__deadline(timeout_ms);
    for (;;) {
        uint64_t head;
        int rc = lock_with_message(queue, timeout_ms, deadline, &head);
        if (rc < 0)
            return rc;
        if (record_flags(record_at(queue, head)) & F_LAST)
            rc = take_record(queue, head, sink, len);
        else
            rc = take_stream(queue, head, sink, len);
        pthread_mutex_unlock(&shared->get_lock);
        if (rc != 1)
            return rc;
    }
}

int mproc_queue_get(mproc_queue *queue, void **data, size_t *len, int timeout_ms)
{
    if (!valid(queue) || !data || !len)
        return -EINVAL;
    struct sink sink = {.allocate = true};
    int rc = take(queue, &sink, len, timeout_ms);
    *data = rc == 0 ? sink.buf : NULL;
    return rc;
}

int mproc_queue_get_into(mproc_queue *queue, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    if (!valid(queue) || !len || (!buf && cap))
        return -EINVAL;
    struct sink sink = {.buf = buf, .cap = cap};
    return take(queue, &sink, len, timeout_ms);
}

int mproc_queue_get_many(mproc_queue *queue, void *buf, size_t cap, struct iovec *messages,
                         size_t max, size_t *count, int timeout_ms)
{
    if (!count)
        return -EINVAL;
    *count = 0;
    if (!valid(queue) || !messages || max == 0 || (!buf && cap))
        return -EINVAL;
    register_role(queue, ROLE_CONSUMER);
    struct queue_shared *shared = queue->shared;
    int64_t deadline = mproc__deadline(timeout_ms);
    uint64_t head;
    int rc = lock_with_message(queue, timeout_ms, deadline, &head);
    if (rc < 0)
        return rc;
    if (!(record_flags(record_at(queue, head)) & F_LAST)) {
        /* A streamed message comes alone, as get_into() would take it. */
        pthread_mutex_unlock(&shared->get_lock);
        size_t len;
        rc = mproc_queue_get_into(queue, buf, cap, &len, timeout_ms);
        if (rc == 0)
            *count = 1;
        /* -EMSGSIZE says how large, as for a message that is not streamed. */
        if (rc == 0 || rc == -EMSGSIZE)
            messages[0] = (struct iovec){.iov_base = rc == 0 ? buf : NULL, .iov_len = len};
        return rc;
    }
    /* Copy out every whole message that fits, then release them with one store. */
    uint64_t tail = atomic_load_explicit(&shared->tail, memory_order_acquire);
    size_t used = 0, taken = 0;
    while (head != tail && taken < max) {
        const struct record *rec = record_at(queue, head);
        unsigned flags = record_flags(rec);
        if (flags & F_PAD) {
            head += RECORD_HEADER + record_length(rec);
            continue;
        }
        uint64_t n = record_length(rec);
        if ((flags & (F_FIRST | F_LAST)) != (F_FIRST | F_LAST) || used + n > cap)
            break;
        unsigned char *dest = (unsigned char *)buf + used;
        if (n)
            memcpy(dest, (const unsigned char *)rec + RECORD_HEADER, n);
        messages[taken++] = (struct iovec){.iov_base = dest, .iov_len = n};
        used = (used + n + 7) & ~(size_t)7;
        if (used > cap)
            used = cap;
        head += record_size(n);
    }
    if (taken == 0) {
        /* Like get_into(): the first message is too large for buf; say how large. */
        messages[0] =
            (struct iovec){.iov_base = NULL, .iov_len = record_length(record_at(queue, head))};
        pthread_mutex_unlock(&shared->get_lock);
        return -EMSGSIZE;
    }
    release(queue, head, taken, true);
    pthread_mutex_unlock(&shared->get_lock);
    *count = taken;
    return 0;
}

/* ---- state ---- */

int mproc_queue_size(mproc_queue *queue, size_t *count)
{
    if (!valid(queue) || !count)
        return -EINVAL;
    recover(queue->shared);
    /* Read get_count first: a message counted as taken is also counted as put. */
    uint64_t got = atomic_load(&queue->shared->get_count);
    uint64_t put = atomic_load(&queue->shared->put_count);
    *count = (size_t)(put - got);
    return 0;
}

int mproc_queue_empty(mproc_queue *queue, bool *empty)
{
    size_t count;
    if (!empty)
        return -EINVAL;
    int rc = mproc_queue_size(queue, &count);
    *empty = rc == 0 && count == 0;
    return rc;
}

int mproc_queue_full(mproc_queue *queue, bool *full)
{
    if (!valid(queue) || !full)
        return -EINVAL;
    struct queue_shared *shared = queue->shared;
    recover(shared);
    uint64_t tail = atomic_load(&shared->tail);
    /* Full means the smallest message would wait. */
    *full = message_slots_full(shared) || !has_room(queue, tail, record_size(0));
    return 0;
}

int mproc_queue_close(mproc_queue *queue)
{
    if (!valid(queue))
        return -EINVAL;
    struct queue_shared *shared = queue->shared;
    atomic_store(&shared->closed, 1);
    /* Everyone who waits must see it, whatever they wait for. */
    atomic_fetch_add(&shared->data_seq, 1);
    mproc__futex_wake(&shared->data_seq, INT32_MAX);
    atomic_fetch_add(&shared->space_seq, 1);
    mproc__futex_wake(&shared->space_seq, INT32_MAX);
    return 0;
}

/* ---- JoinableQueue ---- */

/* Messages put and not yet marked done, from the counts as they are. */
static uint64_t unfinished(const struct queue_shared *shared)
{
    uint64_t done = atomic_load(&shared->done_count);
    uint64_t put = atomic_load(&shared->put_count);
    return put > done ? put - done : 0;
}

/* Takes one from this process's slot, if it holds any (the TAKING bit stays). */
static void untake(struct peer_slot *slot)
{
    uint64_t word = atomic_load(&slot->taken);
    while ((word & TAKEN_MASK) > 0 && !atomic_compare_exchange_weak(&slot->taken, &word, word - 1))
        ;
}

int mproc_queue_task_done(mproc_queue *queue)
{
    if (!valid(queue) || !queue->shared->joinable)
        return -EINVAL;
    struct queue_shared *shared = queue->shared;
    uint64_t done = atomic_load(&shared->done_count);
    for (;;) {
        /* Near the bound, put_count must not count a dead producer's uncommitted put. */
        if (unfinished(shared) <= 1)
            recover(shared);
        if (done >= atomic_load(&shared->put_count))
            return -EOVERFLOW;
        if (atomic_compare_exchange_weak(&shared->done_count, &done, done + 1))
            break;
    }
    /*
     * The global count first: killed between the two, this process is taken
     * for a dead taker (join() says -EPIPE while others are unfinished)
     * rather than leaving a count that nothing can ever finish.
     */
    register_role(queue, ROLE_CONSUMER);
    int slot = handle_slot(queue);
    if (slot >= 0)
        untake(&shared->peers[slot]);
    if (unfinished(shared) == 0)
        wake(&shared->joiners_waiting, &shared->done_seq);
    return 0;
}

/* Whether a dead process holds messages it took and never marked done. */
static bool dead_taker(const struct queue_shared *shared)
{
    for (int i = 0; i < MAX_PEERS; i++) {
        const struct peer_slot *slot = &shared->peers[i];
        if ((atomic_load(&slot->taken) & TAKEN_MASK) > 0 && !slot_alive(slot))
            return true;
    }
    return false;
}

int mproc_queue_join(mproc_queue *queue, int timeout_ms)
{
    if (!valid(queue) || !queue->shared->joinable)
        return -EINVAL;
    struct queue_shared *shared = queue->shared;
    int64_t deadline = mproc__deadline(timeout_ms);
    int rc = 0;
    for (;;) {
        uint32_t ticket = atomic_load(&shared->done_seq);
        atomic_store(&shared->joiners_waiting, 1);
        recover(shared);
        if (unfinished(shared) == 0)
            break;
        if (dead_taker(shared) || atomic_load(&shared->lost_with_taker)) {
            rc = -EPIPE;
            break;
        }
        if (timeout_ms == 0) {
            rc = -ETIMEDOUT;
            break;
        }
        int64_t slice = mproc__now_ms() + LIVENESS_SLICE_MS;
        if (deadline >= 0 && deadline < slice)
            slice = deadline;
        rc = mproc__futex_wait(&shared->done_seq, ticket, slice);
        if (rc == -EINTR)
            break;
        if (rc == -ETIMEDOUT && deadline >= 0 && mproc__now_ms() >= deadline)
            break;
        rc = 0;
    }
    return rc;
}
