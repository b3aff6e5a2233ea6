/*
 * hash.c - see hash.h. FNV-1a over 8-byte words, then murmur3's fmix64 so
 * that every input bit reaches every output bit (the low bits pick buckets).
 */
#include "core/hash.h"

#include <string.h>

static uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

uint64_t hash64(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    while (n > 0) {
        h = (h ^ *s++) * 0x100000001b3ULL;
        n--;
    }
    return fmix64(h);
}
