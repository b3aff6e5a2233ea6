/*
 * tracking.h - the domain: impressions and conversions, the commands that
 * register them and the events they become.
 *
 * A struct tracking holds the fields of one impression or conversion. It is
 * what a validated command carries and what an ImpresionRegistrada or
 * ConversionRegistrada event's data decodes to. Everything here is pure (no
 * I/O, no clock, no randomness: callers fill in defaults that need those)
 * and thread-safe.
 *
 * Invariants of a struct tracking that passed validation: strings are valid
 * UTF-8 without control characters and within the *_MAX byte limits; an
 * empty optional string means "absent" (JSON null); campana_id is
 * non-empty; valor is in [0, VALOR_MAX] ten-thousandths; moneda is an
 * ISO 4217 code.
 */
#ifndef RASTRO_DOMAIN_TRACKING_H
#define RASTRO_DOMAIN_TRACKING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"

#define ID_MAX 128          /* bytes, for id, campaña_id, influencer_id, usuario_id */
#define TIPO_MAX 32
#define UA_MAX 1024
#define IP_MAX 45           /* INET6_ADDRSTRLEN - 1 */
#define REF_MAX 2048
#define VALOR_SCALE 10000   /* valor is kept in ten-thousandths */
/* 10^11 currency units: exactly representable in a double at 4 decimals
 * (10^15 < 2^53), and ~92,000 of them still fit an int64 sum. */
#define VALOR_MAX (100000000000LL * VALOR_SCALE)

enum tracking_kind { KIND_IMPRESION = 0, KIND_CONVERSION = 1 };

enum conv_type {
    CONV_VENTA = 0,
    CONV_REGISTRO,
    CONV_SUSCRIPCION,
    CONV_DESCARGAR,
    CONV_CLICK,
    CONV__COUNT
};

/* Event types as stored. EV_UNKNOWN is any type this build does not know
 * (from a newer version): projections skip and count it. */
enum event_type { EV_UNKNOWN = 0, EV_IMPRESSION_RECORDED, EV_CONVERSION_RECORDED };

#define EVENT_SCHEMA_VERSION 1

struct tracking {
    enum tracking_kind kind;
    char id[ID_MAX + 1];
    bool id_given;                  /* the client sent an id (idempotency key) */
    char campana_id[ID_MAX + 1];
    char influencer_id[ID_MAX + 1];
    char usuario_id[ID_MAX + 1];
    char tipo_evento[TIPO_MAX + 1];
    char user_agent[UA_MAX + 1];
    char ip_address[IP_MAX + 1];
    char referrer[REF_MAX + 1];
    int64_t timestamp_us;
    bool ts_given;                  /* the client sent a timestamp */
    /* conversions only */
    enum conv_type tipo_conversion;
    int64_t valor;                  /* ten-thousandths */
    char moneda[4];
};

/*
 * Parses and validates a command body (a JSON object of n bytes). On success
 * fills *out (id and timestamp only when given: see tracking_fill_defaults)
 * and returns ERR_OK. On failure returns ERR_INVALID with e->field naming
 * the field at fault ("body" when the body itself is not a JSON object).
 * Unknown fields are ignored, so newer clients keep working.
 */
int tracking_parse_command(enum tracking_kind kind, const char *body, size_t n,
                           struct tracking *out, struct err *e) WARN_UNUSED;

/* Fills what the client left out: id (a UUIDv7 text given by the caller)
 * and timestamp (now_us). */
void tracking_fill_defaults(struct tracking *t, const char *new_id, int64_t now_us);

/* Writes the canonical event data JSON (fixed key order). */
int tracking_to_json(const struct tracking *t, struct buf *out) WARN_UNUSED;

/* Decodes event data written by tracking_to_json (or an older schema). */
int tracking_from_json(enum tracking_kind kind, const char *json, size_t n,
                       struct tracking *out, struct err *e) WARN_UNUSED;

/*
 * Idempotency: does a repeated command carry the same payload as the stored
 * one? Every field is compared, except the timestamp when the repeated
 * command did not send one (the stored one was then the server's default).
 */
bool tracking_same_payload(const struct tracking *stored, const struct tracking *cmd);

/* *dst = *src, each text copied only up to its NUL (a struct is ~3.7 KiB,
 * a typical event's texts a few hundred bytes); what follows a NUL in dst
 * is left as it was. */
void tracking_copy(struct tracking *dst, const struct tracking *src);

/* "impresion:<id>" or "conversion:<id>" into out (ID_MAX + 16 bytes). */
#define STREAM_ID_MAX (ID_MAX + 16)
void tracking_stream_id(enum tracking_kind kind, const char *id, char *out);

const char *tracking_event_type_name(enum tracking_kind kind);
enum event_type event_type_parse(const char *name);
const char *conv_type_name(enum conv_type t);
bool conv_type_parse(const char *s, enum conv_type *out);

/* Exact decimal to ten-thousandths: "12.5" -> 125000. Rejects signs other
 * than none, exponents, more than 4 decimals and values above VALOR_MAX. */
bool valor_parse_decimal(const char *s, int64_t *out);
/* The same for a JSON number already parsed to a double. */
bool valor_from_double(double v, int64_t *out);
/* Is s an ISO 4217 currency code (three upper-case letters, in the list)? */
bool moneda_is_valid(const char *s);
/* Valid UTF-8 with no control characters (U+0000-U+001F, U+007F)? */
bool text_is_clean(const char *s, size_t n);

#endif
