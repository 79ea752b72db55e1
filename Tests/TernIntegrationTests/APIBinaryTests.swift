import Foundation
import GRDB
import Testing
import TernStore
import TernTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Issue 20: the HTTP API of `tern serve`, driven by Python's urllib
/// (interop/api_client.py), webhooks received by Python's http.server
/// (interop/webhook_receiver.py, which checks every signature).
@Suite(.serialized) struct APIBinaryTests {
    struct Answer {
        var status: Int
        var headers: [String: String]
        var body: Any

        var object: [String: Any] { body as? [String: Any] ?? [:] }
        var error: [String: Any] { object["error"] as? [String: Any] ?? [:] }
        var items: [[String: Any]] { object["items"] as? [[String: Any]] ?? [] }
    }

    /// One request through Python's urllib.
    static func call(_ base: String, _ token: String?, _ method: String, _ path: String, _ body: String? = nil,
                     contentType: String? = nil) async throws -> Answer {
        let script = repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/api_client.py").path
        var args = [script, base, token ?? "-", method, path]
        if let body {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("tern-api-\(UUID().uuidString).json")
            try Data(body.utf8).write(to: file)
            args.append("@" + file.path)
        }
        if let contentType { args += ["--content-type", contentType] }
        let r = try await runProgramOffPool("/usr/bin/python3", args)
        guard r.status == 0, let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            Issue.record("api_client.py failed: \(r.stdout) \(r.stderr)")
            throw ClientError.closed
        }
        return Answer(status: o["status"] as? Int ?? 0, headers: o["headers"] as? [String: String] ?? [:], body: o["body"] ?? NSNull())
    }

    /// A folder, a database made by `tern migrate` in it, and the binary.
    static func migratedDatabase() throws -> (dir: URL, db: String, tern: String) {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let tern = try ternBinary()
        #expect(try runProgram(tern, ["migrate", "--db", db]).status == 0)
        return (dir, db, tern)
    }

    static func token(_ tern: String, _ db: String, _ name: String, _ scope: String) throws -> String {
        let r = try runProgram(tern, ["api", "token", "add", name, "--scope", scope, "--db", db])
        #expect(r.status == 0, "\(r.stderr)")
        return r.stdout.split(separator: "\n").last.map(String.init) ?? ""
    }

    static func inject(_ to: [String], subject: String) -> String {
        let recipients = to.map { #"{"email": "\#($0)"}"# }.joined(separator: ",")
        return #"{"envelope_sender": "app@sender.test", "recipients": [\#(recipients)], "content": "From: App <app@sender.test>\nTo: \#(to[0])\nSubject: \#(subject)\n\nhello from the API\n"}"#
    }

    @Test func injectionFromPythonReachesTheSinkRefusesBadInputAndSurvivesKill9() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let (_, db, tern) = try Self.migratedDatabase()
        let app = try Self.token(tern, db, "app", "inject")
        let reader = try Self.token(tern, db, "reader", "read")
        // Signed at intake like submitted mail: an Ed25519 key for the sender's domain.
        let (dir, _, _) = try Self.migratedDatabase()
        let key = dir.appendingPathComponent("k.pem").path
        #expect(try runProgram(tern, ["dkim", "keygen", "--domain", "sender.test", "--selector", "api", "--algorithm", "ed25519", "--key-file", key]).status == 0)
        let config = dir.appendingPathComponent("tern.toml")
        try Data("[[dkim]]\ndomain = \"sender.test\"\nselector = \"api\"\nkey_file = \"\(key)\"\n".utf8).write(to: config)
        let routes = ["--config", config.path, "--route", "dest.test=127.0.0.1:\(sink.port)", "--route", "*=127.0.0.1:9"]
        // First without delivery: what is acknowledged must survive a kill -9.
        let first = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test", "--http", "127.0.0.1:0",
                                      "--max-message-size", "20000", "--no-deliver"] + routes)
        let base = "http://127.0.0.1:\(try await first.httpPort())"

        // The documented refusals.
        let noToken = try await Self.call(base, nil, "POST", "/api/v1/messages", Self.inject(["a@dest.test"], subject: "x"))
        #expect(noToken.status == 401 && noToken.headers["www-authenticate"] == "Bearer realm=\"tern\"" && noToken.error["status"] as? Int == 401)
        #expect(try await Self.call(base, reader, "POST", "/api/v1/messages", Self.inject(["a@dest.test"], subject: "x")).status == 403)
        let badJSON = try await Self.call(base, app, "POST", "/api/v1/messages", "{\"envelope_sender\": ")
        #expect(badJSON.status == 400 && (badJSON.error["message"] as? String ?? "").contains("JSON"))
        let missing = try await Self.call(base, app, "POST", "/api/v1/messages", #"{"envelope_sender": "a@b.test", "content": "From: a@b.test\n\nx"}"#)
        #expect(missing.status == 400 && missing.error["field"] as? String == "recipients", "\(missing.body)")
        let badAddress = try await Self.call(base, app, "POST", "/api/v1/messages", Self.inject(["ok@dest.test", "not-an-address"], subject: "x"))
        #expect(badAddress.status == 400 && badAddress.error["field"] as? String == "recipients[1].email", "\(badAddress.body)")
        let big = String(repeating: "0123456789abcdef\\n", count: 1_500)
        let oversize = try await Self.call(base, app, "POST", "/api/v1/messages",
                                           #"{"envelope_sender": "a@b.test", "recipients": [{"email": "a@dest.test"}], "content": "From: a@b.test\n\n\#(big)"}"#)
        #expect(oversize.status == 413 && oversize.error["field"] as? String == "content", "\(oversize.body)")
        #expect(try await Self.call(base, app, "POST", "/api/v1/messages", Self.inject(["a@dest.test"], subject: "x"), contentType: "text/plain").status == 415)
        let store = try Store(path: db)
        defer { store.close() }
        func count(_ sql: String) throws -> Int { try store.read { db in try Int.fetchOne(db, sql: sql) ?? -1 } }
        #expect(try count("SELECT count(*) FROM message") == 0) // nothing refused was kept

        // Accepted: a whole message for two recipients, and the simple form (a message per recipient).
        let raw = try await Self.call(base, app, "POST", "/api/v1/messages", Self.inject(["r1@dest.test", "r2@dest.test"], subject: "raw via API"))
        #expect(raw.status == 200 && raw.object["success_count"] as? Int == 2, "\(raw.body)")
        let simple = try await Self.call(base, app, "POST", "/api/v1/messages", """
            {"envelope_sender": "app@sender.test", "recipients": [{"email": "s1@dest.test", "substitutions": {"name": "Sam"}}, {"email": "s2@dest.test"}],
             "content": {"from": {"email": "app@sender.test", "name": "The App"}, "subject": "Hi {{ name }}", "text_body": "Dear {{name}},\\nhello.", "html_body": "<p>Dear {{ name }}</p>"}}
            """)
        #expect(simple.status == 200 && (simple.object["messages"] as? [Any])?.count == 2, "\(simple.body)")
        // Acknowledged means committed: kill -9 at once.
        kill(first.process.processIdentifier, SIGKILL)
        _ = waitForExit(first.process, seconds: 10)
        #expect(try count("SELECT count(*) FROM message WHERE auth_user = 'token:app'") == 3)

        let second = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test", "--http", "127.0.0.1:0"] + routes)
        let base2 = "http://127.0.0.1:\(try await second.httpPort())"
        #expect(await eventually { sink.messages.count == 3 })
        let texts = sink.messages.map(\.data)
        #expect(texts.contains { $0.contains("Subject: raw via API") && $0.contains("Received: from [127.0.0.1]") && $0.contains("with HTTP id") })
        #expect(texts.contains { $0.contains("Subject: Hi Sam") && $0.contains("To: <s1@dest.test>") && $0.contains("Dear Sam,") })
        #expect(texts.contains { $0.contains("Subject: Hi \r\n") || $0.contains("Subject: Hi\r\n") })
        #expect(texts.allSatisfy { $0.contains("Message-ID: <") && $0.contains("Date: ") })
        #expect(texts.allSatisfy { $0.hasPrefix("DKIM-Signature: v=1; a=ed25519-sha256;") && $0.contains("d=sender.test;") && $0.contains("s=api;") }, "\(texts.first ?? "")")
        // The OpenAPI document served is the one committed.
        let doc = try await Self.call(base2, nil, "GET", "/api/v1/openapi.json")
        let committed = try JSONSerialization.jsonObject(with: Data(contentsOf: repoRoot.appendingPathComponent("docs/openapi.json"))) as? NSDictionary
        #expect(doc.status == 200 && (doc.body as? NSDictionary) == committed)
        #expect(await second.terminate() == 0, "\(second.log.suffix(2000))")
    }

    @Test func theReadAndAdminAPIDoWhatTheCLIDoes() async throws {
        let (_, db, tern) = try Self.migratedDatabase()
        let app = try Self.token(tern, db, "app", "inject")
        let reader = try Self.token(tern, db, "reader", "read")
        let admin = try Self.token(tern, db, "ops", "admin")
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test", "--http", "127.0.0.1:0", "--no-deliver",
                                      "--route", "*=127.0.0.1:9"])
        let base = "http://127.0.0.1:\(try await serve.httpPort())"
        var ids: [String] = []
        for (i, to) in ["a1@a.test", "a2@a.test", "b1@b.test"].enumerated() {
            let r = try await Self.call(base, app, "POST", "/api/v1/messages", Self.inject([to], subject: "m\(i)"))
            ids.append(((r.object["messages"] as? [[String: Any]])?.first?["queue_id"] as? String) ?? "")
        }
        // Pages.
        let page1 = try await Self.call(base, reader, "GET", "/api/v1/queue?limit=2")
        #expect(page1.status == 200 && page1.items.count == 2 && page1.object["next_offset"] as? Int == 2, "\(page1.body)")
        let page2 = try await Self.call(base, reader, "GET", "/api/v1/queue?limit=2&offset=2")
        #expect(page2.items.count == 1 && page2.object["next_offset"] is NSNull)
        #expect(try await Self.call(base, reader, "GET", "/api/v1/queue?limit=0").error["field"] as? String == "limit")
        #expect(try await Self.call(base, reader, "GET", "/api/v1/queue?state=nope").error["field"] as? String == "state")
        // The same JSON as the CLI's.
        let cli = try runProgram(tern, ["queue", "list", "--format", "json", "--db", db])
        let cliItems = try JSONSerialization.jsonObject(with: Data(cli.stdout.utf8)) as? NSArray
        let all = try await Self.call(base, reader, "GET", "/api/v1/queue")
        #expect((all.object["items"] as? NSArray) == cliItems)
        let byDomain = try await Self.call(base, reader, "GET", "/api/v1/queue?domain=a.test")
        #expect(byDomain.items.count == 2)
        // One message.
        let show = try await Self.call(base, reader, "GET", "/api/v1/queue/\(ids[0])")
        #expect(show.status == 200 && show.object["queue_id"] as? String == ids[0])
        #expect(try await Self.call(base, reader, "GET", "/api/v1/queue/NOSUCHID").status == 404)
        // Actions need admin.
        #expect(try await Self.call(base, reader, "POST", "/api/v1/queue/actions/hold", #"{"queue_id": "\#(ids[0])"}"#).status == 403)
        let hold = try await Self.call(base, admin, "POST", "/api/v1/queue/actions/hold", #"{"queue_id": "\#(ids[0])"}"#)
        #expect(hold.status == 200 && hold.object["changed"] as? Int == 1 && hold.object["action"] as? String == "held", "\(hold.body)")
        #expect(try await Self.call(base, reader, "GET", "/api/v1/queue?state=held").items.count == 1)
        let holdDomain = try await Self.call(base, admin, "POST", "/api/v1/queue/actions/hold", #"{"domain": "b.test"}"#)
        #expect(holdDomain.object["changed"] as? Int == 1)
        #expect(try await Self.call(base, admin, "POST", "/api/v1/queue/actions/release", #"{"queue_id": "\#(ids[0])"}"#).object["changed"] as? Int == 1)
        #expect(try await Self.call(base, admin, "POST", "/api/v1/queue/actions/hold", "{}").error["field"] as? String == "queue_id")
        #expect(try await Self.call(base, admin, "POST", "/api/v1/queue/actions/hold", #"{"all": true}"#).status == 400)
        #expect(try await Self.call(base, admin, "POST", "/api/v1/queue/actions/melt", #"{"queue_id": "x"}"#).status == 404)
        #expect(try await Self.call(base, admin, "POST", "/api/v1/queue/actions/delete", #"{"queue_id": "NOSUCHID"}"#).status == 404)
        let bounce = try await Self.call(base, admin, "POST", "/api/v1/queue/actions/bounce", #"{"queue_id": "\#(ids[1])"}"#)
        #expect(bounce.object["changed"] as? Int == 1, "\(bounce.body)")
        // History: the operator's steps are on the timeline.
        let history = try await Self.call(base, reader, "GET", "/api/v1/history?queue_id=\(ids[0])")
        let kinds = ((history.items.first?["timeline"] as? [[String: Any]]) ?? []).compactMap { $0["kind"] as? String }
        #expect(kinds == ["received", "held", "released"], "\(history.body)")
        #expect(try await Self.call(base, reader, "GET", "/api/v1/history?recipient=a2@a.test&since=1h").items.count == 1)
        #expect(try await Self.call(base, reader, "GET", "/api/v1/history?since=yesterday-ish").error["field"] as? String == "since")
        // Reports.
        let shape = try await Self.call(base, reader, "GET", "/api/v1/stats/queue")
        #expect(shape.status == 200 && (shape.body as? [[String: Any]])?.isEmpty == false)
        let routesReport = try await Self.call(base, reader, "GET", "/api/v1/stats/routes?since=1h")
        #expect(routesReport.status == 200 && routesReport.object["domains"] is [Any])
        let recipients = try await Self.call(base, reader, "GET", "/api/v1/stats/recipients")
        #expect(recipients.status == 200 && !recipients.object.isEmpty)
        // The suppression list.
        let add = try await Self.call(base, admin, "POST", "/api/v1/suppressions", #"{"addresses": ["Gone@Example.test"], "reason": "asked", "expires": "30d"}"#)
        #expect(add.status == 200 && add.object["new"] as? Int == 1, "\(add.status) \(add.body)")
        #expect(try await Self.call(base, admin, "POST", "/api/v1/suppressions", #"{"addresses": ["ok@x.test", "bad"]}"#).error["field"] as? String == "addresses[1]")
        let list = try await Self.call(base, reader, "GET", "/api/v1/suppressions?search=gone")
        #expect(list.items.first?["address"] as? String == "Gone@example.test" && list.items.first?["source"] as? String == "manual", "\(list.body)")
        #expect(try await Self.call(base, reader, "DELETE", "/api/v1/suppressions/gone@example.test").status == 403)
        #expect(try await Self.call(base, admin, "DELETE", "/api/v1/suppressions/gone@example.test").object["removed"] as? Int == 1)
        #expect(try await Self.call(base, admin, "DELETE", "/api/v1/suppressions/gone@example.test").status == 404)
        // A request for 150 recipients in the simple form: 150 messages, built and committed in batches.
        let many = (0..<150).map { #"{"email": "m\#($0)@c.test", "substitutions": {"n": "\#($0)"}}"# }.joined(separator: ",")
        let bulk = try await Self.call(base, app, "POST", "/api/v1/messages", """
            {"envelope_sender": "app@sender.test", "recipients": [\(many)], "content": {"from": "app@sender.test", "subject": "n={{n}}", "text_body": "hi {{ n }}"}}
            """)
        let bulkIDs = (bulk.object["messages"] as? [[String: Any]] ?? []).compactMap { $0["queue_id"] as? String }
        #expect(bulk.status == 200 && bulk.object["success_count"] as? Int == 150 && Set(bulkIDs).count == 150, "\(bulk.status)")
        let store = try Store(path: db)
        defer { store.close() }
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM message WHERE instr(body, 'Subject: n=149') > 0") } == 1)
        #expect(await serve.terminate() == 0)
    }

    /// Events as the receiver wrote them.
    static func events(_ file: URL) -> [[String: Any]] {
        guard let text = try? String(contentsOf: file, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    @Test func webhooksAreSignedOrderedDurableAndNeverSlowDelivery() async throws {
        let sink = try await SinkServer.start(group: server0Group)
        defer { Task { await sink.stop() } }
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let script = repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/webhook_receiver.py").path
        let secret = "s3cret-s3cret-s3cret"
        let fileA = dir.appendingPathComponent("a.jsonl"), fileB = dir.appendingPathComponent("b.jsonl")
        let a = try ChildProcess("/usr/bin/python3", [script, "0", secret, fileA.path, "ok"])
        defer { a.stop() }
        let hang = try ChildProcess("/usr/bin/python3", [script, "0", secret, dir.appendingPathComponent("c.jsonl").path, "hang"])
        defer { hang.stop() }
        guard let pa = await a.waitFor("listening "), let ph = await hang.waitFor("listening ") else {
            Issue.record("the receivers did not start: \(a.log) \(hang.log)")
            return
        }
        // B is down at first: nothing listens on its port.
        let portB = freeLoopbackTCPPort()
        let config = dir.appendingPathComponent("tern.toml")
        try """
            [[webhook]]
            name = "a"
            url = "http://127.0.0.1:\(pa)/events"
            secret = "\(secret)"
            events = ["received", "delivered", "bounced"]

            [[webhook]]
            name = "b"
            url = "http://127.0.0.1:\(portB)/events"
            secret = "\(secret)"
            events = ["delivered"]
            max_backoff = "1s"

            [[webhook]]
            name = "hangs"
            url = "http://127.0.0.1:\(ph)/events"
            secret = "\(secret)"
            events = ["delivered"]
            timeout = "60s"
            """.write(to: config, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(["--config", config.path, "--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test",
                                      "--route", "dest.test=127.0.0.1:\(sink.port)", "--route", "*=127.0.0.1:9"])
        let port = try await serve.port()
        let rcpts = (0..<9).map { "ok\($0)@dest.test" } + ["perm1@dest.test"]
        for r in rcpts {
            let c = try RawClient(port: port)
            _ = try c.readReply()
            _ = try c.command("EHLO client.test")
            #expect(try c.sendMessage(from: "ann@sender.test", to: [r], body: "Subject: hook\r\n\r\nhello\r\n").status == "250 2.0.0")
        }
        let store = try Store(path: db)
        defer { store.close() }
        func count(_ sql: String) throws -> Int { try store.read { db in try Int.fetchOne(db, sql: sql) ?? -1 } }
        // Delivery goes on while one endpoint is down and another hangs (counts, not times).
        #expect(await eventually { try count("SELECT count(*) FROM recipient WHERE state = 'delivered'") == 9 && sink.messages.count == 9 })
        #expect(await eventually { try count("SELECT count(*) FROM recipient WHERE state = 'bounced'") == 1 })
        // A: every event, signed, in commit order; per message, received first.
        #expect(await eventually { Self.events(fileA).filter { $0["type"] as? String == "delivered" }.count == 9 })
        #expect(await eventually { Self.events(fileA).contains { $0["type"] as? String == "bounced" } })
        let got = Self.events(fileA)
        #expect(got.allSatisfy { $0["signature_ok"] as? Bool == true })
        let eventIDs = got.compactMap { $0["id"] as? Int }
        #expect(eventIDs == eventIDs.sorted() && Set(eventIDs).count == eventIDs.count)
        for r in rcpts {
            let queueID = got.first { e in e["recipient"] as? String == r }?["queue_id"] as? String
            let mine = got.filter { e in e["queue_id"] as? String == queueID }
            #expect(mine.map { e in e["type"] as? String ?? "" } == ["received", r.hasPrefix("perm") ? "bounced" : "delivered"], "\(r): \(mine)")
        }
        let bounced = try #require(got.first { $0["type"] as? String == "bounced" })
        #expect(bounced["recipient"] as? String == "perm1@dest.test")
        #expect((bounced["response"] as? [String: Any])?["code"] as? Int == 550 && (bounced["response"] as? [String: Any])?["category"] as? String == "invalid_recipient")
        // B comes up: it gets every event it missed.
        #expect(await eventually { try count("SELECT failures FROM webhook_endpoint WHERE name = 'b'") >= 1 })
        let b = try ChildProcess("/usr/bin/python3", [script, String(portB), secret, fileB.path, "ok"])
        defer { b.stop() }
        #expect(await eventually { Self.events(fileB).filter { $0["type"] as? String == "delivered" }.count == 9 })
        #expect(Self.events(fileB).allSatisfy { $0["signature_ok"] as? Bool == true })
        // The hanging endpoint has taken nothing; its events wait.
        let list = try runProgram(try ternBinary(), ["webhooks", "list", "--format", "json", "--config", config.path, "--db", db])
        let endpoints = try #require(try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]])
        let byName = Dictionary(uniqueKeysWithValues: endpoints.map { ($0["name"] as? String ?? "", $0) })
        #expect(byName["hangs"]?["pending"] as? Int == 9 && byName["hangs"]?["sent"] as? Int == 0, "\(list.stdout)")
        #expect(await eventually { try count("SELECT count(*) FROM webhook_outbox WHERE endpoint = 'a' OR endpoint = 'b'") == 0 })
        // Replay and test.
        let replay = try runProgram(try ternBinary(), ["webhooks", "replay", "b", "--since", "1h", "--config", config.path, "--db", db])
        #expect(replay.status == 0 && replay.stdout.contains("queued 9 events"), "\(replay.stdout)\(replay.stderr)")
        #expect(await eventually { Self.events(fileB).filter { $0["type"] as? String == "delivered" }.count == 18 })
        let test = try runProgram(try ternBinary(), ["webhooks", "test", "a", "--config", config.path])
        #expect(test.status == 0, "\(test.stderr)")
        #expect(Self.events(fileA).contains { $0["type"] as? String == "test" && $0["signature_ok"] as? Bool == true })
        #expect(await serve.terminate() == 0, "\(serve.log.suffix(2000))")
    }
}
