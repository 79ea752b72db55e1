// Traffic shaping (issue 18), the pure part: limits per destination, token
// buckets, concurrency, and adaptive throttling with a multiplicative cut
// and an additive climb back (AIMD). No clock, no I/O: every call takes
// `now` and returns what changed, so that tests drive it with numbers and
// the gate (ShapingGate.swift) writes changes through to SQLite.
//
// A *destination* is a provider (its domains share one state: their MX
// hosts end in the provider's suffixes) or a domain (one with its own
// limits configured, or whose provider is not known). Keys carry the source
// address so that per-source limits (warm-up, source pools) fit in later.

import Foundation
import TernProtocol

/// Limits of one destination. nil: not set here (the layer under it
/// decides; at the bottom, nil means unlimited or the scheduler's default).
public struct ShapingLimits: Sendable, Equatable, Codable {
    /// Concurrent connections.
    public var connections: Int?
    public var messagesPerConnection: Int?
    /// Recipients in one transaction (a message with more goes in several).
    public var recipientsPerMessage: Int?
    public var messagesPerSecond: Int?
    public var messagesPerMinute: Int?
    public var messagesPerHour: Int?
    /// Tokens a message bucket holds (how many may go at once); default:
    /// the bucket's own count.
    public var burst: Int?
    public var connectionsPerMinute: Int?
    /// Connections to the destination must use TLS (or wait).
    public var requireTLS: Bool?

    public init(connections: Int? = nil, messagesPerConnection: Int? = nil, recipientsPerMessage: Int? = nil,
                messagesPerSecond: Int? = nil, messagesPerMinute: Int? = nil, messagesPerHour: Int? = nil,
                burst: Int? = nil, connectionsPerMinute: Int? = nil, requireTLS: Bool? = nil) {
        self.connections = connections
        self.messagesPerConnection = messagesPerConnection
        self.recipientsPerMessage = recipientsPerMessage
        self.messagesPerSecond = messagesPerSecond
        self.messagesPerMinute = messagesPerMinute
        self.messagesPerHour = messagesPerHour
        self.burst = burst
        self.connectionsPerMinute = connectionsPerMinute
        self.requireTLS = requireTLS
    }

    /// The keys as the configuration and `tern shaping set` name them.
    public static let keys = ["connections", "messages_per_connection", "recipients_per_message", "messages_per_second",
                              "messages_per_minute", "messages_per_hour", "burst", "connections_per_minute", "require_tls"]

    /// Sets one key from text (`tern shaping set`, TOML values); an empty
    /// value clears it. Throws on an unknown key or a bad value.
    public mutating func set(_ key: String, _ value: String) throws {
        func count() throws -> Int? {
            if value.isEmpty { return nil }
            guard let n = Int(value), n >= 1 else { throw ReplyMatcherError("\(key) must be a whole number of at least 1") }
            return n
        }
        switch key {
        case "connections": connections = try count()
        case "messages_per_connection": messagesPerConnection = try count()
        case "recipients_per_message": recipientsPerMessage = try count()
        case "messages_per_second": messagesPerSecond = try count()
        case "messages_per_minute": messagesPerMinute = try count()
        case "messages_per_hour": messagesPerHour = try count()
        case "burst": burst = try count()
        case "connections_per_minute": connectionsPerMinute = try count()
        case "require_tls":
            switch value {
            case "": requireTLS = nil
            case "true", "yes", "on", "1": requireTLS = true
            case "false", "no", "off", "0": requireTLS = false
            default: throw ReplyMatcherError("require_tls must be true or false")
            }
        default: throw ReplyMatcherError("unknown shaping key '\(key)' (known: \(ShapingLimits.keys.joined(separator: ", ")))")
        }
    }

    /// These limits with `top`'s set values over them.
    public func overridden(by top: ShapingLimits) -> ShapingLimits {
        ShapingLimits(connections: top.connections ?? connections,
                      messagesPerConnection: top.messagesPerConnection ?? messagesPerConnection,
                      recipientsPerMessage: top.recipientsPerMessage ?? recipientsPerMessage,
                      messagesPerSecond: top.messagesPerSecond ?? messagesPerSecond,
                      messagesPerMinute: top.messagesPerMinute ?? messagesPerMinute,
                      messagesPerHour: top.messagesPerHour ?? messagesPerHour,
                      burst: top.burst ?? burst,
                      connectionsPerMinute: top.connectionsPerMinute ?? connectionsPerMinute,
                      requireTLS: top.requireTLS ?? requireTLS)
    }

    /// `key=value` pairs of the set limits, in the keys' order.
    public var pairs: [(String, String)] {
        var out: [(String, String)] = []
        func add(_ k: String, _ v: Int?) { if let v { out.append((k, "\(v)")) } }
        add("connections", connections)
        add("messages_per_connection", messagesPerConnection)
        add("recipients_per_message", recipientsPerMessage)
        add("messages_per_second", messagesPerSecond)
        add("messages_per_minute", messagesPerMinute)
        add("messages_per_hour", messagesPerHour)
        add("burst", burst)
        add("connections_per_minute", connectionsPerMinute)
        if let t = requireTLS { out.append(("require_tls", "\(t)")) }
        return out
    }
}

/// A token bucket: `capacity` tokens, refilled at `perMillis` tokens per
/// millisecond; a take needs one whole token.
public struct TokenBucket: Sendable, Equatable {
    public var tokens: Double
    public var at: Int64

    public init(full capacity: Double, at now: Int64) {
        tokens = capacity
        at = now
    }

    /// Milliseconds until `missing` tokens are there (at least 1; float
    /// noise below a microsecond's worth is not a millisecond more).
    static func wait(_ missing: Double, _ perMillis: Double) -> Int64 {
        max(1, Int64((missing / perMillis - 1e-6).rounded(.up)))
    }

    mutating func refill(_ now: Int64, capacity: Double, perMillis: Double) {
        if now > at { tokens = min(capacity, tokens + Double(now - at) * perMillis) }
        tokens = min(tokens, capacity)
        at = max(at, now)
    }

    /// Float noise below this is not a token less.
    public static let tolerance = 1e-9

    /// Refills to `now`; nil when a whole token is there, else when one will be.
    mutating func ready(_ now: Int64, capacity: Double, perMillis: Double) -> Int64? {
        refill(now, capacity: capacity, perMillis: perMillis)
        return tokens >= 1 - TokenBucket.tolerance ? nil : now + TokenBucket.wait(1 - tokens, perMillis)
    }

    /// Takes a token, or returns when one will be there.
    mutating func take(_ now: Int64, capacity: Double, perMillis: Double) -> Int64? {
        if let when = ready(now, capacity: capacity, perMillis: perMillis) { return when }
        tokens -= 1
        return nil
    }
}

/// What a throttling rule does when it fires.
public enum ThrottleAction: Sendable, Equatable {
    /// Multiply the rate and connection limits by `factor` (0 < factor < 1).
    case throttle(factor: Double)
    /// Use these limits over the configured ones for the duration.
    case limit(ShapingLimits)
    /// No connections and no messages for the duration.
    case suspend

    public var name: String {
        switch self {
        case .throttle: "throttle"
        case .limit: "limit"
        case .suspend: "suspend"
        }
    }
}

/// An automation rule: a reply that matches (and, if given, is of the
/// category and from the destination) fires the action once `threshold`
/// matches came within `windowMillis`.
public struct ThrottleRule: Sendable {
    public var name: String
    /// A provider name or domain; nil: every destination.
    public var destination: String?
    public var matcher: ReplyMatcher
    public var category: BounceCategory?
    public var threshold: Int
    public var windowMillis: Int64
    public var action: ThrottleAction
    public var durationMillis: Int64

    public init(name: String, destination: String? = nil, matcher: ReplyMatcher, category: BounceCategory? = nil,
                threshold: Int = 1, windowMillis: Int64 = 0, action: ThrottleAction, durationMillis: Int64) {
        self.name = name
        self.destination = destination
        self.matcher = matcher
        self.category = category
        self.threshold = max(1, threshold)
        self.windowMillis = windowMillis
        self.action = action
        self.durationMillis = durationMillis
    }
}

public struct ShapingConfig: Sendable {
    /// Limits for every destination.
    public var defaults = ShapingLimits()
    /// Limits per provider name or domain, over the defaults.
    public var destinations: [String: ShapingLimits] = [:]
    /// User rules first, then (unless turned off) the shipped ones.
    public var rules: [ThrottleRule] = ShippedThrottleRules.all
    /// The climb back: the factor grows by `rampStep` once per
    /// `rampIntervalMillis` after an action's duration, or sooner after
    /// `rampSuccesses` messages delivered in a row.
    public var rampStep = 0.1
    public var rampIntervalMillis: Int64 = 60_000
    public var rampSuccesses = 100
    /// The lowest factor a cut may reach.
    public var minimumFactor = 0.05

    public init() {}
}

public struct ShapingKey: Sendable, Hashable, CustomStringConvertible {
    /// The local source address; nil: the kernel's choice.
    public var source: String?
    public var destination: String

    public init(source: String? = nil, destination: String) {
        self.source = source
        self.destination = destination
    }

    public var description: String { source.map { "\($0)→\(destination)" } ?? destination }
}

public enum ShapingMode: String, Sendable, Codable, CaseIterable {
    case normal, throttled, suspended, paused
}

/// A destination's adaptive state: what survives a restart (ShapingGate
/// stores it) and what an operator set.
public struct ShapingState: Sendable, Equatable {
    /// Rate and connection limits are multiplied by this (1: as configured).
    public var factor = 1.0
    /// Until when an action holds (no climb before it).
    public var holdUntil: Int64? = nil
    public var suspendedUntil: Int64? = nil
    /// Limits a `limit` action set, until `holdUntil`.
    public var ruleLimits: ShapingLimits? = nil
    public var reason: String? = nil
    public var rule: String? = nil
    public var lastStepAt: Int64 = 0
    /// Operator: no traffic until resumed.
    public var paused = false
    /// Operator limits (`tern shaping set`), over the configuration.
    public var operatorLimits = ShapingLimits()

    public init() {}

    /// Away from the configured limits by itself (a cut, a rule's limits, a
    /// suspension): time may change it.
    var adjusted: Bool { factor < 1 || ruleLimits != nil || suspendedUntil != nil }

    public func mode(at now: Int64) -> ShapingMode {
        if paused { return .paused }
        if let s = suspendedUntil, s > now { return .suspended }
        if factor < 1 || ruleLimits != nil { return .throttled }
        return .normal
    }

    /// When the current state ends by itself (nil: it does not, or normal).
    public func until(at now: Int64) -> Int64? {
        switch mode(at: now) {
        case .suspended: return suspendedUntil
        case .throttled: return holdUntil
        case .normal, .paused: return nil
        }
    }
}

/// A change worth an event, a log line and a write.
public struct ShapingChange: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case throttled, suspended, ramped, resumed
    }
    public var key: ShapingKey
    public var kind: Kind
    public var state: ShapingState
    public var reason: String?
}

/// The live state of every destination, and the decisions.
public struct Shaper: Sendable {
    public let config: ShapingConfig

    struct Live {
        var state = ShapingState()
        var open = 0
        var buckets: [TokenBucket] = []
        var connectionBucket: TokenBucket? = nil
        var successes = 0
        /// Matches per rule index within its window.
        var hits: [Int: [Int64]] = [:]
    }
    private(set) var live: [ShapingKey: Live] = [:]

    public init(config: ShapingConfig) {
        self.config = config
    }

    // MARK: - Limits

    /// The configured limits of a destination: defaults, then its own.
    public func configured(_ destination: String) -> ShapingLimits {
        config.defaults.overridden(by: config.destinations[destination] ?? ShapingLimits())
    }

    /// What applies now: configured, the operator's, a rule's, then the
    /// factor on rates and connections.
    public func effective(_ key: ShapingKey, now: Int64) -> ShapingLimits {
        let st = live[key]?.state ?? ShapingState()
        var l = configured(key.destination).overridden(by: st.operatorLimits)
        if let r = st.ruleLimits { l = l.overridden(by: r) }
        let f = st.factor
        guard f < 1 else { return l }
        func scaled(_ v: Int?) -> Int? { v.map { max(1, Int((Double($0) * f).rounded(.down))) } }
        l.messagesPerSecond = scaled(l.messagesPerSecond)
        l.messagesPerMinute = scaled(l.messagesPerMinute)
        l.messagesPerHour = scaled(l.messagesPerHour)
        l.connectionsPerMinute = scaled(l.connectionsPerMinute)
        l.burst = scaled(l.burst)
        l.connections = scaled(l.connections)
        return l
    }

    /// The message buckets of limits: (capacity, tokens per millisecond).
    static func messageRates(_ l: ShapingLimits) -> [(Double, Double)] {
        var out: [(Double, Double)] = []
        for (n, window) in [(l.messagesPerSecond, 1_000.0), (l.messagesPerMinute, 60_000.0), (l.messagesPerHour, 3_600_000.0)] {
            guard let n else { continue }
            out.append((Double(l.burst ?? n), Double(n) / window))
        }
        return out
    }

    // MARK: - Decisions

    public func state(_ key: ShapingKey) -> ShapingState { live[key]?.state ?? ShapingState() }
    public func openConnections(_ key: ShapingKey) -> Int { live[key]?.open ?? 0 }
    public var keys: [ShapingKey] { Array(live.keys) }

    /// Tokens left in each message bucket (seconds, minutes, hours that are set), refilled to `now`.
    public func tokens(_ key: ShapingKey, now: Int64) -> [Double] {
        let l = effective(key, now: now)
        let rates = Shaper.messageRates(l)
        let buckets = live[key]?.buckets ?? []
        return rates.enumerated().map { i, r in
            var b = i < buckets.count ? buckets[i] : TokenBucket(full: r.0, at: now)
            b.refill(now, capacity: r.0, perMillis: r.1)
            return b.tokens
        }
    }

    /// May a connection open now? `.busy` when at the concurrency limit (ask
    /// again when one ends). A yes counts the connection open.
    public mutating func admitConnection(_ key: ShapingKey, now: Int64) -> (SendPermission, [ShapingChange]) {
        var changes: [ShapingChange] = []
        tick(key, now: now, &changes)
        if let wait = blocked(key, now: now) { return (.notBefore(wait), changes) }
        let l = effective(key, now: now)
        var v = live[key] ?? Live()
        if let c = l.connections, v.open >= c { return (.busy, changes) }
        if let n = l.connectionsPerMinute {
            let cap = Double(n), rate = Double(n) / 60_000
            var b = v.connectionBucket ?? TokenBucket(full: cap, at: now)
            if let when = b.take(now, capacity: cap, perMillis: rate) {
                v.connectionBucket = b
                live[key] = v
                return (.notBefore(when), changes)
            }
            v.connectionBucket = b
        }
        v.open += 1
        live[key] = v
        return (.go, changes)
    }

    public mutating func connectionEnded(_ key: ShapingKey) {
        guard var v = live[key] else { return }
        v.open = max(0, v.open - 1)
        live[key] = v
    }

    /// May one more message go now? A yes takes its tokens.
    public mutating func admitMessage(_ key: ShapingKey, now: Int64) -> (SendPermission, [ShapingChange]) {
        var changes: [ShapingChange] = []
        tick(key, now: now, &changes)
        if let wait = blocked(key, now: now) { return (.notBefore(wait), changes) }
        let rates = Shaper.messageRates(effective(key, now: now))
        guard !rates.isEmpty else { return (.go, changes) }
        var v = live[key] ?? Live()
        while v.buckets.count < rates.count { v.buckets.append(TokenBucket(full: rates[v.buckets.count].0, at: now)) }
        // All buckets must have a token; none is taken unless all have one.
        var latest: Int64? = nil
        for (i, r) in rates.enumerated() {
            if let when = v.buckets[i].ready(now, capacity: r.0, perMillis: r.1) { latest = max(latest ?? 0, when) }
        }
        if let latest {
            live[key] = v
            return (.notBefore(latest), changes)
        }
        for i in rates.indices { v.buckets[i].tokens -= 1 }
        live[key] = v
        return (.go, changes)
    }

    /// Suspended or paused: not before when (paused: ask again in a second,
    /// as an operator may resume at any time).
    private func blocked(_ key: ShapingKey, now: Int64) -> Int64? {
        let st = state(key)
        switch st.mode(at: now) {
        case .paused: return now + 1_000
        case .suspended: return st.suspendedUntil
        case .normal, .throttled: return nil
        }
    }

    // MARK: - Learning from replies

    /// A reply from the destination (a refusal, or a success with code 2xx).
    /// Rules that fire change the state; successes count toward the climb.
    public mutating func observe(_ key: ShapingKey, reply: SMTPReply, category: BounceCategory?, now: Int64) -> [ShapingChange] {
        var changes: [ShapingChange] = []
        tick(key, now: now, &changes)
        var v = live[key] ?? Live()
        if reply.code < 300 {
            v.successes += 1
            live[key] = v
            tick(key, now: now, &changes)
            return changes
        }
        for (i, rule) in config.rules.enumerated() {
            if let d = rule.destination, d != key.destination { continue }
            if let c = rule.category, c != category { continue }
            guard rule.matcher.matches(reply) else { continue }
            var hits = v.hits[i, default: []]
            hits.append(now)
            if rule.windowMillis > 0 { hits.removeAll { $0 <= now - rule.windowMillis } }
            if hits.count >= rule.threshold {
                v.hits[i] = nil
                v.successes = 0
                apply(rule, reply: reply, to: &v.state, now: now)
                live[key] = v
                let kind: ShapingChange.Kind = rule.action == .suspend ? .suspended : .throttled
                changes.append(ShapingChange(key: key, kind: kind, state: v.state, reason: v.state.reason))
                return changes
            }
            v.hits[i] = hits.suffix(rule.threshold)
            // Only the first matching rule counts a reply.
            break
        }
        live[key] = v
        return changes
    }

    private func apply(_ rule: ThrottleRule, reply: SMTPReply, to st: inout ShapingState, now: Int64) {
        let until = now + rule.durationMillis
        st.rule = rule.name
        st.reason = "\(rule.name): \(reply.code)\(reply.enhanced.map { " \($0)" } ?? "") \(reply.text.prefix(160))"
        st.holdUntil = max(st.holdUntil ?? 0, until)
        st.lastStepAt = now
        switch rule.action {
        case .throttle(let f):
            st.factor = max(config.minimumFactor, st.factor * min(max(f, 0.01), 1))
        case .limit(let l):
            st.ruleLimits = (st.ruleLimits ?? ShapingLimits()).overridden(by: l)
            st.factor = min(st.factor, 0.5)
        case .suspend:
            st.suspendedUntil = max(st.suspendedUntil ?? 0, until)
            st.factor = min(st.factor, 0.5)
        }
    }

    /// Time-driven changes: a suspension or hold that ended, and the climb.
    private mutating func tick(_ key: ShapingKey, now: Int64, _ changes: inout [ShapingChange]) {
        guard var v = live[key] else { return }
        var st = v.state
        guard st.adjusted else { return }
        if let s = st.suspendedUntil, s <= now {
            st.suspendedUntil = nil
            st.lastStepAt = now
            changes.append(ShapingChange(key: key, kind: .resumed, state: st, reason: "suspension ended"))
        }
        if let h = st.holdUntil, h > now {
            v.state = st
            live[key] = v
            return
        }
        if st.holdUntil != nil {
            st.holdUntil = nil
            st.ruleLimits = nil
            st.lastStepAt = now
        }
        // Additive climb: one step per interval, or per run of successes.
        while st.factor < 1 {
            let byTime = now - st.lastStepAt >= config.rampIntervalMillis
            let bySuccess = v.successes >= config.rampSuccesses
            guard byTime || bySuccess else { break }
            st.factor = min(1, st.factor + config.rampStep)
            if st.factor > 1 - 1e-9 { st.factor = 1 }
            st.lastStepAt = byTime ? st.lastStepAt + config.rampIntervalMillis : now
            if bySuccess { v.successes = 0 }
            if st.factor >= 1 {
                st.rule = nil
                st.reason = nil
                changes.append(ShapingChange(key: key, kind: .resumed, state: st, reason: "back to the configured limits"))
            } else {
                changes.append(ShapingChange(key: key, kind: .ramped, state: st, reason: st.reason))
            }
            if !byTime { break }
        }
        if st.factor >= 1, st.ruleLimits == nil, st.suspendedUntil == nil { st.rule = nil; st.reason = nil }
        v.state = st
        live[key] = v
    }

    /// Time-driven changes of every destination not at its configured
    /// limits (ended suspensions and holds, the climb): run by the gate
    /// every fraction of a second, so that nothing stays throttled because
    /// no mail asked.
    public mutating func advance(now: Int64) -> [ShapingChange] {
        var changes: [ShapingChange] = []
        for (key, v) in live where v.state.adjusted {
            tick(key, now: now, &changes)
        }
        return changes
    }

    // MARK: - State from outside (restart, operator)

    /// Restores a stored state (at start) or an operator's change.
    public mutating func restore(_ key: ShapingKey, _ state: ShapingState) {
        var v = live[key] ?? Live()
        v.state = state
        live[key] = v
    }

    /// Operator: pause, or limits over the configuration.
    public mutating func setOperator(_ key: ShapingKey, paused: Bool, limits: ShapingLimits) {
        var v = live[key] ?? Live()
        v.state.paused = paused
        v.state.operatorLimits = limits
        live[key] = v
    }

    /// Operator `resume`: ends the pause and any automatic throttling now.
    public mutating func reset(_ key: ShapingKey) {
        var v = live[key] ?? Live()
        let op = v.state.operatorLimits
        v.state = ShapingState()
        v.state.operatorLimits = op
        v.hits = [:]
        v.successes = 0
        live[key] = v
    }
}
