/*
 * bus.h - how the parts of rastro learn that new events exist.
 *
 * In the embedded process the "bus" is local: the committer announces each
 * new head and the projector waits for one (bus_local.c, a condition
 * variable). The NATS JetStream transport, filed separately, implements the
 * same table, so the projector never needs an #ifdef.
 * Thread-safety: every operation may be called from any thread.
 */
#ifndef RASTRO_BUS_BUS_H
#define RASTRO_BUS_BUS_H

#include <stddef.h>
#include <stdint.h>

struct bus;

struct bus_ops {
    const char *name;
    /* Events up to head are committed. */
    void (*announce)(struct bus *b, int64_t head);
    /* Waits up to timeout_ms for a head > after; returns the latest head
     * known (which may still be <= after on timeout). */
    int64_t (*wait)(struct bus *b, int64_t after, int timeout_ms);
    /* Wakes every waiter now (shutdown). */
    void (*wake_all)(struct bus *b);
    void (*close)(struct bus *b);
};

struct bus {
    const struct bus_ops *ops;
};

struct bus *bus_local_new(int64_t head);

static inline void bus_announce(struct bus *b, int64_t head) { b->ops->announce(b, head); }
static inline int64_t bus_wait(struct bus *b, int64_t after, int timeout_ms)
{
    return b->ops->wait(b, after, timeout_ms);
}
static inline void bus_wake_all(struct bus *b) { b->ops->wake_all(b); }
static inline void bus_close(struct bus *b)
{
    if (b != NULL) {
        b->ops->close(b);
    }
}

#endif
