/*
 * err.h - one status enum for the whole program, and a place for details.
 *
 * Fallible functions return ERR_OK (0) or a negative ERR_* code and, when
 * given a non-NULL struct err, write a human-readable message there (with
 * file and line, like nats.c's nats_setError). There is no global error
 * state. Thread-safety: a struct err belongs to one caller.
 */
#ifndef RASTRO_CORE_ERR_H
#define RASTRO_CORE_ERR_H

#include <stddef.h>

enum {
    ERR_OK = 0,
    ERR_INVALID = -1,   /* bad input: HTTP 400 */
    ERR_NOTFOUND = -2,  /* HTTP 404 */
    ERR_CONFLICT = -3,  /* stream moved on / id reused with other payload: 409 */
    ERR_IO = -4,        /* disk, database, network: HTTP 503 */
    ERR_TOOBIG = -5,    /* a capped buffer would overflow: HTTP 413 */
    ERR_AGAIN = -6,     /* not yet; try later (e.g. projection behind) */
    ERR_NOMEM = -7,
    ERR_STATE = -8,     /* wrong state: closed, shutting down, schema unknown */
};

struct err {
    int code;
    const char *file;
    int line;
    char field[64];     /* the offending input field, when there is one */
    char msg[256];
};

#if defined(__GNUC__)
#define WARN_UNUSED __attribute__((warn_unused_result))
#define PRINTF_LIKE(a, b) __attribute__((format(printf, a, b)))
#else
#define WARN_UNUSED
#define PRINTF_LIKE(a, b)
#endif

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Records code and message in *e (which may be NULL); returns code. */
int err_set_at(struct err *e, const char *file, int line, int code,
               const char *fmt, ...) PRINTF_LIKE(5, 6);
#define err_set(e, code, ...) err_set_at((e), __FILE__, __LINE__, (code), __VA_ARGS__)

/* Like err_set, and names the input field at fault. */
int err_field_at(struct err *e, const char *file, int line, int code,
                 const char *field, const char *fmt, ...) PRINTF_LIKE(6, 7);
#define err_field(e, code, field, ...) \
    err_field_at((e), __FILE__, __LINE__, (code), (field), __VA_ARGS__)

void err_clear(struct err *e);

/* Short name of a code ("invalid", "conflict", ...); never NULL. */
const char *err_name(int code);

#endif
