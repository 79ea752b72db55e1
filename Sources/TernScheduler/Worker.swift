// A delivery worker: one connection to one destination. It takes batches of
// recipients from two sources in turn (mail handed over by intake, and due
// rows claimed from the store, so neither starves the other), sends their
// messages one after the other over the connection, settles each message's
// outcome, and keeps the connection open for a moment when there is nothing
// more (Postfix's connection cache). It stops at the per-connection message
// limit, when the connection can no longer be reused, when the scheduler
// stops, or when the send gate says "not now"; what it took and did not send
// goes back to the store untouched.

import TernDelivery
import TernMetrics
import TernProtocol
import TernStore

struct Worker {
    let scheduler: Scheduler
    /// The domain and source pool whose mail this connection carries.
    let lane: Lane
    var domain: String { lane.domain }
    /// The source the connection leaves from (nil: the kernel's choice).
    let source: OutboundSource?
    /// Whether the next batch should come from handed-over mail first.
    private var preferReady = true
    /// Messages sent over this connection.
    private var sent = 0
    /// What the send gate asks of this connection (asked at its start, and
    /// again when its MX host showed the domain to be a provider's).
    private var terms: ConnectionTerms
    /// Messages this connection may carry: the scheduler's limit, or the gate's if lower.
    private var perConnection: Int

    /// The scheduler's id of this worker (and of its connection, for the gate).
    let id: Int
    /// Body bytes reserved in the scheduler's `bodyMemory`, by message,
    /// for bodies this worker read back from the store and still holds.
    private var held: [Int64: Int] = [:]

    init(scheduler: Scheduler, lane: Lane, id: Int = 0, source: OutboundSource? = nil) {
        self.scheduler = scheduler
        self.lane = lane
        self.source = source
        self.id = id
        terms = scheduler.gate.terms(SendRequest(.message, destination: lane.domain, source: source?.name), now: scheduler.clock.now())
        perConnection = max(1, min(scheduler.config.messagesPerConnection, terms.messagesPerConnection ?? .max))
    }

    /// Recipients to deliver next, with the messages already in memory
    /// (handed over by intake; the others are read from the store).
    struct Batch {
        var recipients: [ClaimedRecipient] = []
        var messages: [Int64: StoredMessage] = [:]
    }

    /// Why a connection carries no more messages.
    enum Stop {
        case closed, stopping, limit
        case paced(until: Int64)
        /// The destination turned out to be a provider with no room for this connection.
        case busy
    }

    mutating func run() async {
        let s = scheduler
        var batch = await next(messages: perConnection)
        guard !batch.recipients.isEmpty else { return }
        let started = s.clock.now()
        var outcome = await s.agent.connect(domain: domain, requireTLS: terms.requireTLS, source: source)
        if case .notFromSource(let reply) = outcome {
            // This source cannot reach the domain (address family): another
            // source of the pool can, for a while; without one, a deferral.
            let now = s.clock.now()
            if let source, s.config.sources.avoid(source, for: domain, pool: lane.pool, until: now + 600_000, now: now) {
                await giveBack(batch.recipients, because: .closed)
                return
            }
            outcome = .failed(reply, AttemptContext(source: source?.name))
        }
        switch outcome {
        case .sourceUnavailable(let why):
            // Nothing was tried: the mail goes back untouched, and the
            // pass starts a worker from another source of the pool.
            if let source { await s.sourceUnavailable(source, reason: why) }
            await giveBack(batch.recipients, because: .closed)
        case .notFromSource: break // handled above
        case .failed(let reply, let context):
            s.gate.observe(request(.connection), reply: reply, mxHost: context.mxHost, now: s.clock.now())
            // The whole destination is unreachable (or does not exist): every
            // due recipient of it shares this outcome now, not one batch per pass.
            let outcome = RecipientOutcome.from(reply)
            while !batch.recipients.isEmpty {
                await s.settle(batch.recipients, outcomes: [:], fallback: outcome, context: context, started: started,
                               messages: batch.messages)
                if s.stopping { break }
                batch = await next()
            }
        case .connected(let connection):
            // Its MX host may show the domain to be a provider's: count the
            // connection there, or close it unused when the provider is full.
            switch s.gate.rekey(request(.connection), mxHost: connection.context.mxHost, now: s.clock.now()) {
            case .go:
                let current = s.gate.terms(request(.message), now: s.clock.now())
                if current != terms {
                    terms = current
                    perConnection = max(1, min(s.config.messagesPerConnection, terms.messagesPerConnection ?? .max))
                    // The provider wants TLS and this connection has none: the next one will ask for it.
                    if terms.requireTLS && connection.context.tls == nil {
                        await connection.close()
                        await giveBack(batch.recipients, because: .closed)
                        return
                    }
                }
            case .notBefore(let until):
                await connection.close()
                await giveBack(batch.recipients, because: .paced(until: until))
                return
            case .busy:
                await connection.close()
                await giveBack(batch.recipients, because: .busy)
                return
            }
            while await send(batch, over: connection) {
                batch = await next(messages: perConnection - sent)
                // Nothing more now: keep the connection for a moment rather
                // than close it and start a worker and a connection for the
                // next message.
                while batch.recipients.isEmpty, connection.isReusable, await s.waitForWork(lane) {
                    batch = await next(messages: perConnection - sent)
                }
                if batch.recipients.isEmpty { break }
            }
            await connection.close()
        }
    }

    /// Whether the connection may carry another message now (nil) or why
    /// not; `askGate` false: the gate admitted this message already.
    private func stop(_ connection: any DeliveryConnection, askGate: Bool) -> Stop? {
        let s = scheduler
        if !connection.isReusable { return .closed }
        if s.stopping { return .stopping }
        if sent >= perConnection { return .limit }
        if askGate, case .notBefore(let t) = s.gate.admit(request(.message), now: s.clock.now()) {
            return .paced(until: t)
        }
        return nil
    }

    /// Sends the batch's messages in turn; false when the connection carries
    /// no more (what was not sent is given back to the store untouched).
    private mutating func send(_ batch: Batch, over connection: any DeliveryConnection) async -> Bool {
        let s = scheduler
        var messages = batch.messages
        // What is read here is not held past the batch.
        defer { for id in Array(held.keys) { drop(id) } }
        // One transaction per message, or several when the destination takes
        // fewer recipients per transaction than the message has.
        let chunk = max(1, terms.recipientsPerMessage ?? .max)
        let byMessage = Dictionary(grouping: batch.recipients, by: \.messageID).sorted { $0.key < $1.key }.flatMap { id, rs in
            stride(from: 0, to: rs.count, by: chunk).map { (key: id, value: Array(rs[$0..<min($0 + chunk, rs.count)])) }
        }
        var admitted: Int64? = nil // the gate's yes, given when it was prefetched
        for (index, (messageID, recipients)) in byMessage.enumerated() {
            // A message whose commands went out with the previous one's
            // content is sent now, whatever else happened meanwhile; for the
            // others, ask.
            if connection.startedMessageID != messageID, let why = stop(connection, askGate: admitted != messageID) {
                await giveBack(byMessage[index...].flatMap(\.value), because: why)
                return false
            }
            // This message's body first (waiting for room: nothing else is
            // held now), then the next one's only if it fits at once.
            if messages[messageID] == nil { messages[messageID] = await load(messageID, wait: true) }
            // The next message of the batch can start in the same write as
            // this one's content, if it is sure to be sent next.
            var next: OutboundMessage? = nil
            if index + 1 < byMessage.count, !s.stopping, sent + 1 < perConnection,
               s.gate.admit(request(.message), now: s.clock.now()) == .go {
                let (nextID, nextRecipients) = byMessage[index + 1]
                admitted = nextID
                // Only if its body fits the budget now: not worth a wait.
                if messages[nextID] == nil { messages[nextID] = await load(nextID, wait: false) }
                next = messages[nextID].map { Scheduler.outbound(nextID, nextRecipients, $0) }
            }
            await deliver(messageID, recipients, over: connection, message: messages[messageID], next: next)
            if index + 1 == byMessage.count || byMessage[index + 1].key != messageID {
                messages[messageID] = nil // its body is not held while the rest are sent
                drop(messageID)
            }
            sent += 1
        }
        return connection.isReusable && !s.stopping && sent < perConnection
    }

    /// Message `id` read back from the store for sending, its body's bytes
    /// reserved in the scheduler's `bodyMemory` first: waiting for room
    /// (`wait`), or nil at once when there is none. Nil also when the
    /// message is gone or could not be read.
    private mutating func load(_ id: Int64, wait: Bool) async -> StoredMessage? {
        let s = scheduler
        let memory = s.bodyMemory
        var reserved = 0
        var read: MessageRead
        do {
            read = try s.store.message(id: id) { bytes in
                guard memory.tryReserve(bytes) else { return false }
                reserved = bytes
                return true
            }
            if case .noRoom(_, let bytes) = read {
                guard wait, await memory.reserve(bytes) else { return nil }
                reserved = bytes
                read = try s.store.message(id: id) { _ in true }
            }
        } catch {
            memory.release(reserved)
            s.logger.warning("could not read a message to send", metadata: ["msg": "\(id)", "error": "\(error)"])
            return nil
        }
        guard case .found(let message) = read else {
            memory.release(reserved)
            return nil
        }
        held[id, default: 0] += reserved
        return message
    }

    /// Gives back the budget of a body this worker no longer holds.
    private mutating func drop(_ id: Int64) {
        if let bytes = held.removeValue(forKey: id) { scheduler.bodyMemory.release(bytes) }
    }

    /// What the gate is asked: this worker's connection, or one more message on it.
    private func request(_ kind: SendRequest.Kind) -> SendRequest {
        SendRequest(kind, destination: domain, source: source?.name, worker: kind == .connection ? id : nil)
    }

    private func giveBack(_ recipients: [ClaimedRecipient], because why: Stop) async {
        let s = scheduler
        switch why {
        case .limit: s.givenBackAtLimit.add(recipients.count, ordering: .relaxed)
        case .paced(let until):
            s.givenBackPaced.add(recipients.count, ordering: .relaxed)
            // This source is paced; with others in the pool, the pass tries
            // them (each is asked) rather than hold the whole lane.
            if s.config.sources.candidates(pool: lane.pool).count <= 1 { s.paced(lane, until: until) }
        case .closed, .stopping, .busy: break
        }
        _ = try? await s.giveBack(recipients.map(\.id))
        if !s.stopping { s.wakeup.signal() }
    }

    private func deliver(_ messageID: Int64, _ recipients: [ClaimedRecipient], over connection: any DeliveryConnection,
                         message: StoredMessage?, next: OutboundMessage?) async {
        let s = scheduler
        let started = s.clock.now()
        guard let stored = message else {
            s.logger.error("claimed recipients of a missing message", metadata: ["msg": "\(messageID)"])
            _ = try? await s.giveBack(recipients.map(\.id))
            return
        }
        s.config.sources.sent(source)
        let outcomes = await connection.send(Scheduler.outbound(messageID, recipients, stored), next: next)
        let took = s.clock.now() - started
        s.observePace(lane, millis: took)
        if TernMetrics.enabled { TernMetrics.deliveryDuration(milliseconds: took) }
        // The destination's answers, for shaping: each distinct refusal, and
        // one success per transaction that delivered.
        var seen: Set<SMTPReply> = []
        var delivered = false
        for o in outcomes.values {
            if case .delivered = o { delivered = true; continue }
            if seen.insert(o.reply).inserted {
                s.gate.observe(request(.message), reply: o.reply, mxHost: connection.context.mxHost, now: s.clock.now())
            }
        }
        if delivered {
            s.gate.observe(request(.message), reply: SMTPReply(250, nil, "accepted"),
                           mxHost: connection.context.mxHost, now: s.clock.now())
        }
        let fallback = RecipientOutcome.deferred(SMTPReply(451, .systemError, "no result for this recipient"))
        await s.settle(recipients, outcomes: outcomes, fallback: fallback, context: connection.context, started: started,
                       messages: [messageID: stored])
    }

    // MARK: - Batches

    /// The next batch: handed-over mail and due rows of the store in turn.
    /// Handed-over mail is taken whole messages at a time, at most
    /// `messages`: what the connection may still carry, so that none has to
    /// be given back to the store (and claimed and read again).
    private mutating func next(messages: Int = .max) async -> Batch {
        let s = scheduler
        // To a slow server, small batches: the lane's other connections take the rest.
        let (size, inStore) = s.state.withLock { (s.isSlow(lane, $0) ? s.config.slowBatch : s.config.claimBatch, $0.dueInStore.contains(lane)) }
        let limit = min(size, max(1, messages))
        if preferReady || !inStore {
            let batch = await takeReady(recipients: size, messages: limit)
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
            // still carries; those few are given back at the limit. Under a
            // rate limit, though, no more than the gate allows now are claimed
            // (a message's other recipients then follow in a later transaction).
            let allowance = s.gate.allowance(request(.message), now: s.clock.now())
            let claimed = await s.claimDeliverable(lane, limit: min(size, allowance.map { max(1, $0) } ?? .max))
            if !claimed.isEmpty { return Batch(recipients: claimed) }
        }
        return await takeReady(recipients: size, messages: limit)
    }

    /// Handed-over recipients of this destination, up to `recipients` (a
    /// batch) in at most `messages` messages. Mail that waited so long that half its lease
    /// is gone is given back to the store instead: its lease must outlast
    /// the delivery.
    private func takeReady(recipients: Int, messages: Int) async -> Batch {
        let s = scheduler
        let staleBefore = s.clock.now() + s.config.leaseMillis / 2
        let (fresh, stale) = s.state.withLock { state in
            state.ready.take(lane, maxRecipients: recipients, maxMessages: messages, staleBefore: staleBefore)
        }
        if !stale.isEmpty {
            s.logger.warning("handed-over mail waited too long; queued again", metadata: ["domain": "\(domain)", "recipients": "\(stale.count)"])
            _ = try? await s.giveBack(stale.map(\.id))
            s.wakeup.signal()
        }
        var batch = Batch()
        for item in fresh {
            batch.recipients += item.recipients
            batch.messages[item.message.id] = item.message
        }
        return batch
    }
}
