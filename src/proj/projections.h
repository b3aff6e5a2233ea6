/*
 * projections.h - what each event does to the read models.
 *
 * Four projections: impresiones and conversiones (one row per event, for
 * by-id and listing queries), and campaign and influencer statistics
 * (stats.h). proj_apply() routes one stored event to them; the projector
 * calls it for each event of a batch inside one read-model transaction and
 * then flushes the statistics. Not thread-safe.
 */
#ifndef RASTRO_PROJ_PROJECTIONS_H
#define RASTRO_PROJ_PROJECTIONS_H

#include <stdint.h>

#include "proj/stats.h"
#include "read/readmodel.h"
#include "store/evstore.h"

/* Names under which checkpoints are kept. */
extern const char *const proj_names[];
extern const size_t proj_count;

struct proj_counters {
    int64_t applied;
    int64_t skipped;        /* event types this build does not know */
    int64_t invalid;        /* known type whose data does not decode */
};

/* One event, decoded: what proj_apply() does in two steps, so a rebuild
 * can decode on one thread while another applies (projector.c). */
struct proj_decoded {
    int64_t position;
    int64_t recorded_at_us;
    enum { PROJ_OK, PROJ_UNKNOWN, PROJ_INVALID } status;
    char label[256];            /* skipped-table label: the type (at most 200 bytes of
                                 * it), or "<type>:invalid" */
    struct tracking t;          /* PROJ_OK */
    bool hinted;                /* hint holds the statistics' hashes of t's names */
    struct stats_hint hint;
};

/* Decodes ev into d (logging data that does not decode). Thread-safe. */
void proj_decode(const struct event_rec *ev, struct proj_decoded *d);

/* Applies a decoded event; returns as proj_apply(). */
int proj_apply_decoded(struct readmodel *rm, struct stats_acc *acc, const struct proj_decoded *d,
                       struct proj_counters *c, struct err *e) WARN_UNUSED;

/*
 * Applies one event (proj_decode + proj_apply_decoded). Unknown types are counted in the skipped table and in
 * c->skipped, not treated as errors; undecodable data is counted as
 * "<type>:invalid" and in c->invalid, and logged. Returns ERR_OK or an
 * ERR_IO from the read models (then the caller rolls the batch back).
 */
int proj_apply(struct readmodel *rm, struct stats_acc *acc, const struct event_rec *ev,
               struct proj_counters *c, struct err *e) WARN_UNUSED;

#endif
