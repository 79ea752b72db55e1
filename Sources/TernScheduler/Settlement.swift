// Settlement: writing down what became of claimed recipients. Delivery
// outcomes (from a connection, or a whole destination that could not be
// reached) and suppression (addresses on the suppression list, stopped
// before sending) take the same shape: for each recipient a Policy decision
// (its transition and, if the sender asked, a DSN entry), optionally an
// attempt row and a suppression entry; then, per message, one transaction
// with all of them and one DSN per kind (failed, delayed, relayed).
// Every write is fenced by the lease owner (a recipient whose lease was
// taken over becomes a `lease_lost` event instead).

import Logging
import TernDelivery
import TernMessage
import TernMetrics
import TernProtocol
import TernRouting
import TernStore

struct Settlement: Sendable {
    let store: Store
    /// The lease owner the writes are fenced by.
    let owner: String
    let hostname: String
    let policy: PolicyConfig
    /// Names a recipient's provider for the metrics (by MX host; `other`).
    let providers: ProviderTable
    let logger: Logger

    /// One recipient, settled.
    struct Entry {
        var recipient: ClaimedRecipient
        var decision: Decision
        var attempt: NewAttempt? = nil
        var suppression: Suppression? = nil
        /// For the metrics: the MX host the recipient was tried at.
        var mxHost: String? = nil
    }

    /// Commits the entries of one message in one transaction; true when it
    /// queued a DSN (which the scheduler should send now, not at its next
    /// wake-up). Nothing is written on failure: the leases run out and the
    /// recipients are tried again.
    func commit(_ entries: [Entry], of message: StoredMessage, at now: Int64) async -> Bool {
        var batch = OutcomeBatch(at: now)
        batch.leaseOwner = owner
        var reports: [(id: Int64, report: DSNRecipient)] = []
        for e in entries {
            batch.transitions.append(e.decision.transition)
            if let a = e.attempt { batch.attempts.append(a) }
            if let s = e.suppression { batch.suppressions.append((s, e.recipient.id, e.recipient.messageID)) }
            if let d = e.decision.dsn { reports.append((e.recipient.id, d)) }
        }
        let kinds = Dictionary(grouping: reports, by: \.report.action.rawValue)
        var message = message
        if !kinds.isEmpty && !message.bodyRead {
            // A DSN returns the message (or its headers): read it whole now.
            guard let whole = try? store.message(id: message.id) else {
                logger.error("could not read the message for a DSN; its recipients are tried again when their leases end",
                             metadata: ["msg": "\(message.queueID)"])
                return false
            }
            message = whole
        }
        for kind in kinds.keys.sorted() {
            let group = kinds[kind]!
            batch.dsns.append((DSNFactory.message(for: message, group.map(\.report), hostname: hostname, at: now), message.id, group.map(\.id)))
        }
        do {
            try await store.record(batch)
            // Counted once on disk, so that the metrics say what the database says.
            for e in entries where TernMetrics.enabled {
                let state = e.decision.transition.state
                let tally: TernMetrics.Tally = switch state {
                case .delivered: .delivered
                case .deferred: .deferred
                case .bounced, .expired: .failed
                default: .none
                }
                TernMetrics.recipient(state.rawValue, provider: e.mxHost.flatMap { providers.provider(forMX: $0) } ?? "other", tally: tally)
                if e.decision.transition.state == .delivered { TernMetrics.queueTime(milliseconds: now - e.recipient.createdAt) }
            }
            return !batch.dsns.isEmpty
        } catch {
            logger.error("could not record outcomes", metadata: ["msg": "\(message.queueID)", "error": "\(error)"])
            return false
        }
    }

    /// The entries for recipients that were tried (or whose destination
    /// could not be reached): `outcomes` by recipient id, `fallback` for the
    /// rest.
    func delivered(_ recipients: [ClaimedRecipient], of message: StoredMessage, outcomes: [Int64: RecipientOutcome],
                   fallback: RecipientOutcome, context: AttemptContext, started: Int64, now: Int64, random: () -> Double) -> [Entry] {
        // A refusal of MAIL or DATA is the same reply for every recipient: classified once.
        var categories: [SMTPReply: BounceCategory?] = [:]
        return recipients.map { r in
            let outcome = outcomes[r.id] ?? fallback
            let category: BounceCategory?
            if let known = categories[outcome.reply] { category = known } else {
                category = policy.classifier.classify(outcome.reply)
                categories[outcome.reply] = category
            }
            var e = Entry(recipient: r,
                          decision: Policy.decide(outcome, for: r, sender: message.mailFrom, context: context, now: now,
                                                  config: policy, random: random()),
                          attempt: Policy.attempt(outcome, for: r, context: context, started: started, ended: now,
                                                  category: category?.rawValue),
                          mxHost: context.mxHost)
            if policy.suppressOnHardBounce, case .bounced = outcome, let category, policy.suppressCategories.contains(category) {
                e.suppression = Suppression(address: Settlement.key(r.address),
                                            reason: "\(outcome.reply.code) \(outcome.reply.enhanced.map { "\($0) " } ?? "")\(outcome.reply.text)",
                                            source: "bounce", createdAt: now)
            }
            // The metadata is built only when the line is logged (an autoclosure).
            logger.info("\(e.decision.transition.state)", metadata: [
                "msg": "\(message.queueID)", "rcpt": "\(r.address)", "mx": "\(context.mxHost ?? "-")", "reply": "\(outcome.reply)",
                "source": "\(context.source ?? "-")",
            ])
            return e
        }
    }

    /// The entries for recipients stopped by the suppression list (`reasons`
    /// by recipient id).
    func suppressed(_ recipients: [ClaimedRecipient], of message: StoredMessage, reasons: [Int64: String], now: Int64) -> [Entry] {
        recipients.map { r in
            logger.info("\(RecipientState.suppressed)", metadata: ["msg": "\(message.queueID)", "rcpt": "\(r.address)"])
            return Entry(recipient: r, decision: Policy.suppress(r, reason: reasons[r.id] ?? "on the suppression list",
                                                                 sender: message.mailFrom, now: now))
        }
    }

    /// The suppression key of an address: its canonical form (the domain a
    /// lower-case A-label), the form the suppression list stores.
    static func key(_ address: String) -> String { AddressParser.canonical(address) ?? address }
}
