// Source addresses and pools (issue 19): which local address a connection
// leaves from. A pool is a weighted set of sources; each message is given a
// pool at intake (recipient.pool), and each connection for that pool's mail
// takes the source that is furthest behind its share (messages sent over
// weight, counted as they are sent), among those in rotation. A source leaves
// rotation when its address cannot be bound (gone from the host; it is
// probed again and comes back) or, with `on_listed = "pause"`, while a
// blocklist lists it. Without sources, there is one implicit source: the
// kernel chooses the address (nil below).

import Foundation
import Logging
import NIOCore
import Synchronization
import TernDelivery
import TernProtocol
import TernStore

/// One pool: its sources and their weights.
public struct SourcePool: Sendable, Equatable {
    public var name: String
    public var members: [(source: OutboundSource, weight: Int)]

    public init(name: String, members: [(source: OutboundSource, weight: Int)]) {
        self.name = name
        self.members = members
    }

    public static func == (a: SourcePool, b: SourcePool) -> Bool {
        a.name == b.name && a.members.map(\.source) == b.members.map(\.source) && a.members.map(\.weight) == b.members.map(\.weight)
    }
}

/// Why a source is out of rotation.
public enum SourceHold: String, Sendable, Hashable, CaseIterable {
    /// Its address cannot be bound.
    case bind
    /// A blocklist lists it (`on_listed = "pause"`).
    case blocklist
}

public final class SourceBook: Sendable {
    public let sources: [OutboundSource]
    public let pools: [String: SourcePool]
    /// The pool of mail that was given none.
    public let defaultPool: String?

    struct State {
        var sent: [String: Int] = [:]
        var holds: [String: [SourceHold: String]] = [:]
        var lastProbe: Int64 = 0
        /// (source, domain) pairs that cannot work (no MX host of the
        /// source's address family), until when.
        var avoid: [String: Int64] = [:]

        static func avoidKey(_ source: OutboundSource, _ domain: String) -> String { "\(source.name) \(domain)" }

        func avoids(_ source: OutboundSource, _ domain: String, _ now: Int64) -> Bool { (avoid[State.avoidKey(source, domain)] ?? .min) > now }

        /// Weighted and not held (bind failure, blocklist).
        func inRotation(_ m: (source: OutboundSource, weight: Int)) -> Bool { m.weight > 0 && (holds[m.source.name] ?? [:]).isEmpty }
    }
    private let state = Mutex(State())

    /// No sources: the kernel's choice for every connection.
    public convenience init() { self.init(sources: [], pools: [], defaultPool: nil) }

    /// `pools` empty with sources: one pool of all sources, equal weights,
    /// named "default".
    public init(sources: [OutboundSource], pools: [SourcePool], defaultPool: String?) {
        self.sources = sources
        if pools.isEmpty && !sources.isEmpty {
            self.pools = ["default": SourcePool(name: "default", members: sources.map { ($0, 1) })]
            self.defaultPool = "default"
        } else {
            self.pools = Dictionary(uniqueKeysWithValues: pools.map { ($0.name, $0) })
            self.defaultPool = defaultPool
        }
    }

    public var isEmpty: Bool { sources.isEmpty }

    public func source(named name: String) -> OutboundSource? { sources.first { $0.name == name } }

    /// The pool a lane's mail leaves from (an unknown pool name: the default).
    public func pool(_ name: String?) -> SourcePool? {
        name.flatMap { pools[$0] } ?? defaultPool.flatMap { pools[$0] }
    }

    /// The sources to try for a new connection of `pool`'s mail, best first:
    /// in rotation, least ahead of its share. `[nil]` without sources (the
    /// kernel's choice); empty when every source of the pool is out of rotation.
    /// `domain` and `now`: leave out sources that cannot reach the domain
    /// (`avoid`), unless none would be left (then they are tried, and defer).
    public func candidates(pool name: String?, domain: String? = nil, now: Int64 = 0) -> [OutboundSource?] {
        guard let pool = pool(name) else { return sources.isEmpty ? [nil] : [] }
        let s = state.withLock { $0 }
        var ranked: [(source: OutboundSource, weight: Int, share: Double)] = []
        for m in pool.members where s.inRotation(m) {
            ranked.append((m.source, m.weight, Double(s.sent[m.source.name, default: 0]) / Double(m.weight)))
        }
        ranked.sort { a, b in a.share != b.share ? a.share < b.share : a.weight > b.weight }
        if let domain {
            let reachable = ranked.filter { !s.avoids($0.source, domain, now) }
            if !reachable.isEmpty { ranked = reachable }
        }
        return ranked.map { Optional($0.source) }
    }

    /// `source` cannot reach `domain` (no MX host of its address family):
    /// the pool's others take the domain's connections until `until`.
    /// False (nothing noted) when no other source of the pool could.
    public func avoid(_ source: OutboundSource, for domain: String, pool name: String?, until: Int64, now: Int64) -> Bool {
        guard let pool = pool(name) else { return false }
        return state.withLock { s in
            guard pool.members.contains(where: { $0.source != source && s.inRotation($0) && !s.avoids($0.source, domain, now) }) else { return false }
            s.avoid = s.avoid.filter { $0.value > now }
            s.avoid[State.avoidKey(source, domain)] = until
            return true
        }
    }

    /// A message is being sent from `source`.
    public func sent(_ source: OutboundSource?) {
        guard let source else { return }
        state.withLock { $0.sent[source.name, default: 0] += 1 }
    }

    /// Messages sent from each source since start.
    public var sentCounts: [String: Int] { state.withLock { $0.sent } }

    /// Takes `name` out of rotation for `why`; true when that changed something.
    @discardableResult
    public func hold(_ name: String, _ why: SourceHold, reason: String) -> Bool {
        state.withLock { s in
            let had = s.holds[name]?[why] != nil
            s.holds[name, default: [:]][why] = reason
            return !had
        }
    }

    /// Ends a hold; true when there was one.
    @discardableResult
    public func release(_ name: String, _ why: SourceHold) -> Bool {
        state.withLock { s in
            let had = s.holds[name]?.removeValue(forKey: why) != nil
            if s.holds[name]?.isEmpty == true { s.holds[name] = nil }
            return had
        }
    }

    /// Why each source is out of rotation.
    public var holds: [String: [SourceHold: String]] { state.withLock { $0.holds } }

    /// The sources held for `why`, if it is time to look at them again
    /// (every `everyMillis`).
    func due(_ why: SourceHold, now: Int64, everyMillis: Int64) -> [OutboundSource] {
        state.withLock { s in
            guard now - s.lastProbe >= everyMillis else { return [] }
            s.lastProbe = now
            return sources.filter { s.holds[$0.name]?[why] != nil }
        }
    }
}

/// Whether a local address can be bound now (a TCP socket bound to port 0
/// and closed): how a source that left rotation is seen to be back.
public enum SourceProbe {
    public static func canBind(_ address: IPAddress) -> String? {
        do {
            let local = try SocketAddress(ipAddress: address.description, port: 0)
            let fd = socket(address.isIPv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return "socket: errno \(errno)" }
            defer { close(fd) }
            let rc = local.withSockAddr { sa, len in bind(fd, sa, socklen_t(len)) }
            return rc == 0 ? nil : "cannot bind \(address): \(String(cString: strerror(errno)))"
        } catch {
            return "\(address) is not an address: \(error)"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
