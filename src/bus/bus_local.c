/*
 * bus_local.c - the in-process bus: a head position and a condition
 * variable. See bus.h.
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "bus/bus.h"
#include "core/timeutil.h"
#include "core/xmalloc.h"

struct bus_local {
    struct bus base;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t head;
    unsigned wakes;
};

static void l_announce(struct bus *b, int64_t head)
{
    struct bus_local *l = (struct bus_local *)b;
    pthread_mutex_lock(&l->mu);
    if (head > l->head) {
        l->head = head;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
}

static int64_t l_wait(struct bus *b, int64_t after, int timeout_ms)
{
    struct bus_local *l = (struct bus_local *)b;
    struct timespec ts;
    time_deadline(CLOCK_MONOTONIC, timeout_ms, &ts);
    pthread_mutex_lock(&l->mu);
    unsigned wakes = l->wakes;
    while (l->head <= after && l->wakes == wakes) {
        if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) != 0) {
            break;
        }
    }
    int64_t h = l->head;
    pthread_mutex_unlock(&l->mu);
    return h;
}

static void l_wake_all(struct bus *b)
{
    struct bus_local *l = (struct bus_local *)b;
    pthread_mutex_lock(&l->mu);
    l->wakes++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static void l_close(struct bus *b)
{
    struct bus_local *l = (struct bus_local *)b;
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
}

static const struct bus_ops local_ops = {
    .name = "local",
    .announce = l_announce,
    .wait = l_wait,
    .wake_all = l_wake_all,
    .close = l_close,
};

struct bus *bus_local_new(int64_t head)
{
    struct bus_local *l = xcalloc(1, sizeof(*l));
    l->base.ops = &local_ops;
    l->head = head;
    pthread_mutex_init(&l->mu, NULL);
    time_cond_init_mono(&l->cv);
    return &l->base;
}
