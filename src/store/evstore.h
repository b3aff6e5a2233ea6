/*
 * evstore.h - the event store: an append-only, globally ordered log of
 * domain events, the write side's single source of truth.
 *
 * Every event has a global position (gap-free, strictly increasing, visible
 * in commit order), an event_id (UUIDv7), the stream it belongs to
 * ("impresion:<id>"), its version in that stream, a type, a schema version,
 * the time it was recorded (UTC microseconds) and two JSON texts: data and
 * metadata. Nothing is ever updated or deleted.
 *
 * Appends are optimistic: each event names the stream version it expects
 * (EVSTORE_NO_STREAM for a new stream). If the stream has moved on, that
 * event is not written and its append_out says ERR_CONFLICT with the
 * stream's current version and last position; the others in the same call
 * are unaffected. A whole call is one transaction: either every
 * non-conflicting event is durable when it returns ERR_OK, or none is
 * (ERR_IO).
 *
 * Backends are a table of function pointers (like curl's vtls and SQLite's
 * VFS): evstore_sqlite.c (the embedded file) and evstore_pg.c (PostgreSQL,
 * for handlers on several machines). The contract suite in
 * tests/unit/test_evstore_contract.c runs against both.
 * Thread-safety: none; open one struct evstore per thread.
 */
#ifndef RASTRO_STORE_EVSTORE_H
#define RASTRO_STORE_EVSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "core/uuid.h"

#define EVSTORE_NO_STREAM 0     /* expected version: the stream must not exist */
#define EVSTORE_ANY (-1)        /* expected version: append whatever the stream holds */

enum {
    EVSTORE_READONLY = 1 << 0,  /* readers (projections, CLI): no append, no index */
};

/* An event to append. Borrowed: the store copies what it keeps. */
struct event_in {
    const char *stream_id;
    int64_t expected_version;
    const char *type;
    int schema_version;
    struct uuid event_id;
    int64_t recorded_at_us;
    const char *data;
    const char *metadata;
};

struct append_out {
    int status;                 /* ERR_OK or ERR_CONFLICT */
    int64_t position;           /* OK: the new event's; CONFLICT: the stream's last */
    int64_t stream_version;     /* OK: the new event's; CONFLICT: the stream's current */
};

/* An event read back. Borrowed: valid only during the callback. */
struct event_rec {
    int64_t position;
    struct uuid event_id;
    const char *stream_id;
    int64_t stream_version;
    const char *type;
    int schema_version;
    int64_t recorded_at_us;
    const char *data;
    size_t data_len;
    const char *metadata;
    size_t metadata_len;
};

/* Return non-zero to stop reading (evstore_read then returns that value). */
typedef int (*evstore_cb)(const struct event_rec *ev, void *arg);

struct evstore;

struct evstore_ops {
    const char *name;
    int (*append)(struct evstore *s, const struct event_in *ev, size_t n,
                  struct append_out *out, struct err *e);
    int (*read)(struct evstore *s, int64_t from, size_t max, evstore_cb cb, void *arg,
                struct err *e);
    int (*stream_version)(struct evstore *s, const char *stream_id, int64_t *version,
                          int64_t *last_position, struct err *e);
    int (*head)(struct evstore *s, int64_t *position, struct err *e);
    int (*size_bytes)(struct evstore *s, int64_t *bytes, struct err *e);
    void (*close)(struct evstore *s);
};

/* Backends start with this, so a struct evstore * is also theirs. */
struct evstore {
    const struct evstore_ops *ops;
};

/*
 * Opens the store named by spec: "sqlite" (or NULL/empty) is the embedded
 * file data_dir/events.db; "postgres://..." or "postgresql://..." a
 * PostgreSQL database (a libpq URL). Returns ERR_OK and sets *out, or an
 * error with a message in e (ERR_STATE for a schema this build does not
 * know, or none yet: see evstore_migrate).
 */
int evstore_open(const char *spec, const char *data_dir, int flags, struct evstore **out,
                 struct err *e) WARN_UNUSED;

/* Brings the store's schema to this build's version (`rastro migrate`):
 * *from and *to tell what it was and is. Safe to run again and from
 * several processes at once. SQLite creates its schema when opened. */
int evstore_migrate(const char *spec, const char *data_dir, int *from, int *to,
                    struct err *e) WARN_UNUSED;

/* Whether spec names PostgreSQL. */
bool evstore_is_postgres(const char *spec);

/* n events in one transaction; out has n entries. */
static inline int evstore_append(struct evstore *s, const struct event_in *ev, size_t n,
                                 struct append_out *out, struct err *e)
{
    return s->ops->append(s, ev, n, out, e);
}

/* Calls cb for up to max events with position >= from, in position order. */
static inline int evstore_read(struct evstore *s, int64_t from, size_t max, evstore_cb cb,
                               void *arg, struct err *e)
{
    return s->ops->read(s, from, max, cb, arg, e);
}

/* Version and last position of a stream; ERR_NOTFOUND if it has no events. */
static inline int evstore_stream_version(struct evstore *s, const char *stream_id,
                                         int64_t *version, int64_t *last_position,
                                         struct err *e)
{
    return s->ops->stream_version(s, stream_id, version, last_position, e);
}

/* Position of the last committed event (0 when empty). */
static inline int evstore_head(struct evstore *s, int64_t *position, struct err *e)
{
    return s->ops->head(s, position, e);
}

static inline int evstore_size_bytes(struct evstore *s, int64_t *bytes, struct err *e)
{
    return s->ops->size_bytes(s, bytes, e);
}

/* NULL is a no-op. */
static inline void evstore_close(struct evstore *s)
{
    if (s != NULL) {
        s->ops->close(s);
    }
}

/* Process-wide set-up, before any store or read model is opened: turns
 * off SQLite's memory statistics, whose global mutex every allocation in
 * every connection would otherwise take. */
void evstore_global_init(void);

/* Backend constructors, for evstore_open. */
int evstore_sqlite_open(const char *path, int flags, struct evstore **out, struct err *e);
int evstore_pg_open(const char *url, int flags, struct evstore **out, struct err *e);
int evstore_pg_migrate(const char *url, int *from, int *to, struct err *e);

#endif
