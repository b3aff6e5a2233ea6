/*
 * fuzz_command.c - libFuzzer target: command JSON decoding and validation.
 * The first byte picks the kind; the rest is the body. Oracle: whatever is
 * accepted must encode to event data that decodes back to the same
 * payload (what the store and the projections rely on).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "domain/tracking.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    enum tracking_kind kind = data[0] & 1 ? KIND_CONVERSION : KIND_IMPRESION;
    struct tracking t, back;
    struct err e;
    if (tracking_parse_command(kind, (const char *)data + 1, size - 1, &t, &e) != ERR_OK) {
        if (e.field[0] == '\0') {
            abort();            /* every refusal names a field */
        }
        return 0;
    }
    tracking_fill_defaults(&t, "01900000-0000-7000-8000-000000000000", 1764324900000000LL);
    struct buf b;
    buf_init(&b, 0);
    if (tracking_to_json(&t, &b) != ERR_OK ||
        tracking_from_json(kind, b.p, b.len, &back, &e) != ERR_OK ||
        !tracking_same_payload(&back, &t) || back.timestamp_us != t.timestamp_us) {
        abort();
    }
    buf_fini(&b);
    return 0;
}
