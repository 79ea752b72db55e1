// Interop: clients nobody on the Tern team wrote — Python's smtplib and
// swaks — against the in-process listener. A missing tool fails the test.

import Foundation
import GRDB
import NIOSSL
import Testing
import TernListener
@testable import TernStore

@Suite(.serialized) struct InteropTests {
    @Test func pythonSmtplib() async throws {
        try requireTool("python3")
        let server = try await TestServer.start { c in
            c.session.maxMessageSize = 100_000
            c.session.maxRecipients = 100
        }
        defer { Task { await server.stop() } }
        let script = repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/smtplib_client.py").path
        let r = try runProgram("python3", [script, String(server.port)])
        #expect(r.status == 0, "smtplib client failed: \(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)\n\(r.stderr)")

        let features = json["esmtp_features"] as? [String] ?? []
        for f in ["8bitmime", "chunking", "dsn", "enhancedstatuscodes", "pipelining", "size", "smtputf8"] {
            #expect(features.contains(f), "\(f)")
        }
        #expect(json["size_advertised"] as? String == "100000")
        let basic = json["basic"] as? [Any]
        #expect(basic?.first as? Int == 250)
        #expect((basic?.last as? String)?.hasPrefix("2.0.0 Ok: queued as") == true)
        #expect(json["pipelined_group"] as? [Int] == [250, 250, 250, 354])
        #expect(json["pipelined_next"] as? [Int] == [250, 250, 250, 354])
        #expect(json["pipelined_end"] as? Int == 250)
        #expect(json["rset"] as? Int == 250)
        #expect(json["rcpt_after_rset"] as? Int == 503)
        #expect((json["size_declared"] as? [Any])?.first as? Int == 552)
        #expect((json["size_undeclared"] as? [Any])?.first as? Int == 552)
        #expect((json["dsn"] as? [String: Any])?.isEmpty == true)
        #expect(json["dsn_bad"] as? [Int] == [501])
        #expect(json["utf8_without"] as? [Int] == [553])
        #expect((json["utf8"] as? [String: Any])?.isEmpty == true)
        #expect(json["many_refused"] as? Int == 50)
        #expect(json["many_refused_codes"] as? [Int] == [452])
        #expect(json["quit"] as? Int == 221)

        // What arrived in the database.
        func rows(_ sql: String) throws -> [Row] { try server.store.read { db in try Row.fetchAll(db, sql: sql) } }
        #expect(try server.count("SELECT count(*) FROM message WHERE header_message_id IN ('basic@py.test','pipe1@py.test','pipe2@py.test')") == 3)
        #expect(try server.count("SELECT count(*) FROM message WHERE header_message_id LIKE 'toobig%'") == 0)
        let pipe1 = try rows("SELECT r.address FROM recipient r JOIN message m ON m.id = r.message_id WHERE m.header_message_id = 'pipe1@py.test' ORDER BY r.id")
        #expect(pipe1.map { $0[0] as String } == ["p1@local.test", "p2@local.test"])
        let body = try server.store.read { db in try Data.fetchOne(db, sql: "SELECT body FROM message WHERE header_message_id = 'pipe1@py.test'") }
        #expect(String(decoding: body ?? Data(), as: UTF8.self).contains("\r\n.a line that starts with a dot\r\n"))
        let dsn = try #require(try rows("SELECT m.ret, m.env_id, r.notify, r.orcpt FROM message m JOIN recipient r ON r.message_id = m.id WHERE m.header_message_id = 'dsn@py.test'").first)
        #expect(dsn[0] as String == "HDRS")
        #expect(dsn[1] as String == "py+env")
        #expect(dsn[2] as String == "SUCCESS,FAILURE")
        #expect(dsn[3] as String == "rfc822;orig@x.test")
        let utf8 = try rows("SELECT m.smtputf8, m.mail_from, r.address, r.domain FROM message m JOIN recipient r ON r.message_id = m.id WHERE m.header_message_id = 'utf8@py.test' ORDER BY r.id")
        #expect(utf8.map { $0[2] as String } == ["用户@例子.test", "jörg@bücher.test"])
        #expect(utf8.map { $0[3] as String } == ["xn--fsqu00a.test", "xn--bcher-kva.test"])
        #expect(utf8.first?[0] as Int? == 1)
        #expect(utf8.first?[1] as String? == "jörg@x.test")
        #expect(try server.count("SELECT count(*) FROM recipient r JOIN message m ON m.id = r.message_id WHERE m.header_message_id = 'many@py.test'") == 100)
    }

    @Test func startTLSWithSmtplibAndOpenSSL() async throws {
        try requireTool("openssl")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-stls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let cert = dir.appendingPathComponent("cert.pem").path, key = dir.appendingPathComponent("key.pem").path
        let made = try runProgram("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                                              "-subj", "/CN=mx.tls.test", "-addext", "subjectAltName=DNS:mx.tls.test"])
        #expect(made.status == 0)
        let tls = try ServerTLS(certificate: cert, key: key)
        let server = try await TestServer.start { $0.tls = tls }
        defer { Task { await server.stop() } }
        let script = repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/starttls_client.py").path
        let r = try runProgram("python3", [script, String(server.port), cert])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)\(r.stderr)")
        #expect(json["offered"] as? Bool == true)
        #expect(json["starttls"] as? Int == 220)
        #expect((json["tls_version"] as? String)?.hasPrefix("TLSv1.") == true)
        #expect(json["offered_after"] as? Bool == false)
        #expect((json["data"] as? [Any])?.first as? Int == 250)
        #expect(json["injection_starttls"] as? String == "220 2.0.0 Ready to start TLS")
        #expect((json["injection_first_reply"] as? String)?.hasPrefix("503 5.5.1") == true)
        #expect((json["injection_ehlo"] as? String)?.hasPrefix("250-") == true)
        #expect((json["injection_quit"] as? String)?.hasPrefix("221") == true)
        #expect(try server.count("SELECT count(*) FROM message WHERE mail_from = 'evil@x.test'") == 0)
        let body = try server.store.read { db in try Data.fetchOne(db, sql: "SELECT body FROM message WHERE header_message_id = 'tls@py.test'") }
        let text = String(decoding: body ?? Data(), as: UTF8.self)
        #expect(text.contains(" with ESMTPS id ") && text.contains("(using TLSv1."), "\(text.prefix(300))")
        // openssl s_client drives the STARTTLS dialog itself, then our lines.
        let s = try runProgram("openssl", ["s_client", "-starttls", "smtp", "-connect", "127.0.0.1:\(server.port)", "-crlf", "-quiet"],
                               stdin: "EHLO openssl.test\nQUIT\n")
        #expect(s.stdout.contains("250-mx.test greets openssl.test"), "\(s.stdout)\(s.stderr)")
        #expect(s.stdout.contains("221 2.0.0 Bye"))
        // The modern profile (issue 15): no CBC suite (LUCKY13), no static
        // RSA key exchange, no TLS 1.1; AEAD with ECDHE is taken.
        func handshake(_ extra: [String]) throws -> ProcessResult {
            try runProgram("openssl", ["s_client", "-starttls", "smtp", "-connect", "127.0.0.1:\(server.port)", "-brief"] + extra, stdin: "")
        }
        for cbc in ["ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "AES128-GCM-SHA256", "AES256-SHA"] {
            let r = try handshake(["-tls1_2", "-cipher", cbc])
            #expect(!r.stderr.contains("CONNECTION ESTABLISHED"), "\(cbc) was accepted: \(r.stderr)")
        }
        #expect(!(try handshake(["-tls1_1"]).stderr.contains("CONNECTION ESTABLISHED")))
        let aead = try handshake(["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"])
        #expect(aead.stderr.contains("CONNECTION ESTABLISHED") && aead.stderr.contains("ECDHE-RSA-AES128-GCM-SHA256"), "\(aead.stderr)")
        let chacha = try handshake(["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"])
        #expect(chacha.stderr.contains("CONNECTION ESTABLISHED"), "\(chacha.stderr)")
    }

    @Test func swaks() async throws {
        try requireTool("swaks")
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        let port = String(server.port)
        let plain = try runProgram("swaks", ["--server", "127.0.0.1", "--port", port, "--from", "a@x.test", "--to", "b@local.test",
                                             "--header", "Message-Id: <swaks1@x.test>", "--body", "hello from swaks", "--timeout", "20"])
        #expect(plain.status == 0, "\(plain.stdout)\(plain.stderr)")
        #expect(plain.stdout.contains("<-  250 2.0.0 Ok: queued as "))
        let piped = try runProgram("swaks", ["--server", "127.0.0.1", "--port", port, "--pipeline", "--from", "<>",
                                             "--to", "c@local.test,d@far.test", "--header", "Message-Id: <swaks2@x.test>", "--timeout", "20"])
        #expect(piped.status == 0, "\(piped.stdout)\(piped.stderr)")
        #expect(piped.stdout.contains("250 2.0.0 Ok: queued as "))
        #expect(try server.count("SELECT count(*) FROM message WHERE header_message_id = 'swaks1@x.test'") == 1)
        #expect(try server.count("SELECT count(*) FROM recipient r JOIN message m ON m.id = r.message_id WHERE m.header_message_id = 'swaks2@x.test' AND m.mail_from = ''") == 2)
        // An unknown command gets the right code back to swaks.
        let quit = try runProgram("swaks", ["--server", "127.0.0.1", "--port", port, "--quit-after", "EHLO", "--timeout", "20"])
        #expect(quit.status == 0)
        #expect(quit.stdout.contains("250-PIPELINING"))
    }
}
