"""
End-to-end tests of the command side: POST /tracking/impresiones and
POST /tracking/conversiones (202 shape, validation, limits, idempotency,
positions, 404/405/413).
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (CAMPANAS, K_CAMPANA, KIND_PATH, KIND_STREAM, UUID7_RE,  # noqa: E402
                     ServerTestCase, enc, events)


def camp_stats(test, camp, min_position):
    js, _, _ = test.query("/tracking/queries/%s/%s/estadisticas" % (CAMPANAS, enc(camp)),
                          min_position=min_position)
    return js


class CommandShapeTest(ServerTestCase):
    """202 answers for both kinds, with and without a client id."""

    def test_impression_with_id(self):
        js = self.post_ok("imp", {"id": "shape-imp-1", K_CAMPANA: "shape-c"})
        self.assertEqual(js["id"], "shape-imp-1")

    def test_conversion_with_id(self):
        js = self.post_ok("conv", {"id": "shape-conv-1", K_CAMPANA: "shape-c",
                                   "valor": 10, "moneda": "USD"})
        self.assertEqual(js["id"], "shape-conv-1")

    def test_impression_without_id_gets_uuid7(self):
        a = self.post_ok("imp", {K_CAMPANA: "shape-c"})
        b = self.post_ok("imp", {K_CAMPANA: "shape-c"})
        for js in (a, b):
            self.assertRegex(js["id"], UUID7_RE, "server id must be a UUIDv7: %r" % js)
        self.assertNotEqual(a["id"], b["id"], "two commands without id got the same id")
        self.assertNotEqual(a["position"], b["position"])

    def test_conversion_without_id_gets_uuid7(self):
        js = self.post_ok("conv", {K_CAMPANA: "shape-c"})
        self.assertRegex(js["id"], UUID7_RE, "server id must be a UUIDv7: %r" % js)

    def test_null_id_means_absent(self):
        js = self.post_ok("imp", {"id": None, K_CAMPANA: "shape-c"})
        self.assertRegex(js["id"], UUID7_RE, "null id must get a server UUIDv7: %r" % js)

    def test_escaped_key_and_alias_accepted(self):
        # "campa\u00f1a_id" written with a JSON escape is the same key.
        status, _, js, raw = self.server.post(
            "imp", raw_body=b'{"id":"shape-esc","campa\\u00f1a_id":"shape-c"}')
        self.assertEqual(status, 202, "escaped campa\\u00f1a_id key: %d %r" % (status, raw))
        self.assertEqual(js["id"], "shape-esc")
        # the ASCII alias alone, and both spellings agreeing
        self.post_ok("imp", {"campana_id": "shape-c"})
        self.post_ok("conv", {"campana_id": "shape-c"})
        self.post_ok("imp", {"campana_id": "shape-c", K_CAMPANA: "shape-c"})

    def test_valid_edge_cases_accepted(self):
        cases = [
            ("imp", {"id": "x" * 128}),                       # 128 bytes: the limit
            ("imp", {"id": "\u00f1" * 64}),                   # 128 bytes of UTF-8
            ("imp", {K_CAMPANA: "c" * 128, "influencer_id": "i" * 128,
                     "usuario_id": "u" * 128}),
            ("imp", {"tipo_evento": "A" * 32}),
            ("imp", {"tipo_evento": "view_2-B"}),
            ("imp", {"user_agent": "u" * 1024, "referrer": "r" * 2048}),
            ("imp", {"ip_address": "192.168.1.20"}),
            ("imp", {"ip_address": "2001:db8::1"}),
            ("imp", {"ip_address": "::ffff:10.0.0.1"}),
            ("imp", {"timestamp": "2026-11-28T10:15:00+02:00"}),
            ("imp", {"timestamp": "2026-11-28T10:15:00"}),
            ("imp", {"timestamp": "2026-11-28T10:15:00.123456Z"}),
            ("imp", {"timestamp": 1764324900}),
            ("imp", {"influencer_id": None, "usuario_id": None, "user_agent": None,
                     "ip_address": None, "referrer": None, "timestamp": None,
                     "tipo_evento": None}),
            ("imp", {"influencer_id": "", "usuario_id": "", "user_agent": "",
                     "ip_address": "", "referrer": "", "tipo_evento": ""}),
            ("imp", {"user_agent": "Mozilla/5.0 (ma\u00f1ana \u2603)"}),
            ("conv", {"valor": 0}),
            ("conv", {"valor": 100000000000}),
            ("conv", {"valor": 0.0001}),
            ("conv", {"valor": 12.5}),
            ("conv", {"valor": "12.5"}),
            ("conv", {"valor": None, "moneda": None, "tipo_conversion": None}),
            ("conv", {"moneda": "", "tipo_conversion": ""}),
            ("conv", {"moneda": "USD"}),
            ("conv", {"moneda": "EUR"}),
            ("conv", {"moneda": "COP"}),
            ("conv", {"tipo_conversion": "VENTA"}),
            ("conv", {"tipo_conversion": "REGISTRO"}),
            ("conv", {"tipo_conversion": "SUSCRIPCION"}),
            ("conv", {"tipo_conversion": "DESCARGAR"}),
            ("conv", {"tipo_conversion": "CLICK"}),
        ]
        for kind, extra in cases:
            body = {K_CAMPANA: "edge-c"}
            body.update(extra)
            with self.subTest(kind=kind, body={k: (v if not isinstance(v, str) or len(v) < 40
                                                   else v[:10] + "...(%d)" % len(v))
                                               for k, v in extra.items()}):
                self.post_ok(kind, body)

    def test_positions_strictly_increasing_and_gap_free(self):
        prev = None
        for i in range(12):
            kind = "imp" if i % 3 else "conv"
            js = self.post_ok(kind, {"id": "pos-%d" % i, K_CAMPANA: "pos-c"})
            if prev is not None:
                self.assertEqual(js["position"], prev + 1,
                                 "sequential commands must get consecutive positions "
                                 "(event %d after %d)" % (js["position"], prev))
            prev = js["position"]


class FreshPositionsTest(ServerTestCase):
    """Positions on an empty data folder: 1, 2, 3... across both kinds; nothing else uses one."""

    def test_positions_start_at_one_and_only_new_events_count(self):
        a = self.post_ok("imp", {"id": "fp-1", K_CAMPANA: "fp"})
        self.assertEqual(a["position"], 1, "first event on an empty data folder")
        b = self.post_ok("conv", {"id": "fp-1", K_CAMPANA: "fp"})
        self.assertEqual(b["position"], 2, "conversions share the global position sequence")
        # a replay, a 400, a 409, a 404 and a 405 do not consume positions
        self.assertEqual(self.post_ok("imp", {"id": "fp-1", K_CAMPANA: "fp"}), a)
        status, _, _, _ = self.server.post("imp", {K_CAMPANA: ""})
        self.assertEqual(status, 400)
        status, _, _, _ = self.server.post("imp", {"id": "fp-1", K_CAMPANA: "other"})
        self.assertEqual(status, 409)
        self.server.request("POST", "/tracking/nowhere", body={K_CAMPANA: "fp"})
        self.server.request("PUT", "/tracking/impresiones", body={K_CAMPANA: "fp"})
        c = self.post_ok("imp", {K_CAMPANA: "fp"})
        self.assertEqual(c["position"], 3, "rejected commands must not consume positions")
        d = self.post_ok("conv", {K_CAMPANA: "fp"})
        self.assertEqual(d["position"], 4)
        evs = events(self.server.data_dir)
        self.assertEqual([e.get("position") for e in evs], [1, 2, 3, 4],
                         "rastro events must list exactly the 4 accepted events")


def _invalid_cases():
    """(kind, body, expected field). Bodies are complete: campaña_id is added when missing."""
    both = ("imp", "conv")
    cases = []
    for kind in both:
        cases += [
            # campaña_id
            (kind, {}, K_CAMPANA),
            (kind, {K_CAMPANA: ""}, K_CAMPANA),
            (kind, {K_CAMPANA: None}, K_CAMPANA),
            (kind, {K_CAMPANA: 5}, K_CAMPANA),
            (kind, {K_CAMPANA: ["c"]}, K_CAMPANA),
            (kind, {K_CAMPANA: "c" * 129}, K_CAMPANA),
            (kind, {K_CAMPANA: "a\u0007b"}, K_CAMPANA),
            (kind, {K_CAMPANA: "a", "campana_id": "b"}, K_CAMPANA),   # alias conflict
            # id
            (kind, {"id": "x" * 129}, "id"),
            (kind, {"id": "\u00f1" * 64 + "a"}, "id"),                # 129 bytes of UTF-8
            (kind, {"id": 5}, "id"),
            (kind, {"id": {"a": 1}}, "id"),
            (kind, {"id": "a\nb"}, "id"),
            # influencer_id / usuario_id
            (kind, {"influencer_id": "i" * 129}, "influencer_id"),
            (kind, {"influencer_id": 7}, "influencer_id"),
            (kind, {"influencer_id": "inf\u001f"}, "influencer_id"),
            (kind, {"usuario_id": "u\u0001x"}, "usuario_id"),
            (kind, {"usuario_id": "u\u0000x"}, "usuario_id"),
            (kind, {"usuario_id": "u\u007fx"}, "usuario_id"),
            (kind, {"usuario_id": "u" * 129}, "usuario_id"),
            (kind, {"usuario_id": True}, "usuario_id"),
            # tipo_evento
            (kind, {"tipo_evento": "a b"}, "tipo_evento"),
            (kind, {"tipo_evento": "a.b"}, "tipo_evento"),
            (kind, {"tipo_evento": "A" * 33}, "tipo_evento"),
            (kind, {"tipo_evento": 3}, "tipo_evento"),
            # user_agent / referrer
            (kind, {"user_agent": "u" * 1025}, "user_agent"),
            (kind, {"user_agent": "ua\r\n"}, "user_agent"),
            (kind, {"user_agent": 1}, "user_agent"),
            (kind, {"referrer": "r" * 2049}, "referrer"),
            (kind, {"referrer": "http://x/\t"}, "referrer"),
            (kind, {"referrer": []}, "referrer"),
            # ip_address
            (kind, {"ip_address": "999.1.1.1"}, "ip_address"),
            (kind, {"ip_address": "1.2.3"}, "ip_address"),
            (kind, {"ip_address": "localhost"}, "ip_address"),
            (kind, {"ip_address": "2001:db8::g"}, "ip_address"),
            (kind, {"ip_address": "10.0.0.1 "}, "ip_address"),
            (kind, {"ip_address": 167772161}, "ip_address"),
            # timestamp
            (kind, {"timestamp": "yesterday"}, "timestamp"),
            (kind, {"timestamp": "2026-02-30T00:00:00Z"}, "timestamp"),
            (kind, {"timestamp": "2026-13-01T00:00:00Z"}, "timestamp"),
            (kind, {"timestamp": "2026-11-28T25:00:00Z"}, "timestamp"),
            (kind, {"timestamp": "28/11/2026"}, "timestamp"),
            (kind, {"timestamp": True}, "timestamp"),
            (kind, {"timestamp": {}}, "timestamp"),
        ]
    cases += [
        # tipo_conversion
        ("conv", {"tipo_conversion": "venta"}, "tipo_conversion"),
        ("conv", {"tipo_conversion": "COMPRA"}, "tipo_conversion"),
        ("conv", {"tipo_conversion": "VENTA "}, "tipo_conversion"),
        ("conv", {"tipo_conversion": 1}, "tipo_conversion"),
        # moneda
        ("conv", {"moneda": "usd"}, "moneda"),
        ("conv", {"moneda": "US"}, "moneda"),
        ("conv", {"moneda": "XYZ"}, "moneda"),
        ("conv", {"moneda": "USDD"}, "moneda"),
        ("conv", {"moneda": "Usd"}, "moneda"),
        ("conv", {"moneda": 840}, "moneda"),
        # valor
        ("conv", {"valor": -1}, "valor"),
        ("conv", {"valor": -0.5}, "valor"),
        ("conv", {"valor": "abc"}, "valor"),
        ("conv", {"valor": "-1"}, "valor"),
        ("conv", {"valor": 1.00001}, "valor"),
        ("conv", {"valor": "1.00001"}, "valor"),
        ("conv", {"valor": 1e12}, "valor"),
        ("conv", {"valor": "100000000000.0001"}, "valor"),
        ("conv", {"valor": True}, "valor"),
        ("conv", {"valor": [1]}, "valor"),
        ("conv", {"valor": {"v": 1}}, "valor"),
    ]
    return cases


class ValidationTest(ServerTestCase):
    """400 {"error", "field"} for every invalid field; nothing is recorded."""

    CAMP = "val-bad"

    def test_invalid_fields(self):
        for kind, extra, field in _invalid_cases():
            body = {K_CAMPANA: self.CAMP}
            if K_CAMPANA in extra or "campana_id" in extra or extra == {}:
                body = {}
            body.update(extra)
            shown = {k: (v if not isinstance(v, str) or len(v) < 40
                         else v[:10] + "...(%d chars)" % len(v)) for k, v in body.items()}
            with self.subTest(kind=kind, body=shown, field=field):
                status, _, js, raw = self.server.post(kind, body)
                self.assert_error(status, js, raw, 400, field,
                                  "POST %s %r" % (KIND_PATH[kind], shown))

    def test_body_not_a_json_object(self):
        bodies = [b"[]", b'"x"', b"42", b"{", b"null", b"true", b"", b"{]",
                  b'{"campa\xc3\xb1a_id":"val-bad"} x', b'{"campa\xc3\xb1a_id":"val-bad",}',
                  b"\xff\xfe{}"]
        for kind in ("imp", "conv"):
            for raw_body in bodies:
                with self.subTest(kind=kind, body=raw_body):
                    status, _, js, raw = self.server.post(kind, raw_body=raw_body)
                    self.assert_error(status, js, raw, 400, "body",
                                      "POST %s %r" % (KIND_PATH[kind], raw_body))

    def test_body_too_large_413(self):
        for kind in ("imp", "conv"):
            with self.subTest(kind=kind):
                prefix = '{"%s":"%s","pad":"' % (K_CAMPANA, self.CAMP)
                pad = "x" * (70000 - len(prefix.encode()) - 2)
                raw_body = (prefix + pad + '"}').encode()
                self.assertEqual(len(raw_body), 70000)
                status, _, js, raw = self.server.post(kind, raw_body=raw_body)
                self.assert_error(status, js, raw, 413, None,
                                  "POST %s with a 70000-byte body" % KIND_PATH[kind])
        # the server is still fine afterwards
        status, _, js, _ = self.server.request("GET", "/tracking/health")
        self.assertEqual(status, 200, "health after a 413")

    def test_zz_nothing_was_recorded(self):
        # runs last in this class (alphabetical order): every rejected command
        # above used campaign val-bad, which must still be empty
        ok = self.post_ok("imp", {K_CAMPANA: "val-good"})
        stats = camp_stats(self, self.CAMP, ok["position"])
        self.assertEqual(stats["total_impresiones"], 0, "rejected impressions were recorded")
        self.assertEqual(stats["total_conversiones"], 0, "rejected conversions were recorded")
        evs = events(self.server.data_dir)
        self.assertEqual(len(evs), ok["position"],
                         "the log must hold only the accepted events")
        for ev in evs:
            self.assertNotEqual(ev["data"].get(K_CAMPANA), self.CAMP,
                                "a rejected command reached the log: %r" % ev)


class RoutingTest(ServerTestCase):
    """404 for unknown paths and 405 for wrong methods, both with JSON bodies."""

    def test_unknown_paths_404(self):
        for method, path in [("GET", "/"), ("GET", "/nope"), ("GET", "/tracking/nope"),
                             ("POST", "/tracking/nope"), ("POST", "/tracking/impresionesX"),
                             ("GET", "/tracking/queries/nope/x"),
                             ("POST", "/impresiones")]:
            with self.subTest(method=method, path=path):
                body = {K_CAMPANA: "r"} if method == "POST" else None
                status, _, js, raw = self.server.request(method, path, body=body)
                self.assert_error(status, js, raw, 404, None, "%s %s" % (method, path))

    def test_wrong_method_405(self):
        for method, path in [("GET", "/tracking/impresiones"),
                             ("GET", "/tracking/conversiones"),
                             ("DELETE", "/tracking/impresiones"),
                             ("DELETE", "/tracking/conversiones"),
                             ("PUT", "/tracking/impresiones"),
                             ("PUT", "/tracking/conversiones"),
                             ("PATCH", "/tracking/conversiones")]:
            with self.subTest(method=method, path=path):
                body = {K_CAMPANA: "r"} if method in ("PUT", "PATCH") else None
                status, _, js, raw = self.server.request(method, path, body=body)
                self.assert_error(status, js, raw, 405, None, "%s %s" % (method, path))


class IdempotencyTest(ServerTestCase):
    """The id is an idempotency key, one space per kind."""

    def _stream_events(self, kind, id_):
        return events(self.server.data_dir, "--stream", KIND_STREAM[kind] + id_)

    def test_same_id_same_payload_is_one_event(self):
        for kind in ("imp", "conv"):
            with self.subTest(kind=kind):
                id_ = "idem-same-" + kind
                camp = "idem-camp-" + kind
                body = {"id": id_, K_CAMPANA: camp, "influencer_id": "inf-idem",
                        "usuario_id": "u1", "timestamp": "2026-11-28T10:15:00Z"}
                if kind == "conv":
                    body.update({"valor": 12.5, "moneda": "USD", "tipo_conversion": "CLICK"})
                first = self.post_ok(kind, body)
                status, _, second, raw = self.server.post(kind, dict(body))
                self.assertEqual(status, 202, "replay: %d %r" % (status, raw))
                self.assertEqual(second, first, "a replay must answer the identical body")
                # a replay without the timestamp is still the same command
                body_no_ts = dict(body)
                body_no_ts.pop("timestamp")
                status, _, third, raw = self.server.post(kind, body_no_ts)
                self.assertEqual(status, 202, "replay without timestamp: %d %r" % (status, raw))
                self.assertEqual(third, first)
                # only one event, in the log and in the read model
                evs = self._stream_events(kind, id_)
                self.assertEqual(len(evs), 1, "one event for a replayed id, got %r" % evs)
                self.assertEqual(evs[0]["position"], first["position"])
                stats = camp_stats(self, camp, first["position"])
                key = "total_impresiones" if kind == "imp" else "total_conversiones"
                self.assertEqual(stats[key], 1, "replays must not count: %r" % stats)

    def test_server_id_replay(self):
        # replaying with the id the server made is also idempotent
        first = self.post_ok("imp", {K_CAMPANA: "idem-srv", "usuario_id": "u9"})
        again = self.post_ok("imp", {"id": first["id"], K_CAMPANA: "idem-srv",
                                     "usuario_id": "u9"})
        self.assertEqual(again, first)

    def test_same_id_different_payload_409(self):
        variants = [
            ("imp", {K_CAMPANA: "idem-409-other"}),
            ("imp", {"usuario_id": "someone-else"}),
            ("imp", {"timestamp": "2026-11-28T10:16:00Z"}),
            ("conv", {"valor": 13}),
            ("conv", {"moneda": "EUR"}),
            ("conv", {"tipo_conversion": "VENTA"}),
        ]
        originals = {}
        for kind in ("imp", "conv"):
            body = {"id": "idem-409-" + kind, K_CAMPANA: "idem-409", "usuario_id": "u1",
                    "timestamp": "2026-11-28T10:15:00Z"}
            if kind == "conv":
                body.update({"valor": 12.5, "moneda": "USD", "tipo_conversion": "CLICK"})
            originals[kind] = (body, self.post_ok(kind, body))
        for kind, change in variants:
            body = dict(originals[kind][0])
            body.update(change)
            with self.subTest(kind=kind, change=change):
                status, _, js, raw = self.server.post(kind, body)
                self.assert_error(status, js, raw, 409, "id",
                                  "same id, different payload %r" % change)
        for kind in ("imp", "conv"):
            evs = self._stream_events(kind, "idem-409-" + kind)
            self.assertEqual(len(evs), 1, "a 409 must not append: %r" % evs)
            self.assertEqual(evs[0]["data"].get("usuario_id"), "u1",
                             "the stored event must be the first one")

    def test_same_id_across_kinds(self):
        imp = self.post_ok("imp", {"id": "idem-shared", K_CAMPANA: "idem-x"})
        conv = self.post_ok("conv", {"id": "idem-shared", K_CAMPANA: "idem-x"})
        self.assertEqual(imp["id"], "idem-shared")
        self.assertEqual(conv["id"], "idem-shared")
        self.assertNotEqual(imp["position"], conv["position"],
                            "an impression and a conversion with one id are two events")
        self.assertEqual(len(self._stream_events("imp", "idem-shared")), 1)
        self.assertEqual(len(self._stream_events("conv", "idem-shared")), 1)
        # and each kind stays idempotent on its own
        self.assertEqual(self.post_ok("conv", {"id": "idem-shared", K_CAMPANA: "idem-x"}), conv)
        self.assertEqual(self.post_ok("imp", {"id": "idem-shared", K_CAMPANA: "idem-x"}), imp)

    def test_alias_is_the_same_payload(self):
        first = self.post_ok("imp", {"id": "idem-alias", K_CAMPANA: "idem-al"})
        again = self.post_ok("imp", {"id": "idem-alias", "campana_id": "idem-al"})
        self.assertEqual(again, first, "campana_id alias replay must be the same command")


if __name__ == "__main__":
    unittest.main()
