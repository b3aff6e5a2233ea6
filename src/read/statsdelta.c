/*
 * statsdelta.c - see statsdelta.h.
 */
#include "read/statsdelta.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/hash.h"
#include "core/xmalloc.h"
#include "read/money.h"

/* ---- records ---- */

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

#define REC_FIXED (1 + 2 + 8 + 8 + 8 + 4)

int sdelta_rec_put(struct buf *b, const struct sdelta_rec *r)
{
    if (r->klen > UINT16_MAX || r->vlen > UINT32_MAX) {
        return ERR_TOOBIG;
    }
    unsigned char h[REC_FIXED];
    h[0] = (unsigned char)r->scope;
    put_le(h + 1, r->klen, 2);
    int rc = buf_append(b, h, 3);
    if (rc == ERR_OK) {
        rc = buf_append(b, r->key, r->klen);
    }
    put_le(h, (uint64_t)r->imp, 8);
    put_le(h + 8, (uint64_t)r->conv, 8);
    put_le(h + 16, (uint64_t)r->last, 8);
    put_le(h + 24, r->vlen, 4);
    if (rc == ERR_OK) {
        rc = buf_append(b, h, 28);
    }
    if (rc == ERR_OK && r->vlen > 0) {
        rc = buf_append(b, r->valores, r->vlen);
    }
    return rc;
}

int sdelta_rec_each(const char *p, size_t n, int (*fn)(void *arg, const struct sdelta_rec *r),
                    void *arg)
{
    const unsigned char *u = (const unsigned char *)p, *end = u + n;
    while (u < end) {
        struct sdelta_rec r;
        if ((size_t)(end - u) < 3) {
            return ERR_IO;
        }
        r.scope = u[0];
        r.klen = (size_t)get_le(u + 1, 2);
        u += 3;
        if ((size_t)(end - u) < r.klen + 28) {
            return ERR_IO;
        }
        r.key = (const char *)u;
        u += r.klen;
        r.imp = (int64_t)get_le(u, 8);
        r.conv = (int64_t)get_le(u + 8, 8);
        r.last = (int64_t)get_le(u + 16, 8);
        r.vlen = (size_t)get_le(u + 24, 4);
        u += 28;
        if ((size_t)(end - u) < r.vlen) {
            return ERR_IO;
        }
        r.valores = (const char *)u;
        u += r.vlen;
        int rc = fn(arg, &r);
        if (rc != 0) {
            return rc;
        }
    }
    return ERR_OK;
}

/* ---- the map ---- */

/* One allocation a key: the record, then its key (NUL-terminated). */
struct entry {
    struct sdelta_rec r;    /* first (sdelta_retire); valores owned */
    bool retired;
    char k[];
};

/* The hash beside the pointer: a probe that does not match costs no visit
 * to another entry (with 110,000 keys every visit is a cache miss). */
struct slot {
    uint64_t h;
    struct entry *e;
};

struct sdelta {
    struct slot *slot;
    size_t mask, count;
    struct siphash_key sk;  /* random: campaign names come from clients */
};

struct sdelta *sdelta_new(void)
{
    struct sdelta *d = xcalloc(1, sizeof(*d));
    if (getrandom(&d->sk, sizeof(d->sk), 0) != (ssize_t)sizeof(d->sk)) {
        d->sk.k0 = (uint64_t)(uintptr_t)d;
        d->sk.k1 = 0x9e3779b97f4a7c15ULL;
    }
    d->mask = 1023;
    d->slot = xcalloc(d->mask + 1, sizeof(*d->slot));
    return d;
}

static void entry_free(struct entry *x)
{
    free((char *)x->r.valores);
    free(x);
}

void sdelta_clear(struct sdelta *d)
{
    for (size_t i = 0; i <= d->mask; i++) {
        if (d->slot[i].e != NULL) {
            entry_free(d->slot[i].e);
            d->slot[i].e = NULL;
        }
    }
    d->count = 0;
}

void sdelta_free(struct sdelta *d)
{
    if (d != NULL) {
        sdelta_clear(d);
        free(d->slot);
        free(d);
    }
}

size_t sdelta_count(const struct sdelta *d)
{
    return d->count;
}

static uint64_t key_hash(const struct sdelta *d, int scope, const char *key, size_t klen)
{
    return siphash24(&d->sk, key, klen) ^ ((uint64_t)scope * 0x9e3779b97f4a7c15ULL);
}

static size_t find(const struct sdelta *d, uint64_t h, int scope, const char *key, size_t klen)
{
    size_t i = (size_t)h & d->mask;
    for (; d->slot[i].e != NULL; i = (i + 1) & d->mask) {
        if (d->slot[i].h != h) {
            continue;
        }
        const struct entry *x = d->slot[i].e;
        if (x->r.scope == scope && x->r.klen == klen && memcmp(x->k, key, klen) == 0) {
            break;
        }
    }
    return i;
}

static void grow(struct sdelta *d)
{
    size_t old = d->mask + 1;
    struct slot *s = d->slot;
    d->mask = d->mask * 2 + 1;
    d->slot = xcalloc(d->mask + 1, sizeof(*d->slot));
    for (size_t i = 0; i < old; i++) {
        if (s[i].e != NULL) {
            size_t j = (size_t)s[i].h & d->mask;
            while (d->slot[j].e != NULL) {
                j = (j + 1) & d->mask;
            }
            d->slot[j] = s[i];
        }
    }
    free(s);
}

int sdelta_add(struct sdelta *d, const struct sdelta_rec *r)
{
    if ((d->count + 1) * 2 > d->mask + 1) {
        grow(d);
    }
    uint64_t h = key_hash(d, r->scope, r->key, r->klen);
    size_t i = find(d, h, r->scope, r->key, r->klen);
    struct entry *x = d->slot[i].e;
    if (x == NULL) {
        x = xmalloc(sizeof(*x) + r->klen + 1);
        memset(x, 0, sizeof(*x));
        memcpy(x->k, r->key, r->klen);
        x->k[r->klen] = '\0';
        x->r.scope = r->scope;
        x->r.key = x->k;
        x->r.klen = r->klen;
        x->r.last = INT64_MIN;
        d->slot[i].h = h;
        d->slot[i].e = x;
        d->count++;
    }
    if (__builtin_add_overflow(x->r.imp, r->imp, &x->r.imp) ||
        __builtin_add_overflow(x->r.conv, r->conv, &x->r.conv)) {
        return ERR_TOOBIG;
    }
    if (r->last > x->r.last) {
        x->r.last = r->last;
    }
    if (r->vlen > 0) {
        struct buf m;
        buf_init(&m, 0);
        int rc = money_totals_merge(x->r.valores != NULL ? x->r.valores : "", x->r.vlen,
                                    r->valores, r->vlen, &m);
        if (rc != ERR_OK) {
            buf_fini(&m);
            return rc;
        }
        free((char *)x->r.valores);
        x->r.vlen = m.len;
        x->r.valores = buf_take(&m);
    }
    return ERR_OK;
}

const struct sdelta_rec *sdelta_get(const struct sdelta *d, int scope, const char *key)
{
    if (d->count == 0) {
        return NULL;
    }
    size_t klen = strlen(key);
    size_t i = find(d, key_hash(d, scope, key, klen), scope, key, klen);
    return d->slot[i].e != NULL && !d->slot[i].e->retired ? &d->slot[i].e->r : NULL;
}

void sdelta_retire(struct sdelta *d, const struct sdelta_rec *r)
{
    (void)d;
    ((struct entry *)(void *)r)->retired = true;     /* r is its entry's first member */
}

int sdelta_key_cmp(int sa, const char *ka, size_t la, int sb, const char *kb, size_t lb)
{
    if (sa != sb) {
        return sa < sb ? -1 : 1;
    }
    int c = memcmp(ka, kb, la < lb ? la : lb);
    return c != 0 ? c : (la > lb) - (la < lb);
}

struct sdelta_prefix sdelta_key_prefix(int scope, const char *key, size_t klen)
{
    unsigned char b[1 + SDELTA_PREFIX_BYTES] = { 0 };
    b[0] = (unsigned char)scope;
    memcpy(b + 1, key, klen < SDELTA_PREFIX_BYTES ? klen : SDELTA_PREFIX_BYTES);
    uint64_t w0, w1;
    memcpy(&w0, b, 8);
    memcpy(&w1, b + 8, 8);
    return (struct sdelta_prefix){ __builtin_bswap64(w0), __builtin_bswap64(w1) };
}

int sdelta_prefix_cmp(const struct sdelta_prefix *a, const struct sdelta_prefix *b)
{
    if (a->p0 != b->p0) {
        return a->p0 < b->p0 ? -1 : 1;
    }
    return a->p1 != b->p1 ? (a->p1 < b->p1 ? -1 : 1) : 0;
}

struct sort_item {
    struct sdelta_prefix p;
    const struct sdelta_rec *r;
};

static int cmp_item(const void *pa, const void *pb)
{
    const struct sort_item *a = pa, *b = pb;
    int c = sdelta_prefix_cmp(&a->p, &b->p);
    return c != 0 ? c
                  : sdelta_key_cmp(a->r->scope, a->r->key, a->r->klen, b->r->scope, b->r->key,
                                   b->r->klen);
}

const struct sdelta_rec **sdelta_sorted(const struct sdelta *d, size_t *n)
{
    struct sort_item *it = xmalloc((d->count + 1) * sizeof(*it));
    size_t m = 0;
    for (size_t i = 0; i <= d->mask; i++) {
        const struct entry *x = d->slot[i].e;
        if (x != NULL && !x->retired) {
            it[m].p = sdelta_key_prefix(x->r.scope, x->k, x->r.klen);
            it[m].r = &x->r;
            m++;
        }
    }
    qsort(it, m, sizeof(*it), cmp_item);
    const struct sdelta_rec **v = xmalloc((m + 1) * sizeof(*v));
    for (size_t i = 0; i < m; i++) {
        v[i] = it[i].r;
    }
    free(it);
    *n = m;
    return v;
}
