"""
End-to-end tests of the query side under /tracking/queries: by-id records,
campaign and influencer lists and statistics, percent-decoding, paging,
X-Rastro-Position, min_position (read-your-writes) and the health checks.
"""

import datetime
import os
import sys
import time
import unittest
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (CAMPANAS, CAMPANAS_ASCII, CAMP_CONV_ITEM_KEYS,  # noqa: E402
                     CAMP_IMP_ITEM_KEYS, CAMP_STATS_KEYS, CANON_TS_RE, CONV_RECORD_KEYS,
                     IMP_RECORD_KEYS, INF_CONV_ITEM_KEYS, INF_IMP_ITEM_KEYS, INF_STATS_KEYS,
                     K_CAMPANA, ServerTestCase, enc, json_decimal, without_recorded_at)

Q = "/tracking/queries"


def canon(ts):
    """The canonical UTC text of an ISO-8601 string (naive = UTC) or Unix seconds."""
    if isinstance(ts, (int, float)):
        d = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    else:
        d = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        if d.tzinfo is None:
            d = d.replace(tzinfo=datetime.timezone.utc)
        d = d.astimezone(datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_canon(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)


# The fixture: (kind, fields). Posted in this order, so positions follow it.
C1, C2, C3, C4, C5 = "q-camp-1", "q-camp-2", "q-camp-3", "q camp/4 \u00f1", "q-camp-5"
I1, I2, I3 = "q-inf-1", "q-inf-2", "q inf/3 \u00f1"


def _fixture():
    ev = []

    def imp(id_, camp, inf, usuario, ts, tipo=None):
        f = {"id": id_, K_CAMPANA: camp, "influencer_id": inf, "usuario_id": usuario,
             "timestamp": ts}
        if tipo:
            f["tipo_evento"] = tipo
        ev.append(("imp", f))

    def conv(id_, camp, inf, usuario, ts, valor, moneda, tipo_conv=None):
        f = {"id": id_, K_CAMPANA: camp, "influencer_id": inf, "usuario_id": usuario,
             "timestamp": ts, "valor": valor, "moneda": moneda}
        if tipo_conv:
            f["tipo_conversion"] = tipo_conv
        ev.append(("conv", f))

    imp("q-i1", C1, I1, "u1", "2026-11-28T10:00:00Z")
    imp("q-i2", C1, I1, "u2", "2026-11-28T10:01:00+02:00")
    conv("q-c1", C1, I1, "u1", "2026-11-28T10:02:00Z", 0.1, "USD")
    imp("q-i6", C2, I1, "u3", "2026-11-28T10:03:00Z", "VIEW")
    imp("q-i3", C1, I1, "u3", "2026-11-28T10:04:00-05:00")
    conv("q-c4", C3, I1, "u4", "2026-11-28T10:05:00Z", 10.1, "USD", "REGISTRO")
    imp("q-i4", C1, I2, None, "2026-11-28T10:06:00Z")
    conv("q-c2", C1, I2, "u2", "2026-11-28T10:07:00Z", 0.2, "USD", "CLICK")
    imp("q-i7", C2, None, "u5", "2026-11-28T10:08:00Z")
    conv("q-c3", C2, None, "u5", "2026-11-28T10:09:00Z", "12.5", "EUR", "SUSCRIPCION")
    imp("q-i5", C1, I2, "u6", "2026-11-28T10:10:00.5Z")
    conv("q-c5", C3, I1, "u4", "2026-11-28T10:11:00Z", 20.2, "USD")
    imp("q-i8", C2, None, None, "2026-11-28T10:12:00Z")
    conv("q-c6", C3, I2, "u7", "2026-11-28T10:13:00Z", 5, "EUR", "DESCARGAR")
    imp("q i/9 \u00f1", C4, I3, "u8", "2026-11-28T10:14:00Z")
    conv("q c/7 \u00f1", C4, I3, "u8", "2026-11-28T10:15:00Z", 1.25, "COP")
    conv("q-c8", C5, None, None, "2026-11-28T10:16:00Z", None, None)
    return ev


def _camp_items(kind, recs, by):
    """Expected list items (newest first) of the records whose `by` field is the key."""
    other = "influencer_id" if by == K_CAMPANA else K_CAMPANA
    out = []
    for r in sorted(recs, key=lambda r: -r["position"]):
        item = {"id": r["id"], other: r[other], "usuario_id": r["usuario_id"],
                "tipo_evento": r["tipo_evento"], "timestamp": r["timestamp"]}
        if kind == "conv":
            item.update({"tipo_conversion": r["tipo_conversion"], "valor": r["valor"],
                         "moneda": r["moneda"]})
        out.append(item)
    return out


def _stats(imps, convs):
    per = {}
    for c in convs:
        per[c["moneda"]] = per.get(c["moneda"], Decimal(0)) + c["valor"]
    if not convs:
        total = Decimal(0)
    elif len(per) == 1:
        total = next(iter(per.values()))
    else:
        total = None
    tasa = (len(convs) / len(imps) * 100.0) if imps else 0.0
    return {"total_impresiones": len(imps), "total_conversiones": len(convs),
            "valor_total_conversiones": total, "tasa_conversion": tasa,
            "valor_por_moneda": per}


class QueriesTest(ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.records = {"imp": {}, "conv": {}}   # id -> expected by-id record
        cls.head = 0
        for kind, f in _fixture():
            status, _, js, raw = cls.server.post(kind, {k: v for k, v in f.items()
                                                        if v is not None})
            if status != 202:
                cls.server.dump_log("fixture POST failed")
                raise AssertionError("fixture POST %s %r -> %d %r" % (kind, f, status, raw))
            pos = js["position"]
            assert pos > cls.head, "positions must increase: %d after %d" % (pos, cls.head)
            cls.head = pos
            rec = {"id": f["id"], K_CAMPANA: f[K_CAMPANA], "influencer_id": f["influencer_id"],
                   "usuario_id": f["usuario_id"],
                   "tipo_evento": f.get("tipo_evento") or
                   ("IMPRESION" if kind == "imp" else "CONVERSION"),
                   "user_agent": None, "ip_address": None, "referrer": None,
                   "timestamp": canon(f["timestamp"]), "position": pos}
            if kind == "conv":
                rec["tipo_conversion"] = f.get("tipo_conversion") or "VENTA"
                rec["valor"] = Decimal(str(f["valor"])) if f["valor"] is not None else Decimal(0)
                rec["moneda"] = f["moneda"] or "COP"
            cls.records[kind][f["id"]] = rec

    # -- helpers -------------------------------------------------------------

    def q(self, path, expect=200, min_position="head", **params):
        if min_position == "head":
            min_position = self.head
        return self.query(path, min_position=min_position, expect=expect, **params)

    def recs(self, kind, field, value):
        return [r for r in self.records[kind].values() if r[field] == value]

    # -- health ------------------------------------------------------------------

    def test_health(self):
        for path in ("/tracking/health", Q + "/health"):
            with self.subTest(path=path):
                status, _, js, raw = self.server.request("GET", path)
                self.assertEqual(status, 200, "%s -> %d %r" % (path, status, raw))
                self.assertIsInstance(js, dict, "%s body is not JSON: %r" % (path, raw))
                self.assertEqual(js.get("status"), "ok", "%s body %r" % (path, js))

    # -- by id -------------------------------------------------------------------

    def test_by_id_every_fixture_record(self):
        for kind, recs in self.records.items():
            for id_, expected in recs.items():
                with self.subTest(kind=kind, id=id_):
                    _, _, raw = self.q("%s/%s/%s" % (Q, "impresiones" if kind == "imp"
                                                     else "conversiones", enc(id_)))
                    got = json_decimal(raw)
                    keys = IMP_RECORD_KEYS if kind == "imp" else CONV_RECORD_KEYS
                    self.assertEqual(set(got), keys, "by-id keys")
                    self.assertEqual(without_recorded_at(got), expected)

    def test_by_id_all_fields(self):
        imp = {"id": "q-full-imp", K_CAMPANA: "q-full", "influencer_id": "inf-full",
               "usuario_id": "usr-full", "tipo_evento": "VIEW_1-b",
               "user_agent": "Mozilla/5.0 (X11; ma\u00f1ana \u2603)",
               "ip_address": "2001:db8::1", "referrer": "https://example.com/a?b=c&d=%20",
               "timestamp": "2026-11-28T10:15:00+02:00"}
        p1 = self.post_ok("imp", imp)["position"]
        js, headers, _ = self.query(Q + "/impresiones/q-full-imp", min_position=p1)
        expected = dict(imp, timestamp="2026-11-28T08:15:00.000000Z", position=p1)
        self.assertEqual(without_recorded_at(js), expected)

        conv = dict(imp, id="q-full-conv", ip_address="203.0.113.9", tipo_evento="BUY",
                    tipo_conversion="SUSCRIPCION", valor=12.5, moneda="EUR",
                    timestamp="2026-11-28T23:30:00.25-03:00")
        p2 = self.post_ok("conv", conv)["position"]
        _, _, raw = self.query(Q + "/conversiones/q-full-conv", min_position=p2)
        got = json_decimal(raw)
        expected = dict(conv, timestamp="2026-11-29T02:30:00.250000Z", position=p2,
                        valor=Decimal("12.5"))
        self.assertEqual(set(got), CONV_RECORD_KEYS)
        self.assertEqual(without_recorded_at(got), expected)

    def test_by_id_defaults_and_nulls(self):
        before = datetime.datetime.now(datetime.timezone.utc)
        a = self.post_ok("imp", {K_CAMPANA: "q-def"})
        b = self.post_ok("conv", {K_CAMPANA: "q-def"})
        c = self.post_ok("imp", {"id": "q-empty", K_CAMPANA: "q-def", "influencer_id": "",
                                 "usuario_id": "", "user_agent": "", "ip_address": "",
                                 "referrer": "", "tipo_evento": ""})
        d = self.post_ok("conv", {"id": "q-nulls", K_CAMPANA: "q-def", "influencer_id": None,
                                  "usuario_id": None, "valor": None, "moneda": None,
                                  "tipo_conversion": None, "timestamp": None})
        e = self.post_ok("conv", {"id": "q-emptyc", K_CAMPANA: "q-def", "moneda": "",
                                  "tipo_conversion": ""})
        after = datetime.datetime.now(datetime.timezone.utc)
        for kind, ans in (("imp", a), ("conv", b), ("imp", c), ("conv", d), ("conv", e)):
            with self.subTest(kind=kind, id=ans["id"]):
                path = "%s/%s/%s" % (Q, "impresiones" if kind == "imp" else "conversiones",
                                     enc(ans["id"]))
                got, _, _ = self.query(path, min_position=ans["position"])
                self.assertEqual(got["id"], ans["id"])
                self.assertEqual(got[K_CAMPANA], "q-def")
                self.assertEqual(got["position"], ans["position"])
                for f in ("influencer_id", "usuario_id", "user_agent", "ip_address",
                          "referrer"):
                    self.assertIsNone(got[f], "absent/empty/null %s must read back as null"
                                      % f)
                self.assertEqual(got["tipo_evento"],
                                 "IMPRESION" if kind == "imp" else "CONVERSION")
                self.assertRegex(got["timestamp"], CANON_TS_RE)
                ts = parse_canon(got["timestamp"])
                slack = datetime.timedelta(seconds=120)
                self.assertTrue(before - slack <= ts <= after + slack,
                                "default timestamp %s is not the server's time (%s .. %s)"
                                % (got["timestamp"], before, after))
                if kind == "conv":
                    self.assertEqual(got["tipo_conversion"], "VENTA")
                    self.assertEqual(got["valor"], 0)
                    self.assertEqual(got["moneda"], "COP")

    def test_timestamp_forms(self):
        cases = [
            ("2026-11-28T10:15:00+02:00", "2026-11-28T08:15:00.000000Z"),
            ("2026-11-28T10:15:00Z", "2026-11-28T10:15:00.000000Z"),
            ("2026-11-28T10:15:00", "2026-11-28T10:15:00.000000Z"),          # naive = UTC
            ("2026-11-28T10:15:00.123456Z", "2026-11-28T10:15:00.123456Z"),
            ("2026-11-28T00:30:00+01:00", "2026-11-27T23:30:00.000000Z"),
            ("2024-02-29T12:00:00-03:30", "2024-02-29T15:30:00.000000Z"),
            (1764324900, canon(1764324900)),                                  # Unix seconds
            (1764324900.5, canon(1764324900.5)),
        ]
        for n, (given, want) in enumerate(cases):
            with self.subTest(timestamp=given):
                id_ = "q-ts-%d" % n
                p = self.post_ok("imp", {"id": id_, K_CAMPANA: "q-ts", "timestamp": given})
                got, _, _ = self.query(Q + "/impresiones/" + id_, min_position=p["position"])
                self.assertEqual(got["timestamp"], want)

    def test_exact_decimals_by_id(self):
        for n, (given, want) in enumerate([(0.1, "0.1"), (12.5, "12.5"), ("12.5", "12.5"),
                                          (0.0001, "0.0001"), (1234.5678, "1234.5678"),
                                          (100000000000, "100000000000"),
                                          ("99999999999.9999", "99999999999.9999")]):
            with self.subTest(valor=given):
                id_ = "q-dec-%d" % n
                p = self.post_ok("conv", {"id": id_, K_CAMPANA: "q-dec", "valor": given,
                                          "moneda": "USD"})
                _, _, raw = self.query(Q + "/conversiones/" + id_, min_position=p["position"])
                got = json_decimal(raw)["valor"]
                self.assertIsInstance(got, (int, Decimal), "valor must be a JSON number")
                self.assertEqual(Decimal(got), Decimal(want),
                                 "valor %r came back as %s" % (given, got))

    def test_alias_campana_id(self):
        p = self.post_ok("imp", {"id": "q-alias", "campana_id": "q-alias-c"})
        got, _, _ = self.query(Q + "/impresiones/q-alias", min_position=p["position"])
        self.assertEqual(got[K_CAMPANA], "q-alias-c")
        js, _, _ = self.query("%s/%s/q-alias-c/impresiones" % (Q, CAMPANAS),
                              min_position=p["position"])
        self.assertEqual([i["id"] for i in js["impresiones"]], ["q-alias"])

    def test_by_id_404(self):
        for path in (Q + "/impresiones/q-nope", Q + "/conversiones/q-nope",
                     Q + "/conversiones/q-i1",       # an impression id is not a conversion
                     Q + "/impresiones/q-c1",
                     Q + "/impresiones/q%20i%2F9",   # a prefix of an existing id
                     Q + "/impresiones/Q-I1"):       # ids are case-sensitive
            with self.subTest(path=path):
                js, _, raw = self.q(path, expect=404)
                self.assertIsInstance(js.get("error"), str, "404 needs an error: %r" % raw)

    # -- lists -------------------------------------------------------------------

    def check_list(self, base, key, owner, kind, by):
        path = "%s/%s/%s" % (base, enc(owner), "impresiones" if kind == "imp"
                             else "conversiones")
        _, _, raw = self.q(path)
        js = json_decimal(raw)
        list_key = "impresiones" if kind == "imp" else "conversiones"
        self.assertEqual(set(js), {key, "total", "limit", "offset", list_key},
                         "%s top-level keys" % path)
        self.assertEqual(js[key], owner)
        self.assertEqual(js["limit"], 100, "default limit")
        self.assertEqual(js["offset"], 0, "default offset")
        expected = _camp_items(kind, self.recs(kind, by, owner), by)
        self.assertEqual(js["total"], len(expected))
        item_keys = {("imp", K_CAMPANA): CAMP_IMP_ITEM_KEYS,
                     ("conv", K_CAMPANA): CAMP_CONV_ITEM_KEYS,
                     ("imp", "influencer_id"): INF_IMP_ITEM_KEYS,
                     ("conv", "influencer_id"): INF_CONV_ITEM_KEYS}[(kind, by)]
        for item in js[list_key]:
            self.assertEqual(set(item), item_keys, "%s item keys" % path)
        self.assertEqual(js[list_key], expected, "%s: items (newest first)" % path)
        return js

    def test_campaign_lists(self):
        for camp in (C1, C2, C3, C4, C5):
            for kind in ("imp", "conv"):
                with self.subTest(campaign=camp, kind=kind):
                    self.check_list(Q + "/" + CAMPANAS, K_CAMPANA, camp, kind, K_CAMPANA)
        # spot checks, independent of the helper's bookkeeping
        js = self.check_list(Q + "/" + CAMPANAS, K_CAMPANA, C1, "imp", K_CAMPANA)
        self.assertEqual([i["id"] for i in js["impresiones"]],
                         ["q-i5", "q-i4", "q-i3", "q-i2", "q-i1"], "newest first")
        self.assertEqual(js["total"], 5)
        js = self.check_list(Q + "/" + CAMPANAS, K_CAMPANA, C3, "conv", K_CAMPANA)
        self.assertEqual([i["id"] for i in js["conversiones"]], ["q-c6", "q-c5", "q-c4"])

    def test_influencer_lists(self):
        for inf in (I1, I2, I3):
            for kind in ("imp", "conv"):
                with self.subTest(influencer=inf, kind=kind):
                    self.check_list(Q + "/influencers", "influencer_id", inf, kind,
                                    "influencer_id")
        js = self.check_list(Q + "/influencers", "influencer_id", I1, "conv", "influencer_id")
        self.assertEqual([i["id"] for i in js["conversiones"]], ["q-c5", "q-c4", "q-c1"])
        self.assertEqual([i[K_CAMPANA] for i in js["conversiones"]], [C3, C3, C1])

    def test_unknown_owner_lists_are_empty(self):
        for base, key in ((Q + "/" + CAMPANAS, K_CAMPANA), (Q + "/influencers", "influencer_id")):
            for list_key in ("impresiones", "conversiones"):
                with self.subTest(base=base, list=list_key):
                    js, _, _ = self.q("%s/q-nobody/%s" % (base, list_key))
                    self.assertEqual(js[key], "q-nobody")
                    self.assertEqual(js["total"], 0)
                    self.assertEqual(js[list_key], [])

    def test_both_campaign_spellings(self):
        for camp in (C1, C3, C4, "q-nobody"):
            for tail in ("impresiones", "conversiones", "estadisticas",
                         "impresiones?limit=2&offset=1"):
                with self.subTest(campaign=camp, tail=tail):
                    a, _, raw_a = self.q("%s/%s/%s/%s" % (Q, CAMPANAS, enc(camp), tail))
                    b, _, raw_b = self.q("%s/%s/%s/%s" % (Q, CAMPANAS_ASCII, enc(camp), tail))
                    self.assertEqual(json_decimal(raw_a), json_decimal(raw_b),
                                     "campa%C3%B1as and campanas must answer the same")

    def test_percent_decoding(self):
        # ids with a space, a slash and an ñ, in every kind of path segment
        got, _, _ = self.q(Q + "/impresiones/q%20i%2F9%20%C3%B1")
        self.assertEqual(got["id"], "q i/9 \u00f1")
        self.assertEqual(got[K_CAMPANA], C4)
        got, _, _ = self.q(Q + "/conversiones/q%20c%2F7%20%C3%B1")
        self.assertEqual(got["id"], "q c/7 \u00f1")
        js, _, _ = self.q("%s/%s/q%%20camp%%2F4%%20%%C3%%B1/impresiones" % (Q, CAMPANAS))
        self.assertEqual(js[K_CAMPANA], C4)
        self.assertEqual([i["id"] for i in js["impresiones"]], ["q i/9 \u00f1"])
        js, _, _ = self.q("%s/%s/q%%20camp%%2F4%%20%%C3%%B1/estadisticas" % (Q, CAMPANAS))
        self.assertEqual(js[K_CAMPANA], C4)
        self.assertEqual((js["total_impresiones"], js["total_conversiones"]), (1, 1))
        js, _, _ = self.q(Q + "/influencers/q%20inf%2F3%20%C3%B1/conversiones")
        self.assertEqual(js["influencer_id"], I3)
        self.assertEqual([i["id"] for i in js["conversiones"]], ["q c/7 \u00f1"])
        # the unencoded slash is a different (unknown) path, not the same id
        status, _, _, _ = self.server.request("GET", Q + "/impresiones/q%20i/9%20%C3%B1")
        self.assertNotEqual(status, 200, "an unencoded '/' must not be part of the id")

    def test_paging(self):
        base = "%s/%s/%s/impresiones" % (Q, CAMPANAS, C1)
        newest_first = ["q-i5", "q-i4", "q-i3", "q-i2", "q-i1"]
        for limit, offset, want in [(2, 0, newest_first[0:2]), (2, 1, newest_first[1:3]),
                                    (2, 4, newest_first[4:]), (1, 2, newest_first[2:3]),
                                    (5, 0, newest_first), (1000, 0, newest_first),
                                    (3, 5, []), (10, 100, [])]:
            with self.subTest(limit=limit, offset=offset):
                js, _, _ = self.q(base, limit=limit, offset=offset)
                self.assertEqual(js["total"], 5, "total is the campaign's count, not the page's")
                self.assertEqual(js["limit"], limit)
                self.assertEqual(js["offset"], offset)
                self.assertEqual([i["id"] for i in js["impresiones"]], want)
        js, _, _ = self.q("%s/influencers/%s/impresiones" % (Q, I1), limit=2, offset=1)
        self.assertEqual(js["total"], 4)
        self.assertEqual([i["id"] for i in js["impresiones"]], ["q-i6", "q-i2"])
        js, _, _ = self.q("%s/%s/%s/conversiones" % (Q, CAMPANAS, C3), limit=1, offset=1)
        self.assertEqual(js["total"], 3)
        self.assertEqual([i["id"] for i in js["conversiones"]], ["q-c5"])

    def test_list_param_validation(self):
        bases = ["%s/%s/%s/impresiones" % (Q, CAMPANAS, C1),
                 "%s/%s/%s/conversiones" % (Q, CAMPANAS_ASCII, C1),
                 "%s/influencers/%s/impresiones" % (Q, I1),
                 "%s/influencers/%s/conversiones" % (Q, I1)]
        bad = [("limit", "0"), ("limit", "1001"), ("limit", "abc"), ("limit", "-1"),
               ("limit", "1.5"), ("offset", "-1"), ("offset", "x")]
        for base in bases:
            for param, value in bad:
                with self.subTest(base=base, param=param, value=value):
                    path = "%s?%s=%s" % (base, param, value)
                    status, _, js, raw = self.server.request("GET", path)
                    self.assert_error(status, js, raw, 400, param, "GET " + path)

    # -- statistics -----------------------------------------------------------------

    def check_stats(self, base, key, owner, by):
        _, _, raw = self.q("%s/%s/estadisticas" % (base, enc(owner)))
        js = json_decimal(raw)
        self.assertEqual(set(js), CAMP_STATS_KEYS if key == K_CAMPANA else INF_STATS_KEYS,
                         "stats keys")
        self.assertEqual(js[key], owner)
        want = _stats(self.recs("imp", by, owner), self.recs("conv", by, owner))
        self.assertEqual(js["total_impresiones"], want["total_impresiones"])
        self.assertEqual(js["total_conversiones"], want["total_conversiones"])
        self.assertEqual(js["valor_por_moneda"], want["valor_por_moneda"],
                         "valor_por_moneda must hold exact totals")
        if want["valor_total_conversiones"] is None:
            self.assertIsNone(js["valor_total_conversiones"],
                              "valor_total_conversiones is null with several currencies")
        else:
            self.assertEqual(js["valor_total_conversiones"], want["valor_total_conversiones"])
        self.assertAlmostEqual(float(js["tasa_conversion"]), want["tasa_conversion"], places=2)
        self.assertIsInstance(js["ultima_actualizacion"], str,
                              "ultima_actualizacion of an active %s" % key)
        return js

    def test_campaign_stats(self):
        for camp in (C1, C2, C3, C4, C5):
            with self.subTest(campaign=camp):
                self.check_stats(Q + "/" + CAMPANAS, K_CAMPANA, camp, K_CAMPANA)
        # the documented cases spelled out
        c1 = self.check_stats(Q + "/" + CAMPANAS, K_CAMPANA, C1, K_CAMPANA)
        self.assertEqual(c1["valor_por_moneda"], {"USD": Decimal("0.3")},
                         "0.1 + 0.2 USD must total exactly 0.3")
        self.assertEqual(c1["valor_total_conversiones"], Decimal("0.3"))
        self.assertAlmostEqual(float(c1["tasa_conversion"]), 40.0, places=2)
        c2 = self.check_stats(Q + "/" + CAMPANAS, K_CAMPANA, C2, K_CAMPANA)
        self.assertAlmostEqual(float(c2["tasa_conversion"]), 100.0 / 3, places=2,
                               msg="3 impressions, 1 conversion")
        self.assertEqual(c2["valor_total_conversiones"], Decimal("12.5"))
        c3 = self.check_stats(Q + "/" + CAMPANAS, K_CAMPANA, C3, K_CAMPANA)
        self.assertEqual(c3["valor_por_moneda"], {"USD": Decimal("30.3"), "EUR": 5})
        self.assertIsNone(c3["valor_total_conversiones"])
        self.assertEqual(float(c3["tasa_conversion"]), 0.0, "no impressions -> 0")
        c5 = self.check_stats(Q + "/" + CAMPANAS, K_CAMPANA, C5, K_CAMPANA)
        self.assertEqual(c5["total_conversiones"], 1)
        self.assertEqual(c5["valor_total_conversiones"], 0)

    def test_influencer_stats(self):
        for inf in (I1, I2, I3):
            with self.subTest(influencer=inf):
                self.check_stats(Q + "/influencers", "influencer_id", inf, "influencer_id")
        i1 = self.check_stats(Q + "/influencers", "influencer_id", I1, "influencer_id")
        self.assertEqual((i1["total_impresiones"], i1["total_conversiones"]), (4, 3))
        self.assertEqual(i1["valor_por_moneda"], {"USD": Decimal("30.4")})
        self.assertEqual(i1["valor_total_conversiones"], Decimal("30.4"))
        self.assertAlmostEqual(float(i1["tasa_conversion"]), 75.0, places=2)
        i2 = self.check_stats(Q + "/influencers", "influencer_id", I2, "influencer_id")
        self.assertEqual(i2["valor_por_moneda"], {"USD": Decimal("0.2"), "EUR": 5})
        self.assertIsNone(i2["valor_total_conversiones"])

    def test_unknown_owner_stats_are_zero(self):
        for base, key in ((Q + "/" + CAMPANAS, K_CAMPANA), (Q + "/" + CAMPANAS_ASCII, K_CAMPANA),
                          (Q + "/influencers", "influencer_id")):
            with self.subTest(base=base):
                js, _, _ = self.q(base + "/q-nobody/estadisticas")
                self.assertEqual(set(js), CAMP_STATS_KEYS if key == K_CAMPANA
                                 else INF_STATS_KEYS)
                self.assertEqual(js[key], "q-nobody")
                self.assertEqual(js["total_impresiones"], 0)
                self.assertEqual(js["total_conversiones"], 0)
                self.assertEqual(js["valor_total_conversiones"], 0)
                self.assertEqual(js["tasa_conversion"], 0)
                self.assertEqual(js["valor_por_moneda"], {})
                self.assertIsNone(js["ultima_actualizacion"])

    def test_stats_follow_new_events(self):
        camp = "q-live"
        p = 0
        for i in range(3):
            p = self.post_ok("imp", {K_CAMPANA: camp, "influencer_id": "q-live-inf"})["position"]
        js, _, _ = self.query("%s/%s/%s/estadisticas" % (Q, CAMPANAS, camp), min_position=p)
        self.assertEqual((js["total_impresiones"], js["total_conversiones"]), (3, 0))
        self.assertEqual(js["tasa_conversion"], 0)
        p = self.post_ok("conv", {K_CAMPANA: camp, "influencer_id": "q-live-inf",
                                  "valor": "0.1", "moneda": "USD"})["position"]
        p = self.post_ok("conv", {K_CAMPANA: camp, "valor": 0.2, "moneda": "USD"})["position"]
        _, _, raw = self.query("%s/%s/%s/estadisticas" % (Q, CAMPANAS, camp), min_position=p)
        js = json_decimal(raw)
        self.assertEqual(js["total_conversiones"], 2)
        self.assertEqual(js["valor_total_conversiones"], Decimal("0.3"))
        self.assertEqual(js["valor_por_moneda"], {"USD": Decimal("0.3")})
        self.assertAlmostEqual(float(js["tasa_conversion"]), 200.0 / 3, places=2)
        _, _, raw = self.query(Q + "/influencers/q-live-inf/estadisticas", min_position=p)
        js = json_decimal(raw)
        self.assertEqual((js["total_impresiones"], js["total_conversiones"]), (3, 1))
        self.assertEqual(js["valor_total_conversiones"], Decimal("0.1"))

    def test_cached_stats_never_stale(self):
        """Statistics answers are kept in memory: the second GET is a cache
        hit (rastro_query_cache_lookups_total), and after every new event a
        GET at its position sees it, 30 times over, cached or not."""
        camp = "q-cache"

        def hits():
            _, _, _, m = self.server.request("GET", "/metrics")
            for line in m.decode().splitlines():
                if line.startswith('rastro_query_cache_lookups_total{result="hit"}'):
                    return int(line.split()[-1])
            return None

        p = self.post_ok("imp", {K_CAMPANA: camp})["position"]
        path = "%s/%s/%s/estadisticas" % (Q, CAMPANAS, camp)
        self.query(path, min_position=p)
        before = hits()
        self.assertIsNotNone(before, "no cache metrics")
        js, hdrs, _ = self.query(path)
        self.assertEqual(hits(), before + 1)
        self.assertEqual(js["total_impresiones"], 1)
        self.assertGreaterEqual(int(hdrs["x-rastro-position"]), p)
        for i in range(30):
            kind = "conv" if i % 3 == 0 else "imp"
            body = {K_CAMPANA: camp}
            if kind == "conv":
                body.update(valor="1", moneda="EUR")
            p = self.post_ok(kind, body)["position"]
            js, _, _ = self.query(path, min_position=p)
            js2, _, _ = self.query(path)     # from the cache, or the same rows
            self.assertEqual(js, js2)
            self.assertEqual(js["total_impresiones"] + js["total_conversiones"], i + 2)

    # -- positions and read-your-writes -------------------------------------------------

    def test_position_header_on_every_query(self):
        paths = [Q + "/impresiones/q-i1", Q + "/conversiones/q-c1",
                 "%s/%s/%s/impresiones" % (Q, CAMPANAS, C1),
                 "%s/%s/%s/conversiones" % (Q, CAMPANAS_ASCII, C1),
                 "%s/%s/%s/estadisticas" % (Q, CAMPANAS, C1),
                 Q + "/influencers/%s/impresiones" % I1,
                 Q + "/influencers/%s/conversiones" % I1,
                 Q + "/influencers/%s/estadisticas" % I1]
        for path in paths:
            with self.subTest(path=path):
                # without min_position too (query() checks the header is there)
                deadline = time.monotonic() + 10
                while True:
                    _, headers, _ = self.query(path)
                    if int(headers["x-rastro-position"]) >= self.head or \
                            time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                self.assertGreaterEqual(int(headers["x-rastro-position"]), self.head,
                                        "the read models never caught up with the log")
        _, headers, _ = self.q(Q + "/impresiones/q-missing", expect=404)
        self.assertIn("x-rastro-position", headers)

    def test_min_position_read_your_writes(self):
        for kind in ("imp", "conv"):
            with self.subTest(kind=kind):
                id_ = "q-ryw-" + kind
                ans = self.post_ok(kind, {"id": id_, K_CAMPANA: "q-ryw",
                                          "influencer_id": "q-ryw-inf"})
                p = ans["position"]
                t0 = time.monotonic()
                path = "%s/%s/%s" % (Q, "impresiones" if kind == "imp" else "conversiones",
                                     id_)
                js, headers, _ = self.query(path, min_position=p)
                self.assertLess(time.monotonic() - t0, 2.5, "min_position answer too slow")
                self.assertEqual(js["id"], id_)
                self.assertEqual(js["position"], p)
                self.assertGreaterEqual(int(headers["x-rastro-position"]), p)
                lists = "impresiones" if kind == "imp" else "conversiones"
                js, _, _ = self.query("%s/%s/q-ryw/%s" % (Q, CAMPANAS, lists), min_position=p)
                self.assertEqual(js[lists][0]["id"], id_, "the newest item is the new one")
                js, _, _ = self.query(Q + "/influencers/q-ryw-inf/estadisticas",
                                      min_position=p)
                self.assertEqual(js["total_impresiones" if kind == "imp"
                                    else "total_conversiones"], 1)

    def test_min_position_not_reached_503(self):
        for path in (Q + "/impresiones/q-i1",
                     "%s/%s/%s/estadisticas" % (Q, CAMPANAS, C1),
                     Q + "/influencers/%s/impresiones" % I1):
            with self.subTest(path=path):
                full = path + "?min_position=999999&wait_ms=200"
                t0 = time.monotonic()
                status, headers, js, raw = self.server.request("GET", full)
                elapsed = time.monotonic() - t0
                self.assertEqual(status, 503, "GET %s -> %d %r" % (full, status, raw[:300]))
                self.assertIn("retry-after", headers, "503 needs a Retry-After header")
                self.assertTrue(headers["retry-after"].strip(), "empty Retry-After")
                self.assertLess(elapsed, 2.0, "wait_ms=200 must answer within ~1 s, took "
                                "%.2f s" % elapsed)
                self.assertIsInstance(js, dict, "503 body should be JSON: %r" % raw[:300])
        # and the server still answers normally
        js, _, _ = self.q(Q + "/impresiones/q-i1")
        self.assertEqual(js["id"], "q-i1")


if __name__ == "__main__":
    unittest.main()
