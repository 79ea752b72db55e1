import Foundation
import GRDB
import Logging
import Synchronization
import Testing
import TernConcurrency
import TernHTTP
import TernIntake
import TernListener
import TernStore

/// Issue 20: the HTTP listener in process, over HTTPS (curl checks the
/// certificate), and injection when the queue's disk is full.
@Suite(.serialized) struct APIInProcessTests {
    @Test func httpsServesTheAPIAndAFullDiskAnswers503WithRetryAfter() async throws {
        try requireTool("openssl")
        try requireTool("curl")
        let dir = try tempFolder()
        let cert = dir.appendingPathComponent("cert.pem").path, key = dir.appendingPathComponent("key.pem").path
        let made = try runProgram("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                                              "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        #expect(made.status == 0, "\(made.stderr)")
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let intake = Intake(store: server.store, hostname: "mx.test", logger: logger)
        let token = APITokens.generate()
        #expect(try await server.store.addAPIToken(name: "app", hash: APITokens.hash(token), scope: "inject", now: nowMillis()))
        let bound = Mutex<Int>(0)
        let http = HTTPServer(host: "127.0.0.1", port: 0, store: server.store, logger: logger,
                              api: HTTPAPI(intake: intake, limits: InjectionLimits(maxMessageSize: 2_000_000, maxRecipients: 10),
                                           tls: try ServerTLS.configuration(certificate: cert, key: key)),
                              onBound: { p in bound.withLock { $0 = p } })
        // On an event loop of its own: the handlers must not wait for the
        // cooperative pool, which other tests' blocking calls may hold.
        let running = Task(executorPreference: EventLoopExecutor(server.group.next())) { try await http.run() }
        defer { running.cancel() }
        #expect(await eventually { bound.withLock { $0 } > 0 })
        let url = "https://127.0.0.1:\(bound.withLock { $0 })/api/v1/messages"
        // Off the cooperative pool: the server's handlers run on it (a blocked thread there could starve them).
        func inject(_ bodyLines: Int) async throws -> (status: String, headers: String, body: String) {
            let text = String(repeating: String(repeating: "q", count: 78) + "\\n", count: bodyLines)
            let file = dir.appendingPathComponent("req-\(UUID().uuidString).json")
            try Data(#"{"envelope_sender": "a@b.test", "recipients": [{"email": "x@local.test"}], "content": "From: a@b.test\n\n\#(text)"}"#.utf8).write(to: file)
            let r = try await runProgramOffPool("/usr/bin/curl", ["-s", "-S", "-i", "--max-time", "20", "--cacert", cert, "-H", "Authorization: Bearer \(token)",
                                                     "-H", "Content-Type: application/json", "--data-binary", "@\(file.path)", url])
            let parts = r.stdout.components(separatedBy: "\r\n\r\n")
            return (parts[0].split(separator: "\r\n").first.map(String.init) ?? r.stderr, parts[0].lowercased(), parts.dropFirst().joined())
        }
        // HTTPS with a certificate curl checks.
        let first = try await inject(1)
        #expect(first.status.hasPrefix("HTTP/1.1 200"), "\(first)")
        #expect(try await runProgramOffPool("/usr/bin/curl", ["-s", "--max-time", "5", "http://127.0.0.1:\(bound.withLock { $0 })/health"]).status != 0) // plain HTTP: no
        #expect(try server.count("SELECT count(*) FROM message") == 1)
        // A full disk: 503 with Retry-After, nothing half-written.
        let pages = try server.store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA page_count") ?? 0 }
        _ = try server.store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = \(pages + 3)") }
        let full = try await inject(3000)
        #expect(full.status.hasPrefix("HTTP/1.1 503") && full.headers.contains("retry-after: 60"), "\(full)")
        #expect(full.body.contains("disk is full") && full.body.contains("\"failed_recipients\":[\"x@local.test\"]"), "\(full.body)")
        #expect(try server.count("SELECT count(*) FROM message") == 1)
        #expect(try server.count("SELECT count(*) FROM recipient") == 1)
        _ = try server.store.writeDirect { db in try Int.fetchOne(db, sql: "PRAGMA max_page_count = 1073741823") }
        #expect(try await inject(3000).status.hasPrefix("HTTP/1.1 200"))
        #expect(try server.count("SELECT count(*) FROM message") == 2)
    }

    /// The listener's bounds: an idle connection is closed, an oversized
    /// header is refused, an oversized body gets 413 without being read whole.
    @Test func idleConnectionsAndOversizedRequestsAreRefused() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var api = HTTPAPI(intake: Intake(store: server.store, hostname: "mx.test", logger: logger),
                          limits: InjectionLimits(maxMessageSize: 10_000, maxRecipients: 10))
        api.idleTimeoutSeconds = 1
        let token = APITokens.generate()
        #expect(try await server.store.addAPIToken(name: "app", hash: APITokens.hash(token), scope: "inject", now: nowMillis()))
        let bound = Mutex<Int>(0)
        let http = HTTPServer(host: "127.0.0.1", port: 0, store: server.store, logger: logger, api: api, onBound: { p in bound.withLock { $0 = p } })
        let running = Task(executorPreference: EventLoopExecutor(server.group.next())) { try await http.run() }
        defer { running.cancel() }
        #expect(await eventually { bound.withLock { $0 } > 0 })
        let port = bound.withLock { $0 }
        // Idle: closed after about a second.
        let idle = try RawClient(port: port)
        #expect(await eventually { idle.isClosedByPeer() })
        // A header field over 16 KiB: refused, never handled.
        let big = try await runProgramOffPool("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                                                "-H", "X-Big: " + String(repeating: "b", count: 20_000), "http://127.0.0.1:\(port)/health"])
        #expect(big.stdout != "200", "\(big.stdout)")
        // A body over twice the message limit: 413.
        let file = try tempFolder().appendingPathComponent("big.json")
        try Data(String(repeating: "x", count: 100_000).utf8).write(to: file)
        let body = try await runProgramOffPool("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                                                 "-H", "Authorization: Bearer \(token)", "-H", "Content-Type: application/json",
                                                                 "--data-binary", "@\(file.path)", "http://127.0.0.1:\(port)/api/v1/messages"])
        #expect(body.stdout == "413", "\(body.stdout)")
        #expect(try server.count("SELECT count(*) FROM message") == 0)
    }
}
