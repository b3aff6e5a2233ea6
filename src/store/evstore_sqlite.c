/*
 * evstore_sqlite.c - the embedded event store: one SQLite file in WAL mode
 * with synchronous=FULL, so a COMMIT that returned is on disk (the WAL is
 * fsync'd before COMMIT returns) and survives a power cut.
 *
 * Layout: one table, events, keyed by position (INTEGER PRIMARY KEY, so
 * appends go to the right edge of the B-tree and cost the same at 10 million
 * rows as at 100). There is deliberately no secondary index: a unique index
 * on random client ids dirties a page per row and caps ingest at ~20k/s
 * past a million rows. Finding a stream's events (the idempotency check)
 * goes through an lsmidx of hash(stream_id) -> positions instead (events.db.idx:
 * a memtable plus sorted runs with bloom filters, written in the background),
 * derived from the log: at open, the events after the index's flushed mark
 * are added again.
 *
 * Triggers refuse UPDATE and DELETE on events: the log is append-only even
 * for someone with the sqlite3 shell.
 *
 * Positions are assigned here, as head + 1, by the only writer (the data
 * folder's lock file keeps a second process out), so they are gap-free and
 * become visible in commit order.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"
#include "store/evstore.h"
#include "index/lsmidx.h"
#include "index/sqlerr.h"

#define SCHEMA_VERSION 1

struct sqlite_store {
    struct evstore base;
    sqlite3 *db;
    char *path;
    int flags;
    int64_t head;               /* writer: last committed position */
    struct lsmidx *streams;     /* writer only */
    struct lsmidx_reader *sr;
    sqlite3_stmt *ins;
    sqlite3_stmt *begin, *commit;   /* writer: prepared once, not parsed per batch */
    sqlite3_stmt *at;           /* stream_id, stream_version by position */
    sqlite3_stmt *rd;
    sqlite3_stmt *hd;
    /* writer: WAL checkpoints on their own thread and connection */
    pthread_t ckpt_thread;
    pthread_mutex_t ckpt_mu;
    pthread_cond_t ckpt_cv;
    bool ckpt_running, ckpt_stop;
    /* WAL restarts (wal_restart) */
    atomic_int wal_frames;      /* frames in the WAL after the writer's last commit */
    atomic_bool ckpt_ask;       /* writer -> checkpointer: chase the WAL's end */
    atomic_bool ckpt_tail;      /* checkpointer -> writer: a few frames are left */
    atomic_bool ckpt_idle;      /* checkpointer: nothing left to copy; a commit wakes it */
    _Atomic int64_t ckpt_warned_us, wal_warned_us;     /* log lines' rate limits */
};

/*
 * Checkpoints copy committed WAL pages back into the database file. Left to
 * SQLite they run inside whichever COMMIT crosses 1000 pages, i.e. inside
 * the committer, and every request of that batch waits for the copy and its
 * fsync. Here they run every CKPT_EVERY_MS on a second connection in
 * PASSIVE mode, which never blocks the writer; the committer's connection
 * has wal_autocheckpoint off. Each one ends with an fsync of the database
 * file, and the committer's next fdatasync waits for the disk to finish
 * it: small and often is kinder to the commits' tail latency than large
 * and seldom (impression and conversion p99 5.8-6.1 -> 4.6-5.7 ms at
 * 10-25 ms against 100, same rates, five pairs).
 *
 * Passive checkpoints alone never let the WAL start over under sustained
 * load: SQLite restarts it only when a write transaction begins with every
 * frame copied back (and no reader in the WAL), and with a commit every
 * half millisecond the checkpointer never gets there first. The WAL grew by
 * ~45 MB/s for as long as the load lasted, and every commit appended to a
 * growing file, whose fdatasync also writes its inode and new blocks
 * (measured here: 150-190 us against 95 us for the same write over blocks
 * already there). So past RESTART_FRAMES the writer asks the checkpointer
 * to chase the WAL's end (a few passes, each copying what the commits
 * during the one before added); the writer copies what is left itself
 * before its next transaction (0.3-6 ms, mostly its two fsyncs, against
 * 5-17 ms for a 100 ms backlog), and that transaction restarts the WAL:
 * its frames overwrite the old ones from the start of the file. A reader
 * still in the WAL at that moment defers the restart to the next round;
 * the WAL file stays at about RESTART_FRAMES pages.
 */
#define CKPT_EVERY_MS 20
#define CKPT_IDLE_MS 1000       /* with nothing left to copy (a commit wakes it sooner) */
#define RESTART_FRAMES 4096     /* 16 MiB of WAL at 4 KiB pages */
#define TAIL_FRAMES 64          /* a pass that leaves this few is the last */
#define CHASE_PASSES 4

/* Whether a rate-limited log line is due: the first time, then at most
 * once every every_us (from any thread). */
static bool log_due(_Atomic int64_t *last_us, int64_t every_us)
{
    int64_t now = time_mono_us(), last = atomic_load(last_us);
    return (last == 0 || now - last >= every_us) &&
           atomic_compare_exchange_strong(last_us, &last, now);
}

/* Wakes the checkpoint thread. */
static void ckpt_wake(struct sqlite_store *s)
{
    pthread_mutex_lock(&s->ckpt_mu);
    pthread_cond_signal(&s->ckpt_cv);
    pthread_mutex_unlock(&s->ckpt_mu);
}

/* One PASSIVE checkpoint: frames copied back so far, or -1. */
static int checkpoint(struct sqlite_store *s, sqlite3 *db)
{
    int frames = 0, done = 0;
    int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, &done);
    if (rc != SQLITE_OK) {
        /* e.g. a full disk: it is tried 50 times a second */
        if (rc != SQLITE_BUSY && log_due(&s->ckpt_warned_us, 10000000)) {
            log_warn("WAL checkpoint failed", "path=%s err=\"%s\"", s->path, sqlite3_errmsg(db));
        }
        return -1;
    }
    return done;
}

static void *ckpt_run(void *arg)
{
    struct sqlite_store *s = arg;
    pthread_setname_np(pthread_self(), "rastro-ckpt");
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), 5) != 0) {
        log_debug("cannot lower checkpoint thread priority", NULL);
    }
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        log_error("checkpointer cannot open the store; WAL will grow", "path=%s", s->path);
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 100);
    /* A connection that has read nothing has not opened the WAL yet, and
     * sqlite3_wal_checkpoint_v2() on it returns SQLITE_OK having done
     * nothing (SQLite 3.40; later versions open it first). Until the
     * eighth session this thread's checkpoints were all no-ops for that
     * reason, and the WAL held every event since the server started.
     * synchronous=FULL whatever the build's default: a checkpoint then
     * syncs the WAL before copying and the database file before the WAL
     * may be restarted over the frames it copied. */
    if (sqlite3_exec(db, "PRAGMA synchronous=FULL; SELECT 1 FROM sqlite_schema LIMIT 1", NULL,
                     NULL, NULL) != SQLITE_OK) {
        log_error("checkpointer cannot read the store; WAL will grow", "path=%s err=\"%s\"",
                  s->path, sqlite3_errmsg(db));
    }
    pthread_mutex_lock(&s->ckpt_mu);
    while (!s->ckpt_stop) {
        if (!atomic_load(&s->ckpt_ask)) {
            struct timespec ts;
            time_deadline(CLOCK_REALTIME,
                          atomic_load(&s->ckpt_idle) ? CKPT_IDLE_MS : CKPT_EVERY_MS, &ts);
            pthread_cond_timedwait(&s->ckpt_cv, &s->ckpt_mu, &ts);
        }
        if (s->ckpt_stop) {
            break;
        }
        bool asked = atomic_load(&s->ckpt_ask);
        pthread_mutex_unlock(&s->ckpt_mu);
        int done = checkpoint(s, db);
        if (asked) {
            /* each pass copies what the commits during the one before
             * added, so what is left shrinks to what commits add during
             * one short pass */
            for (int i = 1; i < CHASE_PASSES && done >= 0 &&
                            atomic_load(&s->wal_frames) - done > TAIL_FRAMES;
                 i++) {
                done = checkpoint(s, db);
            }
            atomic_store(&s->ckpt_tail, done >= 0);
            atomic_store(&s->ckpt_ask, false);
        }
        /* everything copied back: sleep until a commit (on_wal) says
         * otherwise. The flag is set before the frames are read again, and
         * a commit stores its frames before it reads the flag, so one of
         * the two always sees the other. */
        atomic_store(&s->ckpt_idle, done >= 0);
        if (done < atomic_load(&s->wal_frames)) {
            atomic_store(&s->ckpt_idle, false);
        }
        pthread_mutex_lock(&s->ckpt_mu);
    }
    pthread_mutex_unlock(&s->ckpt_mu);
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    sqlite3_close(db);
    return NULL;
}

/* sqlite3_wal_hook: runs after each of the writer's commits. */
static int on_wal(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    struct sqlite_store *s = arg;
    atomic_store(&s->wal_frames, frames);
    if (atomic_load(&s->ckpt_idle) && atomic_exchange(&s->ckpt_idle, false)) {
        ckpt_wake(s);   /* the first commit after an idle spell, not every one */
    }
    return SQLITE_OK;
}

/* Before a write transaction, on the writer's thread: see ckpt_run(). */
static void wal_restart(struct sqlite_store *s)
{
    int frames = atomic_load(&s->wal_frames);
    if (frames < RESTART_FRAMES || !s->ckpt_running) {
        return;
    }
    if (frames >= 4 * RESTART_FRAMES && log_due(&s->wal_warned_us, 60000000)) {
        log_warn("the store's WAL is not starting over: something has been reading the store "
                 "since before its last restart (a long query, `rastro events`, a backup?), "
                 "or appends outrun the checkpoints (a bulk load)",
                 "path=%s wal_mib=%d", s->path, frames / 256);
    }
    if (atomic_exchange(&s->ckpt_tail, false)) {
        (void)checkpoint(s, s->db);     /* the tail; this BEGIN restarts the WAL */
        return;
    }
    if (!atomic_exchange(&s->ckpt_ask, true)) {
        ckpt_wake(s);   /* it checks ckpt_ask under the lock before it waits */
    }
}

static const char *schema_sql =
    "CREATE TABLE IF NOT EXISTS events("
    " position INTEGER PRIMARY KEY,"
    " event_id BLOB NOT NULL,"
    " stream_id TEXT NOT NULL,"
    " stream_version INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " schema_version INTEGER NOT NULL,"
    " recorded_at INTEGER NOT NULL,"
    " data TEXT NOT NULL,"
    " metadata TEXT NOT NULL);"
    "CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events"
    " BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;"
    "CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events"
    " BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;";

static int db_err(struct sqlite_store *s, struct err *e, const char *what)
{
    return err_set(e, ERR_IO, "%s: %s (%s)", what, sql_err(s->db), s->path);
}

static int exec(struct sqlite_store *s, const char *sql, struct err *e)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = err_set(e, ERR_IO, "%s: %s (%s)", sql, sql_err(s->db), s->path);
        sqlite3_free(msg);
        return rc;
    }
    return ERR_OK;
}

/* Runs a prepared statement that returns no rows. */
static int step_once(struct sqlite_store *s, sqlite3_stmt *st, const char *what, struct err *e)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? ERR_OK : db_err(s, e, what);
    sqlite3_reset(st);
    return rc;
}

static void fill_rec(sqlite3_stmt *st, struct event_rec *r)
{
    r->position = sqlite3_column_int64(st, 0);
    memset(&r->event_id, 0, sizeof(r->event_id));
    const void *id = sqlite3_column_blob(st, 1);
    if (id != NULL && sqlite3_column_bytes(st, 1) == 16) {
        memcpy(r->event_id.b, id, 16);
    }
    r->stream_id = (const char *)sqlite3_column_text(st, 2);
    r->stream_version = sqlite3_column_int64(st, 3);
    r->type = (const char *)sqlite3_column_text(st, 4);
    r->schema_version = sqlite3_column_int(st, 5);
    r->recorded_at_us = sqlite3_column_int64(st, 6);
    r->data = (const char *)sqlite3_column_text(st, 7);
    r->data_len = (size_t)sqlite3_column_bytes(st, 7);
    r->metadata = (const char *)sqlite3_column_text(st, 8);
    r->metadata_len = (size_t)sqlite3_column_bytes(st, 8);
}

static int s_read(struct evstore *base, int64_t from, size_t max, evstore_cb cb, void *arg,
                  struct err *e)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    int rc = ERR_OK;
    sqlite3_bind_int64(s->rd, 1, from);
    sqlite3_bind_int64(s->rd, 2, (sqlite3_int64)max);
    for (;;) {
        int r = sqlite3_step(s->rd);
        if (r == SQLITE_DONE) {
            break;
        }
        if (r != SQLITE_ROW) {
            rc = db_err(s, e, "reading events");
            break;
        }
        struct event_rec rec;
        fill_rec(s->rd, &rec);
        rc = cb(&rec, arg);
        if (rc != 0) {
            break;
        }
    }
    sqlite3_reset(s->rd);
    return rc;
}

/* The stream id and version stored at a position (copied into sid). */
static int at_position(struct sqlite_store *s, int64_t pos, char *sid, size_t sid_max,
                       int64_t *version, struct err *e)
{
    int rc = ERR_NOTFOUND;
    sqlite3_bind_int64(s->at, 1, pos);
    int r = sqlite3_step(s->at);
    if (r == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(s->at, 0);
        snprintf(sid, sid_max, "%s", t ? t : "");
        *version = sqlite3_column_int64(s->at, 1);
        rc = ERR_OK;
    } else if (r != SQLITE_DONE) {
        rc = db_err(s, e, "reading event");
    }
    sqlite3_reset(s->at);
    return rc;
}

static uint64_t stream_hash(struct sqlite_store *s, const char *stream_id)
{
    return lsmidx_hash(s->streams, stream_id, strlen(stream_id));
}

/* Current version and last position of a stream, via the stream index.
 * Every candidate position is confirmed against the stored stream id, and
 * there may be any number of them (the hash is keyed, so nobody can make
 * many on purpose; the code does not rely on that). */
static int find_stream(struct sqlite_store *s, const char *stream_id, int64_t *version,
                       int64_t *last_pos, struct err *e)
{
    struct lsmidx_hits cand;
    int rc = lsmidx_find_all(s->streams, s->sr, stream_hash(s, stream_id), &cand, e);
    int64_t best_v = 0, best_p = 0;
    for (size_t i = 0; i < cand.n && rc == ERR_OK; i++) {
        char sid[1024];
        int64_t v = 0;
        int r = at_position(s, cand.v[i], sid, sizeof(sid), &v, e);
        if (r == ERR_NOTFOUND) {
            continue;
        }
        if (r != ERR_OK) {
            rc = r;
            break;
        }
        if (strcmp(sid, stream_id) == 0 && v > best_v) {
            best_v = v;
            best_p = cand.v[i];
        }
    }
    lsmidx_hits_fini(&cand);
    if (rc != ERR_OK) {
        return rc;
    }
    if (best_v == 0) {
        return ERR_NOTFOUND;
    }
    *version = best_v;
    *last_pos = best_p;
    return ERR_OK;
}

static int s_stream_version(struct evstore *base, const char *stream_id, int64_t *version,
                            int64_t *last_position, struct err *e)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (s->streams == NULL) {
        return err_set(e, ERR_STATE, "store opened read-only has no stream index");
    }
    return find_stream(s, stream_id, version, last_position, e);
}

static int s_append(struct evstore *base, const struct event_in *ev, size_t n,
                    struct append_out *out, struct err *e)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (s->flags & EVSTORE_READONLY) {
        return err_set(e, ERR_STATE, "event store opened read-only");
    }
    for (size_t i = 0; i < n; i++) {
        out[i].status = ERR_STATE;
        out[i].position = 0;
        out[i].stream_version = 0;
    }
    wal_restart(s);
    int rc = step_once(s, s->begin, "BEGIN IMMEDIATE", e);
    if (rc != ERR_OK) {
        return rc;
    }
    int64_t pos = s->head;
    size_t added = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t cur_v = 0, cur_p = 0;
        rc = find_stream(s, ev[i].stream_id, &cur_v, &cur_p, e);
        if (rc == ERR_NOTFOUND) {
            rc = ERR_OK;
        } else if (rc != ERR_OK) {
            goto out;
        }
        if (ev[i].expected_version != EVSTORE_ANY && ev[i].expected_version != cur_v) {
            out[i].status = ERR_CONFLICT;
            out[i].position = cur_p;
            out[i].stream_version = cur_v;
            continue;
        }
        pos++;
        sqlite3_stmt *st = s->ins;
        sqlite3_bind_int64(st, 1, pos);
        sqlite3_bind_blob(st, 2, ev[i].event_id.b, 16, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, ev[i].stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, cur_v + 1);
        sqlite3_bind_text(st, 5, ev[i].type, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, ev[i].schema_version);
        sqlite3_bind_int64(st, 7, ev[i].recorded_at_us);
        sqlite3_bind_text(st, 8, ev[i].data, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 9, ev[i].metadata ? ev[i].metadata : "{}", -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (r != SQLITE_DONE) {
            rc = db_err(s, e, "appending event");
            goto out;
        }
        lsmidx_add(s->streams, stream_hash(s, ev[i].stream_id), pos);
        added++;
        out[i].status = ERR_OK;
        out[i].position = pos;
        out[i].stream_version = cur_v + 1;
    }
    rc = step_once(s, s->commit, "COMMIT", e);
out:
    if (rc != ERR_OK) {
        struct err ignore;
        (void)exec(s, "ROLLBACK", &ignore);
        /* undo what this batch put in the index: positions head+1 .. pos */
        for (size_t i = 0; i < n && added > 0; i++) {
            if (out[i].status == ERR_OK && out[i].position > s->head) {
                lsmidx_remove(s->streams, stream_hash(s, ev[i].stream_id), out[i].position);
                added--;
            }
        }
        return rc;
    }
    s->head = pos;
    lsmidx_commit(s->streams, pos);
    return ERR_OK;
}

static int s_head(struct evstore *base, int64_t *position, struct err *e)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (!(s->flags & EVSTORE_READONLY)) {
        *position = s->head;
        return ERR_OK;
    }
    int rc = ERR_OK;
    int r = sqlite3_step(s->hd);
    if (r == SQLITE_ROW) {
        *position = sqlite3_column_int64(s->hd, 0);
    } else {
        rc = db_err(s, e, "reading head");
    }
    sqlite3_reset(s->hd);
    return rc;
}

static int s_size_bytes(struct evstore *base, int64_t *bytes, struct err *e)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    struct stat st;
    int64_t total = 0;
    char p[4200];
    if (stat(s->path, &st) == 0) {
        total += st.st_size;
    }
    snprintf(p, sizeof(p), "%s-wal", s->path);
    if (stat(p, &st) == 0) {
        total += st.st_size;
    }
    (void)e;
    *bytes = total;
    return ERR_OK;
}

static void s_close(struct evstore *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (s->ckpt_running) {
        pthread_mutex_lock(&s->ckpt_mu);
        s->ckpt_stop = true;
        pthread_cond_signal(&s->ckpt_cv);
        pthread_mutex_unlock(&s->ckpt_mu);
        pthread_join(s->ckpt_thread, NULL);
    }
    pthread_mutex_destroy(&s->ckpt_mu);
    pthread_cond_destroy(&s->ckpt_cv);
    sqlite3_finalize(s->ins);
    sqlite3_finalize(s->begin);
    sqlite3_finalize(s->commit);
    sqlite3_finalize(s->at);
    sqlite3_finalize(s->rd);
    sqlite3_finalize(s->hd);
    sqlite3_close(s->db);
    lsmidx_reader_close(s->sr);
    lsmidx_close(s->streams);
    free(s->path);
    free(s);
}

static const struct evstore_ops sqlite_ops = {
    .name = "sqlite",
    .append = s_append,
    .read = s_read,
    .stream_version = s_stream_version,
    .head = s_head,
    .size_bytes = s_size_bytes,
    .close = s_close,
};

static int prepare(struct sqlite_store *s, const char *sql, sqlite3_stmt **st, struct err *e)
{
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK) {
        return db_err(s, e, sql);
    }
    return ERR_OK;
}

/* Opens the stream index and adds the events it has not flushed yet. */
static int load_index(struct sqlite_store *s, struct err *e)
{
    sqlite3_stmt *st = NULL;
    int rc = prepare(s, "SELECT coalesce(max(position), 0) FROM events", &st, e);
    if (rc != ERR_OK) {
        return rc;
    }
    if (sqlite3_step(st) == SQLITE_ROW) {
        s->head = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);

    char ipath[4200];
    snprintf(ipath, sizeof(ipath), "%s.idx", s->path);
    const char *mt = getenv("RASTRO_INDEX_MEMTABLE");
    size_t memtable = mt != NULL ? (size_t)strtoull(mt, NULL, 10) : 0;
    rc = lsmidx_open(ipath, memtable, 0, &s->streams, e);
    if (rc == ERR_OK) {
        rc = lsmidx_reader_open(s->streams, &s->sr, e);
    }
    if (rc != ERR_OK) {
        return rc;
    }
    int64_t from = lsmidx_flushed(s->streams);
    if (from > s->head) {
        /* the index is ahead of the log (a restored backup?): start over */
        log_warn("stream index ahead of the event log; rebuilding it", "index=%lld log=%lld",
                 (long long)from, (long long)s->head);
        rc = lsmidx_reset(s->streams, e);
        if (rc != ERR_OK) {
            return rc;
        }
        from = 0;
    }
    rc = prepare(s, "SELECT position, stream_id FROM events WHERE position > ?", &st, e);
    if (rc != ERR_OK) {
        return rc;
    }
    sqlite3_bind_int64(st, 1, from);
    int r;
    int64_t added = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const void *sid = sqlite3_column_text(st, 1);
        int len = sqlite3_column_bytes(st, 1);
        int64_t pos = sqlite3_column_int64(st, 0);
        lsmidx_add(s->streams, lsmidx_hash(s->streams, sid, (size_t)len), pos);
        if (++added % 65536 == 0) {
            lsmidx_commit(s->streams, pos);
        }
    }
    sqlite3_finalize(st);
    if (r != SQLITE_DONE) {
        return db_err(s, e, "loading stream index");
    }
    lsmidx_commit(s->streams, s->head);
    return ERR_OK;
}

int evstore_sqlite_open(const char *path, int flags, struct evstore **out, struct err *e)
{
    struct sqlite_store *s = xcalloc(1, sizeof(*s));
    s->base.ops = &sqlite_ops;
    s->path = xstrdup(path);
    s->flags = flags;
    pthread_mutex_init(&s->ckpt_mu, NULL);
    pthread_cond_init(&s->ckpt_cv, NULL);
    /* Readers open read-write without CREATE and set query_only: a truly
     * read-only handle cannot create the WAL index (-shm) when no writer
     * has it open, and would fail on a stopped server's folder. */
    int oflags = (flags & EVSTORE_READONLY) ? SQLITE_OPEN_READWRITE
                                            : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    int rc;
    if (sqlite3_open_v2(path, &s->db, oflags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        rc = db_err(s, e, "opening event store");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    if (flags & EVSTORE_READONLY) {
        rc = exec(s, "PRAGMA query_only=1", e);
        if (rc != ERR_OK) {
            goto fail;
        }
    } else {
        rc = exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     " PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864", e);
        if (rc != ERR_OK) {
            goto fail;
        }
        sqlite3_stmt *st = NULL;
        rc = prepare(s, "PRAGMA user_version", &st, e);
        if (rc != ERR_OK) {
            goto fail;
        }
        int ver = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
        sqlite3_finalize(st);
        if (ver == 0) {
            rc = exec(s, "BEGIN", e);
            if (rc == ERR_OK) {
                rc = exec(s, schema_sql, e);
            }
            if (rc == ERR_OK) {
                rc = exec(s, "PRAGMA user_version=1; COMMIT", e);
            }
            if (rc != ERR_OK) {
                goto fail;
            }
        } else if (ver != SCHEMA_VERSION) {
            rc = err_set(e, ERR_STATE,
                         "event store %s has schema version %d; this build knows %d", path,
                         ver, SCHEMA_VERSION);
            goto fail;
        }
        rc = load_index(s, e);
        if (rc != ERR_OK) {
            goto fail;
        }
        sqlite3_wal_hook(s->db, on_wal, s);
        rc = prepare(s,
                     "INSERT INTO events(position, event_id, stream_id, stream_version, type,"
                     " schema_version, recorded_at, data, metadata)"
                     " VALUES(?,?,?,?,?,?,?,?,?)",
                     &s->ins, e);
        if (rc == ERR_OK) {
            rc = prepare(s, "SELECT stream_id, stream_version FROM events WHERE position=?",
                         &s->at, e);
        }
        if (rc == ERR_OK) {
            rc = prepare(s, "BEGIN IMMEDIATE", &s->begin, e);
        }
        if (rc == ERR_OK) {
            rc = prepare(s, "COMMIT", &s->commit, e);
        }
        if (rc != ERR_OK) {
            goto fail;
        }
    }
    rc = prepare(s,
                 "SELECT position, event_id, stream_id, stream_version, type, schema_version,"
                 " recorded_at, data, metadata FROM events WHERE position >= ?"
                 " ORDER BY position LIMIT ?",
                 &s->rd, e);
    if (rc == ERR_OK) {
        rc = prepare(s, "SELECT coalesce(max(position), 0) FROM events", &s->hd, e);
    }
    if (rc != ERR_OK) {
        goto fail;
    }
    if (!(flags & EVSTORE_READONLY)) {
        if (pthread_create(&s->ckpt_thread, NULL, ckpt_run, s) != 0) {
            rc = err_set(e, ERR_STATE, "cannot start checkpoint thread");
            goto fail;
        }
        s->ckpt_running = true;
    }
    *out = &s->base;
    return ERR_OK;
fail:
    s_close(&s->base);
    return rc;
}
