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

int proj_apply(struct readmodel *rm, struct stats_acc *acc, const struct event_rec *ev,
               struct proj_counters *c, struct err *e)
{
    enum event_type type = event_type_parse(ev->type);
    if (type == EV_UNKNOWN) {
        c->skipped++;
        return rm_count_skipped(rm, ev->type, 1, e);
    }
    enum tracking_kind kind = type == EV_IMPRESSION_RECORDED ? KIND_IMPRESION : KIND_CONVERSION;
    struct tracking t;
    struct err de;
    err_clear(&de);
    if (tracking_from_json(kind, ev->data, ev->data_len, &t, &de) != ERR_OK) {
        char label[96];
        snprintf(label, sizeof(label), "%.80s:invalid", ev->type);
        log_error("event data does not decode; skipped", "position=%lld type=%s field=%s err=\"%s\"",
                  (long long)ev->position, ev->type, de.field, de.msg);
        c->invalid++;
        return rm_count_skipped(rm, label, 1, e);
    }
    int rc = rm_insert_tracking(rm, &t, ev->position, ev->recorded_at_us, e);
    if (rc != ERR_OK) {
        return rc;
    }
    stats_acc_apply(acc, &t, ev->recorded_at_us);
    c->applied++;
    return ERR_OK;
}
