/*
 * publisher.c - see publisher.h.
 */
#include "dist/publisher.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "dist/wire.h"

#define ACK_WAIT_MS 900     /* "503 within a second" even when the broker hangs silently */

struct publisher {
    struct natsbus *nb;
    struct publisher_metrics m;
};

struct publisher *publisher_new(struct natsbus *nb)
{
    struct publisher *p = xcalloc(1, sizeof(*p));
    p->nb = nb;
    return p;
}

void publisher_free(struct publisher *p)
{
    free(p);
}

const struct publisher_metrics *publisher_get_metrics(struct publisher *p)
{
    return &p->m;
}

static void fail(struct commit_req *r, const char *why)
{
    r->status = ERR_IO;
    snprintf(r->errmsg, sizeof(r->errmsg), "%s", why);
    r->done(r);
}

struct pub_ctx {
    struct publisher *p;
    struct commit_req *r;
};

static void on_ack(void *closure, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae)
{
    (void)msg;
    struct pub_ctx *c = closure;
    struct publisher *p = c->p;
    struct commit_req *r = c->r;
    free(c);
    if (pa != NULL) {
        counter_add(&p->m.published, 1);
        if (pa->Duplicate) {
            counter_add(&p->m.duplicates, 1);
        }
        r->status = ERR_OK;
        r->out.status = ERR_OK;
        r->out.position = 0;
        r->done(r);
        return;
    }
    counter_add(&p->m.failed, 1);
    log_warn("command not acknowledged by JetStream", "stream=%s err=\"%s\" code=%d",
             r->ev.stream_id, pae != NULL && pae->ErrText != NULL ? pae->ErrText
                              : natsStatus_GetText(pae != NULL ? pae->Err : NATS_ERR),
             pae != NULL ? (int)pae->ErrCode : 0);
    fail(r, "message bus did not acknowledge the command; retry with the same id");
}

void publisher_submit_cmd(struct publisher *p, struct commit_req *r, bool ts_defaulted)
{
    if (!natsbus_ready(p->nb)) {
        counter_add(&p->m.refused, 1);
        fail(r, "message bus unavailable; retry");
        return;
    }
    struct err e;
    err_clear(&e);
    natsMsg *msg = NULL;
    if (wire_command_msg(&r->ev, ts_defaulted, &msg, &e) != ERR_OK) {
        counter_add(&p->m.failed, 1);
        fail(r, e.msg);
        return;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ACK_WAIT_MS;
    struct pub_ctx *c = xmalloc(sizeof(*c));
    c->p = p;
    c->r = r;
    if (natsbus_publish_async(p->nb, &msg, &po, on_ack, c, &e) != ERR_OK) {
        natsMsg_Destroy(msg);
        free(c);
        counter_add(&p->m.refused, 1);
        fail(r, "message bus unavailable; retry");
    }
}
