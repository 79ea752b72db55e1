// Webhooks (issue 20): signed POSTs of the events operators subscribe to,
// from the outbox (migration 0014), which a trigger on the event log fills
// in the same transaction as the state change. One task per endpoint sends
// its rows oldest first, a batch per POST, and deletes them after a 2xx:
// at least once, in commit order (so in order per message). A failure
// waits (1 s, doubling, at most `max_backoff`) and tries the same batch
// again; the mail path never waits for any of this.
//
// Each POST: `Content-Type: application/json`, body `{"events": [...]}`,
// `X-Tern-Signature: t=UNIX_SECONDS,v1=HEX` where HEX is
// HMAC-SHA256(secret, "UNIX_SECONDS." + body) (docs/operations.md).

import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import TernMessage
import TernStore

/// What an endpoint may subscribe to, and the event kinds each covers.
public enum WebhookEventType: String, Sendable, CaseIterable {
    case received, delivered, deferred, bounced, expired, suppressed, throttled, blocklisted

    public var kinds: [EventKind] {
        switch self {
        case .received: return [.received]
        case .delivered: return [.delivered]
        case .deferred: return [.deferred]
        case .bounced: return [.bounced]
        case .expired: return [.expired]
        case .suppressed: return [.suppressed]
        case .throttled: return [.shapingThrottled, .shapingSuspended]
        case .blocklisted: return [.blocklistListed]
        }
    }

    public init?(kind: String) {
        guard let t = WebhookEventType.allCases.first(where: { $0.kinds.map(\.rawValue).contains(kind) }) else { return nil }
        self = t
    }
}

/// One `[[webhook]]`.
public struct WebhookEndpoint: Sendable, Equatable {
    public var name: String
    public var url: String
    public var secret: String
    /// Where the secret was read from (`secret_file`), if not given inline.
    public var secretFile: String? = nil
    public var events: [WebhookEventType]
    public var timeoutSeconds: Int
    public var batchSize: Int
    public var maxBackoffSeconds: Int

    public init(name: String, url: String, secret: String, events: [WebhookEventType], timeoutSeconds: Int = 10, batchSize: Int = 100,
                maxBackoffSeconds: Int = 300) {
        self.name = name
        self.url = url
        self.secret = secret
        self.events = events
        self.timeoutSeconds = timeoutSeconds
        self.batchSize = batchSize
        self.maxBackoffSeconds = maxBackoffSeconds
    }

    public var kinds: [String] { events.flatMap(\.kinds).map(\.rawValue) }
}

public enum WebhookPayload {
    /// `t=…,v1=…` for a body sent at `seconds`.
    public static func signature(secret: String, body: [UInt8], seconds: Int64) -> String {
        var message = Array("\(seconds).".utf8)
        message += body
        let mac = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: Array(secret.utf8)))
        return "t=\(seconds),v1=" + mac.map { String(format: "%02x", $0) }.joined()
    }

    /// One event as the POST reports it.
    public static func json(_ e: WebhookEvent) -> JSON {
        func s(_ v: String?) -> JSON { v.map(JSON.string) ?? .null }
        var fields: [(String, JSON)] = [
            ("id", .int64(e.eventID)), ("type", .string(WebhookEventType(kind: e.kind)?.rawValue ?? e.kind)), ("event", .string(e.kind)),
            ("timestamp", .int64(e.at)), ("time", .string(RFC5322Date.iso8601(millis: e.at))),
        ]
        if e.queueID != nil {
            fields += [("queue_id", s(e.queueID)), ("message_id", s(e.headerMessageID)), ("sender", s(e.sender))]
        }
        if e.recipient != nil {
            fields += [("recipient", s(e.recipient)), ("state", s(e.state)), ("attempts", e.attempts.map { .int($0) } ?? .null)]
        }
        if e.code != nil || e.text != nil, WebhookPayload.withReply.contains(e.kind) {
            fields.append(("response", .object([("code", e.code.map { .int($0) } ?? .null), ("enhanced", s(e.enhanced)), ("text", s(e.text)),
                                                ("mx_host", s(e.mxHost)), ("category", s(e.category))])))
        }
        if let d = e.detail, let raw = try? JSONSerialization.jsonObject(with: Data(d.utf8)) as? [String: Any] {
            fields.append(("detail", JSON(any: raw)))
        }
        return .object(fields)
    }

    /// The kinds whose POST carries the attempt's reply.
    static let withReply = Set([EventKind.delivered, .deferred, .bounced, .expired].map(\.rawValue))

    public static func body(_ events: [WebhookEvent]) -> [UInt8] {
        var out: [UInt8] = []
        JSON.object([("events", .array(events.map(json)))]).write(to: &out)
        return out
    }

    /// The wait after `failures` failures in a row: 1 s, doubling, at most `max`.
    public static func backoff(failures: Int, max: Int) -> Int {
        guard failures > 0 else { return 0 }
        return Swift.min(max, 1 << Swift.min(failures - 1, 20))
    }
}

extension JSON {
    /// From JSONSerialization's objects (details are written by Tern: objects, strings, numbers).
    init(any v: Any) {
        switch v {
        case let s as String: self = .string(s)
        case let n as NSNumber where InjectionRequest.isJSONBool(n): self = .bool(n.boolValue)
        case let n as NSNumber: self = n.stringValue.contains(".") || n.stringValue.contains("e") ? .double(n.doubleValue) : .int64(n.int64Value)
        case let a as [Any]: self = .array(a.map(JSON.init(any:)))
        case let o as [String: Any]: self = .object(o.keys.sorted().map { ($0, JSON(any: o[$0]!)) })
        default: self = .null
        }
    }
}

/// Sends what the outbox holds to every configured endpoint.
public final class WebhookSender: Service {
    let endpoints: [WebhookEndpoint]
    let store: Store
    let logger: Logger
    let pollMillis: Int

    public init(endpoints: [WebhookEndpoint], store: Store, logger: Logger, pollMillis: Int = 250) {
        self.endpoints = endpoints
        self.store = store
        self.logger = logger
        self.pollMillis = pollMillis
    }

    /// Writes the subscriptions; call before the mail services start.
    public func prepare() async throws {
        let dropped = try await store.syncWebhooks(endpoints.map { ($0.name, $0.url, $0.kinds) })
        if dropped > 0 { logger.warning("webhook events dropped: their endpoint is no longer configured", metadata: ["events": "\(dropped)"]) }
    }

    public func run() async throws {
        guard !endpoints.isEmpty else {
            // A service that returns early would end serve's group.
            try? await gracefulShutdown()
            return
        }
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for e in self.endpoints {
                    group.addTask { await self.drain(e, client) }
                }
            }
        }
        try? await client.shutdown()
    }

    func drain(_ endpoint: WebhookEndpoint, _ client: HTTPClient) async {
        var failures = 0
        while !Task.isCancelled {
            let batch: [WebhookEvent]
            do { batch = try store.webhookBatch(endpoint: endpoint.name, limit: endpoint.batchSize) } catch {
                logger.error("cannot read the webhook outbox", metadata: ["webhook": "\(endpoint.name)", "error": "\(error)"])
                try? await Task.sleep(for: .seconds(5))
                continue
            }
            guard let last = batch.last else {
                try? await Task.sleep(for: .milliseconds(pollMillis))
                continue
            }
            // An event the retention sweep removed before it was sent cannot be reported any more.
            let sendable = batch.filter { !$0.kind.isEmpty }
            if sendable.count < batch.count {
                logger.warning("webhook events dropped: the retention sweep removed them before they were sent",
                               metadata: ["webhook": "\(endpoint.name)", "events": "\(batch.count - sendable.count)"])
            }
            let error = sendable.isEmpty ? nil : await WebhookSender.post(WebhookPayload.body(sendable), to: endpoint, client, logger: logger)
            let now = nowMillis()
            if let error {
                failures += 1
                let wait = WebhookPayload.backoff(failures: failures, max: endpoint.maxBackoffSeconds)
                logger.warning("webhook not delivered; trying again", metadata: [
                    "webhook": "\(endpoint.name)", "events": "\(batch.count)", "error": "\(error)", "retry_in": "\(wait)s", "failures": "\(failures)",
                ])
                try? await store.webhookFailed(endpoint: endpoint.name, error: error, at: now, next: now + Int64(wait) * 1000)
                try? await Task.sleep(for: .seconds(wait))
            } else {
                failures = 0
                do { try await store.webhookSent(endpoint: endpoint.name, upTo: last.outboxID, count: sendable.count, at: now) } catch {
                    logger.error("cannot note webhook events as sent (they will be sent again)", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
    }

    /// POSTs a signed body; nil on a 2xx, else why not.
    public static func post(_ body: [UInt8], to endpoint: WebhookEndpoint, _ client: HTTPClient, logger: Logger) async -> String? {
        var request = HTTPClientRequest(url: endpoint.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "Tern webhooks")
        request.headers.add(name: "X-Tern-Signature", value: WebhookPayload.signature(secret: endpoint.secret, body: body, seconds: nowMillis() / 1000))
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await client.execute(request, timeout: .seconds(Int64(endpoint.timeoutSeconds)), logger: logger)
            // Read (and drop) at most 64 KiB of the answer.
            _ = try? await response.body.collect(upTo: 65_536)
            guard (200..<300).contains(Int(response.status.code)) else { return "HTTP \(response.status.code)" }
            return nil
        } catch {
            return "\(error)"
        }
    }
}
