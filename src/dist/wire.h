/*
 * wire.h - commands and events as NATS messages.
 *
 * The message body is the event data exactly as the store keeps it (the
 * canonical JSON of the domain), so nothing is re-encoded on the way; the
 * envelope travels in headers (natsbus.h names them):
 *   command  tracking.cmd.<kind>  Nats-Msg-Id = stream id ("impresion:<id>",
 *            the command's identity: the client id within its kind) + "#" +
 *            a digest of the data. A retry of the same command is dropped
 *            by JetStream's de-duplication; the same id with another
 *            payload is not silently dropped as a "duplicate" (the api cannot
 *            tell the two apart) but reaches a handler, which finds the
 *            conflict in the store and dead-letters it with its reason;
 *            Rastro-Stream, -Type, -Schema, -Event-Id, -Metadata,
 *            -Received-At, and Rastro-Defaulted: timestamp when the client
 *            sent none (so a repeat is judged as the embedded api judges it)
 *   event    tracking.evt.<kind>  Nats-Msg-Id = event id; the above plus
 *            Rastro-Position, -Version, -Recorded-At
 */
#ifndef RASTRO_DIST_WIRE_H
#define RASTRO_DIST_WIRE_H

#include <stdbool.h>

#include <nats/nats.h>

#include "core/err.h"
#include "store/evstore.h"

/* A command (the event to be) as a message on tracking.cmd.<kind>. */
int wire_command_msg(const struct event_in *ev, bool ts_defaulted, natsMsg **out,
                     struct err *e) WARN_UNUSED;

#define WIRE_STREAM_HDR_MAX 600   /* a stream id, percent-encoded */

/* Header values: stream ids percent-encoded (NATS trims blanks). decode
 * is false on a bad escape, an encoded NUL or a value too long for out. */
void wire_hdr_encode(const char *in, char *out, size_t max);
bool wire_hdr_decode(const char *in, char *out, size_t max);

/* A decoded command; its strings point into the message or into own
 * storage, valid until the message is destroyed. */
struct wire_command {
    struct event_in ev;
    bool ts_defaulted;
    char event_id[40];
    char stream_id[WIRE_STREAM_HDR_MAX];
};
int wire_command_decode(natsMsg *m, struct wire_command *out, struct err *e) WARN_UNUSED;

/* An event as a message on tracking.evt.<kind>. */
int wire_event_msg(const struct event_rec *ev, natsMsg **out, struct err *e) WARN_UNUSED;
/* A decoded event; valid until the message is destroyed. */
int wire_event_decode(natsMsg *m, struct event_rec *out, struct err *e) WARN_UNUSED;

/* "impresion" or "conversion" for an event type name; NULL if unknown. */
const char *wire_kind_of_type(const char *type);

#endif
