/*
 * money.h - exact money: ten-thousandths ("ticks") in 128 bits, never a
 * float, never summed across currencies.
 *
 * A campaign's or influencer's per-currency totals live in one text column
 * (stats.valores) as a list sorted by currency, one entry a currency:
 *
 *     COP=12345000/3,USD=-5000/1        currency=ticks/conversions
 *
 * so a conversion updates one statistics row, not two (the list is merged
 * by a SQL function inside the same upsert as the counters). Text, not a
 * blob: `sqlite3 readmodels.db` shows it as it is. Parsing is strict: a
 * list that is unsorted, repeats a currency or holds anything else is
 * corrupt, and an update of it fails rather than guess.
 */
#ifndef RASTRO_READ_MONEY_H
#define RASTRO_READ_MONEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"

void money_format(__int128 ticks, char *out, size_t max);      /* 125000 -> "12.5" */
int money_parse_ticks(const char *s, __int128 *out);           /* "125000" -> 125000 */
void money_ticks_text(__int128 ticks, char *out, size_t max);  /* 125000 -> "125000" */

struct money_total {
    char moneda[4];         /* ISO 4217, three upper-case letters */
    __int128 ticks;
    int64_t conv;           /* conversions in this currency */
};

/* The next entry of the list [*p, end): 1 and *p moves past it, 0 at the
 * end, ERR_INVALID when malformed. Order is checked by the callers that
 * need it (money_totals_merge). */
int money_totals_next(const char **p, const char *end, struct money_total *t) WARN_UNUSED;
/* Appends one entry to a list being built in b (b holds only the list). */
int money_totals_put(struct buf *b, const struct money_total *t) WARN_UNUSED;
/* out = a + b, currency by currency. ERR_INVALID: either list corrupt or
 * out of order; ERR_TOOBIG: a sum past 128 bits (or 63 for counts). */
int money_totals_merge(const char *a, size_t na, const char *b, size_t nb,
                       struct buf *out) WARN_UNUSED;

#endif
