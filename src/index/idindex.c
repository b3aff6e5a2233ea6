/*
 * idindex.c - see idindex.h.
 */
#include "index/idindex.h"

#include <stdlib.h>

#include "core/xmalloc.h"

#define NIL UINT32_MAX

struct entry {
    uint64_t h;
    int64_t pos;
    uint32_t prev;      /* previous entry in the same bucket, or NIL */
    uint32_t live;
};

struct idindex {
    uint32_t *bucket;   /* newest entry of each bucket, or NIL */
    size_t mask;
    struct entry *e;
    size_t n, cap;
    size_t live;
};

struct idindex *idindex_new(size_t expected)
{
    struct idindex *ix = xcalloc(1, sizeof(*ix));
    size_t nb = 1024;
    while (nb < expected) {
        nb *= 2;
    }
    ix->bucket = xmalloc(nb * sizeof(uint32_t));
    for (size_t i = 0; i < nb; i++) {
        ix->bucket[i] = NIL;
    }
    ix->mask = nb - 1;
    ix->cap = 1024;
    ix->e = xmalloc(ix->cap * sizeof(struct entry));
    return ix;
}

void idindex_free(struct idindex *ix)
{
    if (ix != NULL) {
        free(ix->bucket);
        free(ix->e);
        free(ix);
    }
}

void idindex_add(struct idindex *ix, uint64_t h, int64_t pos)
{
    if (ix->n == ix->cap) {
        ix->cap *= 2;
        ix->e = xrealloc(ix->e, ix->cap * sizeof(struct entry));
    }
    size_t b = (size_t)(h ^ (h >> 29)) & ix->mask;
    struct entry *x = &ix->e[ix->n];
    x->h = h;
    x->pos = pos;
    x->prev = ix->bucket[b];
    x->live = 1;
    ix->bucket[b] = (uint32_t)ix->n;
    ix->n++;
    ix->live++;
}

void idindex_remove(struct idindex *ix, uint64_t h, int64_t pos)
{
    size_t b = (size_t)(h ^ (h >> 29)) & ix->mask;
    for (uint32_t i = ix->bucket[b]; i != NIL; i = ix->e[i].prev) {
        if (ix->e[i].live && ix->e[i].h == h && ix->e[i].pos == pos) {
            ix->e[i].live = 0;
            ix->live--;
            return;
        }
    }
}

size_t idindex_find_from(const struct idindex *ix, uint64_t h, size_t skip, int64_t *out,
                         size_t max)
{
    size_t b = (size_t)(h ^ (h >> 29)) & ix->mask;
    size_t n = 0, taken = 0;
    for (uint32_t i = ix->bucket[b]; i != NIL; i = ix->e[i].prev) {
        const struct entry *x = &ix->e[i];
        if (!x->live || x->h != h) {
            continue;
        }
        if (n >= skip && taken < max) {
            out[taken++] = x->pos;
        }
        n++;
    }
    return n;
}

size_t idindex_find(const struct idindex *ix, uint64_t h, int64_t *out, size_t max)
{
    return idindex_find_from(ix, h, 0, out, max);
}

size_t idindex_count(const struct idindex *ix)
{
    return ix->live;
}

size_t idindex_bytes(const struct idindex *ix)
{
    return (ix->mask + 1) * sizeof(uint32_t) + ix->cap * sizeof(struct entry) + sizeof(*ix);
}

void idindex_each(const struct idindex *ix, void (*cb)(uint64_t h, int64_t pos, void *arg),
                  void *arg)
{
    for (size_t i = 0; i < ix->n; i++) {
        if (ix->e[i].live) {
            cb(ix->e[i].h, ix->e[i].pos, arg);
        }
    }
}
