// `tern auth spf|dkim-verify|dmarc` (issue 17 item 3): the binary against
// records served by dnsmasq on loopback, text and JSON ("result" is the
// RFC's word), and the DNS steps shown.

import Foundation
import Testing
import TernDKIM
import TernTestSupport

@Suite(.serialized) struct AuthCommandTests {
    func json(_ text: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
    }

    @Test func spfDkimVerifyAndDmarcFromTheCommandLine() async throws {
        let tern = try ternBinary()
        let ed = try DKIMPrivateKey.generate(.ed25519)
        let dns = try TestDNS(txt: [
            ("example.test", "v=spf1 ip4:192.0.2.0/24 include:_spf.example.test -all"),
            ("_spf.example.test", "v=spf1 ip4:198.51.100.7 ~all"),
            ("_dmarc.example.test", "v=DMARC1; p=quarantine; sp=reject; pct=50"),
            ("ed._domainkey.example.test", ed.dnsRecord),
        ])
        defer { withExtendedLifetime(dns) {} }
        let resolver = ["--resolver", "127.0.0.1:\(dns.port)"]
        // dnsmasq needs a moment to bind.
        var out = ProcessResult(status: -1, stdout: "", stderr: "")
        for _ in 0..<50 {
            out = try await runProgramOffPool(tern, ["auth", "spf", "--ip", "192.0.2.9", "--mail-from", "bob@example.test", "--helo", "mx.example.test",
                                                     "--format", "json"] + resolver)
            if (try? json(out.stdout))?["result"] as? String == "pass" { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        var j = try json(out.stdout)
        #expect(j["result"] as? String == "pass" && j["identity"] as? String == "mailfrom", "\(out)")
        #expect((j["helo"] as? [String: Any])?["result"] as? String == "none")
        // Through the include: softfail does not match; the -all after it fails; the steps say so.
        out = try await runProgramOffPool(tern, ["auth", "spf", "--ip", "203.0.113.1", "--mail-from", "bob@example.test", "--helo", "h.example.test"] + resolver)
        #expect(out.status == 0 && out.stdout.hasPrefix("SPF (mailfrom example.test): fail"), "\(out)")
        #expect(out.stdout.contains("dns: TXT _spf.example.test: \"v=spf1 ip4:198.51.100.7 ~all\""))
        out = try await runProgramOffPool(tern, ["auth", "spf", "--ip", "198.51.100.7", "--mail-from", "", "--helo", "example.test", "--format", "json"] + resolver)
        j = try json(out.stdout)
        // A null reverse-path: the HELO identity is the one checked (the include's ip4 matches).
        #expect(j["result"] as? String == "pass" && j["identity"] as? String == "helo", "\(out)")

        // dkim-verify: a message Tern signs verifies; a changed one fails.
        let text = "From: a@example.test\nTo: b@x.test\nSubject: hi\nDate: Sun, 6 Dec 2026 10:00:00 +0000\n\nbody\n"
        let crlf = Array(text.replacingOccurrences(of: "\n", with: "\r\n").utf8)
        let signer = try DKIMSigner(keys: [DKIMKey(domain: "example.test", selector: "ed", key: ed)])
        let signed = try signer.sign(crlf, now: Int64(Date().timeIntervalSince1970)) + String(decoding: crlf, as: UTF8.self)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("tern-auth-\(UUID().uuidString).eml").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try Data(signed.utf8).write(to: URL(fileURLWithPath: file))
        out = try await runProgramOffPool(tern, ["auth", "dkim-verify", file, "--format", "json"] + resolver)
        j = try json(out.stdout)
        #expect(j["result"] as? String == "pass", "\(out)")
        #expect(((j["signatures"] as? [[String: Any]])?.first?["domain"] as? String) == "example.test")
        try Data(signed.replacingOccurrences(of: "Subject: hi", with: "Subject: hi!").utf8).write(to: URL(fileURLWithPath: file))
        out = try await runProgramOffPool(tern, ["auth", "dkim-verify", file] + resolver)
        #expect(out.stdout.hasPrefix("DKIM: fail"), "\(out)")
        #expect(out.stdout.contains("dns: TXT ed._domainkey.example.test: \"v=DKIM1; k=ed25519; p="), "\(out)")

        // dmarc --domain: the organisational domain's record, sp= for a subdomain.
        out = try await runProgramOffPool(tern, ["auth", "dmarc", "--domain", "news.example.test", "--format", "json"] + resolver)
        j = try json(out.stdout)
        #expect(j["result"] as? String == "fail" && j["policy_domain"] as? String == "example.test" && j["disposition"] as? String == "reject", "\(out)")
        out = try await runProgramOffPool(tern, ["auth", "dmarc", "--domain", "nothing.test", "--format", "json"] + resolver)
        #expect(try json(out.stdout)["result"] as? String == "none", "\(out)")
        // dmarc --file: the whole verdict, as intake runs it.
        try Data(signed.utf8).write(to: URL(fileURLWithPath: file))
        out = try await runProgramOffPool(tern, ["auth", "dmarc", "--file", file, "--ip", "203.0.113.1", "--mail-from", "x@other.test",
                                                 "--helo", "h.test", "--format", "json"] + resolver)
        j = try json(out.stdout)
        #expect(j["result"] as? String == "pass" && j["dkim_aligned"] as? Bool == true, "\(out)")
        #expect((j["authentication_results"] as? String)?.contains("dkim=pass header.d=example.test") == true)
        // Usage errors are clear.
        out = try await runProgramOffPool(tern, ["auth", "spf", "--ip", "not-an-ip", "--helo", "x"] + resolver)
        #expect(out.status == 64 && out.stderr.contains("not an IPv4 or IPv6 address"), "\(out)")
    }
}
