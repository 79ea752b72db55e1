// Operator actions behind `tern queue hold|release|flush|delete|bounce`.
// Each action is one transaction with an event per recipient (the store's
// admin operations); `bounce` queues DSNs through DSNFactory.

import Foundation
import TernDelivery
import TernMessage
import TernProtocol
import TernStore

public struct QueueAdmin: Sendable {
    let store: Store
    let hostname: String
    let policy: PolicyConfig

    public init(store: Store, hostname: String, policy: PolicyConfig = PolicyConfig()) {
        self.store = store
        self.hostname = hostname
        self.policy = policy
    }

    static func transition(_ r: ClaimedRecipient, state: RecipientState, event: EventKind, next: Int64? = nil) -> RecipientTransition {
        RecipientTransition(r, state: state, nextAttemptAt: next, countsAsAttempt: false,
                            code: nil, enhanced: nil, text: nil, event: event, eventDetail: JSON.object([("by", .string("operator"))]).text)
    }

    /// queued/deferred → held: not delivered until released.
    public func hold(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        try await store.adminTransition(selector, states: [.queued, .deferred], now: now) { _, recipients in
            var b = OutcomeBatch(at: now)
            b.transitions = recipients.map { QueueAdmin.transition($0, state: .held, event: .held) }
            return b
        }
    }

    /// held → queued (never tried) or deferred, due now.
    public func release(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        try await store.adminTransition(selector, states: [.held], now: now) { _, recipients in
            var b = OutcomeBatch(at: now)
            b.transitions = recipients.map { QueueAdmin.transition($0, state: .waiting(attempts: $0.attempts), event: .released, next: now) }
            return b
        }
    }

    /// Fails matching recipients now, with a DSN as the sender's NOTIFY asks.
    public func bounce(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        let hostname = self.hostname, policy = self.policy
        return try await store.adminTransition(selector, states: [.queued, .deferred, .held], now: now) { message, recipients in
            let reply = SMTPReply(550, .otherPermanent, "Message bounced by the mail system administrator")
            var b = OutcomeBatch(at: now)
            var reports: [DSNRecipient] = []
            for r in recipients {
                var d = Policy.decide(.bounced(reply), for: r, sender: message.mailFrom, context: AttemptContext(), now: now,
                                      config: policy, random: 0.5)
                d.transition.countsAsAttempt = false
                b.transitions.append(d.transition)
                if let report = d.dsn { reports.append(report) }
            }
            if !reports.isEmpty { b.dsns.append((DSNFactory.message(for: message, reports, hostname: hostname, at: now), message.id, [])) }
            return b
        }
    }

    /// Makes the recipients due and ends the circuit breaker's cool-downs:
    /// an operator flushes when a destination is back, and mail held back
    /// by a cooling host would otherwise be deferred again unsent.
    public func flush(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        // Cool-downs first: once the recipients are due, a server that looks
        // finds the hosts released (the other order left a moment in which
        // a pass deferred the whole flushed backlog again).
        try await store.endCoolDowns(now: now, why: "tern queue flush")
        return try await store.flush(selector, now: now)
    }

    public func delete(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        try await store.delete(selector, now: now)
    }
}
