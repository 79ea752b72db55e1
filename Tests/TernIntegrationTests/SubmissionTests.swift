// Authenticated submission end to end: submission (587-style, STARTTLS) and
// submissions (465-style, implicit TLS) listeners with real accounts,
// driven by Python's smtplib/ssl, swaks and openssl s_client, plus the
// failed-login throttle and log hygiene through the real listener.

import Foundation
import GRDB
import Logging
import NIOConcurrencyHelpers
import Testing
@testable import TernAuth
@testable import TernCLI
import TernListener
import TernProtocol
@testable import TernStore

/// A certificate for mx.sub.test, made by `tern tls self-signed`'s code.
func makeTestCertificate() throws -> (cert: String, key: String) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-sub-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let (certPEM, keyPEM) = try TLS.SelfSigned.make(host: "mx.sub.test", days: 2)
    let cert = dir.appendingPathComponent("cert.pem").path, key = dir.appendingPathComponent("key.pem").path
    try Data(certPEM.utf8).write(to: URL(fileURLWithPath: cert))
    try Data(keyPEM.utf8).write(to: URL(fileURLWithPath: key))
    return (cert, key)
}

/// Collects every log line with its metadata, at trace level.
final class LogCapture: LogHandler, @unchecked Sendable {
    let lines = NIOLockedValueBox<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        lines.withLockedValue { $0.append("\(event.level) \(event.message) \(all)") }
    }
    var text: String { lines.withLockedValue { $0.joined(separator: "\n") } }
}

@Suite(.serialized) struct SubmissionTests {
    static let user = "alice@example.test"
    static let password = "tr0ub4dor & 3"

    /// relay, submission and submissions listeners (in that order) with one account.
    func startServer(policy: ThrottlePolicy = ThrottlePolicy(), plaintextAuth: Bool = false,
                     logger: Logger? = nil) async throws -> (TestServer, String, AccountAuthenticator) {
        let (cert, key) = try makeTestCertificate()
        let tls = try ServerTLS(certificate: cert, key: key)
        let box = NIOLockedValueBox<AccountAuthenticator?>(nil)
        let server = try await TestServer.start(logger: logger) { config, store in
            config.listen = [ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.1", 0, role: .submission, plaintextAuth: plaintextAuth),
                             ListenAddress("127.0.0.1", 0, role: .submissions)]
            config.tls = tls
            let auth = AccountAuthenticator(store: store, throttle: AuthThrottle(policy: policy),
                                            logger: logger ?? Logger(label: "test"), sleep: { _ in })
            box.withLockedValue { $0 = auth }
            config.authenticator = auth
        }
        try await server.store.addAccount(name: SubmissionTests.user, passwordHash: PasswordHasher(rounds: 1000).hash(SubmissionTests.password),
                                          senders: [SubmissionTests.user], now: nowMillis())
        return (server, cert, box.withLockedValue { $0! })
    }

    @Test func smtplibStartTLSLoginAndSMTPSSL() async throws {
        let (server, cert, auth) = try await startServer()
        defer { Task { await server.stop(); await auth.shutdown() } }
        let script = repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/submission_client.py").path
        let r = try await runProgramOffPool("/usr/bin/python3", [script, String(server.ports[1]), String(server.ports[2]), cert,
                                                    SubmissionTests.user, SubmissionTests.password])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)\(r.stderr)")
        #expect(json["auth_offered_before_tls"] as? Bool == false)
        #expect(json["auth_before_tls"] as? Int == 538)
        #expect(json["mail_before_auth"] as? Int == 530)
        #expect(json["starttls"] as? Int == 220)
        #expect(json["auth_mechanisms"] as? String == "PLAIN LOGIN")
        #expect(json["bad_login"] as? Int == 535)
        #expect(json["malformed"] as? Int == 501)
        #expect(json["cancel_step"] as? Int == 334)
        #expect(json["cancel"] as? Int == 501)
        #expect(json["login"] as? Int == 235)
        #expect(json["foreign_sender"] as? Int == 553)
        #expect(json["sent_587"] as? Bool == true)
        #expect((json["tls_version_465"] as? String)?.hasPrefix("TLSv1.") == true)
        #expect(json["starttls_offered_465"] as? Bool == false)
        #expect(json["login_465"] as? Int == 235)
        #expect(json["sent_465"] as? Bool == true)
        #expect(json["injection_starttls"] as? String == "220 2.0.0 Ready to start TLS")
        #expect((json["injection_ehlo"] as? String)?.hasPrefix("250-mx.test") == true)
        #expect(json["injection_mail"] as? String == "530 5.7.0 Authentication required")
        // Both messages are stored as submissions by alice, with the RFC 6409 fix-ups.
        let rows = try server.store.read { db in
            try Row.fetchAll(db, sql: "SELECT auth_user, origin, body, header_message_id FROM message ORDER BY id")
        }
        #expect(rows.count == 2)
        #expect(rows.allSatisfy { $0["auth_user"] as String? == SubmissionTests.user && $0["origin"] as String == "submission" })
        let second = String(decoding: rows[1]["body"] as Data, as: UTF8.self)
        #expect(second.contains("with ESMTPSA"))
        #expect(second.contains("\r\nMessage-ID: <") && second.contains("\r\nDate: "))
        #expect(rows[0]["header_message_id"] as String? == "sub587@py.test")
        // The failed login is in the events: smtplib's login() tried PLAIN, then LOGIN.
        let failed = try server.store.read { db in
            try String.fetchAll(db, sql: "SELECT json_extract(detail, '$.mechanism') FROM event WHERE kind = 'auth_failed' AND json_extract(detail, '$.user') = ? ORDER BY id",
                                arguments: [SubmissionTests.user])
        }
        #expect(failed == ["PLAIN", "LOGIN"])
    }

    @Test func swaksTLSAuthAndImplicitTLS() async throws {
        try requireTool("swaks")
        let (server, _, auth) = try await startServer()
        defer { Task { await server.stop(); await auth.shutdown() } }
        func swaks(_ port: Int, _ extra: [String]) async throws -> ProcessResult {
            try await runProgramOffPool("swaks", ["--server", "127.0.0.1", "--port", String(port), "--to", "bob@far.test", "--helo", "swaks.test",
                                     "--auth-user", SubmissionTests.user, "--auth-password", SubmissionTests.password,
                                     "--from", SubmissionTests.user, "--timeout", "20"] + extra)
        }
        for mechanism in ["PLAIN", "LOGIN"] {
            let r = try await swaks(server.ports[1], ["--tls", "--auth", mechanism])
            #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
            #expect(r.stdout.contains("235 2.7.0 Authentication successful"))
            #expect(r.stdout.contains("250 2.0.0 Ok: queued as "))
        }
        let implicit = try await swaks(server.ports[2], ["--tlsc", "--auth", "PLAIN"])
        #expect(implicit.status == 0, "\(implicit.stdout)\(implicit.stderr)")
        #expect(implicit.stdout.contains("250 2.0.0 Ok: queued as "))
        // Without --tls swaks finds no AUTH to use; with a wrong password it fails.
        let clear = try await swaks(server.ports[1], ["--auth", "PLAIN"])
        #expect(clear.status != 0)
        let wrong = try await runProgramOffPool("swaks", ["--server", "127.0.0.1", "--port", String(server.ports[1]), "--tls", "--auth", "LOGIN",
                                             "--auth-user", SubmissionTests.user, "--auth-password", "nope", "--from", SubmissionTests.user,
                                             "--to", "bob@far.test", "--timeout", "20"])
        #expect(wrong.status != 0)
        #expect(wrong.stdout.contains("535 5.7.8"))
        #expect(try server.count("SELECT count(*) FROM message WHERE auth_user = '\(SubmissionTests.user)'") == 3)
        // The relay listener also offers AUTH over TLS, and an authenticated client may relay.
        let relay = try await swaks(server.ports[0], ["--tls", "--auth", "PLAIN"])
        #expect(relay.status == 0, "\(relay.stdout)\(relay.stderr)")
    }

    @Test func opensslSeesEachRoleGreetOverTLS() async throws {
        try requireTool("openssl")
        let (server, _, auth) = try await startServer()
        defer { Task { await server.stop(); await auth.shutdown() } }
        let implicit = try await runProgramOffPool("openssl", ["s_client", "-connect", "127.0.0.1:\(server.ports[2])", "-crlf", "-quiet"],
                                      stdin: "EHLO openssl.test\nQUIT\n")
        #expect(implicit.stdout.contains("220 mx.test ESMTP Tern"), "\(implicit.stdout)\(implicit.stderr)")
        #expect(implicit.stdout.contains("250-AUTH PLAIN LOGIN") || implicit.stdout.contains("250 AUTH PLAIN LOGIN"))
        #expect(!implicit.stdout.contains("STARTTLS"))
        let starttls = try await runProgramOffPool("openssl", ["s_client", "-starttls", "smtp", "-connect", "127.0.0.1:\(server.ports[1])", "-crlf", "-quiet"],
                                      stdin: "EHLO openssl.test\nMAIL FROM:<\(SubmissionTests.user)>\nQUIT\n")
        #expect(starttls.stdout.contains("AUTH PLAIN LOGIN"), "\(starttls.stdout)\(starttls.stderr)")
        #expect(starttls.stdout.contains("530 5.7.0 Authentication required"))
        // A client that never completes the handshake is not greeted in the clear.
        let raw = try RawClient(port: server.ports[2], timeoutSeconds: 2)
        try raw.send("EHLO plain.test\r\n")
        #expect(throws: (any Error).self) { _ = try raw.readReply() }
    }

    @Test func failedLoginsAreThrottledThenRefused() async throws {
        var policy = ThrottlePolicy()
        policy.maxFailures = 2
        let (server, _, auth) = try await startServer(policy: policy, plaintextAuth: true)
        defer { Task { await server.stop(); await auth.shutdown() } }
        let port = server.ports[1]
        // The dialog runs off the cooperative pool: the authenticator's task needs it.
        let replies = try await offPool { () -> [String] in
            let c = try RawClient(port: port)
            _ = try c.readReply()
            let ehlo = try c.command("EHLO raw.test")
            func plain(_ password: String) -> String { "AUTH PLAIN " + Base64.encode(Array("\0\(SubmissionTests.user)\0\(password)".utf8)) }
            var out = [ehlo.lines.contains("AUTH PLAIN LOGIN") ? "AUTH offered" : "no AUTH"] // plaintext allowed: loopback
            out.append(try c.command(plain("guess1")).status)
            out.append(try c.command(plain("guess2")).status)
            // Now refused unchecked, even the right password, from this address.
            out.append(try c.command(plain(SubmissionTests.password)).status)
            let other = try RawClient(port: port)
            _ = try other.readReply()
            _ = try other.command("EHLO raw.test")
            out.append(try other.command(plain(SubmissionTests.password)).status)
            return out
        }
        #expect(replies == ["AUTH offered", "535 5.7.8", "535 5.7.8", "454 4.7.0", "454 4.7.0"])
        let kinds = try server.store.read { db in try String.fetchAll(db, sql: "SELECT kind FROM event WHERE message_id IS NULL ORDER BY id") }
        #expect(kinds == ["auth_failed", "auth_failed", "auth_blocked", "auth_blocked"])
    }

    @Test func secretsNeverReachTheLog() async throws {
        let capture = LogCapture()
        let logger = Logger(label: "capture") { _ in capture }
        let (server, _, auth) = try await startServer(plaintextAuth: true, logger: logger)
        defer { Task { await server.stop(); await auth.shutdown() } }
        let wrong = "wrong-Secret-42"
        let good = Base64.encode(Array("\0\(SubmissionTests.user)\0\(SubmissionTests.password)".utf8))
        let port = server.ports[1]
        let codes = try await offPool { () -> [Int] in
            let c = try RawClient(port: port)
            _ = try c.readReply()
            _ = try c.command("EHLO raw.test")
            var out = [try c.command("AUTH LOGIN").code]
            out.append(try c.command(Base64.encode(Array(SubmissionTests.user.utf8))).code)
            out.append(try c.command(Base64.encode(Array(wrong.utf8))).code)
            out.append(try c.command("AUTH PLAIN \(good)").code)
            out.append(try c.sendMessage(from: SubmissionTests.user, to: ["x@far.test"], body: "Subject: s\r\n\r\nbody\r\n").code)
            _ = try c.command("QUIT")
            return out
        }
        #expect(codes == [334, 334, 535, 235, 250])
        await server.waitForNoConnections()
        let log = capture.text
        #expect(log.contains("authentication failed") && log.contains("authenticated"))
        for secret in [wrong, SubmissionTests.password, good, Base64.encode(Array(wrong.utf8))] {
            #expect(!log.contains(secret), "a secret reached the log")
        }
        let events = try server.store.read { db in try String.fetchAll(db, sql: "SELECT coalesce(detail, '') FROM event") }.joined()
        #expect(!events.contains(wrong) && !events.contains(SubmissionTests.password))
    }
}
