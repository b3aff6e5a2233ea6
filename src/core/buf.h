/*
 * buf.h - a growable byte buffer with an optional cap (curl's dynbuf).
 *
 * Storage the caller owns: buf_init() / buf_fini(). The contents are always
 * NUL-terminated (the NUL is not counted in len). Appends beyond the cap
 * fail with ERR_TOOBIG and leave the buffer unchanged, so a buffer fed from
 * the network can never grow without bound. Not thread-safe.
 */
#ifndef RASTRO_CORE_BUF_H
#define RASTRO_CORE_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

struct buf {
    char *p;
    size_t len;
    size_t alloc;
    size_t cap;     /* 0 = no cap */
};

void buf_init(struct buf *b, size_t cap);
void buf_fini(struct buf *b);
void buf_reset(struct buf *b);                 /* len = 0, keeps memory */
int buf_append(struct buf *b, const void *p, size_t n) WARN_UNUSED;
/* Room for extra more bytes (and the NUL) without a reallocation: a writer
 * may then fill p[len..len+extra) itself and set len (and the NUL). The cap
 * applies as for an append of extra bytes. */
int buf_reserve(struct buf *b, size_t extra) WARN_UNUSED;
int buf_puts(struct buf *b, const char *s) WARN_UNUSED;
int buf_putc(struct buf *b, char c) WARN_UNUSED;
int buf_printf(struct buf *b, const char *fmt, ...) PRINTF_LIKE(2, 3) WARN_UNUSED;
/* Hands the contents to the caller (free() them); the buffer is emptied. */
char *buf_take(struct buf *b);

#endif
