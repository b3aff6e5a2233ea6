/*
 * evstore_js.h - a read-only event store over TRACKING_EVENTS, for query
 * nodes: the projector reads it exactly as it reads the embedded store
 * (evstore_read from its checkpoint), so projections, checkpoints and
 * min_position work unchanged on a node that only has the bus.
 *
 * It reads through a durable pull consumer named query-<node>, placed at
 * the position asked for (the read models' checkpoint is the truth; the
 * consumer is re-created whenever they disagree, e.g. after a rebuild or a
 * crash). The stream sequence is the store position (relay.h), so a gap is
 * seen at once: a missing position is fetched by sequence from the stream
 * (the relay's replay), else from the fallback store (--store) if the node
 * has one, else the read fails and the projector reports a gap and retries
 * (rastro_projection_errors_total{reason="gap"}): a read model is never
 * silently short.
 */
#ifndef RASTRO_DIST_EVSTORE_JS_H
#define RASTRO_DIST_EVSTORE_JS_H

#include "bus/natsbus.h"
#include "store/evstore.h"

/* node: this query node's name (the durable is query-<node>). fallback:
 * a store to fill gaps from, or NULL; taken over (closed with this one).
 * heads: told the stream's head whenever the reader learns it. */
int evstore_js_open(struct natsbus *nb, const char *node, struct evstore *fallback,
                    struct bus *heads, struct evstore **out, struct err *e) WARN_UNUSED;

#endif
