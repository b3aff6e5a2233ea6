/*
 * buf.c - see buf.h.
 */
#include "core/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/xmalloc.h"

void buf_init(struct buf *b, size_t cap)
{
    b->p = NULL;
    b->len = 0;
    b->alloc = 0;
    b->cap = cap;
}

void buf_fini(struct buf *b)
{
    free(b->p);
    buf_init(b, b->cap);
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->p != NULL) {
        b->p[0] = '\0';
    }
}

static int reserve(struct buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (b->cap != 0 && b->len + extra > b->cap) {
        return ERR_TOOBIG;
    }
    if (need <= b->alloc) {
        return ERR_OK;
    }
    size_t n = b->alloc ? b->alloc : 256;
    while (n < need) {
        n *= 2;
    }
    b->p = xrealloc(b->p, n);
    b->alloc = n;
    return ERR_OK;
}

int buf_reserve(struct buf *b, size_t extra)
{
    return reserve(b, extra);
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    int rc = reserve(b, n);
    if (rc != ERR_OK) {
        return rc;
    }
    if (n > 0) {
        memcpy(b->p + b->len, p, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
    return ERR_OK;
}

int buf_puts(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_putc(struct buf *b, char c)
{
    return buf_append(b, &c, 1);
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return ERR_INVALID;
    }
    if ((size_t)n < sizeof(small)) {
        return buf_append(b, small, (size_t)n);
    }
    int rc = reserve(b, (size_t)n);
    if (rc != ERR_OK) {
        return rc;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return ERR_OK;
}

char *buf_take(struct buf *b)
{
    char *p = b->p;
    if (p == NULL) {
        p = xstrdup("");
    }
    buf_init(b, b->cap);
    return p;
}
