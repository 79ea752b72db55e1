// The scheduler (docs/architecture.md): finds due destinations, runs workers that claim
// recipients with a lease and hand them to delivery over reused
// connections, and records each message's outcome — attempts, transitions,
// events, DSNs — in one transaction. Limits: connections in total and per
// destination, messages per connection. One slow domain only holds its own
// workers. No busy polling: it sleeps until the next due time or a wake-up
// (intake, a finished worker).

import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import TernDelivery
import TernMessage
import TernProtocol
import TernStore

public struct SchedulerConfig: Sendable {
    /// Reporting-MTA of our DSNs, and their From: domain.
    public var hostname: String
    public var maxConnections = 100
    public var maxConnectionsPerDestination = 20
    public var messagesPerConnection = 100
    /// Recipients a worker claims at a time.
    public var claimBatch = 20
    public var leaseMillis: Int64 = 10 * 60_000
    /// Longest sleep between passes; also how soon mail queued by another
    /// process (`tern sendmail`) is noticed.
    public var idleWakeMillis: Int64 = 5_000
    /// How long a connection with nothing to send stays open for the next
    /// message to its destination (Postfix's smtp_connection_cache_time_limit);
    /// 0 closes it at once.
    public var connectionCacheMillis: Int64 = 2_000
    /// Claimed at intake: recipients (and body bytes, counted once per
    /// destination) that newly accepted mail may hold in memory waiting for
    /// a worker. Mail beyond it is queued and claimed the usual way.
    public var readyRecipients = 5_000
    public var readyBytes = 16 << 20
    public var policy = PolicyConfig()

    public init(hostname: String) { self.hostname = hostname }
}

public final class Scheduler: Service, Sendable {
    let store: Store
    let agent: any DeliveryAgent
    let config: SchedulerConfig
    let clock: any TernClock
    let random: @Sendable () -> Double
    let logger: Logger
    /// This process's lease owner id.
    public let owner: String

    /// A message's leased recipients of one destination, handed over by intake.
    struct ReadyItem {
        var message: StoredMessage
        var recipients: [ClaimedRecipient]
        var leaseUntil: Int64
    }

    struct State: ~Copyable {
        var active: [String: Int] = [:]
        var total = 0
        var stopping = false
        /// Running workers by id; each removes itself when done.
        var workers: [Int: Task<Void, Never>] = [:]
        var nextWorkerID = 0
        /// `run()` is running: intake may hand mail over.
        var running = false
        /// Handed-over mail by destination, oldest first. A ring buffer: a
        /// message taken is released at once. (An array with a head index
        /// kept up to 1,024 taken messages, bodies included: 100 MiB of
        /// 100 KiB messages, which showed as the server's peak RSS.)
        var ready: [String: CircularBuffer<ReadyItem>] = [:]
        var readyCount: [String: Int] = [:]
        /// Reserved or waiting in `ready`, against the limits.
        var heldRecipients = 0
        var heldBytes = 0
        /// Workers with an open connection and nothing to send, by
        /// destination: handed-over mail resumes one (true) before a new
        /// worker is started; the pass ends those idle for longer than the
        /// connection cache time (false).
        var waiting: [String: [(since: Int64, resume: CheckedContinuation<Bool, Never>)]] = [:]
        /// Destinations whose queued or deferred rows were due at the last
        /// pass and have not been claimed to the end since.
        var dueInStore: Set<String> = []
        /// Recipients this process holds a lease on and has not settled:
        /// renewed while held, never swept (issue 15: a delivery slower than
        /// the lease was handed to a second worker and sent twice).
        var held: Set<Int64> = []
        var leasesRenewedAt: Int64 = 0

        /// Takes the idle worker of `domain` that waited last, if any.
        mutating func popWaiter(_ domain: String) -> CheckedContinuation<Bool, Never>? {
            let w = waiting[domain]?.popLast()
            if waiting[domain]?.isEmpty == true { waiting[domain] = nil }
            return w?.resume
        }
    }

    let state = Mutex(State())
    private let wakeup = Wakeup()
    /// Recipients a worker took and gave back to the store unsent because
    /// its connection could carry no more (tests: handed-over mail is taken
    /// within the limit, so it never adds to this).
    let givenBackAtLimit = Atomic<Int>(0)

    /// Where delivery workers run, in turn (the event loops, in `serve`);
    /// empty: Swift's global executor.
    let executors: [any TaskExecutor]

    public init(store: Store, agent: any DeliveryAgent, config: SchedulerConfig, clock: any TernClock = SystemClock(),
                random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }, executors: [any TaskExecutor] = [],
                logger: Logger = Logger(label: "tern.scheduler")) {
        self.executors = executors
        self.store = store
        self.agent = agent
        self.config = config
        self.clock = clock
        self.random = random
        self.logger = logger
        self.owner = "\(config.hostname):\(getpid()):\(UInt32.random(in: 0...UInt32.max))"
    }

    /// New work may be due now (intake committed a message, an operator flushed).
    public func wake() { wakeup.signal() }

    /// Graceful stop: no new claims; deliveries in progress finish and are
    /// recorded; `run()` returns once they have.
    public func stop() {
        state.withLock { $0.stopping = true }
        endWaits(olderThan: nil)
        wakeup.signal()
    }

    // MARK: - Service

    /// Runs until graceful shutdown. Leases of an earlier process are the
    /// composition root's to release before this starts (`tern serve` does,
    /// and logs the count); each pass here sweeps leases that ran out.
    public func run() async throws {
        state.withLock { $0.running = true }
        await withGracefulShutdownHandler {
            while !state.withLock({ $0.stopping }) && !Task.isCancelled {
                let next = await startDueWorkers()
                await wakeup.wait(milliseconds: sleepTime(next))
            }
        } onGracefulShutdown: {
            self.stop()
        }
        for w in state.withLock({ Array($0.workers.values) }) { await w.value }
        await releaseReady()
    }

    /// Ends the waits of idle workers that began before `olderThan` (all with nil).
    private func endWaits(olderThan: Int64?) {
        let ended = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            var out: [CheckedContinuation<Bool, Never>] = []
            for (domain, list) in s.waiting {
                var keep = list
                keep.removeAll { w in
                    if let cutoff = olderThan, w.since >= cutoff { return false }
                    out.append(w.resume)
                    return true
                }
                s.waiting[domain] = keep.isEmpty ? nil : keep
            }
            return out
        }
        for w in ended { w.resume(returning: false) }
    }

    /// Keeps a worker's connection open for more handed-over mail, up to the
    /// connection cache time; true when there is some. Only while `run()`
    /// runs: its passes end the waits.
    private func waitForWork(_ domain: String) async -> Bool {
        guard config.connectionCacheMillis > 0 else { return false }
        let now = clock.now()
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let answer = state.withLock { s -> Bool? in
                guard s.running, !s.stopping else { return false }
                if s.readyCount[domain, default: 0] > 0 { return true } // arrived meanwhile
                s.waiting[domain, default: []].append((now, c))
                return nil
            }
            if let answer { c.resume(returning: answer) }
        }
    }

    /// Gives claimed recipients back to the store untried.
    @discardableResult
    private func giveBack(_ ids: [Int64]) async throws -> Int {
        settled(ids)
        return try await store.releaseLeases(ids, owner: owner)
    }

    /// These recipients are no longer this process's to renew (their
    /// outcome is written, or they were given back).
    private func settled(_ ids: some Sequence<Int64>) {
        state.withLock { s in for id in ids { s.held.remove(id) } }
    }

    /// Renews the leases this process holds once a quarter of the lease
    /// time has passed since the last renewal: a delivery may take longer
    /// than a lease (the client's own timeouts add up to more), and must
    /// not be handed to a second worker meanwhile.
    private func renewLeases(now: Int64) async {
        let ids = state.withLock { s -> [Int64] in
            guard !s.held.isEmpty, now - s.leasesRenewedAt >= config.leaseMillis / 4 else { return [] }
            s.leasesRenewedAt = now
            return Array(s.held)
        }
        guard !ids.isEmpty else { return }
        do {
            _ = try await store.renewLeases(ids, owner: owner, until: now + config.leaseMillis)
        } catch {
            logger.warning("could not renew leases", metadata: ["recipients": "\(ids.count)", "error": "\(error)"])
        }
    }

    /// Gives back the leases of handed-over mail no worker took (at stop).
    private func releaseReady() async {
        let ids = state.withLock { s -> [Int64] in
            s.running = false
            var ids: [Int64] = []
            for items in s.ready.values {
                for item in items { ids += item.recipients.map(\.id) }
            }
            s.ready = [:]
            s.readyCount = [:]
            return ids
        }
        if ids.isEmpty { return }
        do {
            _ = try await giveBack(ids)
        } catch {
            logger.warning("could not give back leases at stop; the next start does", metadata: ["error": "\(error)"])
        }
    }

    /// One pass for tests: start every due worker and wait until all are done.
    public func runDue() async {
        await startDueWorkers()
        while true {
            let workers = state.withLock { Array($0.workers.values) }
            if workers.isEmpty { return }
            for w in workers { await w.value }
        }
    }

    /// How long to sleep when the earliest claimable recipient is due at `next`.
    private func sleepTime(_ next: Int64?) -> Int64 {
        let cached = state.withLock { !$0.waiting.isEmpty }
        let idleWake = cached ? min(config.idleWakeMillis, max(1, config.connectionCacheMillis)) : config.idleWakeMillis
        guard let next else { return idleWake }
        let wait = next - clock.now()
        // Due now but not started: its destination is at its connection limit,
        // and a finishing worker will wake us. Never spin.
        return wait <= 0 ? idleWake : min(wait, idleWake)
    }

    // MARK: - Workers

    /// Starts workers for due destinations; returns the earliest
    /// next_attempt_at of any claimable recipient (from the same query).
    @discardableResult
    func startDueWorkers() async -> Int64? {
        let now = clock.now()
        endWaits(olderThan: now - config.connectionCacheMillis)
        await renewLeases(now: now)
        if let n = try? await store.recoverLeases(now: now, owner: owner, everyOtherOwner: false,
                                                  holding: { self.state.withLock { Array($0.held) } }), n > 0 {
            logger.warning("leases expired; recipients are claimable again", metadata: ["recipients": "\(n)"])
        }
        guard let due = try? store.dueDomains(now: now) else { return nil }
        // Fairness: earliest due first, each domain at most its share.
        for d in due.sorted(by: { $0.nextAttemptAt < $1.nextAttemptAt }) where d.nextAttemptAt <= now {
            let domain = d.domain
            let idle = state.withLock { s -> CheckedContinuation<Bool, Never>? in
                s.dueInStore.insert(domain)
                startWorkers(domain, due: d.dueCount + s.readyCount[domain, default: 0], &s)
                // A worker idle on a connection to it takes the queued ones too.
                return s.popWaiter(domain)
            }
            idle?.resume(returning: true)
        }
        state.withLock { s in
            for (domain, waiting) in s.readyCount where waiting > 0 { startWorkers(domain, due: waiting, &s) }
        }
        return due.map(\.nextAttemptAt).min()
    }

    /// Starts workers for `domain` up to its share of `due` recipients (one
    /// per five, within the limits). Called with the state locked.
    private func startWorkers(_ domain: String, due: Int, _ s: inout State) {
        let wanted = min(config.maxConnectionsPerDestination, max(1, (due + 4) / 5))
        while !s.stopping, s.total < config.maxConnections, s.active[domain, default: 0] < wanted {
            s.total += 1
            s.active[domain, default: 0] += 1
            // Registered under the lock: the worker's own removal waits for it.
            let id = s.nextWorkerID
            s.nextWorkerID += 1
            if executors.isEmpty {
                s.workers[id] = Task { await self.work(domain, id: id) }
            } else {
                s.workers[id] = Task(executorPreference: executors[id % executors.count]) { await self.work(domain, id: id) }
            }
        }
    }

    private func finished(_ domain: String, id: Int) {
        state.withLock { s in
            s.total -= 1
            let n = s.active[domain, default: 1] - 1
            s.active[domain] = n == 0 ? nil : n
            s.workers[id] = nil
            // Handed-over mail that arrived after this worker last looked
            // (or that it left at its per-connection limit) gets a worker now:
            // the pass does not see leased rows.
            if let waiting = s.readyCount[domain], waiting > 0 { startWorkers(domain, due: waiting, &s) }
        }
        wakeup.signal()
    }

    /// Workers running now (tests).
    var runningWorkers: Int { state.withLock { $0.workers.count } }

    private var stopping: Bool { state.withLock { $0.stopping } }

    private func claim(_ domain: String) async -> [ClaimedRecipient] {
        let now = clock.now()
        do {
            let claimed = try await store.claim(domain: domain, now: now, owner: owner, leaseUntil: now + config.leaseMillis,
                                                limit: config.claimBatch)
            state.withLock { s in
                if claimed.count < config.claimBatch { s.dueInStore.remove(domain) }
                s.held.formUnion(claimed.map(\.id))
            }
            return claimed
        } catch {
            logger.error("claim failed", metadata: ["domain": "\(domain)", "error": "\(error)"])
            return []
        }
    }

    /// The suppression key of an address: its canonical form.
    static func key(_ address: String) -> String { AddressParser.canonical(address) ?? address }

    /// Claims recipients to deliver, settling the suppressed ones on the way.
    private func claimDeliverable(_ domain: String) async -> [ClaimedRecipient] {
        while true {
            let claimed = await claim(domain)
            if claimed.isEmpty { return [] }
            // One form for both sides: the domain as a lower-case A-label.
            let keys = claimed.map { Scheduler.key($0.address) }
            let found: [String: String]
            do {
                found = try store.suppressed(keys, now: clock.now())
            } catch {
                logger.error("suppression check failed; delivering", metadata: ["error": "\(error)"])
                return claimed
            }
            if found.isEmpty { return claimed }
            var reasons: [Int64: String] = [:]
            for (r, key) in zip(claimed, keys) { reasons[r.id] = found[key] }
            let (stopped, keep) = claimed.reduce(into: ([ClaimedRecipient](), [ClaimedRecipient]())) { acc, r in
                if reasons[r.id] != nil { acc.0.append(r) } else { acc.1.append(r) }
            }
            await settleSuppressed(stopped, reasons: reasons)
            if !keep.isEmpty || stopping { return keep }
        }
    }

    /// One transaction per message: `suppressed` transitions, events, DSNs.
    /// `reasons` by recipient id.
    private func settleSuppressed(_ recipients: [ClaimedRecipient], reasons: [Int64: String]) async {
        let now = clock.now()
        for (messageID, group) in Dictionary(grouping: recipients, by: \.messageID) {
            guard let stored = try? store.message(id: messageID) else { continue }
            var batch = OutcomeBatch(at: now)
            var reports: [DSNRecipient] = []
            for r in group {
                let d = Policy.suppress(r, reason: reasons[r.id] ?? "on the suppression list", sender: stored.mailFrom, now: now)
                batch.transitions.append(d.transition)
                if let report = d.dsn { reports.append(report) }
                logger.info("suppressed", metadata: ["msg": "\(stored.queueID)", "rcpt": "\(r.address)"])
            }
            if !reports.isEmpty { batch.dsns.append((dsnMessage(for: stored, reports, at: now), stored.id, group.map(\.id))) }
            batch.leaseOwner = owner
            defer { settled(group.map(\.id)) }
            do {
                try await store.record(batch)
                // A DSN is queued mail like any other: the pass sends it now,
                // not when it next wakes (workers may linger on connections).
                if !batch.dsns.isEmpty { wakeup.signal() }
            } catch {
                logger.error("could not record suppressions", metadata: ["msg": "\(stored.queueID)", "error": "\(error)"])
            }
        }
    }

    /// Recipients a worker delivers next, with the messages already in
    /// memory (handed over by intake; the others are read from the store).
    struct Batch {
        var recipients: [ClaimedRecipient] = []
        var messages: [Int64: StoredMessage] = [:]
    }

    /// The next batch for `domain`: handed-over mail and due rows of the
    /// store in turn, so that neither starves the other. Handed-over mail is
    /// taken whole messages at a time, at most `messages`: what the
    /// connection may still carry, so that none has to be given back to the
    /// store (and claimed and read again).
    private func next(_ domain: String, preferReady: inout Bool, messages: Int = .max) async -> Batch {
        let limit = min(config.claimBatch, max(1, messages))
        let inStore = state.withLock { $0.dueInStore.contains(domain) }
        if preferReady || !inStore {
            let batch = await takeReady(domain, messages: limit)
            if !batch.recipients.isEmpty {
                preferReady = false
                return batch
            }
        }
        preferReady = true
        if inStore {
            // A claim counts recipients: a limit of `messages` recipients would
            // split messages with several recipients into several transactions.
            // A full claim batch may hold more messages than the connection
            // still carries; those few are given back at the limit.
            let claimed = await claimDeliverable(domain)
            if !claimed.isEmpty { return Batch(recipients: claimed) }
        }
        return await takeReady(domain, messages: limit)
    }

    /// Takes up to a claim batch of handed-over recipients of `domain`, of
    /// at most `messages` messages. Mail that waited so long that half its
    /// lease is gone is given back to the store instead: its lease must
    /// outlast the delivery.
    private func takeReady(_ domain: String, messages: Int) async -> Batch {
        let now = clock.now()
        var batch = Batch()
        var stale: [Int64] = []
        state.withLock { s in
            guard s.ready[domain] != nil else { return }
            while batch.recipients.count < config.claimBatch && batch.messages.count < messages,
                  let item = s.ready[domain]!.popFirst() {
                s.readyCount[domain, default: 0] -= item.recipients.count
                s.heldRecipients -= item.recipients.count
                s.heldBytes -= item.message.body.count
                if item.leaseUntil - now < config.leaseMillis / 2 {
                    // Still ours (held leases are renewed, never swept): give back.
                    stale += item.recipients.map(\.id)
                    continue
                }
                batch.recipients += item.recipients
                batch.messages[item.message.id] = item.message
            }
            if s.ready[domain]!.isEmpty {
                s.ready[domain] = nil
                s.readyCount[domain] = nil
            }
        }
        if !stale.isEmpty {
            logger.warning("handed-over mail waited too long; queued again", metadata: ["domain": "\(domain)", "recipients": "\(stale.count)"])
            _ = try? await giveBack(stale)
            wakeup.signal()
        }
        return batch
    }

    func work(_ domain: String, id: Int) async {
        defer { finished(domain, id: id) }
        var preferReady = true
        var batch = await next(domain, preferReady: &preferReady, messages: config.messagesPerConnection)
        guard !batch.recipients.isEmpty else { return }
        let started = clock.now()
        switch await agent.connect(domain: domain) {
        case .failed(let reply, let ctx):
            // The whole destination is unreachable (or does not exist): every
            // due recipient of it shares this outcome now, not one batch per pass.
            let outcome = RecipientOutcome.from(reply)
            while !batch.recipients.isEmpty {
                await record(batch.recipients, outcomes: [:], fallback: outcome, context: ctx, started: started, messages: batch.messages)
                if stopping { break }
                batch = await next(domain, preferReady: &preferReady)
            }
        case .connected(let connection):
            var sent = 0
            outer: while !batch.recipients.isEmpty {
                let byMessage = Dictionary(grouping: batch.recipients, by: \.messageID).sorted { $0.key < $1.key }
                for (index, (messageID, recipients)) in byMessage.enumerated() {
                    // A message whose commands went out with the previous one's
                    // content is sent now, whatever else happened meanwhile.
                    let promised = connection.startedMessageID == messageID
                    if !promised && (!connection.isReusable || stopping || sent >= config.messagesPerConnection) {
                        // Not sent: give these back untouched.
                        let rest = byMessage[index...].flatMap(\.value)
                        if connection.isReusable && !stopping { givenBackAtLimit.add(rest.count, ordering: .relaxed) }
                        _ = try? await giveBack(rest.map(\.id))
                        if !stopping { wakeup.signal() }
                        break outer
                    }
                    // The next message of the batch can start in the same write
                    // as this one's content, if it is sure to be sent next.
                    var next: OutboundMessage? = nil
                    if index + 1 < byMessage.count, !stopping, sent + 1 < config.messagesPerConnection {
                        let (nextID, nextRecipients) = byMessage[index + 1]
                        if batch.messages[nextID] == nil { batch.messages[nextID] = try? store.message(id: nextID) }
                        next = batch.messages[nextID].map { outbound(nextID, nextRecipients, $0) }
                    }
                    await deliver(messageID, recipients, over: connection, message: batch.messages[messageID], next: next)
                    batch.messages[messageID] = nil // its body is not held while the rest are sent
                    sent += 1
                }
                if !connection.isReusable || stopping || sent >= config.messagesPerConnection { break }
                batch = await next(domain, preferReady: &preferReady, messages: config.messagesPerConnection - sent)
                // Nothing more now: keep the connection for a moment, as
                // Postfix's connection cache does, rather than close it and
                // start a worker and a connection for the next message.
                while batch.recipients.isEmpty, connection.isReusable, await waitForWork(domain) {
                    batch = await next(domain, preferReady: &preferReady, messages: config.messagesPerConnection - sent)
                }
            }
            await connection.close()
        }
    }

    private func outbound(_ messageID: Int64, _ recipients: [ClaimedRecipient], _ stored: StoredMessage) -> OutboundMessage {
        let envelope = ClientEnvelope(
            mailFrom: stored.mailFrom, size: stored.body.count, bodyType: stored.bodyType, smtputf8: stored.smtputf8,
            ret: stored.ret, envID: stored.envID,
            recipients: recipients.map { ClientRecipient(id: $0.id, address: $0.address, notify: $0.notify, orcpt: $0.orcpt) })
        return OutboundMessage(messageID: messageID, queueID: stored.queueID, envelope: envelope, body: stored.body)
    }

    private func deliver(_ messageID: Int64, _ recipients: [ClaimedRecipient], over connection: any DeliveryConnection,
                         message: StoredMessage?, next: OutboundMessage? = nil) async {
        let started = clock.now()
        guard let stored = message ?? (try? store.message(id: messageID)) else {
            logger.error("claimed recipients of a missing message", metadata: ["msg": "\(messageID)"])
            _ = try? await giveBack(recipients.map(\.id))
            return
        }
        let outcomes = await connection.send(outbound(messageID, recipients, stored), next: next)
        let fallback = RecipientOutcome.deferred(SMTPReply(451, .systemError, "no result for this recipient"))
        await record(recipients, outcomes: outcomes, fallback: fallback, context: connection.context, started: started, message: stored)
    }

    /// One transaction for one message's recipients (or one claimed batch on
    /// a connect failure): attempts, transitions, events and DSNs.
    private func record(_ recipients: [ClaimedRecipient], outcomes: [Int64: RecipientOutcome], fallback: RecipientOutcome,
                        context: AttemptContext, started: Int64, message: StoredMessage? = nil,
                        messages: [Int64: StoredMessage] = [:]) async {
        let now = clock.now()
        for (messageID, group) in Dictionary(grouping: recipients, by: \.messageID) {
            guard let stored = message ?? messages[messageID] ?? (try? store.message(id: messageID)) else { continue }
            var batch = OutcomeBatch(at: now)
            batch.leaseOwner = owner
            var reports: [(id: Int64, report: DSNRecipient)] = []
            defer { settled(group.map(\.id)) }
            for r in group {
                let outcome = outcomes[r.id] ?? fallback
                let decision = Policy.decide(outcome, for: r, sender: stored.mailFrom, context: context, now: now,
                                             config: config.policy, random: random())
                batch.attempts.append(Policy.attempt(outcome, for: r, context: context, started: started, ended: now,
                                                     category: Policy.category(outcome)))
                batch.transitions.append(decision.transition)
                if config.policy.suppressOnHardBounce && Policy.isNonexistentAddress(outcome) {
                    let entry = Suppression(address: Scheduler.key(r.address), reason: "\(outcome.reply.code) \(outcome.reply.enhanced!) \(outcome.reply.text)",
                                            source: "bounce", createdAt: now)
                    batch.suppressions.append((entry, r.id, r.messageID))
                }
                if let d = decision.dsn { reports.append((r.id, d)) }
                logger.info("\(decision.transition.state)", metadata: [
                    "msg": "\(stored.queueID)", "rcpt": "\(r.address)", "mx": "\(context.mxHost ?? "-")",
                    "reply": "\(outcome.reply)",
                ])
            }
            // One report per kind (failed, delayed, relayed) for this message.
            let kinds = Dictionary(grouping: reports, by: \.report.action.rawValue)
            for kind in kinds.keys.sorted() {
                batch.dsns.append((dsnMessage(for: stored, kinds[kind]!.map(\.report), at: now), stored.id, kinds[kind]!.map(\.id)))
            }
            do {
                try await store.record(batch)
                // A DSN is queued mail like any other: the pass sends it now,
                // not when it next wakes (workers may linger on connections).
                if !batch.dsns.isEmpty { wakeup.signal() }
            } catch {
                // Nothing was written: the leases expire and the recipients are retried.
                logger.error("could not record outcomes", metadata: ["msg": "\(stored.queueID)", "error": "\(error)"])
            }
        }
    }

    func dsnMessage(for original: StoredMessage, _ recipients: [DSNRecipient], at now: Int64) -> NewMessage {
        DSNFactory.message(for: original, recipients, hostname: config.hostname, at: now)
    }
}

// MARK: - Claimed at intake

extension Scheduler: IntakeHandoff {
    /// Body bytes a message holds in memory: one reference per destination.
    private func heldBytes(_ message: NewMessage) -> Int {
        message.body.count * Set(message.recipients.map(\.domain)).count
    }

    public func reserve(_ message: NewMessage) -> IntakeLease? {
        let n = message.recipients.count
        let bytes = heldBytes(message)
        let granted = state.withLock { s -> Bool in
            guard s.running, !s.stopping, s.heldRecipients + n <= config.readyRecipients,
                  s.heldBytes + bytes <= config.readyBytes else { return false }
            s.heldRecipients += n
            s.heldBytes += bytes
            return true
        }
        return granted ? IntakeLease(owner: owner, until: clock.now() + config.leaseMillis) : nil
    }

    public func cancel(_ message: NewMessage) {
        let n = message.recipients.count
        let bytes = heldBytes(message)
        state.withLock { s in
            s.heldRecipients -= n
            s.heldBytes -= bytes
        }
    }

    public func handOff(_ message: NewMessage, inserted: InsertedMessage) {
        guard let lease = message.lease else { return }
        let stored = StoredMessage(id: inserted.id, queueID: message.queueID, receivedAt: message.receivedAt, mailFrom: message.mailFrom,
                                   body: message.body, envID: message.envID, ret: message.ret, bodyType: message.bodyType,
                                   smtputf8: message.smtputf8, origin: message.origin)
        var byDomain: [String: [ClaimedRecipient]] = [:]
        var notLeased = 0
        for (r, id) in zip(message.recipients, inserted.leasedRecipientIDs) {
            guard let id else { notLeased += 1; continue }
            byDomain[r.domain, default: []].append(ClaimedRecipient(
                id: id, messageID: inserted.id, address: r.address, domain: r.domain, attempts: 0, notify: r.notify, orcpt: r.orcpt,
                createdAt: message.receivedAt, delayNotifiedAt: nil))
        }
        let bytes = heldBytes(message)
        let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            // What was reserved for recipients that were not leased, and for
            // destinations left without any, is free again.
            s.heldRecipients -= notLeased
            s.heldBytes -= bytes - message.body.count * byDomain.count
            var resumed: [CheckedContinuation<Bool, Never>] = []
            for (domain, recipients) in byDomain {
                s.ready[domain, default: CircularBuffer()].append(ReadyItem(message: stored, recipients: recipients, leaseUntil: lease.until))
                s.readyCount[domain, default: 0] += recipients.count
                s.held.formUnion(recipients.map(\.id))
                if let w = s.popWaiter(domain) {
                    resumed.append(w)
                } else {
                    startWorkers(domain, due: s.readyCount[domain, default: 0], &s)
                }
            }
            return resumed
        }
        for w in waiters { w.resume(returning: true) }
    }
}

/// A one-slot wake-up signal with a timeout.
final class Wakeup: Sendable {
    private let state = Mutex<(pending: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func signal() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.pending = true
            return nil
        }
        w?.resume()
    }

    func wait(milliseconds: Int64) async {
        if state.withLock({ s in defer { s.pending = false }; return s.pending }) { return }
        if milliseconds <= 0 || Task.isCancelled { return }
        // A continuation does not see cancellation: the handler wakes it.
        await withTaskCancellationHandler {
            await race(milliseconds)
        } onCancel: {
            self.signal()
        }
    }

    private func race(_ milliseconds: Int64) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { cont in
                    let ready = self.state.withLock { s -> Bool in
                        if s.pending { s.pending = false; return true }
                        s.waiter = cont
                        return false
                    }
                    if ready { cont.resume() }
                }
            }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(milliseconds))
                if !Task.isCancelled { self.signal() }
            }
            await group.next()
            group.cancelAll()
        }
        // A timer that fired after the signal leaves a stale wake-up: harmless (one extra pass).
    }
}
