// The Authentication-Results: value (RFC 8601 §2.2): one resinfo per
// method and per DKIM signature, values as tokens or quoted strings, reason
// comments without characters that would break the field.

import Testing
@testable import TernMailAuth

@Suite struct AuthenticationResultsTests {
    @Test func valueShapeQuotingAndComments() {
        let spf = SPFVerdict(result: .fail, identity: "mailfrom", domain: "evil.test", explanation: nil,
                             reason: "evil.test: -all matched (really)\u{1}", steps: [])
        let sigs = [
            DKIMSignatureVerdict(result: .pass, domain: "example.test", selector: "s1", algorithm: "ed25519-sha256", shortSignature: "ab/c+d", reason: ""),
            DKIMSignatureVerdict(result: .fail, domain: "example.test", selector: "s 2", algorithm: "rsa-sha256", shortSignature: "", reason: "body hash mismatch"),
        ]
        let dmarc = DMARCVerdict(result: .pass, fromDomain: "example.test", policyDomain: "example.test",
                                 record: DMARCRecord(policy: .reject, subdomainPolicy: nil, percent: 100, strictDKIM: false, strictSPF: false),
                                 requested: nil, disposition: .none, spfAligned: false, dkimAligned: true, reason: "", steps: [])
        let v = AuthenticationResults.value(authservID: "mx.test", spf: spf, dkim: sigs, dmarc: dmarc, mailFrom: "x@evil.test")
        #expect(v == "mx.test;\r\n\tspf=fail (evil.test: -all matched really) smtp.mailfrom=x@evil.test;\r\n\t"
                + "dkim=pass header.d=example.test header.s=s1 header.a=ed25519-sha256 header.b=ab/c+d;\r\n\t"
                + "dkim=fail (body hash mismatch) header.d=example.test header.s=\"s 2\" header.a=rsa-sha256;\r\n\t"
                + "dmarc=pass (p=reject dis=none) header.from=example.test")
        #expect(AuthenticationResults.token("a\"b;c") == "\"a\\\"b;c\"")
        // The HELO identity's verdict goes after MAIL FROM's.
        let heloToo = SPFVerdict(result: .pass, identity: "helo", domain: "mail.evil.test", explanation: nil, reason: "", steps: [])
        #expect(AuthenticationResults.value(authservID: "mx.test", spf: spf, helo: heloToo, dkim: [], dmarc: dmarc, mailFrom: "x@evil.test")
            .contains("smtp.mailfrom=x@evil.test;\r\n\tspf=pass smtp.helo=mail.evil.test;\r\n\tdkim=none;"))
        #expect(AuthenticationResults.token("") == "\"\"")
        // Null reverse-path: the HELO identity.
        let helo = SPFVerdict(result: .none, identity: "helo", domain: "mail.test", explanation: nil, reason: "no record", steps: [])
        let none = DMARCVerdict(result: .none, fromDomain: "", policyDomain: nil, record: nil, requested: nil, disposition: .none,
                                spfAligned: false, dkimAligned: false, reason: "no From: domain", steps: [])
        #expect(AuthenticationResults.value(authservID: "mx.test", spf: helo, dkim: [], dmarc: none, mailFrom: "")
                == "mx.test;\r\n\tspf=none (no record) smtp.helo=mail.test;\r\n\tdkim=none;\r\n\tdmarc=none (no From: domain)")
    }
}
