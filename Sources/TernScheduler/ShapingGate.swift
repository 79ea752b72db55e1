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
        /// Warming sources' plans and counts (Warmup.swift), and the sources
        /// whose state changed since the last write.
        var warmup: Warmup
        var warmupDirty: Set<String> = []
        var warmupVersion: Int64 = 0
    }
    let inner: Mutex<Inner>

    /// Named sources (`[[source]]`): an operator's override without a
    /// source (`tern shaping pause google`) applies to each of them.
    let sources: [String]
    /// Warming sources and their plan's name.
    let warming: [String: String]

    public init(config: ShapingConfig, providers: ProviderTable = ProviderTable(), classifier: BounceClassifier = BounceClassifier(),
                routes: [StaticRoute] = [], sources: [String] = [], warmupPlans: [WarmupPlan] = [], warming: [String: String] = [:],
                store: Store?, logger: Logger = Logger(label: "tern.shaping")) {
        self.providers = providers
        self.classifier = classifier
        self.store = store
        self.logger = logger
        self.sources = sources
        self.warming = warming
        var i = Inner(shaper: Shaper(config: config), warmup: Warmup(plans: warmupPlans))
        for r in routes where r.domain != "*" { ShapingGate.learn(r.domain, mxHost: r.host, providers, &i) }
        inner = Mutex(i)
    }

    /// Loads the stored states and overrides, and the MX cache's hosts (at
    /// start); a warming source without a stored plan day starts on day 1.
    public func load(now: Int64) throws {
        let stored = try store.map { try ($0.warmupStates(), $0.warmupUsage(), $0.warmupOperatorVersion()) }
        inner.withLock { i in
            i.warmupVersion = stored?.2 ?? 0
            for (source, plan) in warming.sorted(by: { $0.key < $1.key }) {
                if let row = stored?.0.first(where: { $0.source == source }) {
                    var p = ShapingGate.progress(from: row)
                    p.plan = plan
                    var counts: [String: WarmupCounts] = [:]
                    for u in stored?.1 ?? [] where u.source == source && u.dayStartedAt == row.dayStartedAt { counts[u.destination] = ShapingGate.counts(from: u) }
                    i.warmup.set(source, p, counts: counts)
                } else {
                    i.warmup.set(source, WarmupProgress(plan: plan, dayStartedAt: now))
                    i.warmupDirty.insert(source)
                    var json = JSONObjectWriter()
                    json.add("source", source)
                    json.add("plan", plan)
                    json.add("day", 1)
                    i.events.append((.warmupStarted, now, json.finish()))
                }
            }
        }
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

    public static func progress(from row: StoredWarmup) -> WarmupProgress {
        WarmupProgress(plan: row.plan, day: row.day, dayStartedAt: row.dayStartedAt, status: WarmupStatus(rawValue: row.status) ?? .active,
                       verdict: row.verdict.flatMap(WarmupVerdict.init(rawValue:)), reason: row.reason, operatorVersion: row.operatorVersion)
    }

    static func counts(from u: StoredWarmupUsage) -> WarmupCounts {
        var c = WarmupCounts()
        c.sent = u.sent
        c.delivered = u.delivered
        c.deferred = u.deferred
        c.bounced = u.bounced
        c.blocked = u.blocked
        c.hourStartedAt = u.hourStartedAt
        c.hourSent = u.hourSent
        return c
    }

    /// `live`: read while running (at start, a `resume` is already in the stored state).
    private func apply(_ overrides: [StoredShapingOverride], live: Bool, _ i: inout Inner) {
        for o in overrides {
            // Without a source: the destination from every source.
            let keys = o.source.isEmpty ? [nil] + sources.map(Optional.some) : [o.source]
            let limits = (try? JSONDecoder().decode(ShapingLimits.self, from: Data(o.limits.utf8))) ?? ShapingLimits()
            for source in keys {
                let key = ShapingKey(source: source, destination: o.destination)
                if live, let reset = o.resetAt, reset >= o.updatedAt {
                    // `tern shaping resume` while this server runs: automatic throttling ends too.
                    i.shaper.reset(key)
                    i.dirty.insert(key)
                }
                i.shaper.setOperator(key, paused: o.paused, limits: limits)
            }
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
            // A warming source at its cap: the pool's other sources, or later.
            if let source = k.source, i.warmup.remaining(source, k.destination, now: now) == 0 {
                return .notBefore(i.warmup.nextWindow(source, k.destination, now: now))
            }
            let (answer, changes): (SendPermission, [ShapingChange])
            switch request.kind {
            case .connection:
                guard let w = request.worker else { preconditionFailure("a connection request names its worker") }
                (answer, changes) = i.shaper.admitConnection(k, now: now)
                if answer == .go { i.openByWorker[w] = k }
            case .message:
                (answer, changes) = i.shaper.admitMessage(k, now: now)
                if answer == .go, let source = k.source, i.warmup.isWarming(source) {
                    i.warmup.take(source, k.destination, now: now)
                    i.warmupDirty.insert(source)
                }
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
            // A failure to find or reach the host says nothing of the source's reputation.
            if let source = k.source, i.warmup.isWarming(source), category != .dns, category != .connection {
                let result: WarmupResult = category == .reputation ? .blocked(permanent: reply.code >= 500)
                    : reply.code < 300 ? .delivered : reply.code < 500 ? .deferred : .bounced
                i.warmup.observe(source, k.destination, result)
                i.warmupDirty.insert(source)
            }
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
            let tokens = i.shaper.tokens(k, now: now).min().map { Int(($0 + TokenBucket.tolerance).rounded(.down)) }
            guard let source = k.source, let cap = i.warmup.remaining(source, k.destination, now: now) else { return tokens }
            return min(tokens ?? cap, cap)
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
        let (rows, events, warm, usage) = inner.withLock { i in
            var keys = i.dirty
            if snapshot { keys.formUnion(i.active); i.active = [] }
            i.dirty = []
            let events = i.events
            i.events = []
            var warm: [StoredWarmup] = []
            var usage: [StoredWarmupUsage] = []
            for source in i.warmupDirty.sorted() {
                guard let p = i.warmup.progress[source] else { continue }
                warm.append(StoredWarmup(source: source, plan: p.plan, day: p.day, dayStartedAt: p.dayStartedAt, status: p.status.rawValue,
                                         verdict: p.verdict?.rawValue, reason: p.reason, operatorVersion: p.operatorVersion, updatedAt: now))
                for (destination, c) in i.warmup.counts[source] ?? [:] {
                    usage.append(StoredWarmupUsage(source: source, destination: destination, dayStartedAt: p.dayStartedAt, sent: c.sent, delivered: c.delivered,
                                                   deferred: c.deferred, bounced: c.bounced, blocked: c.blocked, hourStartedAt: c.hourStartedAt,
                                                   hourSent: c.hourSent))
                }
            }
            i.warmupDirty = []
            return (keys.map { row($0, i.shaper, now: now) }, events, warm, usage)
        }
        guard !rows.isEmpty || !events.isEmpty || !warm.isEmpty else { return }
        do { try await store.saveShaping(rows, warmup: warm, usage: usage, events: events, now: now) } catch {
            logger.error("cannot save shaping and warm-up state", metadata: ["error": "\(error)"])
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
        pollWarmup()
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

    /// Picks up operators' warm-up changes (`tern warmup start|pause|resume|skip-to`).
    public func pollWarmup() {
        guard let store, !warming.isEmpty, let version = try? store.warmupOperatorVersion(),
              version != inner.withLock({ $0.warmupVersion }), let rows = try? store.warmupStates() else { return }
        inner.withLock { i in
            for row in rows where row.operatorVersion > i.warmupVersion && warming[row.source] != nil {
                i.warmup.set(row.source, ShapingGate.progress(from: row))
            }
            i.warmupVersion = version
        }
        logger.info("warm-up changed by an operator", metadata: ["version": "\(version)"])
    }

    /// Ends suspensions and climbs back on time, with nothing asking; ends
    /// the warm-up days that are over.
    public func advance(now: Int64) {
        inner.withLock { i in
            let changes = i.shaper.advance(now: now)
            record(changes, now: now, &i)
            for c in i.warmup.advance(now: now) {
                i.warmupDirty.insert(c.source)
                let kind: EventKind
                switch (c.progress.status, c.progress.verdict) {
                case (.done, _): kind = .warmupDone
                case (_, .advanced?): kind = .warmupAdvanced
                case (_, .steppedBack?): kind = .warmupSteppedBack
                default: kind = .warmupHeld
                }
                let destinations = c.counts.sorted(by: { $0.key < $1.key }).map { d, n in
                    (d, JSON.object([("sent", .int(n.sent)), (AttemptOutcome.delivered.rawValue, .int(n.delivered)), (AttemptOutcome.deferred.rawValue, .int(n.deferred)),
                                     (AttemptOutcome.bounced.rawValue, .int(n.bounced)), ("blocked", .int(n.blocked))]))
                }
                let json = JSON.object([("source", .string(c.source)), ("plan", .string(c.progress.plan)),
                                        ("finished_day", .int(c.finishedDay)), ("day", .int(c.progress.day)),
                                        ("reason", c.progress.reason.map(JSON.string) ?? .null), ("destinations", .object(destinations))])
                i.events.append((kind, now, json.text))
                let meta: Logger.Metadata = ["source": "\(c.source)", "day": "\(c.progress.day)", "reason": "\(c.progress.reason ?? "-")"]
                if kind == .warmupSteppedBack || kind == .warmupHeld { logger.warning("\(kind.rawValue)", metadata: meta) } else {
                    logger.info("\(kind.rawValue)", metadata: meta)
                }
            }
        }
    }

    /// Each warming source's place and the day's counts (tests, `tern warmup status` through the store).
    public func warmupSnapshot() -> (progress: [String: WarmupProgress], counts: [String: [String: WarmupCounts]]) {
        inner.withLock { ($0.warmup.progress, $0.warmup.counts) }
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
