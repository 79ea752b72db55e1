// The send gate of traffic shaping: the pure Shaper (Shaping.swift) behind
// a lock, asked by the scheduler before each connection and each message,
// told what destinations answer. It maps a recipient domain to its
// destination (a provider once its MX hosts are known, from the MX cache at
// start and from each connection; a domain with limits of its own stays
// itself), writes every state change through to SQLite with its event, and
// once a second picks up what operators changed with `tern shaping`.
// Decisions are in memory: no query per message.

import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import TernProtocol
import TernRouting
import TernStore

public final class ShapingGate: SendGate, Service {
    let providers: ProviderTable
    let classifier: BounceClassifier
    let store: Store?
    let logger: Logger

    struct Inner {
        var shaper: Shaper
        /// Recipient domain → destination (provider name or the domain).
        var destinationOf: [String: String] = [:]
        /// The key each open connection is counted under, by worker: a
        /// connection ends under the key it holds, even if the domain's
        /// destination was learned meanwhile (nil: released already).
        var openByWorker: [Int: ShapingKey?] = [:]
        /// Changed since the last write, and events to write.
        var dirty: Set<ShapingKey> = []
        var events: [(kind: EventKind, at: Int64, detail: String)] = []
        /// Touched since the last snapshot (open connections, tokens).
        var active: Set<ShapingKey> = []
        var overrideVersion: Int64 = 0
    }
    let inner: Mutex<Inner>

    public init(config: ShapingConfig, providers: ProviderTable = ProviderTable(), classifier: BounceClassifier = BounceClassifier(),
                routes: [StaticRoute] = [], store: Store?, logger: Logger = Logger(label: "tern.shaping")) {
        self.providers = providers
        self.classifier = classifier
        self.store = store
        self.logger = logger
        var i = Inner(shaper: Shaper(config: config))
        for r in routes where r.domain != "*" { ShapingGate.learn(r.domain, mxHost: r.host, providers, &i) }
        inner = Mutex(i)
    }

    /// Loads the stored states and overrides, and the MX cache's hosts (at start).
    public func load(now: Int64) throws {
        guard let store else { return }
        let states = try store.shapingStates()
        let overrides = try store.shapingOverrides()
        let hosts = try store.cachedMXHosts()
        inner.withLock { i in
            for (domain, host) in hosts { ShapingGate.learn(domain, mxHost: host, providers, &i) }
            for s in states {
                i.shaper.restore(ShapingKey(source: s.source.isEmpty ? nil : s.source, destination: s.destination), ShapingGate.state(from: s))
            }
            apply(overrides, live: false, &i)
        }
    }

    public static func state(from s: StoredShapingState) -> ShapingState {
        var st = ShapingState()
        st.factor = s.factor
        st.holdUntil = s.holdUntil
        st.suspendedUntil = s.suspendedUntil
        st.ruleLimits = s.ruleLimits.flatMap { try? JSONDecoder().decode(ShapingLimits.self, from: Data($0.utf8)) }
        st.rule = s.rule
        st.reason = s.reason
        st.lastStepAt = s.lastStepAt
        return st
    }

    /// `live`: read while running (at start, a `resume` is already in the stored state).
    private func apply(_ overrides: [StoredShapingOverride], live: Bool, _ i: inout Inner) {
        for o in overrides {
            let key = ShapingKey(source: o.source.isEmpty ? nil : o.source, destination: o.destination)
            if live, let reset = o.resetAt, reset >= o.updatedAt {
                // `tern shaping resume` while this server runs: automatic throttling ends too.
                i.shaper.reset(key)
                i.dirty.insert(key)
            }
            let limits = (try? JSONDecoder().decode(ShapingLimits.self, from: Data(o.limits.utf8))) ?? ShapingLimits()
            i.shaper.setOperator(key, paused: o.paused, limits: limits)
            i.overrideVersion = max(i.overrideVersion, o.version)
        }
    }

    /// The destination a recipient domain is shaped as.
    public func destination(for domain: String) -> String {
        inner.withLock { $0.destinationOf[domain] ?? domain }
    }

    /// Notes that `domain` is shaped as the provider behind `mxHost`, unless
    /// it has limits of its own or its destination is known already; returns
    /// the provider when this taught the gate something.
    @discardableResult
    private static func learn(_ domain: String, mxHost: String, _ providers: ProviderTable, _ i: inout Inner) -> String? {
        guard i.shaper.config.destinations[domain] == nil, i.destinationOf[domain] == nil,
              let provider = providers.provider(forMX: mxHost) else { return nil }
        i.destinationOf[domain] = provider
        return provider
    }

    private func key(_ request: SendRequest, _ i: Inner) -> ShapingKey {
        ShapingKey(source: request.source, destination: i.destinationOf[request.destination] ?? request.destination)
    }

    // MARK: - SendGate

    public func admit(_ request: SendRequest, now: Int64) -> SendPermission {
        inner.withLock { i in
            let k = key(request, i)
            let (answer, changes): (SendPermission, [ShapingChange])
            switch request.kind {
            case .connection:
                guard let w = request.worker else { preconditionFailure("a connection request names its worker") }
                (answer, changes) = i.shaper.admitConnection(k, now: now)
                if answer == .go { i.openByWorker[w] = k }
            case .message:
                (answer, changes) = i.shaper.admitMessage(k, now: now)
            }
            i.active.insert(k)
            record(changes, now: now, &i)
            return answer
        }
    }

    public func ended(_ request: SendRequest, now: Int64) {
        inner.withLock { i in
            guard let w = request.worker, let held = i.openByWorker.removeValue(forKey: w), let k = held else { return }
            i.shaper.connectionEnded(k)
            i.active.insert(k)
        }
    }

    public func observe(_ request: SendRequest, reply: SMTPReply, mxHost: String?, now: Int64) {
        let category = reply.code >= 300 ? classifier.classify(reply) : nil
        inner.withLock { i in
            if let mxHost { ShapingGate.learn(request.destination, mxHost: mxHost, providers, &i) }
            let k = key(request, i)
            let changes = i.shaper.observe(k, reply: reply, category: category, now: now)
            record(changes, now: now, &i)
        }
    }

    public func rekey(_ request: SendRequest, mxHost: String?, now: Int64) -> SendPermission {
        inner.withLock { i in
            let domain = request.destination
            guard let w = request.worker, let mxHost, let provider = ShapingGate.learn(domain, mxHost: mxHost, providers, &i) else { return .go }
            guard let held = i.openByWorker[w], let old = held, old.destination != provider else { return .go }
            // Counted under the domain until now: the provider decides.
            let key = ShapingKey(source: request.source, destination: provider)
            let (answer, changes) = i.shaper.admitConnection(key, now: now)
            record(changes, now: now, &i)
            i.shaper.connectionEnded(old)
            i.openByWorker[w] = answer == .go ? key : .some(nil)
            i.active.insert(key)
            if answer != .go {
                logger.info("connection closed unused: its domain is a provider's, which has no room", metadata: [
                    "domain": "\(domain)", "destination": "\(provider)",
                ])
            }
            return answer
        }
    }

    public func allowance(_ request: SendRequest, now: Int64) -> Int? {
        inner.withLock { i in
            let k = key(request, i)
            switch i.shaper.state(k).mode(at: now) {
            case .paused, .suspended: return 0
            case .normal, .throttled: break
            }
            // Whole tokens, with the same float tolerance as an admission.
            return i.shaper.tokens(k, now: now).min().map { Int(($0 + TokenBucket.tolerance).rounded(.down)) }
        }
    }

    public func terms(_ request: SendRequest, now: Int64) -> ConnectionTerms {
        inner.withLock { i in
            let l = i.shaper.effective(key(request, i), now: now)
            return ConnectionTerms(messagesPerConnection: l.messagesPerConnection, recipientsPerMessage: l.recipientsPerMessage,
                                   requireTLS: l.requireTLS ?? false)
        }
    }

    private func record(_ changes: [ShapingChange], now: Int64, _ i: inout Inner) {
        for c in changes {
            i.dirty.insert(c.key)
            let kind: EventKind
            switch c.kind {
            case .throttled: kind = .shapingThrottled
            case .suspended: kind = .shapingSuspended
            case .ramped: kind = .shapingRamped
            case .resumed: kind = .shapingResumed
            }
            var json = JSONObjectWriter()
            json.add("destination", c.key.destination)
            json.add("source", c.key.source)
            json.add("mode", c.state.mode(at: now).rawValue)
            json.add("factor", (c.state.factor * 100).rounded() / 100)
            json.add("reason", c.reason)
            json.add("rule", c.state.rule)
            json.add("until", c.state.until(at: now))
            i.events.append((kind, now, json.finish()))
            let meta: Logger.Metadata = ["destination": "\(c.key)", "factor": "\(c.state.factor)", "reason": "\(c.reason ?? "-")"]
            if c.kind == .throttled || c.kind == .suspended { logger.warning("\(c.kind.rawValue)", metadata: meta) } else {
                logger.info("\(c.kind.rawValue)", metadata: meta)
            }
        }
    }

    // MARK: - Persistence and operators

    /// Writes changed states and their events now (the service does so
    /// every 200 ms; tests call it).
    public func flush(now: Int64, snapshot: Bool = false) async {
        guard let store else { return }
        let (rows, events) = inner.withLock { i -> ([StoredShapingState], [(kind: EventKind, at: Int64, detail: String)]) in
            var keys = i.dirty
            if snapshot { keys.formUnion(i.active); i.active = [] }
            i.dirty = []
            let events = i.events
            i.events = []
            return (keys.map { row($0, i.shaper, now: now) }, events)
        }
        guard !rows.isEmpty || !events.isEmpty else { return }
        do { try await store.saveShaping(rows, events: events) } catch {
            logger.error("cannot save shaping state", metadata: ["error": "\(error)"])
        }
    }

    private func row(_ k: ShapingKey, _ s: Shaper, now: Int64) -> StoredShapingState {
        let st = s.state(k)
        let limits = st.ruleLimits.flatMap { try? JSONEncoder().encode($0) }.map { String(decoding: $0, as: UTF8.self) }
        let tokens = JSON.array(s.tokens(k, now: now).map { .double(($0 * 100).rounded() / 100) }).text
        return StoredShapingState(source: k.source ?? "", destination: k.destination, mode: st.mode(at: now).rawValue, factor: st.factor,
                                  holdUntil: st.holdUntil, suspendedUntil: st.suspendedUntil, ruleLimits: limits, rule: st.rule,
                                  reason: st.reason, lastStepAt: st.lastStepAt, open: s.openConnections(k), tokens: tokens,
                                  updatedAt: now)
    }

    /// Picks up operators' changes (`tern shaping pause|resume|set`) when
    /// the override table's version moved.
    public func pollOverrides() {
        guard let store, let version = try? store.shapingOverrideVersion() else { return }
        guard version != inner.withLock({ $0.overrideVersion }), let overrides = try? store.shapingOverrides() else { return }
        inner.withLock { i in
            let before = i.overrideVersion
            apply(overrides.filter { $0.version > before }, live: true, &i)
        }
        logger.info("shaping overrides changed", metadata: ["version": "\(version)"])
    }

    /// Current state of every destination the gate knows (for tests and `show`).
    public func snapshot(now: Int64) -> [(key: ShapingKey, state: ShapingState, effective: ShapingLimits, open: Int)] {
        inner.withLock { i in
            i.shaper.keys.map { k in (k, i.shaper.state(k), i.shaper.effective(k, now: now), i.shaper.openConnections(k)) }
        }
    }

    /// Ends suspensions and climbs back on time, with nothing asking.
    public func advance(now: Int64) {
        inner.withLock { i in
            let changes = i.shaper.advance(now: now)
            record(changes, now: now, &i)
        }
    }

    // MARK: - Service

    public func run() async throws {
        var tick = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await Task.sleep(for: .milliseconds(200))
            tick += 1
            if tick % 5 == 0 { pollOverrides() }
            advance(now: nowMillis())
            await flush(now: nowMillis(), snapshot: tick % 10 == 0)
        }
        await flush(now: nowMillis(), snapshot: true)
    }
}
