// The circuit breaker: each MX endpoint's (address and port) recent
// connection history decides how it is used. A host that failed to connect, or greeted with an error, `threshold`
// times in a row is skipped for a cool-down that doubles while it keeps
// failing; when the cool-down ends it is tried again (one success closes the
// breaker). Among hops of equal MX preference, hosts with fewer recent
// failures go first. Pure rules here; the state lives in the store.

import TernProtocol

public struct BreakerPolicy: Sendable, Equatable {
    public var threshold = 3
    public var baseCooldownMillis: Int64 = 60_000
    public var maxCooldownMillis: Int64 = 3_600_000
    public init() {}
}

public struct HostRecord: Sendable, Equatable {
    /// Consecutive failures.
    public var failures = 0
    public var successes = 0
    public var lastError: String?
    public var lastFailureAt: Int64?
    public var lastSuccessAt: Int64?
    public var cooldownUntil: Int64?

    public init(failures: Int = 0, successes: Int = 0, lastError: String? = nil, lastFailureAt: Int64? = nil,
                lastSuccessAt: Int64? = nil, cooldownUntil: Int64? = nil) {
        self.failures = failures
        self.successes = successes
        self.lastError = lastError
        self.lastFailureAt = lastFailureAt
        self.lastSuccessAt = lastSuccessAt
        self.cooldownUntil = cooldownUntil
    }

    public func coolingDown(at now: Int64) -> Bool { (cooldownUntil ?? Int64.min) > now }

    public func failed(_ error: String, at now: Int64, policy: BreakerPolicy) -> HostRecord {
        var r = self
        r.lastError = error
        r.lastFailureAt = now
        // Connections opened before the breaker opened fail after it, in a
        // burst (twenty workers at a dead host): they are one failure, not
        // twenty doublings. Only a try after the cool-down counts again.
        if coolingDown(at: now) { return r }
        r.failures += 1
        if r.failures >= policy.threshold {
            let doublings = min(r.failures - policy.threshold, 20)
            r.cooldownUntil = now + min(policy.baseCooldownMillis << Int64(doublings), policy.maxCooldownMillis)
        }
        return r
    }

    public func succeeded(at now: Int64) -> HostRecord {
        var r = self
        r.failures = 0
        r.successes += 1
        r.lastSuccessAt = now
        r.cooldownUntil = nil
        return r
    }
}

/// How delivery asks about and reports on MX hosts. With a `source` (a
/// `[[source]]` name), the book is the one of that source and host: a host
/// that refuses one source address may take another (issue 19).
public protocol HostHealth: Sendable {
    /// The hops to try in order, and those left out because their host is cooling down (with when it ends).
    func arrange(_ hops: [Hop], source: String?) -> (usable: [Hop], skipped: [(hop: Hop, until: Int64)])
    /// The hop greeted and accepted EHLO/HELO.
    func succeeded(_ hop: Hop, source: String?)
    /// The hop could not be reached, or greeted with an error.
    func failed(_ hop: Hop, source: String?, reply: SMTPReply)
}

extension HostHealth {
    public func arrange(_ hops: [Hop]) -> (usable: [Hop], skipped: [(hop: Hop, until: Int64)]) { arrange(hops, source: nil) }
    public func succeeded(_ hop: Hop) { succeeded(hop, source: nil) }
    public func failed(_ hop: Hop, reply: SMTPReply) { failed(hop, source: nil, reply: reply) }
}

extension Hop {
    /// The breaker's key: the endpoint, and the source when there is one
    /// ("[192.0.2.1]:25 from a"; `mx_health.host`).
    public func breakerKey(source: String?) -> String { source.map { "\(endpoint) from \($0)" } ?? endpoint }
}

public enum Breaker {
    /// Drops hops of cooling-down endpoints; within one preference, fewer
    /// consecutive failures first (otherwise as planned). `records` are
    /// keyed by `Hop.breakerKey(source:)`.
    public static func arrange(_ hops: [Hop], records: [String: HostRecord], now: Int64, source: String? = nil)
        -> (usable: [Hop], skipped: [(hop: Hop, until: Int64)]) {
        var usable: [(Int, Hop)] = []
        var skipped: [(hop: Hop, until: Int64)] = []
        for (i, hop) in hops.enumerated() {
            if let r = records[hop.breakerKey(source: source)], r.coolingDown(at: now) {
                skipped.append((hop, r.cooldownUntil!))
            } else {
                usable.append((i, hop))
            }
        }
        usable.sort { a, b in
            let fa = records[a.1.breakerKey(source: source)]?.failures ?? 0, fb = records[b.1.breakerKey(source: source)]?.failures ?? 0
            return (a.1.preference, fa, a.0) < (b.1.preference, fb, b.0)
        }
        return (usable.map(\.1), skipped)
    }
}
