/*
 * fuzz_event.c - libFuzzer target: decoding event data as read back from
 * the store (the projections' input). Must refuse or accept, never crash,
 * and what it accepts must be valid by the domain's own rules.
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
    struct tracking t;
    struct err e;
    enum tracking_kind kind = data[0] & 1 ? KIND_CONVERSION : KIND_IMPRESION;
    if (tracking_from_json(kind, (const char *)data + 1, size - 1, &t, &e) == ERR_OK) {
        if (!t.id_given || !t.ts_given || t.campana_id[0] == '\0' || t.valor < 0 ||
            t.valor > VALOR_MAX || !text_is_clean(t.id, strlen(t.id))) {
            abort();
        }
    }
    return 0;
}
