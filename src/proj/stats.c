/*
 * stats.c - see stats.h. The accumulator is a hash map keyed by (scope,
 * key, currency); currency "" holds the counters.
 */
#include "proj/stats.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/hash.h"
#include "core/xmalloc.h"
#include "read/money.h"
#include "read/statsdelta.h"

/* Keys up to KEY_INLINE bytes live in the entry itself: a lookup then
 * touches one entry and nothing else (the rebuild holds every campaign and
 * influencer in here; with the key behind a pointer, comparing it was a
 * second cache miss a lookup and ~8 % of the rebuild). 96 bytes an entry
 * fits a UUID. */
#define KEY_INLINE 38

struct entry {
    uint64_t h;             /* entry_hash(); never 0 */
    int64_t imp, conv, last;
    __int128 valor;
    int scope;
    char moneda[4];
    uint16_t klen;
    char k[KEY_INLINE];     /* the key if klen < KEY_INLINE, else a pointer to it */
};

_Static_assert(sizeof(struct entry) == 96, "entry: one and a half cache lines");

static char *heap_key(const struct entry *x)
{
    char *p;
    memcpy(&p, x->k, sizeof(p));
    return p;
}

static const char *entry_key(const struct entry *x)
{
    return x->klen < KEY_INLINE ? x->k : heap_key(x);
}

/*
 * Entries sit in a dense array, in the order they arrived; the hash table
 * holds 8-byte slots: the entry's hash's high half beside its index + 1
 * (0 = empty). A rebuild holds every (scope, key, currency) here at once
 * (520k of them for the benchmark's 10M events): the table of entries
 * themselves, at 3/4 load, was 96 MiB, and 144 while it doubled; now the
 * entries take 96 bytes each, the slots 16 or less, growing touches only
 * the slots, and the flush walks the array instead of a sparse table.
 */
struct stats_acc {
    struct entry *e;
    size_t count, cap;
    uint64_t *slot;
    size_t mask;
    struct siphash_key key;     /* random: campaign names come from clients */
};

#define SLOT_TAG(h) ((h) >> 32)

/* A slot for the entry at index n with hash h, and the entry a slot holds. */
static uint64_t slot_of(uint64_t h, size_t n)
{
    return (h & ~(uint64_t)UINT32_MAX) | (uint64_t)(n + 1);
}

static struct entry *slot_entry(const struct stats_acc *a, uint64_t slot)
{
    return &a->e[(uint32_t)slot - 1];
}

static uint64_t *new_slots(size_t n)
{
    return xcalloc(n, sizeof(uint64_t));
}

struct stats_acc *stats_acc_new(void)
{
    struct stats_acc *a = xcalloc(1, sizeof(*a));
    if (getrandom(&a->key, sizeof(a->key), 0) != (ssize_t)sizeof(a->key)) {
        a->key.k0 = (uint64_t)(uintptr_t)a;     /* still a hash map, just not secret */
        a->key.k1 = 0x9e3779b97f4a7c15ULL;
    }
    a->mask = 255;
    a->slot = new_slots(a->mask + 1);
    a->cap = 128;
    a->e = xmalloc(a->cap * sizeof(struct entry));
    return a;
}

void stats_acc_clear(struct stats_acc *a)
{
    for (size_t i = 0; i < a->count; i++) {
        if (a->e[i].klen >= KEY_INLINE) {
            free(heap_key(&a->e[i]));
        }
    }
    memset(a->slot, 0, (a->mask + 1) * sizeof(uint64_t));
    a->count = 0;
}

void stats_acc_free(struct stats_acc *a)
{
    if (a != NULL) {
        stats_acc_clear(a);
        free(a->e);
        free(a->slot);
        free(a);
    }
}

/* Keyed hash of a campaign or influencer name (names come from clients;
 * an unkeyed hash would let them collide on purpose). */
static uint64_t name_hash(const struct stats_acc *a, const char *key, size_t klen)
{
    return siphash24(&a->key, key, klen);
}

/* Entry hash from the name's hash, the scope and the currency (three
 * letters, packed: no second hash needed). */
static uint64_t entry_hash(uint64_t hk, int scope, const char *moneda)
{
    uint64_t m = 0;
    for (int i = 0; i < 3 && moneda[i] != '\0'; i++) {
        m = m << 8 | (unsigned char)moneda[i];
    }
    uint64_t h = hk ^ (((uint64_t)scope << 24 | m) * 0x9e3779b97f4a7c15ULL);
    return h == 0 ? 1 : h;
}

/* The slot of (scope, key, moneda): the one pointing at its entry, or the
 * empty one where it would go. */
static size_t find(const struct stats_acc *a, int scope, const char *key, size_t klen,
                   const char *moneda, uint64_t h)
{
    size_t i = (size_t)h & a->mask;
    for (; a->slot[i] != 0; i = (i + 1) & a->mask) {
        if (SLOT_TAG(a->slot[i]) != SLOT_TAG(h)) {
            continue;
        }
        const struct entry *x = slot_entry(a, a->slot[i]);
        if (x->h == h && x->scope == scope && x->klen == klen &&
            strcmp(x->moneda, moneda) == 0 && memcmp(entry_key(x), key, klen) == 0) {
            break;
        }
    }
    return i;
}

/* Doubles the slots (at half load: they are small) and re-points them. */
static void grow(struct stats_acc *a)
{
    free(a->slot);
    a->mask = a->mask * 2 + 1;
    a->slot = new_slots(a->mask + 1);
    for (size_t n = 0; n < a->count; n++) {
        size_t j = (size_t)a->e[n].h & a->mask;
        while (a->slot[j] != 0) {
            j = (j + 1) & a->mask;
        }
        a->slot[j] = slot_of(a->e[n].h, n);
    }
}

static struct entry *get(struct stats_acc *a, int scope, const char *key, size_t klen,
                         uint64_t hk, const char *moneda)
{
    if ((a->count + 1) * 2 > a->mask + 1) {
        grow(a);
    }
    uint64_t h = entry_hash(hk, scope, moneda);
    size_t i = find(a, scope, key, klen, moneda, h);
    if (a->slot[i] != 0) {
        return slot_entry(a, a->slot[i]);
    }
    if (a->count == a->cap) {
        a->cap *= 2;
        a->e = xrealloc(a->e, a->cap * sizeof(struct entry));
    }
    if (a->count >= UINT32_MAX - 1) {
        abort();        /* 400 GB of entries: xrealloc failed long before */
    }
    struct entry *x = &a->e[a->count];
    memset(x, 0, sizeof(*x));
    x->h = h;
    x->scope = scope;
    memcpy(x->moneda, moneda, strlen(moneda) + 1);
    x->klen = (uint16_t)klen;
    if (klen < KEY_INLINE) {
        memcpy(x->k, key, klen + 1);
    } else {
        char *p = xstrdup(key);
        memcpy(x->k, &p, sizeof(p));
    }
    a->slot[i] = slot_of(h, a->count);
    a->count++;
    return x;
}

static void apply_scope(struct stats_acc *a, int scope, const char *key, uint64_t hk,
                        const struct tracking *t, int64_t recorded_at_us)
{
    size_t klen = strlen(key);
    struct entry *x = get(a, scope, key, klen, hk, "");
    if (t->kind == KIND_IMPRESION) {
        x->imp++;
    } else {
        x->conv++;
    }
    if (recorded_at_us > x->last) {
        x->last = recorded_at_us;
    }
    if (t->kind == KIND_CONVERSION) {
        struct entry *v = get(a, scope, key, klen, hk, t->moneda);
        v->valor += t->valor;
        v->conv++;
    }
}

void stats_acc_hint(const struct stats_acc *a, const struct tracking *t, struct stats_hint *h)
{
    h->campana = name_hash(a, t->campana_id, strlen(t->campana_id));
    h->influencer = t->influencer_id[0] != '\0'
                        ? name_hash(a, t->influencer_id, strlen(t->influencer_id))
                        : 0;    /* not read: every use checks influencer_id first */
}

/* Where an entry of a name would be looked up first: its slot, and the
 * entry that slot (or the next with the same tag) points at. Always
 * inlined: GCC treats a function that only loads and prefetches as pure,
 * and drops calls to it whose result (void) nobody uses, prefetches and
 * all (it did: stats_acc_prefetch compiled to a bare ret). */
__attribute__((always_inline)) static inline void prefetch_entry(const struct stats_acc *a, int scope, uint64_t hk, const char *moneda,
                           int stage)
{
    uint64_t h = entry_hash(hk, scope, moneda);
    size_t i = (size_t)h & a->mask;
    if (stage == 1) {
        __builtin_prefetch(&a->slot[i]);
        return;
    }
    for (int probes = 0; a->slot[i] != 0 && probes < 4; i = (i + 1) & a->mask, probes++) {
        if (SLOT_TAG(a->slot[i]) == SLOT_TAG(h)) {
            const char *x = (const char *)slot_entry(a, a->slot[i]);
            __builtin_prefetch(x);
            __builtin_prefetch(x + 64);
            return;
        }
    }
}

__attribute__((always_inline)) static inline void prefetch_name(
    const struct stats_acc *a, int scope, uint64_t hk,
                          const struct tracking *t, int stage)
{
    prefetch_entry(a, scope, hk, "", stage);
    if (t->kind == KIND_CONVERSION) {
        prefetch_entry(a, scope, hk, t->moneda, stage);
    }
}

void stats_acc_prefetch(const struct stats_acc *a, const struct tracking *t,
                        const struct stats_hint *h, int stage)
{
    prefetch_name(a, SCOPE_CAMPANA, h->campana, t, stage);
    if (t->influencer_id[0] != '\0') {
        prefetch_name(a, SCOPE_INFLUENCER, h->influencer, t, stage);
    }
}

void stats_acc_apply_hinted(struct stats_acc *a, const struct tracking *t, int64_t recorded_at_us,
                            const struct stats_hint *h)
{
    apply_scope(a, SCOPE_CAMPANA, t->campana_id, h->campana, t, recorded_at_us);
    if (t->influencer_id[0] != '\0') {
        apply_scope(a, SCOPE_INFLUENCER, t->influencer_id, h->influencer, t, recorded_at_us);
    }
}

void stats_acc_apply(struct stats_acc *a, const struct tracking *t, int64_t recorded_at_us)
{
    struct stats_hint h;
    stats_acc_hint(a, t, &h);
    stats_acc_apply_hinted(a, t, recorded_at_us, &h);
}

void stats_acc_each_key(const struct stats_acc *a,
                        void (*fn)(void *arg, enum rm_scope scope, const char *key), void *arg)
{
    for (size_t i = 0; i < a->count; i++) {
        fn(arg, (enum rm_scope)a->e[i].scope, entry_key(&a->e[i]));
    }
}

/* Key order, as the tables' primary keys sort (BINARY: bytes). */
static int cmp_entry(const struct entry *a, const struct entry *b)
{
    if (a->scope != b->scope) {
        return a->scope < b->scope ? -1 : 1;
    }
    int c = strcmp(entry_key(a), entry_key(b));
    return c != 0 ? c : strcmp(a->moneda, b->moneda);
}

/* The flush sorts (prefix, entry) pairs: the scope and the key's first
 * bytes as two big-endian integers (statsdelta.h) decide almost every
 * comparison without touching the entries (comparing them through
 * pointers, strcmp and all, was an eighth of the projector's time). */
struct sort_item {
    struct sdelta_prefix p;
    struct entry *x;
};

static void sort_prefix(struct sort_item *it)
{
    it->p = sdelta_key_prefix(it->x->scope, entry_key(it->x), it->x->klen);
}

static int cmp_item(const void *pa, const void *pb)
{
    const struct sort_item *a = pa, *b = pb;
    int c = sdelta_prefix_cmp(&a->p, &b->p);
    return c != 0 ? c : cmp_entry(a->x, b->x);
}

/* Same scope and key (the items are sorted, so the prefixes decide first). */
static bool same_key(const struct sort_item *a, const struct sort_item *b)
{
    return sdelta_prefix_cmp(&a->p, &b->p) == 0 && a->x->klen == b->x->klen &&
           (a->x->klen <= SDELTA_PREFIX_BYTES || strcmp(entry_key(a->x), entry_key(b->x)) == 0);
}

int stats_acc_flush(struct stats_acc *a, struct readmodel *rm, struct err *e)
{
    /* in key order: each B-tree page is visited once per flush, while it
     * is in the cache, instead of at random */
    struct sort_item *v = xmalloc((a->count + 1) * sizeof(*v));
    size_t n = a->count;
    for (size_t i = 0; i < n; i++) {
        v[i].x = &a->e[i];
        sort_prefix(&v[i]);
    }
    qsort(v, n, sizeof(*v), cmp_item);
    /* one row a (scope, key): its counters (currency "", first in the
     * order) and the list of its currencies' deltas */
    struct buf valores;
    buf_init(&valores, 0);
    int rc = ERR_OK;
    for (size_t i = 0; i < n && rc == ERR_OK;) {
        const struct sort_item *first = &v[i];
        const struct entry *k = first->x;
        int64_t imp = 0, conv = 0, last = 0;
        buf_reset(&valores);
        for (; i < n && same_key(first, &v[i]); i++) {
            const struct entry *x = v[i].x;
            if (x->moneda[0] == '\0') {
                imp = x->imp;
                conv = x->conv;
                last = x->last;
            } else {
                struct money_total t = { .ticks = x->valor, .conv = x->conv };
                memcpy(t.moneda, x->moneda, 4);
                if (rc == ERR_OK && money_totals_put(&valores, &t) != ERR_OK) {
                    rc = err_set(e, ERR_NOMEM, "statistics: out of memory");
                }
            }
        }
        if (rc == ERR_OK) {
            rc = rm_stats_add(rm, (enum rm_scope)k->scope, entry_key(k), imp, conv, last,
                              valores.len > 0 ? valores.p : "", valores.len, e);
        }
    }
    buf_fini(&valores);
    free(v);
    stats_acc_clear(a);
    return rc;
}

/* The entry of (scope, key, moneda), or NULL. */
static const struct entry *lookup(const struct stats_acc *a, enum rm_scope scope,
                                  const char *key, const char *moneda)
{
    size_t klen = strlen(key);
    size_t i = find(a, (int)scope, key, klen, moneda,
                    entry_hash(name_hash(a, key, klen), (int)scope, moneda));
    return a->slot[i] != 0 ? slot_entry(a, a->slot[i]) : NULL;
}

bool stats_acc_get(const struct stats_acc *a, enum rm_scope scope, const char *key,
                   int64_t *imp, int64_t *conv, int64_t *last_us)
{
    const struct entry *x = lookup(a, scope, key, "");
    if (x == NULL) {
        return false;
    }
    *imp = x->imp;
    *conv = x->conv;
    *last_us = x->last;
    return true;
}

bool stats_acc_get_valor(const struct stats_acc *a, enum rm_scope scope, const char *key,
                         const char *moneda, __int128 *ticks)
{
    const struct entry *x = lookup(a, scope, key, moneda);
    if (x == NULL) {
        return false;
    }
    *ticks = x->valor;
    return true;
}
