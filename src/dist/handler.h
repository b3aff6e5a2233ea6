/*
 * handler.h - the handler role: a durable pull consumer ("handlers") on
 * TRACKING_COMMANDS that turns commands into events in the event store.
 *
 * Each fetch (up to 512 commands) is one append (group commit), then every
 * message is acked: appended, or already there with the same payload (a
 * redelivery after a crash between append and ack: exactly once in the
 * store either way). A store failure naks the whole batch with a delay and
 * costs the command nothing (it is not the command's fault). A command
 * that cannot be decoded is naked, and on its fifth delivery goes, with
 * its reason, to TRACKING_DLQ and is acked, so it never blocks the ones
 * behind it; a command whose id was already used with another payload goes
 * there at once. Several handlers (threads or processes, on any machine
 * with the same PostgreSQL store) share the consumer.
 * Thread-safety: start/stop from one thread.
 */
#ifndef RASTRO_DIST_HANDLER_H
#define RASTRO_DIST_HANDLER_H

#include <stdint.h>

#include "bus/natsbus.h"
#include "core/err.h"

#define HANDLER_MAX_DELIVER 5

struct handler_metrics {
    _Atomic uint64_t appended;
    _Atomic uint64_t duplicates;        /* already stored with the same payload */
    _Atomic uint64_t dead_lettered;
    _Atomic uint64_t retried;           /* naked: store failure or undecodable */
    _Atomic uint64_t store_failures;    /* batches */
    _Atomic int64_t head;               /* last position appended by this handler */
};

struct handler;

int handler_start(struct natsbus *nb, const char *store_spec, const char *data_dir,
                  struct handler **out, struct err *e) WARN_UNUSED;
void handler_stop(struct handler *h);   /* and frees; NULL is a no-op */
const struct handler_metrics *handler_get_metrics(struct handler *h);

/* Sends a message to TRACKING_DLQ with reason (also used by `rastro dlq`). */
int handler_dead_letter(struct natsbus *nb, natsMsg *orig, const char *reason,
                        struct err *e) WARN_UNUSED;

#endif
