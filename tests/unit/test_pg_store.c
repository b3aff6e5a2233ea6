/*
 * test_pg_store.c - what only the PostgreSQL store has to prove, against
 * the cluster ctest starts:
 *  - order: three processes append concurrently while this one tails by
 *    position; the tail never finds a gap, never sees a writer's events out
 *    of order, and ends with every event exactly once;
 *  - a connection killed (pg_terminate_backend) in the middle of a batch:
 *    the call fails with ERR_IO, the batch is all there or not at all, and
 *    the next call reconnects and lands it exactly once.
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "core/timeutil.h"
#include "pgtest.h"
#include "store/evstore.h"

enum { WRITERS = 3, PER_WRITER = 4000 };

static char url[512];

static struct event_in mk(const char *stream, const char *data)
{
    struct event_in ev = {
        .stream_id = stream, .expected_version = EVSTORE_NO_STREAM,
        .type = "ImpresionRegistrada", .schema_version = 1,
        .recorded_at_us = 1764324900000000LL, .data = data, .metadata = "{}",
    };
    uuid_v7(&ev.event_id);
    return ev;
}

/* A writer process: PER_WRITER events in batches of 1-150, streams
 * "w<w>:<i>", data {"w":w,"i":i}. Exit status 0 when all were appended. */
static int writer(int w)
{
    struct evstore *s = NULL;
    struct err e;
    if (evstore_open(url, "/nonexistent", 0, &s, &e) != ERR_OK) {
        fprintf(stderr, "writer %d: open: %s\n", w, e.msg);
        return 1;
    }
    static char names[PER_WRITER][32], datas[PER_WRITER][48];
    static struct event_in evs[PER_WRITER];
    static struct append_out out[PER_WRITER];
    for (int i = 0; i < PER_WRITER; i++) {
        snprintf(names[i], sizeof(names[i]), "w%d:%d", w, i);
        snprintf(datas[i], sizeof(datas[i]), "{\"w\":%d,\"i\":%d}", w, i);
        evs[i] = mk(names[i], datas[i]);
    }
    srand((unsigned)getpid());
    int i = 0, rc = 0;
    while (i < PER_WRITER && rc == 0) {
        int n = 1 + rand() % 150;
        if (i + n > PER_WRITER) {
            n = PER_WRITER - i;
        }
        if (evstore_append(s, evs + i, (size_t)n, out, &e) != ERR_OK) {
            fprintf(stderr, "writer %d: append: %s\n", w, e.msg);
            rc = 1;
        }
        for (int k = 0; k < n && rc == 0; k++) {
            if (out[k].status != ERR_OK) {
                fprintf(stderr, "writer %d: event %d: status %d\n", w, i + k, out[k].status);
                rc = 1;
            }
        }
        i += n;
    }
    evstore_close(s);
    return rc;
}

struct tail {
    int64_t last;               /* last position seen */
    int next[WRITERS];          /* next i expected from each writer */
    int gaps, disorder, bad;
};

static int on_event(const struct event_rec *ev, void *arg)
{
    struct tail *t = arg;
    if (ev->position != t->last + 1) {
        t->gaps++;
    }
    t->last = ev->position;
    int w = -1, i = -1;
    if (sscanf(ev->data, "{\"w\":%d,\"i\":%d}", &w, &i) != 2 || w < 0 || w >= WRITERS) {
        t->bad++;
        return 0;
    }
    if (i != t->next[w]) {
        t->disorder++;
    }
    t->next[w] = i + 1;
    return 0;
}

static void concurrent_writers_and_a_tail(void)
{
    if (pgtest_db("rastro_order", url, sizeof(url)) != 0) {
        return;
    }
    struct err e;
    int from, to;
    CHECK(evstore_migrate(url, "/nonexistent", &from, &to, &e) == ERR_OK);
    struct evstore *r = NULL;
    if (evstore_open(url, "/nonexistent", EVSTORE_READONLY, &r, &e) != ERR_OK) {
        CHECKF(0, "open reader: %s", e.msg);
        return;
    }
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        if (pids[w] == 0) {
            _exit(writer(w));
        }
    }
    struct tail t = { 0 };
    int running = WRITERS, reads = 0, failed = 0;
    int64_t deadline = time_mono_us() + 120 * 1000000LL;
    while (time_mono_us() < deadline) {
        int64_t before = t.last;
        int running_before = running;   /* writers seen running before this read */
        if (evstore_read(r, t.last + 1, 500, on_event, &t, &e) != 0) {
            CHECKF(0, "tail read: %s", e.msg);
            break;
        }
        reads++;
        for (int w = 0; w < WRITERS; w++) {
            int st;
            if (pids[w] > 0 && waitpid(pids[w], &st, WNOHANG) == pids[w]) {
                failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
                pids[w] = 0;
                running--;
            }
        }
        if (running_before == 0 && t.last == before) {
            break;      /* all had exited before a read that found nothing new */
        }
    }
    for (int w = 0; w < WRITERS; w++) {
        if (pids[w] > 0) {
            kill(pids[w], SIGKILL);
            waitpid(pids[w], NULL, 0);
            failed++;
        }
    }
    printf("order: %lld events tailed in %d reads\n", (long long)t.last, reads);
    CHECKF(failed == 0, "%d writers failed", failed);
    CHECKF(t.gaps == 0, "%d gaps seen by the tail", t.gaps);
    CHECKF(t.disorder == 0, "%d events out of their writer's order", t.disorder);
    CHECK(t.bad == 0);
    CHECK(t.last == WRITERS * PER_WRITER);
    for (int w = 0; w < WRITERS; w++) {
        CHECKF(t.next[w] == PER_WRITER, "writer %d: tail ended at %d", w, t.next[w]);
    }
    int64_t head = 0;
    CHECK(evstore_head(r, &head, &e) == ERR_OK && head == WRITERS * PER_WRITER);
    evstore_close(r);
}

/* --- a killed connection ----------------------------------------------- */

static int64_t count_sql(const char *sql)
{
    PGconn *c = PQconnectdb(url);
    PGresult *res = PQexec(c, sql);
    int64_t n = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                    ? strtoll(PQgetvalue(res, 0, 0), NULL, 10)
                    : -1;
    PQclear(res);
    PQfinish(c);
    return n;
}

struct appender {
    struct evstore *s;
    struct event_in *ev;
    struct append_out *out;
    size_t n;
    int rc;
    char msg[256];
};

static void *append_thread(void *arg)
{
    struct appender *a = arg;
    struct err e;
    err_clear(&e);
    a->rc = evstore_append(a->s, a->ev, a->n, a->out, &e);
    snprintf(a->msg, sizeof(a->msg), "%s", e.msg);
    return NULL;
}

/* Terminates the victim's backend once it shows `state` (e.g. waiting for
 * the lock, or running the INSERT); returns whether it did. */
static bool terminate_when(const char *cond)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
             " WHERE application_name = 'victim' AND %s", cond);
    for (int i = 0; i < 2000; i++) {
        if (count_sql(sql) > 0) {
            return true;
        }
        usleep(2000);
    }
    return false;
}

/* Appends until it succeeds (the store backs off after a lost connection). */
static int append_retrying(struct evstore *s, struct event_in *ev, size_t n,
                           struct append_out *out)
{
    struct err e;
    int rc = ERR_IO;
    for (int i = 0; i < 100 && rc == ERR_IO; i++) {
        rc = evstore_append(s, ev, n, out, &e);
        if (rc == ERR_IO) {
            usleep(50000);
        }
    }
    return rc;
}

static void killed_in_a_batch(const char *name, const char *when, size_t n)
{
    struct err e;
    char vurl[600];
    snprintf(vurl, sizeof(vurl), "%s?application_name=victim", url);
    struct evstore *s = NULL;
    if (evstore_open(vurl, "/nonexistent", 0, &s, &e) != ERR_OK) {
        CHECKF(0, "%s: open: %s", name, e.msg);
        return;
    }
    struct event_in *ev = calloc(n, sizeof(*ev));
    struct append_out *out = calloc(n, sizeof(*out));
    char (*names)[40] = calloc(n, 40);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], 40, "%s:%zu", name, i);
        ev[i] = mk(names[i], "{\"x\":1}");
    }
    /* hold the append lock so the victim's batch waits inside its transaction */
    PGconn *blocker = PQconnectdb(url);
    PQclear(PQexec(blocker, "BEGIN"));
    bool hold = strcmp(when, "lock") == 0;
    if (hold) {
        PQclear(PQexec(blocker, "SELECT pg_advisory_xact_lock(7526769250022511)"));
    }
    struct appender a = { .s = s, .ev = ev, .out = out, .n = n };
    pthread_t th;
    pthread_create(&th, NULL, append_thread, &a);
    bool killed = terminate_when(hold ? "wait_event_type = 'Lock'"
                                      : "state = 'active' AND query LIKE 'INSERT%'");
    PQclear(PQexec(blocker, "COMMIT"));
    PQfinish(blocker);
    pthread_join(th, NULL);
    char sql[200];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM events WHERE stream_id LIKE '%s:%%'", name);
    int64_t there = count_sql(sql);
    printf("killed %s (%zu events, at %s): append rc=%d (%s), rows after: %lld\n", name, n, when,
           a.rc, a.msg, (long long)there);
    CHECKF(killed, "%s: the victim was never seen %s", name, when);
    CHECKF(a.rc == ERR_IO, "%s: append returned %d", name, a.rc);
    CHECKF(there == 0 || there == (int64_t)n, "%s: half a batch: %lld of %zu", name,
           (long long)there, n);
    /* retried: reconnects, and the batch is there exactly once */
    CHECK(append_retrying(s, ev, n, out) == ERR_OK);
    size_t ok = 0, conflicts = 0;
    for (size_t i = 0; i < n; i++) {
        ok += out[i].status == ERR_OK;
        conflicts += out[i].status == ERR_CONFLICT;
    }
    CHECKF(ok + conflicts == n && (there == 0 ? ok == n : conflicts == n),
           "%s: retry: %zu ok, %zu conflicts", name, ok, conflicts);
    CHECK(count_sql(sql) == (int64_t)n);
    /* gap-free after all that */
    CHECK(count_sql("SELECT max(position) - count(*) FROM events") == 0);
    evstore_close(s);
    free(ev);
    free(out);
    free(names);
}

/* A transaction holding the append lock and never finishing (a frozen or
 * cut-off writer): appends give up within their deadline, and their
 * backends stop waiting (lock_timeout) instead of piling up. */
static void lock_held_forever(void)
{
    struct err e;
    char vurl[600];
    snprintf(vurl, sizeof(vurl), "%s?application_name=waiter", url);
    struct evstore *s = NULL;
    if (evstore_open(vurl, "/nonexistent", 0, &s, &e) != ERR_OK) {
        CHECKF(0, "open: %s", e.msg);
        return;
    }
    PGconn *blocker = PQconnectdb(url);
    PQclear(PQexec(blocker, "BEGIN"));
    PQclear(PQexec(blocker, "SELECT pg_advisory_xact_lock(7526769250022511)"));
    struct event_in ev = mk("held:1", "{}");
    struct append_out out;
    for (int i = 0; i < 3; i++) {
        int64_t t0 = time_mono_us();
        int rc = evstore_append(s, &ev, 1, &out, &e);
        int64_t ms = (time_mono_us() - t0) / 1000;
        CHECKF(rc == ERR_IO && ms < 6000, "append %d: rc %d after %lld ms", i, rc, (long long)ms);
        usleep(150000);     /* past the reconnect backoff */
    }
    CHECK(count_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'waiter'"
                    " AND wait_event_type = 'Lock'") == 0);
    PQclear(PQexec(blocker, "ROLLBACK"));
    PQfinish(blocker);
    CHECK(append_retrying(s, &ev, 1, &out) == ERR_OK && out.status == ERR_OK);
    evstore_close(s);
}

int main(void)
{
    concurrent_writers_and_a_tail();
    if (url[0] != '\0') {
        killed_in_a_batch("waiting", "lock", 100);
        killed_in_a_batch("inserting", "insert", 30000);
        lock_held_forever();
    } else {
        printf("skipped: no test cluster (RASTRO_TEST_PG_DIR unset)\n");
    }
    return check_done("test_pg_store");
}
