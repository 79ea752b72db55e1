// The production delivery agent: routes a domain (TernRouting), skips hosts
// the circuit breaker holds back, never connects to Tern's own listeners,
// and opens an SMTPClientConnection to each hop in turn until one greets
// and accepts EHLO/HELO (retrying a failed opportunistic STARTTLS in
// plaintext).

import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TernProtocol
import TernRouting

/// The addresses Tern itself listens on, so that delivery never connects
/// to itself (Postfix: "mail for D loops back to myself").
public final class OwnEndpoints: Sendable {
    private let box = NIOLockedValueBox<(listeners: [(address: IPAddress?, port: Int)], local: [IPAddress])>(([], []))

    public init() {}

    /// The listeners' bound addresses; a wildcard (0.0.0.0, ::) stands for
    /// every address of this machine's interfaces and loopback.
    public func set(_ bound: [SocketAddress]) {
        let listeners: [(address: IPAddress?, port: Int)] = bound.compactMap { a in
            guard let port = a.port, let text = a.ipAddress, let ip = IPAddress(text) else { return nil }
            return (ip.isUnspecified ? nil : ip.unmapped, port)
        }
        var local: [IPAddress] = []
        if listeners.contains(where: { $0.address == nil }) {
            local = ((try? System.enumerateDevices()) ?? []).compactMap { $0.address?.ipAddress.flatMap(IPAddress.init)?.unmapped }
        }
        box.withLockedValue { $0 = (listeners, local) }
    }

    /// Whether connecting to `address`:`port` reaches one of our listeners.
    public func contains(_ address: IPAddress, port: Int) -> Bool {
        let ip = address.unmapped
        return box.withLockedValue { own in
            own.listeners.contains { l in
                guard l.port == port else { return false }
                guard let a = l.address else { return ip.isLoopback || own.local.contains(ip) }
                return a == ip
            }
        }
    }
}

/// The production agent: routes the domain, then tries each hop in order
/// until one greets and accepts EHLO/HELO. With `health`, hosts that keep
/// failing are skipped while they cool down (the circuit breaker).
public final class SMTPDeliveryAgent: DeliveryAgent {
    let router: Router
    let config: ClientConfig
    let group: EventLoopGroup
    let logger: Logger
    let tls: TLSContexts?
    let health: (any HostHealth)?
    /// Where Tern itself listens: never a next hop.
    public let own: OwnEndpoints

    public init(router: Router, config: ClientConfig, group: EventLoopGroup, health: (any HostHealth)? = nil,
                own: OwnEndpoints = OwnEndpoints(), logger: Logger = Logger(label: "tern.delivery")) throws {
        self.own = own
        self.router = router
        self.config = config
        self.group = group
        self.health = health
        self.logger = logger
        self.tls = config.tlsPolicy == .none ? nil : try TLSContexts(caFile: config.tlsCAFile, needVerifying: config.tlsPolicy == .verify)
    }

    public func connect(domain: String) async -> ConnectOutcome {
        await connect(domain: domain, requireTLS: false)
    }

    public func connect(domain: String, requireTLS: Bool) async -> ConnectOutcome {
        await connect(domain: domain, requireTLS: requireTLS, source: nil)
    }

    public func connect(domain: String, requireTLS: Bool, source: OutboundSource?) async -> ConnectOutcome {
        var config = self.config
        if let ehlo = source?.ehlo { config.heloName = ehlo }
        if requireTLS, config.tlsPolicy == .none || config.tlsPolicy == .may { config.tlsPolicy = .require }
        if requireTLS, tls == nil {
            return .failed(SMTPReply(451, .encryptionNeeded, "TLS is required for \(domain) and this server has TLS for delivery turned off"), AttemptContext())
        }
        switch await router.plan(domain) {
        case .bounce(let r), .deferral(let r):
            return .failed(r, AttemptContext())
        case .hops(let planned):
            // A source binds one address family: hops of the other are not for it.
            let reachable = source.map { s in planned.filter { $0.address.isIPv4 == s.address.isIPv4 } } ?? planned
            if reachable.isEmpty, let s = source {
                return .notFromSource(SMTPReply(451, .unableToRoute,
                                                "no MX host of \(domain) has an \(s.address.isIPv4 ? "IPv4" : "IPv6") address for source \(s)"))
            }
            let (hops, skipped) = health?.arrange(reachable, source: source?.name) ?? (reachable, [])
            if hops.isEmpty, let first = skipped.min(by: { $0.until < $1.until }) {
                let reply = SMTPReply(451, .noAnswerFromHost,
                                      "All MX hosts of \(domain) are cooling down after repeated failures (\(first.hop) until \(Date(timeIntervalSince1970: Double(first.until) / 1000)))")
                return .failed(reply, AttemptContext(mxHost: first.hop.host, source: source?.name))
            }
            var last: (SMTPReply, AttemptContext)? = nil
            hopLoop: for hop in hops {
                if own.contains(hop.address, port: hop.port) {
                    // Postfix's rule: hosts from ourselves on are not tried. With a
                    // better hop tried and failed, wait for it; else the mail loops.
                    logger.warning("next hop is this server", metadata: ["mx": "\(hop)", "domain": "\(domain)"])
                    if last != nil { break hopLoop }
                    return .failed(SMTPReply(554, .routingLoop, "mail for \(domain) loops back to myself (\(hop) is where this server listens)"),
                                   AttemptContext(mxHost: hop.host, mxAddress: hop.address.description, source: source?.name))
                }
                var result = await SMTPClientConnection.open(hop, config: config, tls: tls, group: group, source: source, logger: logger)
                if case .failure(.tlsFailure(let reply)) = result, config.tlsPolicy == .may {
                    // Opportunistic TLS: a broken handshake is no reason not to deliver.
                    logger.info("STARTTLS failed; retrying in plaintext", metadata: ["mx": "\(hop)", "reply": "\(reply)"])
                    var plain = config
                    plain.tlsPolicy = .none
                    result = await SMTPClientConnection.open(hop, config: plain, tls: nil, group: group, source: source, logger: logger)
                }
                switch result {
                case .failure(.loop(let reply)):
                    logger.warning("next hop is this server", metadata: ["mx": "\(hop)", "reply": "\(reply)"])
                    if last != nil { break hopLoop }
                    return .failed(reply, AttemptContext(mxHost: hop.host, mxAddress: hop.address.description, source: source?.name))
                case .cannotBind(let why):
                    // Not the host's fault: the breaker learns nothing.
                    return .sourceUnavailable(why)
                case .success(let c):
                    health?.succeeded(hop, source: source?.name)
                    return .connected(c)
                case .failure(.failure(let reply)), .failure(.tlsFailure(let reply)):
                    health?.failed(hop, source: source?.name, reply: reply)
                    logger.info("hop failed", metadata: ["mx": "\(hop)", "source": "\(source?.name ?? "-")", "reply": "\(reply)"])
                    last = (reply, AttemptContext(mxHost: hop.host, mxAddress: hop.address.description, source: source?.name))
                }
            }
            let (reply, ctx) = last ?? (SMTPReply(451, .unableToRoute, "no route to \(domain)"), AttemptContext(source: source?.name))
            return .failed(reply, ctx)
        }
    }
}
