// Operator actions behind `tern queue hold|release|flush|delete|bounce`, and
// the DSN factory they share with the scheduler. Each action is one
// transaction with an event per recipient (the store's admin operations).

import Foundation
import TernDelivery
import TernMessage
import TernProtocol
import TernStore

public enum DSNFactory {
    /// The DSN (RFC 3464) for some recipients of `original`, from the null
    /// sender to the original sender, queued with NOTIFY=NEVER.
    public static func message(for original: StoredMessage, _ recipients: [DSNRecipient], hostname: String, at now: Int64) -> NewMessage {
        let queueID = QueueID.make(millis: now)
        let messageID = "\(queueID).dsn@\(hostname)"
        let report = DSNReport(reportingMTA: hostname, originalQueueID: original.queueID, originalEnvelopeID: original.envID,
                               arrivalDate: original.receivedAt, sender: original.mailFrom, recipients: recipients,
                               original: Array(original.body), returnFull: original.ret == "FULL", date: now, messageID: messageID)
        let senderDomain: String
        if case .success(let m) = AddressParser.parseMailbox(Substring(original.mailFrom), allowUTF8: true) {
            senderDomain = m.normalizedDomain
        } else {
            senderDomain = String(original.mailFrom.split(separator: "@").last ?? "").lowercased()
        }
        return NewMessage(queueID: queueID, receivedAt: now, mailFrom: "", body: Data(report.render()), clientAddress: nil, helo: nil,
                          headerMessageID: messageID, envID: nil, ret: nil, bodyType: "8BITMIME", smtputf8: report.needsUTF8,
                          origin: "dsn", recipients: [NewRecipient(address: original.mailFrom, domain: senderDomain, notify: "NEVER")])
    }
}

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

    public func flush(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        try await store.flush(selector, now: now)
    }

    public func delete(_ selector: QueueSelector, now: Int64) async throws -> AdminResult {
        try await store.delete(selector, now: now)
    }
}
