/*
 * evstore_pg.c - the central event store on PostgreSQL, for command
 * handlers on several machines appending to one log (libpq).
 *
 * Layout (schema version 1, applied by `rastro migrate`, see pg_migrate):
 * one table, events, keyed by position, UNIQUE(stream_id, stream_version)
 * (stream ids compare bytewise, COLLATE "C", whatever the database locale)
 * (which is also what makes a command id idempotent across machines: the
 * stream of a command is "impresion:<id>"), triggers that refuse UPDATE,
 * DELETE and TRUNCATE, and rastro_schema holding the version.
 *
 * How positions stay gap-free and visible in commit order with many
 * writers. A sequence (or an identity column) is the usual mistake: two
 * transactions take 10 and 11, 11 commits first, a reader tailing by
 * position sees 11, moves its checkpoint past 10 and never sees 10 when it
 * commits a moment later (and a rolled-back 10 leaves a hole forever).
 * Here every append transaction first takes one transaction-level advisory
 * lock (pg_advisory_xact_lock), in its own statement, and only then, in
 * later statements (READ COMMITTED: each statement takes a new snapshot),
 * reads max(position) and assigns head+1, head+2, ... So appends are
 * serialised from the lock to COMMIT. PostgreSQL marks a transaction
 * visible (ProcArrayEndTransaction) before it releases its locks, so when
 * the next writer gets the lock the previous batch is already visible to
 * every new snapshot: a reader that sees position P can never later find
 * a committed event below P, and a rolled-back batch frees its positions
 * for the next one, so there are no holes. tests/unit/test_pg_order.c
 * proves it with three processes appending while a fourth tails.
 *
 * Group commit: one append call is one transaction and two round trips in
 * libpq's pipeline mode: (BEGIN, lock, head, the current version of every
 * stream in the batch), then (one INSERT of all rows through unnest() of
 * nine arrays, COMMIT). The conflict decisions are made in C between the
 * two, under the lock, so nothing else can move those streams meanwhile.
 *
 * Connections: one per struct evstore (like every backend). A lost
 * connection fails the call in flight with ERR_IO (HTTP 503; the
 * transaction never committed, or committed whole: it is one transaction,
 * so a batch is never half-written) and is re-established on a later call,
 * at most once per backoff interval (100 ms doubling to 5 s), so a dead
 * server costs callers an immediate ERR_IO rather than a hang. An append
 * whose answers do not come within 5 s drops the connection (a frozen
 * server), TCP keepalives and tcp_user_timeout find a vanished peer, and
 * statements time out on the server after 30 s.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"
#include "store/evstore.h"

#define PG_SCHEMA_VERSION 1
/* pg_advisory_xact_lock keys, one for appends, one for migrations */
#define LOCK_APPEND "7526769250022511"
#define LOCK_MIGRATE "7526769250022512"
#define BACKOFF_MIN_US 100000
#define BACKOFF_MAX_US 5000000
#define APPEND_TIMEOUT_MS 5000     /* an append's answers, from the first send */

struct pg_store {
    struct evstore base;
    PGconn *conn;
    char *url;
    int flags;
    int64_t retry_at_us;        /* no reconnect before this (time_mono_us) */
    int64_t backoff_us;
    struct buf arr[9];          /* append: the nine array parameters */
    struct buf keys;            /* append: the batch's stream ids, as a text[] */
};

static const char *const schema_v1[] = {
    "CREATE TABLE rastro_schema(version integer NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE events("
    " position bigint PRIMARY KEY CHECK (position > 0),"
    " event_id uuid NOT NULL,"
    " stream_id text COLLATE \"C\" NOT NULL,"
    " stream_version bigint NOT NULL CHECK (stream_version > 0),"
    " type text NOT NULL,"
    " schema_version integer NOT NULL,"
    " recorded_at timestamptz NOT NULL,"
    " data json NOT NULL,"
    " metadata json NOT NULL,"
    " UNIQUE (stream_id, stream_version))",
    "CREATE FUNCTION rastro_refuse_change() RETURNS trigger LANGUAGE plpgsql AS"
    " $$BEGIN RAISE EXCEPTION 'the event log is append-only'; END$$",
    "CREATE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON events"
    " FOR EACH ROW EXECUTE FUNCTION rastro_refuse_change()",
    "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events"
    " FOR EACH STATEMENT EXECUTE FUNCTION rastro_refuse_change()",
    "INSERT INTO rastro_schema(version) VALUES (1)",
};

/* Prepared on every (re)connection. */
enum { Q_LOCK, Q_HEAD, Q_STREAMS, Q_INSERT, Q_READ, Q_STREAM, Q_SIZE, Q_N };
static const char *const queries[Q_N] = {
    [Q_LOCK] = "SELECT pg_advisory_xact_lock(" LOCK_APPEND ")",
    [Q_HEAD] = "SELECT coalesce(max(position), 0) FROM events",
    /* one index probe per stream id, whatever plan the statement caches
     * (a generic plan for "= ANY($1)" may scan the table) */
    [Q_STREAMS] = "SELECT k.id, x.v, x.p FROM unnest($1::text[]) AS k(id) CROSS JOIN LATERAL"
                  " (SELECT stream_version AS v, position AS p FROM events"
                  "  WHERE stream_id = k.id ORDER BY stream_version DESC LIMIT 1) AS x",
    [Q_INSERT] = "INSERT INTO events(position, event_id, stream_id, stream_version, type,"
                 " schema_version, recorded_at, data, metadata)"
                 " SELECT p, i, s, v, t, sv, 'epoch'::timestamptz + r * interval '1 microsecond',"
                 " d, m FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::int8[], $5::text[],"
                 " $6::int4[], $7::int8[], $8::json[], $9::json[]) AS x(p, i, s, v, t, sv, r, d, m)",
    [Q_READ] = "SELECT position, event_id, stream_id, stream_version, type, schema_version,"
               " (extract(epoch FROM recorded_at) * 1000000)::int8, data, metadata"
               " FROM events WHERE position >= $1 ORDER BY position LIMIT $2",
    [Q_STREAM] = "SELECT max(stream_version), max(position) FROM events WHERE stream_id = $1",
    [Q_SIZE] = "SELECT pg_total_relation_size('events')",
};
static const char *const qnames[Q_N] = { "lock", "head", "streams", "insert", "read",
                                         "stream", "size" };

static int pg_fail(struct pg_store *s, struct err *e, const char *what, const PGresult *res)
{
    const char *msg = res != NULL ? PQresultErrorMessage(res) : "";
    if (msg == NULL || msg[0] == '\0') {
        msg = s->conn != NULL ? PQerrorMessage(s->conn) : "no connection";
    }
    char clean[200];
    snprintf(clean, sizeof(clean), "%s", msg);
    clean[strcspn(clean, "\n")] = '\0';
    return err_set(e, ERR_IO, "%s: %s", what, clean);
}

static void disconnect(struct pg_store *s)
{
    if (s->conn != NULL) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
}

/* Runs one statement without parameters outside pipeline mode. */
static int simple(PGconn *c, const char *sql, ExecStatusType want, PGresult **keep)
{
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == want;
    if (ok && keep != NULL) {
        *keep = r;
    } else {
        PQclear(r);
    }
    return ok ? ERR_OK : ERR_IO;
}

/* The schema version in the database: 0 when it has none. */
static int schema_version(PGconn *c, int *ver, struct err *e)
{
    PGresult *r = NULL;
    if (simple(c, "SELECT to_regclass('rastro_schema') IS NOT NULL", PGRES_TUPLES_OK, &r) !=
        ERR_OK) {
        return err_set(e, ERR_IO, "reading schema version: %s", PQerrorMessage(c));
    }
    bool has = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    *ver = 0;
    if (!has) {
        return ERR_OK;
    }
    if (simple(c, "SELECT max(version) FROM rastro_schema", PGRES_TUPLES_OK, &r) != ERR_OK) {
        return err_set(e, ERR_IO, "reading schema version: %s", PQerrorMessage(c));
    }
    *ver = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return ERR_OK;
}

/* Server notices (e.g. "already exists, skipping") are not errors. */
static void quiet(void *arg, const char *msg)
{
    (void)arg;
    log_debug("PostgreSQL notice", "msg=\"%.*s\"", (int)strcspn(msg, "\n"), msg);
}

static PGconn *dial(const char *url, struct err *e)
{
    /* defaults first; the URL (expanded in place of dbname, last) overrides them */
    const char *keys[] = { "connect_timeout", "keepalives_idle", "keepalives_interval",
                           "keepalives_count", "tcp_user_timeout", "application_name", "dbname",
                           NULL };
    const char *vals[] = { "5", "10", "5", "3", "10000", "rastro", url, NULL };
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", c != NULL ? PQerrorMessage(c) : "out of memory");
        msg[strcspn(msg, "\n")] = '\0';
        err_set(e, ERR_IO, "cannot connect to PostgreSQL: %s", msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, quiet, NULL);
    return c;
}

/* Connects, checks the schema and prepares the statements. */
static int connect_store(struct pg_store *s, struct err *e)
{
    PGconn *c = dial(s->url, e);
    if (c == NULL) {
        return ERR_IO;
    }
    /* durability is not left to the server's defaults: a COMMIT that
     * returned is flushed to its WAL */
    /* and a transaction left open by a frozen or cut-off writer must not
     * hold the append lock for long: it is ended after 10 s idle, and a
     * writer gives up waiting for the lock after 4 s (inside its 5 s
     * deadline, so its backend stops waiting too instead of piling up) */
    if (simple(c, "SET synchronous_commit = on", PGRES_COMMAND_OK, NULL) != ERR_OK ||
        simple(c, "SET statement_timeout = '30s'", PGRES_COMMAND_OK, NULL) != ERR_OK ||
        simple(c, "SET lock_timeout = '4s'", PGRES_COMMAND_OK, NULL) != ERR_OK ||
        simple(c, "SET idle_in_transaction_session_timeout = '10s'", PGRES_COMMAND_OK, NULL) !=
            ERR_OK) {
        err_set(e, ERR_IO, "setting up the session: %s", PQerrorMessage(c));
        PQfinish(c);
        return ERR_IO;
    }
    int ver = 0;
    int rc = schema_version(c, &ver, e);
    if (rc == ERR_OK && ver != PG_SCHEMA_VERSION) {
        rc = ver == 0 ? err_set(e, ERR_STATE,
                                "the database has no rastro schema; run `rastro migrate --store"
                                " URL` first")
                      : err_set(e, ERR_STATE,
                                "the database has rastro schema version %d; this build knows"
                                " %d (upgrade rastro)", ver, PG_SCHEMA_VERSION);
    }
    for (int i = 0; i < Q_N && rc == ERR_OK; i++) {
        PGresult *r = PQprepare(c, qnames[i], queries[i], 0, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            rc = err_set(e, ERR_IO, "preparing %s: %s", qnames[i], PQerrorMessage(c));
        }
        PQclear(r);
    }
    if (rc != ERR_OK) {
        PQfinish(c);
        return rc;
    }
    s->conn = c;
    return ERR_OK;
}

/* A usable connection, or ERR_IO at once while backing off. */
static int ensure(struct pg_store *s, struct err *e)
{
    if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK) {
        return ERR_OK;
    }
    disconnect(s);
    int64_t now = time_mono_us();
    if (now < s->retry_at_us) {
        return err_set(e, ERR_IO, "PostgreSQL unreachable; retrying in %lld ms",
                       (long long)((s->retry_at_us - now) / 1000));
    }
    int rc = connect_store(s, e);
    if (rc == ERR_OK) {
        if (s->backoff_us > 0) {
            log_info("reconnected to PostgreSQL", NULL);
        }
        s->backoff_us = 0;
        s->retry_at_us = 0;
        return ERR_OK;
    }
    s->backoff_us = s->backoff_us == 0 ? BACKOFF_MIN_US : s->backoff_us * 2;
    if (s->backoff_us > BACKOFF_MAX_US) {
        s->backoff_us = BACKOFF_MAX_US;
    }
    s->retry_at_us = now + s->backoff_us;
    log_warn("PostgreSQL connection failed", "retry_ms=%lld err=\"%s\"",
             (long long)(s->backoff_us / 1000), e != NULL ? e->msg : "");
    return rc;
}

/* After a failed call: drop a broken connection so ensure() redials. */
static int after_error(struct pg_store *s, int rc)
{
    if (s->conn != NULL && PQstatus(s->conn) != CONNECTION_OK) {
        log_warn("PostgreSQL connection lost", NULL);
        disconnect(s);
        s->backoff_us = BACKOFF_MIN_US;
        s->retry_at_us = time_mono_us() + BACKOFF_MIN_US;
    }
    return rc;
}

static int next_result(struct pg_store *s, int64_t deadline, PGresult **out);

/* PQexecPrepared with the same deadline as an append (a frozen server must
 * not hold the committer, the relay or a handler): the statement's result,
 * or NULL (failed to send, or no answer in time: connection dropped). */
static PGresult *exec_waiting(struct pg_store *s, int q, int nparams, const char *const *params)
{
    if (!PQsendQueryPrepared(s->conn, qnames[q], nparams, params, NULL, NULL, 0)) {
        return NULL;
    }
    int64_t deadline = time_mono_us() + APPEND_TIMEOUT_MS * 1000LL;
    PGresult *first = NULL, *r = NULL;
    for (;;) {
        if (next_result(s, deadline, &r) != 0) {
            PQclear(first);
            return NULL;    /* the connection is gone: after_error() backs off */
        }
        if (r == NULL) {
            return first;
        }
        if (first == NULL) {
            first = r;
        } else {
            PQclear(r);
        }
    }
}

static int one_row(struct pg_store *s, int q, int nparams, const char *const *params,
                   PGresult **out, struct err *e)
{
    int rc = ensure(s, e);
    if (rc != ERR_OK) {
        return rc;
    }
    PGresult *r = exec_waiting(s, q, nparams, params);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        rc = pg_fail(s, e, qnames[q], r);
        PQclear(r);
        return after_error(s, rc);
    }
    *out = r;
    return ERR_OK;
}

static int64_t val64(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static int p_head(struct evstore *base, int64_t *position, struct err *e)
{
    struct pg_store *s = (struct pg_store *)base;
    PGresult *r = NULL;
    int rc = one_row(s, Q_HEAD, 0, NULL, &r, e);
    if (rc == ERR_OK) {
        *position = val64(r, 0, 0);
        PQclear(r);
    }
    return rc;
}

static int p_size_bytes(struct evstore *base, int64_t *bytes, struct err *e)
{
    struct pg_store *s = (struct pg_store *)base;
    PGresult *r = NULL;
    int rc = one_row(s, Q_SIZE, 0, NULL, &r, e);
    if (rc == ERR_OK) {
        *bytes = val64(r, 0, 0);
        PQclear(r);
    }
    return rc;
}

static int p_stream_version(struct evstore *base, const char *stream_id, int64_t *version,
                            int64_t *last_position, struct err *e)
{
    struct pg_store *s = (struct pg_store *)base;
    PGresult *r = NULL;
    const char *params[1] = { stream_id };
    int rc = one_row(s, Q_STREAM, 1, params, &r, e);
    if (rc != ERR_OK) {
        return rc;
    }
    if (PQgetisnull(r, 0, 0)) {
        rc = ERR_NOTFOUND;
    } else {
        *version = val64(r, 0, 0);
        *last_position = val64(r, 0, 1);
    }
    PQclear(r);
    return rc;
}

static int p_read(struct evstore *base, int64_t from, size_t max, evstore_cb cb, void *arg,
                  struct err *e)
{
    struct pg_store *s = (struct pg_store *)base;
    int rc = ensure(s, e);
    if (rc != ERR_OK) {
        return rc;
    }
    char a[24], b[24];
    snprintf(a, sizeof(a), "%lld", (long long)from);
    snprintf(b, sizeof(b), "%llu", (unsigned long long)(max > INT64_MAX ? INT64_MAX : max));
    const char *params[2] = { a, b };
    PGresult *r = exec_waiting(s, Q_READ, 2, params);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = pg_fail(s, e, "reading events", r);
        PQclear(r);
        return after_error(s, rc);
    }
    int n = PQntuples(r);
    for (int i = 0; i < n && rc == 0; i++) {
        struct event_rec rec = {
            .position = val64(r, i, 0),
            .stream_id = PQgetvalue(r, i, 2),
            .stream_version = val64(r, i, 3),
            .type = PQgetvalue(r, i, 4),
            .schema_version = (int)val64(r, i, 5),
            .recorded_at_us = val64(r, i, 6),
            .data = PQgetvalue(r, i, 7),
            .data_len = (size_t)PQgetlength(r, i, 7),
            .metadata = PQgetvalue(r, i, 8),
            .metadata_len = (size_t)PQgetlength(r, i, 8),
        };
        if (!uuid_parse(PQgetvalue(r, i, 1), &rec.event_id)) {
            memset(&rec.event_id, 0, sizeof(rec.event_id));
        }
        rc = cb(&rec, arg);
    }
    PQclear(r);
    return rc;
}

/* --- append ------------------------------------------------------------ */

/* One element of a PostgreSQL array literal, quoted: "a\"b". */
static int arr_text(struct buf *b, const char *s)
{
    int rc = buf_putc(b, b->len > 0 ? ',' : '{');
    rc |= buf_putc(b, '"');
    for (const char *p = s; *p != '\0' && rc == 0; p++) {
        if (*p == '"' || *p == '\\') {
            rc |= buf_putc(b, '\\');
        }
        rc |= buf_putc(b, *p);
    }
    return rc | buf_putc(b, '"');
}

static int arr_int(struct buf *b, int64_t v)
{
    return buf_printf(b, "%s%lld", b->len > 0 ? "," : "{", (long long)v);
}

/* Ends an array literal (an empty one is "{}"); buf keeps it NUL-terminated. */
static int arr_close(struct buf *b)
{
    int rc = b->len == 0 ? buf_putc(b, '{') : 0;
    return rc | buf_putc(b, '}');
}

/* The batch's streams: an open-addressing table from stream id to its
 * version and last position as the batch goes. */
struct slot {
    const char *id;
    int64_t version, position;
    bool listed;
};

static struct slot *slot_get(struct slot *t, size_t cap, const char *id)
{
    size_t i = (size_t)hash64(id, strlen(id)) & (cap - 1);
    while (t[i].id != NULL && strcmp(t[i].id, id) != 0) {
        i = (i + 1) & (cap - 1);
    }
    if (t[i].id == NULL) {
        t[i].id = id;
    }
    return &t[i];
}

/* The next result, waiting at most until deadline (time_mono_us): a server
 * that stops answering (frozen, or a half-open connection) must not hold
 * the committer, and every request behind it, for ever. On a timeout the
 * connection is dropped (the server rolls the transaction back when it
 * notices) and -1 returned. */
static int next_result(struct pg_store *s, int64_t deadline, PGresult **out)
{
    while (PQisBusy(s->conn)) {
        int64_t left = deadline - time_mono_us();
        if (left <= 0) {
            log_warn("PostgreSQL did not answer in time; dropping the connection",
                     "timeout_ms=%d", APPEND_TIMEOUT_MS);
            /* ask the server to stop whatever the backend is doing (a wait
             * it would not notice the closed socket in), then close */
            PGcancel *cancel = PQgetCancel(s->conn);
            char why[256];
            if (cancel != NULL && PQcancel(cancel, why, sizeof(why)) == 0) {
                log_debug("cancel request failed", "err=\"%s\"", why);
            }
            PQfreeCancel(cancel);
            disconnect(s);
            s->backoff_us = BACKOFF_MIN_US;
            s->retry_at_us = time_mono_us() + BACKOFF_MIN_US;
            return -1;
        }
        struct pollfd p = { .fd = PQsocket(s->conn), .events = POLLIN };
        int n = poll(&p, 1, (int)(left / 1000) + 1);
        if ((n < 0 && errno != EINTR) || PQconsumeInput(s->conn) == 0) {
            break;      /* a broken connection: PQgetResult reports it */
        }
    }
    *out = PQgetResult(s->conn);
    return 0;
}

/* Reads the results of nstmt pipelined statements and the sync point after
 * them. keep (NULL or nstmt slots) receives each statement's result. */
static int drain(struct pg_store *s, int nstmt, PGresult **keep, struct err *e)
{
    int rc = ERR_OK;
    int64_t deadline = time_mono_us() + APPEND_TIMEOUT_MS * 1000LL;
    for (int i = 0; i < nstmt; i++) {
        PGresult *r;
        /* each statement's results end with NULL; an aborted pipeline gives
         * PGRES_PIPELINE_ABORTED for the statements after a failed one */
        for (;;) {
            if (next_result(s, deadline, &r) != 0) {
                return err_set(e, ERR_IO, "append: PostgreSQL did not answer within %d ms",
                               APPEND_TIMEOUT_MS);
            }
            if (r == NULL) {
                break;
            }
            ExecStatusType st = PQresultStatus(r);
            bool good = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
            if (!good && rc == ERR_OK) {
                rc = pg_fail(s, e, "append", r);
            }
            if (good && keep != NULL && keep[i] == NULL) {
                keep[i] = r;
            } else {
                PQclear(r);
            }
            if (st == PGRES_PIPELINE_SYNC) {
                return rc != ERR_OK ? rc : pg_fail(s, e, "append: pipeline out of step", NULL);
            }
        }
        if (PQstatus(s->conn) != CONNECTION_OK) {
            return rc != ERR_OK ? rc : pg_fail(s, e, "append: connection lost", NULL);
        }
    }
    PGresult *sync = NULL;
    if (next_result(s, deadline, &sync) != 0) {
        return err_set(e, ERR_IO, "append: PostgreSQL did not answer within %d ms",
                       APPEND_TIMEOUT_MS);
    }
    if ((sync == NULL || PQresultStatus(sync) != PGRES_PIPELINE_SYNC) && rc == ERR_OK) {
        rc = pg_fail(s, e, "append: pipeline out of step", NULL);
    }
    PQclear(sync);
    return rc;
}

/* Queues a prepared statement, or with name "!SQL" a plain one. */
static int send_stmt(struct pg_store *s, const char *name, int n, const char *const *params)
{
    int ok = name[0] == '!' ? PQsendQueryParams(s->conn, name + 1, 0, NULL, NULL, NULL, NULL, 0)
                            : PQsendQueryPrepared(s->conn, name, n, params, NULL, NULL, 0);
    return ok ? ERR_OK : ERR_IO;
}

static int p_append(struct evstore *base, const struct event_in *ev, size_t n,
                    struct append_out *out, struct err *e)
{
    struct pg_store *s = (struct pg_store *)base;
    if (s->flags & EVSTORE_READONLY) {
        return err_set(e, ERR_STATE, "event store opened read-only");
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = (struct append_out){ .status = ERR_STATE };
    }
    if (n == 0) {
        return ERR_OK;
    }
    int rc = ensure(s, e);
    if (rc != ERR_OK) {
        return rc;
    }
    size_t cap = 16;
    while (cap < 2 * n) {
        cap <<= 1;
    }
    struct slot *tab = xcalloc(cap, sizeof(*tab));
    buf_reset(&s->keys);
    int w = 0;
    for (size_t i = 0; i < n; i++) {
        struct slot *sl = slot_get(tab, cap, ev[i].stream_id);
        if (!sl->listed) {
            sl->listed = true;
            w |= arr_text(&s->keys, ev[i].stream_id);
        }
    }
    w |= arr_close(&s->keys);
    for (int k = 0; k < 9; k++) {
        buf_reset(&s->arr[k]);
    }

    /* round 1: BEGIN, the lock, the head, the streams' current versions */
    PGresult *res[4] = { NULL, NULL, NULL, NULL };
    const char *kp[1] = { s->keys.p };
    bool in_pipeline = PQenterPipelineMode(s->conn) == 1;
    if (w != 0) {
        rc = err_set(e, ERR_NOMEM, "append: batch too large");
        goto done;
    }
    if (!in_pipeline || send_stmt(s, "!BEGIN", 0, NULL) != ERR_OK ||
        send_stmt(s, qnames[Q_LOCK], 0, NULL) != ERR_OK ||
        send_stmt(s, qnames[Q_HEAD], 0, NULL) != ERR_OK ||
        send_stmt(s, qnames[Q_STREAMS], 1, kp) != ERR_OK || PQpipelineSync(s->conn) != 1) {
        rc = pg_fail(s, e, "append: sending", NULL);
        goto rollback;
    }
    rc = drain(s, 4, res, e);
    if (rc != ERR_OK) {
        goto rollback;
    }
    int64_t pos = val64(res[2], 0, 0);
    for (int i = 0; i < PQntuples(res[3]); i++) {
        struct slot *sl = slot_get(tab, cap, PQgetvalue(res[3], i, 0));
        sl->version = val64(res[3], i, 1);
        sl->position = val64(res[3], i, 2);
    }

    /* decide, under the lock */
    size_t added = 0;
    for (size_t i = 0; i < n; i++) {
        struct slot *sl = slot_get(tab, cap, ev[i].stream_id);
        if (ev[i].expected_version != EVSTORE_ANY && ev[i].expected_version != sl->version) {
            out[i].status = ERR_CONFLICT;
            out[i].position = sl->position;
            out[i].stream_version = sl->version;
            continue;
        }
        pos++;
        sl->version++;
        sl->position = pos;
        out[i].status = ERR_OK;
        out[i].position = pos;
        out[i].stream_version = sl->version;
        char id[37];
        uuid_format(&ev[i].event_id, id);
        w |= arr_int(&s->arr[0], pos);
        w |= arr_text(&s->arr[1], id);
        w |= arr_text(&s->arr[2], ev[i].stream_id);
        w |= arr_int(&s->arr[3], sl->version);
        w |= arr_text(&s->arr[4], ev[i].type);
        w |= arr_int(&s->arr[5], ev[i].schema_version);
        w |= arr_int(&s->arr[6], ev[i].recorded_at_us);
        w |= arr_text(&s->arr[7], ev[i].data);
        w |= arr_text(&s->arr[8], ev[i].metadata != NULL ? ev[i].metadata : "{}");
        added++;
    }
    const char *params[9];
    for (int k = 0; k < 9; k++) {
        w |= arr_close(&s->arr[k]);
        params[k] = s->arr[k].p;
    }
    if (w != 0) {
        rc = err_set(e, ERR_NOMEM, "append: batch too large");
        goto rollback;
    }

    /* round 2: the rows and COMMIT (just COMMIT when all conflicted) */
    int nstmt = 0;
    if (added > 0) {
        if (send_stmt(s, qnames[Q_INSERT], 9, params) != ERR_OK) {
            rc = pg_fail(s, e, "append: sending rows", NULL);
            goto rollback;
        }
        nstmt++;
    }
    if (send_stmt(s, "!COMMIT", 0, NULL) != ERR_OK || PQpipelineSync(s->conn) != 1) {
        rc = pg_fail(s, e, "append: sending commit", NULL);
        goto rollback;
    }
    rc = drain(s, nstmt + 1, NULL, e);
    if (rc == ERR_OK) {
        goto done;
    }

rollback:
    if (in_pipeline && PQstatus(s->conn) == CONNECTION_OK) {
        /* an aborted pipeline or transaction: end it so the next call
         * starts clean (a COMMIT that failed has already rolled back) */
        struct err ignore;
        if (send_stmt(s, "!ROLLBACK", 0, NULL) != ERR_OK || PQpipelineSync(s->conn) != 1 ||
            drain(s, 1, NULL, &ignore) != ERR_OK) {
            log_debug("rollback after a failed append did not complete", NULL);
        }
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = (struct append_out){ .status = ERR_STATE };
    }
done:
    if (in_pipeline && PQstatus(s->conn) == CONNECTION_OK &&
        PQexitPipelineMode(s->conn) != 1) {
        /* results left unread: the connection is out of step; start over */
        log_warn("PostgreSQL pipeline left busy; reconnecting", NULL);
        disconnect(s);
    }
    for (int i = 0; i < 4; i++) {
        PQclear(res[i]);
    }
    free(tab);
    return after_error(s, rc);
}

static void p_close(struct evstore *base)
{
    struct pg_store *s = (struct pg_store *)base;
    disconnect(s);
    for (int k = 0; k < 9; k++) {
        buf_fini(&s->arr[k]);
    }
    buf_fini(&s->keys);
    free(s->url);
    free(s);
}

static const struct evstore_ops pg_ops = {
    .name = "postgres",
    .append = p_append,
    .read = p_read,
    .stream_version = p_stream_version,
    .head = p_head,
    .size_bytes = p_size_bytes,
    .close = p_close,
};

int evstore_pg_open(const char *url, int flags, struct evstore **out, struct err *e)
{
    struct pg_store *s = xcalloc(1, sizeof(*s));
    s->base.ops = &pg_ops;
    s->url = xstrdup(url);
    s->flags = flags;
    for (int k = 0; k < 9; k++) {
        buf_init(&s->arr[k], 0);
    }
    buf_init(&s->keys, 0);
    int rc = connect_store(s, e);
    if (rc != ERR_OK) {
        p_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return ERR_OK;
}

int evstore_pg_migrate(const char *url, int *from, int *to, struct err *e)
{
    PGconn *c = dial(url, e);
    if (c == NULL) {
        return ERR_IO;
    }
    int rc = ERR_OK;
    const char *lock = "SELECT pg_advisory_xact_lock(" LOCK_MIGRATE ")";
    if (simple(c, "BEGIN", PGRES_COMMAND_OK, NULL) != ERR_OK ||
        simple(c, lock, PGRES_TUPLES_OK, NULL) != ERR_OK) {
        rc = err_set(e, ERR_IO, "migrate: %s", PQerrorMessage(c));
        goto out;
    }
    int ver = 0;
    rc = schema_version(c, &ver, e);
    if (rc != ERR_OK) {
        goto out;
    }
    *from = ver;
    if (ver > PG_SCHEMA_VERSION) {
        rc = err_set(e, ERR_STATE, "the database has rastro schema version %d; this build knows"
                     " %d (upgrade rastro)", ver, PG_SCHEMA_VERSION);
        goto out;
    }
    if (ver == 0) {
        for (size_t i = 0; i < ARRAY_LEN(schema_v1) && rc == ERR_OK; i++) {
            PGresult *r = PQexec(c, schema_v1[i]);
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                rc = err_set(e, ERR_IO, "migrate to version 1: %s", PQerrorMessage(c));
            }
            PQclear(r);
        }
    }
    if (rc == ERR_OK && simple(c, "COMMIT", PGRES_COMMAND_OK, NULL) != ERR_OK) {
        rc = err_set(e, ERR_IO, "migrate: commit: %s", PQerrorMessage(c));
    }
    *to = PG_SCHEMA_VERSION;
out:
    if (rc != ERR_OK) {
        (void)simple(c, "ROLLBACK", PGRES_COMMAND_OK, NULL);
    }
    PQfinish(c);
    return rc;
}
