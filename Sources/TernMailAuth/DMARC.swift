// DMARC (RFC 7489): the policy of the RFC 5322.From domain (or of its
// organisational domain, from the Public Suffix List), and whether SPF or
// DKIM passed for an identifier aligned with it (relaxed: the same
// organisational domain; strict: the same name). The disposition follows
// p= (sp= for a subdomain whose policy came from its organisational domain)
// and pct=. A DNS failure gives temperror, never fail: callers never reject
// on it.

import TernMessage
import TernRouting

public enum DMARCResult: String, Sendable, Codable {
    case none, pass, fail, temperror, permerror
}

public struct DMARCVerdict: Sendable, Equatable {
    public var result: DMARCResult
    /// The RFC 5322.From domain ("" when the message has none usable).
    public var fromDomain: String
    /// Where the record was found: the From domain, or its organisational domain.
    public var policyDomain: String?
    public var record: DMARCRecord?
    /// The policy the domain asks for this message (p= or sp=), before pct=.
    public var requested: DMARCPolicy?
    /// What to do: none for a pass, no policy or a DNS failure; else the requested policy, lowered when pct= did not select the message.
    public var disposition: DMARCPolicy
    public var spfAligned: Bool
    public var dkimAligned: Bool
    public var reason: String
    public var steps: [String]
}

public struct DMARCChecker: Sendable {
    public let dns: any AuthDNS
    public let psl: PublicSuffixList
    /// 0..<100, for pct= (injected for tests).
    let percentile: @Sendable () -> Int
    let records = ParseCache<String, Result<DMARCRecord, DMARCError>?>()

    public init(dns: any AuthDNS, psl: PublicSuffixList, percentile: @escaping @Sendable () -> Int = { Int.random(in: 0..<100) }) {
        self.dns = dns
        self.psl = psl
        self.percentile = percentile
    }

    /// The record for `domain` (§6.6.3): at _dmarc.DOMAIN, else at _dmarc.ORGANISATIONAL-DOMAIN.
    public func discover(_ domain: String, steps: inout [String]) async -> Result<(DMARCRecord, String)?, DMARCError> {
        let org = psl.organizationalDomain(domain)
        for candidate in domain == org ? [domain] : [domain, org] {
            let name = "_dmarc.\(candidate)"
            switch await dns.txt(name) {
            case .records(let texts):
                let records = texts.compactMap { t in self.records.value(t) { DMARCRecord.parse(t) } }
                steps.append("TXT \(name): " + texts.map { "\"\($0)\"" }.joined(separator: " "))
                if records.count == 1 {
                    switch records[0] {
                    case .success(let r): return .success((r, candidate))
                    case .failure(let e): steps.append("\(name): \(e.description): no policy")
                    }
                } else if records.count > 1 {
                    steps.append("\(name): \(records.count) DMARC records: no policy")
                    return .success(nil) // §6.6.3: several records are no record
                }
            case .nxdomain, .noRecords:
                steps.append("TXT \(name): none")
            case .temporaryFailure(let why):
                steps.append("TXT \(name): \(why)")
                return .failure(DMARCError("DNS failure looking up \(name): \(why)"))
            }
        }
        return .success(nil)
    }

    /// Whether `a` is aligned with the From: domain (`from`, lower-case; `fromOrg`, its organisational domain).
    func aligned(_ a: String, from: String, fromOrg: String, strict: Bool) -> Bool {
        let x = a.lowercased().trimmingDot
        if x == from { return true }
        return !strict && psl.organizationalDomain(x) == fromOrg
    }

    /// The verdict for a message: its From: domains (one expected), SPF's verdict (MAIL FROM, or HELO for a null path) and DKIM's.
    public func check(fromDomains: [String], spf: SPFVerdict?, dkim: [DKIMSignatureVerdict]) async -> DMARCVerdict {
        var v = DMARCVerdict(result: .none, fromDomain: "", policyDomain: nil, record: nil, requested: nil, disposition: .none,
                             spfAligned: false, dkimAligned: false, reason: "", steps: [])
        let distinct = Set(fromDomains.map { $0.lowercased().trimmingDot })
        guard distinct.count == 1, let from = distinct.first, from.contains(".") else {
            v.result = .permerror
            v.reason = fromDomains.isEmpty ? "no From: domain" : "From: names \(distinct.count) domains (\(distinct.sorted().joined(separator: ", ")))"
            return v
        }
        v.fromDomain = from
        var steps: [String] = []
        let found = await discover(from, steps: &steps)
        v.steps = steps
        let record: DMARCRecord
        switch found {
        case .failure(let e):
            v.result = .temperror
            v.reason = e.description
            return v
        case .success(nil):
            v.reason = "\(from) publishes no DMARC policy"
            return v
        case .success(let .some((r, at))):
            record = r
            v.record = r
            v.policyDomain = at
        }
        let org = psl.organizationalDomain(from)
        func aligned(_ a: String, strict: Bool) -> Bool { self.aligned(a, from: from, fromOrg: org, strict: strict) }
        if let spf, spf.result == .pass, aligned(spf.domain, strict: record.strictSPF) { v.spfAligned = true }
        let passing = dkim.filter { $0.result == .pass && aligned($0.domain, strict: record.strictDKIM) }
        v.dkimAligned = !passing.isEmpty
        if v.spfAligned || v.dkimAligned {
            v.result = .pass
            v.reason = v.dkimAligned ? "DKIM d=\(passing[0].domain) aligned" : "SPF \(spf!.domain) aligned"
            return v
        }
        // A DNS failure on an aligned identifier could have been a pass: temperror, never fail.
        let spfMaybe = spf.map { $0.result == .temperror && aligned($0.domain, strict: record.strictSPF) } ?? false
        let dkimMaybe = dkim.contains { $0.result == .temperror && aligned($0.domain, strict: record.strictDKIM) }
        if spfMaybe || dkimMaybe {
            v.result = .temperror
            v.reason = "no aligned pass, and a DNS failure on an aligned \(spfMaybe ? "SPF" : "DKIM") identifier"
            return v
        }
        v.result = .fail
        let requested = v.policyDomain != from ? (record.subdomainPolicy ?? record.policy) : record.policy
        v.requested = requested
        v.disposition = percentile() < record.percent ? requested : requested.lower
        v.reason = "no aligned SPF or DKIM pass for \(from)" + (v.disposition != requested ? " (pct=\(record.percent): not selected)" : "")
        return v
    }
}
