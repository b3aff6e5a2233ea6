/*
 * committer.c - see committer.h.
 *
 * The queue is a mutex-protected singly linked list: requests are pushed at
 * the tail; the committer thread swaps the whole list out in O(1), so the
 * lock is held for a few instructions per request.
 */
#include "store/committer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"

struct committer {
    struct evstore *store;
    size_t max_batch;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct commit_req *head, *tail;
    bool stopping;
    _Atomic int64_t committed;
    _Atomic int64_t pending;
    /* the store's size, measured on the committer thread (a store handle is
     * not shared between threads: PostgreSQL's is a connection) */
    _Atomic int64_t bytes;
    int64_t bytes_at_us;
    /* committer thread: the current run of failed appends */
    bool failing;
    uint64_t failed_since;
    int64_t fail_logged_us;
    void (*on_commit)(void *, int64_t);
    void *on_commit_arg;
    struct committer_metrics m;
    /* batch scratch */
    struct event_in *ev;
    struct append_out *out;
    struct commit_req **reqs;
};

void commit_req_fini(struct commit_req *r)
{
    free(r->existing_data);
    r->existing_data = NULL;
}

struct copy_data {
    int64_t want;
    char *data;
};

static int copy_cb(const struct event_rec *ev, void *arg)
{
    struct copy_data *cd = arg;
    if (ev->position == cd->want) {
        cd->data = xstrndup(ev->data, ev->data_len);
    }
    return 1;
}

static void complete(struct committer *c, struct commit_req *r)
{
    atomic_fetch_sub(&c->pending, 1);
    r->done(r);
}

/* Says what went wrong in words an operator acts on, once when it starts
 * and then at most every 10 s (a read-only or full disk fails every
 * request: one line each would bury the log). */
static void log_failure(struct committer *c, size_t n, const char *why)
{
    int64_t now = time_mono_us();
    c->failed_since = c->failing ? c->failed_since + n : n;
    if (c->failing && now - c->fail_logged_us < 10000000) {
        return;
    }
    const char *what = strstr(why, "Read-only file system") != NULL
                           ? "event store is on a read-only file system: commands get 503; "
                             "queries answer from what is stored"
                       : strstr(why, "full") != NULL || strstr(why, "No space") != NULL
                           ? "disk full: commands get 503 until space is freed; queries answer "
                             "from what is stored"
                           : "append failed: commands get 503";
    log_error(what, "failed_requests=%llu err=\"%s\"", (unsigned long long)c->failed_since, why);
    c->failing = true;
    c->fail_logged_us = now;
}

/* At most once a second (or now, when forced). */
static void measure_size(struct committer *c, bool force)
{
    int64_t now = time_mono_us();
    if (!force && now - c->bytes_at_us < 1000000) {
        return;
    }
    c->bytes_at_us = now;
    int64_t bytes = 0;
    struct err e;
    if (evstore_size_bytes(c->store, &bytes, &e) == ERR_OK) {
        atomic_store(&c->bytes, bytes);
    }
}

/* Appends reqs[0..n) in one transaction and completes them. */
static void commit_batch(struct committer *c, size_t n)
{
    struct err e;
    err_clear(&e);
    for (size_t i = 0; i < n; i++) {
        c->ev[i] = c->reqs[i]->ev;
    }
    int64_t t0 = time_mono_us();
    int rc = evstore_append(c->store, c->ev, n, c->out, &e);
    histogram_observe(&c->m.commit_seconds, (double)(time_mono_us() - t0) / 1e6);
    histogram_observe(&c->m.batch_size, (double)n);
    counter_add(&c->m.batches, 1);
    if (rc != ERR_OK) {
        counter_add(&c->m.failed, n);
        log_failure(c, n, e.msg);
    } else {
        if (c->failing) {
            log_info("event store writable again; commands are accepted", "failed_requests=%llu",
                     (unsigned long long)c->failed_since);
            c->failing = false;
        }
        for (size_t i = 0; i < n; i++) {
            counter_add(c->out[i].status == ERR_OK ? &c->m.appended : &c->m.conflicts, 1);
        }
    }
    int64_t head = 0;
    struct err he;
    if (evstore_head(c->store, &head, &he) == ERR_OK) {
        atomic_store(&c->committed, head);
    }
    measure_size(c, false);
    if (rc == ERR_OK && c->on_commit != NULL) {
        c->on_commit(c->on_commit_arg, head);
    }
    for (size_t i = 0; i < n; i++) {
        struct commit_req *r = c->reqs[i];
        r->out = c->out[i];
        r->existing_data = NULL;
        if (rc != ERR_OK) {
            r->status = rc;
            snprintf(r->errmsg, sizeof(r->errmsg), "%s", e.msg);
        } else {
            r->status = c->out[i].status;
            if (r->status == ERR_CONFLICT) {
                struct copy_data cd = { .want = c->out[i].position, .data = NULL };
                struct err re;
                int rr = evstore_read(c->store, cd.want, 1, copy_cb, &cd, &re);
                if (rr < 0 || cd.data == NULL) {
                    r->status = ERR_IO;
                    snprintf(r->errmsg, sizeof(r->errmsg), "cannot read event %lld",
                             (long long)cd.want);
                }
                r->existing_data = cd.data;
            }
        }
        complete(c, r);
    }
}

static void *run(void *arg)
{
    struct committer *c = arg;
    pthread_setname_np(pthread_self(), "rastro-commit");
    for (;;) {
        pthread_mutex_lock(&c->mu);
        while (c->head == NULL && !c->stopping) {
            pthread_cond_wait(&c->cv, &c->mu);
        }
        struct commit_req *list = c->head;
        c->head = c->tail = NULL;
        bool stop = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (list == NULL && stop) {
            break;
        }
        while (list != NULL) {
            size_t n = 0;
            while (list != NULL && n < c->max_batch) {
                c->reqs[n++] = list;
                list = list->next;
            }
            commit_batch(c, n);
        }
    }
    return NULL;
}

struct committer *committer_new(struct evstore *s, size_t max_batch)
{
    struct committer *c = xcalloc(1, sizeof(*c));
    c->store = s;
    c->max_batch = max_batch ? max_batch : 1;
    c->ev = xcalloc(c->max_batch, sizeof(*c->ev));
    c->out = xcalloc(c->max_batch, sizeof(*c->out));
    c->reqs = xcalloc(c->max_batch, sizeof(*c->reqs));
    static const double size_bounds[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096 };
    static const double secs_bounds[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                          0.01, 0.025, 0.05, 0.1, 0.25, 1 };
    histogram_init(&c->m.batch_size, size_bounds, ARRAY_LEN(size_bounds));
    histogram_init(&c->m.commit_seconds, secs_bounds, ARRAY_LEN(secs_bounds));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    int64_t head = 0;
    struct err e;
    if (evstore_head(s, &head, &e) == ERR_OK) {
        atomic_store(&c->committed, head);
    }
    measure_size(c, true);      /* before the thread owns the store */
    if (pthread_create(&c->thread, NULL, run, c) != 0) {
        log_error("cannot start committer thread", NULL);
        abort();
    }
    return c;
}

void committer_submit(struct committer *c, struct commit_req *r)
{
    r->next = NULL;
    committer_submit_list(c, r);
}

void committer_submit_list(struct committer *c, struct commit_req *head)
{
    if (head == NULL) {
        return;
    }
    struct commit_req *tail = head;
    int64_t n = 1;
    while (tail->next != NULL) {
        tail = tail->next;
        n++;
    }
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        while (head != NULL) {
            struct commit_req *r = head;
            head = r->next;         /* done() may reuse r */
            r->status = ERR_STATE;
            r->existing_data = NULL;
            snprintf(r->errmsg, sizeof(r->errmsg), "shutting down");
            r->done(r);
        }
        return;
    }
    atomic_fetch_add(&c->pending, n);
    if (c->tail != NULL) {
        c->tail->next = head;
    } else {
        c->head = head;
    }
    c->tail = tail;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void committer_set_listener(struct committer *c, void (*on_commit)(void *, int64_t), void *arg)
{
    c->on_commit = on_commit;
    c->on_commit_arg = arg;
}

const struct committer_metrics *committer_get_metrics(struct committer *c)
{
    return &c->m;
}

int64_t committer_store_bytes(struct committer *c)
{
    return atomic_load(&c->bytes);
}

int64_t committer_head(struct committer *c)
{
    return atomic_load(&c->committed);
}

int64_t committer_pending(struct committer *c)
{
    return atomic_load(&c->pending);
}

void committer_stop(struct committer *c)
{
    pthread_mutex_lock(&c->mu);
    bool was = c->stopping;
    c->stopping = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (!was) {
        pthread_join(c->thread, NULL);
    }
}

void committer_free(struct committer *c)
{
    if (c == NULL) {
        return;
    }
    committer_stop(c);
    evstore_close(c->store);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->ev);
    free(c->out);
    free(c->reqs);
    free(c);
}
