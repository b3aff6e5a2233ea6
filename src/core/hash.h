/*
 * hash.h - a fast 64-bit non-cryptographic hash for in-memory indexes.
 * Collisions are possible and every user of it must confirm a hit against
 * the real key; the hash only narrows the search.
 */
#ifndef RASTRO_CORE_HASH_H
#define RASTRO_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

uint64_t hash64(const void *p, size_t n);

/*
 * SipHash-2-4 (Aumasson and Bernstein) with a 128-bit secret key: a keyed
 * hash whose collisions an outsider cannot compute, for every index whose
 * keys come from clients (ids, campaign names). An unkeyed hash there lets
 * a client craft thousands of ids under one hash value.
 */
struct siphash_key {
    uint64_t k0, k1;
};
uint64_t siphash24(const struct siphash_key *key, const void *p, size_t n);

#endif
