// Failed logins counted per client address (a brute-force brake): each
// failure delays its 535 reply a little longer, and past a limit the address
// is refused with 454 4.7.0 without its passwords being checked, until it
// has been quiet for the window. Pure bookkeeping over an injected time.

import NIOConcurrencyHelpers

public struct ThrottlePolicy: Sendable {
    /// Failures within the window after which the address is refused.
    public var maxFailures = 10
    /// Failures older than this are forgotten; a refused address must be quiet this long.
    public var windowMillis: Int64 = 15 * 60_000
    /// The first failure's delay; each further one doubles it, up to `maxDelayMillis`.
    public var baseDelayMillis: Int64 = 1_000
    public var maxDelayMillis: Int64 = 8_000
    /// Addresses remembered at most (the oldest are forgotten first).
    public var maxTracked = 100_000

    public init() {}
}

public final class AuthThrottle: Sendable {
    struct Entry { var failures: Int; var last: Int64 }

    public let policy: ThrottlePolicy
    private let entries = NIOLockedValueBox<[String: Entry]>([:])

    public init(policy: ThrottlePolicy = ThrottlePolicy()) { self.policy = policy }

    /// Is this client refused now? An attempt while refused keeps it refused
    /// (the quiet period starts again).
    public func checkBlocked(_ client: String, now: Int64) -> Bool {
        entries.withLockedValue { map in
            guard var e = map[client], now - e.last < policy.windowMillis else { return false }
            guard e.failures >= policy.maxFailures else { return false }
            e.last = now
            map[client] = e
            return true
        }
    }

    /// Counts a failure; returns the failures in the window and how long to
    /// hold the reply.
    public func recordFailure(_ client: String, now: Int64) -> (failures: Int, delayMillis: Int64) {
        entries.withLockedValue { map in
            var e = map[client] ?? Entry(failures: 0, last: now)
            if now - e.last >= policy.windowMillis { e.failures = 0 }
            e.failures += 1
            e.last = now
            if map[client] == nil && map.count >= policy.maxTracked { forgetOldest(&map, now: now) }
            map[client] = e
            let shift = min(e.failures - 1, 20)
            return (e.failures, min(policy.baseDelayMillis << Int64(shift), policy.maxDelayMillis))
        }
    }

    /// A successful login clears the address's failures.
    public func recordSuccess(_ client: String) {
        entries.withLockedValue { _ = $0.removeValue(forKey: client) }
    }

    public func failures(_ client: String, now: Int64) -> Int {
        entries.withLockedValue { map in
            guard let e = map[client], now - e.last < policy.windowMillis else { return 0 }
            return e.failures
        }
    }

    /// Drops expired entries, and if that is not enough, the older half.
    private func forgetOldest(_ map: inout [String: Entry], now: Int64) {
        map = map.filter { now - $0.value.last < policy.windowMillis }
        if map.count >= policy.maxTracked {
            let cut = map.values.map(\.last).sorted()[map.count / 2]
            map = map.filter { $0.value.last > cut }
        }
    }
}
