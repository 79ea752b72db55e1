// DNS as Tern needs it for routing: MX records and a host's addresses.
// A protocol, so that tests use a fake and the server uses c-ares.

import TernProtocol

public struct MXRecord: Sendable, Hashable {
    public var preference: Int
    /// The exchange host; "" or "." is the RFC 7505 null MX.
    public var host: String
    public init(preference: Int, host: String) {
        self.preference = preference
        self.host = host
    }
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
