// History, stats, suppression and retention over a database filled by a
// scripted scenario (delivered, deferred then delivered, bounced, expired,
// suppressed, waiting), written through the store's own transactions at
// chosen times. The views and the `tern` commands are both checked; JSON
// and CSV outputs are parsed.

import Foundation
import GRDB
import Testing
@testable import TernStore

/// Builds the scenario; `t0` is one hour ago, so the waiting recipient is 30 minutes old.
struct Scenario {
    let store: Store
    let path: String
    let t0: Int64
    var ids: [String: (message: Int64, recipient: Int64)] = [:]

    init() async throws {
        path = try tempFolder().appendingPathComponent("history.sqlite").path
        store = try Store(path: path)
        t0 = nowMillis() - 3_600_000
    }

    mutating func message(_ tag: String, from: String = "news@sender.test", to rcpt: String, at: Int64) async throws {
        let domain = String(rcpt.split(separator: "@")[1])
        let m = NewMessage(queueID: "Q\(tag)", receivedAt: at, mailFrom: from, body: Data("Subject: \(tag)\r\n\r\nx\r\n".utf8),
                           clientAddress: "192.0.2.1", helo: "c.test", headerMessageID: "\(tag)@sender.test", envID: nil, ret: nil,
                           bodyType: nil, smtputf8: false, origin: "smtp",
                           recipients: [NewRecipient(address: rcpt, domain: domain)])
        let id = try await store.insertMessage(m)
        let rid = try store.read { db in try Int64.fetchOne(db, sql: "SELECT id FROM recipient WHERE message_id = ?", arguments: [id])! }
        ids[tag] = (id, rid)
    }

    /// One attempt and the transition it causes, in one transaction (as the scheduler records them).
    func attempt(_ tag: String, at: Int64, seconds: Int64 = 1, mx: String?, tls: String? = "TLSv1.3", code: Int, enhanced: String,
                 text: String, state: RecipientState, suppress: Bool = false) async throws {
        let (m, r) = ids[tag]!
        var b = OutcomeBatch(at: at + seconds * 1000)
        let outcome: AttemptOutcome = code < 400 ? .delivered : code < 500 ? .deferred : .bounced
        if mx != nil || state != .expired {
            b.attempts.append(NewAttempt(recipientID: r, startedAt: at, endedAt: at + seconds * 1000, mxHost: mx, mxAddress: mx == nil ? nil : "192.0.2.25",
                                         tls: tls, code: code, enhanced: enhanced, text: text, outcome: outcome, category: nil))
        }
        b.transitions.append(RecipientTransition(recipientID: r, messageID: m, state: state,
                                                 nextAttemptAt: state == .deferred ? at + 300_000 : nil, countsAsAttempt: true,
                                                 code: code, enhanced: enhanced, text: text, event: EventKind(state)))
        if suppress {
            let address = try store.read { db in try String.fetchOne(db, sql: "SELECT address FROM recipient WHERE id = ?", arguments: [r])! }
            b.suppressions.append((Suppression(address: address, reason: "\(code) \(enhanced) \(text)", source: "bounce", createdAt: at), r, m))
        }
        try await store.record(b)
    }

    func suppressed(_ tag: String, at: Int64) async throws {
        let (m, r) = ids[tag]!
        var b = OutcomeBatch(at: at)
        b.transitions.append(RecipientTransition(recipientID: r, messageID: m, state: .suppressed, nextAttemptAt: nil, countsAsAttempt: false,
                                                 code: 550, enhanced: "5.7.1", text: "recipient address is suppressed", event: .suppressed))
        try await store.record(b)
    }

    static func build() async throws -> Scenario {
        var s = try await Scenario()
        let t = s.t0
        try await s.message("1", to: "ann@gmail.test", at: t)
        try await s.attempt("1", at: t + 1_000, seconds: 2, mx: "mx1.gmail.test", code: 250, enhanced: "2.0.0", text: "ok", state: .delivered)
        try await s.message("2", to: "bob@slow.test", at: t + 10_000)
        try await s.attempt("2", at: t + 11_000, mx: "mx.slow.test", tls: nil, code: 451, enhanced: "4.7.1", text: "greylisted", state: .deferred)
        try await s.attempt("2", at: t + 311_000, seconds: 3, mx: "mx.slow.test", tls: nil, code: 250, enhanced: "2.0.0", text: "ok", state: .delivered)
        try await s.message("3", to: "carl@gmail.test", at: t + 20_000)
        try await s.attempt("3", at: t + 21_000, mx: "mx1.gmail.test", code: 550, enhanced: "5.1.1", text: "no such user", state: .bounced, suppress: true)
        try await s.message("4", to: "dora@old.test", at: t + 30_000)
        try await s.attempt("4", at: t + 31_000, mx: "mx.old.test", tls: nil, code: 421, enhanced: "4.4.2", text: "timeout", state: .deferred)
        try await s.attempt("4", at: t + 331_000, mx: "mx.old.test", tls: nil, code: 421, enhanced: "4.4.2", text: "timeout", state: .deferred)
        try await s.attempt("4", at: t + 631_000, mx: "mx.old.test", tls: nil, code: 421, enhanced: "4.4.7", text: "timeout", state: .expired)
        try await s.message("5", to: "Carl@gmail.test", at: t + 40_000)
        try await s.suppressed("5", at: t + 41_000)
        try await s.message("6", to: "erin@x.test", at: t + 50_000)
        try await s.attempt("6", at: t + 51_000, mx: "mx.x.test", code: 550, enhanced: "5.2.1", text: "mailbox disabled", state: .bounced)
        try await s.message("7", to: "erin@x.test", at: t + 60_000)
        try await s.attempt("7", at: t + 61_000, mx: "mx.x.test", code: 550, enhanced: "5.2.1", text: "mailbox disabled", state: .bounced)
        try await s.message("8", to: "info@slow.test", at: t + 1_800_000) // waiting, 30 minutes old
        return s
    }
}

func ternJSON(_ args: [String]) throws -> Any {
    let r = try runProgram(try ternBinary(), args)
    #expect(r.status == 0, "\(args): \(r.stderr)")
    return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
}

/// The histogram bucket bound the CLI reports for an exact value.
func bucketBound(_ exact: Double?, seconds: Bool) -> Double? {
    guard let exact else { return nil }
    let bounds: [Double] = seconds
        ? [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400, 172_800, 432_000]
        : [50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 60000, 120_000, 300_000].map { $0 / 1000 }
    return bounds.first { exact <= $0 } ?? bounds.last
}

@Suite(.serialized) struct HistoryTests {
    @Test func rollupsMatchARebuildFromTheRawRows() async throws {
        let s = try await Scenario.build()
        defer { s.store.close() }
        // An operator deletes a delivered and a waiting recipient: the rollups follow.
        _ = try await s.store.delete(.queueID("Q1"), now: nowMillis())
        _ = try await s.store.delete(.queueID("Q8"), now: nowMillis())
        let kept = try rollupSnapshot(s.store)
        #expect(kept.contains { $0.hasPrefix("recipient_daily") } && kept.contains { $0.hasPrefix("attempt_daily") })
        try await s.store.rebuildRollups()
        #expect(try rollupSnapshot(s.store) == kept)
    }

    @Test func viewsDescribeTheScenario() async throws {
        let s = try await Scenario.build()
        defer { s.store.close() }
        let rows = try s.store.read { db in try Row.fetchAll(db, sql: "SELECT * FROM delivery_history ORDER BY queue_id") }
        #expect(rows.count == 8)
        let bob = try #require(rows.first { $0["recipient"] as String == "bob@slow.test" })
        #expect(bob["state"] as String == "delivered" && bob["attempts"] as Int == 2 && bob["final_code"] as Int == 250)
        #expect(bob["mx_host"] as String == "mx.slow.test" && bob["first_attempt_at"] as Int64 == s.t0 + 11_000)
        #expect(bob["last_attempt_at"] as Int64 == s.t0 + 311_000)
        #expect(bob["seconds_to_deliver"] as Double == 304.0)
        let ann = try #require(rows.first { $0["recipient"] as String == "ann@gmail.test" })
        #expect(ann["tls"] as String == "TLSv1.3" && ann["seconds_to_deliver"] as Double == 3.0)

        let domains = try s.store.read { db in try Row.fetchAll(db, sql: "SELECT * FROM domain_stats ORDER BY domain") }
        let slow = try #require(domains.first { $0["domain"] as String == "slow.test" })
        #expect(slow["recipients"] as Int == 2 && slow["delivered"] as Int == 1 && slow["waiting"] as Int == 1)
        #expect(slow["attempts"] as Int == 2 && slow["deferral_rate"] as Double == 0.5 && slow["delivery_rate"] as Double == 1.0)
        #expect(slow["top_deferral"] as String == "451 4.7.1 greylisted" && slow["median_seconds"] as Double == 304.0)
        let gmail = try #require(domains.first { $0["domain"] as String == "gmail.test" })
        #expect(gmail["bounced"] as Int == 1 && gmail["suppressed"] as Int == 1 && gmail["delivery_rate"] as Double == 0.5)
        let old = try #require(domains.first { $0["domain"] as String == "old.test" })
        #expect(old["expired"] as Int == 1 && old["deferral_rate"] as Double == 1.0 && old["top_deferral"] as String == "421 4.4.2 timeout")

        let hosts = try s.store.read { db in try Row.fetchAll(db, sql: "SELECT * FROM mx_stats ORDER BY mx_host") }
        #expect(hosts.map { $0["mx_host"] as String } == ["mx.old.test", "mx.slow.test", "mx.x.test", "mx1.gmail.test"])
        let g = hosts[3]
        #expect(g["attempts"] as Int == 2 && g["success_rate"] as Double == 0.5 && g["tls_share"] as Double == 1.0)
        #expect(g["last_error"] as String == "550 5.1.1 no such user")
        #expect(hosts[1]["tls_share"] as Double == 0.0 && hosts[1]["mean_session_seconds"] as Double == 2.0)

        let shape = try s.store.read { db in try Row.fetchAll(db, sql: "SELECT * FROM queue_shape") }
        #expect(shape.count == 1 && shape[0]["domain"] as String == "slow.test" && shape[0]["20-40m"] as Int == 1 && shape[0]["total"] as Int == 1)
    }

    @Test func windowedQueriesAgreeWithTheViews() async throws {
        let s = try await Scenario.build()
        defer { s.store.close() }
        let viewRows = try s.store.read { db in try Row.fetchAll(db, sql: "SELECT * FROM domain_stats") }
        let computed = try s.store.domainStats(.all)
        #expect(computed.count == viewRows.count)
        for v in viewRows {
            let c = try #require(computed.first { $0.domain == v["domain"] as String })
            #expect(c.recipients == v["recipients"] as Int && c.delivered == v["delivered"] as Int && c.bounced == v["bounced"] as Int)
            #expect(c.expired == v["expired"] as Int && c.suppressed == v["suppressed"] as Int && c.waiting == v["waiting"] as Int)
            #expect(c.attempts == v["attempts"] as Int && c.deliveryRate == v["delivery_rate"] as Double?)
            #expect(c.deferralRate == v["deferral_rate"] as Double? && c.topDeferral == v["top_deferral"] as String?)
            // Percentiles: the upper bound of the histogram bucket that holds the exact value.
            #expect(c.medianSeconds == bucketBound(v["median_seconds"] as Double?, seconds: true))
            #expect(c.p95Seconds == bucketBound(v["p95_seconds"] as Double?, seconds: true))
        }
        let mxView = try s.store.read { db in try Row.fetchAll(db, sql: "SELECT * FROM mx_stats") }
        let mx = try s.store.mxStats(.all, now: nowMillis())
        #expect(mx.count == mxView.count)
        for v in mxView {
            let c = try #require(mx.first { $0.host == v["mx_host"] as String })
            #expect(c.attempts == v["attempts"] as Int && c.successRate == v["success_rate"] as Double && c.tlsShare == v["tls_share"] as Double)
            #expect(c.meanSessionSeconds == v["mean_session_seconds"] as Double)
            #expect(c.p95SessionSeconds == bucketBound(v["p95_session_seconds"] as Double?, seconds: false))
            #expect(c.lastError == v["last_error"] as String?)
        }
        // A window that holds only the first message.
        let first = try s.store.domainStats(TimeWindow(since: s.t0, until: s.t0 + 5_000))
        #expect(first.map(\.domain) == ["gmail.test"] && first[0].recipients == 1 && first[0].delivered == 1)
    }

    @Test func historyCommand() async throws {
        let s = try await Scenario.build()
        s.store.close()
        let bob = try #require(try ternJSON(["history", "--db", s.path, "--rcpt", "bob@slow.test", "--format", "json"]) as? [[String: Any]])
        #expect(bob.count == 1)
        let timeline = try #require(bob[0]["timeline"] as? [[String: Any]])
        #expect(timeline.map { $0["kind"] as? String } == ["received", "attempt", "attempt"])
        #expect(timeline.map { $0["outcome"] as? String } == [nil, "deferred", "delivered"])
        #expect(timeline[1]["text"] as? String == "greylisted" && timeline[2]["mx_host"] as? String == "mx.slow.test")
        #expect(bob[0]["seconds_to_deliver"] as? Double == 304.0 && bob[0]["state"] as? String == "delivered")

        let gmail = try #require(try ternJSON(["history", "--db", s.path, "--domain", "gmail.test", "--format", "json"]) as? [[String: Any]])
        #expect(gmail.map { $0["state"] as? String } == ["suppressed", "bounced", "delivered"]) // newest first
        let suppressedTimeline = try #require(gmail[0]["timeline"] as? [[String: Any]])
        #expect(suppressedTimeline.map { $0["kind"] as? String } == ["received", "suppressed"])
        let bounced = try #require(gmail[1]["timeline"] as? [[String: Any]])
        #expect(bounced.map { $0["kind"] as? String } == ["received", "attempt", "suppression_added"])

        let byState = try #require(try ternJSON(["history", "--db", s.path, "--state", "expired", "--format", "json"]) as? [[String: Any]])
        #expect(byState.map { $0["recipient"] as? String } == ["dora@old.test"])
        let byMessage = try #require(try ternJSON(["history", "--db", s.path, "--message", "Q6", "--format", "json"]) as? [[String: Any]])
        #expect(byMessage.map { $0["recipient"] as? String } == ["erin@x.test"])
        // By the Message-ID header, with or without its angle brackets.
        for id in ["6@sender.test", "<6@sender.test>"] {
            let byMessageID = try #require(try ternJSON(["history", "--db", s.path, "--message-id", id, "--format", "json"]) as? [[String: Any]])
            #expect(byMessageID.map { $0["recipient"] as? String } == ["erin@x.test"])
        }
        let nobody = try #require(try ternJSON(["history", "--db", s.path, "--message-id", "none@sender.test", "--format", "json"]) as? [Any])
        #expect(nobody.isEmpty)
        let bySender = try #require(try ternJSON(["history", "--db", s.path, "--from", "news@sender.test", "--limit", "3", "--format", "json"]) as? [[String: Any]])
        #expect(bySender.count == 3)
        let windowed = try #require(try ternJSON(["history", "--db", s.path, "--since", String(s.t0 + 55_000), "--format", "json"]) as? [[String: Any]])
        #expect(windowed.map { $0["recipient"] as? String } == ["info@slow.test", "erin@x.test"])

        let text = try runProgram(try ternBinary(), ["history", "--db", s.path, "--rcpt", "bob@slow.test"])
        #expect(text.stdout.hasPrefix("Q2  <news@sender.test> → <bob@slow.test>  delivered, 2 attempts, delivered in 304.0 s\n"))
        #expect(text.stdout.contains("deferred via mx.slow.test[192.0.2.25] in 1.00 s: 451 4.7.1 greylisted"))
        let csv = try runProgram(try ternBinary(), ["history", "--db", s.path, "--rcpt", "bob@slow.test", "--format", "csv"])
        let lines = csv.stdout.split(separator: "\r\n")
        #expect(lines.count == 4 && lines[0].hasPrefix("queue_id,sender,recipient,state,at,step"))
        #expect(try runProgram(try ternBinary(), ["history", "--db", s.path, "--since", "yesterday"]).status == 64)
    }

    @Test func statsCommands() async throws {
        let s = try await Scenario.build()
        s.store.close()
        let routes = try #require(try ternJSON(["stats", "routes", "--db", s.path, "--since", "2h", "--format", "json"]) as? [String: Any])
        let domains = try #require(routes["domains"] as? [[String: Any]])
        let slow = try #require(domains.first { $0["domain"] as? String == "slow.test" })
        #expect(slow["deferral_rate"] as? Double == 0.5 && slow["median_seconds"] as? Double == 600.0) // 304 s is in the 300-600 bucket
        #expect(slow["mx_hosts"] as? [String] == ["mx.slow.test"] && slow["top_deferral"] as? String == "451 4.7.1 greylisted")
        let hosts = try #require(routes["mx_hosts"] as? [[String: Any]])
        let x = try #require(hosts.first { $0["mx_host"] as? String == "mx.x.test" })
        #expect(x["attempts"] as? Int == 2 && x["success_rate"] as? Double == 0.0 && x["domains"] as? [String] == ["x.test"])
        // Nothing in a window in the future.
        let empty = try #require(try ternJSON(["stats", "routes", "--db", s.path, "--since", String(nowMillis() + 3_600_000),
                                                "--until", String(nowMillis() + 7_200_000), "--format", "json"]) as? [String: Any])
        #expect((empty["domains"] as? [Any])?.isEmpty == true)

        let queue = try #require(try ternJSON(["stats", "queue", "--db", s.path, "--format", "json"]) as? [[String: Any]])
        #expect(queue.count == 1 && queue[0]["domain"] as? String == "slow.test" && queue[0]["20-40m"] as? Int == 1)
        let queueText = try runProgram(try ternBinary(), ["stats", "queue", "--db", s.path])
        #expect(queueText.stdout.hasPrefix("DOMAIN     TOTAL  0-5m  5-10m  10-20m  20-40m  40-80m  80-160m  160m+\nTOTAL      1"))

        let rec = try #require(try ternJSON(["stats", "recipients", "--db", s.path, "--format", "json"]) as? [String: Any])
        #expect(rec["recipients"] as? Int == 8 && rec["suppressed"] as? Int == 1)
        let roles = try #require(rec["role_accounts"] as? [[String: Any]])
        #expect(roles.count == 1 && roles[0]["role"] as? String == "info")
        let repeated = try #require(rec["repeated_bounces"] as? [[String: Any]])
        #expect(repeated.map { $0["address"] as? String } == ["erin@x.test"] && repeated[0]["count"] as? Int == 2)
        #expect(repeated[0]["last_reply"] as? String == "550 5.2.1 mailbox disabled")
        // erin (bounced twice) and dora? No: dora expired once. carl is suppressed already.
        let candidates = try #require(rec["suppression_candidates"] as? [[String: Any]])
        #expect(candidates.map { $0["address"] as? String } == ["erin@x.test"])
        let providers = try #require(rec["providers"] as? [[String: Any]])
        #expect(providers.first?["provider"] as? String == "gmail.test" && providers.first?["recipients"] as? Int == 3)
        let csv = try runProgram(try ternBinary(), ["stats", "recipients", "--db", s.path, "--format", "csv"])
        #expect(csv.stdout.contains("\r\nrepeated_bounce,erin@x.test,2,"))
        #expect(csv.stdout.contains("\r\nrole_account,info@,1,12.5%\r\n"))
        let table = try runProgram(try ternBinary(), ["stats", "routes", "--db", s.path])
        #expect(table.stdout.contains("Recipients received") && table.stdout.contains("mx1.gmail.test"))
    }

    @Test func suppressCommands() async throws {
        let s = try await Scenario.build()
        s.store.close()
        func tern(_ a: [String], stdin: String? = nil) throws -> ProcessResult { try runProgram(try ternBinary(), a + ["--db", s.path], stdin: stdin) }
        #expect(try tern(["suppress", "add", "zed@y.test", "Yan@y.test", "--reason", "asked us to stop", "--expires", "30d"]).stdout == "suppressed 2 addresses (2 new)\n")
        #expect(try tern(["suppress", "add", "not-an-address"]).status == 65)
        let list = try #require(try ternJSON(["suppress", "list", "--db", s.path, "--format", "json"]) as? [[String: Any]])
        #expect(Set(list.compactMap { $0["address"] as? String }) == ["carl@gmail.test", "zed@y.test", "Yan@y.test"])
        #expect(list.first { $0["address"] as? String == "carl@gmail.test" }?["source"] as? String == "bounce")
        let expires = try #require(list.first { $0["address"] as? String == "zed@y.test" }?["expires_at"] as? Int64)
        #expect(abs(expires - (nowMillis() + 30 * 86_400_000)) < 60_000)
        // Import: plain lines and CSV with a header; a bad line stops everything.
        let file = try tempFolder().appendingPathComponent("list.csv")
        try Data("address,reason\n# comment\nuno@z.test,x\n\n\"dos@z.test\",y\nYAN@y.test\n".utf8).write(to: file)
        #expect(try tern(["suppress", "import", file.path]).stdout == "imported 3 addresses (2 new)\n")
        try Data("ok@z.test\nbad line\n".utf8).write(to: file)
        let bad = try tern(["suppress", "import", file.path])
        #expect(bad.status == 65 && bad.stderr.contains(":2: bad address"))
        #expect(try tern(["suppress", "import", "-"], stdin: "tres@z.test\n").status == 0)
        let export = try tern(["suppress", "export"])
        #expect(export.stdout.hasPrefix("address,reason,source,created_at,expires_at\r\n"))
        #expect(export.stdout.split(separator: "\r\n").count == 1 + 6)
        #expect(try tern(["suppress", "remove", "ZED@y.test", "nobody@y.test"]).status == 67) // one of two was there
        #expect(try tern(["suppress", "list", "--search", "zed"]).stdout.contains("0 entries"))
    }

    @Test func pruneNeverTouchesLiveMail() async throws {
        let s = try await Scenario.build()
        // Age the scenario by 100 days: everything is older than both limits.
        try s.store.writeDirect { db in
            let d: Int64 = 100 * 86_400_000
            try db.execute(sql: "UPDATE message SET received_at = received_at - ?", arguments: [d])
            try db.execute(sql: "UPDATE recipient SET created_at = created_at - ?, final_at = final_at - ?", arguments: [d, d])
            try db.execute(sql: "UPDATE attempt SET started_at = started_at - ?, ended_at = ended_at - ?", arguments: [d, d])
            try db.execute(sql: "UPDATE event SET at = at - ?", arguments: [d])
        }
        // One finished message only 10 days old: its body goes, its history stays.
        try s.store.writeDirect { db in
            let back: Int64 = 90 * 86_400_000
            try db.execute(sql: "UPDATE message SET received_at = received_at + ? WHERE queue_id = 'Q1'", arguments: [back])
            try db.execute(sql: "UPDATE recipient SET final_at = final_at + ? WHERE message_id = (SELECT id FROM message WHERE queue_id = 'Q1')", arguments: [back])
        }
        s.store.close()
        let dry = try runProgram(try ternBinary(), ["prune", "--db", s.path, "--dry-run"])
        #expect(dry.stdout.hasPrefix("would prune: 7 bodies, 6 messages"), "\(dry.stdout)\(dry.stderr)")
        let run = try runProgram(try ternBinary(), ["prune", "--db", s.path])
        #expect(run.status == 0 && run.stdout.hasPrefix("pruned: 1 bodies, 6 messages"), "\(run.stdout)\(run.stderr)")
        let store = try Store(path: s.path)
        defer { store.close() }
        let left = try store.read { db in try Row.fetchAll(db, sql: "SELECT queue_id, body IS NULL FROM message ORDER BY queue_id") }
        #expect(left.map { $0[0] as String } == ["Q1", "Q8"])
        #expect(left[0][1] as Bool == true)   // finished: body pruned, history kept
        #expect(left[1][1] as Bool == false)  // still waiting: untouched, 100 days old or not
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM attempt") } == 1)
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event WHERE message_id = (SELECT id FROM message WHERE queue_id = 'Q8')") } == 1)
        let doctor = try runProgram(try ternBinary(), ["doctor", "--db", s.path])
        #expect(doctor.status == 0, "\(doctor.stdout)")
    }
}
