// Webhooks (issue 20): `[[webhook]]` tables in the configuration, and
// `tern webhooks list|test|replay`.
//
//   [[webhook]]
//   name = "crm"                       # default: the URL
//   url = "https://crm.example.com/tern-events"
//   secret = "…"                       # or secret_file = "/etc/tern/crm.secret"
//   events = [ … ]                     # any of WebhookEventType: received, delivered, deferred, bounced, … (docs/operations.md)
//   timeout = "10s"                    # per POST
//   batch = 100                        # events per POST at most
//   max_backoff = "5m"                 # the longest wait between tries

import ArgumentParser
import AsyncHTTPClient
import Foundation
import Logging
import TernHTTP
import TernStore
import TOMLKit

extension TernSettings {
    /// `[[webhook]]` tables.
    static func webhookTables(_ value: any TOMLValueConvertible) throws -> [WebhookEndpoint] {
        let known: Set<String> = ["name", "url", "secret", "secret_file", "events", "timeout", "batch", "max_backoff"]
        guard let array = value.array else { throw ConfigError("'webhook' must be an array of tables ([[webhook]])") }
        var out: [WebhookEndpoint] = []
        for item in array {
            guard let t = item.table else { throw ConfigError("'webhook' must be an array of tables ([[webhook]])") }
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key 'webhook.\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let url = t["url"]?.string, let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme?.lowercased() ?? ""),
                  parsed.host?.isEmpty == false else {
                throw ConfigError("a [[webhook]] needs a 'url' (http:// or https://)")
            }
            let name = t["name"]?.string ?? url
            guard !name.isEmpty, !out.contains(where: { $0.name == name }) else { throw ConfigError("[[webhook]] \(name) is given twice") }
            var secret = t["secret"]?.string
            if let file = t["secret_file"]?.string {
                guard secret == nil else { throw ConfigError("[[webhook]] \(name): give secret or secret_file, not both") }
                guard let d = FileManager.default.contents(atPath: file) else { throw ConfigError("[[webhook]] \(name): cannot read secret_file \(file)") }
                secret = String(decoding: d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            }
            guard let secret, secret.utf8.count >= 16 else {
                throw ConfigError("[[webhook]] \(name) needs a 'secret' (or secret_file) of at least 16 characters to sign its POSTs")
            }
            guard let list = t["events"]?.array, !list.isEmpty else {
                throw ConfigError("[[webhook]] \(name) needs 'events', some of: \(WebhookEventType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            var events: [WebhookEventType] = []
            for e in list {
                guard let s = e.string, let type = WebhookEventType(rawValue: s) else {
                    throw ConfigError("[[webhook]] \(name): unknown event \(e) (known: \(WebhookEventType.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                if !events.contains(type) { events.append(type) }
            }
            var endpoint = WebhookEndpoint(name: name, url: url, secret: secret, events: events)
            endpoint.secretFile = t["secret_file"]?.string
            if let v = t["timeout"] { endpoint.timeoutSeconds = max(1, Int(try duration(v, "webhook.timeout") / 1000)) }
            if let v = t["max_backoff"] { endpoint.maxBackoffSeconds = max(1, Int(try duration(v, "webhook.max_backoff") / 1000)) }
            if let v = t["batch"] {
                guard let n = v.int, (1...1000).contains(n) else { throw ConfigError("'webhook.batch' must be from 1 to 1000") }
                endpoint.batchSize = n
            }
            out.append(endpoint)
        }
        return out
    }
}

extension TernSettings {
    /// `[[webhook]]` tables as `tern config show` writes them.
    var webhooksTOML: String {
        var out = ""
        for w in webhooks {
            out += "\n[[webhook]]  # \(origins["webhook"] ?? "file")\nname = \(SettingValue.quoted(w.name))\nurl = \(SettingValue.quoted(w.url))\n"
            out += w.secretFile.map { "secret_file = \(SettingValue.quoted($0))\n" } ?? "secret = \(SettingValue.quoted(w.secret))\n"
            out += "events = [" + w.events.map { SettingValue.quoted($0.rawValue) }.joined(separator: ", ") + "]\n"
            out += "timeout = \"\(w.timeoutSeconds)s\"\nbatch = \(w.batchSize)\nmax_backoff = \"\(w.maxBackoffSeconds)s\"\n"
        }
        return out
    }

    static var webhookExample: String {
        "\n[[webhook]]                   # repeatable: an endpoint for signed event POSTs (docs/operations.md)\n"
            + "name = \"crm\"\nurl = \"https://crm.example.test/tern-events\"\nsecret = \"change-me-to-a-long-random-string\"  # or secret_file = \"/etc/tern/crm.secret\"\n"
            + "events = [\"delivered\", \"bounced\", \"expired\", \"suppressed\"]\n"
    }

    static var webhookSection: String {
        var out = section("`[[webhook]]`")
        out += "| | | | | An endpoint that receives signed POSTs of the events it subscribes to, from a durable outbox (docs/operations.md) |\n"
        out += "| `name` | | text | the URL | the endpoint's name in `tern webhooks` |\n"
        out += "| `url` | | text | required | `http://` or `https://` |\n"
        out += "| `secret` | | text | required | the HMAC-SHA256 key of `X-Tern-Signature` (16 characters at least); or `secret_file` |\n"
        out += "| `secret_file` | | text | | a file holding the secret (instead of `secret`) |\n"
        out += "| `events` | | list | required | any of `\(WebhookEventType.allCases.map(\.rawValue).joined(separator: "`, `"))` |\n"
        out += "| `timeout` | | duration | 10s | the longest one POST may take |\n"
        out += "| `batch` | | integer | 100 | events per POST at most (1–1000) |\n"
        out += "| `max_backoff` | | duration | 5m | the longest wait between tries of a failing endpoint |\n"
        return out
    }
}

struct WebhooksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "webhooks", abstract: "Webhook endpoints ([[webhook]] in the configuration, docs/operations.md).",
        subcommands: [List.self, Test.self, Replay.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each endpoint: its events, what was sent, what waits, the last error.")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() async throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            let status: [WebhookEndpointStatus]
            do { status = try store.webhookStatus() } catch { throw fail("\(error)", code: 74) }
            let byName = Dictionary(uniqueKeysWithValues: status.map { ($0.name, $0) })
            let rows = settings.webhooks.map { w in (w, byName[w.name]) }
            if format == .json {
                print(JSON.array(rows.map { w, s in List.json(w, s) }).text)
                return
            }
            guard !rows.isEmpty else {
                print("no [[webhook]] is configured")
                return
            }
            let table: [[String]] = rows.map { w, s in List.row(w, s) }
            print(renderTable(header: ["NAME", "URL", "EVENTS", "SENT", "PENDING", "OLDEST PENDING", "FAILURES", "LAST ERROR"], rows: table), terminator: "")
        }

        static func json(_ w: WebhookEndpoint, _ s: WebhookEndpointStatus?) -> JSON {
            let events: [JSON] = w.events.map { JSON.string($0.rawValue) }
            var fields: [(String, JSON)] = [("name", .string(w.name)), ("url", .string(w.url)), ("events", .array(events))]
            fields.append(("sent", .int(s?.sent ?? 0)))
            fields.append(("pending", .int(s?.pending ?? 0)))
            fields.append(("oldest_pending_at", jsonInt64(s?.oldestPendingAt)))
            fields.append(("failures_in_a_row", .int(s?.failures ?? 0)))
            fields.append(("last_success_at", jsonInt64(s?.lastSuccessAt)))
            fields.append(("last_failure_at", jsonInt64(s?.lastFailureAt)))
            fields.append(("last_error", jsonString(s?.lastError)))
            fields.append(("next_try_at", jsonInt64(s?.nextTryAt)))
            return .object(fields)
        }

        static func row(_ w: WebhookEndpoint, _ s: WebhookEndpointStatus?) -> [String] {
            let events = w.events.map { $0.rawValue }.joined(separator: ",")
            let error = s?.lastError.map { "\($0) (\(time(s?.lastFailureAt)))" } ?? ""
            return [w.name, w.url, events, String(s?.sent ?? 0), String(s?.pending ?? 0), time(s?.oldestPendingAt), String(s?.failures ?? 0), error]
        }
    }

    struct Test: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "POST one signed test event to an endpoint now and say how it answered (exit 69 when it did not take it).")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "The endpoint's name (tern webhooks list).") var name: String

        func run() async throws {
            let settings = try common.settings()
            guard let endpoint = settings.webhooks.first(where: { $0.name == name }) else {
                throw fail("no [[webhook]] named \(name) (configured: \(settings.webhooks.map(\.name).joined(separator: ", ")))", code: 64)
            }
            let now = nowMillis()
            let event = WebhookEvent(outboxID: 0, eventID: 0, at: now, kind: "test",
                                     detail: JSON.object([("message", .string("a test from tern webhooks test"))]).text)
            let client = HTTPClient(eventLoopGroupProvider: .singleton)
            let error = await WebhookSender.post(WebhookPayload.body([event]), to: endpoint, client, logger: Logger(label: "tern.webhooks"))
            try? await client.shutdown()
            if let error { throw fail("\(endpoint.url): \(error)", code: 69) }
            print("\(endpoint.name): \(endpoint.url) took the test event")
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Queue the events of a time window for an endpoint again (the running server sends them after what waits).")
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var window: WindowOptions
        @Argument(help: "The endpoint's name.") var name: String
        @Option(help: "Only these event types (default: the endpoint's).") var event: [String] = []

        func run() async throws {
            let (store, settings) = try openExisting(common)
            defer { store.close() }
            guard let endpoint = settings.webhooks.first(where: { $0.name == name }) else {
                throw fail("no [[webhook]] named \(name)", code: 64)
            }
            var types = endpoint.events
            if !event.isEmpty {
                types = try event.map { e in
                    guard let t = WebhookEventType(rawValue: e) else { throw fail("unknown event type \(e)", code: 64) }
                    return t
                }
            }
            let w = try TimeArgument.window(since: window.since, until: window.until, defaultSince: "24h", now: nowMillis())!
            let n: Int
            let kinds: [String] = types.flatMap { $0.kinds }.map { $0.rawValue }
            do { n = try await store.webhookReplay(endpoint: name, kinds: kinds, window: w) } catch {
                throw fail("\(error)", code: 74)
            }
            print("queued \(n) event\(n == 1 ? "" : "s") for \(name)")
        }
    }
}
