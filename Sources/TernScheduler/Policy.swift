// The scheduler's decisions as pure functions: when to retry (RFC 5321
// §4.5.4.1: retry for days, at growing intervals), when a recipient has
// waited too long (4.4.7), and which DSN an outcome earns under RFC 3461's
// NOTIFY rules.

import Foundation
import TernDelivery
import TernMessage
import TernProtocol
import TernStore

public struct RetrySchedule: Sendable, Equatable {
    /// First retry after this long (default 5 minutes)…
    public var firstDelayMillis: Int64 = 300_000
    /// …doubling each time up to this (default 4000 s, Postfix's maximal_backoff_time).
    public var maxDelayMillis: Int64 = 4_000_000
    /// ±fraction of random spread, so retries of a burst do not arrive together.
    public var jitter: Double = 0.1

    public init(firstDelayMillis: Int64 = 300_000, maxDelayMillis: Int64 = 4_000_000, jitter: Double = 0.1) {
        self.firstDelayMillis = firstDelayMillis
        self.maxDelayMillis = maxDelayMillis
        self.jitter = jitter
    }

    /// The wait after the `attempt`-th failed attempt (1-based); `random` in [0, 1).
    public func delay(afterAttempt attempt: Int, random: Double) -> Int64 {
        let doublings = min(max(attempt - 1, 0), 40)
        let (product, overflow) = firstDelayMillis.multipliedReportingOverflow(by: Int64(1) << Int64(min(doublings, 30)))
        let base = overflow || doublings >= 30 ? maxDelayMillis : min(product, maxDelayMillis)
        let factor = 1 + jitter * (2 * random - 1)
        return max(1000, Int64(Double(base) * factor))
    }
}

/// Parsed RFC 3461 NOTIFY as stored (`nil` is the default: failure and delay).
public struct NotifyPolicy: Sendable {
    public let never: Bool, success: Bool, failure: Bool, delay: Bool

    public init(_ stored: String?) {
        guard let s = stored else {
            never = false; success = false; failure = true; delay = true
            return
        }
        let parts = Set(s.uppercased().split(separator: ","))
        never = parts.contains("NEVER")
        success = parts.contains("SUCCESS")
        failure = parts.contains("FAILURE")
        delay = parts.contains("DELAY")
    }
}

public struct PolicyConfig: Sendable {
    public var retry = RetrySchedule()
    /// After this, a deferred recipient expires (default 5 days).
    public var maxQueueLifetimeMillis: Int64 = 5 * 86_400_000
    /// A delay DSN goes out once after this (default 4 hours; 0 disables).
    public var delayWarningMillis: Int64 = 4 * 3_600_000
    /// Hard bounces of the `suppressCategories` (by default: the address
    /// does not exist, or its mailbox is inactive) put the address on the
    /// suppression list.
    public var suppressOnHardBounce = true
    public var suppressCategories: Set<BounceCategory> = BounceCategory.suppressingByDefault
    /// Gives every failed attempt its category (`attempt.category`).
    public var classifier = BounceClassifier()
    public init() {}
}

/// What one outcome does to one recipient.
public struct Decision: Sendable {
    public var transition: RecipientTransition
    public var dsn: DSNRecipient?
}

public enum Policy {
    static func status(_ r: SMTPReply) -> String {
        r.enhanced?.description ?? "\(r.code / 100).0.0"
    }

    /// The event detail of an outcome (one per recipient and attempt).
    static func detail(_ reply: SMTPReply, _ ctx: AttemptContext) -> String {
        var json = JSONObjectWriter()
        json.add("code", reply.code)
        json.add("enhanced", reply.enhanced?.description)
        json.add("text", reply.text)
        json.add("mx", ctx.mxHost)
        json.add("address", ctx.mxAddress)
        return json.finish()
    }

    /// `random` (in [0, 1), for the retry's jitter) is drawn only when a
    /// deferral schedules a retry: the system generator costs a system call.
    public static func decide(_ outcome: RecipientOutcome, for r: ClaimedRecipient, sender: String, context ctx: AttemptContext,
                              now: Int64, config: PolicyConfig, random: @autoclosure () -> Double) -> Decision {
        let notify = NotifyPolicy(r.notify)
        let canReport = !sender.isEmpty && !notify.never
        // What a remote server says is stored bounded (issue 15).
        let reply = outcome.reply.keepingText(ReplyParser.keptTextBytes)
        func dsn(_ action: DSNAction, status: String, retryUntil: Int64? = nil) -> DSNRecipient {
            // Built only when a DSN is due: most outcomes need none.
            let diagnostic = reply.wireText.trimmingCharacters(in: ["\r", "\n"]).replacingOccurrences(of: "\r\n", with: " ")
            return DSNRecipient(finalRecipient: r.address, originalRecipient: r.orcpt, action: action, status: status,
                         remoteMTA: ctx.mxHost, diagnostic: diagnostic, lastAttempt: now, willRetryUntil: retryUntil)
        }
        let base = RecipientTransition(r, state: .deferred, nextAttemptAt: nil,
                                       countsAsAttempt: true, code: reply.code, enhanced: reply.enhanced?.description,
                                       text: reply.text, event: .deferred, eventDetail: detail(reply, ctx))
        switch outcome {
        case .delivered:
            var t = base
            t.state = .delivered
            t.event = .delivered
            // RFC 3461 §6.2.2: a server that offers DSN takes NOTIFY=SUCCESS on;
            // otherwise we report "relayed".
            let report = canReport && notify.success && !ctx.remoteDSN ? dsn(.relayed, status: status(reply)) : nil
            return Decision(transition: t, dsn: report)
        case .bounced:
            var t = base
            t.state = .bounced
            t.event = .bounced
            return Decision(transition: t, dsn: canReport && notify.failure ? dsn(.failed, status: status(reply)) : nil)
        case .deferred:
            let deadline = r.createdAt + config.maxQueueLifetimeMillis
            var t = base
            if now >= deadline {
                // RFC 3463 4.4.7: delivery time expired; the last reply is the diagnostic.
                t.state = .expired
                t.event = .expired
                t.enhanced = EnhancedStatus.deliveryTimeExpired.description
                return Decision(transition: t, dsn: canReport && notify.failure ? dsn(.failed, status: "4.4.7") : nil)
            }
            let attemptNumber = r.attempts + 1
            t.state = .deferred
            t.event = .deferred
            t.nextAttemptAt = min(now + config.retry.delay(afterAttempt: attemptNumber, random: random()), deadline)
            var report: DSNRecipient? = nil
            if config.delayWarningMillis > 0, r.delayNotifiedAt == nil, now - r.createdAt >= config.delayWarningMillis,
               canReport, notify.delay {
                report = dsn(.delayed, status: status(reply), retryUntil: deadline)
                t.markDelayNotified = true
            }
            return Decision(transition: t, dsn: report)
        }
    }

    /// A recipient on the suppression list: final without an attempt, and a
    /// failure DSN when NOTIFY asks for one.
    public static func suppress(_ r: ClaimedRecipient, reason: String, sender: String, now: Int64) -> Decision {
        let reply = SMTPReply(550, .securityPolicy, "<\(r.address)>: recipient address is suppressed (\(reason))")
        let t = RecipientTransition(r, state: .suppressed, nextAttemptAt: nil,
                                    countsAsAttempt: false, code: reply.code, enhanced: reply.enhanced?.description,
                                    text: reply.text, event: .suppressed,
                                    eventDetail: JSON.object([("reason", .string(reason))]).text)
        let notify = NotifyPolicy(r.notify)
        let report = !sender.isEmpty && !notify.never && notify.failure
            ? DSNRecipient(finalRecipient: r.address, originalRecipient: r.orcpt, action: .failed, status: "5.7.1",
                           remoteMTA: nil, diagnostic: "smtp; \(reply.code) \(reply.enhanced!) \(reply.text)", lastAttempt: now,
                           willRetryUntil: nil)
            : nil
        return Decision(transition: t, dsn: report)
    }

    public static func attempt(_ outcome: RecipientOutcome, for r: ClaimedRecipient, context ctx: AttemptContext,
                               started: Int64, ended: Int64, category: String?) -> NewAttempt {
        let reply = outcome.reply.keepingText(ReplyParser.keptTextBytes)
        let kind: AttemptOutcome
        switch outcome {
        case .delivered: kind = .delivered
        case .deferred: kind = .deferred
        case .bounced: kind = .bounced
        }
        var attempt = NewAttempt(recipientID: r.id, startedAt: started, endedAt: ended, mxHost: ctx.mxHost, mxAddress: ctx.mxAddress,
                                 sourceAddress: ctx.sourceAddress, tls: ctx.tls, code: reply.code, enhanced: reply.enhanced?.description,
                                 text: reply.text, outcome: kind, category: category, domain: r.domain)
        attempt.source = ctx.source
        return attempt
    }
}
