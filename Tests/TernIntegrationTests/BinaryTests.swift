// The `tern` executable as a user runs it: serve (and SIGTERM), sendmail,
// migrate, queue list, --help, and errors for bad configuration.

import Foundation
import GRDB
import Testing
import TernProtocol
import TernScheduler
import TernTestSupport
@testable import TernStore

func tempFolder() throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-bin-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
}

/// `tern serve` in a child process, with its stderr collected.
final class ServeProcess: @unchecked Sendable {
    let process = Process()
    let errPipe = Pipe()
    private let lock = NSLock()
    private var collected = ""

    init(_ args: [String]) throws {
        // This machine's DNS server is not on loopback: every Tern a test
        // starts must resolve through a loopback server or a smarthost route.
        let resolver = args.firstIndex(of: "--resolver").map { args[$0 + 1] }
        let smarthost = args.indices.contains { args[$0] == "--route" && args[$0 + 1].hasPrefix("*=") }
        guard smarthost || (resolver.map { $0.hasPrefix("127.") || $0.hasPrefix("[::1]") } ?? false) else {
            Issue.record("tern serve started without a loopback --resolver or a '*' --route: it would query the system resolver")
            throw ClientError.closed
        }
        process.executableURL = URL(fileURLWithPath: try ternBinary())
        process.arguments = ["serve"] + args
        process.standardError = errPipe
        process.standardOutput = FileHandle.nullDevice
        errPipe.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            guard let self, !d.isEmpty else { return }
            self.lock.lock(); self.collected += String(decoding: d, as: UTF8.self); self.lock.unlock()
        }
        try process.run()
    }

    var log: String { lock.lock(); defer { lock.unlock() }; return collected }

    /// The port from the "listening" log line of the first listener with this role.
    func port(role: String = "relay") async throws -> Int {
        try await number(after: ":(\\d+) role=\(role) \\[TernListener\\] listening", what: "its port")
    }

    /// The HTTP listener's port, from its "http listening" log line.
    func httpPort() async throws -> Int {
        try await number(after: ":(\\d+) \\[TernHTTP\\] http listening", what: "its HTTP port")
    }

    /// The number right after the first ':' of the first log line matching `pattern`, waiting for it.
    private func number(after pattern: String, what: String) async throws -> Int {
        for _ in 0..<500 {
            if let r = log.range(of: pattern, options: .regularExpression) {
                return Int(log[r].dropFirst().prefix(while: \.isNumber))!
            }
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("tern serve did not report \(what):\n\(log)")
        throw ClientError.timeout
    }

    /// A test that failed before `terminate` must not leave the server running.
    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            _ = waitForExit(process, seconds: 10)
        }
    }

    func terminate() async -> Int32 {
        kill(process.processIdentifier, SIGTERM)
        if let status = waitForExit(process, seconds: 20) { return status }
        kill(process.processIdentifier, SIGKILL)
        return waitForExit(process, seconds: 10) ?? -1
    }
}

@Suite(.serialized) struct BinaryTests {
    @Test func serveAcceptsAndStopsCleanlyOnSIGTERM() async throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("q/tern.sqlite").path
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.test", "--relay-domain", "local.test",
                                      "--resolver", "127.0.0.1:9"])
        let port = try await serve.port()
        let c = try RawClient(port: port)
        #expect(try c.readReply().last == "mx.test ESMTP Tern")
        try c.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        _ = try c.readReplies(4)
        try c.send("Subject: bin\r\n\r\nhello\r\n.\r\n")
        #expect(try c.readReply().status == "250 2.0.0")
        let status = await serve.terminate()
        #expect(status == 0, "\(serve.log)")
        #expect(serve.log.contains("tern stopped; database closed"))
        #expect(try c.readReply().status == "421 4.3.2") // the idle session was told
        // The WAL was checkpointed into the database on close.
        let walSize = (try? FileManager.default.attributesOfItem(atPath: db + "-wal")[.size] as? Int) ?? 0
        #expect(walSize == 0)
        // Kept, whether or not the scheduler tried it before SIGTERM: the resolver
        // (a dead loopback port) can only give a temporary DNS failure.
        let store = try Store(path: db)
        let counts = try store.stateCounts()
        #expect(counts == [.queued: 1] || counts == [.deferred: 1], "\(counts)")
        let reasons = try store.read { db in try String.fetchAll(db, sql: "SELECT enhanced FROM attempt") }
        #expect(reasons.allSatisfy { $0 == "4.4.3" }, "\(reasons)")
        store.close()
    }

    /// A message large enough for SQLite's blocks of 2 MiB or more (the
    /// row's record, the body read back) to come from `serve`'s own
    /// allocator, with huge pages: it arrives at aiosmtpd byte for byte.
    @Test func serveRelaysALargeMessageWholeThroughItsOwnSQLiteAllocator() async throws {
        let mta = try await Aiosmtpd.start()
        defer { mta.child.stop() }
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test", "--log-level", "debug",
                                      "--route", "*=127.0.0.1:\(mta.port)"])
        let port = try await serve.port()
        #expect(serve.log.contains("SQLite's blocks of 2 MiB or more are mappings with huge pages advised"), "\(serve.log)")
        var lines = ["Subject: large", ""]
        for i in 0..<70_000 { lines.append("line \(i) " + String(repeating: "abcdefghij", count: 7)) }
        let body = lines.joined(separator: "\r\n") + "\r\n"
        #expect(body.utf8.count > 5 << 20)
        let c = try RawClient(port: port)
        _ = try c.readReply()
        _ = try c.command("EHLO client.test")
        #expect(try c.sendMessage(from: "ann@sender.test", to: ["bea@mail.test"], body: body).status == "250 2.0.0")
        #expect(await eventually { mta.messages().count == 1 }, "\(serve.log)")
        #expect(await serve.terminate() == 0)
        let content = try #require(mta.messages().first?["content"] as? String)
        // Tern's Received: line comes first, then the text as sent.
        let received = try #require(content.range(of: "Subject: large"))
        #expect(content[received.lowerBound...].replacingOccurrences(of: "\r\n", with: "\n") == body.replacingOccurrences(of: "\r\n", with: "\n"))
    }

    /// The whole chain with programs nobody here wrote: MX records from
    /// dnsmasq on a loopback port, aiosmtpd as the receiving MTA.
    @Test func serveDeliversByMXFromDnsmasqToAiosmtpd() async throws {
        let mta = try await Aiosmtpd.start()
        defer { mta.child.stop() }
        let dns = try await Dnsmasq.start([
            "--mx-host=mail.test,mx1.mail.test,10", "--host-record=mx1.mail.test,127.0.0.1",
            "--mx-host=sender.test,mx1.mail.test,10",
        ])
        defer { dns.child.stop() }
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test",
                                      "--resolver", "127.0.0.1:\(dns.port)", "--remote-port", "\(mta.port)"])
        let port = try await serve.port()
        let c = try RawClient(port: port)
        _ = try c.readReply()
        _ = try c.command("EHLO client.test")
        #expect(try c.sendMessage(from: "ann@sender.test", to: ["bea@mail.test", "nobody@missing.test"],
                                  body: "Subject: via MX\r\n\r\nhello\r\n").status == "250 2.0.0")
        // bea@ arrives; missing.test is NXDOMAIN, so ann@sender.test gets a DSN — also delivered by MX.
        #expect(await eventually { mta.messages().count == 2 }, "\(serve.log)\n\(dns.child.log)")
        let status = await serve.terminate()
        #expect(status == 0)
        let messages = mta.messages()
        #expect(messages.first { ($0["rcpt_tos"] as? [String]) == ["bea@mail.test"] } != nil)
        let report = try #require(messages.first { ($0["mail_from"] as? String) == "<>" })
        #expect(report["rcpt_tos"] as? [String] == ["ann@sender.test"])
        let dsn = try parseDSN(report["content"] as? String ?? "")
        let r = (dsn["per_recipient"] as? [[String: String]])?.first
        #expect(r?["Final-Recipient"] == "rfc822; nobody@missing.test")
        #expect(r?["Status"] == "5.1.2")
        let store = try Store(path: db)
        defer { store.close() }
        let rows = try store.read { db in
            try Row.fetchAll(db, sql: "SELECT r.address, r.state, a.mx_host, a.mx_address, r.last_enhanced FROM recipient r JOIN attempt a ON a.recipient_id = r.id ORDER BY r.id")
        }
        #expect(rows.map { $0[0] as String } == ["bea@mail.test", "nobody@missing.test", "ann@sender.test"])
        #expect(rows[0][1] as String == "delivered" && rows[0][2] as String == "mx1.mail.test" && rows[0][3] as String == "127.0.0.1")
        #expect(rows[1][1] as String == "bounced" && rows[1][4] as String == "5.1.2")
        #expect(rows[2][1] as String == "delivered")
        // dnsmasq answered the queries: MX and A for mail.test, MX for missing.test.
        #expect(dns.child.log.contains("query[MX] mail.test"))
        #expect(dns.child.log.contains("query[MX] missing.test"))
    }

    @Test func aSecondSIGTERMEndsTheGracePeriod() async throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let file = dir.appendingPathComponent("tern.toml")
        try Data("[limits]\nshutdown_grace = 120\n".utf8).write(to: file)
        let serve = try ServeProcess(["--config", file.path, "--listen", "127.0.0.1:0", "--db", db, "--resolver", "127.0.0.1:9"])
        let port = try await serve.port()
        #expect(serve.log.contains("queue recovered") && serve.log.contains("inflight_recovered=0"))
        let busy = try RawClient(port: port)
        _ = try busy.readReply()
        try busy.send("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
        _ = try busy.readReplies(3)
        kill(serve.process.processIdentifier, SIGTERM)
        // The open transaction may finish: still served after the first signal.
        try await Task.sleep(for: .milliseconds(300))
        #expect(try busy.command("NOOP").status == "250 2.0.0")
        kill(serve.process.processIdentifier, SIGTERM)
        // Well before the 120 s grace period.
        let status = waitForExit(serve.process, seconds: 30)
        #expect(status != nil, "tern did not stop on the second SIGTERM:\n\(serve.log)")
        #expect(status == 0 && serve.log.contains("tern stopped; database closed"), "\(serve.log)")
        #expect(busy.isClosedByPeer())
        // Nothing half-done was left: the unacknowledged transaction is simply absent.
        let store = try Store(path: db)
        #expect(try store.stateCounts().isEmpty)
        store.close()
    }

    /// After a crash, recipients the dead process held are returned at start
    /// and counted in the start-up line.
    @Test func startupReleasesLeasesOfTheDeadProcess() async throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let bin = try ternBinary()
        #expect(try runProgram(bin, ["migrate", "--db", db]).status == 0)
        _ = try runProgram(bin, ["sendmail", "--db", db, "a@x.test", "b@x.test"], stdin: "Subject: s\n\nx\n")
        let crashed = try runProgram("sqlite3", [db, "UPDATE recipient SET state = 'inflight', lease_owner = 'dead:1', lease_expires_at = 9999999999999"])
        #expect(crashed.status == 0)
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--no-deliver", "--resolver", "127.0.0.1:9"])
        _ = try await serve.port()
        #expect(serve.log.contains("inflight_recovered=2") && serve.log.contains("queued=2"), "\(serve.log)")
        #expect(await serve.terminate() == 0)
        let store = try Store(path: db)
        defer { store.close() }
        #expect(try store.stateCounts() == [.queued: 2])
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event WHERE kind = 'lease_expired'") } == 2)
    }

    @Test func noDeliverQueuesOnly() async throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let serve = try ServeProcess(["--listen", "127.0.0.1:0", "--db", db, "--no-deliver", "--resolver", "127.0.0.1:9"])
        let port = try await serve.port()
        #expect(serve.log.contains("delivery is off"))
        let c = try RawClient(port: port)
        _ = try c.readReply()
        _ = try c.command("EHLO c.test")
        #expect(try c.sendMessage(from: "a@x.test", to: ["b@y.test"], body: "Subject: q\r\n\r\nx\r\n").status == "250 2.0.0")
        #expect(await serve.terminate() == 0)
        let store = try Store(path: db)
        defer { store.close() }
        #expect(try store.stateCounts() == [.queued: 1])
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM attempt") } == 0)
    }

    @Test func doctorReportsHealthAndProblems() throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let bin = try ternBinary()
        #expect(try runProgram(bin, ["migrate", "--db", db]).status == 0) // sendmail never creates the queue
        _ = try runProgram(bin, ["sendmail", "--db", db, "bob@y.test"], stdin: "Subject: d\n\nx\n")
        let ok = try runProgram(bin, ["doctor", "--db", db])
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
        #expect(ok.stdout.contains("integrity:     ok") && ok.stdout.contains("healthy"))
        // Make one inconsistency: a message with no recipient.
        _ = try runProgram("sqlite3", [db, "INSERT INTO message (queue_id, received_at, mail_from, size, origin) VALUES ('ORPHAN', 0, '', 0, 'smtp')"])
        let bad = try runProgram(bin, ["doctor", "--db", db, "--format", "json"])
        #expect(bad.status == 1)
        let json = try JSONSerialization.jsonObject(with: Data(bad.stdout.utf8)) as? [String: Any]
        #expect(json?["healthy"] as? Bool == false)
        #expect((json?["inconsistencies"] as? [String: Int])?["message without recipients"] == 1)
        #expect(json?["integrity"] as? [String] == ["ok"])
        #expect(json?["schema_version"] as? Int == Migrator.knownVersion)
    }

    /// `tern config show` with a file and flags: each value and its origin;
    /// a bad file is refused as `serve` refuses it.
    @Test func configShowWithFileAndFlags() throws {
        let dir = try tempFolder()
        let file = dir.appendingPathComponent("tern.toml")
        try Data("db = \"q.sqlite\"\n[delivery]\nmax_connections = 7\n".utf8).write(to: file)
        let r = try runProgram(try ternBinary(), ["config", "show", "--config", file.path, "--hostname", "shown.test"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("hostname = \"shown.test\""))
        #expect(r.stdout.split(separator: "\n").contains { $0.hasPrefix("max_connections = 7 ") && $0.hasSuffix("# file \(file.path)") })
        // The file's relative db is taken from the file's folder.
        #expect(r.stdout.contains("db = \"\(dir.appendingPathComponent("q.sqlite").standardizedFileURL.path)\""))
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("q.sqlite").path)) // show creates nothing
        let bad = try runProgram(try ternBinary(), ["config", "show", "--remote-port", "0"])
        #expect(bad.status == 78 && bad.stderr.contains("remote_port must be 1-65535"))
        let reference = try runProgram(try ternBinary(), ["config", "reference"])
        #expect(reference.stdout.hasPrefix("# Configuration"))
    }

    /// `tern dkim keygen` writes a 0600 key it will not overwrite and prints
    /// the record; `serve` with a key it cannot use stops at start-up (78).
    @Test func dkimKeygenAndABadKeyAtStartUp() throws {
        let dir = try tempFolder()
        let key = dir.appendingPathComponent("k.pem").path
        let r = try runProgram(try ternBinary(), ["dkim", "keygen", "--domain", "Example.test", "--selector", "s1", "--algorithm", "ed25519", "--key-file", key])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("s1._domainkey.example.test. IN TXT ( \"v=DKIM1; k=ed25519; p="))
        let mode = (try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int) ?? 0
        #expect(mode == 0o600)
        let again = try runProgram(try ternBinary(), ["dkim", "keygen", "--domain", "example.test", "--selector", "s1", "--key-file", key])
        #expect(again.status == 73 && again.stderr.contains("exists; not overwritten"))
        let rsa = try runProgram(try ternBinary(), ["dkim", "keygen", "--domain", "example.test", "--selector", "r1", "--key-file",
                                                    dir.appendingPathComponent("r.pem").path])
        #expect(rsa.status == 0 && rsa.stdout.contains("k=rsa; p="))
        let small = try runProgram(try ternBinary(), ["dkim", "keygen", "--domain", "example.test", "--selector", "r2", "--bits", "1024",
                                                      "--key-file", dir.appendingPathComponent("r2.pem").path])
        #expect(small.status == 64 && small.stderr.contains("2048"))
        let config = dir.appendingPathComponent("tern.toml")
        try Data("[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = \"\(key)\"\nalgorithm = \"rsa\"\n".utf8).write(to: config)
        let serve = try runProgram(try ternBinary(), ["serve", "--config", config.path, "--db", dir.appendingPathComponent("t.sqlite").path,
                                                      "--listen", "127.0.0.1:0", "--resolver", "127.0.0.1:9"])
        #expect(serve.status == 78 && serve.stderr.contains("the key is ed25519, the configuration says rsa"), "\(serve.stderr)")
    }

    /// `tern dkim check` looks the record up through the given resolver
    /// (dnsmasq on loopback) and compares it with the key.
    @Test func dkimCheckAgainstALoopbackDNS() throws {
        let dir = try tempFolder()
        let good = dir.appendingPathComponent("good.pem").path, other = dir.appendingPathComponent("other.pem").path
        let made = try runProgram(try ternBinary(), ["dkim", "keygen", "--domain", "example.test", "--selector", "s1", "--key-file", good])
        _ = try runProgram(try ternBinary(), ["dkim", "keygen", "--domain", "example.test", "--selector", "s1", "--algorithm", "ed25519",
                                              "--key-file", other])
        // The record keygen printed: the quoted strings joined.
        let line = try #require(made.stdout.split(separator: "\n").first { $0.contains("IN TXT") })
        let record = line.split(separator: "\"").enumerated().filter { $0.offset % 2 == 1 }.map(\.element).joined()
        let dns = try TestDNS(txt: [("s1._domainkey.example.test", record)])
        Thread.sleep(forTimeInterval: 0.3)
        let resolver = "127.0.0.1:\(dns.port)"
        let match = try runProgram(try ternBinary(), ["dkim", "check", "--domain", "example.test", "--selector", "s1", "--key-file", good,
                                                      "--resolver", resolver])
        #expect(match.status == 0 && match.stdout.contains("match: the record is the public key"), "\(match.stdout)\(match.stderr)")
        let mismatch = try runProgram(try ternBinary(), ["dkim", "check", "--domain", "example.test", "--selector", "s1", "--key-file", other,
                                                         "--resolver", resolver])
        #expect(mismatch.status == 1 && mismatch.stdout.contains("mismatch: the record is k=rsa, the key is ed25519"), "\(mismatch.stdout)")
        let missing = try runProgram(try ternBinary(), ["dkim", "check", "--domain", "example.test", "--selector", "s9", "--key-file", good,
                                                        "--resolver", resolver])
        #expect(missing.status == 1 && missing.stdout.contains("no record at s9._domainkey.example.test"), "\(missing.stdout)")
        let dead = try runProgram(try ternBinary(), ["dkim", "check", "--domain", "example.test", "--selector", "s1", "--key-file", good,
                                                     "--resolver", "127.0.0.1:9"])
        #expect(dead.status == 75, "\(dead.stdout)\(dead.stderr)")
        withExtendedLifetime(dns) {} // dnsmasq serves until here
    }

    @Test func serveRefusesBadConfiguration() throws {
        let dir = try tempFolder()
        let file = dir.appendingPathComponent("bad.toml")
        try Data("listen = [\"127.0.0.1:2525\"]\nrelay_domain = [\"typo.test\"]\n".utf8).write(to: file)
        let r = try runProgram(try ternBinary(), ["serve", "--config", file.path])
        #expect(r.status == 78)
        #expect(r.stderr.contains("unknown key 'relay_domain'"))
        let missing = try runProgram(try ternBinary(), ["serve", "--config", dir.appendingPathComponent("none.toml").path])
        #expect(missing.status == 78)
        #expect(missing.stderr.contains("cannot read config file"))
    }

    @Test func sendmailMigrateAndQueueList() throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let bin = try ternBinary()
        let migrate = try runProgram(bin, ["migrate", "--db", db])
        #expect(migrate.status == 0)
        #expect(migrate.stdout.contains("schema version \(Migrator.knownVersion)"))
        #expect(migrate.stdout.split(separator: "\n").count == 1)

        let sent = try runProgram(bin, ["sendmail", "--db", db, "-f", "alice@x.test", "bob@local.test"],
                                  stdin: "Subject: from sendmail\n\nline one\n.\nnot part of the message\n")
        #expect(sent.status == 0, "\(sent.stderr)")
        #expect(sent.stderr.contains("queued as"))
        #expect(sent.stdout.isEmpty) // nothing but the report, and that on stderr
        let viaHeaders = try runProgram(bin, ["sendmail", "--db", db, "-t", "-oi"],
                                        stdin: "To: Carol <carol@local.test>\nBcc: dave@far.test\nSubject: t\n\n.\nbody\n")
        #expect(viaHeaders.status == 0, "\(viaHeaders.stderr)")
        let none = try runProgram(bin, ["sendmail", "--db", db], stdin: "Subject: x\n\nx\n")
        #expect(none.status == 64)
        let bad = try runProgram(bin, ["sendmail", "--db", db, "not an address"], stdin: "x\n")
        #expect(bad.status == 65)

        let store = try Store(path: db)
        let rows = try store.read { db in
            try Row.fetchAll(db, sql: "SELECT m.origin, m.mail_from, m.body, r.address FROM message m JOIN recipient r ON r.message_id = m.id ORDER BY r.id")
        }
        store.close()
        #expect(rows.map { $0[3] as String } == ["bob@local.test", "carol@local.test", "dave@far.test"])
        #expect(rows.allSatisfy { ($0[0] as String) == "local" })
        let first = String(decoding: rows[0][2] as Data, as: UTF8.self)
        #expect(first.contains("Subject: from sendmail\r\n\r\nline one\r\n"))
        #expect(!first.contains("not part"))
        #expect(first.contains("Message-ID: <") && first.contains("Date: "))
        let second = String(decoding: rows[1][2] as Data, as: UTF8.self)
        #expect(!second.contains("dave@far.test")) // Bcc removed
        #expect(second.hasSuffix("\r\n.\r\nbody\r\n")) // -oi keeps the lone dot

        let json = try runProgram(bin, ["queue", "list", "--db", db, "--format", "json"])
        #expect(json.status == 0)
        let list = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]]
        #expect(list?.count == 3)
        #expect(list?.first?["from"] as? String == "alice@x.test")
        #expect(list?.first?["state"] as? String == "queued")
        let table = try runProgram(bin, ["queue", "list", "--db", db, "--domain", "far.test"])
        #expect(table.stdout.contains("dave@far.test") && table.stdout.hasSuffix("1 recipient\n"))
        let badState = try runProgram(bin, ["queue", "list", "--db", db, "--state", "lost"])
        #expect(badState.status == 64)
        let noDB = try runProgram(bin, ["queue", "list", "--db", dir.appendingPathComponent("none.sqlite").path])
        #expect(noDB.status == 66)
    }

    @Test func queueAdministration() throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let bin = try ternBinary()
        #expect(try runProgram(bin, ["migrate", "--db", db]).status == 0) // sendmail never creates the queue
        let sent = try runProgram(bin, ["sendmail", "--db", db, "-f", "ann@x.test", "bob@y.test", "cat@z.test"], stdin: "Subject: admin\n\nx\n")
        let queueID = try #require(sent.stderr.split(separator: " ").last.map { String($0.dropLast()) })
        func json(_ args: [String]) throws -> [String: Any] {
            let r = try runProgram(bin, ["queue"] + args + ["--db", db, "--format", "json"])
            #expect(r.status == 0, "\(args): \(r.stderr)")
            return (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        }
        #expect(try json(["hold", queueID])["changed"] as? Int == 2)
        #expect(try json(["release", "--domain", "y.test"])["changed"] as? Int == 1)
        #expect(try json(["flush"])["changed"] as? Int == 1)
        // cat@z.test is still held; bounce takes held recipients too, and queues a DSN to ann@x.test.
        #expect(try json(["bounce", "--domain", "z.test"])["changed"] as? Int == 1)
        let show = try json(["show", queueID])
        let recipients = show["recipients"] as? [[String: Any]] ?? []
        #expect(recipients.count == 2)
        #expect(show["from"] as? String == "ann@x.test")
        let events = (show["events"] as? [[String: Any]] ?? []).compactMap { $0["kind"] as? String }
        #expect(events == ["received", "held", "held", "released", "flushed", "bounced", "dsn_queued"])
        #expect(recipients.compactMap { $0["state"] as? String } == ["queued", "bounced"])
        let table = try runProgram(bin, ["queue", "show", queueID, "--db", db])
        #expect(table.stdout.contains("RECIPIENTS") && table.stdout.contains("bob@y.test") && table.stdout.contains("EVENTS"))
        #expect(try json(["delete", queueID])["changed"] as? Int == 2)
        let gone = try runProgram(bin, ["queue", "show", queueID, "--db", db])
        #expect(gone.status == 67)
        let neither = try runProgram(bin, ["queue", "hold", "--db", db])
        #expect(neither.status == 64)
    }

    @Test func helpExplainsEveryOption() throws {
        let bin = try ternBinary()
        let top = try runProgram(bin, ["--help"])
        for sub in ["serve", "migrate", "sendmail", "queue"] { #expect(top.stdout.contains(sub)) }
        let serve = try runProgram(bin, ["serve", "--help"])
        for opt in ["--config", "--db", "--listen", "--hostname", "--relay-domain", "--trusted-network", "--max-message-size", "--log-level"] {
            #expect(serve.stdout.contains(opt), "\(opt)")
        }
        let sendmail = try runProgram(bin, ["sendmail", "--help"])
        for opt in ["-f", "-t", "-i", "-oi"] { #expect(sendmail.stdout.contains(opt)) }
    }
}

/// Issue 19 with programs nobody here wrote: `tern serve` with two sources
/// on loopback, dnsmasq answering as a blocklist that lists one of them
/// (and as the MX), aiosmtpd recording each message's peer address.
@Suite(.serialized) struct SourcesBinaryTests {
    @Test func serveSendsFromItsSourcesAndPausesAListedOne() async throws {
        let mta = try await Aiosmtpd.start()
        defer { mta.child.stop() }
        let listed = BlocklistMonitor.queryName(IPAddress("127.0.0.2")!, zone: "bl.test")
        let dns = try await Dnsmasq.start([
            "--mx-host=mail.test,mx1.mail.test,10", "--host-record=mx1.mail.test,127.0.0.1",
            "--address=/\(listed)/127.0.0.2", "--txt-record=\(listed),listed for the test",
        ])
        defer { dns.child.stop() }
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("tern.sqlite").path
        let config = dir.appendingPathComponent("tern.toml")
        try """
            [[source]]
            name = "a"
            address = "127.0.0.2"
            ehlo = "a.out.test"

            [[source]]
            name = "b"
            address = "127.0.0.3"
            ehlo = "b.out.test"

            [[pool]]
            name = "main"
            sources = { a = 3, b = 1 }
            default = true

            [blocklist]
            zones = ["bl.test"]
            on_listed = "pause"
            """.write(to: config, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(["--config", config.path, "--listen", "127.0.0.1:0", "--db", db, "--hostname", "mx.tern.test",
                                      "--resolver", "127.0.0.1:\(dns.port)", "--remote-port", "\(mta.port)"])
        let port = try await serve.port()
        // The start-up check finds a listed and takes it out of rotation.
        let store = try Store(path: db)
        defer { store.close() }
        #expect(await eventually { try store.blocklistStatuses().contains { $0.source == "a" && $0.listed && $0.reason == "listed for the test" } },
                "\(serve.log)")
        for i in 0..<6 {
            let c = try RawClient(port: port)
            _ = try c.readReply()
            _ = try c.command("EHLO client.test")
            #expect(try c.sendMessage(from: "ann@sender.test", to: ["u\(i)@mail.test"], body: "Subject: \(i)\r\n\r\nhello\r\n").status == "250 2.0.0")
        }
        #expect(await eventually { mta.messages().count == 6 }, "\(serve.log)")
        // Every message left from b, which said its own name.
        #expect(mta.messages().allSatisfy { $0["peer"] as? String == "127.0.0.3" && $0["helo"] as? String == "b.out.test" }, "\(mta.messages())")
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM attempt WHERE source = 'b' AND source_address = '127.0.0.3'") } == 6)
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event WHERE kind = 'blocklist_listed'") } == 1)
        #expect(serve.log.contains("source listed on a blocklist"))
        #expect(await serve.terminate() == 0)
    }
}
