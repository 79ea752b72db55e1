import Foundation
import Testing
@testable import TernHTTP
import TernStore

/// The injection API's pure request handling: field-naming refusals, the
/// built MIME, substitutions without header injection, and the limits.
@Suite struct InjectionTests {
    let limits = InjectionLimits(maxMessageSize: 10_000, maxRecipients: 3)

    func parse(_ json: String) throws(InjectionError) -> InjectionRequest {
        try InjectionRequest.parse(Array(json.utf8), limits: limits)
    }

    func refusal(_ json: String) -> InjectionError? {
        do {
            let r = try parse(json)
            _ = try r.messages(limits: limits)
            return nil
        } catch {
            return error
        }
    }

    @Test func badRequestsNameTheFieldAtFault() {
        let cases: [(String, String?, Int)] = [
            ("not json", nil, 400),
            ("[1]", nil, 400),
            (#"{"recipients": [{"email": "a@b.test"}], "content": "From: a@b.test\n\nx"}"#, "envelope_sender", 400),
            (#"{"envelope_sender": 5, "recipients": [], "content": "x"}"#, "envelope_sender", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [], "content": "x"}"#, "recipients", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "ok@b.test"}, {"email": "nope"}], "content": "x"}"#, "recipients[1].email", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test", "x": 1}], "content": "x"}"#, "recipients[0].x", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "1@b.test"}, {"email": "2@b.test"}, {"email": "3@b.test"}, {"email": "4@b.test"}], "content": "x"}"#, "recipients", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}]}"#, "content", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": "Subject: no from\n\nbody"}"#, "content", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": "no header line\n\nbody"}"#, "content", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": {"subject": "x", "text_body": "y"}}"#, "content.from", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": {"from": "a@b.test"}}"#, "content.text_body", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": {"from": "a@b.test", "text_body": "y", "headers": {"X-A": "1\r\nBcc: evil@x.test"}}}"#, "content.headers.X-A", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": {"from": "a@b.test", "text_body": "y", "headers": {"Bad Name": "1"}}}"#, "content.headers.Bad Name", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": {"from": "a@b.test", "text_body": "y", "attachments": [{"data": "!!", "base64": true}]}}"#, "content.attachments[0].data", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test", "substitutions": {"a b": "x"}}], "content": "x"}"#, "recipients[0].substitutions.a b", 400),
            (#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": "x", "extra": 1}"#, "extra", 400),
        ]
        for (json, field, status) in cases {
            let e = refusal(json)
            #expect(e != nil, "accepted: \(json)")
            #expect(e?.field == field, "\(json): \(String(describing: e))")
            #expect(e?.status == status, "\(json)")
        }
    }

    @Test func oversizeIs413AndLongLinesAreRefused() {
        let big = String(repeating: "0123456789\\n", count: 1_000)
        let e = refusal(#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": "From: a@b.test\n\n\#(big)"}"#)
        #expect(e?.status == 413 && e?.field == "content")
        let long = String(repeating: "x", count: 999)
        #expect(refusal(#"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@b.test"}], "content": "From: a@b.test\n\n\#(long)"}"#)?.field == "content")
    }

    @Test func rawContentWithoutSubstitutionsIsOneMessageWithCRLFLines() throws {
        let r = try parse(#"{"envelope_sender": "", "recipients": [{"email": "a@b.test"}, {"email": "c@d.test"}], "content": "From: x@y.test\nSubject: s\r\n\nline\rtwo"}"#)
        #expect(r.sender == nil)
        let m = try r.messages(limits: limits)
        #expect(m.count == 1 && m[0].recipients.count == 2)
        #expect(String(decoding: m[0].body, as: UTF8.self) == "From: x@y.test\r\nSubject: s\r\n\r\nline\r\ntwo\r\n")
    }

    @Test func theSimpleFormBuildsOneMIMEMessagePerRecipientWithSubstitutions() throws {
        let r = try parse("""
            {"envelope_sender": "news@b.test",
             "recipients": [{"email": "ann@c.test", "name": "Ann Ö", "substitutions": {"first": "Ann\\r\\nBcc: evil@x.test"}}, {"email": "bob@c.test"}],
             "substitutions": {"first": "friend", "offer": 10},
             "content": {"from": {"email": "news@b.test", "name": "News, Inc."}, "subject": "Hello {{ first }}: {{offer}} % off",
                         "text_body": "Hi {{ first }} =\\nbye", "html_body": "<p>{{ first }}</p>", "headers": {"X-Campaign": "c{{offer}}"},
                         "attachments": [{"file_name": "a.txt", "content_type": "text/plain", "data": "aGVsbG8=", "base64": true}]}}
            """)
        let m = try r.messages(limits: limits) { "B" }
        #expect(m.count == 2)
        let ann = String(decoding: m[0].body, as: UTF8.self)
        let bob = String(decoding: m[1].body, as: UTF8.self)
        // The header never gains a field from a value (a body keeps its line breaks).
        let annHeader = ann.components(separatedBy: "\r\n\r\n")[0]
        #expect(!annHeader.contains("\r\nBcc:") && ann.contains("Hi Ann\r\nBcc: evil@x.test =3D\r\nbye"))
        #expect(ann.contains("Subject: Hello Ann  Bcc: evil@x.test: 10 % off\r\n"), "\(ann)")
        #expect(ann.contains("From: \"News, Inc.\" <news@b.test>\r\n"))
        #expect(ann.contains("To: =?utf-8?b?") && ann.contains("<ann@c.test>\r\n"))
        #expect(bob.contains("To: <bob@c.test>\r\n") && bob.contains("Subject: Hello friend: 10 % off\r\n"))
        #expect(bob.contains("X-Campaign: c10\r\n") && bob.contains("MIME-Version: 1.0\r\n"))
        #expect(bob.contains("Content-Type: multipart/mixed; boundary=\"Bm\"") && bob.contains("Content-Type: multipart/alternative; boundary=\"Ba\""))
        #expect(bob.contains("Hi friend =3D\r\nbye") && bob.contains("<p>friend</p>"))
        #expect(bob.contains("Content-Disposition: attachment; filename=\"a.txt\"\r\n\r\naGVsbG8=\r\n"))
        #expect(bob.hasSuffix("--Bm--\r\n"))
        // Every line within 998 and CRLF-terminated.
        #expect(!bob.replacingOccurrences(of: "\r\n", with: "").contains("\n"))
    }

    @Test func quotedPrintableAndEncodedWords() {
        let qp = MIME.quotedPrintable(Array((String(repeating: "a", count: 80) + " \nx=é\t").utf8))
        let lines = qp.components(separatedBy: "\r\n")
        #expect(lines.allSatisfy { $0.utf8.count <= 76 }, "\(lines)")
        #expect(qp == String(repeating: "a", count: 75) + "=\r\naaaaa=20\r\nx=3D=C3=A9=09\r\n")
        let words = MIME.encodedWords(String(repeating: "é", count: 40), offset: 9)
        #expect(words.components(separatedBy: "\r\n ").allSatisfy { $0.hasPrefix("=?utf-8?b?") && $0.utf8.count <= 75 })
        #expect(MIME.encodedWords("plain subject", offset: 9) == "plain subject")
        #expect(MIME.address("a@b.test", name: "Jo \"J\" Doe") == "\"Jo \\\"J\\\" Doe\" <a@b.test>")
    }

    @Test func webhookSignatureIsHMACSHA256OverTimestampAndBody() {
        // Computed independently with Python's hmac module.
        #expect(WebhookPayload.signature(secret: "0123456789abcdef", body: Array(#"{"events":[]}"#.utf8), seconds: 1_700_000_000)
            == "t=1700000000,v1=1f1c43683e76ee83b09613ab56fa5bdd3ce55f3ee41db00a92e22eea0376899e")
        #expect([0, 1, 2, 3, 9, 10, 40].map { WebhookPayload.backoff(failures: $0, max: 300) } == [0, 1, 2, 4, 256, 300, 300])
    }

    @Test func webhookEventsAreNamedByTheirSubscriptionAndCarryReplyAndDetail() throws {
        #expect(WebhookEventType(kind: EventKind.shapingSuspended.rawValue) == .throttled)
        #expect(WebhookEventType(kind: EventKind.blocklistListed.rawValue) == .blocklisted)
        #expect(WebhookEventType(kind: EventKind.blocklistDelisted.rawValue) == nil)
        #expect(Set(WebhookEventType.allCases.flatMap(\.kinds)).count == 9)
        let throttled = WebhookEvent(outboxID: 1, eventID: 7, at: 1_700_000_000_000, kind: EventKind.shapingThrottled.rawValue,
                                     detail: #"{"destination":"google","reason":"421 4.7.28","factor":0.5,"until":1700000060000}"#)
        let t = try #require(try JSONSerialization.jsonObject(with: Data(WebhookPayload.json(throttled).text.utf8)) as? [String: Any])
        #expect(t["type"] as? String == "throttled" && t["event"] as? String == EventKind.shapingThrottled.rawValue && t["id"] as? Int == 7)
        #expect(t["time"] as? String == "2023-11-14T22:13:20.000Z" && t["recipient"] == nil && t["response"] == nil)
        let detail = try #require(t["detail"] as? [String: Any])
        #expect(detail["destination"] as? String == "google" && detail["factor"] as? Double == 0.5 && detail["until"] as? Int == 1_700_000_060_000)
        let bounced = WebhookEvent(outboxID: 2, eventID: 8, at: 1, kind: EventKind.bounced.rawValue, queueID: "Q", headerMessageID: "m@x",
                                   sender: "a@b.test", recipient: "r@c.test", state: RecipientState.bounced.rawValue, attempts: 2,
                                   code: 550, enhanced: "5.1.1", text: "No such user", mxHost: "mx.c.test", category: "invalid_recipient")
        let b = try #require(try JSONSerialization.jsonObject(with: Data(WebhookPayload.body([bounced]).map { $0 }))) as? [String: Any]
        let e = try #require((b?["events"] as? [[String: Any]])?.first)
        #expect(e["recipient"] as? String == "r@c.test" && e["queue_id"] as? String == "Q" && e["attempts"] as? Int == 2)
        let response = try #require(e["response"] as? [String: Any])
        #expect(response["code"] as? Int == 550 && response["enhanced"] as? String == "5.1.1" && response["category"] as? String == "invalid_recipient")
    }

    @Test func everyRouteIsInTheCommittedOpenAPIDocumentAndTheBinaryCarriesIt() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let committed = try String(contentsOf: root.appendingPathComponent("docs/openapi.json"), encoding: .utf8)
        #expect(committed == OpenAPIDocument.json + "\n" || committed == OpenAPIDocument.json, "run tools/gen-openapi")
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(committed.utf8)) as? [String: Any])
        let paths = try #require(doc["paths"] as? [String: [String: Any]])
        // Every route the sources register, with its method.
        var routes: [(String, String)] = []
        for file in ["HTTPServer.swift", "API.swift", "Admin.swift", "Dashboard.swift"] {
            let text = try String(contentsOf: root.appendingPathComponent("Sources/TernHTTP/\(file)"), encoding: .utf8)
            let re = try NSRegularExpression(pattern: #"router\.(get|post|delete|put)\("([^"]+)"\)"#)
            for m in re.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                let method = String(text[Range(m.range(at: 1), in: text)!])
                let path = String(text[Range(m.range(at: 2), in: text)!]).replacingOccurrences(of: #":(\w+)"#, with: "{$1}", options: .regularExpression)
                routes.append((method, path))
            }
        }
        #expect(routes.count >= 18)
        for (method, path) in routes {
            #expect(paths[path]?[method] != nil, "\(method.uppercased()) \(path) is not in docs/openapi.json")
        }
        #expect(paths.values.reduce(0) { $0 + $1.count } == routes.count, "docs/openapi.json documents a route the server does not have")
    }
}
