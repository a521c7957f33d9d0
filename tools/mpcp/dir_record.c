/*
 * dir_record.c: the folders cp remembers while it copies (the folder part
 * of its source-to-destination table): each source folder named on the
 * command line, and the first folder the run makes for each operand. A
 * folder the walk meets again is either a destination being filled, reached
 * through a symlink ("cannot copy a directory, A, into itself, B"), or a
 * source met twice ("will not create hard link", silent with -L). Without
 * it, -L through a symlink to a parent folder copies until names are too
 * long. An open-addressing table on (device, inode): any number of
 * operands costs a constant time per folder.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t slot_of(const struct mpcp_dir_records *t, dev_t dev, ino_t ino)
{
    uint64_t h = ((uint64_t)ino * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)dev * 0xc2b2ae3d27d4eb4full);
    return (size_t)(h ^ (h >> 29)) & (t->cap - 1);
}

const struct mpcp_dir_record *mpcp_dirs_find(const struct mpcp_dir_records *t, dev_t dev, ino_t ino)
{
    if (t->n == 0)
        return NULL;
    for (size_t i = slot_of(t, dev, ino);; i = (i + 1) & (t->cap - 1)) {
        const struct mpcp_dir_record *r = &t->v[i];
        if (!r->dst)
            return NULL;
        if (r->dev == dev && r->ino == ino)
            return r;
    }
}

/* The empty slot where (dev, ino) goes. */
static struct mpcp_dir_record *free_slot(struct mpcp_dir_records *t, dev_t dev, ino_t ino)
{
    size_t i = slot_of(t, dev, ino);
    while (t->v[i].dst)
        i = (i + 1) & (t->cap - 1);
    return &t->v[i];
}

/* Doubles the table (kept at most half full, so that a search always ends). */
static int grow(struct mpcp_dir_records *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    struct mpcp_dir_record *old = t->v;
    size_t old_cap = t->cap;
    t->v = calloc(cap, sizeof *t->v);
    if (!t->v) {
        t->v = old;
        return -ENOMEM;
    }
    t->cap = cap;
    t->n = 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].dst)
            continue;
        *free_slot(t, old[i].dev, old[i].ino) = old[i];
        t->n++;
    }
    free(old);
    return 0;
}

int mpcp_dirs_add(struct mpcp_dir_records *t, dev_t dev, ino_t ino, const char *dst, bool made)
{
    if (mpcp_dirs_find(t, dev, ino))
        return 0; /* the first name stays, as cp's table keeps it */
    if ((t->n + 1) * 2 > t->cap && grow(t) < 0)
        return -ENOMEM;
    struct mpcp_dir_record *r = free_slot(t, dev, ino);
    r->dst = strdup(dst);
    if (!r->dst)
        return -ENOMEM;
    r->dev = dev;
    r->ino = ino;
    r->made = made;
    t->n++;
    return 0;
}

void mpcp_dirs_free(struct mpcp_dir_records *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->v[i].dst);
    free(t->v);
    memset(t, 0, sizeof *t);
}
