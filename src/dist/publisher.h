/*
 * publisher.h - the api role on a bus only: commands go to JetStream
 * (TRACKING_COMMANDS) instead of a store, and the 202 waits for the
 * broker's acknowledgement, not for an fsync of the event store.
 *
 * It takes the same struct commit_req as the committer, so the HTTP layer
 * does not care which one is behind it: done() is called exactly once,
 * with ERR_OK once JetStream has the command (a duplicate Nats-Msg-Id
 * inside the two-minute window counts: it has it already), or ERR_IO at
 * once when the bus is not connected (the circuit is open: no request
 * waits on a dead bus) or when no ack came within 0.9 s (unknown: the
 * client retries with the same id, which de-duplication makes safe).
 * out.position is 0: the event does not exist yet.
 * Thread-safety: publisher_submit may be called from any thread; done()
 * runs on the caller's thread (immediate failures) or on nats.c's.
 */
#ifndef RASTRO_DIST_PUBLISHER_H
#define RASTRO_DIST_PUBLISHER_H

#include <stdint.h>

#include "bus/natsbus.h"
#include "store/committer.h"

struct publisher_metrics {
    _Atomic uint64_t published;     /* acknowledged by JetStream */
    _Atomic uint64_t duplicates;    /* ... of which it had already */
    _Atomic uint64_t refused;       /* answered 503 at once: bus not connected */
    _Atomic uint64_t failed;        /* no ack, or an error from JetStream */
};

struct publisher;

struct publisher *publisher_new(struct natsbus *nb);
void publisher_free(struct publisher *p);
/* ts_defaulted: the client sent no timestamp (see wire.h). */
void publisher_submit_cmd(struct publisher *p, struct commit_req *r, bool ts_defaulted);
const struct publisher_metrics *publisher_get_metrics(struct publisher *p);

#endif
