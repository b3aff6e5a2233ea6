/*
 * fuzz_route.c - libFuzzer target: path routing, percent-decoding and
 * query-string integers. Input: one byte choosing the method, then a path.
 * Oracles: no crash; an accepted id is clean text within ID_MAX.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = { "GET", "POST", "HEAD", "PUT", "DELETE", "" };
    if (size < 1 || size > 8192) {
        return 0;
    }
    char *path = malloc(size);
    memcpy(path, data + 1, size - 1);
    path[size - 1] = '\0';
    struct route r;
    int rc = route_match(methods[data[0] % 6], path, &r);
    if (rc == ERR_OK && (r.id == R_Q_BYID || r.id == R_Q_LIST || r.id == R_Q_STATS)) {
        size_t n = strlen(r.key);
        if (n == 0 || n > ID_MAX || !text_is_clean(r.key, n)) {
            abort();
        }
    }
    char out[256];
    size_t n;
    if (percent_decode(path, strlen(path), out, sizeof(out), &n) == ERR_OK && n != strlen(out)) {
        abort();                /* the length must match the text (no NUL inside) */
    }
    int64_t v;
    if (query_int(path, 0, 1, 1000, &v) == ERR_OK && (v < 1 || v > 1000)) {
        abort();
    }
    free(path);
    return 0;
}
