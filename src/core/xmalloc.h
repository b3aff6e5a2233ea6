/*
 * xmalloc.h - allocation that aborts on exhaustion (as in Redis and kore).
 * Every other failure is returned to the caller; running out of memory is
 * not something a request handler can usefully recover from.
 */
#ifndef RASTRO_CORE_XMALLOC_H
#define RASTRO_CORE_XMALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
