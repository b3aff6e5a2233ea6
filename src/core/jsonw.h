/*
 * jsonw.h - writes JSON text into a struct buf.
 *
 * A small writer, not a parser (parsing is cJSON's job): it escapes strings
 * correctly (input must be valid UTF-8, which the domain layer checks) and
 * tracks commas so callers cannot produce malformed output by forgetting
 * one. Nesting depth is fixed at 16. Errors (ERR_TOOBIG from a capped buf)
 * are sticky: check jsonw_status() once at the end.
 */
#ifndef RASTRO_CORE_JSONW_H
#define RASTRO_CORE_JSONW_H

#include <stdbool.h>
#include <stdint.h>

#include "core/buf.h"

struct jsonw {
    struct buf *b;
    int depth;
    bool need_comma[16];
    int status;
};

void jsonw_init(struct jsonw *w, struct buf *b);
int jsonw_status(const struct jsonw *w);

void jsonw_obj_open(struct jsonw *w);
void jsonw_obj_close(struct jsonw *w);
void jsonw_arr_open(struct jsonw *w);
void jsonw_arr_close(struct jsonw *w);
void jsonw_key(struct jsonw *w, const char *k);
void jsonw_str(struct jsonw *w, const char *s);          /* NULL -> null */
void jsonw_strn(struct jsonw *w, const char *s, size_t n);
void jsonw_int(struct jsonw *w, int64_t v);
void jsonw_double(struct jsonw *w, double v);            /* non-finite -> null */
void jsonw_bool(struct jsonw *w, bool v);
void jsonw_null(struct jsonw *w);
/* Appends already-encoded JSON text as one value. */
void jsonw_raw(struct jsonw *w, const char *json);
/* A fixed-point amount in ten-thousandths, as an exact decimal number. */
void jsonw_fixed4(struct jsonw *w, int64_t ticks);

/* Key/value shorthands. */
void jsonw_kstr(struct jsonw *w, const char *k, const char *s);
void jsonw_kint(struct jsonw *w, const char *k, int64_t v);

/* Escapes s (n bytes) as a JSON string, with quotes, into b. */
int json_escape(struct buf *b, const char *s, size_t n) WARN_UNUSED;

#endif
