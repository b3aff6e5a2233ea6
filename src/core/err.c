/*
 * err.c - see err.h.
 */
#include "core/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void vset(struct err *e, const char *file, int line, int code,
                 const char *fmt, va_list ap)
{
    e->code = code;
    e->file = file;
    e->line = line;
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
}

int err_set_at(struct err *e, const char *file, int line, int code,
               const char *fmt, ...)
{
    if (e != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vset(e, file, line, code, fmt, ap);
        va_end(ap);
        e->field[0] = '\0';
    }
    return code;
}

int err_field_at(struct err *e, const char *file, int line, int code,
                 const char *field, const char *fmt, ...)
{
    if (e != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vset(e, file, line, code, fmt, ap);
        va_end(ap);
        snprintf(e->field, sizeof(e->field), "%s", field);
    }
    return code;
}

void err_clear(struct err *e)
{
    if (e != NULL) {
        memset(e, 0, sizeof(*e));
    }
}

const char *err_name(int code)
{
    switch (code) {
    case ERR_OK: return "ok";
    case ERR_INVALID: return "invalid";
    case ERR_NOTFOUND: return "not found";
    case ERR_CONFLICT: return "conflict";
    case ERR_IO: return "i/o";
    case ERR_TOOBIG: return "too big";
    case ERR_AGAIN: return "again";
    case ERR_NOMEM: return "out of memory";
    case ERR_STATE: return "state";
    default: return "unknown";
    }
}
