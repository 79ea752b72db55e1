// Routing: a destination domain becomes an ordered list of hops (host, port,
// address). Static routes first (`--route DOMAIN=HOST[:PORT]`, `*` for a
// smarthost); otherwise MX records by preference with equal preferences
// shuffled (RFC 5321 §5.1), the domain's own A/AAAA when it has no MX
// (implicit MX), a null MX (RFC 7505) or NXDOMAIN as permanent failures and
// DNS trouble as temporary ones.

import TernProtocol

/// A place to connect to.
public struct Hop: Sendable, Hashable, CustomStringConvertible {
    /// The MX or route host name (recorded as `attempt.mx_host`).
    public var host: String
    public var port: Int
    public var address: IPAddress
    /// The MX preference it came from (0 for routes and implicit MX).
    public var preference: Int
    public var description: String { "\(host)[\(address)]:\(port)" }
    /// What the circuit breaker keys a host's health by: the address and
    /// port connected to, so a dead port of an address says nothing of the
    /// same address's other ports (or of other addresses of the same name).
    public var endpoint: String { "[\(address)]:\(port)" }
    public init(host: String, port: Int, address: IPAddress, preference: Int = 0) {
        self.host = host
        self.port = port
        self.address = address
        self.preference = preference
    }
}

public enum RoutePlan: Sendable {
    case hops([Hop])
    /// Every recipient of the domain fails with this reply.
    case bounce(SMTPReply)
    /// Every recipient of the domain is retried later with this reply.
    case deferral(SMTPReply)
}

/// `DOMAIN=HOST[:PORT]`; HOST may be a name, an IPv4 address or `[IPv6]`.
public struct StaticRoute: Sendable, Equatable {
    public var domain: String
    public var host: String
    public var port: Int?

    public init(domain: String, host: String, port: Int?) {
        self.domain = domain
        self.host = host
        self.port = port
    }

    public init?(parsing text: String) {
        guard let eq = text.firstIndex(of: "=") else { return nil }
        let domain = text[..<eq].lowercased()
        var target = Substring(text[text.index(after: eq)...])
        guard !domain.isEmpty, !target.isEmpty else { return nil }
        var port: Int? = nil
        if target.hasPrefix("[") {
            guard let close = target.firstIndex(of: "]") else { return nil }
            let after = target[target.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { return nil }
                port = p
            } else if !after.isEmpty { return nil }
            target = target[target.index(after: target.startIndex)..<close]
        } else if let colon = target.lastIndex(of: ":"), !target[..<colon].contains(":") {
            guard let p = Int(target[target.index(after: colon)...]), (1...65535).contains(p) else { return nil }
            port = p
            target = target[..<colon]
        }
        guard !target.isEmpty else { return nil }
        self.init(domain: String(domain), host: String(target).lowercased(), port: port)
    }
}

public struct Router: Sendable {
    public var routes: [StaticRoute]
    public var resolver: any DNSResolver
    /// Port for MX delivery (25; tests use another).
    public var remotePort: Int
    /// Most hops tried for one domain (Postfix's smtp_mx_address_limit).
    public var maxHops: Int
    let shuffle: @Sendable ([MXRecord]) -> [MXRecord]

    public init(routes: [StaticRoute] = [], resolver: any DNSResolver, remotePort: Int = 25, maxHops: Int = 10,
                shuffle: @escaping @Sendable ([MXRecord]) -> [MXRecord] = { $0.shuffled() }) {
        self.routes = routes
        self.resolver = resolver
        self.remotePort = remotePort
        self.maxHops = maxHops
        self.shuffle = shuffle
    }

    public func staticRoute(for domain: String) -> StaticRoute? {
        routes.first { $0.domain == domain } ?? routes.first { $0.domain == "*" }
    }

    public func plan(_ domain: String) async -> RoutePlan {
        if let route = staticRoute(for: domain) {
            return await hopsFor(hosts: [(route.host, 0)], port: route.port ?? remotePort, what: "route for \(domain)")
        }
        // An address literal is its own destination (RFC 5321 §4.1.3).
        if domain.hasPrefix("[") && domain.hasSuffix("]") {
            var inner = domain.dropFirst().dropLast()
            if inner.lowercased().hasPrefix("ipv6:") { inner = inner.dropFirst(5) }
            guard let a = IPAddress(inner) else { return .bounce(SMTPReply(550, .badDestinationSystem, "Bad address literal \(domain)")) }
            return .hops([Hop(host: domain, port: remotePort, address: a)])
        }
        switch await resolver.mx(domain) {
        case .nxdomain:
            return .bounce(SMTPReply(550, .badDestinationSystem, "Host or domain name not found: \(domain) (NXDOMAIN)"))
        case .temporaryFailure(let why):
            return .deferral(SMTPReply(451, .directoryFailure, "DNS lookup of MX for \(domain) failed: \(why)"))
        case .noRecords:
            // RFC 5321 §5.1: no MX, so the domain itself is the host.
            switch await resolver.addresses(domain) {
            case .records(let addrs):
                return .hops(addrs.prefix(maxHops).map { Hop(host: domain, port: remotePort, address: $0) })
            case .nxdomain, .noRecords:
                return .bounce(SMTPReply(550, .badDestinationSystem, "No MX or address records for \(domain)"))
            case .temporaryFailure(let why):
                return .deferral(SMTPReply(451, .directoryFailure, "DNS lookup of \(domain) failed: \(why)"))
            }
        case .records(let records):
            // RFC 7505: a single MX of "." says the domain takes no mail.
            if records.contains(where: { $0.host == "" || $0.host == "." }) {
                return .bounce(SMTPReply(556, .nullMX, "Domain \(domain) does not accept mail (null MX)"))
            }
            let ordered = Dictionary(grouping: records, by: \.preference).sorted { $0.key < $1.key }.flatMap { shuffle($0.value) }
            return await hopsFor(hosts: ordered.map { ($0.host, $0.preference) }, port: remotePort, what: "MX hosts of \(domain)")
        }
    }

    private func hopsFor(hosts: [(name: String, preference: Int)], port: Int, what: String) async -> RoutePlan {
        var hops: [Hop] = []
        var temporary: String? = nil
        for (host, preference) in hosts where hops.count < maxHops {
            let name = host.hasSuffix(".") ? String(host.dropLast()) : host
            if let literal = IPAddress(name) {
                hops.append(Hop(host: name, port: port, address: literal, preference: preference))
                continue
            }
            switch await resolver.addresses(name) {
            case .records(let addrs): hops += addrs.map { Hop(host: name, port: port, address: $0, preference: preference) }
            case .temporaryFailure(let why): temporary = "\(name): \(why)"
            case .nxdomain, .noRecords: continue
            }
        }
        if !hops.isEmpty { return .hops(Array(hops.prefix(maxHops))) }
        // No address for any host: a fixable DNS problem, so retry (as Postfix does).
        let why = temporary.map { "DNS lookup failed for \($0)" } ?? "no address found for the \(what)"
        return .deferral(SMTPReply(451, .unableToRoute, "Unable to route: \(why)"))
    }
}
