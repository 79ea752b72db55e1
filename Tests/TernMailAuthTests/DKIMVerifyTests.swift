// DKIM verification: signatures made by python3-dkim (its dkimsign command,
// and dkim.sign() for l=, which the command lacks: both algorithms, the four
// canonicalisation pairs, over the DKIM corpus) verify, with the keys looked up by Tern's c-ares resolver
// from dnsmasq on loopback; tampered copies do not, and each key-record rule
// (revoked, t=s, h=, small RSA, x=) gives its result.

import Foundation
import Testing
import TernDKIM
import TernMailAuth
import TernMessage
import TernRouting
import TernTestSupport

@Suite(.serialized) struct DKIMVerifyTests {
    let clock: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }

    @Test func signaturesFromDkimpyVerifyAndTamperedCopiesDoNot() async throws {
        let rsa = try DKIMPrivateKey.generate(.rsa)
        let ed = try DKIMPrivateKey.generate(.ed25519)
        guard case .rsa(let rsaKey) = rsa, case .ed25519(let edKey) = ed else { Issue.record("keys"); return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-dkimv-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(rsaKey.pemRepresentation.utf8).write(to: dir.appendingPathComponent("rsa.pem"))
        try Data(edKey.rawRepresentation.base64EncodedString().utf8).write(to: dir.appendingPathComponent("ed25519.key"))
        for (name, bytes) in DKIMCorpus.messages { try Data(bytes).write(to: dir.appendingPathComponent("\(name).eml")) }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("dkim_sign.py").path
        let out = try runTool("/usr/bin/python3", [script, dir.path, "example.test"])
        #expect(out.hasPrefix("ok"), "\(out)")

        let dns = try TestDNS(txt: [("rsa._domainkey.example.test", rsa.dnsRecord), ("ed._domainkey.example.test", ed.dnsRecord)])
        let resolver = try CAresResolver(servers: ["127.0.0.1:\(dns.port)"]) // serve's timeouts: a loaded run must not time out a dnsmasq answer
        defer { resolver.shutdown() }
        let verifier = DKIMVerifier(dns: resolver, clock: clock)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".signed") }.sorted()
        #expect(files.count == DKIMCorpus.messages.count * 2 * 4 * 2)
        // dnsmasq needs a moment to bind.
        for _ in 0..<50 {
            let first = await verifier.verify(Array(try Data(contentsOf: dir.appendingPathComponent(files[0]))))
            if first.first?.result != .temperror { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        var passed = 0
        for f in files {
            let message = Array(try Data(contentsOf: dir.appendingPathComponent(f)))
            let verdicts = await verifier.verify(message)
            #expect(verdicts.count == 1 && verdicts[0].result == .pass, "\(f): \(verdicts)")
            if verdicts.first?.result == .pass { passed += 1 }
            #expect(verdicts.first?.domain == "example.test")

            // A signed header changed.
            let changedHeader = replacing(message, "Subject: ", with: "Subject: RE: ")
            if changedHeader != message {
                #expect(await verifier.verify(changedHeader).first?.result == .fail, "\(f) with its Subject changed")
            }
            // The body changed.
            var changedBody = message
            let bodyStart = DKIMCanonical.split(message).bodyStart
            if bodyStart < message.count {
                changedBody.insert(contentsOf: Array("X".utf8), at: bodyStart)
                let v = await verifier.verify(changedBody).first
                #expect(v?.result == .fail && v?.reason.contains("body hash") == true, "\(f) with its body changed: \(String(describing: v))")
            }
            // Text appended after an l= signature: verifies, but is reported as policy, never pass.
            if f.hasSuffix(".l.signed") {
                let appended = message + Array("\r\nAppended by someone else: click here\r\n".utf8)
                let v = await verifier.verify(appended).first
                #expect(v?.result == .policy && v?.reason.contains("unsigned") == true, "\(f) with text appended: \(String(describing: v))")
            }
        }
        print("DKIM: \(passed) of \(files.count) dkimpy signatures verified")
    }

    @Test func keyRecordRules() async throws {
        let ed = try DKIMPrivateKey.generate(.ed25519)
        let rsa = try DKIMPrivateKey.generate(.rsa)
        var policy = DKIMSigningPolicy()
        policy.expirySeconds = 60
        let message = Array("From: a@example.test\r\nTo: b@far.test\r\nSubject: s\r\n\r\nbody\r\n".utf8)
        func signed(_ key: DKIMPrivateKey, selector: String) throws -> [UInt8] {
            let signer = try DKIMSigner(keys: [DKIMKey(domain: "example.test", selector: selector, key: key)], policy: policy)
            return Array(try signer.sign(message, now: 1_700_000_000).utf8) + message
        }
        func result(_ record: String?, _ key: DKIMPrivateKey, now: Int64 = 1_700_000_010) async throws -> DKIMSignatureVerdict? {
            var table: [String: DNSLookup] = [:]
            if let record { table["TXT s._domainkey.example.test"] = DNSLookup(.records([.text(Array(record.utf8))])) }
            let verifier = DKIMVerifier(dns: StaticAuthDNS(table), clock: { now * 1000 })
            return await verifier.verify(try signed(key, selector: "s")).first
        }
        #expect(try await result(ed.dnsRecord, ed)?.result == .pass)
        #expect(try await result(rsa.dnsRecord, rsa)?.result == .pass)
        #expect(try await result(nil, ed)?.result == .permerror)                                   // no key
        #expect(try await result("v=DKIM1; k=ed25519; p=", ed)?.reason.contains("revoked") == true) // revoked
        #expect(try await result("v=DKIM1; k=ed25519; p=", ed)?.result == .fail)
        #expect(try await result(ed.dnsRecord + "; h=sha1", ed)?.result == .permerror)            // h= without sha256
        #expect(try await result(ed.dnsRecord + "; h=sha1:sha256", ed)?.result == .pass)
        #expect(try await result(ed.dnsRecord + "; s=tlsrpt", ed)?.result == .permerror)          // not for email
        #expect(try await result(rsa.dnsRecord, ed)?.result == .permerror)                        // key type mismatch
        #expect(try await result(ed.dnsRecord, ed, now: 1_700_000_100)?.result == .fail)          // x= passed
        #expect(try await result(ed.dnsRecord, ed, now: 1_700_000_100)?.reason == "signature expired")
        // An RSA key under 1024 bits (768 here, made by openssl) verifies nothing (RFC 8301).
        let small = "v=DKIM1; k=rsa; p=MHwwDQYJKoZIhvcNAQEBBQADawAwaAJhAK9aXJWiSs17nR4sYr2nJIO/28dhRcuHTqQFONLTAn1BIsAUkxDldeXz0SEHGTZu1OgCb8jD1jOrKF0Ylucfmp1bwd779dtFYRcQbxuojb7oEQWVvxy7V/hJtFZP1Ow+GwIDAQAB"
        let smallVerdict = try await result(small, rsa)
        #expect(smallVerdict?.result == .permerror && smallVerdict?.reason.contains("768 bits is too small") == true, "\(String(describing: smallVerdict))")
        // t=s: i= must be in d= itself, not a subdomain.
        var withSubdomainI = try signed(ed, selector: "s")
        withSubdomainI = replacing(withSubdomainI, "DKIM-Signature: v=1; ", with: "DKIM-Signature: v=1; i=@mail.example.test; ")
        let strict = DKIMVerifier(dns: StaticAuthDNS(["TXT s._domainkey.example.test": DNSLookup(.records([.text(Array((ed.dnsRecord + "; t=s").utf8))]))]),
                                  clock: { 1_700_000_010_000 })
        #expect(await strict.verify(withSubdomainI).first?.reason.contains("t=s") == true)
        // A DNS failure is a temporary error.
        let down = DKIMVerifier(dns: StaticAuthDNS(["TXT s._domainkey.example.test": DNSLookup(.temporaryFailure("SERVFAIL"))]), clock: { 0 })
        #expect(await down.verify(try signed(ed, selector: "s")).first?.result == .temperror)
        // No signature: nothing to report; a malformed one is neutral.
        #expect(await down.verify(message).isEmpty)
        #expect(await down.verify(Array("DKIM-Signature: v=1; a=rsa-sha1; d=x.test\r\n".utf8) + message).first?.result == .neutral)
    }
}

/// Answers from a table keyed "TYPE name"; anything else is NXDOMAIN.
struct StaticAuthDNS: AuthDNS {
    let table: [String: DNSLookup]
    init(_ table: [String: DNSLookup]) { self.table = table }
    func lookup(_ name: String, _ type: DNSRecordType) async -> DNSLookup {
        table["\(type) \(name.lowercased())"] ?? DNSLookup(.nxdomain)
    }
}

func replacing(_ message: [UInt8], _ old: String, with new: String) -> [UInt8] {
    let o = Array(old.utf8)
    guard let r = message.firstRange(of: o) else { return message }
    var out = message
    out.replaceSubrange(r, with: Array(new.utf8))
    return out
}
