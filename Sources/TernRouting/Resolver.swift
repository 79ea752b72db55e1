// DNS as Tern needs it for routing: MX records and a host's addresses.
// A protocol, so that tests use a fake and the server uses c-ares.

import TernMetrics
import TernProtocol

public struct MXRecord: Sendable, Hashable {
    public var preference: Int
    /// The exchange host; "" or "." is the RFC 7505 null MX.
    public var host: String
    /// Seconds the answer may be cached (the smallest TTL of the MX RRset), when known.
    public var ttl: UInt32?
    public init(preference: Int, host: String, ttl: UInt32? = nil) {
        self.preference = preference
        self.host = host
        self.ttl = ttl
    }
}

/// RFC 1035 §4.1 messages, as far as Tern reads them (AuthDNS.swift: `records`).
public enum DNSMessage {}

/// Where MX answers are kept between look-ups (Tern keeps them in SQLite).
public protocol MXCache: Sendable {
    /// A cached answer still valid at `now` (records, `.nxdomain` or `.noRecords`).
    func lookup(_ domain: String, now: Int64) -> DNSAnswer<[MXRecord]>?
    func store(_ domain: String, _ answer: DNSAnswer<[MXRecord]>, until: Int64, now: Int64)
}

/// A resolver whose MX answers go through a cache, for their TTL (bounded),
/// negative answers for `negativeSeconds`; temporary failures are not kept.
public struct CachingResolver: DNSResolver {
    public let base: any DNSResolver
    public let cache: any MXCache
    let clock: @Sendable () -> Int64
    public var minimumSeconds: Int64 = 60
    public var maximumSeconds: Int64 = 86_400
    public var negativeSeconds: Int64 = 300

    public init(base: any DNSResolver, cache: any MXCache, clock: @escaping @Sendable () -> Int64) {
        self.base = base
        self.cache = cache
        self.clock = clock
    }

    public func mx(_ domain: String) async -> DNSAnswer<[MXRecord]> {
        let key = domain.lowercased()
        if let hit = cache.lookup(key, now: clock()) {
            TernMetrics.mxCacheHit()
            return hit
        }
        let answer = await base.mx(key)
        let now = clock()
        switch answer {
        case .records(let records):
            let ttl = Int64(records.compactMap(\.ttl).min() ?? UInt32(minimumSeconds))
            cache.store(key, answer, until: now + min(max(ttl, minimumSeconds), maximumSeconds) * 1000, now: now)
        case .nxdomain, .noRecords:
            cache.store(key, answer, until: now + negativeSeconds * 1000, now: now)
        case .temporaryFailure:
            break
        }
        return answer
    }

    public func addresses(_ host: String) async -> DNSAnswer<[IPAddress]> { await base.addresses(host) }
}

public enum DNSAnswer<T: Sendable>: Sendable {
    case records(T)
    /// The name does not exist (NXDOMAIN).
    case nxdomain
    /// The name exists but has no record of that type.
    case noRecords
    /// SERVFAIL, timeout, refused, no server: try again later.
    case temporaryFailure(String)
}

public protocol DNSResolver: Sendable {
    func mx(_ domain: String) async -> DNSAnswer<[MXRecord]>
    /// A and AAAA together (IPv4 first).
    func addresses(_ host: String) async -> DNSAnswer<[IPAddress]>
}

/// A resolver that answers from tables (tests, and `--resolver none`).
public struct StaticResolver: DNSResolver {
    public var mxRecords: [String: [MXRecord]]
    public var hosts: [String: [IPAddress]]
    public var nxdomains: Set<String>
    public var failures: Set<String>

    public init(mx: [String: [MXRecord]] = [:], hosts: [String: [IPAddress]] = [:],
                nxdomains: Set<String> = [], failures: Set<String> = []) {
        self.mxRecords = mx
        self.hosts = hosts
        self.nxdomains = nxdomains
        self.failures = failures
    }

    public func mx(_ domain: String) async -> DNSAnswer<[MXRecord]> {
        let d = domain.lowercased()
        if failures.contains(d) { return .temporaryFailure("SERVFAIL") }
        if nxdomains.contains(d) { return .nxdomain }
        if let r = mxRecords[d] { return .records(r) }
        return hosts[d] != nil ? .noRecords : .nxdomain
    }

    public func addresses(_ host: String) async -> DNSAnswer<[IPAddress]> {
        let h = host.lowercased()
        if failures.contains(h) { return .temporaryFailure("SERVFAIL") }
        if let a = hosts[h] { return a.isEmpty ? .noRecords : .records(a) }
        return mxRecords[h] != nil ? .noRecords : .nxdomain
    }
}
