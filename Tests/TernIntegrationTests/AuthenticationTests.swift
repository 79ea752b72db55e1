// Issue 17 item 2 end to end: a relay listener checks SPF, DKIM and DMARC
// for mail from an untrusted client (127.0.0.1 is not trusted here), with
// the records served by dnsmasq on loopback and asked by Tern's c-ares
// resolver; it adds Authentication-Results:, keeps the verdicts on the
// message row, refuses DMARC p=reject under enforce, keeps and marks
// quarantine, refuses SPF fail at MAIL when opted in, and accepts (and
// records temperror) when DNS fails.

import Foundation
import Testing
import GRDB
import TernDKIM
import TernIntake
import TernListener
import TernMailAuth
import TernProtocol
import TernRouting
import TernStore
import TernTestSupport

@Suite(.serialized) struct AuthenticationTests {
    static let ed = try! DKIMPrivateKey.generate(.ed25519)

    /// A message; signed by example.test's key when `signed` (a spoofer has no key).
    func message(from: String, subject: String = "hello", extra: String = "", signed: Bool = true) throws -> String {
        let text = "From: \(from)\r\nTo: r@local.test\r\nSubject: \(subject)\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\nMessage-ID: <\(UUID().uuidString)@x>\r\n\(extra)\r\nbody\r\n"
        guard signed else { return text }
        let signer = try DKIMSigner(keys: [DKIMKey(domain: "example.test", selector: "ed", key: AuthenticationTests.ed)])
        return try signer.sign(Array(text.utf8), now: Int64(Date().timeIntervalSince1970)) + text
    }

    func server(dnsPort: Int, _ edit: @escaping (inout ListenerConfig) -> Void = { _ in }) async throws -> (TestServer, CAresResolver) {
        let resolver = try CAresResolver(servers: ["127.0.0.1:\(dnsPort)"])
        let verifier = MailVerifier(dns: CachingAuthDNS(base: resolver, clock: { nowMillis() }), psl: try PublicSuffixList(),
                                    authservID: "mx.test", clock: { nowMillis() })
        let server = try await TestServer.start { config in
            config.session.relay = RelayPolicy(relayDomains: ["local.test"], trustedNetworks: [IPNetwork("10.0.0.0/8")!])
            config.verifier = verifier
            edit(&config)
        }
        return (server, resolver)
    }

    func stored(_ server: TestServer) throws -> [(spf: String?, dkim: String?, dmarc: String?, disposition: String?, body: String)] {
        try server.store.read { db in
            try Row.fetchAll(db, sql: "SELECT auth_spf, auth_dkim, auth_dmarc, auth_disposition, body FROM message ORDER BY id").map {
                ($0[0], $0[1], $0[2], $0[3], String(decoding: ($0[4] as Data?) ?? Data(), as: UTF8.self))
            }
        }
    }

    @Test func verdictsAreRecordedEnforcedAndNeverFailOnDNS() async throws {
        let dns = try TestDNS(txt: [
            ("example.test", "v=spf1 ip4:127.0.0.1 -all"),
            ("ed._domainkey.example.test", AuthenticationTests.ed.dnsRecord),
            ("_dmarc.example.test", "v=DMARC1; p=reject"),
            ("evil.test", "v=spf1 -all"),
            ("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
            ("quarantine.test", "v=spf1 -all"),
        ])
        defer { withExtendedLifetime(dns) {} }
        // Three relay listeners: the default policy (record), enforce, and enforce with SPF at MAIL.
        let (server, resolver) = try await server(dnsPort: dns.port) { config in
            var enforce = ListenAddress("127.0.0.1", 0)
            enforce.verify = .enforce
            var strict = ListenAddress("127.0.0.1", 0)
            strict.verify = .enforce
            strict.spfReject = true
            config.listen = [ListenAddress("127.0.0.1", 0), enforce, strict]
        }
        defer { resolver.shutdown() }
        // dnsmasq needs a moment to bind.
        for _ in 0..<50 where await resolver.txt("example.test").records == nil { try await Task.sleep(for: .milliseconds(100)) }

        // record: aligned SPF and DKIM pass; a forged Authentication-Results: for our authserv-id is removed, another's kept.
        let record = try RawClient(port: server.ports[0])
        _ = try record.readReply()
        _ = try record.command("EHLO client.example.test")
        let forged = "Authentication-Results: mx.test; dmarc=pass header.from=evil.test\r\nAuthentication-Results: other.test; spf=pass\r\n"
        #expect(try record.sendMessage(from: "a@example.test", to: ["r@local.test"], body: try message(from: "a@example.test", extra: forged)).code == 250)
        // record: a DMARC reject is only recorded.
        #expect(try record.sendMessage(from: "x@evil.test", to: ["r@local.test"], body: try message(from: "ceo@example.test", signed: false)).code == 250)
        var rows = try stored(server)
        #expect(rows.count == 2)
        #expect(rows[0].spf == "pass" && rows[0].dkim == "pass" && rows[0].dmarc == "pass" && rows[0].disposition == "none", "\(rows[0])")
        // MAIL FROM's SPF, then the HELO identity's (client.example.test publishes nothing), then the signature, then DMARC.
        #expect(rows[0].body.contains("Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@example.test;\r\n"
                                      + "\tspf=none (client.example.test publishes no SPF record) smtp.helo=client.example.test;\r\n"
                                      + "\tdkim=pass header.d=example.test header.s=ed"), "\(rows[0].body)")
        #expect(rows[0].body.components(separatedBy: "Authentication-Results: mx.test;").count == 2) // ours only: the forged one is gone
        #expect(rows[0].body.contains("Authentication-Results: other.test; spf=pass"))
        #expect(rows[1].spf == "fail" && rows[1].dkim == "none" && rows[1].dmarc == "fail" && rows[1].disposition == "reject", "\(rows[1])")
        // tern history's source: the verdicts on the received line of each recipient's timeline.
        let history = try server.store.history(HistoryFilter())
        #expect(history.count == 2)
        #expect(history.contains { $0.authentication?.summary == "spf=pass dkim=pass dmarc=pass" })
        #expect(history.contains { $0.authentication?.summary == "spf=fail dkim=none dmarc=fail (reject)" })
        #expect(history.allSatisfy { $0.timeline.first?.text == $0.authentication?.summary })

        // enforce: p=reject without an aligned pass is refused at the end of DATA; nothing is stored.
        let enforce = try RawClient(port: server.ports[1])
        _ = try enforce.readReply()
        _ = try enforce.command("EHLO client.example.test")
        let refused = try enforce.sendMessage(from: "x@evil.test", to: ["r@local.test"], body: try message(from: "ceo@example.test", subject: "pay now", signed: false))
        #expect(refused.code == 550 && refused.description.contains("5.7.1") && refused.description.contains("DMARC"), "\(refused)")
        // The session goes on: an aligned message is accepted; quarantine is kept and marked.
        #expect(try enforce.sendMessage(from: "a@example.test", to: ["r@local.test"], body: try message(from: "a@example.test")).code == 250)
        #expect(try enforce.sendMessage(from: "b@evil.test", to: ["r@local.test"], body: try message(from: "b@quarantine.test", signed: false)).code == 250)
        rows = try stored(server)
        #expect(rows.count == 4)
        #expect(rows[2].dmarc == "pass")
        #expect(rows[3].dmarc == "fail" && rows[3].disposition == "quarantine" && rows[3].body.contains("dmarc=fail (p=quarantine dis=quarantine)"))

        // spf_reject: SPF fail refuses MAIL with 5.7.23; a pass goes on.
        let strict = try RawClient(port: server.ports[2])
        _ = try strict.readReply()
        _ = try strict.command("EHLO client.example.test")
        let mail = try strict.command("MAIL FROM:<x@evil.test>")
        #expect(mail.code == 550 && mail.description.contains("5.7.23"), "\(mail)")
        #expect(try strict.command("RSET").code == 250)
        #expect(try strict.sendMessage(from: "a@example.test", to: ["r@local.test"], body: try message(from: "a@example.test")).code == 250)
        #expect(try stored(server).last?.spf == "pass")
        await server.stop()

        // DNS down (a dead port on loopback): every check is temperror, the message is accepted and recorded.
        let (down, deadResolver) = try await self.server(dnsPort: 9) { config in
            var l = ListenAddress("127.0.0.1", 0)
            l.verify = .enforce
            l.spfReject = true
            config.listen = [l]
        }
        defer { deadResolver.shutdown() }
        let c = try RawClient(port: down.port)
        _ = try c.readReply()
        _ = try c.command("EHLO client.example.test")
        #expect(try c.sendMessage(from: "a@example.test", to: ["r@local.test"], body: try message(from: "a@example.test")).code == 250)
        let r = try stored(down)
        #expect(r.count == 1 && r[0].spf == "temperror" && r[0].dkim == "temperror" && r[0].dmarc == "temperror", "\(r)")
        await down.stop()
    }

    @Test func trustedAndSubmissionMailIsNotChecked() async throws {
        let (server, resolver) = try await server(dnsPort: 9) { config in
            config.session.relay = RelayPolicy(relayDomains: ["local.test"]) // loopback trusted (the default)
        }
        defer { resolver.shutdown() }
        let c = try RawClient(port: server.port)
        _ = try c.readReply()
        _ = try c.command("EHLO client.example.test")
        #expect(try c.sendMessage(from: "a@example.test", to: ["r@local.test"], body: try message(from: "a@example.test")).code == 250)
        let r = try stored(server)
        #expect(r.count == 1 && r[0].spf == nil && !r[0].body.contains("Authentication-Results: mx.test"))
        await server.stop()
    }
}

extension DNSAnswer {
    var records: T? { if case .records(let r) = self { r } else { nil } }
}
