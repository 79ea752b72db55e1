// RFC 3464 delivery status notifications (with RFC 3461 semantics and the
// RFC 6533 forms for UTF-8 addresses): one report for one message, covering
// any number of its recipients. Pure; the scheduler builds reports, the store
// queues them in the same transaction as the transitions they report.

/// RFC 3464 §2.3.3 Action.
public enum DSNAction: String, Sendable {
    case failed, delayed, delivered, relayed, expanded
}

/// One per-recipient block of the report.
public struct DSNRecipient: Sendable {
    public var finalRecipient: String
    /// The stored ORCPT (`type;address`), when the client gave one.
    public var originalRecipient: String?
    public var action: DSNAction
    /// `5.1.1` style (RFC 3463).
    public var status: String
    public var remoteMTA: String?
    /// The remote reply, e.g. `550 5.1.1 no such user`.
    public var diagnostic: String?
    public var lastAttempt: Int64?
    public var willRetryUntil: Int64?

    public init(finalRecipient: String, originalRecipient: String?, action: DSNAction, status: String,
                remoteMTA: String?, diagnostic: String?, lastAttempt: Int64?, willRetryUntil: Int64? = nil) {
        self.finalRecipient = finalRecipient
        self.originalRecipient = originalRecipient
        self.action = action
        self.status = status
        self.remoteMTA = remoteMTA
        self.diagnostic = diagnostic
        self.lastAttempt = lastAttempt
        self.willRetryUntil = willRetryUntil
    }
}

public struct DSNReport: Sendable {
    public var reportingMTA: String
    public var originalQueueID: String
    public var originalEnvelopeID: String?
    public var arrivalDate: Int64
    /// The original envelope sender: the report's recipient.
    public var sender: String
    public var recipients: [DSNRecipient]
    /// The original message as stored.
    public var original: [UInt8]
    /// RET=FULL returns the whole message; otherwise (HDRS, the default) its headers.
    public var returnFull: Bool
    public var date: Int64
    public var messageID: String

    public init(reportingMTA: String, originalQueueID: String, originalEnvelopeID: String?, arrivalDate: Int64,
                sender: String, recipients: [DSNRecipient], original: [UInt8], returnFull: Bool, date: Int64, messageID: String) {
        self.reportingMTA = reportingMTA
        self.originalQueueID = originalQueueID
        self.originalEnvelopeID = originalEnvelopeID
        self.arrivalDate = arrivalDate
        self.sender = sender
        self.recipients = recipients
        self.original = original
        self.returnFull = returnFull
        self.date = date
        self.messageID = messageID
    }

    /// True when any address needs RFC 6533 (UTF-8) forms.
    public var needsUTF8: Bool {
        !(recipients.map(\.finalRecipient) + recipients.compactMap(\.originalRecipient) + [sender])
            .allSatisfy { $0.unicodeScalars.allSatisfy(\.isASCII) }
    }

    var kind: DSNAction {
        if recipients.contains(where: { $0.action == .failed }) { return .failed }
        if recipients.contains(where: { $0.action == .delayed }) { return .delayed }
        return .relayed
    }

    /// The complete message (CRLF line ends).
    public func render() -> [UInt8] {
        let boundary = "=_tern_\(originalQueueID)_\(messageID.hashValue & 0xFFFFFF)"
        let subject: String
        switch kind {
        case .failed: subject = "Delivery Status Notification (Failure)"
        case .delayed: subject = "Delivery Status Notification (Delay)"
        default: subject = "Delivery Status Notification (Success)"
        }
        let headers = HeaderBlock(original)
        var out = ""
        out += "From: Mail Delivery System <MAILER-DAEMON@\(reportingMTA)>\r\n"
        out += "To: <\(sender)>\r\n"
        out += "Subject: \(subject)\r\n"
        out += "Date: \(RFC5322Date.format(millis: date))\r\n"
        out += "Message-ID: <\(messageID)>\r\n"
        if let mid = headers.first("Message-ID") {
            out += "In-Reply-To: \(mid)\r\nReferences: \(mid)\r\n"
        }
        out += "Auto-Submitted: auto-replied\r\n" // RFC 3834: no automatic replies to this
        out += "MIME-Version: 1.0\r\n"
        out += "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"\(boundary)\"\r\n"
        out += "\r\nThis is a MIME-encapsulated delivery status notification.\r\n"

        // 1. For people.
        out += "\r\n--\(boundary)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        out += humanText(subjectLine: headers.first("Subject"))

        // 2. For machines (RFC 3464 §2.1; RFC 6533 §6 for UTF-8 addresses).
        let statusType = needsUTF8 ? "message/global-delivery-status" : "message/delivery-status"
        out += "\r\n--\(boundary)\r\nContent-Type: \(statusType)\r\n\r\n"
        out += "Reporting-MTA: dns; \(reportingMTA)\r\n"
        out += "X-Tern-Queue-ID: \(originalQueueID)\r\n"
        if let envid = originalEnvelopeID { out += "Original-Envelope-Id: \(envid)\r\n" }
        out += "Arrival-Date: \(RFC5322Date.format(millis: arrivalDate))\r\n"
        for r in recipients {
            out += "\r\n"
            out += "Final-Recipient: \(addressField(r.finalRecipient))\r\n"
            if let o = r.originalRecipient, let semi = o.firstIndex(of: ";") {
                out += "Original-Recipient: \(o[..<semi]); \(o[o.index(after: semi)...])\r\n"
            }
            out += "Action: \(r.action.rawValue)\r\n"
            out += "Status: \(r.status)\r\n"
            if let mta = r.remoteMTA { out += "Remote-MTA: dns; \(mta)\r\n" }
            if let d = r.diagnostic { out += "Diagnostic-Code: smtp; \(oneLine(d))\r\n" }
            if let t = r.lastAttempt { out += "Last-Attempt-Date: \(RFC5322Date.format(millis: t))\r\n" }
            if let t = r.willRetryUntil { out += "Will-Retry-Until: \(RFC5322Date.format(millis: t))\r\n" }
        }

        // 3. The original: headers only (RET=HDRS) or all of it (RET=FULL).
        var bytes = Array(out.utf8)
        if returnFull {
            let type = needsUTF8 ? "message/global" : "message/rfc822"
            bytes += Array("\r\n--\(boundary)\r\nContent-Type: \(type)\r\n\r\n".utf8)
            bytes += original
            if original.suffix(2) != [13, 10] { bytes += [13, 10] }
        } else {
            let type = needsUTF8 ? "message/global-headers" : "text/rfc822-headers"
            bytes += Array("\r\n--\(boundary)\r\nContent-Type: \(type)\r\n\r\n".utf8)
            bytes += original.prefix(headers.length)
        }
        bytes += Array("\r\n--\(boundary)--\r\n".utf8)
        return bytes
    }

    private func addressField(_ a: String) -> String {
        a.unicodeScalars.allSatisfy(\.isASCII) ? "rfc822; \(a)" : "utf-8; \(a)"
    }

    private func oneLine(_ s: String) -> String {
        String(s.map { $0 == "\r" || $0 == "\n" ? " " : $0 })
    }

    private func humanText(subjectLine: String?) -> String {
        var t = "This is the mail system at \(reportingMTA).\r\n\r\n"
        let about = subjectLine.map { " with the subject \"\($0)\"" } ?? ""
        switch kind {
        case .failed:
            t += "Your message\(about) could not be delivered to the recipients below.\r\n"
            t += "The reason is given after each address. The message has been returned\r\n"
            t += returnFull ? "in full as the last part of this report.\r\n" : "by its headers as the last part of this report.\r\n"
        case .delayed:
            t += "Your message\(about) has not been delivered yet to the recipients below.\r\n"
            t += "Delivery will be retried; you do not need to send it again. You will be\r\n"
            t += "told if it finally fails.\r\n"
        default:
            t += "Your message\(about) was passed on to the recipients' mail system,\r\n"
            t += "which does not send delivery notifications itself.\r\n"
        }
        for r in recipients {
            t += "\r\n<\(r.finalRecipient)>: \(r.action.rawValue)"
            if let d = r.diagnostic { t += "\r\n    \(oneLine(d))" }
            if let mta = r.remoteMTA { t += "\r\n    (remote server \(mta))" }
            t += "\r\n"
        }
        return t
    }
}
