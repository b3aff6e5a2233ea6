/*
 * test_evstore_contract.c - the event-store contract, written against
 * evstore.h only, run against every backend in the table below. A backend
 * joins by adding a row (and a way to get an empty store); the checks do
 * not change. PostgreSQL runs on the cluster ctest starts (pgtest.h).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "pgtest.h"
#include "store/committer.h"
#include "store/evstore.h"

struct backend {
    const char *name;
    /* an empty store: fills spec; 0 ready, 1 not available here (skip) */
    int (*fresh)(char *spec, size_t max);
    char spec[512];
};

static int fresh_sqlite(char *spec, size_t max)
{
    snprintf(spec, max, "sqlite");  /* a new temporary folder each run */
    return 0;
}

static int fresh_postgres(char *spec, size_t max)
{
    int rc = pgtest_db("rastro_contract", spec, max);
    if (rc != 0) {
        return rc;
    }
    /* a store without its schema is refused, and migrate is idempotent */
    struct evstore *s = NULL;
    struct err e;
    err_clear(&e);
    CHECK(evstore_open(spec, "/nonexistent", 0, &s, &e) == ERR_STATE);
    CHECK(strstr(e.msg, "rastro migrate") != NULL);
    int from = -1, to = -1;
    CHECK(evstore_migrate(spec, "/nonexistent", &from, &to, &e) == ERR_OK && from == 0 &&
          to == 1);
    CHECK(evstore_migrate(spec, "/nonexistent", &from, &to, &e) == ERR_OK && from == 1 &&
          to == 1);
    return 0;
}

static struct backend backends[] = {
    { "sqlite", fresh_sqlite, "" },
    { "postgres", fresh_postgres, "" },
};

static char dir[256];

static struct evstore *open_store(const struct backend *b, int flags)
{
    struct evstore *s = NULL;
    struct err e;
    err_clear(&e);
    int rc = evstore_open(b->spec, dir, flags, &s, &e);
    CHECKF(rc == ERR_OK, "%s: open: %s", b->name, e.msg);
    return rc == ERR_OK ? s : NULL;
}

static struct event_in mk(const char *stream, int64_t expect, const char *data)
{
    struct event_in ev = {
        .stream_id = stream, .expected_version = expect, .type = "ImpresionRegistrada",
        .schema_version = 1, .recorded_at_us = 1764324900000000LL, .data = data,
        .metadata = "{\"correlation_id\":\"c\"}",
    };
    uuid_v7(&ev.event_id);
    return ev;
}

struct collected {
    int n;
    int64_t pos[64];
    char stream[64][64];
    char data[64][64];
    int64_t version[64];
    struct uuid ids[64];
    int64_t recorded[64];
    int stop_after;
};

static int collect(const struct event_rec *ev, void *arg)
{
    struct collected *c = arg;
    if (c->n < 64) {
        c->pos[c->n] = ev->position;
        snprintf(c->stream[c->n], 64, "%s", ev->stream_id);
        snprintf(c->data[c->n], 64, "%.*s", (int)ev->data_len, ev->data);
        c->version[c->n] = ev->stream_version;
        c->ids[c->n] = ev->event_id;
        c->recorded[c->n] = ev->recorded_at_us;
    }
    c->n++;
    return c->stop_after > 0 && c->n >= c->stop_after ? 1 : 0;
}

static void contract(const struct backend *b)
{
    struct err e;
    struct evstore *s = open_store(b, 0);
    if (s == NULL) {
        return;
    }
    int64_t head = -1, v = -1, p = -1;
    CHECK(evstore_head(s, &head, &e) == ERR_OK && head == 0);
    CHECK(evstore_stream_version(s, "impresion:a", &v, &p, &e) == ERR_NOTFOUND);

    /* one event: every field comes back */
    struct event_in ev = mk("impresion:a", EVSTORE_NO_STREAM, "{\"id\":\"a\"}");
    struct append_out out[8];
    CHECK(evstore_append(s, &ev, 1, out, &e) == ERR_OK);
    CHECK(out[0].status == ERR_OK && out[0].position == 1 && out[0].stream_version == 1);
    struct collected c = { 0 };
    CHECK(evstore_read(s, 1, 10, collect, &c, &e) == 0);
    CHECK(c.n == 1 && c.pos[0] == 1 && c.version[0] == 1);
    CHECK_STR(c.stream[0], "impresion:a");
    CHECK_STR(c.data[0], "{\"id\":\"a\"}");
    CHECK(memcmp(c.ids[0].b, ev.event_id.b, 16) == 0);
    CHECK(c.recorded[0] == 1764324900000000LL);

    /* the same new stream again: conflict, nothing written */
    struct event_in dup = mk("impresion:a", EVSTORE_NO_STREAM, "{\"id\":\"a\",\"x\":1}");
    CHECK(evstore_append(s, &dup, 1, out, &e) == ERR_OK);
    CHECK(out[0].status == ERR_CONFLICT && out[0].position == 1 && out[0].stream_version == 1);
    CHECK(evstore_head(s, &head, &e) == ERR_OK && head == 1);

    /* a batch: independent results, gap-free positions, in-batch duplicate */
    struct event_in batch[5] = {
        mk("impresion:b", EVSTORE_NO_STREAM, "{\"id\":\"b\"}"),
        mk("impresion:a", EVSTORE_NO_STREAM, "{}"),                 /* conflict */
        mk("conversion:a", EVSTORE_NO_STREAM, "{\"id\":\"a\"}"),    /* other id space */
        mk("impresion:b", EVSTORE_NO_STREAM, "{}"),                 /* dup within batch */
        mk("impresion:a", 1, "{\"id\":\"a\",\"v\":2}"),              /* expected version 1: ok */
    };
    CHECK(evstore_append(s, batch, 5, out, &e) == ERR_OK);
    CHECK(out[0].status == ERR_OK && out[0].position == 2);
    CHECK(out[1].status == ERR_CONFLICT && out[1].stream_version == 1);
    CHECK(out[2].status == ERR_OK && out[2].position == 3);
    CHECK(out[3].status == ERR_CONFLICT && out[3].position == 2);
    CHECK(out[4].status == ERR_OK && out[4].position == 4 && out[4].stream_version == 2);
    CHECK(evstore_stream_version(s, "impresion:a", &v, &p, &e) == ERR_OK && v == 2 && p == 4);

    /* expected version wrong -> conflict; ANY -> appended */
    struct event_in stale = mk("impresion:a", 1, "{}");
    CHECK(evstore_append(s, &stale, 1, out, &e) == ERR_OK && out[0].status == ERR_CONFLICT);
    struct event_in any = mk("impresion:a", EVSTORE_ANY, "{\"any\":1}");
    CHECK(evstore_append(s, &any, 1, out, &e) == ERR_OK && out[0].status == ERR_OK &&
          out[0].position == 5 && out[0].stream_version == 3);

    /* reads: order, from, max, stop */
    memset(&c, 0, sizeof(c));
    CHECK(evstore_read(s, 1, 100, collect, &c, &e) == 0);
    CHECK(c.n == 5);
    bool ordered = true;
    for (int i = 0; i < c.n; i++) {
        ordered = ordered && c.pos[i] == i + 1;
    }
    CHECK(ordered);
    memset(&c, 0, sizeof(c));
    CHECK(evstore_read(s, 3, 2, collect, &c, &e) == 0 && c.n == 2 && c.pos[0] == 3 && c.pos[1] == 4);
    memset(&c, 0, sizeof(c));
    c.stop_after = 1;
    CHECK(evstore_read(s, 1, 100, collect, &c, &e) == 1 && c.n == 1);
    memset(&c, 0, sizeof(c));
    CHECK(evstore_read(s, 6, 100, collect, &c, &e) == 0 && c.n == 0);

    /* a reader sees the writer's commits and cannot append */
    struct evstore *r = open_store(b, EVSTORE_READONLY);
    if (r != NULL) {
        CHECK(evstore_head(r, &head, &e) == ERR_OK && head == 5);
        struct event_in x = mk("impresion:z", EVSTORE_NO_STREAM, "{}");
        CHECK(evstore_append(r, &x, 1, out, &e) == ERR_STATE);
        CHECK(evstore_append(s, &x, 1, out, &e) == ERR_OK && out[0].position == 6);
        CHECK(evstore_head(r, &head, &e) == ERR_OK && head == 6);
        evstore_close(r);
    }

    /* many streams: every one found again, positions gap-free */
    enum { MANY = 3000 };
    struct event_in *many = calloc(MANY, sizeof(*many));
    char (*names)[32] = calloc(MANY, 32);
    struct append_out *mo = calloc(MANY, sizeof(*mo));
    for (int i = 0; i < MANY; i++) {
        snprintf(names[i], 32, "impresion:m%d", i);
        many[i] = mk(names[i], EVSTORE_NO_STREAM, "{}");
    }
    CHECK(evstore_append(s, many, MANY, mo, &e) == ERR_OK);
    bool gapfree = true;
    for (int i = 0; i < MANY; i++) {
        gapfree = gapfree && mo[i].status == ERR_OK && mo[i].position == 7 + i;
    }
    CHECK(gapfree);
    evstore_close(s);

    /* reopen: head and stream lookups survive */
    s = open_store(b, 0);
    if (s != NULL) {
        CHECK(evstore_head(s, &head, &e) == ERR_OK && head == 6 + MANY);
        CHECK(evstore_append(s, many, MANY, mo, &e) == ERR_OK);
        bool all_conflict = true;
        for (int i = 0; i < MANY; i++) {
            all_conflict = all_conflict && mo[i].status == ERR_CONFLICT && mo[i].position == 7 + i;
        }
        CHECK(all_conflict);
        CHECK(evstore_stream_version(s, "impresion:a", &v, &p, &e) == ERR_OK && v == 3 && p == 5);
        int64_t bytes = 0;
        CHECK(evstore_size_bytes(s, &bytes, &e) == ERR_OK && bytes > 0);
        evstore_close(s);
    }
    free(many);
    free(names);
    free(mo);
}

/* Group commit over the store: a list of commands submitted at once
 * (committer_submit_list, as an HTTP loop does after each pass) is
 * committed in its order, each answered exactly once, a taken stream as a
 * conflict; after committer_stop a list is refused, each one once. */
enum { LIST_N = 5 };

struct list_done {
    pthread_mutex_t mu;
    struct commit_req *base;
    int calls[LIST_N];
    int total;
};

static void on_list_done(struct commit_req *r)
{
    struct list_done *ld = r->arg;
    pthread_mutex_lock(&ld->mu);
    ld->calls[r - ld->base]++;
    ld->total++;
    pthread_mutex_unlock(&ld->mu);
}

static void committer_list(const struct backend *b)
{
    struct evstore *s = open_store(b, 0);
    if (s == NULL) {
        return;
    }
    struct err e;
    int64_t head = 0;
    CHECK(evstore_head(s, &head, &e) == ERR_OK && head > 0);
    struct committer *c = committer_new(s, 256);
    struct commit_req reqs[LIST_N];
    struct list_done ld = { .mu = PTHREAD_MUTEX_INITIALIZER, .base = reqs };
    static const char *const streams[LIST_N] = {
        "impresion:list-0", "impresion:list-1", "impresion:a" /* taken */,
        "impresion:list-0" /* taken by the first */, "conversion:list-0",
    };
    memset(reqs, 0, sizeof(reqs));
    for (int i = 0; i < LIST_N; i++) {
        reqs[i].ev = mk(streams[i], EVSTORE_NO_STREAM, "{}");
        reqs[i].done = on_list_done;
        reqs[i].arg = &ld;
        reqs[i].next = i + 1 < LIST_N ? &reqs[i + 1] : NULL;
    }
    committer_submit_list(c, &reqs[0]);
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&ld.mu);
        int total = ld.total;
        pthread_mutex_unlock(&ld.mu);
        if (total >= LIST_N) {
            break;
        }
        usleep(10000);
    }
    static const int want_status[LIST_N] = { ERR_OK, ERR_OK, ERR_CONFLICT, ERR_CONFLICT, ERR_OK };
    static const int want_pos[LIST_N] = { 1, 2, 0, 1, 3 };      /* after head; 0: not checked */
    pthread_mutex_lock(&ld.mu);
    for (int i = 0; i < LIST_N; i++) {
        CHECKF(ld.calls[i] == 1, "%s: request %d answered %d times", b->name, i, ld.calls[i]);
        CHECKF(reqs[i].status == want_status[i], "%s: request %d status %d", b->name, i,
               reqs[i].status);
        CHECKF(want_pos[i] == 0 || reqs[i].out.position == head + want_pos[i],
               "%s: request %d at %lld, want %lld", b->name, i, (long long)reqs[i].out.position,
               (long long)(head + want_pos[i]));
        commit_req_fini(&reqs[i]);
    }
    pthread_mutex_unlock(&ld.mu);

    /* stopped: the whole list is refused at once, each request once */
    committer_stop(c);
    memset(ld.calls, 0, sizeof(ld.calls));
    ld.total = 0;
    for (int i = 0; i < 2; i++) {
        reqs[i].ev = mk(i ? "impresion:late-1" : "impresion:late-0", EVSTORE_NO_STREAM, "{}");
        reqs[i].status = -1;
        reqs[i].next = i == 0 ? &reqs[1] : NULL;
    }
    committer_submit_list(c, &reqs[0]);
    CHECK(ld.total == 2 && ld.calls[0] == 1 && ld.calls[1] == 1);
    CHECK(reqs[0].status == ERR_STATE && reqs[1].status == ERR_STATE);
    CHECK(committer_head(c) == head + 3);
    committer_free(c);
}

/* Both stores refuse UPDATE and DELETE, even from someone with a shell. */
#include <sqlite3.h>
static void sqlite_append_only(const char *spec)
{
    (void)spec;
    char path[300];
    snprintf(path, sizeof(path), "%s/events.db", dir);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "UPDATE events SET data='{}' WHERE position=1", NULL, NULL, NULL) != SQLITE_OK);
    CHECK(sqlite3_exec(db, "DELETE FROM events WHERE position=1", NULL, NULL, NULL) != SQLITE_OK);
    sqlite3_close(db);
}

static int64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

static int count_cb(const struct event_rec *ev, void *arg)
{
    int64_t *n = arg;
    (*n)++;
    return ev->position == *n ? 0 : -1;     /* positions 1, 2, 3, ... */
}

/* Appends batches of 32 events of ~600 bytes, each event a new stream;
 * returns how many were appended and the largest the WAL file got. */
static int64_t append_batches(struct evstore *s, const char *wal, int batches, int64_t first,
                              int64_t *max_wal)
{
    enum { BATCH = 32 };
    char data[600];
    snprintf(data, sizeof(data), "{\"pad\":\"%0*d\"}", 560, 0);
    static char names[BATCH][32];
    struct event_in ev[BATCH];
    struct append_out out[BATCH];
    struct err e;
    err_clear(&e);
    int64_t total = 0;
    for (int b = 0; b < batches; b++) {
        for (int i = 0; i < BATCH; i++) {
            snprintf(names[i], sizeof(names[i]), "impresion:%lld", (long long)(first + total + i));
            ev[i] = mk(names[i], EVSTORE_NO_STREAM, data);
        }
        bool ok = evstore_append(s, ev, BATCH, out, &e) == ERR_OK &&
                  out[BATCH - 1].status == ERR_OK;
        CHECKF(ok, "append batch %d: %s", b, e.msg);
        if (!ok) {
            break;
        }
        total += BATCH;
        int64_t w = file_size(wal);
        *max_wal = w > *max_wal ? w : *max_wal;
    }
    return total;
}

/* Under appends without a pause the WAL starts over at about 16 MiB
 * (evstore_sqlite.c, RESTART_FRAMES) instead of holding every event: the
 * database file takes them, nothing is lost across restarts, and the store
 * opens again with all of them. ~70 MB of WAL traffic; before the fix the
 * WAL ended that size. Then a reader that stays in the WAL (a long query)
 * holds the restart off (the log says so past 64 MiB), and once it leaves
 * the WAL starts over again. */
static void sqlite_wal_bounded(void)
{
    char sub[300], wal[340], db[340];
    snprintf(sub, sizeof(sub), "%s/wal", dir);
    snprintf(wal, sizeof(wal), "%s/events.db-wal", sub);
    snprintf(db, sizeof(db), "%s/events.db", sub);
    CHECK(mkdir(sub, 0700) == 0);
    struct evstore *s = NULL;
    struct err e;
    err_clear(&e);
    CHECKF(evstore_open("sqlite", sub, 0, &s, &e) == ERR_OK, "open: %s", e.msg);
    if (s == NULL) {
        return;
    }
    int64_t max_wal = 0;
    int64_t total = append_batches(s, wal, 2500, 0, &max_wal);
    CHECKF(max_wal > 0 && max_wal <= (32 << 20), "WAL reached %lld bytes", (long long)max_wal);
    CHECKF(file_size(db) >= (16 << 20), "database file %lld bytes: nothing checkpointed",
           (long long)file_size(db));

    /* a reader in the middle of a read transaction */
    sqlite3 *rd = NULL;
    sqlite3_stmt *st = NULL;
    CHECK(sqlite3_open_v2(db, &rd, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    CHECK(sqlite3_prepare_v2(rd, "SELECT position FROM events ORDER BY position", -1, &st,
                             NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    /* past 64 MiB the store says so in its log (stderr, caught in a file) */
    char logpath[340];
    snprintf(logpath, sizeof(logpath), "%s/stderr.log", dir);
    fflush(stderr);
    int saved = dup(2), fd = open(logpath, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    CHECK(saved >= 0 && fd >= 0 && dup2(fd, 2) == 2);
    int64_t held = 0;
    total += append_batches(s, wal, 2500, total, &held);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    CHECKF(held > (64 << 20), "WAL %lld bytes with a reader in it: it restarted anyway?",
           (long long)held);
    char logbuf[4096] = { 0 };
    FILE *lf = fopen(logpath, "r");
    size_t got = lf != NULL ? fread(logbuf, 1, sizeof(logbuf) - 1, lf) : 0;
    if (lf != NULL) {
        fclose(lf);
    }
    CHECKF(got > 0 && strstr(logbuf, "WAL is not starting over") != NULL, "log: %.300s", logbuf);
    sqlite3_finalize(st);
    sqlite3_close(rd);
    /* it left: the WAL starts over (and is cut to journal_size_limit,
     * 64 MiB) instead of going on growing. Copying back what piled up
     * while the reader held it takes a while (longer on a loaded machine,
     * with appends going on), so it gets a few rounds to get there; then
     * a whole round must stay under the limit. */
    int64_t after = 0, next = 0;
    int rounds = 0;
    for (; rounds < 6 && (rounds == 0 || file_size(wal) > (64 << 20)); rounds++) {
        int64_t m = 0;
        total += append_batches(s, wal, 2500, total, &m);
        after = m > after ? m : after;
    }
    total += append_batches(s, wal, 2500, total, &next);
    CHECKF(file_size(wal) <= (64 << 20) && next <= (64 << 20),
           "WAL up to %lld bytes in %d rounds after the reader left, %lld in the round after, "
           "%lld at the end (%lld while it read)", (long long)after, rounds, (long long)next,
           (long long)file_size(wal), (long long)held);

    int64_t n = 0;
    for (int rc = 0; rc == 0 && n < total;) {
        int64_t before = n;
        rc = evstore_read(s, n + 1, 4096, count_cb, &n, &e);
        CHECK(rc == 0 && n > before);
        if (n == before) {
            break;
        }
    }
    CHECKF(n == total, "read back %lld of %lld", (long long)n, (long long)total);
    evstore_close(s);
    s = NULL;
    int64_t head = -1;
    CHECK(evstore_open("sqlite", sub, 0, &s, &e) == ERR_OK);
    CHECK(s != NULL && evstore_head(s, &head, &e) == ERR_OK && head == total);
    evstore_close(s);
}

static void postgres_append_only(const char *spec)
{
    char msg[256];
    CHECK(pgtest_exec(spec, "UPDATE events SET data='{}' WHERE position=1", msg, sizeof(msg)) != 0);
    CHECK(strstr(msg, "append-only") != NULL);
    CHECK(pgtest_exec(spec, "DELETE FROM events WHERE position=1", msg, sizeof(msg)) != 0);
    CHECK(pgtest_exec(spec, "TRUNCATE events", msg, sizeof(msg)) != 0);
    CHECK(pgtest_exec(spec, "SELECT 1 FROM events WHERE position=1", msg, sizeof(msg)) == 0);
}

int main(void)
{
    for (size_t i = 0; i < ARRAY_LEN(backends); i++) {
        snprintf(dir, sizeof(dir), "/tmp/rastro-contract-XXXXXX");
        if (mkdtemp(dir) == NULL) {
            CHECK(!"mkdtemp");
            continue;
        }
        struct backend *b = &backends[i];
        int ready = b->fresh(b->spec, sizeof(b->spec));
        if (ready == 1) {
            printf("contract: %s skipped (no test cluster: RASTRO_TEST_PG_DIR unset)\n",
                   b->name);
        } else if (ready == 0) {
            printf("contract: %s in %s\n", b->name, dir);
            contract(b);
            committer_list(b);
            if (strcmp(b->name, "sqlite") == 0) {
                sqlite_append_only(b->spec);
                sqlite_wal_bounded();
            } else {
                postgres_append_only(b->spec);
            }
        }
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "could not remove %s\n", dir);
        }
    }
    return check_done("test_evstore_contract");
}
