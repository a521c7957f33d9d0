/*
 * task.c: the byte format of tasks and results. A task is everything a
 * worker needs to copy a batch of entries of one folder, with no pointer in
 * it, so that it can cross a process boundary as bytes. Numbers are in host
 * byte order (workers run on the same machine); strings are a u32 length,
 * the bytes and a NUL, so that a decoder can hand out pointers into the
 * buffer.
 *
 * Task:   u32 magic "MPT1" | u32 flags | u32 src_root | u32 dst_root | u32 count
 *         | str src_dir | str dst_dir | str src_disp | str dst_disp | entry...
 * Entry:  u8 type | u8 flags | u16 0 | u32 mode | u32 uid | u32 gid
 *         | u64 size | u64 blocks (chunk: length) | u64 dev | u64 ino
 *         | u64 rdev (hard link: its root; chunk: offset)
 *         | i64 atime_sec | i64 mtime_sec | u32 atime_nsec | u32 mtime_nsec
 *         | str name | str dst_name ("" = name; "/" = "", the empty operand, which no
 *           name can be)
 *         | str link_target (chunk, commit: the temporary) | str link_disp
 * Result: u32 magic "MPR1" | u32 count | per entry: u8 status | u8 flags | u16 0
 *         | i32 errno | u64 bytes | str message
 */
#include "mpcp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TASK_MAGIC   0x3154504du /* "MPT1" */
#define RESULT_MAGIC 0x3152504du /* "MPR1" */
#define COUNT_OFFSET 16

int mpcp_buf_put(struct mpcp_buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d)
            return -ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void mpcp_buf_free(struct mpcp_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int put_u32(struct mpcp_buf *b, uint32_t v)
{
    return mpcp_buf_put(b, &v, sizeof v);
}

static int put_u64(struct mpcp_buf *b, uint64_t v)
{
    return mpcp_buf_put(b, &v, sizeof v);
}

static int put_str(struct mpcp_buf *b, const char *s)
{
    if (!s)
        s = "";
    size_t n = strlen(s);
    int rc = put_u32(b, (uint32_t)n);
    if (rc == 0)
        rc = mpcp_buf_put(b, s, n + 1);
    return rc;
}

struct reader {
    const unsigned char *p;
    size_t len, pos;
    bool bad;
};

static void get(struct reader *r, void *out, size_t n)
{
    if (r->bad || r->len - r->pos < n) {
        r->bad = true;
        memset(out, 0, n);
        return;
    }
    memcpy(out, r->p + r->pos, n);
    r->pos += n;
}

static uint32_t get_u32(struct reader *r)
{
    uint32_t v;
    get(r, &v, sizeof v);
    return v;
}

static uint64_t get_u64(struct reader *r)
{
    uint64_t v;
    get(r, &v, sizeof v);
    return v;
}

static const char *get_str(struct reader *r)
{
    uint32_t n = get_u32(r);
    if (r->bad || r->len - r->pos < (size_t)n + 1 || r->p[r->pos + n] != '\0') {
        r->bad = true;
        return "";
    }
    const char *s = (const char *)r->p + r->pos;
    r->pos += (size_t)n + 1;
    return s;
}

int mpcp_task_begin(struct mpcp_buf *b, const struct mpcp_task *t)
{
    b->len = 0;
    int rc = put_u32(b, TASK_MAGIC);
    rc = rc ? rc : put_u32(b, t->flags);
    rc = rc ? rc : put_u32(b, t->src_root);
    rc = rc ? rc : put_u32(b, t->dst_root);
    rc = rc ? rc : put_u32(b, 0);
    rc = rc ? rc : put_str(b, t->src_dir);
    rc = rc ? rc : put_str(b, t->dst_dir);
    rc = rc ? rc : put_str(b, t->src_disp);
    rc = rc ? rc : put_str(b, t->dst_disp);
    return rc;
}

uint32_t mpcp_task_count(const struct mpcp_buf *b)
{
    uint32_t n = 0;
    if (b->len >= COUNT_OFFSET + sizeof n)
        memcpy(&n, b->data + COUNT_OFFSET, sizeof n);
    return n;
}

void mpcp_task_truncate(struct mpcp_buf *b, size_t header_len)
{
    uint32_t zero = 0;
    if (header_len < COUNT_OFFSET + sizeof zero || header_len > b->len)
        return;
    b->len = header_len;
    memcpy(b->data + COUNT_OFFSET, &zero, sizeof zero);
}

/* A destination name that is the source's is sent as ""; the empty operand's as "/". */
static const char *dst_name_code(const struct mpcp_entry *e)
{
    if (!e->dst_name || strcmp(e->dst_name, e->name) == 0)
        return "";
    return *e->dst_name ? e->dst_name : "/";
}

int mpcp_task_add(struct mpcp_buf *b, const struct mpcp_entry *e)
{
    unsigned char head[4] = {e->type, e->flags, 0, 0};
    int rc = mpcp_buf_put(b, head, sizeof head);
    rc = rc ? rc : put_u32(b, e->mode);
    rc = rc ? rc : put_u32(b, e->uid);
    rc = rc ? rc : put_u32(b, e->gid);
    rc = rc ? rc : put_u64(b, e->size);
    rc = rc ? rc : put_u64(b, e->blocks);
    rc = rc ? rc : put_u64(b, e->dev);
    rc = rc ? rc : put_u64(b, e->ino);
    rc = rc ? rc : put_u64(b, e->rdev);
    rc = rc ? rc : put_u64(b, (uint64_t)e->atime_sec);
    rc = rc ? rc : put_u64(b, (uint64_t)e->mtime_sec);
    rc = rc ? rc : put_u32(b, e->atime_nsec);
    rc = rc ? rc : put_u32(b, e->mtime_nsec);
    rc = rc ? rc : put_str(b, e->name);
    rc = rc ? rc : put_str(b, dst_name_code(e));
    rc = rc ? rc : put_str(b, e->link_target);
    rc = rc ? rc : put_str(b, e->link_disp);
    if (rc)
        return rc;
    uint32_t n = mpcp_task_count(b) + 1;
    memcpy(b->data + COUNT_OFFSET, &n, sizeof n);
    return 0;
}

int mpcp_task_decode_header(const unsigned char *p, size_t len, struct mpcp_task *t, size_t *pos)
{
    struct reader r = {p, len, 0, false};
    if (get_u32(&r) != TASK_MAGIC)
        return -EBADMSG;
    t->flags = get_u32(&r);
    t->src_root = get_u32(&r);
    t->dst_root = get_u32(&r);
    t->count = get_u32(&r);
    t->src_dir = get_str(&r);
    t->dst_dir = get_str(&r);
    t->src_disp = get_str(&r);
    t->dst_disp = get_str(&r);
    *pos = r.pos;
    return r.bad ? -EBADMSG : 0;
}

int mpcp_task_decode_entry(const unsigned char *p, size_t len, size_t *pos, struct mpcp_entry *e)
{
    struct reader r = {p, len, *pos, false};
    unsigned char head[4];
    get(&r, head, sizeof head);
    e->type = head[0];
    e->flags = head[1];
    e->mode = get_u32(&r);
    e->uid = get_u32(&r);
    e->gid = get_u32(&r);
    e->size = get_u64(&r);
    e->blocks = get_u64(&r);
    e->dev = get_u64(&r);
    e->ino = get_u64(&r);
    e->rdev = get_u64(&r);
    e->atime_sec = (int64_t)get_u64(&r);
    e->mtime_sec = (int64_t)get_u64(&r);
    e->atime_nsec = get_u32(&r);
    e->mtime_nsec = get_u32(&r);
    e->name = get_str(&r);
    e->dst_name = get_str(&r);
    if (!*e->dst_name)
        e->dst_name = e->name;
    else if (strcmp(e->dst_name, "/") == 0)
        e->dst_name = "";
    e->link_target = get_str(&r);
    e->link_disp = get_str(&r);
    *pos = r.pos;
    if (r.bad || e->type < MPCP_T_REG || e->type > MPCP_T_COMMIT || !*e->name)
        return -EBADMSG;
    return 0;
}

int mpcp_result_begin(struct mpcp_buf *b)
{
    b->len = 0;
    int rc = put_u32(b, RESULT_MAGIC);
    return rc ? rc : put_u32(b, 0);
}

int mpcp_result_add(struct mpcp_buf *b, const struct mpcp_result_entry *res)
{
    unsigned char head[4] = {res->status, res->flags, 0, 0};
    int rc = mpcp_buf_put(b, head, sizeof head);
    rc = rc ? rc : put_u32(b, (uint32_t)res->err);
    rc = rc ? rc : put_u64(b, res->bytes);
    rc = rc ? rc : put_str(b, res->msg);
    rc = rc ? rc : put_str(b, res->backup);
    if (rc)
        return rc;
    uint32_t n;
    memcpy(&n, b->data + 4, sizeof n);
    n++;
    memcpy(b->data + 4, &n, sizeof n);
    return 0;
}

int mpcp_result_decode_header(const unsigned char *p, size_t len, uint32_t *count, size_t *pos)
{
    struct reader r = {p, len, 0, false};
    if (get_u32(&r) != RESULT_MAGIC)
        return -EBADMSG;
    *count = get_u32(&r);
    *pos = r.pos;
    return r.bad ? -EBADMSG : 0;
}

int mpcp_result_decode_entry(const unsigned char *p, size_t len, size_t *pos,
                             struct mpcp_result_entry *res)
{
    struct reader r = {p, len, *pos, false};
    unsigned char head[4];
    get(&r, head, sizeof head);
    res->status = head[0];
    res->flags = head[1];
    res->err = (int32_t)get_u32(&r);
    res->bytes = get_u64(&r);
    res->msg = get_str(&r);
    res->backup = get_str(&r);
    *pos = r.pos;
    return r.bad ? -EBADMSG : 0;
}
