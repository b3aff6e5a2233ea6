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

#endif
