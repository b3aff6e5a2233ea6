/*
 * test_core.c - JSON writer, idindex, UUIDv7, hash: the pieces the layers
 * above trust.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "core/hash.h"
#include "core/jsonw.h"
#include "core/uuid.h"
#include "index/idindex.h"

static void test_jsonw(void)
{
    struct buf b;
    struct jsonw w;
    buf_init(&b, 0);
    jsonw_init(&w, &b);
    jsonw_obj_open(&w);
    jsonw_kstr(&w, "a", "x\"y\\z\n\x01");
    jsonw_kint(&w, "n", -5);
    jsonw_key(&w, "arr");
    jsonw_arr_open(&w);
    jsonw_int(&w, 1);
    jsonw_null(&w);
    jsonw_bool(&w, true);
    jsonw_arr_close(&w);
    jsonw_key(&w, "d");
    jsonw_double(&w, 50.0);
    jsonw_key(&w, "d2");
    jsonw_double(&w, 100.0 / 3.0);
    jsonw_key(&w, "f");
    jsonw_fixed4(&w, 1000);
    jsonw_key(&w, "f2");
    jsonw_fixed4(&w, 1234567);
    jsonw_key(&w, "f3");
    jsonw_fixed4(&w, 30000);
    jsonw_obj_close(&w);
    CHECK(jsonw_status(&w) == ERR_OK);
    CHECK_STR(b.p, "{\"a\":\"x\\\"y\\\\z\\n\\u0001\",\"n\":-5,\"arr\":[1,null,true],\"d\":50,"
                   "\"d2\":33.333333333333336,\"f\":0.1,\"f2\":123.4567,\"f3\":3}");
    buf_fini(&b);

    /* doubles: the shortest text that reads back, without an exponent */
    static const struct { double v; const char *want; } dbl[] = {
        { 0.1, "0.1" }, { 12.5, "12.5" }, { 200.0 / 3.0, "66.66666666666667" },
        { 100.0 / 7.0, "14.285714285714286" }, { 0.1 + 0.2, "0.30000000000000004" },
        { 0.00001, "0.00001" }, { 0.0, "0" }, { 1e14 + 0.5, "100000000000000.5" },
    };
    for (size_t i = 0; i < ARRAY_LEN(dbl); i++) {
        struct buf db;
        struct jsonw dw;
        buf_init(&db, 0);
        jsonw_init(&dw, &db);
        jsonw_double(&dw, dbl[i].v);
        CHECK_STR(db.p, dbl[i].want);
        buf_fini(&db);
    }

    struct buf capped;
    buf_init(&capped, 8);
    CHECK(buf_puts(&capped, "12345678") == ERR_OK);
    CHECK(buf_puts(&capped, "9") == ERR_TOOBIG);
    CHECK(capped.len == 8);
    buf_fini(&capped);
}

/* The escaper reads eight bytes at a time: a byte-at-a-time reference
 * (RFC 8259's rules, written out plainly) must agree with it for every
 * byte value at every offset of a word, and a capped buffer must take
 * exactly what fits. */
static void ref_escape(const char *s, size_t n, char *out)
{
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *two = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n"
                        : c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b"
                        : c == '\f' ? "\\f" : NULL;
        if (two != NULL) {
            memcpy(out + o, two, 2);
            o += 2;
        } else if (c < 0x20) {
            o += (size_t)sprintf(out + o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

static void test_json_escape(void)
{
    char in[40], want[256];
    int bad = 0;
    /* each byte value, at offsets 0-19 of a 20-byte string of 'a' or of
     * 0xc3 (a UTF-8 lead byte: high bytes pass through) */
    for (int fill = 0; fill < 2; fill++) {
        for (int c = 0; c < 256; c++) {
            for (size_t at = 0; at < 20; at++) {
                memset(in, fill ? 0xc3 : 'a', 20);
                in[at] = (char)c;
                ref_escape(in, 20, want);
                struct buf b;
                buf_init(&b, 0);
                int rc = json_escape(&b, in, 20);
                if (rc != ERR_OK || b.len != strlen(want) || strcmp(b.p, want) != 0) {
                    CHECKF(0, "byte 0x%02x at %zu: got %s, want %s", c, at, b.p, want);
                    bad++;
                }
                buf_fini(&b);
                if (bad > 5) {
                    return;
                }
            }
        }
    }
    CHECK(bad == 0);

    static const struct { const char *in; const char *want; } tab[] = {
        { "", "\"\"" },
        { "1234567", "\"1234567\"" },
        { "12345678", "\"12345678\"" },
        { "123456789abcdef0123", "\"123456789abcdef0123\"" },
        { "\"\"\"\"\"\"\"\"\"", "\"\\\"\\\"\\\"\\\"\\\"\\\"\\\"\\\"\\\"\"" },
        { "ab\\cdefgh\x1f" "ijklmnop\x7f", "\"ab\\\\cdefgh\\u001fijklmnop\x7f\"" },
        { "caf\xc3\xa9 \xe2\x82\xac", "\"caf\xc3\xa9 \xe2\x82\xac\"" },
        { "\x01\x02\x03\x04\x05\x06\x07\x08\x09", "\"\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006"
                                                  "\\u0007\\b\\t\"" },
    };
    for (size_t i = 0; i < ARRAY_LEN(tab); i++) {
        struct buf b;
        buf_init(&b, 0);
        CHECK(buf_puts(&b, "x=") == ERR_OK);    /* appends after what is there */
        CHECK(json_escape(&b, tab[i].in, strlen(tab[i].in)) == ERR_OK);
        CHECK_STR(b.p + 2, tab[i].want);
        CHECK(b.len == 2 + strlen(tab[i].want));
        buf_fini(&b);
    }

    /* an empty string may come as NULL (sqlite3_column_text of a NULL) */
    struct buf nb;
    buf_init(&nb, 0);
    CHECK(json_escape(&nb, NULL, 0) == ERR_OK);
    CHECK_STR(nb.p, "\"\"");
    buf_fini(&nb);

    /* capped: the output fits to the byte, or the call fails */
    static const char *cap_in[] = { "abcdefghij", "a\"b", "x\x01y", "0123456789\n" };
    for (size_t i = 0; i < ARRAY_LEN(cap_in); i++) {
        ref_escape(cap_in[i], strlen(cap_in[i]), want);
        size_t need = strlen(want);
        struct buf fits, short1;
        buf_init(&fits, need);
        buf_init(&short1, need - 1);
        CHECKF(json_escape(&fits, cap_in[i], strlen(cap_in[i])) == ERR_OK, "cap %zu", need);
        CHECK_STR(fits.p, want);
        CHECKF(json_escape(&short1, cap_in[i], strlen(cap_in[i])) == ERR_TOOBIG, "cap %zu",
               need - 1);
        CHECK(short1.len <= need - 1);
        CHECK(short1.p == NULL || strlen(short1.p) == short1.len);
        buf_fini(&fits);
        buf_fini(&short1);
    }
}

static void test_idindex(void)
{
    struct idindex *ix = idindex_new(0);
    int64_t out[8];
    /* many entries, forcing growth, plus deliberate collisions */
    for (int64_t i = 1; i <= 5000; i++) {
        idindex_add(ix, (uint64_t)i * 0x9e3779b97f4a7c15ULL, i);
    }
    idindex_add(ix, 42, 9001);
    idindex_add(ix, 42, 9002);
    idindex_add(ix, 0, 9003);   /* hash 0 is a legal key */
    CHECK(idindex_count(ix) == 5003);
    CHECK(idindex_find(ix, 42, out, 8) == 2);
    CHECK((out[0] == 9001 && out[1] == 9002) || (out[0] == 9002 && out[1] == 9001));
    CHECK(idindex_find(ix, 0, out, 8) == 1 && out[0] == 9003);
    CHECK(idindex_find(ix, 7, out, 8) == 0);
    bool all = true;
    for (int64_t i = 1; i <= 5000; i++) {
        size_t n = idindex_find(ix, (uint64_t)i * 0x9e3779b97f4a7c15ULL, out, 8);
        all = all && n == 1 && out[0] == i;
    }
    CHECK(all);
    /* removal keeps every other entry reachable (backward shift) */
    for (int64_t i = 1; i <= 5000; i += 2) {
        idindex_remove(ix, (uint64_t)i * 0x9e3779b97f4a7c15ULL, i);
    }
    idindex_remove(ix, 42, 9001);
    idindex_remove(ix, 42, 12345);     /* absent: no-op */
    CHECK(idindex_count(ix) == 2502);
    all = true;
    for (int64_t i = 1; i <= 5000; i++) {
        size_t n = idindex_find(ix, (uint64_t)i * 0x9e3779b97f4a7c15ULL, out, 8);
        all = all && (i % 2 ? n == 0 : n == 1 && out[0] == i);
    }
    CHECK(all);
    CHECK(idindex_find(ix, 42, out, 8) == 1 && out[0] == 9002);
    idindex_free(ix);
}

static void test_uuid(void)
{
    struct uuid a, b;
    char sa[UUID_STR_LEN + 1], sb[UUID_STR_LEN + 1];
    bool ordered = true;
    uuid_v7(&a);
    for (int i = 0; i < 10000; i++) {
        uuid_v7(&b);
        uuid_format(&a, sa);
        uuid_format(&b, sb);
        ordered = ordered && strcmp(sa, sb) < 0;
        a = b;
    }
    CHECK(ordered);
    CHECK(sa[14] == '7');
    CHECK(sa[19] == '8' || sa[19] == '9' || sa[19] == 'a' || sa[19] == 'b');
    struct uuid p;
    CHECK(uuid_parse(sb, &p) && memcmp(p.b, a.b, 16) == 0);
    CHECK(!uuid_parse("not-a-uuid", &p));
    CHECK(!uuid_parse("0190000000007000800000000000000000000", &p));
    uuid_v4(&a);
    uuid_format(&a, sa);
    CHECK(sa[14] == '4');
}

static void test_hash(void)
{
    CHECK(hash64("abc", 3) == hash64("abc", 3));
    CHECK(hash64("abc", 3) != hash64("abd", 3));
    CHECK(hash64("impresion:1", 11) != hash64("conversion:1", 12));
    CHECK(hash64("", 0) != hash64("a", 1));

    /* SipHash-2-4 reference vectors: key 00..0f, messages 00..(n-1) */
    struct siphash_key k = { 0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL };
    unsigned char msg[64];
    for (int i = 0; i < 64; i++) {
        msg[i] = (unsigned char)i;
    }
    CHECK(siphash24(&k, msg, 0) == 0x726fdb47dd0e0e31ULL);
    CHECK(siphash24(&k, msg, 1) == 0x74f839c593dc67fdULL);
    CHECK(siphash24(&k, msg, 15) == 0xa129ca6149be45e5ULL);
    CHECK(siphash24(&k, msg, 63) == 0x958a324ceb064572ULL);
    struct siphash_key k2 = { 1, 2 };
    CHECK(siphash24(&k2, "impresion:1", 11) != siphash24(&k, "impresion:1", 11));
}

int main(void)
{
    test_jsonw();
    test_json_escape();
    test_idindex();
    test_uuid();
    test_hash();
    return check_done("test_core");
}
