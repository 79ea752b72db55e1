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

public enum DMARCPolicy: String, Sendable, Codable, Comparable {
    case none, quarantine, reject

    var rank: Int { self == .none ? 0 : self == .quarantine ? 1 : 2 }
    public static func < (a: DMARCPolicy, b: DMARCPolicy) -> Bool { a.rank < b.rank }

    /// The next lower policy, for messages pct= did not select (§6.6.4).
    var lower: DMARCPolicy { self == .reject ? .quarantine : .none }
}

public struct DMARCRecord: Sendable, Equatable {
    public var policy: DMARCPolicy
    public var subdomainPolicy: DMARCPolicy?
    public var percent: Int
    public var strictDKIM: Bool
    public var strictSPF: Bool

    /// A record's text; nil when it is not a DMARC record (§6.3: "v=DMARC1" first).
    public static func parse(_ text: String) -> Result<DMARCRecord, DMARCError>? {
        let tags = text.split(separator: ";", omittingEmptySubsequences: true).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard let first = tags.first, first.replacingOccurrences(of: " ", with: "") == "v=DMARC1" else { return nil }
        var values: [String: String] = [:]
        for t in tags.dropFirst() {
            guard let eq = t.firstIndex(of: "=") else { return .failure(DMARCError("bad tag \(t)")) }
            values[t[..<eq].trimmingCharacters(in: .whitespaces).lowercased()] = t[t.index(after: eq)...].trimmingCharacters(in: .whitespaces)
        }
        guard let p = values["p"].flatMap({ DMARCPolicy(rawValue: $0.lowercased()) }) else {
            // §6.6.3: no valid p=, but a valid rua=: as p=none; otherwise no policy.
            if values["rua"] != nil { return .success(DMARCRecord(policy: .none, subdomainPolicy: nil, percent: 100, strictDKIM: false, strictSPF: false)) }
            return .failure(DMARCError("no valid p= tag"))
        }
        var record = DMARCRecord(policy: p, subdomainPolicy: nil, percent: 100, strictDKIM: false, strictSPF: false)
        if let sp = values["sp"] { record.subdomainPolicy = DMARCPolicy(rawValue: sp.lowercased()) }
        if let pct = values["pct"], let n = Int(pct), (0...100).contains(n) { record.percent = n }
        record.strictDKIM = values["adkim"]?.lowercased() == "s"
        record.strictSPF = values["aspf"]?.lowercased() == "s"
        return .success(record)
    }
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
                let records = texts.compactMap(DMARCRecord.parse)
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

    func aligned(_ a: String, _ b: String, strict: Bool) -> Bool {
        let x = a.lowercased().trimmingDot, y = b.lowercased().trimmingDot
        return strict ? x == y : psl.organizationalDomain(x) == psl.organizationalDomain(y)
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
        if let spf, spf.result == .pass, aligned(spf.domain, from, strict: record.strictSPF) { v.spfAligned = true }
        let passing = dkim.filter { $0.result == .pass && aligned($0.domain, from, strict: record.strictDKIM) }
        v.dkimAligned = !passing.isEmpty
        if v.spfAligned || v.dkimAligned {
            v.result = .pass
            v.reason = v.dkimAligned ? "DKIM d=\(passing[0].domain) aligned" : "SPF \(spf!.domain) aligned"
            return v
        }
        // A DNS failure on an aligned identifier could have been a pass: temperror, never fail.
        let spfMaybe = spf.map { $0.result == .temperror && aligned($0.domain, from, strict: record.strictSPF) } ?? false
        let dkimMaybe = dkim.contains { $0.result == .temperror && aligned($0.domain, from, strict: record.strictDKIM) }
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

/// The domains of the addresses in the message's From: fields (RFC 5322 §3.6.2; usually one).
public func fromDomains(_ message: [UInt8]) -> [String] {
    let (fields, _) = DKIMCanonical.split(message)
    var out: [String] = []
    for f in fields where f.lowercasedName == "from" {
        out += addressDomains(String(decoding: DKIMCanonical.value(of: f), as: UTF8.self))
    }
    return out
}

/// The domain of each mailbox in an address list: display names, quoted strings, comments and groups skipped.
func addressDomains(_ value: String) -> [String] {
    var mailboxes: [String] = []
    var current = ""
    var depth = 0, inQuote = false, inAngle = false, escaped = false
    for c in value {
        if escaped { escaped = false; if inQuote { continue } }
        switch c {
        case "\\": escaped = true; continue
        case "\"" where depth == 0: inQuote.toggle(); continue
        case "(" where !inQuote: depth += 1; continue
        case ")" where !inQuote && depth > 0: depth -= 1; continue
        default: break
        }
        if inQuote || depth > 0 { continue }
        switch c {
        case "<": inAngle = true; current = ""
        case ">": inAngle = false; mailboxes.append(current); current = "\u{0}"
        case ",", ";" where !inAngle:
            if current != "\u{0}" { mailboxes.append(current) }
            current = ""
        case ":" where !inAngle: current = "" // a group's name
        default: if current != "\u{0}" { current.append(c) }
        }
    }
    if current != "\u{0}" { mailboxes.append(current) }
    return mailboxes.compactMap { m in
        let t = m.filter { !$0.isWhitespace }
        guard let at = t.lastIndex(of: "@") else { return nil }
        let d = t[t.index(after: at)...]
        return d.isEmpty ? nil : d.lowercased()
    }
}
