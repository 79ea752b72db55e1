// `tern queue …`: look at what waits in the queue.

import ArgumentParser
import Foundation
import TernMessage
import TernProtocol
import TernScheduler
import TernStore

extension RecipientState: ExpressibleByArgument {}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect and administer the queue (each change is one transaction with an event per recipient).",
        discussion: "A running server picks up flushed or released mail within a few seconds.",
        subcommands: [List.self, Show.self, Flush.self, Hold.self, Release.self, Delete.self, Bounce.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List recipients not yet delivered (queued, in flight, deferred, held), oldest first.")

        @OptionGroup var common: DatabaseOptions

        @Option(help: "table (for people) or json (one array, for machines).")
        var format: OutputFormat = .table

        @Option(help: "Only recipients in this state.")
        var state: RecipientState?

        @Option(help: "Only recipients of this domain.")
        var domain: String?

        @Option(help: "At most this many rows.")
        var limit: Int = 1000

        func run() throws {
            bootstrapLogging(level: "warning")
            let (store, _) = try openExisting(common)
            let entries: [QueueEntry]
            do {
                entries = try store.queueEntries(QueueFilter(state: state, domain: domain, limit: limit))
                store.close()
            } catch {
                throw fail("\(error)", code: 74)
            }
            print(format == .json ? QueueFormatter.json(entries) : QueueFormatter.table(entries), terminator: "")
        }
    }
}

/// Opens an existing database (applying pending migrations, as `tern serve` would).
func openExisting(_ common: DatabaseOptions) throws -> (Store, TernSettings) {
    bootstrapLogging(level: "warning")
    let settings = try common.settings()
    guard FileManager.default.fileExists(atPath: settings.db) else {
        throw fail("no database at \(settings.db) (start `tern serve` or run `tern migrate` first)", code: 66)
    }
    let options = StoreOptions()
    do {
        return (try Store(path: settings.db, options: options), settings)
    } catch {
        throw fail("\(error)", code: 74)
    }
}

/// `ID` or `--domain D` (or, where allowed, neither: everything).
struct SelectorOptions: ParsableArguments {
    @Argument(help: "Queue id of the message (as in the 250 reply and `tern queue list`).")
    var queueID: String?

    @Option(help: "Every matching recipient of this domain instead.")
    var domain: String?

    func selector(allowAll: Bool) throws -> QueueSelector {
        switch (queueID, domain) {
        case (let q?, nil): return .queueID(q)
        case (nil, let d?): return .domain(d)
        case (nil, nil) where allowAll: return .all
        case (nil, nil): throw fail("name a queue id or --domain", code: 64)
        default: throw fail("give a queue id or --domain, not both", code: 64)
        }
    }
}

/// The shared body of hold/release/flush/delete/bounce.
protocol AdminCommand: AsyncParsableCommand {
    var common: DatabaseOptions { get }
    var target: SelectorOptions { get }
    var format: OutputFormat { get }
    static var verb: String { get }
    static var allowAll: Bool { get }
    func perform(_ admin: QueueAdmin, _ selector: QueueSelector, now: Int64) async throws -> AdminResult
}

extension AdminCommand {
    static var allowAll: Bool { false }

    func run() async throws {
        bootstrapLogging(level: "warning")
        let selector = try target.selector(allowAll: Self.allowAll)
        let (store, settings) = try openExisting(common)
        defer { store.close() }
        let result: AdminResult
        do {
            result = try await perform(QueueAdmin(store: store, hostname: settings.hostname), selector, now: nowMillis())
        } catch {
            throw fail("\(error)", code: 75)
        }
        if format == .json {
            print(QueueFormatter.actionJSON(Self.verb, result))
        } else {
            var line = "\(Self.verb): \(result.changed) recipient\(result.changed == 1 ? "" : "s")"
            if result.inflight > 0 { line += " (\(result.inflight) in delivery right now left alone; try again)" }
            print(line)
        }
        if result.changed == 0 && result.inflight == 0, case .queueID(let q) = selector, (try? store.messageDetail(queueID: q)) == nil {
            throw fail("no message with queue id \(q)", code: 67)
        }
    }
}

extension Queue {
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one message: envelope, recipients, every attempt and every event.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Queue id.") var queueID: String
        @Option(help: "table or json.") var format: OutputFormat = .table

        func run() throws {
            bootstrapLogging(level: "warning")
            let (store, _) = try openExisting(common)
            defer { store.close() }
            guard let d = try store.messageDetail(queueID: queueID) else { throw fail("no message with queue id \(queueID)", code: 67) }
            print(format == .json ? QueueFormatter.detailJSON(d) : QueueFormatter.detailTable(d), terminator: "")
        }
    }

    struct Flush: AdminCommand {
        static let configuration = CommandConfiguration(abstract: "Make queued and deferred recipients due now (all, one message, or one domain).")
        static let verb = EventKind.flushed.rawValue
        static let allowAll = true
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var target: SelectorOptions
        @Option(help: "table or json.") var format: OutputFormat = .table
        func perform(_ a: QueueAdmin, _ s: QueueSelector, now: Int64) async throws -> AdminResult { try await a.flush(s, now: now) }
    }

    struct Hold: AdminCommand {
        static let configuration = CommandConfiguration(abstract: "Hold queued and deferred recipients: no delivery until released.")
        static let verb = EventKind.held.rawValue
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var target: SelectorOptions
        @Option(help: "table or json.") var format: OutputFormat = .table
        func perform(_ a: QueueAdmin, _ s: QueueSelector, now: Int64) async throws -> AdminResult { try await a.hold(s, now: now) }
    }

    struct Release: AdminCommand {
        static let configuration = CommandConfiguration(abstract: "Release held recipients; they are due at once.")
        static let verb = EventKind.released.rawValue
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var target: SelectorOptions
        @Option(help: "table or json.") var format: OutputFormat = .table
        func perform(_ a: QueueAdmin, _ s: QueueSelector, now: Int64) async throws -> AdminResult { try await a.release(s, now: now) }
    }

    struct Delete: AdminCommand {
        static let configuration = CommandConfiguration(abstract: "Delete recipients (and a message left with none) without notice; an event stays in the log.")
        static let verb = EventKind.deleted.rawValue
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var target: SelectorOptions
        @Option(help: "table or json.") var format: OutputFormat = .table
        func perform(_ a: QueueAdmin, _ s: QueueSelector, now: Int64) async throws -> AdminResult { try await a.delete(s, now: now) }
    }

    struct Bounce: AdminCommand {
        static let configuration = CommandConfiguration(abstract: "Fail queued, deferred and held recipients now (550 5.0.0) and send the sender a DSN as NOTIFY asks.")
        static let verb = EventKind.bounced.rawValue
        @OptionGroup var common: DatabaseOptions
        @OptionGroup var target: SelectorOptions
        @Option(help: "table or json.") var format: OutputFormat = .table
        func perform(_ a: QueueAdmin, _ s: QueueSelector, now: Int64) async throws -> AdminResult { try await a.bounce(s, now: now) }
    }
}

/// Renders queue entries for people and machines.
public enum QueueFormatter {
    /// An action's result: `{"action", "changed", "inflight_skipped"}`.
    static func actionJSON(_ verb: String, _ result: AdminResult) -> String {
        JSON.object([("action", .string(verb)), ("changed", .int(result.changed)), ("inflight_skipped", .int(result.inflight))]).text
    }

    public static func json(_ entries: [QueueEntry]) -> String {
        JSON.array(entries.map { e in
            JSON.object([
                ("queue_id", .string(e.queueID)), ("received_at", .int64(e.receivedAt)),
                (EventKind.received.rawValue, .string(isoTime(e.receivedAt))), ("from", .string(e.mailFrom)), ("size", .int(e.size)),
                ("recipient_id", .int64(e.recipientID)), ("recipient", .string(e.address)), ("domain", .string(e.domain)),
                ("state", .string(e.state.rawValue)), ("attempts", .int(e.attempts)), ("next_attempt_at", .int64(e.nextAttemptAt)),
                ("last_code", e.lastCode.map { .int($0) } ?? .null),
                ("last_enhanced", e.lastEnhanced.map { .string($0) } ?? .null),
                ("last_text", e.lastText.map { .string($0) } ?? .null),
            ])
        }).text + "\n"
    }

    public static func table(_ entries: [QueueEntry]) -> String {
        let header = ["QUEUE ID", "RECEIVED (UTC)", "SIZE", "FROM", "RECIPIENT", "STATE", "TRIES", "LAST REPLY"]
        let rows = entries.map { e in
            [e.queueID, isoTime(e.receivedAt), String(e.size), e.mailFrom.isEmpty ? "<>" : e.mailFrom, e.address, e.state.rawValue,
             String(e.attempts), [e.lastCode.map(String.init), e.lastEnhanced, e.lastText].compactMap { $0 }.joined(separator: " ")]
        }
        return renderTable(header: header, rows: rows) + "\(entries.count) recipient\(entries.count == 1 ? "" : "s")\n"
    }

    static func isoTime(_ ms: Int64) -> String { RFC5322Date.timestamp(millis: ms) }

    static func cell(_ v: JSON, _ column: String) -> String {
        switch v {
        case .null: return ""
        case .int64(let i) where column.hasSuffix("_at"): return isoTime(i)
        case .int64(let i): return String(i)
        case .int(let i): return String(i)
        case .string(let s): return s
        default: return v.text
        }
    }

    static func fieldsTable(_ rows: [Fields]) -> String {
        guard let first = rows.first else { return "(none)\n" }
        return renderTable(header: first.map { $0.0.uppercased() }, rows: rows.map { $0.map { cell($0.1, $0.0) } })
    }

    public static func detailTable(_ d: MessageDetail) -> String {
        detailLines(d).escapingControlCharacters(keepingNewlines: true)
    }

    static func detailLines(_ d: MessageDetail) -> String {
        let m = d.message
        var out = "queue id:    \(m.queueID)\n"
        out += "received:    \(isoTime(m.receivedAt)) UTC from \(d.clientAddress ?? "local") (\(d.helo ?? "-"))\n"
        out += "sender:      <\(m.mailFrom)>\n"
        out += "size:        \(m.body.count) bytes; origin \(m.origin)\n"
        if let id = d.headerMessageID { out += "message-id:  <\(id)>\n" }
        out += "\nRECIPIENTS\n" + fieldsTable(d.recipients)
        out += "\nATTEMPTS\n" + fieldsTable(d.attempts)
        out += "\nEVENTS\n" + fieldsTable(d.events)
        return out
    }

    public static func detailJSON(_ d: MessageDetail) -> String {
        let m = d.message
        func rows(_ r: [Fields]) -> JSON { .array(r.map { JSON.object($0) }) }
        return JSON.object([
            ("queue_id", .string(m.queueID)), ("received_at", .int64(m.receivedAt)), ("from", .string(m.mailFrom)),
            ("size", .int(m.body.count)), ("origin", .string(m.origin)), ("client_address", d.clientAddress.map(JSON.string) ?? .null),
            ("helo", d.helo.map(JSON.string) ?? .null), ("message_id", d.headerMessageID.map(JSON.string) ?? .null),
            ("recipients", rows(d.recipients)), ("attempts", rows(d.attempts)), ("events", rows(d.events)),
        ]).text + "\n"
    }
}

/// Left-aligned columns separated by two spaces.
func renderTable(header: [String], rows: [[String]]) -> String {
    // Cells hold text from the network (replies, names): never raw control characters on a terminal.
    let rows = rows.map { $0.map { $0.escapingControlCharacters() } }
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in
            i == cells.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count)
        }.joined(separator: "  ").trimmingTrailingSpaces() + "\n"
    }
    return line(header) + rows.map(line).joined()
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var s = Substring(self)
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
