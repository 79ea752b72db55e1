// The HTTP API (issue 20), under /api/v1: injection (scope inject), and the
// OpenAPI document that describes every route (docs/openapi.json,
// embedded by tools/gen-openapi; a test keeps the two and the routes in step).

import Foundation
import Hummingbird
import NIOCore
import TernIntake
import TernProtocol
import TernStore

extension HTTPServer {
    func addAPIRoutes(to router: Router<TernRequestContext>) {
        router.get("/api/v1/openapi.json") { _, _ in
            HTTPServer.text(OpenAPIDocument.json, contentType: "application/json")
        }
        router.post("/api/v1/messages") { request, context in
            try await self.inject(request, context)
        }
        addAdminRoutes(to: router)
        addDashboardRoutes(to: router)
    }

    /// `POST /api/v1/messages`: each message through intake, one
    /// transaction each, answered after every commit is on disk.
    func inject(_ request: Request, _ context: TernRequestContext) async throws -> Response {
        let token: String
        switch authorize(request, needs: .inject, json: true) {
        case .refused(let r): return r
        case .granted(let name): token = name
        }
        guard let intake = api.intake else { return HTTPServer.error(.serviceUnavailable, "injection is not available in this process") }
        if let type = request.headers[.contentType]?.lowercased(), !type.hasPrefix("application/json") {
            return HTTPServer.error(.unsupportedMediaType, "the body must be application/json")
        }
        let limits = api.limits
        // JSON escapes and base64 make the request larger than the message it carries.
        let maxBody = limits.maxMessageSize * 2 + 65_536
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: maxBody)
        } catch {
            return HTTPServer.error(.contentTooLarge, "the request is larger than \(maxBody) bytes (limits.max_message_size is \(limits.maxMessageSize))")
        }
        let parsed: InjectionRequest
        do {
            parsed = try InjectionRequest.parse(Array(buffer.readableBytesView), limits: limits)
            // Every message is checked before any is committed (built and dropped: memory stays bounded).
            if parsed.messageCount > 1 {
                for i in 0..<parsed.messageCount { _ = try parsed.message(i, limits: limits) }
            }
        } catch {
            return HTTPServer.error(error.status == 413 ? .contentTooLarge : .badRequest, error.message, field: error.field)
        }
        let client = context.remoteAddress?.ipAddress ?? ""
        let literal = client.contains(":") ? "[IPv6:\(client)]" : "[\(client)]"
        // Built and committed in batches of at most 64 messages or 32 MiB, each
        // batch's commits side by side (group commit gathers them), each its own transaction.
        var messages: [InjectedMessage] = []
        var outcomes: [CommitOutcome] = []
        var next = 0
        while next < parsed.messageCount {
            var batch: [InjectedMessage] = []
            var bytes = 0
            while next < parsed.messageCount, batch.count < 64, bytes < 32 << 20 {
                guard let m = try? parsed.message(next, limits: limits) else { break }
                batch.append(m)
                bytes += m.body.count
                next += 1
            }
            if batch.isEmpty { break } // cannot happen: every message was checked
            outcomes += await commit(batch, from: parsed.sender, client: client, literal: literal, token: token, intake: intake)
            messages += batch.map { InjectedMessage(recipients: $0.recipients, body: []) } // the bodies are not needed any more
            if outcomes.contains(where: { if case .rejected = $0 { return true } else { return false } }) { break }
        }
        var accepted: [JSON] = []
        var failed: [JSON] = []
        var failedRecipients: [JSON] = []
        var full = false
        for (m, outcome) in zip(messages, outcomes) {
            let rcpts = JSON.array(m.recipients.map { .string($0.mailbox.address) })
            switch outcome {
            case .accepted(let id):
                accepted.append(.object([("queue_id", .string(id)), ("recipients", rcpts)]))
            case .rejected(let reply):
                full = full || reply.enhanced == .mailSystemFull
                failed.append(.object([("recipients", rcpts), ("reply", .string(reply.lines.joined(separator: " ")))]))
                failedRecipients += m.recipients.map { .string($0.mailbox.address) }
            }
        }
        // After a failed commit the rest is not tried: those recipients are not queued either.
        if next < parsed.messageCount {
            let rest = parsed.recipients[next...].map { JSON.string($0.mailbox.address) }
            failed.append(.object([("recipients", .array(rest)), ("reply", .string("not tried after the failure above"))]))
            failedRecipients += rest
        }
        let recipientsAccepted = zip(messages, outcomes).reduce(0) { n, pair in
            if case .accepted = pair.1 { return n + pair.0.recipients.count }
            return n
        }
        let summary: [(String, JSON)] = [
            ("success_count", .int(recipientsAccepted)), ("fail_count", .int(failedRecipients.count)),
            ("failed_recipients", .array(failedRecipients)), ("messages", .array(accepted)),
        ]
        guard !failed.isEmpty else { return HTTPServer.json(.object(summary + [("errors", .array([]))])) }
        logger.warning("injection not committed", metadata: ["token": "\(token)", "failed": "\(failed.count)", "accepted": "\(accepted.count)"])
        let why = full ? "the queue's disk is full; nothing listed under failed was queued" : "the queue could not commit; nothing listed under failed was queued"
        return HTTPServer.error(.serviceUnavailable, why, headers: [.retryAfter: full ? "60" : "10"], more: summary + [("errors", .array(failed))])
    }

    /// Commits messages side by side; the outcomes in their order.
    func commit(_ batch: [InjectedMessage], from sender: Mailbox?, client: String, literal: String, token: String, intake: Intake) async -> [CommitOutcome] {
        await withTaskGroup(of: (Int, CommitOutcome).self) { group in
            for (i, m) in batch.enumerated() {
                var params = MailParameters()
                params.smtputf8 = (sender?.needsSMTPUTF8 ?? false) || m.recipients.contains { $0.mailbox.needsSMTPUTF8 }
                if m.body.contains(where: { $0 >= 0x80 }) { params.body = .eightBitMIME }
                let envelope = Envelope(clientAddress: client, helo: literal, protocolName: "HTTP", mailFrom: sender, parameters: params,
                                        recipients: m.recipients.map { EnvelopeRecipient(mailbox: $0.mailbox) })
                let body = ByteBuffer(bytes: m.body)
                group.addTask { (i, await intake.accept(envelope, body: body, origin: .submission, authUser: "token:\(token)")) }
            }
            var out = [CommitOutcome?](repeating: nil, count: batch.count)
            for await (i, o) in group { out[i] = o }
            return out.map { $0! }
        }
    }
}
