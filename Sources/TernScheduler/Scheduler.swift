// The scheduler (docs/architecture.md): the pass loop and the worker pool.
// Each pass renews the leases this process holds, sweeps the ones that ran
// out, finds due destinations and starts workers for them (Worker.swift),
// within the limits: connections in total and per destination, and the send
// gate (SendGate.swift, where shaping and warm-up plug in). Workers are
// child tasks of the task group `run()` owns. Mail handed over by intake
// (ReadyQueue.swift) starts workers too; what workers deliver is written by
// Settlement.swift. One slow domain only holds its own workers. No busy
// polling: it sleeps until the next due time or a wake-up (Wakeup.swift).

import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import TernDelivery
import TernMessage
import TernMetrics
import TernProtocol
import TernRouting
import TernStore

public struct SchedulerConfig: Sendable {
    /// Reporting-MTA of our DSNs, and their From: domain.
    public var hostname: String
    /// Outbound connections in all. A connection is a socket and about
    /// 43 KiB while it waits on a slow server (`tools/conn-memory`, issue
    /// 21), not a process: 4,000 of them are about 170 MiB, and with remote
    /// servers that take a second per reply that is what keeps mail to
    /// thousands of destinations moving. Per destination the limit stays
    /// Postfix's (`smtp_destination_concurrency_limit`).
    public var maxConnections = 4_000
    public var maxConnectionsPerDestination = 20
    public var messagesPerConnection = 100
    /// Recipients a worker claims at a time.
    public var claimBatch = 20
    /// A destination whose messages take this long each (a remote server
    /// that is slow to answer the final dot, a tarpit) gets a connection per
    /// `slowBatch` due messages rather than per five, each taking
    /// `slowBatch` at a time rather than `claimBatch`: its mail then waits
    /// on the server side by side, not in one connection's line.
    public var slowMillis: Int64 = 250
    public var slowBatch = 2
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
    /// Bytes of message bodies that workers may hold read back from the
    /// store at once (BodyMemory.swift): a worker whose message does not fit
    /// waits for others' sends to end. 100 connections waiting on a slow
    /// server's reply to the dot with 8 MB messages: 982 MiB of RSS without
    /// it, 375 MiB with 256 MiB (`tools/conn-memory --size 8000000`).
    public var bodyMemory = 256 << 20
    public var policy = PolicyConfig()
    /// Asked before each connection and each message (no pacing by default).
    public var gate: any SendGate = OpenGate()
    /// Source addresses and pools (none: the kernel chooses the address).
    public var sources = SourceBook()
    /// How often sources that could not be bound are tried again.
    public var sourceProbeMillis: Int64 = 30_000
    /// The providers' table (the metrics name a recipient's provider by it).
    public var providers = ProviderTable()

    public init(hostname: String) { self.hostname = hostname }
}

public final class Scheduler: Service, Sendable {
    let store: Store
    let agent: any DeliveryAgent
    let config: SchedulerConfig
    let clock: any TernClock
    let random: @Sendable () -> Double
    let logger: Logger
    let settlement: Settlement
    var gate: any SendGate { config.gate }
    /// This process's lease owner id.
    public let owner: String

    /// A worker to start, for the task group that runs workers.
    struct WorkerStart: Sendable {
        var lane: Lane
        var id: Int
        /// The source its connection leaves from (nil: the kernel's choice).
        var source: OutboundSource?
    }

    struct State: ~Copyable {
        var active: [Lane: Int] = [:]
        var total = 0
        var stopping = false
        var nextWorkerID = 0
        /// The task group running workers takes new ones from here: set
        /// while `run()` (or `runDue()`) drives workers; without it none start.
        var spawner: AsyncStream<WorkerStart>.Continuation?
        /// `runDue()`: the group ends when the last worker does, once the
        /// pass has started all it will (`passDone`).
        var once = false
        var passDone = false
        /// `run()` is running: intake may hand mail over.
        var running = false
        var ready = ReadyQueue()
        /// Workers with an open connection and nothing to send, by
        /// destination: handed-over mail resumes one (true) before a new
        /// worker is started; the pass ends those idle for longer than the
        /// connection cache time (false).
        var waiting: [Lane: [(since: Int64, resume: CheckedContinuation<Bool, Never>)]] = [:]
        /// Destinations whose queued or deferred rows were due at the last
        /// pass and have not been claimed to the end since.
        var dueInStore: Set<Lane> = []
        /// Destinations the send gate closed, until when.
        var pacedUntil: [Lane: Int64] = [:]
        /// Milliseconds a message took to send, by destination (a moving
        /// average): a slow server gets more connections and smaller batches.
        var pace: [Lane: Int64] = [:]
        /// Recipients this process holds a lease on and has not settled:
        /// renewed while held, never swept (issue 15: a delivery slower than
        /// the lease was handed to a second worker and sent twice).
        var held: Set<Int64> = []
        var leasesRenewedAt: Int64 = 0

        /// Takes the idle worker of `lane` that waited last, if any.
        mutating func popWaiter(_ lane: Lane) -> CheckedContinuation<Bool, Never>? {
            let w = waiting[lane]?.popLast()
            if waiting[lane]?.isEmpty == true { waiting[lane] = nil }
            return w?.resume
        }

        /// Ends the workers' task group once no worker runs and none will start.
        mutating func finishIfDone() {
            guard total == 0, stopping || (once && passDone) else { return }
            spawner?.finish()
            spawner = nil
        }
    }

    let state = Mutex(State())
    let wakeup = Wakeup()
    /// Recipients a worker took and gave back to the store unsent because
    /// its connection could carry no more (tests: handed-over mail is taken
    /// within the limit, so it never adds to this).
    let givenBackAtLimit = Atomic<Int>(0)
    /// Recipients given back untried because the send gate said "not now"
    /// (tests: claims follow the gate's allowance, so this stays small).
    let givenBackPaced = Atomic<Int>(0)
    /// Bodies read back from the store for sending, against `config.bodyMemory`.
    public let bodyMemory: BodyMemory

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
        self.bodyMemory = BodyMemory(limit: config.bodyMemory)
        self.owner = "\(config.hostname):\(getpid()):\(UInt32.random(in: 0...UInt32.max))"
        self.settlement = Settlement(store: store, owner: owner, hostname: config.hostname, policy: config.policy, providers: config.providers,
                                     logger: logger)
    }

    /// New work may be due now (intake committed a message, an operator flushed).
    public func wake() { wakeup.signal() }

    /// Graceful stop: no new claims; deliveries in progress finish and are
    /// recorded; `run()` returns once they have.
    public func stop() {
        state.withLock { s in
            s.stopping = true
            s.finishIfDone()
        }
        endWaits(olderThan: nil)
        wakeup.signal()
    }

    var stopping: Bool { state.withLock { $0.stopping } }

    /// Workers running now (tests).
    var runningWorkers: Int { state.withLock { $0.total } }

    // MARK: - Service

    /// Runs until graceful shutdown. Leases of an earlier process are the
    /// composition root's to release before this starts (`tern serve` does,
    /// and logs the count); each pass here sweeps leases that ran out.
    public func run() async throws {
        TernMetrics.deliveryBodyMemoryStarted()
        await driveWorkers(once: false) {
            await withGracefulShutdownHandler {
                while !self.stopping && !Task.isCancelled {
                    let next = await self.startDueWorkers()
                    await self.wakeup.wait(milliseconds: self.sleepTime(next))
                }
            } onGracefulShutdown: {
                self.stop()
            }
            // Cancelled: stop as on a graceful shutdown.
            self.stop()
        }
        await releaseReady()
    }

    /// One pass for tests: start every due worker and wait until all are done.
    public func runDue() async {
        await driveWorkers(once: true) {
            await self.startDueWorkers()
            self.state.withLock { s in
                s.passDone = true
                s.finishIfDone()
            }
        }
    }

    /// Runs `body` and every worker started meanwhile as child tasks of one
    /// task group, until the workers are done: for `once`, when the last
    /// worker ends; otherwise after `stop()`.
    private func driveWorkers(once: Bool, _ body: @escaping @Sendable () async -> Void) async {
        let (starts, spawner) = AsyncStream.makeStream(of: WorkerStart.self)
        state.withLock { s in
            precondition(s.spawner == nil, "workers are already driven")
            s.spawner = spawner
            s.once = once
            s.passDone = false
            if !once { s.running = true }
        }
        await withDiscardingTaskGroup { group in
            group.addTask { await body() }
            for await start in starts {
                if executors.isEmpty {
                    group.addTask { await self.work(start) }
                } else {
                    group.addTask(executorPreference: executors[start.id % executors.count]) { await self.work(start) }
                }
            }
        }
        state.withLock { s in
            s.spawner = nil
            s.once = false
        }
    }

    private func work(_ start: WorkerStart) async {
        var worker = Worker(scheduler: self, lane: start.lane, id: start.id, source: start.source)
        await worker.run()
        finished(start, worker: start.id)
    }

    // MARK: - Passes

    /// How long to sleep when the earliest claimable recipient is due at `next`.
    private func sleepTime(_ next: Int64?) -> Int64 {
        let (cached, paced) = state.withLock { (!$0.waiting.isEmpty, $0.pacedUntil.values.min()) }
        let idleWake = cached ? min(config.idleWakeMillis, max(1, config.connectionCacheMillis)) : config.idleWakeMillis
        let now = clock.now()
        var wait = idleWake
        // Due now but not started: its destination is at its connection
        // limit (a finishing worker wakes us) or paced (woken below). Never spin.
        if let next, next > now { wait = min(wait, next - now) }
        if let paced { wait = min(wait, max(1, paced - now)) }
        return wait
    }

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
        await probeSources(now: now)
        guard let due = try? store.dueLanes() else { return nil }
        state.withLock { s in s.pacedUntil = s.pacedUntil.filter { $0.value > now } }
        // Fairness: earliest due first, each domain at most its share.
        for d in due.sorted(by: { $0.nextAttemptAt < $1.nextAttemptAt }) where d.nextAttemptAt <= now {
            let lane = d.lane
            // How many are due matters only up to what more workers could
            // take (startWorkers: one per five): with every connection in
            // use, a pass counts nothing, however long the queue.
            let (active, room) = state.withLock { s in
                let paced = (s.pacedUntil[lane] ?? 0) > now
                return (s.active[lane, default: 0],
                        paced ? 0 : min(config.maxConnections - s.total, config.maxConnectionsPerDestination - s.active[lane, default: 0]))
            }
            let dueCount = room > 0 ? ((try? store.dueCount(lane, now: now, cap: (active + room) * 5)) ?? 1) : 0
            let idle = state.withLock { s -> CheckedContinuation<Bool, Never>? in
                s.dueInStore.insert(lane)
                startWorkers(lane, due: dueCount + s.ready.waiting(for: lane), &s)
                // A worker idle on a connection to it takes the queued ones too.
                return s.popWaiter(lane)
            }
            idle?.resume(returning: true)
        }
        state.withLock { s in
            for (lane, waiting) in s.ready.waiting where waiting > 0 { startWorkers(lane, due: waiting, &s) }
        }
        return due.map(\.nextAttemptAt).min()
    }

    // MARK: - Worker pool

    /// Starts workers for `lane` up to its share of `due` recipients (one
    /// per five, within the limits and as the gate allows), each from the
    /// source of its pool that is furthest behind its share and that the
    /// gate admits (a source at its warm-up cap or shaping limit leaves the
    /// connection to the pool's others). Called with the state locked.
    func startWorkers(_ lane: Lane, due: Int, _ s: inout State) {
        let perWorker = isSlow(lane, s) ? config.slowBatch : 5
        let wanted = min(config.maxConnectionsPerDestination, max(1, (due + perWorker - 1) / perWorker))
        while !s.stopping, let spawner = s.spawner, s.total < config.maxConnections, s.active[lane, default: 0] < wanted {
            let now = clock.now()
            if let until = s.pacedUntil[lane], until > now { return }
            let id = s.nextWorkerID
            let candidates = config.sources.candidates(pool: lane.pool, domain: lane.domain, now: now)
            if candidates.isEmpty {
                // Every source of the pool is out of rotation: the mail waits
                // (a probe or a delisting brings one back).
                s.pacedUntil[lane] = now + config.sourceProbeMillis
                logger.warning("no source of the pool is in rotation; mail waits", metadata: ["lane": "\(lane)"])
                return
            }
            var chosen: OutboundSource?? = nil
            var earliest: Int64? = nil
            var busy = false
            for source in candidates {
                switch gate.admit(SendRequest(.connection, destination: lane.domain, source: source?.name, worker: id), now: now) {
                case .go: chosen = .some(source)
                case .notBefore(let until): earliest = min(earliest ?? until, until)
                case .busy: busy = true
                }
                if chosen != nil { break }
            }
            guard let source = chosen else {
                // At its connection limit (a finishing worker asks again), or
                // paced until the earliest time a source may go.
                if !busy, let earliest { s.pacedUntil[lane] = earliest }
                return
            }
            s.total += 1
            s.active[lane, default: 0] += 1
            s.nextWorkerID += 1
            spawner.yield(WorkerStart(lane: lane, id: id, source: source))
        }
    }

    /// Whether `lane`'s server has been slow per message lately.
    func isSlow(_ lane: Lane, _ s: borrowing State) -> Bool {
        (s.pace[lane] ?? 0) >= config.slowMillis
    }

    /// How long a message to `lane` took to send (a moving average, 1/4 new).
    func observePace(_ lane: Lane, millis: Int64) {
        state.withLock { s in
            if s.pace.count >= 100_000, s.pace[lane] == nil { s.pace.removeAll(keepingCapacity: true) }
            s.pace[lane] = s.pace[lane].map { ($0 * 3 + millis) / 4 } ?? millis
        }
    }

    private func finished(_ start: WorkerStart, worker: Int) {
        let lane = start.lane
        gate.ended(SendRequest(.connection, destination: lane.domain, source: start.source?.name, worker: worker), now: clock.now())
        state.withLock { s in
            s.total -= 1
            let n = s.active[lane, default: 1] - 1
            s.active[lane] = n == 0 ? nil : n
            // Handed-over mail that arrived after this worker last looked
            // (or that it left at its per-connection limit) gets a worker now:
            // the pass does not see leased rows.
            if s.ready.waiting(for: lane) > 0 { startWorkers(lane, due: s.ready.waiting(for: lane), &s) }
            s.finishIfDone()
        }
        wakeup.signal()
    }

    /// The send gate closed `lane` until `until`: no worker starts for it
    /// before, and the pass wakes up then.
    func paced(_ lane: Lane, until: Int64) {
        state.withLock { $0.pacedUntil[lane] = max($0.pacedUntil[lane] ?? 0, until) }
    }

    // MARK: - Sources

    /// A source's address could not be bound: out of rotation until a probe
    /// binds it again, with an event and a log line.
    func sourceUnavailable(_ source: OutboundSource, reason: String) async {
        guard config.sources.hold(source.name, .bind, reason: reason) else { return }
        logger.error("source address cannot be bound; out of rotation, its mail goes from the pool's other sources",
                     metadata: ["source": "\(source.name)", "address": "\(source.address)", "error": "\(reason)"])
        do { try await store.recordSourceBind(source.name, address: source.address.description, error: reason, at: clock.now()) } catch {
            logger.warning("cannot record source status", metadata: ["error": "\(error)"])
        }
    }

    /// Tries the sources out of rotation for their address again; those that bind come back.
    private func probeSources(now: Int64) async {
        for source in config.sources.due(.bind, now: now, everyMillis: config.sourceProbeMillis) {
            guard SourceProbe.canBind(source.address) == nil, config.sources.release(source.name, .bind) else { continue }
            logger.notice("source address can be bound again; back in rotation", metadata: ["source": "\(source.name)", "address": "\(source.address)"])
            do { try await store.recordSourceBind(source.name, address: source.address.description, error: nil, at: now) } catch {
                logger.warning("cannot record source status", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Ends the waits of idle workers that began before `olderThan` (all with nil).
    private func endWaits(olderThan: Int64?) {
        let ended = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            var out: [CheckedContinuation<Bool, Never>] = []
            for (lane, list) in s.waiting {
                var keep = list
                keep.removeAll { w in
                    if let cutoff = olderThan, w.since >= cutoff { return false }
                    out.append(w.resume)
                    return true
                }
                s.waiting[lane] = keep.isEmpty ? nil : keep
            }
            return out
        }
        for w in ended { w.resume(returning: false) }
    }

    /// Keeps a worker's connection open for more handed-over mail, up to the
    /// connection cache time; true when there is some. Only while `run()`
    /// runs: its passes end the waits.
    func waitForWork(_ lane: Lane) async -> Bool {
        guard config.connectionCacheMillis > 0 else { return false }
        let now = clock.now()
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let answer = state.withLock { s -> Bool? in
                guard s.running, !s.stopping else { return false }
                if s.ready.waiting(for: lane) > 0 { return true } // arrived meanwhile
                s.waiting[lane, default: []].append((now, c))
                return nil
            }
            if let answer { c.resume(returning: answer) }
        }
    }

    // MARK: - Leases

    /// Gives claimed recipients back to the store untried.
    @discardableResult
    func giveBack(_ ids: [Int64]) async throws -> Int {
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

    /// Claims up to `limit` recipients (at most a claim batch).
    private func claim(_ lane: Lane, limit: Int) async -> [ClaimedRecipient] {
        let now = clock.now()
        let limit = max(1, min(limit, config.claimBatch))
        do {
            let claimed = try await store.claim(lane, now: now, owner: owner, leaseUntil: now + config.leaseMillis, limit: limit)
            state.withLock { s in
                if claimed.count < limit { s.dueInStore.remove(lane) }
                s.held.formUnion(claimed.map(\.id))
            }
            return claimed
        } catch {
            logger.error("claim failed", metadata: ["lane": "\(lane)", "error": "\(error)"])
            return []
        }
    }

    /// Claims recipients to deliver (up to `limit`), settling the suppressed ones on the way.
    func claimDeliverable(_ lane: Lane, limit: Int = .max) async -> [ClaimedRecipient] {
        while true {
            let claimed = await claim(lane, limit: limit)
            if claimed.isEmpty { return [] }
            let keys = claimed.map { Settlement.key($0.address) }
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
            let stopped = claimed.filter { reasons[$0.id] != nil }
            let keep = claimed.filter { reasons[$0.id] == nil }
            let now = clock.now()
            await settle(stopped, now: now) { group, message in
                self.settlement.suppressed(group, of: message, reasons: reasons, now: now)
            }
            if !keep.isEmpty || stopping { return keep }
        }
    }

    // MARK: - Settling

    /// Records what became of claimed recipients, one transaction per
    /// message (Settlement.swift); `messages` already in memory by id.
    func settle(_ recipients: [ClaimedRecipient], outcomes: [Int64: RecipientOutcome], fallback: RecipientOutcome,
                context: AttemptContext, started: Int64, messages: [Int64: StoredMessage]) async {
        let now = clock.now()
        await settle(recipients, now: now, messages: messages) { group, message in
            self.settlement.delivered(group, of: message, outcomes: outcomes, fallback: fallback, context: context,
                                      started: started, now: now, random: self.random)
        }
    }

    private func settle(_ recipients: [ClaimedRecipient], now: Int64, messages: [Int64: StoredMessage] = [:],
                        entries: ([ClaimedRecipient], StoredMessage) -> [Settlement.Entry]) async {
        for (messageID, group) in Dictionary(grouping: recipients, by: \.messageID) {
            defer { settled(group.map(\.id)) }
            // Recording an outcome needs no body: a large one stays in the
            // store unless a DSN needs it (Settlement reads it then).
            guard let message = messages[messageID] ?? (try? store.message(id: messageID, admit: { $0 <= Store.largeBody }))?.message
            else { continue }
            // A DSN is queued mail like any other: the pass sends it now,
            // not when it next wakes (workers may linger on connections).
            if await settlement.commit(entries(group, message), of: message, at: now) { wakeup.signal() }
        }
    }

    static func outbound(_ messageID: Int64, _ recipients: [ClaimedRecipient], _ stored: StoredMessage) -> OutboundMessage {
        let envelope = ClientEnvelope(
            mailFrom: stored.mailFrom, size: stored.body.count, bodyType: stored.bodyType, smtputf8: stored.smtputf8,
            ret: stored.ret, envID: stored.envID,
            recipients: recipients.map { ClientRecipient(id: $0.id, address: $0.address, notify: $0.notify, orcpt: $0.orcpt) })
        return OutboundMessage(messageID: messageID, queueID: stored.queueID, envelope: envelope, body: stored.body)
    }
}
