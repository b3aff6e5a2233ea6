/*
 * natsbus.h - the NATS JetStream transport: one connection per process,
 * the three streams, and the bus (bus.h) that tells query nodes a new head
 * exists.
 *
 * Streams, created or updated idempotently once connected (file storage,
 * --replicas copies, a two-minute de-duplication window on Nats-Msg-Id):
 *   TRACKING_COMMANDS  tracking.cmd.impresion, tracking.cmd.conversion
 *   TRACKING_EVENTS    tracking.evt.impresion, tracking.evt.conversion;
 *                      the relay keeps stream sequence == store position
 *   TRACKING_DLQ       tracking.dlq.<kind>: commands that kept failing
 * Heads: core NATS (not JetStream) messages on tracking.head carrying the
 * relay's last published position; a query node's projector wakes on them.
 *
 * The connection reconnects forever on its own. natsbus_ready() says
 * whether it is connected and the streams exist: the api role answers 503
 * at once otherwise (the circuit breaker: no request waits on a dead bus).
 * Thread-safety: every function may be called from any thread; the nats.c
 * connection and JetStream context are shared.
 */
#ifndef RASTRO_BUS_NATSBUS_H
#define RASTRO_BUS_NATSBUS_H

#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

#include "bus/bus.h"
#include "core/err.h"

#define NB_STREAM_COMMANDS "TRACKING_COMMANDS"
#define NB_STREAM_EVENTS "TRACKING_EVENTS"
#define NB_STREAM_DLQ "TRACKING_DLQ"
#define NB_SUBJ_CMD "tracking.cmd."     /* + impresion | conversion */
#define NB_SUBJ_EVT "tracking.evt."
#define NB_SUBJ_DLQ "tracking.dlq."
#define NB_SUBJ_HEAD "tracking.head"

/* Message headers besides Nats-Msg-Id. */
#define NB_H_STREAM "Rastro-Stream"
#define NB_H_TYPE "Rastro-Type"
#define NB_H_SCHEMA "Rastro-Schema"
#define NB_H_EVENT_ID "Rastro-Event-Id"
#define NB_H_METADATA "Rastro-Metadata"
#define NB_H_RECEIVED "Rastro-Received-At"
#define NB_H_POSITION "Rastro-Position"
#define NB_H_VERSION "Rastro-Version"
#define NB_H_RECORDED "Rastro-Recorded-At"
#define NB_H_REASON "Rastro-Reason"
#define NB_H_SUBJECT "Rastro-Original-Subject"
#define NB_H_DELIVERIES "Rastro-Deliveries"

struct natsbus;

/* The result of natsbus_publish_async: pa (stored, or a duplicate) or pae
 * (refused, or no answer within max_wait: unknown) is set. Runs on the
 * nats.c reply thread: keep it short, never block, never publish sync. */
typedef void (*natsbus_ack_fn)(void *closure, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae);

struct natsbus_metrics {
    _Atomic uint64_t disconnects;
};

/*
 * Connects to url (a comma list of nats:// URLs), retrying in the
 * background if no server answers yet; replicas: copies of each stream.
 * Does not block on an absent server.
 */
int natsbus_open(const char *url, int replicas, struct natsbus **out, struct err *e) WARN_UNUSED;

/* Publishes *msg to JetStream without waiting; takes the message (sets
 * *msg = NULL) and calls done exactly once with the result, unless it
 * returns an error (then done is not called and *msg is still the
 * caller's). max_wait_ms bounds the wait for the ack. */
int natsbus_publish_async(struct natsbus *nb, natsMsg **msg, jsPubOptions *po,
                          natsbus_ack_fn done, void *closure, struct err *e) WARN_UNUSED;
/* Acks still awaited. */
int64_t natsbus_pending(struct natsbus *nb);
void natsbus_close(struct natsbus *nb);

/* Connected and the streams are in place (tries to create them if not). */
bool natsbus_ready(struct natsbus *nb);
/* Waits up to timeout_ms for natsbus_ready(). */
bool natsbus_wait_ready(struct natsbus *nb, int timeout_ms);

jsCtx *natsbus_js(struct natsbus *nb);
const struct natsbus_metrics *natsbus_get_metrics(struct natsbus *nb);

/* A bus (bus.h) over this connection. publish (the relay's): announce
 * also publishes the head on tracking.head. Otherwise (a query node's) it
 * hears those heads: wait wakes on them. */
struct bus *natsbus_bus(struct natsbus *nb, int64_t head, bool publish);
/* The latest head a bus knows, without waiting. */
int64_t natsbus_bus_head(struct bus *b);

/* A nats.c status as an err (ERR_IO), with the JetStream code if any. */
int natsbus_err(struct err *e, const char *what, natsStatus s, jsErrCode je);

#endif
