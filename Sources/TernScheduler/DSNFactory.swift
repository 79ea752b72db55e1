// Builds the DSN message (RFC 3464) that reports on some recipients of a
// stored message, ready for intake's table: used by settlement (delivery
// outcomes, suppression) and by `tern queue bounce`.

import Foundation
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
