/*
 * uuid.c - see uuid.h. Randomness from getrandom(2), taken in blocks so the
 * hot path does not make a system call per id.
 */
#include "core/uuid.h"

#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/hex.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t pool[4096];
static size_t pool_left;
static uint64_t last_ms;
static uint16_t counter;   /* 12 bits used */

/* Caller holds lock. */
static void random_bytes(uint8_t *out, size_t n)
{
    while (n > 0) {
        if (pool_left == 0) {
            size_t got = 0;
            while (got < sizeof(pool)) {
                ssize_t r = getrandom(pool + got, sizeof(pool) - got, 0);
                if (r > 0) {
                    got += (size_t)r;
                }
            }
            pool_left = sizeof(pool);
        }
        size_t take = n < pool_left ? n : pool_left;
        memcpy(out, pool + sizeof(pool) - pool_left, take);
        pool_left -= take;
        out += take;
        n -= take;
    }
}

void uuid_v7(struct uuid *out)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;

    pthread_mutex_lock(&lock);
    random_bytes(out->b, 16);
    if (ms > last_ms) {
        last_ms = ms;
        counter = (uint16_t)(out->b[6] & 0x03) << 8 | out->b[7];  /* random start, room to grow */
    } else {
        ms = last_ms;               /* clock went back or same ms: stay monotonic */
        counter++;
        if (counter > 0x0fff) {     /* counter exhausted: borrow the next millisecond */
            last_ms++;
            ms = last_ms;
            counter = 0;
        }
    }
    uint16_t c = counter;
    pthread_mutex_unlock(&lock);

    out->b[0] = (uint8_t)(ms >> 40);
    out->b[1] = (uint8_t)(ms >> 32);
    out->b[2] = (uint8_t)(ms >> 24);
    out->b[3] = (uint8_t)(ms >> 16);
    out->b[4] = (uint8_t)(ms >> 8);
    out->b[5] = (uint8_t)ms;
    out->b[6] = (uint8_t)(0x70 | ((c >> 8) & 0x0f));
    out->b[7] = (uint8_t)c;
    out->b[8] = (uint8_t)((out->b[8] & 0x3f) | 0x80);
}

void uuid_v4(struct uuid *out)
{
    pthread_mutex_lock(&lock);
    random_bytes(out->b, 16);
    pthread_mutex_unlock(&lock);
    out->b[6] = (uint8_t)((out->b[6] & 0x0f) | 0x40);
    out->b[8] = (uint8_t)((out->b[8] & 0x3f) | 0x80);
}

void uuid_format(const struct uuid *u, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t j = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            out[j++] = '-';
        }
        out[j++] = hex[u->b[i] >> 4];
        out[j++] = hex[u->b[i] & 15];
    }
    out[j] = '\0';
}

bool uuid_parse(const char *s, struct uuid *out)
{
    struct uuid u;
    size_t j = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            if (s[j++] != '-') {
                return false;
            }
        }
        int hi = hex_digit(s[j]);
        int lo = hi < 0 ? -1 : hex_digit(s[j + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        u.b[i] = (uint8_t)(hi << 4 | lo);
        j += 2;
    }
    if (s[j] != '\0') {
        return false;
    }
    *out = u;
    return true;
}
