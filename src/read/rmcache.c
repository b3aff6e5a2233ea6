/*
 * rmcache.c - see rmcache.h.
 */
#include "read/rmcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/hash.h"
#include "core/xmalloc.h"

#define SHARDS 64
#define BUCKETS 2048    /* per shard: 131,072 chains, 1 MiB, for 65,536 answers */

/* One allocation an answer: the key, then the JSON, after the header (a
 * hit then reads one block, not three). */
struct centry {
    uint64_t h;
    int ns;
    size_t len;
    struct centry *next;
    char *json;             /* into data, after the key */
    char data[];            /* key '\0' json '\0' */
};

struct shard {
    pthread_mutex_t mu;
    uint64_t gen;
    size_t count;
    /* counted under the shard's lock: one counter shared by every worker
     * thread was a cache line bouncing between cores on each lookup */
    uint64_t hits, misses;
    struct centry *b[BUCKETS];
};

struct rmcache {
    struct siphash_key sk;
    size_t max_per_shard;
    struct shard s[SHARDS];
};

struct rmcache *rmcache_new(size_t max_entries)
{
    struct rmcache *c = xcalloc(1, sizeof(*c));
    if (getrandom(&c->sk, sizeof(c->sk), 0) != (ssize_t)sizeof(c->sk)) {
        c->sk.k0 = (uint64_t)(uintptr_t)c;
        c->sk.k1 = 0x2545f4914f6cdd1dULL;
    }
    c->max_per_shard = max_entries / SHARDS > 0 ? max_entries / SHARDS : 1;
    for (int i = 0; i < SHARDS; i++) {
        pthread_mutex_init(&c->s[i].mu, NULL);
    }
    return c;
}

static void drop(struct centry *x)
{
    free(x);
}

static struct centry *centry_new(uint64_t h, int ns, const char *key, const char *json,
                                 size_t len)
{
    size_t klen = strlen(key);
    struct centry *x = xmalloc(sizeof(*x) + klen + 1 + len + 1);
    x->h = h;
    x->ns = ns;
    x->len = len;
    x->next = NULL;
    memcpy(x->data, key, klen + 1);
    x->json = x->data + klen + 1;
    memcpy(x->json, json, len);
    x->json[len] = '\0';
    return x;
}

void rmcache_free(struct rmcache *c)
{
    if (c == NULL) {
        return;
    }
    for (int i = 0; i < SHARDS; i++) {
        for (int j = 0; j < BUCKETS; j++) {
            while (c->s[i].b[j] != NULL) {
                struct centry *x = c->s[i].b[j];
                c->s[i].b[j] = x->next;
                drop(x);
            }
        }
        pthread_mutex_destroy(&c->s[i].mu);
    }
    free(c);
}

static uint64_t key_hash(struct rmcache *c, int ns, const char *key)
{
    return siphash24(&c->sk, key, strlen(key)) ^ ((uint64_t)ns * 0x9e3779b97f4a7c15ULL);
}

static struct shard *shard_of(struct rmcache *c, uint64_t h)
{
    return &c->s[h % SHARDS];
}

/* The link that points at the entry (or at NULL where it would go). */
static struct centry **find(struct shard *s, uint64_t h, int ns, const char *key)
{
    struct centry **pp = &s->b[(h / SHARDS) % BUCKETS];
    while (*pp != NULL &&
           !((*pp)->h == h && (*pp)->ns == ns && strcmp((*pp)->data, key) == 0)) {
        pp = &(*pp)->next;
    }
    return pp;
}

bool rmcache_get(struct rmcache *c, int ns, const char *key, struct buf *out)
{
    uint64_t h = key_hash(c, ns, key);
    struct shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    struct centry *x = *find(s, h, ns, key);
    bool hit = x != NULL && buf_append(out, x->json, x->len) == ERR_OK;
    if (hit) {
        s->hits++;
    } else {
        s->misses++;
    }
    pthread_mutex_unlock(&s->mu);
    return hit;
}

uint64_t rmcache_generation(struct rmcache *c, int ns, const char *key)
{
    struct shard *s = shard_of(c, key_hash(c, ns, key));
    pthread_mutex_lock(&s->mu);
    uint64_t g = s->gen;
    pthread_mutex_unlock(&s->mu);
    return g;
}

void rmcache_put(struct rmcache *c, int ns, const char *key, const char *json,
                 size_t len, uint64_t gen)
{
    uint64_t h = key_hash(c, ns, key);
    struct shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    if (s->gen != gen) {
        pthread_mutex_unlock(&s->mu);       /* rendered from an older snapshot */
        return;
    }
    struct centry **pp = find(s, h, ns, key);
    if (*pp == NULL) {
        if (s->count >= c->max_per_shard) {
            /* full: make room by dropping the first entry of this bucket, or
             * of the next one that has any */
            for (size_t j = 0; j < BUCKETS; j++) {
                struct centry **vp = &s->b[((h / SHARDS) + j) % BUCKETS];
                if (*vp != NULL) {
                    struct centry *v = *vp;
                    *vp = v->next;
                    drop(v);
                    s->count--;
                    break;
                }
            }
            pp = find(s, h, ns, key);
        }
        s->count++;
    } else {
        struct centry *old = *pp;
        *pp = old->next;
        drop(old);
    }
    struct centry *x = centry_new(h, ns, key, json, len);
    x->next = *pp;
    *pp = x;
    pthread_mutex_unlock(&s->mu);
}

void rmcache_invalidate(struct rmcache *c, int ns, const char *key)
{
    uint64_t h = key_hash(c, ns, key);
    struct shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    s->gen++;
    struct centry **pp = find(s, h, ns, key);
    if (*pp != NULL) {
        struct centry *x = *pp;
        *pp = x->next;
        drop(x);
        s->count--;
    }
    pthread_mutex_unlock(&s->mu);
}

void rmcache_get_stats(struct rmcache *c, struct rmcache_stats *out)
{
    out->hits = out->misses = out->entries = 0;
    for (int i = 0; i < SHARDS; i++) {
        pthread_mutex_lock(&c->s[i].mu);
        out->hits += c->s[i].hits;
        out->misses += c->s[i].misses;
        out->entries += c->s[i].count;
        pthread_mutex_unlock(&c->s[i].mu);
    }
}
