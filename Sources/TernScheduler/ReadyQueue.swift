// Mail handed over by intake: leased in the same transaction that stored
// it, held in memory by lane (domain and source pool) until a worker takes it, so that a new
// message goes out without being claimed and read back from the store. The
// queue is bounded (recipients and body bytes, reserved before the commit);
// mail beyond the bounds is stored unleased and claimed the usual way.
//
// ReadyQueue is plain data kept in the scheduler's locked state; the
// scheduler's IntakeHandoff conformance below is intake's side of it.

import NIOCore
import TernStore

struct ReadyQueue {
    /// A message's leased recipients of one destination.
    struct Item {
        var message: StoredMessage
        var recipients: [ClaimedRecipient]
        var leaseUntil: Int64
    }

    /// By destination, oldest first. A ring buffer: a message taken is
    /// released at once. (An array with a head index kept up to 1,024 taken
    /// messages, bodies included: 100 MiB of 100 KiB messages, which showed
    /// as the server's peak RSS.)
    private var items: [Lane: CircularBuffer<Item>] = [:]
    /// Recipients waiting, by destination.
    private(set) var waiting: [Lane: Int] = [:]
    /// Reserved by intake or waiting here, against the limits.
    var heldRecipients = 0
    var heldBytes = 0

    func waiting(for lane: Lane) -> Int { waiting[lane, default: 0] }

    /// Reserves room for a message about to be committed; false when it
    /// would exceed a limit.
    mutating func reserve(recipients: Int, bytes: Int, maxRecipients: Int, maxBytes: Int) -> Bool {
        guard heldRecipients + recipients <= maxRecipients, heldBytes + bytes <= maxBytes else { return false }
        heldRecipients += recipients
        heldBytes += bytes
        return true
    }

    /// Frees a reservation (a message that was not committed, or the part
    /// of one that was not leased).
    mutating func free(recipients: Int, bytes: Int) {
        heldRecipients -= recipients
        heldBytes -= bytes
    }

    mutating func append(_ item: Item, for lane: Lane) {
        items[lane, default: CircularBuffer()].append(item)
        waiting[lane, default: 0] += item.recipients.count
    }

    /// Takes whole messages of `lane`, up to `maxRecipients` recipients
    /// (at least one message) and `maxMessages` messages. Items whose lease
    /// ends before `staleBefore` are taken out too but returned apart: their
    /// lease must outlast the delivery, so they go back to the store.
    mutating func take(_ lane: Lane, maxRecipients: Int, maxMessages: Int,
                       staleBefore: Int64) -> (fresh: [Item], stale: [ClaimedRecipient]) {
        var fresh: [Item] = []
        var stale: [ClaimedRecipient] = []
        var recipients = 0
        guard items[lane] != nil else { return ([], []) }
        while recipients < maxRecipients && fresh.count < maxMessages, let item = items[lane]!.popFirst() {
            waiting[lane, default: 0] -= item.recipients.count
            free(recipients: item.recipients.count, bytes: item.message.body.count)
            if item.leaseUntil < staleBefore {
                stale += item.recipients
                continue
            }
            recipients += item.recipients.count
            fresh.append(item)
        }
        if items[lane]!.isEmpty {
            items[lane] = nil
            waiting[lane] = nil
        }
        return (fresh, stale)
    }

    /// Empties the queue; returns the recipients it held.
    mutating func removeAll() -> [ClaimedRecipient] {
        let all = items.values.flatMap { $0.flatMap(\.recipients) }
        items = [:]
        waiting = [:]
        return all
    }
}

// MARK: - Intake's side

extension Scheduler: IntakeHandoff {
    /// Body bytes a message holds in memory: one reference per destination.
    private func heldBytes(_ message: NewMessage) -> Int {
        message.body.count * Set(message.recipients.map(\.domain)).count
    }

    public func reserve(_ message: NewMessage) -> IntakeLease? {
        // A large message whose text stays in the buffer it arrived in is
        // not held here (that would keep the buffer): workers read it from
        // the store by BLOB I/O, as they read any queued message.
        guard message.tail == nil else { return nil }
        let bytes = heldBytes(message)
        let granted = state.withLock { s -> Bool in
            guard s.running, !s.stopping else { return false }
            return s.ready.reserve(recipients: message.recipients.count, bytes: bytes,
                                   maxRecipients: config.readyRecipients, maxBytes: config.readyBytes)
        }
        return granted ? IntakeLease(owner: owner, until: clock.now() + config.leaseMillis) : nil
    }

    public func cancel(_ message: NewMessage) {
        let bytes = heldBytes(message)
        state.withLock { $0.ready.free(recipients: message.recipients.count, bytes: bytes) }
    }

    public func handOff(_ message: NewMessage, inserted: InsertedMessage) {
        guard let lease = message.lease else { return }
        let stored = StoredMessage(id: inserted.id, queueID: message.queueID, receivedAt: message.receivedAt, mailFrom: message.mailFrom,
                                   body: message.body, envID: message.envID, ret: message.ret, bodyType: message.bodyType,
                                   smtputf8: message.smtputf8, origin: message.origin)
        var byDomain: [Lane: [ClaimedRecipient]] = [:]
        var notLeased = 0
        for (r, id) in zip(message.recipients, inserted.leasedRecipientIDs) {
            guard let id else { notLeased += 1; continue }
            byDomain[Lane(domain: r.domain, pool: message.pool), default: []].append(ClaimedRecipient(
                id: id, messageID: inserted.id, address: r.address, domain: r.domain, attempts: 0, notify: r.notify, orcpt: r.orcpt,
                createdAt: message.receivedAt, delayNotifiedAt: nil))
        }
        let bytes = heldBytes(message)
        let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            // What was reserved for recipients that were not leased, and for
            // destinations left without any, is free again.
            s.ready.free(recipients: notLeased, bytes: bytes - message.body.count * byDomain.count)
            var resumed: [CheckedContinuation<Bool, Never>] = []
            for (lane, recipients) in byDomain {
                s.ready.append(ReadyQueue.Item(message: stored, recipients: recipients, leaseUntil: lease.until), for: lane)
                s.held.formUnion(recipients.map(\.id))
                if let w = s.popWaiter(lane) {
                    resumed.append(w)
                } else {
                    startWorkers(lane, due: s.ready.waiting(for: lane), &s)
                }
            }
            return resumed
        }
        for w in waiters { w.resume(returning: true) }
    }

    /// Gives back the leases of handed-over mail no worker took (at stop).
    func releaseReady() async {
        let ids = state.withLock { s -> [Int64] in
            s.running = false
            return s.ready.removeAll().map(\.id)
        }
        if ids.isEmpty { return }
        do {
            _ = try await giveBack(ids)
        } catch {
            logger.warning("could not give back leases at stop; the next start does", metadata: ["error": "\(error)"])
        }
    }
}
