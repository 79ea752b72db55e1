import Foundation
import GRDB
import Testing
import TernStore
import TernTestSupport

/// Issue 20: the dashboard in headless Chromium (interop/dashboard_check.py
/// drives it through the remote debugging protocol): login, the queue and
/// history of a scripted run, the live rate, no console errors, usable on a
/// phone and a wide screen. Screenshots stay under .build/ (CI artefacts).
@Suite(.serialized) struct DashboardTests {
    @Test func theDashboardRendersAScriptedRunInChromiumWithoutConsoleErrors() async throws {
        guard ["/usr/bin/chromium", "/usr/bin/chromium-browser"].contains(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            Issue.record("chromium is not installed; run .ci/run or `make test-deps` (this test never skips)")
            return
        }
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let (_, db, tern) = try APIBinaryTests.migratedDatabase()
        let token = try APIBinaryTests.token(tern, db, "viewer", "read")
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test", "--http", "127.0.0.1:0",
                                      "--route", "dest.test=127.0.0.1:\(sink.port)", "--route", "*=127.0.0.1:9"])
        let port = try await serve.port()
        let base = "http://127.0.0.1:\(try await serve.httpPort())"
        // A scripted run: delivered, refused (550), and deferred (451).
        for r in ["ok1", "ok2", "ok3", "perm1", "temp1"] {
            let c = try RawClient(port: port)
            _ = try c.readReply()
            _ = try c.command("EHLO client.test")
            #expect(try c.sendMessage(from: "ann@sender.test", to: ["\(r)@dest.test"], body: "Subject: dash\r\n\r\nhello\r\n").status == "250 2.0.0")
        }
        let store = try Store(path: db)
        defer { store.close() }
        func count(_ sql: String) throws -> Int { try store.read { db in try Int.fetchOne(db, sql: sql) ?? -1 } }
        #expect(await eventually { try count("SELECT count(*) FROM attempt WHERE outcome = 'deferred'") >= 1 && count("SELECT count(*) FROM recipient WHERE state = 'bounced'") == 1 })
        let queueID = try #require(try store.read { db in
            try String.fetchOne(db, sql: "SELECT m.queue_id FROM message m JOIN recipient r ON r.message_id = m.id WHERE r.address = 'temp1@dest.test'")
        })
        let out = repoRoot.appendingPathComponent(".build/dashboard-screenshots")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let script = repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/dashboard_check.py").path
        let r = try await runProgramOffPool("/usr/bin/python3", [script, base, token, queueID, out.path])
        let result = try #require(try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)\(r.stderr)")
        #expect(result["login_form"] as? Bool == true && result["wrong_token_refused"] as? Bool == true && result["logged_in"] as? Bool == true, "\(result)")
        #expect((result["sections"] as? [String])?.count == 5, "\(result)")
        #expect(Double(result["rate_text"] as? String ?? "") != nil, "the live rate never updated: \(result)")
        #expect((result["spark_bars"] as? Int ?? 0) >= 1)
        let found = result["search_text"] as? String ?? ""
        #expect(found.contains("temp1@dest.test") && found.contains("deferred"), "\(found)")
        #expect(result["overflow_phone"] as? Bool == false && result["overflow_wide"] as? Bool == false, "\(result)")
        #expect((result["console_errors"] as? [String]) == [], "\(result)")
        for shot in result["screenshots"] as? [String] ?? [] {
            #expect(((try? FileManager.default.attributesOfItem(atPath: shot)[.size] as? Int) ?? 0) > 10_000, "\(shot)")
        }
        #expect((result["screenshots"] as? [String])?.count == 2)
        #expect(await serve.terminate() == 0)
    }
}
