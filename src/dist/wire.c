/*
 * wire.c - see wire.h.
 */
#include "dist/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/natsbus.h"
#include "core/hash.h"
#include "core/timeutil.h"
#include "core/uuid.h"

#define STREAM_MSGID_MAX 1100

/* NATS header values lose leading and trailing blanks (nats.c trims them)
 * and cannot hold line breaks, but an id may end in a space: stream ids go
 * percent-encoded (every byte <= 0x20, >= 0x7f, and '%'). */
void wire_hdr_encode(const char *in, char *out, size_t max)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p != '\0' && o + 4 < max; p++) {
        if (*p <= 0x20 || *p >= 0x7f || *p == '%') {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else {
            out[o++] = (char)*p;
        }
    }
    out[o] = '\0';
}

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                          : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

bool wire_hdr_decode(const char *in, char *out, size_t max)
{
    size_t o = 0;
    for (const char *p = in; *p != '\0'; p++) {
        if (o + 1 >= max) {
            return false;
        }
        if (*p == '%') {
            int a = unhex(p[1]), b = a < 0 ? -1 : unhex(p[2]);
            if (b < 0 || (a == 0 && b == 0)) {
                return false;
            }
            out[o++] = (char)(a * 16 + b);
            p += 2;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
    return true;
}

const char *wire_kind_of_type(const char *type)
{
    if (strcmp(type, "ImpresionRegistrada") == 0) {
        return "impresion";
    }
    if (strcmp(type, "ConversionRegistrada") == 0) {
        return "conversion";
    }
    return NULL;
}

static int with_headers(natsMsg *m, const char *const *kv, size_t n, struct err *e)
{
    for (size_t i = 0; i + 1 < n; i += 2) {
        natsStatus s = natsMsgHeader_Set(m, kv[i], kv[i + 1]);
        if (s != NATS_OK) {
            return natsbus_err(e, "message header", s, 0);
        }
    }
    return ERR_OK;
}

static int new_msg(const char *prefix, const char *type, const char *data, natsMsg **out,
                   struct err *e)
{
    const char *kind = wire_kind_of_type(type);
    if (kind == NULL) {
        return err_set(e, ERR_INVALID, "no subject for event type %s", type);
    }
    char subj[64];
    snprintf(subj, sizeof(subj), "%s%s", prefix, kind);
    natsStatus s = natsMsg_Create(out, subj, NULL, data, (int)strlen(data));
    return s == NATS_OK ? ERR_OK : natsbus_err(e, "message", s, 0);
}

int wire_command_msg(const struct event_in *ev, bool ts_defaulted, natsMsg **out, struct err *e)
{
    natsMsg *m = NULL;
    int rc = new_msg(NB_SUBJ_CMD, ev->type, ev->data, &m, e);
    if (rc != ERR_OK) {
        return rc;
    }
    char eid[UUID_STR_LEN + 1], schema[16], recv[24], msgid[STREAM_MSGID_MAX];
    char sid[WIRE_STREAM_HDR_MAX];
    wire_hdr_encode(ev->stream_id, sid, sizeof(sid));
    uuid_format(&ev->event_id, eid);
    snprintf(msgid, sizeof(msgid), "%s#%016llx", sid,
             (unsigned long long)hash64(ev->data, strlen(ev->data)));
    snprintf(schema, sizeof(schema), "%d", ev->schema_version);
    snprintf(recv, sizeof(recv), "%lld", (long long)ev->recorded_at_us);
    const char *kv[] = {
        "Nats-Msg-Id", msgid, NB_H_STREAM, sid, NB_H_TYPE, ev->type,
        NB_H_SCHEMA, schema, NB_H_EVENT_ID, eid,
        NB_H_METADATA, ev->metadata != NULL ? ev->metadata : "{}", NB_H_RECEIVED, recv,
        "Rastro-Defaulted", ts_defaulted ? "timestamp" : "none",
    };
    rc = with_headers(m, kv, ARRAY_LEN(kv), e);
    if (rc != ERR_OK) {
        natsMsg_Destroy(m);
        return rc;
    }
    *out = m;
    return ERR_OK;
}

static const char *hdr(natsMsg *m, const char *key)
{
    const char *v = NULL;
    return natsMsgHeader_Get(m, key, &v) == NATS_OK ? v : NULL;
}

static bool hdr_i64(natsMsg *m, const char *key, int64_t *out)
{
    const char *v = hdr(m, key);
    char *end = NULL;
    if (v == NULL || v[0] == '\0') {
        return false;
    }
    long long x = strtoll(v, &end, 10);
    if (*end != '\0') {
        return false;
    }
    *out = x;
    return true;
}

/* The body as a NUL-terminated string (nats.c keeps a NUL after the data). */
static const char *body(natsMsg *m, size_t *len)
{
    const char *d = natsMsg_GetData(m);
    int n = natsMsg_GetDataLength(m);
    if (d == NULL || n <= 0 || d[n] != '\0' || memchr(d, '\0', (size_t)n) != NULL) {
        return NULL;
    }
    *len = (size_t)n;
    return d;
}

int wire_command_decode(natsMsg *m, struct wire_command *out, struct err *e)
{
    memset(out, 0, sizeof(*out));
    struct event_in *ev = &out->ev;
    size_t len = 0;
    int64_t schema = 0, recv = 0;
    const char *eid = hdr(m, NB_H_EVENT_ID);
    const char *sid = hdr(m, NB_H_STREAM);
    ev->stream_id = sid != NULL && wire_hdr_decode(sid, out->stream_id, sizeof(out->stream_id))
                        ? out->stream_id
                        : NULL;
    ev->type = hdr(m, NB_H_TYPE);
    ev->metadata = hdr(m, NB_H_METADATA);
    ev->data = body(m, &len);
    if (ev->stream_id == NULL || ev->stream_id[0] == '\0' || ev->type == NULL ||
        ev->metadata == NULL || ev->data == NULL || eid == NULL ||
        !hdr_i64(m, NB_H_SCHEMA, &schema) || !hdr_i64(m, NB_H_RECEIVED, &recv)) {
        return err_set(e, ERR_INVALID, "command message lacks its envelope (Rastro-* headers "
                       "or body)");
    }
    if (!uuid_parse(eid, &ev->event_id)) {
        return err_set(e, ERR_INVALID, "command message has a bad Rastro-Event-Id");
    }
    if (wire_kind_of_type(ev->type) == NULL) {
        return err_set(e, ERR_INVALID, "command message has unknown type %.64s", ev->type);
    }
    snprintf(out->event_id, sizeof(out->event_id), "%s", eid);
    ev->schema_version = (int)schema;
    ev->recorded_at_us = recv;
    ev->expected_version = EVSTORE_NO_STREAM;
    const char *d = hdr(m, "Rastro-Defaulted");
    out->ts_defaulted = d != NULL && strstr(d, "timestamp") != NULL;
    return ERR_OK;
}

int wire_event_msg(const struct event_rec *ev, natsMsg **out, struct err *e)
{
    natsMsg *m = NULL;
    int rc = new_msg(NB_SUBJ_EVT, ev->type, ev->data, &m, e);
    if (rc != ERR_OK) {
        return rc;
    }
    char eid[UUID_STR_LEN + 1], schema[16], pos[24], ver[24], rec[24];
    char sid[WIRE_STREAM_HDR_MAX];
    wire_hdr_encode(ev->stream_id, sid, sizeof(sid));
    uuid_format(&ev->event_id, eid);
    snprintf(schema, sizeof(schema), "%d", ev->schema_version);
    snprintf(pos, sizeof(pos), "%lld", (long long)ev->position);
    snprintf(ver, sizeof(ver), "%lld", (long long)ev->stream_version);
    snprintf(rec, sizeof(rec), "%lld", (long long)ev->recorded_at_us);
    const char *kv[] = {
        "Nats-Msg-Id", eid, NB_H_EVENT_ID, eid, NB_H_STREAM, sid, NB_H_TYPE, ev->type,
        NB_H_SCHEMA, schema, NB_H_POSITION, pos, NB_H_VERSION, ver, NB_H_RECORDED, rec,
        NB_H_METADATA, ev->metadata,
    };
    rc = with_headers(m, kv, ARRAY_LEN(kv), e);
    if (rc != ERR_OK) {
        natsMsg_Destroy(m);
        return rc;
    }
    *out = m;
    return ERR_OK;
}

int wire_event_decode(natsMsg *m, struct event_rec *out, struct err *e)
{
    memset(out, 0, sizeof(*out));
    int64_t schema = 0;
    const char *eid = hdr(m, NB_H_EVENT_ID);
    /* the decoded stream id lives until the next decode on this thread
     * (the callback that receives the event runs before that) */
    static __thread char sid_buf[WIRE_STREAM_HDR_MAX];
    const char *sid = hdr(m, NB_H_STREAM);
    out->stream_id = sid != NULL && wire_hdr_decode(sid, sid_buf, sizeof(sid_buf)) ? sid_buf
                                                                                  : NULL;
    out->type = hdr(m, NB_H_TYPE);
    out->metadata = hdr(m, NB_H_METADATA);
    out->data = body(m, &out->data_len);
    if (out->stream_id == NULL || out->type == NULL || out->metadata == NULL ||
        out->data == NULL || eid == NULL || !uuid_parse(eid, &out->event_id) ||
        !hdr_i64(m, NB_H_SCHEMA, &schema) || !hdr_i64(m, NB_H_POSITION, &out->position) ||
        !hdr_i64(m, NB_H_VERSION, &out->stream_version) ||
        !hdr_i64(m, NB_H_RECORDED, &out->recorded_at_us)) {
        return err_set(e, ERR_INVALID, "event message lacks its envelope");
    }
    out->schema_version = (int)schema;
    out->metadata_len = strlen(out->metadata);
    return ERR_OK;
}
