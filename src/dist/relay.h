/*
 * relay.h - the relay role (the outbox pattern): publishes the event
 * store's events to TRACKING_EVENTS in position order, so that the
 * stream's sequence number is the store position (every publish expects
 * the previous position as the stream's last sequence; Nats-Msg-Id is the
 * event id). Its checkpoint is the stream itself: after a crash it resumes
 * at the stream's last sequence + 1, so no committed event is ever missing
 * from the bus, and none is there twice. A second relay cannot interleave:
 * its publishes fail the expected-sequence check and it re-reads where the
 * stream is. After each acknowledged batch it announces the new head on
 * tracking.head, which wakes the query nodes.
 * Thread-safety: start/stop from one thread.
 */
#ifndef RASTRO_DIST_RELAY_H
#define RASTRO_DIST_RELAY_H

#include <stdint.h>

#include "bus/bus.h"
#include "bus/natsbus.h"
#include "core/err.h"

struct relay_metrics {
    _Atomic int64_t position;       /* last position the stream acknowledged */
    _Atomic uint64_t published;
    _Atomic uint64_t resyncs;       /* publishes refused or lost: re-read the stream */
};

struct relay;

/* announce: the bus to tell heads on (natsbus_bus). */
int relay_start(struct natsbus *nb, struct bus *announce, const char *store_spec,
                const char *data_dir, struct relay **out, struct err *e) WARN_UNUSED;
void relay_stop(struct relay *r);   /* and frees; NULL is a no-op */
const struct relay_metrics *relay_get_metrics(struct relay *r);

#endif
