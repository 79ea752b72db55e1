// SPF's check_host() (RFC 7208 §4): the record of a domain is looked up,
// its terms evaluated left to right against the client's address, with the
// limits of §4.6.4 (10 terms that query DNS, 2 void look-ups, 10 MX or PTR
// names each) and the explanation of §6.2 for a fail. Every DNS step is
// written down so `tern auth spf` can show how a verdict came about.

import Foundation
import TernProtocol
import TernRouting

public struct SPFVerdict: Sendable, Equatable {
    public var result: SPFResult
    /// The identity checked: "mailfrom" or "helo".
    public var identity: String
    /// The domain checked (from MAIL FROM, or the HELO name).
    public var domain: String
    /// For a fail: the explanation the domain publishes (exp=), nil when none could be had.
    public var explanation: String?
    /// What decided the result: the matching term, or why there was none.
    public var reason: String
    /// The DNS steps taken, in order.
    public var steps: [String]

    public init(result: SPFResult, identity: String, domain: String, explanation: String?, reason: String, steps: [String]) {
        self.result = result
        self.identity = identity
        self.domain = domain
        self.explanation = explanation
        self.reason = reason
        self.steps = steps
    }
}

public struct SPFChecker: Sendable {
    public let dns: any AuthDNS
    /// The receiving host's name, for %{r} in explanations.
    public var receiver: String
    public var lookupLimit = 10
    public var voidLimit = 2
    let clock: @Sendable () -> Int64
    let records = ParseCache<[UInt8], Result<SPFRecord, SPFSyntaxError>>()

    /// - Parameter clock: milliseconds since 1970 (for %{t}).
    public init(dns: any AuthDNS, receiver: String, clock: @escaping @Sendable () -> Int64) {
        self.dns = dns
        self.receiver = receiver
        self.clock = clock
    }

    /// The MAIL FROM identity (§2.4); with a null reverse-path, the HELO identity (as "postmaster@HELO").
    public func check(ip: IPAddress, mailFrom: String, helo: String) async -> SPFVerdict {
        if mailFrom.isEmpty { return await checkHelo(ip: ip, helo: helo) }
        let at = mailFrom.lastIndex(of: "@")
        let local = at.map { String(mailFrom[..<$0]) } ?? ""
        let domain = at.map { String(mailFrom[mailFrom.index(after: $0)...]) } ?? mailFrom
        return await run(ip: ip, domain: domain, local: local.isEmpty ? "postmaster" : local, helo: helo, identity: "mailfrom")
    }

    /// The HELO identity (§2.3); an address literal or a name that is not a domain gives none.
    public func checkHelo(ip: IPAddress, helo: String) async -> SPFVerdict {
        await run(ip: ip, domain: helo, local: "postmaster", helo: helo, identity: "helo")
    }

    func run(ip: IPAddress, domain: String, local: String, helo: String, identity: String) async -> SPFVerdict {
        let state = SPFRun(checker: self, ip: ip.unmapped, local: local, senderDomain: domain, helo: helo)
        var verdict = SPFVerdict(result: .none, identity: identity, domain: domain, explanation: nil, reason: "", steps: [])
        let outcome = await state.checkHost(domain: domain, depth: 0)
        verdict.result = outcome.result
        verdict.reason = outcome.reason
        if outcome.result == .fail, let exp = outcome.exp {
            verdict.explanation = await state.explanation(exp, domain: outcome.domain)
        }
        verdict.steps = state.steps
        return verdict
    }
}

/// One check_host() evaluation and its includes, sharing the limits.
final class SPFRun {
    struct Outcome {
        var result: SPFResult
        var reason: String
        /// The exp= of the record that gave the result (a redirect's record replaces its own), and its domain.
        var exp: MacroString?
        var domain: String
    }

    enum Match {
        case yes, no
        case error(SPFResult, String)
    }

    let checker: SPFChecker
    let ip: IPAddress
    let local: String
    let senderDomain: String
    let helo: String
    var lookups = 0
    var voids = 0
    var steps: [String] = []
    var validatedName: String?? = nil

    init(checker: SPFChecker, ip: IPAddress, local: String, senderDomain: String, helo: String) {
        self.checker = checker
        self.ip = ip
        self.local = local
        self.senderDomain = senderDomain
        self.helo = helo
    }

    var dns: any AuthDNS { checker.dns }

    func step(_ s: String) { steps.append(s) }

    func checkHost(domain: String, depth: Int) async -> Outcome {
        func end(_ r: SPFResult, _ why: String) -> Outcome { Outcome(result: r, reason: why, exp: nil, domain: domain) }
        guard isValidDomain(domain) else { return end(.none, "\(domain) is not a valid domain name") }
        let answer = await dns.txtBytes(domain)
        let records: [[UInt8]]
        switch answer {
        case .records(let r): records = r.filter(SPFRecord.isSPF)
        case .nxdomain, .noRecords: records = []
        case .temporaryFailure(let why):
            step("TXT \(domain): \(why)")
            return end(.temperror, "DNS failure looking up TXT \(domain): \(why)")
        }
        step("TXT \(domain): " + (records.isEmpty ? "no SPF record" : records.map { "\"\(String(decoding: $0, as: UTF8.self))\"" }.joined(separator: " ")))
        guard !records.isEmpty else { return end(.none, "\(domain) publishes no SPF record") }
        guard records.count == 1 else { return end(.permerror, "\(domain) publishes \(records.count) SPF records") }
        let text = records[0]
        let parsed = checker.records.value(text) { Result { () throws(SPFSyntaxError) in try SPFRecord.parse(text) } }
        let record: SPFRecord
        switch parsed {
        case .success(let r): record = r
        case .failure(let error): return end(.permerror, "syntax error in \(domain)'s record: \(error.reason)")
        }
        return await evaluate(record, domain: domain, depth: depth)
    }

    func evaluate(_ record: SPFRecord, domain: String, depth: Int) async -> Outcome {
        for directive in record.directives {
            if directive.mechanism.queriesDNS {
                lookups += 1
                if lookups > checker.lookupLimit {
                    return Outcome(result: .permerror, reason: "more than \(checker.lookupLimit) DNS-querying terms (at \(directive.text))", exp: nil, domain: domain)
                }
            }
            switch await matches(directive.mechanism, domain: domain, depth: depth) {
            case .yes:
                let r = directive.qualifier.result
                return Outcome(result: r, reason: "\(domain): \(directive.text) matched", exp: record.exp, domain: domain)
            case .no:
                continue
            case .error(let r, let why):
                return Outcome(result: r, reason: why, exp: nil, domain: domain)
            }
        }
        if let redirect = record.redirect {
            lookups += 1
            if lookups > checker.lookupLimit {
                return Outcome(result: .permerror, reason: "more than \(checker.lookupLimit) DNS-querying terms (at redirect)", exp: nil, domain: domain)
            }
            guard let target = await expandDomain(redirect, domain: domain) else {
                return Outcome(result: .permerror, reason: "\(domain): bad redirect= target", exp: nil, domain: domain)
            }
            guard depth < 20 else { return Outcome(result: .permerror, reason: "redirect loop at \(target)", exp: nil, domain: domain) }
            var inner = await checkHost(domain: target, depth: depth + 1)
            if inner.result == .none {
                inner.result = .permerror
                inner.reason = "redirect= to \(target), which has no SPF record"
            }
            return inner
        }
        return Outcome(result: .neutral, reason: "\(domain): no term matched", exp: nil, domain: domain)
    }

    func voidLookup() -> Match? {
        voids += 1
        return voids > checker.voidLimit ? .error(.permerror, "more than \(checker.voidLimit) void DNS look-ups") : nil
    }

    /// An answer as SPF counts it (a void look-up, a temporary failure, or records), its DNS step written down.
    func answered<T>(_ type: String, _ name: String, _ answer: DNSAnswer<[T]>, _ show: (T) -> String) -> Result<[T], SPFLookupError> {
        switch answer {
        case .records(let r):
            step("\(type) \(name): " + r.map(show).joined(separator: " "))
            return .success(r)
        case .nxdomain, .noRecords:
            step("\(type) \(name): none")
            return .failure(.void)
        case .temporaryFailure(let why):
            step("\(type) \(name): \(why)")
            return .failure(.temporary("DNS failure looking up \(type) \(name): \(why)"))
        }
    }

    /// A mechanism's look-up as a match: `hit` decides on the records; a void answer counts toward the limit.
    func matching<T>(_ found: Result<[T], SPFLookupError>, _ hit: ([T]) -> Bool) -> Match {
        switch found {
        case .success(let r): return hit(r) ? .yes : .no
        case .failure(.void): return voidLookup() ?? .no
        case .failure(.temporary(let why)): return .error(.temperror, why)
        }
    }

    /// A or AAAA records of `name`, by the client's address family.
    func addresses(_ name: String) async -> Result<[IPAddress], SPFLookupError> {
        ip.isIPv4 ? answered("A", name, await dns.ipv4(name), \.description) : answered("AAAA", name, await dns.ipv6(name), \.description)
    }

    func matches(_ mechanism: SPFMechanism, domain: String, depth: Int) async -> Match {
        switch mechanism {
        case .all:
            return .yes
        case .ip(let network):
            return network.address.isIPv4 == ip.isIPv4 && network.contains(ip) ? .yes : .no
        case .include(let spec):
            guard let target = await expandDomain(spec, domain: domain) else { return .error(.permerror, "bad include: target") }
            guard depth < 20 else { return .error(.permerror, "include loop at \(target)") }
            let inner = await checkHost(domain: target, depth: depth + 1)
            switch inner.result {
            case .pass: return .yes
            case .fail, .softfail, .neutral: return .no
            case .temperror: return .error(.temperror, inner.reason)
            case .permerror: return .error(.permerror, inner.reason)
            case .none: return .error(.permerror, "include:\(target) has no SPF record")
            }
        case .a(let spec, let v4, let v6):
            guard let target = await target(spec, domain: domain) else { return .error(.permerror, "bad a: target") }
            guard isValidDomain(target) else { return voidLookup() ?? .no }
            return matching(await addresses(target)) { $0.contains { inNetwork($0, v4: v4, v6: v6) } }
        case .mx(let spec, let v4, let v6):
            guard let target = await target(spec, domain: domain) else { return .error(.permerror, "bad mx: target") }
            guard isValidDomain(target) else { return voidLookup() ?? .no }
            let hosts: [MXRecord]
            switch answered("MX", target, await dns.mxHosts(target), { "\($0.preference) \($0.host.isEmpty ? "." : $0.host)" }) {
            case .success(let r): hosts = r
            case .failure(.void): return voidLookup() ?? .no
            case .failure(.temporary(let why)): return .error(.temperror, why)
            }
            guard hosts.count <= 10 else { return .error(.permerror, "MX \(target) has more than 10 records") }
            for host in hosts where !host.host.isEmpty && host.host != "." {
                switch await addresses(host.host) {
                case .success(let list): if list.contains(where: { inNetwork($0, v4: v4, v6: v6) }) { return .yes }
                case .failure(.void): continue
                case .failure(.temporary(let why)): return .error(.temperror, why)
                }
            }
            return .no
        case .ptr(let spec):
            guard let target = await target(spec, domain: domain) else { return .error(.permerror, "bad ptr: target") }
            let names = await validatedNames()
            let t = target.lowercased().trimmingDot
            return names.contains { n in let l = n.lowercased().trimmingDot; return l == t || l.hasSuffix("." + t) } ? .yes : .no
        case .exists(let spec):
            guard let target = await expandDomain(spec, domain: domain) else { return .error(.permerror, "bad exists: target") }
            guard isValidDomain(target) else { return voidLookup() ?? .no }
            return matching(answered("A", target, await dns.ipv4(target), \.description)) { _ in true } // always A (§5.7)
        }
    }

    /// The expanded domain-spec, or the current domain when the term has none.
    func target(_ spec: MacroString?, domain: String) async -> String? {
        guard let spec else { return domain }
        return await expandDomain(spec, domain: domain)
    }

    func inNetwork(_ candidate: IPAddress, v4: Int, v6: Int) -> Bool {
        guard candidate.isIPv4 == ip.isIPv4 else { return false }
        return IPNetwork(address: candidate, prefixLength: candidate.isIPv4 ? v4 : v6).contains(ip)
    }

    /// The client's names that resolve back to its address (§5.5): at most 10 PTR names are tried; DNS errors skip a name.
    func validatedNames() async -> [String] {
        let reverse = reverseName(ip)
        guard case .records(let names) = await dns.ptr(reverse) else {
            step("PTR \(reverse): none")
            return []
        }
        step("PTR \(reverse): " + names.joined(separator: " "))
        var valid: [String] = []
        for name in names.prefix(10) where isValidDomain(name) {
            if case .success(let list) = await addresses(name), list.contains(ip) { valid.append(name) }
        }
        return valid
    }

    // MARK: Macros (§7)

    func expandDomain(_ spec: MacroString, domain: String) async -> String? {
        guard !spec.usesExplanationOnlyLetters else { return nil }
        let p = spec.usesP ? await pValue(domain: domain) : nil
        guard var out = expand(spec, domain: domain, validated: p) else { return nil }
        // Over 253 octets: left-hand labels are dropped until it fits (§7.3).
        while out.utf8.count > 253, let dot = out.firstIndex(of: ".") { out = String(out[out.index(after: dot)...]) }
        return out
    }

    /// %{p}: the first validated name ending in the domain, else any validated name, else "unknown" (§7.3).
    func pValue(domain: String) async -> String {
        let names = await validatedNames()
        let d = domain.lowercased().trimmingDot
        if let exact = names.first(where: { $0.lowercased().trimmingDot == d }) { return exact.trimmingDot }
        if let sub = names.first(where: { $0.lowercased().trimmingDot.hasSuffix("." + d) }) { return sub.trimmingDot }
        return names.first?.trimmingDot ?? "unknown"
    }

    /// - Parameter validated: the %{p} value, when the string uses it (found ahead of time: it needs DNS).
    func expand(_ m: MacroString, domain: String, validated: String?) -> String? {
        var out = ""
        for part in m.parts {
            switch part {
            case .literal(let s):
                out += s
            case .macro(let letter, let escape, let keep, let reverse, let delimiters):
                let value: String
                switch letter {
                case "s": value = "\(local)@\(senderDomain)"
                case "l": value = local
                case "o": value = senderDomain
                case "d": value = domain
                case "i": value = ip.isIPv4 ? ip.description : ipv6Nibbles
                case "p": value = validated ?? "unknown"
                case "v": value = ip.isIPv4 ? "in-addr" : "ip6"
                case "h": value = helo
                case "c": value = ip.description
                case "r": value = checker.receiver
                case "t": value = String(checker.clock() / 1000)
                default: return nil
                }
                var labels = value.split(omittingEmptySubsequences: false) { delimiters.contains($0) }.map(String.init)
                if reverse { labels.reverse() }
                if keep > 0, labels.count > keep { labels = Array(labels.suffix(keep)) }
                let joined = labels.joined(separator: ".")
                out += escape ? urlEscaped(joined) : joined
            }
        }
        return out
    }

    /// %{i} of an IPv6 client: dotted nibbles, upper-case as the RFC 7208 test suite expects
    /// (DNS names compare without case, so look-ups are the same either way).
    var ipv6Nibbles: String {
        let hex = Array("0123456789ABCDEF")
        return ip.bytes.flatMap { [String(hex[Int($0 >> 4)]), String(hex[Int($0 & 0xf)])] }.joined(separator: ".")
    }

    func urlEscaped(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            let c = Character(Unicode.Scalar(b))
            if c.isASCII, c.isLetter || c.isNumber || "-._~".contains(c) { out.append(c) } else { out += String(format: "%%%02X", b) }
        }
        return out
    }

    /// The explanation for a fail (§6.2): one TXT record at the expanded exp= name, itself a macro string; nil otherwise.
    func explanation(_ spec: MacroString, domain: String) async -> String? {
        guard let name = await expandDomain(spec, domain: domain), isValidDomain(name) else { return nil }
        guard case .records(let texts) = await dns.txtBytes(name), texts.count == 1 else {
            step("TXT \(name): no single explanation")
            return nil
        }
        let text = texts[0]
        guard text.allSatisfy({ $0 < 0x80 }), let m = try? MacroString.parse(Substring(String(decoding: text, as: UTF8.self)), explanation: true) else {
            step("TXT \(name): explanation not usable")
            return nil
        }
        let p = m.usesP ? await pValue(domain: domain) : nil
        return expand(m, domain: domain, validated: p)
    }
}

enum SPFLookupError: Error {
    case void
    case temporary(String)
}
