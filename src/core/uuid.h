/*
 * uuid.h - UUIDv7 (time-ordered) generation and text form.
 *
 * uuid_v7() is thread-safe and monotonic within the process: ids made in
 * the same millisecond keep increasing (RFC 9562 method 1, a counter in
 * rand_a), so ids sort in the order they were made.
 */
#ifndef RASTRO_CORE_UUID_H
#define RASTRO_CORE_UUID_H

#include <stdbool.h>
#include <stdint.h>

#define UUID_STR_LEN 36   /* without the NUL */

struct uuid {
    uint8_t b[16];
};

void uuid_v7(struct uuid *out);
void uuid_v4(struct uuid *out);
/* Writes 36 characters plus NUL into out (at least 37 bytes). */
void uuid_format(const struct uuid *u, char *out);
/* Parses the canonical 36-character form (any case); false if malformed. */
bool uuid_parse(const char *s, struct uuid *out);

#endif
