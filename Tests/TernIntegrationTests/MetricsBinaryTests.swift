import Foundation
import GRDB
import Testing
import TernStore
import TernTestSupport

/// Issue 20 (first part): `tern serve --http` with bearer tokens, `/health`
/// and `/metrics`, checked by programs nobody here wrote (curl, and
/// Prometheus' own `promtool check metrics`), and the counters against
/// what the database says happened.
@Suite(.serialized) struct MetricsBinaryTests {
    func curl(_ args: [String]) throws -> ProcessResult {
        try runProgram("/usr/bin/curl", ["-s", "-S", "--max-time", "10"] + args)
    }

    /// The value of one sample (`name{labels}`) in an exposition, or nil.
    func sample(_ text: String, _ series: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last!) }
    }

    @Test func metricsAreServedToTokensOnlyPassPromtoolAndAgreeWithTheDatabase() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let tern = try ternBinary()
        #expect(try runProgram(tern, ["migrate", "--db", db]).status == 0)
        let add = try runProgram(tern, ["api", "token", "add", "prometheus", "--scope", "read", "--db", db])
        #expect(add.status == 0, "\(add.stderr)")
        let token = try #require(add.stdout.split(separator: "\n").last.map(String.init))
        #expect(token.hasPrefix("tern_") && token.count > 40)
        let injectOnly = try #require(try runProgram(tern, ["api", "token", "add", "app", "--scope", "inject", "--db", db]).stdout
            .split(separator: "\n").last.map(String.init))
        #expect(try runProgram(tern, ["api", "token", "add", "app", "--db", db]).status == 65)
        // Only the hash is stored.
        let store = try Store(path: db)
        defer { store.close() }
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM api_token WHERE token_hash = ?", arguments: [token]) } == 0)

        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test", "--http", "127.0.0.1:0",
                                      "--route", "dest.test=127.0.0.1:\(sink.port)", "--route", "*=127.0.0.1:9"])
        let port = try await serve.port()
        let http = "http://127.0.0.1:\(try await serve.httpPort())"
        // /health needs nothing; /metrics a token of scope read or more.
        let health = try curl(["-i", "\(http)/health"])
        #expect(health.stdout.hasPrefix("HTTP/1.1 200") && health.stdout.hasSuffix("ok\n"), "\(health.stdout)")
        let anonymous = try curl(["-i", "\(http)/metrics"])
        #expect(anonymous.stdout.hasPrefix("HTTP/1.1 401") && anonymous.stdout.lowercased().contains("www-authenticate: bearer"), "\(anonymous.stdout)")
        #expect(try curl(["-i", "-H", "Authorization: Bearer tern_wrong", "\(http)/metrics"]).stdout.hasPrefix("HTTP/1.1 401"))
        #expect(try curl(["-i", "-H", "Authorization: Bearer \(injectOnly)", "\(http)/metrics"]).stdout.hasPrefix("HTTP/1.1 403"))

        // A scripted run: 5 delivered, 2 refused by the sink (550: bounced, each with a DSN that waits for a dead route).
        for (i, rcpt) in ["ok1", "ok2", "ok3", "ok4", "ok5", "perm1", "perm2"].enumerated() {
            let c = try RawClient(port: port)
            _ = try c.readReply()
            _ = try c.command("EHLO client.test")
            #expect(try c.sendMessage(from: "ann@sender.test", to: ["\(rcpt)@dest.test"], body: "Subject: \(i)\r\n\r\nhello\r\n").status == "250 2.0.0")
        }
        func count(_ sql: String) throws -> Int { try store.read { db in try Int.fetchOne(db, sql: sql) ?? -1 } }
        #expect(await eventually {
            try count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 5 && count("SELECT count(*) FROM recipient WHERE state = 'bounced'") == 2
        })
        #expect(await eventually { try count("SELECT count(*) FROM attempt WHERE outcome = 'deferred'") >= 2 }) // the DSNs' first tries
        try await Task.sleep(for: .milliseconds(300))
        let scrape = try curl(["-H", "Authorization: Bearer \(token)", "\(http)/metrics"])
        #expect(scrape.status == 0)
        let text = scrape.stdout
        // Prometheus' own linter.
        let check = try runProgram("/usr/bin/promtool", ["check", "metrics"], stdin: text)
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)\n\(text)")
        // The counters say what the database says.
        #expect(sample(text, "tern_messages_received_total{origin=\"smtp\"}") == 7, "\(text)")
        #expect(sample(text, "tern_recipients_total{outcome=\"delivered\",provider=\"other\"}") == Double(try count("SELECT count(*) FROM recipient WHERE state = 'delivered'")))
        #expect(sample(text, "tern_recipients_total{outcome=\"bounced\",provider=\"other\"}") == Double(try count("SELECT count(*) FROM recipient WHERE state = 'bounced'")))
        #expect(sample(text, "tern_recipients_total{outcome=\"deferred\",provider=\"other\"}") == Double(try count("SELECT count(*) FROM attempt WHERE outcome = 'deferred'")))
        #expect(sample(text, "tern_smtp_connections_total{listener=\"relay\"}") == 7)
        #expect(sample(text, "tern_queue_recipients{state=\"deferred\"}") == Double(try count("SELECT count(*) FROM recipient WHERE state = 'deferred'")))
        #expect(sample(text, "tern_queue_time_seconds_count") == 5)
        // No body read back for sending is held once the mail is settled.
        #expect(sample(text, "tern_delivery_body_memory_bytes") == 0, "\(text)")
        #expect(sample(text, "tern_delivery_body_memory_waits_total") == 0)
        #expect((sample(text, "tern_database_bytes") ?? 0) > 0 && (sample(text, "tern_disk_free_bytes") ?? 0) > 0)
        #expect(text.contains("# HELP tern_store_commit_duration_seconds ") && text.contains("tern_store_commit_batch_size_bucket{le=\"1.0\"}"))
        // The token's use is noted; removing it locks it out at once.
        #expect(await eventually { try count("SELECT count(*) FROM api_token WHERE name = 'prometheus' AND last_used_at IS NOT NULL") == 1 })
        let list = try runProgram(tern, ["api", "token", "list", "--format", "json", "--db", db])
        #expect(list.stdout.contains("\"name\":\"prometheus\"") && !list.stdout.contains(token))
        #expect(try runProgram(tern, ["api", "token", "remove", "prometheus", "--db", db]).status == 0)
        #expect(try curl(["-i", "-H", "Authorization: Bearer \(token)", "\(http)/metrics"]).stdout.hasPrefix("HTTP/1.1 401"))
        #expect(try runProgram(tern, ["api", "token", "remove", "prometheus", "--db", db]).status == 67)
        let status = await serve.terminate()
        #expect(status == 0, "\(serve.log.split(separator: "\n").suffix(8).joined(separator: "\n"))")
    }
}
