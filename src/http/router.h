/*
 * router.h - maps a method and a raw (still percent-encoded) path to a
 * route, and decodes path segments and query-string values.
 *
 * Pure functions, no allocation, thread-safe; tests/unit/test_router.c
 * covers them with tables and they are the fuzzing surface for paths.
 * Paths are matched segment by segment after percent-decoding each one on
 * its own, so an id may contain "/" (sent as %2F). "campañas" arrives as
 * campa%C3%B1as; the ASCII "campanas" is accepted as well.
 */
#ifndef RASTRO_HTTP_ROUTER_H
#define RASTRO_HTTP_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "domain/tracking.h"
#include "read/readmodel.h"

enum route_id {
    R_NONE = 0,
    R_CMD,          /* POST /tracking/impresiones | /tracking/conversiones */
    R_HEALTH,       /* GET /tracking/health */
    R_Q_HEALTH,     /* GET /tracking/queries/health */
    R_Q_BYID,       /* GET /tracking/queries/{impresiones|conversiones}/{id} */
    R_Q_LIST,       /* GET /tracking/queries/{campañas|influencers}/{id}/{impresiones|conversiones} */
    R_Q_STATS,      /* GET /tracking/queries/{campañas|influencers}/{id}/estadisticas */
    R_METRICS,      /* GET /metrics (Prometheus text format) */
    R_LIVE,         /* GET /health/live */
    R_READY,        /* GET /health/ready */
    R_Q_ESTADO,     /* GET /tracking/queries/estado */
};

#define ROUTE_KEY_MAX (ID_MAX * 2)

struct route {
    enum route_id id;
    enum tracking_kind kind;
    enum rm_scope scope;
    char key[ROUTE_KEY_MAX + 1];    /* decoded {id} segment */
    const char *allow;              /* methods allowed on this path */
};

/* Status codes route_match returns besides ERR_OK / ERR_NOTFOUND. */
#define ROUTE_BAD_METHOD 405
#define ROUTE_BAD_PATH 400

/*
 * ERR_OK and *out filled; ERR_NOTFOUND (no such path, or an id that cannot
 * exist); ROUTE_BAD_METHOD (out->allow says what is); ROUTE_BAD_PATH (a
 * malformed percent escape).
 */
int route_match(const char *method, const char *raw_path, struct route *out);

/* Percent-decodes n bytes of in ('+' stays '+'); ERR_INVALID on a bad
 * escape or a decoded NUL, ERR_TOOBIG if it does not fit out (max bytes
 * including the NUL). */
int percent_decode(const char *in, size_t n, char *out, size_t max, size_t *out_len) WARN_UNUSED;

/* Query-string integer: NULL -> dflt; otherwise a decimal integer in
 * [min, max] (after percent-decoding), else ERR_INVALID. */
int query_int(const char *raw, int64_t dflt, int64_t min, int64_t max, int64_t *out) WARN_UNUSED;

#endif
