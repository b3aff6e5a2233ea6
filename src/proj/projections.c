/*
 * projections.c - see projections.h.
 */
#include "proj/projections.h"

#include <stdio.h>

#include "core/log.h"

const char *const proj_names[] = {
    "impresiones", "conversiones", "estadisticas_campana", "estadisticas_influencer",
};
const size_t proj_count = sizeof(proj_names) / sizeof(proj_names[0]);

void proj_decode(const struct event_rec *ev, struct proj_decoded *d)
{
    d->hinted = false;
    d->position = ev->position;
    d->recorded_at_us = ev->recorded_at_us;
    enum event_type type = event_type_parse(ev->type);
    if (type == EV_UNKNOWN) {
        d->status = PROJ_UNKNOWN;
        snprintf(d->label, sizeof(d->label), "%.200s", ev->type);
        return;
    }
    enum tracking_kind kind = type == EV_IMPRESSION_RECORDED ? KIND_IMPRESION : KIND_CONVERSION;
    struct err de;
    err_clear(&de);
    if (tracking_from_json(kind, ev->data, ev->data_len, &d->t, &de) != ERR_OK) {
        d->status = PROJ_INVALID;
        snprintf(d->label, sizeof(d->label), "%.80s:invalid", ev->type);
        log_error("event data does not decode; skipped", "position=%lld type=%s field=%s err=\"%s\"",
                  (long long)ev->position, ev->type, de.field, de.msg);
        return;
    }
    d->status = PROJ_OK;
}

int proj_apply_decoded(struct readmodel *rm, struct stats_acc *acc, const struct proj_decoded *d,
                       struct proj_counters *c, struct err *e)
{
    switch (d->status) {
    case PROJ_UNKNOWN:
        c->skipped++;
        return rm_count_skipped(rm, d->label, 1, e);
    case PROJ_INVALID:
        c->invalid++;
        return rm_count_skipped(rm, d->label, 1, e);
    case PROJ_OK:
        break;
    }
    int rc = rm_insert_tracking(rm, &d->t, d->position, d->recorded_at_us, e);
    if (rc != ERR_OK) {
        return rc;
    }
    if (d->hinted) {
        stats_acc_apply_hinted(acc, &d->t, d->recorded_at_us, &d->hint);
    } else {
        stats_acc_apply(acc, &d->t, d->recorded_at_us);
    }
    c->applied++;
    return ERR_OK;
}

int proj_apply(struct readmodel *rm, struct stats_acc *acc, const struct event_rec *ev,
               struct proj_counters *c, struct err *e)
{
    struct proj_decoded d;
    proj_decode(ev, &d);
    return proj_apply_decoded(rm, acc, &d, c, e);
}
