/*
 * test_rmcache.c - the statistics answer cache: hits and misses, scopes
 * apart, invalidation, the generation check that keeps an answer rendered
 * from an older snapshot out, and the bound on entries.
 */
#include <stdio.h>

#include "check.h"
#include "read/rmcache.h"

static bool got(struct rmcache *c, int scope, const char *key, const char *want)
{
    struct buf b;
    buf_init(&b, 0);
    bool hit = rmcache_get(c, scope, key, &b);
    bool ok = want == NULL ? !hit : hit && strcmp(b.p, want) == 0;
    buf_fini(&b);
    return ok;
}

int main(void)
{
    struct rmcache *c = rmcache_new(4096);
    CHECK(got(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", NULL));
    uint64_t g = rmcache_generation(c, RMC_STATS(SCOPE_CAMPANA), "camp-1");
    rmcache_put(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", "{\"n\":1}", 7, g);
    CHECK(got(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", "{\"n\":1}"));
    /* the same name in another scope or namespace is another answer */
    CHECK(got(c, RMC_STATS(SCOPE_INFLUENCER), "camp-1", NULL));
    CHECK(got(c, RMC_BYID(0), "camp-1", NULL));

    /* invalidated: gone, and a put from a snapshot taken before is refused */
    uint64_t before = rmcache_generation(c, RMC_STATS(SCOPE_CAMPANA), "camp-1");
    rmcache_invalidate(c, RMC_STATS(SCOPE_CAMPANA), "camp-1");
    CHECK(got(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", NULL));
    rmcache_put(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", "{\"n\":1}", 7, before);
    CHECK(got(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", NULL));
    uint64_t after = rmcache_generation(c, RMC_STATS(SCOPE_CAMPANA), "camp-1");
    CHECK(after != before);
    rmcache_put(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", "{\"n\":2}", 7, after);
    CHECK(got(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", "{\"n\":2}"));
    /* a newer put replaces */
    rmcache_put(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", "{\"n\":3}", 7, after);
    CHECK(got(c, RMC_STATS(SCOPE_CAMPANA), "camp-1", "{\"n\":3}"));

    struct rmcache_stats st;
    rmcache_get_stats(c, &st);
    CHECK(st.entries == 1 && st.hits == 3 && st.misses == 5);
    rmcache_free(c);

    /* bounded: 64 entries at most, whatever is put */
    c = rmcache_new(64);
    for (int i = 0; i < 5000; i++) {
        char key[32];
        snprintf(key, sizeof(key), "k%d", i);
        rmcache_put(c, RMC_STATS(SCOPE_INFLUENCER), key, "{}", 2,
                    rmcache_generation(c, RMC_STATS(SCOPE_INFLUENCER), key));
    }
    rmcache_get_stats(c, &st);
    CHECKF(st.entries <= 64 && st.entries > 0, "entries %llu", (unsigned long long)st.entries);
    CHECK(got(c, RMC_STATS(SCOPE_INFLUENCER), "k4999", "{}"));     /* the newest is there */
    rmcache_free(c);
    rmcache_free(NULL);
    return check_done("test_rmcache");
}
