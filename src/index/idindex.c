/*
 * idindex.c - see idindex.h. Deletion uses backward-shift (no tombstones),
 * so lookups never slow down after rollbacks.
 */
#include "index/idindex.h"

#include <stdlib.h>

#include "core/xmalloc.h"

struct slot {
    uint64_t h;     /* 0 = empty; real hash 0 is stored as 1 */
    int64_t pos;
};

struct idindex {
    struct slot *s;
    size_t mask;
    size_t count;
};

static uint64_t fix(uint64_t h)
{
    return h == 0 ? 1 : h;
}

struct idindex *idindex_new(size_t expected)
{
    struct idindex *ix = xcalloc(1, sizeof(*ix));
    size_t n = 1024;
    while (n * 7 / 10 < expected) {
        n *= 2;
    }
    ix->s = xcalloc(n, sizeof(struct slot));
    ix->mask = n - 1;
    return ix;
}

void idindex_free(struct idindex *ix)
{
    if (ix != NULL) {
        free(ix->s);
        free(ix);
    }
}

static void put(struct idindex *ix, uint64_t h, int64_t pos)
{
    size_t i = (size_t)h & ix->mask;
    while (ix->s[i].h != 0) {
        i = (i + 1) & ix->mask;
    }
    ix->s[i].h = h;
    ix->s[i].pos = pos;
    ix->count++;
}

static void grow(struct idindex *ix)
{
    struct slot *old = ix->s;
    size_t n = ix->mask + 1;
    ix->s = xcalloc(n * 2, sizeof(struct slot));
    ix->mask = n * 2 - 1;
    ix->count = 0;
    for (size_t i = 0; i < n; i++) {
        if (old[i].h != 0) {
            put(ix, old[i].h, old[i].pos);
        }
    }
    free(old);
}

void idindex_add(struct idindex *ix, uint64_t h, int64_t pos)
{
    if ((ix->count + 1) * 10 > (ix->mask + 1) * 7) {
        grow(ix);
    }
    put(ix, fix(h), pos);
}

void idindex_remove(struct idindex *ix, uint64_t h, int64_t pos)
{
    h = fix(h);
    size_t i = (size_t)h & ix->mask;
    while (ix->s[i].h != 0 && !(ix->s[i].h == h && ix->s[i].pos == pos)) {
        i = (i + 1) & ix->mask;
    }
    if (ix->s[i].h == 0) {
        return;
    }
    /* backward-shift: pull later members of the cluster into the hole */
    size_t hole = i;
    size_t j = i;
    for (;;) {
        j = (j + 1) & ix->mask;
        if (ix->s[j].h == 0) {
            break;
        }
        size_t home = (size_t)ix->s[j].h & ix->mask;
        /* move j into hole unless its home lies cyclically in (hole, j] */
        int in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!in_range) {
            ix->s[hole] = ix->s[j];
            hole = j;
        }
    }
    ix->s[hole].h = 0;
    ix->s[hole].pos = 0;
    ix->count--;
}

size_t idindex_find(const struct idindex *ix, uint64_t h, int64_t *out, size_t max)
{
    h = fix(h);
    size_t n = 0;
    size_t i = (size_t)h & ix->mask;
    while (ix->s[i].h != 0) {
        if (ix->s[i].h == h) {
            if (n < max) {
                out[n] = ix->s[i].pos;
            }
            n++;
        }
        i = (i + 1) & ix->mask;
    }
    return n;
}

size_t idindex_count(const struct idindex *ix)
{
    return ix->count;
}

size_t idindex_bytes(const struct idindex *ix)
{
    return (ix->mask + 1) * sizeof(struct slot) + sizeof(*ix);
}

void idindex_each(const struct idindex *ix, void (*cb)(uint64_t h, int64_t pos, void *arg),
                  void *arg)
{
    for (size_t i = 0; i <= ix->mask; i++) {
        if (ix->s[i].h != 0) {
            cb(ix->s[i].h, ix->s[i].pos, arg);
        }
    }
}
