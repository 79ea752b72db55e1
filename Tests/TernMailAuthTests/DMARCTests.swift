// DMARC fixtures with Debian's Public Suffix List: organisational domains,
// policy discovery, relaxed and strict alignment, p=, sp=, pct=, and the
// DNS failures that must never turn into a fail.

import Testing
import TernMailAuth
import TernRouting

@Suite struct DMARCTests {
    static let psl = try! PublicSuffixList()

    @Test func organisationalDomainsFromThePublicSuffixList() {
        let psl = DMARCTests.psl
        #expect(psl.count > 5000)
        #expect(psl.organizationalDomain("mail.example.com") == "example.com")
        #expect(psl.organizationalDomain("Example.COM.") == "example.com")
        #expect(psl.organizationalDomain("a.b.example.co.uk") == "example.co.uk")
        #expect(psl.organizationalDomain("co.uk") == "co.uk")              // a public suffix is its own
        #expect(psl.organizationalDomain("x.y.ck") == "x.y.ck")            // *.ck: y.ck is a suffix
        #expect(psl.organizationalDomain("a.www.ck") == "www.ck")          // !www.ck
        #expect(psl.organizationalDomain("me.github.io") == "me.github.io") // the private section counts
        #expect(psl.organizationalDomain("a.b.unknowntld") == "b.unknowntld") // the default rule "*"
        #expect(psl.publicSuffix("shop.xn--p1ai") == "xn--p1ai")           // an IDN rule (рф) as A-label
    }

    func spf(_ r: SPFResult, _ domain: String) -> SPFVerdict {
        SPFVerdict(result: r, identity: "mailfrom", domain: domain, explanation: nil, reason: "", steps: [])
    }

    func dkim(_ r: DKIMResult, _ domain: String) -> DKIMSignatureVerdict {
        DKIMSignatureVerdict(result: r, domain: domain, selector: "s", algorithm: "ed25519-sha256", shortSignature: "", reason: "")
    }

    func checker(_ records: [String: [String]], failing: Set<String> = [], percentile: Int = 0) -> DMARCChecker {
        var table: [String: DNSLookup] = [:]
        for (name, texts) in records { table["TXT \(name)"] = DNSLookup(.records(texts.map { .text(Array($0.utf8)) })) }
        for name in failing { table["TXT \(name)"] = DNSLookup(.temporaryFailure("SERVFAIL")) }
        return DMARCChecker(dns: StaticAuthDNS(table), psl: DMARCTests.psl, percentile: { percentile })
    }

    @Test func alignmentAndPolicy() async {
        let reject = checker(["_dmarc.example.com": ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com"]])
        // Aligned DKIM (exact and relaxed) and aligned SPF pass.
        var v = await reject.check(fromDomains: ["example.com"], spf: nil, dkim: [dkim(.pass, "example.com")])
        #expect(v.result == .pass && v.dkimAligned && v.disposition == .none && v.policyDomain == "example.com")
        v = await reject.check(fromDomains: ["example.com"], spf: nil, dkim: [dkim(.pass, "mail.example.com")])
        #expect(v.result == .pass)
        v = await reject.check(fromDomains: ["news.example.com"], spf: spf(.pass, "bounce.example.com"), dkim: [])
        #expect(v.result == .pass && v.spfAligned && v.policyDomain == "example.com")
        // Third-party signature and SPF of another domain: fail, p=reject.
        v = await reject.check(fromDomains: ["example.com"], spf: spf(.pass, "esp.example.net"), dkim: [dkim(.pass, "esp.example.net")])
        #expect(v.result == .fail && v.requested == .reject && v.disposition == .reject)
        // A failing or policy-only signature of the right domain is no pass.
        v = await reject.check(fromDomains: ["example.com"], spf: spf(.softfail, "example.com"), dkim: [dkim(.fail, "example.com"), dkim(.policy, "example.com")])
        #expect(v.result == .fail)
        // A subdomain without its own record: sp=.
        v = await reject.check(fromDomains: ["sub.example.com"], spf: nil, dkim: [])
        #expect(v.result == .fail && v.requested == .quarantine && v.policyDomain == "example.com")
        // Strict alignment.
        let strict = checker(["_dmarc.example.com": ["v=DMARC1; p=quarantine; adkim=s; aspf=s"]])
        v = await strict.check(fromDomains: ["example.com"], spf: spf(.pass, "mail.example.com"), dkim: [dkim(.pass, "mail.example.com")])
        #expect(v.result == .fail && v.disposition == .quarantine)
        v = await strict.check(fromDomains: ["example.com"], spf: spf(.pass, "example.com"), dkim: [])
        #expect(v.result == .pass)
        // Across public suffixes: example.co.uk and other.co.uk are not one organisation.
        let uk = checker(["_dmarc.example.co.uk": ["v=DMARC1; p=reject"]])
        v = await uk.check(fromDomains: ["example.co.uk"], spf: spf(.pass, "other.co.uk"), dkim: [dkim(.pass, "co.uk")])
        #expect(v.result == .fail)
        v = await uk.check(fromDomains: ["a.example.co.uk"], spf: spf(.pass, "b.example.co.uk"), dkim: [])
        #expect(v.result == .pass)
    }

    @Test func pctAndRecordsThatAreNoPolicy() async {
        // pct=: a message not selected gets the next lower policy.
        let sampled = checker(["_dmarc.example.com": ["v=DMARC1; p=reject; pct=25"]], percentile: 60)
        var v = await sampled.check(fromDomains: ["example.com"], spf: nil, dkim: [])
        #expect(v.result == .fail && v.requested == .reject && v.disposition == .quarantine)
        let selected = checker(["_dmarc.example.com": ["v=DMARC1; p=reject; pct=25"]], percentile: 10)
        #expect(await selected.check(fromDomains: ["example.com"], spf: nil, dkim: []).disposition == .reject)
        // No record, two records, no p= (without rua=): no policy, result none.
        #expect(await checker([:]).check(fromDomains: ["example.com"], spf: nil, dkim: []).result == .none)
        let two = checker(["_dmarc.example.com": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]])
        #expect(await two.check(fromDomains: ["example.com"], spf: nil, dkim: []).result == .none)
        #expect(await checker(["_dmarc.example.com": ["v=DMARC1; p=bogus"]]).check(fromDomains: ["example.com"], spf: nil, dkim: []).result == .none)
        // No valid p= but rua=: as p=none.
        v = await checker(["_dmarc.example.com": ["v=DMARC1; rua=mailto:x@example.com"]]).check(fromDomains: ["example.com"], spf: nil, dkim: [])
        #expect(v.result == .fail && v.disposition == .none)
        // Other TXT records at _dmarc are not DMARC records.
        v = await checker(["_dmarc.example.com": ["hello", "v=DMARC1;p=quarantine"]]).check(fromDomains: ["example.com"], spf: nil, dkim: [])
        #expect(v.disposition == .quarantine)
        // From: with two domains, or none.
        #expect(await checker([:]).check(fromDomains: ["a.com", "b.com"], spf: nil, dkim: []).result == .permerror)
        #expect(await checker([:]).check(fromDomains: [], spf: nil, dkim: []).result == .permerror)
    }

    @Test func dnsFailuresAreNeverAFail() async {
        let down = checker([:], failing: ["_dmarc.example.com"])
        #expect(await down.check(fromDomains: ["example.com"], spf: nil, dkim: []).result == .temperror)
        let reject = checker(["_dmarc.example.com": ["v=DMARC1; p=reject"]])
        var v = await reject.check(fromDomains: ["example.com"], spf: spf(.temperror, "example.com"), dkim: [])
        #expect(v.result == .temperror && v.disposition == .none)
        v = await reject.check(fromDomains: ["example.com"], spf: nil, dkim: [dkim(.temperror, "example.com")])
        #expect(v.result == .temperror && v.disposition == .none)
    }

    @Test func fromDomainsOfAddressLists() {
        func domains(_ from: String) -> [String] { TernMailAuth.fromDomains(Array("From: \(from)\r\nTo: x@y.test\r\n\r\nbody\r\n".utf8)) }
        #expect(domains("alice@Example.COM") == ["example.com"])
        #expect(domains("\"Alice, <fake@evil.test>\" <alice@example.com>") == ["example.com"])
        #expect(domains("Alice (team@evil.test) <alice@example.com>") == ["example.com"])
        #expect(domains("a@one.test, \"B\" <b@two.test>") == ["one.test", "two.test"])
        #expect(domains("Team: a@one.test, b@one.test;") == ["one.test", "one.test"])
        #expect(domains("nobody") == [])
    }
}
