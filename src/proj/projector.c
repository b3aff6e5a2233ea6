/*
 * projector.c - see projector.h.
 */
#include "proj/projector.h"
#include "read/rmcache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/log.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"
#include "proj/projections.h"
#include "proj/stats.h"
#include "read/readmodel.h"

#define BATCH_MAX 8192
#define BULK_BATCH_MAX 65536
/* After a partial batch, wait this long for more events before the next
 * commit: fewer, larger read-model transactions (each dirty page, notably
 * of the statistics tables, is written once per commit, not once per
 * event) for at most this much added lag. Measured at 64 connections:
 * 10 ms -> 50 ms took the projector from 10.2 to 6.6 us an event and
 * durable POSTs from 32k to 38.6k/s. Readers waiting on min_position do
 * not wait for it: the catch-up thread (below) applies for them. */
#define COALESCE_MS 50

/*
 * Two threads apply batches, one at a time (step_mu):
 *  - the batch thread, at nice BATCH_NICE, does the work as long as it keeps
 *    up. At the lowest priority the request path (HTTP and committer
 *    threads) preempts it whenever it has work, and it takes the CPU the
 *    request path leaves idle; at 64 connections on two cores durable POSTs
 *    went from 39.5k to 44k/s (nice 10: 42k) and their p99 down by ~1 ms
 *    (BENCHMARKS.md, seventh session).
 *  - the catch-up thread, at normal priority, sleeps unless a reader waits
 *    for a position or the batch thread has fallen URGENT_MS behind; then it
 *    applies batches itself until neither holds. A starved batch thread
 *    would otherwise leave the read models behind without bound on a busy
 *    machine, and a read-your-write GET waiting behind it (nice 19 alone:
 *    p99 at full load 54 -> 118-270 ms). Unprivileged processes can lower a
 *    thread's priority but never raise it again, hence two threads.
 * While the catch-up thread is at it, a batch the batch thread has begun
 * ends early (its events so far are committed as a shorter batch) and it
 * starts no other.
 */
#define BATCH_NICE 19
#define URGENT_MS 500

/*
 * The feed: events this process's committer has just made durable, handed
 * over decoded (the command as validated, whose JSON is what was stored:
 * the command fuzzer's oracle checks that it decodes back to the same
 * payload), so a live batch need not read them back from the store and
 * parse them again (a third of the projector's time). A contiguous run of
 * positions [lo, lo + n) in a ring; a gap (another writer on a PostgreSQL
 * store, a refused append), a full ring (the projector far behind) or a
 * batch that starts before lo, and the batch reads the store for what the
 * ring lacks, as before. The committer copies in while the projector
 * copies out of other slots; a reset waits until the projector is done.
 */
#define FEED_CAP 4096

struct feed_item {
    int64_t position, recorded_at_us;
    struct tracking t;
};

struct feed {
    pthread_mutex_t mu;
    struct feed_item *ring;         /* NULL: no feed */
    size_t head, n;                 /* under mu */
    int64_t lo;                     /* under mu: position of ring[head] */
    bool reading;                   /* under mu: the projector is copying from head on */
};

struct projector {
    struct evstore *store;          /* read-only; under step_mu once started */
    struct readmodel *rm;           /* writer; under step_mu once started */
    struct stats_acc *acc;
    struct bus *bus;
    bool bulk;
    int64_t stop_at;                /* run_to: apply nothing past this position */
    pthread_t thread;
    pthread_t catchup_thread;
    bool started;
    atomic_bool stopping;
    pthread_mutex_t step_mu;        /* one batch at a time, whichever thread */
    atomic_bool catchup_wants;      /* the catch-up thread is applying: the batch thread
                                     * ends its batch early and starts none */
    bool catching_up;               /* under step_mu: the catch-up thread's batch */
    pthread_cond_t catchup_cv;      /* with mu: a reader started waiting, or stop */
    bool stopped;                   /* under mu: thread gone, waiters woken at once */
    _Atomic int64_t position;
    _Atomic int64_t caught_up_us;   /* when it last had applied all it could see */
    pthread_mutex_t mu;             /* waiters, stats */
    struct proj_waiter *waiters;
    struct projector_stats st;
    struct proj_counters batch_c;
    int64_t batch_last;
    int batch_err;
    struct err batch_e;
    struct rmcache *cache;          /* statistics answers to invalidate; may be NULL */
    struct buf touched;             /* this batch's statistics keys */
    struct proj_decoded *live;      /* live batches: the chunk read, then applied */
    struct feed feed;               /* committed events handed over in memory */
    int64_t batch_mem, batch_store; /* the batch's events from the feed, from the store */
    int64_t fold_retry_us;          /* under step_mu: no fold before (after a failed one) */
};

void projector_set_cache(struct projector *p, struct rmcache *cache)
{
    p->cache = cache;   /* before projector_start */
}

int64_t projector_position(struct projector *p)
{
    return atomic_load(&p->position);
}

int64_t projector_lag_us(struct projector *p, int64_t head)
{
    if (head <= projector_position(p)) {
        return 0;
    }
    int64_t since = atomic_load(&p->caught_up_us);
    int64_t now = time_mono_us();
    return since > 0 && now > since ? now - since : 0;
}

void projector_get_stats(struct projector *p, struct projector_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->st;
    pthread_mutex_unlock(&p->mu);
    out->position = projector_position(p);
}

/* Records "<scope digit><key>\0" for invalidation after the commit. */
static void note_touched(void *arg, enum rm_scope scope, const char *key)
{
    struct projector *p = arg;
    if (buf_putc(&p->touched, (char)('0' + (int)scope)) != ERR_OK ||
        buf_append(&p->touched, key, strlen(key) + 1) != ERR_OK) {
        log_warn("cannot note a statistics key for the cache", NULL);
    }
}

static int apply_one(struct projector *p, const struct proj_decoded *d)
{
    if (d->position != p->batch_last + 1) {
        p->batch_err = err_set(&p->batch_e, ERR_STATE, "gap in event log: expected %lld, got %lld",
                               (long long)p->batch_last + 1, (long long)d->position);
        return 1;
    }
    p->batch_err = proj_apply_decoded(p->rm, p->acc, d, &p->batch_c, &p->batch_e);
    if (p->batch_err != ERR_OK) {
        return 1;
    }
    p->batch_last = d->position;
    return 0;
}

/*
 * Rebuild pipeline: a second thread reads events from the store and
 * decodes them (JSON, validation) into chunks while the projector's thread
 * applies the chunks before them to the read models. The decoding was a
 * quarter of the rebuild's single busy thread; the machine has a second
 * core. Chunks go round a ring of RING; the reader fills the slot after the
 * filled ones, the applier empties the oldest.
 */
#define CHUNK 512
#define RING 3

struct chunk {
    struct proj_decoded *d;
    size_t n;
};

struct pipe {
    struct projector *p;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct chunk ring[RING];
    size_t head, full;          /* under mu: oldest filled slot, filled slots */
    bool done;                  /* under mu: the reader has stopped (end or error) */
    bool quit;                  /* under mu: the applier wants the reader to stop */
    int rc;                     /* the reader's error, once done */
    struct err e;
};

struct decode_arg {
    struct chunk *c;
    size_t max;                 /* what the read asked for: the chunk's room */
    const struct stats_acc *acc;
};

static int decode_cb(const struct event_rec *ev, void *arg)
{
    struct decode_arg *a = arg;
    if (a->c->n >= a->max) {
        /* a store that breaks evstore_read's "up to max" (evstore_js did,
         * until the fourteenth session): stop without keeping it; the next
         * read starts right after the last event kept */
        static _Atomic bool said;
        if (!atomic_exchange(&said, true)) {
            log_error("the event store delivered more events than asked for; the extra ones "
                      "are read again", "position=%lld max=%zu", (long long)ev->position, a->max);
        }
        return 1;
    }
    struct proj_decoded *d = &a->c->d[a->c->n++];
    proj_decode(ev, d);
    if (d->status == PROJ_OK) {     /* the names' hashes here, off the applier's thread */
        stats_acc_hint(a->acc, &d->t, &d->hint);
        d->hinted = true;
    }
    return 0;
}

/* Reads and decodes up to max events from position from into c (emptied
 * first); returns like evstore_read(). Both the rebuild's reader thread
 * and a live batch fill their chunks here. */
static int read_chunk(struct projector *p, struct chunk *c, int64_t from, int64_t max,
                      struct err *e)
{
    c->n = 0;
    struct decode_arg da = { .c = c, .max = max > 0 ? (size_t)max : 0, .acc = p->acc };
    return max > 0 ? evstore_read(p->store, from, (size_t)max, decode_cb, &da, e) : 0;
}

/* Up to max events from position from out of the feed into c; 0 when the
 * feed does not start at from (then *store_max says how far the store
 * should be read: up to where the feed starts). */
static size_t feed_take(struct projector *p, struct chunk *c, int64_t from, int64_t max,
                        int64_t *store_max)
{
    struct feed *f = &p->feed;
    *store_max = max;
    if (f->ring == NULL) {
        return 0;
    }
    pthread_mutex_lock(&f->mu);
    if (f->n > 0 && from > f->lo) {         /* applied already: drop */
        size_t skip = (uint64_t)(from - f->lo) < f->n ? (size_t)(from - f->lo) : f->n;
        f->head = (f->head + skip) % FEED_CAP;
        f->n -= skip;
        f->lo += (int64_t)skip;
    }
    size_t take = 0;
    if (f->n > 0 && from == f->lo) {
        take = f->n < (uint64_t)max ? f->n : (size_t)max;
        f->reading = true;
    } else if (f->n > 0 && from < f->lo && f->lo - from < max) {
        *store_max = f->lo - from;
    }
    size_t head = f->head;
    pthread_mutex_unlock(&f->mu);
    for (size_t i = 0; i < take; i++) {
        const struct feed_item *it = &f->ring[(head + i) % FEED_CAP];
        struct proj_decoded *d = &c->d[i];
        d->position = it->position;
        d->recorded_at_us = it->recorded_at_us;
        d->status = PROJ_OK;
        tracking_copy(&d->t, &it->t);
        stats_acc_hint(p->acc, &d->t, &d->hint);
        d->hinted = true;
    }
    if (take > 0) {
        pthread_mutex_lock(&f->mu);
        f->head = (f->head + take) % FEED_CAP;
        f->n -= take;
        f->lo += (int64_t)take;
        f->reading = false;
        pthread_mutex_unlock(&f->mu);
    }
    c->n = take;
    return take;
}

void projector_feed(struct projector *p, int64_t position, int64_t recorded_at_us,
                    const struct tracking *t)
{
    struct feed *f = &p->feed;
    if (f->ring == NULL) {
        return;
    }
    pthread_mutex_lock(&f->mu);
    if (f->n > 0 && (position != f->lo + (int64_t)f->n || f->n == FEED_CAP)) {
        if (f->reading) {               /* the projector is copying: keep its run */
            pthread_mutex_unlock(&f->mu);
            return;
        }
        f->n = 0;       /* a gap, or the projector far behind: it reads the store */
    }
    if (f->n == 0) {
        f->head = 0;
        f->lo = position;
    }
    struct feed_item *it = &f->ring[(f->head + f->n) % FEED_CAP];
    it->position = position;
    it->recorded_at_us = recorded_at_us;
    tracking_copy(&it->t, t);
    f->n++;
    pthread_mutex_unlock(&f->mu);
}

static void *pipe_run(void *arg)
{
    struct pipe *q = arg;
    struct projector *p = q->p;
    pthread_setname_np(pthread_self(), "rastro-decode");
    int64_t next = projector_position(p) + 1;
    struct err e;
    err_clear(&e);
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->full == RING && !q->quit) {
            pthread_cond_wait(&q->cv, &q->mu);
        }
        if (q->quit) {
            break;
        }
        struct chunk *c = &q->ring[(q->head + q->full) % RING];
        pthread_mutex_unlock(&q->mu);
        int64_t max = p->stop_at - next + 1 < CHUNK ? p->stop_at - next + 1 : CHUNK;
        int rc = read_chunk(p, c, next, max, &e);
        pthread_mutex_lock(&q->mu);
        if (rc < 0) {
            q->rc = rc;
            q->e = e;
            break;
        }
        if (c->n == 0) {
            break;      /* everything there was */
        }
        next = c->d[c->n - 1].position + 1;
        q->full++;
        pthread_cond_broadcast(&q->cv);
    }
    q->done = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static int pipe_start(struct pipe *q, struct projector *p, struct err *e)
{
    memset(q, 0, sizeof(*q));
    q->p = p;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    for (size_t i = 0; i < RING; i++) {
        q->ring[i].d = xmalloc(CHUNK * sizeof(struct proj_decoded));
    }
    if (pthread_create(&q->thread, NULL, pipe_run, q) != 0) {
        return err_set(e, ERR_STATE, "cannot start the rebuild's reader thread");
    }
    q->started = true;
    return ERR_OK;
}

static void pipe_stop(struct pipe *q)
{
    pthread_mutex_lock(&q->mu);
    q->quit = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    if (q->started) {
        pthread_join(q->thread, NULL);
    }
    for (size_t i = 0; i < RING; i++) {
        free(q->ring[i].d);
    }
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}

/* How many events ahead of the one being applied the statistics' entries
 * are prefetched (their slots twice as far ahead). */
#define PREFETCH_AHEAD 4

static void prefetch_stats(const struct projector *p, const struct chunk *c, size_t i, int stage)
{
    if (i < c->n && c->d[i].hinted) {
        stats_acc_prefetch(p->acc, &c->d[i].t, &c->d[i].hint, stage);
    }
}

/* Applies a chunk's events in order; true when one failed (the batch
 * error says why) or, in a live batch of the batch thread, when the
 * catch-up thread wants the batch ended here (not an error). */
static bool apply_chunk(struct projector *p, const struct chunk *c)
{
    for (size_t i = 0; i < c->n; i++) {
        prefetch_stats(p, c, i + 2 * PREFETCH_AHEAD, 1);
        prefetch_stats(p, c, i + PREFETCH_AHEAD, 2);
        if (apply_one(p, &c->d[i]) != 0) {
            return true;
        }
        if (!p->bulk && !p->catching_up &&
            atomic_load_explicit(&p->catchup_wants, memory_order_relaxed)) {
            return true;
        }
    }
    return false;
}

/* Applies whole chunks until at least max events or the end; returns like
 * evstore_read(): ERR_OK, 1 when apply_one() stopped, or the reader's error. */
static int pipe_apply(struct pipe *q, struct projector *p, int64_t max, struct err *e)
{
    int64_t n = 0;
    while (n < max) {
        pthread_mutex_lock(&q->mu);
        while (q->full == 0 && !q->done) {
            pthread_cond_wait(&q->cv, &q->mu);
        }
        if (q->full == 0) {
            int rc = q->rc;
            if (rc != ERR_OK) {
                *e = q->e;
            }
            pthread_mutex_unlock(&q->mu);
            return rc;
        }
        struct chunk *c = &q->ring[q->head];
        pthread_mutex_unlock(&q->mu);
        bool stop = apply_chunk(p, c);
        n += (int64_t)c->n;
        pthread_mutex_lock(&q->mu);
        q->head = (q->head + 1) % RING;
        q->full--;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
        if (stop) {
            return 1;   /* the batch error says why */
        }
    }
    return ERR_OK;
}

/*
 * A live batch reads the store a chunk at a time into memory and applies
 * the chunk once the read is over. Applying from inside the read held the
 * store's read transaction for the whole batch (tens of milliseconds, and
 * longer at nice 19), and a reader holding one keeps SQLite from
 * restarting the store's WAL (evstore_sqlite.c): under sustained load the
 * WAL then grew without end.
 */
static int read_apply(struct projector *p, int64_t from, int64_t max, struct err *e)
{
    struct chunk c = { .d = p->live };
    for (int64_t n = 0; n < max; n += (int64_t)c.n) {
        int64_t want = max - n < CHUNK ? max - n : CHUNK;
        bool fed = feed_take(p, &c, from + n + 1, want, &want) > 0;
        if (!fed) {
            int rc = read_chunk(p, &c, from + n + 1, want, e);
            if (rc < 0) {
                return rc;
            }
        }
        *(fed ? &p->batch_mem : &p->batch_store) += (int64_t)c.n;
        if (apply_chunk(p, &c)) {
            return 1;
        }
        if (!fed && (int64_t)c.n < want) {
            break;      /* everything there was */
        }
    }
    return ERR_OK;
}

/* Wakes waiters whose minimum is reached or whose deadline passed. */
static void wake_waiters(struct projector *p, bool all)
{
    int64_t pos = projector_position(p);
    int64_t now = time_mono_us();
    struct proj_waiter *ready = NULL;
    pthread_mutex_lock(&p->mu);
    struct proj_waiter **pp = &p->waiters;
    while (*pp != NULL) {
        struct proj_waiter *w = *pp;
        if (all || w->min_position <= pos || w->deadline_us <= now) {
            *pp = w->next;
            w->next = ready;
            ready = w;
        } else {
            pp = &w->next;
        }
    }
    pthread_mutex_unlock(&p->mu);
    while (ready != NULL) {
        struct proj_waiter *w = ready;
        ready = w->next;
        w->wake(w);
    }
}

/* Applies one batch, read from the store or (rebuild) from the pipe;
 * returns how many events, or a negative error. */
static int step(struct projector *p, struct pipe *q, struct err *e)
{
    int64_t from = projector_position(p);
    memset(&p->batch_c, 0, sizeof(p->batch_c));
    p->batch_mem = p->batch_store = 0;
    p->batch_last = from;
    p->batch_err = ERR_OK;
    int rc = rm_begin(p->rm, e);
    if (rc != ERR_OK) {
        goto fail;      /* e.g. another process holds the write lock: counted, retried */
    }
    int64_t max = p->bulk ? BULK_BATCH_MAX : BATCH_MAX;
    if (p->stop_at - from < max) {
        max = p->stop_at - from;
    }
    if (q != NULL) {
        rc = pipe_apply(q, p, max, e);
    } else {
        rc = max > 0 ? read_apply(p, from, max, e) : 0;
    }
    if (rc < 0) {
        goto fail;
    }
    if (p->batch_err != ERR_OK) {
        rc = p->batch_err;
        *e = p->batch_e;
        goto fail;
    }
    if (p->batch_last == from) {
        rm_rollback(p->rm);
        return 0;
    }
    buf_reset(&p->touched);
    if (!p->bulk) {
        if (p->cache != NULL) {
            stats_acc_each_key(p->acc, note_touched, p);
        }
        rc = stats_acc_flush(p->acc, p->rm, e);     /* bulk: once, at the end */
    }
    for (size_t i = 0; i < proj_count && rc == ERR_OK; i++) {
        rc = rm_set_checkpoint(p->rm, proj_names[i], p->batch_last, e);
    }
    if (rc == ERR_OK) {
        rc = rm_commit(p->rm, e);
    }
    if (rc != ERR_OK) {
        goto fail;
    }
    /* cached answers of what this batch changed go before the new position
     * is published (rmcache.h) */
    for (size_t off = 0; off < p->touched.len;) {
        enum rm_scope scope = (enum rm_scope)(p->touched.p[off] - '0');
        const char *key = p->touched.p + off + 1;
        rmcache_invalidate(p->cache, RMC_STATS(scope), key);
        off += 1 + strlen(key) + 1;
    }
    atomic_store(&p->position, p->batch_last);
    pthread_mutex_lock(&p->mu);
    p->st.applied += p->batch_c.applied;
    p->st.skipped += p->batch_c.skipped;
    p->st.invalid += p->batch_c.invalid;
    p->st.batches++;
    p->st.read_memory += p->batch_mem;
    p->st.read_store += p->batch_store;
    pthread_mutex_unlock(&p->mu);
    return (int)(p->batch_last - from);
fail:
    stats_acc_clear(p->acc);
    rm_rollback(p->rm);
    pthread_mutex_lock(&p->mu);
    p->st.errors++;
    if (rc == ERR_STATE) {
        p->st.errors_gap++;
    }
    pthread_mutex_unlock(&p->mu);
    return rc < 0 ? rc : ERR_IO;
}

int projector_run_to_head(struct projector *p, struct err *e)
{
    return projector_run_to(p, INT64_MAX, e);
}

int projector_run_to(struct projector *p, int64_t upto, struct err *e)
{
    p->stop_at = upto;
    struct pipe q;
    if (p->bulk && pipe_start(&q, p, e) != ERR_OK) {
        pipe_stop(&q);
        return ERR_STATE;
    }
    int rc = ERR_OK;
    for (;;) {
        int n = step(p, p->bulk ? &q : NULL, e);
        if (n <= 0) {
            rc = n;
            break;
        }
    }
    if (p->bulk) {
        pipe_stop(&q);
    }
    if (!p->bulk || rc != ERR_OK) {
        return rc;
    }
    rc = rm_begin(p->rm, e);
    if (rc == ERR_OK) {
        rc = stats_acc_flush(p->acc, p->rm, e);
    }
    if (rc == ERR_OK) {
        rc = rm_commit(p->rm, e);
    }
    if (rc == ERR_OK) {
        rc = rm_bulk_finish(p->rm, e);
    }
    return rc;
}

/* The head the bus has announced, now, without waiting. */
static int64_t announced_head(struct projector *p)
{
    return bus_wait(p->bus, -1, 0);
}

/* One live batch under step_mu. The projector is caught up as of the
 * batch's start when it has applied the head the bus had announced by
 * then (not merely read less than a full batch: the JetStream store hands
 * out at most 1,024 events a read, and a yielded batch stops short). */
static int step_once(struct projector *p, bool catchup, struct err *e)
{
    if (catchup) {
        /* the batch thread may hold the lock for a while at nice 19 (its
         * batch ends at the next event, but the commit is still to come):
         * readers whose deadline passes meanwhile are woken on time */
        while (pthread_mutex_trylock(&p->step_mu) != 0) {
            wake_waiters(p, false);
            usleep(1000);
        }
    } else {
        pthread_mutex_lock(&p->step_mu);
    }
    p->catching_up = catchup;
    int64_t started = time_mono_us();
    int64_t head = announced_head(p);
    int n = step(p, NULL, e);
    if (n >= 0 && projector_position(p) >= head) {
        atomic_store(&p->caught_up_us, started);   /* everything up to then is applied */
    }
    pthread_mutex_unlock(&p->step_mu);
    return n;
}

/* Folds the read models' pending statistics into their table when due
 * (readmodel.h), a slice at a time for up to FOLD_BUDGET_MS, after a
 * batch's position is published and its readers woken. The batch thread
 * stops between slices when the catch-up thread wants to apply (a slice
 * holds step_mu for its transaction); the catch-up thread folds only
 * when the pending keys would otherwise grow without bound. */
#define FOLD_BUDGET_MS 10

static void fold_stats(struct projector *p, bool catchup)
{
    int64_t now = time_mono_us();
    pthread_mutex_lock(&p->step_mu);
    bool more = now >= p->fold_retry_us && rm_fold_due(p->rm) >= (catchup ? 2 : 1);
    while (more && (catchup || !atomic_load(&p->catchup_wants))) {
        struct err e;
        err_clear(&e);
        if (rm_fold_step(p->rm, &more, &e) != ERR_OK) {
            /* queries still add what is pending; a second before the next
             * try (and its log line: a full disk would repeat it) */
            p->fold_retry_us = now + 1000 * 1000;
            log_warn("cannot fold pending statistics; will retry", "err=\"%s\"", e.msg);
            break;
        }
        if (time_mono_us() - now >= FOLD_BUDGET_MS * 1000) {
            break;
        }
    }
    pthread_mutex_unlock(&p->step_mu);
}

static bool has_waiters(struct projector *p)
{
    pthread_mutex_lock(&p->mu);
    bool waiting = p->waiters != NULL;
    pthread_mutex_unlock(&p->mu);
    return waiting;
}

/* Whether the catch-up thread should apply now: a reader waits, or the
 * projector has not been caught up for URGENT_MS with events to apply. */
static bool urgent(struct projector *p)
{
    int64_t head = announced_head(p);
    if (head <= projector_position(p)) {
        return false;
    }
    return has_waiters(p) || projector_lag_us(p, head) >= URGENT_MS * 1000;
}

static void *run_catchup(void *arg)
{
    struct projector *p = arg;
    pthread_setname_np(pthread_self(), "rastro-catchup");
    while (!atomic_load(&p->stopping)) {
        if (!urgent(p)) {
            atomic_store(&p->catchup_wants, false);     /* the batch thread's turn */
            wake_waiters(p, false);     /* deadlines that passed */
            if (has_waiters(p)) {
                /* waiting for events not committed yet: for the next commit */
                bus_wait(p->bus, projector_position(p), 10);
                continue;
            }
            /* its own condition variable, not the bus's: that one is
             * broadcast at every commit. A new waiter signals it. */
            struct timespec ts;
            time_deadline(CLOCK_MONOTONIC, 20, &ts);
            pthread_mutex_lock(&p->mu);
            if (p->waiters == NULL && !atomic_load(&p->stopping)) {
                pthread_cond_timedwait(&p->catchup_cv, &p->mu, &ts);
            }
            pthread_mutex_unlock(&p->mu);
            continue;
        }
        struct err e;
        err_clear(&e);
        /* stays set until nothing is urgent: the batch thread does not
         * slip a one-event batch in between two of these */
        atomic_store(&p->catchup_wants, true);
        int n = step_once(p, true, &e);
        wake_waiters(p, false);
        fold_stats(p, true);
        if (n < 0) {
            /* the batch thread logs the error and backs off; retry less often */
            atomic_store(&p->catchup_wants, false);
            usleep(500 * 1000);
        } else if (n == 0) {
            usleep(10 * 1000);      /* announced but not readable yet (a bus store) */
        }
    }
    atomic_store(&p->catchup_wants, false);
    return NULL;
}

static void *run(void *arg)
{
    struct projector *p = arg;
    pthread_setname_np(pthread_self(), "rastro-project");
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), BATCH_NICE) != 0) {
        log_debug("cannot lower the projector's priority", NULL);
    }
    int backoff_ms = 0;
    for (;;) {
        struct err e;
        err_clear(&e);
        while (atomic_load(&p->catchup_wants) && !atomic_load(&p->stopping)) {
            usleep(5 * 1000);       /* the catch-up thread is applying */
        }
        int64_t started = time_mono_us();
        int n = step_once(p, false, &e);
        if (n < 0) {
            log_error("projection batch failed; will retry", "position=%lld err=\"%s\"",
                      (long long)projector_position(p), e.msg);
            backoff_ms = backoff_ms ? (backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2) : 50;
            /* back off, waking waiters whose deadline passes meanwhile */
            for (int waited = 0; waited < backoff_ms && !atomic_load(&p->stopping);
                 waited += 100) {
                wake_waiters(p, false);
                bus_wait(p->bus, INT64_MAX, 100);
            }
            wake_waiters(p, false);
            if (atomic_load(&p->stopping)) {
                break;      /* cannot catch up: stop anyway, the checkpoint is safe */
            }
            continue;
        }
        backoff_ms = 0;
        wake_waiters(p, false);
        fold_stats(p, false);
        if (n >= BATCH_MAX) {
            continue;
        }
        if (n > 0) {
            /* coalesce; a reader waiting for a position is served by the
             * catch-up thread meanwhile, at normal priority.
             * The wait is measured from the batch's start, not its end: batches
             * start every COALESCE_MS, so an event waits at most about one
             * window and one batch (ending the wait after the batch
             * counted the batch's time twice). Same-minute pairs: lag p99
             * at half load 71-73 -> 63-65 ms, full-load p99 6.7-9.4 ms
             * either way. Tried before the read models' checkpoints were
             * made smaller, it cost ~2 ms of full-load p99 and was left out. */
            int64_t left_ms = COALESCE_MS - (time_mono_us() - started) / 1000;
            if (left_ms > 0) {
                bus_wait(p->bus, INT64_MAX, (int)left_ms);
            }
            continue;
        }
        if (atomic_load(&p->stopping)) {
            break;          /* caught up with everything committed */
        }
        bus_wait(p->bus, projector_position(p), 100);  /* readers: the catch-up thread's */
    }
    pthread_mutex_lock(&p->mu);
    p->stopped = true;
    pthread_mutex_unlock(&p->mu);
    wake_waiters(p, true);
    return NULL;
}

int projector_new(const char *store_spec, const char *data_dir, const char *rm_path,
                  struct bus *bus, int flags, struct projector **out, struct err *e)
{
    struct evstore *store = NULL;
    int rc = evstore_open(store_spec, data_dir, EVSTORE_READONLY, &store, e);
    if (rc != ERR_OK) {
        return rc;
    }
    return projector_new_from(store, rm_path, bus, flags, out, e);
}

int projector_new_from(struct evstore *store, const char *rm_path, struct bus *bus, int flags,
                       struct projector **out, struct err *e)
{
    struct projector *p = xcalloc(1, sizeof(*p));
    p->bulk = (flags & PROJ_BULK) != 0;
    p->stop_at = INT64_MAX;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->step_mu, NULL);
    time_cond_init_mono(&p->catchup_cv);
    p->bus = bus;
    p->acc = stats_acc_new();
    p->store = store;
    buf_init(&p->touched, 0);
    p->live = xmalloc(CHUNK * sizeof(struct proj_decoded));
    pthread_mutex_init(&p->feed.mu, NULL);
    if (!p->bulk) {     /* pages are touched only as events are fed */
        p->feed.ring = xmalloc(FEED_CAP * sizeof(*p->feed.ring));
    }
    int rc = ERR_OK;
    {
        rc = readmodel_open(rm_path, p->bulk ? RM_BULK : RM_WRITER, NULL, &p->rm, e);
    }
    int64_t pos = INT64_MAX;
    for (size_t i = 0; i < proj_count && rc == ERR_OK; i++) {
        int64_t c = 0;
        rc = rm_get_checkpoint(p->rm, proj_names[i], &c, e);
        if (c < pos) {
            pos = c;
        }
    }
    if (rc != ERR_OK) {
        p->bus = NULL;
        projector_free(p);
        return rc;
    }
    atomic_store(&p->position, pos);
    atomic_store(&p->caught_up_us, time_mono_us());
    *out = p;
    return ERR_OK;
}

int projector_start(struct projector *p, struct err *e)
{
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        return err_set(e, ERR_STATE, "cannot start projector thread");
    }
    if (pthread_create(&p->catchup_thread, NULL, run_catchup, p) != 0) {
        atomic_store(&p->stopping, true);
        bus_wake_all(p->bus);
        pthread_join(p->thread, NULL);
        return err_set(e, ERR_STATE, "cannot start projector thread");
    }
    p->started = true;
    return ERR_OK;
}

struct rm_index *projector_rm_index(struct projector *p)
{
    return readmodel_index(p->rm);
}

void projector_add_waiter(struct projector *p, struct proj_waiter *w)
{
    pthread_mutex_lock(&p->mu);
    if (projector_position(p) >= w->min_position || p->stopped) {
        pthread_mutex_unlock(&p->mu);
        w->wake(w);
        return;
    }
    w->next = p->waiters;
    p->waiters = w;
    pthread_cond_signal(&p->catchup_cv);     /* the catch-up thread serves readers */
    pthread_mutex_unlock(&p->mu);
}

void projector_stop(struct projector *p)
{
    if (p->started) {
        atomic_store(&p->stopping, true);
        bus_wake_all(p->bus);
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->catchup_cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->catchup_thread, NULL);
        pthread_join(p->thread, NULL);
        p->started = false;
    }
}

void projector_free(struct projector *p)
{
    if (p == NULL) {
        return;
    }
    projector_stop(p);
    evstore_close(p->store);
    readmodel_close(p->rm);
    stats_acc_free(p->acc);
    buf_fini(&p->touched);
    free(p->live);
    free(p->feed.ring);
    pthread_mutex_destroy(&p->feed.mu);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->step_mu);
    pthread_cond_destroy(&p->catchup_cv);
    free(p);
}
