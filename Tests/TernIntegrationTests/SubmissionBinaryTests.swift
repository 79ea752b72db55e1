// The real `tern` binary for submission: `tern tls self-signed`, `tern user
// …` (password from standard input), `tern serve` with submission and
// submissions listeners from flags and from TOML, swaks against both, and
// the certificate reloaded on SIGHUP.

import Foundation
import GRDB
import Testing
@testable import TernStore

@Suite(.serialized) struct SubmissionBinaryTests {
    func tern(_ args: [String], stdin: String? = nil) throws -> ProcessResult {
        try runProgram(try ternBinary(), args, stdin: stdin)
    }

    func fingerprint(_ port: Int, starttls: Bool = false) throws -> String {
        let s = try runProgram("openssl", ["s_client", "-connect", "127.0.0.1:\(port)"] + (starttls ? ["-starttls", "smtp"] : []),
                               stdin: "")
        let certPEM = s.stdout
        let fp = try runProgram("openssl", ["x509", "-noout", "-fingerprint", "-sha256"], stdin: certPEM)
        return fp.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func userCommands() throws {
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("t.sqlite").path
        // Only serve and migrate create a database; the password comes from stdin.
        #expect(try tern(["user", "add", "alice@example.test", "--db", db], stdin: "s3cret\n").status == 66)
        #expect(!FileManager.default.fileExists(atPath: db))
        #expect(try tern(["migrate", "--db", db]).status == 0)
        let add = try tern(["user", "add", "alice@example.test", "--db", db], stdin: "s3cret\n")
        #expect(add.status == 0, "\(add.stderr)")
        #expect(add.stdout.contains("added alice@example.test (may send as: alice@example.test)"))
        let dup = try tern(["user", "add", "ALICE@example.test", "--db", db], stdin: "x\n")
        #expect(dup.status == 65 && dup.stderr.contains("exists"))
        #expect(try tern(["user", "add", "bob", "--db", db], stdin: "\n").status == 65) // empty password
        #expect(try tern(["user", "add", "bob", "--sender", "not an address", "--db", db], stdin: "pw\n").status == 64)
        let bob = try tern(["user", "add", "bob", "--sender", "@Corp.test", "--sender", "bob@other.test", "--db", db], stdin: "pw\n")
        #expect(bob.status == 0, "\(bob.stderr)")
        let list = try tern(["user", "list", "--db", db, "--format", "json"])
        let accounts = try #require(try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]])
        #expect(accounts.map { $0["name"] as? String } == ["alice@example.test", "bob"])
        #expect(accounts[1]["senders"] as? [String] == ["@corp.test", "bob@other.test"])
        #expect(!list.stdout.contains("pbkdf2")) // hashes are never shown
        let table = try tern(["user", "list", "--db", db])
        #expect(table.stdout.hasPrefix("NAME "))
        #expect(try tern(["user", "senders", "bob", "*", "--db", db]).stdout.contains("bob may send as: *"))
        let hash = { try Store(path: db).account(named: "bob")!.passwordHash }
        let before = try hash()
        #expect(try tern(["user", "passwd", "bob", "--db", db], stdin: "new password\n").status == 0)
        let after = try hash()
        #expect(before != after && after.hasPrefix("$pbkdf2-sha256$600000$"))
        #expect(try tern(["user", "passwd", "carol", "--db", db], stdin: "x\n").status == 67)
        #expect(try tern(["user", "remove", "bob", "--db", db]).status == 0)
        #expect(try tern(["user", "remove", "bob", "--db", db]).status == 67)
    }

    @Test func serveSubmissionListenersWithSwaksAndReloadOnSIGHUP() async throws {
        try requireTool("swaks")
        try requireTool("openssl")
        let dir = try tempFolder()
        let db = dir.appendingPathComponent("t.sqlite").path
        let cert = dir.appendingPathComponent("tls/cert.pem").path, key = dir.appendingPathComponent("tls/key.pem").path
        let made = try tern(["tls", "self-signed", "--host", "mx.one.test", "--cert", cert, "--key", key])
        #expect(made.status == 0, "\(made.stderr)")
        let mode = try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(try tern(["tls", "self-signed", "--host", "mx.one.test", "--cert", cert, "--key", key]).status == 73) // no overwrite
        #expect(try tern(["migrate", "--db", db]).status == 0)
        #expect(try tern(["user", "add", "alice@example.test", "--db", db], stdin: "pw for swaks\n").status == 0)
        // Both forms of TOML listener (flags would replace them: --listen overrides the file).
        let config = dir.appendingPathComponent("tern.toml")
        try Data("""
            listen = ["submission@127.0.0.1:0"]
            [[listener]]
            address = "127.0.0.1:0"
            role = "submissions"
            """.utf8).write(to: config)
        let serve = try ServeProcess(["--config", config.path, "--db", db, "--no-deliver",
                                      "--resolver", "127.0.0.1:9", "--tls-cert", cert, "--tls-key", key, "--hostname", "mx.test"])
        let submission = try await serve.port(role: "submission")
        let submissions = try await serve.port(role: "submissions")
        func swaks(_ port: Int, _ extra: [String]) throws -> ProcessResult {
            try runProgram("swaks", ["--server", "127.0.0.1", "--port", String(port), "--from", "alice@example.test", "--to", "bob@far.test",
                                     "--auth-user", "alice@example.test", "--auth-password", "pw for swaks", "--timeout", "20"] + extra)
        }
        let a = try swaks(submission, ["--tls", "--auth", "LOGIN"])
        #expect(a.status == 0, "\(a.stdout)\(a.stderr)")
        let b = try swaks(submissions, ["--tlsc", "--auth", "PLAIN"])
        #expect(b.status == 0, "\(b.stdout)\(b.stderr)")
        // SIGHUP: new handshakes get the new certificate.
        let first = try fingerprint(submissions)
        #expect(first.contains("Fingerprint="), "\(first)")
        #expect(try tern(["tls", "self-signed", "--host", "mx.two.test", "--cert", cert, "--key", key, "--force"]).status == 0)
        let open = try RawClient(port: submission) // a connection made before the reload stays up
        _ = try open.readReply()
        #expect(try open.command("EHLO open.test").code == 250)
        kill(serve.process.processIdentifier, SIGHUP)
        var second = first
        for _ in 0..<100 where second == first {
            try await Task.sleep(for: .milliseconds(50))
            second = try fingerprint(submissions)
        }
        #expect(second != first && second.contains("Fingerprint="))
        #expect(try fingerprint(submission, starttls: true) == second)
        #expect(try open.command("NOOP").status == "250 2.0.0")
        // A broken file on SIGHUP keeps the current certificate.
        try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: cert))
        kill(serve.process.processIdentifier, SIGHUP)
        for _ in 0..<100 where !serve.log.contains("cannot reload") { try await Task.sleep(for: .milliseconds(20)) }
        #expect(serve.log.contains("keeping the current one"))
        #expect(try fingerprint(submissions) == second)
        #expect(try swaks(submissions, ["--tlsc", "--auth", "PLAIN"]).status == 0)
        #expect(await serve.terminate() == 0)
        let stored = try Store(path: db)
        defer { stored.close() }
        #expect(try stored.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM message WHERE auth_user = 'alice@example.test' AND origin = 'submission'") } == 3)
    }

    @Test func submissionsWithoutACertificateIsAConfigurationError() throws {
        let dir = try tempFolder()
        let r = try tern(["serve", "--listen", "submissions@127.0.0.1:0", "--db", dir.appendingPathComponent("t.sqlite").path,
                          "--resolver", "127.0.0.1:9"])
        #expect(r.status == 78)
        #expect(r.stderr.contains("needs tls_cert and tls_key"))
    }
}
